//! The dataset directory at scale: hundreds of clones span several directory leaves; a commit
//! that changes one dataset writes about as much as it does in a pool with ten datasets (only
//! the changed leaf, not the whole directory); destroying some, reopening and scrubbing keeps
//! exactly the rest.

mod common;

use common::Watched;
use pool::{MemDevice, Pool, PoolConfig};
use std::collections::BTreeMap;
use std::sync::Arc;

fn config() -> PoolConfig {
    PoolConfig {
        sync_interval: None,
        dirty_max: 16 << 20,
        ..PoolConfig::default()
    }
}

#[test]
fn a_commit_writes_only_the_directory_leaves_that_changed() {
    const CLONES: usize = 400;
    let dev = Arc::new(Watched::new(64 << 20));
    let pool = Pool::create_on(dev.clone(), "tank", config()).expect("create");
    pool.create_volume("tank/img", 1 << 20, 4096, &BTreeMap::new())
        .expect("image");
    let img = pool.volume("tank/img").expect("volume");
    img.write_at(0, &[7u8; 8192]).expect("write");
    img.flush().expect("flush");
    pool.snapshot(&["tank/img@base"]).expect("snapshot");
    let clone_cost = |name: &str| {
        let before = dev.written();
        pool.clone_snapshot("tank/img@base", name, &BTreeMap::new())
            .expect("clone");
        dev.written() - before
    };
    let mut small = Vec::new();
    for i in 0..CLONES {
        let cost = clone_cost(&format!("tank/c{i}"));
        if (5..10).contains(&i) {
            small.push(cost);
        }
    }
    let large: Vec<u64> = (0..5)
        .map(|i| clone_cost(&format!("tank/late{i}")))
        .collect();
    let (small, large) = (small.iter().max().copied(), large.iter().max().copied());
    let (small, large) = (small.expect("costs"), large.expect("costs"));
    // The whole directory of 400 clones encodes to well over 40 KiB; one leaf is a few KiB.
    assert!(
        large <= small + 8192,
        "a clone among {CLONES} wrote {large} bytes, among 10 it wrote {small}"
    );

    // Destroy every third clone, write into a few, reopen: exactly the rest remain and verify.
    for i in (0..CLONES).step_by(3) {
        pool.destroy(&format!("tank/c{i}")).expect("destroy");
    }
    for i in [1usize, 200, 398] {
        let v = pool.volume(&format!("tank/c{i}")).expect("clone");
        v.write_at(4096, &[i as u8; 4096]).expect("write");
    }
    pool.sync().expect("sync");
    drop(img);
    drop(pool);
    let bytes = dev.snapshot();
    let pool = Pool::open(Arc::new(MemDevice::from_bytes(bytes)), config()).expect("reopen");
    let names: Vec<String> = pool.names().into_iter().map(|(n, _, _)| n).collect();
    for i in 0..CLONES {
        let name = format!("tank/c{i}");
        assert_eq!(names.contains(&name), i % 3 != 0, "{name}");
    }
    for i in [1usize, 200, 398] {
        let v = pool.volume(&format!("tank/c{i}")).expect("clone");
        let mut b = vec![0u8; 8192];
        v.read_at(0, &mut b).expect("read");
        assert_eq!(&b[..4096], &[7u8; 4096][..]);
        assert_eq!(&b[4096..], &[i as u8; 4096][..]);
    }
    let report = pool.scrub().expect("scrub");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}
