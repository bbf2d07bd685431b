//! The snapshots crate's one error type.

use pool::ErrorKind;

/// Errors from snapshot operations and send/receive.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pool refused or failed.
    #[error(transparent)]
    Pool(#[from] pool::Error),
    /// Reading or writing the stream failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The stream is truncated, corrupt or malformed.
    #[error("invalid send stream: {0}; nothing was received")]
    BadStream(String),
    /// The stream uses a version or feature this build does not know.
    #[error("unsupported send stream: {0}; nothing was received")]
    Unsupported(String),
    /// The request conflicts with the datasets as they are.
    #[error("{0}")]
    Refused(String),
    /// The request itself is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// A stream of a package failed after the streams before it were received (and kept).
    #[error(
        "stream {stream} of the package: {source} (the streams before it were received and \
         are kept: {})",
        received.join(", ")
    )]
    PackageCut {
        /// The failed stream's place in the package, from 1.
        stream: usize,
        /// The snapshots the streams before it made.
        received: Vec<String>,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// Wraps an OS error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// The broad class of this error (the pool's classes).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Pool(e) => e.kind(),
            Error::Io { .. } => ErrorKind::Io,
            Error::BadStream(_) => ErrorKind::Corrupt,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Refused(_) => ErrorKind::Busy,
            Error::InvalidArgument(_) => ErrorKind::InvalidInput,
            Error::PackageCut { source, .. } => source.kind(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
