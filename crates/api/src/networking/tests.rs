//! Every documented field of each networking kind, parsed through the loader
//! ("kitchen sink" documents), plus enum and one-of errors.

use std::path::Path;
use std::time::Duration as Std;

use super::*;
use crate::load::load_str;
use crate::{Resource, Spec};

fn one(text: &str) -> Resource {
    let (mut res, errs) = load_str(Path::new("k.yaml"), text);
    assert!(
        errs.is_empty(),
        "{}",
        errs.iter().map(|e| format!("{e}\n")).collect::<String>()
    );
    assert_eq!(res.len(), 1);
    res.remove(0)
}

fn err(text: &str) -> String {
    let (_, errs) = load_str(Path::new("k.yaml"), text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    errs[0].to_string()
}

fn secs(d: Option<crate::Duration>) -> Option<Std> {
    d.map(crate::Duration::get)
}

const VS: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews, reviews.bookinfo.svc.cluster.local]
  gateways: [mesh, istio-system/gw]
  exportTo: ["."]
  http:
  - name: canary
    match:
    - name: m1
      uri: {prefix: /api}
      scheme: {exact: https}
      method: {regex: "GET|POST"}
      authority: {exact: reviews:9080}
      headers:
        end-user: {exact: jason}
        x-present: {}
      withoutHeaders: {x-skip: {prefix: "1"}}
      queryParams: {debug: {exact: "true"}}
      port: 9080
      sourceLabels: {app: productpage}
      gateways: [mesh]
      ignoreUriCase: true
      sourceNamespace: bookinfo
      statPrefix: canary
    route:
    - destination: {host: reviews, subset: v2, port: {number: 9080}}
      weight: 75
      headers:
        request: {set: {x-a: "1"}, add: {x-b: "2"}, remove: [x-c]}
        response: {remove: [server]}
    - destination: {host: reviews, subset: v3}
      weight: 25
    rewrite:
      uri: /v2
      authority: reviews.internal
      uriRegexRewrite: {match: "^/api/(.*)", rewrite: "/\\1"}
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 100ms, retryOn: "5xx,connect-failure", retryRemoteLocalities: true, retryIgnorePreviousHosts: false, backoff: 25ms}
    fault:
      delay: {percentage: {value: 10}, fixedDelay: 5s, percent: 10}
      abort: {percentage: {value: 0.1}, httpStatus: 503}
    mirror: {host: reviews-shadow, subset: v1}
    mirrors:
    - destination: {host: mirror-a}
      percentage: {value: 50}
    mirrorPercentage: {value: 25.5}
    mirror_percent: 20
    corsPolicy:
      allowOrigins: [{exact: "https://a.example"}, {regex: ".*\\.b\\.example"}]
      allowOrigin: ["https://legacy"]
      allowMethods: [GET, POST]
      allowHeaders: [x-a]
      exposeHeaders: [x-b]
      maxAge: 24h
      allowCredentials: true
      unmatchedPreflights: IGNORE
    headers:
      request: {set: {x-route: canary}}
  - name: moved
    match: [{uri: {exact: /old}}]
    redirect: {uri: /new, authority: new.example, port: 8443, scheme: https, redirectCode: 308}
  - name: derived
    redirect: {derivePort: FROM_REQUEST_PORT, prefixRewrite: /p}
  - name: teapot
    directResponse: {status: 418, body: {string: "short and stout"}}
  - name: delegated
    delegate: {name: reviews-delegate, namespace: team}
  - fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 1}}, delay: {exponentialDelay: 1s}}
    route: [{destination: {host: x}}]
  tls:
  - match:
    - {sniHosts: [a.example], destinationSubnets: [10.0.0.0/8], port: 443, sourceLabels: {a: b}, gateways: [mesh], sourceNamespace: ns}
    route: [{destination: {host: a.example, port: {number: 443}}, weight: 100}]
  tcp:
  - match: [{port: 3306, destinationSubnets: [10.1.0.0/16], sourceSubnet: 10.2.0.0/16, sourceLabels: {app: db}, gateways: [mesh], sourceNamespace: db}]
    route: [{destination: {host: mysql}}]
"#;

#[test]
fn virtual_service_every_field() {
    let r = one(VS);
    assert_eq!(r.key(), "VirtualService/bookinfo/reviews");
    assert_eq!(r.api_version, "networking.istio.io/v1beta1");
    let Spec::VirtualService(vs) = r.spec else {
        panic!("{:?}", r.spec)
    };
    assert_eq!(vs.gateways, ["mesh", "istio-system/gw"]);
    let h = &vs.http[0];
    let m = &h.matches[0];
    assert_eq!(m.uri, Some(StringMatch::Prefix("/api".into())));
    assert_eq!(m.method, Some(StringMatch::Regex("GET|POST".into())));
    assert_eq!(m.headers["x-present"], StringMatch::Present);
    assert_eq!(m.without_headers["x-skip"], StringMatch::Prefix("1".into()));
    assert_eq!(m.query_params["debug"], StringMatch::Exact("true".into()));
    assert_eq!((m.port, m.ignore_uri_case), (Some(9080), true));
    assert_eq!(
        h.route[0].destination.port,
        Some(PortSelector { number: 9080 })
    );
    assert_eq!(h.route[0].destination.subset.as_deref(), Some("v2"));
    let req = h.route[0]
        .headers
        .as_ref()
        .and_then(|h| h.request.as_ref())
        .expect("request ops");
    assert_eq!(
        (req.set["x-a"].as_str(), req.add["x-b"].as_str()),
        ("1", "2")
    );
    assert_eq!(req.remove, ["x-c"]);
    assert_eq!(h.route[1].weight, 25);
    let rw = h.rewrite.as_ref().expect("rewrite");
    assert_eq!(
        rw.uri_regex_rewrite.as_ref().map(|r| r.rewrite.as_str()),
        Some("/\\1")
    );
    assert_eq!(secs(h.timeout), Some(Std::from_millis(1500)));
    let retries = h.retries.as_ref().expect("retries");
    assert_eq!(retries.attempts, 3);
    assert_eq!(secs(retries.per_try_timeout), Some(Std::from_millis(100)));
    assert_eq!(retries.retry_on.as_deref(), Some("5xx,connect-failure"));
    let fault = h.fault.as_ref().expect("fault");
    let delay = fault.delay.as_ref().expect("delay");
    assert_eq!(secs(delay.fixed_delay), Some(Std::from_secs(5)));
    assert_eq!(delay.percentage, Some(Percent { value: 10.0 }));
    assert_eq!(fault.abort.as_ref().and_then(|a| a.http_status), Some(503));
    assert_eq!(
        h.mirror.as_ref().map(|m| m.host.as_str()),
        Some("reviews-shadow")
    );
    assert_eq!(h.mirrors[0].percentage, Some(Percent { value: 50.0 }));
    assert_eq!(h.mirror_percentage, Some(Percent { value: 25.5 }));
    assert_eq!(h.mirror_percent, Some(20));
    let cors = h.cors_policy.as_ref().expect("cors");
    assert_eq!(
        cors.allow_origins[1],
        StringMatch::Regex(".*\\.b\\.example".into())
    );
    assert_eq!(secs(cors.max_age), Some(Std::from_secs(86400)));
    assert_eq!(cors.unmatched_preflights, Some(UnmatchedPreflights::Ignore));
    let redirect = vs.http[1].redirect.as_ref().expect("redirect");
    assert_eq!(
        (redirect.port, redirect.redirect_code),
        (Some(8443), Some(308))
    );
    let derived = vs.http[2].redirect.as_ref().expect("redirect");
    assert_eq!(
        derived.derive_port,
        Some(RedirectPortSelection::FromRequestPort)
    );
    let direct = vs.http[3].direct_response.as_ref().expect("direct");
    assert_eq!(direct.status, 418);
    assert_eq!(
        direct.body.as_ref().and_then(|b| b.string.as_deref()),
        Some("short and stout")
    );
    assert_eq!(
        vs.http[4].delegate.as_ref().map(|d| d.name.as_str()),
        Some("reviews-delegate")
    );
    let abort = vs.http[5]
        .fault
        .as_ref()
        .and_then(|f| f.abort.as_ref())
        .expect("abort");
    assert_eq!(abort.grpc_status.as_deref(), Some("UNAVAILABLE"));
    assert_eq!(vs.tls[0].matches[0].sni_hosts, ["a.example"]);
    assert_eq!(vs.tls[0].route[0].weight, 100);
    assert_eq!(vs.tcp[0].matches[0].port, Some(3306));
    assert_eq!(vs.tcp[0].route[0].destination.host, "mysql");
}

const DR: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  exportTo: ["*"]
  workloadSelector: {matchLabels: {app: client}}
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
      localityLbSetting:
        enabled: true
        distribute: [{from: us-west/zone1/*, to: {"us-west/zone1/*": 80, "us-west/zone2/*": 20}}]
        failover: [{from: us-east, to: eu-west}]
        failoverPriority: [topology.kubernetes.io/region]
      warmupDurationSecs: 60s
      warmup: {duration: 300s, minimumPercent: 5.0, aggression: 2.0}
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 30ms
        tcpKeepalive: {probes: 3, time: 7200s, interval: 75s}
        maxConnectionDuration: 1h
        idleTimeout: 1h
      http:
        http1MaxPendingRequests: 10
        http2MaxRequests: 1000
        maxRequestsPerConnection: 1
        maxRetries: 3
        idleTimeout: 90s
        h2UpgradePolicy: UPGRADE
        useClientProtocol: true
        maxConcurrentStreams: 100
        http2KeepAlive: {interval: 15s, timeout: 5s}
    outlierDetection:
      consecutiveErrors: 7
      consecutive5xxErrors: 5
      consecutiveGatewayErrors: 3
      consecutiveLocalOriginFailures: 2
      splitExternalLocalOriginErrors: true
      interval: 5m
      baseEjectionTime: 15m
      maxEjectionPercent: 100
      minHealthPercent: 50
      outlierDetectionHttpErrorCodes: [500, 503]
    tls:
      mode: MUTUAL
      clientCertificate: /etc/certs/cert.pem
      privateKey: /etc/certs/key.pem
      caCertificates: /etc/certs/ca.pem
      caCrl: /etc/certs/crl.pem
      subjectAltNames: [spiffe://cluster.local/ns/default/sa/reviews]
      sni: reviews.example
      insecureSkipVerify: false
    portLevelSettings:
    - port: {number: 80}
      loadBalancer:
        consistentHash:
          httpCookie: {name: user, path: /, ttl: 0s, attributes: [{name: SameSite, value: Strict}]}
          ringHash: {minimumRingSize: 1024}
      connectionPool: {tcp: {maxConnections: 10}}
      outlierDetection: {consecutive5xxErrors: 1}
      tls: {mode: ISTIO_MUTUAL}
    - port: {number: 81}
      loadBalancer: {consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 65537}}}
    - port: {number: 82}
      loadBalancer: {consistentHash: {useSourceIp: true, minimumRingSize: 8}}
    - port: {number: 83}
      loadBalancer: {consistentHash: {httpQueryParameterName: user}}
    tunnel: {protocol: CONNECT, targetHost: 10.0.0.1, targetPort: 8443}
    proxyProtocol: {version: V2}
    retryBudget: {percent: 20, minRetryConcurrency: 3, budgetInterval: 10s}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN, zoneAwareLbSetting: {enabled: true, minClusterSize: 3}}
      tls: {mode: DISABLE, credentialName: reviews-secret}
"#;

#[test]
fn destination_rule_every_field() {
    let r = one(DR);
    assert_eq!(r.key(), "DestinationRule/default/reviews");
    let Spec::DestinationRule(dr) = r.spec else {
        panic!("{:?}", r.spec)
    };
    assert_eq!(
        dr.workload_selector
            .map(|s| s.match_labels["app"].clone())
            .as_deref(),
        Some("client")
    );
    let tp = dr.traffic_policy.expect("traffic policy");
    let lb = tp.load_balancer.as_ref().expect("lb");
    assert_eq!(lb.simple, Some(SimpleLb::LeastRequest));
    let loc = lb.locality_lb_setting.as_ref().expect("locality");
    assert_eq!(loc.distribute[0].to["us-west/zone1/*"], 80);
    assert_eq!(secs(lb.warmup_duration_secs), Some(Std::from_secs(60)));
    assert_eq!(
        lb.warmup.as_ref().map(|w| w.duration.get()),
        Some(Std::from_secs(300))
    );
    let pool = tp.connection_pool.as_ref().expect("pool");
    let tcp = pool.tcp.as_ref().expect("tcp");
    assert_eq!(tcp.max_connections, Some(100));
    assert_eq!(secs(tcp.connect_timeout), Some(Std::from_millis(30)));
    assert_eq!(tcp.tcp_keepalive.as_ref().and_then(|k| k.probes), Some(3));
    let http = pool.http.as_ref().expect("http");
    assert_eq!(http.http1_max_pending_requests, Some(10));
    assert_eq!(http.h2_upgrade_policy, Some(H2UpgradePolicy::Upgrade));
    assert_eq!(
        secs(http.http2_keep_alive.as_ref().and_then(|k| k.interval)),
        Some(Std::from_secs(15))
    );
    let od = tp.outlier_detection.as_ref().expect("outlier");
    assert_eq!(od.consecutive_5xx_errors, Some(5));
    assert_eq!(secs(od.base_ejection_time), Some(Std::from_secs(900)));
    assert_eq!(od.outlier_detection_http_error_codes, [500, 503]);
    let tls = tp.tls.as_ref().expect("tls");
    assert_eq!(tls.mode, Some(ClientTlsMode::Mutual));
    assert_eq!(tls.sni.as_deref(), Some("reviews.example"));
    let p80 = &tp.port_level_settings[0];
    assert_eq!(p80.port, Some(PortSelector { number: 80 }));
    let ch = p80
        .load_balancer
        .as_ref()
        .and_then(|l| l.consistent_hash.as_ref())
        .expect("hash");
    let cookie = ch.http_cookie.as_ref().expect("cookie");
    assert_eq!(
        (cookie.name.as_str(), secs(cookie.ttl)),
        ("user", Some(Std::ZERO))
    );
    assert_eq!(
        ch.ring_hash.as_ref().and_then(|r| r.minimum_ring_size),
        Some(1024)
    );
    assert_eq!(
        p80.tls.as_ref().and_then(|t| t.mode),
        Some(ClientTlsMode::IstioMutual)
    );
    assert_eq!(tp.tunnel.as_ref().map(|t| t.target_port), Some(8443));
    assert_eq!(
        tp.proxy_protocol.as_ref().and_then(|p| p.version),
        Some(ProxyProtocolVersion::V2)
    );
    assert_eq!(tp.retry_budget.as_ref().and_then(|b| b.percent), Some(20.0));
    let v1 = &dr.subsets[0];
    assert_eq!(
        (v1.name.as_str(), v1.labels["version"].as_str()),
        ("v1", "v1")
    );
    let v1_lb = v1
        .traffic_policy
        .as_ref()
        .and_then(|t| t.load_balancer.as_ref())
        .expect("lb");
    assert_eq!(v1_lb.simple, Some(SimpleLb::RoundRobin));
}

#[test]
fn service_entry_workload_entry_sidecar_gateway() {
    let r = one(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: egress}\n\
         spec:\n  hosts: [api.example.com]\n  addresses: [240.0.0.1/32]\n\
         \x20 ports: [{number: 443, protocol: TLS, name: tls, targetPort: 8443}]\n\
         \x20 location: MESH_EXTERNAL\n  resolution: DNS_ROUND_ROBIN\n  exportTo: ['.']\n  subjectAltNames: [a]\n\
         \x20 endpoints:\n  - {address: 1.2.3.4, ports: {tls: 9443}, labels: {v: '1'}, network: n1, locality: r/z, weight: 3, serviceAccount: sa}\n",
    );
    let Spec::ServiceEntry(se) = r.spec else {
        panic!()
    };
    assert_eq!(se.resolution, Some(Resolution::DnsRoundRobin));
    assert_eq!(se.location, Some(Location::MeshExternal));
    assert_eq!(se.ports[0].target_port, Some(8443));
    assert_eq!(se.endpoints[0].ports["tls"], 9443);
    assert_eq!(se.endpoints[0].weight, Some(3));

    let r = one(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm1}\n\
         spec: {address: 10.0.0.5, ports: {http: 8080}, labels: {app: vm}, network: vpc, locality: us/a, weight: 1, serviceAccount: vm-sa}\n",
    );
    let Spec::WorkloadEntry(we) = r.spec else {
        panic!()
    };
    assert_eq!(we.address.as_deref(), Some("10.0.0.5"));
    assert_eq!(we.service_account.as_deref(), Some("vm-sa"));

    let r = one(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: prod}\n\
         spec:\n  workloadSelector: {labels: {app: ratings}}\n\
         \x20 ingress:\n  - port: {number: 9080, protocol: HTTP, name: http, targetPort: 9090}\n    \
         bind: 0.0.0.0\n    captureMode: IPTABLES\n    defaultEndpoint: 127.0.0.1:8080\n    \
         tls: {mode: SIMPLE, credentialName: c}\n    connectionPool: {http: {http1MaxPendingRequests: 5}}\n\
         \x20 egress:\n  - hosts: [./*, istio-system/*]\n    port: {number: 3306, protocol: MYSQL, name: db}\n    captureMode: NONE\n    bind: 127.0.0.2\n\
         \x20 outboundTrafficPolicy: {mode: REGISTRY_ONLY, egressProxy: {host: egress.example, port: {number: 443}}}\n\
         \x20 inboundConnectionPool: {tcp: {maxConnections: 50}}\n",
    );
    let Spec::Sidecar(sc) = r.spec else { panic!() };
    assert_eq!(sc.ingress[0].capture_mode, Some(CaptureMode::Iptables));
    assert_eq!(sc.ingress[0].port.target_port, Some(9090));
    assert_eq!(sc.egress[0].hosts, ["./*", "istio-system/*"]);
    let otp = sc.outbound_traffic_policy.expect("otp");
    assert_eq!(otp.mode, Some(OutboundTrafficMode::RegistryOnly));
    assert_eq!(
        otp.egress_proxy.map(|d| d.host).as_deref(),
        Some("egress.example")
    );

    let r = one(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\n\
         spec:\n  selector: {istio: ingressgateway}\n  servers:\n\
         \x20 - port: {number: 443, protocol: HTTPS, name: https, targetPort: 8443}\n    name: main\n    bind: 0.0.0.0\n    \
         defaultEndpoint: 127.0.0.1:8080\n    hosts: [ns/a.example]\n    \
         tls: {mode: MUTUAL, serverCertificate: /c, privateKey: /k, caCertificates: /ca, caCrl: /crl, credentialName: cred, \
         credentialNames: [c1, c2], caCertCredentialName: cacred, tlsCertificates: [{serverCertificate: /c2, privateKey: /k2}], \
         subjectAltNames: [san], verifyCertificateSpki: [s], verifyCertificateHash: [h], minProtocolVersion: TLSV1_2, \
         maxProtocolVersion: TLSV1_3, cipherSuites: [ECDHE-RSA-AES256-GCM-SHA384], insecureSkipVerify: false}\n\
         \x20 - port: {number: 80, protocol: HTTP, name: http}\n    hosts: ['*']\n    tls: {httpsRedirect: true}\n",
    );
    let Spec::Gateway(gw) = r.spec else { panic!() };
    assert_eq!(gw.selector["istio"], "ingressgateway");
    let tls = gw.servers[0].tls.as_ref().expect("tls");
    assert_eq!(tls.mode, Some(ServerTlsMode::Mutual));
    assert_eq!(tls.min_protocol_version, Some(TlsProtocolVersion::TlsV1_2));
    assert_eq!(tls.credential_names, ["c1", "c2"]);
    assert!(gw.servers[1].tls.as_ref().is_some_and(|t| t.https_redirect));
}

#[test]
fn enum_errors_list_accepted_values() {
    let e = err(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\n\
         spec: {outboundTrafficPolicy: {mode: registry_only}}\n",
    );
    assert!(
        e.ends_with("spec.outboundTrafficPolicy.mode: unknown variant `registry_only`, expected `REGISTRY_ONLY` or `ALLOW_ANY`, did you mean `REGISTRY_ONLY`?"),
        "{e}"
    );
    let e = err(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\n\
         spec: {hosts: [a], resolution: DNZ}\n",
    );
    assert!(e.contains("spec.resolution: unknown variant `DNZ`, expected one of `NONE`, `STATIC`, `DNS`, `DNS_ROUND_ROBIN`, `DYNAMIC_DNS`, did you mean `DNS`?"), "{e}");
}

#[test]
fn string_match_errors_have_paths() {
    let e = err(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\n\
         spec:\n  http:\n  - match:\n    - uri: {prefix: /a, exact: /b}\n",
    );
    assert!(
        e.contains("spec.http[0].match[0].uri: set only one of `exact`, `prefix` or `regex`"),
        "{e}"
    );
    let e = err(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\n\
         spec:\n  http:\n  - match:\n    - headers: {x: {exat: a}}\n",
    );
    assert!(
        e.contains("spec.http[0].match[0].headers.x.exat: unknown field `exat`"),
        "{e}"
    );
    assert!(e.ends_with("did you mean `exact`?"), "{e}");
}

#[test]
fn istio_api_valid_testdata_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/istio-testdata/istio-api/tests/testdata");
    if !dir.exists() {
        println!("skipping: {} not found", dir.display());
        return;
    }
    let mut loaded = 0;
    for name in [
        "destinationrule-valid.yaml",
        "serviceentry-valid.yaml",
        "workloadentry-valid.yaml",
    ] {
        let (res, errs) = crate::load::load_file(&dir.join(name));
        // libyaml (YAML 1.1) rejects the unquoted IPv6 `001:db8::` in a flow
        // list in the first ServiceEntry; Go's parser accepts it.
        let known = |e: &&crate::ConfigError| e.line == 11 && name == "serviceentry-valid.yaml";
        let unexpected: Vec<_> = errs.iter().filter(|e| !known(e)).collect();
        assert!(unexpected.is_empty(), "{name}: {unexpected:#?}");
        loaded += res.len();
    }
    assert_eq!(loaded, 13);
}

#[test]
fn one_of_fields_are_exclusive() {
    let head = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  http:\n";
    let e = err(&format!(
        "{head}  - fault: {{abort: {{httpStatus: 500, grpcStatus: UNAVAILABLE}}}}\n"
    ));
    assert!(
        e.contains("spec.http[0].fault.abort: set at most one of `httpStatus`, `grpcStatus`, `http2Error` (found `httpStatus` and `grpcStatus`)"),
        "{e}"
    );
    let e = err(&format!(
        "{head}  - fault: {{delay: {{fixedDelay: 1s, exponentialDelay: 1s}}}}\n"
    ));
    assert!(
        e.contains("spec.http[0].fault.delay: set at most one of"),
        "{e}"
    );
    let e = err(&format!(
        "{head}  - redirect: {{port: 1, derivePort: FROM_REQUEST_PORT}}\n"
    ));
    assert!(
        e.contains("spec.http[0].redirect: set at most one of `port`, `derivePort`"),
        "{e}"
    );
    let e = err(&format!(
        "{head}  - directResponse: {{status: 200, body: {{string: a, bytes: YQ==}}}}\n"
    ));
    assert!(
        e.contains("spec.http[0].directResponse.body: set at most one"),
        "{e}"
    );
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: d\n";
    let e = err(&format!(
        "{dr}  trafficPolicy: {{loadBalancer: {{simple: RANDOM, consistentHash: {{useSourceIp: true}}}}}}\n"
    ));
    assert!(
        e.contains(
            "spec.trafficPolicy.loadBalancer: set at most one of `simple`, `consistentHash`"
        ),
        "{e}"
    );
    let e = err(&format!(
        "{dr}  subsets:\n  - name: a\n    trafficPolicy:\n      portLevelSettings:\n      - loadBalancer: {{consistentHash: {{httpHeaderName: x, useSourceIp: true}}}}\n"
    ));
    assert!(
        e.starts_with("k.yaml:10:") && e.contains("spec.subsets[0].trafficPolicy.portLevelSettings[0].loadBalancer.consistentHash: set at most one of"),
        "{e}"
    );
    // One of each is fine.
    one(&format!(
        "{head}  - fault: {{abort: {{http2Error: x}}, delay: {{exponentialDelay: 1s}}}}\n    route: [{{destination: {{host: a}}}}]\n"
    ));
}

#[test]
fn specs_serialise_back_to_the_same_yaml_shape() {
    fn roundtrip<T>(value: &T) -> String
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let yaml = serde_yaml_ng::to_string(value).expect("serialise");
        let back: T = serde_yaml_ng::from_str(&yaml).expect("parse back");
        assert_eq!(&back, value);
        yaml
    }
    let Spec::VirtualService(vs) = one(VS).spec else {
        panic!()
    };
    let yaml = roundtrip(&vs);
    assert!(!yaml.contains("null"), "{yaml}");
    assert!(yaml.contains("perTryTimeout: 0.1s"), "{yaml}");
    assert!(yaml.contains("match:"), "{yaml}");
    let Spec::DestinationRule(dr) = one(DR).spec else {
        panic!()
    };
    let yaml = roundtrip(&dr);
    assert!(yaml.contains("consecutive5xxErrors: 5"), "{yaml}");
    assert!(!yaml.contains("null"), "{yaml}");
}
