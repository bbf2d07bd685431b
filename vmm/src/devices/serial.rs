//! The 8250 serial console (COM1), from vm-superio, interrupting through an irqfd; its input
//! comes from a [`ConsoleInput`] (the terminal or a pipe), fed as the guest makes room.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use vm_superio::{serial::SerialEvents, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Raises the serial GSI by writing its irqfd.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Signals (through its eventfd) that the guest emptied the receive FIFO, so that the input
/// feeder can put more in.
#[derive(Debug)]
pub struct InputRoom(pub EventFd);

impl SerialEvents for InputRoom {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.0.write(1);
    }
}

/// COM1: output goes to `W` (stdout or a file); input is fed by [`feed_input`].
pub type SerialConsole = Serial<EventFdTrigger, InputRoom, Box<dyn Write + Send>>;

/// Where the guest's console input comes from.
#[derive(Debug)]
pub struct ConsoleInput {
    /// Read until its end (a terminal in raw mode, a pipe, a file).
    pub source: std::fs::File,
    /// A byte that stops the VM instead of reaching the guest (Ctrl-], 0x1d, on a terminal:
    /// the byte Ctrl-C sends then goes to the guest).
    pub escape: Option<u8>,
}

/// How long the feeder waits for input or room before it looks again (the stop flag, a
/// FIFO the guest emptied without telling: it may have been in loopback mode).
const POLL_MS: i32 = 100;

/// Input read but not yet in the FIFO, at most: past it, input from a source with an escape
/// byte (a terminal) is dropped while the guest reads nothing, so that the escape is still
/// seen; from any other source, reading waits.
const BACKLOG: usize = 4096;

/// Waits until one of `fds` is readable or [`POLL_MS`] passed; which ones are readable.
fn wait(fds: &[(std::os::fd::RawFd, bool)]) -> std::io::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, on)| libc::pollfd {
            fd: if on { fd } else { -1 },
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: a valid array of pollfds that outlives the call; negative fds are ignored.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, POLL_MS) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(p.iter().map(|p| r > 0 && p.revents != 0).collect())
}

/// Feeds `input` to the guest through `serial`'s 64-byte FIFO as the guest empties it (told
/// by `room`, or found on a look every `POLL_MS`, 100 ms), until the input ends and all of it is
/// in, `stop` is set, or the escape byte comes: then `on_escape` runs at once, whatever the
/// guest has read, and nothing after the escape is fed.
pub fn feed_input(
    mut input: ConsoleInput,
    serial: &Mutex<SerialConsole>,
    room: &EventFd,
    stop: &AtomicBool,
    on_escape: impl Fn(),
) {
    let mut backlog: std::collections::VecDeque<u8> = std::collections::VecDeque::new();
    let mut ended = false;
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::SeqCst) {
        // As much as the FIFO takes (the backlog may wrap: two slices). In loopback mode
        // nothing goes in: the next look tries again.
        while !backlog.is_empty() {
            let (front, _) = backlog.as_slices();
            let sent = serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .enqueue_raw_bytes(front)
                .unwrap_or(0);
            if sent == 0 {
                break;
            }
            backlog.drain(..sent);
        }
        if ended && backlog.is_empty() {
            return;
        }
        // With an escape byte, the source is read whatever the backlog, so that the escape
        // is seen while the guest reads nothing.
        let read_more = !ended && (input.escape.is_some() || backlog.len() < BACKLOG);
        let ready = match wait(&[
            (input.source.as_raw_fd(), read_more),
            (room.as_raw_fd(), !backlog.is_empty()),
        ]) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("console input: poll: {e}; the guest gets no more input");
                return;
            }
        };
        if ready[1] {
            let _ = room.read();
        }
        if !ready[0] {
            continue;
        }
        let n = match input.source.read(&mut buf) {
            Ok(0) => {
                ended = true;
                continue;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::warn!("console input: read: {e}; the guest gets no more input");
                ended = true;
                continue;
            }
        };
        let data = &buf[..n];
        if input.escape.is_some_and(|esc| data.contains(&esc)) {
            on_escape();
            return;
        }
        let keep = BACKLOG.saturating_sub(backlog.len()).min(data.len());
        backlog.extend(&data[..keep]);
    }
}
