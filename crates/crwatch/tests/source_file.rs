//! The file source on real files in temporary directories: initial lists, changes, editors'
//! save strategies, rename storms, 10,000 files, ConfigMap-mount symlink swaps, directories
//! moved in and out, invalid files that recover, duplicates, overflow rescans, polling, raw
//! files and limits; consumed directly and through an informer.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::wait_for;
use crwatch::informer::{HandlerFns, Informer};
use crwatch::source::file::{FileError, FileSource, FileSourceHandle, PATH_ANNOTATION};
use crwatch::source::{Event, EventStream, Source, SourceError};
use crwatch::store::ObjectKey;
use futures::StreamExt;
use kube::api::DynamicObject;
use tokio_util::sync::CancellationToken;

fn cm(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default\ndata:\n  v: \"{value}\"\n"
    )
}

fn write(dir: &Path, rel: &str, body: &str) {
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(p, body).unwrap();
}

fn name(o: &DynamicObject) -> String {
    o.metadata.name.clone().unwrap_or_default()
}

fn path_of(o: &DynamicObject) -> String {
    o.metadata.annotations.as_ref().unwrap()[PATH_ANNOTATION].clone()
}

/// Direct consumption with timeouts.
struct Events(EventStream<DynamicObject>);

impl Events {
    fn start(source: FileSource) -> Self {
        Events(Box::new(source).events())
    }

    async fn next(&mut self) -> Result<Event<DynamicObject>, SourceError> {
        tokio::time::timeout(Duration::from_secs(20), self.0.next())
            .await
            .expect("timed out waiting for an event")
            .expect("the stream ended")
    }

    /// `Init`, the objects, `InitDone`, then the `Progress` that follows (errors skipped).
    async fn list(&mut self) -> BTreeMap<String, DynamicObject> {
        loop {
            match self.next().await {
                Ok(Event::Init) => break,
                Ok(Event::Progress(_)) | Err(_) => continue,
                other => panic!("expected Init, got {other:?}"),
            }
        }
        let mut objs = BTreeMap::new();
        loop {
            match self.next().await {
                Ok(Event::InitApply(o)) => {
                    objs.insert(name(&o), o);
                }
                Ok(Event::InitDone) => break,
                other => panic!("expected InitApply/InitDone, got {other:?}"),
            }
        }
        loop {
            match self.next().await {
                Ok(Event::Progress(None)) => return objs,
                Err(_) => continue,
                other => panic!("expected Progress after the list, got {other:?}"),
            }
        }
    }

    /// The next `n` Apply/Delete events, as ("+"/"-", name, object); Progress and errors skipped.
    async fn changes(&mut self, n: usize) -> Vec<(&'static str, String, DynamicObject)> {
        let mut out = vec![];
        while out.len() < n {
            match self.next().await {
                Ok(Event::Apply(o)) => out.push(("+", name(&o), o)),
                Ok(Event::Delete(o)) => out.push(("-", name(&o), o)),
                Ok(Event::Progress(_)) | Err(_) => {}
                other => panic!("expected a change, got {other:?}"),
            }
        }
        out
    }

    /// Nothing but Progress (and errors) until `handle` has completed `batches` more batches
    /// (each batch is one debounced delivery of the watcher, or one poll), or for at most a
    /// second when the watcher had nothing to deliver.
    async fn quiet_for(&mut self, handle: &FileSourceHandle, batches: u64) {
        let until = handle.batches() + batches;
        let deadline = Instant::now() + Duration::from_secs(1);
        while handle.batches() < until && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(50), self.0.next()).await {
                Err(_) => {}
                Ok(Some(Ok(Event::Progress(_)))) | Ok(Some(Err(_))) => {}
                Ok(other) => panic!("expected no change, got {other:?}"),
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Add(String),
    Update(String, Vec<String>),
    Delete(String),
}

struct Watched {
    informer: Informer<DynamicObject>,
    seen: Arc<Mutex<Vec<Seen>>>,
    handle: FileSourceHandle,
    cancel: CancellationToken,
}

impl Watched {
    async fn start(source: FileSource) -> Self {
        let handle = source.handle();
        let informer = Informer::new(source);
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (a, u, d) = (seen.clone(), seen.clone(), seen.clone());
        informer.add_handler(
            HandlerFns::new()
                .on_add(move |o: &Arc<DynamicObject>| a.lock().unwrap().push(Seen::Add(name(o))))
                .on_update(move |_, n: &Arc<DynamicObject>, diff| {
                    let paths = diff.paths().into_iter().map(String::from).collect();
                    u.lock().unwrap().push(Seen::Update(name(n), paths))
                })
                .on_delete(move |o: &Arc<DynamicObject>| d.lock().unwrap().push(Seen::Delete(name(o)))),
        );
        let cancel = CancellationToken::new();
        informer.start(cancel.clone());
        informer.wait_synced(Duration::from_secs(60)).await.unwrap();
        Watched {
            informer,
            seen,
            handle,
            cancel,
        }
    }

    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    /// Waits until `n` changes were seen, then until the source is quiet (two more batches),
    /// and returns them all.
    async fn wait(&self, n: usize, what: &str) -> Vec<Seen> {
        wait_for(20, what, || (self.seen.lock().unwrap().len() >= n).then_some(())).await;
        self.settle().await;
        self.take()
    }

    /// Waits until everything the source saw so far has reached the handlers: the debouncer
    /// delivers a path within its timeout (100 ms), then a forced rescan acts as a barrier
    /// (the informer has applied every event before the relist once its relist count moves;
    /// the relist itself reports only real differences).
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let relists = || {
            self.informer
                .stats()
                .relists
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let before = relists();
        self.handle.rescan();
        wait_for(20, "the barrier relist", || (relists() > before).then_some(())).await;
    }

    fn get(&self, ns: Option<&str>, n: &str) -> Option<Arc<DynamicObject>> {
        self.informer.store().get(&ObjectKey::new(ns, n))
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_list_then_create_modify_delete() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "a.yaml",
        &format!("{}---\n{}", cm("a1", "1"), cm("a2", "1")),
    );
    write(
        root,
        "sub/b.json",
        r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"b","uid":"my-own-uid","labels":{"x":"y"}}}]}"#,
    );
    // Ignored: hidden, editor droppings, other extensions, `..` internals.
    write(root, ".hidden.yaml", &cm("hidden", "1"));
    write(root, "a.yaml.swp", "junk");
    write(root, "a.yaml~", &cm("backup", "1"));
    write(root, "notes.txt", "hello");
    write(root, ".git/x.yaml", &cm("git", "1"));
    let source = FileSource::new(root).unwrap();
    let handle = source.handle();
    let mut ev = Events::start(source);
    let list = ev.list().await;
    assert_eq!(list.keys().collect::<Vec<_>>(), vec!["a1", "a2", "b"]);
    let b = &list["b"];
    assert_eq!(b.metadata.uid.as_deref(), Some("my-own-uid"));
    assert_eq!(b.metadata.labels.as_ref().unwrap()["x"], "y");
    assert_eq!(path_of(b), "sub/b.json");
    let a1 = &list["a1"];
    assert_eq!(path_of(a1), "a.yaml");
    assert_eq!(a1.metadata.resource_version.as_ref().unwrap().len(), 16);
    assert!(a1.metadata.uid.is_some());
    assert_eq!(handle.files(), 2);
    assert_eq!(handle.objects(), 3);

    // Create.
    write(root, "c.yaml", &cm("c", "1"));
    let ch = ev.changes(1).await;
    assert_eq!((ch[0].0, ch[0].1.as_str()), ("+", "c"));
    // Modify one document of a multi-document file: only that one changes.
    write(
        root,
        "a.yaml",
        &format!("{}---\n{}", cm("a1", "1"), cm("a2", "2")),
    );
    let ch = ev.changes(1).await;
    assert_eq!((ch[0].0, ch[0].1.as_str()), ("+", "a2"));
    assert_eq!(ch[0].2.data["data"]["v"], "2");
    // Same uid across versions (stable uid from the identity).
    assert_eq!(ch[0].2.metadata.uid, list["a2"].metadata.uid);
    // Rewriting identical content is no change at all.
    write(root, "c.yaml", &cm("c", "1"));
    ev.quiet_for(&handle, 1).await;
    // Delete.
    fs::remove_file(root.join("c.yaml")).unwrap();
    let ch = ev.changes(1).await;
    assert_eq!((ch[0].0, ch[0].1.as_str()), ("-", "c"));
    // Ignored files stay ignored when they change.
    write(root, "x.swp", "junk2");
    write(root, ".#a.yaml", "lock");
    write(root, "4913", "");
    write(root, ".git/y.yaml", &cm("git2", "1"));
    write(root, "notes.txt", "changed");
    ev.quiet_for(&handle, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_document_file_losing_a_document_deletes_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "all.yaml",
        &format!("{}---\n{}---\n{}", cm("x", "1"), cm("y", "1"), cm("z", "1")),
    );
    let w = Watched::start(FileSource::new(root).unwrap()).await;
    assert_eq!(w.informer.store().len(), 3);
    w.take();
    write(
        root,
        "all.yaml",
        &format!("{}---\n{}", cm("x", "1"), cm("z", "2")),
    );
    let mut seen = w.wait(2, "delete y, update z").await;
    seen.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(
        seen,
        vec![
            Seen::Delete("y".into()),
            Seen::Update("z".into(), vec!["data.v".into()])
        ]
    );
    assert!(w.get(Some("default"), "y").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sed_and_vim_saves_are_plain_updates() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "a.yaml", &cm("a", "one"));
    write(root, "b.yaml", &cm("b", "one"));
    let w = Watched::start(FileSource::new(root).unwrap()).await;
    w.take();

    // The real `sed -i`: a temporary file in the same directory renamed over the original.
    let status = std::process::Command::new("sed")
        .args(["-i", "s/one/two/"])
        .arg(root.join("a.yaml"))
        .status()
        .unwrap();
    assert!(status.success());
    let seen = w.wait(1, "sed -i update").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(matches!(&seen[0], Seen::Update(n, p) if n == "a" && p.contains(&"data.v".to_string())));

    // vim with `backupcopy=no`: probe with 4913, rename the original to a backup, write a new
    // file, delete the backup.
    fs::write(root.join("4913"), "").unwrap();
    fs::remove_file(root.join("4913")).unwrap();
    fs::rename(root.join("b.yaml"), root.join("b.yaml~")).unwrap();
    write(root, "b.yaml", &cm("b", "two"));
    fs::remove_file(root.join("b.yaml~")).unwrap();
    let seen = w.wait(1, "vim update").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(matches!(&seen[0], Seen::Update(n, _) if n == "b"));
    assert_eq!(w.get(Some("default"), "b").unwrap().data["data"]["v"], "two");

    // Write-in-place in two steps (a partial write within the debounce) is one update.
    {
        use std::io::Write;
        let mut f = fs::File::create(root.join("a.yaml")).unwrap();
        f.write_all(b"apiVersion: v1\nkind: ConfigMap\nmeta").unwrap();
        f.flush().unwrap();
        f.write_all(b"data:\n  name: a\n  namespace: default\ndata:\n  v: three\n")
            .unwrap();
    }
    let seen = w.wait(1, "in-place update").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(w.get(Some("default"), "a").unwrap().data["data"]["v"], "three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_storm_ends_in_the_right_state() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for i in 0..100 {
        write(root, &format!("f{i:03}.yaml"), &cm(&format!("o{i:03}"), "1"));
    }
    write(root, "moving.yaml", &cm("mover", "1"));
    let w = Watched::start(FileSource::new(root).unwrap()).await;
    assert_eq!(w.informer.store().len(), 101);
    w.take();
    // 100 renames of distinct files, and one file renamed 100 times in a chain.
    for i in 0..100 {
        fs::rename(
            root.join(format!("f{i:03}.yaml")),
            root.join(format!("g{i:03}.yaml")),
        )
        .unwrap();
    }
    let mut at = root.join("moving.yaml");
    for i in 0..100 {
        let next = root.join(format!("m{i}.yaml"));
        fs::rename(&at, &next).unwrap();
        at = next;
    }
    wait_for(30, "every object at its new path", || {
        let store = w.informer.store();
        let ok = store.len() == 101
            && store.list().iter().all(|o| {
                let p = path_of(o);
                (name(o) == "mover" && p == "m99.yaml") || (p.starts_with('g') && p[1..4] == name(o)[1..4])
            });
        ok.then_some(())
    })
    .await;
    w.settle().await;
    // Nothing was ever deleted for good: every change was an update (or a delete+add pair
    // when the old path was seen gone before the new one appeared, which a batch avoids).
    let seen = w.take();
    let deletes = seen.iter().filter(|s| matches!(s, Seen::Delete(_))).count();
    let adds = seen.iter().filter(|s| matches!(s, Seen::Add(_))).count();
    assert_eq!(deletes, adds, "{seen:?}");
    assert!(w.handle.problems().is_empty(), "{:?}", w.handle.problems());
}

fn rss_kib() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_files_sync_and_then_one_change() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for d in 0..100 {
        for f in 0..100 {
            write(
                root,
                &format!("d{d:02}/f{f:02}.yaml"),
                &cm(&format!("o-{d:02}-{f:02}"), "1"),
            );
        }
    }
    let rss_before = rss_kib();
    let start = Instant::now();
    let source = FileSource::new(root).unwrap();
    let handle = source.handle();
    let w = Watched::start(source).await;
    let synced = start.elapsed();
    let rss_after = rss_kib();
    assert_eq!(w.informer.store().len(), 10_000);
    assert_eq!(handle.files(), 10_000);
    let bytes: usize = w
        .informer
        .store()
        .list()
        .iter()
        .map(|o| serde_json::to_vec(&**o).map(|v| v.len()).unwrap_or(0))
        .sum();
    eprintln!(
        "file source: 10,000 files (100 dirs) synced in {synced:?}; RSS {} KiB -> {} KiB (+{} KiB); objects' JSON {} KiB",
        rss_before.unwrap_or(0),
        rss_after.unwrap_or(0),
        rss_after.unwrap_or(0).saturating_sub(rss_before.unwrap_or(0)),
        bytes / 1024
    );
    w.take();
    let t = Instant::now();
    write(root, "d42/f42.yaml", &cm("o-42-42", "2"));
    wait_for(20, "the one change", || {
        (!w.seen.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    eprintln!(
        "file source: one change among 10,000 files seen after {:?} (incl. the 100 ms debounce)",
        t.elapsed()
    );
    let start = Instant::now();
    w.handle.rescan();
    wait_for(60, "a full rescan", || {
        (w.informer
            .stats()
            .relists
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2)
            .then_some(())
    })
    .await;
    eprintln!(
        "file source: a full rescan of 10,000 unchanged files (overflow recovery) took {:?}",
        start.elapsed()
    );
    let seen = w.wait(1, "the one change").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(matches!(&seen[0], Seen::Update(n, _) if n == "o-42-42"));
}

/// Builds kubelet's atomic-writer layout: `..<ts>/` holds the files, `..data` links to it,
/// and each user-visible name links through `..data`.
fn configmap_mount(root: &Path, ts: &str, files: &[(&str, String)]) {
    let data_dir = root.join(format!("..{ts}"));
    fs::create_dir(&data_dir).unwrap();
    for (n, body) in files {
        fs::write(data_dir.join(n), body).unwrap();
    }
    let tmp = root.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{ts}"), &tmp).unwrap();
    fs::rename(&tmp, root.join("..data")).unwrap();
    for (n, _) in files {
        let link = root.join(n);
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{n}"), link).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_mount_data_symlink_swap() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    configmap_mount(
        root,
        "2024_01_01_00_00_00.1",
        &[("a.yaml", cm("a", "1")), ("b.yaml", cm("b", "1"))],
    );
    let w = Watched::start(FileSource::new(root).unwrap()).await;
    // A single-file source on one of the mounted names, as apps often do.
    let single = FileSource::new(root.join("a.yaml")).unwrap();
    let mut single_ev = Events::start(single);
    let single_list = single_ev.list().await;
    assert_eq!(single_list.keys().collect::<Vec<_>>(), vec!["a"]);
    assert_eq!(path_of(&single_list["a"]), "a.yaml");

    assert_eq!(w.informer.store().len(), 2);
    let a = w.get(Some("default"), "a").unwrap();
    assert_eq!(path_of(&a), "a.yaml", "user-visible names, not ..data/…");
    w.take();

    // kubelet's update: new timestamped dir, `..data` swapped atomically, old dir removed.
    configmap_mount(
        root,
        "2024_01_01_00_01_00.2",
        &[("a.yaml", cm("a", "2")), ("b.yaml", cm("b", "1"))],
    );
    fs::remove_dir_all(root.join("..2024_01_01_00_00_00.1")).unwrap();
    let seen = w.wait(1, "a updated through the swap").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(matches!(&seen[0], Seen::Update(n, _) if n == "a"));
    assert_eq!(w.get(Some("default"), "a").unwrap().data["data"]["v"], "2");
    let ch = single_ev.changes(1).await;
    assert_eq!(ch[0].2.data["data"]["v"], "2");

    // A key added and a key removed in the next update.
    configmap_mount(
        root,
        "2024_01_01_00_02_00.3",
        &[("a.yaml", cm("a", "2")), ("c.yaml", cm("c", "1"))],
    );
    fs::remove_file(root.join("b.yaml")).unwrap();
    fs::remove_dir_all(root.join("..2024_01_01_00_01_00.2")).unwrap();
    let mut seen = w.wait(2, "c added, b deleted").await;
    seen.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(seen, vec![Seen::Add("c".into()), Seen::Delete("b".into())]);
    assert!(w.handle.problems().is_empty(), "{:?}", w.handle.problems());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_moved_in_and_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    write(&root, "keep.yaml", &cm("keep", "1"));
    write(&outside, "pkg/x.yaml", &cm("x", "1"));
    write(&outside, "pkg/deeper/y.yaml", &cm("y", "1"));
    let w = Watched::start(FileSource::new(&root).unwrap()).await;
    w.take();

    fs::rename(outside.join("pkg"), root.join("pkg")).unwrap();
    let mut seen = w.wait(2, "moved-in files").await;
    seen.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(seen, vec![Seen::Add("x".into()), Seen::Add("y".into())]);
    assert_eq!(
        path_of(&w.get(Some("default"), "y").unwrap()),
        "pkg/deeper/y.yaml"
    );

    // The moved-in tree is watched: a change deep inside is seen.
    write(&root, "pkg/deeper/y.yaml", &cm("y", "2"));
    let seen = w.wait(1, "change inside the moved-in dir").await;
    assert!(matches!(&seen[..], [Seen::Update(n, _)] if n == "y"), "{seen:?}");

    // Renamed within the tree: same objects, new paths.
    fs::rename(root.join("pkg"), root.join("lib")).unwrap();
    let seen = w.wait(2, "paths updated").await;
    assert!(
        seen.iter()
            .all(|s| matches!(s, Seen::Update(_, p) if p.iter().any(|p| p.contains("file.crwatch.io")))),
        "{seen:?}"
    );
    assert_eq!(
        path_of(&w.get(Some("default"), "y").unwrap()),
        "lib/deeper/y.yaml"
    );

    // Moved out: deleted.
    fs::rename(root.join("lib"), outside.join("gone")).unwrap();
    let mut seen = w.wait(2, "moved-out files").await;
    seen.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(seen, vec![Seen::Delete("x".into()), Seen::Delete("y".into())]);
    assert_eq!(w.informer.store().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_keeps_its_last_good_version_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "a.yaml",
        &format!("{}---\n{}", cm("a", "1"), cm("a-two", "1")),
    );
    let w = Watched::start(FileSource::new(root).unwrap()).await;
    w.take();
    let errors_before = w
        .informer
        .stats()
        .errors
        .load(std::sync::atomic::Ordering::Relaxed);

    write(
        root,
        "a.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a\n  data: [unclosed\n",
    );
    wait_for(20, "the problem to be listed", || {
        (!w.handle.problems().is_empty()).then_some(())
    })
    .await;
    let problems = w.handle.problems();
    assert!(
        matches!(&problems[..], [FileError::Invalid { path, .. }] if path == "a.yaml"),
        "{problems:?}"
    );
    assert!(problems[0].to_string().contains("last good version"));
    assert!(w.handle.error_count() >= 1);
    wait_for(20, "the informer to count the error", || {
        (w.informer
            .stats()
            .errors
            .load(std::sync::atomic::Ordering::Relaxed)
            > errors_before)
            .then_some(())
    })
    .await;
    w.settle().await;
    assert_eq!(w.take(), vec![], "the last good version stays");
    assert_eq!(w.get(Some("default"), "a").unwrap().data["data"]["v"], "1");
    assert_eq!(w.informer.store().len(), 2);

    // Binary junk is an error too, not a panic.
    fs::write(root.join("a.yaml"), [0xffu8, 0xfe, 0, 1, 2, 3, b'\n', 0x80]).unwrap();
    let count = w.handle.error_count();
    wait_for(20, "the binary junk to be reported", || {
        (w.handle.error_count() > count).then_some(())
    })
    .await;
    assert_eq!(w.informer.store().len(), 2);

    // Fixed (and changed, and one document dropped): the changes flow, the problem clears.
    write(root, "a.yaml", &cm("a", "2"));
    let mut seen = w.wait(2, "recovery").await;
    seen.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(
        seen,
        vec![
            Seen::Delete("a-two".into()),
            Seen::Update("a".into(), vec!["data.v".into()])
        ]
    );
    assert!(w.handle.problems().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_resource_in_two_files_first_path_wins() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "a.yaml", &cm("x", "from-a"));
    write(root, "b.yaml", &cm("x", "from-b"));
    let w = Watched::start(FileSource::new(root).unwrap()).await;
    assert_eq!(w.get(Some("default"), "x").unwrap().data["data"]["v"], "from-a");
    let problems = w.handle.problems();
    assert!(
        matches!(&problems[..], [FileError::Duplicate { path, winner, .. }] if path == "b.yaml" && winner == "a.yaml"),
        "{problems:?}"
    );
    w.take();
    fs::remove_file(root.join("a.yaml")).unwrap();
    let seen = w.wait(1, "b's copy takes over").await;
    assert!(matches!(&seen[..], [Seen::Update(n, _)] if n == "x"), "{seen:?}");
    assert_eq!(w.get(Some("default"), "x").unwrap().data["data"]["v"], "from-b");
    assert!(w.handle.problems().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_events_and_forced_rescans_are_repaired_by_a_diffed_relist() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for n in ["same", "changed", "gone"] {
        write(root, &format!("{n}.yaml"), &cm(n, "1"));
    }
    // Directly: events lost (as in an inotify queue overflow) are repaired by a complete list
    // of the new state, with no single changes before it.
    let source = FileSource::new(root).unwrap();
    let handle = source.handle();
    let mut ev = Events::start(source);
    assert_eq!(ev.list().await.len(), 3);
    handle.pause_watching();
    write(root, "changed.yaml", &cm("changed", "2"));
    fs::remove_file(root.join("gone.yaml")).unwrap();
    write(root, "new.yaml", &cm("new", "1"));
    handle.resume_watching();
    let list = ev.list().await; // panics on an Apply/Delete before the Init
    assert_eq!(list.keys().collect::<Vec<_>>(), vec!["changed", "new", "same"]);
    assert_eq!(list["changed"].data["data"]["v"], "2");
    // Late watcher events for those changes are no-ops.
    ev.quiet_for(&handle, 1).await;
    drop(ev);

    // Through an informer: the relist is diffed, so handlers see exactly what changed.
    let w = Watched::start(FileSource::new(root).unwrap()).await;
    w.take();
    let relists = || {
        w.informer
            .stats()
            .relists
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = relists();
    w.handle.pause_watching();
    write(root, "changed.yaml", &cm("changed", "3"));
    fs::remove_file(root.join("new.yaml")).unwrap();
    write(root, "newer.yaml", &cm("newer", "1"));
    w.handle.resume_watching();
    wait_for(20, "the recovery relist", || (relists() > before).then_some(())).await;
    let mut seen = w.wait(3, "three changes").await;
    seen.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(
        seen,
        vec![
            Seen::Add("newer".into()),
            Seen::Delete("new".into()),
            Seen::Update("changed".into(), vec!["data.v".into()]),
        ]
    );
    // A forced rescan with nothing changed reports nothing.
    let before = relists();
    w.handle.rescan();
    wait_for(20, "another relist", || (relists() > before).then_some(())).await;
    w.settle().await;
    assert_eq!(w.take(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "a.yaml", &cm("a", "1"));
    let source = FileSource::builder(root)
        .poll(Duration::from_millis(50))
        .build()
        .unwrap();
    let handle = source.handle();
    let mut ev = Events::start(source);
    assert_eq!(ev.list().await.len(), 1);
    assert!(handle.is_polling());
    write(root, "sub/b.yaml", &cm("b", "1"));
    let ch = ev.changes(1).await;
    assert_eq!((ch[0].0, ch[0].1.as_str()), ("+", "b"));
    write(root, "a.yaml", &cm("a", "2"));
    let ch = ev.changes(1).await;
    assert_eq!((ch[0].0, ch[0].1.as_str()), ("+", "a"));
    // A broken file is reported once and keeps its version; polls go on quietly.
    write(root, "a.yaml", "{{{{");
    loop {
        match ev.next().await {
            Err(e) => {
                assert!(e.message.contains("a.yaml"), "{e}");
                break;
            }
            Ok(Event::Progress(_)) => {}
            other => panic!("expected an error, got {other:?}"),
        }
    }
    ev.quiet_for(&handle, 3).await;
    fs::remove_dir_all(root.join("sub")).unwrap();
    let ch = ev.changes(1).await;
    assert_eq!((ch[0].0, ch[0].1.as_str()), ("-", "b"));
    write(root, "a.yaml", &cm("a", "3"));
    let ch = ev.changes(1).await;
    assert_eq!(ch[0].2.data["data"]["v"], "3");
    assert!(handle.problems().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "conf/app.ini", "[main]\nx = 1\n");
    fs::write(root.join("logo.bin"), [0u8, 159, 146, 150]).unwrap();
    fs::write(root.join("big.txt"), "x".repeat(5000)).unwrap();
    let source =
        FileSource::from_url(&format!("file://{}?mode=raw&maxContentSize=4Ki", root.display())).unwrap();
    let mut ev = Events::start(source);
    let list = ev.list().await;
    assert_eq!(
        list.keys().collect::<Vec<_>>(),
        vec!["big.txt", "conf/app.ini", "logo.bin"]
    );
    let ini = &list["conf/app.ini"];
    assert_eq!(ini.types.as_ref().unwrap().api_version, "file.crwatch.io/v1");
    assert_eq!(ini.types.as_ref().unwrap().kind, "File");
    assert_eq!(ini.data["data"]["content"], "[main]\nx = 1\n");
    assert_eq!(ini.data["data"]["size"], 13);
    assert_eq!(ini.data["data"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(list["logo.bin"].data["data"]["contentBase64"], "AJ+Slg==");
    assert_eq!(list["big.txt"].data["data"]["contentOmitted"], true);
    assert!(list["big.txt"].data["data"].get("content").is_none());
    write(root, "conf/app.ini", "[main]\nx = 2\n");
    let ch = ev.changes(1).await;
    assert_eq!(ch[0].1, "conf/app.ini");
    assert_eq!(ch[0].2.metadata.uid, ini.metadata.uid);
    assert_ne!(ch[0].2.metadata.resource_version, ini.metadata.resource_version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_checked_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let err = |b: crwatch::source::file::FileSourceBuilder| b.build().unwrap_err().to_string();
    assert!(err(FileSource::builder(root).max_files(0)).contains("max_files"));
    assert!(err(FileSource::builder(root).max_file_size(2 << 30)).contains("max_file_size"));
    assert!(err(FileSource::builder(root).poll(Duration::from_millis(1))).contains("poll"));
    assert!(err(FileSource::builder(root).channel_capacity(0)).contains("channel_capacity"));
    assert!(err(FileSource::builder(root).include("a[")).contains("glob"));
    assert!(err(FileSource::builder(root.join("missing"))).contains("missing"));

    for i in 0..5 {
        write(root, &format!("f{i}.yaml"), &cm(&format!("o{i}"), "1"));
    }
    write(
        root,
        "huge.yaml",
        &format!("{}# {}\n", cm("huge", "1"), "x".repeat(2048)),
    );
    let source = FileSource::builder(root)
        .max_files(4)
        .max_file_size(1024)
        .channel_capacity(1) // backpressure: the source waits for us, nothing is lost
        .build()
        .unwrap();
    let handle = source.handle();
    let mut ev = Events::start(source);
    let list = ev.list().await; // (errors before the list's Progress are skipped)
    // The first four files by path order: f0..f3 (huge.yaml is fifth and too large anyway).
    assert_eq!(list.keys().collect::<Vec<_>>(), vec!["o0", "o1", "o2", "o3"]);
    let problems = handle.problems();
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, FileError::TooManyFiles { limit: 4, .. })),
        "{problems:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_kind_filtered_documents() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "a.yaml", &cm("a", "1"));
    write(
        root,
        "s.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: a, namespace: default}\n",
    );
    write(
        root,
        "huge.yaml",
        &format!("{}# {}\n", cm("huge", "1"), "x".repeat(4096)),
    );
    let source = FileSource::builder(root)
        .kind("ConfigMap")
        .max_file_size(1024)
        .build()
        .unwrap();
    let handle = source.handle();
    let w = Watched::start(source).await;
    // Only ConfigMaps (the Secret shares namespace/name, which a store could not tell apart).
    assert_eq!(w.informer.store().len(), 1);
    let problems = handle.problems();
    assert!(
        matches!(&problems[..], [FileError::TooLarge { path, .. }] if path == "huge.yaml"),
        "{problems:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_inotify_it_falls_back_to_polling() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "a.yaml", &cm("a", "1"));
    let source = FileSource::builder(root)
        .fallback_poll_interval(Duration::from_millis(50))
        .simulate_watch_failure()
        .build()
        .unwrap();
    let w = Watched::start(source).await;
    assert!(w.handle.is_polling());
    w.take();
    write(root, "a.yaml", &cm("a", "2"));
    write(root, "b.yaml", &cm("b", "1"));
    let mut seen = w.wait(2, "changes seen by polling").await;
    seen.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(
        seen,
        vec![
            Seen::Add("b".into()),
            Seen::Update("a".into(), vec!["data.v".into()])
        ]
    );
}
