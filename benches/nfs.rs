//! NFS benchmark (issue 6, "Speed"). In one run, a random file is copied sequentially with
//! libnfs's `nfs-cp` (a real user-space NFSv3 client) from and to `tarn nfs serve --allow
//! 127.0.0.0/8` and nfs-ganesha (FSAL VFS, exporting a directory that holds the same file),
//! and with a local `cp` as the reference. It prints MiB/s and ratios (target: tarn >= 1.0x
//! ganesha both ways) and never fails on speed; it does fail if a copy comes back different.
//!
//! `cargo bench --bench nfs`, tuned by environment variables:
//! - `TARN_BENCH_SIZE` (default `1G`): the file's size;
//! - `TARN_BENCH_DIR` (default `/var/tmp`): where the file, the pool and the export go (all
//!   removed afterwards);
//! - `TARN_BENCH_ONLY` (default all): a comma list of `local`, `tarn`, `ganesha` (for
//!   profiling one side);
//! - `TARN_BENCH_SETTLE_MS` (default `5000`): the pause before each copy, after the page
//!   cache is dropped: a virtual disk's host may still be writing back the previous copy. With
//!   1 s here, whichever server read first in a round ran at 0.4-0.5x of the other, in both
//!   orders; with 6 s the per-round read ratios agreed within 0.2;
//! - `TARN_BENCH_ROUNDS` (default `4`): rounds; each round times every side once each way,
//!   the servers in alternating order (both run throughout; an even count puts each first
//!   equally often), and the table shows medians. Ratios are also printed per round: on
//!   shared, noisy machines only ratios taken side by side mean much. Whichever server runs
//!   second in a round is slowed by the first one's writeback, so the geometric mean of the
//!   per-round ratios (each order equally often) is printed beside the ratio of the medians,
//!   which does not pair the two sides.
//!
//! Files written and synced are kept until the end: on a file system mounted with `discard`,
//! deleting one issues a gigabyte of TRIM that would slow whichever copy came next. Before each
//! copy the page cache is dropped and the device given a moment to settle.
//!
//! What is timed, each as a whole process after dropping the page cache:
//! - read: `nfs-cp nfs://…/FILE OUT` against `cp FILE OUT` (neither syncs OUT);
//! - write: `nfs-cp FILE nfs://…/NEW` (the client COMMITs before it exits, so the data is
//!   durable on the server) against `cp FILE NEW; sync`.
//!
//! Disk: the source, a read copy, and per round a local copy, a file written to ganesha and
//! one in the pool (which also holds the source): about `(3 x ROUNDS + 4) x SIZE` free in
//! `TARN_BENCH_DIR`.
//!
//! Needs `nfs-cp` and `nfs-cat` (`apt-get install libnfs-utils`), the release `tarn` binary (`cargo build
//! --release`; cargo builds it for this bench) and, for the reference, `ganesha.nfsd` and
//! `rpcbind` (`apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind`; skipped with a message
//! when missing). Run it as root so the page cache can be dropped.

mod common;

use common::{drop_caches, median, MIB};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use zvol::{format_size, parse_size};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
/// Seconds of each round's read and write, for one side.
type Runs = (Vec<f64>, Vec<f64>);

const SEED: u64 = 0x6e_f5;

struct Opts {
    size: u64,
    dir: PathBuf,
    only: Option<String>,
    rounds: usize,
    settle: Duration,
    can_drop: bool,
}

impl Opts {
    fn from_env() -> Res<Opts> {
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
        Ok(Opts {
            size: parse_size(&var("TARN_BENCH_SIZE", "1G"))?.max(MIB),
            dir: var("TARN_BENCH_DIR", "/var/tmp").into(),
            only: common::only_parts(&["local", "tarn", "ganesha"])?,
            rounds: var("TARN_BENCH_ROUNDS", "4").parse::<usize>()?.max(1),
            settle: Duration::from_millis(var("TARN_BENCH_SETTLE_MS", "5000").parse()?),
            can_drop: drop_caches(),
        })
    }

    fn wants(&self, part: &str) -> bool {
        common::wants(self.only.as_deref(), part)
    }

    fn cold(&self) {
        if self.can_drop {
            drop_caches();
        }
        std::thread::sleep(self.settle);
    }

    fn rate(&self, secs: f64) -> f64 {
        self.size as f64 / MIB as f64 / secs
    }
}

fn run(cmd: &mut Command) -> Res<()> {
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        return Err(format!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// Seconds `cmd` takes (and a following `sync`, if asked).
fn timed(cmd: &mut Command, sync: bool) -> Res<f64> {
    let t = Instant::now();
    run(cmd)?;
    if sync {
        run(&mut Command::new("sync"))?;
    }
    Ok(t.elapsed().as_secs_f64())
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|d| d.join(prog))
            .find(|p| p.is_file())
    })
}

/// Whether a stream holds exactly the bytes of file `a`.
fn same_stream(a: &Path, b: &mut impl Read) -> Res<bool> {
    let mut fa = std::fs::File::open(a)?;
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            // The stream must end here too.
            return Ok(b.read(&mut bb[..1])? == 0);
        }
        if b.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Whether two files hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> Res<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// A free TCP port on 127.0.0.1 (free when we looked).
fn free_port() -> Res<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// An export under test: `base` is `nfs://…/EXPORT`, `query` the `?version=3&…` part; it holds
/// `data.img` (the source bytes). Dropping it stops its server.
struct Export {
    name: &'static str,
    base: String,
    query: String,
    _servers: Vec<Reaped>,
}

/// Reads `data.img` through the export with `nfs-cp` (page cache dropped first) and checks
/// it; seconds.
fn nfs_read(o: &Opts, tmp: &Path, src: &Path, e: &Export) -> Res<f64> {
    let out = tmp.join("nfs-read.out");
    let _ = std::fs::remove_file(&out);
    eprintln!("  [{}] nfs-cp read", e.name);
    o.cold();
    let t = timed(
        Command::new("nfs-cp")
            .arg(format!("{}/data.img{}", e.base, e.query))
            .arg(&out),
        false,
    )?;
    if !same_bytes(src, &out)? {
        return Err(format!("{}: the file read back differs from the source", e.name).into());
    }
    std::fs::remove_file(&out)?;
    Ok(t)
}

/// Writes the source as a new file `name` through the export with `nfs-cp` (page cache
/// dropped first; the client COMMITs before it exits), then reads it back (`nfs-cat`, no
/// local copy) to check it; seconds.
fn nfs_write(o: &Opts, src: &Path, e: &Export, name: &str) -> Res<f64> {
    eprintln!("  [{}] nfs-cp write", e.name);
    o.cold();
    let url = format!("{}/{name}{}", e.base, e.query);
    let t = timed(Command::new("nfs-cp").arg(src).arg(&url), false)?;
    let mut cat = Command::new("nfs-cat")
        .arg(&url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let same = match cat.stdout.take() {
        Some(mut out) => same_stream(src, &mut out)?,
        None => false,
    };
    if !cat.wait()?.success() || !same {
        return Err(format!("{}: the file written differs from the source", e.name).into());
    }
    // Kept (see the module docs on TRIM); the temporary directory goes at the end.
    Ok(t)
}

fn local_read(o: &Opts, tmp: &Path, src: &Path) -> Res<f64> {
    let out = tmp.join("local.out");
    eprintln!("  [local] cp read");
    o.cold();
    let t = timed(Command::new("cp").arg(src).arg(&out), false)?;
    std::fs::remove_file(&out)?;
    Ok(t)
}

/// `cp FILE NEW; sync`; NEW is kept (see the module docs on TRIM).
fn local_write(o: &Opts, tmp: &Path, src: &Path, round: usize) -> Res<f64> {
    let out = tmp.join(format!("local-{round}.out"));
    eprintln!("  [local] cp write + sync");
    o.cold();
    timed(Command::new("cp").arg(src).arg(&out), true)
}

/// Kills a child we started when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_tarn(o: &Opts, tmp: &Path, src: &Path) -> Res<Option<Export>> {
    let tarn = PathBuf::from(env!("CARGO_BIN_EXE_tarn"));
    if !tarn.is_file() {
        println!(
            "skip: tarn: {} is missing (build it: cargo build --release)",
            tarn.display()
        );
        return Ok(None);
    }
    let tarn_cmd = || {
        let mut c = Command::new(&tarn);
        c.env("TARN_HOME", tmp.join("tarn-home"));
        c
    };
    eprintln!("  [tarn] pool create, vol import");
    // The source, one written file per round (NFS clients here cannot remove them) and room.
    let pool_size = ((o.rounds as u64 + 2) * o.size + 256 * MIB).to_string();
    run(tarn_cmd()
        .args(["pool", "create", "benchnfs"])
        .arg(tmp.join("nfs.tarn"))
        .args(["--size", &pool_size]))?;
    run(tarn_cmd()
        .args(["vol", "import"])
        .arg(src)
        .arg("benchnfs/data.img"))?;
    let mut child = tarn_cmd()
        .args(["nfs", "serve", "benchnfs", "--listen", "127.0.0.1:0"])
        .args(["--allow", "127.0.0.0/8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout from tarn nfs serve")?;
    let server = Reaped(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    // "serving pool benchnfs on 127.0.0.1:PORT (NFSv3, …"
    let port = line
        .split_whitespace()
        .nth(4)
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .ok_or_else(|| format!("unexpected first line from tarn nfs serve: {line:?}"))?;
    Ok(Some(Export {
        name: "tarn",
        base: "nfs://127.0.0.1/benchnfs".into(),
        query: format!("?version=3&nfsport={port}&mountport={port}"),
        _servers: vec![server],
    }))
}

fn start_ganesha(tmp: &Path, src: &Path) -> Res<Option<Export>> {
    let (Some(ganesha), Some(rpcbind)) = (which("ganesha.nfsd"), which("rpcbind")) else {
        println!(
            "skip: ganesha: ganesha.nfsd or rpcbind not found (apt-get install nfs-ganesha \
             nfs-ganesha-vfs rpcbind); no ganesha reference"
        );
        return Ok(None);
    };
    let export = tmp.join("ganesha-export");
    std::fs::create_dir_all(&export)?;
    // The same file (a hard link: same bytes, nothing copied).
    std::fs::hard_link(src, export.join("data.img"))?;
    let nfs_port = free_port()?;
    let mut mnt_port = free_port()?;
    while mnt_port == nfs_port {
        mnt_port = free_port()?;
    }
    let conf = tmp.join("ganesha.conf");
    std::fs::File::create(&conf)?.write_all(
        format!(
            "NFS_CORE_PARAM {{ Protocols = 3; NFS_Port = {nfs_port}; MNT_Port = {mnt_port}; \
             Bind_Addr = 127.0.0.1; Enable_NLM = false; Enable_RQUOTA = false; \
             Enable_UDP = false; }}\n\
             NFS_KRB5 {{ Active_krb5 = false; }}\n\
             EXPORT {{ Export_Id = 77; Path = {p}; Pseudo = /bench; Access_Type = RW; \
             Squash = No_Root_Squash; Protocols = 3; Transports = TCP; SecType = sys; \
             FSAL {{ Name = VFS; }} }}\n",
            p = export.display()
        )
        .as_bytes(),
    )?;
    // ganesha registers with rpcbind as it starts (and will not start without one).
    let rpcb_running = Command::new("rpcinfo")
        .arg("-p")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let rpcb = if rpcb_running {
        None
    } else {
        let c = Command::new(rpcbind)
            .args(["-f", "-w"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(300));
        Some(Reaped(c))
    };
    eprintln!("  [ganesha] starting ganesha.nfsd on ports {nfs_port}, {mnt_port}");
    let log = tmp.join("ganesha.log");
    let server = Reaped(
        Command::new(ganesha)
            .arg("-F")
            .arg("-f")
            .arg(&conf)
            .arg("-L")
            .arg(&log)
            .arg("-p")
            .arg(tmp.join("ganesha.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", mnt_port)).is_err()
        || TcpStream::connect(("127.0.0.1", nfs_port)).is_err()
    {
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(format!("ganesha did not start; see {}", log.display()).into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Settle (ganesha finishes starting up after it listens).
    std::thread::sleep(Duration::from_secs(1));
    drop(rpcb);
    Ok(Some(Export {
        name: "ganesha",
        base: format!("nfs://127.0.0.1{}", export.display()),
        query: format!("?version=3&nfsport={nfs_port}&mountport={mnt_port}"),
        _servers: vec![server],
    }))
}

fn main() -> Res<()> {
    let o = Opts::from_env()?;
    std::fs::create_dir_all(&o.dir)?;
    let tmp_dir = tempfile::Builder::new()
        .prefix("tarn-nfs-bench-")
        .tempdir_in(&o.dir)?;
    let tmp = tmp_dir.path();
    println!(
        "tarn NFS bench: size {}, dir {}, {} CPUs",
        format_size(o.size),
        o.dir.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    if o.can_drop {
        println!("page cache: dropped before every copy");
    } else {
        println!("page cache: NOT dropped (not root?): reads may be served from memory");
    }
    if which("nfs-cp").is_none() {
        println!("skip: nfs-cp not found (apt-get install libnfs-utils); nothing to compare");
        return Ok(());
    }
    eprintln!("  writing a {} random file", format_size(o.size));
    let src = tmp.join("src.img");
    common::write_random_file(&src, o.size, SEED)?;
    let mut exports = Vec::new();
    if o.wants("tarn") {
        exports.extend(start_tarn(&o, tmp, &src)?);
    }
    if o.wants("ganesha") {
        exports.extend(start_ganesha(tmp, &src)?);
    }
    // times[side] = (reads, writes); side 0 is the local copy.
    let mut times: Vec<Runs> = vec![(Vec::new(), Vec::new()); exports.len() + 1];
    for round in 0..o.rounds {
        eprintln!("  round {} of {}", round + 1, o.rounds);
        // Servers in alternating order, so a drift in the machine's load favours no one.
        let mut order: Vec<usize> = (0..exports.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        if o.wants("local") {
            times[0].0.push(local_read(&o, tmp, &src)?);
        }
        for &i in &order {
            times[i + 1].0.push(nfs_read(&o, tmp, &src, &exports[i])?);
        }
        if o.wants("local") {
            times[0].1.push(local_write(&o, tmp, &src, round)?);
        }
        for &i in &order {
            let name = format!("new-{round}.img");
            times[i + 1]
                .1
                .push(nfs_write(&o, &src, &exports[i], &name)?);
        }
    }
    let label = |name: &str| match name {
        "tarn" => "tarn nfs serve --allow",
        _ => "nfs-ganesha (FSAL VFS)",
    };
    let sides: Vec<(&str, &Runs)> = std::iter::once("local cp (write: + sync)")
        .chain(exports.iter().map(|e| label(e.name)))
        .zip(&times)
        .collect();
    drop(exports);
    let local = (!times[0].0.is_empty()).then(|| (median(&times[0].0), median(&times[0].1)));
    println!();
    println!(
        "{:<28} {:>10} {:>8} {:>11} {:>8}   (medians of {} rounds)",
        "", "read MiB/s", "x cp", "write MiB/s", "x cp", o.rounds
    );
    let ratio =
        |t: f64, base: Option<f64>| base.map_or("-".to_string(), |b| format!("{:.2}x", b / t));
    for (name, (r, w)) in &sides {
        if r.is_empty() {
            continue;
        }
        let (r, w) = (median(r), median(w));
        println!(
            "{name:<28} {:>10.0} {:>8} {:>11.0} {:>8}",
            o.rate(r),
            ratio(r, local.map(|l| l.0)),
            o.rate(w),
            ratio(w, local.map(|l| l.1)),
        );
    }
    let tarn = sides.iter().find(|s| s.0 == label("tarn")).map(|s| s.1);
    let ganesha = sides.iter().find(|s| s.0 == label("ganesha")).map(|s| s.1);
    if let (Some(t), Some(g)) = (tarn, ganesha) {
        let per_round = |a: &[f64], b: &[f64]| {
            a.iter()
                .zip(b)
                .map(|(t, g)| format!("{:.2}", g / t))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "tarn/ganesha per round: read {}; write {}",
            per_round(&t.0, &g.0),
            per_round(&t.1, &g.1)
        );
        let mark = |r: f64| if r >= 1.0 { "PASS" } else { "MISS" };
        let (r, w) = (median(&g.0) / median(&t.0), median(&g.1) / median(&t.1));
        println!(
            "tarn/ganesha (medians): read {r:.2}x {}, write {w:.2}x {} (target >= 1.0x both ways)",
            mark(r),
            mark(w)
        );
        let paired = |a: &[f64], b: &[f64]| {
            let logs: Vec<f64> = a.iter().zip(b).map(|(t, g)| (g / t).ln()).collect();
            (logs.iter().sum::<f64>() / logs.len().max(1) as f64).exp()
        };
        let (r, w) = (paired(&t.0, &g.0), paired(&t.1, &g.1));
        println!(
            "tarn/ganesha (geometric mean of the per-round ratios): read {r:.2}x {}, write {w:.2}x {}",
            mark(r),
            mark(w)
        );
    }
    println!(
        "(nfs-cp {} in one process each, page cache dropped before each; read: nfs-cp/cp to a \
         local file, not synced; write: nfs-cp (ends with COMMIT) / cp + sync)",
        format_size(o.size)
    );
    Ok(())
}
