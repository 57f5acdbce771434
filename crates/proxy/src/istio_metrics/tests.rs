use super::*;
use crate::downstream::Downstream;
use crate::error::ResponseFlag;
use crate::tls::{PeerCert, PeerTls};

fn node() -> core::Node {
    let json = serde_json::json!({
        "id": "sidecar~10.0.0.5~productpage-v1-1.bookinfo~bookinfo.svc.cluster.local",
        "metadata": {
            "NAMESPACE": "bookinfo",
            "NAME": "productpage-v1-1",
            "WORKLOAD_NAME": "productpage-v1",
            "CLUSTER_ID": "Kubernetes",
            "LABELS": {"app": "productpage", "version": "v1"}
        }
    });
    xds::json::from_yaml(&json.to_string()).expect("node")
}

fn info(direction: TrafficDirection, cluster: &str, code: u16, mtls: bool) -> StreamInfo {
    let tls = mtls.then(|| {
        Arc::new(PeerTls {
            local_uri: Some("spiffe://cluster.local/ns/bookinfo/sa/productpage".into()),
            peer: Some(PeerCert {
                names: identity::tls::CertNames {
                    uris: vec!["spiffe://cluster.local/ns/front/sa/gateway".into()],
                    ..Default::default()
                },
                sha256: String::new(),
            }),
            alpn: None,
            sni: None,
        })
    });
    let mut i = StreamInfo::new(Downstream {
        peer: "10.0.0.9:40000".parse().expect("addr"),
        destination: "10.0.0.5:9080".parse().expect("addr"),
        original_dst: None,
        tls,
        direction,
    });
    i.cluster = Some(cluster.into());
    i.response_code = code;
    i.bytes_sent = 120;
    i.bytes_received = 7;
    i
}

/// Every line is `# TYPE name kind` (once per name, before its samples) or
/// `name{k="v",...} value` with a valid name, label names and a float.
/// One sample: name, labels in order, value.
type Sample = (String, Vec<(String, String)>, f64);

fn strict_parse(text: &str) -> Vec<Sample> {
    let name_re = regex::Regex::new(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$").expect("re");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(name_re.is_match(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "twice: {line}"
            );
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        let (series, value) = line.rsplit_once(' ').expect("value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels = Vec::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert!(name_re.is_match(&key), "label {key:?} in {line}");
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    let mut v = String::new();
                    loop {
                        match chars.next().expect("unterminated value") {
                            '\\' => match chars.next() {
                                Some('n') => v.push('\n'),
                                Some(c @ ('\\' | '"')) => v.push(c),
                                other => panic!("bad escape {other:?} in {line}"),
                            },
                            '"' => break,
                            c => v.push(c),
                        }
                    }
                    labels.push((key, v));
                    match chars.next() {
                        None => break,
                        Some(',') => {}
                        other => panic!("{other:?} after a label in {line}"),
                    }
                }
                (name, labels)
            }
        };
        assert!(name_re.is_match(name), "{line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "no TYPE before {line}");
        samples.push((name.to_string(), labels, value));
    }
    samples
}

const HTTP_LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

fn find<'a>(samples: &'a [Sample], name: &str, reporter: &str, code: &str) -> &'a Sample {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.iter().any(|(k, v)| k == "reporter" && v == reporter)
                && l.iter().any(|(k, v)| k == "response_code" && v == code)
        })
        .unwrap_or_else(|| panic!("no {name} {reporter} {code}"))
}

#[test]
fn workload_from_node_metadata_with_istio_fallbacks() {
    let w = Workload::from_node(&node()).expect("istio node");
    assert_eq!(w.workload, "productpage-v1");
    assert_eq!(w.canonical_service, "productpage");
    assert_eq!(w.canonical_revision, "v1");
    assert_eq!(w.app, "productpage");
    assert_eq!(w.cluster, "Kubernetes");
    let bare: core::Node =
        xds::json::from_yaml("{metadata: {NAMESPACE: ns, NAME: pod-1}}").expect("node");
    let w = Workload::from_node(&bare).expect("has a namespace");
    assert_eq!(
        (
            w.workload.as_str(),
            w.canonical_service.as_str(),
            w.canonical_revision.as_str(),
            w.app.as_str(),
            w.version.as_str(),
            w.cluster.as_str()
        ),
        ("pod-1", "pod-1", "latest", "unknown", "unknown", "unknown")
    );
    assert!(Workload::from_node(&core::Node::default()).is_none());
}

#[test]
fn both_reporters_with_istio_labels_and_exact_counts() {
    let stats = Arc::new(Stats::default());
    let m = IstioMetrics::new(Workload::from_node(&node()).expect("node"), stats.clone());
    let out = info(
        TrafficDirection::Outbound,
        "outbound|9080||reviews.bookinfo.svc.cluster.local",
        200,
        false,
    );
    for _ in 0..3 {
        m.on_stream_end(&out);
    }
    let mut failed = info(
        TrafficDirection::Outbound,
        "outbound|9080||reviews.bookinfo.svc.cluster.local",
        503,
        false,
    );
    failed.flags.set(ResponseFlag::NoHealthyUpstream);
    m.on_stream_end(&failed);
    m.on_stream_end(&info(
        TrafficDirection::Inbound,
        "inbound|9080||",
        200,
        true,
    ));
    // A listener without a direction reports nothing.
    m.on_stream_end(&info(TrafficDirection::Unspecified, "x", 200, false));

    let text = stats.render_prometheus();
    let samples = strict_parse(&text);
    let src = find(&samples, "istio_requests_total", "source", "200");
    let names: Vec<&str> = src.1.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, HTTP_LABELS);
    assert_eq!(src.2, 3.0);
    let values: Vec<&str> = src.1.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(
        values,
        [
            "source",
            "productpage-v1",
            "productpage",
            "v1",
            "bookinfo",
            "unknown",
            "productpage",
            "v1",
            "Kubernetes",
            "unknown",
            "unknown",
            "unknown",
            "unknown",
            "unknown",
            "reviews.bookinfo.svc.cluster.local",
            "unknown",
            "unknown",
            "reviews",
            "bookinfo",
            "unknown",
            "http",
            "200",
            "",
            "-",
            "unknown",
        ]
    );
    let uh = find(&samples, "istio_requests_total", "source", "503");
    assert_eq!(uh.2, 1.0);
    assert!(uh.1.contains(&("response_flags".into(), "UH".into())));

    let dst = find(&samples, "istio_requests_total", "destination", "200");
    assert_eq!(dst.2, 1.0);
    let label = |k: &str| {
        dst.1
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .expect("label")
    };
    assert_eq!(
        label("source_principal"),
        "spiffe://cluster.local/ns/front/sa/gateway"
    );
    assert_eq!(label("source_workload_namespace"), "front");
    assert_eq!(label("source_workload"), "unknown");
    assert_eq!(label("destination_workload"), "productpage-v1");
    assert_eq!(
        label("destination_principal"),
        "spiffe://cluster.local/ns/bookinfo/sa/productpage"
    );
    assert_eq!(label("connection_security_policy"), "mutual_tls");

    // Histograms: Envoy's default buckets, bytes as recorded.
    let bytes = find(&samples, "istio_response_bytes_sum", "source", "200");
    assert_eq!(bytes.2, 360.0);
    let req = find(&samples, "istio_request_bytes_count", "source", "200");
    assert_eq!(req.2, 3.0);
    let buckets = samples
        .iter()
        .filter(|(n, l, _)| {
            n == "istio_request_duration_milliseconds_bucket"
                && l.iter().any(|(k, v)| k == "reporter" && v == "destination")
        })
        .count();
    assert_eq!(buckets, crate::stats::DEFAULT_BUCKETS.len() + 1);
    for line in [
        "# TYPE istio_requests_total counter",
        "# TYPE istio_request_duration_milliseconds histogram",
        "# TYPE istio_request_bytes histogram",
        "# TYPE istio_response_bytes histogram",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}");
    }
    let total: f64 = samples
        .iter()
        .filter(|(n, _, _)| n == "istio_requests_total")
        .map(|s| s.2)
        .sum();
    assert_eq!(total, 5.0);
}

#[test]
fn series_beyond_the_cap_are_dropped_and_counted() {
    let stats = Arc::new(Stats::default());
    let m = IstioMetrics::new(Workload::from_node(&node()).expect("node"), stats.clone());
    for i in 0..(MAX_SERIES + 2) {
        let cluster = format!("outbound|80||s{i}.ns.svc.cluster.local");
        m.on_stream_end(&info(TrafficDirection::Outbound, &cluster, 200, false));
    }
    assert_eq!(stats.value("istio_metrics_dropped_series_total"), Some(2));
}
