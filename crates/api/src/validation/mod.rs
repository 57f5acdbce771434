//! Validation beyond parsing: Istio's per-resource rules (host names, ports,
//! weights, percentages, durations, TLS settings, authorization rules, ...),
//! reported as [`ConfigError`]s at the resource's position with the field path.
//!
//! Errors are what Istio's admission webhook rejects; warnings are what it
//! accepts but is probably a mistake (Istio prints some of them too).

mod common;
mod networking;
mod security;

use crate::{ConfigError, Resource, Spec};

pub use common::{is_dns1123_label, is_valid_host, is_wildcard_domain};
pub use networking::is_http_status;

/// The findings for a set of resources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Validation {
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
}

/// Validates one resource (already parsed by [`crate::load`]).
pub fn validate(r: &Resource) -> Validation {
    let mut cx = Ctx::default();
    match &r.spec {
        Spec::VirtualService(s) => networking::virtual_service(&mut cx, s),
        Spec::DestinationRule(s) => networking::destination_rule(&mut cx, s),
        Spec::Gateway(s) => networking::gateway(&mut cx, s),
        Spec::ServiceEntry(s) => networking::service_entry(&mut cx, s),
        Spec::WorkloadEntry(s) => networking::workload_entry(&mut cx, "spec", s, true),
        Spec::WorkloadGroup(s) => networking::workload_group(&mut cx, s),
        Spec::Sidecar(s) => networking::sidecar(&mut cx, s),
        Spec::PeerAuthentication(s) => security::peer_authentication(&mut cx, s),
        Spec::AuthorizationPolicy(s) => security::authorization_policy(&mut cx, s),
        Spec::RequestAuthentication(s) => security::request_authentication(&mut cx, s),
        Spec::Namespace
        | Spec::Service(_)
        | Spec::ServiceAccount
        | Spec::Deployment(_)
        | Spec::Pod(_)
        | Spec::Secret(_) => {}
    }
    if r.kind.group().ends_with("istio.io") {
        common::object_name(&mut cx, &r.meta.name);
    }
    let to_error = |(field, message): (String, String)| {
        let mut e = ConfigError::new(&r.source.file, r.source.line, message);
        e.kind = Some(r.kind.to_string());
        e.namespace = r.meta.namespace.clone();
        e.name = Some(r.meta.name.clone());
        e.field = Some(field).filter(|f| !f.is_empty());
        e
    };
    Validation {
        errors: cx.errors.into_iter().map(to_error).collect(),
        warnings: cx.warnings.into_iter().map(to_error).collect(),
    }
}

/// Validates every resource, in order.
pub fn validate_all(resources: &[Resource]) -> Validation {
    let mut out = Validation::default();
    for r in resources {
        let v = validate(r);
        out.errors.extend(v.errors);
        out.warnings.extend(v.warnings);
    }
    out
}

/// Collects `(field path, message)` findings.
#[derive(Default)]
pub(crate) struct Ctx {
    errors: Vec<(String, String)>,
    warnings: Vec<(String, String)>,
}

impl Ctx {
    pub(crate) fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push((path.into(), msg.into()));
    }

    pub(crate) fn warn(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.warnings.push((path.into(), msg.into()));
    }
}

#[cfg(test)]
mod tests;
