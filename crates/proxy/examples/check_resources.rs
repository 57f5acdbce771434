//! Check a JSON dump of xDS resources (`{"listeners": [...], "routes": [...],
//! "clusters": [...], "endpoints": [...]}`, e.g. the pilot's goldens) against
//! what the proxy runs: prints each refusal with its field path.
//! `cargo run -p proxy --example check_resources -- FILE...`

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use proxy::config::cluster::ClusterConfig;
use proxy::config::endpoint::LoadAssignment;
use proxy::config::listener::ListenerConfig;
use proxy::config::route::RouteConfig;
use proxy::descriptors::Descriptors;

fn main() -> anyhow::Result<()> {
    let mut refused = 0;
    for file in std::env::args().skip(1) {
        let dump: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
        Descriptors::with(|d| {
            let items = |key: &str| dump[key].as_array().cloned().unwrap_or_default();
            let mut report = |kind: &str, name: String, result: Result<(), String>| match result {
                Ok(()) => println!("ok       {kind} {name}"),
                Err(e) => {
                    refused += 1;
                    println!("REFUSED  {kind} {name}: {e}");
                }
            };
            for v in items("listeners") {
                let r = d.from_json::<Listener>(&v);
                let name = v["name"].as_str().unwrap_or("?").to_string();
                report(
                    "listener",
                    name,
                    r.and_then(|l| {
                        ListenerConfig::try_from(&l)
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }),
                );
            }
            for v in items("routes") {
                let r = d.from_json::<RouteConfiguration>(&v);
                let name = v["name"].as_str().unwrap_or("?").to_string();
                report(
                    "route",
                    name,
                    r.and_then(|x| {
                        RouteConfig::try_from(&x)
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }),
                );
            }
            for v in items("clusters") {
                let r = d.from_json::<Cluster>(&v);
                let name = v["name"].as_str().unwrap_or("?").to_string();
                report(
                    "cluster",
                    name,
                    r.and_then(|x| {
                        ClusterConfig::try_from(&x)
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }),
                );
            }
            for v in items("endpoints") {
                let r = d.from_json::<ClusterLoadAssignment>(&v);
                let name = v["cluster_name"].as_str().unwrap_or("?").to_string();
                report(
                    "endpoints",
                    name,
                    r.and_then(|x| {
                        LoadAssignment::try_from(&x)
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }),
                );
            }
        });
    }
    if refused > 0 {
        anyhow::bail!("{refused} resources refused");
    }
    Ok(())
}
