//! `halyard proxy-config secret [POD | --admin ADDR]`: the certificates a proxy holds,
//! in istioctl's shape (RESOURCE NAME, TYPE, STATUS, VALID CERT, SERIAL
//! NUMBER, NOT AFTER, NOT BEFORE), plus the SPIFFE identity. Read from the
//! proxy's admin `/config_dump?resource=dynamic_active_secrets` (Envoy's;
//! keys are redacted there).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::Value;

#[derive(clap::Subcommand, Debug)]
pub enum ProxyConfigCommand {
    /// The proxy's SDS secrets: workload certificate and roots.
    Secret {
        /// A pod of the running mesh (`POD` or `POD.NAMESPACE`), as
        /// `istioctl proxy-config secret POD`; else the proxy at --admin.
        pod: Option<String>,
        /// The proxy's admin address (Envoy's `admin.address`).
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: String,
        #[command(flatten)]
        mesh: crate::mesh_cmd::MeshArgs,
        /// Output: a table, or the rows as JSON.
        #[arg(long, default_value = "short", value_parser = ["short", "json"])]
        output: String,
    },
}

/// One secret's certificate, as a row.
#[derive(Debug, serde::Serialize)]
pub struct SecretRow {
    pub resource_name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub valid_cert: bool,
    pub serial_number: String,
    pub not_after: String,
    pub not_before: String,
    pub identity: String,
}

pub(crate) fn http_get(admin: &str, path: &str) -> anyhow::Result<String> {
    let conn = TcpStream::connect(admin).with_context(|| format!("connect to {admin}"))?;
    http_get_on(conn, admin, path)
}

pub(crate) fn http_get_on(mut conn: TcpStream, admin: &str, path: &str) -> anyhow::Result<String> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )?;
    let mut all = String::new();
    conn.read_to_string(&mut all)
        .with_context(|| format!("read from {admin}"))?;
    let (head, body) = all.split_once("\r\n\r\n").context("no HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("{admin}{path}: {}", head.lines().next().unwrap_or(""));
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return dechunk(body).with_context(|| format!("{admin}{path}: bad chunked body"));
    }
    Ok(body.to_string())
}

/// An HTTP/1.1 chunked body, joined.
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

fn rfc3339(t: x509_parser::time::ASN1Time) -> String {
    t.to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Rows for the secrets in a config dump.
pub fn rows(dump: &Value) -> Vec<SecretRow> {
    use x509_parser::prelude::FromDer;
    let mut out = Vec::new();
    let configs = dump["configs"].as_array().cloned().unwrap_or_default();
    for c in configs {
        let secret = &c["secret"];
        let name = secret["name"].as_str().unwrap_or_default().to_string();
        let (kind, data) = if secret.get("tls_certificate").is_some() {
            (
                "Cert Chain",
                &secret["tls_certificate"]["certificate_chain"]["inline_bytes"],
            )
        } else {
            (
                "CA",
                &secret["validation_context"]["trusted_ca"]["inline_bytes"],
            )
        };
        let pem_text = data
            .as_str()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .map(|b| String::from_utf8_lossy(&b).to_string())
            .unwrap_or_default();
        let certs = pem::parse_many(&pem_text).unwrap_or_default();
        // A certificate chain is shown by its leaf; roots one row each (a
        // trust bundle mid-rotation holds several).
        let shown = if kind == "CA" { certs.len() } else { 1 };
        for p in certs.iter().take(shown) {
            let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(p.contents())
            else {
                continue;
            };
            let identity = identity::tls::spiffe_id(&p.contents().to_vec().into())
                .map(|id| id.to_string())
                .unwrap_or_default();
            out.push(SecretRow {
                resource_name: name.clone(),
                kind: kind.to_string(),
                status: "ACTIVE".to_string(),
                valid_cert: cert.validity().is_valid(),
                serial_number: cert.raw_serial_as_string().replace(':', ""),
                not_after: rfc3339(cert.validity().not_after),
                not_before: rfc3339(cert.validity().not_before),
                identity,
            });
        }
    }
    out
}

pub fn run(cmd: &ProxyConfigCommand) -> anyhow::Result<()> {
    let ProxyConfigCommand::Secret {
        pod,
        admin,
        mesh,
        output,
    } = cmd;
    let path = "/config_dump?resource=dynamic_active_secrets";
    let body = match pod {
        Some(pod) => http_get_on(crate::mesh_cmd::pod_admin(mesh, pod)?, pod, path)?,
        None => http_get(admin, path)?,
    };
    let dump: Value = serde_json::from_str(&body).context("the proxy's config dump")?;
    let rows = rows(&dump);
    if output == "json" {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<12} {:<8} {:<11} {:<34} {:<22} {:<22} IDENTITY",
        "RESOURCE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE"
    );
    for r in rows {
        println!(
            "{:<16} {:<12} {:<8} {:<11} {:<34} {:<22} {:<22} {}",
            r.resource_name,
            r.kind,
            r.status,
            r.valid_cert,
            r.serial_number,
            r.not_after,
            r.not_before,
            r.identity
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    #[test]
    fn a_trust_bundle_shows_one_row_per_root() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let roots: String = [a.path(), b.path()]
            .iter()
            .map(|d| {
                identity::Ca::from_dir(d, "cluster.local")
                    .unwrap()
                    .roots()
                    .concat()
            })
            .collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(roots);
        let dump = serde_json::json!({"configs": [{"secret": {"name": "ROOTCA",
            "validation_context": {"trusted_ca": {"inline_bytes": b64}}}}]});
        let rows = super::rows(&dump);
        assert_eq!(rows.len(), 2);
        assert!(
            rows.iter()
                .all(|r| r.resource_name == "ROOTCA" && r.kind == "CA" && r.valid_cert)
        );
        assert_ne!(rows[0].serial_number, rows[1].serial_number);
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            super::dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").as_deref(),
            Some("hello world")
        );
        assert_eq!(super::dechunk("5\r\nhel"), None);
    }
}
