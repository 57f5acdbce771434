//! Root-only tests in namespaces this test creates (`hycap-<pid>-*`): rules land in the
//! netns's iptables, and real connections are captured (REDIRECT with SO_ORIGINAL_DST,
//! TPROXY with the original destination as the local address). The host netns is never
//! touched; a Drop guard deletes the namespaces even when an assertion fails.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use capture::{CaptureConfig, InboundMode, net, netns};

/// Deletes the namespaces it names when dropped (also on panic).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            if let Err(e) = netns::delete(n) {
                eprintln!("cleanup {n}: {e}");
            }
        }
    }
}

fn skip_unless_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {test}: needs root (network namespaces, iptables)");
        return true;
    }
    false
}

fn ns_name(tag: &str) -> String {
    format!("hycap-{}-{tag}", std::process::id())
}

/// Two pods on a bridge: a = 10.77.0.1, b = 10.77.0.2, gateway 10.77.0.254.
fn two_pods(tag: &str) -> (Namespaces, String, String) {
    let (br, a, b) = (
        ns_name(&format!("{tag}br")),
        ns_name(&format!("{tag}a")),
        ns_name(&format!("{tag}b")),
    );
    let guard = Namespaces(vec![a.clone(), b.clone(), br.clone()]);
    net::create_bridge(&br, "hcbr0", "10.77.0.254/24").unwrap();
    net::attach_pod(&br, "hcbr0", &a, "veth-a", "10.77.0.1/24", "10.77.0.254").unwrap();
    net::attach_pod(&br, "hcbr0", &b, "veth-b", "10.77.0.2/24", "10.77.0.254").unwrap();
    (guard, a, b)
}

fn listen(ns: &str, port: u16) -> TcpListener {
    netns::run_in(ns, || TcpListener::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap()
}

/// A listener with IP_TRANSPARENT, as a TPROXY inbound proxy needs.
fn listen_transparent(ns: &str, port: u16) -> TcpListener {
    netns::run_in(ns, || {
        // SAFETY: plain socket syscalls on a fresh fd that the TcpListener then owns.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let l = TcpListener::from_raw_fd(fd);
            let one: libc::c_int = 1;
            let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            let p = &one as *const libc::c_int as *const libc::c_void;
            assert_eq!(
                libc::setsockopt(fd, libc::SOL_IP, libc::IP_TRANSPARENT, p, len),
                0
            );
            assert_eq!(
                libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, p, len),
                0
            );
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = port.to_be();
            let sap = &sa as *const libc::sockaddr_in as *const libc::sockaddr;
            let salen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            assert_eq!(
                libc::bind(fd, sap, salen),
                0,
                "{}",
                std::io::Error::last_os_error()
            );
            assert_eq!(libc::listen(fd, 16), 0);
            l
        }
    })
    .unwrap()
}

/// Connects from inside `ns`, as fsuid `uid` if given (the owner match uses the socket's creds).
fn connect(ns: &str, dst: &str, uid: Option<u32>) -> std::io::Result<TcpStream> {
    let dst: SocketAddr = dst.parse().unwrap();
    netns::run_in(ns, || {
        if let Some(uid) = uid {
            // SAFETY: setfsuid changes only this thread's filesystem uid; the thread ends
            // right after (run_in spawns it for this closure).
            unsafe { libc::syscall(libc::SYS_setfsuid, uid) };
        }
        TcpStream::connect_timeout(&dst, Duration::from_secs(3))
    })
    .unwrap()
}

fn accept_within(l: &TcpListener, d: Duration) -> Option<TcpStream> {
    l.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + d;
    loop {
        match l.accept() {
            Ok((s, _)) => return Some(s),
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => return None,
        }
    }
}

fn nothing_pending(l: &TcpListener) -> bool {
    accept_within(l, Duration::from_millis(50)).is_none()
}

/// getsockopt(SOL_IP, SO_ORIGINAL_DST): where the client meant to go before REDIRECT.
fn original_dst(s: &TcpStream) -> SocketAddrV4 {
    // SAFETY: sockaddr_in-sized buffer and length for SO_ORIGINAL_DST (80).
    unsafe {
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let p = &mut sa as *mut libc::sockaddr_in as *mut libc::c_void;
        let rc = libc::getsockopt(s.as_raw_fd(), libc::SOL_IP, 80, p, &mut len);
        assert_eq!(
            rc,
            0,
            "SO_ORIGINAL_DST: {}",
            std::io::Error::last_os_error()
        );
        SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
            u16::from_be(sa.sin_port),
        )
    }
}

fn save(ns: &str, program: &str) -> String {
    let out = netns::command(ns, program).output().unwrap();
    assert!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn apply_reapply_remove_in_netns() {
    if skip_unless_root("apply_reapply_remove_in_netns") {
        return;
    }
    let ns = ns_name("rules");
    let _guard = Namespaces(vec![ns.clone()]);
    netns::create(&ns).unwrap();
    assert!(netns::exists(&ns) && netns::list().contains(&ns));
    assert!(matches!(
        netns::create(&ns),
        Err(capture::CaptureError::NetnsExists(_))
    ));

    let cfg = CaptureConfig {
        enable_ipv6: true,
        ..CaptureConfig::default()
    };
    capture::apply(Some(&ns), &cfg).unwrap();
    capture::apply(Some(&ns), &cfg).unwrap(); // replaces, does not duplicate or fail
    let v4 = save(&ns, "iptables-save");
    for want in [
        ":ISTIO_OUTPUT",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN", // iptables-save order
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        "--to-ports 15001",
        "-A ISTIO_INBOUND -p tcp -m multiport --dports 15090,15021,15020 -j RETURN",
    ] {
        assert!(v4.contains(want), "missing {want:?} in\n{v4}");
    }
    assert_eq!(v4.matches("-A OUTPUT -j ISTIO_OUTPUT").count(), 1, "{v4}");
    let v6 = save(&ns, "ip6tables-save");
    assert!(
        v6.contains("-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN"),
        "{v6}"
    );

    capture::remove(Some(&ns)).unwrap();
    assert!(!save(&ns, "iptables-save").contains("ISTIO_"));
    assert!(!save(&ns, "ip6tables-save").contains("ISTIO_"));

    let id = netns::command_as(&ns, 1337, 1337, "id").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&id.stdout).trim(),
        "uid=1337 gid=1337 groups=1337"
    );

    netns::delete(&ns).unwrap();
    assert!(!netns::exists(&ns));
    netns::delete(&ns).unwrap(); // absent is fine
}

#[test]
fn redirect_capture_sees_original_destination() {
    if skip_unless_root("redirect_capture_sees_original_destination") {
        return;
    }
    let (_guard, a, b) = two_pods("r");
    capture::apply(Some(&a), &CaptureConfig::default()).unwrap();
    let outbound = listen(&a, 15001);
    let inbound = listen(&a, 15006);
    let app = listen(&a, 8081);
    let health = listen(&a, 15021);
    let t = Duration::from_secs(3);

    // App -> another pod: captured by the outbound listener, original destination intact.
    let _c = connect(&a, "10.77.0.2:8080", None).unwrap();
    let s = accept_within(&outbound, t).expect("outbound capture on :15001");
    assert_eq!(original_dst(&s), "10.77.0.2:8080".parse().unwrap());

    // App -> its own pod IP and -> 127.0.0.1: over lo, not captured.
    let _c = connect(&a, "10.77.0.1:8081", None).unwrap();
    assert!(accept_within(&app, t).is_some());
    let _c = connect(&a, "127.0.0.1:8081", None).unwrap();
    assert!(accept_within(&app, t).is_some());
    assert!(nothing_pending(&outbound) && nothing_pending(&inbound));

    // Proxy (uid 1337) -> its pod IP: through inbound capture (app -> proxy -> proxy -> app).
    let _c = connect(&a, "10.77.0.1:8081", Some(1337)).unwrap();
    let s = accept_within(&inbound, t).expect("proxy-to-self goes to :15006");
    assert_eq!(original_dst(&s), "10.77.0.1:8081".parse().unwrap());

    // Proxy (uid 1337) -> another pod: not captured (nothing listens there: refused).
    let err = connect(&a, "10.77.0.2:8080", Some(1337)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(nothing_pending(&outbound));

    // Another pod -> this pod: inbound capture, except Istio's excluded ports.
    let _c = connect(&b, "10.77.0.1:8080", None).unwrap();
    let s = accept_within(&inbound, t).expect("inbound capture on :15006");
    assert_eq!(original_dst(&s), "10.77.0.1:8080".parse().unwrap());
    let _c = connect(&b, "10.77.0.1:15021", None).unwrap();
    assert!(
        accept_within(&health, t).is_some(),
        "15021 is excluded from capture"
    );
    assert!(nothing_pending(&inbound));
}

#[test]
fn tproxy_capture_keeps_destination_as_local_address() {
    if skip_unless_root("tproxy_capture_keeps_destination_as_local_address") {
        return;
    }
    let (_guard, a, b) = two_pods("t");
    let cfg = CaptureConfig {
        inbound_mode: InboundMode::Tproxy,
        enable_ipv6: true, // also exercises ip6tables TPROXY and the inet6 ip rule/route
        ..CaptureConfig::default()
    };
    capture::apply(Some(&a), &cfg).unwrap();
    let mangle = save(&a, "iptables-save");
    assert!(mangle.contains("-j TPROXY --on-port 15006"), "{mangle}");
    let rules = netns::command(&a, "ip").args(["rule"]).output().unwrap();
    assert!(String::from_utf8_lossy(&rules.stdout).contains("lookup 133"));
    let rules6 = netns::command(&a, "ip")
        .args(["-6", "rule"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&rules6.stdout).contains("lookup 133"));

    let inbound = listen_transparent(&a, 15006);
    let _c = connect(&b, "10.77.0.1:8080", None).unwrap();
    let s = accept_within(&inbound, Duration::from_secs(3)).expect("TPROXY to :15006");
    assert_eq!(s.local_addr().unwrap(), "10.77.0.1:8080".parse().unwrap());

    capture::remove(Some(&a)).unwrap();
    let rules = netns::command(&a, "ip").args(["rule"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&rules.stdout).contains("lookup 133"));
    assert!(!save(&a, "iptables-save").contains("ISTIO_"));
}

/// Rootless: a non-root user in `unshare -r -n` (user + net namespace) has no uid 1337,
/// so the proxy is recognised by SO_MARK. Re-runs this binary's `rootless_child` there.
#[test]
fn rootless_user_namespace_capture_with_mark() {
    if skip_unless_root("rootless_user_namespace_capture_with_mark") {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "4242", "--regid", "4242", "--clear-groups"])
        .args(["unshare", "-r", "-n"])
        .arg(&exe)
        .args([
            "--exact",
            "rootless_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(ROOTLESS_CHILD, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("Permission denied") && text.contains(&exe.display().to_string()) {
        eprintln!(
            "SKIP rootless: uid 4242 cannot run {}: {text}",
            exe.display()
        );
        return;
    }
    assert!(
        out.status.success() && text.contains("rootless capture ok"),
        "{text}"
    );
}

const ROOTLESS_CHILD: &str = "HYCAP_ROOTLESS_CHILD";

/// Runs only when the parent test started it inside a fresh user+net namespace.
#[test]
fn rootless_child() {
    if std::env::var(ROOTLESS_CHILD).is_err() {
        return;
    }
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap();
    assert!(
        !uid_map.contains("4294967295"),
        "not in a user namespace: {uid_map}"
    );
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&["link", "set", "lo", "up"]);
    ip(&["link", "add", "hc0", "type", "veth", "peer", "name", "hc1"]);
    ip(&["addr", "add", "10.78.0.1/24", "dev", "hc0"]);
    ip(&["link", "set", "hc0", "up"]);
    ip(&["link", "set", "hc1", "up"]);
    let mark = 0x2a;
    let cfg = CaptureConfig {
        match_owner: false,
        proxy_mark: Some(mark),
        ..CaptureConfig::default()
    };
    capture::apply(None, &cfg).unwrap();
    let outbound = TcpListener::bind("0.0.0.0:15001").unwrap();

    let _c = TcpStream::connect("10.78.0.2:8080").unwrap();
    let s = accept_within(&outbound, Duration::from_secs(3)).expect("captured on :15001");
    assert_eq!(original_dst(&s), "10.78.0.2:8080".parse().unwrap());

    // The proxy's marked socket is not captured (nobody answers at 10.78.0.2: it fails).
    // SAFETY: plain socket syscalls; the fd is closed by the TcpStream or explicitly.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        let m: libc::c_int = mark as libc::c_int;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let p = &m as *const libc::c_int as *const libc::c_void;
        assert_eq!(
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_MARK, p, len),
            0
        );
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = 8080u16.to_be();
        sa.sin_addr.s_addr = u32::from(Ipv4Addr::new(10, 78, 0, 2)).to_be();
        libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
        let sap = &sa as *const libc::sockaddr_in as *const libc::sockaddr;
        libc::connect(
            fd,
            sap,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        libc::close(fd);
    }
    assert!(nothing_pending(&outbound), "marked socket was captured");
    println!("rootless capture ok");
}
