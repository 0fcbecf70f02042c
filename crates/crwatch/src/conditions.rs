//! Status conditions as the Kubernetes API conventions define them (`type`, `status`,
//! `reason`, `message`, `lastTransitionTime`, `observedGeneration`), the helpers that keep
//! `lastTransitionTime` honest, and a status writer that only writes when something changed.
//!
//! # Why our own `Condition` type
//!
//! k8s-openapi's `apimachinery::pkg::apis::meta::v1::Condition` has the right wire shape but
//! implements `JsonSchema` only when k8s-openapi's `schemars` feature is on, and even then its
//! schema has a free-form `status` string and none of the validation the upstream CRD
//! markers carry. [`Condition`] has the same JSON, derives `JsonSchema` with the upstream
//! limits (an enum for `status`, patterns and lengths for `type` and `reason`), and converts
//! to and from the k8s-openapi type for code that deals in that one.
//!
//! # The rules the helpers enforce
//!
//! * One condition per `type`.
//! * `lastTransitionTime` moves only when `status` moves; new reasons, messages or
//!   observed generations are recorded without touching it, so "Ready since" stays true.
//! * Status is written only when it differs from what the object already has
//!   ([`patch_status_if_changed`]); a controller that watches its own objects would otherwise
//!   wake itself up with every write, forever.

use std::borrow::Cow;
use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{self as metav1, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Whether a condition holds: `True` (it does), `False` (it does not) or `Unknown` (it
/// cannot be told yet); the only values the API conventions allow.
///
/// ```
/// use crwatch::conditions::ConditionStatus;
/// assert_eq!(ConditionStatus::from(true), ConditionStatus::True);
/// assert_eq!(serde_json::to_string(&ConditionStatus::Unknown).unwrap(), "\"Unknown\"");
/// assert_eq!(ConditionStatus::False.as_str(), "False");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// It cannot be told (yet) whether the condition holds.
    Unknown,
}

// Written by hand: derived, the documented variants become a `oneOf` of constants, where
// a CRD wants a plain `enum`.
impl JsonSchema for ConditionStatus {
    fn schema_name() -> Cow<'static, str> {
        "ConditionStatus".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "status of the condition, one of True, False, Unknown.",
            "type": "string",
            "enum": ["True", "False", "Unknown"],
        })
    }
}

impl ConditionStatus {
    /// The wire spelling.
    ///
    /// ```
    /// assert_eq!(crwatch::conditions::ConditionStatus::Unknown.as_str(), "Unknown");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(holds: bool) -> Self {
        if holds {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

impl std::fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One aspect of an object's observed state, for `status.conditions`.
///
/// Serializes exactly like `metav1.Condition`; its JSON schema carries the upstream
/// validation, so a CRD generated from a status holding `Vec<Condition>` rejects malformed
/// conditions. Mark the list field with [`conditions_schema`] to make it a list-map keyed by
/// `type`, as upstream does:
///
/// ```
/// use crwatch::conditions::{Condition, ConditionStatus, conditions_schema};
///
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, Default)]
/// #[serde(rename_all = "camelCase")]
/// struct DatabaseStatus {
///     #[serde(default, skip_serializing_if = "Vec::is_empty")]
///     #[schemars(schema_with = "conditions_schema")]
///     conditions: Vec<Condition>,
///     observed_generation: Option<i64>,
/// }
///
/// let ready = Condition::new("Ready", ConditionStatus::True, "Provisioned", "database is ready")
///     .with_observed_generation(3);
/// let json = serde_json::to_value(&ready).unwrap();
/// assert_eq!(json["type"], "Ready");
/// assert_eq!(json["status"], "True");
/// assert_eq!(json["observedGeneration"], 3);
/// ```
// The schemars descriptions are upstream's: rustdoc (links, examples) has no place in a
// CRD, where `kubectl explain` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(
    description = "Condition contains details for one aspect of the current state of this API Resource."
)]
pub struct Condition {
    /// The aspect, in `CamelCase` or `example.com/CamelCase` (`Ready`, `Degraded`, ...).
    #[serde(rename = "type")]
    #[schemars(
        description = "type of condition in CamelCase or in foo.example.com/CamelCase.",
        length(max = 316),
        pattern(TYPE_PATTERN)
    )]
    pub type_: String,
    /// Whether it holds.
    #[schemars(description = "status of the condition, one of True, False, Unknown.")]
    pub status: ConditionStatus,
    /// A `CamelCase` machine-readable cause of the last change; never empty.
    #[schemars(
        description = "reason contains a programmatic identifier indicating the reason for the \
                       condition's last transition.",
        length(min = 1, max = 1024),
        pattern(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    )]
    pub reason: String,
    /// Details for humans; may be empty. Never put secrets here: status is readable by
    /// anyone who may read the object.
    #[serde(default)]
    #[schemars(
        description = "message is a human readable message indicating details about the transition.",
        length(max = 32768)
    )]
    pub message: String,
    /// When `status` last changed (second precision on the wire). [`set_condition`] stamps
    /// it; what you put here before handing the condition to it is ignored.
    #[schemars(
        description = "lastTransitionTime is the last time the condition transitioned from one \
                       status to another.",
        schema_with = "time_schema"
    )]
    pub last_transition_time: Time,
    /// The `metadata.generation` this condition was computed from; when it is older than the
    /// object's generation, the condition is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        description = "observedGeneration represents the .metadata.generation that the condition \
                       was set based upon.",
        range(min = 0)
    )]
    pub observed_generation: Option<i64>,
}

/// Upstream's validation of `type`: an optional DNS-subdomain prefix, then a name.
const TYPE_PATTERN: &str = concat!(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?",
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
);

fn time_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "format": "date-time" })
}

/// The schema for a `Vec<Condition>` field: the items' schema plus the list-map markers
/// (`x-kubernetes-list-type: map` keyed by `type`) that let server-side apply merge
/// conditions one by one. Use it with `#[schemars(schema_with = "conditions_schema")]`.
///
/// ```
/// let mut generator = schemars::SchemaGenerator::default();
/// let schema = crwatch::conditions::conditions_schema(&mut generator);
/// assert_eq!(schema.get("x-kubernetes-list-type"), Some(&serde_json::json!("map")));
/// assert_eq!(schema.get("x-kubernetes-list-map-keys"), Some(&serde_json::json!(["type"])));
/// ```
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}

impl Condition {
    /// A condition to hand to [`set_condition`], which stamps `lastTransitionTime`.
    ///
    /// ```
    /// use crwatch::conditions::{Condition, ConditionStatus};
    /// let c = Condition::new("Ready", ConditionStatus::False, "Provisioning", "creating the database");
    /// assert_eq!(c.observed_generation, None);
    /// ```
    pub fn new(
        type_: impl Into<String>,
        status: ConditionStatus,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
            observed_generation: None,
        }
    }

    /// The same condition computed from `generation`.
    ///
    /// ```
    /// use crwatch::conditions::{Condition, ConditionStatus};
    /// let c = Condition::new("Ready", ConditionStatus::True, "Done", "").with_observed_generation(2);
    /// assert_eq!(c.observed_generation, Some(2));
    /// ```
    #[must_use]
    pub fn with_observed_generation(mut self, generation: i64) -> Self {
        self.observed_generation = Some(generation);
        self
    }

    /// Whether `status` is `True`.
    ///
    /// ```
    /// use crwatch::conditions::{Condition, ConditionStatus};
    /// assert!(Condition::new("Ready", ConditionStatus::True, "Done", "").is_true());
    /// ```
    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

impl From<Condition> for metav1::Condition {
    fn from(c: Condition) -> Self {
        metav1::Condition {
            type_: c.type_,
            status: c.status.as_str().to_string(),
            reason: c.reason,
            message: c.message,
            last_transition_time: c.last_transition_time,
            observed_generation: c.observed_generation,
        }
    }
}

impl From<metav1::Condition> for Condition {
    /// A status other than `True` or `False` becomes `Unknown`, as readers of conditions
    /// are told to treat it.
    fn from(c: metav1::Condition) -> Self {
        let status = match c.status.as_str() {
            "True" => ConditionStatus::True,
            "False" => ConditionStatus::False,
            _ => ConditionStatus::Unknown,
        };
        Condition {
            type_: c.type_,
            status,
            reason: c.reason,
            message: c.message,
            last_transition_time: c.last_transition_time,
            observed_generation: c.observed_generation,
        }
    }
}

/// Put `new` into `conditions`, replacing the condition of the same type, and say whether
/// anything changed (apimachinery's `meta.SetStatusCondition`, with the time passed in so
/// tests and callers control it).
///
/// `lastTransitionTime` becomes `now` (cut to whole seconds, as the wire carries it) when
/// the condition is new or its status changes, and is kept otherwise; `reason`, `message`
/// and `observedGeneration` are simply updated.
///
/// ```
/// use crwatch::conditions::{Condition, ConditionStatus::*, find, set_condition};
/// use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
/// use k8s_openapi::jiff::Timestamp;
///
/// let t1 = Time(Timestamp::from_second(1_000).unwrap());
/// let t2 = Time(Timestamp::from_second(2_000).unwrap());
/// let mut conditions = Vec::new();
/// let ready = |status, reason, message| Condition::new("Ready", status, reason, message);
/// assert!(set_condition(&mut conditions, ready(False, "Provisioning", "creating"), t1.clone()));
/// // Same status, new message: recorded, but the transition time stays.
/// assert!(set_condition(&mut conditions, ready(False, "Provisioning", "50 %"), t2.clone()));
/// assert_eq!(find(&conditions, "Ready").unwrap().last_transition_time, t1);
/// // Nothing new: nothing changes.
/// assert!(!set_condition(&mut conditions, ready(False, "Provisioning", "50 %"), t2.clone()));
/// // A real transition.
/// assert!(set_condition(&mut conditions, ready(True, "Provisioned", "ready"), t2.clone()));
/// assert_eq!(find(&conditions, "Ready").unwrap().last_transition_time, t2);
/// ```
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition, now: Time) -> bool {
    // The wire format has whole seconds; keeping more in memory would make a condition read
    // back from the server differ from the one that was written.
    let now = Time(Timestamp::from_second(now.0.as_second()).unwrap_or(now.0));
    let Some(existing) = conditions.iter_mut().find(|c| c.type_ == new.type_) else {
        conditions.push(Condition {
            last_transition_time: now,
            ..new
        });
        return true;
    };
    let mut changed = false;
    if existing.status != new.status {
        existing.status = new.status;
        existing.last_transition_time = now;
        changed = true;
    }
    if existing.reason != new.reason {
        existing.reason = new.reason;
        changed = true;
    }
    if existing.message != new.message {
        existing.message = new.message;
        changed = true;
    }
    if existing.observed_generation != new.observed_generation {
        existing.observed_generation = new.observed_generation;
        changed = true;
    }
    changed
}

/// The condition of this type, if any.
///
/// ```
/// use crwatch::conditions::{Condition, ConditionStatus, find};
/// let conditions = vec![Condition::new("Ready", ConditionStatus::True, "Done", "")];
/// assert_eq!(find(&conditions, "Ready").map(|c| c.status), Some(ConditionStatus::True));
/// assert!(find(&conditions, "Degraded").is_none());
/// ```
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of this type exists and is `True` (a missing one is not).
///
/// ```
/// use crwatch::conditions::{Condition, ConditionStatus, is_true};
/// let conditions = vec![Condition::new("Ready", ConditionStatus::Unknown, "Checking", "")];
/// assert!(!is_true(&conditions, "Ready"));
/// assert!(!is_true(&conditions, "Degraded"));
/// ```
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(Condition::is_true)
}

/// Whether the condition of this type exists and is `False` (a missing one is not).
///
/// ```
/// use crwatch::conditions::{Condition, ConditionStatus, is_false};
/// let conditions = vec![Condition::new("Degraded", ConditionStatus::False, "Healthy", "")];
/// assert!(is_false(&conditions, "Degraded"));
/// ```
pub fn is_false(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == ConditionStatus::False)
}

/// Remove the condition of this type; says whether there was one.
///
/// ```
/// use crwatch::conditions::{Condition, ConditionStatus, remove};
/// let mut conditions = vec![Condition::new("Progressing", ConditionStatus::True, "Working", "")];
/// assert!(remove(&mut conditions, "Progressing"));
/// assert!(!remove(&mut conditions, "Progressing"));
/// assert!(conditions.is_empty());
/// ```
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    conditions.len() != before
}

/// Merge-patch `status` of `name` to `desired_status`, but only if that would change the
/// status `current` already has; returns whether a patch was sent.
///
/// "Would change" is judged the way the server applies a JSON merge patch (RFC 7386):
/// fields `desired_status` leaves out are left alone, `null` removes a field, lists are
/// replaced whole. So a controller that re-derives the same status on every reconcile
/// sends nothing, and its own watch is not woken by its own writes.
///
/// `current` should be the object as the caller last read it (from a cache is fine: when it
/// is stale the patch is sent and is harmless). The patch carries no `resourceVersion`; the
/// fields it names win. Needs the `patch` verb on the `/status` subresource.
///
/// ```no_run
/// # async fn demo(client: kube::Client) -> Result<(), kube::Error> {
/// use crwatch::conditions::{Condition, ConditionStatus, patch_status_if_changed, set_condition};
/// use k8s_openapi::api::apps::v1::Deployment;
/// use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
/// use k8s_openapi::jiff::Timestamp;
/// use kube::api::Api;
///
/// let api: Api<Deployment> = Api::namespaced(client, "default");
/// let current = api.get("web").await?;
/// let mut conditions: Vec<Condition> = Vec::new(); // from your own status type
/// let ready = Condition::new("Ready", ConditionStatus::True, "Available", "all replicas up");
/// set_condition(&mut conditions, ready, Time(Timestamp::now()));
/// let status = serde_json::json!({ "conditions": conditions });
/// let sent = patch_status_if_changed(&api, "web", &current, status).await?;
/// println!("patched: {sent}");
/// # Ok(()) }
/// ```
pub async fn patch_status_if_changed<K>(
    api: &Api<K>,
    name: &str,
    current: &K,
    desired_status: Value,
) -> Result<bool, kube::Error>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let current_status = serde_json::to_value(current)
        .map_err(kube::Error::SerdeError)?
        .get_mut("status")
        .map(Value::take)
        .unwrap_or(Value::Null);
    if merge_patched(&current_status, &desired_status) == current_status {
        tracing::trace!(name, "status unchanged, not patching");
        return Ok(false);
    }
    let patch = serde_json::json!({ "status": desired_status });
    // Through crate::api: an answer that does not decode must not put the object in a log.
    crate::api::patch_status(api, name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    tracing::debug!(name, "status patched");
    Ok(true)
}

/// `target` with the JSON merge patch `patch` applied (RFC 7386).
fn merge_patched(target: &Value, patch: &Value) -> Value {
    let Value::Object(patch_fields) = patch else {
        return patch.clone();
    };
    let mut out = match target {
        Value::Object(fields) => fields.clone(),
        _ => serde_json::Map::new(),
    };
    for (key, value) in patch_fields {
        if value.is_null() {
            out.remove(key);
        } else {
            let merged = merge_patched(out.get(key).unwrap_or(&Value::Null), value);
            out.insert(key.clone(), merged);
        }
    }
    Value::Object(out)
}

/// The status of a condition type as a short string for logs (`Ready=True`), or
/// `Ready=<missing>`.
///
/// ```
/// use crwatch::conditions::{Condition, ConditionStatus, summary};
/// let conditions = vec![Condition::new("Ready", ConditionStatus::True, "Done", "")];
/// assert_eq!(summary(&conditions, "Ready"), "Ready=True");
/// assert_eq!(summary(&conditions, "Synced"), "Synced=<missing>");
/// ```
pub fn summary(conditions: &[Condition], type_: &str) -> String {
    match find(conditions, type_) {
        Some(c) => format!("{type_}={}", c.status),
        None => format!("{type_}=<missing>"),
    }
}

/// Implements `schemars::JsonSchema` for a unit-variant enum as a plain string `enum`, which is
/// what a CRD's structural schema wants (derived, documented variants become a `oneOf` of
/// constants, which the API server refuses in a structural schema).
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// enum Engine { PostgreSQL, MySQL }
/// crwatch::string_enum_schema!(Engine, "Database engine.", ["PostgreSQL", "MySQL"], default = "PostgreSQL");
///
/// let schema = schemars::schema_for!(Engine);
/// assert_eq!(schema.get("enum"), Some(&serde_json::json!(["PostgreSQL", "MySQL"])));
/// assert_eq!(schema.get("default"), Some(&serde_json::json!("PostgreSQL")));
/// ```
#[macro_export]
macro_rules! string_enum_schema {
    ($ty:ident, $description:literal, [$($variant:literal),+ $(,)?] $(, default = $default:literal)?) => {
        impl $crate::__private::schemars::JsonSchema for $ty {
            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                ::std::stringify!($ty).into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut $crate::__private::schemars::SchemaGenerator) -> $crate::__private::schemars::Schema {
                #[allow(unused_mut)]
                let mut map = $crate::__private::serde_json::Map::new();
                map.insert("description".into(), $description.into());
                map.insert("type".into(), "string".into());
                map.insert("enum".into(), $crate::__private::serde_json::json!([$($variant),+]));
                $(map.insert("default".into(), $default.into());)?
                $crate::__private::schemars::Schema::from(map)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    #[test]
    fn transition_time_moves_only_with_status() {
        let mut cs = Vec::new();
        assert!(set_condition(
            &mut cs,
            Condition::new("Ready", ConditionStatus::Unknown, "Start", ""),
            at(10)
        ));
        assert_eq!(cs[0].last_transition_time, at(10));

        let newer =
            Condition::new("Ready", ConditionStatus::Unknown, "Waiting", "still").with_observed_generation(4);
        assert!(set_condition(&mut cs, newer, at(20)));
        assert_eq!(
            cs[0].last_transition_time,
            at(10),
            "reason/message/generation do not transition"
        );
        assert_eq!(
            (cs[0].reason.as_str(), cs[0].observed_generation),
            ("Waiting", Some(4))
        );

        let mut same =
            Condition::new("Ready", ConditionStatus::Unknown, "Waiting", "still").with_observed_generation(4);
        same.last_transition_time = at(99);
        assert!(
            !set_condition(&mut cs, same, at(30)),
            "identical condition is no change"
        );
        assert_eq!(
            cs[0].last_transition_time,
            at(10),
            "the caller's timestamp is ignored"
        );

        assert!(set_condition(
            &mut cs,
            Condition::new("Ready", ConditionStatus::True, "Up", ""),
            at(40)
        ));
        assert_eq!(cs[0].last_transition_time, at(40));
        assert_eq!(cs[0].observed_generation, None);

        assert!(set_condition(
            &mut cs,
            Condition::new("Degraded", ConditionStatus::False, "Fine", ""),
            at(50)
        ));
        assert_eq!(cs.len(), 2);
        assert!(is_true(&cs, "Ready") && is_false(&cs, "Degraded"));
        assert!(remove(&mut cs, "Ready"));
        assert_eq!(
            cs.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
            ["Degraded"]
        );
    }

    #[test]
    fn wire_format_matches_metav1() {
        let c =
            Condition::new("Ready", ConditionStatus::True, "Provisioned", "ok").with_observed_generation(3);
        let c = Condition {
            last_transition_time: at(1_700_000_000),
            ..c
        };
        let ours = serde_json::to_value(&c).unwrap();
        assert_eq!(
            ours,
            json!({"type": "Ready", "status": "True", "reason": "Provisioned", "message": "ok",
                   "lastTransitionTime": "2023-11-14T22:13:20Z", "observedGeneration": 3})
        );
        let theirs = serde_json::to_value(metav1::Condition::from(c.clone())).unwrap();
        assert_eq!(ours, theirs);
        let back: Condition = serde_json::from_value(theirs).unwrap();
        assert_eq!(back, c);
        let k: metav1::Condition = serde_json::from_value(
            json!({"type": "X", "status": "Maybe", "reason": "R", "message": "",
                                          "lastTransitionTime": "2023-11-14T22:13:20Z"}),
        )
        .unwrap();
        assert_eq!(Condition::from(k).status, ConditionStatus::Unknown);
    }

    #[test]
    fn schema_carries_upstream_validation() {
        // Inlined, as kube's CRD generation does.
        let generator = schemars::generate::SchemaSettings::default()
            .with(|s| s.inline_subschemas = true)
            .into_generator();
        let schema = serde_json::to_value(generator.into_root_schema_for::<Condition>()).unwrap();
        let props = &schema["properties"];
        assert_eq!(props["status"]["enum"], json!(["True", "False", "Unknown"]));
        assert_eq!(props["reason"]["minLength"], 1);
        assert_eq!(props["lastTransitionTime"]["format"], "date-time");
        let required = schema["required"].as_array().unwrap();
        for field in ["type", "status", "reason", "lastTransitionTime"] {
            assert!(required.contains(&json!(field)), "{field} required: {required:?}");
        }
    }

    #[test]
    fn merge_patch_judgement() {
        let cur = json!({"phase": "Ready", "conditions": [{"type": "Ready"}], "extra": 1});
        assert_eq!(
            merge_patched(&cur, &json!({"phase": "Ready"})),
            cur,
            "a subset changes nothing"
        );
        assert_ne!(merge_patched(&cur, &json!({"phase": "Failed"})), cur);
        assert_ne!(merge_patched(&cur, &json!({"extra": null})), cur, "null removes");
        assert_eq!(
            merge_patched(&cur, &json!({"missing": null})),
            cur,
            "removing nothing is nothing"
        );
        assert_ne!(
            merge_patched(&cur, &json!({"conditions": []})),
            cur,
            "lists are replaced whole"
        );
        assert_ne!(
            merge_patched(&Value::Null, &json!({})),
            Value::Null,
            "an empty status object is new"
        );
    }

    mod against_server {
        use super::super::*;
        use crwatch_apiserver::TestServer;
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        use kube::api::PostParams;
        use kube::{CustomResource, CustomResourceExt};
        use serde_json::json;
        use std::time::Duration;

        #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
        #[kube(
            group = "test.crwatch.io",
            version = "v1",
            kind = "Widget",
            namespaced,
            status = "WidgetStatus"
        )]
        pub struct WidgetSpec {
            size: i32,
        }

        #[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct WidgetStatus {
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            #[schemars(schema_with = "conditions_schema")]
            conditions: Vec<Condition>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            phase: Option<String>,
        }

        async fn install_widgets(server: &TestServer) -> Api<Widget> {
            let crds: Api<CustomResourceDefinition> = Api::all(server.client());
            crds.create(&PostParams::default(), &Widget::crd()).await.unwrap();
            let widgets: Api<Widget> = Api::namespaced(server.client(), "default");
            let served = async {
                while widgets.list(&Default::default()).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), served)
                .await
                .expect("CRD never served");
            widgets
        }

        fn status_of(conditions: &[Condition], phase: &str) -> Value {
            serde_json::to_value(WidgetStatus {
                conditions: conditions.to_vec(),
                phase: Some(phase.into()),
            })
            .unwrap()
        }

        #[tokio::test]
        async fn status_is_patched_only_when_it_changes() {
            let server = TestServer::start().await.unwrap();
            let widgets = install_widgets(&server).await;
            let w = Widget::new("w1", WidgetSpec { size: 1 });
            let mut current = widgets.create(&PostParams::default(), &w).await.unwrap();
            let patches = || server.faults().count("patch", "widgets/status");

            let mut conditions = Vec::new();
            let pending = Condition::new("Ready", ConditionStatus::False, "Provisioning", "creating");
            set_condition(
                &mut conditions,
                pending.with_observed_generation(1),
                Time(Timestamp::now()),
            );
            assert!(
                patch_status_if_changed(&widgets, "w1", &current, status_of(&conditions, "Pending"))
                    .await
                    .unwrap()
            );
            assert_eq!(patches(), 1);

            // A controller re-deriving the same status from the object it now sees: no write.
            current = widgets.get("w1").await.unwrap();
            let stored = current.status.clone().unwrap();
            assert_eq!(
                stored.conditions, conditions,
                "the schema accepted and kept the condition as sent"
            );
            for _ in 0..3 {
                let same = status_of(&conditions, "Pending");
                assert!(
                    !patch_status_if_changed(&widgets, "w1", &current, same)
                        .await
                        .unwrap()
                );
            }
            assert!(
                !patch_status_if_changed(&widgets, "w1", &current, json!({"phase": "Pending"}))
                    .await
                    .unwrap()
            );
            assert_eq!(patches(), 1, "unchanged status must not be written");

            // A real change goes out, and the transition time is what set_condition stamped.
            let up = Condition::new("Ready", ConditionStatus::True, "Provisioned", "ready")
                .with_observed_generation(1);
            assert!(set_condition(&mut conditions, up, Time(Timestamp::now())));
            assert!(
                patch_status_if_changed(&widgets, "w1", &current, status_of(&conditions, "Ready"))
                    .await
                    .unwrap()
            );
            assert_eq!(patches(), 2);
            let after = widgets.get("w1").await.unwrap().status.unwrap();
            assert!(is_true(&after.conditions, "Ready"));
            assert_eq!(after.phase.as_deref(), Some("Ready"));
        }

        #[tokio::test]
        async fn the_crd_schema_rejects_a_bad_condition() {
            let server = TestServer::start().await.unwrap();
            let widgets = install_widgets(&server).await;
            let current = widgets
                .create(&PostParams::default(), &Widget::new("w2", WidgetSpec { size: 1 }))
                .await
                .unwrap();
            let bad = json!({"conditions": [{"type": "Ready", "status": "Maybe", "reason": "X", "message": "",
                                              "lastTransitionTime": "2024-01-01T00:00:00Z"}]});
            let err = patch_status_if_changed(&widgets, "w2", &current, bad)
                .await
                .unwrap_err();
            assert!(matches!(err, kube::Error::Api(ref s) if s.code == 422), "{err:?}");
        }
    }
}
