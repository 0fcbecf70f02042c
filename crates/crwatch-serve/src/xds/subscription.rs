//! The subscription state machines of one stream and one type URL, as Envoy's xDS protocol
//! document (`xds_protocol.rst`) and `discovery.proto` define them: [`DeltaState`] for
//! `DeltaAggregatedResources`, [`SotwState`] for `StreamAggregatedResources`.
//!
//! Both are pure (no I/O): a request goes in ([`DeltaState::on_request`],
//! [`SotwState::on_request`]) and tells whether it ACKed or NACKed a response; a snapshot goes
//! in (`next_response`) and the response to send, if any, comes out. Rules kept:
//!
//! - one response in flight per type: the next is computed only after the client ACKed or
//!   NACKed the previous one, from the newest snapshot (so intermediate versions coalesce);
//! - a NACK is a request with `error_detail`; the previous version stays in force for the
//!   client and nothing is re-sent until the resource changes again (no NACK loop);
//! - subscription changes apply even under a stale nonce; a stale nonce ACKs nothing;
//! - wildcard: `*` explicitly, or the legacy empty first request (never after a name was
//!   subscribed);
//! - a newly (re)subscribed resource is sent even if the client seemed to have it;
//! - delta: removals only for resources the client has (was sent, or declared in
//!   `initial_resource_versions`), plus, as the protocol document says, explicitly
//!   subscribed names that do not exist; unsubscribing needs no answer, except under a
//!   wildcard, when the resource is re-sent;
//! - delta reconnect: `initial_resource_versions` say what the client has, so only what
//!   differs is sent;
//! - SotW: every response carries the complete state of the subscribed resources of the type
//!   (as for Listener and Cluster), so a resource absent from a response was removed; a
//!   wildcard reconnect whose `version_info` is the current version gets nothing re-sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crwatch::xds::discovery::{self, DeltaDiscoveryResponse, DiscoveryResponse};

use super::cache::{Entry, TypeSnapshot};

/// What one response carried, kept until the client answers it.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The response's nonce.
    pub nonce: String,
    /// The snapshot version it came from.
    pub version: u64,
    /// The resources it carried that the client did not have at that version (delta: all of
    /// them; SotW: the changed ones). NACK and ACK reports are about these.
    pub changed: Vec<Arc<Entry>>,
}

/// What a request said about the response in flight.
#[derive(Debug, Clone)]
pub enum Answer {
    /// No answer to the current response (a first request, a subscription change, or a
    /// stale nonce).
    None,
    /// The client applied it.
    Ack(Sent),
    /// The client rejected it with this message.
    Nack(Sent, String),
}

/// Limits of one subscription.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Stop adding resources to a delta response beyond this many bytes (at least one
    /// resource is always sent); the rest follows after the ACK.
    pub max_response_bytes: usize,
    /// The most resource names one stream may subscribe to per type.
    pub max_names: usize,
    /// The most streams (subscribers) served at once; more are refused with
    /// `RESOURCE_EXHAUSTED`. Each costs up to about one response of buffers.
    pub max_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_response_bytes: 4 * 1024 * 1024 - 64 * 1024,
            max_names: 100_000,
            max_streams: 10_000,
        }
    }
}

/// A request broke a limit.
#[derive(Debug, thiserror::Error)]
#[error("a stream may subscribe to at most {max} resource names per type; it asked for {asked}")]
pub struct TooManyNames {
    /// The limit.
    pub max: usize,
    /// What was asked.
    pub asked: usize,
}

/// The wildcard name.
pub const WILDCARD: &str = "*";

/// Delta (incremental) xDS state of one type on one stream.
#[derive(Debug, Default)]
pub struct DeltaState {
    wildcard: bool,
    /// Whether any request named a resource (after that the legacy wildcard is gone).
    named: bool,
    explicit: BTreeSet<String>,
    /// What the client has: name → version.
    known: HashMap<String, String>,
    /// Names to send whatever the client seems to have (newly subscribed).
    force: BTreeSet<String>,
    /// The snapshot version everything up to which was reconciled.
    synced: Option<u64>,
    inflight: Option<Sent>,
    requests: u64,
    /// The last version the client ACKed.
    pub acked: Option<u64>,
}

impl DeltaState {
    /// Apply a request; say what it answered.
    pub fn on_request(
        &mut self,
        req: &discovery::DeltaDiscoveryRequest,
        limits: &Limits,
    ) -> Result<Answer, TooManyNames> {
        let first = self.requests == 0;
        self.requests += 1;
        if first {
            // Reconnect: the client says what it has; those are not re-sent when unchanged.
            self.known = req.initial_resource_versions.clone();
            if req.resource_names_subscribe.is_empty() && req.resource_names_unsubscribe.is_empty() {
                self.wildcard = true;
            }
        }
        for name in &req.resource_names_subscribe {
            self.named = true;
            if name == WILDCARD {
                self.wildcard = true;
                continue;
            }
            self.explicit.insert(name.clone());
            if !(first && self.known.contains_key(name)) {
                self.force.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
                // What only the wildcard brought is forgotten; the client drops it itself.
                let explicit = &self.explicit;
                self.known.retain(|k, _| explicit.contains(k));
                continue;
            }
            self.explicit.remove(name);
            if self.wildcard {
                // Still covered by the wildcard: the protocol wants it re-sent (or removed if
                // it does not exist), so the client knows to keep it.
                self.force.insert(name.clone());
            } else {
                self.force.remove(name);
                self.known.remove(name);
            }
        }
        if self.explicit.len() > limits.max_names {
            return Err(TooManyNames {
                max: limits.max_names,
                asked: self.explicit.len(),
            });
        }
        // A subscription change may need a full comparison (e.g. wildcard added).
        if !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty() || first {
            self.synced = None;
        }
        // Only the newest nonce answers the response in flight; a stale one ACKs nothing.
        let answers = self
            .inflight
            .as_ref()
            .is_some_and(|s| !req.response_nonce.is_empty() && req.response_nonce == s.nonce);
        let Some(sent) = self.inflight.take_if(|_| answers) else {
            return Ok(Answer::None);
        };
        Ok(match &req.error_detail {
            Some(status) => Answer::Nack(sent, status.message.clone()),
            None => {
                self.acked = Some(sent.version);
                Answer::Ack(sent)
            }
        })
    }

    /// Whether a response is in flight.
    pub fn in_flight(&self) -> bool {
        self.inflight.is_some()
    }

    /// Whether [`DeltaState::next_response`] may have something to send for `snapshot`.
    pub fn wants(&self, snapshot: &TypeSnapshot) -> bool {
        self.inflight.is_none() && (self.synced != Some(snapshot.version) || !self.force.is_empty())
    }

    /// How many resources of `snapshot` changed since this subscriber was last in sync (its
    /// pending work).
    pub fn pending(&self, snapshot: &TypeSnapshot) -> usize {
        match self.synced {
            Some(v) if v == snapshot.version => self.force.len(),
            Some(v) => snapshot
                .changed_since(v)
                .map(|c| c.len())
                .unwrap_or(snapshot.entries.len()),
            None => snapshot.entries.len().max(self.force.len()),
        }
    }

    fn subscribed(&self, name: &str) -> bool {
        self.wildcard || self.explicit.contains(name)
    }

    /// The next response for `snapshot`, if the client lacks anything and nothing is in
    /// flight. `nonce` is used only when a response is made.
    pub fn next_response(
        &mut self,
        snapshot: &TypeSnapshot,
        nonce: impl FnOnce() -> String,
        limits: &Limits,
    ) -> Option<DeltaDiscoveryResponse> {
        if self.inflight.is_some() {
            return None;
        }
        let candidates: BTreeSet<String> = match self.synced.and_then(|v| snapshot.changed_since(v)) {
            Some(changed) => changed.into_iter().chain(self.force.iter().cloned()).collect(),
            None => {
                let mut all: BTreeSet<String> = self.force.iter().cloned().collect();
                all.extend(self.explicit.iter().cloned());
                all.extend(self.known.keys().cloned());
                if self.wildcard {
                    all.extend(snapshot.entries.keys().cloned());
                }
                all
            }
        };
        let mut resources = vec![];
        let mut changed = vec![];
        let mut removed = vec![];
        let mut bytes = 0usize;
        let mut complete = true;
        for name in candidates {
            let forced = self.force.contains(&name);
            let subscribed = self.subscribed(&name);
            match snapshot.entries.get(&name) {
                Some(e) if subscribed => {
                    if !forced && self.known.get(&name) == Some(&e.version) {
                        continue;
                    }
                    let size = e.any.value.len() + name.len() + e.version.len() + 64;
                    if !resources.is_empty() && bytes + size > limits.max_response_bytes {
                        complete = false;
                        break;
                    }
                    bytes += size;
                    resources.push(discovery::Resource {
                        name: name.clone(),
                        version: e.version.clone(),
                        resource: Some(e.any.clone()),
                        ..Default::default()
                    });
                    changed.push(e.clone());
                    self.known.insert(name.clone(), e.version.clone());
                }
                Some(_) => {
                    // Not subscribed (any more): nothing to say.
                    self.known.remove(&name);
                }
                None => {
                    let had = self.known.remove(&name).is_some();
                    if subscribed && (had || (forced && self.explicit.contains(&name))) {
                        removed.push(name.clone());
                    }
                }
            }
            self.force.remove(&name);
        }
        if complete {
            self.synced = Some(snapshot.version);
        }
        if resources.is_empty() && removed.is_empty() {
            return None;
        }
        let nonce = nonce();
        self.inflight = Some(Sent {
            nonce: nonce.clone(),
            version: snapshot.version,
            changed,
        });
        Some(DeltaDiscoveryResponse {
            system_version_info: snapshot.version_string(),
            resources,
            type_url: snapshot.type_url.clone(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        })
    }
}

/// State-of-the-world xDS state of one type on one stream.
#[derive(Debug, Default)]
pub struct SotwState {
    wildcard: bool,
    named: bool,
    explicit: BTreeSet<String>,
    /// What the last response carried: name → version (`None` before the first).
    last: Option<BTreeMap<String, String>>,
    /// The nonce of the newest response (requests with another nonce are stale).
    nonce: Option<String>,
    inflight: Option<Sent>,
    /// A response is owed whatever the state (first request, names added).
    owed: bool,
    /// The snapshot version last compared with (`None` after a subscription change).
    checked: Option<u64>,
    requests: u64,
    /// The last version the client ACKed.
    pub acked: Option<u64>,
}

impl SotwState {
    /// Apply a request; `snapshot` is the type's current one (for the reconnect check).
    pub fn on_request(
        &mut self,
        req: &discovery::DiscoveryRequest,
        snapshot: Option<&TypeSnapshot>,
        limits: &Limits,
    ) -> Result<Answer, TooManyNames> {
        let first = self.requests == 0;
        self.requests += 1;
        let before = (self.wildcard, self.explicit.clone());
        if req.resource_names.is_empty() {
            // Legacy wildcard only while no name was ever given; afterwards: unsubscribe all.
            self.wildcard = !self.named;
            self.explicit.clear();
        } else {
            self.named = true;
            self.wildcard = req.resource_names.iter().any(|n| n == WILDCARD);
            self.explicit = req
                .resource_names
                .iter()
                .filter(|n| *n != WILDCARD)
                .cloned()
                .collect();
        }
        if self.explicit.len() > limits.max_names {
            return Err(TooManyNames {
                max: limits.max_names,
                asked: self.explicit.len(),
            });
        }
        let added = (self.wildcard && !before.0) || self.explicit.iter().any(|n| !before.1.contains(n));
        if (self.wildcard, &self.explicit) != (before.0, &before.1) {
            self.checked = None;
        }
        if first {
            self.owed = true;
            // Reconnect of a wildcard subscriber that already has the current version.
            if let Some(s) = snapshot
                && self.wildcard
                && !req.version_info.is_empty()
                && req.version_info == s.version_string()
            {
                self.owed = false;
                self.last = Some(self.state_of(s));
                self.acked = Some(s.version);
                self.checked = Some(s.version);
            }
        } else if added {
            self.owed = true;
        }
        let stale = !req.response_nonce.is_empty() && Some(&req.response_nonce) != self.nonce.as_ref();
        if stale || req.response_nonce.is_empty() {
            return Ok(Answer::None);
        }
        let Some(sent) = self.inflight.take() else {
            return Ok(Answer::None);
        };
        Ok(match &req.error_detail {
            Some(status) => Answer::Nack(sent, status.message.clone()),
            None => {
                self.acked = Some(sent.version);
                Answer::Ack(sent)
            }
        })
    }

    fn subscribed(&self, name: &str) -> bool {
        self.wildcard || self.explicit.contains(name)
    }

    fn state_of(&self, snapshot: &TypeSnapshot) -> BTreeMap<String, String> {
        if self.wildcard {
            snapshot
                .entries
                .iter()
                .map(|(k, e)| (k.clone(), e.version.clone()))
                .collect()
        } else {
            self.explicit
                .iter()
                .filter_map(|n| snapshot.entries.get(n).map(|e| (n.clone(), e.version.clone())))
                .collect()
        }
    }

    /// Whether a response is in flight.
    pub fn in_flight(&self) -> bool {
        self.inflight.is_some()
    }

    /// Whether [`SotwState::next_response`] may have something to send.
    pub fn wants(&self, snapshot: &TypeSnapshot) -> bool {
        self.inflight.is_none() && (self.owed || self.checked != Some(snapshot.version))
    }

    /// About how many resources changed since the last response (the journal's count, or
    /// the whole type when the journal does not reach back that far).
    pub fn pending(&self, snapshot: &TypeSnapshot) -> usize {
        match self.checked {
            Some(v) if v == snapshot.version => 0,
            Some(v) => snapshot
                .changed_since(v)
                .map(|c| c.len())
                .unwrap_or(snapshot.entries.len()),
            None => snapshot.entries.len(),
        }
    }

    /// The next response for `snapshot`: the complete subscribed state, when it differs from
    /// the last response or one is owed, and nothing is in flight.
    pub fn next_response(
        &mut self,
        snapshot: &TypeSnapshot,
        nonce: impl FnOnce() -> String,
    ) -> Option<DiscoveryResponse> {
        if self.inflight.is_some() {
            return None;
        }
        let now = self.state_of(snapshot);
        self.checked = Some(snapshot.version);
        if !self.owed && self.last.as_ref() == Some(&now) {
            return None;
        }
        let changed: Vec<Arc<Entry>> = now
            .iter()
            .filter(|(k, v)| self.last.as_ref().and_then(|l| l.get(*k)) != Some(*v))
            .filter_map(|(k, _)| snapshot.entries.get(k).cloned())
            .collect();
        let resources = now
            .keys()
            .filter(|k| self.subscribed(k))
            .filter_map(|k| snapshot.entries.get(k).map(|e| e.any.clone()))
            .collect();
        let nonce = nonce();
        self.last = Some(now);
        self.owed = false;
        self.nonce = Some(nonce.clone());
        self.inflight = Some(Sent {
            nonce: nonce.clone(),
            version: snapshot.version,
            changed,
        });
        Some(DiscoveryResponse {
            version_info: snapshot.version_string(),
            resources,
            type_url: snapshot.type_url.clone(),
            nonce,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crwatch::xds::Status;
    use crwatch::xds::discovery::{DeltaDiscoveryRequest, DiscoveryRequest};
    use serde_json::Value;

    const T: &str = "core/v1/ConfigMap";

    fn entry(name: &str, version: &str) -> (String, Option<Arc<Entry>>) {
        (
            name.to_string(),
            Some(Arc::new(Entry {
                name: name.into(),
                version: version.into(),
                any: crwatch::xds::protobuf::Any {
                    type_url: crwatch::xds::MCP_RESOURCE_TYPE_URL.into(),
                    value: format!("{name}@{version}").into_bytes(),
                },
                object: Arc::new(Value::Null),
            })),
        )
    }

    fn gone(name: &str) -> (String, Option<Arc<Entry>>) {
        (name.to_string(), None)
    }

    fn nonces() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("n{n}")
        }
    }

    fn delta(sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: T.into(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn nack(mut r: DeltaDiscoveryRequest) -> DeltaDiscoveryRequest {
        r.error_detail = Some(Status {
            code: 3,
            message: "bad template".into(),
            details: vec![],
        });
        r
    }

    fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
        r.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn delta_legacy_wildcard_ack_nack_and_no_resend_loop() {
        let l = Limits::default();
        let mut n = nonces();
        let s1 = TypeSnapshot::empty(T, 1).next(vec![entry("a", "1"), entry("b", "1")]);
        let mut d = DeltaState::default();
        assert!(matches!(
            d.on_request(&delta(&[], &[], ""), &l).unwrap(),
            Answer::None
        ));
        let r = d.next_response(&s1, &mut n, &l).unwrap();
        assert_eq!(names(&r), ["a", "b"]);
        assert!(d.next_response(&s1, &mut n, &l).is_none(), "one in flight");
        assert!(matches!(
            d.on_request(&delta(&[], &[], "n1"), &l).unwrap(),
            Answer::Ack(_)
        ));
        assert!(d.next_response(&s1, &mut n, &l).is_none(), "nothing changed");
        // A change: only it is sent; the client NACKs it.
        let s2 = s1.next(vec![entry("a", "2")]);
        let r = d.next_response(&s2, &mut n, &l).unwrap();
        assert_eq!(names(&r), ["a"]);
        match d.on_request(&nack(delta(&[], &[], "n2")), &l).unwrap() {
            Answer::Nack(sent, msg) => {
                assert_eq!(msg, "bad template");
                assert_eq!(sent.changed.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d.acked, Some(s1.version), "the previous version stays in force");
        assert!(
            d.next_response(&s2, &mut n, &l).is_none(),
            "a NACKed version is not re-sent"
        );
        // Deleted: removal, because the client has it.
        let s3 = s2.next(vec![gone("b"), entry("c", "1")]);
        let r = d.next_response(&s3, &mut n, &l).unwrap();
        assert_eq!(names(&r), ["c"]);
        assert_eq!(r.removed_resources, ["b"]);
    }

    #[test]
    fn delta_explicit_names_resubscribe_and_removals_only_for_what_the_client_has() {
        let l = Limits::default();
        let mut n = nonces();
        let s1 = TypeSnapshot::empty(T, 1).next(vec![entry("a", "1"), entry("b", "1")]);
        let mut d = DeltaState::default();
        d.on_request(&delta(&["a"], &[], ""), &l).unwrap();
        let r = d.next_response(&s1, &mut n, &l).unwrap();
        assert_eq!(names(&r), ["a"]);
        d.on_request(&delta(&[], &[], "n1"), &l).unwrap();
        // b changes and goes: the client never subscribed to it, so nothing is said.
        let s2 = s1.next(vec![entry("b", "2")]);
        assert!(d.next_response(&s2, &mut n, &l).is_none());
        let s3 = s2.next(vec![gone("b")]);
        assert!(d.next_response(&s3, &mut n, &l).is_none());
        // Unsubscribe a: no response; a deleted later: no removal.
        d.on_request(&delta(&[], &["a"], ""), &l).unwrap();
        assert!(d.next_response(&s3, &mut n, &l).is_none());
        let s4 = s3.next(vec![gone("a")]);
        assert!(d.next_response(&s4, &mut n, &l).is_none());
        // Resubscribe to something that exists unchanged: it is sent again.
        let s5 = s4.next(vec![entry("a", "5")]);
        d.on_request(&delta(&["a"], &[], ""), &l).unwrap();
        let r = d.next_response(&s5, &mut n, &l).unwrap();
        assert_eq!(names(&r), ["a"]);
        d.on_request(&delta(&[], &[], "n2"), &l).unwrap();
        d.on_request(&delta(&["a"], &[], ""), &l).unwrap();
        let r = d.next_response(&s5, &mut n, &l).unwrap();
        assert_eq!(names(&r), ["a"], "re-sent on resubscribe even when unchanged");
        d.on_request(&delta(&[], &[], "n3"), &l).unwrap();
        // Subscribing to a name that does not exist: the protocol's "does not exist" removal.
        d.on_request(&delta(&["zz"], &[], ""), &l).unwrap();
        let r = d.next_response(&s5, &mut n, &l).unwrap();
        assert!(r.resources.is_empty());
        assert_eq!(r.removed_resources, ["zz"]);
    }

    #[test]
    fn delta_stale_nonce_still_changes_the_subscription() {
        let l = Limits::default();
        let mut n = nonces();
        let s1 = TypeSnapshot::empty(T, 1).next(vec![entry("a", "1"), entry("b", "1")]);
        let mut d = DeltaState::default();
        d.on_request(&delta(&["a"], &[], ""), &l).unwrap();
        d.next_response(&s1, &mut n, &l).unwrap();
        // An old nonce with a new subscription: applied, but ACKs nothing.
        assert!(matches!(
            d.on_request(&delta(&["b"], &[], "old"), &l).unwrap(),
            Answer::None
        ));
        assert!(d.in_flight());
        d.on_request(&delta(&[], &[], "n1"), &l).unwrap();
        let r = d.next_response(&s1, &mut n, &l).unwrap();
        assert_eq!(names(&r), ["b"]);
    }

    #[test]
    fn delta_reconnect_with_initial_versions_sends_only_what_changed() {
        let l = Limits::default();
        let mut n = nonces();
        let s = TypeSnapshot::empty(T, 1).next(vec![entry("a", "1"), entry("b", "2"), entry("c", "1")]);
        let mut d = DeltaState::default();
        let mut req = delta(&["*"], &[], "");
        req.initial_resource_versions = [("a", "1"), ("b", "1"), ("gone", "3")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        d.on_request(&req, &l).unwrap();
        let r = d.next_response(&s, &mut n, &l).unwrap();
        assert_eq!(names(&r), ["b", "c"]);
        assert_eq!(r.removed_resources, ["gone"]);
    }

    #[test]
    fn delta_wildcard_plus_name_unsubscribe_resends_and_unsubscribing_star_stops() {
        let l = Limits::default();
        let mut n = nonces();
        let s1 = TypeSnapshot::empty(T, 1).next(vec![entry("a", "1"), entry("b", "1")]);
        let mut d = DeltaState::default();
        d.on_request(&delta(&["*", "a"], &[], ""), &l).unwrap();
        assert_eq!(names(&d.next_response(&s1, &mut n, &l).unwrap()), ["a", "b"]);
        d.on_request(&delta(&[], &[], "n1"), &l).unwrap();
        d.on_request(&delta(&[], &["a"], ""), &l).unwrap();
        assert_eq!(
            names(&d.next_response(&s1, &mut n, &l).unwrap()),
            ["a"],
            "still in the wildcard"
        );
        d.on_request(&delta(&[], &[], "n2"), &l).unwrap();
        d.on_request(&delta(&[], &["*"], ""), &l).unwrap();
        let s2 = s1.next(vec![entry("a", "2"), gone("b")]);
        assert!(
            d.next_response(&s2, &mut n, &l).is_none(),
            "no longer subscribed to anything"
        );
        // An empty request now is not the legacy wildcard.
        d.on_request(&delta(&[], &[], ""), &l).unwrap();
        assert!(d.next_response(&s2, &mut n, &l).is_none());
    }

    #[test]
    fn delta_large_changes_are_split_and_the_rest_follows_the_ack() {
        let l = Limits {
            max_response_bytes: 100,
            max_names: 10,
            ..Limits::default()
        };
        let mut n = nonces();
        let s = TypeSnapshot::empty(T, 1).next(vec![entry("a", "1"), entry("b", "1"), entry("c", "1")]);
        let mut d = DeltaState::default();
        d.on_request(&delta(&["*"], &[], ""), &l).unwrap();
        let mut got = vec![];
        for i in 1..=3 {
            let r = d.next_response(&s, &mut n, &l).unwrap();
            got.extend(names(&r).iter().map(|s| s.to_string()));
            d.on_request(&delta(&[], &[], &format!("n{i}")), &l).unwrap();
        }
        assert_eq!(got, ["a", "b", "c"]);
        assert!(d.next_response(&s, &mut n, &l).is_none());
        let many: Vec<String> = (0..11).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(d.on_request(&delta(&many, &[], ""), &l).is_err());
    }

    fn sotw(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: T.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    #[test]
    fn sotw_full_state_ack_nack_and_removal_by_absence() {
        let l = Limits::default();
        let mut n = nonces();
        let s1 = TypeSnapshot::empty(T, 1).next(vec![entry("a", "1"), entry("b", "1")]);
        let mut st = SotwState::default();
        st.on_request(&sotw(&[], "", ""), Some(&s1), &l).unwrap();
        let r = st.next_response(&s1, &mut n).unwrap();
        assert_eq!(r.resources.len(), 2);
        assert_eq!(r.version_info, s1.version_string());
        assert!(matches!(
            st.on_request(&sotw(&[], &s1.version_string(), "n1"), Some(&s1), &l)
                .unwrap(),
            Answer::Ack(_)
        ));
        assert!(st.next_response(&s1, &mut n).is_none());
        let s2 = s1.next(vec![entry("a", "2")]);
        let r = st.next_response(&s2, &mut n).unwrap();
        assert_eq!(r.resources.len(), 2, "the complete state");
        let mut nack = sotw(&[], &s1.version_string(), "n2");
        nack.error_detail = Some(Status {
            code: 3,
            message: "no".into(),
            details: vec![],
        });
        match st.on_request(&nack, Some(&s2), &l).unwrap() {
            Answer::Nack(sent, _) => assert_eq!(sent.changed.len(), 1, "the changed one"),
            other => panic!("{other:?}"),
        }
        assert_eq!(st.acked, Some(s1.version));
        assert!(
            st.next_response(&s2, &mut n).is_none(),
            "not re-sent after a NACK"
        );
        let s3 = s2.next(vec![gone("b")]);
        let r = st.next_response(&s3, &mut n).unwrap();
        assert_eq!(r.resources.len(), 1, "b absent: removed");
    }

    #[test]
    fn sotw_names_stale_nonces_and_reconnect() {
        let l = Limits::default();
        let mut n = nonces();
        let s1 = TypeSnapshot::empty(T, 1).next(vec![entry("a", "1"), entry("b", "1")]);
        let mut st = SotwState::default();
        st.on_request(&sotw(&["a"], "", ""), Some(&s1), &l).unwrap();
        assert_eq!(st.next_response(&s1, &mut n).unwrap().resources.len(), 1);
        // Stale nonce with a new name: no ACK, but the name counts.
        assert!(matches!(
            st.on_request(&sotw(&["a", "b"], "", "old"), Some(&s1), &l)
                .unwrap(),
            Answer::None
        ));
        assert!(st.in_flight());
        st.on_request(&sotw(&["a", "b"], &s1.version_string(), "n1"), Some(&s1), &l)
            .unwrap();
        assert_eq!(st.next_response(&s1, &mut n).unwrap().resources.len(), 2);
        st.on_request(&sotw(&["a", "b"], &s1.version_string(), "n2"), Some(&s1), &l)
            .unwrap();
        // Unsubscribe all: an empty request after names is not the legacy wildcard.
        st.on_request(&sotw(&[], &s1.version_string(), ""), Some(&s1), &l)
            .unwrap();
        assert_eq!(st.next_response(&s1, &mut n).unwrap().resources.len(), 0);
        // A wildcard reconnect at the current version: nothing re-sent.
        let mut again = SotwState::default();
        again
            .on_request(&sotw(&["*"], &s1.version_string(), ""), Some(&s1), &l)
            .unwrap();
        assert!(again.next_response(&s1, &mut n).is_none());
        let s2 = s1.next(vec![entry("b", "2")]);
        assert_eq!(again.next_response(&s2, &mut n).unwrap().resources.len(), 2);
        // At an older version: the state is sent.
        let mut old = SotwState::default();
        old.on_request(&sotw(&["*"], "1", ""), Some(&s2), &l).unwrap();
        assert!(old.next_response(&s2, &mut n).is_some());
    }
}
