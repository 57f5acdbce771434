//! The DNS server: UDP and TCP on one address, answering from a table that is
//! swapped whole (readers never wait on a writer).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::NameTable;
use crate::answer::{Reply, answer};

/// A TCP client that sends nothing for this long is closed (RFC 7766 asks
/// servers to time idle connections out; a few seconds is usual).
const TCP_IDLE: Duration = Duration::from_secs(10);

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

/// Bind UDP and TCP on `addr` (port 0 picks one, the same for both) and
/// answer from `table` until the runtime stops.
pub async fn serve(addr: SocketAddr, table: NameTable) -> io::Result<DnsServer> {
    let udp = UdpSocket::bind(addr).await?;
    let addr = udp.local_addr()?;
    let tcp = TcpListener::bind(addr).await?;
    let table = Arc::new(ArcSwap::from_pointee(table));
    tokio::spawn(udp_loop(udp, table.clone()));
    tokio::spawn(tcp_loop(tcp, table.clone()));
    Ok(DnsServer { table, addr })
}

async fn udp_loop(socket: UdpSocket, table: Arc<ArcSwap<NameTable>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            // ICMP errors from earlier replies surface here; keep serving.
            Err(_) => continue,
        };
        if let Reply::Send(bytes) = answer(&buf[..n], &table.load(), true) {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

async fn tcp_loop(listener: TcpListener, table: Arc<ArcSwap<NameTable>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(tcp_conn(stream, table.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "DNS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// RFC 1035 4.2.2: each message is preceded by its length in two bytes.
async fn tcp_conn(mut stream: TcpStream, table: Arc<ArcSwap<NameTable>>) {
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        buf.resize(usize::from(u16::from_be_bytes(len)), 0);
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Reply::Send(bytes) = answer(&buf, &table.load(), false) else {
            return;
        };
        let Ok(n) = u16::try_from(bytes.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(bytes.len() + 2);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&bytes);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
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
