//! One suite of block-backend tests, run against every backend: pool volumes (on an in-memory
//! pool and on a pool file), raw files with buffered I/O, and raw files with `O_DIRECT` on a
//! real disk (`/var/tmp`) and on tmpfs (`/dev/shm`, which may refuse it: the data must be
//! right either way).
//!
//! Set `TARN_TEST_BLOCK_DEVICE=/dev/...` to run the raw-file suite against a block device too
//! (its contents are destroyed), and `TARN_TEST_DIRECT_DIR=DIR` to run the direct raw-file
//! suite in another directory (a ramfs mount, say, which refuses `O_DIRECT`).

#![allow(clippy::unwrap_used)]

use pool::{ErrorKind, MemDevice, Pool, PoolConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::{IoSlice, IoSliceMut};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tempfile::TempDir;
use zvol::{BlockBackend, PoolVolume, RawFile, RawFileOptions, VolumeConfig};

/// Size of every backend under test (raw files: exactly; pool volumes: a block multiple).
const SIZE: u64 = 4 << 20;
const POOL_SIZE: u64 = 64 << 20;
const VOL: &str = "tank/vol";

fn config() -> PoolConfig {
    PoolConfig {
        sync_interval: None,
        ..PoolConfig::default()
    }
}

/// Something a backend can be opened on, and reopened after a simulated restart.
trait Subject {
    /// A new backend on the same storage.
    fn open(&self, read_only: bool) -> Box<dyn BlockBackend>;
    /// Closes everything and opens the storage again (callers drop their backends first).
    /// Only flushed data is sure to survive.
    fn restart(&mut self);
    /// Expected block size in `info()`.
    fn block_size(&self) -> u32;
}

/// A pool volume on an in-memory pool; a restart reopens the pool from the device's bytes.
struct PoolMem {
    dev: Arc<MemDevice>,
    pool: Option<Pool>,
    block_size: u32,
}

impl PoolMem {
    fn new(block_size: u32) -> Self {
        let dev = Arc::new(MemDevice::new(POOL_SIZE as usize));
        let pool = Pool::create_on(dev.clone(), "tank", config()).unwrap();
        let mut vc = VolumeConfig::new(SIZE);
        vc.block_size = block_size;
        let ds = vc.create(&pool, VOL).unwrap();
        assert_eq!(ds.size, SIZE);
        assert_eq!(ds.block_size, block_size);
        PoolMem {
            dev,
            pool: Some(pool),
            block_size,
        }
    }
}

impl Subject for PoolMem {
    fn open(&self, read_only: bool) -> Box<dyn BlockBackend> {
        Box::new(PoolVolume::open(self.pool.as_ref().unwrap(), VOL, read_only).unwrap())
    }
    fn restart(&mut self) {
        // The device's bytes before the pool is dropped (a drop commits) are what a power cut
        // would leave, MemDevice writes being immediately durable: only flushed data survives.
        let bytes = self.dev.snapshot();
        drop(self.pool.take());
        self.dev = Arc::new(MemDevice::from_bytes(bytes));
        self.pool = Some(Pool::open(self.dev.clone(), config()).unwrap());
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
}

/// A pool volume on a pool file in a temporary directory; a restart drops the pool (releasing
/// its lock) and reopens it with `Pool::open_path`.
struct PoolFile {
    _dir: TempDir,
    path: PathBuf,
    pool: Option<Pool>,
}

impl PoolFile {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.tarn");
        let pool = Pool::create_file(&path, "tank", POOL_SIZE, config()).unwrap();
        let mut vc = VolumeConfig::new(SIZE);
        vc.block_size = 4096;
        vc.create(&pool, VOL).unwrap();
        PoolFile {
            _dir: dir,
            path,
            pool: Some(pool),
        }
    }
}

impl Subject for PoolFile {
    fn open(&self, read_only: bool) -> Box<dyn BlockBackend> {
        Box::new(PoolVolume::open(self.pool.as_ref().unwrap(), VOL, read_only).unwrap())
    }
    fn restart(&mut self) {
        drop(self.pool.take());
        self.pool = Some(Pool::open_path(&self.path, config()).unwrap());
    }
    fn block_size(&self) -> u32 {
        4096
    }
}

/// A raw file (or, with `dir: None`, the block device named by `TARN_TEST_BLOCK_DEVICE`).
struct Raw {
    _dir: Option<TempDir>,
    path: PathBuf,
    direct: bool,
}

impl Raw {
    fn new(parent: Option<&Path>, direct: bool) -> Self {
        let dir = match parent {
            Some(p) => tempfile::Builder::new()
                .prefix("zvol-test")
                .tempdir_in(p)
                .unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let path = dir.path().join("disk.img");
        let f = RawFile::create(
            &path,
            SIZE,
            RawFileOptions {
                read_only: false,
                direct,
            },
        )
        .unwrap();
        assert_eq!(f.size(), SIZE);
        if direct {
            eprintln!("{}: O_DIRECT in effect: {}", path.display(), f.is_direct());
        }
        Raw {
            _dir: Some(dir),
            path,
            direct,
        }
    }

    /// The block device named by `TARN_TEST_BLOCK_DEVICE`, zeroed over the tested size.
    fn block_device(direct: bool) -> Option<Self> {
        let path = PathBuf::from(std::env::var_os("TARN_TEST_BLOCK_DEVICE")?);
        let r = Raw {
            _dir: None,
            path,
            direct,
        };
        let b = r.open(false);
        assert!(b.info().size >= SIZE, "the test block device is too small");
        b.write_zeroes(0, b.info().size).unwrap();
        Some(r)
    }

    fn open_raw(&self, read_only: bool) -> RawFile {
        RawFile::open(
            &self.path,
            RawFileOptions {
                read_only,
                direct: self.direct,
            },
        )
        .unwrap()
    }
}

impl Subject for Raw {
    fn open(&self, read_only: bool) -> Box<dyn BlockBackend> {
        Box::new(self.open_raw(read_only))
    }
    fn restart(&mut self) {}
    fn block_size(&self) -> u32 {
        4096
    }
}

/// The size a test works over (a block device may be larger than `SIZE`; only `SIZE` is used
/// except where the end matters).
fn size_of(b: &dyn BlockBackend) -> u64 {
    b.info().size
}

/// Deterministic bytes that differ between nearby offsets and between seeds.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// A buffer whose start is 4096-aligned (so `O_DIRECT` can take it as it is).
struct Aligned {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let raw = vec![0u8; len + 4096];
        let start = raw.as_ptr().align_offset(4096);
        assert!(start <= 4096);
        Aligned { raw, start, len }
    }
    fn get(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// Reads the whole backend and compares it with `model` (reporting the first difference).
fn assert_matches(b: &dyn BlockBackend, model: &[u8], ctx: &str) {
    let mut got = vec![0u8; model.len()];
    b.read_at(0, &mut got).unwrap();
    if let Some(i) = got.iter().zip(model).position(|(a, b)| a != b) {
        panic!(
            "{ctx}: first difference at byte {i}: backend has {}, model has {}",
            got[i], model[i]
        );
    }
}

fn write_model(b: &dyn BlockBackend, model: &mut [u8], offset: u64, data: &[u8]) {
    b.write_at(offset, data).unwrap();
    model[offset as usize..offset as usize + data.len()].copy_from_slice(data);
}

/// Splits `len` into `parts` pieces of random (possibly zero) size.
fn split_lens(rng: &mut StdRng, len: usize, parts: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = (1..parts).map(|_| rng.gen_range(0..=len)).collect();
    cuts.push(0);
    cuts.push(len);
    cuts.sort_unstable();
    cuts.windows(2).map(|w| w[1] - w[0]).collect()
}

fn slices_mut<'a>(mut buf: &'a mut [u8], lens: &[usize]) -> Vec<IoSliceMut<'a>> {
    let mut v = Vec::new();
    for &l in lens {
        let (head, rest) = std::mem::take(&mut buf).split_at_mut(l);
        v.push(IoSliceMut::new(head));
        buf = rest;
    }
    v
}

fn slices<'a>(mut buf: &'a [u8], lens: &[usize]) -> Vec<IoSlice<'a>> {
    let mut v = Vec::new();
    for &l in lens {
        let (head, rest) = buf.split_at(l);
        v.push(IoSlice::new(head));
        buf = rest;
    }
    v
}

// ---------------------------------------------------------------------------------------------
// The suite.

fn check_info(s: &mut dyn Subject) {
    let b = s.open(false);
    let info = b.info();
    assert!(info.size >= SIZE);
    assert_eq!(info.block_size, s.block_size());
    assert_eq!(info.logical_block_size, 512);
    assert!(!info.read_only);
    assert!(
        ["vol-", "raw-", "blk-"]
            .iter()
            .any(|k| info.id.starts_with(k)),
        "{}",
        info.id
    );
    assert!(info.id.len() <= zvol::ID_MAX, "{}", info.id);
    assert_eq!(s.open(true).info().id, info.id, "same ID read-only");
}

fn check_round_trips(s: &mut dyn Subject) {
    let b = s.open(false);
    let size = size_of(&*b);
    let mut model = vec![0u8; size as usize];
    assert_matches(&*b, &model, "fresh backend reads as zeroes");
    let bs = u64::from(s.block_size());
    let cases: &[(u64, usize)] = &[
        (0, 4096),
        (4096, 8192),
        (0, 1),
        (1, 1),
        (511, 2),
        (513, 1000),
        (4095, 4098),
        (bs - 1, bs as usize + 2),
        (3 * bs - 7, 2 * bs as usize + 13),
        (5 * bs, bs as usize),
        (100_000, 300_001),
        (1 << 20, 1 << 20),
        (size - 4096, 4096),
        (size - 3, 3),
        (size - 5000, 5000),
        (7, 0),
    ];
    for (i, &(off, len)) in cases.iter().enumerate() {
        let data = pattern(i as u64 + 1, len);
        write_model(&*b, &mut model, off, &data);
        let mut back = vec![0u8; len];
        b.read_at(off, &mut back).unwrap();
        assert!(back == data, "round trip of {len} bytes at {off}");
        // Reads of sub-ranges that start and end off block boundaries.
        if len > 10 {
            let mut part = vec![0u8; len - 9];
            b.read_at(off + 3, &mut part).unwrap();
            assert!(part[..] == data[3..len - 6], "partial read at {}", off + 3);
        }
    }
    // Whole blocks of data that merely starts with zeroes (not to be mistaken for a hole).
    let mut data = pattern(50, 3 * bs as usize);
    data[..2].fill(0);
    write_model(&*b, &mut model, 6 * bs, &data);
    let mut back = vec![0u8; data.len()];
    b.read_at(6 * bs, &mut back).unwrap();
    assert!(back == data, "whole blocks starting with a zero byte");
    // An aligned buffer at an aligned offset (the direct path without a bounce buffer).
    let mut a = Aligned::new(64 << 10);
    a.get().copy_from_slice(&pattern(99, 64 << 10));
    write_model(&*b, &mut model, 2 << 20, a.get());
    let mut r = Aligned::new(64 << 10);
    b.read_at(2 << 20, r.get()).unwrap();
    assert!(r.get() == &model[2 << 20..(2 << 20) + (64 << 10)]);
    assert_matches(&*b, &model, "after round trips");
    // A zero-length read at the very end is fine.
    b.read_at(size, &mut []).unwrap();
}

fn check_vectored(s: &mut dyn Subject) {
    let b = s.open(false);
    let size = size_of(&*b) as usize;
    let mut model = vec![0u8; size];
    let lens = [1usize, 511, 4096, 0, 3, 10_000, 17, 65_536, 2];
    let total: usize = lens.iter().sum();
    for (k, off) in [0u64, 777, 4096 * 3, (size - total) as u64]
        .into_iter()
        .enumerate()
    {
        let data = pattern(1000 + k as u64, total);
        b.write_vectored(off, &slices(&data, &lens)).unwrap();
        model[off as usize..off as usize + total].copy_from_slice(&data);
        // Read back with a different split.
        let rlens = [7usize, 4089, 1, 0, 30_000, total - 34_097];
        let mut back = vec![0u8; total];
        b.read_vectored(off, &mut slices_mut(&mut back, &rlens))
            .unwrap();
        assert!(back == data, "vectored round trip at {off}");
        let mut back = vec![0u8; total];
        b.read_vectored(off, &mut slices_mut(&mut back, &lens))
            .unwrap();
        assert!(back == data, "vectored round trip at {off} (same split)");
    }
    // Aligned buffers of aligned lengths at an aligned offset (no copy on the direct path).
    let mut bufs: Vec<Aligned> = [4096usize, 8192, 4096, 16384]
        .iter()
        .map(|&l| Aligned::new(l))
        .collect();
    for (i, a) in bufs.iter_mut().enumerate() {
        let len = a.len;
        a.get().copy_from_slice(&pattern(2000 + i as u64, len));
    }
    let off = 256 << 10;
    {
        let iov: Vec<IoSlice<'_>> = bufs.iter_mut().map(|a| IoSlice::new(a.get())).collect();
        b.write_vectored(off, &iov).unwrap();
    }
    let mut at = off as usize;
    for a in bufs.iter_mut() {
        let len = a.len;
        model[at..at + len].copy_from_slice(a.get());
        at += len;
    }
    let mut rbufs: Vec<Aligned> = [8192usize, 4096, 20480]
        .iter()
        .map(|&l| Aligned::new(l))
        .collect();
    {
        let mut iov: Vec<IoSliceMut<'_>> =
            rbufs.iter_mut().map(|a| IoSliceMut::new(a.get())).collect();
        b.read_vectored(off, &mut iov).unwrap();
    }
    let mut at = off as usize;
    for a in rbufs.iter_mut() {
        let len = a.len;
        assert!(
            a.get() == &model[at..at + len],
            "aligned vectored read at {at}"
        );
        at += len;
    }
    // Many small iovecs (more than one preadv call's worth on some paths).
    let many = vec![3usize; 1500];
    let data = pattern(3000, 4500);
    b.write_vectored(1 << 20, &slices(&data, &many)).unwrap();
    model[1 << 20..(1 << 20) + 4500].copy_from_slice(&data);
    let mut back = vec![0u8; 4500];
    b.read_vectored(1 << 20, &mut slices_mut(&mut back, &many))
        .unwrap();
    assert!(back == data);
    assert_matches(&*b, &model, "after vectored I/O");
}

fn check_zeroes(s: &mut dyn Subject) {
    let b = s.open(false);
    let size = size_of(&*b);
    let bs = u64::from(s.block_size());
    let mut model = pattern(7, size as usize);
    b.write_at(0, &model).unwrap();
    b.flush().unwrap();
    let ranges: &[(u64, u64)] = &[
        (bs / 2 + 3, 3 * bs + 100 - (bs / 2 + 3)),
        (100, 100),
        (8 * bs, 2 * bs),
        (12 * bs + 1, bs - 2),
        (20 * bs - 512, 1024),
        (1 << 20, 300_000),
        (size - 777, 777),
        (30 * bs, 0),
    ];
    for (i, &(off, len)) in ranges.iter().enumerate() {
        let discard = i % 2 == 0;
        if discard {
            b.discard(off, len).unwrap();
        } else {
            b.write_zeroes(off, len).unwrap();
        }
        model[off as usize..(off + len) as usize].fill(0);
        let mut back = vec![1u8; len as usize + 2];
        let start = off.saturating_sub(1).min(size - back.len() as u64);
        b.read_at(start, &mut back).unwrap();
        assert!(
            back[..] == model[start as usize..start as usize + back.len()],
            "{} of {len} at {off}",
            if discard { "discard" } else { "write-zeroes" }
        );
        // Then the other one over the same range, and a rewrite of part of it.
        if discard {
            b.write_zeroes(off, len).unwrap();
        } else {
            b.discard(off, len).unwrap();
        }
        assert_matches(&*b, &model, "after zeroing");
    }
    // Data written into a discarded range reads back; the rest of the range stays zero.
    let data = pattern(8, 1000);
    write_model(&*b, &mut model, 8 * bs + 50, &data);
    b.flush().unwrap();
    assert_matches(&*b, &model, "after rewriting a discarded range");
    // Zeroing everything.
    b.discard(0, size).unwrap();
    model.fill(0);
    assert_matches(&*b, &model, "after discarding everything");
}

fn check_past_end(s: &mut dyn Subject) {
    let b = s.open(false);
    let size = size_of(&*b);
    let keep = pattern(9, 4096);
    b.write_at(size - 4096, &keep).unwrap();
    let mut buf = vec![0u8; 20];
    for off in [size - 10, size, size + 1, u64::MAX - 5] {
        let e = b.read_at(off, &mut buf).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "read at {off}: {e}");
        let mut tail = [0u8; 15];
        let mut v = [IoSliceMut::new(&mut buf[..5]), IoSliceMut::new(&mut tail)];
        let e = b.read_vectored(off, &mut v).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "readv at {off}: {e}");
        let e = b.write_at(off, &[1u8; 20]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "write at {off}: {e}");
        let e = b.discard(off, 20).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "discard at {off}: {e}");
        let e = b.write_zeroes(off, 20).unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::InvalidInput,
            "write-zeroes at {off}: {e}"
        );
    }
    // A vectored write whose later buffers run past the end is refused as a whole.
    let e = b
        .write_vectored(
            size - 4000,
            &[IoSlice::new(&[0xee; 1000]), IoSlice::new(&[0xdd; 3001])],
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "straddling writev: {e}");
    let e = b
        .write_vectored(
            size - 100,
            &[IoSlice::new(&[0xee; 50]), IoSlice::new(&[0xdd; 51])],
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "straddling writev: {e}");
    // Nothing in range was touched by the refused requests.
    let mut back = vec![0u8; 4096];
    b.read_at(size - 4096, &mut back).unwrap();
    assert!(back == keep);
}

fn check_read_only(s: &mut dyn Subject) {
    let data = pattern(10, 10_000);
    {
        let w = s.open(false);
        w.write_at(1234, &data).unwrap();
        w.flush().unwrap();
    }
    let r = s.open(true);
    assert!(r.info().read_only);
    let mut back = vec![0u8; data.len()];
    r.read_at(1234, &mut back).unwrap();
    assert!(back == data);
    let e = r.write_at(0, &[1, 2, 3]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");
    let e = r
        .write_vectored(4096, &[IoSlice::new(&[1; 4096]), IoSlice::new(&[2; 100])])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");
    assert_eq!(r.discard(0, 4096).unwrap_err().kind(), ErrorKind::ReadOnly);
    assert_eq!(
        r.write_zeroes(0, 4096).unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
    r.flush().unwrap();
    r.read_at(1234, &mut back).unwrap();
    assert!(back == data, "refused writes changed nothing");
}

fn check_reopen(s: &mut dyn Subject) {
    let (id, size, model) = {
        let b = s.open(false);
        let size = size_of(&*b);
        let mut model = vec![0u8; size as usize];
        write_model(&*b, &mut model, 0, &pattern(11, 5000));
        write_model(&*b, &mut model, 77_777, &pattern(12, 123_456));
        write_model(&*b, &mut model, size - 3000, &pattern(13, 3000));
        b.write_zeroes(80_000, 10_000).unwrap();
        model[80_000..90_000].fill(0);
        b.discard(100_000, 8192).unwrap();
        model[100_000..108_192].fill(0);
        b.flush().unwrap();
        (b.info().id, size, model)
    };
    s.restart();
    let b = s.open(false);
    assert_eq!(b.info().id, id, "ID is stable across a reopen");
    assert_eq!(size_of(&*b), size);
    assert_matches(&*b, &model, "after flush and reopen");
    // And again after writing some more.
    let mut model = model;
    write_model(&*b, &mut model, 4097, &pattern(14, 9000));
    b.flush().unwrap();
    drop(b);
    s.restart();
    let b = s.open(true);
    assert_eq!(b.info().id, id);
    assert_matches(&*b, &model, "after a second reopen");
}

fn check_concurrent(s: &mut dyn Subject) {
    const THREADS: usize = 8;
    const SLOT: usize = 100;
    const SLOTS: usize = 1300;
    let b = s.open(false);
    let base = 12_345u64;
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let b = &*b;
            scope.spawn(move || {
                for i in (t..SLOTS).step_by(THREADS) {
                    let off = base + (i * SLOT) as u64;
                    b.write_at(off, &pattern(i as u64, SLOT)).unwrap();
                    if i % 7 == 0 {
                        let mut back = vec![0u8; SLOT];
                        b.read_at(off, &mut back).unwrap();
                        assert!(back == pattern(i as u64, SLOT));
                    }
                }
            });
        }
    });
    let mut back = vec![0u8; SLOTS * SLOT];
    b.read_at(base, &mut back).unwrap();
    for (i, chunk) in back.chunks(SLOT).enumerate() {
        assert!(chunk == pattern(i as u64, SLOT), "slot {i} lost an update");
    }
}

/// A random range: mostly small, sometimes aligned, occasionally large.
fn random_range(rng: &mut StdRng, size: u64) -> (u64, u64) {
    let mut len: u64 = match rng.gen_range(0..20) {
        0 => rng.gen_range(0..=1),
        1..=10 => rng.gen_range(1..=9000),
        11..=17 => rng.gen_range(1..=70_000),
        _ => rng.gen_range(1..=400_000),
    };
    if rng.gen_bool(0.3) {
        len = (len / 4096).max(1) * 4096;
    }
    let len = len.min(size);
    let mut off = rng.gen_range(0..=size - len);
    if rng.gen_bool(0.3) {
        off = off / 4096 * 4096;
    }
    (off, len)
}

fn check_random_model(s: &mut dyn Subject, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut b = s.open(false);
    let size = SIZE.min(size_of(&*b));
    let mut model = vec![0u8; size_of(&*b) as usize];
    assert_matches(&*b, &model, "fresh");
    for step in 0..2000 {
        let ctx = |what: &str, off: u64, len: u64| {
            format!("seed {seed} step {step}: {what} of {len} at {off}")
        };
        let (off, len) = random_range(&mut rng, size);
        let (o, l) = (off as usize, len as usize);
        match rng.gen_range(0..100) {
            0..=24 => {
                let data = if rng.gen_bool(0.2) {
                    vec![0u8; l]
                } else {
                    pattern(rng.gen(), l)
                };
                if rng.gen_bool(0.3) {
                    let mut a = Aligned::new(l);
                    a.get().copy_from_slice(&data);
                    b.write_at(off, a.get()).unwrap();
                } else {
                    b.write_at(off, &data).unwrap();
                }
                model[o..o + l].copy_from_slice(&data);
            }
            25..=39 => {
                let data = pattern(rng.gen(), l);
                let parts = rng.gen_range(1..=6);
                let lens = split_lens(&mut rng, l, parts);
                b.write_vectored(off, &slices(&data, &lens)).unwrap();
                model[o..o + l].copy_from_slice(&data);
            }
            40..=59 => {
                let mut back = vec![0u8; l];
                if rng.gen_bool(0.3) {
                    let mut a = Aligned::new(l);
                    b.read_at(off, a.get()).unwrap();
                    back.copy_from_slice(a.get());
                } else {
                    b.read_at(off, &mut back).unwrap();
                }
                assert!(back[..] == model[o..o + l], "{}", ctx("read", off, len));
            }
            60..=71 => {
                let mut back = vec![0u8; l];
                let parts = rng.gen_range(1..=6);
                let lens = split_lens(&mut rng, l, parts);
                b.read_vectored(off, &mut slices_mut(&mut back, &lens))
                    .unwrap();
                assert!(back[..] == model[o..o + l], "{}", ctx("readv", off, len));
            }
            72..=79 => {
                b.discard(off, len).unwrap();
                model[o..o + l].fill(0);
            }
            80..=87 => {
                b.write_zeroes(off, len).unwrap();
                model[o..o + l].fill(0);
            }
            88..=93 => b.flush().unwrap(),
            94..=95 => {
                b.flush().unwrap();
                drop(b);
                s.restart();
                b = s.open(false);
                assert_matches(&*b, &model, &ctx("restart", 0, 0));
            }
            _ => {
                let mut buf = vec![0u8; l.max(1)];
                let at = size_of(&*b) - rng.gen_range(0..buf.len() as u64);
                let e = b.read_at(at, &mut buf).unwrap_err();
                assert_eq!(
                    e.kind(),
                    ErrorKind::InvalidInput,
                    "{}",
                    ctx("read past the end", at, len)
                );
            }
        }
    }
    assert_matches(&*b, &model, &format!("seed {seed}: at the end"));
    b.flush().unwrap();
    drop(b);
    s.restart();
    let b = s.open(true);
    assert_matches(&*b, &model, &format!("seed {seed}: after the last restart"));
}

macro_rules! backend_suite {
    ($($module:ident => $make:expr;)*) => {$(
        mod $module {
            use super::*;

            fn subject() -> Option<Box<dyn Subject>> {
                $make.map(|s| Box::new(s) as Box<dyn Subject>)
            }

            fn run(check: impl Fn(&mut dyn Subject)) {
                match subject() {
                    Some(mut s) => check(&mut *s),
                    None => eprintln!("skipped: no such backend here"),
                }
            }

            #[test]
            fn info() {
                run(check_info)
            }
            #[test]
            fn round_trips() {
                run(check_round_trips)
            }
            #[test]
            fn vectored() {
                run(check_vectored)
            }
            #[test]
            fn zeroes() {
                run(check_zeroes)
            }
            #[test]
            fn past_end() {
                run(check_past_end)
            }
            #[test]
            fn read_only() {
                run(check_read_only)
            }
            #[test]
            fn reopen() {
                run(check_reopen)
            }
            #[test]
            fn concurrent() {
                run(check_concurrent)
            }
            #[test]
            fn random_model() {
                for seed in [1, 2, 3] {
                    run(|s| check_random_model(s, seed))
                }
            }
        }
    )*};
}

fn shm() -> Option<&'static Path> {
    let p = Path::new("/dev/shm");
    p.is_dir().then_some(p)
}

backend_suite! {
    pool_mem => Some(PoolMem::new(zvol::DEFAULT_BLOCK_SIZE));
    pool_mem_4k => Some(PoolMem::new(4096));
    pool_file => Some(PoolFile::new());
    raw_buffered => Some(Raw::new(None, false));
    raw_direct_disk => Some(Raw::new(Some(Path::new("/var/tmp")), true));
    raw_direct_tmpfs => shm().map(|p| Raw::new(Some(p), true));
    raw_direct_extra_dir => std::env::var_os("TARN_TEST_DIRECT_DIR")
        .map(|p| Raw::new(Some(Path::new(&p)), true));
    raw_block_device_buffered => Raw::block_device(false);
    raw_block_device_direct => Raw::block_device(true);
}

// ---------------------------------------------------------------------------------------------
// Backend-specific behaviour.

#[test]
fn raw_create_refuses_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.img");
    RawFile::create(&path, 8192, RawFileOptions::default()).unwrap();
    let e = RawFile::create(&path, 8192, RawFileOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.to_string().contains("x.img"), "{e}");
    let e = RawFile::create(dir.path().join("y.img"), 0, RawFileOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let e = RawFile::open(dir.path().join("missing.img"), RawFileOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    let ro = RawFileOptions {
        read_only: true,
        direct: false,
    };
    let e = RawFile::open(dir.path(), ro).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("neither"), "{e}");
}

#[test]
fn raw_past_end_message_names_path_offset_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.img");
    let f = RawFile::create(&path, 8192, RawFileOptions::default()).unwrap();
    let e = f.read_at(8000, &mut [0u8; 500]).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("small.img"), "{msg}");
    assert!(msg.contains("8000"), "{msg}");
    assert!(msg.contains("500"), "{msg}");
    assert!(msg.contains("8192"), "{msg}");
}

#[test]
fn raw_direct_with_an_odd_size_falls_back_to_buffered() {
    let dir = tempfile::Builder::new()
        .prefix("zvol-test")
        .tempdir_in("/var/tmp")
        .unwrap();
    let path = dir.path().join("odd.img");
    let opts = RawFileOptions {
        read_only: false,
        direct: true,
    };
    let f = RawFile::create(&path, 10_001, opts).unwrap();
    assert!(!f.is_direct(), "an odd size cannot be read with O_DIRECT");
    let data = pattern(20, 10_001);
    f.write_at(0, &data).unwrap();
    f.discard(3, 5000).unwrap();
    f.flush().unwrap();
    drop(f);
    let f = RawFile::open(&path, opts).unwrap();
    let mut back = vec![0u8; 10_001];
    f.read_at(0, &mut back).unwrap();
    assert!(back[..3] == data[..3]);
    assert!(back[3..5003].iter().all(|&b| b == 0));
    assert!(back[5003..] == data[5003..]);
}

#[test]
fn raw_ids_differ_between_files_and_survive_rename() {
    let dir = tempfile::tempdir().unwrap();
    let a = RawFile::create(dir.path().join("a"), 4096, RawFileOptions::default()).unwrap();
    let b = RawFile::create(dir.path().join("b"), 4096, RawFileOptions::default()).unwrap();
    assert_ne!(a.info().id, b.info().id);
    let id = a.info().id;
    drop(a);
    std::fs::rename(dir.path().join("a"), dir.path().join("c")).unwrap();
    let c = RawFile::open(dir.path().join("c"), RawFileOptions::default()).unwrap();
    assert_eq!(c.info().id, id);
}

#[test]
fn raw_discard_punches_holes() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.img");
    let f = RawFile::create(&path, 1 << 20, RawFileOptions::default()).unwrap();
    assert!(
        f.info().discards,
        "the file system punches holes, so discards are cheap"
    );
    f.write_at(0, &vec![0xa5; 1 << 20]).unwrap();
    f.flush().unwrap();
    let before = std::fs::metadata(&path).unwrap().blocks();
    f.discard(0, 1 << 20).unwrap();
    let after = std::fs::metadata(&path).unwrap().blocks();
    assert!(
        after < before,
        "discard freed nothing: {before} -> {after} blocks"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        1 << 20,
        "size kept"
    );
}

#[test]
fn volume_config_defaults_and_creation() {
    let vc: VolumeConfig = serde_json::from_str(r#"{"size": 1000000}"#).unwrap();
    assert_eq!(vc, VolumeConfig::new(1_000_000));
    assert_eq!(vc.block_size, zvol::DEFAULT_BLOCK_SIZE);
    let json = serde_json::to_string(&vc).unwrap();
    assert_eq!(serde_json::from_str::<VolumeConfig>(&json).unwrap(), vc);

    let pool = Pool::create_on(Arc::new(MemDevice::new(32 << 20)), "tank", config()).unwrap();
    let mut vc = VolumeConfig::new(1_000_000);
    vc.props.insert("tarn:purpose".into(), "test".into());
    let ds = vc.create(&pool, "tank/a").unwrap();
    assert_eq!(ds.size % u64::from(zvol::DEFAULT_BLOCK_SIZE), 0);
    assert!(ds.size >= 1_000_000);
    assert_eq!(
        ds.props.get("tarn:purpose").map(String::as_str),
        Some("test")
    );
    let e = vc.create(&pool, "tank/a").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    let mut bad = VolumeConfig::new(1 << 20);
    bad.block_size = 1000;
    assert_eq!(
        bad.create(&pool, "tank/b").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let e = PoolVolume::open(&pool, "tank/missing", false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);

    let v = PoolVolume::open(&pool, "tank/a", false).unwrap();
    let info = v.info();
    assert_eq!(info.size, ds.size);
    assert_eq!(info.block_size, zvol::DEFAULT_BLOCK_SIZE);
    assert_eq!(info.id, zvol::backend_id("vol", pool.guid(), ds.id));
    assert!(info.discards, "a pool volume frees discarded blocks");
}

#[test]
fn pool_volume_sees_a_resize() {
    let pool = Pool::create_on(Arc::new(MemDevice::new(32 << 20)), "tank", config()).unwrap();
    VolumeConfig::new(1 << 20).create(&pool, "tank/a").unwrap();
    let v = PoolVolume::open(&pool, "tank/a", false).unwrap();
    v.write_at((1 << 20) - 10, &[7; 10]).unwrap();
    pool.resize_volume("tank/a", 2 << 20).unwrap();
    assert_eq!(v.info().size, 2 << 20);
    v.write_at((2 << 20) - 10, &[8; 10]).unwrap();
    let mut back = [0u8; 10];
    v.read_at((1 << 20) - 10, &mut back).unwrap();
    assert_eq!(back, [7; 10]);
    v.read_at((2 << 20) - 10, &mut back).unwrap();
    assert_eq!(back, [8; 10]);
    assert!(v.read_at(2 << 20, &mut back).is_err());
}

/// A snapshot opened without asking for read-only is still a read-only disk (a guest was
/// shown a writable disk whose every write failed).
#[test]
fn a_snapshot_is_a_read_only_disk_however_opened() {
    let pool = Pool::create_on(Arc::new(MemDevice::new(32 << 20)), "tank", config()).unwrap();
    VolumeConfig::new(1 << 20).create(&pool, "tank/a").unwrap();
    pool.snapshot(&["tank/a@s"]).unwrap();
    let v = PoolVolume::open(&pool, "tank/a@s", false).unwrap();
    assert!(v.info().read_only);
    assert_eq!(
        v.write_at(0, &[1; 512]).unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
}

/// Backend IDs fit virtio-blk's 20-byte serial whole, so two volumes of one pool (once
/// `tarn-<pool GUID>` and nothing of the volume) and two files differ in what the guest sees.
#[test]
fn ids_fit_the_virtio_serial_and_differ() {
    let pool = Pool::create_on(Arc::new(MemDevice::new(32 << 20)), "ids", config()).unwrap();
    let mut ids = Vec::new();
    for name in ["ids/a", "ids/b"] {
        VolumeConfig::new(1 << 20).create(&pool, name).unwrap();
        ids.push(PoolVolume::open(&pool, name, false).unwrap().info().id);
    }
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.img", "b.img"] {
        let f = RawFile::create(dir.path().join(name), 1 << 20, RawFileOptions::default()).unwrap();
        ids.push(f.info().id);
    }
    for id in &ids {
        assert!(
            id.len() <= zvol::ID_MAX,
            "{id} is longer than {} bytes",
            zvol::ID_MAX
        );
    }
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "{ids:?}");
}
