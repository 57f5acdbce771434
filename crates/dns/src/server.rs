//! The DNS server: UDP and TCP on one address, answering from a table that is
//! swapped whole (readers never wait on a writer), and forwarding what it
//! does not know to an upstream resolver when it has one.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::NameTable;
use crate::answer::{Reply, respond, servfail};

/// A TCP client that sends nothing for this long is closed (RFC 7766 asks
/// servers to time idle connections out; a few seconds is usual).
const TCP_IDLE: Duration = Duration::from_secs(10);

/// How long an upstream has to answer a forwarded query before the client
/// gets SERVFAIL (glibc's own per-try timeout is 5 s).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// A running server: swap its table with [`DnsServer::set`].
#[derive(Clone)]
pub struct DnsServer {
    table: Arc<ArcSwap<NameTable>>,
    addr: SocketAddr,
}

impl DnsServer {
    /// Answer from `table` from now on.
    pub fn set(&self, table: NameTable) {
        self.table.store(Arc::new(table));
    }

    /// The bound address (UDP and TCP share it).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Bind UDP and TCP on `addr` (port 0 picks one, the same for both) and
/// answer from `table` until the runtime stops; unknown names get NXDOMAIN.
pub async fn serve(addr: SocketAddr, table: NameTable) -> io::Result<DnsServer> {
    serve_with_upstream(addr, table, Vec::new()).await
}

/// [`serve`], forwarding names the table does not have to `upstream` (tried
/// in order; SERVFAIL when none answers). With no upstream they get NXDOMAIN.
pub async fn serve_with_upstream(
    addr: SocketAddr,
    table: NameTable,
    upstream: Vec<SocketAddr>,
) -> io::Result<DnsServer> {
    let udp = UdpSocket::bind(addr).await?;
    let addr = udp.local_addr()?;
    let tcp = TcpListener::bind(addr).await?;
    let table = Arc::new(ArcSwap::from_pointee(table));
    let upstream: Arc<[SocketAddr]> = upstream.into();
    tokio::spawn(udp_loop(Arc::new(udp), table.clone(), upstream.clone()));
    tokio::spawn(tcp_loop(tcp, table.clone(), upstream));
    Ok(DnsServer { table, addr })
}

/// The `nameserver` lines of a resolv.conf, on port 53.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

async fn udp_loop(
    socket: Arc<UdpSocket>,
    table: Arc<ArcSwap<NameTable>>,
    upstream: Arc<[SocketAddr]>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            // ICMP errors from earlier replies surface here; keep serving.
            Err(_) => continue,
        };
        match respond(&buf[..n], &table.load(), true, !upstream.is_empty()) {
            Reply::Send(bytes) => {
                let _ = socket.send_to(&bytes, peer).await;
            }
            Reply::Forward => {
                let query = buf[..n].to_vec();
                let (socket, upstream) = (socket.clone(), upstream.clone());
                tokio::spawn(async move {
                    let reply = forward_udp(&query, &upstream).await;
                    if let Some(bytes) = reply.or_else(|| servfail(&query)) {
                        let _ = socket.send_to(&bytes, peer).await;
                    }
                });
            }
            Reply::Drop => {}
        }
    }
}

/// Ask each upstream over UDP in turn; the first reply wins.
async fn forward_udp(query: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for server in upstream {
        let local: SocketAddr = if server.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(socket) = UdpSocket::bind(local).await else {
            continue;
        };
        if socket.connect(server).await.is_err() || socket.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf)).await {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// Ask each upstream over TCP in turn (for queries that came over TCP).
async fn forward_tcp(query: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for server in upstream {
        let attempt = async {
            let mut s = TcpStream::connect(server).await.ok()?;
            write_framed(&mut s, query).await.ok()?;
            read_framed(&mut s, &mut Vec::new()).await
        };
        if let Ok(Some(reply)) = tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            return Some(reply);
        }
    }
    None
}

async fn tcp_loop(
    listener: TcpListener,
    table: Arc<ArcSwap<NameTable>>,
    upstream: Arc<[SocketAddr]>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(tcp_conn(stream, table.clone(), upstream.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "DNS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// RFC 1035 4.2.2: each message is preceded by its length in two bytes.
async fn tcp_conn(
    mut stream: TcpStream,
    table: Arc<ArcSwap<NameTable>>,
    upstream: Arc<[SocketAddr]>,
) {
    let mut buf = Vec::new();
    loop {
        let Ok(Some(query)) =
            tokio::time::timeout(TCP_IDLE, read_framed(&mut stream, &mut buf)).await
        else {
            return;
        };
        let reply = match respond(&query, &table.load(), false, !upstream.is_empty()) {
            Reply::Send(bytes) => bytes,
            Reply::Forward => match forward_tcp(&query, &upstream)
                .await
                .or_else(|| servfail(&query))
            {
                Some(bytes) => bytes,
                None => return,
            },
            Reply::Drop => return,
        };
        if write_framed(&mut stream, &reply).await.is_err() {
            return;
        }
    }
}

/// One length-prefixed message (None at EOF or on a read error).
async fn read_framed(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.ok()?;
    buf.resize(usize::from(u16::from_be_bytes(len)), 0);
    stream.read_exact(buf).await.ok()?;
    Some(buf.clone())
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let n = u16::try_from(msg.len()).map_err(|_| io::Error::other("DNS message over 64 KiB"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};

    fn query(name: &str) -> Vec<u8> {
        let mut m = Message::new(42, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii(name).expect("n"),
            RecordType::A,
        ));
        m.to_vec().expect("enc")
    }

    fn table(ip: &str) -> NameTable {
        let mut t = NameTable::new();
        t.insert("web.default.svc.cluster.local", [ip.parse().expect("ip")]);
        t
    }

    async fn udp_ask(server: SocketAddr, name: &str) -> Message {
        let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        s.send_to(&query(name), server).await.expect("send");
        let mut buf = [0u8; 1500];
        let n = s.recv(&mut buf).await.expect("recv");
        Message::from_vec(&buf[..n]).expect("reply")
    }

    #[tokio::test]
    async fn udp_and_tcp_answer_and_tables_swap() {
        let server = serve("127.0.0.1:0".parse().expect("addr"), table("10.96.0.1"))
            .await
            .expect("serve");
        let addr = server.local_addr();
        let m = udp_ask(addr, "web.default.svc.cluster.local.").await;
        assert_eq!(m.answers[0].data.to_string(), "10.96.0.1");
        let m = udp_ask(addr, "nope.default.svc.cluster.local.").await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

        // Garbage on UDP is answered or ignored; the server keeps serving.
        let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        s.send_to(b"\x00", addr).await.expect("send");
        server.set(table("10.96.0.2"));
        let m = udp_ask(addr, "web.default.svc.cluster.local.").await;
        assert_eq!(m.answers[0].data.to_string(), "10.96.0.2");

        // Two framed queries on one TCP connection, sent in one write.
        let mut c = TcpStream::connect(addr).await.expect("connect");
        let q = query("web.default.svc.cluster.local.");
        let mut out = Vec::new();
        for _ in 0..2 {
            out.extend_from_slice(&(q.len() as u16).to_be_bytes());
            out.extend_from_slice(&q);
        }
        c.write_all(&out).await.expect("write");
        for _ in 0..2 {
            let mut len = [0u8; 2];
            c.read_exact(&mut len).await.expect("len");
            let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
            c.read_exact(&mut body).await.expect("body");
            let m = Message::from_vec(&body).expect("reply");
            assert_eq!(m.metadata.id, 42);
            assert_eq!(m.answers[0].data.to_string(), "10.96.0.2");
        }
    }

    #[tokio::test]
    async fn unknown_names_go_upstream_and_fail_fast_without_one() {
        let mut upstream_table = NameTable::new();
        upstream_table.insert("example.org", ["93.184.216.34".parse().expect("ip")]);
        let upstream = serve("127.0.0.1:0".parse().expect("addr"), upstream_table)
            .await
            .expect("upstream");
        let proxy = serve_with_upstream(
            "127.0.0.1:0".parse().expect("addr"),
            table("10.96.0.1"),
            vec![upstream.local_addr()],
        )
        .await
        .expect("proxy");
        let m = udp_ask(proxy.local_addr(), "example.org.").await;
        assert_eq!(m.answers[0].data.to_string(), "93.184.216.34");
        let m = udp_ask(proxy.local_addr(), "web.default.svc.cluster.local.").await;
        assert_eq!(m.answers[0].data.to_string(), "10.96.0.1");
        let m = udp_ask(proxy.local_addr(), "nope.example.").await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // Over TCP too.
        let mut c = TcpStream::connect(proxy.local_addr())
            .await
            .expect("connect");
        write_framed(&mut c, &query("example.org."))
            .await
            .expect("write");
        let body = read_framed(&mut c, &mut Vec::new()).await.expect("reply");
        let m = Message::from_vec(&body).expect("reply");
        assert_eq!(m.answers[0].data.to_string(), "93.184.216.34");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_upstream_gives_servfail_after_the_timeout() {
        // Bound but never answering.
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let proxy = serve_with_upstream(
            "127.0.0.1:0".parse().expect("addr"),
            NameTable::new(),
            vec![silent.local_addr().expect("addr")],
        )
        .await
        .expect("proxy");
        let m = udp_ask(proxy.local_addr(), "example.org.").await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    }

    #[test]
    fn nameservers_from_resolv_conf() {
        let text = "# comment\nsearch a.svc.cluster.local\nnameserver 10.44.0.1\nnameserver ::1\nnameserver bogus\noptions ndots:5\n";
        assert_eq!(
            upstreams_from_resolv_conf(text),
            [
                "10.44.0.1:53".parse::<SocketAddr>().expect("a"),
                "[::1]:53".parse().expect("b")
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tcp_clients_are_closed() {
        let server = serve("127.0.0.1:0".parse().expect("addr"), NameTable::new())
            .await
            .expect("serve");
        let mut c = TcpStream::connect(server.local_addr())
            .await
            .expect("connect");
        // Half a length prefix, then silence: the server hangs up after TCP_IDLE.
        c.write_all(b"\x00").await.expect("write");
        let mut buf = [0u8; 1];
        let n = c.read(&mut buf).await.expect("read");
        assert_eq!(n, 0);
    }
}
