//! NACK and ACK reporting on the Kubernetes objects served: a NACK sets the condition
//! `Accepted=False` (reason `Rejected`, the subscriber's `error_detail.message` truncated to
//! 1 KiB, `observedGeneration` of the object sent) on each object the NACKed response carried
//! (delta: every resource in it; SotW: the changed ones); a later ACK of a response carrying
//! an object whose condition is `Accepted=False` sets `Accepted=True` (reason `Acknowledged`)
//! once no subscriber that rejected that generation is left rejecting it.
//!
//! Writing the condition makes a new version of the object, which goes to every subscriber
//! again. So that subscribers that disagree cannot flip the condition for ever (one NACKs,
//! another ACKs, each write resends), the writer remembers per object which subscribers
//! rejected its current generation: an ACK clears only its own subscriber's rejection, and
//! `True` is written only when none is left; the first rejection's message stands until the
//! generation changes. A rejecting subscriber that goes away leaves `False` in place until the
//! next generation or until every rejecting subscriber ACKs it.
//!
//! Writes go through the status subresource as a JSON merge patch guarded by the object's
//! `resourceVersion`, only when the condition changes (`lastTransitionTime` moves only when
//! the status does). A failed write is logged with the object and the reason, and not retried:
//! a conflict means the object changed, and its next version gets its own ACK or NACK.
//! Reports queue on one bounded channel ([`QUEUE`]); when it is full a report is dropped,
//! counted in `crwatch_xds_status_reports_dropped_total` and logged.

use std::collections::HashMap;
use std::sync::Arc;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cache::{Cache, Entry};
use super::metrics::XdsMetrics;

/// Reports waiting to be written, at most.
pub const QUEUE: usize = 1024;
/// The longest condition message (bytes); longer NACK messages are cut at a character
/// boundary.
pub const MAX_MESSAGE: usize = 1024;
/// The condition type.
pub const CONDITION: &str = "Accepted";

/// Where to write the status of a type's objects.
#[derive(Clone, Debug)]
pub struct ReportTarget {
    /// The resource type.
    pub api: ApiResource,
    /// Whether its objects live in namespaces.
    pub namespaced: bool,
}

#[derive(Debug)]
enum Job {
    Nack {
        type_url: String,
        entries: Vec<Arc<Entry>>,
        message: String,
        subscriber: String,
    },
    Ack {
        type_url: String,
        entries: Vec<Arc<Entry>>,
        subscriber: String,
    },
}

/// The handle streams report NACKs and ACKs to.
#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::Sender<Job>,
    metrics: XdsMetrics,
}

impl Reporter {
    /// Start the writer task: it writes through `client` for the types in `targets` (others
    /// are ignored), reading current conditions from `cache`, until `cancel`.
    pub fn spawn(
        client: kube::Client,
        targets: HashMap<String, ReportTarget>,
        cache: Cache,
        metrics: XdsMetrics,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = Writer {
            client,
            targets,
            cache,
            written: HashMap::new(),
            rejected: HashMap::new(),
        };
        tokio::spawn(writer.run(rx, cancel));
        Reporter { tx, metrics }
    }

    fn send(&self, job: Job) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(job) {
            self.metrics.reports_dropped.inc();
            let dropped = self.metrics.reports_dropped.get();
            if dropped == 1 || dropped.is_multiple_of(1000) {
                tracing::warn!(
                    dropped,
                    "status report queue full ({QUEUE}): dropping NACK/ACK condition updates; the API server may be slow or unreachable"
                );
            }
        }
    }

    /// A subscriber NACKed a response carrying `entries`.
    pub fn nack(&self, type_url: &str, entries: Vec<Arc<Entry>>, message: &str, subscriber: &str) {
        if entries.is_empty() {
            return;
        }
        self.send(Job::Nack {
            type_url: type_url.to_string(),
            entries,
            message: truncate(message, MAX_MESSAGE),
            subscriber: subscriber.to_string(),
        });
    }

    /// A subscriber ACKed a response carrying `entries`.
    pub fn ack(&self, type_url: &str, entries: Vec<Arc<Entry>>, subscriber: &str) {
        if entries.is_empty() {
            return;
        }
        self.send(Job::Ack {
            type_url: type_url.to_string(),
            entries,
            subscriber: subscriber.to_string(),
        });
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

struct Writer {
    client: kube::Client,
    targets: HashMap<String, ReportTarget>,
    cache: Cache,
    /// The last condition written per (type, name): skips repeats before the cache has seen
    /// our own write. Cleared when it grows past 10,000 entries.
    written: HashMap<(String, String), (i64, String, String)>,
    /// Per (type, name): the generation rejected and the subscribers rejecting it (at most
    /// [`MAX_REJECTERS`] remembered; more count as one more). Cleared when it grows past
    /// 10,000 objects, like `written`.
    rejected: HashMap<(String, String), (i64, Vec<String>)>,
}

/// Subscribers remembered as rejecting one object's generation.
const MAX_REJECTERS: usize = 64;

/// The condition a report wants.
#[derive(Debug, Clone, PartialEq)]
struct Wanted {
    status: &'static str,
    reason: &'static str,
    message: String,
    generation: i64,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>, cancel: CancellationToken) {
        loop {
            let job = tokio::select! {
                _ = cancel.cancelled() => return,
                j = rx.recv() => match j { Some(j) => j, None => return },
            };
            match job {
                Job::Nack {
                    type_url,
                    entries,
                    message,
                    subscriber,
                } => {
                    for e in entries {
                        let generation = generation(&e.object);
                        self.reject(&type_url, &e.name, generation, &subscriber);
                        let wanted = Wanted {
                            status: "False",
                            reason: "Rejected",
                            message: message.clone(),
                            generation,
                        };
                        tracing::debug!(%type_url, resource = %e.name, %subscriber, "NACK: marking Accepted=False");
                        self.write(&type_url, &e, wanted, false).await;
                    }
                }
                Job::Ack {
                    type_url,
                    entries,
                    subscriber,
                } => {
                    for e in entries {
                        if self.still_rejected(&type_url, &e.name, generation(&e.object), &subscriber) {
                            continue;
                        }
                        let wanted = Wanted {
                            status: "True",
                            reason: "Acknowledged",
                            message: "the subscribers acknowledged this generation".into(),
                            generation: generation(&e.object),
                        };
                        self.write(&type_url, &e, wanted, true).await;
                    }
                }
            }
        }
    }

    /// Remember that `subscriber` rejects `generation` of the object.
    fn reject(&mut self, type_url: &str, name: &str, generation: i64, subscriber: &str) {
        if self.rejected.len() > 10_000 {
            self.rejected.clear();
        }
        let entry = self
            .rejected
            .entry((type_url.to_string(), name.to_string()))
            .or_insert_with(|| (generation, Vec::new()));
        if entry.0 != generation {
            *entry = (generation, Vec::new());
        }
        if !entry.1.iter().any(|s| s == subscriber) && entry.1.len() < MAX_REJECTERS {
            entry.1.push(subscriber.to_string());
        }
    }

    /// `subscriber` ACKed `generation`: forget its rejection, and say whether others still
    /// reject this generation (then `Accepted` stays `False`).
    fn still_rejected(&mut self, type_url: &str, name: &str, generation: i64, subscriber: &str) -> bool {
        let key = (type_url.to_string(), name.to_string());
        let Some((rejected_gen, subscribers)) = self.rejected.get_mut(&key) else {
            return false;
        };
        if *rejected_gen != generation {
            // A newer generation: the old rejections are about content no longer served.
            self.rejected.remove(&key);
            return false;
        }
        subscribers.retain(|s| s != subscriber);
        if subscribers.is_empty() {
            self.rejected.remove(&key);
            return false;
        }
        true
    }

    async fn write(&mut self, type_url: &str, sent: &Entry, wanted: Wanted, only_if_rejected: bool) {
        let Some(target) = self.targets.get(type_url) else {
            return;
        };
        // The newest state the cache has (our own earlier writes included, once seen).
        let latest = self
            .cache
            .snapshot(type_url)
            .and_then(|s| s.entries.get(&sent.name).map(|e| e.object.clone()))
            .unwrap_or_else(|| sent.object.clone());
        if generation(&latest) > wanted.generation {
            // A newer generation exists; it gets its own report.
            return;
        }
        let conditions: Vec<Value> = latest
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let current = conditions
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(CONDITION));
        let cur_status = current.and_then(|c| c.get("status")).and_then(Value::as_str);
        if only_if_rejected && cur_status != Some("False") {
            return;
        }
        // The first rejection of a generation stands: another subscriber's different message
        // would otherwise rewrite the status, resend the object and be answered again.
        if wanted.status == "False"
            && cur_status == Some("False")
            && current
                .and_then(|c| c.get("observedGeneration"))
                .and_then(Value::as_i64)
                == Some(wanted.generation)
        {
            return;
        }
        let same = current.is_some_and(|c| {
            cur_status == Some(wanted.status)
                && c.get("reason").and_then(Value::as_str) == Some(wanted.reason)
                && c.get("message").and_then(Value::as_str) == Some(wanted.message.as_str())
                && c.get("observedGeneration").and_then(Value::as_i64) == Some(wanted.generation)
        });
        let key = (type_url.to_string(), sent.name.clone());
        let record = (
            wanted.generation,
            wanted.status.to_string(),
            wanted.message.clone(),
        );
        if same || self.written.get(&key) == Some(&record) {
            return;
        }
        let transition = match (cur_status == Some(wanted.status), current) {
            (true, Some(c)) => c.get("lastTransitionTime").cloned().unwrap_or(Value::Null),
            _ => Value::String(chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()),
        };
        let condition = json!({
            "type": CONDITION,
            "status": wanted.status,
            "reason": wanted.reason,
            "message": wanted.message,
            "observedGeneration": wanted.generation,
            "lastTransitionTime": transition,
        });
        let mut next: Vec<Value> = conditions
            .into_iter()
            .filter(|c| c.get("type").and_then(Value::as_str) != Some(CONDITION))
            .collect();
        next.push(condition);
        let name = latest
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let ns = latest.pointer("/metadata/namespace").and_then(Value::as_str);
        let rv = latest
            .pointer("/metadata/resourceVersion")
            .cloned()
            .unwrap_or(Value::Null);
        let api: Api<DynamicObject> = match (target.namespaced, ns) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &target.api),
            _ => Api::all_with(self.client.clone(), &target.api),
        };
        let patch = json!({"metadata": {"resourceVersion": rv}, "status": {"conditions": next}});
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                if self.written.len() > 10_000 {
                    self.written.clear();
                }
                self.written.insert(key, record);
                tracing::info!(%type_url, resource = %sent.name, status = wanted.status, reason = wanted.reason,
                    generation = wanted.generation, "set condition Accepted");
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!(%type_url, resource = %sent.name,
                    "not setting Accepted: the object changed meanwhile; its next version is reported on its own");
            }
            Err(e) => {
                tracing::warn!(%type_url, resource = %sent.name, error = %e,
                    "could not set condition Accepted on the object's status (does the type have a status subresource, and may this identity patch it?); not retried");
            }
        }
    }
}

fn generation(object: &Value) -> i64 {
    object
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        let s = "é".repeat(600);
        let t = truncate(&s, MAX_MESSAGE);
        assert!(t.len() <= MAX_MESSAGE);
        assert_eq!(t.len(), 1024);
        assert_eq!(truncate("aé", 2), "a");
    }
}
