//! How long a pool keeps committing under random overwrites as it fills: volumes of given
//! block sizes filled to shares of an in-memory pool, then rounds of random 4 KiB overwrites,
//! one commit per round, until a commit fails (the pool is then poisoned: it stops accepting
//! writes) or a write fails, or the rounds run out. Prints, per case, the round
//! that failed (or `none`), whether the pool was poisoned (a write refused for space is not),
//! the pool's free and deferred space at the end, the commits the rounds took (more than one a
//! round where writes waited for runs) and the time. Random overwrites of small blocks leave
//! one-block holes, and indirect blocks need four-sector runs (see `pool/FORMAT.md`,
//! "Allocation and trim"). Measures robustness, not speed; never fails.
//!
//! `cargo bench --bench fragmentation`, tuned by environment variables:
//! - `TARN_BENCH_POOL` (default `256M`): pool size;
//! - `TARN_BENCH_ROUNDS` (default `60`): rounds per case;
//! - `TARN_BENCH_OPS` (default `1500`): overwrites per round.

use pool::{MemDevice, Pool, PoolConfig};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use std::sync::Arc;
use zvol::parse_size;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MIB: u64 = 1 << 20;
/// Volumes, as (block size, percent of the pool it fills); writes go to each in turn.
const CASES: [&[(u32, u64)]; 13] = [
    &[(4096, 50)],
    &[(4096, 60)],
    &[(4096, 70)],
    &[(4096, 80)],
    &[(4096, 90)],
    &[(16384, 50)],
    &[(16384, 70)],
    &[(16384, 80)],
    &[(16384, 90)],
    &[(4096, 40), (16384, 30)],
    &[(4096, 50), (16384, 30)],
    &[(4096, 40), (16384, 45)],
    &[(4096, 60), (16384, 25)],
];

fn main() -> Res<()> {
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let pool_size = parse_size(&var("TARN_BENCH_POOL", "256M"))? / MIB * MIB;
    let rounds: u32 = var("TARN_BENCH_ROUNDS", "60").parse()?;
    let ops: u32 = var("TARN_BENCH_OPS", "1500").parse()?;
    println!(
        "fragmentation: {} MiB pool in memory, {rounds} rounds of {ops} random 4 KiB overwrites, \
         one commit per round",
        pool_size / MIB
    );
    println!();
    println!(
        "{:>22} {:>14} {:>9} {:>9} {:>13} {:>8} {:>8}",
        "volumes (block, fill)",
        "failed round",
        "poisoned",
        "free MiB",
        "deferred MiB",
        "commits",
        "seconds"
    );
    for vols in CASES {
        let t = std::time::Instant::now();
        let (failed, info, commits) = run(pool_size, vols, rounds, ops)?;
        let name: Vec<String> = vols
            .iter()
            .map(|(bs, pct)| format!("{}K {pct}%", bs / 1024))
            .collect();
        println!(
            "{:>22} {:>14} {:>9} {:>9} {:>13} {:>8} {:>8.2}",
            name.join(" + "),
            failed.map_or("none".to_string(), |r| r.to_string()),
            if info.poisoned { "yes" } else { "no" },
            info.free / MIB,
            info.deferred / MIB,
            commits,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// One case: the round whose write or commit failed (if any), the pool's state then, and the
/// commits the rounds took (more than one a round where writers waited for runs).
fn run(
    pool_size: u64,
    vols: &[(u32, u64)],
    rounds: u32,
    ops: u32,
) -> Res<(Option<u32>, pool::PoolInfo, u64)> {
    let dev = Arc::new(MemDevice::new(usize::try_from(pool_size)?));
    let config = PoolConfig {
        sync_interval: None,
        ..PoolConfig::default()
    };
    let pool = Pool::create_on(dev, "frag", config)?;
    let chunk = vec![0x5au8; MIB as usize];
    let mut handles = Vec::new();
    let mut seed = 0u64;
    for (i, &(block_size, pct)) in vols.iter().enumerate() {
        let size = pool_size * pct / 100 / MIB * MIB;
        let name = format!("frag/v{i}");
        pool.create_volume(&name, size, block_size, &Default::default())?;
        let v = pool.volume(&name)?;
        for off in (0..size).step_by(MIB as usize) {
            v.write_at(off, &chunk)?;
        }
        handles.push((v, size / 4096));
        seed = seed * 1000 + (pct ^ u64::from(block_size));
    }
    pool.sync()?;
    let first_txg = pool.info().txg;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut failed = None;
    'rounds: for round in 1..=rounds {
        for op in 0..ops as usize {
            let (v, pages) = &handles[op % handles.len()];
            if v.write_at(rng.gen_range(0..*pages) * 4096, &chunk[..4096])
                .is_err()
            {
                failed = Some(round);
                break 'rounds;
            }
        }
        if pool.sync().is_err() {
            failed = Some(round);
            break;
        }
    }
    let info = pool.info();
    let commits = info.txg - first_txg;
    Ok((failed, info, commits))
}
