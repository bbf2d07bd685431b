//! The in-process storage path (issue 5, "Speed"): virtio-blk requests driven through a
//! virtqueue in plain memory against calling the same `zvol::BlockBackend` directly, on a raw
//! file and on a pool volume, in one run. Prints throughput and the ratio virtio/direct against
//! the target (>= 0.9x); never fails on speed.
//!
//! Paths, all on the same backend object, the same operations and the same buffer contents:
//! - `direct`: the backend's `read_vectored`/`write_vectored`, one request after another,
//!   cycling through `QD` buffers of the request size, laid out in memory exactly as the
//!   drivers' guest buffers (page-aligned; heap buffers are not, which used to make `direct`
//!   up to 2x slower at 1 MiB);
//! - `inline`: chains popped from the queue, parsed, executed and put on the used ring on the
//!   caller's thread (`ring::serve_inline`, the pass the queue thread runs): the request
//!   handling alone (`valgrind --tool=callgrind --toggle-collect='*inline_pass*'` counts it);
//! - `dev w0`: the real `Block` device behind virtio-mmio, its queue thread running requests
//!   one after another (`workers: 0`): the whole virtio path with direct's serial execution;
//!   this is the column the target applies to;
//! - `dev w4`: the device as VMs get it (4 I/O threads), for information: it runs requests
//!   that take long (1 MiB copies here) in parallel, which `direct` does not, and those that
//!   take microseconds (4 KiB from the page cache) on its queue thread, as `dev w0` does
//!   (`block::pace`).
//!
//! The driver keeps `QD` requests in flight as Linux's `virtio_blk` does (`virtblk_done`): on
//! an interrupt it takes every completed request, refills every slot that frees, kicks when the
//! device asks for it (event index: a device still polling its ring does not), and asks to be
//! interrupted at the next completion, looking at the used ring once more before it sleeps.
//! The page cache is left warm, so the backend is as fast as it gets and the virtio overhead is
//! at its most visible. The table's `req/wake` column counts the requests `dev w0` completed
//! per interrupt that woke its driver from a sleep (the fewer wake-ups, the less the device's
//! thread pays for them). Under the table, what signalling an eventfd costs the writing thread
//! on this host, where it wakes a sleeping thread and where nobody waits: the device's cost
//! per interrupt for a driver that sleeps and for one that polls.
//!
//! `cargo bench --bench vmm_blk`, tuned by environment variables:
//! - `TARN_BENCH_SIZE` (default `256M`): disk size;
//! - `TARN_BENCH_DIR` (default `/var/tmp`): where the raw file and the pool file go (removed);
//! - `TARN_BENCH_OPS` (default `200000`): requests in each random 4 KiB test;
//! - `TARN_BENCH_SEQ_OPS` (default `1024`): requests in each sequential 1 MiB test (wrapping
//!   around the disk);
//! - `TARN_BENCH_TESTS` (default: all): the tests to run, by name, comma-separated (e.g.
//!   `4K randread,1M seqread`); a test run alone starts with its page cache and the worker
//!   pool's pace as the tests before it would not have left them, so compare its numbers with
//!   runs of the same selection;
//! - `TARN_BENCH_QD` (default `32`): requests per kick (and buffers of every path);
//! - `TARN_BENCH_ROUNDS` (default `3`): each path runs this often per test, in rotating order;
//!   the median is reported;
//! - `TARN_BENCH_SPIN_US` (default `0`): how long the driver polls the used ring before it
//!   sleeps on the interrupt, standing in for the host's halt polling of an idle guest vCPU
//!   (KVM's `halt_poll_ns`): with 0 every batch also pays for waking a sleeping thread of
//!   this process, which a guest on a KVM host mostly does not. Off by default, so that the
//!   table measures what it always did.
//! - `TARN_BENCH_DRIVER` (default `linux`, as above): `half` asks to be interrupted only once
//!   half of what is in flight has completed (the driver of measurements from 2026-11-26 to
//!   2026-11-27, which Linux's virtio-blk is not); `batch` publishes `QD` requests, waits for
//!   all of them and repeats (the driver of measurements before 2026-11-26): the device idles
//!   while the driver wakes and refills.

mod common;

use common::{median, MIB};
use pool::{Pool, PoolConfig};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use std::io::{IoSlice, IoSliceMut};
use std::sync::Arc;
use std::time::Instant;
use vmm::devices::virtio::block::bench_utils::{Driver, HostBuffers, Mode, Op, Pipeline};
use vmm::devices::virtio::block::Disk;
use vmm_sys_util::eventfd::EventFd;
use zvol::{parse_size, BlockBackend, PoolVolume, RawFile, RawFileOptions};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SMALL: u32 = 4096;
const TARGET: f64 = 0.9;
const PATHS: [&str; 4] = ["direct", "inline", "dev w0", "dev w4"];
/// The tests of each backend, in the order they run.
const TESTS: [&str; 4] = ["4K randread", "4K randwrite", "1M seqread", "1M seqwrite"];

struct Opts {
    size: u64,
    dir: std::path::PathBuf,
    ops: usize,
    seq_ops: u64,
    qd: usize,
    rounds: usize,
    spin_us: u64,
    /// Test names to run; empty: all.
    tests: Vec<String>,
    pipeline: Pipeline,
}

fn main() -> Res<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let o = Opts {
        size: (parse_size(&var("TARN_BENCH_SIZE", "256M"))? / MIB).max(1) * MIB,
        dir: var("TARN_BENCH_DIR", "/var/tmp").into(),
        ops: var("TARN_BENCH_OPS", "200000").parse()?,
        seq_ops: var("TARN_BENCH_SEQ_OPS", "1024").parse()?,
        qd: var("TARN_BENCH_QD", "32").parse::<usize>()?.clamp(1, 64),
        rounds: var("TARN_BENCH_ROUNDS", "3").parse::<usize>()?.max(1),
        spin_us: var("TARN_BENCH_SPIN_US", "0").parse()?,
        tests: var("TARN_BENCH_TESTS", "")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        pipeline: match var("TARN_BENCH_DRIVER", "linux").as_str() {
            "linux" => Pipeline::Linux,
            "half" => Pipeline::Half,
            "batch" => Pipeline::Batch,
            other => return Err(format!("TARN_BENCH_DRIVER={other}: linux, half or batch").into()),
        },
    };
    if let Some(t) = o.tests.iter().find(|t| !TESTS.contains(&t.as_str())) {
        return Err(format!(
            "TARN_BENCH_TESTS: no test {t:?} (tests: {})",
            TESTS.join(", ")
        )
        .into());
    }
    let tmp = tempfile::Builder::new()
        .prefix("tarn-vmm-blk-")
        .tempdir_in(&o.dir)?;
    println!(
        "vmm_blk: disk {} MiB in {}, {} random 4 KiB ops, {} sequential 1 MiB ops, \
         {} in flight ({} driver), median of {} rounds, driver polls {} us before sleeping, \
         page cache warm",
        o.size / MIB,
        o.dir.display(),
        o.ops,
        o.seq_ops,
        o.qd,
        format!("{:?}", o.pipeline).to_lowercase(),
        o.rounds,
        o.spin_us
    );
    let mut rows = Vec::new();

    let raw_path = tmp.path().join("disk.img");
    let opts = RawFileOptions {
        read_only: false,
        direct: false,
    };
    drop(RawFile::create(&raw_path, o.size, opts)?);
    let raw: Arc<dyn BlockBackend> = Arc::new(RawFile::open(&raw_path, opts)?);
    rows.extend(bench_backend("raw", &raw, &o)?);
    drop(raw);

    let pool_path = tmp.path().join("pool.tarn");
    let pool = Pool::create_file(
        &pool_path,
        "vmmblk",
        4 * o.size + 512 * MIB,
        PoolConfig::default(),
    )?;
    zvol::VolumeConfig::new(o.size).create(&pool, "vmmblk/vol")?;
    let vol: Arc<dyn BlockBackend> = Arc::new(PoolVolume::open(&pool, "vmmblk/vol", false)?);
    rows.extend(bench_backend("pool", &vol, &o)?);
    drop(vol);
    pool.close()?;

    print_table(&rows);
    let (sleeping, polling) = interrupt_cost()?;
    println!(
        "(this host: signalling an eventfd costs the writer {sleeping:.2} us where it wakes a \
         thread asleep on it, as an interrupt wakes a sleeping driver, and {polling:.2} us \
         where nobody waits: medians)"
    );
    Ok(())
}

/// What signalling an eventfd costs the thread that writes it on this host, in microseconds:
/// where the write wakes a thread asleep on it (as the device's interrupt wakes this bench's
/// driver, which sleeps by default), and where nobody waits (as for a driver that polls). A
/// thread-to-thread model of an interrupt: a KVM irqfd also injects the interrupt into the
/// vCPU, from the writer's thread, and kicks the vCPU if it runs, so the real costs are higher;
/// the gap between the two is what a sleeping driver costs the device per interrupt.
fn interrupt_cost() -> Res<(f64, f64)> {
    const N: usize = 2000;
    let irq = Arc::new(EventFd::new(0)?);
    let ack = Arc::new(EventFd::new(0)?);
    let sleeper = {
        let (irq, ack) = (irq.clone(), ack.clone());
        std::thread::spawn(move || -> std::io::Result<()> {
            for _ in 0..N {
                irq.read()?;
                ack.write(1)?;
            }
            Ok(())
        })
    };
    let mut waking = Vec::with_capacity(N);
    for _ in 0..N {
        // Time for the other thread to fall asleep again.
        std::thread::sleep(std::time::Duration::from_micros(50));
        let t = Instant::now();
        irq.write(1)?;
        waking.push(t.elapsed().as_secs_f64() * 1e6);
        ack.read()?;
    }
    sleeper
        .join()
        .map_err(|_| "the sleeping thread panicked")??;
    let lonely = EventFd::new(0)?;
    let mut alone = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        lonely.write(1)?;
        alone.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok((median(&waking), median(&alone)))
}

/// One line of the table: backend, test, ops, bytes per op, median seconds per path.
struct Row {
    backend: &'static str,
    test: &'static str,
    ops: usize,
    len: u32,
    secs: [f64; 4],
    /// Interrupts that woke `dev w0`'s driver from its sleep, per request (all rounds).
    w0_wakeups: f64,
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

fn bench_backend(name: &'static str, backend: &Arc<dyn BlockBackend>, o: &Opts) -> Res<Vec<Row>> {
    let big = pattern(MIB as usize, 0x7a4e);
    // Allocate every block first (untimed), so no path pays for first writes.
    eprintln!("  [{name}] filling {} MiB", o.size / MIB);
    for off in (0..o.size).step_by(MIB as usize) {
        backend.write_at(off, &big)?;
    }
    backend.flush()?;

    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let blocks = o.size / u64::from(SMALL);
    let offsets: Vec<u64> = (0..o.ops)
        .map(|_| rng.gen_range(0..blocks) * u64::from(SMALL))
        .collect();
    let seq: Vec<u64> = (0..o.seq_ops).map(|i| i % (o.size / MIB) * MIB).collect();
    let tests: [(&str, bool, u32, &[u64]); 4] = [
        (TESTS[0], false, SMALL, &offsets),
        (TESTS[1], true, SMALL, &offsets),
        (TESTS[2], false, MIB as u32, &seq),
        (TESTS[3], true, MIB as u32, &seq),
    ];

    let disk = Arc::new(Disk::new(backend.clone(), false));
    let mut drivers = Vec::new();
    for mode in [
        Mode::Inline,
        Mode::Device { workers: 0 },
        Mode::Device { workers: 4 },
    ] {
        let mut d = Driver::new(disk.clone(), mode, o.qd, &big)?;
        d.set_completion_spin(std::time::Duration::from_micros(o.spin_us));
        d.set_pipeline(o.pipeline);
        drivers.push(d);
    }
    // The drivers' buffer layout and kind of memory: page-aligned, like the guest's.
    let mut bufs = HostBuffers::new(o.qd, &big)?;

    let mut rows = Vec::new();
    for (test, write, len, offs) in tests {
        if !o.tests.is_empty() && !o.tests.iter().any(|t| t == test) {
            continue;
        }
        eprintln!("  [{name}] {test}");
        let ops: Vec<Op> = offs
            .iter()
            .map(|&offset| Op { write, offset, len })
            .collect();
        let mut times: [Vec<f64>; 4] = Default::default();
        let mut w0_wakeups = 0;
        for round in 0..o.rounds {
            for k in 0..PATHS.len() {
                let p = (k + round) % PATHS.len();
                let t = Instant::now();
                match p {
                    0 => direct(backend.as_ref(), &ops, &mut bufs)?,
                    _ => drivers[p - 1].run(&ops)?,
                }
                times[p].push(t.elapsed().as_secs_f64());
                if p == 2 {
                    w0_wakeups += drivers[1].wakeups();
                }
                if write {
                    backend.flush()?;
                }
            }
        }
        rows.push(Row {
            backend: name,
            test,
            ops: ops.len(),
            len,
            secs: times.map(|t| median(&t)),
            w0_wakeups: w0_wakeups as f64 / (ops.len() * o.rounds) as f64,
        });
    }
    Ok(rows)
}

/// The same requests as straight backend calls, cycling through the buffers.
fn direct(backend: &dyn BlockBackend, ops: &[Op], bufs: &mut HostBuffers) -> Res<()> {
    let mut bufs = bufs.slices_mut()?;
    let n = bufs.len();
    for (i, op) in ops.iter().enumerate() {
        let buf = &mut bufs[i % n][..op.len as usize];
        if op.write {
            backend.write_vectored(op.offset, &[IoSlice::new(buf)])?;
        } else {
            backend.read_vectored(op.offset, &mut [IoSliceMut::new(buf)])?;
        }
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<5} {:<13} {:>6} {:>12} {:>8} {:>8} {:>8} {:>9}  target (dev w0 >= {TARGET}x)",
        "disk", "test", "ops", "direct", "inline", "dev w0", "dev w4", "req/wake"
    );
    for r in rows {
        let rate = if r.len == SMALL {
            format!("{:.0} kIOPS", r.ops as f64 / r.secs[0] / 1e3)
        } else {
            format!(
                "{:.0} MiB/s",
                r.ops as f64 * f64::from(r.len) / MIB as f64 / r.secs[0]
            )
        };
        let ratio = |p: usize| r.secs[0] / r.secs[p];
        let verdict = if ratio(2) >= TARGET { "met" } else { "MISSED" };
        let per_wake = if r.w0_wakeups > 0.0 {
            format!("{:.1}", 1.0 / r.w0_wakeups)
        } else {
            "-".into()
        };
        println!(
            "{:<5} {:<13} {:>6} {:>12} {:>7.2}x {:>7.2}x {:>7.2}x {per_wake:>9}  {verdict}",
            r.backend,
            r.test,
            r.ops,
            rate,
            ratio(1),
            ratio(2),
            ratio(3)
        );
    }
    println!(
        "(ratios: direct time / path time, >1 is faster than direct; req/wake: requests per \
         interrupt that woke dev w0's driver from its sleep, \"-\" where it never slept)"
    );
}
