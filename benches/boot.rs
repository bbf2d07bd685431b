//! Boot speed (issue 5, "Speed"): `tarn vm run` against QEMU `-M microvm -accel kvm` booting
//! the same stock kernel, initramfs and command line, with the same CPUID (`-cpu host`, as
//! tarn passes KVM's supported CPUID), in the nested harness of `tests/vm_nested.rs` (QEMU TCG
//! `-cpu max` runs an outer Linux whose KVM runs both VMMs; see ../shared/VM-TESTING.md).
//! Prints, per VMM, the median time from launch to the guest's init (the outer init's
//! `TARN-LAUNCH` and `TARN-INIT-SEEN` markers, its own uptime clock) and KVM's exit counters
//! for the inner VM (sampled from debugfs by the outer init), then the ratios tarn/QEMU
//! (target: time <= 0.9x, fewer exits). Never fails on speed.
//!
//! The inner guest runs `tarn.test=boot` (init prints its marker and powers off). Runs
//! alternate between the VMMs, the first VMM alternating too, so that both see the same
//! stretches of a noisy machine.
//!
//! `cargo bench --bench boot`, tuned by environment variables:
//! - `TARN_BENCH_ROUNDS` (default `3`): boots per VMM;
//! - `TARN_VM_FIXTURES` (default: built by `fixtures/guest.sh --with-qemu` into a temporary
//!   folder, cached under fixtures/cache/): fixtures made with `--with-qemu`;
//! - `TARN_BENCH_CPUS` (default `1`): inner vCPUs.
//!
//! Skips, saying why, without qemu-system-x86_64 or where `fixtures/guest.sh` cannot build.

mod common;

use common::median;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The VMMs compared, as `tarn.vmm=` names them.
const VMMS: [&str; 2] = ["tarn", "qemu"];
/// A whole nested run takes 20-60 s here; a run past this is stuck.
const RUN_LIMIT: Duration = Duration::from_secs(400);

/// What one boot measured.
#[derive(Debug, Default)]
struct Boot {
    /// Seconds from launch to the guest's init.
    init_s: f64,
    /// KVM's counters for the inner VM: exits, io_exits, mmio_exits, halt_exits.
    exits: [f64; 4],
}

fn main() -> Res<()> {
    let rounds: usize = std::env::var("TARN_BENCH_ROUNDS")
        .unwrap_or_else(|_| "3".into())
        .parse::<usize>()?
        .max(1);
    let cpus: u32 = std::env::var("TARN_BENCH_CPUS")
        .unwrap_or_else(|_| "1".into())
        .parse()?;
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        println!("SKIP boot: no qemu-system-x86_64 (the nested harness needs it)");
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let Some(fx) = fixtures(work.path())? else {
        return Ok(());
    };
    println!(
        "boot: nested harness (QEMU TCG -cpu max, outer KVM), inner guest {cpus} vCPU(s), \
         256 MiB, tarn.test=boot; {rounds} boots per VMM, alternating"
    );
    let mut boots: [Vec<Boot>; 2] = Default::default();
    let mut failed = 0;
    for round in 0..rounds {
        for k in 0..VMMS.len() {
            let v = (k + round) % VMMS.len();
            match boot_once(&fx, work.path(), VMMS[v], cpus) {
                Ok(b) => {
                    eprintln!(
                        "  [{}] round {}: init after {:.2} s, {} exits",
                        VMMS[v],
                        round + 1,
                        b.init_s,
                        b.exits[0]
                    );
                    boots[v].push(b);
                }
                // One bad boot (the nested harness hangs now and then) costs its sample, not
                // the run; said here and counted below.
                Err(e) => {
                    eprintln!("  [{}] round {}: FAILED: {e}", VMMS[v], round + 1);
                    failed += 1;
                }
            }
        }
    }
    if boots.iter().any(Vec::is_empty) {
        return Err("no successful boot of one of the VMMs: nothing to compare".into());
    }
    let med =
        |v: usize, f: &dyn Fn(&Boot) -> f64| median(&boots[v].iter().map(f).collect::<Vec<_>>());
    println!();
    println!(
        "{:<6} {:>14} {:>10} {:>10} {:>10} {:>10}",
        "vmm", "launch->init", "exits", "io", "mmio", "halt"
    );
    for (v, name) in VMMS.iter().enumerate() {
        println!(
            "{:<6} {:>12.2} s {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
            name,
            med(v, &|b| b.init_s),
            med(v, &|b| b.exits[0]),
            med(v, &|b| b.exits[1]),
            med(v, &|b| b.exits[2]),
            med(v, &|b| b.exits[3]),
        );
    }
    let time = med(0, &|b| b.init_s) / med(1, &|b| b.init_s);
    let exits = med(0, &|b| b.exits[0]) / med(1, &|b| b.exits[0]);
    println!(
        "tarn/qemu: launch->init {time:.2}x (target <= 0.9x: {}), exits {exits:.2}x (target < 1: {})",
        if time <= 0.9 { "met" } else { "MISSED" },
        if exits < 1.0 { "met" } else { "MISSED" },
    );
    println!(
        "(medians of {} and {} boots, {failed} failed; times are the outer VM's uptime clock, \
         itself emulated by TCG; exits are KVM's counters for the inner VM as last sampled by \
         the outer init, every 0.2 s of its time until the VMM ended: the whole run, shutdown \
         included, give or take one sample)",
        boots[0].len(),
        boots[1].len()
    );
    Ok(())
}

/// The fixtures (`TARN_VM_FIXTURES`, or built with `--with-qemu`); `None` means skip.
fn fixtures(work: &Path) -> Res<Option<PathBuf>> {
    if let Ok(d) = std::env::var("TARN_VM_FIXTURES") {
        return Ok(Some(PathBuf::from(d)));
    }
    let out = work.join("fixtures");
    let status = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/guest.sh"))
        .arg("--tarn")
        .arg(env!("CARGO_BIN_EXE_tarn"))
        .arg("--with-qemu")
        .arg("--out")
        .arg(&out)
        .status()?;
    match status.code() {
        Some(0) => Ok(Some(out)),
        Some(3) => {
            println!("SKIP boot: fixtures/guest.sh cannot build the fixtures here (see above)");
            Ok(None)
        }
        _ => Err(format!("fixtures/guest.sh failed: {status}").into()),
    }
}

/// One nested boot of the inner guest by `vmm`.
fn boot_once(fx: &Path, work: &Path, vmm: &str, cpus: u32) -> Res<Boot> {
    let disk = work.join("disk.img");
    fs::File::create(&disk)?.set_len(64 << 20)?;
    let console_path = work.join(format!("console-{vmm}.log"));
    let console = fs::File::create(&console_path)?;
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "2048M",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
        ])
        .arg("-no-reboot")
        .arg("-kernel")
        .arg(fx.join("vmlinuz"))
        .arg("-initrd")
        .arg(fx.join("outer.cpio"))
        .arg("-append")
        .arg(format!(
            "console=ttyS0 quiet tarn.vmm={vmm} tarn.test=boot tarn.cpus={cpus}"
        ))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=none,id=d0,cache=writeback",
            disk.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=d0"])
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        .process_group(0)
        .spawn()?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if start.elapsed() > RUN_LIMIT {
            // SAFETY: kill(2) of the process group we made for the child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = fs::read_to_string(&console_path)?.replace('\r', "");
    let uptime = |marker: &str| -> Option<f64> {
        let l = text.lines().find(|l| l.starts_with(marker))?;
        l.split_whitespace().last()?.parse().ok()
    };
    let (Some(launch), Some(init)) = (uptime("TARN-LAUNCH"), uptime("TARN-INIT-SEEN")) else {
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        return Err(format!(
            "{vmm}: no TARN-LAUNCH/TARN-INIT-SEEN on the console (outer VM {status:?}); its end:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
        .into());
    };
    if !text.contains("TARN-TEST-OK") || !text.contains("TARN-VMM-RC 0") {
        return Err(format!(
            "{vmm}: the inner guest did not pass its test (no TARN-TEST-OK and TARN-VMM-RC 0)"
        )
        .into());
    }
    let stats = text
        .lines()
        .find(|l| l.starts_with("TARN-KVM-STATS"))
        .unwrap_or_default();
    let stat = |k: &str| -> f64 {
        stats
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    Ok(Boot {
        init_s: init - launch,
        exits: [
            stat("exits"),
            stat("io_exits"),
            stat("mmio_exits"),
            stat("halt_exits"),
        ],
    })
}
