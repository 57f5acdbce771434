//! `halyard bootstrap`: the Envoy bootstrap both proxies start from — node
//! identity and Istio's node metadata, admin, and ADS to the pilot.

/// Inputs of a bootstrap, from the command line.
#[derive(clap::Args, Debug, Clone)]
pub struct BootstrapArgs {
    /// Istio node id: `sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local`.
    #[arg(long)]
    pub node_id: String,
    /// The pilot's xDS address (HOST:PORT).
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub xds: String,
    /// Workload label (repeatable), KEY=VALUE.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Admin listener address.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: String,
    /// `REDIRECT` (iptables capture, 15001/15006) or `NONE` (explicit listeners only).
    #[arg(long, default_value = "REDIRECT")]
    pub interception_mode: String,
    /// The workload's service account.
    #[arg(long, default_value = "default")]
    pub service_account: String,
    /// State-of-the-world ADS instead of delta.
    #[arg(long)]
    pub sotw: bool,
    /// For a stock Envoy with `halyard agent`: the agent's SDS socket (Istio's
    /// `./var/run/secrets/workload-spiffe-uds/socket`), reached by a static
    /// `sds-grpc` cluster as in Istio's bootstrap.
    #[arg(long)]
    pub sds_socket: Option<String>,
    /// Output format.
    #[arg(long, default_value = "json", value_parser = ["json", "yaml"])]
    pub output: String,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label {s:?} is not KEY=VALUE"))
}

impl BootstrapArgs {
    fn spec(&self) -> xds::bootstrap::BootstrapSpec {
        xds::bootstrap::BootstrapSpec {
            node_id: self.node_id.clone(),
            xds: self.xds.clone(),
            labels: self.labels.iter().cloned().collect(),
            admin: self.admin.clone(),
            interception_mode: self.interception_mode.clone(),
            service_account: self.service_account.clone(),
            sotw: self.sotw,
            sds_socket: self.sds_socket.clone(),
        }
    }
}

/// Print in the requested format.
pub fn render(args: &BootstrapArgs) -> anyhow::Result<String> {
    let value = xds::bootstrap::generate(&args.spec())?;
    Ok(match args.output.as_str() {
        "yaml" => serde_yaml_ng::to_string(&value)?,
        _ => serde_json::to_string_pretty(&value)? + "\n",
    })
}
