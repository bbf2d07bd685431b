//! A memory device for tests that watch what the pool does to its device: it counts the bytes
//! written and read (through the cache or around it), records prefetch hints, can run a hook
//! (once) just before a hole of at least a given size is punched or placed data is written,
//! can change the first byte a read delivers (a caller scribbling on its buffer), and can
//! keep a copy of its bytes as they are at the next sync (a power cut there).

#![allow(dead_code)]

use pool::{Device, MemDevice};
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// A hook run just before a punch or a write of placed data goes through.
pub type Hook = Box<dyn FnOnce() + Send>;

/// [`MemDevice`] with write and read counters, a prefetch log, an optional punch hook and an
/// optional image taken at the next sync.
pub struct Watched {
    inner: MemDevice,
    /// Armed: the next sync stores the bytes here (`Some(None)` until it happens).
    sync_image: Mutex<Option<Option<Vec<u8>>>>,
    written: AtomicU64,
    write_calls: AtomicU64,
    read_cached: AtomicU64,
    read_direct: AtomicU64,
    prefetches: Mutex<Vec<(u64, u64)>>,
    /// What [`Device::reads_ahead`] answers.
    reads_ahead: AtomicBool,
    punch_hook: Mutex<Option<(u64, Hook)>>,
    placed_write_hook: Mutex<Option<Hook>>,
    scribble_min: Mutex<Option<usize>>,
}

impl Watched {
    /// A device of `len` bytes.
    pub fn new(len: usize) -> Watched {
        Watched {
            inner: MemDevice::new(len),
            sync_image: Mutex::new(None),
            written: AtomicU64::new(0),
            write_calls: AtomicU64::new(0),
            read_cached: AtomicU64::new(0),
            read_direct: AtomicU64::new(0),
            prefetches: Mutex::new(Vec::new()),
            reads_ahead: AtomicBool::new(false),
            punch_hook: Mutex::new(None),
            placed_write_hook: Mutex::new(None),
            scribble_min: Mutex::new(None),
        }
    }

    /// The device's bytes as they are now (see [`MemDevice::snapshot`]).
    pub fn snapshot(&self) -> Vec<u8> {
        self.inner.snapshot()
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Write calls (each one contiguous range) since the last call.
    pub fn take_write_calls(&self) -> u64 {
        self.write_calls.swap(0, Ordering::Relaxed)
    }

    /// Bytes read since the last call: (through the cache with `read_at`, around it with
    /// `read_direct_at`).
    pub fn take_reads(&self) -> (u64, u64) {
        (
            self.read_cached.swap(0, Ordering::Relaxed),
            self.read_direct.swap(0, Ordering::Relaxed),
        )
    }

    /// The (offset, length) of each prefetch hint since the last call, in order.
    pub fn take_prefetches(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut *self.prefetches.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Makes the device say that its cache reads ahead by itself (as a page cache does).
    pub fn set_reads_ahead(&self, on: bool) {
        self.reads_ahead.store(on, Ordering::Relaxed);
    }

    /// Makes the next sync keep a copy of the device's bytes as they are before it: in a
    /// commit, everything written but the uberblock.
    pub fn image_at_next_sync(&self) {
        *self.sync_image.lock().unwrap_or_else(|e| e.into_inner()) = Some(None);
    }

    /// The copy the sync after [`Watched::image_at_next_sync`] kept, if it has happened.
    pub fn take_sync_image(&self) -> Option<Vec<u8>> {
        self.sync_image
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .flatten()
    }

    /// Runs `hook` once, before the first punch of at least `min_len` bytes goes through.
    pub fn on_punch(&self, min_len: u64, hook: Hook) {
        *self.punch_hook.lock().unwrap_or_else(|e| e.into_inner()) = Some((min_len, hook));
    }

    /// Flips the first byte that the next read of at least `min_len` bytes delivers, as a
    /// caller that changes its buffer while the read fills it (the device is left intact).
    pub fn scribble_on_next_read(&self, min_len: usize) {
        *self.scribble_min.lock().unwrap_or_else(|e| e.into_inner()) = Some(min_len);
    }

    fn scribble(&self, buf: &mut [u8]) {
        let mut armed = self.scribble_min.lock().unwrap_or_else(|e| e.into_inner());
        if armed.is_some_and(|min| buf.len() >= min) {
            *armed = None;
            buf[0] ^= 0xff;
        }
    }

    /// Runs `hook` once, before the next write of placed data goes through.
    pub fn on_placed_write(&self, hook: Hook) {
        *self
            .placed_write_hook
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }
}

impl Device for Watched {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_cached
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner.read_at(buf, offset)?;
        self.scribble(buf);
        Ok(())
    }
    fn read_direct_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_direct
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner.read_at(buf, offset)?;
        self.scribble(buf);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_calls.fetch_add(1, Ordering::Relaxed);
        self.written.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner.write_at(buf, offset)
    }
    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let n: usize = bufs.iter().map(|b| b.len()).sum();
        self.write_calls.fetch_add(1, Ordering::Relaxed);
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        self.inner.write_vectored_at(bufs, offset)
    }
    fn write_placed_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let hook = self
            .placed_write_hook
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(hook) = hook {
            hook();
        }
        self.write_vectored_at(bufs, offset)
    }
    fn prefetch(&self, offset: u64, len: u64) {
        self.prefetches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((offset, len));
    }
    fn reads_ahead(&self) -> bool {
        self.reads_ahead.load(Ordering::Relaxed)
    }
    fn sync(&self) -> io::Result<()> {
        if let Some(slot @ None) = &mut *self.sync_image.lock().unwrap_or_else(|e| e.into_inner()) {
            *slot = Some(self.inner.snapshot());
        }
        self.inner.sync()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let hook = {
            let mut h = self.punch_hook.lock().unwrap_or_else(|e| e.into_inner());
            match h.take() {
                Some((min, hook)) if len >= min => Some(hook),
                other => {
                    *h = other;
                    None
                }
            }
        };
        if let Some(hook) = hook {
            hook();
        }
        self.inner.punch_hole(offset, len)
    }
    fn describe(&self) -> String {
        "watched memory device".into()
    }
}
