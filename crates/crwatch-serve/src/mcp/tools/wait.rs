//! The `wait` tool: until a condition has a status, a field equals a value, or the object is
//! gone; woken by the watch for watched resources, reading every [`WAIT_POLL`] otherwise.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::super::hub::{Hub, HubEvent, ReadError};
use super::super::uri::ObjectUri;
use super::{
    DEFAULT_WAIT_SECONDS, MAX_WAIT_SECONDS, ToolError, ToolResult, WAIT_POLL, WaitArgs, api_error,
    namespace_for,
};

/// The value at a JSONPath-ish path (`.status.phase`, `{.spec.replicas}`,
/// `status.conditions[0].type`).
///
/// ```
/// use crwatch_serve::mcp::tools::field_at;
/// use serde_json::json;
///
/// let o = json!({"status": {"conditions": [{"type": "Ready"}], "phase": "Running"}});
/// assert_eq!(field_at(&o, "{.status.phase}"), Some(&json!("Running")));
/// assert_eq!(field_at(&o, "status.conditions[0].type"), Some(&json!("Ready")));
/// assert_eq!(field_at(&o, ".status.missing"), None);
/// ```
pub fn field_at<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('.');
    let mut at = object;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            at = at.get(key)?;
        }
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            let i: usize = index.trim_end_matches(']').parse().ok()?;
            at = at.get(i)?;
        }
    }
    Some(at)
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// What `wait` waits for.
enum Until {
    Condition(String, String),
    Field(String, String),
    Deleted,
}

impl Until {
    fn of(args: &WaitArgs) -> Result<Until, ToolError> {
        match (&args.condition, &args.field, args.deleted) {
            (Some(c), None, false) => Ok(Until::Condition(
                c.clone(),
                args.status.clone().unwrap_or_else(|| "True".into()),
            )),
            (None, Some(f), false) => match &args.value {
                Some(v) => Ok(Until::Field(f.clone(), v.clone())),
                None => Err(ToolError(
                    "wait with field needs value: the value the field must equal".into(),
                )),
            },
            (None, None, true) => Ok(Until::Deleted),
            _ => Err(ToolError(
                "wait needs exactly one of condition (with status), field (with value) or deleted: true"
                    .into(),
            )),
        }
    }

    fn holds(&self, object: Option<&Value>) -> bool {
        match (self, object) {
            (Until::Deleted, o) => o.is_none(),
            (_, None) => false,
            (Until::Condition(t, status), Some(o)) => o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.get("type")
                            .and_then(Value::as_str)
                            .is_some_and(|ct| ct.eq_ignore_ascii_case(t))
                            && c.get("status")
                                .and_then(Value::as_str)
                                .is_some_and(|s| s.eq_ignore_ascii_case(status))
                    })
                }),
            (Until::Field(path, value), Some(o)) => field_at(o, path).is_some_and(|v| &as_text(v) == value),
        }
    }

    fn describe(&self) -> String {
        match self {
            Until::Condition(t, s) => format!("condition {t}={s}"),
            Until::Field(p, v) => format!("{p}={v}"),
            Until::Deleted => "deletion".into(),
        }
    }
}

pub(super) async fn wait(hub: &Hub, args: WaitArgs) -> ToolResult {
    let until = Until::of(&args)?;
    let seconds = args.timeout_seconds.unwrap_or(DEFAULT_WAIT_SECONDS);
    if !(1..=MAX_WAIT_SECONDS).contains(&seconds) {
        return Err(ToolError(format!(
            "timeoutSeconds {seconds} is out of range: use 1 to {MAX_WAIT_SECONDS}"
        )));
    }
    let rt = hub.resolve(&args.resource).await?;
    let ns = namespace_for(hub, &args.namespace);
    let uri = ObjectUri::new(
        &rt.group,
        &rt.version,
        &rt.kind,
        rt.namespaced.then_some(ns.as_str()),
        &args.name,
    );
    let key = uri.to_string();
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    // Subscribed before the first read, so no change slips between.
    let mut events = hub.subscribe();
    let watched = hub.is_watched(&uri);
    loop {
        let object = hub.read_fresh(&uri).await.map_err(|e| match e {
            ReadError::Api(e) => api_error(&format!("reading {uri}"), e),
            e => ToolError(e.to_string()),
        })?;
        if until.holds(object.as_ref()) {
            return Ok(json!({
                "uri": key, "met": until.describe(),
                "waitedSeconds": started.elapsed().as_secs_f64(),
                "object": object,
            }));
        }
        // Watched: woken by its changes; otherwise read again every WAIT_POLL.
        let next = async {
            if !watched {
                tokio::time::sleep(WAIT_POLL).await;
                return;
            }
            loop {
                match events.recv().await {
                    Ok(HubEvent::Updated(u)) if u == key => return,
                    Ok(_) => {}
                    // Fell behind: read again, it may have changed.
                    Err(RecvError::Lagged(_)) => return,
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        if tokio::time::timeout_at(deadline, next).await.is_err() {
            return Err(ToolError(format!(
                "timed out after {seconds} s waiting for {} of {uri}; last seen: {}",
                until.describe(),
                match &object {
                    None => "not found".to_owned(),
                    Some(o) => format!(
                        "resourceVersion {}, status {}",
                        as_text(o.pointer("/metadata/resourceVersion").unwrap_or(&Value::Null)),
                        o.get("status")
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "none".into())
                    ),
                }
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_conditions() {
        let o = json!({"status": {"phase": "Running", "replicas": 3,
                        "conditions": [{"type": "Ready", "status": "True"}]}});
        assert!(Until::Condition("ready".into(), "True".into()).holds(Some(&o)));
        assert!(!Until::Condition("Ready".into(), "False".into()).holds(Some(&o)));
        assert!(Until::Field(".status.replicas".into(), "3".into()).holds(Some(&o)));
        assert!(!Until::Field(".status.phase".into(), "Pending".into()).holds(Some(&o)));
        assert!(Until::Deleted.holds(None));
        assert!(!Until::Deleted.holds(Some(&o)));
        assert!(!Until::Field("x".into(), "y".into()).holds(None));
    }

    #[test]
    fn wait_needs_exactly_one_target() {
        let args = |v: Value| serde_json::from_value::<WaitArgs>(v).unwrap();
        assert!(Until::of(&args(json!({"resource": "pods", "name": "p"}))).is_err());
        assert!(Until::of(&args(json!({"resource": "pods", "name": "p", "field": "a"}))).is_err());
        assert!(
            Until::of(&args(
                json!({"resource": "pods", "name": "p", "deleted": true, "condition": "Ready"})
            ))
            .is_err()
        );
        assert!(Until::of(&args(json!({"resource": "pods", "name": "p", "deleted": true}))).is_ok());
    }
}
