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

/// How long the feeder waits for input or room before it looks at the stop flag again.
const POLL_MS: i32 = 100;

/// Waits until `fd` is readable or [`POLL_MS`] passed; false on timeout.
fn readable(fd: &impl AsRawFd) -> std::io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd that outlives the call.
    match unsafe { libc::poll(&mut p, 1, POLL_MS) } {
        r if r < 0 => {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        r => Ok(r > 0),
    }
}

/// Feeds `input` to the guest through `serial`'s 64-byte FIFO, waiting on `room` whenever it
/// is full, until the input ends, `stop` is set, or the escape byte comes (then `on_escape`
/// runs once the bytes before it are in the FIFO; nothing after it is fed).
pub fn feed_input(
    mut input: ConsoleInput,
    serial: &Mutex<SerialConsole>,
    room: &EventFd,
    stop: &AtomicBool,
    on_escape: impl Fn(),
) {
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::SeqCst) {
        match readable(&input.source) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!("console input: poll: {e}; the guest gets no more input");
                return;
            }
        }
        let n = match input.source.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!("console input: read: {e}; the guest gets no more input");
                return;
            }
        };
        let data = &buf[..n];
        let escape = input
            .escape
            .and_then(|esc| data.iter().position(|&b| b == esc));
        if !deliver(&data[..escape.unwrap_or(n)], serial, room, stop) {
            return;
        }
        if escape.is_some() {
            on_escape();
            return;
        }
    }
}

/// Puts `data` in the FIFO, a room's worth at a time; false if `stop` came first.
fn deliver(
    mut data: &[u8],
    serial: &Mutex<SerialConsole>,
    room: &EventFd,
    stop: &AtomicBool,
) -> bool {
    while !data.is_empty() {
        let sent = {
            let mut s = serial.lock().unwrap_or_else(|e| e.into_inner());
            if s.fifo_capacity() == 0 {
                0
            } else {
                // Only a full FIFO (ruled out) or a failed interrupt fails: the bytes are in.
                s.enqueue_raw_bytes(data).unwrap_or(0)
            }
        };
        data = &data[sent..];
        if data.is_empty() {
            break;
        }
        // The guest empties the FIFO at its pace; an event from before the last enqueue only
        // costs one more look.
        loop {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            match readable(room) {
                Ok(true) => {
                    let _ = room.read();
                    break;
                }
                Ok(false) => {}
                Err(_) => return false,
            }
        }
    }
    true
}
