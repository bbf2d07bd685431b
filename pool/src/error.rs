//! The pool's one error type. Every message says what failed, where, and what to do next.

use std::io;

/// Broad classes of failure, mapped once to virtio-blk and NFS3 status codes by the layers above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ErrorKind {
    /// The device failed an I/O request.
    Io,
    /// On-disk data failed verification (checksum, magic, structure).
    Corrupt,
    /// The pool has no room for the request.
    NoSpace,
    /// A named pool, dataset or property does not exist.
    NotFound,
    /// The target already exists.
    AlreadyExists,
    /// The request tried to modify something that refuses writes.
    ReadOnly,
    /// Another holder has the pool or dataset.
    Busy,
    /// The request names a format or feature this build does not support.
    Unsupported,
    /// The request itself is malformed (bad name, size, argument).
    InvalidInput,
    /// A volume would be larger than this host can serve (its block map would not fit in
    /// memory).
    TooLarge,
}

/// Errors from the native pool.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A device operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, and where (device path, offset).
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file or device holds no Tarn pool label.
    #[error("{path} is not a tarn pool (no valid label found); nothing was changed")]
    NotAPool {
        /// Device path.
        path: String,
    },
    /// The device is shorter than its label says.
    #[error("{path} is truncated: the pool label says {expected} bytes but the device has {actual}; restore the missing tail or recreate the pool")]
    Truncated {
        /// Device path.
        path: String,
        /// Size recorded in the label.
        expected: u64,
        /// Size found.
        actual: u64,
    },
    /// The pool's format version is not one this build reads.
    #[error("{path} uses pool format version {found}, but this tarn supports version {supported}; use a tarn release that knows version {found}")]
    UnsupportedVersion {
        /// Device path.
        path: String,
        /// Version found on disk.
        found: u32,
        /// Version this build supports.
        supported: u32,
    },
    /// On-disk data failed verification.
    #[error("{0}")]
    Corrupt(String),
    /// The pool is full.
    #[error("pool {pool} is out of space: {needed} bytes needed, {available} available; free space by destroying datasets or use a larger pool")]
    NoSpace {
        /// Pool name.
        pool: String,
        /// Bytes the request needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// Free space has no run long enough for a block a write needs at its commit.
    #[error(
        "pool {pool} has {free} bytes free, but none of it in runs of {run} bytes for the \
             blocks this write needs (indirect blocks of the block map, or data blocks that \
             long): random overwrites of small blocks have cut free space into smaller holes; \
             free space (destroy snapshots or datasets), or use a larger pool"
    )]
    Fragmented {
        /// Pool name.
        pool: String,
        /// Bytes free, in holes too small.
        free: u64,
        /// Length of the run wanted, in bytes.
        run: u64,
    },
    /// No such dataset (or property).
    #[error("{0} does not exist")]
    NotFound(String),
    /// The dataset already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A dataset or pool name breaks the naming rules.
    #[error("invalid name '{name}': {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// An argument is out of range or malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// A volume size whose resident block map would not fit in this host's memory.
    #[error("{0}")]
    TooLarge(String),
    /// Another opener holds the pool.
    #[error(
        "pool {name} is in use{}: one process opens a pool at a time; wait for that one to end \
         (to copy a volume within one pool, send it to a file and receive that, or clone its \
         snapshot)",
        holder.map(|p| format!(" by process {p}")).unwrap_or_default()
    )]
    InUse {
        /// Pool name (or path when the label is unreadable).
        name: String,
        /// The holder's PID, where the OS can tell.
        holder: Option<i32>,
    },
    /// An earlier device error stopped the pool from accepting writes.
    #[error("pool {0} stopped accepting writes after an I/O error; export and re-import it (reopen) to continue")]
    Poisoned(String),
    /// The dataset refuses writes (a snapshot).
    #[error("{0} is a snapshot and cannot be modified")]
    ReadOnly(String),
    /// Other datasets depend on this one.
    #[error("cannot {action} {name}: {reason}")]
    HasDependents {
        /// What was refused.
        action: String,
        /// The dataset.
        name: String,
        /// Which dependents, and what to do.
        reason: String,
    },
    /// The dataset was destroyed while a handle to it was still open.
    #[error("{0} was destroyed")]
    Destroyed(String),
}

impl Error {
    /// The broad class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } | Error::Poisoned(_) => ErrorKind::Io,
            Error::NotAPool { .. } | Error::Truncated { .. } | Error::Corrupt(_) => {
                ErrorKind::Corrupt
            }
            Error::UnsupportedVersion { .. } => ErrorKind::Unsupported,
            Error::NoSpace { .. } | Error::Fragmented { .. } => ErrorKind::NoSpace,
            Error::NotFound(_) | Error::Destroyed(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::InvalidName { .. } | Error::InvalidArgument(_) => ErrorKind::InvalidInput,
            Error::TooLarge(_) => ErrorKind::TooLarge,
            Error::InUse { .. } | Error::HasDependents { .. } => ErrorKind::Busy,
            Error::ReadOnly(_) => ErrorKind::ReadOnly,
        }
    }

    /// Wraps an OS error with a description of the operation.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result alias for the pool crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
