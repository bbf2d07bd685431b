//! The CLI's error type and how each error maps to an exit code.

use pool::ErrorKind;

/// Everything a command can fail with. Displayed as one line after `tarn: `.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The pool refused or failed the request.
    #[error(transparent)]
    Pool(#[from] pool::Error),
    /// A size or volume-layer error.
    #[error(transparent)]
    Zvol(#[from] zvol::Error),
    /// A snapshot, send or receive error.
    #[error(transparent)]
    Snap(#[from] snapshots::Error),
    /// A file operation outside the pool failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, and to which path.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The command line asks for something malformed.
    #[error("{0}")]
    Usage(String),
    /// The command ran but its outcome is a failure (message says why).
    #[error("{0}")]
    Failed(String),
    /// A pool registry entry under `$TARN_HOME` cannot be read (message says which).
    #[error("{0}")]
    DamagedEntry(String),
}

/// Result alias for commands.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

impl CliError {
    /// Wraps an OS error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        CliError::Io {
            what: what.into(),
            source,
        }
    }

    /// Exit status: 2 for malformed input (as clap does for usage errors), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        let kind = match self {
            CliError::Pool(e) => Some(e.kind()),
            CliError::Zvol(e) => Some(e.kind()),
            CliError::Snap(e) => Some(e.kind()),
            CliError::Usage(_) => return 2,
            CliError::Io { .. } | CliError::Failed(_) | CliError::DamagedEntry(_) => None,
        };
        match kind {
            Some(ErrorKind::InvalidInput | ErrorKind::TooLarge) => 2,
            _ => 1,
        }
    }

    /// The message as one line (nested newlines folded), for `tarn: <message>`.
    pub fn one_line(&self) -> String {
        let mut s = self.to_string();
        // `transparent` and `{what}: {source}` already include the source; nothing to chain.
        if s.contains('\n') {
            s = s.split_whitespace().collect::<Vec<_>>().join(" ");
        }
        s
    }
}
