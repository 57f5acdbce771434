//! Istio's NDS message (`istio.networking.nds.v1.NameTable`, from Istio's
//! `pkg/dns/proto/nds.proto`): hostname to the addresses a DNS proxy answers.
//! The field numbers are the wire format Istio's agent reads. The map is a
//! BTreeMap so equal tables encode to equal bytes (and equal versions).

use std::collections::BTreeMap;

/// Every name a sidecar's DNS proxy answers for.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NameTable {
    /// Hostname (`reviews.default.svc.cluster.local`) to what it resolves to.
    #[prost(btree_map = "string, message", tag = "1")]
    pub table: BTreeMap<String, NameInfo>,
}

/// One hostname's answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NameInfo {
    /// IPv4 and IPv6 addresses.
    #[prost(string, repeated, tag = "1")]
    pub ips: Vec<String>,
    /// `Kubernetes` for Services; empty for ServiceEntries.
    #[prost(string, tag = "2")]
    pub registry: String,
    /// The Service's name (Kubernetes only).
    #[prost(string, tag = "3")]
    pub shortname: String,
    /// The Service's namespace (Kubernetes only).
    #[prost(string, tag = "4")]
    pub namespace: String,
    /// Other names for the same host (short forms in the proxy's namespace).
    #[prost(string, repeated, tag = "5")]
    pub alt_hosts: Vec<String>,
}

impl prost::Name for NameTable {
    const NAME: &'static str = "NameTable";
    const PACKAGE: &'static str = "istio.networking.nds.v1";
    fn full_name() -> String {
        "istio.networking.nds.v1.NameTable".into()
    }
    fn type_url() -> String {
        crate::type_url::NAME_TABLE.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn round_trips_and_names_its_type() {
        let mut t = NameTable::default();
        t.table.insert(
            "reviews.default.svc.cluster.local".into(),
            NameInfo {
                ips: vec!["10.96.0.5".into()],
                registry: "Kubernetes".into(),
                shortname: "reviews".into(),
                namespace: "default".into(),
                alt_hosts: vec![],
            },
        );
        let back = NameTable::decode(t.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(back, t);
        assert_eq!(
            <NameTable as prost::Name>::type_url(),
            crate::type_url::NAME_TABLE
        );
    }
}
