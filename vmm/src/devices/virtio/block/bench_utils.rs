//! Benchmark support (feature `bench-utils`): a driver that pushes virtio-blk requests through
//! a split virtqueue laid out in plain memory (no KVM, no guest), either handled on the
//! caller's thread by [`ring::serve_inline`] or served by the real [`Block`] device behind its
//! [`MmioTransport`] (queue thread, worker pool, event-index notifications); and
//! [`HostBuffers`], the same data buffers for a baseline that calls the backend directly.
//!
//! The driver behaves like Linux's: it publishes requests, kicks only when the device's
//! `avail_event` asks for it (`VIRTIO_RING_F_EVENT_IDX`), and sets `used_event` to say when it
//! wants to be interrupted (see [`Pipeline`]).

use super::request::{Disk, Negotiated, HEADER_LEN};
use super::ring;
use super::{Block, BlockOptions};
use crate::devices::virtio::mmio::MmioTransport;
use crate::error::{Error, Result};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Descriptors in the queue (three per request).
const QUEUE_SIZE: u16 = 256;
/// Most requests in flight.
pub const MAX_DEPTH: usize = QUEUE_SIZE as usize / 3;
const DESC: u64 = 0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
/// Each slot's request header and status byte, together in a cache line of their own, as
/// Linux's `struct virtblk_req` (a per-request allocation) keeps them.
const REQUESTS: u64 = 0x3000;
/// Bytes per slot at [`REQUESTS`]: the 16-byte header, then the status byte.
const REQUEST_LEN: u64 = 64;
const _: () = assert!(REQUESTS + MAX_DEPTH as u64 * REQUEST_LEN <= DATA);
const DATA: u64 = 0x1_0000;
/// `VRING_DESC_F_NEXT`, `VRING_DESC_F_WRITE`.
const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// Guest address of slot `slot`'s request header.
fn header(slot: u64) -> u64 {
    REQUESTS + slot * REQUEST_LEN
}

/// Guest address of slot `slot`'s status byte, right behind its header.
fn status(slot: u64) -> u64 {
    header(slot) + u64::from(HEADER_LEN)
}

/// One read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    /// Write (else read).
    pub write: bool,
    /// Byte offset (a multiple of 512).
    pub offset: u64,
    /// Bytes (a multiple of 512, at most the driver's buffer size).
    pub len: u32,
}

/// Who serves the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The caller's thread pops each chain, runs [`super::request::process`] and fills the used ring
    /// ([`ring::serve_inline`]).
    Inline,
    /// The [`Block`] device, activated through virtio-mmio with `workers` I/O threads (0: the
    /// queue thread runs requests itself); one kick per batch, waiting on its interrupt.
    Device {
        /// [`BlockOptions::workers`].
        workers: usize,
    },
}

/// Guest memory laid out as a [`Driver`]'s: data slot `i` at the same offset, in the same
/// kind of mapping, so that a baseline copies to and from identically placed (page-aligned)
/// buffers. Buffers from the heap sit 16 bytes past a page boundary, which alone makes
/// 1 MiB copies to or from the page cache up to twice as slow.
pub struct HostBuffers {
    mem: GuestMemoryMmap,
    depth: usize,
    buf_len: u32,
}

impl std::fmt::Debug for HostBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBuffers")
            .field("depth", &self.depth)
            .field("buf_len", &self.buf_len)
            .finish_non_exhaustive()
    }
}

impl HostBuffers {
    /// `depth` buffers of `pattern.len()` bytes (as for [`Driver::new`]), each filled with
    /// `pattern`.
    pub fn new(depth: usize, pattern: &[u8]) -> Result<HostBuffers> {
        let buf_len = check_buffers(depth, pattern)?;
        let mem = data_memory(depth, buf_len, pattern)?;
        Ok(HostBuffers {
            mem,
            depth,
            buf_len,
        })
    }

    /// Buffers.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// All buffers, whole.
    pub fn slices_mut(&mut self) -> Result<Vec<&mut [u8]>> {
        let mut out = Vec::with_capacity(self.depth);
        for i in 0..self.depth {
            let addr = GuestAddress(DATA + i as u64 * u64::from(self.buf_len));
            let vs = self
                .mem
                .get_slice(addr, self.buf_len as usize)
                .map_err(|e| Error::Memory(e.to_string()))?;
            // SAFETY: `get_slice` checked that the range lies inside the mapping, which lives
            // as long as `self`; the slots do not overlap, and `&mut self` makes these the
            // only views of them (no device uses this memory).
            out.push(unsafe {
                std::slice::from_raw_parts_mut(vs.ptr_guard_mut().as_ptr(), self.buf_len as usize)
            });
        }
        Ok(out)
    }
}

/// Checks a buffer pattern and depth; returns the buffer size.
fn check_buffers(depth: usize, pattern: &[u8]) -> Result<u32> {
    let buf_len = u32::try_from(pattern.len())
        .ok()
        .filter(|l| *l > 0 && l % 4096 == 0)
        .ok_or_else(|| Error::InvalidConfig("buffer size".into()))?;
    if depth == 0 || depth > MAX_DEPTH {
        return Err(Error::InvalidConfig(format!("depth {depth}")));
    }
    Ok(buf_len)
}

/// Memory with `depth` data slots from [`DATA`], each filled with `pattern`.
fn data_memory(depth: usize, buf_len: u32, pattern: &[u8]) -> Result<GuestMemoryMmap> {
    let size = DATA as usize + depth * buf_len as usize;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)])
        .map_err(|e| Error::Memory(e.to_string()))?;
    for i in 0..depth as u64 {
        mem.write_slice(pattern, GuestAddress(DATA + i * u64::from(buf_len)))
            .map_err(|e| Error::Memory(e.to_string()))?;
    }
    Ok(mem)
}

/// A virtio-blk driver on plain memory.
pub struct Driver {
    mem: GuestMemoryMmap,
    depth: usize,
    buf_len: u32,
    disk: Arc<Disk>,
    served: Served,
    avail_idx: u16,
    /// Used-ring entries consumed so far (the pipelined driver's `last_used_idx`).
    used_seen: u16,
    spin: Duration,
    pipeline: Pipeline,
    /// Times the last run slept on the interrupt and an interrupt woke it.
    woken: u64,
}

/// How a device-served driver keeps its queue busy and when it asks to be interrupted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pipeline {
    /// Linux's `virtio_blk` (`virtblk_done`): on an interrupt, take every completed request
    /// off the used ring, refill the slots they free, then re-enable the interrupt for the
    /// *next* completion (`virtqueue_enable_cb` sets `used_event` to the last used index it
    /// saw) and look at the used index once more before sleeping (`virtqueue_poll`), so that a
    /// completion that raced the re-enabling is taken at once.
    #[default]
    Linux,
    /// Refill every freed slot, but ask to be interrupted only once half of what is in flight
    /// has completed (the model of measurements from 2026-11-26 to 2026-11-27; Linux's
    /// `virtqueue_enable_cb_delayed`, which asks at three quarters, serves virtio-net's
    /// transmit queue, not virtio-blk).
    Half,
    /// Publish `depth` requests, wait for all of them, repeat: the device idles while the
    /// driver wakes and refills, and the driver sleeps while the device works (the model of
    /// measurements before 2026-11-26). The inline path always runs batches.
    Batch,
}

enum Served {
    Inline(Box<Queue>),
    Device(Box<MmioTransport>),
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("depth", &self.depth)
            .field("buf_len", &self.buf_len)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// A driver for `disk` with `depth` request slots (at most [`MAX_DEPTH`]) whose data
    /// buffers are `pattern.len()` bytes (a multiple of 4096), each filled with `pattern`.
    pub fn new(disk: Arc<Disk>, mode: Mode, depth: usize, pattern: &[u8]) -> Result<Driver> {
        let buf_len = check_buffers(depth, pattern)?;
        let mem = data_memory(depth, buf_len, pattern)?;
        let wr = |r: std::result::Result<(), vm_memory::GuestMemoryError>| {
            r.map_err(|e| Error::Memory(e.to_string()))
        };
        for i in 0..depth as u64 {
            // Fixed chains: header -> data -> status; the data descriptor is set per request.
            let d = DESC + i * 48;
            wr(write_desc(
                &mem,
                d,
                header(i),
                HEADER_LEN,
                NEXT,
                3 * i as u16 + 1,
            ))?;
            wr(write_desc(&mem, d + 32, status(i), 1, WRITE, 0))?;
        }
        let served = match mode {
            Mode::Inline => {
                let mut q = Queue::new(QUEUE_SIZE).map_err(|e| Error::Queue(e.to_string()))?;
                q.set_desc_table_address(Some(DESC as u32), Some(0));
                q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
                q.set_used_ring_address(Some(USED as u32), Some(0));
                q.set_ready(true);
                Served::Inline(Box::new(q))
            }
            Mode::Device { workers } => {
                let dev = Block::new(
                    "bench",
                    disk.clone(),
                    BlockOptions {
                        workers,
                        ..BlockOptions::default()
                    },
                );
                Served::Device(Box::new(activate(&mem, dev)?))
            }
        };
        Ok(Driver {
            mem,
            depth,
            buf_len,
            disk,
            served,
            avail_idx: 0,
            used_seen: 0,
            spin: Duration::ZERO,
            pipeline: Pipeline::default(),
            woken: 0,
        })
    }

    /// How long the driver polls the used ring for a batch's completion before it sleeps on
    /// the interrupt (0, the default: sleep at once). This models the host's halt polling
    /// (KVM's `halt_poll_ns`) that keeps an idle guest vCPU from being scheduled out while it
    /// waits for an interrupt; a thread of this process has no such thing, and waking it
    /// costs a full cross-CPU wake-up. The interrupt is raised, consumed and acknowledged
    /// either way.
    pub fn set_completion_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    /// How a device-served driver keeps its queue busy ([`Pipeline::Linux`] by default).
    pub fn set_pipeline(&mut self, pipeline: Pipeline) {
        self.pipeline = pipeline;
    }

    /// Request slots.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// How often the last [`Driver::run`] slept on the interrupt and was woken by it: what
    /// the device's interrupts cost it in thread wake-ups (none for the inline path).
    pub fn wakeups(&self) -> u64 {
        self.woken
    }

    /// Runs `ops` in batches of [`Driver::depth`] requests (at most one kick each); fails if a
    /// request completes with an error status, the device stalls, or it completes requests
    /// without the interrupt the driver asked for.
    pub fn run(&mut self, ops: &[Op]) -> Result<()> {
        self.woken = 0;
        if let Served::Device(t) = &self.served {
            // An interrupt the last run's final wait did not consume (it found the used index
            // already there) is not this run's wake-up (non-blocking: nothing to read is fine).
            let _ = t.interrupt().eventfd().read();
        }
        if self.pipeline != Pipeline::Batch && matches!(self.served, Served::Device(_)) {
            return self.run_pipelined(ops);
        }
        for batch in ops.chunks(self.depth) {
            self.run_batch(batch)?;
        }
        Ok(())
    }

    /// Fills slot `slot`'s header, status and data descriptor for `op`, and puts its chain in
    /// the available ring `k` places past the published index.
    fn fill(&self, slot: usize, k: u16, op: &Op) -> Result<()> {
        let mem = &self.mem;
        let wr = |r: std::result::Result<(), vm_memory::GuestMemoryError>| {
            r.map_err(|e| Error::Memory(e.to_string()))
        };
        if op.len > self.buf_len || !op.len.is_multiple_of(512) || !op.offset.is_multiple_of(512) {
            return Err(Error::InvalidConfig(format!("{op:?}")));
        }
        let i64 = slot as u64;
        let kind = if op.write {
            VIRTIO_BLK_T_OUT
        } else {
            VIRTIO_BLK_T_IN
        };
        // One store per structure, as a guest's driver fills them.
        let mut hdr = [0u8; 16];
        hdr[..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..].copy_from_slice(&(op.offset / 512).to_le_bytes());
        wr(mem.write_obj(hdr, GuestAddress(header(i64))))?;
        wr(mem.write_obj(0xffu8, GuestAddress(status(i64))))?;
        let data = DATA + i64 * u64::from(self.buf_len);
        let flags = NEXT | if op.write { 0 } else { WRITE };
        let d = DESC + i64 * 48 + 16;
        wr(write_desc(mem, d, data, op.len, flags, 3 * slot as u16 + 2))?;
        let at = u64::from(self.avail_idx.wrapping_add(k) % QUEUE_SIZE);
        wr(mem.write_obj((3 * slot as u16).to_le(), GuestAddress(AVAIL + 4 + 2 * at)))
    }

    /// Publishes `n` filled chains (after setting `used_event` to `event`, if given), and kicks
    /// if the device asks for it.
    fn publish(&mut self, n: u16, event: Option<u16>) -> Result<()> {
        if let Some(event) = event {
            self.set_used_event(event)?;
        }
        let mem = &self.mem;
        let old = self.avail_idx;
        let new = old.wrapping_add(n);
        let mem_err = |e: vm_memory::GuestMemoryError| Error::Memory(e.to_string());
        mem.store(new.to_le(), GuestAddress(AVAIL + 2), Ordering::Release)
            .map_err(mem_err)?;
        self.avail_idx = new;
        // As Linux's virtqueue_kick_prepare: the index store before the avail_event load.
        std::sync::atomic::fence(Ordering::SeqCst);
        let avail_event: u16 = mem
            .load(
                GuestAddress(USED + 4 + 8 * u64::from(QUEUE_SIZE)),
                Ordering::Relaxed,
            )
            .map_err(mem_err)?;
        if n > 0 && need_event(u16::from_le(avail_event), new, old) {
            if let Served::Device(t) = &mut self.served {
                t.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &0u32.to_le_bytes());
            }
        }
        Ok(())
    }

    /// Asks to be interrupted once the used index passes `event`.
    fn set_used_event(&self, event: u16) -> Result<()> {
        let at = GuestAddress(AVAIL + 4 + 2 * u64::from(QUEUE_SIZE));
        self.mem
            .write_obj(event.to_le(), at)
            .map_err(|e| Error::Memory(e.to_string()))
    }

    /// Keeps every slot busy until `ops` are done (see [`Pipeline`]).
    fn run_pipelined(&mut self, ops: &[Op]) -> Result<()> {
        let mut free: Vec<usize> = (0..self.depth).rev().collect();
        let mut next = 0;
        let mut in_flight = 0u16;
        while next < ops.len() || in_flight > 0 {
            let n = free.len().min(ops.len() - next);
            for k in 0..n {
                let slot = free
                    .pop()
                    .ok_or_else(|| Error::Queue("no free slot".into()))?;
                self.fill(slot, k as u16, &ops[next + k])?;
            }
            next += n;
            in_flight += n as u16;
            let want = match self.pipeline {
                Pipeline::Half => in_flight.div_ceil(2),
                _ => 1,
            };
            let event = self.used_seen.wrapping_add(want).wrapping_sub(1);
            if self.pipeline == Pipeline::Half {
                self.publish(n as u16, Some(event))?;
            } else {
                self.publish(n as u16, None)?;
                // virtqueue_enable_cb: the event store before the used index is looked at
                // again (virtqueue_poll's barrier), which `wait_used` does first.
                self.set_used_event(event)?;
                std::sync::atomic::fence(Ordering::SeqCst);
            }
            let target = self.used_seen.wrapping_add(want);
            let Served::Device(t) = &mut self.served else {
                return Err(Error::Queue("the pipelined driver needs a device".into()));
            };
            let used = wait_used(
                &self.mem,
                t,
                self.used_seen,
                target,
                self.spin,
                &mut self.woken,
            )?;
            while self.used_seen != used {
                let at = u64::from(self.used_seen % QUEUE_SIZE);
                let head: u32 = self
                    .mem
                    .read_obj(GuestAddress(USED + 4 + 8 * at))
                    .map_err(|e| Error::Memory(e.to_string()))?;
                let slot = (u32::from_le(head) / 3) as usize;
                if slot >= self.depth {
                    return Err(Error::Queue(format!(
                        "used head {}: no such slot",
                        u32::from_le(head)
                    )));
                }
                let s: u8 = self
                    .mem
                    .read_obj(GuestAddress(status(slot as u64)))
                    .map_err(|e| Error::Memory(e.to_string()))?;
                if s != 0 {
                    return Err(Error::Queue(format!("slot {slot}: status {s}")));
                }
                free.push(slot);
                in_flight -= 1;
                self.used_seen = self.used_seen.wrapping_add(1);
            }
        }
        Ok(())
    }

    fn run_batch(&mut self, batch: &[Op]) -> Result<()> {
        for (i, op) in batch.iter().enumerate() {
            self.fill(i, i as u16, op)?;
        }
        let n = batch.len() as u16;
        let target = self.avail_idx.wrapping_add(n);
        // Interrupt only when the whole batch is done (VIRTIO_RING_F_EVENT_IDX's used_event).
        self.publish(n, Some(self.used_seen.wrapping_add(n).wrapping_sub(1)))?;
        match &mut self.served {
            Served::Inline(q) => {
                inline_pass(&self.mem, q, &self.disk);
            }
            Served::Device(t) => {
                wait_used(
                    &self.mem,
                    t,
                    self.used_seen,
                    target,
                    self.spin,
                    &mut self.woken,
                )?;
            }
        }
        self.used_seen = target;
        for i in 0..batch.len() as u64 {
            let s: u8 = self
                .mem
                .read_obj(GuestAddress(status(i)))
                .map_err(|e| Error::Memory(e.to_string()))?;
            if s != 0 {
                return Err(Error::Queue(format!("request {i}: status {s}")));
            }
        }
        Ok(())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Served::Device(t) = &mut self.served {
            t.shutdown();
        }
    }
}

/// One pass of the inline path over the available ring; a function of its own (never
/// inlined) so that profiles can single it out (`valgrind --toggle-collect='*inline_pass*'`).
#[inline(never)]
fn inline_pass(mem: &GuestMemoryMmap, q: &mut Queue, disk: &Disk) {
    ring::serve_inline(mem, q, disk, Negotiated::default(), || {});
}

/// `vring_need_event`: whether moving an index from `old` to `new` passes `event`.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

fn write_desc(
    mem: &GuestMemoryMmap,
    at: u64,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) -> std::result::Result<(), vm_memory::GuestMemoryError> {
    let next = if flags & NEXT != 0 { next } else { 0 };
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    mem.write_obj(d, GuestAddress(at))
}

/// Negotiates every offered feature and sets up the queue, as Linux's driver would.
fn activate(mem: &GuestMemoryMmap, dev: Block) -> Result<MmioTransport> {
    let mut t = MmioTransport::new(mem.clone(), Box::new(dev))?;
    match t.start_as_driver(QUEUE_SIZE, DESC, AVAIL, USED) {
        0xf => Ok(t),
        s => Err(Error::Queue(format!(
            "device status {s:#x} after DRIVER_OK"
        ))),
    }
}

/// How long a driver that found its requests done without an interrupt waits for it, in
/// milliseconds, before it fails the run.
const LOST_AFTER_MS: i32 = 10_000;

/// Waits until the used index is at least `target` (counting from `seen`, wrapping); returns
/// it. Polls it for up to `spin`, then sleeps on the interrupt eventfd. An interrupt raised
/// meanwhile is consumed and acknowledged in both cases. Fails if the device completed the
/// requests but never raised the interrupt they ask for ([`LOST_AFTER_MS`]). Counts in
/// `woken` each sleep that an interrupt ended.
fn wait_used(
    mem: &GuestMemoryMmap,
    t: &mut MmioTransport,
    seen: u16,
    target: u16,
    spin: Duration,
    woken: &mut u64,
) -> Result<u16> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(30);
    let interrupt = t.interrupt().clone();
    let evt = interrupt.eventfd();
    let mut spun = false;
    let want = target.wrapping_sub(seen);
    let used_idx = || -> Result<u16> {
        mem.load(GuestAddress(USED + 2), Ordering::Acquire)
            .map(u16::from_le)
            .map_err(|e| Error::Memory(e.to_string()))
    };
    let reached = || used_idx().map(|used| used.wrapping_sub(seen) >= want);
    loop {
        let used = used_idx()?;
        if used.wrapping_sub(seen) >= want {
            if spun {
                // What the interrupt handler would do (the device raised it all the same).
                let _ = evt.read();
                t.write(
                    u64::from(VIRTIO_MMIO_INTERRUPT_ACK),
                    &VIRTIO_MMIO_INT_VRING.to_le_bytes(),
                );
            }
            return Ok(used);
        }
        if !spin.is_zero() && start.elapsed() < spin {
            spun = true;
            for _ in 0..16 {
                std::hint::spin_loop();
            }
            // Never hold a CPU that the device's thread may be waiting for.
            std::thread::yield_now();
            continue;
        }
        if Instant::now() > deadline {
            return Err(Error::Queue(format!("stalled at used index {used}")));
        }
        let mut pfd = libc::pollfd {
            fd: evt.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd that outlives the call.
        let interrupted = unsafe { libc::poll(&mut pfd, 1, 100) } > 0;
        *woken += u64::from(interrupted);
        if !interrupted && reached()? {
            // Done, yet no interrupt: give a late one (the device looks at `used_event` only
            // every few completions, which a loaded machine may stretch) a long while, then
            // call it lost: a device that loses interrupts fails a run instead of slowing it.
            // SAFETY: as above.
            if unsafe { libc::poll(&mut pfd, 1, LOST_AFTER_MS) } == 0 {
                return Err(Error::Queue(format!(
                    "lost interrupt: the used index reached {target}, and no interrupt came \
                     within {LOST_AFTER_MS} ms"
                )));
            }
        }
        let _ = evt.read();
        t.write(
            u64::from(VIRTIO_MMIO_INTERRUPT_ACK),
            &VIRTIO_MMIO_INT_VRING.to_le_bytes(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use zvol::{RawFile, RawFileOptions};

    /// Every driver model completes every request through the real device, and the writes
    /// land where they were aimed, with a request count that is not a multiple of the depth;
    /// every interrupt a driver asks for comes (a lost one fails the run).
    #[test]
    fn drivers_complete_every_request_through_the_device() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut woken = 0;
        for workers in [0, 4] {
            for pipeline in [Pipeline::Linux, Pipeline::Half, Pipeline::Batch] {
                let path = dir.path().join(format!("disk-{workers}-{pipeline:?}.img"));
                let raw = RawFile::create(&path, 1 << 20, RawFileOptions::default()).expect("disk");
                let disk = Arc::new(Disk::new(Arc::new(raw), false));
                let pattern: Vec<u8> = (0..4096u32)
                    .map(|i| (i * 7 + workers as u32) as u8)
                    .collect();
                let mut d =
                    Driver::new(disk, Mode::Device { workers }, 8, &pattern).expect("driver");
                d.set_pipeline(pipeline);
                let ops: Vec<Op> = (0..100u64)
                    .map(|i| Op {
                        write: true,
                        offset: (i * 37 % 256) * 4096,
                        len: 4096,
                    })
                    .collect();
                d.run(&ops).expect("writes");
                let reads: Vec<Op> = ops.iter().map(|o| Op { write: false, ..*o }).collect();
                d.run(&reads).expect("reads");
                // A sleeping driver is woken at most once a request.
                assert!(
                    d.wakeups() <= 100,
                    "{} wake-ups for 100 requests ({workers} workers, {pipeline:?})",
                    d.wakeups()
                );
                woken += d.wakeups();
                d.run(&ops[..3]).expect("a short run after a long one");
                assert!(d.wakeups() <= 3, "counted from the run's start");
                drop(d);
                let f = std::fs::File::open(&path).expect("open");
                let mut got = vec![0u8; 4096];
                for o in &ops {
                    f.read_exact_at(&mut got, o.offset).expect("read back");
                    assert_eq!(
                        got, pattern,
                        "block at {} ({workers} workers, {pipeline:?})",
                        o.offset
                    );
                }
            }
        }
        // Six runs of 100 requests never all find every completion without sleeping.
        assert!(woken > 0, "no run slept on the interrupt");
    }
}
