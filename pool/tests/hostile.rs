//! Crafted pool files. Checksums catch damage, not an attacker, who can compute them: a
//! pool file with a valid label and metadata that describe an impossible layout, extents
//! outside the device or an absurd block size is refused at open with a corruption error,
//! never a panic, an abort or a write over live data.
//!
//! The dataset graph is checked too: names valid and unique, a clone's origin an existing
//! snapshot, no origin chain that loops. Accounting fields (`referenced`, `written`) too
//! small for what is freed stay at zero (no wrap, no panic), and scrub reports them. Left
//! (known): deferred frees naming live blocks are not checked at open.

#![allow(clippy::unwrap_used)]

use pool::phys::*;
use pool::{MemDevice, Pool, PoolConfig};
use std::sync::Arc;

fn config() -> PoolConfig {
    PoolConfig {
        sync_interval: None,
        dirty_max: 64 << 20,
        ..PoolConfig::default()
    }
}

const DEV: usize = 32 << 20;

struct Img {
    bytes: Vec<u8>,
    label: LabelPhys,
    ub: UberblockPhys,
    meta: MetaPhys,
    ds: Vec<DatasetPhys>,
    /// Next free sector at the end of the device for crafted blocks.
    next: u64,
}

impl Img {
    fn parse(bytes: Vec<u8>) -> Img {
        let label = LabelPhys::decode(&bytes[..4096], "x").unwrap().unwrap();
        let ub = (0..64)
            .filter_map(|i| {
                UberblockPhys::decode(&bytes[8192 + i * 4096..8192 + (i + 1) * 4096], label.guid)
            })
            .max_by_key(|u| u.txg)
            .unwrap();
        let m = &bytes[ub.root.offset() as usize..(ub.root.offset() + ub.root.byte_len()) as usize];
        let meta = MetaPhys::decode(m).unwrap();
        let mut ds = Vec::new();
        for (i, p) in &meta.leaves {
            let b = &bytes[p.offset() as usize..(p.offset() + p.byte_len()) as usize];
            ds.extend(decode_dir_leaf(b, *i).unwrap());
        }
        let next = (bytes.len() as u64 / SECTOR) - 200;
        Img {
            bytes,
            label,
            ub,
            meta,
            ds,
            next,
        }
    }
    fn put(&mut self, data: &[u8], birth: u64) -> BlockPtr {
        let sectors = data.len().div_ceil(4096) as u64;
        let at = (self.next * SECTOR) as usize;
        self.bytes[at..at + data.len()].copy_from_slice(data);
        let p = BlockPtr {
            sector: self.next,
            sectors: sectors as u32,
            birth,
            checksum: checksum(data, self.label.guid),
        };
        self.next += sectors;
        p
    }
    fn ds(&mut self, name: &str) -> &mut DatasetPhys {
        self.ds.iter_mut().find(|d| d.name == name).unwrap()
    }
    /// Re-encodes directory, meta block, uberblock (same txg) and label.
    fn finish(mut self) -> Vec<u8> {
        let mut by: std::collections::BTreeMap<u64, Vec<DatasetPhys>> = Default::default();
        for d in &self.ds {
            by.entry(d.id / DIR_LEAF_IDS).or_default().push(d.clone());
        }
        let txg = self.ub.txg;
        let mut leaves = vec![];
        for (i, v) in by {
            let refs: Vec<&DatasetPhys> = v.iter().collect();
            let b = encode_dir_leaf(i, &refs);
            leaves.push((i, self.put(&b, txg)));
        }
        self.meta.leaves = leaves;
        self.meta.txg = txg;
        let mb = self.meta.encode();
        self.ub.root = self.put(&mb, txg);
        let u = self.ub.encode();
        let slot = 8192 + (self.ub.txg % 64) as usize * 4096;
        self.bytes[slot..slot + 4096].copy_from_slice(&u);
        let l = self.label.encode();
        self.bytes[..4096].copy_from_slice(&l);
        self.bytes[4096..8192].copy_from_slice(&l);
        self.bytes
    }
}

fn base(f: impl FnOnce(&Pool)) -> Vec<u8> {
    let dev = Arc::new(MemDevice::new(DEV));
    let pool = Pool::create_on(dev.clone(), "tank", config()).unwrap();
    pool.create_volume("tank/v", 1 << 20, 16384, &Default::default())
        .unwrap();
    pool.volume("tank/v")
        .unwrap()
        .write_at(0, &vec![0xab; 1 << 20])
        .unwrap();
    pool.sync().unwrap();
    f(&pool);
    pool.sync().unwrap();
    drop(pool);
    dev.snapshot()
}

fn open(bytes: Vec<u8>) -> pool::Result<Pool> {
    Pool::open(Arc::new(MemDevice::from_bytes(bytes)), config())
}

/// Opening `bytes` neither panics nor aborts; returns what it returned.
fn open_quietly(bytes: Vec<u8>) -> pool::Result<Pool> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| open(bytes))) {
        Ok(r) => r,
        Err(_) => panic!("opening a crafted pool panicked"),
    }
}

/// Opening fails with a corruption error (and neither panics nor aborts).
fn refused(bytes: Vec<u8>, what: &str) {
    match open_quietly(bytes) {
        Ok(_) => panic!("{what}: a crafted pool opened"),
        Err(e) => assert_eq!(e.kind(), pool::ErrorKind::Corrupt, "{what}: {e}"),
    }
}

#[test]
fn a_label_with_an_impossible_layout_or_name_is_refused() {
    /// What a case does to the label.
    type Craft = fn(&mut LabelPhys);
    let cases: [(&str, Craft); 5] = [
        ("data offset near the end", |l| {
            l.data_offset = l.size - 300 * SECTOR
        }),
        ("space-map chunks u32::MAX", |l| {
            l.spacemap_chunks = u32::MAX
        }),
        ("space-map copy moved into the data area", |l| {
            l.spacemap_offsets[1] = l.data_offset + 64 * SECTOR
        }),
        ("a NUL in the name", |l| l.name = "ta\0nk".into()),
        // The name becomes the registry entry's file name on import.
        ("a path in the name", |l| {
            l.name = "/../../../../tmp/evil".into()
        }),
    ];
    for (what, craft) in cases {
        let mut img = Img::parse(base(|_| {}));
        craft(&mut img.label);
        refused(img.finish(), what);
    }
}

#[test]
fn extents_outside_the_data_area_are_refused_at_open() {
    // A deferred free past the device (releasing it indexed past the space map).
    let mut img = Img::parse(base(|_| {}));
    img.meta.deferred = vec![(0, vec![(1 << 40, 1)])];
    refused(img.finish(), "deferred free past the device");

    // A tree pointer past the device, met while rebuilding a damaged space map.
    let mut img = Img::parse(base(|_| {}));
    let txg = img.ub.txg;
    let bad = BlockPtr {
        sector: 1 << 40,
        sectors: 1,
        birth: txg,
        checksum: 1,
    };
    let root = img.put(&encode_indirect(&[bad]), txg);
    img.ds("v").root = root;
    let off = img.label.spacemap_offsets[img.ub.spacemap_copy as usize] as usize;
    img.bytes[off] ^= 1;
    refused(img.finish(), "pointer past the device in a rebuild");
}

#[test]
fn a_block_size_beyond_the_supported_range_is_never_loaded() {
    let mut img = Img::parse(base(|_| {}));
    img.ds("v").block_size = 1 << 28;
    img.ds("v").size = 1 << 28;
    // The newest metadata does not decode: the pool opens at an older txg (the fallback the
    // format promises) or not at all, and never with the crafted block size.
    if let Ok(pool) = open_quietly(img.finish()) {
        assert!(pool.dataset("tank/v").expect("v").block_size <= 131_072);
    }
}

#[test]
fn an_uberblock_from_the_far_future_is_not_the_pool() {
    let mut img = Img::parse(base(|_| {}));
    img.ub.txg = u64::MAX;
    img.ub.spacemap_copy = 1;
    // Its commits would wrap round and be lost; the uberblock is ignored instead, and the
    // pool opens at the newest real one (or not at all), without a panic either way.
    if let Ok(pool) = open_quietly(img.finish()) {
        assert!(pool.txg() < 1 << 62);
        pool.sync().expect("commits");
    }
}

/// Opening fails with a corruption error, or falls back to an older txg without the crafted
/// directory: either way the crafted graph is never loaded.
fn never_loaded(bytes: Vec<u8>, what: &str, loaded: impl Fn(&Pool) -> bool) {
    if let Ok(pool) = open_quietly(bytes) {
        assert!(!loaded(&pool), "{what}: loaded");
    }
}

#[test]
fn a_crafted_dataset_graph_is_never_loaded() {
    // A volume that is a clone of its own snapshot: walks of the origin chain never ended
    // (diff, send -i) or overflowed the stack (destroy -R).
    let mut img = Img::parse(base(|p| {
        p.snapshot(&["tank/v@s"]).unwrap();
    }));
    let sid = img.ds.iter().find(|d| d.name == "s").unwrap().id;
    img.ds("v").parent = sid;
    never_loaded(img.finish(), "a clone of its own snapshot", |p| {
        p.dataset("tank/v").is_ok_and(|d| d.origin.is_some())
    });

    // A clone whose origin is missing (promote panicked).
    let mut img = Img::parse(base(|_| {}));
    img.ds("v").parent = 999;
    never_loaded(img.finish(), "a missing origin", |p| {
        p.dataset("tank/v").is_ok_and(|d| d.origin.is_some())
    });

    // A volume named like a snapshot, and two volumes of one name.
    for (what, name) in [("a volume named v@s", "v@s"), ("a second volume v", "v")] {
        let mut img = Img::parse(base(|p| {
            p.snapshot(&["tank/v@s"]).unwrap();
        }));
        let mut impostor = img.ds("v").clone();
        impostor.name = name.into();
        impostor.id = img.meta.next_dataset_id;
        img.meta.next_dataset_id += 1;
        img.ds.push(impostor);
        never_loaded(img.finish(), what, |p| p.list().unwrap().len() > 2);
    }
}

/// A volume whose `referenced` and `written` say less than its tree holds: overwriting and
/// destroying it neither panics (a debug build's overflow check) nor wraps the counts, and
/// scrub says the accounting is wrong.
#[test]
fn accounting_too_small_for_what_is_freed() {
    let mut img = Img::parse(base(|_| {}));
    img.ds("v").referenced = 1;
    img.ds("v").written = 1;
    let pool = open_quietly(img.finish()).expect("opens");
    let report = pool.scrub().expect("scrub");
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.message.contains("referenced")),
        "{:?}",
        report.errors
    );
    let overwritten = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let v = pool.volume("tank/v").unwrap();
        v.write_at(0, &vec![0xcd; 1 << 20]).unwrap();
        pool.sync().unwrap();
        let d = pool.dataset("tank/v").unwrap();
        assert!(d.referenced <= 1 << 21 && d.written <= 1 << 21, "{d:?}");
        pool.destroy("tank/v").unwrap();
        pool.sync().unwrap();
    }));
    assert!(
        overwritten.is_ok(),
        "freeing what the counts did not hold panicked"
    );
}
