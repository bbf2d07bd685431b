//! The zvol crate's error type.

/// Errors from volumes and block backends.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pool refused or failed the request.
    #[error(transparent)]
    Pool(#[from] pool::Error),
    /// A raw file or device failed an I/O request.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, and where.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The request is malformed or out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// The backend is read-only.
    #[error("{0} is read-only")]
    ReadOnly(String),
}

impl Error {
    /// The broad class of this error (see `pool::ErrorKind`).
    pub fn kind(&self) -> pool::ErrorKind {
        match self {
            Error::Pool(e) => e.kind(),
            Error::Io { .. } => pool::ErrorKind::Io,
            Error::InvalidArgument(_) => pool::ErrorKind::InvalidInput,
            Error::ReadOnly(_) => pool::ErrorKind::ReadOnly,
        }
    }
}

/// Result alias for the zvol crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
