//! Sequential prefetch on a pool file: a reader that goes on where its last read ended gets
//! the next blocks read into the page cache ahead of it, and what it reads from there is
//! exactly what a read of any other kind returns: rewritten blocks (committed or still
//! dirty) read back new, and a block damaged on disk fails its checksum.

use pool::{ErrorKind, Pool, PoolConfig, VolumeHandle};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;
const BS: u64 = 4096;
const CHUNKS: u64 = 16;

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

/// Where each generation-0 block of the volume lies in the pool file: volume offset to file
/// offset, found by scanning the file for the headers.
fn block_offsets(path: &Path) -> HashMap<u64, u64> {
    let bytes = std::fs::read(path).expect("read the pool file");
    bytes
        .chunks(BS as usize)
        .enumerate()
        .filter(|(_, b)| &b[..8] == b"TARNPREF" && b[16] == 0)
        .map(|(i, b)| {
            let at = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
            (at, i as u64 * BS)
        })
        .collect()
}

/// Drops the pool file's clean pages from the page cache.
fn evict(file: &File) {
    // SAFETY: posix_fadvise(2) on an open descriptor.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise(DONTNEED)");
}

/// Whether the page at `offset` of the file is in the page cache (mincore(2) on a mapping).
fn cached(file: &File, offset: u64) -> bool {
    // SAFETY: a fresh shared read-only mapping of one page of the file, unmapped before return;
    // mincore writes one byte into `vec`.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            BS as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            offset as libc::off_t,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap of the pool file");
        let mut vec = 0u8;
        let rc = libc::mincore(p, BS as usize, &mut vec);
        libc::munmap(p, BS as usize);
        assert_eq!(rc, 0, "mincore");
        vec & 1 == 1
    }
}

fn read_chunk(v: &VolumeHandle, c: u64) -> pool::Result<Vec<u8>> {
    let mut buf = pool::AlignedBuf::new(MIB as usize);
    v.read_at(c * MIB, &mut buf)?;
    Ok(buf.to_vec())
}

/// A pool file in `dir` with volume `p/v` written whole (generation 0) and committed; the
/// file's path and where each block lies in it.
fn written_pool(dir: &Path) -> (Pool, VolumeHandle, PathBuf, HashMap<u64, u64>) {
    let path = dir.join("p.tarn");
    let pool = Pool::create_file(&path, "p", 64 * MIB, PoolConfig::default()).expect("pool");
    pool.create_volume("p/v", CHUNKS * MIB, BS as u32, &Default::default())
        .expect("volume");
    let v = pool.volume("p/v").expect("open");
    for c in 0..CHUNKS {
        v.write_at(c * MIB, &chunk(c, 0)).expect("write");
    }
    pool.sync().expect("sync");
    let where_ = block_offsets(&path);
    assert_eq!(
        where_.len() as u64,
        CHUNKS * MIB / BS,
        "every block found once"
    );
    (pool, v, path, where_)
}

#[test]
fn a_sequential_reader_finds_the_next_blocks_cached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pool, v, path, where_) = written_pool(dir.path());
    let file = File::open(&path).expect("open the pool file");
    evict(&file);
    let in_cache = |c: u64| cached(&file, where_[&(c * MIB + MIB / 2)]);
    assert!(!in_cache(4), "evicted");

    // Reads far apart (more than four requests) prefetch nothing.
    for c in [9, 3, 15] {
        assert_eq!(read_chunk(&v, c).expect("read"), chunk(c, 0));
    }
    evict(&file);
    assert!(!in_cache(4) && !in_cache(13));

    // Two reads in sequence: the stream prefetches four requests ahead.
    for c in 0..2 {
        assert_eq!(read_chunk(&v, c).expect("read"), chunk(c, 0));
    }
    let wait = std::time::Instant::now();
    while !(in_cache(4) && in_cache(5)) && wait.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(in_cache(2) && in_cache(5), "chunks 2-5 prefetched");
    assert!(!in_cache(9), "no further than four requests ahead");
    drop(v);
    pool.close().expect("close");
}

#[test]
fn prefetched_reads_see_rewrites_and_fail_on_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pool, v, path, where_) = written_pool(dir.path());
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
