//! Walking the tree: which paths count (globs, editor droppings, `..`-prefixed Kubernetes mount
//! internals), symlinks followed only within the root, and file stamps that tell whether a
//! file must be read again.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Patterns ignored unless [`FileSourceBuilder::default_excludes`](super::FileSourceBuilder::default_excludes)
/// is turned off: hidden files and directories, and editors' temporary, swap and backup files
/// (vim's `*.swp`/`*.swx` and its `4913` write probe, `*~` backups, emacs' `.#*` locks and
/// `#*#` autosaves, `*.tmp`).
pub const DEFAULT_EXCLUDES: &[&str] = &[
    ".*", "*.swp", "*.swo", "*.swx", "*~", ".#*", "#*#", "4913", "*.tmp",
];

/// Which relative paths are files of the source.
#[derive(Debug)]
pub(crate) struct Filter {
    include: GlobSet,
    exclude: GlobSet,
    /// Single-file sources: just this name at the top level; globs do not apply.
    single: Option<String>,
}

/// A glob as users write it: a pattern without `/` matches a name at any depth (as in
/// `.gitignore`); one with `/` matches the path relative to the root; `*` stops at `/`.
pub(crate) fn glob_set(patterns: &[String]) -> Result<GlobSet, (String, globset::Error)> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let full = if p.contains('/') {
            p.trim_start_matches("./").trim_start_matches('/').to_string()
        } else {
            format!("**/{p}")
        };
        let g = GlobBuilder::new(&full)
            .literal_separator(true)
            .build()
            .map_err(|e| (p.clone(), e))?;
        b.add(g);
    }
    b.build().map_err(|e| (patterns.join(","), e))
}

impl Filter {
    pub fn new(include: GlobSet, exclude: GlobSet, single: Option<String>) -> Self {
        Filter {
            include,
            exclude,
            single,
        }
    }

    pub fn single(&self) -> Option<&str> {
        self.single.as_deref()
    }

    /// Whether a regular file at `rel` is part of the source.
    pub fn file(&self, rel: &str) -> bool {
        if let Some(s) = &self.single {
            return rel == s;
        }
        !internal(rel) && self.include.is_match(rel) && !self.exclude.is_match(rel)
    }

    /// Whether the walk descends into the directory at `rel`.
    pub fn dir(&self, rel: &str) -> bool {
        if self.single.is_some() {
            return rel.is_empty();
        }
        rel.is_empty() || (!internal(rel) && !self.exclude.is_match(rel))
    }

    /// Whether everything on the way to `rel` (not `rel` itself) may be walked.
    pub fn ancestors(&self, rel: &str) -> bool {
        let mut at = 0;
        while let Some(i) = rel[at..].find('/') {
            if !self.dir(&rel[..at + i]) {
                return false;
            }
            at += i + 1;
        }
        true
    }
}

/// `..data`, `..2024_01_01_…`: Kubernetes' atomic-writer internals, never user-visible.
pub(crate) fn internal(rel: &str) -> bool {
    rel.split('/').any(|c| c.starts_with(".."))
}

/// Identity and version of a file's content as the filesystem sees it; equal stamps mean the
/// file need not be read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    pub fn of(m: &fs::Metadata) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Stamp {
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            }
        }
        #[cfg(not(unix))]
        {
            let mtime_ns = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i128);
            Stamp {
                dev: 0,
                ino: 0,
                size: m.len(),
                mtime_ns,
                ctime_ns: 0,
            }
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

/// A file found by a walk.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// What to open (the user-visible path; the kernel follows links).
    pub abs: PathBuf,
    /// The canonical target when the path goes through a symlink.
    pub target: Option<PathBuf>,
    pub stamp: Stamp,
}

/// The result of walking part of the tree.
#[derive(Debug, Default)]
pub(crate) struct Walk {
    pub files: BTreeMap<String, Found>,
    /// Symlinked directories inside the root: relative path of the link → canonical target.
    pub dir_links: BTreeMap<String, PathBuf>,
    /// Paths that could not be read, with why (permissions, I/O errors).
    pub errors: Vec<(String, String)>,
    /// Parts of the walk that failed to read: files known under them are kept as they were.
    pub unreadable: Vec<String>,
    /// The walk stopped at the file limit.
    pub truncated: bool,
}

/// Walks `rel` (a file or directory, `""` for the root) under the canonical `root`, in name
/// order, collecting at most `limit` files.
pub(crate) fn walk(root: &Path, rel: &str, filter: &Filter, limit: usize) -> Walk {
    let mut w = Walk::default();
    if !filter.ancestors(rel) {
        return w;
    }
    let mut visited: HashSet<PathBuf> = HashSet::new();
    let abs = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut stack: Vec<(PathBuf, String)> = vec![];
    visit(root, &abs, rel, filter, &mut w, &mut stack, &mut visited, limit);
    while let Some((dir, prefix)) = stack.pop() {
        if w.truncated {
            break;
        }
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                w.errors
                    .push((prefix.clone(), format!("cannot list the directory: {e}")));
                w.unreadable.push(prefix);
                continue;
            }
        };
        let mut names: Vec<String> = vec![];
        for entry in entries.flatten() {
            match entry.file_name().into_string() {
                Ok(n) => names.push(n),
                Err(_) => tracing::debug!(dir = %dir.display(), "skipping a file name that is not UTF-8"),
            }
        }
        names.sort_unstable();
        let mut subdirs = vec![];
        for name in names {
            let child_rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            visit(
                root,
                &dir.join(&name),
                &child_rel,
                filter,
                &mut w,
                &mut subdirs,
                &mut visited,
                limit,
            );
        }
        stack.extend(subdirs.into_iter().rev());
    }
    w
}

#[allow(clippy::too_many_arguments)]
fn visit(
    root: &Path,
    abs: &Path,
    rel: &str,
    filter: &Filter,
    w: &mut Walk,
    stack: &mut Vec<(PathBuf, String)>,
    visited: &mut HashSet<PathBuf>,
    limit: usize,
) {
    if internal(rel) || w.truncated {
        return;
    }
    let lmeta = match fs::symlink_metadata(abs) {
        Ok(m) => m,
        Err(_) => return, // gone meanwhile
    };
    let (meta, target) = if lmeta.file_type().is_symlink() {
        let Ok(target) = fs::canonicalize(abs) else {
            return; // dangling (a mount mid-swap, or just broken): not a file
        };
        if !target.starts_with(root) {
            tracing::debug!(path = %abs.display(), target = %target.display(), "symlink leads outside the root; ignored");
            return;
        }
        match fs::metadata(&target) {
            Ok(m) => (m, Some(target)),
            Err(_) => return,
        }
    } else {
        (lmeta, None)
    };
    if meta.is_dir() {
        let key = target.clone().unwrap_or_else(|| abs.to_path_buf());
        if !filter.dir(rel) || !visited.insert(key) {
            return;
        }
        if let Some(t) = &target {
            w.dir_links.insert(rel.to_string(), t.clone());
        }
        // Directories of a single-file source are not descended into.
        if filter.single().is_none() || rel.is_empty() {
            stack.push((abs.to_path_buf(), rel.to_string()));
        }
    } else if meta.is_file() && filter.file(rel) {
        if w.files.len() >= limit {
            w.truncated = true;
            return;
        }
        w.files.insert(
            rel.to_string(),
            Found {
                abs: abs.to_path_buf(),
                target,
                stamp: Stamp::of(&meta),
            },
        );
    }
}

/// Reads at most `limit` bytes; `Ok(None)` when the file is larger.
pub(crate) fn read_limited(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let f = fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Ok(None);
    }
    Ok(Some(buf))
}

/// Hashes a whole file (streaming), keeping its content when it is at most `keep` bytes.
pub(crate) fn hash_file(path: &Path, keep: u64) -> io::Result<(u64, String, Option<Vec<u8>>)> {
    use sha2::{Digest, Sha256};
    let mut f = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut kept = Some(Vec::new());
    let mut size = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match f.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&chunk[..n]);
        size += n as u64;
        if size > keep {
            kept = None;
        } else if let Some(k) = kept.as_mut() {
            k.extend_from_slice(&chunk[..n]);
        }
    }
    Ok((size, hex::encode(hasher.finalize()), kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(inc: &[&str], exc: &[&str]) -> Filter {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Filter::new(glob_set(&s(inc)).unwrap(), glob_set(&s(exc)).unwrap(), None)
    }

    #[test]
    fn globs_as_users_expect() {
        let f = filter(&["*.yaml", "conf/*.json"], DEFAULT_EXCLUDES);
        assert!(f.file("a.yaml"));
        assert!(f.file("x/y/a.yaml"));
        assert!(f.file("conf/a.json"));
        assert!(!f.file("x/conf/a.json"));
        assert!(!f.file("a.yaml.swp"));
        assert!(!f.file(".a.yaml"));
        assert!(!f.file("x/.#a.yaml"));
        assert!(!f.file("a.yaml~"));
        assert!(!f.file("..data/a.yaml"));
        assert!(!f.dir(".git"));
        assert!(f.dir("sub"));
        assert!(!f.ancestors(".git/x/a.yaml"));
        assert!(f.ancestors("a/b/c.yaml"));
        let g = filter(&["**/*"], &[]);
        assert!(g.file("4913x"));
        assert!(
            filter(&["**/*"], DEFAULT_EXCLUDES).file("sub/file")
                && !filter(&["**/*"], DEFAULT_EXCLUDES).file("sub/4913")
        );
    }
}
