//! What can go wrong: settings and specs that cannot work ([`FileSourceError`]), and
//! problems found while watching ([`FileError`]), each saying what to do.

use std::path::PathBuf;

/// A setting or a spec that cannot work, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    /// A numeric or duration setting out of its range.
    #[error("file source setting {setting} = {value} is out of range: use a value from {min} to {max}")]
    OutOfRange {
        /// The setting (builder method / URL parameter).
        setting: &'static str,
        /// The value given.
        value: String,
        /// The smallest allowed value.
        min: String,
        /// The largest allowed value.
        max: String,
    },
    /// An include or exclude pattern that is not a glob.
    #[error(
        "file source glob {pattern:?} is invalid ({source}); globs look like `*.yaml` or `conf/**/*.json`"
    )]
    Glob {
        /// The pattern.
        pattern: String,
        /// Why.
        #[source]
        source: globset::Error,
    },
    /// The path to watch does not exist or cannot be resolved.
    #[error("cannot watch {path}: {source}; check that it exists and is readable")]
    Root {
        /// The path as given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `file://` spec that cannot be understood.
    #[error("invalid file source spec {spec:?}: {reason}")]
    Spec {
        /// The spec.
        spec: String,
        /// What is wrong, and the expected form.
        reason: String,
    },
}

/// A problem found while watching, as shown by [`FileSourceHandle::problems`] and reported as
/// an `Err(SourceError)` on the event stream (the source keeps going).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// A file that does not parse or holds an invalid document.
    #[error("{path}: {message}; its last good version (if any) is kept until the file is fixed")]
    Invalid {
        /// Relative path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A file or directory that cannot be read.
    #[error("{path}: cannot read ({message}); check its permissions")]
    Read {
        /// Relative path.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// A document file too large to parse.
    #[error(
        "{path}: {size} bytes is more than the {limit}-byte parse limit; its last good version (if any) is kept: shrink the file or raise max_file_size"
    )]
    TooLarge {
        /// Relative path.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Two files define the same resource; the first by path order wins.
    #[error(
        "{key} is defined in {winner} and again in {path}; using {winner} (first by path order): remove or rename one"
    )]
    Duplicate {
        /// The resource (`Kind.group namespace/name`).
        key: String,
        /// The file whose copy is ignored.
        path: String,
        /// The file whose copy is used.
        winner: String,
    },
    /// More files than the limit.
    #[error(
        "{root} has more than {limit} matching files; the rest are ignored: narrow the include globs or raise max_files"
    )]
    TooManyFiles {
        /// The watched root.
        root: String,
        /// The limit.
        limit: usize,
    },
    /// The watcher reported an error (a full rescan follows).
    #[error("watching {root}: {message}; rescanning everything")]
    Watch {
        /// The watched root.
        root: String,
        /// The watcher's error.
        message: String,
    },
}

impl FileError {
    /// The file the problem is about, if it is about one.
    pub fn path(&self) -> Option<&str> {
        match self {
            FileError::Invalid { path, .. }
            | FileError::Read { path, .. }
            | FileError::TooLarge { path, .. }
            | FileError::Duplicate { path, .. } => Some(path),
            FileError::TooManyFiles { .. } | FileError::Watch { .. } => None,
        }
    }
}
