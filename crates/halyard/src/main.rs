//! `halyard`: the one binary — control plane, sidecar proxy, bootstrap
//! generator and the echo test app.

mod agent;
mod analyze;
mod authz_cmd;
mod bootstrap;
mod mesh_cmd;
mod progress;
mod proxy_config;
mod token;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "halyard",
    version,
    about = "A service mesh for Istio's YAML, in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Control plane: load Istio config from a directory, serve it over ADS.
    Pilot(PilotArgs),
    /// Sidecar proxy: run an Envoy bootstrap (static resources and/or ADS).
    Proxy(ProxyArgs),
    /// Print an Envoy bootstrap for a sidecar (works for Envoy and `halyard proxy`).
    Bootstrap(bootstrap::BootstrapArgs),
    /// pilot-agent's SDS role for a stock Envoy: keep the workload certificate
    /// and serve it over SDS on Istio's UDS path.
    Agent(agent::AgentArgs),
    /// What a proxy holds (istioctl proxy-config): `secret`.
    #[command(subcommand)]
    ProxyConfig(proxy_config::ProxyConfigCommand),
    /// Experimental (istioctl x): `authz check POD`.
    #[command(subcommand)]
    X(authz_cmd::XCommand),
    /// Service-account tokens for the CA: create a signing key, or issue a token.
    Token(token::TokenArgs),
    /// The test application: echoes requests as JSON, makes calls on request.
    Echo(echo::EchoArgs),
    /// Check Istio/Kubernetes YAML offline: schema and Istio's validation rules.
    Validate(validate::ValidateArgs),
    /// Cross-resource analysis with Istio's message codes (like `istioctl analyze`).
    Analyze(analyze::AnalyzeArgs),
    /// Start a whole mesh on this machine from a directory of manifests (root).
    Up(mesh_cmd::UpArgs),
    /// Stop the mesh and remove every namespace, rule, hosts file and process.
    Down(mesh_cmd::MeshArgs),
    /// Pods and services of the running mesh.
    Status(mesh_cmd::MeshArgs),
    /// Run a command inside a pod's network namespace.
    Exec {
        /// POD or POD.NAMESPACE
        pod: String,
        #[command(flatten)]
        mesh: mesh_cmd::MeshArgs,
        /// The command, after `--`.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// A pod's app log (or its sidecar's).
    Logs {
        pod: String,
        #[arg(long)]
        sidecar: bool,
        #[command(flatten)]
        mesh: mesh_cmd::MeshArgs,
    },
}

#[derive(clap::Args, Debug)]
struct PilotArgs {
    /// Directory (or file) of Istio and Kubernetes YAML; watched for edits.
    #[arg(long = "config")]
    config: PathBuf,
    /// Generated registry directory (WorkloadEntries), loaded and watched too.
    #[arg(long)]
    registry: Option<PathBuf>,
    /// Plaintext xDS (ADS) address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds: SocketAddr,
    /// Debug address (/debug/syncz, /debug/configz, /debug/config_dump).
    #[arg(long, default_value = "127.0.0.1:15014")]
    debug: SocketAddr,
    /// Quiet time after an edit before pushing, e.g. 100ms.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    debounce: Duration,
    /// Also answer DNS (UDP and TCP) here for Services and ServiceEntry hosts.
    #[arg(long)]
    dns: Option<SocketAddr>,
    /// Give ServiceEntry hosts without addresses a VIP in 240.240.0.0/16
    /// (Istio's DNS auto-allocation).
    #[arg(long, env = "PILOT_ENABLE_IP_AUTOALLOCATE")]
    auto_allocate: bool,
    /// Proxies with a push in flight at once (Istio's PILOT_PUSH_THROTTLE);
    /// the rest wait for a slot, freed by the ACK.
    #[arg(long, env = "PILOT_PUSH_THROTTLE", default_value_t = pilot::DEFAULT_PUSH_THROTTLE)]
    push_throttle: usize,
    /// Drop the stream of a proxy that has not read a response for this
    /// long, e.g. 30s; 0 never (Istio's PILOT_XDS_SEND_TIMEOUT).
    #[arg(long, env = "PILOT_XDS_SEND_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    send_timeout: Duration,
    /// Run the mesh CA: Istio's plug-in CA files in DIR (`ca-cert.pem`,
    /// `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`), or a self-signed
    /// root created there on first start. Serves xDS and Istio's certificate
    /// service over TLS on --secure-xds.
    #[arg(long, requires = "token_key")]
    ca_dir: Option<PathBuf>,
    /// Public key (PEM) that verifies workloads' service-account tokens.
    #[arg(long)]
    token_key: Option<PathBuf>,
    /// xDS and the CA over TLS (Istio's 15012).
    #[arg(long, default_value = "127.0.0.1:15012")]
    secure_xds: SocketAddr,
    /// MeshConfig file (`trustDomain`, ...); a bare MeshConfig, Helm values
    /// with `meshConfig:`, or the `istio` ConfigMap.
    #[arg(long)]
    mesh_config: Option<PathBuf>,
    /// Workload certificate lifetime when a CSR asks for none (Istio's
    /// DEFAULT_WORKLOAD_CERT_TTL).
    #[arg(long, env = "DEFAULT_WORKLOAD_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    workload_cert_ttl: Duration,
}

#[derive(clap::Args, Debug)]
struct ProxyArgs {
    /// Envoy bootstrap (JSON or YAML), e.g. from `halyard bootstrap`.
    #[arg(long)]
    bootstrap: PathBuf,
    /// Port for /healthz/ready (0 = ephemeral, omit with --no-ready-port).
    #[arg(long, default_value_t = 15021)]
    ready_port: u16,
    /// Do not serve the readiness port.
    #[arg(long)]
    no_ready_port: bool,
    /// Worker threads (like Envoy's --concurrency).
    #[arg(long)]
    concurrency: Option<usize>,
    /// With --token: keep a workload certificate from the mesh CA in
    /// process (no agent) as the SDS secrets `default` and `ROOTCA`.
    #[command(flatten)]
    identity: agent::IdentityArgs,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<api::Duration>()
        .map(|d| d.get())
        .map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    // A panic is a bug, but it still gets one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("halyard: internal error: {msg}{at} (please report it)");
    }));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HALYARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // clap's first line says what is wrong; the usage is one --help away.
            let text = e.to_string();
            // A first line ending in ':' is completed by the next one (the
            // missing arguments' names), still on one line.
            let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut first = lines.next().unwrap_or("error: bad arguments").to_string();
            if first.ends_with(':')
                && let Some(next) = lines.next()
            {
                first = format!("{first} {next}");
            }
            eprintln!(
                "halyard: {} (see `halyard --help`)",
                first.trim_start_matches("error: ")
            );
            return std::process::ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` is the whole cause chain on one line, never a backtrace.
            eprintln!("halyard: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bootstrap(args) => {
            print!("{}", bootstrap::render(&args)?);
            Ok(())
        }
        Command::Pilot(args) => runtime(None)?.block_on(async {
            let mesh_config = match &args.mesh_config {
                Some(path) => {
                    api::mesh_config::load_mesh_config(path).map_err(|e| anyhow::anyhow!("{e}"))?
                }
                None => api::mesh_config::MeshConfig::default(),
            };
            let ca = match (&args.ca_dir, &args.token_key) {
                (Some(dir), Some(token_key)) => Some(pilot::CaOptions {
                    dir: dir.clone(),
                    token_key: token_key.clone(),
                    secure_addr: args.secure_xds,
                    trust_domain: mesh_config.trust_domain().to_string(),
                    trust_domain_aliases: mesh_config.trust_domain_aliases.clone(),
                    auto_mtls: mesh_config.enable_auto_mtls.unwrap_or(true),
                    workload_ttl: args.workload_cert_ttl,
                }),
                _ => None,
            };
            let opts = pilot::PilotOptions {
                config_dir: args.config,
                registry_dir: args.registry,
                xds_addr: args.xds,
                debug_addr: args.debug,
                debounce: args.debounce,
                dns_addr: args.dns,
                auto_allocate: args.auto_allocate,
                push_throttle: args.push_throttle,
                send_timeout: (!args.send_timeout.is_zero()).then_some(args.send_timeout),
                extension_providers: mesh_config.extension_providers.clone(),
                path_normalization: mesh_config.path_normalization(),
                access_log: pilot::translate::access_log::AccessLogConfig::from_mesh_config(
                    &mesh_config,
                ),
                ca,
            };
            tokio::select! {
                r = pilot::run(opts, None) => r.context("pilot"),
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }),
        Command::Proxy(args) => runtime(args.concurrency)?.block_on(async {
            let opts = proxy::ProxyOptions {
                bootstrap: args.bootstrap,
                ready_port: (!args.no_ready_port).then_some(args.ready_port),
                concurrency: args.concurrency,
            };
            let keeper = args
                .identity
                .enabled()
                .then(|| args.identity.keeper())
                .transpose()?;
            let bootstrap = proxy::bootstrap::load(&opts.bootstrap)?;
            let proxy = proxy::Proxy::start(bootstrap, &opts).await?;
            tracing::info!(admin = %proxy.admin_addr(), "proxy started");
            let identity = async {
                match keeper {
                    Some((keep, bundles, status)) => {
                        let secrets = proxy.store().secrets.clone();
                        tokio::join!(
                            keep,
                            agent::feed(bundles, secrets.clone()),
                            agent::report(status, secrets)
                        );
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = tokio::signal::ctrl_c() => r?,
                () = identity => {}
            }
            tracing::info!("shutting down");
            drop(proxy);
            anyhow::Ok(())
        }),
        Command::Echo(args) => runtime(None)?.block_on(echo::run(args)),
        Command::Token(args) => token::run(&args),
        Command::ProxyConfig(cmd) => proxy_config::run(&cmd),
        Command::X(cmd) => authz_cmd::run(&cmd),
        Command::Agent(args) => runtime(None)?.block_on(agent::run(args)),
        Command::Validate(args) => std::process::exit(validate::run(&args)),
        Command::Analyze(args) => std::process::exit(analyze::run(&args)),
        Command::Up(args) => mesh_cmd::up(args),
        Command::Down(mesh) => mesh_cmd::down(mesh),
        Command::Status(mesh) => mesh_cmd::status(mesh),
        Command::Exec { pod, mesh, cmd } => mesh_cmd::exec(mesh, pod, cmd),
        Command::Logs { pod, sidecar, mesh } => mesh_cmd::logs(mesh, pod, sidecar),
    }
}

fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n.max(1));
    }
    Ok(b.enable_all().build()?)
}
