//! ServiceEntry and WorkloadEntry (networking.istio.io): services and
//! workloads added to the mesh's registry by hand — external APIs, VMs,
//! anything not discovered from Kubernetes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::{Port, WorkloadSelector};

/// `spec` of a ServiceEntry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServiceEntry {
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDRs.
    pub addresses: Vec<String>,
    pub ports: Vec<Port>,
    pub location: Option<Location>,
    pub resolution: Option<Resolution>,
    pub endpoints: Vec<WorkloadEntry>,
    pub workload_selector: Option<WorkloadSelector>,
    pub export_to: Vec<String>,
    pub subject_alt_names: Vec<String>,
}

/// `location`: inside or outside the mesh (default MESH_EXTERNAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    MeshExternal,
    MeshInternal,
}

/// `resolution`: how endpoint addresses are found (default NONE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    None,
    Static,
    Dns,
    DnsRoundRobin,
    DynamicDns,
}

/// `spec` of a WorkloadEntry, also each of a ServiceEntry's `endpoints`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct WorkloadEntry {
    /// IP, DNS name, or `unix://` socket path.
    pub address: Option<String>,
    /// Port name (of the service) to the workload's port number.
    pub ports: BTreeMap<String, u32>,
    pub labels: BTreeMap<String, String>,
    pub network: Option<String>,
    pub locality: Option<String>,
    pub weight: Option<u32>,
    pub service_account: Option<String>,
}
