//! A model test: random create/write/discard/resize/flush/reopen/destroy against an in-memory
//! model. Data matches at every step, scrub stays clean, and destroying everything returns
//! allocated space to the empty pool's baseline.

use pool::{Device, MemDevice, Pool, PoolConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;

fn config() -> PoolConfig {
    PoolConfig {
        sync_interval: None,
        dirty_max: 4 << 20,
        ..PoolConfig::default()
    }
}

fn check(pool: &Pool, model: &BTreeMap<String, Vec<u8>>, ctx: &str) {
    let names: Vec<String> = pool.datasets().into_iter().map(|d| d.name).collect();
    assert_eq!(
        names,
        model.keys().cloned().collect::<Vec<_>>(),
        "{ctx}: dataset names"
    );
    for (name, want) in model {
        let v = pool.volume(name).expect("volume");
        assert_eq!(v.size(), want.len() as u64, "{ctx}: size of {name}");
        let mut got = vec![0u8; want.len()];
        v.read_at(0, &mut got).expect("read");
        assert!(got == *want, "{ctx}: contents of {name}");
    }
}

fn run(seed: u64, steps: usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let dev: Arc<dyn Device> = Arc::new(MemDevice::new(64 << 20));
    let mut pool = Pool::create_on(dev.clone(), "model", config()).expect("create");
    let baseline = pool.info().allocated;
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut n = 0;
    for step in 0..steps {
        let ctx = format!("seed {seed} step {step}");
        let names: Vec<String> = model.keys().cloned().collect();
        let op = rng.gen_range(0..100);
        if names.is_empty() || op < 6 {
            n += 1;
            let name = format!("model/d{}/v{n}", n % 3);
            let bs = 4096u32 << rng.gen_range(0..6);
            let size = rng.gen_range(1..(2 << 20));
            let info = pool
                .create_volume(&name, size, bs, &BTreeMap::new())
                .expect("create volume");
            assert_eq!(
                info.size % u64::from(bs),
                0,
                "{ctx}: size rounded to the block size"
            );
            assert!(info.size >= size && info.size < size + u64::from(bs));
            model.insert(name, vec![0; info.size as usize]);
            continue;
        }
        let name = names[rng.gen_range(0..names.len())].clone();
        let size = model[&name].len() as u64;
        match op {
            6..=9 => {
                pool.destroy(&name).expect("destroy");
                model.remove(&name);
                assert!(pool.volume(&name).is_err());
            }
            10..=13 => {
                let new = rng.gen_range(1..(3 << 20));
                let info = pool.resize_volume(&name, new).expect("resize");
                model
                    .get_mut(&name)
                    .expect("model")
                    .resize(info.size as usize, 0);
            }
            14..=18 => {
                pool.sync().expect("sync");
            }
            19..=21 => {
                drop(pool);
                pool = Pool::open(dev.clone(), config()).expect("reopen");
                check(&pool, &model, &ctx);
            }
            22..=30 => {
                let off = rng.gen_range(0..size);
                let len = rng.gen_range(1..=(size - off).min(300_000));
                let v = pool.volume(&name).expect("volume");
                if op % 2 == 0 {
                    v.discard(off, len).expect("discard");
                } else {
                    v.write_zeroes(off, len).expect("write zeroes");
                }
                model.get_mut(&name).expect("model")[off as usize..(off + len) as usize].fill(0);
            }
            31..=40 => {
                let off = rng.gen_range(0..size);
                let len = rng.gen_range(1..=(size - off).min(200_000)) as usize;
                let mut got = vec![0u8; len];
                pool.volume(&name)
                    .expect("volume")
                    .read_at(off, &mut got)
                    .expect("read");
                assert!(
                    got[..] == model[&name][off as usize..off as usize + len],
                    "{ctx}: read of {name} at {off}+{len}"
                );
            }
            _ => {
                let off = rng.gen_range(0..size);
                let len = rng.gen_range(1..=(size - off).min(200_000)) as usize;
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                pool.volume(&name)
                    .expect("volume")
                    .write_at(off, &data)
                    .expect("write");
                model.get_mut(&name).expect("model")[off as usize..off as usize + len]
                    .copy_from_slice(&data);
            }
        }
    }
    check(&pool, &model, &format!("seed {seed} end"));
    let report = pool.scrub().expect("scrub");
    assert!(report.is_clean(), "seed {seed}: {:?}", report.errors);
    for name in model.keys() {
        pool.destroy(name).expect("destroy all");
    }
    for _ in 0..=pool::spacemap::RELEASE_COMMITS {
        pool.sync().expect("sync");
    }
    // What remains deferred is only the last few txgs' meta blocks and deferred-free chains
    // (one block each here).
    let info = pool.info();
    assert!(
        info.deferred <= pool::spacemap::RELEASE_COMMITS * 2 * 4096,
        "seed {seed}: {} bytes still deferred",
        info.deferred
    );
    // Live metadata: the meta block, as in the empty pool, plus the one block of the
    // deferred-free chain that lists those frees (the empty pool had none to list).
    assert_eq!(
        info.allocated - info.deferred - 4096,
        baseline,
        "seed {seed}: destroying everything must return to the empty baseline"
    );
    assert!(pool.scrub().expect("scrub").is_clean());
}

#[test]
fn random_operations_match_the_model() {
    let seeds: u64 = std::env::var("TARN_MODEL_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    for seed in 0..seeds {
        run(seed, 300);
    }
}

#[test]
fn volumes_survive_reopen_from_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pool.tarn");
    let pool = Pool::create_file(&path, "tank", 64 << 20, config()).expect("create");
    pool.create_volume(
        "tank/a/b",
        5 << 20,
        16384,
        &[("role".to_string(), "image".to_string())].into(),
    )
    .expect("vol");
    let v = pool.volume("tank/a/b").expect("volume");
    let data: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 251) as u8).collect();
    v.write_at(12345, &data).expect("write");
    v.flush().expect("flush");
    let id = v.id();
    drop(v);
    pool.close().expect("close");
    let pool = Pool::open_path(&path, config()).expect("reopen");
    let info = pool.dataset("tank/a/b").expect("dataset");
    assert_eq!((info.id, info.props["role"].as_str()), (id, "image"));
    let mut got = vec![0u8; data.len()];
    pool.volume("tank/a/b")
        .expect("volume")
        .read_at(12345, &mut got)
        .expect("read");
    let first_bad = got.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(first_bad, None, "data differs after reopen");
    // Sparse: 3 MiB of data in a 64 MiB file occupies little more than the data.
    let blocks =
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&path).expect("stat")) * 512;
    assert!(
        blocks < 8 << 20,
        "pool file should stay sparse, uses {blocks} bytes"
    );
}

#[test]
fn rename_keeps_the_id_and_the_data() {
    let dev: Arc<dyn Device> = Arc::new(MemDevice::new(32 << 20));
    let pool = Pool::create_on(dev.clone(), "tank", config()).expect("create");
    let id = pool
        .create_volume("tank/a", 1 << 20, 4096, &BTreeMap::new())
        .expect("vol")
        .id;
    pool.create_volume("tank/b", 1 << 20, 4096, &BTreeMap::new())
        .expect("vol");
    let h = pool.volume("tank/a").expect("volume");
    h.write_at(5, b"kept").expect("write");
    assert!(pool.rename("tank/a", "tank/b").is_err(), "target exists");
    pool.rename("tank/a", "tank/x/y").expect("rename");
    assert_eq!(h.name(), "tank/x/y", "open handles follow the rename");
    assert!(pool.volume("tank/a").is_err());
    drop(h);
    drop(pool);
    let pool = Pool::open(dev, config()).expect("reopen");
    let info = pool.dataset("tank/x/y").expect("renamed");
    assert_eq!(info.id, id);
    let mut buf = [0u8; 4];
    pool.volume("tank/x/y")
        .expect("v")
        .read_at(5, &mut buf)
        .expect("read");
    assert_eq!(&buf, b"kept");
}

/// rename(2) over a volume: the target is replaced in one txg (no commit between its destroy
/// and the rename, so a crash never leaves its name missing), and one with snapshots is
/// refused with nothing changed.
#[test]
fn rename_replacing_swaps_in_one_txg() {
    let dev: Arc<dyn Device> = Arc::new(MemDevice::new(32 << 20));
    let pool = Pool::create_on(dev.clone(), "tank", config()).expect("create");
    for (name, data) in [("tank/a", &b"new"[..]), ("tank/b", &[7u8; 1 << 20][..])] {
        pool.create_volume(name, 1 << 20, 4096, &BTreeMap::new())
            .expect("vol");
        pool.volume(name)
            .expect("v")
            .write_at(0, data)
            .expect("write");
    }
    pool.sync().expect("sync");
    let txg = pool.info().txg;
    pool.rename_replacing("tank/a", "tank/b").expect("replace");
    assert_eq!(pool.info().txg, txg + 1, "one commit");
    let names: Vec<String> = pool.datasets().into_iter().map(|d| d.name).collect();
    assert_eq!(names, ["tank/b"]);
    // A target with a snapshot is refused, and nothing changes.
    pool.create_volume("tank/c", 1 << 20, 4096, &BTreeMap::new())
        .expect("vol");
    pool.snapshot(&["tank/c@s"]).expect("snap");
    let txg = pool.info().txg;
    assert!(pool.rename_replacing("tank/b", "tank/c").is_err());
    assert_eq!(pool.info().txg, txg);
    // Onto its own name, or to a free one, as rename.
    pool.rename_replacing("tank/b", "tank/b")
        .expect("same name");
    pool.rename_replacing("tank/b", "tank/d")
        .expect("free name");
    assert!(pool.scrub().expect("scrub").is_clean());
    drop(pool);
    let pool = Pool::open(dev, config()).expect("reopen");
    let mut buf = [0u8; 4];
    pool.volume("tank/d")
        .expect("v")
        .read_at(0, &mut buf)
        .expect("read");
    assert_eq!(&buf, b"new\0");
    assert!(pool.volume("tank/a").is_err() && pool.volume("tank/b").is_err());
}

#[test]
fn data_ranges_skip_holes_and_zeroing_holes_needs_no_space() {
    let dev: Arc<dyn Device> = Arc::new(MemDevice::new(16 << 20));
    let pool = Pool::create_on(dev, "tank", config()).expect("create");
    pool.create_volume("tank/v", 1 << 30, 4096, &BTreeMap::new())
        .expect("thin volume");
    let v = pool.volume("tank/v").expect("v");
    v.write_at(4096 * 3 + 10, &[1u8; 5000]).expect("write");
    v.write_at(1 << 29, &[2u8; 4096]).expect("write");
    let want = vec![(4096 * 3, 4096 * 2), (1 << 29, 4096)];
    assert_eq!(v.data_ranges(0, 1 << 30).expect("ranges"), want);
    pool.sync().expect("sync");
    assert_eq!(
        v.data_ranges(0, 1 << 30).expect("ranges"),
        want,
        "same once committed"
    );
    assert_eq!(
        v.data_ranges(4096 * 4 + 7, 100).expect("clipped"),
        vec![(4096 * 4 + 7, 100)]
    );
    // Zeroing all of a 1 GiB volume in a 16 MiB pool is fine: holes cost nothing.
    assert!(pool.available() < 16 << 20);
    v.write_zeroes(0, 1 << 30)
        .expect("zeroing holes needs no data space");
    pool.sync().expect("sync");
    assert!(v.data_ranges(0, 1 << 30).expect("ranges").is_empty());
    assert!(pool.scrub().expect("scrub").is_clean());
}

#[test]
fn growing_without_a_commit_is_durable_with_the_next_one() {
    let dev: Arc<dyn Device> = Arc::new(MemDevice::new(32 << 20));
    let pool = Pool::create_on(dev.clone(), "tank", config()).expect("create");
    pool.create_volume("tank/f", 4096, 4096, &BTreeMap::new())
        .expect("vol");
    let txg = pool.txg();
    pool.grow_volume("tank/f", 3 << 20).expect("grow");
    assert_eq!(pool.txg(), txg, "no commit yet");
    let v = pool.volume("tank/f").expect("v");
    v.write_at((3 << 20) - 5, b"tail!")
        .expect("write at the new end");
    pool.grow_volume("tank/f", 4096).expect("never shrinks");
    assert_eq!(v.size(), 3 << 20);
    v.flush().expect("flush");
    drop(v);
    drop(pool);
    let pool = Pool::open(dev, config()).expect("reopen");
    let mut buf = [0u8; 5];
    pool.volume("tank/f")
        .expect("v")
        .read_at((3 << 20) - 5, &mut buf)
        .expect("read");
    assert_eq!(&buf, b"tail!");
    assert!(pool.scrub().expect("scrub").is_clean());
}

#[test]
fn diff_reaches_clones_of_a_snapshot() {
    let dev: Arc<dyn Device> = Arc::new(MemDevice::new(32 << 20));
    let pool = Pool::create_on(dev, "tank", config()).expect("create");
    pool.create_volume("tank/img", 1 << 20, 4096, &BTreeMap::new())
        .expect("vol");
    pool.volume("tank/img")
        .expect("v")
        .write_at(0, &[1u8; 1 << 20])
        .expect("write");
    pool.snapshot(&["tank/img@a"]).expect("snap");
    pool.clone_snapshot("tank/img@a", "tank/c", &BTreeMap::new())
        .expect("clone");
    assert!(pool
        .diff("tank/img@a", Some("tank/c"))
        .expect("diff")
        .is_empty());
    pool.volume("tank/c")
        .expect("v")
        .write_at(8192, &[2u8; 4096])
        .expect("write");
    assert_eq!(
        pool.diff("tank/img@a", Some("tank/c")).expect("diff"),
        vec![(8192, 4096)]
    );
    pool.snapshot(&["tank/c@b"]).expect("snap");
    pool.create_volume("tank/other", 1 << 20, 4096, &BTreeMap::new())
        .expect("vol");
    assert!(
        pool.diff("tank/img@a", Some("tank/other")).is_err(),
        "unrelated volume"
    );
    assert!(
        pool.diff("tank/c@b", Some("tank/img")).is_err(),
        "not a descendant"
    );
}
