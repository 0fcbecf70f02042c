//! Watch streams: replay from a resourceVersion or start with the current state, then follow
//! the store; selectors, bookmarks, `sendInitialEvents`, timeouts, 410 Gone, and closing
//! watchers that fall behind or that a test drops.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_util::sync::CancellationToken;

use crate::api::{Api, Ctx};
use crate::meta::meta_str;
use crate::registry::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};
use crate::store::{Event, EventType};

/// How a watch renders objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Plain objects.
    Object,
    /// `meta.k8s.io/v1` Tables, with the given `includeObject` policy.
    Table {
        /// Embed the full object in each row instead of its metadata.
        full_object: bool,
    },
    /// `meta.k8s.io/v1` PartialObjectMetadata: metadata only.
    Metadata,
}

/// Settings of the watch machinery.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// How often idle watches that asked for them get BOOKMARK events.
    pub bookmark_interval: Duration,
    /// Longest watch when the client gives no `timeoutSeconds`.
    pub default_timeout: Duration,
}

struct Filter {
    def: Arc<ResourceDef>,
    namespace: String,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, o: &Value) -> bool {
        (self.namespace.is_empty() || meta_str(o, "namespace") == self.namespace)
            && self.labels.matches_object(o)
            && self.fields.matches(o)
    }

    /// What a watcher with these selectors sees of an event, as the real server decides it:
    /// an object that stops matching is DELETED, one that starts matching is ADDED.
    fn translate<'a>(&self, ev: &'a Event) -> Option<(&'static str, &'a Value)> {
        if ev.gr != self.def.key() {
            return None;
        }
        let now = self.matches(&ev.object);
        match ev.kind {
            EventType::Added => now.then_some(("ADDED", &*ev.object)),
            EventType::Deleted => {
                let before = ev.prev.as_ref().map(|p| self.matches(p)).unwrap_or(now);
                before.then_some(("DELETED", &*ev.object))
            }
            EventType::Modified => {
                let before = ev.prev.as_ref().map(|p| self.matches(p)).unwrap_or(false);
                match (before, now) {
                    (true, true) => Some(("MODIFIED", &*ev.object)),
                    (false, true) => Some(("ADDED", &*ev.object)),
                    (true, false) => Some(("DELETED", &*ev.object)),
                    (false, false) => None,
                }
            }
        }
    }
}

struct Encoder {
    def: Arc<ResourceDef>,
    format: Format,
    columns_sent: bool,
}

impl Encoder {
    fn event(&mut self, kind: &str, obj: &Value) -> Bytes {
        let object = match self.format {
            Format::Object => Api::present(&self.def, obj),
            Format::Metadata => crate::table::partial_metadata(obj),
            Format::Table { full_object } => {
                let mut t = crate::table::to_table(
                    &self.def,
                    &[obj],
                    json!({"resourceVersion": meta_str(obj, "resourceVersion")}),
                    !self.columns_sent,
                );
                if full_object {
                    t["rows"][0]["object"] = Api::present(&self.def, obj);
                }
                self.columns_sent = true;
                t
            }
        };
        line(&json!({"type": kind, "object": object}))
    }

    fn bookmark(&self, rev: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = match self.format {
            Format::Object => {
                json!({"kind": self.def.kind, "apiVersion": self.def.api_version(), "metadata": meta})
            }
            Format::Metadata => {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta})
            }
            Format::Table { .. } => {
                json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": null, "rows": null})
            }
        };
        line(&json!({"type": "BOOKMARK", "object": object}))
    }
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

fn flag(ctx: &Ctx, k: &str) -> Option<bool> {
    ctx.params.get(k).map(|v| v == "true" || v == "1")
}

/// Queue one line for the client; false when the watch is over (client gone, watches
/// dropped, server stopping). A client that stops reading blocks only its own watch here,
/// and once `limit` changes have piled up behind it the watch is closed, as the real server
/// closes unresponsive watchers (the client re-watches from its last resourceVersion).
async fn emit(
    tx: &mpsc::Sender<Bytes>,
    line: Bytes,
    drops: &mut tokio::sync::watch::Receiver<u64>,
    stop: &CancellationToken,
    behind: &tokio::sync::broadcast::Receiver<Arc<Event>>,
    limit: usize,
) -> bool {
    let fell_behind = async {
        let mut check = tokio::time::interval(Duration::from_millis(50));
        while behind.len() < limit {
            check.tick().await;
        }
    };
    tokio::select! {
        sent = tx.send(line) => sent.is_ok(),
        _ = drops.changed() => false,
        _ = stop.cancelled() => false,
        _ = fell_behind => false,
    }
}

/// Start a watch; the returned receiver yields the encoded event lines until the watch ends.
pub fn start(
    api: Arc<Api>,
    ctx: &Ctx,
    format: Format,
    settings: &WatchSettings,
    drops: tokio::sync::watch::Receiver<u64>,
    stop: CancellationToken,
) -> ApiResult<mpsc::Receiver<Bytes>> {
    let (labels, mut fields) = api.selectors(ctx)?;
    if !ctx.name.is_empty() {
        fields
            .terms
            .push(("metadata.name".into(), ctx.name.clone(), true));
    }
    let filter = Filter {
        def: ctx.def.clone(),
        namespace: ctx.namespace.clone(),
        labels,
        fields,
    };
    let rv = ctx.params.get("resourceVersion").unwrap_or_default().to_string();
    let send_initial = flag(ctx, "sendInitialEvents");
    let bookmarks = flag(ctx, "allowWatchBookmarks").unwrap_or(false);
    if send_initial.is_none()
        && ctx
            .params
            .get("resourceVersionMatch")
            .is_some_and(|m| !m.is_empty())
    {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            vec![crate::status::Cause::new(
                "FieldValueForbidden",
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            )],
        ));
    }
    if send_initial.is_some() && ctx.params.get("resourceVersionMatch") != Some("NotOlderThan") {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            vec![crate::status::Cause::new(
                "FieldValueForbidden",
                "resourceVersionMatch",
                "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            )],
        ));
    }
    if send_initial == Some(true) && !bookmarks {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            vec![crate::status::Cause::new(
                "FieldValueForbidden",
                "allowWatchBookmarks",
                "Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
            )],
        ));
    }
    let timeout = ctx
        .params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(settings.default_timeout);
    let bookmark_interval = settings.bookmark_interval;
    let mut enc = Encoder {
        def: ctx.def.clone(),
        format,
        columns_sent: false,
    };
    let ns = (!ctx.namespace.is_empty()).then(|| ctx.namespace.clone());
    // Initial state (synthetic ADDED events) when starting "now", or history replay.
    let (initial, backlog, mut last_rev, mut rx, initial_end) =
        if send_initial == Some(true) || (send_initial.is_none() && (rv.is_empty() || rv == "0")) {
            let (objs, rev, rx) = api.store.snapshot_and_subscribe(&ctx.def.key(), ns.as_deref());
            (objs, vec![], rev, rx, send_initial == Some(true))
        } else if rv.is_empty() || rv == "0" {
            let (_, rev, rx) = api.store.snapshot_and_subscribe(&ctx.def.key(), ns.as_deref());
            (vec![], vec![], rev, rx, false)
        } else {
            let from: u64 = rv
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
            match api.store.history_and_subscribe(from) {
                Ok((backlog, _, rx)) => (vec![], backlog, from, rx, false),
                Err(c) => {
                    // The real server answers 200 and then an ERROR event with 410 Expired.
                    let (tx, out) = mpsc::channel(1);
                    let status = ApiError::gone(format!(
                        "too old resource version: {} ({})",
                        c.requested, c.oldest
                    ))
                    .status();
                    let _ = tx.try_send(line(&json!({"type": "ERROR", "object": status})));
                    return Ok(out);
                }
            }
        };
    let (tx, out) = mpsc::channel::<Bytes>(256);
    let limit = api.store.watch_buffer();
    let mut drops = drops;
    drops.mark_unchanged();
    tokio::spawn(async move {
        for o in initial.iter().filter(|o| filter.matches(o)) {
            if !emit(&tx, enc.event("ADDED", o), &mut drops, &stop, &rx, limit).await {
                return;
            }
        }
        if initial_end && !emit(&tx, enc.bookmark(last_rev, true), &mut drops, &stop, &rx, limit).await {
            return;
        }
        for ev in &backlog {
            last_rev = ev.rev;
            if let Some((kind, obj)) = filter.translate(ev)
                && !emit(&tx, enc.event(kind, obj), &mut drops, &stop, &rx, limit).await
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + bookmark_interval, bookmark_interval);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = drops.changed() => return,
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = ticker.tick() => {
                    if bookmarks && !emit(&tx, enc.bookmark(last_rev, false), &mut drops, &stop, &rx, limit).await {
                        return;
                    }
                }
                ev = rx.recv() => match ev {
                    Ok(ev) => {
                        if ev.rev <= last_rev {
                            continue;
                        }
                        last_rev = ev.rev;
                        if let Some((kind, obj)) = filter.translate(&ev)
                            && !emit(&tx, enc.event(kind, obj), &mut drops, &stop, &rx, limit).await {
                                return;
                            }
                    }
                    // Fell too far behind: close, as the real server does; the client re-watches.
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                }
            }
        }
    });
    Ok(out)
}
