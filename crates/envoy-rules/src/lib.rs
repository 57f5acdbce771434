//! What a stock Envoy refuses, as plain checks over the typed xDS resources:
//! the protoc-gen-validate rules of the fields Halyard emits (required fields,
//! minimum lengths, ranges, enums) and the semantic checks Envoy makes while
//! building a resource (IP literals, non-empty weighted clusters, unique
//! filter chain matches, unique domains). The pilot runs them before every
//! push and drops what fails; the proxy runs them while converting, so both
//! planes give the same `path: reason` text.
//!
//! Each check returns every [`Violation`], paths relative to the resource
//! (`filter_chains[2].filter_chain_match.prefix_ranges[0].address_prefix`).
//! Paths are built only for violations, so a clean resource costs a walk.

mod address;
mod cluster;
mod listener;
mod route;

pub use address::{AddressUse, is_ip_literal};
pub use cluster::{cluster, cluster_load_assignment};
pub use listener::listener;
pub use route::route_configuration;

/// One broken rule: where (field path inside the resource) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl Violation {
    /// The index after `prefix[` at the start of the path, if the path is
    /// under that list: `under("filter_chains")` on `filter_chains[3].x` is 3.
    pub fn index_under(&self, prefix: &str) -> Option<usize> {
        index_in(&self.path, prefix)
    }
}

/// The index after `prefix[` at the start of `path`.
pub fn index_in(path: &str, prefix: &str) -> Option<usize> {
    let rest = path.strip_prefix(prefix)?.strip_prefix('[')?;
    let end = rest.find(']')?;
    rest[..end].parse().ok()
}

/// A field path, built lazily: a chain of segments on the stack, rendered to
/// text only when a rule is broken.
#[derive(Clone, Copy)]
pub(crate) struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    seg: Seg,
}

#[derive(Clone, Copy)]
enum Seg {
    Root,
    Field(&'static str),
    Index(usize),
}

impl<'a> Path<'a> {
    pub(crate) const ROOT: Path<'static> = Path {
        parent: None,
        seg: Seg::Root,
    };

    pub(crate) fn f(&'a self, name: &'static str) -> Path<'a> {
        Path {
            parent: Some(self),
            seg: Seg::Field(name),
        }
    }

    pub(crate) fn i(&'a self, index: usize) -> Path<'a> {
        Path {
            parent: Some(self),
            seg: Seg::Index(index),
        }
    }

    pub(crate) fn render(&self) -> String {
        let mut segs = Vec::new();
        let mut p = Some(self);
        while let Some(cur) = p {
            segs.push(cur.seg);
            p = cur.parent;
        }
        let mut out = String::new();
        for seg in segs.iter().rev() {
            match seg {
                Seg::Root => {}
                Seg::Field(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
                Seg::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }
}

/// Where violations go.
pub(crate) struct Report<'v> {
    out: &'v mut Vec<Violation>,
}

impl Report<'_> {
    pub(crate) fn bad(&mut self, at: &Path<'_>, reason: impl Into<String>) {
        self.out.push(Violation {
            path: at.render(),
            reason: reason.into(),
        });
    }

    pub(crate) fn required(&mut self, at: &Path<'_>) {
        self.bad(at, "is required");
    }

    pub(crate) fn min_len(&mut self, at: &Path<'_>, value: &str) {
        if value.is_empty() {
            self.bad(at, "value length must be at least 1 characters");
        }
    }
}

/// Run `f` with a report over a fresh list.
pub(crate) fn collect(f: impl FnOnce(&mut Report<'_>)) -> Vec<Violation> {
    let mut out = Vec::new();
    f(&mut Report { out: &mut out });
    out
}

/// Decode a typed_config of the expected type; None when it is another type.
pub(crate) fn decode<M: prost::Message + prost::Name + Default>(
    any: &envoy_types::pb::google::protobuf::Any,
    at: &Path<'_>,
    r: &mut Report<'_>,
) -> Option<M> {
    if any.type_url.rsplit('/').next() != Some(M::full_name().as_str()) {
        return None;
    }
    match M::decode(any.value.as_slice()) {
        Ok(m) => Some(m),
        Err(e) => {
            r.bad(at, format!("cannot decode {}: {e}", M::full_name()));
            None
        }
    }
}

/// A `google.protobuf.Duration` that PGV requires to be non-negative (`gte: 0s`).
pub(crate) fn non_negative(
    d: Option<&envoy_types::pb::google::protobuf::Duration>,
    at: &Path<'_>,
    r: &mut Report<'_>,
) {
    if let Some(d) = d
        && (d.seconds < 0 || d.nanos < 0)
    {
        r.bad(at, "value must be greater than or equal to 0s");
    }
}
