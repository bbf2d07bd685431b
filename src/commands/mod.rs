//! One module per command group; `run` dispatches.

mod dataset;
mod nfs;
mod pool;
mod snapshot;
mod vm;
mod vol;

use crate::cli::{Cli, Command, NfsCommand, PoolCommand, VolCommand};
use crate::error::{CliError, Result};
use crate::registry::Registry;
use ::pool::request::{Request, Response};
use ::pool::Pool;

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let reg = Registry::from_env();
    match cli.command {
        Command::Pool(p) => match p {
            PoolCommand::Create(a) => pool::create(&reg, &a),
            PoolCommand::Import(a) => pool::import(&reg, &a),
            PoolCommand::Export(a) => pool::export(&reg, &a.name),
            PoolCommand::List(a) => pool::list(&reg, &a),
            PoolCommand::Status(a) => pool::status(&reg, &a),
            PoolCommand::Scrub(a) => pool::scrub(&reg, &a),
            PoolCommand::Trim(a) => pool::trim(&reg, &a),
            PoolCommand::Destroy(a) => pool::destroy(&reg, &a.name),
        },
        Command::Vol(v) => match v {
            VolCommand::Create(a) => vol::create(&reg, &a),
            VolCommand::Resize(a) => vol::resize(&reg, &a),
            VolCommand::Import(a) => vol::import(&reg, &a),
            VolCommand::Export(a) => vol::export(&reg, &a),
        },
        Command::List(a) => dataset::list(&reg, &a),
        Command::Destroy(a) => dataset::destroy(&reg, &a),
        Command::Rename(a) => snapshot::rename(&reg, &a),
        Command::Get(a) => dataset::get(&reg, &a),
        Command::Set(a) => dataset::set(&reg, &a),
        Command::Vm(crate::cli::VmCommand::Run(a)) => vm::run(&reg, &a),
        Command::Nfs(n) => match n {
            NfsCommand::Serve(a) => nfs::serve(&reg, &a),
        },
        Command::Snapshot(a) => snapshot::snapshot(&reg, &a),
        Command::Clone(a) => snapshot::clone(&reg, &a),
        Command::Rollback(a) => snapshot::rollback(&reg, &a),
        Command::Promote(a) => snapshot::promote(&reg, &a),
        Command::Hold(a) => snapshot::hold(&reg, &a, true),
        Command::Release(a) => snapshot::hold(&reg, &a, false),
        Command::Diff(a) => snapshot::diff(&reg, &a),
        Command::Send(a) => snapshot::send(&reg, &a),
        Command::Recv(a) => snapshot::recv(&reg, &a),
    }
}

/// Where an output named `path` goes.
pub(crate) enum OutputPath {
    /// Written in place, in order: a FIFO, a character or block device, a socket, or a path
    /// through a process's descriptors (`/dev/stdout`, `/dev/fd/N`, `/proc/PID/fd/N`), as `-`
    /// is. Renaming a file over such a path replaced the device node or the link (a send to
    /// `-f /dev/null` replaced `/dev/null` with a regular file).
    InPlace(std::path::PathBuf),
    /// A regular file, or none yet, reached through any symbolic links: a file written beside
    /// it and renamed over it replaces the target, not a link to it.
    Replace(std::path::PathBuf),
}

/// Opens an output written in place: a regular file behind a descriptor's path (`>> file`,
/// `> file`) is appended to, as writing to `-` would, not written over from its start.
pub(crate) fn open_in_place(path: &std::path::Path) -> Result<std::fs::File> {
    let regular = std::fs::metadata(path).is_ok_and(|m| m.is_file());
    std::fs::OpenOptions::new()
        .write(true)
        .append(regular)
        .open(path)
        .map_err(|e| CliError::io(format!("opening {}", path.display()), e))
}

/// Resolves an output path (see [`OutputPath`]).
pub(crate) fn output_path(path: &std::path::Path) -> OutputPath {
    let through_fds = |p: &std::path::Path| {
        p.to_str().is_some_and(|s| {
            s.starts_with("/proc/") || s.starts_with("/dev/fd/") || s.starts_with("/dev/std")
        })
    };
    // Follow the links one by one, as each may go through /proc.
    let mut at = path.to_path_buf();
    for _ in 0..40 {
        if through_fds(&at) {
            return OutputPath::InPlace(path.to_path_buf());
        }
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(&at) {
                Ok(target) => {
                    at = match at.parent() {
                        Some(dir) => dir.join(target),
                        None => target,
                    }
                }
                Err(_) => break,
            },
            Ok(m) if !m.is_file() && !m.is_dir() => return OutputPath::InPlace(at),
            _ => break,
        }
    }
    OutputPath::Replace(at)
}

/// Refuses `path` as something to write over (an export, a stream) or to give a guest as a
/// raw disk, where it holds a tarn pool: a label magic at either label copy. Writing there
/// would destroy the pool, even one held by another process (the lock is advisory, and a
/// rename replaces the file under it).
pub(crate) fn refuse_pool_file(path: &std::path::Path, doing: &str) -> Result<()> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    // Only files and block devices can hold a pool; a FIFO would block this read.
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() || m.file_type().is_block_device() => {}
        _ => return Ok(()),
    }
    let Ok(mut f) = std::fs::File::open(path) else {
        return Ok(());
    };
    let mut head = vec![0u8; 8192];
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let magic = ::pool::LABEL_MAGIC;
    let labelled = [0usize, 4096]
        .iter()
        .any(|&at| got >= at + magic.len() && head[at..at + magic.len()] == magic);
    if labelled {
        return Err(CliError::Failed(format!(
            "{} holds a tarn pool; refusing to {doing} it (give another file, or `tarn pool \
             destroy` the pool first)",
            path.display()
        )));
    }
    Ok(())
}

/// Executes a request against an open pool (the same types a daemon's control API takes).
pub(crate) fn execute(pool: &Pool, req: Request) -> Result<Response> {
    if let Ok(json) = serde_json::to_string(&req) {
        tracing::debug!(pool = pool.name(), request = %json, "executing");
    }
    Ok(req.execute(pool)?)
}

/// Executes a request that may take seconds, with a spinner saying `what` meanwhile.
pub(crate) fn execute_spinning(pool: &Pool, req: Request, what: &str) -> Result<Response> {
    let pb = crate::output::spinner(what);
    let r = execute(pool, req);
    pb.finish_and_clear();
    r
}

/// The dataset a request returned, or an internal error.
pub(crate) fn expect_dataset(r: Response) -> Result<::pool::DatasetInfo> {
    match r {
        Response::Dataset(d) => Ok(d),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(r: &Response) -> CliError {
    CliError::Failed(format!(
        "internal error: unexpected response {}",
        serde_json::to_string(r).unwrap_or_default()
    ))
}

/// Splits `POOL/NAME` (checking both parts) and returns the pool part.
pub(crate) fn pool_of(full: &str) -> Result<&str> {
    if full.contains('@') && ::pool::names::split_any_name(full).is_ok() {
        return Err(CliError::Usage(format!(
            "{full} is a snapshot; name a volume (POOL/NAME) here"
        )));
    }
    Ok(::pool::names::split_dataset_name(full)?.0)
}

/// Like [`pool_of`], also accepting snapshot names `POOL/NAME@SNAP`.
pub(crate) fn pool_of_any(full: &str) -> Result<&str> {
    Ok(::pool::names::split_any_name(full)?.0)
}

/// Opens the pool holding `full` (a volume or a snapshot) and checks the dataset exists.
pub(crate) fn open_for(reg: &Registry, full: &str) -> Result<(Pool, ::pool::DatasetInfo)> {
    let pool_name = pool_of_any(full)?;
    let (pool, _) = reg.open(pool_name)?;
    let info = pool.dataset(full)?;
    Ok((pool, info))
}

/// Parses `KEY=VALUE`.
pub(crate) fn parse_assignment(s: &str) -> Result<(String, String)> {
    let (k, v) = s.split_once('=').ok_or_else(|| {
        CliError::Usage(format!(
            "'{s}' is not a property assignment (expected KEY=VALUE)"
        ))
    })?;
    if k.is_empty() {
        return Err(CliError::Usage(format!(
            "'{s}' has an empty property name (expected KEY=VALUE)"
        )));
    }
    Ok((k.to_string(), v.to_string()))
}
