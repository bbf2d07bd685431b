//! Storage benchmark (issue 3, "Speed"). In one run, the same workloads go through the same
//! `zvol::BlockBackend` trait object to a pool volume, a buffered raw file and an `O_DIRECT`
//! raw file; `qemu-img bench` on raw and qcow2 images is the reference; then `tarn vol import`
//! is timed against `cp`. It prints ratios against the targets and never fails on speed.
//!
//! `cargo bench --bench storage`, tuned by environment variables:
//! - `TARN_BENCH_SIZE` (default `1G`, rounded up to whole MiB): volume, image and
//!   import-file size;
//! - `TARN_BENCH_DIR` (default `/var/tmp`): where pools, images and files go (all removed);
//! - `TARN_BENCH_OPS` (default `160000`): requests in each random 4 KiB test (the same
//!   offsets for every backend, so each touches the same blocks);
//! - `TARN_BENCH_SECS` (default `30`): a cap on each random 4 KiB test (noted when hit);
//! - `TARN_BENCH_SEQ_QD` (default `1`): queue depth of the sequential tests (ours and qemu's);
//! - `TARN_BENCH_ROUNDS` (default `3`): rounds of the steady-state workloads. Each round runs
//!   a workload once on every backend, in an order that rotates from round to round, and a
//!   cell is the median of its rounds: the disk's rate drifts by tens of percent within
//!   minutes on shared machines, and interleaving puts each backend's runs in the same stretches.
//!   Sequential write's rounds come after two passes of their own rows: the fill of the new
//!   backends, and the second pass (see `Table::run_interleaved`);
//! - `TARN_BENCH_SETTLE_MS` (default `0`): a pause before every workload, for disks whose host
//!   is still writing back the previous workload's data when the next one starts;
//! - `TARN_BENCH_DIRTY_MAX` (default the pool's, `PoolConfig::dirty_max`): the pool's dirty
//!   limit; every quarter of it placed wakes a commit, and each commit syncs the pool file twice;
//! - `TARN_BENCH_ONLY` (default all): a comma list of the parts to run, from `pool`, `raw`,
//!   `qemu`, `import` (for profiling one side).
//!
//! Files are removed only at the end (with the temporary folder holding them), so that no
//! timed workload follows the deletion of gigabytes (on a `discard` mount, the freed space is
//! trimmed while the next workload runs): it needs about 10 times `TARN_BENCH_SIZE` free.
//!
//! Run it as root so the page cache can be dropped before every workload (reads then come
//! from the disk, not from memory).

mod common;

use common::{drop_caches, median, MIB};
use pool::{Pool, PoolConfig};
use rand::{rngs::SmallRng, seq::SliceRandom, Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use zvol::{format_size, parse_size, BlockBackend, PoolVolume, RawFile, RawFileOptions};

/// A backend under test.
type Backend = Arc<dyn BlockBackend>;
type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SMALL: u64 = 4096;
/// Queue depth (threads) of the random and first-write tests.
const QD: u64 = 32;
/// qcow2's default cluster size: first writes land one per cluster, so each one allocates a
/// qcow2 cluster (and a never-written pool block, and a hole in a sparse raw file).
const CLUSTER: u64 = 64 << 10;
const SEED: u64 = 0x7a_4e;

struct Opts {
    size: u64,
    dir: PathBuf,
    ops: u64,
    secs: f64,
    seq_qd: u64,
    rounds: usize,
    settle: Duration,
    /// The pool's `PoolConfig::dirty_max`.
    dirty_max: u64,
    only: Option<String>,
    /// Whether `/proc/sys/vm/drop_caches` took our write.
    can_drop: bool,
}

impl Opts {
    fn from_env() -> Res<Opts> {
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
        // Whole MiB: the sequential tests (ours and qemu-img's) move 1 MiB a request.
        let size = parse_size(&var("TARN_BENCH_SIZE", "1G"))?;
        let size = size.div_ceil(MIB).max(1) * MIB;
        let secs: f64 = var("TARN_BENCH_SECS", "30").parse()?;
        if !(secs > 0.0 && secs.is_finite()) {
            return Err(format!("TARN_BENCH_SECS={secs}: a positive number of seconds").into());
        }
        Ok(Opts {
            size,
            dir: var("TARN_BENCH_DIR", "/var/tmp").into(),
            ops: var("TARN_BENCH_OPS", "160000").parse::<u64>()?.max(QD),
            secs,
            seq_qd: var("TARN_BENCH_SEQ_QD", "1").parse::<u64>()?.max(1),
            rounds: var("TARN_BENCH_ROUNDS", "3").parse::<usize>()?.max(1),
            settle: Duration::from_millis(var("TARN_BENCH_SETTLE_MS", "0").parse()?),
            dirty_max: match std::env::var("TARN_BENCH_DIRTY_MAX") {
                Ok(v) => parse_size(&v)?,
                Err(_) => PoolConfig::default().dirty_max,
            },
            only: common::only_parts(&["pool", "raw", "qemu", "import"])?,
            can_drop: drop_caches(),
        })
    }

    /// Whether `part` (`pool`, `raw`, `qemu`, `import`) is to run.
    fn wants(&self, part: &str) -> bool {
        common::wants(self.only.as_deref(), part)
    }

    /// Drops the page cache before a workload, if we can.
    fn cold(&self) {
        if self.can_drop {
            drop_caches();
        }
        thread::sleep(self.settle);
    }
}

/// A buffer of random bytes whose start is 4 KiB aligned, as `O_DIRECT` wants.
struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn random(len: usize, seed: u64) -> Aligned {
        let buf = vec![0u8; len + SMALL as usize];
        let start = buf.as_ptr().align_offset(SMALL as usize);
        let mut a = Aligned { buf, start, len };
        // Random bytes: a pool turns all-zero blocks into holes, and must not be flattered.
        SmallRng::seed_from_u64(seed).fill(a.bytes_mut());
        a
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

fn mib_per_s(bytes: u64, t: Instant) -> f64 {
    bytes as f64 / MIB as f64 / t.elapsed().as_secs_f64()
}

/// Sums per-thread op counts, passing on the first error.
fn join_all(hs: Vec<thread::ScopedJoinHandle<'_, Res<u64>>>) -> Res<u64> {
    hs.into_iter()
        .map(|h| h.join().map_err(|_| "a benchmark thread panicked")?)
        .sum()
}

/// Writes (or reads) the whole backend in 1 MiB requests, `qd` streams interleaved; a write
/// ends with a flush. MiB/s.
fn sequential(b: &Backend, write: bool, qd: u64) -> Res<f64> {
    let size = b.info().size;
    let chunks = size.div_ceil(MIB);
    let t = Instant::now();
    thread::scope(|s| {
        let hs = (0..qd)
            .map(|i| {
                s.spawn(move || -> Res<u64> {
                    let mut buf = Aligned::random(MIB as usize, SEED + i);
                    for c in (i..chunks).step_by(qd as usize) {
                        let len = MIB.min(size - c * MIB) as usize;
                        if write {
                            b.write_at(c * MIB, &buf.bytes()[..len])?;
                        } else {
                            b.read_at(c * MIB, &mut buf.bytes_mut()[..len])?;
                        }
                    }
                    Ok(0)
                })
            })
            .collect();
        join_all(hs)
    })?;
    if write {
        b.flush()?;
    }
    Ok(mib_per_s(size, t))
}

/// `ops` 4 KiB requests at random aligned offsets from `QD` threads (fixed seeds), stopping
/// early after `secs`; a write run ends with a flush. Ops/s.
fn random_4k(b: &Backend, write: bool, ops: u64, secs: f64) -> Res<f64> {
    let blocks = b.info().size / SMALL;
    let t = Instant::now();
    let deadline = t + Duration::from_secs_f64(secs);
    let done = thread::scope(|s| {
        let hs = (0..QD)
            .map(|i| {
                s.spawn(move || -> Res<u64> {
                    let mut rng = SmallRng::seed_from_u64(SEED + i);
                    let mut buf = Aligned::random(SMALL as usize, SEED + i);
                    let mut n = 0;
                    while n < ops / QD && Instant::now() < deadline {
                        let off = rng.gen_range(0..blocks) * SMALL;
                        if write {
                            b.write_at(off, buf.bytes())?;
                        } else {
                            b.read_at(off, buf.bytes_mut())?;
                        }
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        join_all(hs)
    })?;
    if done < ops / QD * QD {
        println!("note: a random 4K test stopped at the {secs} s cap after {done} requests");
    }
    if write {
        b.flush()?;
    }
    Ok(done as f64 / t.elapsed().as_secs_f64())
}

/// Offsets of the first-write test: one 4 KiB block in each 64 KiB cluster, shuffled.
fn first_write_offsets(size: u64) -> Vec<u64> {
    let mut offs: Vec<u64> = (0..size / CLUSTER).map(|c| c * CLUSTER).collect();
    offs.shuffle(&mut SmallRng::seed_from_u64(SEED));
    offs
}

/// 4 KiB writes to never-written blocks of a fresh backend from `QD` threads, then a flush.
/// Ops/s.
fn first_writes(b: &Backend, offsets: &[u64]) -> Res<f64> {
    let t = Instant::now();
    thread::scope(|s| {
        let hs = (0..QD as usize)
            .map(|i| {
                s.spawn(move || -> Res<u64> {
                    let buf = Aligned::random(SMALL as usize, SEED + i as u64);
                    for &off in offsets.iter().skip(i).step_by(QD as usize) {
                        b.write_at(off, buf.bytes())?;
                    }
                    Ok(0)
                })
            })
            .collect();
        join_all(hs)
    })?;
    b.flush()?;
    Ok(offsets.len() as f64 / t.elapsed().as_secs_f64())
}

#[derive(Clone, Copy)]
enum Col {
    Pool,
    RawBuf,
    RawDirect,
    QemuRaw,
    Qcow2,
}

#[derive(Clone, Copy)]
enum Row {
    SeqFill,
    SeqRewrite,
    SeqWrite,
    SeqRead,
    RandRead,
    RandWrite,
    FirstWrite,
}

const ROWS: [(Row, &str, Target); 7] = [
    (Row::SeqFill, "seq fill 1M (MiB/s)", Target::Raw(0.9)),
    (Row::SeqRewrite, "seq 2nd pass 1M (MiB/s)", Target::Raw(0.9)),
    (Row::SeqWrite, "seq write 1M (MiB/s)", Target::Raw(0.9)),
    (Row::SeqRead, "seq read 1M (MiB/s)", Target::Raw(0.9)),
    (Row::RandRead, "rand read 4K QD32 (op/s)", Target::Raw(0.9)),
    (
        Row::RandWrite,
        "rand write 4K QD32 (op/s)",
        Target::Raw(0.8),
    ),
    (Row::FirstWrite, "first write 4K QD32 (op/s)", Target::Qcow2),
];

/// What a row's pool number is held to.
#[derive(Clone, Copy)]
enum Target {
    /// At least this fraction of the raw file (buffered and direct).
    Raw(f64),
    /// Faster than qcow2.
    Qcow2,
}

#[derive(Default)]
struct Table([[Option<f64>; 5]; ROWS.len()]);

impl Table {
    fn set(&mut self, r: Row, c: Col, v: f64) {
        self.0[r as usize][c as usize] = Some(v);
    }

    /// Runs the workloads of fresh and steady state (all but first writes) on every backend,
    /// interleaved: each workload once per backend in an order that rotates, so that every
    /// backend meets the disk's slow and fast stretches alike.
    ///
    /// Sequential write first runs two single passes, each a row of its own: the fill of the
    /// fresh backends (the pool volume and the raw files are new and sparse), then the second
    /// pass (a raw file now overwrites blocks it holds, while a copy-on-write pool still writes
    /// much of it to space it has never used: its first pass's blocks are freed only as that
    /// pass's txgs fall out of the crash-fallback window). Then come `rounds` rounds of each
    /// workload in steady state (a cell is their median), as storage benchmarks precondition
    /// a device before measuring it (SNIA's PTS).
    fn run_interleaved(&mut self, backends: &[(Col, &str, Backend)], o: &Opts) -> Res<()> {
        type Workload<'a> = (
            Row,
            &'a [Row],
            &'a str,
            Box<dyn Fn(&Backend) -> Res<f64> + 'a>,
        );
        let workloads: [Workload<'_>; 4] = [
            (
                Row::SeqWrite,
                &[Row::SeqFill, Row::SeqRewrite],
                "sequential write",
                Box::new(|b| sequential(b, true, o.seq_qd)),
            ),
            (
                Row::SeqRead,
                &[],
                "sequential read",
                Box::new(|b| sequential(b, false, o.seq_qd)),
            ),
            (
                Row::RandWrite,
                &[],
                "random 4K write",
                Box::new(|b| random_4k(b, true, o.ops, o.secs)),
            ),
            (
                Row::RandRead,
                &[],
                "random 4K read",
                Box::new(|b| random_4k(b, false, o.ops, o.secs)),
            ),
        ];
        for (row, passes, what, run) in &workloads {
            let one_round = |round: usize| -> Res<Vec<f64>> {
                let mut got = vec![0.0; backends.len()];
                for k in 0..backends.len() {
                    let i = (k + round) % backends.len();
                    o.cold();
                    got[i] = run(&backends[i].2)?;
                }
                Ok(got)
            };
            for (round, pass) in passes.iter().enumerate() {
                eprintln!("  {what}, pass {} (not a round)", round + 1);
                for ((col, name, _), v) in backends.iter().zip(one_round(round)?) {
                    eprintln!("    {name}: {v:.0}");
                    self.set(*pass, *col, v);
                }
            }
            let mut samples: Vec<Vec<f64>> = vec![Vec::new(); backends.len()];
            for round in 0..o.rounds {
                eprintln!("  {what}, round {} of {}", round + 1, o.rounds);
                for (i, v) in one_round(round)?.into_iter().enumerate() {
                    samples[i].push(v);
                }
            }
            for ((col, name, _), v) in backends.iter().zip(&samples) {
                let shown: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
                eprintln!("    {name}: {}", shown.join(" "));
                self.set(*row, *col, median(v));
            }
        }
        Ok(())
    }

    fn print(&self) {
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        let ratio = |a: Option<f64>, b: Option<f64>, min: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => {
                let r = a / b;
                match min {
                    Some(m) if r >= m => format!("{r:.2} PASS"),
                    Some(_) => format!("{r:.2} MISS"),
                    None => format!("{r:.2}"),
                }
            }
            _ => "-".to_string(),
        };
        println!(
            "{:<28}{:>9}{:>9}{:>11}{:>10}{:>9}  {:>11}{:>13}{:>12}  target",
            "workload",
            "pool",
            "raw buf",
            "raw direct",
            "qemu raw",
            "qcow2",
            "pool/buf",
            "pool/direct",
            "pool/qcow2"
        );
        for (r, label, target) in ROWS {
            let v = self.0[r as usize];
            let pool = v[Col::Pool as usize];
            let (raw_min, qcow_min, goal) = match target {
                Target::Raw(m) => (Some(m), None, format!(">= {m}x raw")),
                Target::Qcow2 => (None, Some(1.0), "> qcow2".to_string()),
            };
            println!(
                "{label:<28}{:>9}{:>9}{:>11}{:>10}{:>9}  {:>11}{:>13}{:>12}  {goal}",
                cell(pool),
                cell(v[Col::RawBuf as usize]),
                cell(v[Col::RawDirect as usize]),
                cell(v[Col::QemuRaw as usize]),
                cell(v[Col::Qcow2 as usize]),
                ratio(pool, v[Col::RawBuf as usize], raw_min),
                ratio(pool, v[Col::RawDirect as usize], raw_min),
                ratio(pool, v[Col::Qcow2 as usize], qcow_min),
            );
        }
    }
}

/// Runs a command, failing with its stderr if it does not succeed.
fn run(cmd: &mut Command) -> Res<()> {
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{cmd:?} failed: {}", err.trim()).into());
    }
    Ok(())
}

/// Seconds one `qemu-img bench` process takes, start to exit: the exit includes the flush
/// that closing the image does.
fn qemu_bench(
    img: &Path,
    fmt: &str,
    write: bool,
    req: u64,
    step: u64,
    count: u64,
    qd: u64,
) -> Res<f64> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["bench", "-q", "-f", fmt, "-t", "writeback", "-i", "threads"])
        .args(["-c", &count.to_string(), "-d", &qd.to_string()])
        .args(["-s", &req.to_string(), "-S", &step.to_string()]);
    if write {
        cmd.args(["-w", "--pattern", "90"]);
    }
    cmd.arg(img);
    let t = Instant::now();
    run(&mut cmd)?;
    Ok(t.elapsed().as_secs_f64())
}

/// `qemu-img bench` on a fresh raw and a fresh qcow2 image: sequential write then read, and
/// first writes into another fresh image.
fn qemu_reference(table: &mut Table, o: &Opts, tmp: &Path) -> Res<()> {
    if Command::new("qemu-img").arg("--version").output().is_err() {
        println!("skip: qemu-img not found (install qemu-utils); no qcow2 reference");
        return Ok(());
    }
    let chunks = o.size / MIB;
    for (col, fmt) in [(Col::QemuRaw, "raw"), (Col::Qcow2, "qcow2")] {
        let img = tmp.join(format!("qemu.{fmt}"));
        let create = |p: &Path| {
            run(Command::new("qemu-img")
                .args(["create", "-q", "-f", fmt])
                .arg(p)
                .arg(o.size.to_string()))
        };
        create(&img)?;
        eprintln!("  [qemu {fmt}] sequential write, read");
        o.cold();
        let t = qemu_bench(&img, fmt, true, MIB, MIB, chunks, o.seq_qd)?;
        table.set(Row::SeqFill, col, o.size as f64 / MIB as f64 / t);
        o.cold();
        let t = qemu_bench(&img, fmt, false, MIB, MIB, chunks, o.seq_qd)?;
        table.set(Row::SeqRead, col, o.size as f64 / MIB as f64 / t);
        eprintln!("  [qemu {fmt}] first writes");
        let fresh = tmp.join(format!("qemu-fresh.{fmt}"));
        create(&fresh)?;
        o.cold();
        let n = o.size / CLUSTER;
        let t = qemu_bench(&fresh, fmt, true, SMALL, CLUSTER, n, QD)?;
        table.set(Row::FirstWrite, col, n as f64 / t);
    }
    Ok(())
}

/// The `tarn` binary cargo built beside this bench (`target/release/tarn`), if it can
/// import volumes yet.
fn tarn_binary() -> Result<PathBuf, String> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_tarn"));
    let usable = Command::new(&bin)
        .args(["vol", "import", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match usable {
        Ok(s) if s.success() => Ok(bin),
        Ok(_) => Err(format!("{} has no `vol import` yet", bin.display())),
        Err(e) => Err(format!("{}: {e}", bin.display())),
    }
}

/// Seconds from starting `cmd` to the end of a following `sync`.
fn timed_with_sync(cmd: &mut Command) -> Res<f64> {
    let t = Instant::now();
    run(cmd)?;
    run(&mut Command::new("sync"))?;
    Ok(t.elapsed().as_secs_f64())
}

/// `tarn vol import FILE POOL/vol; sync` against `cp FILE COPY; sync`, on a random file.
fn import_vs_cp(o: &Opts, tmp: &Path) -> Res<()> {
    let tarn = match tarn_binary() {
        Ok(b) => b,
        Err(why) => {
            println!("skip: tarn vol import vs cp: {why}");
            return Ok(());
        }
    };
    eprintln!("  [import] writing a {} random file", format_size(o.size));
    let src = tmp.join("import-src.img");
    common::write_random_file(&src, o.size, SEED)?;
    eprintln!("  [import] cp + sync");
    let copy = tmp.join("import-copy.img");
    o.cold();
    let cp = timed_with_sync(
        Command::new("cp")
            .arg("--reflink=never")
            .arg(&src)
            .arg(&copy),
    )?;

    eprintln!("  [import] tarn vol import + sync");
    let tarn_cmd = || {
        let mut c = Command::new(&tarn);
        c.env("TARN_HOME", tmp.join("tarn-home"));
        c
    };
    let pool_size = (2 * o.size + 256 * MIB).to_string();
    let pool_file = tmp.join("import.tarn");
    run(tarn_cmd()
        .args(["pool", "create", "benchimp"])
        .arg(&pool_file)
        .args(["--size", &pool_size]))?;
    o.cold();
    let imp = timed_with_sync(
        tarn_cmd()
            .arg("vol")
            .arg("import")
            .arg(&src)
            .arg("benchimp/vol"),
    )?;
    let _ = run(tarn_cmd().args(["pool", "destroy", "benchimp"]));
    let _ = std::fs::remove_file(&pool_file);
    std::fs::remove_file(&src)?;

    let r = imp / cp;
    let mark = if r <= 1.25 { "PASS" } else { "MISS" };
    let rate = |s: f64| o.size as f64 / MIB as f64 / s;
    println!(
        "import of a {} random file, each followed by `sync`:",
        format_size(o.size)
    );
    println!("  cp                {cp:7.2} s  {:6.0} MiB/s", rate(cp));
    println!("  tarn vol import   {imp:7.2} s  {:6.0} MiB/s", rate(imp));
    println!("  tarn/cp           {r:7.3}x  {mark} (target <= 1.25x)");
    Ok(())
}

/// A new volume of the benchmark's size in `pool` (the default block size).
fn pool_volume(pool: &Pool, name: &str, o: &Opts) -> Res<Backend> {
    let full = format!("bench/{name}");
    zvol::VolumeConfig::new(o.size).create(pool, &full)?;
    Ok(Arc::new(PoolVolume::open(pool, &full, false)?))
}

/// A new raw file of the benchmark's size, buffered or `O_DIRECT`; `None` (and the file
/// removed) where the file system refuses `O_DIRECT`, whose column would otherwise time a
/// buffered file under the name "raw direct".
fn raw_file(path: &Path, o: &Opts, direct: bool) -> Res<Option<Backend>> {
    let _ = std::fs::remove_file(path);
    let opts = RawFileOptions {
        direct,
        read_only: false,
    };
    let raw = RawFile::create(path, o.size, opts)?;
    if direct && !raw.is_direct() {
        println!(
            "raw direct: the file system under {} refuses O_DIRECT; that column is left out",
            o.dir.display()
        );
        drop(raw);
        std::fs::remove_file(path)?;
        return Ok(None);
    }
    Ok(Some(Arc::new(raw)))
}

/// The raw files' columns: (column, name, file name, O_DIRECT).
const RAW: [(Col, &str, &str, bool); 2] = [
    (Col::RawBuf, "raw buffered", "raw-buf.img", false),
    (Col::RawDirect, "raw direct", "raw-direct.img", true),
];

/// (a) a pool volume in a pool file (the pool's default configuration), (b) a buffered raw
/// file, (c) an `O_DIRECT` raw file: the steady-state workloads interleaved across them, then
/// first writes into a fresh one of each.
fn bench_ours(table: &mut Table, o: &Opts, tmp: &Path, offsets: &[u64]) -> Res<()> {
    let pool_path = tmp.join("bench.tarn");
    let pool = if o.wants("pool") {
        let size = 3 * o.size + 256 * MIB;
        Some(Pool::create_file(
            &pool_path,
            "bench",
            size,
            PoolConfig {
                dirty_max: o.dirty_max,
                ..PoolConfig::default()
            },
        )?)
    } else {
        None
    };
    let mut backends: Vec<(Col, &str, Backend)> = Vec::new();
    if let Some(pool) = &pool {
        let vol = pool_volume(pool, "vol", o)?;
        println!(
            "pool volume: block size {} (zvol::DEFAULT_BLOCK_SIZE)",
            vol.info().block_size
        );
        backends.push((Col::Pool, "pool", vol));
    }
    if o.wants("raw") {
        for (col, name, file, direct) in RAW {
            if let Some(raw) = raw_file(&tmp.join(file), o, direct)? {
                backends.push((col, name, raw));
            }
        }
    }
    table.run_interleaved(&backends, o)?;
    drop(backends);
    if let Some(pool) = pool {
        eprintln!("  [pool] first writes");
        let fresh = pool_volume(&pool, "fresh", o)?;
        o.cold();
        table.set(Row::FirstWrite, Col::Pool, first_writes(&fresh, offsets)?);
        drop(fresh);
        pool.close()?;
    }
    if o.wants("raw") {
        for (col, name, file, direct) in RAW {
            eprintln!("  [{name}] first writes");
            let path = tmp.join(format!("fresh-{file}"));
            let Some(fresh) = raw_file(&path, o, direct)? else {
                continue;
            };
            o.cold();
            table.set(Row::FirstWrite, col, first_writes(&fresh, offsets)?);
        }
    }
    Ok(())
}

fn main() -> Res<()> {
    let o = Opts::from_env()?;
    std::fs::create_dir_all(&o.dir)?;
    let tmp_dir = tempfile::Builder::new()
        .prefix("tarn-bench-")
        .tempdir_in(&o.dir)?;
    let tmp = tmp_dir.path();
    println!(
        "tarn storage bench: size {}, dir {}, random tests {} requests each, sequential QD {}, \
         {} interleaved rounds (cells are medians), {} CPUs",
        format_size(o.size),
        o.dir.display(),
        o.ops / QD * QD,
        o.seq_qd,
        o.rounds,
        thread::available_parallelism().map_or(0, |n| n.get()),
    );
    if o.can_drop {
        println!("page cache: dropped before every workload (reads come from the disk)");
    } else {
        println!("page cache: NOT dropped (not root?): reads may be served from memory");
    }
    let mut table = Table::default();
    let offsets = first_write_offsets(o.size);
    bench_ours(&mut table, &o, tmp, &offsets)?;
    if o.wants("qemu") {
        qemu_reference(&mut table, &o, tmp)?;
    }
    println!();
    table.print();
    println!(
        "(seq: 1 MiB requests over the whole size, QD {qd}, write includes the flush; fill and \
         2nd pass: the first two writes of new backends, qemu-img's a fresh image's; seq write: \
         median of the rounds after those; random: \
         {ops} requests from {QD} threads over the whole size, write includes the flush; first write: \
         one 4 KiB block per 64 KiB, {n} writes in shuffled order (qemu-img: ascending), \
         then a flush. qemu-img: -t writeback -i threads, timed as a whole process, whose \
         exit flushes.)",
        qd = o.seq_qd,
        ops = o.ops / QD * QD,
        n = offsets.len(),
    );
    if o.wants("import") {
        println!();
        import_vs_cp(&o, tmp)?;
    }
    Ok(())
}
