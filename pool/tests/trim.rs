//! Giving free space back to the file system: `autotrim` punches released runs at commit,
//! `Pool::trim` punches all free space once, and a default pool punches nothing (it reuses
//! the space its file holds).
//!
//! A punch must never zero data: a writer placing data at the very moment space is punched
//! (here a 4 MiB write that only fits where the punch is) must not get that space before the
//! punch is done; it waits and lands after, intact.

mod common;

use common::Watched;
use pool::{Pool, PoolConfig, VolumeHandle};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const MIB: usize = 1 << 20;

/// Writes `fill` over the whole volume in 1 MiB requests.
fn write_whole(v: &VolumeHandle, fill: u8) {
    let buf = vec![fill; MIB];
    for at in (0..v.size()).step_by(MIB) {
        v.write_at(at, &buf).expect("write");
    }
}

/// A 16 MiB pool holding volume `a` (written three times: two freed copies, one live) and an
/// empty 4 MiB volume `b` that only fits where a freed copy was. When the first punch of at
/// least 4 MiB starts (`punch` triggers it), b is written from another thread, which must
/// wait until the punch is done. b reads back intact, a too, and the pool scrubs clean.
fn writer_during_punch(autotrim: bool, punch: impl FnOnce(&Pool)) {
    let dev = Arc::new(Watched::new(16 * MIB));
    let config = PoolConfig {
        sync_interval: None,
        autotrim,
        ..PoolConfig::default()
    };
    let pool = Pool::create_on(dev.clone(), "p", config).expect("pool");
    let props = Default::default();
    pool.create_volume("p/a", 4 * MIB as u64, 4096, &props)
        .expect("volume a");
    pool.create_volume("p/b", 4 * MIB as u64, 4096, &props)
        .expect("volume b");
    let a = pool.volume("p/a").expect("a");
    let b = pool.volume("p/b").expect("b");
    for fill in [1u8, 2, 3] {
        write_whole(&a, fill);
        pool.sync().expect("sync");
    }
    // Give the writer time to finish if it can (it must not, before the punch is done).
    let writer: Arc<Mutex<Option<JoinHandle<()>>>> = Arc::new(Mutex::new(None));
    let (slot, bw) = (writer.clone(), b.clone());
    dev.on_punch(
        4 * MIB as u64,
        Box::new(move || {
            let h = std::thread::spawn(move || {
                bw.write_at(0, &vec![0xb5u8; 4 * MIB]).expect("write b");
            });
            std::thread::sleep(Duration::from_millis(300));
            *slot.lock().expect("slot") = Some(h);
        }),
    );
    punch(&pool);
    let h = writer.lock().expect("writer").take();
    h.expect("the freed space was punched")
        .join()
        .expect("the writer finished");
    pool.sync().expect("sync");
    let mut got = vec![0u8; 4 * MIB];
    b.read_at(0, &mut got).expect("read b back");
    assert!(got.iter().all(|&x| x == 0xb5), "b's data was zeroed");
    let mut got_a = vec![0u8; 4 * MIB];
    a.read_at(0, &mut got_a).expect("read a back");
    assert!(got_a.iter().all(|&x| x == 3));
    let report = pool.scrub().expect("scrub");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[test]
fn a_writer_never_gets_space_that_autotrim_is_punching() {
    writer_during_punch(true, |pool| {
        for _ in 0..pool::spacemap::RELEASE_COMMITS {
            pool.sync().expect("sync");
        }
    });
}

#[test]
fn a_writer_never_gets_space_that_trim_is_punching() {
    writer_during_punch(false, |pool| {
        let report = pool.trim().expect("trim");
        assert!(report.bytes >= 4 * MIB as u64, "{report:?}");
    });
}

/// While `Pool::trim` punches a run, a commit goes through (trim holds no commit lock then,
/// so a guest's FLUSH does not wait for the whole trim), and what it writes describes the
/// run as free: the pool as that commit left it opens with the run free and scrubs clean.
#[test]
fn commits_go_on_while_trim_punches_and_write_the_run_as_free() {
    let dev = Arc::new(Watched::new(32 * MIB));
    let config = PoolConfig {
        sync_interval: None,
        ..PoolConfig::default()
    };
    let pool = Pool::create_on(dev.clone(), "p", config.clone()).expect("pool");
    pool.create_volume("p/a", 4 * MIB as u64, 4096, &Default::default())
        .expect("volume");
    let a = pool.volume("p/a").expect("a");
    write_whole(&a, 1);
    pool.sync().expect("sync");
    let free_before = pool.info().free;
    /// Whether the commit finished while the punch was held, and the device after it.
    type Seen = Option<(bool, Vec<u8>)>;
    let seen: Arc<Mutex<Seen>> = Arc::new(Mutex::new(None));
    let (slot, watched) = (seen.clone(), dev.clone());
    dev.on_punch(
        MIB as u64,
        Box::new(move || {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(a.flush());
            });
            let done = matches!(rx.recv_timeout(Duration::from_secs(30)), Ok(Ok(())));
            *slot.lock().expect("slot") = Some((done, watched.snapshot()));
        }),
    );
    let report = pool.trim().expect("trim");
    assert!(report.bytes >= 16 * MIB as u64, "{report:?}");
    let (done, image) = seen.lock().expect("seen").take().expect("trim punched");
    assert!(done, "a commit waited for trim to finish");
    let reopened = Pool::open(Arc::new(pool::MemDevice::from_bytes(image)), config).expect("open");
    assert!(
        reopened.info().free + MIB as u64 >= free_before,
        "the run being punched was committed as allocated: {} free, {free_before} before",
        reopened.info().free
    );
    let report = reopened.scrub().expect("scrub");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        pool.info().free + MIB as u64 >= free_before,
        "trim gave every run back"
    );
}

/// A nearly full pool is trimmed too: where taking a run would leave commits less than the
/// slop they write metadata into, trim takes it with commits held off instead of skipping it.
#[test]
fn a_nearly_full_pool_is_trimmed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("full.tarn");
    let config = PoolConfig {
        sync_interval: None,
        ..PoolConfig::default()
    };
    let pool = Pool::create_file(&path, "p", 64 * MIB as u64, config).expect("pool");
    pool.create_volume("p/big", 128 * MIB as u64, 4096, &Default::default())
        .expect("thin volume");
    let big = pool.volume("p/big").expect("big");
    let chunk = vec![0x42u8; MIB];
    let written = (0..128u64)
        .take_while(|&i| big.write_at(i * MIB as u64, &chunk).is_ok())
        .count();
    assert!(written < 128, "a 64 MiB pool took 128 MiB");
    pool.sync().expect("sync");
    let free = pool.info().free;
    assert!(free < 6 * MIB as u64, "not nearly full: {free} bytes free");
    let report = pool.trim().expect("trim");
    assert!(
        report.bytes >= MIB as u64,
        "{report:?} with {free} bytes free"
    );
    assert!(pool.scrub().expect("scrub").errors.is_empty());
}

/// A writer short of space waits for the run trim has out, and then goes before trim takes
/// the next one: trim does not take the gate straight back, run after run.
#[test]
fn a_waiting_writer_goes_before_the_next_run() {
    let dev = Arc::new(Watched::new(32 * MIB));
    let config = PoolConfig {
        sync_interval: None,
        ..PoolConfig::default()
    };
    let pool = Pool::create_on(dev.clone(), "p", config).expect("pool");
    let props = Default::default();
    for (name, mib) in [("a", 8), ("d", 2), ("b", 2), ("fill", 64)] {
        pool.create_volume(&format!("p/{name}"), mib * MIB as u64, 4096, &props)
            .expect("volume");
    }
    let a = pool.volume("p/a").expect("a");
    // a's first copy becomes the first free run, d (destroyed) the second; b and a's second
    // copy keep them apart, and `fill` takes the rest but a little.
    write_whole(&a, 1);
    write_whole(&pool.volume("p/d").expect("d"), 2);
    write_whole(&pool.volume("p/b").expect("b"), 3);
    pool.sync().expect("sync");
    let fill = pool.volume("p/fill").expect("fill");
    let spare = pool.info().free / MIB as u64 - 8 - 1 - 2;
    let chunk = vec![5u8; MIB];
    for i in 0..spare {
        fill.write_at(i * MIB as u64, &chunk).expect("fill");
    }
    write_whole(&a, 4);
    pool.destroy("p/d").expect("destroy d");
    pool.sync().expect("sync");
    let done = Arc::new(AtomicBool::new(false));
    // Whether the writer was done when the second run was punched (None: no second run).
    let seen: Arc<Mutex<Option<bool>>> = Arc::new(Mutex::new(None));
    let writer: Arc<Mutex<Option<JoinHandle<()>>>> = Arc::new(Mutex::new(None));
    let (slot, watched, seen_by_hook) = (writer.clone(), dev.clone(), seen.clone());
    let (flag, flag_seen) = (done.clone(), done.clone());
    dev.on_punch(
        4 * MIB as u64,
        Box::new(move || {
            // During the first run: a 4 MiB write that only fits there.
            let h = std::thread::spawn(move || {
                a.write_at(0, &vec![6u8; 4 * MIB]).expect("write a");
                flag.store(true, Ordering::Release);
            });
            std::thread::sleep(Duration::from_millis(200));
            *slot.lock().expect("slot") = Some(h);
            watched.on_punch(
                MIB as u64,
                Box::new(move || {
                    let until = std::time::Instant::now() + Duration::from_secs(10);
                    while !flag_seen.load(Ordering::Acquire) && std::time::Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    *seen_by_hook.lock().expect("seen") = Some(flag_seen.load(Ordering::Acquire));
                }),
            );
        }),
    );
    let report = pool.trim().expect("trim");
    writer
        .lock()
        .expect("writer")
        .take()
        .expect("the first run was punched")
        .join()
        .expect("the writer finished");
    let seen = seen.lock().expect("seen").take();
    assert_eq!(
        seen,
        Some(true),
        "the waiting writer did not go before the second run ({report:?})"
    );
    let mut got = vec![0u8; 4 * MIB];
    pool.volume("p/a")
        .expect("a")
        .read_at(0, &mut got)
        .expect("read a");
    assert!(got.iter().all(|&x| x == 6));
    assert!(pool.scrub().expect("scrub").errors.is_empty());
}

/// Bytes the file has allocated on disk.
fn held(p: &Path) -> u64 {
    std::fs::metadata(p).expect("stat").blocks() * 512
}

/// Writes 32 MiB to a volume of a new pool file, destroys it and commits until its frees are
/// released; returns the pool and how much its file holds before the destroy and after.
fn destroy_big_volume(dir: &Path, autotrim: bool) -> (Pool, u64, u64) {
    let path = dir.join(format!("trim-{autotrim}.tarn"));
    let config = PoolConfig {
        sync_interval: None,
        autotrim,
        ..PoolConfig::default()
    };
    let pool = Pool::create_file(&path, "p", 128 * MIB as u64, config).expect("pool");
    pool.create_volume("p/keep", 4 * MIB as u64, 4096, &Default::default())
        .expect("keep");
    pool.create_volume("p/big", 32 * MIB as u64, 4096, &Default::default())
        .expect("big");
    write_whole(&pool.volume("p/keep").expect("keep"), 0x4b);
    write_whole(&pool.volume("p/big").expect("big"), 0x42);
    pool.sync().expect("sync");
    let before = held(&path);
    pool.destroy("p/big").expect("destroy");
    for _ in 0..pool::spacemap::RELEASE_COMMITS {
        pool.sync().expect("sync");
    }
    (pool, before, held(&path))
}

#[test]
fn a_default_pool_keeps_freed_space_and_trim_gives_it_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pool, before, after) = destroy_big_volume(dir.path(), false);
    assert!(
        after + MIB as u64 > before,
        "a pool without autotrim punched: {before} -> {after}"
    );
    let report = pool.trim().expect("trim");
    assert!(report.bytes >= 32 * MIB as u64, "{report:?}");
    let trimmed = held(&dir.path().join("trim-false.tarn"));
    assert!(
        trimmed + 31 * MIB as u64 <= before,
        "trim gave back too little: {before} -> {trimmed}"
    );
    let mut got = vec![0u8; 4 * MIB];
    pool.volume("p/keep")
        .expect("keep")
        .read_at(0, &mut got)
        .expect("read keep");
    assert!(got.iter().all(|&x| x == 0x4b), "trim damaged a live volume");
    let report = pool.scrub().expect("scrub");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // Trimmed space is written again like any other.
    pool.create_volume("p/again", 32 * MIB as u64, 4096, &Default::default())
        .expect("again");
    write_whole(&pool.volume("p/again").expect("again"), 0x61);
    pool.sync().expect("sync");
    assert!(pool.scrub().expect("scrub").errors.is_empty());
}

#[test]
fn autotrim_punches_released_runs_at_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pool, before, after) = destroy_big_volume(dir.path(), true);
    assert!(
        after + 31 * MIB as u64 <= before,
        "autotrim gave back too little: {before} -> {after}"
    );
    assert!(pool.scrub().expect("scrub").errors.is_empty());
}
