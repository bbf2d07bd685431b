//! `tarn vol ...`: create, resize, import (raw image in), export (raw image out).
//!
//! Import reads the source in a separate thread (large reads, skipping the holes of a sparse
//! file; an `nfs://` image through [`nfs::NfsDisk`]) while the pool's sync thread commits in
//! the background; all-zero blocks are not written, so they stay holes. Export writes a sparse
//! file: zero runs are skipped and the file is sized at the end; it is written under a
//! temporary name and renamed into place.

use super::dataset::check_user_prop;
use super::{execute, expect_dataset, open_for, parse_assignment, pool_of};
use crate::cli::{VolCreateArgs, VolExportArgs, VolImportArgs, VolResizeArgs};
use crate::error::{CliError, Result};
use crate::output;
use crate::registry::{open_entry_with, Registry};
use ::pool::request::Request;
use ::pool::AlignedBuf;
use ::pool::{Pool, PoolConfig, VolumeHandle};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use zvol::DEFAULT_BLOCK_SIZE;

/// Bytes per read or write when copying images.
const CHUNK: usize = 4 << 20;

/// Granularity at which export leaves holes in its output.
const HOLE_GRAIN: usize = 4096;

/// Whether every byte is zero (one overlapping memcmp: fast, vectorised by libc).
fn is_zero(b: &[u8]) -> bool {
    b.is_empty() || (b[0] == 0 && b[..b.len() - 1] == b[1..])
}

/// `tarn vol create POOL/NAME --size SIZE [--block-size SIZE]`
pub fn create(reg: &Registry, a: &VolCreateArgs) -> Result<()> {
    let pool_name = pool_of(&a.name)?;
    let mut props = BTreeMap::new();
    for s in &a.props {
        let (k, v) = parse_assignment(s)?;
        if ::pool::builtin_prop(&k) == Some("refreservation") {
            props.insert(
                ::pool::REFRESERVATION_PROP.to_string(),
                super::dataset::refreservation_value(&v)?,
            );
            continue;
        }
        check_user_prop(&k)?;
        props.insert(k, v);
    }
    if a.thick {
        props.insert(::pool::REFRESERVATION_PROP.to_string(), "auto".into());
    }
    if props
        .get(::pool::REFRESERVATION_PROP)
        .is_some_and(String::is_empty)
    {
        props.remove(::pool::REFRESERVATION_PROP);
    }
    let (pool, _) = reg.open(pool_name)?;
    expect_dataset(execute(
        &pool,
        Request::CreateVolume {
            name: a.name.clone(),
            size: a.size,
            block_size: a.block_size,
            props,
        },
    )?)?;
    Ok(pool.close()?)
}

/// `tarn vol resize POOL/NAME --size SIZE [--shrink]`
pub fn resize(reg: &Registry, a: &VolResizeArgs) -> Result<()> {
    let (pool, info) = open_for(reg, &a.name)?;
    if a.size < info.size && !a.shrink {
        return Err(CliError::Usage(format!(
            "{} is {}; shrinking it to {} discards the data past that point: add --shrink",
            a.name,
            zvol::format_size(info.size),
            zvol::format_size(a.size)
        )));
    }
    expect_dataset(execute(
        &pool,
        Request::ResizeVolume {
            name: a.name.clone(),
            size: a.size,
        },
    )?)?;
    Ok(pool.close()?)
}

/// Where an imported image's bytes come from.
enum Input {
    /// A file, block device, FIFO or stdin.
    File(File),
    /// An image another host serves (`nfs://HOST:PORT/POOL/VOL`), read through its backend.
    Backend(Box<dyn zvol::BlockBackend>),
}

/// An image being imported.
struct Source {
    input: Input,
    label: String,
    /// Length, when known (regular files and block devices).
    size: Option<u64>,
    /// Bytes the file has allocated (an upper bound on its data), when known.
    allocated: Option<u64>,
    /// Whether SEEK_DATA/SEEK_HOLE may skip its holes.
    sparse_aware: bool,
}

impl Source {
    fn open(path: &Path) -> Result<Source> {
        if let Some(url) = path.to_str().filter(|p| p.starts_with("nfs://")) {
            let disk = nfs::NfsDisk::connect(url, true)?;
            let size = zvol::BlockBackend::info(&disk).size;
            return Ok(Source {
                input: Input::Backend(Box::new(disk)),
                label: url.to_string(),
                size: Some(size),
                allocated: Some(size),
                sparse_aware: false,
            });
        }
        let (file, label) = if path.as_os_str() == "-" {
            let fd = std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| CliError::io("duplicating stdin", e))?;
            (File::from(fd), "stdin".to_string())
        } else {
            let f = File::open(path)
                .map_err(|e| CliError::io(format!("opening {}", path.display()), e))?;
            (f, path.display().to_string())
        };
        let meta = file
            .metadata()
            .map_err(|e| CliError::io(format!("reading the attributes of {label}"), e))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            return Err(CliError::Usage(format!(
                "{label} is a directory, not an image"
            )));
        }
        let (size, allocated, sparse_aware) = if ft.is_file() {
            (Some(meta.len()), Some(meta.blocks() * 512), true)
        } else if ft.is_block_device() {
            let len = device_len(&file)
                .map_err(|e| CliError::io(format!("reading the size of {label}"), e))?;
            (Some(len), Some(len), false)
        } else {
            (None, None, false)
        };
        Ok(Source {
            input: Input::File(file),
            label,
            size,
            allocated,
            sparse_aware,
        })
    }

    /// Reads exactly `buf.len()` bytes at `pos`.
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
        match &self.input {
            Input::File(f) => f.read_exact_at(buf, pos),
            Input::Backend(b) => b
                .read_at(pos, buf)
                .map_err(|e| std::io::Error::other(e.to_string())),
        }
    }

    /// The data ranges to read (holes left out where the file says where they are).
    fn ranges(&self, size: u64, align: u64) -> Vec<(u64, u64)> {
        match &self.input {
            Input::File(f) if self.sparse_aware => data_ranges(f, size, align),
            _ => vec![(0, size)],
        }
    }
}

fn device_len(f: &File) -> std::io::Result<u64> {
    use std::io::Seek;
    let mut f = f;
    let len = f.seek(std::io::SeekFrom::End(0))?;
    f.seek(std::io::SeekFrom::Start(0))?;
    Ok(len)
}

/// `lseek(SEEK_DATA / SEEK_HOLE)`: `None` past the last data (ENXIO).
fn seek(f: &File, pos: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    let off = libc::off_t::try_from(pos)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: lseek on a descriptor we own; no memory is passed.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

/// The data ranges of a regular file (holes left out), each aligned out to `align`.
fn data_ranges(f: &File, size: u64, align: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match seek(f, pos, libc::SEEK_DATA) {
            Ok(Some(s)) => s,
            Ok(None) => break,
            // No SEEK_DATA support: everything is data.
            Err(_) => return vec![(0, size)],
        };
        let end = match seek(f, start, libc::SEEK_HOLE) {
            Ok(Some(e)) => e.min(size),
            _ => size,
        };
        if start >= size || end <= start {
            break;
        }
        let s = start / align * align;
        let e = end.div_ceil(align).saturating_mul(align).min(size);
        match out.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
        pos = end;
    }
    out
}

/// One piece of the image: `data` at `offset` (block-aligned except at the end of the file).
struct Chunk {
    offset: u64,
    /// Page-aligned, so whole blocks go to the pool with O_DIRECT, skipping the page cache.
    data: AlignedBuf,
}

/// Reads the source in `CHUNK`s and sends them on; recycled buffers come back on `back`.
fn read_source(
    src: &Source,
    bs: u64,
    tx: &mpsc::SyncSender<std::io::Result<Chunk>>,
    back: &mpsc::Receiver<AlignedBuf>,
    stop: &std::sync::atomic::AtomicBool,
) {
    let buffer = || back.try_recv().unwrap_or_else(|_| AlignedBuf::new(CHUNK));
    match src.size {
        Some(size) => {
            for (start, end) in src.ranges(size, bs) {
                let mut pos = start;
                while pos < end {
                    let n = (end - pos).min(CHUNK as u64) as usize;
                    let mut buf = buffer();
                    buf.set_len(n);
                    let r = src.read_exact_at(&mut buf, pos).map_err(|e| {
                        if e.kind() == std::io::ErrorKind::UnexpectedEof {
                            std::io::Error::other(format!("{} shrank while being read", src.label))
                        } else {
                            e
                        }
                    });
                    let failed = r.is_err();
                    if tx
                        .send(r.map(|()| Chunk {
                            offset: pos,
                            data: buf,
                        }))
                        .is_err()
                        || failed
                    {
                        return;
                    }
                    pos += n as u64;
                }
            }
        }
        None => {
            let mut pos = 0u64;
            // Only files have no known size.
            let Input::File(file) = &src.input else {
                return;
            };
            let mut reader = file;
            loop {
                let mut buf = buffer();
                buf.set_len(CHUNK);
                let mut filled = 0;
                while filled < CHUNK {
                    // A pipe that went quiet does not keep a signal from stopping the import.
                    if let Err(e) = crate::signals::wait_readable(reader, stop) {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    match reader.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
                if filled == 0 {
                    return;
                }
                buf.set_len(filled);
                let last = filled < CHUNK;
                if tx
                    .send(Ok(Chunk {
                        offset: pos,
                        data: buf,
                    }))
                    .is_err()
                    || last
                {
                    return;
                }
                pos += filled as u64;
            }
        }
    }
}

/// Space a write of `data` bytes needs at most, metadata included.
fn space_needed(data: u64) -> u64 {
    data + data / 128 + (2 << 20)
}

/// Bytes of non-zero `bs`-blocks in a regular file (reads every data range once).
fn nonzero_bytes(src: &Source, size: u64, bs: u64) -> Result<u64> {
    let mut total = 0u64;
    let mut buf = vec![0u8; CHUNK];
    for (start, end) in src.ranges(size, bs) {
        let mut pos = start;
        while pos < end {
            let n = (end - pos).min(CHUNK as u64) as usize;
            src.read_exact_at(&mut buf[..n], pos)
                .map_err(|e| CliError::io(format!("reading {}", src.label), e))?;
            total += buf[..n]
                .chunks(bs as usize)
                .filter(|b| !is_zero(b))
                .map(|b| b.len() as u64)
                .sum::<u64>();
            pos += n as u64;
        }
    }
    Ok(total)
}

/// Fails before anything is written when the image's data cannot fit in the pool.
/// `own` is what the pool holds for the target's reservation: its writes may use it.
fn check_space(pool: &Pool, src: &Source, bs: u64, target: &str, own: u64) -> Result<()> {
    let (Some(size), Some(allocated)) = (src.size, src.allocated) else {
        return Ok(());
    };
    let avail = pool.available().saturating_add(own);
    if space_needed(allocated.min(size)) <= avail {
        return Ok(());
    }
    let data = nonzero_bytes(src, size, bs)?;
    let needed = space_needed(data);
    if needed > avail {
        return Err(CliError::Failed(format!(
            "pool {} is out of space: {target} needs up to {} ({} of data in non-zero blocks \
             of {}, and the metadata that maps it) but only {} is available; nothing was changed",
            pool.name(),
            zvol::format_size(needed),
            zvol::format_size(data),
            src.label,
            zvol::format_size(avail)
        )));
    }
    Ok(())
}

/// Writes one chunk: runs of non-zero blocks are written whole; runs of zero blocks are
/// skipped on a fresh volume (they stay holes) and zeroed on an existing one.
fn write_chunk(
    vol: &VolumeHandle,
    c: &Chunk,
    bs: usize,
    fresh: bool,
    scratch: &mut [u8],
) -> Result<()> {
    let mut runs = zero_runs(&c.data, bs);
    runs.try_for_each(|(zero, from, to)| -> Result<()> {
        let off = c.offset + from as u64;
        if !zero {
            vol.write_at(off, &c.data[from..to])?;
        } else if !fresh {
            zero_existing(vol, off, (to - from) as u64, bs, scratch)?;
        }
        Ok(())
    })
}

/// Splits `data` into maximal runs of all-zero and non-zero `grain`-sized pieces:
/// `(is_zero, start, end)`.
fn zero_runs(data: &[u8], grain: usize) -> impl Iterator<Item = (bool, usize, usize)> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= data.len() {
            return None;
        }
        let start = at;
        let kind = is_zero(&data[at..(at + grain).min(data.len())]);
        while at < data.len() {
            let end = (at + grain).min(data.len());
            if is_zero(&data[at..end]) != kind {
                break;
            }
            at = end;
        }
        Some((kind, start, at))
    })
}

/// Makes `[off, off+len)` of an existing volume read as zeroes, touching only blocks that do
/// not already (so holes are not rewritten and need no space).
// TODO: use an allocation query (holes) from the pool instead of reading.
fn zero_existing(
    vol: &VolumeHandle,
    off: u64,
    len: u64,
    bs: usize,
    scratch: &mut [u8],
) -> Result<()> {
    let mut pos = off;
    let end = off + len;
    while pos < end {
        let n = (end - pos).min(scratch.len() as u64) as usize;
        let buf = &mut scratch[..n];
        vol.read_at(pos, buf)?;
        let mut at = 0usize;
        while at < n {
            // Block boundaries of the volume, not of this buffer.
            let blk_end = (((pos + at as u64) / bs as u64 + 1) * bs as u64 - pos) as usize;
            let e = blk_end.min(n);
            if !is_zero(&buf[at..e]) {
                vol.write_zeroes(pos + at as u64, (e - at) as u64)?;
            }
            at = e;
        }
        pos += n as u64;
    }
    Ok(())
}

/// `tarn vol import FILE|nfs://HOST:PORT/POOL/VOL POOL/NAME`
pub fn import(reg: &Registry, a: &VolImportArgs) -> Result<()> {
    let pool_name = pool_of(&a.name)?;
    let entry = reg.require(pool_name)?;
    if let Some(bs) = a.block_size {
        if !bs.is_power_of_two() {
            return Err(CliError::Usage(format!(
                "block size {bs} is not a power of two"
            )));
        }
    }
    // Open the source first: a FIFO waits here for its writer without holding the pool. The
    // registry is read again after: the pool may have been exported (or replaced) meanwhile,
    // and an import then wrote into a pool no longer imported.
    let src = Source::open(&a.file)?;
    // From here a signal stops the copy at the next chunk (or while the source is quiet) and
    // leaves the pool as a failure does (a volume the import created is destroyed). Before,
    // while a FIFO waits for its writer, it ends tarn at once: nothing is made yet.
    let stop = crate::signals::StopFlag::new("stopping the import")?;
    let entry = match reg.require(pool_name) {
        Ok(now) if now.guid == entry.guid && now.path == entry.path => now,
        Ok(_) | Err(_) => {
            return Err(CliError::Failed(format!(
                "pool {pool_name} was exported or replaced while {} was opened; nothing imported",
                a.file.display()
            )))
        }
    };
    let pool = open_entry_with(
        &entry,
        PoolConfig {
            sync_interval: Some(std::time::Duration::from_secs(1)),
            ..PoolConfig::default()
        },
    )?;
    let existing = match pool.dataset(&a.name) {
        Ok(d) => Some(d),
        Err(::pool::Error::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let (bs, created) = match &existing {
        Some(d) => {
            if let Some(want) = a.block_size.filter(|b| *b != d.block_size) {
                return Err(CliError::Usage(format!(
                    "{} exists with block size {}; --block-size {} applies only when import creates the volume",
                    a.name, d.block_size, want
                )));
            }
            if let Some(size) = src.size.filter(|s| *s > d.size) {
                return Err(CliError::Failed(format!(
                    "{} is {} bytes ({}), larger than {} ({} bytes); grow it first with `tarn vol resize {} --size {}`; nothing was changed",
                    src.label,
                    size,
                    zvol::format_size(size),
                    a.name,
                    d.size,
                    a.name,
                    size
                )));
            }
            check_space(
                &pool,
                &src,
                u64::from(d.block_size),
                &a.name,
                d.usedbyrefreservation,
            )?;
            (d.block_size, false)
        }
        None => {
            let size = src.size.ok_or_else(|| {
                CliError::Usage(format!(
                    "{} has no known size (a pipe or FIFO): create {} first with `tarn vol create`",
                    src.label, a.name
                ))
            })?;
            if size == 0 {
                return Err(CliError::Usage(format!(
                    "{} is empty; nothing to import",
                    src.label
                )));
            }
            let bs = a.block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
            check_space(&pool, &src, u64::from(bs), &a.name, 0)?;
            expect_dataset(execute(
                &pool,
                Request::CreateVolume {
                    name: a.name.clone(),
                    size,
                    block_size: bs,
                    props: BTreeMap::new(),
                },
            )?)?;
            (bs, true)
        }
    };
    // An existing volume fed from a pipe, whose size shows only at its end, is snapshotted
    // first: a source too large (or a failure, or a signal) then rolls it back, and the failed
    // command changes nothing. A SIGKILL leaves the snapshot, to roll back to by hand. Not
    // where the snapshot's name would be too long, or the blocks it keeps while they are
    // overwritten (up to all the volume references) would not fit: then as for files.
    let before = existing
        .as_ref()
        .filter(|d| src.size.is_none() && pool.info().free >= d.referenced)
        .map(|_| format!("{}@tarn-import-{}", a.name, std::process::id()))
        .filter(|s| ::pool::names::check_length(s).is_ok());
    if existing.is_some() && src.size.is_none() && before.is_none() {
        tracing::warn!(
            volume = a.name,
            "no snapshot to roll back to if the import fails (no room, or a name too long)"
        );
    }
    // A thick volume's snapshot holds its reservation whole again, which a full pool may
    // refuse: then as for files, too.
    let before = match before {
        Some(snap) => match pool.snapshot(&[snap.as_str()]) {
            Ok(_) => Some(snap),
            Err(e) if e.kind() == ::pool::ErrorKind::NoSpace => {
                tracing::warn!(
                    volume = a.name,
                    "no snapshot to roll back to if the import fails: {e}"
                );
                None
            }
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let copied = copy_in(&pool, &src, &a.name, bs, created, &stop);
    match copied {
        Ok(()) => {
            if let Some(snap) = &before {
                pool.destroy(snap)?;
            }
            Ok(pool.close()?)
        }
        Err(e) if before.is_some() => {
            let snap = before.as_deref().unwrap_or_default();
            let rolled_back = pool.rollback(snap);
            let undone = match &rolled_back {
                Ok(()) => pool.destroy(snap).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let _ = pool.close();
            let what = match (&rolled_back, &undone) {
                (Ok(()), Ok(())) => format!("{} is as it was", a.name),
                (Ok(()), Err(u)) => format!("{} is as it was; destroy {snap} ({u})", a.name),
                (Err(u), _) => format!(
                    "{} may hold part of the image ({u}); `tarn rollback {snap}` undoes it",
                    a.name
                ),
            };
            stop.exit_if_stopped(&what);
            Err(CliError::Failed(format!("{}; {what}", e.one_line())))
        }
        Err(e) if created => {
            // Leave the pool as it was: drop the half-imported volume.
            if let Err(de) = execute(
                &pool,
                Request::Destroy {
                    name: a.name.clone(),
                },
            ) {
                tracing::warn!(error = %de, "could not remove the partly imported volume");
            }
            let _ = pool.close();
            stop.exit_if_stopped(&format!("{} was not imported", a.name));
            Err(e)
        }
        Err(e) => {
            let _ = pool.close();
            stop.exit_if_stopped(&format!("{} may now hold part of the image", a.name));
            Err(CliError::Failed(format!(
                "{}; {} may now hold part of the image",
                e.one_line(),
                a.name
            )))
        }
    }
}

/// Copies the source into the volume with a reader thread feeding the writer.
fn copy_in(
    pool: &Pool,
    src: &Source,
    name: &str,
    bs: u32,
    fresh: bool,
    stop: &crate::signals::StopFlag,
) -> Result<()> {
    let vol = pool.volume(name)?;
    let vol_size = vol.size();
    let bsz = bs as usize;
    let pb = output::progress(src.size, &format!("importing {name}"));
    let (tx, rx) = mpsc::sync_channel::<std::io::Result<Chunk>>(3);
    let (back_tx, back_rx) = mpsc::channel::<AlignedBuf>();
    let result = std::thread::scope(|s| -> Result<()> {
        // Owned by this closure, so an early return drops it and unblocks the reader.
        let rx = rx;
        s.spawn(move || read_source(src, u64::from(bs), &tx, &back_rx, &stop.stop));
        let mut scratch = vec![0u8; CHUNK];
        let mut expect = 0u64;
        for msg in rx.iter() {
            if stop.stopped() {
                return Err(stop.error());
            }
            let chunk = msg.map_err(|e| CliError::io(format!("reading {}", src.label), e))?;
            let end = chunk.offset + chunk.data.len() as u64;
            if end > vol_size {
                return Err(CliError::Failed(format!(
                    "{} is larger than {name} ({vol_size} bytes); grow the volume first with `tarn vol resize`",
                    src.label
                )));
            }
            if chunk.offset > expect && !fresh {
                zero_existing(&vol, expect, chunk.offset - expect, bsz, &mut scratch)?;
            }
            write_chunk(&vol, &chunk, bsz, fresh, &mut scratch)?;
            expect = end;
            pb.set_position(expect);
            let _ = back_tx.send(chunk.data);
        }
        // A sparse file's trailing hole.
        if let Some(size) = src.size {
            if expect < size && !fresh {
                zero_existing(&vol, expect, size - expect, bsz, &mut scratch)?;
            }
        }
        Ok(())
    });
    pb.finish_and_clear();
    result?;
    vol.flush()?;
    Ok(())
}

/// Where an export goes.
enum Dest {
    /// A regular file written under a temporary name, renamed over `path` at the end.
    File {
        file: File,
        tmp: PathBuf,
        path: PathBuf,
    },
    /// A block device: every byte written in place.
    Device { file: File },
    /// stdout, a pipe or a character device: written in order.
    Stream { file: File },
}

impl Dest {
    fn open(path: &Path, size: u64) -> Result<Dest> {
        if path.as_os_str() == "-" {
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                return Err(CliError::Usage(
                    "refusing to write a volume's bytes to a terminal; redirect stdout or give a file"
                        .into(),
                ));
            }
            let fd = std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| CliError::io("duplicating stdout", e))?;
            return Ok(Dest::Stream {
                file: File::from(fd),
            });
        }
        super::refuse_pool_file(path, "overwrite")?;
        let path = match super::output_path(path) {
            // A block device keeps its checks below; anything else is written in order.
            super::OutputPath::InPlace(p)
                if !fs::metadata(&p).is_ok_and(|m| m.file_type().is_block_device()) =>
            {
                return Ok(Dest::Stream {
                    file: super::open_in_place(&p)?,
                });
            }
            super::OutputPath::InPlace(p) | super::OutputPath::Replace(p) => p,
        };
        let path = path.as_path();
        match fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                return Err(CliError::Usage(format!(
                    "{} is a directory; give a file name",
                    path.display()
                )))
            }
            Ok(m) if m.file_type().is_block_device() => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| CliError::io(format!("opening {}", path.display()), e))?;
                let len = device_len(&file)
                    .map_err(|e| CliError::io(format!("sizing {}", path.display()), e))?;
                if len < size {
                    return Err(CliError::Failed(format!(
                        "{} has {len} bytes, less than the volume's {size}",
                        path.display()
                    )));
                }
                return Ok(Dest::Device { file });
            }
            Ok(m) if !m.is_file() => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| CliError::io(format!("opening {}", path.display()), e))?;
                return Ok(Dest::Stream { file });
            }
            _ => {}
        }
        let fname = path
            .file_name()
            .ok_or_else(|| CliError::Usage(format!("{} is not a file name", path.display())))?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = dir.join(format!(
            ".{}.tarn-export.{}",
            fname.to_string_lossy(),
            std::process::id()
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| {
                CliError::io(
                    format!("creating {} (as {})", path.display(), tmp.display()),
                    e,
                )
            })?;
        Ok(Dest::File {
            file,
            tmp,
            path: path.to_path_buf(),
        })
    }

    fn write(&mut self, off: u64, data: &[u8]) -> std::io::Result<()> {
        match self {
            Dest::File { file, .. } => {
                // Zero runs are skipped: they become holes when the file is sized at the end.
                for (zero, from, to) in zero_runs(data, HOLE_GRAIN) {
                    if !zero {
                        file.write_all_at(&data[from..to], off + from as u64)?;
                    }
                }
                Ok(())
            }
            Dest::Device { file } => file.write_all_at(data, off),
            // A reader that went away (`| head`) is a failed export, not a finished one.
            Dest::Stream { file } => file.write_all(data),
        }
    }

    fn finish(self, size: u64) -> std::io::Result<()> {
        match self {
            Dest::File { file, tmp, path } => {
                let done = file
                    .set_len(size)
                    .and_then(|()| file.sync_all())
                    .and_then(|()| fs::rename(&tmp, &path));
                if done.is_err() {
                    let _ = fs::remove_file(&tmp);
                }
                done?;
                if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    if let Ok(d) = File::open(dir) {
                        let _ = d.sync_all();
                    }
                }
                Ok(())
            }
            Dest::Device { file } => file.sync_all(),
            Dest::Stream { mut file } => match file.flush() {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                r => r,
            },
        }
    }

    fn abandon(self) {
        if let Dest::File { tmp, .. } = self {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// `tarn vol export POOL/NAME FILE`
pub fn export(reg: &Registry, a: &VolExportArgs) -> Result<()> {
    // A signal stops the copy at the next chunk; a file being written is removed.
    let stop = crate::signals::StopFlag::new("stopping the export")?;
    let (pool, _) = open_for(reg, &a.name)?;
    let vol = pool.volume(&a.name)?;
    let size = vol.size();
    let mut dest = Dest::open(&a.file, size)?;
    let label = a.file.display().to_string();
    let pb = output::progress(Some(size), &format!("exporting {}", a.name));
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    let copied = (|| -> Result<()> {
        while pos < size {
            if stop.stopped() {
                return Err(stop.error());
            }
            let n = (size - pos).min(CHUNK as u64) as usize;
            vol.read_at(pos, &mut buf[..n])?;
            dest.write(pos, &buf[..n])
                .map_err(|e| CliError::io(format!("writing {label}"), e))?;
            pos += n as u64;
            pb.set_position(pos);
        }
        Ok(())
    })();
    pb.finish_and_clear();
    // Export only reads the pool: it is dropped without committing.
    drop(pool);
    match copied {
        Ok(()) => dest
            .finish(size)
            .map_err(|e| CliError::io(format!("finishing {label}"), e)),
        Err(e) => {
            dest.abandon();
            stop.exit_if_stopped(&format!("{} was not exported", a.name));
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_check() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 4096]));
        let mut b = vec![0u8; 4096];
        b[4095] = 1;
        assert!(!is_zero(&b));
        b[4095] = 0;
        b[0] = 7;
        assert!(!is_zero(&b));
    }

    #[test]
    fn runs_split_zero_and_data() {
        let mut d = vec![0u8; 10];
        d[3] = 1;
        d[4] = 1;
        let r: Vec<_> = zero_runs(&d, 2).collect();
        assert_eq!(r, [(true, 0, 2), (false, 2, 6), (true, 6, 10)]);
        let r: Vec<_> = zero_runs(&d[..9], 4).collect();
        assert_eq!(r, [(false, 0, 8), (true, 8, 9)]);
        assert_eq!(zero_runs(&[], 4).count(), 0);
    }

    #[test]
    fn sparse_ranges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        let f = File::create(&p).expect("create");
        f.set_len(64 << 20).expect("set_len");
        f.write_all_at(&[1u8; 100], 10 << 20).expect("write");
        let r = data_ranges(&f, 64 << 20, 16384);
        // Filesystems without hole reporting give one range; otherwise the data is found.
        assert!(!r.is_empty());
        assert!(r
            .iter()
            .any(|&(s, e)| s <= 10 << 20 && e >= (10 << 20) + 100));
        for (s, e) in r {
            assert_eq!(s % 16384, 0);
            assert!(e % 16384 == 0 || e == 64 << 20);
        }
    }
}
