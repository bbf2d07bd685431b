//! Snapshots and clones against a model. Every operation commits, so each written block has
//! an identity (the commit that wrote it, and its index); the model tracks those identities,
//! which makes the space figures exactly predictable: referenced, written, used and
//! usedbysnapshots of every volume and snapshot are checked after every step, as are the bytes
//! of every volume and snapshot. Destroying everything returns the pool to its empty baseline.

use pool::{DatasetKind, Device, MemDevice, Pool, PoolConfig, Recursion};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const BS: usize = 4096;
type Id = (u64, usize);

#[derive(Clone)]
struct Image {
    data: Vec<u8>,
    /// Per block: its identity, or None for a hole.
    ids: Vec<Option<Id>>,
}

impl Image {
    fn id_set(&self) -> BTreeSet<Id> {
        self.ids.iter().flatten().copied().collect()
    }
    fn referenced(&self) -> u64 {
        (self.ids.iter().flatten().count() * BS) as u64
    }
}

struct Snap {
    head: String,
    epoch: u64,
    img: Image,
    holds: BTreeSet<String>,
}

struct Head {
    img: Image,
    origin: Option<String>,
}

#[derive(Default)]
struct Model {
    heads: BTreeMap<String, Head>,
    /// Keyed by full name `m/vN@sK`.
    snaps: BTreeMap<String, Snap>,
    epoch: u64,
    /// The txg that will commit writes still dirty, if any (space figures are of committed state).
    pending: Option<u64>,
}

impl Model {
    fn snaps_of(&self, head: &str) -> Vec<String> {
        let mut v: Vec<(u64, String)> = self
            .snaps
            .iter()
            .filter(|(_, s)| s.head == head)
            .map(|(n, s)| (s.epoch, n.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, n)| n).collect()
    }
    fn clones_of(&self, snap: &str) -> Vec<String> {
        self.heads
            .iter()
            .filter(|(_, h)| h.origin.as_deref() == Some(snap))
            .map(|(n, _)| n.clone())
            .collect()
    }
    fn prev_of(&self, snap: &str) -> Option<String> {
        let s = &self.snaps[snap];
        let list = self.snaps_of(&s.head);
        let pos = list.iter().position(|x| x == snap).expect("listed");
        if pos > 0 {
            Some(list[pos - 1].clone())
        } else {
            self.heads[&s.head].origin.clone()
        }
    }
    fn next_img(&self, snap: &str) -> &Image {
        let s = &self.snaps[snap];
        let list = self.snaps_of(&s.head);
        let pos = list.iter().position(|x| x == snap).expect("listed");
        match list.get(pos + 1) {
            Some(n) => &self.snaps[n].img,
            None => &self.heads[&s.head].img,
        }
    }
    fn epoch_of(&self, snap: Option<&String>) -> u64 {
        snap.map(|s| self.snaps[s].epoch).unwrap_or(0)
    }
    fn born_after(img: &Image, epoch: u64) -> u64 {
        (img.ids.iter().flatten().filter(|id| id.0 > epoch).count() * BS) as u64
    }
    /// (referenced, written, used, usedbysnapshots) of a dataset.
    fn space(&self, name: &str) -> (u64, u64, u64, u64) {
        if let Some(s) = self.snaps.get(name) {
            let prev = self.prev_of(name);
            let prev_ids = prev
                .as_ref()
                .map(|p| self.snaps[p].img.id_set())
                .unwrap_or_default();
            let next_ids = self.next_img(name).id_set();
            let used = s
                .img
                .id_set()
                .iter()
                .filter(|id| !prev_ids.contains(id) && !next_ids.contains(id))
                .count()
                * BS;
            return (
                s.img.referenced(),
                Self::born_after(&s.img, self.epoch_of(prev.as_ref())),
                used as u64,
                0,
            );
        }
        let h = &self.heads[name];
        let snaps = self.snaps_of(name);
        let prev = snaps.last().cloned().or_else(|| h.origin.clone());
        let written = Self::born_after(&h.img, self.epoch_of(prev.as_ref()));
        let origin_ids = h
            .origin
            .as_ref()
            .map(|o| self.snaps[o].img.id_set())
            .unwrap_or_default();
        let live = h.img.id_set();
        let held: BTreeSet<Id> = snaps
            .iter()
            .flat_map(|s| self.snaps[s].img.id_set())
            .filter(|id| !live.contains(id) && !origin_ids.contains(id))
            .collect();
        let usedsnap = (held.len() * BS) as u64;
        // Everything born since the origin that the volume or its snapshots still hold.
        let mine: BTreeSet<Id> = snaps
            .iter()
            .flat_map(|s| self.snaps[s].img.id_set())
            .chain(live.iter().copied())
            .filter(|id| !origin_ids.contains(id))
            .collect();
        (
            h.img.referenced(),
            written,
            (mine.len() * BS) as u64,
            usedsnap,
        )
    }
}

fn config() -> PoolConfig {
    PoolConfig {
        sync_interval: None,
        dirty_max: 64 << 20,
        ..PoolConfig::default()
    }
}

fn check(pool: &Pool, m: &Model, ctx: &str) {
    let list = pool.list().expect("list");
    let names: BTreeSet<String> = list.iter().map(|d| d.name.clone()).collect();
    let want: BTreeSet<String> = m.heads.keys().chain(m.snaps.keys()).cloned().collect();
    assert_eq!(names, want, "{ctx}: datasets");
    for d in &list {
        let img = match m.snaps.get(&d.name) {
            Some(s) => &s.img,
            None => &m.heads[&d.name].img,
        };
        assert_eq!(
            d.kind == DatasetKind::Snapshot,
            m.snaps.contains_key(&d.name),
            "{ctx}: {} kind",
            d.name
        );
        let mut buf = vec![0u8; img.data.len()];
        pool.volume(&d.name)
            .expect("open")
            .read_at(0, &mut buf)
            .expect("read");
        assert!(buf == img.data, "{ctx}: contents of {}", d.name);
        if m.pending.is_some() {
            continue;
        }
        let (r, w, u, us) = m.space(&d.name);
        assert_eq!(
            (d.referenced, d.written, d.used, d.usedbysnapshots),
            (r, w, u, us),
            "{ctx}: space of {} (referenced, written, used, usedbysnapshots)",
            d.name
        );
        if let Some(h) = m.heads.get(&d.name) {
            assert_eq!(d.origin, h.origin, "{ctx}: origin of {}", d.name);
        }
    }
}

/// Applies a write to the model image the way the pool will store it after one commit.
fn model_write(img: &mut Image, off: usize, bytes: &[u8], epoch: u64) {
    img.data[off..off + bytes.len()].copy_from_slice(bytes);
    for b in off / BS..(off + bytes.len()).div_ceil(BS) {
        let zero = img.data[b * BS..(b + 1) * BS].iter().all(|&x| x == 0);
        img.ids[b] = match (zero, img.ids[b]) {
            (true, _) => None,
            (false, _) => Some((epoch, b)),
        };
    }
}

fn run(seed: u64, steps: usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let dev: Arc<dyn Device> = Arc::new(MemDevice::new(64 << 20));
    let mut pool = Pool::create_on(dev.clone(), "m", config()).expect("create");
    let baseline = pool.info().allocated;
    let mut m = Model::default();
    let mut n = 0;
    for step in 0..steps {
        let ctx = format!("seed {seed} step {step}");
        let heads: Vec<String> = m.heads.keys().cloned().collect();
        let snaps: Vec<String> = m.snaps.keys().cloned().collect();
        let op = rng.gen_range(0..100);
        m.epoch = pool.txg() + 1; // the txg the next commit will have
        if heads.is_empty() || op < 5 {
            n += 1;
            let name = format!("m/v{n}");
            let blocks = rng.gen_range(1..48);
            pool.create_volume(&name, (blocks * BS) as u64, BS as u32, &BTreeMap::new())
                .expect("create volume");
            m.heads.insert(
                name,
                Head {
                    img: Image {
                        data: vec![0; blocks * BS],
                        ids: vec![None; blocks],
                    },
                    origin: None,
                },
            );
            m.pending = None;
            check(&pool, &m, &ctx);
            continue;
        }
        let h = heads[rng.gen_range(0..heads.len())].clone();
        match op {
            5..=35 => {
                let len = m.heads[&h].img.data.len();
                let off = rng.gen_range(0..len);
                let most = if rng.gen_bool(0.3) { 24 * BS } else { 5 * BS };
                let l = rng.gen_range(1..=(len - off).min(most));
                let fill: u8 = if rng.gen_bool(0.2) { 0 } else { rng.gen() };
                let bytes = vec![fill; l];
                pool.volume(&h)
                    .expect("v")
                    .write_at(off as u64, &bytes)
                    .expect("write");
                // Half the writes stay dirty: the next operation's commit (a snapshot, say)
                // carries them, born in that txg.
                if rng.gen_bool(0.5) {
                    assert_eq!(pool.sync().expect("sync"), m.epoch);
                } else {
                    m.pending = Some(m.epoch);
                }
                model_write(
                    &mut m.heads.get_mut(&h).expect("head").img,
                    off,
                    &bytes,
                    m.epoch,
                );
            }
            36..=40 => {
                let len = m.heads[&h].img.data.len();
                let off = rng.gen_range(0..len);
                let l = rng.gen_range(1..=len - off);
                pool.volume(&h)
                    .expect("v")
                    .write_zeroes(off as u64, l as u64)
                    .expect("zero");
                m.pending = Some(m.epoch);
                model_write(
                    &mut m.heads.get_mut(&h).expect("head").img,
                    off,
                    &vec![0; l],
                    m.epoch,
                );
            }
            41..=52 => {
                // One or two volumes at once.
                let mut targets = vec![h.clone()];
                if heads.len() > 1 && rng.gen_bool(0.3) {
                    let other = heads[rng.gen_range(0..heads.len())].clone();
                    if other != h {
                        targets.push(other);
                    }
                }
                n += 1;
                let names: Vec<String> = targets.iter().map(|t| format!("{t}@s{n}")).collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                pool.snapshot(&refs).expect("snapshot");
                let epoch = pool.txg();
                for (t, name) in targets.iter().zip(&names) {
                    let img = m.heads[t].img.clone();
                    m.snaps.insert(
                        name.clone(),
                        Snap {
                            head: t.clone(),
                            epoch,
                            img,
                            holds: BTreeSet::new(),
                        },
                    );
                }
            }
            53..=60 if !snaps.is_empty() => {
                let s = snaps[rng.gen_range(0..snaps.len())].clone();
                n += 1;
                let name = format!("m/c{n}");
                pool.clone_snapshot(&s, &name, &BTreeMap::new())
                    .expect("clone");
                let img = m.snaps[&s].img.clone();
                m.heads.insert(
                    name,
                    Head {
                        img,
                        origin: Some(s),
                    },
                );
            }
            61..=65 => {
                let list = m.snaps_of(&h);
                if let Some(newest) = list.last() {
                    pool.rollback(newest).expect("rollback");
                    let img = m.snaps[newest].img.clone();
                    m.heads.get_mut(&h).expect("head").img = img;
                }
            }
            66..=72 if !snaps.is_empty() => {
                let s = snaps[rng.gen_range(0..snaps.len())].clone();
                let blocked = !m.clones_of(&s).is_empty() || !m.snaps[&s].holds.is_empty();
                match pool.destroy(&s) {
                    Ok(()) => {
                        assert!(!blocked, "{ctx}: destroy of {s} should have been refused");
                        m.snaps.remove(&s);
                    }
                    Err(e) => assert!(blocked, "{ctx}: destroy of {s} refused: {e}"),
                }
            }
            73..=76 => {
                let blocked = !m.snaps_of(&h).is_empty();
                match pool.destroy(&h) {
                    Ok(()) => {
                        assert!(!blocked, "{ctx}: destroy of {h} should have been refused");
                        m.heads.remove(&h);
                    }
                    Err(e) => assert!(blocked, "{ctx}: destroy of {h} refused: {e}"),
                }
            }
            77..=80 => {
                if let Some(origin) = m.heads[&h].origin.clone() {
                    let o = m.snaps[&origin].head.clone();
                    let cut = m.snaps[&origin].epoch;
                    let moving: Vec<String> = m
                        .snaps_of(&o)
                        .into_iter()
                        .filter(|s| m.snaps[s].epoch <= cut)
                        .collect();
                    pool.promote(&h).expect("promote");
                    let mut renamed = BTreeMap::new();
                    for s in moving {
                        let mut snap = m.snaps.remove(&s).expect("snap");
                        let short = s.split_once('@').expect("@").1.to_string();
                        snap.head = h.clone();
                        renamed.insert(s, (format!("{h}@{short}"), snap));
                    }
                    let o_origin = m.heads[&o].origin.clone();
                    for (old, (new, snap)) in renamed {
                        m.snaps.insert(new.clone(), snap);
                        for hd in m.heads.values_mut() {
                            if hd.origin.as_deref() == Some(old.as_str()) {
                                hd.origin = Some(new.clone());
                            }
                        }
                    }
                    let new_origin = format!("{h}@{}", origin.split_once('@').expect("@").1);
                    m.heads.get_mut(&h).expect("clone").origin = o_origin;
                    m.heads.get_mut(&o).expect("origin").origin = Some(new_origin);
                }
            }
            81..=84 if !snaps.is_empty() => {
                let s = snaps[rng.gen_range(0..snaps.len())].clone();
                let holds = &mut m.snaps.get_mut(&s).expect("snap").holds;
                if holds.is_empty() {
                    pool.hold(&s, "keep").expect("hold");
                    holds.insert("keep".into());
                } else {
                    pool.release(&s, "keep").expect("release");
                    holds.clear();
                }
            }
            85..=88 => {
                let blocks = rng.gen_range(1..48);
                pool.resize_volume(&h, (blocks * BS) as u64)
                    .expect("resize");
                let img = &mut m.heads.get_mut(&h).expect("head").img;
                img.data.resize(blocks * BS, 0);
                img.ids.resize(blocks, None);
            }
            89..=92 => {
                drop(pool);
                pool = Pool::open(dev.clone(), config()).expect("reopen");
            }
            93..=95 => {
                let list = m.snaps_of(&h);
                if let Some(first) = list.first() {
                    let got = pool.diff(first, None).expect("diff");
                    let (a, b) = (&m.snaps[first].img, &m.heads[&h].img);
                    for blk in 0..b.ids.len() {
                        let changed = a.ids.get(blk).copied().flatten() != b.ids[blk];
                        let covered = got.iter().any(|(o, l)| {
                            (*o as usize) <= blk * BS && blk * BS < (*o + *l) as usize
                        });
                        if changed {
                            assert!(
                                covered,
                                "{ctx}: diff {first}..{h} misses block {blk} (was {:?}, now {:?}; {first} created in txg {:?}): {got:?}",
                                a.ids.get(blk),
                                b.ids[blk],
                                pool.dataset(first).map(|d| d.creation_txg).ok()
                            );
                        }
                    }
                }
            }
            _ => {}
        }
        if m.pending.is_some_and(|e| pool.txg() >= e) {
            m.pending = None;
        }
        check(&pool, &m, &ctx);
        if step % 25 == 24 {
            let report = pool.scrub().expect("scrub");
            assert!(report.is_clean(), "{ctx}: scrub: {:?}", report.errors);
        }
    }
    let report = pool.scrub().expect("scrub");
    assert!(report.is_clean(), "seed {seed}: scrub: {:?}", report.errors);
    for (name, s) in &m.snaps {
        if !s.holds.is_empty() {
            pool.release(name, "keep").expect("release");
        }
    }
    for h in m.heads.keys() {
        match pool.destroy_with(h, Recursion::All) {
            Ok(_) | Err(pool::Error::NotFound(_)) => {}
            Err(e) => panic!("seed {seed}: destroy -R {h}: {e}"),
        }
    }
    assert!(
        pool.list().expect("list").is_empty(),
        "seed {seed}: everything destroyed"
    );
    for _ in 0..=pool::spacemap::RELEASE_COMMITS {
        pool.sync().expect("sync");
    }
    let info = pool.info();
    // Plus the one block of the deferred-free chain that lists the last txgs' frees (the
    // empty pool had none to list).
    assert_eq!(
        info.allocated - info.deferred - 4096,
        baseline,
        "seed {seed}: destroying everything returns to the empty baseline"
    );
    assert!(pool.scrub().expect("scrub").is_clean());
}

#[test]
fn snapshots_and_clones_match_the_model() {
    let seeds: u64 = std::env::var("TARN_MODEL_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    for seed in 0..seeds {
        run(seed, 250);
    }
}

/// A volume zeroed whole after a snapshot persists as a hole root; after a reopen and a write
/// elsewhere, the diff against the snapshot must still cover every block that was zeroed (the
/// hole's children inherit its birth; they used to load as born in txg 0 and vanish from it).
#[test]
fn diff_sees_blocks_zeroed_under_a_hole_after_reopen() {
    let dev: Arc<dyn Device> = Arc::new(MemDevice::new(16 << 20));
    let pool = Pool::create_on(dev.clone(), "m", config()).expect("create");
    pool.create_volume("m/v", 48 * BS as u64, BS as u32, &BTreeMap::new())
        .expect("volume");
    let v = pool.volume("m/v").expect("v");
    v.write_at(0, &vec![7u8; 48 * BS]).expect("write");
    drop(v);
    pool.snapshot(&["m/v@s"]).expect("snapshot");
    let v = pool.volume("m/v").expect("v");
    v.write_zeroes(0, 48 * BS as u64).expect("zero");
    v.flush().expect("flush");
    drop(v);
    drop(pool);
    let pool = Pool::open(dev, config()).expect("reopen");
    let v = pool.volume("m/v").expect("v");
    v.write_at(BS as u64, &[9u8; BS]).expect("write");
    v.flush().expect("flush");
    let diff = pool.diff("m/v@s", None).expect("diff");
    let covered: u64 = diff.iter().map(|(_, l)| l).sum();
    assert_eq!(
        covered,
        48 * BS as u64,
        "every block changed since @s: {diff:?}"
    );
}

/// A landing refused for its snapshot name changes nothing: the target keeps its data and
/// the clone its own (the heads were swapped before the name was checked, and the next
/// commit made that durable).
#[test]
fn a_refused_landing_changes_nothing() {
    let pool = Pool::create_on(Arc::new(MemDevice::new(32 << 20)), "p", config()).expect("pool");
    pool.create_volume("p/v", 1 << 20, 4096, &BTreeMap::new())
        .expect("v");
    pool.volume("p/v")
        .expect("v")
        .write_at(0, &[1u8; 4096])
        .expect("write");
    pool.snapshot(&["p/v@a"]).expect("a");
    pool.snapshot(&["p/v@b"]).expect("b");
    pool.clone_snapshot("p/v@b", "p/c", &BTreeMap::new())
        .expect("clone");
    pool.volume("p/c")
        .expect("c")
        .write_at(0, &[2u8; 4096])
        .expect("write");
    let landing = pool::Landing {
        snapshot: "p/v@a",
        guid: 7,
        props: &[],
        snapshot_props: &[],
        destroy: &[],
    };
    let e = pool
        .land_clone("p/v", "p/c", false, landing)
        .expect_err("@a exists");
    assert_eq!(e.kind(), pool::ErrorKind::AlreadyExists, "{e}");
    pool.sync().expect("sync");
    let first = |name: &str| {
        let mut b = [0u8; 1];
        pool.volume(name)
            .expect("open")
            .read_at(0, &mut b)
            .expect("read");
        b[0]
    };
    assert_eq!((first("p/v"), first("p/c")), (1, 2));
    // A resize since the base is a change too.
    pool.resize_volume("p/v", 2 << 20).expect("grow");
    let landing = pool::Landing {
        snapshot: "p/v@new",
        guid: 8,
        props: &[],
        snapshot_props: &[],
        destroy: &[],
    };
    let e = pool
        .land_clone("p/v", "p/c", false, landing)
        .expect_err("v was resized");
    assert_eq!(e.kind(), pool::ErrorKind::Busy, "{e}");
    assert_eq!(first("p/v"), 1);
}

/// A landing that destroys the target's snapshots newer than the clone's origin (`recv -F`)
/// does it in its own txg: one commit, the newer snapshots gone and the landed one there, even
/// under a destroyed one's name; a held one, or the origin itself, refuses it all, changing
/// nothing.
#[test]
fn a_landing_destroys_newer_snapshots_in_its_txg() {
    let pool = Pool::create_on(Arc::new(MemDevice::new(64 << 20)), "p", config()).expect("pool");
    pool.create_volume("p/v", 1 << 20, 4096, &BTreeMap::new())
        .expect("v");
    let v = pool.volume("p/v").expect("v");
    v.write_at(0, &[1u8; 4096]).expect("write");
    pool.snapshot(&["p/v@a"]).expect("a");
    v.write_at(0, &[2u8; 4096]).expect("write");
    pool.snapshot(&["p/v@b"]).expect("b");
    pool.snapshot(&["p/v@c"]).expect("c");
    pool.clone_snapshot("p/v@a", "p/r", &BTreeMap::new())
        .expect("clone");
    pool.volume("p/r")
        .expect("r")
        .write_at(0, &[3u8; 4096])
        .expect("write");
    // In any order, a name twice: each destroyed once.
    let newer = ["p/v@c", "p/v@b", "p/v@c"].map(String::from);
    pool.hold("p/v@c", "keep").expect("hold");
    pool.sync().expect("sync");
    let txg = pool.info().txg;
    let from_stream = [("com.example:from".to_string(), "stream".to_string())];
    let landing = |destroy| pool::Landing {
        snapshot: "p/v@b",
        guid: 9,
        props: &[],
        snapshot_props: &from_stream,
        destroy,
    };
    assert!(pool
        .land_clone("p/v", "p/r", true, landing(&newer))
        .is_err());
    assert_eq!(pool.info().txg, txg, "refused: nothing committed");
    assert!(pool.dataset("p/v@c").is_ok() && pool.dataset("p/r").is_ok());
    pool.release("p/v@c", "keep").expect("release");
    // The clone's origin (or anything not newer) is not for the landing to destroy.
    let origin = ["p/v@a".to_string()];
    assert!(pool
        .land_clone("p/v", "p/r", true, landing(&origin))
        .is_err());
    let txg = pool.info().txg;
    pool.land_clone("p/v", "p/r", true, landing(&newer))
        .expect("land");
    assert_eq!(pool.info().txg, txg + 1, "one commit");
    let names: Vec<String> = pool.names().into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(names, ["p/v", "p/v@a", "p/v@b"]);
    let landed = pool.dataset("p/v@b").expect("b");
    assert_eq!(landed.guid, 9);
    assert_eq!(
        landed.props.get("com.example:from").map(String::as_str),
        Some("stream"),
        "the landed snapshot's properties land with it"
    );
    let mut b = [0u8; 1];
    v.read_at(0, &mut b).expect("read");
    assert_eq!(b[0], 3);
    assert!(pool.scrub().expect("scrub").is_clean());
}
