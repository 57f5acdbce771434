//! Istio's `exportTo` on VirtualServices, DestinationRules and services
//! (ServiceEntry `exportTo`, the `networking.istio.io/exportTo` annotation
//! of a Kubernetes Service): which namespaces' proxies see a resource.

/// An `exportTo` list resolved against the resource's own namespace:
/// `*` (everyone), or namespace names (`.` became the own namespace, `~`
/// nothing). Unset means `*` (mesh config's default export is `*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportTo {
    public: bool,
    namespaces: Vec<String>,
}

impl Default for ExportTo {
    fn default() -> Self {
        ExportTo {
            public: true,
            namespaces: Vec::new(),
        }
    }
}

impl ExportTo {
    /// `exportTo` as written on a resource in `own_namespace`.
    pub fn new(list: &[String], own_namespace: &str) -> ExportTo {
        if list.is_empty() {
            return ExportTo::default();
        }
        let mut out = ExportTo {
            public: list.iter().any(|e| e == "*"),
            namespaces: Vec::new(),
        };
        if list.iter().any(|e| e == "~") && !out.public {
            return out;
        }
        for e in list {
            let ns = match e.as_str() {
                "*" | "~" => continue,
                "." => own_namespace,
                ns => ns,
            };
            if !out.namespaces.iter().any(|n| n == ns) {
                out.namespaces.push(ns.to_string());
            }
        }
        out
    }

    /// The comma-separated `networking.istio.io/exportTo` annotation.
    pub fn from_annotation(value: Option<&str>, own_namespace: &str) -> ExportTo {
        let list: Vec<String> = value
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        ExportTo::new(&list, own_namespace)
    }

    /// Do proxies in `namespace` see the resource?
    pub fn visible_to(&self, namespace: &str) -> bool {
        self.public || self.namespaces.iter().any(|n| n == namespace)
    }

    /// Exported to every namespace (`*`).
    pub fn is_public(&self) -> bool {
        self.public
    }

    /// Exported to its own namespace only (Istio keeps such rules out of
    /// the cross-namespace index).
    pub fn private_to(&self, own_namespace: &str) -> bool {
        !self.public && self.namespaces.iter().all(|n| n == own_namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(list: &[&str]) -> ExportTo {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        ExportTo::new(&list, "own")
    }

    #[test]
    fn istio_export_to_values() {
        assert!(of(&[]).visible_to("any"));
        assert!(of(&["*"]).visible_to("any"));
        assert!(of(&["."]).visible_to("own"));
        assert!(!of(&["."]).visible_to("other"));
        assert!(of(&[".", "b"]).visible_to("b"));
        assert!(!of(&["~"]).visible_to("own"));
        assert!(of(&["."]).private_to("own"));
        assert!(of(&["own"]).private_to("own"));
        assert!(!of(&["b"]).private_to("own"));
        let ann = ExportTo::from_annotation(Some(". , b"), "own");
        assert!(ann.visible_to("own") && ann.visible_to("b") && !ann.visible_to("c"));
        assert!(ExportTo::from_annotation(None, "own").is_public());
    }
}
