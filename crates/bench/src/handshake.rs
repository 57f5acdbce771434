//! What the post-quantum key exchange costs: full mutual-TLS handshakes
//! between two mesh workloads (P-256 SPIFFE certificates from one mesh CA,
//! client certificate required, chains verified both ways, as sidecars do),
//! in memory so only TLS is measured, once per key exchange group. Reports
//! handshakes per CPU-second and bytes on the wire, as ratios to X25519 in
//! the same run.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use rustls::crypto::aws_lc_rs::kx_group;
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

#[derive(clap::Args)]
pub struct HandshakeArgs {
    /// Handshakes per key exchange group.
    #[arg(long, default_value_t = 2000)]
    pub iterations: usize,
    /// Write the report here (markdown); stdout always gets it.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// One group's figures.
struct Row {
    group: &'static str,
    per_cpu_second: f64,
    cpu_us: f64,
    client_bytes: usize,
    server_bytes: usize,
}

fn groups() -> [(&'static str, &'static dyn SupportedKxGroup); 3] {
    [
        ("X25519MLKEM768", kx_group::X25519MLKEM768),
        ("X25519", kx_group::X25519),
        ("P-256", kx_group::SECP256R1),
    ]
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Move every pending TLS record from one side to the other; the bytes moved.
fn pump(from: &mut Connection, to: &mut Connection) -> anyhow::Result<usize> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf)?;
    }
    let n = buf.len();
    let mut rd: &[u8] = &buf;
    while !rd.is_empty() {
        to.read_tls(&mut rd as &mut dyn Read)?;
        to.process_new_packets()?;
    }
    Ok(n)
}

/// One full handshake; (client bytes, server bytes).
fn handshake(
    client: &Arc<ClientConfig>,
    server: &Arc<ServerConfig>,
) -> anyhow::Result<(usize, usize)> {
    let name = ServerName::try_from("server.mesh").expect("static name");
    let mut c = Connection::Client(ClientConnection::new(client.clone(), name)?);
    let mut s = Connection::Server(ServerConnection::new(server.clone())?);
    let (mut cb, mut sb) = (0, 0);
    for _ in 0..10 {
        cb += pump(&mut c, &mut s)?;
        sb += pump(&mut s, &mut c)?;
        if !c.is_handshaking() && !s.is_handshaking() {
            // One application byte each way proves the keys agree.
            c.writer().write_all(b"x")?;
            cb += pump(&mut c, &mut s)?;
            let mut got = [0u8; 1];
            s.reader().read_exact(&mut got)?;
            return Ok((cb, sb));
        }
    }
    anyhow::bail!("handshake did not finish")
}

pub fn run(args: &HandshakeArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = identity::Ca::from_dir(dir.path(), "cluster.local").context("mesh CA")?;
    let creds = |sa: &str| -> anyhow::Result<identity::tls::Credentials> {
        let key = identity::WorkloadKey::generate()?;
        let id = identity::SpiffeId::new("cluster.local", "bench", sa);
        let issued = ca.sign(
            &key.csr(&id)?,
            &id,
            Duration::from_secs(3600),
            SystemTime::now(),
        )?;
        Ok(identity::tls::Credentials::from_pem(
            &issued.chain,
            &key.private_key_pem(),
            &issued.roots,
        )?)
    };
    let (client_creds, server_creds) = (creds("client")?, creds("server")?);
    let roots = Arc::new(identity::tls::root_store(ca.roots())?);
    let mut rows = Vec::new();
    for (group, kx) in groups() {
        let provider = Arc::new(CryptoProvider {
            kx_groups: vec![kx],
            ..rustls::crypto::aws_lc_rs::default_provider()
        });
        let server = Arc::new(
            ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_client_cert_verifier(identity::tls::client_verifier(
                    roots.clone(),
                    true,
                    None,
                )?)
                .with_single_cert(server_creds.chain.clone(), server_creds.key.clone_key())?,
        );
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(identity::tls::server_verifier(
                Some(roots.clone()),
                None,
            ))
            .with_client_auth_cert(client_creds.chain.clone(), client_creds.key.clone_key())?;
        // Every handshake full: no resumption.
        client.resumption = rustls::client::Resumption::disabled();
        let client = Arc::new(client);
        // Warm up, then measure.
        for _ in 0..50 {
            handshake(&client, &server)?;
        }
        let (cpu0, wall0) = (cpu_time(), Instant::now());
        let mut bytes = (0, 0);
        for _ in 0..args.iterations {
            bytes = handshake(&client, &server)?;
        }
        let cpu = cpu_time()
            .saturating_sub(cpu0)
            .max(wall0.elapsed().min(Duration::from_nanos(1)));
        rows.push(Row {
            group,
            per_cpu_second: args.iterations as f64 / cpu.as_secs_f64(),
            cpu_us: cpu.as_secs_f64() * 1e6 / args.iterations as f64,
            client_bytes: bytes.0,
            server_bytes: bytes.1,
        });
    }
    let base = rows
        .iter()
        .find(|r| r.group == "X25519")
        .map(|r| (r.cpu_us, r.client_bytes + r.server_bytes))
        .unwrap_or((1.0, 1));
    let mut md = format!(
        "# Mutual-TLS handshake cost by key exchange\n\n`halyard-bench handshake --iterations {}`: full TLS 1.3 handshakes between two mesh workloads in memory (P-256 SPIFFE certificates, client certificate required, both chains verified; rustls + aws-lc-rs, one thread), per key exchange group. Ratios are to X25519 in the same run.\n\n| group | handshakes per CPU-second | CPU per handshake | vs X25519 | client bytes | server bytes | bytes vs X25519 |\n|---|---:|---:|---:|---:|---:|---:|\n",
        args.iterations
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} µs | {:.2}x | {} | {} | {:.2}x |\n",
            r.group,
            r.per_cpu_second,
            r.cpu_us,
            r.cpu_us / base.0,
            r.client_bytes,
            r.server_bytes,
            (r.client_bytes + r.server_bytes) as f64 / base.1 as f64
        ));
    }
    print!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md).with_context(|| format!("write {}", out.display()))?;
    }
    Ok(())
}
