//! Where a commit puts buffered data: in runs of contiguous space, one write per run, even
//! when free space is riddled with the single-block holes random overwrites leave (filling
//! those block by block made the commit one small write per block).

mod common;

use common::Watched;
use pool::{Pool, PoolConfig};
use std::sync::Arc;

#[test]
fn a_commit_writes_scattered_blocks_in_contiguous_runs() {
    let dev = Arc::new(Watched::new(64 << 20));
    let config = PoolConfig {
        sync_interval: None,
        ..PoolConfig::default()
    };
    let pool = Pool::create_on(dev.clone(), "p", config).expect("pool");
    let none = Default::default();
    pool.create_volume("p/w", 1 << 20, 4096, &none).expect("w");
    pool.create_volume("p/v", 8 << 20, 4096, &none).expect("v");
    let (w, v) = (
        pool.volume("p/w").expect("w"),
        pool.volume("p/v").expect("v"),
    );
    // w's 1 MiB, then v's 8 MiB behind it, in small (buffered) writes.
    for i in 0..256u64 {
        w.write_at(i * 4096, &[1u8; 2048]).expect("write w");
    }
    pool.sync().expect("sync");
    for i in 0..2048u64 {
        v.write_at(i * 4096, &[1u8; 2048]).expect("write v");
    }
    pool.sync().expect("sync");
    // Every other block of v again: 1,024 single-block holes once released. Destroying w
    // frees a 1 MiB run in front of them, where next-fit moves back to.
    for i in (0..2048u64).step_by(2) {
        v.write_at(i * 4096, &[2u8; 2048]).expect("rewrite");
    }
    drop(w);
    pool.destroy("p/w").expect("destroy w");
    for _ in 0..=pool::spacemap::RELEASE_COMMITS {
        pool.sync().expect("sync");
    }
    // 512 scattered blocks in one commit: more than the 1 MiB run holds, so block-by-block
    // allocation would go on into the holes, one write each.
    for i in (1..2048u64).step_by(4) {
        v.write_at(i * 4096, &[3u8; 2048]).expect("scattered write");
    }
    dev.take_write_calls();
    pool.sync().expect("sync");
    let calls = dev.take_write_calls();
    assert!(
        calls < 64,
        "a commit of 512 scattered blocks took {calls} writes"
    );
    let mut b = [0u8; 1];
    v.read_at(5 * 4096, &mut b).expect("read");
    assert_eq!(b[0], 3);
    assert!(pool.scrub().expect("scrub").errors.is_empty());
}
