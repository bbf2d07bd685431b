//! Snapshot verbs, top-level as in zfs(8): snapshot, clone, rollback, promote, hold, release,
//! diff, send and recv. The rules users see live in the `snapshots` crate; the mechanics in
//! `pool`.

use super::dataset::check_user_prop;
use super::{open_for, parse_assignment, pool_of, pool_of_any as pool_of_snap};
use crate::cli::{
    CloneArgs, DiffArgs, HoldArgs, PromoteArgs, RecvArgs, RenameArgs, RollbackArgs, SendArgs,
    SnapshotArgs,
};
use crate::error::{CliError, Result};
use crate::output::{self, Table};
use crate::registry::Registry;
use ::pool::Recursion;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::os::fd::AsFd;

/// Checks that every name is in one pool and returns it.
fn one_pool<'a>(names: &'a [String], what: &str) -> Result<&'a str> {
    let first = pool_of_snap(&names[0])?;
    for n in names {
        if pool_of_snap(n)? != first {
            return Err(CliError::Usage(format!(
                "{what} must all be in one pool ({} and {n} are not)",
                names[0]
            )));
        }
    }
    Ok(first)
}

/// Checks that `full` names a snapshot.
fn snapshot_name(full: &str) -> Result<()> {
    snapshots::split_snapshot(full)?;
    Ok(())
}

/// `tarn snapshot POOL/VOL@SNAP...`
pub fn snapshot(reg: &Registry, a: &SnapshotArgs) -> Result<()> {
    for n in &a.snapshots {
        snapshot_name(n)?;
    }
    let pool_name = one_pool(&a.snapshots, "snapshots taken together")?;
    let (pool, _) = reg.open(pool_name)?;
    let names: Vec<&str> = a.snapshots.iter().map(String::as_str).collect();
    pool.snapshot(&names)?;
    Ok(pool.close()?)
}

/// `tarn clone POOL/VOL@SNAP POOL/NEW [-o K=V]...`
pub fn clone(reg: &Registry, a: &CloneArgs) -> Result<()> {
    snapshot_name(&a.snapshot)?;
    ::pool::names::split_dataset_name(&a.name)?;
    let mut props = BTreeMap::new();
    for p in &a.props {
        let (k, v) = parse_assignment(p)?;
        check_user_prop(&k)?;
        props.insert(k, v);
    }
    if pool_of_snap(&a.snapshot)? != pool_of(&a.name)? {
        return Err(CliError::Usage(format!(
            "a clone lives in its origin's pool: {} and {} differ (use send/recv to copy across pools)",
            pool_of_snap(&a.snapshot)?,
            pool_of(&a.name)?
        )));
    }
    let (pool, _) = open_for(reg, &a.snapshot)?;
    pool.clone_snapshot(&a.snapshot, &a.name, &props)?;
    Ok(pool.close()?)
}

/// `tarn rename POOL/NAME POOL/NEW`
pub fn rename(reg: &Registry, a: &RenameArgs) -> Result<()> {
    if let Some((vol, _)) = a.from.split_once('@') {
        // A snapshot: to `@NEW` or `POOL/VOL@NEW`, of the same volume.
        snapshot_name(&a.from)?;
        let to = match a.to.strip_prefix('@') {
            Some(snap) => format!("{vol}@{snap}"),
            None => a.to.clone(),
        };
        snapshot_name(&to)?;
        let (pool, _) = open_for(reg, &a.from)?;
        pool.rename_snapshot(&a.from, &to)?;
        return Ok(pool.close()?);
    }
    for name in [&a.from, &a.to] {
        if name.contains('@') {
            return Err(CliError::Usage(format!(
                "{name}: a volume is renamed to a volume name (its snapshots follow it)"
            )));
        }
        ::pool::names::split_dataset_name(name)?;
    }
    if pool_of(&a.from)? != pool_of(&a.to)? {
        return Err(CliError::Usage(format!(
            "a volume is renamed within its pool: {} and {} differ (use send/recv to copy \
             across pools)",
            pool_of(&a.from)?,
            pool_of(&a.to)?
        )));
    }
    let (pool, _) = open_for(reg, &a.from)?;
    pool.rename(&a.from, &a.to)?;
    Ok(pool.close()?)
}

/// `tarn rollback [-r|-R] POOL/VOL@SNAP`
pub fn rollback(reg: &Registry, a: &RollbackArgs) -> Result<()> {
    snapshot_name(&a.snapshot)?;
    let rec = match (a.recursive, a.dependents) {
        (_, true) => Recursion::All,
        (true, false) => Recursion::Snapshots,
        (false, false) => Recursion::None,
    };
    let (pool, _) = open_for(reg, &a.snapshot)?;
    snapshots::rollback(&pool, &a.snapshot, rec)?;
    Ok(pool.close()?)
}

/// `tarn promote POOL/CLONE`
pub fn promote(reg: &Registry, a: &PromoteArgs) -> Result<()> {
    ::pool::names::split_dataset_name(&a.clone)?;
    let (pool, _) = open_for(reg, &a.clone)?;
    pool.promote(&a.clone)?;
    Ok(pool.close()?)
}

/// `tarn hold TAG SNAP...` and `tarn release TAG SNAP...`
pub fn hold(reg: &Registry, a: &HoldArgs, add: bool) -> Result<()> {
    if a.tag.is_empty() || a.tag.len() > 255 || a.tag.chars().any(char::is_control) {
        return Err(CliError::Usage(format!(
            "hold tag '{}' must be 1-255 printable characters",
            a.tag
        )));
    }
    for n in &a.snapshots {
        snapshot_name(n)?;
    }
    let pool_name = one_pool(&a.snapshots, "snapshots")?;
    let (pool, _) = reg.open(pool_name)?;
    // One commit: every snapshot is checked before any changes, all of them or none.
    let names: Vec<&str> = a.snapshots.iter().map(String::as_str).collect();
    if add {
        pool.hold_all(&names, &a.tag)?;
    } else {
        pool.release_all(&names, &a.tag)?;
    }
    Ok(pool.close()?)
}

#[derive(serde::Serialize)]
struct DiffRange {
    offset: u64,
    length: u64,
}

#[derive(serde::Serialize)]
struct DiffOut {
    from: String,
    to: String,
    changed_bytes: u64,
    ranges: Vec<DiffRange>,
}

/// `tarn diff POOL/VOL@A [POOL/VOL@B | @B]`
pub fn diff(reg: &Registry, a: &DiffArgs) -> Result<()> {
    let (vol, _) = snapshots::split_snapshot(&a.from)?;
    let to = match &a.to {
        Some(t) if t.starts_with('@') => Some(format!("{vol}{t}")),
        Some(t) => Some(t.clone()),
        None => None,
    };
    if let Some(t) = &to {
        pool_of_snap(t)?;
    }
    let (pool, _) = open_for(reg, &a.from)?;
    let ranges = pool.diff(&a.from, to.as_deref())?;
    drop(pool);
    let changed: u64 = ranges.iter().map(|r| r.1).sum();
    if a.fmt.json {
        return output::print_json(&DiffOut {
            from: a.from.clone(),
            to: to.unwrap_or_else(|| vol.to_string()),
            changed_bytes: changed,
            ranges: ranges
                .iter()
                .map(|&(offset, length)| DiffRange { offset, length })
                .collect(),
        });
    }
    let mut t = Table::new(
        ["OFFSET", "LENGTH"].map(String::from).to_vec(),
        vec![true, true],
    );
    for (off, len) in &ranges {
        t.row(vec![off.to_string(), output::size(*len, a.fmt.parsable)]);
    }
    t.print(a.fmt.scripted)?;
    if !a.fmt.scripted {
        output::print_str(&format!(
            "{} range{}, {} changed\n",
            ranges.len(),
            if ranges.len() == 1 { "" } else { "s" },
            output::size(changed, a.fmt.parsable)
        ))?;
    }
    Ok(())
}

/// `tarn send [-n] [-i @OLDER | -I @OLDER | -R] POOL/VOL@SNAP [-f FILE]`
pub fn send(reg: &Registry, a: &SendArgs) -> Result<()> {
    snapshot_name(&a.snapshot)?;
    let package = a.replicate || a.intermediates.is_some();
    let from = a
        .incremental
        .as_deref()
        .or(a.intermediates.as_deref())
        .map(|f| snapshots::resolve_from(&a.snapshot, f))
        .transpose()?;
    if a.dry_run {
        let (pool, _) = open_for(reg, &a.snapshot)?;
        let s = snapshots::send_estimate(&pool, &a.snapshot, from.as_deref(), package);
        drop(pool);
        let s = s?;
        return output::print_str(&format!(
            "{} stream of {} would be {} ({} bytes): {} of data, {} zeroed\n",
            match (package, from.is_some()) {
                (true, _) => "a package",
                (false, true) => "an incremental",
                (false, false) => "a full",
            },
            a.snapshot,
            output::size(s.bytes, false),
            s.bytes,
            output::size(s.write_bytes, false),
            output::size(s.free_bytes, false),
        ));
    }
    let send = |pool: &pool::Pool, out: &mut dyn std::io::Write| {
        // Bytes and rate on a terminal's stderr (the stream's size is not known up front).
        let pb = output::progress(None, &format!("sending {}", a.snapshot));
        let mut out = pb.wrap_write(out);
        let sent = if package {
            snapshots::send_package(pool, &a.snapshot, from.as_deref(), &mut out)
        } else {
            snapshots::send(pool, &a.snapshot, from.as_deref(), &mut out)
        };
        pb.finish_and_clear();
        sent
    };
    if a.file.is_none() && std::io::stdout().is_terminal() {
        return Err(CliError::Usage(
            "refusing to write a send stream to a terminal; redirect stdout or use --file".into(),
        ));
    }
    let (pool, _) = open_for(reg, &a.snapshot)?;
    if a.file.is_none() {
        widen_pipe(&std::io::stdout());
    }
    let sent = match &a.file {
        None => send(&pool, &mut std::io::stdout().lock()),
        Some(path) => {
            // Written under a temporary name and renamed over `path` once complete: a failed
            // send leaves whatever was at `path` as it was, and never a pool file overwritten.
            // A device, a FIFO or a descriptor's path is written in place instead.
            super::refuse_pool_file(path, "overwrite")?;
            let path = match super::output_path(path) {
                super::OutputPath::InPlace(p) => {
                    let f = super::open_in_place(&p)?;
                    let sent = send(&pool, &mut &f);
                    drop(pool);
                    sent?;
                    return Ok(());
                }
                super::OutputPath::Replace(p) => p,
            };
            let path = path.as_path();
            let tmp = temp_beside(path);
            let signals = crate::signals::StopSignals::new()?;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| CliError::io(format!("creating {}", tmp.display()), e))?;
            // A send stopped by a signal leaves no partial stream (the pool, only read, needs
            // no closing).
            let partial = tmp.clone();
            signals.on_signal("removing the partial stream", move |sig| {
                let _ = std::fs::remove_file(&partial);
                std::process::exit(128 + sig);
            });
            let r = send(&pool, &mut &f).and_then(|s| {
                f.sync_all()
                    .and_then(|()| std::fs::rename(&tmp, path))
                    .map_err(|e| snapshots::Error::io(format!("writing {}", path.display()), e))
                    .map(|()| s)
            });
            if r.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            r
        }
    };
    // Send only reads: the pool is dropped without committing.
    drop(pool);
    let s = sent?;
    tracing::debug!(bytes = s.bytes, data = s.write_bytes, "sent");
    Ok(())
}

/// Grows the pipe behind `fd`, if it is one, to 1 MiB (the default `pipe-max-size`): a
/// `send | recv` pipeline then moves a stream chunk per wake-up instead of 64 KiB. Best effort.
fn widen_pipe(fd: &impl std::os::fd::AsRawFd) {
    // SAFETY: fcntl on a descriptor we hold; F_SETPIPE_SZ fails harmlessly on non-pipes.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    if rc < 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "not widening the pipe");
    }
}

/// `tarn recv [-F] POOL/NAME[@SNAP] [-f FILE]`. SIGINT, SIGTERM or SIGHUP ends it as a
/// truncated stream does: nothing of the stream being received is kept, and the streams of a
/// package received before it are (a killed receive used to leave its temporary volume, whose
/// clone of the base snapshot kept that snapshot from being destroyed).
pub fn recv(reg: &Registry, a: &RecvArgs) -> Result<()> {
    let (pool, _) = reg.open(pool_of_snap(&a.name)?)?;
    let file = match &a.file {
        None => {
            widen_pipe(&std::io::stdin());
            std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map(std::fs::File::from)
                .map_err(|e| CliError::io("duplicating stdin", e))?
        }
        Some(path) => std::fs::File::open(path)
            .map_err(|e| CliError::io(format!("opening {}", path.display()), e))?,
    };
    // From here (a FIFO's open waits for its writer, and a signal then ends tarn at once:
    // nothing is received yet), a signal ends the receive as a truncated stream does.
    let stop = crate::signals::StopFlag::new("discarding the receive")?;
    let pb = output::progress(None, &format!("receiving into {}", a.name));
    let input = std::io::BufReader::with_capacity(
        1 << 20,
        pb.wrap_read(crate::signals::StoppableRead::new(file, stop.stop.clone())),
    );
    let got = snapshots::recv(&pool, &a.name, input, a.force);
    pb.finish_and_clear();
    let closed = pool.close();
    if got.is_err() {
        stop.exit_if_stopped(&format!(
            "the stream being received into {} was discarded (the streams of a package \
             received before it are kept)",
            a.name
        ));
    }
    let got = got?;
    closed?;
    if a.verbose {
        for s in got {
            output::print_str(&format!(
                "received {} stream of {} into {} ({} of data)\n",
                if s.incremental { "incremental" } else { "full" },
                s.source,
                s.snapshot,
                output::size(s.write_bytes, false)
            ))?;
        }
    }
    Ok(())
}

/// A temporary name in `path`'s directory, for a file renamed over `path` when complete.
fn temp_beside(path: &std::path::Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tarn-send.{}", std::process::id()))
}
