//! The built-in kinds: which resources of the Kubernetes version the server reports it serves,
//! generated from the generated Rust types of that version (k8s-openapi, which is generated from
//! the published OpenAPI document), and their published schemas.
//!
//! What is not in the types is in one table here, checked against the real server's discovery
//! for the same version: short names, categories, the subresources each resource serves, the
//! verbs of create-only resources, and which kinds bump `metadata.generation`.
//!
//! Only the API versions a default kube-apiserver of that version enables are served: GA
//! versions, no alpha or beta (since 1.24 new beta APIs are off by default). HorizontalPodAutoscalers
//! are stored at `autoscaling/v2` and served at `v1` too, converted ([`crate::convert`]).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use k8s_openapi::api;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1 as apiregistration;
use serde_json::Value;

use crate::registry::{ALL_VERBS, ResourceDef, ScaleSpec};

/// Whether a k8s-openapi scope type is namespaced.
trait Scope {
    const NAMESPACED: bool;
}

impl Scope for k8s_openapi::NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl Scope for k8s_openapi::ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// One built-in resource as the generated types describe it.
struct Kind {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    /// The definition name of its schema, like `io.k8s.api.apps.v1.Deployment`.
    definition: String,
}

/// The built-in resources and the published schemas of every type they use.
struct Tables {
    kinds: Vec<Kind>,
    /// Definition name → schema, with references written `#/definitions/<name>`.
    definitions: BTreeMap<String, Value>,
}

macro_rules! kinds {
    ($gen:ident, $($t:ty),* $(,)?) => {
        vec![$(kind::<$t>($gen)),*]
    };
}

fn kind<T>(generator: &mut schemars::SchemaGenerator) -> Kind
where
    T: k8s_openapi::Resource + schemars::JsonSchema,
    T::Scope: Scope,
{
    // Registers the schema (and everything it refers to) among the generator's definitions.
    let _ = generator.subschema_for::<T>();
    Kind {
        group: T::GROUP,
        version: T::VERSION,
        kind: T::KIND,
        plural: T::URL_PATH_SEGMENT,
        namespaced: <T::Scope as Scope>::NAMESPACED,
        definition: T::schema_name().into_owned(),
    }
}

static TABLES: LazyLock<Tables> = LazyLock::new(|| {
    let mut generator = schemars::generate::SchemaSettings::draft07()
        .with(|s| {
            s.definitions_path = "/definitions".into();
            s.meta_schema = None;
        })
        .into_generator();
    let g = &mut generator;
    // The order is the order of discovery within a group version (the real server sorts
    // resources by name there; `discovery` sorts them again).
    let kinds = kinds![
        g,
        api::core::v1::Namespace,
        api::core::v1::ConfigMap,
        api::core::v1::Secret,
        api::core::v1::ServiceAccount,
        api::core::v1::Event,
        api::core::v1::Binding,
        api::core::v1::ComponentStatus,
        api::core::v1::Endpoints,
        api::core::v1::LimitRange,
        api::core::v1::Node,
        api::core::v1::PersistentVolume,
        api::core::v1::PersistentVolumeClaim,
        api::core::v1::Pod,
        api::core::v1::PodTemplate,
        api::core::v1::ReplicationController,
        api::core::v1::ResourceQuota,
        api::core::v1::Service,
        api::events::v1::Event,
        api::coordination::v1::Lease,
        api::apps::v1::Deployment,
        api::apps::v1::ControllerRevision,
        api::apps::v1::DaemonSet,
        api::apps::v1::ReplicaSet,
        api::apps::v1::StatefulSet,
        apiextensions::CustomResourceDefinition,
        api::admissionregistration::v1::ValidatingWebhookConfiguration,
        api::admissionregistration::v1::MutatingWebhookConfiguration,
        api::admissionregistration::v1::ValidatingAdmissionPolicy,
        api::admissionregistration::v1::ValidatingAdmissionPolicyBinding,
        apiregistration::APIService,
        api::authentication::v1::SelfSubjectReview,
        api::authentication::v1::TokenReview,
        api::authorization::v1::LocalSubjectAccessReview,
        api::authorization::v1::SelfSubjectAccessReview,
        api::authorization::v1::SelfSubjectRulesReview,
        api::authorization::v1::SubjectAccessReview,
        api::autoscaling::v2::HorizontalPodAutoscaler,
        // After v2: the first version of a group is its preferred one.
        api::autoscaling::v1::HorizontalPodAutoscaler,
        api::batch::v1::CronJob,
        api::batch::v1::Job,
        api::certificates::v1::CertificateSigningRequest,
        api::discovery::v1::EndpointSlice,
        api::flowcontrol::v1::FlowSchema,
        api::flowcontrol::v1::PriorityLevelConfiguration,
        api::networking::v1::IngressClass,
        api::networking::v1::Ingress,
        api::networking::v1::IPAddress,
        api::networking::v1::NetworkPolicy,
        api::networking::v1::ServiceCIDR,
        api::node::v1::RuntimeClass,
        api::policy::v1::PodDisruptionBudget,
        api::rbac::v1::ClusterRoleBinding,
        api::rbac::v1::ClusterRole,
        api::rbac::v1::RoleBinding,
        api::rbac::v1::Role,
        api::scheduling::v1::PriorityClass,
        api::storage::v1::CSIDriver,
        api::storage::v1::CSINode,
        api::storage::v1::CSIStorageCapacity,
        api::storage::v1::StorageClass,
        api::storage::v1::VolumeAttachment,
    ];
    // Types only subresources use.
    let _ = g.subschema_for::<api::autoscaling::v1::Scale>();
    let _ = g.subschema_for::<api::authentication::v1::TokenRequest>();
    let _ = g.subschema_for::<api::policy::v1::Eviction>();
    let definitions = generator.take_definitions(true).into_iter().collect();
    Tables { kinds, definitions }
});

/// What the generated types do not say, per resource, as the real server's discovery shows it.
struct Extra {
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    /// `status` subresource.
    status: bool,
    /// `scale` subresource (`.spec.replicas` / `.status.replicas`).
    scale: bool,
    /// Only these verbs (create-only reviews, read-only component statuses); empty: all.
    verbs: &'static [&'static str],
    /// Spec changes bump `metadata.generation`.
    generation: bool,
    /// DELETE answers with the object (`ReturnDeletedObject` of the resource's registry).
    returns_deleted: bool,
}

const NONE: Extra = Extra {
    short_names: &[],
    categories: &[],
    status: false,
    scale: false,
    verbs: &[],
    generation: false,
    returns_deleted: false,
};

const CREATE_ONLY: &[&str] = &["create"];

/// A workload with status, scale and generation, in the `all` category.
const fn workload(short: &'static [&'static str]) -> Extra {
    Extra {
        short_names: short,
        categories: &["all"],
        status: true,
        scale: true,
        verbs: &[],
        generation: true,
        returns_deleted: false,
    }
}

/// A kind with a status subresource whose spec changes bump generation.
const fn with_status(short: &'static [&'static str], generation: bool) -> Extra {
    Extra {
        short_names: short,
        categories: &[],
        status: true,
        scale: false,
        verbs: &[],
        generation,
        returns_deleted: false,
    }
}

fn extra(group: &str, plural: &str) -> Extra {
    match (group, plural) {
        ("", "namespaces") => Extra {
            returns_deleted: true,
            ..with_status(&["ns"], false)
        },
        ("", "configmaps") => Extra {
            short_names: &["cm"],
            ..NONE
        },
        ("", "serviceaccounts") => Extra {
            short_names: &["sa"],
            ..NONE
        },
        ("", "events") => Extra {
            short_names: &["ev"],
            ..NONE
        },
        ("events.k8s.io", "events") => Extra {
            short_names: &["ev"],
            ..NONE
        },
        ("", "bindings") => Extra {
            verbs: CREATE_ONLY,
            ..NONE
        },
        ("", "componentstatuses") => Extra {
            short_names: &["cs"],
            verbs: &["get", "list"],
            ..NONE
        },
        ("", "endpoints") => Extra {
            short_names: &["ep"],
            ..NONE
        },
        ("", "limitranges") => Extra {
            short_names: &["limits"],
            ..NONE
        },
        ("", "nodes") => with_status(&["no"], false),
        ("", "persistentvolumes") => Extra {
            returns_deleted: true,
            ..with_status(&["pv"], false)
        },
        ("", "persistentvolumeclaims") => Extra {
            returns_deleted: true,
            ..with_status(&["pvc"], false)
        },
        ("", "pods") => Extra {
            categories: &["all"],
            returns_deleted: true,
            ..with_status(&["po"], false)
        },
        ("", "replicationcontrollers") => workload(&["rc"]),
        ("", "resourcequotas") => with_status(&["quota"], false),
        ("", "services") => Extra {
            categories: &["all"],
            returns_deleted: true,
            ..with_status(&["svc"], false)
        },
        ("apps", "deployments") => workload(&["deploy"]),
        ("apps", "replicasets") => workload(&["rs"]),
        ("apps", "statefulsets") => workload(&["sts"]),
        ("apps", "daemonsets") => Extra {
            scale: false,
            ..workload(&["ds"])
        },
        ("apiextensions.k8s.io", "customresourcedefinitions") => Extra {
            categories: &["api-extensions"],
            returns_deleted: true,
            ..with_status(&["crd", "crds"], true)
        },
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations")
        | ("admissionregistration.k8s.io", "mutatingwebhookconfigurations")
        | ("admissionregistration.k8s.io", "validatingadmissionpolicybindings") => Extra {
            categories: &["api-extensions"],
            generation: true,
            ..NONE
        },
        ("admissionregistration.k8s.io", "validatingadmissionpolicies") => Extra {
            categories: &["api-extensions"],
            ..with_status(&[], true)
        },
        ("apiregistration.k8s.io", "apiservices") => Extra {
            categories: &["api-extensions"],
            ..with_status(&[], false)
        },
        ("authentication.k8s.io", _) | ("authorization.k8s.io", _) => Extra {
            verbs: CREATE_ONLY,
            ..NONE
        },
        ("autoscaling", "horizontalpodautoscalers") => Extra {
            categories: &["all"],
            ..with_status(&["hpa"], false)
        },
        ("batch", "cronjobs") => Extra {
            categories: &["all"],
            ..with_status(&["cj"], true)
        },
        ("batch", "jobs") => Extra {
            categories: &["all"],
            ..with_status(&[], true)
        },
        ("certificates.k8s.io", "certificatesigningrequests") => with_status(&["csr"], false),
        ("flowcontrol.apiserver.k8s.io", _) => with_status(&[], true),
        ("networking.k8s.io", "ingresses") => with_status(&["ing"], true),
        ("networking.k8s.io", "networkpolicies") => Extra {
            short_names: &["netpol"],
            generation: true,
            ..NONE
        },
        ("networking.k8s.io", "servicecidrs") => with_status(&[], false),
        ("policy", "poddisruptionbudgets") => with_status(&["pdb"], true),
        ("scheduling.k8s.io", "priorityclasses") => Extra {
            short_names: &["pc"],
            ..NONE
        },
        ("storage.k8s.io", "storageclasses") => Extra {
            short_names: &["sc"],
            ..NONE
        },
        ("storage.k8s.io", "volumeattachments") => with_status(&[], false),
        _ => NONE,
    }
}

/// The kinds served before any CRD exists, Namespace first.
pub fn resources() -> Vec<ResourceDef> {
    TABLES
        .kinds
        .iter()
        .map(|k| {
            let x = extra(k.group, k.plural);
            let verbs: Vec<String> = if !x.verbs.is_empty() {
                x.verbs.iter().map(|v| v.to_string()).collect()
            } else {
                ALL_VERBS
                    .iter()
                    // Namespaces are never deleted as a collection (the real registry has no
                    // DeleteCollection for them).
                    .filter(|v| !(k.plural == "namespaces" && **v == "deletecollection"))
                    .map(|v| v.to_string())
                    .collect()
            };
            ResourceDef {
                group: k.group.into(),
                version: k.version.into(),
                kind: k.kind.into(),
                plural: k.plural.into(),
                singular: k.kind.to_ascii_lowercase(),
                short_names: x.short_names.iter().map(|s| s.to_string()).collect(),
                categories: x.categories.iter().map(|s| s.to_string()).collect(),
                namespaced: k.namespaced,
                verbs,
                status_subresource: x.status,
                scale: x.scale.then(|| ScaleSpec {
                    spec_replicas_path: ".spec.replicas".into(),
                    status_replicas_path: ".status.replicas".into(),
                    label_selector_path: None,
                }),
                schema: None,
                printer_columns: vec![],
                crd: None,
                has_generation: x.generation,
                delete_returns_object: x.returns_deleted,
                requires_resource_version_on_update: false,
                // autoscaling/v1 HorizontalPodAutoscalers are the stored v2 ones, converted.
                storage_version: if k.group == "autoscaling" && k.version == "v1" {
                    "v2".into()
                } else {
                    k.version.into()
                },
                // As on the real server, events.k8s.io/v1 Events are the core v1 Events,
                // converted on every read and write.
                storage_group: if k.group == "events.k8s.io" {
                    String::new()
                } else {
                    k.group.into()
                },
            }
        })
        .collect()
}

/// Discovery entries of the subresources served beyond `status` and `scale` (the Pod
/// subresources of [`crate::podsub`] and ephemeral containers, and ServiceAccount tokens).
pub fn subresources(def: &ResourceDef) -> Vec<Value> {
    let entry = |name: &str, group: &str, version: &str, kind: &str, verbs: &[&str]| {
        let mut e = serde_json::json!({"name": format!("{}/{name}", def.plural), "singularName": "", "namespaced": def.namespaced, "kind": kind, "verbs": verbs});
        if !group.is_empty() {
            e["group"] = serde_json::json!(group);
            e["version"] = serde_json::json!(version);
        }
        e
    };
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "pods") => vec![
            entry("binding", "", "", "Binding", &["create"]),
            entry("ephemeralcontainers", "", "", "Pod", &["get", "patch", "update"]),
            entry("eviction", "policy", "v1", "Eviction", &["create"]),
            entry("log", "", "", "Pod", &["get"]),
        ],
        ("", "serviceaccounts") => vec![entry(
            "token",
            "authentication.k8s.io",
            "v1",
            "TokenRequest",
            &["create"],
        )],
        _ => vec![],
    }
}

/// The definition name of a built-in kind's schema (`io.k8s.api.apps.v1.Deployment`), if
/// `def` is one.
pub fn definition_of(def: &ResourceDef) -> Option<&'static str> {
    if def.is_custom() {
        return None;
    }
    TABLES
        .kinds
        .iter()
        .find(|k| k.group == def.group && k.version == def.version && k.kind == def.kind)
        .map(|k| k.definition.as_str())
}

/// Every published definition the built-in kinds use, references written
/// `#/definitions/<name>`.
pub fn definitions() -> &'static BTreeMap<String, Value> {
    &TABLES.definitions
}

/// The definition a `$ref` names.
pub fn resolve(reference: &str) -> Option<&'static Value> {
    let name = reference.strip_prefix("#/definitions/")?;
    TABLES.definitions.get(name)
}

/// The names of the definitions `roots` refer to, directly or not (roots included).
pub fn closure<'a>(roots: impl IntoIterator<Item = &'a str>) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut todo: Vec<String> = roots.into_iter().map(str::to_string).collect();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(schema) = TABLES.definitions.get(&name) {
            collect_refs(schema, &mut todo);
        }
    }
    seen
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(name) = m
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/definitions/"))
            {
                out.push(name.to_string());
            }
            for child in m.values() {
                collect_refs(child, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|c| collect_refs(c, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(defs: &'a [ResourceDef], group: &str, plural: &str) -> &'a ResourceDef {
        defs.iter()
            .find(|d| d.group == group && d.plural == plural)
            .unwrap_or_else(|| panic!("{plural}.{group} is not served"))
    }

    #[test]
    fn every_workload_kind_is_served_with_its_subresources() {
        let defs = resources();
        assert_eq!(defs[0].kind, "Namespace");
        for (group, plural, namespaced) in [
            ("", "pods", true),
            ("", "services", true),
            ("", "persistentvolumeclaims", true),
            ("", "persistentvolumes", false),
            ("", "nodes", false),
            ("apps", "statefulsets", true),
            ("apps", "daemonsets", true),
            ("batch", "cronjobs", true),
            ("networking.k8s.io", "ingresses", true),
            ("policy", "poddisruptionbudgets", true),
            ("rbac.authorization.k8s.io", "clusterroles", false),
            ("discovery.k8s.io", "endpointslices", true),
            ("autoscaling", "horizontalpodautoscalers", true),
            ("storage.k8s.io", "storageclasses", false),
        ] {
            assert_eq!(find(&defs, group, plural).namespaced, namespaced, "{plural}");
        }
        let sts = find(&defs, "apps", "statefulsets");
        assert!(sts.status_subresource && sts.scale.is_some() && sts.has_generation);
        assert_eq!(sts.short_names, ["sts"]);
        assert_eq!(
            find(&defs, "authorization.k8s.io", "selfsubjectaccessreviews").verbs,
            ["create"]
        );
        assert!(
            !find(&defs, "", "namespaces")
                .verbs
                .contains(&"deletecollection".to_string())
        );
        assert!(
            !defs
                .iter()
                .any(|d| d.version.contains("alpha") || d.version.contains("beta")),
            "only GA versions are on by default"
        );
        let mut names: Vec<_> = defs
            .iter()
            .map(|d| (d.group.clone(), d.version.clone(), d.plural.clone()))
            .collect();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "no resource twice");
    }

    #[test]
    fn schemas_are_the_published_definitions() {
        let defs = resources();
        let deploy = definition_of(find(&defs, "apps", "deployments")).unwrap();
        assert_eq!(deploy, "io.k8s.api.apps.v1.Deployment");
        let spec = resolve("#/definitions/io.k8s.api.apps.v1.DeploymentSpec").unwrap();
        assert_eq!(spec["properties"]["replicas"]["format"], "int32");
        let all = closure([deploy]);
        assert!(all.contains("io.k8s.api.core.v1.PodSpec"));
        assert!(all.contains("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"));
        // Every reference resolves.
        let mut refs = vec![];
        for schema in definitions().values() {
            collect_refs(schema, &mut refs);
        }
        for r in refs {
            assert!(
                definitions().contains_key(&r),
                "{r} is referenced but not defined"
            );
        }
    }
}
