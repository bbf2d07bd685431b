//! FORMAT.md, "Frees": the uberblocks of the DEFER_TXGS txgs before the newest durable one
//! describe intact trees, so opening can fall back to them; that must hold even when the power
//! is cut in the middle of the next commit, after it has written everything but its uberblock
//! (the commit that releases old frees and may write into, or punch, what they held), and
//! after an open that fell back far enough to rebuild the space map.

mod common;

use common::Watched;
use pool::spacemap::DEFER_TXGS;
use pool::{Device, MemDevice, Pool, PoolConfig, VolumeHandle};
use std::sync::Arc;

const MIB: usize = 1 << 20;

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
    let dev = Arc::new(Watched::new(32 * MIB));
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
    dev.image_at_next_sync();
    v.write_at(0, &vec![3u8; 4 * MIB]).expect("write 3s");
    pool.sync().expect("the commit that is cut");
    let mut image = dev.take_sync_image().expect("an image taken at the cut");
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
