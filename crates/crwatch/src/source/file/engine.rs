//! The file source's engine: one thread that owns the state (files, their last good
//! documents, which file wins each identity, what the consumer has), turns watcher batches,
//! polls and rescans into events, and sends them on a bounded channel.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kube::api::DynamicObject;
use notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{Debouncer, NoCache, new_debouncer_opt};
use tokio::sync::mpsc::Sender;

use super::parse::{self, DocKey, Docs, ParseCtx};
use super::scan::{self, Found, Stamp};
use super::{Config, FileError, Mode, Shared, lock};
use crate::source::{Event, SourceError};

type Tx = Sender<Result<Event<DynamicObject>, SourceError>>;

/// The consumer went away.
struct Closed;

/// How often an idle engine checks whether its consumer is still there.
const IDLE: Duration = Duration::from_millis(250);
/// Error reports sent per batch (the rest are counted and logged).
const MAX_REPORTS_PER_BATCH: usize = 100;

#[derive(Debug, Default)]
struct FileState {
    stamp: Option<Stamp>,
    target: Option<PathBuf>,
    /// The last good documents.
    docs: Docs,
    error: Option<FileError>,
}

enum Loaded {
    Docs(Docs),
    Gone,
    Failed(FileError),
}

struct Engine {
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    tx: Tx,
    files: BTreeMap<String, FileState>,
    /// Which files define each identity (the first by path order wins).
    claims: HashMap<DocKey, BTreeSet<String>>,
    /// What the consumer has.
    emitted: HashMap<DocKey, Arc<DynamicObject>>,
    /// Identities defined more than once, with their files (winner first).
    dups: BTreeMap<DocKey, Vec<String>>,
    /// Symlinked directories inside the root (link → canonical target).
    dir_links: BTreeMap<String, PathBuf>,
    /// Files reached through a symlink (path → canonical target).
    file_links: BTreeMap<String, PathBuf>,
    errored: BTreeSet<String>,
    too_many: bool,
    too_many_reported: bool,
    outbox: Vec<FileError>,
}

pub(super) fn run(cfg: Arc<Config>, shared: Arc<Shared>, tx: Tx) {
    let mut e = Engine {
        cfg,
        shared,
        tx,
        files: BTreeMap::new(),
        claims: HashMap::new(),
        emitted: HashMap::new(),
        dups: BTreeMap::new(),
        dir_links: BTreeMap::new(),
        file_links: BTreeMap::new(),
        errored: BTreeSet::new(),
        too_many: false,
        too_many_reported: false,
        outbox: vec![],
    };
    if e.main().is_err() {
        tracing::debug!(source = %e.cfg.name, "consumer gone; file source stopped");
    }
}

impl Engine {
    fn main(&mut self) -> Result<(), Closed> {
        let mut watcher = None;
        if self.cfg.poll.is_none() {
            match self.start_watcher() {
                Ok(w) => watcher = Some(w),
                Err(e) => tracing::warn!(
                    source = %self.cfg.name,
                    error = %e,
                    interval = ?self.cfg.fallback_poll,
                    "cannot watch with inotify; polling instead (raise fs.inotify.max_user_watches / max_user_instances if the limit was reached)"
                ),
            }
        }
        let interval = match &watcher {
            Some(_) => None,
            None => {
                self.shared.polling.store(true, Ordering::Relaxed);
                Some(self.cfg.poll.unwrap_or(self.cfg.fallback_poll))
            }
        };
        // The watcher is running before the first scan, so nothing between the two is lost.
        self.full_scan(true)?;
        let mut next_poll = interval.map(|i| Instant::now() + i);
        loop {
            let wait = match next_poll {
                Some(at) => at.saturating_duration_since(Instant::now()).min(IDLE),
                None => IDLE,
            };
            let pending = self.shared.take(wait);
            if self.tx.is_closed() {
                return Err(Closed);
            }
            for message in &pending.errors {
                let err = FileError::Watch {
                    root: self.cfg.shown.clone(),
                    message: message.clone(),
                };
                self.report(err);
            }
            if pending.rescan {
                self.full_scan(true)?;
                if let (Some(i), Some(at)) = (interval, next_poll.as_mut()) {
                    *at = Instant::now() + i;
                }
                continue;
            }
            if let (Some(i), Some(at)) = (interval, next_poll.as_mut()) {
                if Instant::now() >= *at {
                    self.full_scan(false)?;
                    *at = Instant::now() + i;
                }
                continue;
            }
            if !pending.paths.is_empty() {
                if self.shared.paused.load(Ordering::SeqCst) {
                    continue; // lost, as in an overflowing queue; resume rescans
                }
                self.changed(pending.paths)?;
            }
        }
    }

    fn start_watcher(&self) -> Result<Debouncer<RecommendedWatcher, NoCache>, String> {
        if self.cfg.fail_watch {
            return Err("simulated failure (testing)".into());
        }
        let shared = self.shared.clone();
        let handler = move |res: notify_debouncer_full::DebounceEventResult| {
            if shared.paused.load(Ordering::SeqCst) {
                return;
            }
            shared.push(|p| p.absorb(res));
        };
        let config = notify::Config::default().with_follow_symlinks(false);
        let mut d = new_debouncer_opt::<_, RecommendedWatcher, NoCache>(
            self.cfg.debounce,
            None,
            handler,
            NoCache,
            config,
        )
        .map_err(|e| e.to_string())?;
        let mode = if self.cfg.filter.single().is_some() {
            RecursiveMode::NonRecursive
        } else {
            RecursiveMode::Recursive
        };
        d.watch(&self.cfg.root, mode).map_err(|e| e.to_string())?;
        Ok(d)
    }

    fn send(&self, ev: Result<Event<DynamicObject>, SourceError>) -> Result<(), Closed> {
        // Blocking here is the backpressure: the channel is bounded.
        self.tx.blocking_send(ev).map_err(|_| Closed)
    }

    fn report(&mut self, err: FileError) {
        tracing::warn!(source = %self.cfg.name, "{err}");
        self.shared.errors_total.fetch_add(1, Ordering::Relaxed);
        self.outbox.push(err);
    }

    /// Reports, publishes the state to handles, and says "up to date".
    fn finish_batch(&mut self) -> Result<(), Closed> {
        if self.too_many && !self.too_many_reported {
            self.report(FileError::TooManyFiles {
                root: self.cfg.shown.clone(),
                limit: self.cfg.max_files,
            });
        }
        self.too_many_reported = self.too_many;
        let reports = std::mem::take(&mut self.outbox);
        let extra = reports.len().saturating_sub(MAX_REPORTS_PER_BATCH);
        for e in reports.into_iter().take(MAX_REPORTS_PER_BATCH) {
            self.send(Err(SourceError::new(self.cfg.name.clone(), e.to_string())))?;
        }
        if extra > 0 {
            let msg = format!("{extra} more problems (see the log or the source's handle)");
            self.send(Err(SourceError::new(self.cfg.name.clone(), msg)))?;
        }
        self.publish();
        self.send(Ok(Event::Progress(None)))?;
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn publish(&self) {
        let mut problems: Vec<FileError> = self
            .errored
            .iter()
            .filter_map(|p| self.files.get(p).and_then(|s| s.error.clone()))
            .collect();
        for (key, paths) in &self.dups {
            for p in paths.iter().skip(1) {
                problems.push(FileError::Duplicate {
                    key: key.to_string(),
                    path: p.clone(),
                    winner: paths[0].clone(),
                });
            }
        }
        if self.too_many {
            problems.push(FileError::TooManyFiles {
                root: self.cfg.shown.clone(),
                limit: self.cfg.max_files,
            });
        }
        problems.sort_by(|a, b| a.path().cmp(&b.path()));
        *lock(&self.shared.problems) = problems;
        self.shared.files.store(self.files.len(), Ordering::Relaxed);
        self.shared.objects.store(self.emitted.len(), Ordering::Relaxed);
    }

    /// Reads the whole tree. `init`: emit the result as a list (`Init` … `InitDone`);
    /// otherwise (polling) emit the differences as `Apply`/`Delete`.
    fn full_scan(&mut self, init: bool) -> Result<(), Closed> {
        self.too_many = false;
        let mut touched = BTreeSet::new();
        self.sync("", &mut touched);
        let changes = self.settle(&touched, !init);
        // Handles show the state by the time the consumer has the events.
        self.publish();
        for c in changes {
            self.send(Ok(c))?;
        }
        if init {
            self.send(Ok(Event::Init))?;
            let mut all: Vec<(&DocKey, &Arc<DynamicObject>)> = self.emitted.iter().collect();
            all.sort_by(|a, b| a.0.cmp(b.0));
            let objs: Vec<DynamicObject> = all.into_iter().map(|(_, o)| (**o).clone()).collect();
            for o in objs {
                self.send(Ok(Event::InitApply(o)))?;
            }
            self.send(Ok(Event::InitDone))?;
        }
        self.finish_batch()
    }

    /// A watcher batch: re-reads only what the changed paths can affect.
    fn changed(&mut self, paths: Vec<PathBuf>) -> Result<(), Closed> {
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        for p in paths {
            for (rel, target) in self.file_links.iter().chain(self.dir_links.iter()) {
                if p.starts_with(target) || target.starts_with(&p) {
                    dirty.insert(rel.clone());
                }
            }
            let Ok(rest) = p.strip_prefix(&self.cfg.root) else {
                continue;
            };
            let mut rel = String::new();
            for c in rest.components() {
                let Some(c) = c.as_os_str().to_str() else { break };
                // Kubernetes' `..data` swap and friends: whatever links through them lives in
                // the directory holding them.
                if c.starts_with("..") {
                    break;
                }
                if !rel.is_empty() {
                    rel.push('/');
                }
                rel.push_str(c);
            }
            if let Some(single) = self.cfg.filter.single() {
                let first = rest.components().next().and_then(|c| c.as_os_str().to_str());
                if rel.is_empty() || first == Some(single) {
                    dirty.insert(String::new());
                }
                continue;
            }
            dirty.insert(rel);
        }
        let all: HashSet<String> = dirty.iter().cloned().collect();
        let roots: Vec<String> = dirty.into_iter().filter(|d| !has_ancestor_in(d, &all)).collect();
        let mut touched = BTreeSet::new();
        for rel in roots {
            self.sync(&rel, &mut touched);
        }
        let changes = self.settle(&touched, true);
        self.publish();
        for c in changes {
            self.send(Ok(c))?;
        }
        self.finish_batch()
    }

    /// Brings the files at or under `rel` up to date with the disk; collects the identities
    /// whose documents may have changed.
    fn sync(&mut self, rel: &str, touched: &mut BTreeSet<DocKey>) {
        let w = scan::walk(&self.cfg.root, rel, &self.cfg.filter, self.cfg.max_files);
        if w.truncated {
            self.too_many = true;
        }
        for (path, message) in w.errors {
            self.report(FileError::Read { path, message });
        }
        let known: Vec<String> = self
            .files
            .range(rel.to_string()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(rel))
            .filter(|k| under(k, rel))
            .filter(|k| !w.files.contains_key(*k))
            .filter(|k| !w.unreadable.iter().any(|u| under(k, u)))
            .cloned()
            .collect();
        for k in known {
            self.remove(&k, touched);
        }
        self.dir_links.retain(|k, _| !under(k, rel));
        self.dir_links.extend(w.dir_links);
        for (k, found) in w.files {
            self.refresh(&k, found, touched);
        }
    }

    fn remove(&mut self, rel: &str, touched: &mut BTreeSet<DocKey>) {
        let Some(st) = self.files.remove(rel) else { return };
        self.file_links.remove(rel);
        self.errored.remove(rel);
        for key in st.docs.into_keys() {
            if let Some(c) = self.claims.get_mut(&key) {
                c.remove(rel);
                if c.is_empty() {
                    self.claims.remove(&key);
                }
            }
            touched.insert(key);
        }
    }

    fn refresh(&mut self, rel: &str, found: Found, touched: &mut BTreeSet<DocKey>) {
        match self.files.get(rel) {
            Some(st) if st.stamp == Some(found.stamp) && st.target == found.target => return,
            Some(_) => {}
            None if self.files.len() >= self.cfg.max_files => {
                self.too_many = true;
                return;
            }
            None => {}
        }
        match &found.target {
            Some(t) => self.file_links.insert(rel.to_string(), t.clone()),
            None => self.file_links.remove(rel),
        };
        match self.load(rel, &found) {
            Loaded::Gone => self.remove(rel, touched),
            Loaded::Failed(err) => {
                let st = self.files.entry(rel.to_string()).or_default();
                st.stamp = Some(found.stamp);
                st.target = found.target;
                st.error = Some(err.clone());
                self.errored.insert(rel.to_string());
                self.report(err);
            }
            Loaded::Docs(docs) => {
                let st = self.files.entry(rel.to_string()).or_default();
                st.stamp = Some(found.stamp);
                st.target = found.target;
                if st.error.take().is_some() {
                    tracing::info!(source = %self.cfg.name, path = rel, "file is valid again");
                }
                let old = std::mem::replace(&mut st.docs, docs);
                let new_keys: Vec<DocKey> = st.docs.keys().cloned().collect();
                self.errored.remove(rel);
                for key in old.into_keys() {
                    if let Some(c) = self.claims.get_mut(&key) {
                        c.remove(rel);
                        if c.is_empty() {
                            self.claims.remove(&key);
                        }
                    }
                    touched.insert(key);
                }
                for key in new_keys {
                    self.claims
                        .entry(key.clone())
                        .or_default()
                        .insert(rel.to_string());
                    touched.insert(key);
                }
            }
        }
    }

    fn load(&self, rel: &str, found: &Found) -> Loaded {
        let gone_or = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Loaded::Gone
            } else {
                Loaded::Failed(FileError::Read {
                    path: rel.to_string(),
                    message: e.to_string(),
                })
            }
        };
        match self.cfg.mode {
            Mode::Documents => {
                let limit = self.cfg.max_file_size;
                let too_large = |size| {
                    Loaded::Failed(FileError::TooLarge {
                        path: rel.to_string(),
                        size,
                        limit,
                    })
                };
                if found.stamp.size() > limit {
                    return too_large(found.stamp.size());
                }
                let bytes = match scan::read_limited(&found.abs, limit) {
                    Ok(Some(b)) => b,
                    Ok(None) => return too_large(limit.saturating_add(1)),
                    Err(e) => return gone_or(e),
                };
                let ctx = ParseCtx {
                    uid_source: &self.cfg.uid_source,
                    kinds: &self.cfg.kinds,
                    default_namespace: self.cfg.namespace.as_deref(),
                };
                match parse::parse_documents(rel, &bytes, &ctx) {
                    Ok(docs) => Loaded::Docs(docs),
                    Err(message) => Loaded::Failed(FileError::Invalid {
                        path: rel.to_string(),
                        message,
                    }),
                }
            }
            Mode::Raw => {
                let (size, sha, content) = match scan::hash_file(&found.abs, self.cfg.max_content_size) {
                    Ok(r) => r,
                    Err(e) => return gone_or(e),
                };
                match parse::raw_object(rel, &self.cfg.uid_source, size, &sha, content.as_deref()) {
                    Ok((key, obj)) => Loaded::Docs([(key, Arc::new(obj))].into_iter().collect()),
                    Err(message) => Loaded::Failed(FileError::Invalid {
                        path: rel.to_string(),
                        message,
                    }),
                }
            }
        }
    }

    /// Decides the winner of each touched identity and (when `emit`) returns what changed.
    fn settle(&mut self, touched: &BTreeSet<DocKey>, emit: bool) -> Vec<Event<DynamicObject>> {
        let mut out = vec![];
        for key in touched {
            let claimants: Vec<String> = self
                .claims
                .get(key)
                .map(|c| c.iter().cloned().collect())
                .unwrap_or_default();
            if claimants.len() > 1 {
                if self.dups.get(key) != Some(&claimants) {
                    for p in &claimants[1..] {
                        let err = FileError::Duplicate {
                            key: key.to_string(),
                            path: p.clone(),
                            winner: claimants[0].clone(),
                        };
                        self.report(err);
                    }
                    self.dups.insert(key.clone(), claimants.clone());
                }
            } else if self.dups.remove(key).is_some() {
                tracing::info!(source = %self.cfg.name, resource = %key, "no longer defined twice");
            }
            let winner = claimants
                .first()
                .and_then(|p| self.files.get(p))
                .and_then(|st| st.docs.get(key))
                .cloned();
            match (winner, self.emitted.get(key)) {
                (Some(new), Some(old)) if new.metadata.resource_version == old.metadata.resource_version => {}
                (Some(new), _) => {
                    self.emitted.insert(key.clone(), new.clone());
                    if emit {
                        out.push(Event::Apply((*new).clone()));
                    }
                }
                (None, Some(_)) => {
                    if let Some(old) = self.emitted.remove(key)
                        && emit
                    {
                        out.push(Event::Delete((*old).clone()));
                    }
                }
                (None, None) => {}
            }
        }
        out
    }
}

/// Whether `path` is `dir` or inside it (`""` is the root, above everything).
fn under(path: &str, dir: &str) -> bool {
    dir.is_empty() || path == dir || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

fn has_ancestor_in(path: &str, set: &HashSet<String>) -> bool {
    if path.is_empty() {
        return false;
    }
    if set.contains("") {
        return true;
    }
    let mut at = 0;
    while let Some(i) = path[at..].find('/') {
        if set.contains(&path[..at + i]) {
            return true;
        }
        at += i + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtree_helpers() {
        assert!(under("a/b", "a"));
        assert!(under("a", "a"));
        assert!(!under("ab", "a"));
        assert!(!under("a.yaml", "a"));
        assert!(under("x", ""));
        let set: HashSet<String> = ["a".to_string(), "b/c".to_string()].into();
        assert!(has_ancestor_in("a/x", &set));
        assert!(has_ancestor_in("b/c/d/e", &set));
        assert!(!has_ancestor_in("a", &set));
        assert!(!has_ancestor_in("b/cd", &set));
    }
}
