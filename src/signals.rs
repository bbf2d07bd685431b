//! SIGINT, SIGTERM and SIGHUP during a long command: the first one ends the command's work
//! early and cleanly (a guest stopped, a receive discarded), the second ends tarn at once.

use crate::error::{CliError, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

/// The signals that end a long command.
const STOP_SIGNALS: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

/// Takes [`STOP_SIGNALS`] from the moment it is made, so that one arriving before the work
/// starts (while a clone is made, say) still ends in its clean-up.
pub struct StopSignals {
    signals: Signals,
    /// The first signal taken, 0 for none.
    taken: Arc<AtomicI32>,
}

impl StopSignals {
    /// Installs the handlers.
    pub fn new() -> Result<StopSignals> {
        let signals = Signals::new(STOP_SIGNALS)
            .map_err(|e| CliError::io("installing SIGINT/SIGTERM/SIGHUP handlers", e))?;
        Ok(StopSignals {
            signals,
            taken: Arc::new(AtomicI32::new(0)),
        })
    }

    /// From now on, the first signal (also one taken before) prints `tarn: SIG…: {what}` and
    /// runs `stop` with its number; a second ends the process as the signal's default action
    /// would. Returns where the first signal's number goes (0 until one comes).
    pub fn on_signal(
        mut self,
        what: &'static str,
        stop: impl Fn(i32) + Send + 'static,
    ) -> Arc<AtomicI32> {
        let taken = self.taken.clone();
        let spawned = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in self.signals.forever() {
                    if self.taken.swap(sig, Ordering::SeqCst) != 0 {
                        crate::terminal::restore();
                        say!("tarn: {}: exiting without cleaning up", name(sig));
                        let _ = signal_hook::low_level::emulate_default_handler(sig);
                        std::process::exit(128 + sig);
                    }
                    stop(sig);
                    say!("tarn: {}: {what}", name(sig));
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("no thread for SIGINT/SIGTERM/SIGHUP ({e}): they end tarn at once");
        }
        taken
    }
}

/// A flag the first stop signal sets, for a command that checks it between steps and then
/// cleans up as after a failure; [`StopFlag::exit_if_stopped`] then ends tarn 128 + signal.
pub struct StopFlag {
    /// Set by the first signal.
    pub stop: Arc<AtomicBool>,
    signal: Arc<AtomicI32>,
}

impl StopFlag {
    /// Installs the handlers; the first signal prints `tarn: SIG…: {what}`.
    pub fn new(what: &'static str) -> Result<StopFlag> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let signal =
            StopSignals::new()?.on_signal(what, move |_| flag.store(true, Ordering::SeqCst));
        Ok(StopFlag { stop, signal })
    }

    /// Whether a signal came.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// An error for a command cut short by the signal.
    pub fn error(&self) -> CliError {
        CliError::Failed(format!(
            "stopped by {}",
            name(self.signal.load(Ordering::SeqCst))
        ))
    }

    /// Ends tarn with 128 + the signal, printing `tarn: {what}`, if a signal came.
    pub fn exit_if_stopped(&self, what: &str) {
        let sig = self.signal.load(Ordering::SeqCst);
        if sig != 0 {
            say!("tarn: {what} (stopped by {})", name(sig));
            std::process::exit(128 + sig);
        }
    }
}

/// A signal's name, for messages.
pub fn name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// A file read until `stop` is set: each read first waits (in slices of 100 ms) for data, so
/// that a stop also ends a wait on an idle pipe, and then fails with "interrupted" (not
/// `ErrorKind::Interrupted`, which readers retry).
pub struct StoppableRead {
    file: std::fs::File,
    stop: Arc<AtomicBool>,
}

impl StoppableRead {
    /// Reads `file` until `stop` is set.
    pub fn new(file: std::fs::File, stop: Arc<AtomicBool>) -> StoppableRead {
        StoppableRead { file, stop }
    }
}

impl Read for StoppableRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        wait_readable(&self.file, &self.stop)?;
        self.file.read(buf)
    }
}

/// Waits, in slices of 100 ms, until `fd` has data (or its end) to read; fails with
/// "interrupted" once `stop` is set.
pub fn wait_readable(fd: &impl AsFd, stop: &AtomicBool) -> std::io::Result<()> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("interrupted by a signal"));
        }
        let mut p = libc::pollfd {
            fd: fd.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd that outlives the call.
        let r = unsafe { libc::poll(&mut p, 1, 100) };
        if r > 0 {
            return Ok(());
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}
