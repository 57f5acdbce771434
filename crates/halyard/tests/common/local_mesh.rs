//! A mesh brought up by `halyard up --detach` for an end-to-end test (root:
//! network namespaces), brought down on drop, also when the test fails, and
//! a minimal HTTP/1.1 client for connections made from inside its pods.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::halyard;

/// A mesh brought up with `halyard up --detach`, brought down on drop.
pub struct LocalMesh {
    pub name: String,
    pub state: tempfile::TempDir,
    pub status: Value,
}

impl LocalMesh {
    pub fn up(name: &str, config: &Path) -> LocalMesh {
        Self::up_with(name, config, &[])
    }

    pub fn up_with(name: &str, config: &Path, extra_args: &[&str]) -> LocalMesh {
        let state = tempfile::tempdir().expect("state dir");
        let mesh = LocalMesh {
            name: format!("hyt{}{}", name, std::process::id() % 10_000),
            state,
            status: Value::Null,
        };
        let mut args = vec![
            "up",
            config.to_str().expect("utf8"),
            "--detach",
            "--timeout",
            "60",
        ];
        args.extend_from_slice(extra_args);
        let out = mesh.halyard(&args);
        assert!(
            out.status.success(),
            "halyard up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut mesh = mesh;
        mesh.refresh();
        mesh
    }

    pub fn halyard(&self, args: &[&str]) -> std::process::Output {
        halyard()
            .args(args)
            .env("HALYARD_STATE", self.state.path())
            .env("HALYARD_MESH", &self.name)
            .output()
            .expect("run halyard")
    }

    pub fn refresh(&mut self) {
        let text =
            std::fs::read_to_string(self.state.path().join("status.json")).expect("status.json");
        self.status = serde_json::from_str(&text).expect("status json");
    }

    pub fn pod(&self, name: &str) -> &Value {
        self.find_pod(name)
            .unwrap_or_else(|| panic!("no pod {name} in {}", self.status))
    }

    /// The pod, if the runtime has started it yet.
    pub fn find_pod(&self, name: &str) -> Option<&Value> {
        self.status["pods"]
            .as_array()
            .and_then(|pods| pods.iter().find(|p| p["name"] == name))
    }

    pub fn netns(&self, pod: &str) -> String {
        self.pod(pod)["netns"].as_str().expect("netns").to_string()
    }

    pub fn vip(&self, service: &str) -> String {
        self.status["services"]
            .as_array()
            .and_then(|s| {
                s.iter().find(|s| {
                    s[0].as_str()
                        .is_some_and(|n| n == service || n.starts_with(&format!("{service}.")))
                })
            })
            .map(|s| s[1].as_str().expect("vip").to_string())
            .unwrap_or_else(|| panic!("no service {service}"))
    }

    /// A keep-alive HTTP/1.1 connection from inside `pod`'s namespace, as an
    /// app there would open it (so capture applies).
    pub fn connect(&self, pod: &str, service: &str, port: u16) -> Http1 {
        let addr: SocketAddr = format!("{}:{port}", self.vip(service))
            .parse()
            .expect("addr");
        self.connect_addr(pod, addr, &format!("{service}:{port}"))
    }

    /// A keep-alive HTTP/1.1 connection from inside `pod`'s namespace to
    /// `addr` (127.0.0.1 reaches the pod's own app or sidecar admin: loopback
    /// is not captured), sending `Host: host`.
    pub fn connect_addr(&self, pod: &str, addr: SocketAddr, host: &str) -> Http1 {
        let stream = local::nsconnect::connect(&self.netns(pod), addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect from {pod} to {host} ({addr}): {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Http1 {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            stream,
            host: host.to_string(),
        }
    }

    /// A text page of `pod`'s sidecar admin (127.0.0.1:15000 in its
    /// namespace, for either proxy), e.g. `/clusters`.
    pub fn admin(&self, pod: &str, path: &str) -> String {
        let addr = SocketAddr::from(([127, 0, 0, 1], 15000));
        let (status, body) = self
            .connect_addr(pod, addr, "127.0.0.1:15000")
            .get_text(path, &[])
            .unwrap_or_else(|e| panic!("{pod} admin {path}: {e}"));
        assert_eq!(status, 200, "{pod} admin {path}: {body}");
        body
    }

    pub fn namespaces_left(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{}-", self.name)))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        let out = self.halyard(&["down"]);
        let left = self.namespaces_left();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.state.path().join("up.log")).unwrap_or_default();
            eprintln!("--- halyard up log ---\n{log}");
            return;
        }
        assert!(
            out.status.success(),
            "halyard down: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(left.is_empty(), "namespaces left behind: {left:?}");
        assert!(
            !Path::new(&format!("/etc/netns/{}-mesh", self.name)).exists(),
            "hosts files left behind"
        );
    }
}

/// Minimal HTTP/1.1 client over a captured connection.
pub struct Http1 {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    host: String,
}

impl Http1 {
    /// GET `path`; the JSON body (Null when it is not JSON).
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<(u16, Value)> {
        let (status, body) = self.get_text(path, headers)?;
        Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
    }

    /// GET `path`; the body as text (content-length or chunked; no trailers).
    pub fn get_text(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<(u16, String)> {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.stream.write_all(req.as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let (mut len, mut chunked) = (0usize, false);
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.trim().eq_ignore_ascii_case("chunked");
                }
            }
        }
        if !chunked {
            let mut body = vec![0u8; len];
            self.reader.read_exact(&mut body)?;
            return Ok((status, String::from_utf8_lossy(&body).into_owned()));
        }
        let mut body = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            let mut chunk = vec![0u8; size + 2];
            self.reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIP: halyard up needs root");
    }
    root
}
