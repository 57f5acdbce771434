//! Analyzers for the security kinds: AuthorizationPolicy selectors and
//! namespace references, JWT-claim routing without a RequestAuthentication,
//! JWKS fetches without BLOCKED_CIDRS_IN_JWKS_URIS, STRICT mTLS against
//! DestinationRules that disable TLS.

use std::collections::BTreeSet;

use super::index::{Index, labels_match};
use super::{Message, codes};
use crate::networking::ClientTlsMode;
use crate::security::MtlsMode;
use crate::{Kind, Spec};

/// IST0127 for a policy whose selector matches no workload; IST0101 for
/// `namespaces`/`notNamespaces` entries naming no Namespace.
pub(super) fn authorization_policies(ix: &Index<'_>, out: &mut Vec<Message>) {
    let namespaces: BTreeSet<&str> = ix
        .of_kind(Kind::Namespace)
        .map(|r| r.meta.name.as_str())
        .collect();
    for r in ix.of_kind(Kind::AuthorizationPolicy) {
        let Spec::AuthorizationPolicy(ap) = &r.spec else {
            continue;
        };
        let mesh_wide = r.namespace() == ix.root_namespace();
        let selector = ap.selector.as_ref().map(|s| &s.match_labels);
        let has_target = ap.target_ref.is_some() || !ap.target_refs.is_empty();
        if !has_target {
            let matched = ix.workloads.iter().any(|w| {
                (mesh_wide || w.namespace == r.namespace())
                    && w.resource.kind == Kind::Pod
                    && selector.is_none_or(|s| labels_match(s, w.labels))
            });
            if !matched {
                let labels = selector
                    .map(|s| {
                        s.iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                out.push(Message::new(
                    codes::NO_MATCHING_WORKLOADS,
                    r,
                    format!("No matching workloads for this resource with the following labels: {labels}"),
                ));
            }
        }
        for rule in &ap.rules {
            for from in &rule.from {
                let Some(src) = &from.source else { continue };
                for ns in src.namespaces.iter().chain(&src.not_namespaces) {
                    let exists = if let Some(prefix) = ns.strip_suffix('*') {
                        namespaces.iter().any(|n| n.starts_with(prefix))
                    } else if let Some(suffix) = ns.strip_prefix('*') {
                        namespaces.iter().any(|n| n.ends_with(suffix))
                    } else {
                        namespaces.contains(ns.as_str())
                    };
                    if !exists {
                        out.push(Message::new(
                            codes::REFERENCED_RESOURCE_NOT_FOUND,
                            r,
                            format!("Referenced namespace not found: {ns:?}"),
                        ));
                    }
                }
            }
        }
    }
}

/// IST0149: routes matching `@request.auth.claims` on gateways whose pods
/// no RequestAuthentication selects.
pub(super) fn jwt_claim_route(ix: &Index<'_>, out: &mut Vec<Message>) {
    for r in ix.of_kind(Kind::VirtualService) {
        let Spec::VirtualService(vs) = &r.spec else {
            continue;
        };
        let claim_key = vs
            .http
            .iter()
            .flat_map(|h| &h.matches)
            .flat_map(|m| m.headers.keys().chain(m.without_headers.keys()))
            .find(|k| k.starts_with("@request.auth.claims"));
        let Some(key) = claim_key else { continue };
        for g in vs.gateways.iter().filter(|g| *g != "mesh") {
            let (gns, gname) = g.split_once('/').unwrap_or((r.namespace(), g));
            let Some(gw) = ix
                .of_kind(Kind::Gateway)
                .find(|x| x.meta.name == gname && x.namespace() == gns)
            else {
                continue;
            };
            let Spec::Gateway(gspec) = &gw.spec else {
                continue;
            };
            for pod in ix
                .workloads
                .iter()
                .filter(|w| w.resource.kind == Kind::Pod && labels_match(&gspec.selector, w.labels))
            {
                let covered = ix.of_kind(Kind::RequestAuthentication).any(|ra| {
                    let Spec::RequestAuthentication(ra_spec) = &ra.spec else {
                        return false;
                    };
                    let ns_ok =
                        ra.namespace() == pod.namespace || ra.namespace() == ix.root_namespace();
                    ns_ok
                        && ra_spec
                            .selector
                            .as_ref()
                            .is_none_or(|s| labels_match(&s.match_labels, pod.labels))
                });
                if !covered {
                    out.push(Message::new(
                        codes::JWT_CLAIM_ROUTING_WITHOUT_REQUEST_AUTHN,
                        r,
                        format!("The virtual service uses the JWT claim based routing (key: {key}) but found no request authentication for the gateway ({g}) pod ({}/{}). The request authentication must first be applied for the gateway pods to validate the JWT token and make the claims available for routing.", pod.namespace, pod.resource.meta.name),
                    ));
                }
            }
        }
    }
}

/// IST0175: RequestAuthentications exist but istiod has no
/// BLOCKED_CIDRS_IN_JWKS_URIS, so JWKS URIs may reach any address.
pub(super) fn blocked_cidrs(ix: &Index<'_>, out: &mut Vec<Message>) {
    let ras: Vec<String> = ix
        .of_kind(Kind::RequestAuthentication)
        .map(|r| format!("{}/{}", r.namespace(), r.meta.name))
        .collect();
    if ras.is_empty() {
        return;
    }
    for w in ix
        .workloads
        .iter()
        .filter(|w| w.resource.kind == Kind::Deployment)
    {
        let is_istiod = w.labels.get("app").is_some_and(|a| a == "istiod")
            || w.resource.meta.name.starts_with("istiod");
        if !is_istiod {
            continue;
        }
        let configured = w.pod.containers.iter().flat_map(|c| &c.env).any(|e| {
            e.name == "BLOCKED_CIDRS_IN_JWKS_URIS"
                && e.value.as_deref().is_some_and(|v| !v.is_empty())
        });
        if !configured {
            out.push(Message::new(
                codes::JWKS_URI_FETCH_UNRESTRICTED,
                w.resource,
                format!("BLOCKED_CIDRS_IN_JWKS_URIS is not configured but {} RequestAuthentication resource(s) exist ({}). Consider configuring it to restrict JWKS URI fetches.", ras.len(), ras.join(", ")),
            ));
        }
    }
}

/// IST0113: a DestinationRule sends plaintext (`tls.mode: DISABLE`) to a
/// service whose workloads a STRICT PeerAuthentication covers, so every
/// request fails. (Istio's former MTLSPolicyConflict check.)
pub(super) fn mtls_conflicts(ix: &Index<'_>, out: &mut Vec<Message>) {
    for r in ix.of_kind(Kind::DestinationRule) {
        let Spec::DestinationRule(dr) = &r.spec else {
            continue;
        };
        let Some(tp) = &dr.traffic_policy else {
            continue;
        };
        let disabled = tp.tls.as_ref().and_then(|t| t.mode) == Some(ClientTlsMode::Disable);
        if !disabled {
            continue;
        }
        for svc in ix.lookup(r.namespace(), &dr.host) {
            let Some(selector) = svc.selector else {
                continue;
            };
            let pods: Vec<_> = ix
                .workloads
                .iter()
                .filter(|w| {
                    w.namespace == svc.namespace
                        && !selector.is_empty()
                        && labels_match(selector, w.labels)
                })
                .collect();
            for pa in ix.of_kind(Kind::PeerAuthentication) {
                let Spec::PeerAuthentication(spec) = &pa.spec else {
                    continue;
                };
                if spec.mtls.as_ref().and_then(|m| m.mode) != Some(MtlsMode::Strict) {
                    continue;
                }
                let applies = if pa.namespace() == ix.root_namespace() && spec.selector.is_none() {
                    true
                } else if pa.namespace() != svc.namespace {
                    false
                } else {
                    match &spec.selector {
                        None => true,
                        Some(sel) => pods
                            .iter()
                            .any(|p| labels_match(&sel.match_labels, p.labels)),
                    }
                };
                if applies {
                    out.push(Message::new(
                        codes::MTLS_POLICY_CONFLICT,
                        r,
                        format!(
                            "A DestinationRule and PeerAuthentication are in conflict with regards to whether to use mTLS: host {}, DestinationRule \"{}/{}\" disables TLS, PeerAuthentication \"{}/{}\" requires STRICT mTLS.",
                            svc.host,
                            r.namespace(),
                            r.meta.name,
                            pa.namespace(),
                            pa.meta.name
                        ),
                    ));
                }
            }
        }
    }
}
