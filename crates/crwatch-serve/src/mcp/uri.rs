//! The URIs of `crwatch mcp` resources: one per Kubernetes object, saying what it is
//! (group, version, kind, namespace, name), and the URI templates they come from.
//!
//! ```text
//! k8s://{group}/{version}/{kind}/namespaces/{namespace}/{name}   namespaced objects
//! k8s://{group}/{version}/{kind}/{name}                          cluster-scoped objects
//! ```
//!
//! The core group is spelled `core` (as Istio's MCP-over-xDS type URLs spell it), so
//! `k8s://core/v1/ConfigMap/namespaces/default/settings` and `k8s://core/v1/Namespace/prod`.

use std::fmt;

/// The scheme of every resource URI.
pub const SCHEME: &str = "k8s://";

/// RFC 6570 template of namespaced objects' URIs.
pub const NAMESPACED_TEMPLATE: &str = "k8s://{group}/{version}/{kind}/namespaces/{namespace}/{name}";

/// RFC 6570 template of cluster-scoped objects' URIs.
pub const CLUSTER_TEMPLATE: &str = "k8s://{group}/{version}/{kind}/{name}";

/// The group segment for the core (`""`) API group.
pub const CORE_GROUP: &str = "core";

/// One object's address.
///
/// ```
/// use crwatch_serve::mcp::uri::ObjectUri;
///
/// let uri: ObjectUri = "k8s://apps/v1/Deployment/namespaces/default/web".parse()?;
/// assert_eq!((uri.group.as_str(), uri.kind.as_str()), ("apps", "Deployment"));
/// assert_eq!(uri.namespace.as_deref(), Some("default"));
/// assert_eq!(uri.to_string(), "k8s://apps/v1/Deployment/namespaces/default/web");
/// # Ok::<(), crwatch_serve::mcp::uri::UriError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectUri {
    /// API group, empty for the core group.
    pub group: String,
    /// API version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Namespace; `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// Object name.
    pub name: String,
}

/// A URI that is not a `crwatch mcp` object URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{uri:?} is not an object URI: {reason} (expected {NAMESPACED_TEMPLATE} or {CLUSTER_TEMPLATE}; \
     resources/templates/list has both)"
)]
pub struct UriError {
    /// The URI as given.
    pub uri: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl ObjectUri {
    /// The URI of an object of `group/version/kind` (group empty for core).
    pub fn new(group: &str, version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Self {
        ObjectUri {
            group: group.to_owned(),
            version: version.to_owned(),
            kind: kind.to_owned(),
            namespace: namespace.filter(|n| !n.is_empty()).map(str::to_owned),
            name: name.to_owned(),
        }
    }

    /// `apiVersion` as objects carry it (`v1`, `apps/v1`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The URI of an object given as JSON (`apiVersion`, `kind`, `metadata.namespace/name`).
    pub fn of_object(object: &serde_json::Value) -> Option<Self> {
        let api_version = object.get("apiVersion")?.as_str()?;
        let kind = object.get("kind")?.as_str()?;
        let name = object.pointer("/metadata/name")?.as_str()?;
        let namespace = object.pointer("/metadata/namespace").and_then(|v| v.as_str());
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        Some(ObjectUri::new(group, version, kind, namespace, name))
    }
}

impl fmt::Display for ObjectUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            CORE_GROUP
        } else {
            &self.group
        };
        write!(f, "{SCHEME}{group}/{}/{}/", self.version, self.kind)?;
        if let Some(ns) = &self.namespace {
            write!(f, "namespaces/{ns}/")?;
        }
        f.write_str(&self.name)
    }
}

/// Kubernetes names, namespaces, kinds, groups and versions never contain these; refusing
/// them keeps one object to one URI.
fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
}

impl std::str::FromStr for ObjectUri {
    type Err = UriError;

    fn from_str(uri: &str) -> Result<Self, UriError> {
        let err = |reason| UriError {
            uri: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| err("it does not start with k8s://"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        if !parts.iter().all(|p| valid_segment(p)) {
            return Err(err(
                "a segment is empty or has characters Kubernetes names never have",
            ));
        }
        let (group, version, kind, namespace, name) = match parts.as_slice() {
            [g, v, k, "namespaces", ns, n] => (*g, *v, *k, Some(*ns), *n),
            [g, v, k, n] => (*g, *v, *k, None, *n),
            _ => return Err(err("it has neither 4 nor 6 segments")),
        };
        let group = if group == CORE_GROUP { "" } else { group };
        Ok(ObjectUri::new(group, version, kind, namespace, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_namespaced_and_cluster_scoped() {
        for s in [
            "k8s://apps/v1/Deployment/namespaces/default/web",
            "k8s://core/v1/ConfigMap/namespaces/kube-system/coredns",
            "k8s://core/v1/Namespace/prod",
            "k8s://rbac.authorization.k8s.io/v1/ClusterRole/system:admin",
            "k8s://stable.example.com/v1alpha1/Database/namespaces/db/orders.v2",
        ] {
            let uri: ObjectUri = s.parse().expect(s);
            assert_eq!(uri.to_string(), s);
        }
        let core: ObjectUri = "k8s://core/v1/Namespace/prod".parse().unwrap();
        assert_eq!(core.group, "");
        assert_eq!(core.api_version(), "v1");
        assert_eq!(core.namespace, None);
    }

    #[test]
    fn refuses_what_is_not_an_object_uri() {
        for s in [
            "http://core/v1/Pod/x",
            "k8s://core/v1/Pod",
            "k8s://core/v1/Pod/namespaces/default",
            "k8s://core/v1/Pod/ns/default/x",
            "k8s://core/v1/Pod/namespaces//x",
            "k8s://core/v1/Pod/x/",
            "k8s://core/v1/Pod/a b",
            "k8s://core/v1/Pod/namespaces/default/x/extra",
            "k8s://core/v1/Pod/x?y",
        ] {
            let e = s.parse::<ObjectUri>().expect_err(s);
            assert!(e.to_string().contains("resources/templates/list"), "{e}");
        }
    }

    #[test]
    fn uri_of_an_object() {
        let o = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                       "metadata": {"name": "web", "namespace": "default"}});
        assert_eq!(
            ObjectUri::of_object(&o).unwrap().to_string(),
            "k8s://apps/v1/Deployment/namespaces/default/web"
        );
        let o = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}});
        assert_eq!(
            ObjectUri::of_object(&o).unwrap().to_string(),
            "k8s://core/v1/Node/n1"
        );
    }
}
