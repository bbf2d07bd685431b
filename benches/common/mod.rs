//! What the benchmarks share: sizes, dropping the page cache, `TARN_BENCH_ONLY`, medians.

#![allow(dead_code)]

/// One mebibyte.
pub const MIB: u64 = 1 << 20;

/// Syncs, then drops the page cache; whether the kernel took the request (root only).
pub fn drop_caches() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Whether `part` is to run, given `TARN_BENCH_ONLY` (a comma list; unset runs everything).
pub fn wants(only: Option<&str>, part: &str) -> bool {
    only.is_none_or(|o| o.split(',').any(|p| p.trim() == part))
}

/// `TARN_BENCH_ONLY`, each of its names checked against `parts` (a misspelt name would
/// otherwise run nothing of what was meant, silently).
pub fn only_parts(parts: &[&str]) -> Result<Option<String>, String> {
    let Ok(only) = std::env::var("TARN_BENCH_ONLY") else {
        return Ok(None);
    };
    for p in only.split(',').map(str::trim) {
        if !parts.contains(&p) {
            return Err(format!(
                "TARN_BENCH_ONLY={only}: unknown part {p:?}; the parts are {}",
                parts.join(", ")
            ));
        }
    }
    Ok(Some(only))
}

/// The median (the mean of the middle two for an even count); `NaN` when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Writes `size` pseudo-random bytes (seeded) to a new file at `path`, synced.
pub fn write_random_file(path: &std::path::Path, size: u64, seed: u64) -> std::io::Result<()> {
    use rand::{Rng, SeedableRng};
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut buf = vec![0u8; MIB as usize];
    for c in 0..size.div_ceil(MIB) {
        rng.fill(&mut buf[..]);
        f.write_all(&buf[..MIB.min(size - c * MIB) as usize])?;
    }
    f.sync_all()
}
