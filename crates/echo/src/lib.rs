//! `halyard echo`: the universal test app for the mesh, in the spirit of
//! Istio's `echo` and httpbin. Deploy it as every service of a test topology;
//! each answer says which workload answered and what it received, so a test
//! can check routing, header manipulation, fault injection and tracing from
//! the client side alone.
//!
//! # HTTP (`--port`, repeatable, default 8080)
//!
//! Each port serves HTTP/1.1 and h2c (HTTP/2 with prior knowledge), detected
//! per connection; HTTP/1.1 keep-alive works. Every request (any method, any
//! path) is answered `200` with `content-type: application/json`, the headers
//! `x-echo-service`, `x-echo-version`, `x-echo-pod`, and a body like:
//!
//! ```json
//! {"service":"reviews","version":"v2","pod":"reviews-v2-7f9c","namespace":"default",
//!  "method":"GET","path":"/p?x=1","host":"reviews:9080","proto":"HTTP/1.1",
//!  "headers":{"user-agent":"curl/8.5.0","x-request-id":"abc"},
//!  "peer":"127.0.0.6:40112","local":"10.0.0.7:9080","calls":[]}
//! ```
//!
//! `path` is path and query as received, `host` the `:authority` (or `Host`),
//! `proto` `HTTP/1.1` or `HTTP/2.0`, `headers` the request headers with
//! lower-case names and repeated values joined by `,`, `peer`/`local` the two
//! ends of the TCP connection.
//!
//! Query parameters shape the answer (values percent-encoded as usual; an
//! unparseable value is answered `400` text/plain saying why; unknown
//! parameters are ignored):
//!
//! | parameter | effect |
//! | --- | --- |
//! | `status=503` | response status, 200..=599 |
//! | `delay=200ms` | wait before answering; `ms`, `s` or `m` units, fractions allowed (`1.5s`), `0`; capped at 60 s |
//! | `size=1024` | body is exactly that many bytes (up to 16 MiB): the JSON gets a trailing `"pad":"xxx…"` field, or trailing spaces when the pad field would not fit; if the JSON alone is already larger, the body is `size` bytes of `x` with `content-type: text/plain` |
//! | `header=name:value` | adds a response header (repeatable); the first one for a name replaces the echo's own header of that name |
//!
//! Special paths:
//!
//! * `/healthz`: `200` `ok` (text/plain), no shaping.
//! * `/call?url=http://host:port/path` (`url` repeatable, percent-encode it if
//!   it has a query): makes those HTTP/1.1 `GET`s in order, each with a 10 s
//!   timeout, forwarding the inbound `x-request-id`, `b3`, `x-b3-traceid`,
//!   `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`, `traceparent`,
//!   `tracestate` and `x-canary` headers, and lists the answers in `calls`:
//!   `{"url":…,"status":200,"body":<JSON if the answer is JSON, else a
//!   string>}`, or `{"url":…,"status":null,"body":null,"error":"…"}` when no
//!   answer came. The echo's own status stays 200 unless `status=` is given.
//!
//! # gRPC (on the HTTP ports)
//!
//! Requests with `content-type: application/grpc` go to a unary gRPC service,
//! `halyard.echo.v1.EchoService/Echo` (`proto/echo.proto` in this crate): it
//! answers with the request's message plus service, version, pod, namespace,
//! request metadata, host, peer and local address, and the same `x-echo-*`
//! headers as initial metadata. Other methods answer `UNIMPLEMENTED`.
//!
//! # TCP (`--tcp-port`, repeatable)
//!
//! Client speaks first. On the first bytes received the echo writes one line,
//! `hello from SERVICE VERSION POD\n` (POD is `-` when unset), then echoes
//! every received byte unchanged; when the client half-closes, it half-closes
//! too.
//!
//! # Identity
//!
//! `--service`/`SERVICE_NAME`, `--version`/`SERVICE_VERSION`,
//! `--pod`/`POD_NAME` and `--namespace`/`POD_NAMESPACE` (the last two usually
//! from the Kubernetes downward API).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

mod call;
pub mod grpc;
mod http_server;
mod identity;
mod report;
mod shaping;
mod tcp_echo;

pub use call::{CALL_TIMEOUT, FORWARDED_HEADERS};
pub use shaping::{MAX_DELAY, MAX_SIZE};

/// Command-line arguments of `halyard echo`.
#[derive(clap::Args, Debug, Clone)]
pub struct EchoArgs {
    /// HTTP ports to serve (repeatable); HTTP/1.1 and h2c (prior knowledge)
    /// on each, detected per connection.
    #[arg(long = "port", default_value = "8080")]
    pub ports: Vec<u16>,
    /// TCP echo ports (repeatable): client speaks first, the echo answers
    /// "hello from SERVICE VERSION POD\n" and then echoes every byte back.
    #[arg(long = "tcp-port")]
    pub tcp_ports: Vec<u16>,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Service name reported in every answer.
    #[arg(long, env = "SERVICE_NAME", default_value = "echo")]
    pub service: String,
    /// Service version reported in every answer.
    #[arg(long, env = "SERVICE_VERSION", default_value = "v1")]
    pub version: String,
    /// Pod name reported in every answer.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub pod: String,
    /// Namespace reported in every answer.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Upstreams called on every request other than /call and /healthz
    /// (repeatable, or comma-separated in UPSTREAMS), their answers embedded
    /// in `calls`: how bookinfo's productpage calls details and reviews.
    #[arg(long = "upstream", env = "UPSTREAMS", value_delimiter = ',')]
    pub upstreams: Vec<String>,
}

/// Serves until SIGINT or SIGTERM.
pub async fn run(args: EchoArgs) -> anyhow::Result<()> {
    let addrs = serve(args).await?;
    tracing::info!(?addrs, "echo serving");
    shutdown_signal().await?;
    tracing::info!("echo shutting down");
    Ok(())
}

/// Binds every port (port 0 picks an ephemeral one), spawns the servers on
/// the current runtime and returns the bound addresses: HTTP ports first, then
/// TCP ports, each in the order given. Fails without serving anything if any
/// port cannot be bound.
pub async fn serve(args: EchoArgs) -> anyhow::Result<Vec<SocketAddr>> {
    let upstreams = args.upstreams.clone();
    let workload = identity::Workload::new(args.service, args.version, args.pod, args.namespace)?;

    let mut http = Vec::with_capacity(args.ports.len());
    for port in &args.ports {
        http.push(bind(SocketAddr::new(args.bind, *port)).await?);
    }
    let mut tcp = Vec::with_capacity(args.tcp_ports.len());
    for port in &args.tcp_ports {
        tcp.push(bind(SocketAddr::new(args.bind, *port)).await?);
    }

    let mut addrs = Vec::with_capacity(http.len() + tcp.len());
    for listener in http.iter().chain(&tcp) {
        addrs.push(listener.local_addr()?);
    }

    let state = Arc::new(http_server::EchoState {
        workload: workload.clone(),
        client: call::outbound_client(),
        upstreams,
    });
    for listener in http {
        tokio::spawn(http_server::accept_loop(listener, state.clone()));
    }
    let workload = Arc::new(workload);
    for listener in tcp {
        tokio::spawn(tcp_echo::accept_loop(listener, workload.clone()));
    }
    Ok(addrs)
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("echo: binding {addr}"))
}

#[cfg(unix)]
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("echo: installing SIGTERM handler")?;
    tokio::select! {
        res = tokio::signal::ctrl_c() => res.context("echo: waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn shutdown_signal() -> anyhow::Result<()> {
    tokio::signal::ctrl_c()
        .await
        .context("echo: waiting for ctrl-c")
}
