//! Sequential prefetch. On a device that records its hints and counts its reads: a reader
//! that goes on where its last read ended gets exactly the device runs of the next four
//! requests hinted, in batches, and reads through the cache; reads far apart, re-reads and
//! stragglers hint nothing, and far-apart reads go around the cache. A batch cut at 64 runs
//! goes on where it stopped, and a read that fails its checksum still sends its batch. On a
//! real file: a hint lands in the page cache, and what a stream reads from there is exactly
//! what any other read returns (rewritten blocks, committed or still dirty, read back new, and
//! a block damaged on disk fails its checksum).

mod common;

use common::Watched;
use pool::{Device, ErrorKind, FileDevice, Pool, PoolConfig, VolumeHandle};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const BS: u64 = 4096;
const CHUNKS: u64 = 32;

/// Chunk `c` (1 MiB) of generation `g`: every 4 KiB block starts with a findable header.
fn chunk(c: u64, g: u8) -> Vec<u8> {
    let mut v = vec![0u8; MIB as usize];
    for (b, block) in v.chunks_mut(BS as usize).enumerate() {
        block[..8].copy_from_slice(b"TARNPREF");
        block[8..16].copy_from_slice(&(c * MIB + b as u64 * BS).to_le_bytes());
        block[16] = g;
        for (i, x) in block[17..].iter_mut().enumerate() {
            *x = (i as u64 * 31 + c * 7 + b as u64) as u8 ^ g;
        }
    }
    v
}

/// Where each block of the volume lies on the device (its newest generation): volume offset
/// to device offset, found by scanning the device's bytes for the headers.
fn block_offsets(bytes: &[u8]) -> HashMap<u64, u64> {
    let mut newest: HashMap<u64, (u8, u64)> = HashMap::new();
    for (i, b) in bytes.chunks(BS as usize).enumerate() {
        if &b[..8] == b"TARNPREF" {
            let at = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
            let e = newest.entry(at).or_insert((b[16], i as u64 * BS));
            if b[16] >= e.0 {
                *e = (b[16], i as u64 * BS);
            }
        }
    }
    let found: HashMap<u64, u64> = newest.into_iter().map(|(k, (_, v))| (k, v)).collect();
    assert_eq!(
        found.len() as u64,
        CHUNKS * MIB / BS,
        "every block found once"
    );
    found
}

/// Writes volume `p/v` of `pool` whole (generation 0) and commits it.
fn write_volume(pool: &Pool) -> VolumeHandle {
    pool.create_volume("p/v", CHUNKS * MIB, BS as u32, &Default::default())
        .expect("volume");
    let v = pool.volume("p/v").expect("open");
    for c in 0..CHUNKS {
        v.write_at(c * MIB, &chunk(c, 0)).expect("write");
    }
    pool.sync().expect("sync");
    v
}

fn read_chunk(v: &VolumeHandle, c: u64) -> pool::Result<Vec<u8>> {
    let mut buf = pool::AlignedBuf::new(MIB as usize);
    v.read_at(c * MIB, &mut buf)?;
    Ok(buf.to_vec())
}

/// The hints a prefetch of volume bytes `from .. from + n` blocks sends: one per run of
/// blocks that follow each other both in the volume and on the device.
fn hints_for(where_: &HashMap<u64, u64>, from: u64, n: u64) -> Vec<(u64, u64)> {
    hints_where(where_, from, n, |_, _| true)
}

/// As [`hints_for`], for the blocks `keep(volume offset, device offset)` accepts.
fn hints_where(
    where_: &HashMap<u64, u64>,
    from: u64,
    n: u64,
    keep: impl Fn(u64, u64) -> bool,
) -> Vec<(u64, u64)> {
    let mut hints: Vec<(u64, u64)> = Vec::new();
    for k in 0..n {
        let vol = from + k * BS;
        let at = where_[&vol];
        if !keep(vol, at) {
            continue;
        }
        match hints.last_mut() {
            Some((start, len)) if *start + *len == at => *len += BS,
            _ => hints.push((at, BS)),
        }
    }
    hints
}

/// A pool (no background commits) on a recording device, its volume written by
/// [`write_volume`], and where each block lies on the device.
fn watched_pool() -> (Arc<Watched>, Pool, VolumeHandle, HashMap<u64, u64>) {
    let dev = Arc::new(Watched::new(64 * MIB as usize));
    let config = PoolConfig {
        sync_interval: None,
        ..PoolConfig::default()
    };
    let pool = Pool::create_on(dev.clone(), "p", config).expect("pool");
    let v = write_volume(&pool);
    let where_ = block_offsets(&dev.snapshot());
    (dev, pool, v, where_)
}

#[test]
fn a_sequential_reader_gets_the_next_four_requests_prefetched() {
    let (dev, pool, v, where_) = watched_pool();
    dev.take_prefetches();

    dev.take_reads();

    // Reads more than four requests apart prefetch nothing, and bypass the cache.
    for c in [31, 20, 26] {
        assert_eq!(read_chunk(&v, c).expect("read"), chunk(c, 0));
    }
    assert_eq!(dev.take_prefetches(), vec![], "far-apart reads");
    assert_eq!(
        dev.take_reads(),
        (0, 3 * MIB),
        "far-apart reads go around the cache"
    );

    // The second read in sequence prefetches the next four requests, chunks 2-5, and reads
    // through the cache, where they land.
    for c in 0..2 {
        assert_eq!(read_chunk(&v, c).expect("read"), chunk(c, 0));
    }
    assert_eq!(
        dev.take_prefetches(),
        hints_for(&where_, 2 * MIB, 4 * MIB / BS)
    );
    assert_eq!(
        dev.take_reads(),
        (MIB, MIB),
        "the first read is not yet a stream"
    );
    // Then batches of half that once half is free: nothing after chunk 2, chunks 6-7 after 3.
    assert_eq!(read_chunk(&v, 2).expect("read"), chunk(2, 0));
    assert_eq!(dev.take_prefetches(), vec![]);
    assert_eq!(read_chunk(&v, 3).expect("read"), chunk(3, 0));
    assert_eq!(
        dev.take_prefetches(),
        hints_for(&where_, 6 * MIB, 2 * MIB / BS)
    );
    // A re-read and a straggler behind the front prefetch nothing.
    assert_eq!(read_chunk(&v, 3).expect("read"), chunk(3, 0));
    assert_eq!(read_chunk(&v, 1).expect("read"), chunk(1, 0));
    assert_eq!(dev.take_prefetches(), vec![]);

    // Blocks rewritten since the last commit are not hinted: their data is not where the
    // tree says.
    v.write_at(9 * MIB, &chunk(9, 1)).expect("rewrite chunk 9");
    for c in 4..6 {
        assert_eq!(read_chunk(&v, c).expect("read"), chunk(c, 0));
    }
    assert_eq!(dev.take_prefetches(), hints_for(&where_, 8 * MIB, MIB / BS));
    assert_eq!(read_chunk(&v, 9).expect("read"), chunk(9, 1));
    drop(v);
    pool.close().expect("close");
}

#[test]
fn a_scattered_stream_is_prefetched_in_capped_batches_that_go_on_where_they_stopped() {
    let (dev, pool, v, _) = watched_pool();
    // Every other block of chunks 2-9 rewritten (generation 1) and committed: no two blocks
    // that follow each other in the volume follow each other on the device.
    for at in (2 * MIB..10 * MIB).step_by(2 * BS as usize) {
        let c = at / MIB;
        let block = &chunk(c, 1)[(at % MIB) as usize..][..BS as usize];
        v.write_at(at, block).expect("rewrite a block");
    }
    pool.sync().expect("sync");
    let where_ = block_offsets(&dev.snapshot());
    dev.take_prefetches();

    // A batch of chunks 2-5 takes 1,024 runs: it stops after 64, 256 KiB into chunk 2.
    for c in 0..2 {
        read_chunk(&v, c).expect("read");
    }
    assert_eq!(dev.take_prefetches(), hints_for(&where_, 2 * MIB, 64));
    // Once the reader passes where it stopped, the next batch starts at the reader's front.
    read_chunk(&v, 2).expect("read");
    assert_eq!(dev.take_prefetches(), hints_for(&where_, 3 * MIB, 64));
    drop(v);
    pool.close().expect("close");
}

/// Where the device reads ahead by itself (a page cache), a stream hints only the blocks a
/// linear reader would not reach: those not lying on from the read's last block as they do
/// in the volume.
#[test]
fn a_device_that_reads_ahead_is_hinted_only_where_the_layout_jumps() {
    let (dev, pool, v, _) = watched_pool();
    dev.set_reads_ahead(true);
    // Blocks 10-19 of chunk 3 and every fourth block of chunk 4 rewritten and committed: they
    // now lie elsewhere on the device.
    let rewrites = (3 * MIB + 10 * BS..3 * MIB + 20 * BS)
        .step_by(BS as usize)
        .chain((4 * MIB..5 * MIB).step_by(4 * BS as usize));
    for at in rewrites {
        let c = at / MIB;
        v.write_at(at, &chunk(c, 1)[(at % MIB) as usize..][..BS as usize])
            .expect("rewrite a block");
    }
    pool.sync().expect("sync");
    let where_ = block_offsets(&dev.snapshot());
    dev.take_prefetches();

    for c in 0..2 {
        read_chunk(&v, c).expect("read");
    }
    let last = 2 * MIB - BS;
    let delta = i128::from(where_[&last]) - i128::from(last);
    let jumps = |vol: u64, at: u64| i128::from(at) - i128::from(vol) != delta;
    let expected = hints_where(&where_, 2 * MIB, 4 * MIB / BS, jumps);
    // Exactly the 74 rewritten blocks; without the device's readahead it would be all of
    // chunks 2-5.
    let hinted: u64 = expected.iter().map(|(_, n)| n).sum();
    assert_eq!(hinted, 74 * BS, "the layout the test set up: {expected:?}");
    assert_eq!(dev.take_prefetches(), expected);
    assert_eq!(read_chunk(&v, 3).expect("read"), chunk_with(3, 10..20));
    drop(v);
    pool.close().expect("close");
}

/// Chunk `c` of generation 0 with its blocks `blocks` of generation 1.
fn chunk_with(c: u64, blocks: std::ops::Range<usize>) -> Vec<u8> {
    let (old, new) = (chunk(c, 0), chunk(c, 1));
    let bs = BS as usize;
    let mut v = old;
    v[blocks.start * bs..blocks.end * bs].copy_from_slice(&new[blocks.start * bs..blocks.end * bs]);
    v
}

#[test]
fn a_read_that_fails_its_checksum_still_sends_its_hints() {
    let (dev, pool, v, where_) = watched_pool();
    for c in 0..3 {
        read_chunk(&v, c).expect("read");
    }
    dev.take_prefetches();
    // Damage a block of chunk 3: its read fails, and the batch it starts (chunks 6-7) goes out.
    let at = where_[&(3 * MIB + 5 * BS)] + 100;
    let mut b = [0u8; 1];
    dev.read_at(&mut b, at).expect("read a byte");
    dev.write_at(&[b[0] ^ 1], at).expect("damage it");
    let err = read_chunk(&v, 3).expect_err("a damaged block must not read");
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert_eq!(
        dev.take_prefetches(),
        hints_for(&where_, 6 * MIB, 2 * MIB / BS)
    );
    drop(v);
    pool.close().expect("close");
}

/// Drops the file's clean pages from the page cache.
fn evict(file: &File) {
    // SAFETY: posix_fadvise(2) on an open descriptor.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise(DONTNEED)");
}

/// How many of the `len / 4096` pages at `offset` of the file are in the page cache.
fn cached_pages(file: &File, offset: u64, len: u64) -> usize {
    let pages = (len / BS) as usize;
    let mut vec = vec![0u8; pages];
    // SAFETY: a fresh shared read-only mapping of `len` bytes of the file, unmapped before
    // return; mincore writes one byte per page into `vec`, which has that many.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            offset as libc::off_t,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        let rc = libc::mincore(p, len as usize, vec.as_mut_ptr());
        libc::munmap(p, len as usize);
        assert_eq!(rc, 0, "mincore");
    }
    vec.iter().filter(|&&b| b & 1 == 1).count()
}

#[test]
fn a_file_device_prefetch_lands_in_the_page_cache() {
    // Under the build folder, on disk (/tmp may be tmpfs, where nothing is evicted).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let path = dir.path().join("dev");
    let dev = FileDevice::create(&path, 32 * MIB).expect("device");
    for c in 0..32 {
        dev.write_at(&chunk(c, 0), c * MIB).expect("write");
    }
    dev.sync().expect("sync");
    let file = File::open(&path).expect("open");
    evict(&file);
    let mut page = [0u8; BS as usize];
    dev.read_at(&mut page, 28 * MIB).expect("read a page");
    let (evicted, seen) = (
        cached_pages(&file, 0, 28 * MIB) == 0,
        cached_pages(&file, 28 * MIB, BS) == 1,
    );
    if !(evicted && seen) {
        eprintln!(
            "SKIP a_file_device_prefetch_lands_in_the_page_cache: the file system under {} \
             does not keep this file in the page cache as mincore(2) shows it (evicted: \
             {evicted}, a read page seen: {seen})",
            dir.path().display()
        );
        return;
    }
    // 12 MiB: more than one WILLNEED reads with a default read_ahead_kb.
    dev.prefetch(4 * MIB, 12 * MIB);
    let want = (12 * MIB / BS) as usize;
    let t = Instant::now();
    while cached_pages(&file, 4 * MIB, 12 * MIB) < want && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(cached_pages(&file, 4 * MIB, 12 * MIB), want, "all of it");
    assert_eq!(cached_pages(&file, 20 * MIB, 8 * MIB), 0, "nothing else");
}

#[test]
fn prefetched_reads_see_rewrites_and_fail_on_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p.tarn");
    let pool = Pool::create_file(&path, "p", 64 * MIB, PoolConfig::default()).expect("pool");
    let v = write_volume(&pool);
    let where_ = block_offsets(&std::fs::read(&path).expect("read the pool file"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open the pool file");

    // A stream over chunks 0-1 prefetches 2-5. Then, ahead of the reader: chunk 3 rewritten
    // and committed (moves), chunk 4 rewritten and not committed, one block of chunk 5 damaged
    // on disk where the prefetch read it.
    for c in 0..2 {
        assert_eq!(read_chunk(&v, c).expect("read"), chunk(c, 0));
    }
    v.write_at(3 * MIB, &chunk(3, 1)).expect("rewrite 3");
    pool.sync().expect("commit 3");
    v.write_at(4 * MIB, &chunk(4, 1)).expect("rewrite 4");
    let damaged = 5 * MIB + 7 * BS;
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, where_[&damaged] + 100)
        .expect("read a byte");
    file.write_all_at(&[b[0] ^ 0x20], where_[&damaged] + 100)
        .expect("damage a byte");

    assert_eq!(read_chunk(&v, 2).expect("read 2"), chunk(2, 0));
    assert_eq!(
        read_chunk(&v, 3).expect("read 3"),
        chunk(3, 1),
        "committed rewrite"
    );
    assert_eq!(
        read_chunk(&v, 4).expect("read 4"),
        chunk(4, 1),
        "dirty rewrite"
    );
    let err = read_chunk(&v, 5).expect_err("a damaged block must not read");
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(
        err.to_string().contains(&format!("byte offset {damaged}")),
        "{err}"
    );
    // The stream goes on past the damage.
    assert_eq!(read_chunk(&v, 6).expect("read 6"), chunk(6, 0));
    drop(v);
    pool.close().expect("close");
}
