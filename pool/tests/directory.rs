//! The dataset directory at scale: hundreds of clones span several directory leaves; a commit
//! that changes one dataset writes about as much as it does in a pool with ten datasets (only
//! the changed leaf, not the whole directory); destroying some, reopening and scrubbing keeps
//! exactly the rest.

use pool::{Device, MemDevice, Pool, PoolConfig};
use std::collections::BTreeMap;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A memory device that counts the bytes written to it.
struct Counting {
    inner: MemDevice,
    written: AtomicU64,
}

impl Device for Counting {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.written.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner.write_at(buf, offset)
    }
    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let n: usize = bufs.iter().map(|b| b.len()).sum();
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        self.inner.write_vectored_at(bufs, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.punch_hole(offset, len)
    }
    fn describe(&self) -> String {
        "counting memory device".into()
    }
}

fn config() -> PoolConfig {
    PoolConfig {
        sync_interval: None,
        dirty_max: 16 << 20,
    }
}

#[test]
fn a_commit_writes_only_the_directory_leaves_that_changed() {
    const CLONES: usize = 400;
    let dev = Arc::new(Counting {
        inner: MemDevice::new(64 << 20),
        written: AtomicU64::new(0),
    });
    let pool = Pool::create_on(dev.clone(), "tank", config()).expect("create");
    pool.create_volume("tank/img", 1 << 20, 4096, &BTreeMap::new())
        .expect("image");
    let img = pool.volume("tank/img").expect("volume");
    img.write_at(0, &[7u8; 8192]).expect("write");
    img.flush().expect("flush");
    pool.snapshot(&["tank/img@base"]).expect("snapshot");
    let clone_cost = |name: &str| {
        let before = dev.written.load(Ordering::Relaxed);
        pool.clone_snapshot("tank/img@base", name, &BTreeMap::new())
            .expect("clone");
        dev.written.load(Ordering::Relaxed) - before
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
    let bytes = dev.inner.snapshot();
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
