//! A volume grown without a commit (as a file grows under NFS WRITEs) keeps its committed
//! root, the tree of the old size, until the next commit. Destroy, rollback, diff and scrub
//! walk committed trees: right after a grow, across a change of tree height (512 -> 513 blocks
//! of 4 KiB) and within one, they must see the tree the size says, lose no acknowledged write,
//! and leave a pool that scrubs clean.

use pool::{MemDevice, Pool, PoolConfig, Recursion};
use std::sync::Arc;

const BS: u64 = 4096;

fn pool() -> Pool {
    let config = PoolConfig {
        sync_interval: None,
        ..PoolConfig::default()
    };
    Pool::create_on(Arc::new(MemDevice::new(64 << 20)), "p", config).expect("pool")
}

/// `p/a` of `blocks` blocks, written whole with 7s and committed.
fn written(pool: &Pool, blocks: u64) {
    pool.create_volume("p/a", blocks * BS, BS as u32, &Default::default())
        .expect("volume");
    let a = pool.volume("p/a").expect("a");
    a.write_at(0, &vec![7u8; (blocks * BS) as usize])
        .expect("write");
    pool.sync().expect("sync");
}

fn assert_clean(pool: &Pool) {
    let report = pool.scrub().expect("scrub");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[test]
fn destroy_right_after_a_grow() {
    for (from, to) in [(512, 513), (100, 200)] {
        let pool = pool();
        pool.create_volume("p/other", 8 * BS, BS as u32, &Default::default())
            .expect("other");
        written(&pool, from);
        pool.grow_volume("p/a", to * BS).expect("grow");
        pool.destroy("p/a")
            .unwrap_or_else(|e| panic!("{from} -> {to} blocks: {e}"));
        assert_clean(&pool);
    }
}

#[test]
fn rollback_right_after_a_grow() {
    let pool = pool();
    written(&pool, 512);
    pool.snapshot(&["p/a@s"]).expect("snapshot");
    let a = pool.volume("p/a").expect("a");
    a.write_at(0, &vec![8u8; BS as usize]).expect("write");
    pool.sync().expect("sync");
    pool.grow_volume("p/a", 513 * BS).expect("grow");
    pool.rollback("p/a@s").expect("rollback");
    let mut got = vec![0u8; BS as usize];
    pool.volume("p/a")
        .expect("a")
        .read_at(0, &mut got)
        .expect("read");
    assert!(got.iter().all(|&x| x == 7), "rolled back to the snapshot");
    assert_clean(&pool);
}

#[test]
fn diff_and_scrub_right_after_a_grow() {
    let pool = pool();
    written(&pool, 512);
    pool.snapshot(&["p/a@s"]).expect("snapshot");
    let a = pool.volume("p/a").expect("a");
    pool.grow_volume("p/a", 513 * BS).expect("grow");
    a.write_at(512 * BS, &vec![9u8; BS as usize])
        .expect("write the new block");
    let changed = pool.diff("p/a@s", None).expect("diff");
    assert_eq!(changed, vec![(512 * BS, BS)]);
    assert_clean(&pool);
}

#[test]
fn a_recursive_destroy_after_a_grow_keeps_writes_until_it_succeeds() {
    let pool = pool();
    written(&pool, 512);
    pool.snapshot(&["p/a@s"]).expect("snapshot");
    pool.grow_volume("p/a", 513 * BS).expect("grow");
    let a = pool.volume("p/a").expect("a");
    a.write_at(BS, &vec![9u8; BS as usize]).expect("write");
    let gone = pool
        .destroy_with("p/a", Recursion::Snapshots)
        .expect("destroy -r");
    assert_eq!(gone.len(), 2, "{gone:?}");
    assert_clean(&pool);
}
