//! `halyard token`: the local stand-in for Kubernetes' service-account token
//! issuer. `--new-key` creates a signing key (0600) and its public key (the
//! pilot's `--token-key`); otherwise it prints a token proving NS/SA for the
//! CA (audience `istio-ca`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// The signing key (PKCS#8 PEM).
    #[arg(long)]
    key: PathBuf,
    /// Create the key (and KEY.pub, the verification key for `halyard pilot
    /// --token-key`) instead of issuing a token; refuses to overwrite.
    #[arg(long)]
    new_key: bool,
    /// The workload's namespace.
    #[arg(long, required_unless_present = "new_key")]
    namespace: Option<String>,
    /// The workload's service account.
    #[arg(long, default_value = "default")]
    service_account: String,
    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = crate::parse_duration)]
    ttl: Duration,
}

pub fn run(args: &TokenArgs) -> anyhow::Result<()> {
    if args.new_key {
        let key = identity::TokenIssuer::generate_pem().context("generate a key")?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&args.key)
            .with_context(|| format!("create {}", args.key.display()))?;
        f.write_all(key.as_bytes())
            .with_context(|| format!("write {}", args.key.display()))?;
        let issuer = identity::TokenIssuer::from_pem(&key).context("the new key")?;
        let public = PathBuf::from(format!("{}.pub", args.key.display()));
        std::fs::write(&public, issuer.public_pem())
            .with_context(|| format!("write {}", public.display()))?;
        println!("{}", public.display());
        return Ok(());
    }
    let text = std::fs::read_to_string(&args.key)
        .with_context(|| format!("read {}", args.key.display()))?;
    let issuer = identity::TokenIssuer::from_pem(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.key.display()))?;
    let namespace = args.namespace.as_deref().unwrap_or("default");
    let token = issuer
        .issue(
            namespace,
            &args.service_account,
            args.ttl,
            SystemTime::now(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{token}");
    Ok(())
}
