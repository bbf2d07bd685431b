//! The console's output side: bytes the guest writes to its UART go into a bounded buffer that
//! a thread of its own writes out, so that a vCPU does not make a system call per byte and is
//! not held by a slow or stalled reader (a pipe nobody empties, a terminal on hold) once the
//! VM ends. While the reader keeps up, nothing is lost: a vCPU whose byte does not fit waits
//! for room, as a program writing to a full pipe does. Once the vCPUs are stopping
//! ([`ConsoleHandle::release`]: power-off, reboot, failure or a stop), bytes that do not fit
//! are dropped (and counted) instead; the final drain waits for the reader, at most
//! [`STOPPED_DRAIN`] after a [`ConsoleHandle::stop`].

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes held for the writer thread at most.
const CAPACITY: usize = 256 << 10;
/// Bytes the writer thread takes per system call at most.
const CHUNK: usize = 64 << 10;
/// How long the writer thread, woken by a first byte, lets more gather before it writes (a
/// line of boot log is one write, not one per byte).
const GATHER: Duration = Duration::from_millis(1);
/// How long the final drain of a stopped VM's console waits for a reader.
pub const STOPPED_DRAIN: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    buf: VecDeque<u8>,
    /// Bytes taken by the writer thread and not yet written.
    writing: usize,
    /// The writer thread waits for bytes (the next byte wakes it).
    writer_idle: bool,
    /// Threads waiting for room (a vCPU, the drain).
    room_waiters: usize,
    /// No more waiting for room: the vCPUs are stopping.
    released: bool,
    /// The VM was stopped: the final drain waits a bounded time.
    stopped: bool,
    /// No more bytes will come: the thread ends once the buffer is written.
    closed: bool,
    /// The output failed: later bytes are dropped.
    failed: bool,
    /// Bytes dropped (stopped, closed or failed).
    dropped: u64,
}

struct Shared {
    state: Mutex<State>,
    /// The writer thread waits here for bytes.
    data: Condvar,
    /// Writers and the drain wait here for room, or for everything to be written.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the writer thread if it sleeps.
    fn wake_writer(&self, st: &mut State) {
        if st.writer_idle {
            st.writer_idle = false;
            self.data.notify_one();
        }
    }
}

/// The console writer the UART writes into (see the module documentation).
pub struct ConsoleOut {
    shared: Arc<Shared>,
}

/// Controls a [`ConsoleOut`] from outside the UART: stops it, drains it.
#[derive(Clone)]
pub struct ConsoleHandle {
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for ConsoleOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOut").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ConsoleHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleHandle").finish_non_exhaustive()
    }
}

impl ConsoleOut {
    /// A console writing to `out` from a new thread.
    pub fn spawn(out: Box<dyn Write + Send>) -> std::io::Result<(ConsoleOut, ConsoleHandle)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            data: Condvar::new(),
            room: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("console-out".into())
            .spawn(move || write_out(&s, out))?;
        let handle = ConsoleHandle {
            shared: shared.clone(),
            thread: Arc::new(Mutex::new(Some(thread))),
        };
        Ok((ConsoleOut { shared }, handle))
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let sh = &*self.shared;
        let mut st = sh.lock();
        // More than the buffer holds is taken in parts (write_all comes back for the rest).
        let data = &data[..data.len().min(CAPACITY)];
        let full = |st: &State| st.buf.len() + data.len() > CAPACITY;
        while full(&st) && !st.released && !st.failed && !st.closed {
            st.room_waiters += 1;
            st = sh.room.wait(st).unwrap_or_else(|e| e.into_inner());
            st.room_waiters -= 1;
        }
        if full(&st) || st.failed || st.closed {
            st.dropped += data.len() as u64;
        } else {
            st.buf.extend(data);
            sh.wake_writer(&mut st);
        }
        Ok(data.len())
    }

    /// Handing bytes to the writer thread is all a UART's flush does (it flushes after every
    /// byte); [`ConsoleHandle::drain`] waits for them to be written.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleOut {
    /// The UART is gone (a VM dropped without a run): the thread writes what is left and ends.
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.closed = true;
        self.shared.wake_writer(&mut st);
    }
}

impl ConsoleHandle {
    /// The vCPUs are stopping (the guest powered off, rebooted or failed, or the VM was
    /// stopped): a write that finds no room drops its bytes instead of waiting, so a stalled
    /// reader cannot keep a vCPU (or the console's lock) from ending.
    pub fn release(&self) {
        self.shared.lock().released = true;
        self.shared.room.notify_all();
    }

    /// The VM was stopped ([`crate::StopHandle::stop`]): as [`ConsoleHandle::release`], and
    /// the final [`ConsoleHandle::drain`] waits at most [`STOPPED_DRAIN`] for the reader.
    pub fn stop(&self) {
        let mut st = self.shared.lock();
        st.released = true;
        st.stopped = true;
        drop(st);
        self.shared.room.notify_all();
    }

    /// Takes no more bytes and waits until everything taken is written, or, once the VM was
    /// stopped, at most [`STOPPED_DRAIN`] from then; returns the bytes dropped in all.
    pub fn drain(&self) -> u64 {
        let sh = &*self.shared;
        let mut st = sh.lock();
        st.closed = true;
        sh.wake_writer(&mut st);
        let mut stopped_since = None;
        let done = |st: &State| st.failed || (st.buf.is_empty() && st.writing == 0);
        while !done(&st) {
            if st.stopped {
                let since = *stopped_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= STOPPED_DRAIN {
                    let left = (st.buf.len() + st.writing) as u64;
                    st.dropped += left;
                    st.buf.clear();
                    return st.dropped;
                }
            }
            st.room_waiters += 1;
            st = sh
                .room
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            st.room_waiters -= 1;
        }
        let dropped = st.dropped;
        drop(st);
        // All written (or the output failed): the thread ends at once. It stays blocked
        // only on a reader that never came, and then the loop above returned early.
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        dropped
    }
}

/// The writer thread: writes what the buffer holds, [`CHUNK`] bytes at a time, until it is
/// closed and empty.
fn write_out(sh: &Shared, mut out: Box<dyn Write + Send>) {
    let mut chunk = Vec::with_capacity(CHUNK);
    loop {
        let mut st = sh.lock();
        if st.buf.is_empty() && !st.closed {
            while st.buf.is_empty() && !st.closed {
                st.writer_idle = true;
                st = sh.data.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.writer_idle = false;
            if !st.closed {
                // Woken by a first byte: let the rest of its line come.
                drop(st);
                std::thread::sleep(GATHER);
                st = sh.lock();
            }
        }
        if st.buf.is_empty() {
            return;
        }
        let n = st.buf.len().min(CHUNK);
        chunk.clear();
        chunk.extend(st.buf.drain(..n));
        st.writing = n;
        if st.room_waiters > 0 {
            sh.room.notify_all();
        }
        drop(st);
        let r = write_chunk(&mut *out, &chunk);
        let mut st = sh.lock();
        st.writing = 0;
        if let Err(e) = r {
            tracing::warn!("console output: {e}; the guest's console output is dropped from here");
            st.failed = true;
            st.dropped += (chunk.len() + st.buf.len()) as u64;
            st.buf.clear();
        }
        if st.room_waiters > 0 {
            sh.room.notify_all();
        }
        if st.failed {
            return;
        }
    }
}

/// Writes all of `chunk`: like `write_all`, but an output that would block (a non-blocking
/// descriptor inherited as stdout) is waited for rather than taken for a failure.
fn write_chunk(out: &mut dyn Write, chunk: &[u8]) -> std::io::Result<()> {
    let mut at = 0;
    while at < chunk.len() {
        match out.write(&chunk[at..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(e),
        }
    }
    loop {
        match out.flush() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A writer that blocks until the test lets it go, then records.
    struct Gate {
        open: Arc<(Mutex<bool>, Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let (m, c) = &*self.open;
            let mut open = m.lock().unwrap();
            while !*open {
                open = c.wait(open).unwrap();
            }
            self.got.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_byte_reaches_a_reader_that_keeps_up() {
        let (mut r, w) = std::io::pipe().unwrap();
        let (mut out, h) = ConsoleOut::spawn(Box::new(w)).unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            r.read_to_end(&mut all).unwrap();
            all
        });
        let want: Vec<u8> = (0..3 * CAPACITY).map(|i| (i % 251) as u8).collect();
        for b in &want {
            out.write_all(&[*b]).unwrap();
            out.flush().unwrap();
        }
        assert_eq!(h.drain(), 0);
        drop(out);
        drop(h);
        assert_eq!(reader.join().unwrap(), want);
    }

    /// A console whose reader is stalled (a closed [`Gate`]), and a thread writing twice what
    /// it holds into it, already waiting for room.
    fn stalled() -> (Gate, ConsoleHandle, std::thread::JoinHandle<()>) {
        let gate = Gate {
            open: Arc::new((Mutex::new(false), Condvar::new())),
            got: Arc::new(Mutex::new(Vec::new())),
        };
        let view = Gate {
            open: gate.open.clone(),
            got: gate.got.clone(),
        };
        let (mut out, h) = ConsoleOut::spawn(Box::new(gate)).unwrap();
        let writer = std::thread::spawn(move || {
            for _ in 0..2 * CAPACITY / 1024 {
                out.write_all(&[b'x'; 1024]).unwrap();
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(!writer.is_finished(), "a full console takes no more bytes");
        (view, h, writer)
    }

    impl Gate {
        fn open(&self) {
            *self.open.0.lock().unwrap() = true;
            self.open.1.notify_all();
        }
    }

    #[test]
    fn a_stalled_reader_holds_writes_only_until_the_stop() {
        let (gate, h, writer) = stalled();
        let got = gate.got.clone();
        h.stop();
        writer.join().unwrap();
        // Drain gives up on the stalled reader after STOPPED_DRAIN, counting what was lost.
        let t = Instant::now();
        let dropped = h.drain();
        assert!(t.elapsed() >= STOPPED_DRAIN && t.elapsed() < 4 * STOPPED_DRAIN);
        assert!(dropped >= CAPACITY as u64, "{dropped}");
        assert!(got.lock().unwrap().is_empty());
        // Let the thread go so that it ends.
        gate.open();
    }

    #[test]
    fn a_release_frees_writers_and_the_drain_still_waits_for_the_reader() {
        let (gate, h, writer) = stalled();
        // A guest's power-off: the vCPUs go on (their bytes that do not fit are dropped)...
        h.release();
        writer.join().unwrap();
        // ... and what was taken is still written once the reader comes back, however late.
        let got = gate.got.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            gate.open();
        });
        let dropped = h.drain();
        let written = got.lock().unwrap().len();
        assert!(written >= CAPACITY, "{written}");
        assert_eq!(written as u64 + dropped, 2 * CAPACITY as u64);
    }

    #[test]
    fn an_output_that_would_block_is_waited_for() {
        /// Refuses every other write with `WouldBlock`.
        struct Busy(bool, Vec<u8>);
        impl Write for Busy {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0 = !self.0;
                if self.0 {
                    return Err(std::io::ErrorKind::WouldBlock.into());
                }
                let n = b.len().min(3);
                self.1.extend_from_slice(&b[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut out = Busy(false, Vec::new());
        write_chunk(&mut out, b"hello, console").unwrap();
        assert_eq!(out.1, b"hello, console");
    }
}
