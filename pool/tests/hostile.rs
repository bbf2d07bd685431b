//! Crafted pool files. Checksums catch damage, not an attacker, who can compute them: a
//! pool file with a valid label and metadata that describe an impossible layout, extents
//! outside the device or an absurd block size is refused at open with a corruption error,
//! never a panic, an abort or a write over live data.
//!
//! The dataset graph is checked too: names valid and unique, a clone's origin an existing
//! snapshot, no origin chain that loops. Accounting fields (`referenced`, `written`) too
//! small for what is freed stay at zero (no wrap, no panic), and scrub reports them; counts
//! too large saturate. Tree and deadlist pointers are checked as they are loaded: inside the
//! data area, and as long as the block they point at. Left (known): deferred frees naming
//! live blocks, and two trees sharing a block, are not checked at open (scrub finds both).

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
    /// Deferred frees to write as the chain (`None`: keep the pool's).
    deferred: Option<Vec<DeferredFree>>,
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
            deferred: None,
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
        if let Some(frees) = self.deferred.take() {
            let mut head = BlockPtr::HOLE;
            for chunk in frees.chunks(DEFERRED_MAX_ENTRIES) {
                let b = encode_deferred_block(txg, &head, chunk);
                head = self.put(&b, txg);
            }
            self.meta.deferred_head = head;
            self.meta.deferred_count = frees.len() as u64;
        }
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

/// A deferred free of `sectors` at `sector`, made by `txg`.
fn free(txg: u64, sector: u64, sectors: u32) -> DeferredFree {
    DeferredFree {
        txg,
        sector,
        sectors,
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
    img.deferred = Some(vec![free(0, 1 << 40, 1)]);
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

/// Runs `f`, failing the test if it panics (a debug build's overflow checks included).
fn no_panic(what: &str, f: impl FnOnce()) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    assert!(r.is_ok(), "{what} panicked");
}

/// Counts near the top of `u64` (`referenced`, `written`, a deadlist's count): listings,
/// commits and walks saturate, they do not overflow.
#[test]
fn counts_near_u64_max_neither_panic_nor_wrap() {
    let mut img = Img::parse(base(|p| {
        p.snapshot(&["tank/v@s"]).unwrap();
        p.volume("tank/v")
            .unwrap()
            .write_at(0, &vec![0xcd; 16384])
            .unwrap();
        p.sync().unwrap();
    }));
    assert!(!img.ds("v").deadlist.is_hole());
    img.ds("v").referenced = u64::MAX / 2;
    img.ds("v").written = u64::MAX;
    img.ds("v").deadlist_count = u64::MAX;
    let pool = open_quietly(img.finish()).expect("opens");
    no_panic("listing", || {
        let d = pool.dataset("tank/v").unwrap();
        assert_eq!(d.referenced, u64::MAX, "saturated");
        pool.list().unwrap();
    });
    no_panic("a commit", || {
        pool.grow_volume("tank/v", 2 << 20).unwrap();
        let v = pool.volume("tank/v").unwrap();
        v.write_at(1 << 20, &vec![0xcd; 16384]).unwrap();
        pool.sync().unwrap();
    });
}

/// A tree pointer whose checksum is right for what it points at, but that lies outside the
/// data area, or is longer than a block: the volume's map is refused with a corruption error
/// naming the volume. Believed, an overwrite freed its extent: past the device that bricked
/// the pool and then panicked; over the data area it handed another volume's live blocks
/// to new writes.
#[test]
fn tree_pointers_outside_the_data_area_or_longer_than_a_block_are_refused() {
    let craft = |img: &mut Img, p: BlockPtr| {
        let txg = img.ub.txg;
        let root = img.put(&encode_indirect(&[p]), txg);
        img.ds("v").root = root;
    };
    // Past the device.
    let mut img = Img::parse(base(|_| {}));
    let birth = img.ub.txg;
    craft(
        &mut img,
        BlockPtr {
            sector: 1 << 40,
            sectors: 4,
            birth,
            checksum: 1,
        },
    );
    let pool = open_quietly(img.finish()).expect("opens (maps load on use)");
    let e = pool
        .volume("tank/v")
        .and_then(|v| v.write_at(0, &vec![0xcd; 16384]))
        .expect_err("a write through the crafted map");
    assert_eq!(e.kind(), pool::ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("tank/v"), "{e}");

    // Over the whole data area, another volume's blocks included, checksummed as one block.
    let mut img = Img::parse(base(|p| {
        p.create_volume("tank/w", 1 << 20, 16384, &Default::default())
            .unwrap();
        p.volume("tank/w")
            .unwrap()
            .write_at(0, &vec![0x77; 1 << 20])
            .unwrap();
    }));
    let first = img.label.data_offset / SECTOR;
    let at = (first * SECTOR) as usize;
    let p = BlockPtr {
        sector: first,
        sectors: (img.next - 100 - first) as u32,
        birth,
        checksum: checksum(&img.bytes[at..at + 16384], img.label.guid),
    };
    craft(&mut img, p);
    let pool = open_quietly(img.finish()).expect("opens");
    let e = pool
        .volume("tank/v")
        .and_then(|v| v.write_at(0, &vec![0xcd; 16384]))
        .expect_err("a write through the crafted map");
    assert_eq!(e.kind(), pool::ErrorKind::Corrupt, "{e}");
    // Destroying the volume walks its tree to free it: refused too, nothing freed.
    assert!(pool.destroy("tank/v").is_err());
    pool.sync().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    pool.volume("tank/w").unwrap().read_at(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0x77), "w's blocks were given away");
    // Scrub finds the crafted pointer (it claims w's blocks a second time).
    assert!(!pool.scrub().unwrap().errors.is_empty());
}

/// A size of more blocks than a volume may have (2^40), or a next dataset id near the top of
/// `u64`: refused at open. Believed, the first read built a 2 GiB block map past a 64 MiB
/// memory limit, diff overflowed, and creating a dataset overflowed the id.
#[test]
fn sizes_and_ids_no_pool_reaches_are_refused_at_open() {
    let mut img = Img::parse(base(|_| {}));
    img.ds("v").size = u64::MAX / 16384 * 16384;
    img.ds("v").root = BlockPtr::HOLE;
    never_loaded(img.finish(), "a size of 2^50 blocks", |p| {
        p.dataset("tank/v").is_ok_and(|d| d.size > 1 << 60)
    });

    let mut img = Img::parse(base(|_| {}));
    img.meta.next_dataset_id = u64::MAX;
    refused(img.finish(), "next dataset id u64::MAX");
}

/// A size within the 2^40-block cap whose map alone (not counting leaves) exceeds the memory
/// limit: the volume's first use is refused before the map is allocated.
#[test]
fn a_map_larger_than_the_memory_limit_is_refused_before_it_is_allocated() {
    let mut img = Img::parse(base(|_| {}));
    img.ds("v").size = 1 << 48;
    img.ds("v").root = BlockPtr::HOLE;
    let config = PoolConfig {
        memory_limit: Some(64 << 20),
        ..config()
    };
    let pool = Pool::open(Arc::new(MemDevice::from_bytes(img.finish())), config).expect("opens");
    let e = pool
        .volume("tank/v")
        .and_then(|v| v.read_at(0, &mut [0u8; 4096]))
        .expect_err("a 2 GiB map under a 64 MiB limit");
    assert_eq!(e.kind(), pool::ErrorKind::TooLarge, "{e}");
}

/// A snapshot name longer than today's 255-byte limit, written by an older tarn (the limit
/// came later), does not keep the pool from opening.
#[test]
fn a_pool_holding_a_snapshot_name_past_the_limit_opens() {
    let mut img = Img::parse(base(|p| {
        p.snapshot(&["tank/v@s"]).unwrap();
    }));
    let long = "x".repeat(300);
    img.ds.iter_mut().find(|d| d.name == "s").unwrap().name = long.clone();
    let pool = open_quietly(img.finish()).expect("opens");
    assert!(pool.dataset(&format!("tank/v@{long}")).is_ok());
}

/// A space-map chunk that verifies but frees the labels and uberblocks (crafted): not
/// believed. The map is rebuilt from the trees, so new writes land in free space and the
/// volume's data survives them (once, the allocator handed out sectors under the label,
/// accounting wrapped to 16384P, and a later import overwrote live blocks).
#[test]
fn a_space_map_that_frees_the_reserved_area_is_rebuilt() {
    let mut img = Img::parse(base(|_| {}));
    let off = img.label.spacemap_offsets[img.ub.spacemap_copy as usize] as usize;
    let chunk = &mut img.bytes[off..off + SECTOR as usize];
    let stamp = u64::from_le_bytes(chunk[8..16].try_into().unwrap());
    chunk[32..40].fill(0); // the bits of sectors 0..64: labels, ring, space maps
    let sum = checksum(&chunk[32..], img.label.guid ^ stamp.rotate_left(32));
    chunk[16..32].copy_from_slice(&sum.to_le_bytes());
    let pool = open_quietly(img.finish()).expect("opens, rebuilding the map");
    assert!(pool.info().allocated < DEV as u64, "{:?}", pool.info());
    pool.create_volume("tank/w", 4 << 20, 16384, &Default::default())
        .unwrap();
    pool.volume("tank/w")
        .unwrap()
        .write_at(0, &vec![0x11; 4 << 20])
        .unwrap();
    pool.sync().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    pool.volume("tank/v").unwrap().read_at(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0xab), "v's blocks were given away");
    let report = pool.scrub().unwrap();
    assert!(report.is_clean(), "{:?}", report.errors);
}

/// Deferred frees that overlap each other, or name free space, are refused at open: their
/// release would free a sector twice.
#[test]
fn overlapping_or_unallocated_deferred_frees_are_refused() {
    let mut img = Img::parse(base(|_| {}));
    let first = img.label.data_offset / SECTOR;
    img.deferred = Some(vec![free(1, first, 8), free(2, first + 4, 8)]);
    refused(img.finish(), "overlapping deferred frees");
    let mut img = Img::parse(base(|_| {}));
    let unallocated = img.next - 300;
    img.deferred = Some(vec![free(1, unallocated, 4)]);
    refused(img.finish(), "a deferred free of free space");
}

/// A deferred-free chain whose meta block miscounts it, or whose block another txg wrote,
/// fails its txg: the pool opens an older one or not at all, never the crafted state.
#[test]
fn a_deferred_free_chain_that_disagrees_with_its_meta_block_fails_its_txg() {
    for case in [
        "count too small",
        "count too large",
        "block of another txg",
        "count beyond the data area",
        "block longer than 16 KiB",
    ] {
        let mut img = Img::parse(base(|_| {}));
        let txg = img.ub.txg;
        let first = img.label.data_offset / SECTOR;
        let frees = vec![free(txg, first, 1), free(txg, first + 1, 1)];
        match case {
            "block of another txg" => {
                let b = encode_deferred_block(txg - 1, &BlockPtr::HOLE, &frees);
                img.meta.deferred_head = img.put(&b, txg);
                img.meta.deferred_count = 2;
            }
            "count beyond the data area" => {
                let b = encode_deferred_block(txg, &BlockPtr::HOLE, &frees);
                img.meta.deferred_head = img.put(&b, txg);
                img.meta.deferred_count = u64::MAX;
            }
            "block longer than 16 KiB" => {
                let mut b = encode_deferred_block(txg, &BlockPtr::HOLE, &frees);
                b.resize(DEFERRED_MAX_BYTES as usize + 4096, 0);
                img.meta.deferred_head = img.put(&b, txg);
                img.meta.deferred_count = 2;
            }
            _ => img.deferred = Some(frees),
        }
        let bytes = match case {
            "block of another txg" | "count beyond the data area" | "block longer than 16 KiB" => {
                img.finish()
            }
            _ => {
                // Re-encode with the list written, then lie about its length.
                let count = if case == "count too small" { 1 } else { 3 };
                let mut img = Img::parse(img.finish());
                img.meta.deferred_count = count;
                // Past the blocks the first finish wrote.
                img.next -= 50;
                img.finish()
            }
        };
        match open_quietly(bytes) {
            Ok(p) => assert!(p.info().txg < txg, "{case}: opened the crafted txg"),
            Err(e) => assert_eq!(e.kind(), pool::ErrorKind::Corrupt, "{case}: {e}"),
        }
    }
}

/// A directory listing one dataset id twice: the second entry silently replaced the first
/// (`tank/v` became `tank/q`, and scrub said nothing).
#[test]
fn a_dataset_id_listed_twice_is_never_loaded() {
    let mut img = Img::parse(base(|_| {}));
    let mut twin = img.ds("v").clone();
    twin.name = "q".into();
    img.ds.push(twin);
    never_loaded(img.finish(), "an id twice", |p| p.dataset("tank/q").is_ok());
}

/// A damaged version field in the first label copy does not hide the intact second one; a
/// label of another version that verifies (a newer format, or an upgrade cut short after its
/// first copy) is refused whatever the other copy says.
#[test]
fn a_damaged_label_version_falls_back_to_the_other_copy() {
    let mut bytes = base(|_| {});
    bytes[8] = 3;
    let pool = open_quietly(bytes).expect("opens from the second label");
    assert!(pool.dataset("tank/v").is_ok());

    let mut bytes = base(|_| {});
    let mut newer = LabelPhys::decode(&bytes[..4096], "x").unwrap().unwrap();
    newer.version = FORMAT_VERSION + 1;
    bytes[..4096].copy_from_slice(&newer.encode());
    let e = open_quietly(bytes).err().expect("a newer label is refused");
    assert_eq!(e.kind(), pool::ErrorKind::Unsupported, "{e}");
}

/// Scrub of an indirect block that fails its checksum reports that block, not the made-up
/// pointers inside it (once 771 errors and 220 MB for one bad block); and a pointer into the
/// labels, checksummed to match, is reported as loading would refuse it.
#[test]
fn scrub_reports_a_bad_indirect_block_once_and_pointers_into_the_labels() {
    let img = Img::parse(base(|_| {}));
    let root = img.ds.iter().find(|d| d.name == "v").unwrap().root;
    let mut bytes = img.bytes;
    let at = root.offset() as usize;
    for (i, b) in bytes[at..at + root.byte_len() as usize]
        .iter_mut()
        .enumerate()
    {
        *b = (i as u8).wrapping_mul(151).wrapping_add(7);
    }
    let pool = open_quietly(bytes).expect("opens (maps load on use)");
    let report = pool.scrub().unwrap();
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);

    let mut img = Img::parse(base(|_| {}));
    let txg = img.ub.txg;
    let label = BlockPtr {
        sector: 0,
        sectors: 4,
        birth: txg,
        checksum: checksum(&img.bytes[..16384], img.label.guid),
    };
    let root = img.put(&encode_indirect(&[label]), txg);
    img.ds("v").root = root;
    let pool = open_quietly(img.finish()).expect("opens");
    let report = pool.scrub().unwrap();
    assert!(
        report.errors.iter().any(|e| e.message.contains("sector 0")),
        "{:?}",
        report.errors
    );
}
