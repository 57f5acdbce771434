//! The TCP echo: client speaks first; on its first bytes the echo answers with
//! one greeting line, `hello from SERVICE VERSION POD\n` (POD is `-` when
//! unset), then echoes every byte back unchanged until the client half-closes,
//! and then half-closes too. Client-first keeps it safe behind Istio's
//! protocol sniffing, and the greeting tells which backend answered.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::identity::Workload;

/// Accepts connections on `listener` forever, each echoed on its own task
/// (or, with `refuse`, reset at once).
pub async fn accept_loop(listener: TcpListener, workload: Arc<Workload>, refuse: bool) {
    let listen = listener.local_addr().ok();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(?listen, error = %err, "tcp echo accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if refuse {
            crate::conn::refuse(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let workload = workload.clone();
        tokio::spawn(async move {
            if let Err(err) = echo(stream, &workload).await {
                tracing::debug!(%peer, error = %err, "tcp echo connection ended with an error");
            }
        });
    }
}

async fn echo(mut stream: TcpStream, workload: &Workload) -> std::io::Result<()> {
    let mut first = [0u8; 4096];
    let n = stream.read(&mut first).await?;
    if n == 0 {
        return Ok(());
    }
    stream.write_all(&workload.tcp_greeting).await?;
    stream.write_all(&first[..n]).await?;
    let (mut reader, mut writer) = stream.split();
    tokio::io::copy(&mut reader, &mut writer).await?;
    writer.shutdown().await
}
