//! The virtio-blk device: features, configuration space, and the queue thread that pops
//! requests, parses them, and executes them itself or hands them to the worker pool.
//!
//! The queue thread serves every available chain per wake-up with driver notifications
//! suppressed and raises an interrupt mid-pass once the used index has passed the driver's
//! `used_event` (`VIRTIO_RING_F_EVENT_IDX`), looking at it every [`ring::NOTIFY_BATCH`]
//! completions and at the end of the pass (without workers also before a request that is not
//! a read or a write; with workers those go to the workers, each of which interrupts as its
//! request completes). Without event index: at the end of the pass, and with workers also
//! every [`ring::NOTIFY_BATCH`] requests the queue thread runs and at each worker's
//! completion. So a driver refills its ring while the rest of a pass runs. After a pass the
//! queue thread polls the available ring for a short while ([`BlockOptions::poll_us`]) before
//! it re-enables notifications and sleeps, so that a driver that comes back quickly costs no
//! kick and no thread wake-up. With no workers, requests run
//! on the queue thread as they are popped: no channel, no lock, no allocation per request.
//! With workers, requests that execute in microseconds (the page cache answers) still run on
//! the queue thread, and slower ones go to the workers ([`Pace`]). The rings are read and
//! written through [`ring::Rings`] (host views looked up once per pass) where their layout
//! allows it.

use super::pace::Pace;
use super::request::{
    self, Disk, Negotiated, ParseError, Request, MAX_DISCARD_SECTORS, MAX_DISCARD_SEGS, SECTOR_SIZE,
};
use super::ring;
use super::worker::WorkerPool;
use crate::devices::virtio::{ActiveQueue, Interrupt, VirtioDevice};
use crate::error::{Error, Result};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;

/// Tunables of a block device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockOptions {
    /// Threads executing requests that take long ([`Pace`]); 0 executes every request on
    /// the queue thread.
    pub workers: usize,
    /// How long, in microseconds, the queue thread keeps polling the available ring after
    /// it ran dry, with driver notifications still suppressed, before it sleeps until the
    /// next kick (QEMU's iothread `poll-max-ns` in spirit). 0 sleeps at once. Polling burns
    /// up to this much CPU per burst of requests (yielding to other runnable threads) and
    /// saves a kick and a thread wake-up whenever the driver comes back within the window.
    /// Only while the queue thread executes requests itself: with workers running them, it
    /// would compete with them for CPUs.
    pub poll_us: u32,
}

/// Default [`BlockOptions::poll_us`].
pub const DEFAULT_POLL_US: u32 = 50;

impl Default for BlockOptions {
    fn default() -> Self {
        BlockOptions {
            workers: 4,
            poll_us: DEFAULT_POLL_US,
        }
    }
}

/// A virtio-blk device on a [`Disk`].
pub struct Block {
    disk: Arc<Disk>,
    options: BlockOptions,
    avail_features: u64,
    acked_features: u64,
    config: Vec<u8>,
    queue_sizes: [u16; 1],
    running: Option<Running>,
    name: String,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("name", &self.name)
            .field("disk", &self.disk)
            .field("acked_features", &self.acked_features)
            .field("running", &self.running.is_some())
            .finish()
    }
}

/// The queue thread of an activated device.
struct Running {
    /// Set before `stop` is written, so that a polling queue thread notices too.
    stopping: Arc<AtomicBool>,
    stop: EventFd,
    thread: JoinHandle<()>,
}

impl Block {
    /// A device for `disk`; `name` names its threads.
    pub fn new(name: &str, disk: Arc<Disk>, options: BlockOptions) -> Block {
        let mut avail_features = 1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE;
        if disk.read_only() {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            avail_features |= 1 << VIRTIO_BLK_F_WRITE_ZEROES;
            // Not where a discard would write zeroes: a guest's mkfs or fstrim discards
            // every free byte.
            if disk.discards() {
                avail_features |= 1 << VIRTIO_BLK_F_DISCARD;
            }
        }
        let config = config_space(&disk);
        Block {
            disk,
            options,
            avail_features,
            acked_features: 0,
            config,
            queue_sizes: [QUEUE_SIZE],
            running: None,
            name: name.to_string(),
        }
    }

    /// The disk.
    pub fn disk(&self) -> &Arc<Disk> {
        &self.disk
    }

    fn negotiated(&self) -> Negotiated {
        Negotiated {
            discard: self.acked_features & (1 << VIRTIO_BLK_F_DISCARD) != 0,
            write_zeroes: self.acked_features & (1 << VIRTIO_BLK_F_WRITE_ZEROES) != 0,
        }
    }
}

/// `struct virtio_blk_config`, little-endian.
fn config_space(disk: &Disk) -> Vec<u8> {
    let mut c = vec![0u8; 60];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    put(0, &(disk.capacity() / SECTOR_SIZE).to_le_bytes()); // capacity
    put(12, &u32::from(QUEUE_SIZE - 2).to_le_bytes()); // seg_max
    let blk_size = disk
        .backend()
        .info()
        .logical_block_size
        .max(SECTOR_SIZE as u32);
    put(20, &blk_size.to_le_bytes()); // blk_size
    put(34, &1u16.to_le_bytes()); // num_queues
    put(36, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_discard_sectors
    put(40, &MAX_DISCARD_SEGS.to_le_bytes()); // max_discard_seg
    put(44, &(blk_size / SECTOR_SIZE as u32).to_le_bytes()); // discard_sector_alignment
    put(48, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
    put(52, &MAX_DISCARD_SEGS.to_le_bytes()); // max_write_zeroes_seg
    put(56, &[1]); // write_zeroes_may_unmap
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let start = offset as usize;
        match self.config.get(start..start.saturating_add(data.len())) {
            Some(src) => data.copy_from_slice(src),
            None => data.fill(0),
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        tracing::debug!("{}: ignoring a config write at {offset}", self.name);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<()> {
        self.reset();
        let Some(ActiveQueue { mut queue, kick }) = queues.into_iter().next() else {
            return Err(Error::Queue("virtio-blk needs one queue".into()));
        };
        queue.set_event_idx(self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        let avail_idx = GuestAddress(queue.avail_ring())
            .checked_add(2)
            .ok_or_else(|| Error::Queue("available ring address overflows".into()))?;
        let ctx = Arc::new(Ctx {
            mem,
            interrupt,
            disk: self.disk.clone(),
            neg: self.negotiated(),
        });
        let stopping = Arc::new(AtomicBool::new(false));
        let serve = match self.options.workers {
            0 => Serve::Inline(queue),
            n => {
                let queue = Arc::new(Mutex::new(queue));
                let pace = Arc::new(Pace::default());
                let (c, q, stop, p) = (ctx.clone(), queue.clone(), stopping.clone(), pace.clone());
                let pool = WorkerPool::new(
                    &format!("{}-io", self.name),
                    n,
                    usize::from(QUEUE_SIZE),
                    move |(head, req): (u16, Request)| {
                        // A reset discards the rings: requests not started by then are
                        // dropped, so that reset and shutdown wait only for those running.
                        if stop.load(Ordering::Acquire) {
                            return;
                        }
                        let used = p.execute(&req, &c.mem, &c.disk, c.neg);
                        complete(&c, &q, head, used);
                    },
                )
                .map_err(Error::io("starting virtio-blk workers"))?;
                Serve::Pool {
                    queue,
                    pool,
                    pace,
                    popped: Vec::with_capacity(usize::from(QUEUE_SIZE)),
                }
            }
        };
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("creating an eventfd"))?;
        let stop2 = stop.try_clone().map_err(Error::io("cloning an eventfd"))?;
        let mut server = QueueServer {
            ctx,
            serve,
            avail_idx,
            poll: Duration::from_micros(u64::from(self.options.poll_us)),
            stopping: stopping.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("{}-queue", self.name))
            .spawn(move || server.run(&kick, &stop2))
            .map_err(Error::io("starting the virtio-blk queue thread"))?;
        self.running = Some(Running {
            stopping,
            stop,
            thread,
        });
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(r) = self.running.take() {
            r.stopping.store(true, Ordering::SeqCst);
            if let Err(e) = r.stop.write(1) {
                tracing::warn!("{}: stopping the queue thread: {e}", self.name);
            }
            let _ = r.thread.join();
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.reset();
    }
}

/// What the queue thread and the workers share.
struct Ctx {
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    disk: Arc<Disk>,
    neg: Negotiated,
}

/// Puts a finished chain on the used ring and interrupts the driver if it wants that.
fn complete(ctx: &Ctx, queue: &Mutex<Queue>, head: u16, used_len: u32) {
    let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
    if put_used(ctx, &mut q, head, used_len) {
        notify(ctx, &mut q);
    }
}

/// Puts a finished chain on the used ring without looking at the driver's wishes; false if
/// the ring refused it.
fn put_used(ctx: &Ctx, q: &mut Queue, head: u16, used_len: u32) -> bool {
    match q.add_used(&ctx.mem, head, used_len) {
        Ok(()) => true,
        Err(e) => {
            super::super::guest_fault(format_args!("virtio-blk: add_used({head}): {e}"));
            false
        }
    }
}

/// Interrupts the driver if the chains used since the last call ask for it.
fn notify(ctx: &Ctx, q: &mut Queue) {
    match q.needs_notification(&ctx.mem) {
        Ok(false) => {}
        Ok(true) | Err(_) => ctx.interrupt.trigger(VIRTIO_MMIO_INT_VRING),
    }
}

/// Who executes requests.
enum Serve {
    /// The queue thread, as it pops them; it owns the queue.
    Inline(Queue),
    /// The worker pool; workers put completions on the queue under its lock. Requests that
    /// execute quickly run on the queue thread all the same ([`Pace`]).
    Pool {
        queue: Arc<Mutex<Queue>>,
        pool: WorkerPool<(u16, Request)>,
        pace: Arc<Pace>,
        /// Chains popped under the lock, dispatched after it is released (reused).
        popped: Vec<(u16, std::result::Result<Request, ParseError>)>,
    },
}

/// The queue thread's state.
struct QueueServer {
    ctx: Arc<Ctx>,
    serve: Serve,
    /// Where the driver publishes its available index.
    avail_idx: GuestAddress,
    poll: Duration,
    stopping: Arc<AtomicBool>,
}

impl QueueServer {
    /// Waits for kicks and serves the queue until `stop`.
    fn run(&mut self, kick: &EventFd, stop: &EventFd) {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: kick.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfds that outlives the call.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("virtio-blk queue thread: poll: {e}");
                return;
            }
            if fds[1].revents != 0 || self.stopping.load(Ordering::Relaxed) {
                return;
            }
            if fds[0].revents != 0 {
                let _ = kick.read();
                self.serve_until_idle();
            }
        }
    }

    /// Serves chains until the ring stays empty for the polling window and stays empty
    /// once notifications are back on.
    fn serve_until_idle(&mut self) {
        let mut empty_passes = 0;
        while !self.stopping.load(Ordering::Relaxed) {
            let (popped, next_avail) = self.serve_available();
            if popped == 0 && self.avail_changed(next_avail) {
                empty_passes += 1;
                // A chain published after the pass read the index: serve it (the driver saw
                // notifications off and will not kick for it). An index the queue refuses (it
                // ran more than a queue ahead) pops nothing however often: wait for the next
                // kick rather than spin.
                if empty_passes == 1 && !self.avail_too_far(next_avail) {
                    continue;
                }
                self.enable_notification();
                return;
            }
            empty_passes = 0;
            if self.poll_for(next_avail) {
                continue;
            }
            if !self.enable_notification() {
                return;
            }
        }
    }

    /// Pops every available chain and executes (or dispatches) it, interrupting the driver as
    /// the module documentation says. Returns the chains popped and the queue's next available
    /// index. Never inlined, so that profiles can single it out.
    #[inline(never)]
    fn serve_available(&mut self) -> (usize, u16) {
        let ctx = &*self.ctx;
        let mem = &ctx.mem;
        match &mut self.serve {
            Serve::Inline(q) => {
                let _ = q.disable_notification(mem);
                let interrupt = || ctx.interrupt.trigger(VIRTIO_MMIO_INT_VRING);
                let pass =
                    ring::serve_inline_until(mem, q, &ctx.disk, ctx.neg, &self.stopping, interrupt);
                if pass.notify {
                    ctx.interrupt.trigger(VIRTIO_MMIO_INT_VRING);
                }
                (pass.popped, q.next_avail())
            }
            Serve::Pool {
                queue,
                pool,
                pace,
                popped,
            } => {
                // One region cache for the whole pass, as `ring::Rings::serve`.
                let mut look = request::Lookup::new(mem);
                let next_avail = {
                    let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = q.disable_notification(mem);
                    if let Some(rings) = ring::Rings::new(mem, &q) {
                        let rings = rings.stopping_at(&self.stopping);
                        rings.pop_each(&mut q, |head, chain| {
                            popped.push((head, request::parse_in(&mut look, chain)));
                        });
                    } else {
                        // At most a queue size of chains per pass, as `Rings::pop_each`.
                        let table = ring::TableInMemory::of(mem, &q);
                        while popped.len() < usize::from(q.size()) {
                            let Some(chain) = q.pop_descriptor_chain(mem) else {
                                break;
                            };
                            let head = chain.head_index();
                            popped.push((
                                head,
                                request::parse_in(&mut look, ring::Chain::new(&table, head)),
                            ));
                        }
                    }
                    q.next_avail()
                };
                let n = popped.len();
                // Chains this thread completed since the driver's wishes were last looked at
                // (every `NOTIFY_BATCH`, and at the end, as `ring::Rings::serve`).
                let mut quiet = 0;
                // The end of the last request this thread ran, while it runs them one after
                // another: the next one's start for `Pace`.
                let mut since = None;
                for (head, parsed) in popped.drain(..) {
                    if self.stopping.load(Ordering::Acquire) {
                        // Reset: the rest is dropped with the rings.
                        continue;
                    }
                    let ran_last = since.take();
                    match parsed {
                        Err(e) => complete(ctx, queue, head, request::fail_parse(mem, e)),
                        Ok(req) if pace.inline() && Pace::may_inline(&req) => {
                            let start = ran_last.unwrap_or_else(Instant::now);
                            let (used, end) =
                                pace.execute_from(&req, &mut look, &ctx.disk, ctx.neg, start);
                            since = Some(end);
                            let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                            if put_used(ctx, &mut q, head, used) {
                                quiet += 1;
                                if quiet == ring::NOTIFY_BATCH {
                                    quiet = 0;
                                    notify(ctx, &mut q);
                                    // An interrupt may wake a vCPU: not the next request's time.
                                    since = None;
                                }
                            }
                        }
                        Ok(req) => {
                            if let Err((head, req)) = pool.submit((head, req)) {
                                let used = req.execute_in(&mut look, &ctx.disk, ctx.neg).used_len;
                                complete(ctx, queue, head, used);
                            }
                        }
                    }
                }
                if quiet > 0 {
                    notify(ctx, &mut queue.lock().unwrap_or_else(|e| e.into_inner()));
                }
                (n, next_avail)
            }
        }
    }

    /// Whether the driver's available index runs more than a queue size ahead of `next_avail`
    /// (a queue refuses to pop from such a ring).
    fn avail_too_far(&self, next_avail: u16) -> bool {
        let size = match &self.serve {
            Serve::Inline(q) => q.size(),
            Serve::Pool { queue, .. } => queue.lock().unwrap_or_else(|e| e.into_inner()).size(),
        };
        match self
            .ctx
            .mem
            .load::<u16>(self.avail_idx, std::sync::atomic::Ordering::Acquire)
        {
            Ok(idx) => u16::from_le(idx).wrapping_sub(next_avail) > size,
            Err(_) => true,
        }
    }

    /// Whether the driver's available index differs from `next_avail`.
    fn avail_changed(&self, next_avail: u16) -> bool {
        match self
            .ctx
            .mem
            .load::<u16>(self.avail_idx, std::sync::atomic::Ordering::Acquire)
        {
            Ok(idx) => u16::from_le(idx) != next_avail,
            Err(_) => false,
        }
    }

    /// Polls the available ring for up to the polling window; true if a chain showed up.
    /// Only a queue thread that executes requests itself polls: with workers taking them, the
    /// requests just dispatched are still running, and a polling queue thread would take a
    /// CPU from them.
    fn poll_for(&self, next_avail: u16) -> bool {
        let executes = match &self.serve {
            Serve::Inline(_) => true,
            Serve::Pool { pace, .. } => pace.inline(),
        };
        if self.poll.is_zero() || !executes {
            return false;
        }
        let deadline = Instant::now() + self.poll;
        loop {
            for _ in 0..32 {
                if self.avail_changed(next_avail) {
                    return true;
                }
                std::hint::spin_loop();
            }
            if Instant::now() >= deadline || self.stopping.load(Ordering::Relaxed) {
                return false;
            }
            // Let whatever else is runnable on this CPU (the driver, the guest's vCPU) go
            // first: polling must not stand in the way of the work it waits for.
            std::thread::yield_now();
        }
    }

    /// Turns driver notifications back on; true if chains arrived meanwhile.
    fn enable_notification(&mut self) -> bool {
        let mem = &self.ctx.mem;
        match &mut self.serve {
            Serve::Inline(q) => q.enable_notification(mem).unwrap_or(false),
            Serve::Pool { queue, .. } => queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .enable_notification(mem)
                .unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::test_utils::*;
    use crate::devices::virtio::mmio::MmioTransport;
    use virtio_bindings::virtio_config::*;
    use virtio_bindings::virtio_mmio::*;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    /// Sets up queue 0 as the driver laid it out in `q`, `size` entries, its used ring at
    /// `used`, and marks it ready.
    fn set_queue(
        t: &mut MmioTransport,
        q: &MockSplitQueue<'_, GuestMemoryMmap>,
        size: u16,
        used: GuestAddress,
    ) {
        t.write_reg(VIRTIO_MMIO_QUEUE_NUM, u32::from(size));
        t.write_reg(VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc_table_addr().0 as u32);
        t.write_reg(VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail_addr().0 as u32);
        t.write_reg(VIRTIO_MMIO_QUEUE_USED_LOW, used.0 as u32);
        t.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
    }

    /// `dev` behind a transport, set up as a driver would: VERSION_1 negotiated, queue 0 of
    /// `size` entries laid out from 0 with its used ring at `used`, DRIVER_OK.
    fn started<'m>(
        m: &'m GuestMemoryMmap,
        dev: Block,
        size: u16,
        used: GuestAddress,
    ) -> (MmioTransport, MockSplitQueue<'m, GuestMemoryMmap>) {
        let mut t = MmioTransport::new(m.clone(), Box::new(dev)).unwrap();
        t.write_reg(VIRTIO_MMIO_STATUS, 3);
        t.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        t.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, 1);
        t.write_reg(VIRTIO_MMIO_STATUS, 0xb);
        let q = MockSplitQueue::create(m, GuestAddress(0), size);
        set_queue(&mut t, &q, size, used);
        t.write_reg(VIRTIO_MMIO_STATUS, 0xf);
        (t, q)
    }

    /// DRIVER_OK without accepted FEATURES_OK (skipped, or refused for a legacy driver) does
    /// not start the device: it asks for a reset instead of running with stale features.
    #[test]
    fn driver_ok_without_negotiated_features_needs_a_reset() {
        let m = mem();
        let (_k, disk) = disk(Kind::Raw, false);
        for legacy in [false, true] {
            let dev = Block::new("vda", disk.clone(), BlockOptions::default());
            let mut t = MmioTransport::new(m.clone(), Box::new(dev)).unwrap();
            t.write_reg(VIRTIO_MMIO_STATUS, 3);
            if legacy {
                // No VERSION_1: FEATURES_OK is refused.
                t.write_reg(VIRTIO_MMIO_STATUS, 0xb);
                assert_eq!(
                    t.read_reg(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
                    0
                );
            }
            let q = MockSplitQueue::create(&m, GuestAddress(0), 64);
            set_queue(&mut t, &q, 64, q.used_addr());
            let status = t.read_reg(VIRTIO_MMIO_STATUS);
            t.write_reg(VIRTIO_MMIO_STATUS, status | VIRTIO_CONFIG_S_DRIVER_OK);
            assert_ne!(
                t.read_reg(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
                0,
                "legacy {legacy}: the device started without negotiated features"
            );
        }
    }

    /// A backend whose reads take `delay`, counting those started and done, the most that
    /// ran at once and how many ran on the device's queue thread; `discards` as said.
    #[derive(Default)]
    struct Timed {
        delay: std::time::Duration,
        discards: bool,
        started: std::sync::atomic::AtomicU64,
        running: std::sync::atomic::AtomicU64,
        most: std::sync::atomic::AtomicU64,
        done: std::sync::atomic::AtomicU64,
        on_queue_thread: std::sync::atomic::AtomicU64,
    }

    impl Timed {
        fn new(delay_ms: u64, discards: bool) -> Arc<Timed> {
            Arc::new(Timed {
                delay: std::time::Duration::from_millis(delay_ms),
                discards,
                ..Timed::default()
            })
        }
    }

    impl zvol::BlockBackend for Timed {
        fn info(&self) -> zvol::BackendInfo {
            zvol::BackendInfo {
                size: DISK_SIZE,
                block_size: 4096,
                logical_block_size: 512,
                read_only: false,
                discards: self.discards,
                id: "timed".into(),
            }
        }
        fn read_vectored(&self, _: u64, _: &mut [std::io::IoSliceMut<'_>]) -> zvol::Result<()> {
            self.started.fetch_add(1, Ordering::SeqCst);
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            if std::thread::current()
                .name()
                .is_some_and(|n| n.ends_with("-queue"))
            {
                self.on_queue_thread.fetch_add(1, Ordering::SeqCst);
            }
            if !self.delay.is_zero() {
                std::thread::sleep(self.delay);
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn write_vectored(&self, _: u64, _: &[std::io::IoSlice<'_>]) -> zvol::Result<()> {
            Ok(())
        }
        fn flush(&self) -> zvol::Result<()> {
            Ok(())
        }
        fn discard(&self, _: u64, _: u64) -> zvol::Result<()> {
            Ok(())
        }
        fn write_zeroes(&self, _: u64, _: u64) -> zvol::Result<()> {
            Ok(())
        }
    }

    /// Discard is offered only where the backend frees space; write-zeroes always (on a
    /// writable disk).
    #[test]
    fn discard_offered_only_where_it_frees_space() {
        for discards in [true, false] {
            let backend = Timed::new(20, discards);
            let dev = Block::new(
                "vdb",
                Arc::new(Disk::new(backend, false)),
                BlockOptions::default(),
            );
            let bit = |f: u32| dev.features() & (1 << f) != 0;
            assert_eq!(bit(VIRTIO_BLK_F_DISCARD), discards, "discards {discards}");
            assert!(bit(VIRTIO_BLK_F_WRITE_ZEROES), "discards {discards}");
        }
    }

    /// Puts one read chain (descriptors 0-2) on `q` and `n` available entries naming it;
    /// returns the available ring's address (the caller publishes the index).
    fn reads_of_one_chain(
        m: &GuestMemoryMmap,
        q: &MockSplitQueue<'_, GuestMemoryMmap>,
        n: u64,
    ) -> GuestAddress {
        header(m, HDR, VIRTIO_BLK_T_IN, 0);
        q.add_desc_chains(
            &[
                linked(HDR, 16, 0, Some(1)),
                linked(BUF, 512, WRITE, Some(2)),
                linked(ST, 1, WRITE, None),
            ],
            0,
        )
        .unwrap();
        let avail = q.avail_addr();
        for i in 0..n {
            m.write_obj(0u16, avail.unchecked_add(4 + 2 * i)).unwrap();
        }
        avail
    }

    /// With workers (the default), reads that wait (a disk's) run several at once, and reads
    /// answered at once (the page cache's) run on the queue thread, one after another: a
    /// hand-off would cost more than they do.
    #[test]
    fn slow_requests_run_in_parallel_and_fast_ones_inline() {
        for (delay_ms, parallel) in [(5, true), (0, false)] {
            let m = mem();
            let backend = Timed::new(delay_ms, false);
            let disk = Arc::new(Disk::new(backend.clone(), false));
            let dev = Block::new("vda", disk, BlockOptions::default());
            let (mut t, q) = started(&m, dev, 256, GuestAddress(0x8000));
            // Two bursts of 64 reads: the first goes to the workers (a new device's), and
            // their times decide who runs the second.
            let avail = reads_of_one_chain(&m, &q, 128);
            let mut inline_first = 0;
            for burst in [64u16, 128] {
                m.write_obj(burst, avail.unchecked_add(2)).unwrap();
                t.write_reg(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
                let start = std::time::Instant::now();
                while backend.done.load(Ordering::SeqCst) < u64::from(burst) {
                    assert!(start.elapsed().as_secs() < 30, "reads stalled");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                if burst == 64 {
                    inline_first = backend.on_queue_thread.load(Ordering::SeqCst);
                }
            }
            let most = backend.most.load(Ordering::SeqCst);
            let inline = backend.on_queue_thread.load(Ordering::SeqCst) - inline_first;
            if parallel {
                assert!(most >= 2, "slow reads ran one at a time");
                assert_eq!(inline, 0, "a slow read ran on the queue thread");
            } else {
                // Most of them: the times are wall-clock, and a preempted queue thread sends
                // the next dozen or so back to the workers.
                assert!(inline >= 32, "only {inline} of 64 fast reads ran inline");
            }
            t.write_reg(VIRTIO_MMIO_STATUS, 0);
        }
    }

    /// A guest that queues a deep backlog and then resets the device (or is shut down) waits
    /// for the requests already running, not for the whole backlog: without this, 512 slow
    /// reads ran to the end first (half an hour of I/O for 4 GiB requests), with the worker
    /// pool and, until the queue thread's passes looked at the stop flag, without it.
    #[test]
    fn reset_drops_requests_not_yet_started() {
        for workers in [BlockOptions::default().workers, 0] {
            reset_with_a_backlog(workers);
        }
    }

    fn reset_with_a_backlog(workers: usize) {
        let m = mem();
        let slow = Timed::new(20, true);
        let disk = Arc::new(Disk::new(slow.clone(), false));
        let options = BlockOptions {
            workers,
            ..BlockOptions::default()
        };
        let dev = Block::new("vda", disk, options);
        let (mut t, q) = started(&m, dev, 256, GuestAddress(0x8000));
        // 512 reads, all the same chain, published in two kicks without waiting.
        let avail = reads_of_one_chain(&m, &q, 256);
        for idx in [256u16, 512] {
            m.write_obj(idx, avail.unchecked_add(2)).unwrap();
            t.write_reg(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        t.write_reg(VIRTIO_MMIO_STATUS, 0);
        let ran = slow.started.load(Ordering::SeqCst);
        assert!(
            ran < 100,
            "{workers} workers: {ran} of 512 queued reads ran before the reset returned"
        );
    }

    /// A driver without event indices kicks (a stale or spurious kick), and publishes a chain
    /// while the queue thread, woken by it, passes over an empty ring with notifications off:
    /// seeing them off, the driver does not kick again. The chain must still be served (the
    /// queue thread took such a pass for a ring run too far ahead, gave up, and left it).
    /// A race: each round times the publication differently.
    #[test]
    fn a_chain_published_during_an_empty_pass_is_served() {
        use std::sync::atomic::{fence, Ordering as O};
        for (workers, rounds) in [(0, 20_000u16), (2, 3_000)] {
            let m = mem();
            let (_k, disk) = disk(Kind::Raw, false);
            let dev = Block::new(
                "vda",
                disk,
                BlockOptions {
                    workers,
                    poll_us: 0,
                },
            );
            let used = GuestAddress(0x8000);
            let (mut t, q) = started(&m, dev, 16, used);
            header(&m, HDR, VIRTIO_BLK_T_FLUSH, 0);
            q.add_desc_chains(
                &[linked(HDR, 16, 0, Some(1)), linked(ST, 1, WRITE, None)],
                0,
            )
            .unwrap();
            let avail = q.avail_addr();
            m.write_obj(0u16, avail.unchecked_add(2)).unwrap(); // an empty ring to start
            let mut seed = 0x1234_5678u64;
            let mut idx = 0u16;
            for round in 0..rounds {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                t.write_reg(VIRTIO_MMIO_QUEUE_NOTIFY, 0); // nothing new
                for _ in 0..(seed % 3000) {
                    std::hint::spin_loop();
                }
                m.write_obj(0u16, avail.unchecked_add(4 + 2 * u64::from(idx % 16)))
                    .unwrap();
                fence(O::SeqCst);
                idx = idx.wrapping_add(1);
                m.write_obj(idx, avail.unchecked_add(2)).unwrap();
                fence(O::SeqCst);
                let flags: u16 = m.read_obj(used).unwrap();
                if flags & 1 == 0 {
                    t.write_reg(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
                }
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                while m.read_obj::<u16>(used.unchecked_add(2)).unwrap() != idx {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{workers} workers, round {round}: chain {idx} left unserved"
                    );
                    std::hint::spin_loop();
                }
            }
            t.write_reg(VIRTIO_MMIO_STATUS, 0);
        }
    }

    /// Drives the device like a Linux driver would: feature negotiation, queue setup,
    /// DRIVER_OK; then `n` writes in one kick, served by the worker pool or the queue thread,
    /// with and without polling, then reads back.
    #[test]
    fn driver_round_trip_through_mmio() {
        let options = [
            BlockOptions::default(),
            BlockOptions {
                workers: 0,
                poll_us: 0,
            },
            BlockOptions {
                workers: 0,
                ..BlockOptions::default()
            },
            BlockOptions {
                workers: 3,
                poll_us: 0,
            },
        ];
        for (kind, options) in KINDS
            .into_iter()
            .flat_map(|k| options.into_iter().map(move |o| (k, o)))
        {
            let m = mem();
            let (_k, disk) = disk(kind, false);
            let dev = Block::new("vda", disk.clone(), options);
            let mut t = MmioTransport::new(m.clone(), Box::new(dev)).unwrap();
            assert_eq!(t.read_reg(VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
            assert_eq!(t.read_reg(VIRTIO_MMIO_VERSION), 2);
            assert_eq!(t.read_reg(VIRTIO_MMIO_DEVICE_ID), 2);
            let mut cap = [0u8; 8];
            t.read(u64::from(VIRTIO_MMIO_CONFIG), &mut cap);
            assert_eq!(u64::from_le_bytes(cap), DISK_SIZE / 512);
            t.write_reg(
                VIRTIO_MMIO_STATUS,
                VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
            );
            t.write_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
            let hi = t.read_reg(VIRTIO_MMIO_DEVICE_FEATURES);
            assert_eq!(hi & 1, 1, "VERSION_1 offered");
            t.write_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
            let lo = t.read_reg(VIRTIO_MMIO_DEVICE_FEATURES);
            assert_eq!(lo & (1 << VIRTIO_BLK_F_RO), 0);
            t.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
            t.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, lo);
            t.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
            t.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, hi);
            t.write_reg(VIRTIO_MMIO_STATUS, 0xb);
            assert_eq!(
                t.read_reg(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
                VIRTIO_CONFIG_S_FEATURES_OK
            );

            let q = MockSplitQueue::create(&m, GuestAddress(0), 64);
            t.write_reg(VIRTIO_MMIO_QUEUE_SEL, 0);
            assert_eq!(t.read_reg(VIRTIO_MMIO_QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
            set_queue(&mut t, &q, 64, q.used_addr());
            t.write_reg(VIRTIO_MMIO_STATUS, 0xf);

            // 16 writes of 4 KiB, each a 3-descriptor chain.
            let n = 16u64;
            let mut descs = Vec::new();
            for i in 0..n {
                let hdr = DATA + i * 0x100;
                let buf = DATA + 0x10_0000 + i * 0x1000;
                let st = DATA + 0x8000 + i;
                header(&m, hdr, VIRTIO_BLK_T_OUT, i * 8);
                m.write_slice(&[i as u8 + 1; 4096], GuestAddress(buf))
                    .unwrap();
                descs.push(linked(hdr, 16, 0, Some(descs.len() as u16 + 1)));
                descs.push(linked(buf, 4096, 0, Some(descs.len() as u16 + 1)));
                descs.push(linked(st, 1, WRITE, None));
            }
            q.add_desc_chains(&descs, 0).unwrap();
            t.write_reg(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
            // Wait for all completions (interrupts may coalesce).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let used = m.read_obj::<u16>(q.used_addr().unchecked_add(2)).unwrap();
                if u64::from(used) == n {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{kind:?} {options:?}: {used} of {n} done"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            assert_ne!(
                t.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_VRING,
                0
            );
            t.write_reg(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
            assert_eq!(t.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
            for i in 0..n {
                assert_eq!(
                    m.read_obj::<u8>(GuestAddress(DATA + 0x8000 + i)).unwrap(),
                    0
                );
                let mut got = vec![0; 4096];
                disk.backend().read_at(i * 4096, &mut got).unwrap();
                assert!(got.iter().all(|&b| b == i as u8 + 1), "{kind:?} block {i}");
            }
            // Reset stops the queue thread and clears state.
            t.write_reg(VIRTIO_MMIO_STATUS, 0);
            assert_eq!(t.read_reg(VIRTIO_MMIO_STATUS), 0);
        }
    }

    #[test]
    fn read_only_feature_and_rings_outside_memory() {
        let m = mem();
        let (_k, disk) = disk(Kind::Raw, true);
        let dev = Block::new("vdb", disk, BlockOptions::default());
        assert_ne!(dev.features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(dev.features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
        let mut t = MmioTransport::new(m, Box::new(dev)).unwrap();
        t.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        t.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, 1);
        t.write_reg(VIRTIO_MMIO_STATUS, 0xb);
        t.write_reg(VIRTIO_MMIO_QUEUE_NUM, 64);
        t.write_reg(VIRTIO_MMIO_QUEUE_DESC_LOW, 0xffff_0000);
        t.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
        t.write_reg(VIRTIO_MMIO_STATUS, 0xf);
        // Activation refused: the device asks for a reset instead of touching bad memory.
        assert_ne!(
            t.read_reg(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
            0
        );
    }
}
