//! Fault injection and request accounting for tests: drop watches, compact history, fail the
//! next requests, add latency, pause, and count what clients asked for.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::status::ApiError;
use crate::store::Store;

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, or the
    /// HTTP method for non-resource paths.
    pub verb: String,
    /// Plural resource (with `/status` or `/scale` for subresources); empty for non-resource paths.
    pub resource: String,
    /// API group.
    pub group: String,
    /// Namespace, if any.
    pub namespace: String,
    /// Object name, if any.
    pub name: String,
    /// The request path.
    pub path: String,
}

/// Which requests an injected failure applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// Only this verb (`list`, `watch`, `patch`, ...).
    pub verb: Option<String>,
    /// Only this plural resource.
    pub resource: Option<String>,
}

impl Match {
    /// Every resource request.
    pub fn any() -> Self {
        Match::default()
    }

    /// Only requests with this verb.
    pub fn verb(verb: &str) -> Self {
        Match {
            verb: Some(verb.into()),
            resource: None,
        }
    }

    /// Only requests for this resource (plural, like `databases`).
    pub fn resource(resource: &str) -> Self {
        Match {
            verb: None,
            resource: Some(resource.into()),
        }
    }

    fn matches(&self, r: &RequestRecord) -> bool {
        self.verb.as_ref().is_none_or(|v| *v == r.verb)
            && self
                .resource
                .as_ref()
                .is_none_or(|res| r.resource == *res || r.resource.split('/').next() == Some(res))
    }
}

#[derive(Debug, Clone)]
struct Failure {
    remaining: usize,
    code: u16,
    retry_after: Option<u64>,
    only: Match,
}

#[derive(Default)]
struct State {
    failures: Vec<Failure>,
    latency: Duration,
    log: Vec<RequestRecord>,
    counts: BTreeMap<(String, String), u64>,
    /// Requests that got past the pause and are being served.
    served: BTreeMap<(String, String), u64>,
}

/// The fault handle, shared by the server and the test that drives it.
#[derive(Clone)]
pub struct Faults {
    state: Arc<Mutex<State>>,
    paused: Arc<watch::Sender<bool>>,
    drops: Arc<watch::Sender<u64>>,
    store: Arc<Store>,
}

impl Faults {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Faults {
            state: Arc::default(),
            paused: Arc::new(watch::channel(false).0),
            drops: Arc::new(watch::channel(0).0),
            store,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Counters and queues stay valid whatever panicked while they were held.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// End every open watch now (clients see the stream close and must reconnect).
    pub fn drop_watches(&self) {
        self.drops.send_modify(|n| *n += 1);
    }

    /// Forget all history: watches and continue tokens from older revisions get 410 Gone.
    pub fn compact(&self) {
        self.store.compact();
    }

    /// Fail the next `n` matching requests with `code` (429 carries `Retry-After: 1`; 403 is the
    /// RBAC denial the real server sends for that request).
    pub fn fail_next(&self, n: usize, code: u16, only: Match) {
        let retry_after = (code == 429 || code == 503).then_some(1);
        self.lock().failures.push(Failure {
            remaining: n,
            code,
            retry_after,
            only,
        });
    }

    /// Delay every request by `latency` (zero to stop).
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Hold every new request until [`Faults::resume`].
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Let held and new requests through.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// How many requests with this verb and resource got past [`Faults::pause`] and were
    /// served (a watch counted here is streaming, so [`Faults::drop_watches`] ends it), unlike
    /// [`Faults::count`], which also counts requests still held by a pause.
    pub fn served(&self, verb: &str, resource: &str) -> u64 {
        self.lock()
            .served
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// A watch of `resource` is streaming and will see [`Faults::drop_watches`].
    pub(crate) fn watch_streaming(&self, resource: &str) {
        *self
            .lock()
            .served
            .entry(("watch".to_string(), resource.to_string()))
            .or_default() += 1;
    }

    /// How many requests had this verb and resource (plural, `databases/status` for a subresource).
    pub fn count(&self, verb: &str, resource: &str) -> u64 {
        self.lock()
            .counts
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Every request seen so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().log.clone()
    }

    /// Forget recorded requests and counts.
    pub fn clear_requests(&self) {
        let mut s = self.lock();
        s.log.clear();
        s.counts.clear();
    }

    /// A receiver that changes whenever watches are to be dropped.
    pub(crate) fn drop_signal(&self) -> watch::Receiver<u64> {
        self.drops.subscribe()
    }

    /// Record the request, wait out pause and latency, and return an injected failure if one is due.
    pub(crate) async fn on_request(&self, record: RequestRecord) -> Result<(), ApiError> {
        let forbidden = forbidden(&record);
        let record_key = (record.verb.clone(), record.resource.clone());
        let (latency, failure) = {
            let mut s = self.lock();
            *s.counts
                .entry((record.verb.clone(), record.resource.clone()))
                .or_default() += 1;
            let failure = if record.resource.is_empty() {
                None
            } else {
                let found = s
                    .failures
                    .iter_mut()
                    .find(|f| f.remaining > 0 && f.only.matches(&record));
                found.map(|f| {
                    f.remaining -= 1;
                    (f.code, f.retry_after)
                })
            };
            s.failures.retain(|f| f.remaining > 0);
            s.log.push(record);
            (s.latency, failure)
        };
        let key = (record_key.0, record_key.1);
        let mut paused = self.paused.subscribe();
        // An error means the sender is gone, which only happens at shutdown: go on.
        let _ = paused.wait_for(|p| !p).await;
        // A watch counts once it streams (see `watch_streaming`): only then does a drop end it.
        if key.0 != "watch" {
            *self.lock().served.entry(key).or_default() += 1;
        }
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match failure {
            None => Ok(()),
            Some((code, retry_after)) => {
                let mut err = match code {
                    429 => ApiError::new(
                        429,
                        "TooManyRequests",
                        "Too many requests, please try again later.",
                    ),
                    503 => ApiError::new(
                        503,
                        "ServiceUnavailable",
                        "the server is currently unable to handle the request",
                    ),
                    500 => ApiError::internal("injected failure"),
                    403 => forbidden,
                    other => ApiError::new(
                        other,
                        "InternalError",
                        format!("injected failure with code {other}"),
                    ),
                };
                err.retry_after = retry_after;
                Err(err)
            }
        }
    }
}

/// The 403 an RBAC denial of `record` gets from the real server, word for word (the requester
/// is anonymous here).
fn forbidden(record: &RequestRecord) -> ApiError {
    let user = "system:anonymous";
    if record.resource.is_empty() {
        let message = format!(
            "forbidden: User {user:?} cannot {} path {:?}",
            record.verb, record.path
        );
        return ApiError::new(403, "Forbidden", message);
    }
    let scope = if record.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace {:?}", record.namespace)
    };
    let why = format!(
        "User {user:?} cannot {} resource {:?} in API group {:?} {scope}",
        record.verb, record.resource, record.group
    );
    let plural = record.resource.split('/').next().unwrap_or_default();
    let qualified = if record.group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{}", record.group)
    };
    let message = if record.name.is_empty() {
        format!("{qualified} is forbidden: {why}")
    } else {
        format!("{qualified} {:?} is forbidden: {why}", record.name)
    };
    let mut err = ApiError::new(403, "Forbidden", message);
    let mut details = serde_json::json!({"group": record.group, "kind": plural});
    if !record.name.is_empty() {
        details["name"] = serde_json::json!(record.name);
    }
    err.details = Some(Box::new(details));
    err
}

#[cfg(test)]
mod forbidden_tests {
    use super::*;

    #[test]
    fn injected_403s_read_like_rbac_denials() {
        let record = |verb: &str, resource: &str, group: &str, ns: &str, name: &str| RequestRecord {
            verb: verb.into(),
            resource: resource.into(),
            group: group.into(),
            namespace: ns.into(),
            name: name.into(),
            path: "/x".into(),
        };
        let e = forbidden(&record("list", "configmaps", "", "default", ""));
        assert_eq!(
            e.message,
            r#"configmaps is forbidden: User "system:anonymous" cannot list resource "configmaps" in API group "" in the namespace "default""#
        );
        let e = forbidden(&record("get", "databases", "stable.example.com", "", "db"));
        assert_eq!(
            e.message,
            r#"databases.stable.example.com "db" is forbidden: User "system:anonymous" cannot get resource "databases" in API group "stable.example.com" at the cluster scope"#
        );
        assert_eq!(e.code, 403);
        assert_eq!(e.reason, "Forbidden");
    }
}
