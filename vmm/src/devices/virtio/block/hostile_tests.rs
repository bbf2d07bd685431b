//! Randomized hostile drivers: descriptor tables, chains, headers and ring indices drawn at
//! random (biased towards the edges: lengths around the header and sector sizes, addresses
//! at and past the ends of memory regions, loops, links past the table, indirect flags),
//! served through both ring paths ([`ring::Rings`], and [`ring::serve_through_queue`] with
//! `virtio_queue`'s accessors, taken when a ring straddles two regions). Whatever the guest
//! writes, the device must not panic, must end every pass, must put only heads inside the
//! table on the used ring, and must write guest memory only where a device-writable
//! descriptor or the used ring allows it; and the fast path must do exactly what the slow one
//! does with the same rings. The real device
//! (queue thread, workers) behind its MMIO registers takes random register writes too, and
//! must work for a well-behaved driver after a reset.

use super::request::{Disk, Negotiated};
use super::ring;
use super::test_utils::*;
use super::{Block, BlockOptions};
use crate::devices::virtio::mmio::MmioTransport;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zvol::{BackendInfo, BlockBackend};

/// Queue size of every round.
const SIZE: u16 = 16;
/// Guest memory: two adjacent regions, so that buffers and rings can straddle them.
const REGION: u64 = 0x8000;
/// Where the rings go when they are in one region (the fast path).
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;
/// Where the descriptor table goes to straddle the two regions (the `virtio_queue` path).
const DESC_STRADDLING: u64 = REGION - 0x80;
/// Where used elements, the used index and `avail_event` may be written.
fn used_range(size: u16) -> (u64, u64) {
    (USED, USED + 4 + 8 * u64::from(size) + 2)
}

/// An address: mostly inside memory, often at a region's edge, sometimes outside.
fn addr(rng: &mut SmallRng) -> u64 {
    match rng.gen_range(0..10) {
        0 => REGION - rng.gen_range(0..32),
        1 => 2 * REGION - rng.gen_range(0..32),
        2 => 2 * REGION + rng.gen_range(0..0x1000),
        3 => u64::MAX - rng.gen_range(0..0x100),
        _ => rng.gen_range(0x300..2 * REGION),
    }
}

/// A length: mostly around the sizes the parser cares about.
fn len(rng: &mut SmallRng) -> u32 {
    match rng.gen_range(0..10) {
        0 => 0,
        1 => 1,
        2 => rng.gen_range(15..=17),
        3 => 512,
        4 => 4096,
        5 => u32::MAX - rng.gen_range(0..2),
        6 => rng.gen_range(0..0x2_0000),
        _ => 512 * rng.gen_range(1..9) + rng.gen_range(0..2),
    }
}

/// A request header at `at`: a known type (or not) and a sector in range (or not).
fn header_at(m: &GuestMemoryMmap, at: u64, rng: &mut SmallRng) {
    let kinds = [
        VIRTIO_BLK_T_IN,
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_FLUSH,
        VIRTIO_BLK_T_GET_ID,
        VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
        rng.gen(),
    ];
    let kind = kinds[rng.gen_range(0..kinds.len())];
    let sectors = DISK_SIZE / 512;
    let sector = match rng.gen_range(0..4) {
        0 => sectors - rng.gen_range(0..3),
        1 => rng.gen(),
        _ => rng.gen_range(0..sectors),
    };
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    // Headers may straddle regions or lie outside memory: those writes just fail.
    let _ = m.write_slice(&h, GuestAddress(at));
}

/// Fills the table at `desc` with random descriptors (and the headers they may point at, written
/// first, so that the table is what it says even where a header lands on it), and the rings as
/// a queue whose indices are at `start` with random chains published ([`Avail::random`]).
fn hostile_queue(m: &GuestMemoryMmap, desc: u64, start: u16, rng: &mut SmallRng) {
    let mut table = Vec::new();
    for _ in 0..SIZE {
        let (a, l) = (addr(rng), len(rng));
        let mut flags = 0u16;
        if rng.gen_bool(0.6) {
            flags |= 1; // NEXT
        }
        if rng.gen_bool(0.5) {
            flags |= 2; // WRITE
        }
        if rng.gen_bool(0.05) {
            flags |= 4; // INDIRECT
        }
        let next: u16 = if rng.gen_bool(0.9) {
            rng.gen_range(0..SIZE)
        } else {
            rng.gen()
        };
        if flags & 2 == 0 && rng.gen_bool(0.7) {
            header_at(m, a, rng);
        }
        table.push((a, l, flags, next));
    }
    // Some well-formed chains (header, data, status) with hostile buffers, so that requests
    // also get through to the disk.
    for first in (0..SIZE - 2).step_by(3) {
        if rng.gen_bool(0.5) {
            let h = addr(rng);
            let read = rng.gen_bool(0.5);
            if rng.gen_bool(0.8) {
                let kind = if read {
                    VIRTIO_BLK_T_IN
                } else {
                    VIRTIO_BLK_T_OUT
                };
                let sector = rng.gen_range(0..DISK_SIZE / 512 - 8);
                let mut hdr = [0u8; 16];
                hdr[..4].copy_from_slice(&kind.to_le_bytes());
                hdr[8..].copy_from_slice(&sector.to_le_bytes());
                // Past the end of memory this write fails, as the device's read will.
                let _ = m.write_slice(&hdr, GuestAddress(h));
            } else {
                header_at(m, h, rng);
            }
            let data_flags = if read ^ rng.gen_bool(0.1) { 1 | 2 } else { 1 };
            let data_len = if rng.gen_bool(0.7) {
                512 * rng.gen_range(1..9)
            } else {
                len(rng)
            };
            table[usize::from(first)] = (h, 16, 1, first + 1);
            table[usize::from(first) + 1] = (addr(rng), data_len, data_flags, first + 2);
            table[usize::from(first) + 2] = (addr(rng), 1, 2, 0);
        }
    }
    // No device-writable buffer on the table itself: a status byte landing there would change
    // descriptors mid-pass (as a guest may do to itself), and what those transient descriptors
    // allowed could not be checked afterwards.
    let table_end = desc + 16 * u64::from(SIZE);
    for (a, l, flags, _) in table.iter_mut() {
        if *flags & 2 != 0 && *a < table_end && desc < a.saturating_add(u64::from(*l)) {
            *a = table_end.max(0x300);
        }
    }
    let bytes: Vec<u8> = table
        .iter()
        .flat_map(|&(a, l, flags, next)| {
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&a.to_le_bytes());
            d[8..12].copy_from_slice(&l.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..].copy_from_slice(&next.to_le_bytes());
            d
        })
        .collect();
    m.write_slice(&bytes, GuestAddress(desc)).unwrap();
    // The device's used ring starts empty, at `start`.
    m.write_obj(0u16, GuestAddress(USED)).unwrap();
    m.write_obj(start, GuestAddress(USED + 2)).unwrap();
    Avail::random(start, rng).write(m);
}

/// What a driver publishes: heads in every slot of the available ring, the available index
/// and `used_event`.
struct Avail {
    heads: Vec<u16>,
    idx: u16,
    used_event: u16,
}

impl Avail {
    /// Random heads (mostly the starts of well-formed chains or inside the table), an index up
    /// to a queue ahead of `next` (sometimes anything) and a `used_event` mostly inside the
    /// next pass, so that mid-pass interrupts happen.
    fn random(next: u16, rng: &mut SmallRng) -> Avail {
        let heads = (0..SIZE)
            .map(|_| match rng.gen_range(0..10) {
                0 => rng.gen(),
                1..=5 => 3 * rng.gen_range(0..SIZE / 3),
                _ => rng.gen_range(0..SIZE),
            })
            .collect();
        let idx = match rng.gen_range(0..4) {
            0 => rng.gen(),
            _ => next.wrapping_add(rng.gen_range(0..=SIZE)),
        };
        let used_event = if rng.gen_bool(0.7) {
            next.wrapping_add(rng.gen_range(0..SIZE))
        } else {
            rng.gen()
        };
        Avail {
            heads,
            idx,
            used_event,
        }
    }

    fn write(&self, m: &GuestMemoryMmap) {
        for (i, head) in self.heads.iter().enumerate() {
            m.write_obj(*head, GuestAddress(AVAIL + 4 + 2 * i as u64))
                .unwrap();
        }
        m.write_obj(self.idx, GuestAddress(AVAIL + 2)).unwrap();
        m.write_obj(
            self.used_event,
            GuestAddress(AVAIL + 4 + 2 * u64::from(SIZE)),
        )
        .unwrap();
    }
}

/// A ring index to start from: often just before the 16-bit indices wrap.
fn start_index(rng: &mut SmallRng) -> u16 {
    if rng.gen_bool(0.5) {
        u16::MAX - rng.gen_range(0..2 * SIZE)
    } else {
        rng.gen()
    }
}

/// The device-writable ranges of the descriptor table at `desc` in `image` (a snapshot).
fn writable_ranges(image: &[u8], desc: u64) -> Vec<(u64, u64)> {
    (0..usize::from(SIZE))
        .filter_map(|i| {
            let d = &image[desc as usize + 16 * i..][..16];
            let a = u64::from_le_bytes(d[..8].try_into().unwrap());
            let l = u32::from_le_bytes(d[8..12].try_into().unwrap());
            let flags = u16::from_le_bytes(d[12..14].try_into().unwrap());
            (flags & 2 != 0).then(|| (a, a.saturating_add(u64::from(l))))
        })
        .collect()
}

/// A test's random seed: `default`, or `TARN_HOSTILE_SEED` (decimal) to explore others; the
/// failure messages name it.
fn test_seed(default: u64) -> u64 {
    std::env::var("TARN_HOSTILE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Two-region guest memory full of random bytes.
fn noisy_memory(rng: &mut SmallRng) -> GuestMemoryMmap {
    let m = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .unwrap();
    // Random bytes everywhere, so that stray reads find garbage, not zeroes.
    let mut noise = vec![0u8; 2 * REGION as usize];
    rng.fill(&mut noise[..]);
    m.write_slice(&noise, GuestAddress(0)).unwrap();
    m
}

/// A ready queue whose descriptor table is at `desc` and whose indices are at `start`.
fn ready_queue(desc: u64, start: u16, event_idx: bool) -> Queue {
    let mut q = Queue::new(SIZE).unwrap();
    q.set_next_avail(start);
    q.set_next_used(start);
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q
}

fn snapshot(m: &GuestMemoryMmap) -> Vec<u8> {
    let mut v = vec![0u8; 2 * REGION as usize];
    m.read_slice(&mut v, GuestAddress(0)).unwrap();
    v
}

#[test]
fn random_hostile_queues_never_break_the_device() {
    let kinds = [(Kind::Raw, false), (Kind::Pool, false), (Kind::Raw, true)];
    let disks: Vec<_> = kinds.iter().map(|&(k, ro)| disk(k, ro)).collect();
    let seed = test_seed(0x4057_11e5);
    let mut rng = SmallRng::seed_from_u64(seed);
    let (mut fast, mut slow, mut used_total, mut data_in) = (0, 0, 0u64, 0u64);
    for round in 0..1500 {
        let m = noisy_memory(&mut rng);
        let straddle = rng.gen_bool(0.3);
        let desc = if straddle { DESC_STRADDLING } else { DESC };
        let start = start_index(&mut rng);
        hostile_queue(&m, desc, start, &mut rng);
        let mut q = ready_queue(desc, start, rng.gen_bool(0.5));
        if ring::Rings::new(&m, &q).is_some() {
            fast += 1;
        } else {
            slow += 1;
        }
        let before = snapshot(&m);
        let neg = Negotiated {
            discard: rng.gen(),
            write_zeroes: rng.gen(),
        };
        let (_, d) = &disks[round % disks.len()];
        let pass = ring::serve_inline_until(&m, &mut q, d, neg, &AtomicBool::new(false), || {});
        assert!(
            pass.popped <= usize::from(SIZE),
            "seed {seed:#x}, round {round}: {pass:?}"
        );

        let after = snapshot(&m);
        let (used_lo, used_hi) = used_range(SIZE);
        let writable = writable_ranges(&before, desc);
        assert_eq!(
            writable,
            writable_ranges(&after, desc),
            "seed {seed:#x}, round {round}: the table changed"
        );
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            let at = i as u64;
            let allowed = (used_lo..used_hi).contains(&at)
                || writable.iter().any(|&(lo, hi)| (lo..hi).contains(&at));
            assert!(
                b == a || allowed,
                "seed {seed:#x}, round {round}: the device wrote {at:#x}, which no device-writable \
                 descriptor covers"
            );
        }
        let used: u16 = m.read_obj(GuestAddress(USED + 2)).unwrap();
        let n = used.wrapping_sub(start);
        assert!(
            usize::from(n) <= pass.popped,
            "seed {seed:#x}, round {round}: {n} used of {pass:?}"
        );
        for k in 0..n {
            let pos = u64::from(start.wrapping_add(k) % SIZE);
            let id: u32 = m.read_obj(GuestAddress(USED + 4 + 8 * pos)).unwrap();
            assert!(
                id < u32::from(SIZE),
                "seed {seed:#x}, round {round}: used head {id}"
            );
            // More than the status byte written: a read (or GET_ID) that succeeded.
            let len: u32 = m.read_obj(GuestAddress(USED + 8 + 8 * pos)).unwrap();
            data_in += u64::from(len > 1);
        }
        used_total += u64::from(n);
    }
    // The generator reaches both paths and gets requests through, not only rejections.
    assert!(fast > 500 && slow > 200, "fast {fast}, slow {slow}");
    assert!(used_total > 1000, "{used_total} chains used");
    assert!(data_in > 100, "{data_in} chains read data");
}

#[test]
fn the_fast_path_does_what_virtio_queue_does() {
    // Pairs of identical disks, one for each path: they stay identical as long as both paths
    // send the same requests.
    let twin = |kind| {
        let (keep, b) = backend(kind, false);
        (keep, Arc::new(Disk::new(Arc::new(Twin(b)), false)))
    };
    let pairs = [
        (twin(Kind::Raw), twin(Kind::Raw)),
        (twin(Kind::Pool), twin(Kind::Pool)),
    ];
    let seed = test_seed(0xfa57_9a7e);
    let mut rng = SmallRng::seed_from_u64(seed);
    let stop = AtomicBool::new(false);
    let (mut interrupts, mut wrapped) = (0, false);
    for round in 0..1000 {
        let fast_mem = noisy_memory(&mut rng);
        let start = start_index(&mut rng);
        hostile_queue(&fast_mem, DESC, start, &mut rng);
        let slow_mem = noisy_memory(&mut rng);
        slow_mem
            .write_slice(&snapshot(&fast_mem), GuestAddress(0))
            .unwrap();
        let event_idx = rng.gen_bool(0.5);
        let mut fast_q = ready_queue(DESC, start, event_idx);
        let mut slow_q = ready_queue(DESC, start, event_idx);
        let neg = Negotiated {
            discard: rng.gen(),
            write_zeroes: rng.gen(),
        };
        let ((_, fast_disk), (_, slow_disk)) = &pairs[round % pairs.len()];
        // Several passes, the driver publishing more between them: the windows of the event
        // index carry over from one pass to the next.
        for pass in 0..3 {
            if pass > 0 {
                let avail = Avail::random(fast_q.next_avail(), &mut rng);
                avail.write(&fast_mem);
                avail.write(&slow_mem);
            }
            let rings = ring::Rings::new(&fast_mem, &fast_q).expect("the fast path");
            let mut fast_raised = Vec::new();
            let fast = rings.serve(&mut fast_q, &fast_mem, fast_disk, neg, || {
                fast_raised.push(fast_mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap())
            });
            let mut slow_raised = Vec::new();
            let slow =
                ring::serve_through_queue(&slow_mem, &mut slow_q, slow_disk, neg, &stop, || {
                    slow_raised.push(slow_mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap())
                });
            let at = format!("seed {seed:#x}, round {round}, pass {pass}");
            assert_eq!(fast, slow, "{at}");
            assert_eq!(fast_raised, slow_raised, "{at}");
            assert_eq!(
                (fast_q.next_avail(), fast_q.next_used()),
                (slow_q.next_avail(), slow_q.next_used()),
                "{at}"
            );
            let (f, s) = (snapshot(&fast_mem), snapshot(&slow_mem));
            if let Some(i) = (0..f.len()).find(|&i| f[i] != s[i]) {
                panic!(
                    "{at}: the paths left guest memory different at {i:#x}: {:#x} against {:#x}",
                    f[i], s[i]
                );
            }
            interrupts += fast_raised.len();
            wrapped |= fast_q.next_used() < start;
        }
    }
    assert!(wrapped, "no pass took the used index across 65535");
    assert!(interrupts > 0, "no mid-pass interrupt was compared");
    for ((_, a), (_, b)) in &pairs {
        let (mut x, mut y) = (vec![0u8; DISK_SIZE as usize], vec![0u8; DISK_SIZE as usize]);
        a.backend().read_at(0, &mut x).unwrap();
        b.backend().read_at(0, &mut y).unwrap();
        assert!(x == y, "the disks written through the two paths differ");
    }
}

/// A backend with the ID its twin has (GET_ID answers the same on both paths).
struct Twin(Arc<dyn BlockBackend>);

impl BlockBackend for Twin {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            id: "twin".into(),
            ..self.0.info()
        }
    }
    fn read_vectored(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> zvol::Result<()> {
        self.0.read_vectored(offset, bufs)
    }
    fn write_vectored(&self, offset: u64, bufs: &[IoSlice<'_>]) -> zvol::Result<()> {
        self.0.write_vectored(offset, bufs)
    }
    fn flush(&self) -> zvol::Result<()> {
        self.0.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> zvol::Result<()> {
        self.0.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> zvol::Result<()> {
        self.0.write_zeroes(offset, len)
    }
}

/// Register offsets a driver writes, for the random register writes below.
const REGISTERS: [u32; 15] = [
    VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_INTERRUPT_ACK,
    VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_QUEUE_DESC_LOW,
    VIRTIO_MMIO_QUEUE_DESC_HIGH,
    VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
    VIRTIO_MMIO_QUEUE_USED_LOW,
    VIRTIO_MMIO_QUEUE_USED_HIGH,
];

/// What a well-behaved driver does, with queue 0 of [`SIZE`] at the usual ring addresses.
fn bring_up(t: &mut MmioTransport) -> u32 {
    t.start_as_driver(SIZE, DESC, AVAIL, USED)
}

/// One register write a hostile driver might make: a known register (or any offset) with a
/// value that is often meaningful there (a status bit, a ring address, a queue size).
fn random_write(t: &mut MmioTransport, m: &GuestMemoryMmap, rng: &mut SmallRng) {
    match rng.gen_range(0..12) {
        0 => {
            bring_up(t);
        }
        1 => {
            // Hostile chains behind the usual rings, and a kick.
            hostile_queue(m, DESC, start_index(rng), rng);
            t.write_reg(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        }
        2 => t.write_reg(VIRTIO_MMIO_STATUS, 0),
        3 => {
            // Any offset, config space included, any width.
            let off = rng.gen_range(0..0x140u64);
            let len = [1, 2, 4, 8][rng.gen_range(0..4)];
            let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            t.write(off, &bytes);
        }
        4 => {
            let off = rng.gen_range(0..0x140u64);
            let mut buf = [0u8; 4];
            t.read(off, &mut buf[..[1, 2, 4][rng.gen_range(0..3)]]);
        }
        _ => {
            let reg = REGISTERS[rng.gen_range(0..REGISTERS.len())];
            let v = match rng.gen_range(0..6) {
                0 => rng.gen(),
                1 => 1 << rng.gen_range(0..32),
                2 => rng.gen_range(0..=0xff),
                3 => rng.gen_range(0..=2 * REGION as u32),
                4 => u32::from(SIZE) << rng.gen_range(0..5),
                _ => 0,
            };
            t.write_reg(reg, v);
        }
    }
}

/// Waits (a bounded while) until the used index reaches `idx`.
fn wait_used_idx(m: &GuestMemoryMmap, idx: u16, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // Acquire: what the device wrote before the index (the status byte) is visible after it.
    while u16::from_le(m.load(GuestAddress(USED + 2), Ordering::Acquire).unwrap()) != idx {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: the device hung"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn random_register_writes_then_a_reset_leave_a_working_device() {
    let seed = test_seed(0x3e61_57e5);
    let mut rng = SmallRng::seed_from_u64(seed);
    for round in 0..40 {
        let workers = [0, 2][round % 2];
        let (_keep, disk) = disk(Kind::Raw, false);
        let m = noisy_memory(&mut rng);
        let options = BlockOptions {
            workers,
            ..BlockOptions::default()
        };
        let dev = Block::new("hostile", disk, options);
        let mut t = MmioTransport::new(m.clone(), Box::new(dev)).unwrap();
        for _ in 0..150 {
            random_write(&mut t, &m, &mut rng);
        }
        // A reset, then a driver that behaves: a write and a read back of 4 KiB.
        t.write_reg(VIRTIO_MMIO_STATUS, 0);
        m.write_slice(&[0u8; 0x300], GuestAddress(0)).unwrap();
        let status = bring_up(&mut t);
        let what = format!("seed {seed:#x}, round {round}, {workers} workers");
        assert_eq!(status & VIRTIO_CONFIG_S_NEEDS_RESET, 0, "{what}");
        let pattern: Vec<u8> = (0..4096u32)
            .map(|i| (i * 31 + round as u32) as u8)
            .collect();
        let (hdr, data, back, status) = (0x1000u64, 0x2000u64, 0x4000u64, 0x3000u64);
        m.write_slice(&pattern, GuestAddress(data)).unwrap();
        for (i, (kind, buf, flags)) in [
            (VIRTIO_BLK_T_OUT, data, 0u16),
            (VIRTIO_BLK_T_IN, back, 2u16),
        ]
        .into_iter()
        .enumerate()
        {
            let i = i as u64;
            header(&m, hdr + 16 * i, kind, 8);
            let chain = [
                (hdr + 16 * i, 16u32, 1u16, 3 * i as u16 + 1),
                (buf, 4096, flags | 1, 3 * i as u16 + 2),
                (status + i, 1, 2, 0),
            ];
            for (k, (a, l, f, n)) in chain.into_iter().enumerate() {
                let at = DESC + 16 * (3 * i + k as u64);
                m.write_obj(a, GuestAddress(at)).unwrap();
                m.write_obj(l, GuestAddress(at + 8)).unwrap();
                m.write_obj(f, GuestAddress(at + 12)).unwrap();
                m.write_obj(n, GuestAddress(at + 14)).unwrap();
            }
            m.write_obj(0xffu8, GuestAddress(status + i)).unwrap();
            m.write_obj(3 * i as u16, GuestAddress(AVAIL + 4 + 2 * i))
                .unwrap();
            // The chain before the index that publishes it (release).
            m.store(
                (i as u16 + 1).to_le(),
                GuestAddress(AVAIL + 2),
                Ordering::Release,
            )
            .unwrap();
            t.write_reg(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
            wait_used_idx(&m, i as u16 + 1, &what);
            assert_eq!(
                m.read_obj::<u8>(GuestAddress(status + i)).unwrap(),
                OK,
                "{what}"
            );
        }
        let mut got = vec![0u8; 4096];
        m.read_slice(&mut got, GuestAddress(back)).unwrap();
        assert!(got == pattern, "{what}: read back other data");
        t.shutdown();
    }
}
