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
//!   profiling one side).
//!
//! What is timed, each as a whole process after dropping the page cache:
//! - read: `nfs-cp nfs://…/FILE OUT` against `cp FILE OUT` (neither syncs OUT);
//! - write: `nfs-cp FILE nfs://…/NEW` (the client COMMITs before it exits, so the data is
//!   durable on the server) against `cp FILE NEW; sync`.
//!
//! Needs `nfs-cp` (`apt-get install libnfs-utils`), the release `tarn` binary (`cargo build
//! --release`; cargo builds it for this bench) and, for the reference, `ganesha.nfsd` and
//! `rpcbind` (`apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind`; skipped with a message
//! when missing). Run it as root so the page cache can be dropped.

use rand::{rngs::SmallRng, Rng, SeedableRng};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use zvol::{format_size, parse_size};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MIB: u64 = 1 << 20;
const SEED: u64 = 0x6e_f5;

struct Opts {
    size: u64,
    dir: PathBuf,
    only: Option<String>,
    can_drop: bool,
}

impl Opts {
    fn from_env() -> Res<Opts> {
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
        Ok(Opts {
            size: parse_size(&var("TARN_BENCH_SIZE", "1G"))?.max(MIB),
            dir: var("TARN_BENCH_DIR", "/var/tmp").into(),
            only: std::env::var("TARN_BENCH_ONLY").ok(),
            can_drop: drop_caches(),
        })
    }

    fn wants(&self, part: &str) -> bool {
        match &self.only {
            None => true,
            Some(o) => o.split(',').any(|p| p.trim() == part),
        }
    }

    fn cold(&self) {
        if self.can_drop {
            drop_caches();
        }
    }

    fn rate(&self, secs: f64) -> f64 {
        self.size as f64 / MIB as f64 / secs
    }
}

fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
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

/// Read and write times (seconds) of one server or of the local copy.
#[derive(Clone, Copy)]
struct Times {
    read: f64,
    write: f64,
}

/// `nfs-cp` both ways against an export: reads `FILE` (holding the source bytes) from
/// `base` (`nfs://…/EXPORT`, `query` the `?version=3&…` part), writes `NEW`, then checks both.
fn nfs_copies(o: &Opts, tmp: &Path, src: &Path, base: &str, query: &str, name: &str) -> Res<Times> {
    let out = tmp.join("nfs-read.out");
    let _ = std::fs::remove_file(&out);
    eprintln!("  [{name}] nfs-cp read");
    o.cold();
    let read = timed(
        Command::new("nfs-cp")
            .arg(format!("{base}/data.img{query}"))
            .arg(&out),
        false,
    )?;
    if !same_bytes(src, &out)? {
        return Err(format!("{name}: the file read back differs from the source").into());
    }
    std::fs::remove_file(&out)?;
    eprintln!("  [{name}] nfs-cp write");
    o.cold();
    let write = timed(
        Command::new("nfs-cp")
            .arg(src)
            .arg(format!("{base}/new.img{query}")),
        false,
    )?;
    eprintln!("  [{name}] checking the written file");
    run(Command::new("nfs-cp")
        .arg(format!("{base}/new.img{query}"))
        .arg(&out))?;
    if !same_bytes(src, &out)? {
        return Err(format!("{name}: the file written differs from the source").into());
    }
    std::fs::remove_file(&out)?;
    Ok(Times { read, write })
}

fn local_copies(o: &Opts, tmp: &Path, src: &Path) -> Res<Times> {
    let out = tmp.join("local.out");
    eprintln!("  [local] cp read");
    o.cold();
    let read = timed(Command::new("cp").arg(src).arg(&out), false)?;
    std::fs::remove_file(&out)?;
    eprintln!("  [local] cp write + sync");
    o.cold();
    let write = timed(Command::new("cp").arg(src).arg(&out), true)?;
    std::fs::remove_file(&out)?;
    Ok(Times { read, write })
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

fn tarn_side(o: &Opts, tmp: &Path, src: &Path) -> Res<Option<Times>> {
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
    let pool_size = (3 * o.size + 256 * MIB).to_string();
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
    let query = format!("?version=3&nfsport={port}&mountport={port}");
    let t = nfs_copies(o, tmp, src, "nfs://127.0.0.1/benchnfs", &query, "tarn")?;
    drop(server);
    let _ = run(tarn_cmd().args(["pool", "destroy", "benchnfs"]));
    Ok(Some(t))
}

fn ganesha_side(o: &Opts, tmp: &Path, src: &Path) -> Res<Option<Times>> {
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
    let (nfs_port, mnt_port) = (free_port()?, free_port()?);
    let mnt_port = if mnt_port == nfs_port {
        free_port()?
    } else {
        mnt_port
    };
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
    // Ganesha starts in a grace period; its first requests may wait it out.
    std::thread::sleep(Duration::from_secs(1));
    drop(rpcb);
    let query = format!("?version=3&nfsport={nfs_port}&mountport={mnt_port}");
    let base = format!("nfs://127.0.0.1{}", export.display());
    let t = nfs_copies(o, tmp, src, &base, &query, "ganesha")?;
    drop(server);
    Ok(Some(t))
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
    {
        let mut f = std::fs::File::create(&src)?;
        let mut rng = SmallRng::seed_from_u64(SEED);
        let mut buf = vec![0u8; MIB as usize];
        for c in 0..o.size.div_ceil(MIB) {
            rng.fill(&mut buf[..]);
            f.write_all(&buf[..MIB.min(o.size - c * MIB) as usize])?;
        }
        f.sync_all()?;
    }
    let local = if o.wants("local") {
        Some(local_copies(&o, tmp, &src)?)
    } else {
        None
    };
    let tarn = if o.wants("tarn") {
        tarn_side(&o, tmp, &src)?
    } else {
        None
    };
    let ganesha = if o.wants("ganesha") {
        ganesha_side(&o, tmp, &src)?
    } else {
        None
    };

    println!();
    println!(
        "{:<28} {:>10} {:>8} {:>11} {:>8}",
        "", "read MiB/s", "x cp", "write MiB/s", "x cp"
    );
    let ratio =
        |t: f64, base: Option<f64>| base.map_or("-".to_string(), |b| format!("{:.2}x", b / t));
    for (name, t) in [
        ("local cp (write: + sync)", local),
        ("tarn nfs serve --allow", tarn),
        ("nfs-ganesha (FSAL VFS)", ganesha),
    ] {
        if let Some(t) = t {
            println!(
                "{name:<28} {:>10.0} {:>8} {:>11.0} {:>8}",
                o.rate(t.read),
                ratio(t.read, local.map(|l| l.read)),
                o.rate(t.write),
                ratio(t.write, local.map(|l| l.write)),
            );
        }
    }
    if let (Some(t), Some(g)) = (tarn, ganesha) {
        let mark = |r: f64| if r >= 1.0 { "PASS" } else { "MISS" };
        let (r, w) = (g.read / t.read, g.write / t.write);
        println!(
            "tarn/ganesha: read {r:.2}x {}, write {w:.2}x {} (target >= 1.0x both ways)",
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
