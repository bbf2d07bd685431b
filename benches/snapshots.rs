//! Snapshot and clone latency, durable, in-process: p50 and p99 with 1, 100 and 1000 existing
//! clones of one image, for an image with 1 GiB and one with 16 GiB written (TARN_BENCH_SCALE
//! divides the data sizes, e.g. 16 for a small disk); clones per second; first writes into a
//! fresh clone against a fresh volume; destroying a clone that wrote little. References printed
//! beside: `qemu-img create -f qcow2 -b` as a process, and the numbers REFERENCES.md measured for
//! zfs-fuse. Prints; never asserts.
//!
//! `cargo bench --bench snapshots`, tuned by environment variables:
//! - `TARN_BENCH_DIR` (default `/var/tmp`): where a temporary folder holds the pools and files
//!   (removed at the end, and on failure);
//! - `TARN_BENCH_SCALE` (default 1): divides the data sizes;
//! - `TARN_BENCH_ONLY` (default all): a comma list of the parts to run, from `latency` (the
//!   in-process table and first writes), `sendrecv` (`tarn send | tarn recv` against `cp`),
//!   `process` (`tarn clone` as a process against `qemu-img create`).
//!
//! The latency rows hold the population they name: each timed clone and snapshot is destroyed
//! (untimed) before the next is made.

mod common;

use common::drop_caches;
use pool::{Pool, PoolConfig};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn write_image(pool: &Pool, name: &str, bytes: u64) {
    pool.create_volume(name, bytes.max(1 << 20), 4096, &BTreeMap::new())
        .expect("image");
    let v = pool.volume(name).expect("volume");
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0;
    while off < bytes {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = ((off as usize + i) % 251) as u8 | 1;
        }
        v.write_at(off, &buf[..(bytes - off).min(buf.len() as u64) as usize])
            .expect("write");
        off += buf.len() as u64;
    }
    v.flush().expect("flush");
}

fn qemu_img_create(dir: &Path) -> Option<f64> {
    let base = dir.join("bench-base.qcow2");
    let run = |args: &[&str]| {
        std::process::Command::new("qemu-img")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    run(&["create", "-q", "-f", "qcow2", base.to_str()?, "1G"])?;
    let mut times = Vec::new();
    for i in 0..20 {
        let overlay = dir.join(format!("bench-overlay-{i}.qcow2"));
        let t = Instant::now();
        run(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            base.to_str()?,
            overlay.to_str()?,
        ])?;
        times.push(t.elapsed());
        let _ = std::fs::remove_file(overlay);
    }
    let _ = std::fs::remove_file(base);
    Some(pct(&mut times, 0.5))
}

/// `tarn send | tarn recv` of a volume with 1 GiB (÷ scale) written, into a second pool, against
/// `cp` of its raw export — each followed by `sync`, same run.
fn send_recv(dir: &Path, scale: u64) {
    let tarn = Path::new(env!("CARGO_BIN_EXE_tarn"));
    let work = dir.join("sendrecv");
    std::fs::create_dir_all(&work).expect("work dir");
    let bytes = (1u64 << 30) / scale;
    let sh = |cmd: &str| -> Duration {
        let t = Instant::now();
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("TARN_HOME", work.join("home"))
            .env("T", tarn)
            .env("W", &work)
            .status()
            .expect("sh");
        assert!(st.success(), "{cmd}");
        t.elapsed()
    };
    sh(&format!("head -c {bytes} /dev/urandom > $W/img.raw && $T pool create a $W/a.pool --size {} && $T pool create b $W/b.pool --size {} && $T vol import $W/img.raw a/v && $T snapshot a/v@s && $T vol export a/v $W/export.raw && sync", bytes * 2 + (256 << 20), bytes * 2 + (256 << 20)));
    let cold = drop_caches();
    let cp = sh("cp --reflink=never $W/export.raw $W/copy.raw && sync");
    drop_caches();
    let sr = sh("$T send a/v@s | $T recv b/v && sync");
    sh("$T vol export b/v $W/received.raw && cmp $W/export.raw $W/received.raw");
    println!(
        "send | recv of {} MiB: {:.2} s; cp of its raw export: {:.2} s; time send|recv / cp {:.2} \
         (lower is better){}",
        bytes >> 20,
        sr.as_secs_f64(),
        cp.as_secs_f64(),
        sr.as_secs_f64() / cp.as_secs_f64(),
        if cold {
            ""
        } else {
            "; page cache NOT dropped (not root?)"
        }
    );
    let _ = std::fs::remove_dir_all(&work);
}

/// `tarn clone` as a whole process (open the pool, clone, commit, close) at 1, 100 and 1000
/// existing clones, p50 of 20 each (each destroyed before the next), against
/// `qemu-img create -f qcow2 -b` in the same run.
fn clone_process(dir: &Path) {
    let tarn = Path::new(env!("CARGO_BIN_EXE_tarn"));
    let work = dir.join("clone-process");
    std::fs::create_dir_all(&work).expect("work dir");
    let run = |args: &[&str]| {
        let st = std::process::Command::new(tarn)
            .args(args)
            .env("TARN_HOME", work.join("home"))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("tarn");
        assert!(st.success(), "tarn {args:?}");
    };
    let pool_file = work.join("c.pool");
    run(&[
        "pool",
        "create",
        "c",
        pool_file.to_str().expect("path"),
        "--size",
        "4G",
    ]);
    run(&["vol", "create", "c/img", "--size", "1G"]);
    run(&["snapshot", "c/img@s"]);
    let mut existing = 0;
    let mut line = String::new();
    for target in [1usize, 100, 1000] {
        while existing < target {
            run(&["clone", "c/img@s", &format!("c/p{existing}")]);
            existing += 1;
        }
        let mut times: Vec<Duration> = (0..20)
            .map(|i| {
                let name = format!("c/m{target}-{i}");
                let t = Instant::now();
                run(&["clone", "c/img@s", &name]);
                let took = t.elapsed();
                run(&["destroy", &name]);
                took
            })
            .collect();
        line.push_str(&format!("  at {target}: {:.2} ms", pct(&mut times, 0.5)));
    }
    println!("tarn clone (a process, p50):{line}");
    let _ = std::fs::remove_dir_all(&work);
}

fn main() -> Result<(), String> {
    let dir = std::env::var("TARN_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let scale: u64 = match std::env::var("TARN_BENCH_SCALE") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|&s| s > 0)
            .ok_or(format!("TARN_BENCH_SCALE={v}: a whole number above 0"))?,
        Err(_) => 1,
    };
    let only = common::only_parts(&["latency", "sendrecv", "process"])?;
    let wants = |part| common::wants(only.as_deref(), part);
    // Everything goes in a folder of our own, removed when this returns or panics.
    let tmp = tempfile::Builder::new()
        .prefix("tarn-bench-snap-")
        .tempdir_in(&dir)
        .map_err(|e| format!("making a folder in {dir}: {e}"))?;
    let dir = tmp.path();
    if wants("latency") {
        latency(dir, scale);
    }
    if wants("sendrecv") {
        send_recv(dir, scale);
    }
    if wants("process") {
        clone_process(dir);
        match qemu_img_create(dir) {
            Some(ms) => {
                println!("reference: qemu-img create -f qcow2 -b (a process) p50 {ms:.2} ms")
            }
            None => println!("reference: qemu-img not available; skipped"),
        }
    }
    if wants("latency") {
        println!("reference (REFERENCES.md, this machine): zfs-fuse snapshot p50 8-15 ms, clone p50 11-28 ms; OpenZFS ~70 ms per clone at 100 clones");
    }
    Ok(())
}

/// The in-process table: snapshot and clone latency at 1, 100 and 1000 clones, for images of
/// 1 and 16 GiB written (÷ scale), then first writes into a clone against a fresh volume.
fn latency(dir: &Path, scale: u64) {
    let config = PoolConfig {
        sync_interval: None,
        ..PoolConfig::default()
    };
    println!(
        "snapshot and clone latency (durable: each is one committed txg), TARN_BENCH_SCALE={scale}"
    );
    println!(
        "{:>10} {:>8} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "image", "clones", "snap p50", "snap p99", "clone p50", "clone p99", "clones/s"
    );
    for gib in [1u64, 16] {
        let path = dir.join(format!("bench-snap-{gib}.tarn"));
        let _ = std::fs::remove_file(&path);
        let pool = Pool::create_file(
            &path,
            "b",
            ((gib << 30) / scale) * 2 + (1 << 30),
            config.clone(),
        )
        .expect("pool");
        write_image(&pool, "b/img", (gib << 30) / scale);
        pool.snapshot(&["b/img@base"]).expect("base snapshot");
        let mut existing = 0u64;
        for target in [1u64, 100, 1000] {
            let start = Instant::now();
            let mut clone_times = Vec::new();
            while existing < target {
                let t = Instant::now();
                pool.clone_snapshot("b/img@base", &format!("b/c{existing}"), &BTreeMap::new())
                    .expect("clone");
                clone_times.push(t.elapsed());
                existing += 1;
            }
            let rate = clone_times.len() as f64 / start.elapsed().as_secs_f64();
            // Measure at this population: 50 clones and 50 snapshots, each destroyed (untimed)
            // before the next is made.
            let mut clones = Vec::new();
            let mut snaps = Vec::new();
            for i in 0..50 {
                let t = Instant::now();
                pool.clone_snapshot("b/img@base", "b/m", &BTreeMap::new())
                    .expect("clone");
                clones.push(t.elapsed());
                pool.destroy("b/m").expect("destroy");
                let snap = format!("b/c0@s{target}-{i}");
                let t = Instant::now();
                pool.snapshot(&[&snap]).expect("snapshot");
                snaps.push(t.elapsed());
                pool.destroy(&snap).expect("destroy");
            }
            println!(
                "{:>10} {:>8} {:>10.3}ms {:>10.3}ms {:>10.3}ms {:>10.3}ms {:>12.0}",
                zvol::format_size((gib << 30) / scale),
                target,
                pct(&mut snaps, 0.5),
                pct(&mut snaps, 0.99),
                pct(&mut clones, 0.5),
                pct(&mut clones, 0.99),
                rate
            );
        }
        // First writes into a fresh clone vs a fresh volume: up to 20,000 distinct 4 KiB
        // blocks in shuffled order (each written once), then a flush.
        let blocks = ((gib << 30) / scale / 4096).max(1);
        let n = blocks.min(20_000);
        let order: Vec<u64> = {
            use rand::{seq::SliceRandom, SeedableRng};
            let mut all: Vec<u64> = (0..blocks).collect();
            all.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(12345));
            all.truncate(n as usize);
            all
        };
        let fresh = |name: &str| {
            let v = pool.volume(name).expect("volume");
            let t = Instant::now();
            let b = [7u8; 4096];
            for &blk in &order {
                v.write_at(blk * 4096, &b).expect("write");
            }
            v.flush().expect("flush");
            n as f64 / t.elapsed().as_secs_f64()
        };
        pool.create_volume("b/fresh", (gib << 30) / scale, 4096, &BTreeMap::new())
            .expect("fresh");
        let f = fresh("b/fresh");
        pool.clone_snapshot("b/img@base", "b/firstw", &BTreeMap::new())
            .expect("clone");
        let c = fresh("b/firstw");
        let t = Instant::now();
        pool.destroy("b/firstw").expect("destroy clone");
        let destroy = t.elapsed();
        println!(
            "  first 4K writes: clone {c:.0}/s, fresh volume {f:.0}/s, ratio {:.2}; destroying that clone ({n} blocks written) took {:.1} ms",
            c / f,
            destroy.as_secs_f64() * 1e3
        );
        drop(pool);
        let _ = std::fs::remove_file(&path);
    }
}
