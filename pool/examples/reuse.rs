//! Space reuse probe: rounds of 1 GiB sequential overwrites (1 MiB requests, then a flush) of
//! one pool volume, each round alternating with the same overwrite of a raw `O_DIRECT` file,
//! printing MiB/s, the ratio and how much of the pool file is allocated after each round.
//!
//! `cargo run --release -p pool --example reuse [DIR] [ROUNDS] [--autotrim]`
//!
//! A copy-on-write pool writes every round to space other than the last round's; the raw file
//! overwrites blocks it already holds. Without `--autotrim` the pool reuses the space it
//! released, and the file stops growing after the first rounds. Each pool round also prints
//! its writes' latencies and the time spent in writes over 2 ms (stalls: the kernel holding a
//! writer back while it writes dirty pages into space the file system has to allocate).
use pool::{Pool, PoolConfig};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

const SIZE: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Writes the sync-and-settle pause between timed runs (the disk's host writes back late).
fn settle() {
    let _ = std::process::Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(3));
}

fn mib_per_s(t: Duration) -> f64 {
    (SIZE / MIB) as f64 / t.as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let autotrim = args.iter().any(|a| a == "--autotrim");
    let mut plain = args.iter().filter(|a| !a.starts_with("--"));
    let dir = plain.next().map_or("/var/tmp", |s| s.as_str()).to_string();
    let rounds: usize = plain.next().map_or(6, |s| s.parse().expect("ROUNDS"));
    let dir = Path::new(&dir);
    let (pool_path, raw_path) = (dir.join("reuse.tarn"), dir.join("reuse.raw"));
    let _ = std::fs::remove_file(&pool_path);
    let _ = std::fs::remove_file(&raw_path);
    let config = PoolConfig {
        autotrim,
        ..PoolConfig::default()
    };
    let pool = Pool::create_file(&pool_path, "p", 3 * SIZE + 256 * MIB, config).expect("pool");
    pool.create_volume("p/v", SIZE, 4096, &Default::default())
        .expect("volume");
    let vol = pool.volume("p/v").expect("open volume");
    let raw = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&raw_path)
        .expect("raw file");
    raw.set_len(SIZE).expect("raw size");
    let layout = std::alloc::Layout::from_size_align(MIB as usize, 4096).expect("layout");
    // SAFETY: a fresh allocation of the layout's size, filled before any read, freed never
    // (the process ends).
    let buf = unsafe { std::slice::from_raw_parts_mut(std::alloc::alloc(layout), MIB as usize) };
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i * 7 + i / 4096) as u8;
    }
    println!(
        "pool autotrim: {autotrim}; {rounds} rounds of 1 GiB in {}",
        dir.display()
    );
    let time_pool = || {
        settle();
        let t = Instant::now();
        let mut micros: Vec<u64> = (0..SIZE / MIB)
            .map(|c| {
                let w = Instant::now();
                vol.write_at(c * MIB, buf).expect("pool write");
                w.elapsed().as_micros() as u64
            })
            .collect();
        vol.flush().expect("pool flush");
        let took = t.elapsed();
        micros.sort_unstable();
        let at = |q: usize| micros[(micros.len() - 1) * q / 100];
        println!(
            "  pool writes: p50 {} us, p90 {} us, p99 {} us, max {} us; in writes over 2 ms: {} ms",
            at(50),
            at(90),
            at(99),
            at(100),
            micros.iter().filter(|&&m| m > 2000).sum::<u64>() / 1000
        );
        took
    };
    let time_raw = || {
        settle();
        let t = Instant::now();
        for c in 0..SIZE / MIB {
            raw.write_all_at(buf, c * MIB).expect("raw write");
        }
        raw.sync_data().expect("raw sync");
        t.elapsed()
    };
    for round in 0..rounds {
        let (p, r) = if round % 2 == 0 {
            let p = time_pool();
            (p, time_raw())
        } else {
            let r = time_raw();
            (time_pool(), r)
        };
        let held = std::fs::metadata(&pool_path).expect("stat pool").blocks() * 512 / MIB;
        println!(
            "round {round}: pool {:5.0} MiB/s  raw O_DIRECT {:5.0} MiB/s  ratio {:.2}  pool file holds {held} MiB, txg {}",
            mib_per_s(p),
            mib_per_s(r),
            r.as_secs_f64() / p.as_secs_f64(),
            pool.info().txg,
        );
    }
    drop(vol);
    pool.close().expect("close");
    let _ = std::fs::remove_file(&pool_path);
    let _ = std::fs::remove_file(&raw_path);
}
