//! The bridge from the ADS client to the config store: the store is the
//! `ResourceSink` (full sets in, NACK reasons out, EDS/RDS names wanted).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::task::JoinHandle;
use xds::client::{ClientConfig, ResourceSink};

use crate::bootstrap::Ads;
use crate::config::store::ConfigStore;

/// The store as seen by the ADS client.
#[derive(Debug, Clone)]
pub struct StoreSink(pub Arc<ConfigStore>);

impl ResourceSink for StoreSink {
    fn apply(
        &self,
        type_url: &str,
        version: &str,
        resources: &BTreeMap<String, prost_types::Any>,
    ) -> Result<(), String> {
        let result = self.0.apply(type_url, version, resources);
        match &result {
            Ok(()) => tracing::debug!(
                r#type = xds::type_url::short(type_url),
                version,
                n = resources.len(),
                "applied"
            ),
            Err(e) => {
                tracing::warn!(r#type = xds::type_url::short(type_url), version, error = %e, "rejected")
            }
        }
        result
    }

    fn wanted(&self, type_url: &str) -> Option<Vec<String>> {
        self.0.wanted(type_url)
    }
}

/// Start the ADS client for the bootstrap's ads_config.
/// `nds` subscribes to Istio's name table too, for the DNS proxy.
pub fn connect(ads: &Ads, node: Node, store: Arc<ConfigStore>, nds: bool) -> JoinHandle<()> {
    let config = ClientConfig {
        endpoint: ads.endpoint.clone(),
        node,
        delta: ads.delta,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(10),
        extra_types: if nds {
            vec![xds::type_url::NAME_TABLE]
        } else {
            Vec::new()
        },
    };
    xds::client::spawn(config, Arc::new(StoreSink(store)))
}
