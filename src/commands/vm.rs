//! `tarn vm run`: boot a Linux guest whose disks are pool volumes, raw files or NFS-served
//! images (`nfs://HOST:PORT/POOL/VOL`).
//!
//! The CLI opens pools and files and hands the VMM ready backends; the VMM never opens pools.

use super::{pool_of, pool_of_any};
use crate::cli::VmRunArgs;
use crate::error::{CliError, Result};
use crate::registry::Registry;
use crate::signals::StopSignals;
use ::pool::Pool;
use signal_hook::consts::SIGINT;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use vmm::{Console, DiskBackend, DiskConfig, ExitStatus, VmConfig};
use zvol::{BlockBackend, PoolVolume, RawFile, RawFileOptions};

/// Process exit status when the guest rebooted (0 means it powered off).
pub const EXIT_REBOOT: i32 = 10;

fn vmm_err(e: vmm::Error) -> CliError {
    match e {
        vmm::Error::Backend(e) => CliError::Zvol(e),
        vmm::Error::InvalidConfig(m) => CliError::Usage(m),
        e => CliError::Failed(e.to_string()),
    }
}

/// Opens each disk: files and `nfs://` URLs directly, volumes through their (opened once) pools.
fn open_disks(
    reg: &Registry,
    disks: &[DiskConfig],
    pools: &mut BTreeMap<String, Pool>,
) -> Result<Vec<DiskBackend>> {
    let mut out = Vec::new();
    // (what the disk is, writable): one writer per disk, as two would corrupt each other.
    let mut seen: Vec<(String, bool)> = Vec::new();
    for d in disks {
        let what = if d.is_path() {
            std::fs::canonicalize(&d.source)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| d.source.clone())
        } else {
            d.source.clone()
        };
        if seen
            .iter()
            .any(|(w, writable)| *w == what && (*writable || !d.read_only))
        {
            return Err(CliError::Usage(format!(
                "disk {} is given twice; a disk can be attached more than once only read-only (,ro)",
                d.source
            )));
        }
        seen.push((what, !d.read_only));
        let backend: Arc<dyn BlockBackend> = if d.source.starts_with("nfs://") {
            // An image another host serves (`tarn nfs serve`): nfs://HOST:PORT/POOL/VOL.
            Arc::new(nfs::NfsDisk::connect(&d.source, d.read_only)?)
        } else if d.is_path() {
            // A pool's own file given as a raw disk: the guest would write over the pool.
            super::refuse_pool_file(std::path::Path::new(&d.source), "give a guest")?;
            let opts = RawFileOptions {
                read_only: d.read_only,
                direct: false,
            };
            Arc::new(RawFile::open(&d.source, opts)?)
        } else {
            let name = pool_of(&d.source)?.to_string();
            if !pools.contains_key(&name) {
                let (pool, _) = reg.open(&name)?;
                pools.insert(name.clone(), pool);
            }
            let pool = pools
                .get(&name)
                .ok_or_else(|| CliError::Failed(format!("pool {name} vanished")))?;
            Arc::new(PoolVolume::open(pool, &d.source, d.read_only)?)
        };
        out.push(DiskBackend {
            backend,
            read_only: d.read_only,
        });
    }
    Ok(out)
}

/// Clones `snap` to `POOL/NAME` (a generated name when none is given) and returns the clone's
/// full name: O(1), whatever the image's size.
fn provision(
    reg: &Registry,
    snap: &str,
    name: Option<&str>,
    pools: &mut BTreeMap<String, Pool>,
) -> Result<String> {
    let pool_name = pool_of_any(snap)?.to_string();
    if !pools.contains_key(&pool_name) {
        let (pool, _) = reg.open(&pool_name)?;
        pools.insert(pool_name.clone(), pool);
    }
    let pool = pools
        .get(&pool_name)
        .ok_or_else(|| CliError::Failed(format!("pool {pool_name} vanished")))?;
    let full = match name {
        // NAME is below the pool already: `POOL/NAME` would make `POOL/POOL/NAME`.
        Some(n) if n.starts_with(&format!("{pool_name}/")) => {
            return Err(CliError::Usage(format!(
                "--name {n}: the clone goes into {snap}'s pool already; give the name below \
                 it ({})",
                &n[pool_name.len() + 1..]
            )))
        }
        Some(n) => format!("{pool_name}/{n}"),
        None => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!(
                "{pool_name}/vm-{:08x}",
                (t as u64 ^ u64::from(std::process::id()).rotate_left(32)) as u32
            )
        }
    };
    pool.clone_snapshot(snap, &full, &BTreeMap::new())?;
    say!("tarn: cloned {snap} to {full}");
    Ok(full)
}

/// Ctrl-]: on a terminal, the key that stops the guest (Ctrl-C goes to the guest).
const ESCAPE: u8 = 0x1d;

/// A guest whose console is stdout reads stdin: a terminal in the foreground in raw mode
/// (until the guard is dropped), with [`ESCAPE`] to stop the guest; anything else as it comes.
fn attach_stdin(
    vmm: &mut vmm::Vmm,
    config: &VmConfig,
) -> Result<Option<crate::terminal::RawGuard>> {
    use std::io::IsTerminal;
    use std::os::fd::AsFd;
    if config.console.is_some() {
        return Ok(None);
    }
    let source = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| CliError::io("duplicating stdin for the guest's console", e))?;
    let tty = std::io::stdin().is_terminal();
    // A terminal read from the background would stop tarn (SIGTTIN): no input then.
    if tty && !crate::terminal::raw_stdin() {
        return Ok(None);
    }
    if tty {
        say!("tarn: the console is this terminal's; Ctrl-] stops the guest");
    }
    vmm.attach_console_input(vmm::ConsoleInput {
        source: std::fs::File::from(source),
        escape: tty.then_some(ESCAPE),
    });
    Ok(tty.then_some(crate::terminal::RawGuard))
}

/// Refuses a console file that would overwrite what the guest runs from: the kernel, the
/// initrd, a disk file (the console is truncated when the VM is built, before anything
/// else is checked), a pool file or a block device.
fn check_console(console: &std::path::Path, config: &VmConfig) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(meta) = std::fs::metadata(console) else {
        return Ok(()); // created new
    };
    if meta.file_type().is_block_device() {
        return Err(CliError::Usage(format!(
            "--console {}: a block device; give a file (the console overwrites it)",
            console.display()
        )));
    }
    super::refuse_pool_file(console, "write a guest's console over")?;
    let files = std::iter::once(("the kernel", config.kernel.clone()))
        .chain(config.initrd.clone().map(|p| ("the initrd", p)))
        .chain(
            config
                .disks
                .iter()
                .filter(|d| d.source.starts_with('/') || d.source.starts_with("./"))
                .map(|d| ("a disk", d.source.clone().into())),
        );
    for (what, path) in files {
        if let Ok(m) = std::fs::metadata(&path) {
            if (m.dev(), m.ino()) == (meta.dev(), meta.ino()) {
                return Err(CliError::Usage(format!(
                    "--console {} is {what} ({}); give another file",
                    console.display(),
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

/// Destroys `full`, the clone made for this run, in its (open) pool.
fn destroy_clone(pools: &BTreeMap<String, Pool>, full: &str) -> Result<()> {
    let pool = pools
        .get(pool_of(full)?)
        .ok_or_else(|| CliError::Failed(format!("cannot destroy {full}: its pool is not open")))?;
    pool.destroy(full).map_err(|e| {
        CliError::Failed(format!(
            "could not destroy {full} ({e}); destroy it with `tarn destroy {full}`"
        ))
    })
}

/// Boots the guest and waits for it to power off (exit 0) or reboot (exit [`EXIT_REBOOT`]).
pub fn run(reg: &Registry, a: &VmRunArgs) -> Result<()> {
    let disks = a
        .disks
        .iter()
        .map(|s| DiskConfig::parse(s).map_err(vmm_err))
        .collect::<Result<Vec<_>>>()?;
    let config = VmConfig {
        kernel: a.kernel.clone(),
        initrd: a.initrd.clone(),
        cmdline: a.cmdline.clone(),
        cpus: a.cpus,
        mem_size: a.mem,
        disks,
        console: a.console.clone(),
    };
    // Checked before a clone is made for it, with the clone's disk counted.
    let mut planned = config.clone();
    if let Some(snap) = &a.clone_from {
        let disk = DiskConfig::parse(&format!("{}/clone", pool_of_any(snap)?)).map_err(vmm_err)?;
        planned.disks.insert(0, disk);
    }
    planned.validate().map_err(vmm_err)?;
    planned.check_images().map_err(vmm_err)?;
    if let Some(console) = &config.console {
        check_console(console, &config)?;
    }
    let signals = StopSignals::new()?;
    let mut pools = BTreeMap::new();
    let mut config = config;
    let clone = match &a.clone_from {
        Some(snap) => {
            let full = provision(reg, snap, a.name.as_deref(), &mut pools)?;
            config
                .disks
                .insert(0, DiskConfig::parse(&full).map_err(vmm_err)?);
            Some(full)
        }
        None => None,
    };
    let console = match &config.console {
        Some(p) => Console::File(p.clone()),
        None => Console::Stdout,
    };
    let built = open_disks(reg, &config.disks, &mut pools)
        .and_then(|backends| vmm::build_linux(&config, backends, console).map_err(vmm_err))
        .and_then(|mut vmm| {
            let raw = attach_stdin(&mut vmm, &config)?;
            Ok((vmm, raw))
        });
    let (vmm, _raw) = match built {
        Ok(built) => built,
        Err(e) => {
            // The guest never ran: a clone made for it is of no use to anyone. The error
            // that stopped the guest is the one reported.
            if let Some(full) = &clone {
                match destroy_clone(&pools, full) {
                    Ok(()) => say!("tarn: destroyed {full} (the guest never ran)"),
                    Err(d) => say!("tarn: {d}"),
                }
            }
            return Err(e);
        }
    };
    let stop = vmm.stop_handle();
    let signal = signals.on_signal("stopping the guest", move |_| stop.stop());
    let report = vmm.run().map_err(vmm_err);
    crate::terminal::restore();
    if let (true, Some(full)) = (a.rm, &clone) {
        match destroy_clone(&pools, full) {
            Ok(()) => say!("tarn: destroyed {full}"),
            // A failed run's own error comes first.
            Err(d) if report.is_err() => say!("tarn: {d}"),
            Err(d) => return Err(d),
        }
    }
    let report = report?;
    // Close pools (durably) before reporting.
    drop(pools);
    let what = match report.status {
        ExitStatus::PowerOff => "powered off",
        ExitStatus::Reboot => "rebooted",
        ExitStatus::Stopped => "stopped",
    };
    let init = report
        .init_time
        .map(|t| format!(", init after {:.3} s", t.as_secs_f64()))
        .unwrap_or_default();
    say!(
        "tarn: guest {what}{init}; {} exits ({} port I/O, {} MMIO)",
        report.exits.0,
        report.exits.1,
        report.exits.2
    );
    match report.status {
        ExitStatus::PowerOff => Ok(()),
        ExitStatus::Reboot => std::process::exit(EXIT_REBOOT),
        // No signal: the console's escape key, which stands for Ctrl-C.
        ExitStatus::Stopped => match signal.load(Ordering::SeqCst) {
            0 => std::process::exit(128 + SIGINT),
            sig => std::process::exit(128 + sig),
        },
    }
}
