//! Power cuts: random workloads on the crash-simulating device, cut after a random number of
//! device writes/syncs; unsynced writes are dropped, kept or torn. After each cut the pool must
//! open at some committed txg no older than the last acknowledged commit, hold exactly that
//! txg's state, scrub clean, and keep working.
//!
//! `TARN_CRASH_CASES` sets the number of cuts (default 300).

use pool::{CrashDevice, CutMode, Device, MemDevice, Pool, PoolConfig, Recursion};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;

type State = BTreeMap<String, Vec<u8>>;

const DEV: usize = 24 << 20;

/// Odd seeds punch released space at every commit (`autotrim`), even seeds keep it.
fn config(seed: u64) -> PoolConfig {
    PoolConfig {
        sync_interval: None,
        dirty_max: 1 << 20,
        autotrim: seed % 2 == 1,
        ..PoolConfig::default()
    }
}

/// Every dataset's bytes, snapshots included.
fn read_all(pool: &Pool) -> State {
    pool.names()
        .into_iter()
        .map(|(name, _, _)| {
            let v = pool.volume(&name).expect("open dataset");
            let mut buf = vec![0u8; v.size() as usize];
            v.read_at(0, &mut buf).expect("read dataset");
            (name, buf)
        })
        .collect()
}

/// What `destroy -R name` takes with it: its snapshots, their clones, recursively.
fn dependents(pool: &Pool, name: &str) -> Vec<String> {
    let list = pool.list().expect("list");
    let mut out = vec![name.to_string()];
    let mut i = 0;
    while i < out.len() {
        let n = out[i].clone();
        for d in &list {
            let is_snap_of = d.name.split_once('@').is_some_and(|(h, _)| h == n);
            let is_clone_of = d.origin.as_deref() == Some(n.as_str());
            if (is_snap_of || is_clone_of) && !out.contains(&d.name) {
                out.push(d.name.clone());
            }
        }
        i += 1;
    }
    out
}

/// Applies one random operation to the pool and the model. The model is updated first, so on
/// failure it holds what the interrupted commit would have made durable.
/// Committed states by txg, for composite operations that commit more than once.
type History = BTreeMap<u64, State>;

fn step(
    rng: &mut SmallRng,
    pool: &Pool,
    live: &mut State,
    n: &mut u32,
    history: &mut History,
) -> pool::Result<()> {
    let names: Vec<String> = live.keys().cloned().collect();
    let pick = rng.gen_range(0..100);
    if names.iter().all(|n| n.contains('@')) || pick < 5 {
        *n += 1;
        let name = format!("crash/v{n}");
        let bs = [4096u32, 16384, 65536][rng.gen_range(0..3)];
        let size = rng.gen_range(1..=24) * u64::from(bs);
        let size = size.min(1 << 20).div_ceil(u64::from(bs)) * u64::from(bs);
        live.insert(name.clone(), vec![0; size as usize]);
        pool.create_volume(&name, size, bs, &BTreeMap::new())?;
        return Ok(());
    }
    let name = &names[rng.gen_range(0..names.len())];
    if name.contains('@') {
        // A snapshot: clone it, or destroy it with everything that depends on it.
        if pick % 2 == 0 {
            *n += 1;
            let clone = format!("crash/c{n}");
            live.insert(clone.clone(), live[name].clone());
            pool.clone_snapshot(name, &clone, &BTreeMap::new())?;
        } else {
            for d in dependents(pool, name) {
                live.remove(&d);
            }
            pool.destroy_with(name, Recursion::All)?;
        }
        return Ok(());
    }
    if pick >= 90 {
        match pick {
            90..=93 => {
                *n += 1;
                let snap = format!("{name}@s{n}");
                live.insert(snap.clone(), live[name].clone());
                pool.snapshot(&[&snap])?;
            }
            98 => {
                // Receive's landing: clone the newest snapshot, write into the clone, make it
                // durable, then swap it in for the volume (replace_with_clone).
                let newest = pool
                    .list()?
                    .into_iter()
                    .filter(|d| d.name.split_once('@').is_some_and(|(h, _)| h == name))
                    .max_by_key(|d| d.creation_txg);
                if let Some(s) = newest {
                    *n += 1;
                    let temp = format!("crash/r{n}");
                    live.insert(temp.clone(), live[&s.name].clone());
                    pool.clone_snapshot(&s.name, &temp, &BTreeMap::new())?;
                    history.insert(pool.txg(), live.clone());
                    let size = live[&temp].len() as u64;
                    let off = rng.gen_range(0..size);
                    let len = rng.gen_range(1..=(size - off).min(200_000));
                    let chunk: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) | 1).collect();
                    live.get_mut(&temp).expect("temp")[off as usize..(off + len) as usize]
                        .copy_from_slice(&chunk);
                    pool.volume(&temp)?.write_at(off, &chunk)?;
                    pool.sync()?;
                    history.insert(pool.txg(), live.clone());
                    let landed = live.remove(&temp).expect("temp");
                    live.insert(name.clone(), landed);
                    pool.replace_with_clone(name, &temp, true)?;
                }
            }
            97 => {
                // Promote, if this volume is a clone: its origin's snapshots up to the one it
                // came from move to it, renamed.
                let list = pool.list()?;
                let me = list.iter().find(|d| &d.name == name).cloned();
                if let Some(origin) = me.and_then(|d| d.origin) {
                    let (o, _) = origin.split_once('@').expect("snapshot name");
                    let cut = list
                        .iter()
                        .find(|d| d.name == origin)
                        .map(|d| d.creation_txg)
                        .unwrap_or(0);
                    for d in list.iter().filter(|d| d.creation_txg <= cut) {
                        if let Some((head, snap)) = d.name.split_once('@') {
                            if head == o {
                                let bytes = live.remove(&d.name).expect("model snapshot");
                                live.insert(format!("{name}@{snap}"), bytes);
                            }
                        }
                    }
                    pool.promote(name)?;
                }
            }
            94..=96 => {
                let newest = pool
                    .list()?
                    .into_iter()
                    .filter(|d| d.name.split_once('@').is_some_and(|(h, _)| h == name))
                    .max_by_key(|d| d.creation_txg);
                if let Some(s) = newest {
                    live.insert(name.clone(), live[&s.name].clone());
                    pool.rollback(&s.name)?;
                }
            }
            _ => {
                for d in dependents(pool, name) {
                    live.remove(&d);
                }
                pool.destroy_with(name, Recursion::All)?;
            }
        }
        return Ok(());
    }
    let data = live.get_mut(name).expect("model volume");
    let size = data.len() as u64;
    match pick {
        5..=7 => {
            for d in dependents(pool, name) {
                live.remove(&d);
            }
            pool.destroy_with(name, Recursion::All)?;
        }
        8..=10 => {
            let bs = pool.dataset(name)?.block_size as u64;
            let new = rng.gen_range(1..=(1 << 20) / bs) * bs;
            data.resize(new as usize, 0);
            pool.resize_volume(name, new)?;
        }
        11..=19 => pool.sync().map(|_| ())?,
        20 => {
            // Trim commits up to RELEASE_COMMITS + 1 times, each with the state as it is now.
            let before = pool.txg();
            for t in before + 1..=before + pool::spacemap::RELEASE_COMMITS + 1 {
                history.insert(t, live.clone());
            }
            pool.trim()?;
            let done = pool.txg();
            history.retain(|&t, _| t <= done);
        }
        21..=30 => {
            let off = rng.gen_range(0..size);
            let len = rng.gen_range(1..=(size - off).min(100_000));
            data[off as usize..(off + len) as usize].fill(0);
            pool.volume(name)?.discard(off, len)?;
        }
        _ => {
            let off = rng.gen_range(0..size);
            let len =
                rng.gen_range(1..=(size - off).min(if pick % 3 == 0 { 300_000 } else { 70_000 }));
            let byte: u8 = rng.gen_range(1..=255);
            let chunk: Vec<u8> = (0..len)
                .map(|i| byte.wrapping_add((i / 512) as u8))
                .collect();
            data[off as usize..(off + len) as usize].copy_from_slice(&chunk);
            pool.volume(name)?.write_at(off, &chunk)?;
        }
    }
    Ok(())
}

/// Spreads the dataset IDs over several directory leaves (64 IDs each): creates 70 small
/// volumes and destroys all but every tenth, so the workload's datasets join leaves 0 and 1
/// and start leaf 2.
fn prime(pool: &Pool, live: &mut State) {
    for i in 0..70 {
        let name = format!("crash/pad{i}");
        pool.create_volume(&name, 4096, 4096, &BTreeMap::new())
            .expect("pad volume");
        if i % 10 == 0 {
            live.insert(name, vec![0; 4096]);
        } else {
            pool.destroy(&name).expect("destroy pad volume");
        }
    }
}

/// Device writes and syncs the workload of `seed` issues when nothing cuts it.
fn workload_ops(seed: u64) -> u64 {
    let mut rng = SmallRng::seed_from_u64(seed);
    let dev = Arc::new(CrashDevice::new(DEV));
    let pool = Pool::create_on(dev.clone(), "crash", config(seed)).expect("create");
    let (mut live, mut n) = (State::new(), 0);
    prime(&pool, &mut live);
    let start = dev.ops();
    for _ in 0..WORKLOAD_STEPS {
        step(&mut rng, &pool, &mut live, &mut n, &mut History::new()).expect("uncut workload");
    }
    dev.ops() - start
}

const WORKLOAD_STEPS: usize = 150;

fn crash_case(seed: u64) {
    let total = workload_ops(seed);
    let mut rng = SmallRng::seed_from_u64(seed);
    let dev = Arc::new(CrashDevice::new(DEV));
    let pool = Pool::create_on(dev.clone(), "crash", config(seed)).expect("create");
    let mut live = State::new();
    prime(&pool, &mut live);
    let mut history: BTreeMap<u64, State> = BTreeMap::new();
    history.insert(pool.txg(), live.clone());
    let mut acked = pool.txg();
    let mut n = 0;
    // Cut somewhere inside the workload (a different stream, so the workload is the same).
    dev.cut_after(Some(SmallRng::seed_from_u64(!seed).gen_range(0..=total)));
    for _ in 0..WORKLOAD_STEPS {
        let before = pool.txg();
        match step(&mut rng, &pool, &mut live, &mut n, &mut history) {
            Ok(()) => {
                if pool.txg() != before {
                    acked = pool.txg();
                    history.insert(acked, live.clone());
                }
            }
            Err(_) => {
                // The interrupted commit may or may not have reached the disk.
                history.insert(pool.txg() + 1, live.clone());
                break;
            }
        }
    }
    // The final unsynced tail never reaches the disk in one piece: cut here too.
    let mode = if seed.is_multiple_of(4) {
        CutMode::DropAll
    } else {
        CutMode::Random(seed)
    };
    let image = dev.crash_image(mode);
    drop(pool);
    let mem = Arc::new(MemDevice::from_bytes(image));
    let reopened = Pool::open(mem.clone(), config(seed))
        .unwrap_or_else(|e| panic!("seed {seed}: reopen failed: {e}"));
    let txg = reopened.txg();
    assert!(
        txg >= acked,
        "seed {seed}: reopened at txg {txg}, but txg {acked} was acknowledged"
    );
    let want = history
        .get(&txg)
        .unwrap_or_else(|| panic!("seed {seed}: txg {txg} was never committed"));
    let got = read_all(&reopened);
    if std::env::var("TARN_CRASH_DEBUG").is_ok() {
        eprintln!(
            "seed {seed}: txg {txg}: {:?}",
            got.keys().collect::<Vec<_>>()
        );
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "seed {seed}: datasets differ at txg {txg}"
    );
    for (name, bytes) in want {
        assert!(
            got[name] == *bytes,
            "seed {seed}: {name} differs from txg {txg}'s state"
        );
    }
    let report = reopened.scrub().expect("scrub");
    assert!(
        report.is_clean(),
        "seed {seed}: scrub after reopen: {:?}",
        report.errors
    );
    // The pool keeps working: more writes, a commit, a reopen, a clean scrub.
    let mut live = got;
    for _ in 0..20 {
        step(&mut rng, &reopened, &mut live, &mut n, &mut History::new())
            .unwrap_or_else(|e| panic!("seed {seed}: after reopen: {e}"));
    }
    reopened.sync().expect("sync");
    drop(reopened);
    let again = Pool::open(mem as Arc<dyn Device>, config(seed)).expect("second reopen");
    assert_eq!(
        read_all(&again),
        live,
        "seed {seed}: state lost across a clean reopen"
    );
    assert!(
        again.scrub().expect("scrub").is_clean(),
        "seed {seed}: scrub after second reopen"
    );
}

#[test]
fn power_cuts_never_lose_acknowledged_writes_or_mix_txgs() {
    let cases: u64 = std::env::var("TARN_CRASH_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let base: u64 = std::env::var("TARN_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for seed in base..base + cases {
        crash_case(seed);
    }
}
