//! FORMAT.md, "Frees": the uberblocks of the DEFER_TXGS txgs before the newest durable one
//! describe intact trees, so opening can fall back to them; that must hold even when the power
//! is cut in the middle of the next commit, after it has written everything but its uberblock
//! (the commit that releases old frees and may write into, or punch, what they held), and
//! after an open that fell back far enough to rebuild the space map.

use pool::spacemap::DEFER_TXGS;
use pool::{Device, MemDevice, Pool, PoolConfig, VolumeHandle};
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const MIB: usize = 1 << 20;

/// A memory device that, once armed, keeps a copy of its bytes as they are at the next sync:
/// in a commit, the sync before the uberblock is written.
struct CutBeforeUberblock {
    inner: MemDevice,
    armed: AtomicBool,
    image: Mutex<Option<Vec<u8>>>,
}

impl Device for CutBeforeUberblock {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        self.inner.write_vectored_at(bufs, offset)
    }
    fn sync(&self) -> io::Result<()> {
        if self.armed.swap(false, Ordering::AcqRel) {
            *self.image.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.inner.snapshot());
        }
        self.inner.sync()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.punch_hole(offset, len)
    }
    fn describe(&self) -> String {
        "memory device cut before an uberblock".into()
    }
}

/// A pool on `dev` whose volume `p/v` holds 1s as of the returned txg A, and 2s written over
/// them but not yet committed.
fn overwritten_once(dev: Arc<dyn Device>, config: &PoolConfig) -> (Pool, VolumeHandle, u64) {
    let pool = Pool::create_on(dev, "p", config.clone()).expect("pool");
    pool.create_volume("p/v", 4 * MIB as u64, 4096, &Default::default())
        .expect("volume");
    let v = pool.volume("p/v").expect("open");
    v.write_at(0, &vec![1u8; 4 * MIB]).expect("write 1s");
    let a = pool.sync().expect("commit A");
    v.write_at(0, &vec![2u8; 4 * MIB]).expect("write 2s");
    (pool, v, a)
}

/// Txg A holds a volume of 1s; A + 1 overwrites them (freeing A's blocks); empty commits make
/// A + DEFER_TXGS the newest. The next commit writes 3s and is cut before its uberblock, and
/// the uberblocks after A are lost: the pool must open at A with the 1s intact.
fn oldest_fallback_survives_a_cut_in_the_next_commit(autotrim: bool) {
    let dev = Arc::new(CutBeforeUberblock {
        inner: MemDevice::new(32 * MIB),
        armed: AtomicBool::new(false),
        image: Mutex::new(None),
    });
    let config = PoolConfig {
        sync_interval: None,
        autotrim,
        ..PoolConfig::default()
    };
    let (pool, v, a) = overwritten_once(dev.clone(), &config);
    for _ in 0..DEFER_TXGS {
        pool.sync().expect("commit");
    }
    assert_eq!(pool.txg(), a + DEFER_TXGS);
    dev.armed.store(true, Ordering::Release);
    v.write_at(0, &vec![3u8; 4 * MIB]).expect("write 3s");
    pool.sync().expect("the commit that is cut");
    let mut image = dev
        .image
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .expect("an image taken at the cut");
    drop(v);
    drop(pool);
    // The uberblock ring starts at sector 2, one slot per txg modulo 64.
    for t in a + 1..=a + DEFER_TXGS {
        let at = (2 + t % 64) as usize * 4096;
        image[at..at + 4096].fill(0);
    }
    let pool = Pool::open(Arc::new(MemDevice::from_bytes(image)), config).expect("open at A");
    assert_eq!(pool.txg(), a, "the oldest promised fallback");
    let mut got = vec![0u8; 4 * MIB];
    pool.volume("p/v")
        .expect("volume")
        .read_at(0, &mut got)
        .expect("txg A's blocks read and verify");
    assert!(got.iter().all(|&x| x == 1), "txg A's data");
    assert!(pool.scrub().expect("scrub").is_clean());
}

#[test]
fn the_oldest_fallback_survives_a_cut_in_the_next_commit() {
    oldest_fallback_survives_a_cut_in_the_next_commit(false);
}

#[test]
fn the_oldest_fallback_survives_a_cut_in_the_next_commit_with_autotrim() {
    oldest_fallback_survives_a_cut_in_the_next_commit(true);
}

/// Opening two txgs back finds its space-map copy overwritten by the newer txg, and rebuilds
/// the allocator from the block trees. The frees still deferred at that txg (blocks of the
/// older trees it can itself fall back to) must stay allocated through the rebuild: the
/// accounting matches an open of the same txg that needs no rebuild.
#[test]
fn a_rebuilt_space_map_keeps_deferred_frees_allocated() {
    let dev = Arc::new(MemDevice::new(32 * MIB));
    let config = PoolConfig {
        sync_interval: None,
        ..PoolConfig::default()
    };
    let (pool, v, a) = overwritten_once(dev.clone(), &config);
    let b = pool.sync().expect("commit B, freeing A's blocks");
    assert_eq!(b, a + 1);
    let at_b = dev.snapshot();
    pool.sync().expect("commit B + 1");
    pool.sync().expect("commit B + 2");
    let mut image = dev.snapshot();
    drop(v);
    drop(pool);

    let normal = Pool::open(Arc::new(MemDevice::from_bytes(at_b)), config.clone()).expect("open");
    assert_eq!(normal.txg(), b);
    let want = normal.info();
    assert!(
        want.deferred >= 4 * MIB as u64,
        "A's blocks are deferred at B"
    );

    for t in b + 1..=b + 2 {
        let at = (2 + t % 64) as usize * 4096;
        image[at..at + 4096].fill(0);
    }
    let rebuilt = Pool::open(Arc::new(MemDevice::from_bytes(image)), config).expect("open");
    assert_eq!(rebuilt.txg(), b);
    let got = rebuilt.info();
    assert_eq!(
        (got.allocated, got.deferred),
        (want.allocated, want.deferred),
        "allocated and deferred bytes after the rebuild"
    );
    assert!(rebuilt.scrub().expect("scrub").is_clean());
}
