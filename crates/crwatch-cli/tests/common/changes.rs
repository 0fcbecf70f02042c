//! Changes made to ConfigMaps of one namespace for the forwarder's end-to-end tests, with what
//! each object (`ns/name`, the CloudEvent subject) should deliver, in order: `added:0`,
//! `modified:3`, `deleted:3` (the kind of change and the object's `data.n`); and the check that
//! what a sink received is exactly that, repeats of an id folded (at least once may deliver a
//! change twice; order must hold regardless).

use std::collections::{BTreeMap, BTreeSet};

use crwatch_apiserver::TestServer;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// Per subject, the labels expected (or received) in order.
pub type Sequences = BTreeMap<String, Vec<String>>;

/// The changes made so far and what they should deliver.
pub struct Changes {
    api: Api<ConfigMap>,
    /// The namespace.
    pub ns: String,
    /// Per subject, the labels to arrive, in order.
    pub expected: Sequences,
    last_n: BTreeMap<String, u32>,
}

impl Changes {
    /// Changes in namespace `ns`, created now.
    pub async fn new(server: &TestServer, ns: &str) -> Self {
        server
            .server()
            .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .await
            .expect("namespace");
        Self {
            api: Api::namespaced(server.client(), ns),
            ns: ns.to_string(),
            expected: BTreeMap::new(),
            last_n: BTreeMap::new(),
        }
    }

    fn record(&mut self, name: &str, label: String) {
        self.expected
            .entry(format!("{}/{name}", self.ns))
            .or_default()
            .push(label);
    }

    /// Create `name` with `data.n = n`.
    pub async fn create(&mut self, name: &str, n: u32) {
        self.create_with(name, n, "").await;
    }

    /// Create with a `pad` value, to make events bigger.
    pub async fn create_with(&mut self, name: &str, n: u32, pad: &str) {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": name},
            "data": {"n": n.to_string(), "pad": pad},
        }))
        .expect("a ConfigMap");
        self.api
            .create(&PostParams::default(), &cm)
            .await
            .expect("create");
        self.last_n.insert(name.to_string(), n);
        self.record(name, format!("added:{n}"));
    }

    /// Set `data.n`.
    pub async fn set(&mut self, name: &str, n: u32) {
        let patch = json!({"data": {"n": n.to_string()}});
        self.api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch");
        self.last_n.insert(name.to_string(), n);
        self.record(name, format!("modified:{n}"));
    }

    /// Add one to `data.n`.
    pub async fn bump(&mut self, name: &str) {
        let n = self.last_n[name] + 1;
        self.set(name, n).await;
    }

    /// Delete `name`.
    pub async fn delete(&mut self, name: &str) {
        self.api
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
        let n = self.last_n[name];
        self.record(name, format!("deleted:{n}"));
    }

    /// Events expected in all.
    pub fn total(&self) -> usize {
        self.expected.values().map(Vec::len).sum()
    }

    /// `Ok` with the number of repeats when `got` (from [`sequences`] or a sink's own reading)
    /// is exactly what is expected; `Err` says what is still missing or wrong.
    pub fn matches(&self, (got, repeats): (Sequences, usize)) -> Result<usize, String> {
        if got == self.expected {
            Ok(repeats)
        } else {
            Err(format!(
                "{} distinct of {} expected events; got {got:?}, want {:?}",
                got.values().map(Vec::len).sum::<usize>(),
                self.total(),
                self.expected
            ))
        }
    }

    /// [`matches`](Self::matches) for CloudEvents as JSON.
    pub fn arrived(&self, events: &[Value]) -> Result<usize, String> {
        self.matches(sequences(events))
    }
}

/// `added:0`, `modified:3`, `deleted:3`: what one CloudEvent says happened.
pub fn label(event: &Value) -> String {
    let kind = event["type"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("io.crwatch.resource.");
    let n = event["data"]["object"]["data"]["n"].as_str().unwrap_or("-");
    format!("{kind}:{n}")
}

/// Per subject, the labels of `(id, subject, label)` records in arrival order, repeats of an id
/// folded; and how many repeats there were.
pub fn fold<'a>(records: impl IntoIterator<Item = (&'a str, &'a str, String)>) -> (Sequences, usize) {
    let mut ids = BTreeSet::new();
    let mut out: Sequences = BTreeMap::new();
    let mut repeats = 0;
    for (id, subject, label) in records {
        if !ids.insert(id.to_string()) {
            repeats += 1;
            continue;
        }
        out.entry(subject.to_string()).or_default().push(label);
    }
    (out, repeats)
}

/// [`fold`] over CloudEvents as JSON.
pub fn sequences(events: &[Value]) -> (Sequences, usize) {
    fold(events.iter().map(|e| {
        (
            e["id"].as_str().unwrap_or_default(),
            e["subject"].as_str().unwrap_or_default(),
            label(e),
        )
    }))
}
