//! `tarn pool ...`: create, import, export, list, status, scrub, trim, destroy.

use super::{execute, execute_spinning};
use crate::cli::{JsonArgs, PoolCreateArgs, PoolImportArgs, PoolStatusArgs};
use crate::error::{CliError, Result};
use crate::output::{self, Table};
use crate::registry::{now_secs, open_entry, short_config, PoolEntry, Registry, ScrubSummary};
use ::pool::phys::{RING_OFFSET, RING_SLOTS, SECTOR};
use ::pool::request::{Request, Response};
use ::pool::{FileDevice, Pool, PoolInfo, ScrubError};
use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes at the start of a pool that `destroy` zeroes: both labels and the uberblock ring.
const WIPE_LEN: u64 = RING_OFFSET + RING_SLOTS * SECTOR;

fn absolute(path: &Path) -> Result<PathBuf> {
    fs::canonicalize(path).map_err(|e| CliError::io(format!("resolving {}", path.display()), e))
}

/// Takes the same lock a pool holder takes (flock on the device), for devices the pool
/// crate cannot open itself.
fn lock_file(file: &fs::File, what: &Path) -> Result<()> {
    // SAFETY: flock on a descriptor we own for the duration of the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(CliError::Failed(format!(
                "{} is in use by another process",
                what.display()
            )));
        }
        return Err(CliError::io(format!("locking {}", what.display()), err));
    }
    Ok(())
}

/// `tarn pool create NAME PATH --size SIZE`
pub fn create(reg: &Registry, a: &PoolCreateArgs) -> Result<()> {
    ::pool::names::check_pool_name(&a.name)?;
    if let Some(e) = reg.get(&a.name)? {
        return Err(CliError::Failed(format!(
            "a pool named {} is already imported (from {})",
            a.name,
            e.path.display()
        )));
    }
    let is_block = fs::metadata(&a.path)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    let pool = if is_block {
        if a.size.is_some() {
            return Err(CliError::Usage(format!(
                "{} is a block device: its own size is used; drop --size",
                a.path.display()
            )));
        }
        // The registry must take the entry before the device is formatted: refused after, the
        // device was left overwritten, by an unregistered pool.
        let path = absolute(&a.path)?;
        reg.check_addable(&PoolEntry {
            name: a.name.clone(),
            path,
            guid: 0,
            imported: 0,
            last_scrub: None,
        })?;
        create_on_block_device(a)?
    } else {
        let size = a.size.ok_or_else(|| {
            CliError::Usage("--size is required to create a pool file (e.g. --size 10G)".into())
        })?;
        if fs::symlink_metadata(&a.path).is_ok() {
            return Err(CliError::Failed(format!(
                "{} already exists; choose a new path for the pool file",
                a.path.display()
            )));
        }
        Pool::create_file(&a.path, &a.name, size, short_config())?
    };
    let created_file = !is_block;
    let cleanup = |path: &Path| {
        if created_file {
            let _ = fs::remove_file(path);
        }
    };
    let guid = pool.guid();
    if let Err(e) = pool.close() {
        cleanup(&a.path);
        return Err(e.into());
    }
    let path = match absolute(&a.path) {
        Ok(p) => p,
        Err(e) => {
            cleanup(&a.path);
            return Err(e);
        }
    };
    let entry = PoolEntry {
        name: a.name.clone(),
        path,
        guid,
        imported: now_secs(),
        last_scrub: None,
    };
    if let Err(e) = reg.add(&entry) {
        cleanup(&a.path);
        return Err(e);
    }
    Ok(())
}

fn create_on_block_device(a: &PoolCreateArgs) -> Result<Pool> {
    match Pool::open_path(&a.path, short_config()) {
        Ok(existing) if !a.force => {
            return Err(CliError::Failed(format!(
                "{} holds pool {}; use --force to overwrite it",
                a.path.display(),
                existing.name()
            )))
        }
        Ok(_) => {}
        Err(e @ ::pool::Error::InUse { .. }) => return Err(e.into()),
        Err(::pool::Error::NotAPool { .. }) => {
            if let Some(what) = foreign_signature(&a.path).filter(|_| !a.force) {
                return Err(CliError::Failed(format!(
                    "{} holds {what}; use --force to overwrite it",
                    a.path.display()
                )));
            }
        }
        Err(e) if !a.force => {
            return Err(CliError::Failed(format!(
                "{} looks like a damaged tarn pool ({e}); use --force to overwrite it",
                a.path.display()
            )))
        }
        Err(_) => {}
    }
    let dev = FileDevice::open(&a.path)
        .map_err(|e| CliError::io(format!("opening {}", a.path.display()), e))?;
    lock_file(dev.file(), &a.path)?;
    Ok(Pool::create_on(Arc::new(dev), &a.name, short_config())?)
}

/// What else a device holds that `pool create` would destroy, by the magic numbers of the
/// usual suspects (as `zpool create` asks for `-f` over a file system or a partition table).
fn foreign_signature(path: &Path) -> Option<&'static str> {
    let f = fs::File::open(path).ok()?;
    let mut head = vec![0u8; 65_608];
    let got = f.read_at(&mut head, 0).ok()?;
    let at = |off: usize, magic: &[u8]| {
        got >= off + magic.len() && head[off..off + magic.len()] == *magic
    };
    [
        (1080, &b"\x53\xef"[..], "an ext2/3/4 file system"),
        (0, b"XFSB", "an XFS file system"),
        (65_600, b"_BHRfS_M", "a btrfs file system"),
        (0, b"LUKS\xba\xbe", "a LUKS volume"),
        (536, b"LVM2 001", "an LVM physical volume"),
        (4086, b"SWAPSPACE2", "swap space"),
        (512, b"EFI PART", "a GPT partition table"),
        (510, b"\x55\xaa", "a partition table or boot sector"),
    ]
    .into_iter()
    .find(|(off, magic, _)| at(*off, magic))
    .map(|(_, _, what)| what)
}

/// `tarn pool import PATH`
pub fn import(reg: &Registry, a: &PoolImportArgs) -> Result<()> {
    let path = absolute(&a.path)?;
    let pool = Pool::open_path(&path, short_config())?;
    let (name, guid) = (pool.name().to_string(), pool.guid());
    // Importing only reads: dropping without close() commits nothing.
    drop(pool);
    if let Some(e) = reg.get(&name)? {
        return Err(CliError::Failed(if e.guid == guid && e.path == path {
            format!("pool {name} is already imported from {}", path.display())
        } else {
            format!(
                "a pool named {name} is already imported from {}; export it first",
                e.path.display()
            )
        }));
    }
    reg.add(&PoolEntry {
        name,
        path,
        guid,
        imported: now_secs(),
        last_scrub: None,
    })
}

/// `tarn pool export NAME`
pub fn export(reg: &Registry, name: &str) -> Result<()> {
    let entry = match reg.require(name) {
        Ok(entry) => entry,
        // A damaged entry names no pool to close: forgetting it is all there is to do.
        Err(e @ CliError::DamagedEntry(_)) => {
            say!("tarn: warning: {}; forgetting it", e.one_line());
            return reg.remove(name);
        }
        Err(e) => return Err(e),
    };
    match open_entry(&entry) {
        // Every command commits its own changes; nothing is left to write.
        Ok(pool) => drop(pool),
        Err(e @ CliError::Pool(::pool::Error::InUse { .. })) => return Err(e),
        Err(e) => say!(
            "tarn: warning: {}; forgetting pool {name} anyway",
            e.one_line()
        ),
    }
    reg.remove(name)
}

/// A pool's state as `list` and `status` show it.
#[derive(serde::Serialize)]
struct PoolRow {
    name: String,
    path: PathBuf,
    #[serde(serialize_with = "::pool::guid_as_string")]
    guid: u64,
    /// ONLINE, SUSPENDED (stopped writing after an I/O error), BUSY (held by another process),
    /// UNAVAIL (cannot be opened) or FAULTED (damaged).
    health: &'static str,
    size: Option<u64>,
    allocated: Option<u64>,
    free: Option<u64>,
    /// Allocated share of the usable space, percent.
    capacity: Option<u64>,
    txg: Option<u64>,
    version: Option<u32>,
    datasets: Option<usize>,
    error: Option<String>,
}

fn health_of(e: &CliError) -> &'static str {
    match e {
        CliError::Pool(pe) => match pe.kind() {
            ::pool::ErrorKind::Busy => "BUSY",
            ::pool::ErrorKind::Corrupt | ::pool::ErrorKind::Unsupported => "FAULTED",
            _ => "UNAVAIL",
        },
        _ => "UNAVAIL",
    }
}

fn capacity(info: &PoolInfo) -> u64 {
    (info.allocated * 100).checked_div(info.usable).unwrap_or(0)
}

fn probe(entry: &PoolEntry) -> PoolRow {
    let mut row = PoolRow {
        name: entry.name.clone(),
        path: entry.path.clone(),
        guid: entry.guid,
        health: "ONLINE",
        size: None,
        allocated: None,
        free: None,
        capacity: None,
        txg: None,
        version: None,
        datasets: None,
        error: None,
    };
    match open_entry(entry) {
        Ok(pool) => {
            let info = pool.info();
            row.health = if info.poisoned { "SUSPENDED" } else { "ONLINE" };
            row.size = Some(info.size);
            row.allocated = Some(info.allocated);
            row.free = Some(info.free);
            row.capacity = Some(capacity(&info));
            row.txg = Some(info.txg);
            row.version = Some(info.version);
            row.datasets = Some(info.datasets);
        }
        Err(e) => {
            row.health = health_of(&e);
            row.error = Some(e.one_line());
        }
    }
    row
}

/// `tarn pool list`
pub fn list(reg: &Registry, a: &JsonArgs) -> Result<()> {
    let rows: Vec<PoolRow> = reg.list()?.iter().map(probe).collect();
    if a.json {
        return output::print_json(&rows);
    }
    if rows.is_empty() && !a.scripted {
        return output::print_str("no pools available\n");
    }
    let mut t = Table::new(
        ["NAME", "SIZE", "ALLOC", "FREE", "CAP", "HEALTH", "PATH"]
            .map(String::from)
            .to_vec(),
        vec![false, true, true, true, true, false, false],
    );
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |b| output::size(b, a.parsable));
    for r in &rows {
        t.row(vec![
            r.name.clone(),
            opt(r.size),
            opt(r.allocated),
            opt(r.free),
            r.capacity.map_or("-".into(), |c| {
                if a.parsable {
                    c.to_string()
                } else {
                    format!("{c}%")
                }
            }),
            r.health.to_string(),
            r.path.display().to_string(),
        ]);
    }
    t.print(a.scripted)
}

/// What `tarn pool status --json` prints.
#[derive(serde::Serialize)]
struct StatusOut {
    #[serde(flatten)]
    info: PoolInfo,
    health: &'static str,
    capacity: u64,
    imported: u64,
    last_scrub: Option<ScrubSummary>,
    /// Known problems: an I/O error that stopped writes, damage the last scrub found.
    errors: Vec<String>,
}

/// `tarn pool status NAME`
pub fn status(reg: &Registry, a: &PoolStatusArgs) -> Result<()> {
    let (pool, entry) = reg.open(&a.name)?;
    let info = match execute(&pool, Request::Status)? {
        Response::Pool(i) => i,
        _ => pool.info(),
    };
    drop(pool);
    let mut errors = Vec::new();
    if info.poisoned {
        errors.push("the pool stopped accepting writes after an I/O error".to_string());
    }
    if let Some(s) = entry.last_scrub.as_ref().filter(|s| s.errors > 0) {
        errors.push(format!(
            "the last scrub ({}) found {} damaged blocks or inconsistencies; run `tarn pool scrub {}` for the list",
            output::time(s.finished, false),
            s.errors,
            a.name
        ));
    }
    let out = StatusOut {
        health: if info.poisoned { "SUSPENDED" } else { "ONLINE" },
        capacity: capacity(&info),
        imported: entry.imported,
        last_scrub: entry.last_scrub.clone(),
        errors,
        info,
    };
    if a.json {
        return output::print_json(&out);
    }
    let i = &out.info;
    let scan = match &out.last_scrub {
        Some(s) => format!(
            "scrub finished {}: {} blocks, {} verified, {} errors",
            output::time(s.finished, false),
            s.blocks,
            zvol::format_size(s.bytes),
            s.errors
        ),
        None => "none requested".to_string(),
    };
    let mut text = String::new();
    let mut line = |k: &str, v: String| text.push_str(&format!("{k:>9}: {v}\n"));
    line("pool", i.name.clone());
    line("id", i.guid.to_string());
    line("path", i.path.clone());
    line("state", out.health.to_string());
    line(
        "size",
        format!(
            "{} ({} usable)",
            zvol::format_size(i.size),
            zvol::format_size(i.usable)
        ),
    );
    line(
        "allocated",
        format!(
            "{} ({}%; {} of frees pending)",
            zvol::format_size(i.allocated),
            out.capacity,
            zvol::format_size(i.deferred)
        ),
    );
    line("free", zvol::format_size(i.free));
    if i.reserved > 0 {
        line(
            "reserved",
            format!(
                "{} of it, for volumes' refreservation",
                zvol::format_size(i.reserved)
            ),
        );
    }
    line("datasets", i.datasets.to_string());
    line("txg", i.txg.to_string());
    line("format", format!("version {}", i.version));
    line("scan", scan);
    if out.errors.is_empty() {
        line("errors", "No known data errors".to_string());
    } else {
        for e in &out.errors {
            line("errors", e.clone());
        }
    }
    output::print_str(&text)
}

/// What `tarn pool scrub --json` prints.
#[derive(serde::Serialize)]
struct ScrubOut<'a> {
    pool: &'a str,
    clean: bool,
    blocks: u64,
    bytes: u64,
    errors: &'a [ScrubError],
}

/// `tarn pool scrub NAME`
pub fn scrub(reg: &Registry, a: &PoolStatusArgs) -> Result<()> {
    let (pool, mut entry) = reg.open(&a.name)?;
    let what = format!("scrubbing {}", a.name);
    let report = match execute_spinning(&pool, Request::Scrub, &what)? {
        Response::Scrub(r) => r,
        other => return Err(super::unexpected(&other)),
    };
    entry.last_scrub = Some(ScrubSummary {
        finished: now_secs(),
        blocks: report.blocks,
        bytes: report.bytes,
        errors: report.errors.len() as u64,
    });
    // Recorded while the pool is still held, and only into the entry it was opened from: one
    // exported and imported again meanwhile (another pool of the name) was overwritten.
    let same = reg
        .get(&a.name)
        .ok()
        .flatten()
        .is_some_and(|now| now.guid == entry.guid && now.path == entry.path);
    if same {
        if let Err(e) = reg.update(&entry) {
            tracing::warn!(error = %e, "could not record the scrub result in the registry");
        }
    }
    drop(pool);
    if a.json {
        output::print_json(&ScrubOut {
            pool: &a.name,
            clean: report.is_clean(),
            blocks: report.blocks,
            bytes: report.bytes,
            errors: &report.errors,
        })?;
    } else {
        let mut text = format!(
            "scrub of {}: {} blocks, {} verified, {} errors\n",
            a.name,
            report.blocks,
            zvol::format_size(report.bytes),
            report.errors.len()
        );
        if !report.errors.is_empty() {
            let mut t = Table::new(
                ["DATASET", "OFFSET", "ERROR"].map(String::from).to_vec(),
                vec![false, true, false],
            );
            for e in &report.errors {
                t.row(vec![
                    e.dataset.clone(),
                    e.offset.map_or("-".into(), |o| o.to_string()),
                    e.message.clone(),
                ]);
            }
            text.push_str(&t.render(false));
        }
        output::print_str(&text)?;
    }
    if report.is_clean() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "scrub of pool {} found {} damaged blocks or inconsistencies",
            a.name,
            report.errors.len()
        )))
    }
}

/// What `tarn pool trim --json` prints.
#[derive(serde::Serialize)]
struct TrimOut<'a> {
    pool: &'a str,
    runs: u64,
    bytes: u64,
}

/// `tarn pool trim NAME`
pub fn trim(reg: &Registry, a: &PoolStatusArgs) -> Result<()> {
    let (pool, _) = reg.open(&a.name)?;
    let what = format!("trimming {}", a.name);
    let report = match execute_spinning(&pool, Request::Trim, &what)? {
        Response::Trim(r) => r,
        other => return Err(super::unexpected(&other)),
    };
    pool.close()?;
    if a.json {
        output::print_json(&TrimOut {
            pool: &a.name,
            runs: report.runs,
            bytes: report.bytes,
        })
    } else {
        output::print_str(&format!(
            "trimmed {} in {} free runs of {}\n",
            zvol::format_size(report.bytes),
            report.runs,
            a.name
        ))
    }
}

/// Zeroes both labels and the uberblock ring so the device no longer opens as a pool.
fn wipe(f: &fs::File, path: &Path) -> Result<()> {
    let zeros = vec![0u8; WIPE_LEN as usize];
    f.write_all_at(&zeros, 0)
        .and_then(|()| f.sync_all())
        .map_err(|e| CliError::io(format!("wiping the labels of {}", path.display()), e))
}

/// Checks, before a pool that does not open is wiped, that a label of the file still names
/// the pool `entry` remembers (its GUID): another pool copied or created at that path, damaged
/// too, was wiped and removed in its place. Refuses where no label reads at all.
fn same_pool_or_refuse(
    f: &fs::File,
    entry: &crate::registry::PoolEntry,
    why: &::pool::Error,
) -> Result<()> {
    let mut head = vec![0u8; 8192];
    let got = f.read_at(&mut head, 0).unwrap_or(0);
    let path = entry.path.display().to_string();
    let labels: Vec<_> = [0usize, 4096]
        .iter()
        .filter(|&&at| got >= at + 4096)
        .filter_map(|&at| ::pool::phys::LabelPhys::decode(&head[at..at + 4096], &path).ok())
        .flatten()
        .collect();
    if labels.iter().any(|l| l.guid == entry.guid) {
        return Ok(());
    }
    match labels.first() {
        Some(l) => Err(CliError::Failed(format!(
            "{path} now holds pool {} (GUID {:x}), not pool {} (GUID {:x}) as imported; nothing \
             destroyed (`tarn pool export {}` forgets the old one)",
            l.name, l.guid, entry.name, entry.guid, entry.name
        ))),
        None => Err(CliError::Failed(format!(
            "{why}; its labels do not read either, so it cannot be told to be pool {}: nothing \
             destroyed (remove {path} yourself if it is, then `tarn pool export {}`)",
            entry.name, entry.name
        ))),
    }
}

/// `tarn pool destroy NAME`
pub fn destroy(reg: &Registry, name: &str) -> Result<()> {
    let entry = reg.require(name)?;
    let path = &entry.path;
    // Hold the pool lock while wiping, so no other process has it open.
    let (_held, f): (Box<dyn std::any::Any>, fs::File) = match open_entry(&entry) {
        Ok(pool) => {
            // Wiped and removed through this descriptor, once its labels name the pool: not
            // by name again, which another file may have taken meanwhile.
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| CliError::io(format!("opening {} to wipe it", path.display()), e))?;
            let opened =
                ::pool::Error::Corrupt(format!("{} changed while it was open", path.display()));
            same_pool_or_refuse(&f, &entry, &opened)?;
            (Box::new(pool), f)
        }
        Err(CliError::Pool(e @ ::pool::Error::NotAPool { .. })) => {
            return Err(CliError::Failed(format!(
                "{e}; nothing to destroy (`tarn pool export {name}` forgets it)"
            )))
        }
        Err(CliError::Pool(e @ ::pool::Error::Io { .. })) => {
            return Err(CliError::Failed(format!(
                "{e}; nothing was destroyed (`tarn pool export {name}` forgets the pool)"
            )))
        }
        Err(CliError::Pool(
            e @ (::pool::Error::Truncated { .. }
            | ::pool::Error::Corrupt(_)
            | ::pool::Error::UnsupportedVersion { .. }),
        )) => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| CliError::io(format!("opening {}", path.display()), e))?;
            lock_file(&f, path)?;
            same_pool_or_refuse(&f, &entry, &e)?;
            tracing::warn!(pool = name, error = %e, "destroying a pool that cannot be opened");
            let held = f
                .try_clone()
                .map_err(|e| CliError::io(format!("opening {}", path.display()), e))?;
            (Box::new(held), f)
        }
        Err(e) => return Err(e),
    };
    let meta = f
        .metadata()
        .map_err(|e| CliError::io(format!("reading {}", path.display()), e))?;
    wipe(&f, path)?;
    // Removed only while the name still leads to the file wiped.
    let same = |m: &fs::Metadata| {
        use std::os::unix::fs::MetadataExt;
        m.dev() == meta.dev() && m.ino() == meta.ino()
    };
    if meta.is_file() && fs::metadata(path).is_ok_and(|m| same(&m)) {
        fs::remove_file(path)
            .map_err(|e| CliError::io(format!("removing pool file {}", path.display()), e))?;
    }
    // Dropping the pool now writes nothing (no background sync, nothing dirty).
    drop(_held);
    reg.remove(name)
}
