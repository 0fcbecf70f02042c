//! One subscriber stream of `AggregatedDiscoveryService` (state of the world or delta): reads
//! its requests, applies them to the per-type state machines of [`super::subscription`], and
//! sends a response when the client lacks something, nothing is in flight for that type, and
//! the outgoing channel has room.
//!
//! Back-pressure: the outgoing channel holds one response, and a type has at most one
//! response in flight (un-ACKed). A subscriber that stops reading therefore holds at most one
//! response per type plus HTTP/2's flow-control window; its state is its subscription and
//! the name → version map of what it has. Newer snapshots replace older ones in the shared
//! cache; when the subscriber reads and ACKs again it gets the latest state of each resource
//! (intermediate versions are skipped), and other subscribers are not slowed down.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crwatch::xds::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::Shared;
use super::cache::TypeSnapshot;
use super::metrics::{ProtocolLabel, SubscriberTypeLabels};
use super::subscription::{Answer, DeltaState, Limits, SotwState, TooManyNames};

/// The two protocol variants, as the stream loop drives them.
pub trait Protocol: Send + 'static {
    /// Request message.
    type Req: Send + 'static;
    /// Response message.
    type Resp: Send + 'static;
    /// Per-type state.
    type State: Default + Send;
    /// `sotw` or `delta` (metrics label).
    const NAME: &'static str;
    /// The request's type URL.
    fn type_url(req: &Self::Req) -> &str;
    /// The request's node id, if any.
    fn node(req: &Self::Req) -> Option<&str>;
    /// Apply a request.
    fn on_request(
        state: &mut Self::State,
        req: &Self::Req,
        snapshot: Option<&TypeSnapshot>,
        limits: &Limits,
    ) -> Result<Answer, TooManyNames>;
    /// Whether `next` may have something.
    fn wants(state: &Self::State, snapshot: &TypeSnapshot) -> bool;
    /// Pending resources (metrics).
    fn pending(state: &Self::State, snapshot: &TypeSnapshot) -> usize;
    /// The next response.
    fn next(
        state: &mut Self::State,
        snapshot: &TypeSnapshot,
        nonce: &mut dyn FnMut() -> String,
        limits: &Limits,
    ) -> Option<Self::Resp>;
    /// Resources in a response (metrics, logs).
    fn count(resp: &Self::Resp) -> usize;
}

/// `StreamAggregatedResources`.
pub struct Sotw;

impl Protocol for Sotw {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;
    type State = SotwState;
    const NAME: &'static str = "sotw";
    fn type_url(req: &Self::Req) -> &str {
        &req.type_url
    }
    fn node(req: &Self::Req) -> Option<&str> {
        req.node.as_ref().map(|n| n.id.as_str()).filter(|s| !s.is_empty())
    }
    fn on_request(
        state: &mut SotwState,
        req: &DiscoveryRequest,
        snapshot: Option<&TypeSnapshot>,
        limits: &Limits,
    ) -> Result<Answer, TooManyNames> {
        state.on_request(req, snapshot, limits)
    }
    fn wants(state: &SotwState, snapshot: &TypeSnapshot) -> bool {
        state.wants(snapshot)
    }
    fn pending(state: &SotwState, snapshot: &TypeSnapshot) -> usize {
        state.pending(snapshot)
    }
    fn next(
        state: &mut SotwState,
        snapshot: &TypeSnapshot,
        nonce: &mut dyn FnMut() -> String,
        _limits: &Limits,
    ) -> Option<DiscoveryResponse> {
        state.next_response(snapshot, nonce)
    }
    fn count(resp: &DiscoveryResponse) -> usize {
        resp.resources.len()
    }
}

/// `DeltaAggregatedResources`.
pub struct Delta;

impl Protocol for Delta {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;
    type State = DeltaState;
    const NAME: &'static str = "delta";
    fn type_url(req: &Self::Req) -> &str {
        &req.type_url
    }
    fn node(req: &Self::Req) -> Option<&str> {
        req.node.as_ref().map(|n| n.id.as_str()).filter(|s| !s.is_empty())
    }
    fn on_request(
        state: &mut DeltaState,
        req: &DeltaDiscoveryRequest,
        _snapshot: Option<&TypeSnapshot>,
        limits: &Limits,
    ) -> Result<Answer, TooManyNames> {
        state.on_request(req, limits)
    }
    fn wants(state: &DeltaState, snapshot: &TypeSnapshot) -> bool {
        state.wants(snapshot)
    }
    fn pending(state: &DeltaState, snapshot: &TypeSnapshot) -> usize {
        state.pending(snapshot)
    }
    fn next(
        state: &mut DeltaState,
        snapshot: &TypeSnapshot,
        nonce: &mut dyn FnMut() -> String,
        limits: &Limits,
    ) -> Option<DeltaDiscoveryResponse> {
        state.next_response(snapshot, nonce, limits)
    }
    fn count(resp: &DeltaDiscoveryResponse) -> usize {
        resp.resources.len() + resp.removed_resources.len()
    }
}

/// Drive one stream until the client closes it, it fails, or the server shuts down.
pub async fn run<P: Protocol>(
    shared: Arc<Shared>,
    mut inbound: Streaming<P::Req>,
    tx: mpsc::Sender<Result<P::Resp, Status>>,
    peer: String,
    stream_no: u64,
) {
    let metrics = shared.metrics.clone();
    let protocol = ProtocolLabel {
        protocol: P::NAME.to_string(),
    };
    metrics.subscribers.get_or_create(&protocol).inc();
    let mut states: BTreeMap<String, P::State> = BTreeMap::new();
    let mut unknown: HashSet<String> = HashSet::new();
    let mut bump = shared.cache.subscribe();
    let mut subscriber = format!("{peer}#{stream_no}");
    let mut named = false;
    let mut nonce_no = 0u64;
    let labels = |subscriber: &str, t: &str| SubscriberTypeLabels {
        subscriber: subscriber.to_string(),
        type_url: t.to_string(),
    };
    tracing::debug!(%subscriber, protocol = P::NAME, "subscriber connected");
    loop {
        let snapshots: Vec<(String, Option<Arc<TypeSnapshot>>)> = states
            .keys()
            .map(|t| (t.clone(), shared.cache.snapshot(t)))
            .collect();
        let mut ready = false;
        for (t, snap) in &snapshots {
            if let (Some(state), Some(snap)) = (states.get(t), snap) {
                ready |= P::wants(state, snap);
                metrics
                    .pending
                    .get_or_create(&labels(&subscriber, t))
                    .set(P::pending(state, snap) as i64);
            }
        }
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            msg = inbound.message() => {
                let req = match msg {
                    Ok(Some(req)) => req,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%subscriber, error = %status, "subscriber stream failed");
                        break;
                    }
                };
                if !named {
                    named = true;
                    if let Some(node) = P::node(&req) {
                        subscriber = format!("{node}#{stream_no}");
                    }
                }
                let t = P::type_url(&req).to_string();
                let Some(tc) = shared.cache.get(&t) else {
                    if unknown.insert(t.clone()) {
                        tracing::warn!(%subscriber, type_url = %t, served = ?shared.cache.type_urls(),
                            "request for a type this server does not serve: ignored");
                    }
                    continue;
                };
                let snap = tc.current();
                let state = states.entry(t.clone()).or_default();
                match P::on_request(state, &req, snap.as_deref(), &shared.limits) {
                    Err(e) => {
                        let _ = tx.send(Err(Status::resource_exhausted(e.to_string()))).await;
                        break;
                    }
                    Ok(Answer::Nack(sent, message)) => {
                        metrics.nacks.get_or_create(&labels(&subscriber, &t)).inc();
                        metrics.type_nacks.get_or_create(&super::metrics::TypeLabel { type_url: t.clone() }).inc();
                        tracing::warn!(%subscriber, type_url = %t, version = sent.version, nonce = %sent.nonce,
                            resources = sent.changed.len(), error = %super::report::truncate(&message, 200),
                            "NACK: the subscriber keeps its previous version");
                        if let Some(r) = &shared.reporter {
                            r.nack(&t, sent.changed, &message, &subscriber);
                        }
                    }
                    Ok(Answer::Ack(sent)) => {
                        metrics.acked_version.get_or_create(&labels(&subscriber, &t)).set(sent.version as i64);
                        if let Some(r) = &shared.reporter {
                            r.ack(&t, sent.changed, &subscriber);
                        }
                    }
                    Ok(Answer::None) => {}
                }
            }
            changed = bump.changed() => {
                if changed.is_err() {
                    break;
                }
                bump.borrow_and_update();
            }
            permit = tx.reserve(), if ready => {
                let Ok(permit) = permit else { break };
                let mut permit = Some(permit);
                for (t, snap) in &snapshots {
                    let (Some(state), Some(snap)) = (states.get_mut(t), snap) else { continue };
                    if !P::wants(state, snap) {
                        continue;
                    }
                    let mut nonce = || {
                        nonce_no += 1;
                        nonce_no.to_string()
                    };
                    if let Some(resp) = P::next(state, snap, &mut nonce, &shared.limits) {
                        tracing::debug!(%subscriber, type_url = %t, version = snap.version, resources = P::count(&resp), "response");
                        metrics.responses.get_or_create(&super::metrics::TypeLabel { type_url: t.clone() }).inc();
                        if let Some(p) = permit.take() {
                            p.send(Ok(resp));
                        }
                        break;
                    }
                }
            }
        }
    }
    metrics.subscribers.get_or_create(&protocol).dec();
    let types: Vec<String> = states.keys().cloned().collect();
    metrics.forget(&subscriber, &types);
    tracing::debug!(%subscriber, "subscriber disconnected");
}
