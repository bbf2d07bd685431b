//! A fast path through a split virtqueue: the descriptor table, the available ring and the
//! used ring are looked up in guest memory once per batch ([`Rings::new`]) and then read and
//! written through those host views, instead of through a full guest-memory lookup (find the
//! region, check bounds, copy) for every field, as `virtio_queue::Queue` does.
//!
//! Safety and hostile guests: each ring must lie inside one guest memory region, suitably
//! aligned, or there is no fast path ([`Rings::new`] returns `None` and the caller goes the
//! `virtio_queue` way, which handles any layout). Every guest-controlled index is still
//! checked: available ring positions are taken modulo the queue size, heads and `next`
//! indices must be below it, a chain ends after the queue size of descriptors (loops) or
//! once it would exceed 2^32 bytes, and the available index may run at most a queue size
//! ahead. The data buffers the descriptors point to are validated by
//! [`request::parse`] against guest memory as before. All accesses are bounds-checked
//! volatile accesses of [`VolatileSlice`]: no unsafe code here.
//!
//! The `Queue` stays the owner of the ring state (`next_avail`, `next_used`, notification
//! settings): a batch starts from it and stores its progress back.

use super::request::{self, Disk, Negotiated, RequestType};
use std::num::Wrapping;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileMemory, VolatileSlice,
};

/// Bytes of one descriptor.
const DESC_LEN: usize = 16;
/// Bytes of one used ring element.
const USED_ELEM_LEN: usize = 8;
/// `flags` and `idx` in front of both rings.
const RING_HEADER: usize = 4;
/// `VRING_DESC_F_NEXT`.
const F_NEXT: u16 = 1;
/// `VRING_DESC_F_INDIRECT`.
const F_INDIRECT: u16 = 4;

/// Completions between two looks, during a pass, at whether the driver wants an interrupt
/// (with event index); a pass also looks before it runs a request that is not a read or a
/// write (a flush, a discard, write-zeroes, GET_ID: times no size bounds) and at its end.
/// Looking after every completion wrote the interrupt eventfd once per request for a driver
/// that keeps re-arming its interrupt (one that polls): a system call each, or a cross-CPU
/// wake-up where the driver sleeps. With a look every 8, a finished request's interrupt waits
/// at most for the next 7 reads or writes the queue thread runs: with workers (what VMs get)
/// those are only small ones while they take microseconds ([`super::pace`]); without workers
/// (benchmarks, tests) any, so a large transfer from a cold disk holds it for as long.
pub const NOTIFY_BATCH: u16 = 8;

/// Host views of a split virtqueue's three rings, valid for one batch.
#[derive(Debug)]
pub struct Rings<'m> {
    desc: VolatileSlice<'m>,
    avail: VolatileSlice<'m>,
    used: VolatileSlice<'m>,
    size: u16,
    event_idx: bool,
    /// Once set, a pass pops no more chains (a reset or shutdown waits for none).
    stop: Option<&'m AtomicBool>,
}

/// What one pass over the available ring did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Chains popped.
    pub popped: usize,
    /// Whether the driver asked to be interrupted for the chains put on the used ring.
    pub notify: bool,
}

impl<'m> Rings<'m> {
    /// Views of `q`'s rings in `mem`, or `None` when the queue is not ready or a ring is not
    /// inside one guest memory region or not aligned as the virtio spec requires (the
    /// caller then uses `virtio_queue`'s own accessors, which cope with any layout).
    /// The available ring's view includes `used_event` and the used ring's `avail_event`.
    pub fn new(mem: &'m GuestMemoryMmap, q: &Queue) -> Option<Rings<'m>> {
        let size = q.size();
        if !q.ready() || size == 0 {
            return None;
        }
        let n = usize::from(size);
        let view = |addr: u64, len: usize, align: usize| {
            let vs = mem.get_slice(GuestAddress(addr), len).ok()?;
            // Atomic accesses to the indices need natural alignment in host memory.
            (vs.ptr_guard().as_ptr() as usize)
                .is_multiple_of(align)
                .then_some(vs)
        };
        Some(Rings {
            desc: view(q.desc_table(), DESC_LEN * n, 16)?,
            avail: view(q.avail_ring(), RING_HEADER + 2 * n + 2, 2)?,
            used: view(q.used_ring(), RING_HEADER + USED_ELEM_LEN * n + 2, 4)?,
            size,
            event_idx: q.event_idx_enabled(),
            stop: None,
        })
    }

    /// These rings, whose passes pop no more chains once `stop` is set.
    pub fn stopping_at(mut self, stop: &'m AtomicBool) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Whether a pass must end (the stop flag is set).
    fn stopped(&self) -> bool {
        self.stop.is_some_and(|s| s.load(Ordering::Acquire))
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The driver's available index (acquire: the entries before it are visible).
    pub fn avail_idx(&self) -> Option<u16> {
        self.avail
            .load::<u16>(2, Ordering::Acquire)
            .ok()
            .map(u16::from_le)
    }

    /// The head index at available position `pos` (taken modulo the queue size).
    fn avail_head(&self, pos: u16) -> Option<u16> {
        let off = RING_HEADER + 2 * usize::from(pos % self.size);
        self.avail
            .load::<u16>(off, Ordering::Relaxed)
            .ok()
            .map(u16::from_le)
    }

    /// Descriptor `index`, if it is inside the table.
    pub fn descriptor(&self, index: u16) -> Option<Descriptor> {
        if index >= self.size {
            return None;
        }
        self.desc
            .get_ref::<Descriptor>(DESC_LEN * usize::from(index))
            .ok()
            .map(|r| r.load())
    }

    /// The descriptors of the chain starting at `head`.
    pub fn chain(&self, head: u16) -> Chain<'_, Self> {
        Chain::new(self, head)
    }

    /// Writes used element `pos` (modulo the queue size): chain `head`, `len` bytes written.
    fn put_used(&self, pos: u16, head: u16, len: u32) -> Option<()> {
        let off = RING_HEADER + USED_ELEM_LEN * usize::from(pos % self.size);
        let mut elem = [0u8; USED_ELEM_LEN];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        self.used
            .get_ref::<[u8; USED_ELEM_LEN]>(off)
            .ok()?
            .store(elem);
        Some(())
    }

    /// Publishes the used index (release: the elements before it are visible first).
    fn publish_used(&self, idx: u16) -> Option<()> {
        self.used.store(idx.to_le(), 2, Ordering::Release).ok()
    }

    /// The driver's `used_event` (only meaningful with `VIRTIO_RING_F_EVENT_IDX`).
    fn used_event(&self) -> Option<u16> {
        let off = RING_HEADER + 2 * usize::from(self.size);
        self.avail
            .load::<u16>(off, Ordering::Relaxed)
            .ok()
            .map(u16::from_le)
    }

    /// Whether the driver wants an interrupt now that the used index moved from `old` to
    /// `new` (as `virtio_queue::Queue::needs_notification`: with event index, when
    /// `used_event` lies in `[old, new)`; without it, always).
    pub fn needs_notification(&self, old: u16, new: u16) -> bool {
        if old == new {
            return false;
        }
        // The used ring writes before the read of the driver's event index.
        fence(Ordering::SeqCst);
        if !self.event_idx {
            return true;
        }
        match self.used_event() {
            Some(event) => new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old),
            None => true,
        }
    }

    /// Pops every available chain (also those made available meanwhile, up to a queue size
    /// of them in all) and hands each to `f` with its head index, advancing `q`'s next
    /// available index. Stops, logging, where the driver's index runs more than a queue size
    /// ahead (nothing is popped then, as `virtio_queue` refuses such an index too). Returns
    /// the chains popped. The cap bounds one pass: a driver that keeps publishing as fast as
    /// chains complete cannot keep the caller from looking at its stop flag.
    pub fn pop_each(&self, q: &mut Queue, mut f: impl FnMut(u16, Chain<'_, Self>)) -> usize {
        let mut next = Wrapping(q.next_avail());
        let mut n = 0;
        let mut avail = None;
        while n < usize::from(self.size) && !self.stopped() {
            // Look at the driver's index again only once the known entries are used up.
            let idx = match avail {
                Some(idx) if idx != next.0 => idx,
                _ => match self.avail_idx() {
                    Some(idx) if idx != next.0 => idx,
                    _ => break,
                },
            };
            if idx.wrapping_sub(next.0) > self.size {
                crate::devices::virtio::guest_fault(format_args!(
                    "virtio-blk: available index {idx} is more than {} ahead of {}",
                    self.size, next.0
                ));
                break;
            }
            avail = Some(idx);
            let Some(head) = self.avail_head(next.0) else {
                break;
            };
            next += 1;
            n += 1;
            f(head, self.chain(head));
        }
        q.set_next_avail(next.0);
        n
    }

    /// Pops every available chain, parses and runs it on this thread and puts it on the used
    /// ring. With event index, looks at the driver's `used_event` every
    /// [`NOTIFY_BATCH`] completions and before a request that is not a read or a write, and calls
    /// `interrupt` if the used index passed it, mid-pass: a driver refills the ring while the
    /// device works on the rest of it, instead of finding out only once the device has run
    /// dry. [`Pass::notify`] says whether the chains used since the last look (all of them
    /// without event index) want one.
    pub fn serve(
        &self,
        q: &mut Queue,
        mem: &GuestMemoryMmap,
        disk: &Disk,
        neg: Negotiated,
        mut interrupt: impl FnMut(),
    ) -> Pass {
        let mut checked = q.next_used();
        let mut used = checked;
        // One region cache for the whole batch: the buffers usually share a region.
        let mut look = request::Lookup::new(mem);
        let popped = self.pop_each(q, |head, chain| {
            let len = run_chain(&mut look, mem, chain, disk, neg, || {
                if self.event_idx && used != checked {
                    if self.needs_notification(checked, used) {
                        interrupt();
                    }
                    checked = used;
                }
            });
            // A head past the table (a chain that could not be parsed) has no used element
            // (`virtio_queue` refuses it too).
            if head < self.size && self.put_used(used, head, len).is_some() {
                used = used.wrapping_add(1);
                if self.publish_used(used).is_none() {
                    crate::devices::virtio::guest_fault(format_args!(
                        "virtio-blk: cannot publish used index {used}"
                    ));
                }
                // As QEMU and vhost: the window starts at the last check, not the last
                // interrupt (a driver that moved `used_event` back has seen those already).
                if self.event_idx && used.wrapping_sub(checked) >= NOTIFY_BATCH {
                    if self.needs_notification(checked, used) {
                        interrupt();
                    }
                    checked = used;
                }
            } else {
                crate::devices::virtio::guest_fault(format_args!(
                    "virtio-blk: no used element for head {head}"
                ));
            }
        });
        q.set_next_used(used);
        Pass {
            popped,
            notify: self.needs_notification(checked, used),
        }
    }
}

/// Parses and runs one chain on this thread; returns its used length. `before_long` runs
/// first where the request is not a read or a write (a flush, which may be a pool's commit, a
/// discard or write-zeroes of gigabytes: times no size bounds), so that the driver hears of
/// the requests already finished before they wait for this one. Reads and writes take a time
/// their size bounds, and a look before each would cost an interrupt per request.
fn run_chain(
    look: &mut request::Lookup<'_>,
    mem: &GuestMemoryMmap,
    chain: impl IntoIterator<Item = Descriptor>,
    disk: &Disk,
    neg: Negotiated,
    before_long: impl FnOnce(),
) -> u32 {
    match request::parse_in(look, chain) {
        Ok(req) => {
            if !matches!(req.kind, RequestType::In | RequestType::Out) {
                before_long();
            }
            req.execute_in(look, disk, neg).used_len
        }
        Err(e) => request::fail_parse(mem, e),
    }
}

/// A descriptor table: [`Rings`]' view of it, or [`TableInMemory`].
pub trait DescriptorTable {
    /// Descriptor `index`, if it is inside the table and readable.
    fn descriptor(&self, index: u16) -> Option<Descriptor>;
    /// Entries in the table (the queue size).
    fn size(&self) -> u16;
}

impl DescriptorTable for Rings<'_> {
    fn descriptor(&self, index: u16) -> Option<Descriptor> {
        Rings::descriptor(self, index)
    }
    fn size(&self) -> u16 {
        self.size
    }
}

/// A descriptor table read field by field through guest-memory accesses, wherever it lies
/// (across regions too): the slow path's.
#[derive(Debug)]
pub struct TableInMemory<'m> {
    mem: &'m GuestMemoryMmap,
    addr: GuestAddress,
    size: u16,
}

impl<'m> TableInMemory<'m> {
    /// `q`'s descriptor table in `mem`.
    pub fn of(mem: &'m GuestMemoryMmap, q: &Queue) -> Self {
        TableInMemory {
            mem,
            addr: GuestAddress(q.desc_table()),
            size: q.size(),
        }
    }
}

impl DescriptorTable for TableInMemory<'_> {
    fn descriptor(&self, index: u16) -> Option<Descriptor> {
        if index >= self.size {
            return None;
        }
        let at = self
            .addr
            .0
            .checked_add(DESC_LEN as u64 * u64::from(index))?;
        self.mem.read_obj(GuestAddress(at)).ok()
    }
    fn size(&self) -> u16 {
        self.size
    }
}

/// The descriptors of one chain; the same rules as `virtio_queue::DescriptorChain`: the
/// chain ends after at most the queue size of descriptors (loops), at a `next` index past the
/// table, or before the descriptor that would take it past 2^32 bytes. An indirect descriptor
/// ends it too (`VIRTIO_RING_F_INDIRECT_DESC` is not offered), where `DescriptorChain` would
/// follow it.
#[derive(Debug)]
pub struct Chain<'t, T> {
    table: &'t T,
    next: u16,
    ttl: u16,
    bytes: u32,
}

impl<'t, T: DescriptorTable> Chain<'t, T> {
    /// The chain starting at `head`.
    pub fn new(table: &'t T, head: u16) -> Self {
        Chain {
            table,
            next: head,
            ttl: table.size(),
            bytes: 0,
        }
    }
}

impl<T: DescriptorTable> Iterator for Chain<'_, T> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        if self.ttl == 0 {
            return None;
        }
        let d = self.table.descriptor(self.next)?;
        if d.flags() & F_INDIRECT != 0 {
            self.ttl = 0;
            return None;
        }
        self.bytes = self.bytes.checked_add(d.len())?;
        if d.flags() & F_NEXT != 0 {
            self.next = d.next();
            self.ttl -= 1;
        } else {
            self.ttl = 0;
        }
        Some(d)
    }
}

/// Serves every available chain of `q` on this thread: through [`Rings`] where the rings
/// allow it, else through `virtio_queue`'s accessors. Puts each chain on the used ring and
/// decides whether the driver wants an interrupt, as [`Rings::serve`] does (`interrupt` is
/// called mid-pass with event index).
pub fn serve_inline(
    mem: &GuestMemoryMmap,
    q: &mut Queue,
    disk: &Disk,
    neg: Negotiated,
    interrupt: impl FnMut(),
) -> Pass {
    serve_inline_until(mem, q, disk, neg, &AtomicBool::new(false), interrupt)
}

/// [`serve_inline`], popping no more chains once `stop` is set: a reset or shutdown then waits
/// for the request running, not for a queue's worth of them.
pub fn serve_inline_until(
    mem: &GuestMemoryMmap,
    q: &mut Queue,
    disk: &Disk,
    neg: Negotiated,
    stop: &AtomicBool,
    interrupt: impl FnMut(),
) -> Pass {
    match Rings::new(mem, q) {
        Some(rings) => rings.stopping_at(stop).serve(q, mem, disk, neg, interrupt),
        None => serve_through_queue(mem, q, disk, neg, stop, interrupt),
    }
}

/// [`serve_inline_until`] through `virtio_queue`'s own accessors, which cope with any ring
/// layout: the same chains, used elements and interrupts as [`Rings::serve`] (tests hold the
/// fast path to this one).
pub(crate) fn serve_through_queue(
    mem: &GuestMemoryMmap,
    q: &mut Queue,
    disk: &Disk,
    neg: Negotiated,
    stop: &AtomicBool,
    mut interrupt: impl FnMut(),
) -> Pass {
    let mut popped = 0;
    // Used elements put on the ring since the driver's wishes were last looked at (without
    // event index: in this pass).
    let mut unchecked = 0;
    let mut look = request::Lookup::new(mem);
    let table = TableInMemory::of(mem, q);
    // At most a queue size of chains per pass, as `Rings::pop_each`.
    while popped < usize::from(q.size()) && !stop.load(Ordering::Acquire) {
        let Some(chain) = q.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        // The chain's descriptors by the same rules as the fast path's, not by
        // `DescriptorChain`'s (which follows indirect tables).
        let len = run_chain(&mut look, mem, Chain::new(&table, head), disk, neg, || {
            if q.event_idx_enabled() && unchecked > 0 {
                unchecked = 0;
                if q.needs_notification(mem).unwrap_or(true) {
                    interrupt();
                }
            }
        });
        popped += 1;
        if let Err(e) = q.add_used(mem, head, len) {
            crate::devices::virtio::guest_fault(format_args!("virtio-blk: add_used({head}): {e}"));
            continue;
        }
        unchecked += 1;
        // The queue counts what was added since it was last asked, so this asks about those.
        if q.event_idx_enabled() && unchecked >= NOTIFY_BATCH {
            unchecked = 0;
            if q.needs_notification(mem).unwrap_or(true) {
                interrupt();
            }
        }
    }
    // Without event index: once, if anything was used; with it, for what came since the
    // last look.
    let notify = unchecked > 0 && q.needs_notification(mem).unwrap_or(true);
    Pass { popped, notify }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::test_utils::*;
    use virtio_bindings::virtio_blk::*;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    /// A queue of `size` (at most 64) at `start` holding the chains `descs` (from descriptor
    /// 0). The used ring goes to `start + 0x800`: the mock puts it on top of the end of the
    /// available ring (its `end()` counts entries, not bytes), `used_event` included.
    fn queue(m: &GuestMemoryMmap, start: u64, size: u16, descs: &[RawDescriptor]) -> Queue {
        assert!(size <= 64);
        let mq = MockSplitQueue::create(m, GuestAddress(start), size);
        mq.add_desc_chains(descs, 0).unwrap();
        let mut q: Queue = mq.create_queue().unwrap();
        q.set_used_ring_address(Some(start as u32 + 0x800), Some(0));
        q
    }

    fn used_elem(m: &GuestMemoryMmap, q: &Queue, i: u64) -> (u32, u32) {
        let at = GuestAddress(q.used_ring() + 4 + 8 * i);
        let id: u32 = m.read_obj(at).unwrap();
        let len: u32 = m.read_obj(GuestAddress(at.0 + 4)).unwrap();
        (id, len)
    }

    fn used_idx(m: &GuestMemoryMmap, q: &Queue) -> u16 {
        m.read_obj(GuestAddress(q.used_ring() + 2)).unwrap()
    }

    fn status(m: &GuestMemoryMmap, at: u64) -> u8 {
        m.read_obj(GuestAddress(at)).unwrap()
    }

    #[test]
    fn serves_chains_through_the_rings() {
        let m = mem();
        let (_k, disk) = disk(Kind::Raw, false);
        header(&m, HDR, VIRTIO_BLK_T_OUT, 2);
        header(&m, HDR + 16, VIRTIO_BLK_T_IN, 2);
        m.write_slice(&[7u8; 512], GuestAddress(BUF)).unwrap();
        let mut q = queue(
            &m,
            0,
            16,
            &[
                linked(HDR, 16, 0, Some(1)),
                linked(BUF, 512, 0, Some(2)),
                linked(ST, 1, WRITE, None),
                linked(HDR + 16, 16, 0, Some(4)),
                linked(BUF + 0x1000, 512, WRITE, Some(5)),
                linked(ST + 1, 1, WRITE, None),
            ],
        );
        let rings = Rings::new(&m, &q).expect("fast path");
        let pass = rings.serve(&mut q, &m, &disk, ALL, || {});
        assert_eq!(pass.popped, 2);
        assert!(pass.notify, "no event index: always notify");
        assert_eq!((q.next_avail(), q.next_used()), (2, 2));
        assert_eq!(used_idx(&m, &q), 2);
        assert_eq!(used_elem(&m, &q, 0), (0, 1));
        assert_eq!(used_elem(&m, &q, 1), (3, 513));
        assert_eq!((status(&m, ST), status(&m, ST + 1)), (OK, OK));
        let mut back = [0u8; 512];
        m.read_slice(&mut back, GuestAddress(BUF + 0x1000)).unwrap();
        assert_eq!(back, [7u8; 512]);
        // Nothing more: an empty pass.
        let pass = rings.serve(&mut q, &m, &disk, ALL, || {});
        assert_eq!(pass, Pass::default());
    }

    #[test]
    fn event_idx_decides_notifications() {
        let m = mem();
        let (_k, disk) = disk(Kind::Raw, false);
        // Small reads: none of them makes the device look before it runs.
        header(&m, HDR, VIRTIO_BLK_T_IN, 0);
        let n = NOTIFY_BATCH + 4;
        let chains: Vec<RawDescriptor> = (0..n)
            .flat_map(|i| {
                [
                    linked(HDR, 16, 0, Some(3 * i + 1)),
                    linked(BUF, 512, WRITE, Some(3 * i + 2)),
                    linked(ST + u64::from(i), 1, WRITE, None),
                ]
            })
            .collect();
        // For each `used_event`: the used indices at which the pass interrupted, and whether
        // it asks for one at its end.
        let cases: [(u16, &[u16], bool); 3] = [
            // Past the pass: no interrupt at all.
            (n + 1, &[], false),
            // Passed by the first look, NOTIFY_BATCH chains in: the interrupt comes mid-pass,
            // while the rest are still to run (the driver refills meanwhile); none at the end.
            (1, &[NOTIFY_BATCH], false),
            // Passed after the last look: the end of the pass asks for it.
            (NOTIFY_BATCH + 1, &[], true),
        ];
        for (k, (event, raised, at_end)) in cases.into_iter().enumerate() {
            let mut q = queue(&m, 0x8000 * k as u64, 64, &chains);
            q.set_event_idx(true);
            m.write_obj(event, GuestAddress(q.avail_ring() + 4 + 2 * 64))
                .unwrap();
            let used_ring = q.used_ring();
            let mut raised_at = Vec::new();
            let pass = serve_inline(&m, &mut q, &disk, ALL, || {
                raised_at.push(m.read_obj::<u16>(GuestAddress(used_ring + 2)).unwrap())
            });
            assert_eq!(raised_at, raised, "used_event {event}");
            assert_eq!(
                pass,
                Pass {
                    popped: usize::from(n),
                    notify: at_end
                },
                "used_event {event}"
            );
        }
        // Without event index: no interrupt mid-pass, one at its end.
        let mut q = queue(&m, 0x18000, 64, &chains);
        let mut raised = 0;
        let pass = serve_inline(&m, &mut q, &disk, ALL, || raised += 1);
        assert_eq!((raised, pass.notify), (0, true));
    }

    /// Before a request that is not a read or a write (a flush) runs, the driver hears of the ones
    /// already finished, however few; on both paths.
    #[test]
    fn a_long_request_does_not_hold_back_finished_ones() {
        let m = mem();
        let (_k, disk) = disk(Kind::Raw, false);
        header(&m, HDR, VIRTIO_BLK_T_IN, 0);
        header(&m, HDR + 16, VIRTIO_BLK_T_FLUSH, 0);
        // read, read, flush, read
        let mut chains = Vec::new();
        for i in 0..4u16 {
            let d = chains.len() as u16;
            if i == 2 {
                chains.push(linked(HDR + 16, 16, 0, Some(d + 1)));
            } else {
                chains.push(linked(HDR, 16, 0, Some(d + 1)));
                chains.push(linked(BUF, 512, WRITE, Some(d + 2)));
            }
            chains.push(linked(ST + u64::from(i), 1, WRITE, None));
        }
        for fast in [true, false] {
            let mut q = queue(&m, if fast { 0 } else { 0x8000 }, 16, &chains);
            q.set_event_idx(true);
            m.write_obj(0u16, GuestAddress(q.avail_ring() + 4 + 2 * 16))
                .unwrap();
            let used_ring = q.used_ring();
            let mut raised_at = Vec::new();
            let raise = || raised_at.push(m.read_obj::<u16>(GuestAddress(used_ring + 2)).unwrap());
            let pass = if fast {
                Rings::new(&m, &q)
                    .expect("fast path")
                    .serve(&mut q, &m, &disk, ALL, raise)
            } else {
                serve_through_queue(&m, &mut q, &disk, ALL, &AtomicBool::new(false), raise)
            };
            assert_eq!(raised_at, [2], "fast path {fast}");
            assert_eq!(
                pass,
                Pass {
                    popped: 4,
                    notify: false
                },
                "fast path {fast}"
            );
        }
    }

    #[test]
    fn desc_table_across_two_regions_takes_the_slow_path() {
        // Two adjacent regions; the descriptor table straddles their boundary.
        let m = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), MEM_SIZE - 0x1000),
        ])
        .unwrap();
        let (_k, disk) = disk(Kind::Raw, false);
        header(&m, HDR, VIRTIO_BLK_T_IN, 0);
        let mq = MockSplitQueue::create(&m, GuestAddress(0x1000 - 0x80), 16);
        mq.build_desc_chain(&[desc(HDR, 16, 0), desc(BUF, 512, WRITE), desc(ST, 1, WRITE)])
            .unwrap();
        let mut q: Queue = mq.create_queue().unwrap();
        q.set_used_ring_address(Some(0x2000), Some(0));
        assert!(Rings::new(&m, &q).is_none());
        // virtio-queue's accessors serve it all the same.
        m.write_obj(0xaau8, GuestAddress(ST)).unwrap();
        let pass = serve_inline(&m, &mut q, &disk, ALL, || {});
        assert_eq!(
            pass,
            Pass {
                popped: 1,
                notify: true
            }
        );
        assert_eq!(status(&m, ST), OK);
        assert_eq!(used_elem(&m, &q, 0), (0, 513));
        assert_eq!(used_idx(&m, &q), 1);
    }

    #[test]
    fn rings_outside_memory_or_misaligned_take_the_slow_path() {
        let m = mem();
        let mut q = queue(&m, 0, 16, &[]);
        q.set_used_ring_address(Some(MEM_SIZE as u32 - 8), Some(0));
        assert!(Rings::new(&m, &q).is_none());
        let mut q = queue(&m, 0, 16, &[]);
        q.set_desc_table_address(Some(MEM_SIZE as u32 - 16 * 8), Some(0));
        assert!(Rings::new(&m, &q).is_none());
        let mut q = queue(&m, 0, 16, &[]);
        q.set_ready(false);
        assert!(Rings::new(&m, &q).is_none());
    }

    #[test]
    fn next_index_out_of_range_ends_the_chain() {
        let m = mem();
        let (_k, disk) = disk(Kind::Raw, false);
        header(&m, HDR, VIRTIO_BLK_T_IN, 0);
        m.write_obj(0xaau8, GuestAddress(ST)).unwrap();
        // Header -> descriptor 200 of a 16-entry table.
        let mut q = queue(&m, 0, 16, &[linked(HDR, 16, 0, Some(200))]);
        let rings = Rings::new(&m, &q).unwrap();
        assert_eq!(rings.chain(0).count(), 1);
        assert!(rings.descriptor(16).is_none());
        let pass = rings.serve(&mut q, &m, &disk, ALL, || {});
        // No status byte: the chain is returned with nothing written.
        assert_eq!(pass.popped, 1);
        assert_eq!(used_elem(&m, &q, 0), (0, 0));
        assert_eq!(status(&m, ST), 0xaa);
    }

    #[test]
    fn head_out_of_range_gets_no_used_element() {
        let m = mem();
        let (_k, disk) = disk(Kind::Raw, false);
        let mut q = queue(&m, 0, 16, &[]);
        // One available entry naming head 100.
        m.write_obj(100u16, GuestAddress(q.avail_ring() + 4))
            .unwrap();
        m.write_obj(1u16, GuestAddress(q.avail_ring() + 2)).unwrap();
        let rings = Rings::new(&m, &q).unwrap();
        assert_eq!(rings.chain(100).count(), 0);
        let pass = rings.serve(&mut q, &m, &disk, ALL, || {});
        assert_eq!(
            pass,
            Pass {
                popped: 1,
                notify: false
            }
        );
        assert_eq!((q.next_avail(), q.next_used()), (1, 0));
        assert_eq!(used_idx(&m, &q), 0);
    }

    #[test]
    fn loops_terminate() {
        let m = mem();
        let (_k, disk) = disk(Kind::Raw, false);
        header(&m, HDR, VIRTIO_BLK_T_IN, 0);
        // 0 -> 1 -> 0 -> ...: the chain ends after the queue size of descriptors; the last one
        // seen is writable, so the error status lands in the guest's own buffer.
        let mut q = queue(
            &m,
            0,
            16,
            &[
                linked(HDR, 16, 0, Some(1)),
                linked(BUF, 512, WRITE, Some(0)),
            ],
        );
        let rings = Rings::new(&m, &q).unwrap();
        assert_eq!(rings.chain(0).count(), 16);
        let pass = rings.serve(&mut q, &m, &disk, ALL, || {});
        assert_eq!(pass.popped, 1);
        assert_eq!(used_elem(&m, &q, 0), (0, 1));
        assert_eq!(status(&m, BUF + 511), IOERR);
        // A self-loop.
        let q = queue(&m, 0, 16, &[linked(HDR, 16, 0, Some(0))]);
        let rings = Rings::new(&m, &q).unwrap();
        assert_eq!(rings.chain(0).count(), 16);
    }

    #[test]
    fn oversized_chains_end_early() {
        let m = mem();
        let (_k, disk) = disk(Kind::Raw, false);
        header(&m, HDR, VIRTIO_BLK_T_IN, 0);
        m.write_obj(0xaau8, GuestAddress(ST)).unwrap();
        // Over 2^32 bytes in all: the chain ends before the descriptor that passes it.
        let mut q = queue(
            &m,
            0,
            16,
            &[
                linked(HDR, 16, 0, Some(1)),
                linked(BUF, u32::MAX, WRITE, Some(2)),
                linked(ST, 1, WRITE, None),
            ],
        );
        let rings = Rings::new(&m, &q).unwrap();
        assert_eq!(rings.chain(0).count(), 1);
        let pass = rings.serve(&mut q, &m, &disk, ALL, || {});
        assert_eq!(pass.popped, 1);
        assert_eq!(used_elem(&m, &q, 0), (0, 0));
        assert_eq!(status(&m, ST), 0xaa);
        // More descriptors than fit inline (16), up to the queue size: served.
        let n = 40u16;
        let mut descs = vec![linked(HDR, 16, 0, Some(1))];
        for i in 1..n - 1 {
            descs.push(linked(BUF + 512 * u64::from(i), 512, WRITE, Some(i + 1)));
        }
        descs.push(linked(ST, 1, WRITE, None));
        let mut q = queue(&m, 0, 64, &descs);
        let rings = Rings::new(&m, &q).unwrap();
        assert_eq!(rings.chain(0).count(), usize::from(n));
        rings.serve(&mut q, &m, &disk, ALL, || {});
        assert_eq!(used_elem(&m, &q, 0), (0, 512 * u32::from(n - 2) + 1));
        assert_eq!(status(&m, ST), OK);
    }

    #[test]
    fn indirect_descriptors_end_the_chain() {
        let m = mem();
        let q = queue(
            &m,
            0,
            16,
            &[linked(HDR, 16, 0, Some(1)), linked(BUF, 32, 4, None)],
        );
        let rings = Rings::new(&m, &q).unwrap();
        assert_eq!(rings.chain(0).count(), 1);
    }

    /// A hostile driver that publishes a new chain each time one is popped cannot keep a
    /// pass going: it ends after a queue size of chains (the device thread then looks at its
    /// stop flag before the next pass).
    #[test]
    fn a_driver_that_keeps_publishing_cannot_hold_a_pass() {
        let m = mem();
        let mut q = queue(
            &m,
            0,
            16,
            &[linked(HDR, 16, 0, Some(1)), linked(ST, 1, WRITE, None)],
        );
        let avail_idx = GuestAddress(q.avail_ring() + 2);
        let rings = Rings::new(&m, &q).expect("fast path");
        let mut calls = 0;
        let popped = rings.pop_each(&mut q, |head, _| {
            assert_eq!(head, 0, "every available entry names chain 0");
            calls += 1;
            if calls > 1000 {
                return; // the guest gives up (the test would hang without the cap)
            }
            let next: u16 = m.read_obj(avail_idx).unwrap();
            m.write_obj(next.wrapping_add(1), avail_idx).unwrap();
        });
        assert_eq!((popped, calls), (16, 16));
        assert_eq!(q.next_avail(), 16);
    }

    #[test]
    fn avail_index_too_far_ahead_pops_nothing() {
        let m = mem();
        let (_k, disk) = disk(Kind::Raw, false);
        let mut q = queue(&m, 0, 16, &[]);
        m.write_obj(17u16, GuestAddress(q.avail_ring() + 2))
            .unwrap();
        let pass = serve_inline(&m, &mut q, &disk, ALL, || {});
        assert_eq!(pass, Pass::default());
        assert_eq!(q.next_avail(), 0);
        // Wrapping around u16 is fine: 3 entries from 65534.
        q.set_next_avail(u16::MAX - 1);
        q.set_next_used(u16::MAX - 1);
        m.write_obj(1u16, GuestAddress(q.avail_ring() + 2)).unwrap();
        let pass = serve_inline(&m, &mut q, &disk, ALL, || {});
        assert_eq!(pass.popped, 3);
        assert_eq!((q.next_avail(), q.next_used()), (1, 1));
        assert_eq!(used_idx(&m, &q), 1);
    }
}
