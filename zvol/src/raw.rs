//! Raw image files and block devices as block backends.
//!
//! I/O is positioned (`preadv`/`pwritev`), so any number of threads may use one [`RawFile`]
//! at once. With [`RawFileOptions::direct`] the file is opened `O_DIRECT`, bypassing the host
//! page cache; a request whose offset, lengths or buffer addresses the kernel would refuse
//! goes through an aligned bounce buffer instead (reads of, and read-modify-writes of, the
//! aligned blocks around it). Aligned requests go straight from the caller's buffers.

use crate::backend::{backend_id, BackendInfo, BlockBackend};
use crate::error::{Error, Result};
use pool::positioned::{iovecs, iovecs_mut, transfer, Dir};
use pool::{gather, scatter};
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// Alignment of bounce buffers, and of requests when the kernel does not say what `O_DIRECT`
/// needs (older kernels): no real device has a logical block larger than this.
const ALIGN: usize = 4096;
/// Largest alignment believed from the kernel; anything larger falls back to buffered I/O.
const MAX_ALIGN: u64 = 64 << 10;
/// Largest bounce buffer; longer unaligned requests go in pieces of about this size.
const BOUNCE_MAX: u64 = 1 << 20;
/// Locks serialising read-modify-writes of the same aligned block (direct I/O only).
const STRIPES: usize = 64;
/// Size of the static zero buffer used when writing zeroes by hand.
const ZERO_LEN: usize = 64 << 10;

/// Zeroes to write from, aligned for `O_DIRECT`.
#[repr(C, align(4096))]
struct ZeroBuf([u8; ZERO_LEN]);
static ZEROES: ZeroBuf = ZeroBuf([0; ZERO_LEN]);

/// How to open a raw file or block device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RawFileOptions {
    /// Refuse writes, discards and write-zeroes (the file is opened read-only).
    pub read_only: bool,
    /// Bypass the host page cache (`O_DIRECT`) where the filesystem allows it; see
    /// [`RawFile::is_direct`].
    pub direct: bool,
}

/// What `O_DIRECT` needs of a request.
#[derive(Clone, Copy, Debug)]
struct DirectAlign {
    /// Alignment of buffer addresses.
    mem: usize,
    /// Alignment of file offsets and of each buffer's length.
    off: u64,
}

impl DirectAlign {
    /// Whether the kernel takes this request as it is.
    fn fits(&self, offset: u64, iov: &[libc::iovec]) -> bool {
        is_aligned(offset, self.off)
            && iov.iter().all(|v| {
                v.iov_len == 0
                    || (is_aligned(v.iov_base as u64, self.mem as u64)
                        && is_aligned(v.iov_len as u64, self.off))
            })
    }
}

/// A regular file or block device holding a raw disk image, as a [`BlockBackend`].
///
/// The size is fixed when the file is opened: I/O past it is an error, as on a disk.
pub struct RawFile {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
    /// Logical sector size of a block device (`None` for a regular file).
    block_dev_sector: Option<u64>,
    /// `Some` while `O_DIRECT` is in effect.
    direct: Option<DirectAlign>,
    id: String,
    /// Whether a discard frees its range rather than writing zeroes ([`discards`]).
    discards: bool,
    /// Held around read-modify-writes of partial aligned blocks (indexed by block number).
    stripes: Box<[Mutex<()>]>,
}

impl std::fmt::Debug for RawFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawFile")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("read_only", &self.read_only)
            .field("block_dev_sector", &self.block_dev_sector)
            .field("direct", &self.direct)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl RawFile {
    /// Opens an existing regular file or block device.
    ///
    /// With `opts.direct`, `O_DIRECT` is used when the filesystem accepts it, the kernel's
    /// alignment needs are known, and the size is a multiple of the offset alignment;
    /// otherwise the file silently uses buffered I/O (see [`RawFile::is_direct`]).
    pub fn open(path: impl AsRef<Path>, opts: RawFileOptions) -> Result<RawFile> {
        let path = path.as_ref();
        let mut oo = OpenOptions::new();
        oo.read(true).write(!opts.read_only);
        let mut direct_open = false;
        let file = if opts.direct {
            match oo.clone().custom_flags(libc::O_DIRECT).open(path) {
                Ok(f) => {
                    direct_open = true;
                    f
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::info!(
                        path = %path.display(),
                        "the filesystem refuses O_DIRECT; using buffered I/O"
                    );
                    oo.open(path).map_err(|e| io_error("opening", path, e))?
                }
                Err(e) => return Err(io_error("opening", path, e)),
            }
        } else {
            oo.open(path).map_err(|e| io_error("opening", path, e))?
        };
        let meta = file
            .metadata()
            .map_err(|e| io_error("reading the metadata of", path, e))?;
        let ft = meta.file_type();
        let (size, block_dev_sector, id) = if ft.is_block_device() {
            let size = (&file)
                .seek(SeekFrom::End(0))
                .map_err(|e| io_error("finding the size of", path, e))?;
            // The disk's udev name (from its serial or WWN) where it has one: device numbers
            // change when disks are found in another order.
            let id = match stable_name(Path::new(BY_ID), &meta) {
                Some(name) => backend_id("blk", fnv1a(&name), 0),
                None => backend_id("blk", meta.rdev(), 0),
            };
            (size, Some(logical_sector_size(&file)), id)
        } else if ft.is_file() {
            // The file system's ID (from its UUID on ext4, XFS, btrfs), not st_dev, which a
            // reboot may renumber.
            let fs = fs_id(&file).unwrap_or(meta.dev());
            (meta.len(), None, backend_id("raw", fs, meta.ino()))
        } else {
            return Err(Error::InvalidArgument(format!(
                "{} is neither a regular file nor a block device",
                path.display()
            )));
        };
        if i64::try_from(size).is_err() {
            return Err(Error::InvalidArgument(format!(
                "{} is too large ({size} bytes)",
                path.display()
            )));
        }
        let mut direct = None;
        if direct_open {
            direct = direct_alignment(&file, block_dev_sector);
            match direct {
                Some(a) if is_aligned(size, a.off) => {}
                _ => {
                    tracing::info!(
                        path = %path.display(),
                        size,
                        alignment = ?direct,
                        "O_DIRECT is unusable here (unknown alignment or a size that is not a multiple of it); using buffered I/O"
                    );
                    clear_direct(&file).map_err(|e| io_error("clearing O_DIRECT on", path, e))?;
                    direct = None;
                }
            }
        }
        let discards = !opts.read_only && discards(&file, &meta);
        Ok(RawFile {
            file,
            path: path.to_path_buf(),
            size,
            read_only: opts.read_only,
            block_dev_sector,
            direct,
            id,
            discards,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        })
    }

    /// Creates a sparse regular file of `size` bytes at `path` (failing if it exists) and
    /// opens it with `opts`.
    pub fn create(path: impl AsRef<Path>, size: u64, opts: RawFileOptions) -> Result<RawFile> {
        let path = path.as_ref();
        if size == 0 || i64::try_from(size).is_err() {
            return Err(Error::InvalidArgument(format!(
                "cannot create {}: size {size} must be from 1 to {} bytes",
                path.display(),
                i64::MAX
            )));
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| io_error("creating", path, e))?;
        if let Err(e) = file.set_len(size) {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(io_error("setting the size of", path, e));
        }
        drop(file);
        Self::open(path, opts)
    }

    /// Whether `O_DIRECT` is in effect (asked for, and accepted by the filesystem).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Whether this is a block device rather than a regular file.
    pub fn is_block_device(&self) -> bool {
        self.block_dev_sector.is_some()
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes (fixed when opened).
    pub fn size(&self) -> u64 {
        self.size
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn io_err(&self, what: &str, offset: u64, len: u64, source: io::Error) -> Error {
        Error::Io {
            what: format!(
                "{what} {len} bytes at offset {offset} of {}",
                self.path.display()
            ),
            source,
        }
    }

    fn check_range(&self, op: &str, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::InvalidArgument(format!(
                "{op} of {len} bytes at offset {offset} is past the end of {} ({} bytes)",
                self.path.display(),
                self.size
            ))),
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(self.path.display().to_string()));
        }
        Ok(())
    }

    /// Locks the stripes of the given aligned blocks, in a fixed order.
    fn lock_blocks(&self, blocks: [Option<u64>; 2]) -> Vec<MutexGuard<'_, ()>> {
        let mut idx: Vec<usize> = blocks
            .iter()
            .flatten()
            .map(|b| (b % STRIPES as u64) as usize)
            .collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter()
            .map(|i| self.stripes[i].lock().unwrap_or_else(|e| e.into_inner()))
            .collect()
    }

    /// Guards for the partial aligned blocks at either end of `[offset, offset+len)`, when
    /// direct I/O may read-modify-write them.
    fn lock_partial_ends(&self, offset: u64, len: u64) -> Vec<MutexGuard<'_, ()>> {
        let Some(a) = self.direct else {
            return Vec::new();
        };
        let end = offset + len;
        let head = (!is_aligned(offset, a.off)).then_some(offset / a.off);
        let tail = (!is_aligned(end, a.off)).then_some(end / a.off);
        self.lock_blocks([head, tail])
    }

    fn read_impl(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> Result<()> {
        let len: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        self.check_range("read", offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let done = {
            let iov = iovecs_mut(bufs);
            match self.direct {
                Some(a) if !a.fits(offset, iov) => Some(0),
                direct => {
                    // SAFETY: `iov` describes the caller's buffers, writable and exclusively
                    // borrowed (through `bufs`) for the whole call.
                    match unsafe { transfer(self.fd(), iov, offset, Dir::Read) } {
                        Ok(()) => None,
                        Err((e, done))
                            if direct.is_some() && e.raw_os_error() == Some(libc::EINVAL) =>
                        {
                            tracing::debug!(path = %self.path.display(), offset, len, "O_DIRECT read refused; bouncing");
                            Some(done)
                        }
                        Err((e, done)) => {
                            return Err(self.io_err("reading", offset + done, len - done, e))
                        }
                    }
                }
            }
        };
        match (done, self.direct) {
            (Some(done), Some(a)) => self.bounce_read(a, offset, len, bufs, done),
            _ => Ok(()),
        }
    }

    /// Reads through aligned bounce buffers, from `done` bytes into the request.
    fn bounce_read(
        &self,
        a: DirectAlign,
        offset: u64,
        len: u64,
        bufs: &mut [IoSliceMut<'_>],
        done: u64,
    ) -> Result<()> {
        let end = offset + len;
        let mut pos = offset + done;
        while pos < end {
            let stop = chunk_end(pos, end, a.off);
            let a_start = align_down(pos, a.off);
            let a_end = align_up(stop, a.off);
            let mut bounce = Bounce::new((a_end - a_start) as usize, a.mem.max(ALIGN))
                .map_err(|e| self.io_err("reading", pos, stop - pos, e))?;
            self.file
                .read_exact_at(bounce.as_mut(), a_start)
                .map_err(|e| self.io_err("reading", a_start, a_end - a_start, e))?;
            scatter(
                bufs,
                (pos - offset) as usize,
                &bounce.as_mut()[(pos - a_start) as usize..(stop - a_start) as usize],
            );
            pos = stop;
        }
        Ok(())
    }

    fn write_impl(&self, offset: u64, bufs: &[IoSlice<'_>]) -> Result<()> {
        self.check_writable()?;
        let len: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        self.check_range("write", offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let iov = iovecs(bufs);
        let done = match self.direct {
            Some(a) if !a.fits(offset, iov) => 0,
            direct => {
                // SAFETY: `iov` describes the caller's buffers, readable for the whole call.
                match unsafe { transfer(self.fd(), iov, offset, Dir::Write) } {
                    Ok(()) => return Ok(()),
                    Err((e, done))
                        if direct.is_some() && e.raw_os_error() == Some(libc::EINVAL) =>
                    {
                        tracing::debug!(path = %self.path.display(), offset, len, "O_DIRECT write refused; bouncing");
                        done
                    }
                    Err((e, done)) => {
                        return Err(self.io_err("writing", offset + done, len - done, e))
                    }
                }
            }
        };
        match self.direct {
            Some(a) => self.bounce_write(a, offset, len, bufs, done),
            None => Ok(()),
        }
    }

    /// Writes through aligned bounce buffers, from `done` bytes into the request,
    /// read-modify-writing partial blocks at the ends under their stripe locks.
    fn bounce_write(
        &self,
        a: DirectAlign,
        offset: u64,
        len: u64,
        bufs: &[IoSlice<'_>],
        done: u64,
    ) -> Result<()> {
        let end = offset + len;
        let mut pos = offset + done;
        while pos < end {
            let stop = chunk_end(pos, end, a.off);
            let a_start = align_down(pos, a.off);
            let a_end = align_up(stop, a.off);
            let blen = (a_end - a_start) as usize;
            let off = a.off as usize;
            let head = pos != a_start;
            let tail = stop != a_end;
            let _guards = self.lock_blocks([
                head.then_some(a_start / a.off),
                tail.then_some(a_end / a.off - 1),
            ]);
            let mut bounce = Bounce::new(blen, a.mem.max(ALIGN))
                .map_err(|e| self.io_err("writing", pos, stop - pos, e))?;
            let b = bounce.as_mut();
            if head {
                self.file
                    .read_exact_at(&mut b[..off], a_start)
                    .map_err(|e| self.io_err("reading (to merge a write)", a_start, a.off, e))?;
            }
            if tail && !(head && blen == off) {
                self.file
                    .read_exact_at(&mut b[blen - off..], a_end - a.off)
                    .map_err(|e| {
                        self.io_err("reading (to merge a write)", a_end - a.off, a.off, e)
                    })?;
            }
            gather(
                bufs,
                (pos - offset) as usize,
                &mut b[(pos - a_start) as usize..(stop - a_start) as usize],
            );
            self.file
                .write_all_at(b, a_start)
                .map_err(|e| self.io_err("writing", a_start, a_end - a_start, e))?;
            pos = stop;
        }
        Ok(())
    }

    /// Writes zeroes by hand over `[offset, offset+len)`.
    fn write_zero_bytes(&self, offset: u64, len: u64) -> Result<()> {
        const PER_CALL: u64 = 16 * ZERO_LEN as u64;
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = (end - pos).min(PER_CALL);
            let mut iov = Vec::with_capacity(16);
            let mut left = n;
            while left > 0 {
                let k = left.min(ZERO_LEN as u64);
                iov.push(IoSlice::new(&ZEROES.0[..k as usize]));
                left -= k;
            }
            self.write_impl(pos, &iov)?;
            pos += n;
        }
        Ok(())
    }

    /// `fallocate(mode | KEEP_SIZE)`; `Ok(false)` when the filesystem or device does not
    /// support `mode`.
    fn try_fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> Result<bool> {
        loop {
            // SAFETY: fallocate on an fd we own; no memory is passed. Offsets fit in off_t
            // because the range is within the file, whose size fits (checked at open).
            let rc = unsafe {
                libc::fallocate(
                    self.fd(),
                    mode | libc::FALLOC_FL_KEEP_SIZE,
                    offset as libc::off_t,
                    len as libc::off_t,
                )
            };
            if rc == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => return Ok(false),
                // A block device whose driver refuses the operation says so with EINVAL too.
                Some(libc::EINVAL) if self.is_block_device() => return Ok(false),
                _ => {
                    let what = if mode == libc::FALLOC_FL_PUNCH_HOLE {
                        "discarding"
                    } else {
                        "zeroing"
                    };
                    return Err(self.io_err(what, offset, len, e));
                }
            }
        }
    }

    /// Zeroes a range with `fallocate(mode)`, falling back to writing zeroes.
    fn zero_range(&self, op: &str, mode: libc::c_int, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        self.check_range(op, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        // A block device takes fallocate only in whole logical sectors: the ragged ends are
        // written by hand.
        let (inner_start, inner_end) = match self.block_dev_sector {
            Some(s) => (align_up(offset, s), align_down(end, s)),
            None => (offset, end),
        };
        let done = inner_start < inner_end && {
            let _guards = self.lock_partial_ends(inner_start, inner_end - inner_start);
            self.try_fallocate(mode, inner_start, inner_end - inner_start)?
        };
        if !done {
            return self.write_zero_bytes(offset, len);
        }
        if offset < inner_start {
            self.write_zero_bytes(offset, inner_start - offset)?;
        }
        if inner_end < end {
            self.write_zero_bytes(inner_end, end - inner_end)?;
        }
        Ok(())
    }
}

impl BlockBackend for RawFile {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            size: self.size,
            block_size: 4096,
            // 512 whatever the host's sectors (QEMU's default): images partitioned with 512-byte
            // sectors boot from a 4Kn disk too; unaligned requests are read-modify-written.
            logical_block_size: 512,
            read_only: self.read_only,
            discards: self.discards,
            id: self.id.clone(),
        }
    }

    fn read_vectored(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> Result<()> {
        self.read_impl(offset, bufs)
    }

    fn write_vectored(&self, offset: u64, bufs: &[IoSlice<'_>]) -> Result<()> {
        self.write_impl(offset, bufs)
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        loop {
            match self.file.sync_data() {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::Io {
                        what: format!("flushing {}", self.path.display()),
                        source: e,
                    })
                }
            }
        }
    }

    /// Punches a hole (on a block device: zeroes with unmap allowed, as `fallocate` does
    /// there), falling back to writing zeroes.
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.zero_range("discard", libc::FALLOC_FL_PUNCH_HOLE, offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.zero_range("write-zeroes", libc::FALLOC_FL_ZERO_RANGE, offset, len)
    }
}

fn io_error(what: &str, path: &Path, source: io::Error) -> Error {
    Error::Io {
        what: format!("{what} {}", path.display()),
        source,
    }
}

/// Whether `x` is a multiple of `a`, a power of two.
fn is_aligned(x: u64, a: u64) -> bool {
    debug_assert!(a.is_power_of_two());
    x & (a - 1) == 0
}

/// `x` rounded down to a multiple of `a`, a power of two.
fn align_down(x: u64, a: u64) -> u64 {
    debug_assert!(a.is_power_of_two());
    x & !(a - 1)
}

/// `x` rounded up to a multiple of `a`, a power of two.
fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Where the bounce chunk starting at `pos` ends: `end`, or an aligned point at most
/// `BOUNCE_MAX` on.
fn chunk_end(pos: u64, end: u64, align: u64) -> u64 {
    let cap = align_down(pos + BOUNCE_MAX, align);
    if cap > pos {
        end.min(cap)
    } else {
        end
    }
}

/// A zeroed buffer with its start aligned to `align` (over-allocated; no unsafe needed).
struct Bounce {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Bounce {
    fn new(len: usize, align: usize) -> io::Result<Self> {
        let raw = vec![0u8; len + align];
        let start = raw.as_ptr().align_offset(align);
        if start > align {
            return Err(io::Error::other("cannot align a bounce buffer"));
        }
        Ok(Bounce { raw, start, len })
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// Whether punching a hole in `file` frees space rather than failing into written zeroes: a
/// block device that zeroes by command (`write_zeroes_max_bytes`, what `fallocate` needs
/// there), or a file on a file system known to punch holes. Asked of the file system's type,
/// not by punching: even an empty punch past the end updates the file's mtime.
fn discards(file: &File, meta: &std::fs::Metadata) -> bool {
    if meta.file_type().is_block_device() {
        return pool::device::queue_limit(meta.rdev(), "write_zeroes_max_bytes").unwrap_or(0) > 0;
    }
    // ext4, XFS, btrfs, tmpfs, F2FS, bcachefs, OpenZFS (statfs(2) magic numbers).
    const PUNCHING: [u64; 7] = [
        0xef53,
        0x5846_5342,
        0x9123_683e,
        0x0102_1994,
        0xf2f5_2010,
        0xca45_1a4e,
        0x2fc1_2fc1,
    ];
    fs_stat(file).is_some_and(|st| PUNCHING.contains(&(st.f_type as u64)))
}

/// `fstatfs(2)` of the file system holding `file`.
fn fs_stat(file: &File) -> Option<libc::statfs> {
    // SAFETY: `statfs` is plain old data, for which all-zero bytes are a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a pointer to a live, writable `statfs`.
    (unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } == 0).then_some(st)
}

/// Where udev names disks by what they are (serial, WWN), not by the order the kernel found
/// them in.
const BY_ID: &str = "/dev/disk/by-id";

/// The first (in sorted order) name in `by_id` that links to the device `dev` is the
/// metadata of (the same device number; for other files, the same inode): a name the disk
/// keeps when the kernel numbers devices differently (after a reboot, a re-plug). `None` where
/// udev names it nothing (a loop device, a machine without udev).
fn stable_name(by_id: &Path, dev: &std::fs::Metadata) -> Option<String> {
    let same = |m: &std::fs::Metadata| {
        if dev.file_type().is_block_device() {
            m.file_type().is_block_device() && m.rdev() == dev.rdev()
        } else {
            (m.dev(), m.ino()) == (dev.dev(), dev.ino())
        }
    };
    let mut names: Vec<String> = std::fs::read_dir(by_id)
        .ok()?
        .flatten()
        .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| same(&m)))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().next()
}

/// FNV-1a (64 bits) of `s`: a hash that stays the same across builds (std's may not).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The `f_fsid` of the file system holding `file` (`fstatvfs(3)`).
fn fs_id(file: &File) -> Option<u64> {
    // SAFETY: `statvfs` is plain old data, for which all-zero bytes are a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a pointer to a live, writable `statvfs`.
    let ok = unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } == 0;
    (ok && st.f_fsid != 0).then_some(st.f_fsid as u64)
}

/// What `O_DIRECT` needs for `file`: the kernel's answer (statx `STATX_DIOALIGN`) where it
/// gives one, else a block device's logical sector size, else 4096. `None`: the kernel says
/// this file cannot do direct I/O.
fn direct_alignment(file: &File, block_dev_sector: Option<u64>) -> Option<DirectAlign> {
    // SAFETY: `statx` is plain old data, for which all-zero bytes are a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd, an empty NUL-terminated path with AT_EMPTY_PATH (so the fd itself
    // is examined), and a writable statx buffer that outlives the call.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut st,
        )
    };
    let fallback = block_dev_sector.unwrap_or(ALIGN as u64);
    if rc != 0 || st.stx_mask & libc::STATX_DIOALIGN == 0 {
        return Some(DirectAlign {
            mem: fallback as usize,
            off: fallback,
        });
    }
    let (mem, off) = (
        u64::from(st.stx_dio_mem_align),
        u64::from(st.stx_dio_offset_align),
    );
    let sane = |x: u64| x.is_power_of_two() && x <= MAX_ALIGN;
    if !sane(mem) || !sane(off) {
        return None;
    }
    Some(DirectAlign {
        mem: mem as usize,
        off,
    })
}

/// A block device's logical sector size (512 when the kernel will not say).
fn logical_sector_size(file: &File) -> u64 {
    let mut sz: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which is valid and writable.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut sz) };
    if rc == 0 && sz > 0 && (sz as u64).is_power_of_two() && (sz as u64) <= MAX_ALIGN {
        sz as u64
    } else {
        512
    }
}

/// Turns `O_DIRECT` off on an open file.
fn clear_direct(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL on an fd we own; no memory is passed.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if fl < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on an fd we own, with an int argument; no memory is passed.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_DIRECT) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_disk_is_named_by_its_by_id_link_when_it_has_one() {
        let d = tempfile::tempdir().unwrap();
        let (disk, other) = (d.path().join("sdb"), d.path().join("sdc"));
        std::fs::write(&disk, b"").unwrap();
        std::fs::write(&other, b"").unwrap();
        let by_id = d.path().join("by-id");
        std::fs::create_dir(&by_id).unwrap();
        for (name, to) in [
            ("wwn-0x5000c500a1b2c3d4", &disk),
            ("ata-ACME_X1_SERIAL42", &disk),
            ("ata-ACME_X1_SERIAL43", &other),
        ] {
            std::os::unix::fs::symlink(to, by_id.join(name)).unwrap();
        }
        let meta = |p: &Path| std::fs::metadata(p).unwrap();
        // The first of its own names, whatever path it was opened by.
        let named = stable_name(&by_id, &meta(&by_id.join("wwn-0x5000c500a1b2c3d4")));
        assert_eq!(named.as_deref(), Some("ata-ACME_X1_SERIAL42"));
        assert_eq!(
            stable_name(&by_id, &meta(&other)).as_deref(),
            Some("ata-ACME_X1_SERIAL43")
        );
        // No link, or no such folder: none (the device number is used then).
        let lone = d.path().join("loop0");
        std::fs::write(&lone, b"").unwrap();
        assert_eq!(stable_name(&by_id, &meta(&lone)), None);
        assert_eq!(stable_name(&d.path().join("nowhere"), &meta(&disk)), None);
        // The hash is FNV-1a's (stable across builds): its published test vector.
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }
    use super::*;

    #[test]
    fn scatter_gather_skip() {
        let mut a = [0u8; 3];
        let mut b = [0u8; 5];
        {
            let mut bufs = [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)];
            scatter(&mut bufs, 2, &[1, 2, 3, 4]);
        }
        assert_eq!(a, [0, 0, 1]);
        assert_eq!(b, [2, 3, 4, 0, 0]);
        let x = [1u8, 2, 3];
        let y = [4u8, 5, 6, 7];
        let bufs = [IoSlice::new(&x), IoSlice::new(&[]), IoSlice::new(&y)];
        let mut out = [0u8; 4];
        gather(&bufs, 1, &mut out);
        assert_eq!(out, [2, 3, 4, 5]);
    }

    #[test]
    fn chunks_end_aligned() {
        assert_eq!(chunk_end(100, 200, 4096), 200);
        assert_eq!(chunk_end(100, 10 << 20, 4096), BOUNCE_MAX);
        assert_eq!(chunk_end(4096, 10 << 20, 4096), 4096 + BOUNCE_MAX);
        assert_eq!(align_up(1, 512), 512);
        assert_eq!(align_down(1023, 512), 512);
    }

    #[test]
    fn bounce_is_aligned() {
        for len in [1usize, 4096, 12345] {
            let mut b = Bounce::new(len, 4096).expect("bounce");
            assert_eq!(b.as_mut().len(), len);
            assert_eq!(b.as_mut().as_ptr() as usize % 4096, 0);
        }
    }
}
