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
//! parameters are ignored; the failure parameters are under "Failing on
//! purpose"):
//!
//! | parameter | effect |
//! | --- | --- |
//! | `status=503` | response status, 200..=599 |
//! | `delay=200ms` | wait before answering; `ms`, `s` or `m` units, fractions allowed (`1.5s`), `0`; capped at 60 s; replaces `--delay` |
//! | `size=1024` | body is exactly that many bytes (up to 16 MiB): the JSON gets a trailing `"pad":"xxx…"` field, or trailing spaces when the pad field would not fit; if the JSON alone is already larger, the body is `size` bytes of `x` with `content-type: text/plain` |
//! | `header=name:value` | adds a response header (repeatable); the first one for a name replaces the echo's own header of that name |
//!
//! Special paths:
//!
//! * `/healthz`: `200` `ok` (text/plain), no shaping, never counted or
//!   failed.
//! * `/hits`: the hit counters (see below), never counted or failed.
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
//! # Failing on purpose
//!
//! For retry, outlier detection and circuit breaking tests. A request fails
//! as its own parameters say; a whole echo (the "bad pod" of a mesh, whose
//! callers' URLs a test cannot change) fails as its flags say. Parameters
//! and flags:
//!
//! | query (gRPC metadata) | flag | effect |
//! | --- | --- | --- |
//! | `fail=HOW` (`x-echo-fail`) | `--fail HOW` | how a failing request fails (below). Alone: every request fails |
//! | `fail_first=K` (`x-echo-fail-first`) | `--fail-first K` | the first K requests fail, then all succeed |
//! | `fail_first_per_conn=K` (`x-echo-fail-first-per-conn`) | `--fail-first-per-conn K` | the first K requests of each connection (h2: streams in arrival order) fail |
//! | `fail_fraction=F` (`x-echo-fail-fraction`) | `--fail-fraction F` | request n fails when n·F crosses an integer, so exactly ⌊N·F⌋ of the first N fail (0.3: the 4th, 7th, 10th, 14th, …; 1/2: every second). `F` is `0`..`1` with up to 9 decimals, or `a/b` |
//! | `key=K` (`x-echo-key`) | | the counter the request's `fail_first` and `fail_fraction` count on: they need one (400 without), so tests sharing an echo keep apart. `?fail_first=2&key=t1` fails twice, then succeeds |
//! | `delay=D` (`x-echo-delay`) | `--delay D` | wait before answering or failing, from when the request head arrived; the query replaces the flag |
//! | | `--refuse` | every connection to every port (HTTP and TCP) is reset (TCP RST, SO_LINGER 0) as soon as it is accepted. A refused connection is a closed port: point the test at an unused one |
//!
//! `HOW`:
//!
//! | `HOW` | HTTP/1.1 | h2 |
//! | --- | --- | --- |
//! | `503` (any 200..=599) | the usual answer with that status | same (gRPC: that HTTP status, empty body) |
//! | `grpc-14`, `grpc-unavailable` (0..=16, names as in Envoy's `retry_on`: `cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`, …) | HTTP 200, trailers-only `grpc-status` | same |
//! | `close` | connection closed after the request head, no answer (FIN; the kernel sends RST if request bytes are left unread) | connection closed, no GOAWAY |
//! | `rst` | connection reset (TCP RST) | same |
//! | `refused-stream`, `cancel`, `internal-error` | connection reset (TCP RST): HTTP/1.1 has no streams | RST_STREAM with that code; the connection lives on |
//!
//! A request's own triggers count on its key (`fail_first_per_conn` on its
//! connection); the flags' on the echo's total. Every trigger counts every
//! request, and a request fails when any trigger picks it. `fail=` says how
//! the requests its own triggers pick fail, `--fail` how the flags' do
//! (default `503`, for gRPC `grpc-unavailable`); when both pick a request,
//! its own side wins. Counted are
//! all requests but `/healthz`, `/hits` and those rejected with 400 (gRPC:
//! `INVALID_ARGUMENT`) for a bad parameter.
//!
//! Every counted answer carries `x-echo-hits` (the request's number since the
//! last reset), `x-echo-key-hits` (its number among requests with its key),
//! `x-echo-failed` on a failure (the trigger: `fail_first`, `--fail-fraction`,
//! …), and `x-echo-attempt-count` (the request's `x-envoy-attempt-count`,
//! which the body's `headers` shows too).
//!
//! Hit counts: `GET /hits` answers
//! `{"service":…,"version":…,"pod":…,"connections":5,"hits":12,"failed":3,"keys":{"t1":{"hits":3,"failed":2}}}`
//! (connections accepted on the HTTP ports, refused ones included);
//! `GET /hits?key=t1` answers `{"service":…,"key":"t1","hits":3,"failed":2}`.
//! `DELETE /hits` zeroes everything (so `--fail-first` fails its first K
//! again) and answers with the counts before; `DELETE /hits?key=t1` forgets
//! that key only. Connections keep their own counts. At most 100,000 keys are
//! kept between resets; a request with a new one past that is answered 400.
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
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

mod call;
mod conn;
mod faults;
pub mod grpc;
mod hits;
mod http_server;
mod identity;
mod report;
mod shaping;
mod tcp_echo;

pub use call::{CALL_TIMEOUT, FORWARDED_HEADERS};
pub use faults::{FailWith, FaultPlan, Fraction};
pub use hits::MAX_KEYS;
pub use shaping::{MAX_DELAY, MAX_KEY_LEN, MAX_SIZE};

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
    /// How failing requests fail: a status (503), grpc-N or grpc-NAME
    /// (grpc-unavailable), close, rst, refused-stream, cancel or
    /// internal-error. Alone, every request fails; with --fail-first,
    /// --fail-first-per-conn or --fail-fraction, the ones they pick (default
    /// 503, gRPC: grpc-unavailable).
    #[arg(long, value_name = "HOW", value_parser = faults::fail_arg)]
    pub fail: Option<FailWith>,
    /// Fail the first K requests since start (or since DELETE /hits).
    #[arg(long, value_name = "K")]
    pub fail_first: Option<u64>,
    /// Fail the first K requests of every connection.
    #[arg(long, value_name = "K")]
    pub fail_first_per_conn: Option<u64>,
    /// Fail this fraction of requests, exactly: request n fails when n*F
    /// crosses an integer (0.3: the 4th, 7th, 10th, 14th, ...).
    #[arg(long, value_name = "F", value_parser = faults::fraction_arg)]
    pub fail_fraction: Option<Fraction>,
    /// Wait this long before answering every request (?delay= overrides it).
    #[arg(long, value_name = "DURATION", value_parser = delay_arg)]
    pub delay: Option<Duration>,
    /// Reset (TCP RST) every connection to the HTTP and TCP ports as soon as
    /// it is accepted. A refused connection is a closed port: use an unused
    /// one.
    #[arg(long)]
    pub refuse: bool,
}

impl EchoArgs {
    /// The server-wide failure plan (`--fail`, `--fail-first`, ...).
    pub fn fault_plan(&self) -> FaultPlan {
        FaultPlan {
            fail: self.fail,
            first: self.fail_first,
            first_per_conn: self.fail_first_per_conn,
            fraction: self.fail_fraction,
        }
    }
}

fn delay_arg(value: &str) -> Result<Duration, String> {
    shaping::parse_delay(value)
        .map_err(|_| "want a duration such as 200ms, 1s or 1.5s (at most 60s)".to_owned())
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
    let faults = args.fault_plan();
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
        faults,
        delay: args.delay,
        refuse: args.refuse,
        hits: hits::Hits::default(),
    });
    for listener in http {
        tokio::spawn(http_server::accept_loop(listener, state.clone()));
    }
    let workload = Arc::new(workload);
    for listener in tcp {
        tokio::spawn(tcp_echo::accept_loop(
            listener,
            workload.clone(),
            args.refuse,
        ));
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        echo: EchoArgs,
    }

    fn parse(args: &[&str]) -> Result<EchoArgs, String> {
        let argv = std::iter::once("echo").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .map(|cli| cli.echo)
            .map_err(|err| err.to_string())
    }

    #[test]
    fn failure_flags() {
        let args = parse(&[
            "--fail",
            "grpc-unavailable",
            "--fail-first",
            "2",
            "--fail-first-per-conn",
            "1",
            "--fail-fraction",
            "1/3",
            "--delay",
            "150ms",
            "--refuse",
        ])
        .expect("valid flags");
        assert_eq!(
            args.fault_plan(),
            FaultPlan {
                fail: Some(FailWith::Grpc(tonic::Code::Unavailable)),
                first: Some(2),
                first_per_conn: Some(1),
                fraction: Fraction::parse("1/3"),
            }
        );
        assert_eq!(args.delay, Some(Duration::from_millis(150)));
        assert!(args.refuse);
        let plain = parse(&[]).expect("no flags");
        assert_eq!(plain.fault_plan(), FaultPlan::default());
        assert!(!plain.refuse);
    }

    #[test]
    fn bad_failure_flags_get_one_clear_line() {
        for (args, names) in [
            (&["--fail", "reset"][..], "--fail <HOW>"),
            (&["--fail-fraction", "1.5"], "--fail-fraction <F>"),
            (&["--fail-first", "two"], "--fail-first <K>"),
            (&["--delay", "soon"], "--delay <DURATION>"),
        ] {
            let err = parse(args).expect_err("rejected");
            let first = err.lines().next().unwrap_or_default();
            assert!(first.starts_with("error: "), "{first}");
            assert!(first.contains(names), "{args:?}: {first}");
        }
        let err = parse(&["--fail-fraction", "2"]).expect_err("rejected");
        assert!(err.contains("want a fraction in 0..=1"), "{err}");
    }
}
