//! Resource-name resolution as kubectl does it: plural, singular, short name, kind (any case),
//! `plural.group` and `plural.version.group`, with candidates on ambiguity and the nearest name
//! suggested when nothing matches.

use anyhow::Context;
use kube::Client;
use kube::discovery::ApiResource;

/// One resource type the server serves, with every name it can be called by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, empty for the core group.
    pub group: String,
    /// API version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Database`.
    pub kind: String,
    /// Plural resource name, e.g. `databases`.
    pub plural: String,
    /// Singular name (lowercase kind when the server does not say).
    pub singular: String,
    /// Short names, e.g. `db`.
    pub short_names: Vec<String>,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether this is the group's preferred version.
    pub preferred: bool,
}

impl ResourceType {
    /// The kube-rs description of this resource type.
    pub fn api_resource(&self) -> ApiResource {
        let api_version = if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        };
        ApiResource {
            group: self.group.clone(),
            version: self.version.clone(),
            api_version,
            kind: self.kind.clone(),
            plural: self.plural.clone(),
        }
    }

    /// `plural.group` (just `plural` for the core group), as kubectl names it in errors.
    pub fn full_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        [self.plural.as_str(), self.singular.as_str()]
            .into_iter()
            .chain(self.short_names.iter().map(String::as_str))
    }

    fn matches_name(&self, wanted: &str) -> bool {
        let lower = wanted.to_lowercase();
        self.names().any(|n| n == lower) || self.kind.eq_ignore_ascii_case(wanted)
    }
}

/// Why a name could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// No resource type has this name; `suggestion` is the nearest known name, if any is close.
    Unknown {
        /// The name asked for.
        name: String,
        /// The nearest name the server knows.
        suggestion: Option<String>,
    },
    /// Several resource types in different groups have this name.
    Ambiguous {
        /// The name asked for.
        name: String,
        /// `plural.group` of every match.
        candidates: Vec<String>,
    },
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::Unknown { name, suggestion } => {
                write!(f, "the server doesn't have a resource type \"{name}\"")?;
                if let Some(s) = suggestion {
                    write!(f, "\nDid you mean \"{s}\"?")?;
                }
                Ok(())
            }
            ResolveError::Ambiguous { name, candidates } => write!(
                f,
                "the resource type \"{name}\" is ambiguous; use one of: {}",
                candidates.join(", ")
            ),
        }
    }
}

impl std::error::Error for ResolveError {}

/// Every resource type the server serves (all versions of every group; subresources left out).
pub async fn discover(client: &Client) -> anyhow::Result<Vec<ResourceType>> {
    let mut out = vec![];
    let core = client
        .list_core_api_versions()
        .await
        .context("discovering the core API")?;
    for (i, v) in core.versions.iter().enumerate() {
        let list = client
            .list_core_api_resources(v)
            .await
            .with_context(|| format!("discovering /api/{v}"))?;
        push_resources(&mut out, "", v, i == 0, list);
    }
    let groups = client.list_api_groups().await.context("discovering API groups")?;
    for g in groups.groups {
        let preferred = g.preferred_version.as_ref().map(|p| p.version.clone());
        for (i, v) in g.versions.iter().enumerate() {
            let list = match client.list_api_group_resources(&v.group_version).await {
                Ok(list) => list,
                // One broken aggregated API (a metrics server that is down answers 503) must
                // not hide every other type; kubectl skips it the same way.
                Err(kube::Error::Api(s)) => {
                    tracing::warn!("skipping /apis/{}: {}", v.group_version, s.message);
                    continue;
                }
                Err(e) => {
                    return Err(
                        anyhow::Error::new(e).context(format!("discovering /apis/{}", v.group_version))
                    );
                }
            };
            let is_preferred = preferred.as_deref().map_or(i == 0, |p| p == v.version);
            push_resources(&mut out, &g.name, &v.version, is_preferred, list);
        }
    }
    Ok(out)
}

fn push_resources(
    out: &mut Vec<ResourceType>,
    group: &str,
    version: &str,
    preferred: bool,
    list: k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList,
) {
    for r in list.resources {
        if r.name.contains('/') {
            continue;
        }
        let singular = if r.singular_name.is_empty() {
            r.kind.to_lowercase()
        } else {
            r.singular_name
        };
        out.push(ResourceType {
            group: group.to_string(),
            version: version.to_string(),
            kind: r.kind,
            plural: r.name,
            singular,
            short_names: r.short_names.unwrap_or_default(),
            namespaced: r.namespaced,
            preferred,
        });
    }
}

/// Resolve `name` against `types` as kubectl does.
///
/// ```
/// use crwatch::discovery::{ResourceType, resolve};
/// let db = ResourceType {
///     group: "stable.example.com".into(), version: "v1".into(), kind: "Database".into(),
///     plural: "databases".into(), singular: "database".into(), short_names: vec!["db".into()],
///     namespaced: true, preferred: true,
/// };
/// assert_eq!(resolve(&[db.clone()], "DB").map(|r| r.plural), Ok("databases".to_string()));
/// assert!(resolve(&[db], "dbx").unwrap_err().to_string().contains("Did you mean \"db\"?"));
/// ```
pub fn resolve(types: &[ResourceType], name: &str) -> Result<ResourceType, ResolveError> {
    let mut found: Vec<&ResourceType> = vec![];
    if let Some((res, rest)) = name.split_once('.') {
        // plural.version.group first, then plural.group (preferred version).
        if let Some((version, group)) = rest.split_once('.') {
            found = types
                .iter()
                .filter(|t| t.group == group && t.version == version && t.matches_name(res))
                .collect();
        }
        if found.is_empty() {
            found = types
                .iter()
                .filter(|t| t.preferred && t.group == rest && t.matches_name(res))
                .collect();
        }
    }
    if found.is_empty() {
        found = types
            .iter()
            .filter(|t| t.preferred && t.matches_name(name))
            .collect();
    }
    // Several versions of one group are one resource (the preferred one is listed first).
    let mut distinct: Vec<&ResourceType> = vec![];
    for t in found {
        if !distinct
            .iter()
            .any(|d| d.group == t.group && d.plural == t.plural)
        {
            distinct.push(t);
        }
    }
    match distinct.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(ResolveError::Unknown {
            name: name.to_string(),
            suggestion: nearest(types, name),
        }),
        many => {
            let mut candidates: Vec<String> = many.iter().map(|t| t.full_name()).collect();
            candidates.sort();
            Err(ResolveError::Ambiguous {
                name: name.to_string(),
                candidates,
            })
        }
    }
}

fn nearest(types: &[ResourceType], name: &str) -> Option<String> {
    let lower = name.to_lowercase();
    let max = (lower.chars().count() / 3).max(2);
    types
        .iter()
        .flat_map(|t| t.names().map(str::to_string).chain([t.full_name()]))
        .map(|n| (edit_distance(&lower, &n), n))
        .filter(|(d, _)| *d <= max)
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.len().cmp(&b.1.len())))
        .map(|(_, n)| n)
}

/// Levenshtein distance between two strings, by characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        short: &[&str],
        preferred: bool,
    ) -> ResourceType {
        ResourceType {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            short_names: short.iter().map(|s| s.to_string()).collect(),
            namespaced: true,
            preferred,
        }
    }

    fn types() -> Vec<ResourceType> {
        vec![
            t("", "v1", "ConfigMap", "configmaps", &["cm"], true),
            t("stable.example.com", "v1", "Database", "databases", &["db"], true),
            t(
                "stable.example.com",
                "v1beta1",
                "Database",
                "databases",
                &["db"],
                false,
            ),
            t("other.example.com", "v1", "Widget", "widgets", &[], true),
            t("third.example.com", "v1", "Widget", "widgets", &[], true),
        ]
    }

    #[test]
    fn every_name_form_resolves() {
        let ts = types();
        for n in [
            "databases",
            "database",
            "db",
            "Database",
            "DATABASE",
            "databases.stable.example.com",
        ] {
            let r = resolve(&ts, n).unwrap();
            assert_eq!(
                (r.plural.as_str(), r.version.as_str()),
                ("databases", "v1"),
                "{n}"
            );
        }
        let r = resolve(&ts, "databases.v1beta1.stable.example.com").unwrap();
        assert_eq!(r.version, "v1beta1");
        assert_eq!(resolve(&ts, "cm").unwrap().kind, "ConfigMap");
    }

    #[test]
    fn ambiguity_and_unknown_names() {
        let ts = types();
        assert_eq!(
            resolve(&ts, "widgets"),
            Err(ResolveError::Ambiguous {
                name: "widgets".into(),
                candidates: vec![
                    "widgets.other.example.com".into(),
                    "widgets.third.example.com".into()
                ],
            })
        );
        assert_eq!(
            resolve(&ts, "widgets.third.example.com").unwrap().group,
            "third.example.com"
        );
        assert_eq!(
            resolve(&ts, "dbx"),
            Err(ResolveError::Unknown {
                name: "dbx".into(),
                suggestion: Some("db".into())
            })
        );
        assert_eq!(
            resolve(&ts, "zzzzzzzz"),
            Err(ResolveError::Unknown {
                name: "zzzzzzzz".into(),
                suggestion: None
            })
        );
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("dbx", "db"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
