//! Where a pool's bytes live: a narrow device trait with a file/block-device implementation,
//! an in-memory one, and a crash-simulating one for power-cut tests.

use crate::positioned::pwritev_all;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

/// A byte-addressed store with explicit durability. Methods take `&self`; callers may issue
/// I/O from many threads at once.
pub trait Device: Send + Sync {
    /// Fills `buf` from `offset`. Reading past the end is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`; not durable until [`Device::sync`].
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes the buffers back to back starting at `offset`.
    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let mut at = offset;
        for b in bufs {
            self.write_at(b, at)?;
            at += b.len() as u64;
        }
        Ok(())
    }
    /// Writes freshly allocated data blocks (a device may start writing them back at once).
    /// Same durability as `write_vectored_at`.
    fn write_placed_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        self.write_vectored_at(bufs, offset)
    }
    /// Reads a large run, bypassing the device's cache (O_DIRECT) when the buffer, length and
    /// offset allow; otherwise like `read_at`. Same contents either way.
    fn read_direct_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_at(buf, offset)
    }
    /// Starts reading `len` bytes at `offset` into the device's cache without waiting, for
    /// `read_at`s that are about to come. Best effort: a device without a cache ignores it.
    fn prefetch(&self, _offset: u64, _len: u64) {}
    /// Whether the device's cache reads ahead by itself where `read_at`s go on linearly (a
    /// page cache's readahead). A prefetch then hints only the runs a linear reader would not
    /// reach: the kernel's readahead fills the cache in large folios, in the background,
    /// where a hint fills it 4 KiB page by page on the reader's thread (on a memory-backed
    /// disk, a 1 MiB sequential reader went from 3.2 to 5.2 GiB/s when it stopped hinting).
    fn reads_ahead(&self) -> bool {
        false
    }
    /// Makes every completed write durable.
    fn sync(&self) -> io::Result<()>;
    /// Size in bytes.
    fn len(&self) -> u64;
    /// Whether the device has no bytes at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Tells the device a range is unused (reads of it may then return zeroes). Best effort.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
    /// A human name for messages (the path).
    fn describe(&self) -> String;
}

/// A regular file or block device.
pub struct FileDevice {
    file: File,
    /// A second descriptor with O_DIRECT, where the file system allows it, for large reads.
    direct: Option<File>,
    path: PathBuf,
    len: u64,
    is_block: bool,
    /// Most bytes one prefetch hint reads (see [`prefetch_piece`]).
    prefetch_piece: u64,
    /// Where hints go: a thread of the device's own sends them, so the reader that asked
    /// for them goes on at once (see [`Prefetcher`]). `None` until the first hint.
    prefetcher: std::sync::OnceLock<Option<Prefetcher>>,
}

/// A thread that sends `POSIX_FADV_WILLNEED` hints for a device, on a descriptor of its own.
/// A hint makes the kernel allocate and queue the pages of its range before it returns: on a
/// fast disk that took a sequential reader a fifth of its time when the reader sent them
/// itself. Measured with 1 MiB reads at QD 1 of a 1 GiB volume rewritten five times, median
/// of five (16-core VM, fast virtio disk): hints on the reader's thread 1,150-1,220 MiB/s,
/// on this thread with linear runs left to the kernel's readahead 1,340-1,400 MiB/s.
struct Prefetcher {
    send: std::sync::mpsc::Sender<(u64, u64)>,
}

impl Prefetcher {
    fn start(file: File, piece: u64, path: PathBuf) -> io::Result<Prefetcher> {
        let (send, recv) = std::sync::mpsc::channel::<(u64, u64)>();
        std::thread::Builder::new()
            .name("tarn-prefetch".into())
            .spawn(move || {
                // Ends when the device (the sender) is dropped.
                while let Ok((offset, len)) = recv.recv() {
                    willneed(&file, &path, piece, offset, len);
                }
            })?;
        Ok(Prefetcher { send })
    }
}

/// Asks the kernel to read `offset..offset + len` of `file` into its cache, a piece at a time.
fn willneed(file: &File, path: &Path, piece: u64, offset: u64, len: u64) {
    let end = offset.saturating_add(len);
    for at in (offset..end).step_by(piece as usize) {
        let n = piece.min(end - at);
        // SAFETY: posix_fadvise(2) on an open descriptor; it reads no memory of ours.
        let rc = unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                at as libc::off_t,
                n as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            )
        };
        if rc != 0 {
            tracing::debug!(path = %path.display(), at, n, rc, "prefetch refused");
            return;
        }
    }
}

/// Most bytes one `POSIX_FADV_WILLNEED` reads on the block device holding a file (or on the
/// block device itself): max(read_ahead_kb, max_sectors_kb) of its queue, as Linux's
/// `force_page_cache_ra` caps it; 128 KiB (the default read_ahead_kb) where sysfs does not
/// say (no such device, a file system without one).
fn prefetch_piece(meta: &std::fs::Metadata, is_block: bool) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let dev = if is_block { meta.rdev() } else { meta.dev() };
    match (
        queue_limit(dev, "read_ahead_kb"),
        queue_limit(dev, "max_sectors_kb"),
    ) {
        (Some(ra), Some(max)) => (ra.max(max) << 10).max(4096),
        _ => 128 << 10,
    }
}

/// A number from the sysfs `queue/` of block device `dev` (a `st_rdev`, or the `st_dev` of a
/// file on it), such as `read_ahead_kb` or `write_zeroes_max_bytes`; a partition's is its
/// disk's. `None` where sysfs does not say (no such device, a file system without one).
pub fn queue_limit(dev: u64, name: &str) -> Option<u64> {
    let base = format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev));
    [format!("{base}/queue"), format!("{base}/../queue")]
        .iter()
        .find_map(|queue| {
            std::fs::read_to_string(format!("{queue}/{name}"))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
}

impl FileDevice {
    /// Opens an existing file or block device for reading and writing.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Self::from_file(file, path)
    }

    /// Creates a sparse regular file of `len` bytes; fails if `path` exists.
    pub fn create(path: &Path, len: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        // A size the file system refuses leaves no empty file behind to block a retry.
        if let Err(e) = file.set_len(len) {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Self::from_file(file, path)
    }

    fn from_file(file: File, path: &Path) -> io::Result<Self> {
        let meta = file.metadata()?;
        let is_block = meta.file_type().is_block_device();
        let len = if is_block {
            use std::io::Seek;
            (&file).seek(io::SeekFrom::End(0))?
        } else {
            meta.len()
        };
        let direct = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Ok(FileDevice {
            file,
            direct,
            path: path.to_path_buf(),
            len,
            is_block,
            prefetch_piece: prefetch_piece(&meta, is_block),
            prefetcher: std::sync::OnceLock::new(),
        })
    }

    /// The open file, for locking.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Device for FileDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        pwritev_all(self.file.as_raw_fd(), bufs, offset)
    }

    fn prefetch(&self, offset: u64, len: u64) {
        let prefetcher = self.prefetcher.get_or_init(|| {
            // A descriptor of its own (not a duplicate, which would share the pool's lock
            // and keep it held while the thread winds down).
            let file = File::open(&self.path).ok()?;
            Prefetcher::start(file, self.prefetch_piece, self.path.clone()).ok()
        });
        match prefetcher {
            Some(p) if p.send.send((offset, len)).is_ok() => {}
            // No thread: hinted here.
            _ => willneed(&self.file, &self.path, self.prefetch_piece, offset, len),
        }
    }

    fn reads_ahead(&self) -> bool {
        true
    }

    fn read_direct_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let aligned = |p: usize| p.is_multiple_of(4096);
        if let Some(d) = &self.direct {
            if aligned(offset as usize) && aligned(buf.as_ptr() as usize) && aligned(buf.len()) {
                match d.read_exact_at(buf, offset) {
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                    r => return r,
                }
            }
        }
        self.file.read_exact_at(buf, offset)
    }

    fn write_placed_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        // Through the page cache, not O_DIRECT: a writer then waits for a copy, not for the
        // device, and the kernel writes back while it goes on. Measured in the storage bench
        // (1 GiB, QD 1, 1 MiB, interleaved with raw files): 1,650-2,050 MiB/s buffered
        // against 870-1,100 MiB/s with O_DIRECT from the caller's buffers.
        pwritev_all(self.file.as_raw_fd(), bufs, offset)?;
        // Start writing the fresh blocks back now, without waiting: the commit's sync then
        // finds little left to flush, and holds the commit lock (which writers that grow a
        // volume wait for) that much shorter. Only a hint; durability is still the sync's.
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if let (Ok(off), Ok(n)) = (
            libc::off64_t::try_from(offset),
            libc::off64_t::try_from(len),
        ) {
            // SAFETY: sync_file_range(2) on our own open descriptor; it touches no memory.
            unsafe {
                libc::sync_file_range(self.file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.is_block {
            return Ok(());
        }
        // SAFETY: fallocate on an fd we own; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
                return Ok(());
            }
            return Err(err);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

fn check_range(len: usize, offset: u64, n: usize) -> io::Result<usize> {
    let start =
        usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    if start.checked_add(n).is_none_or(|end| end > len) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "access past the end of the device",
        ));
    }
    Ok(start)
}

/// A device in memory; every write is immediately "durable".
pub struct MemDevice {
    bytes: RwLock<Vec<u8>>,
    name: String,
}

impl MemDevice {
    /// A zero-filled device of `len` bytes.
    pub fn new(len: usize) -> Self {
        Self::from_bytes(vec![0; len])
    }

    /// A device holding `bytes`.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        MemDevice {
            bytes: RwLock::new(bytes),
            name: "<memory>".into(),
        }
    }

    /// A copy of the current contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.bytes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs `f` on the contents (e.g. to flip bits in a corruption test).
    pub fn with_bytes_mut<R>(&self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        f(&mut self.bytes.write().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Device for MemDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let bytes = self.bytes.read().unwrap_or_else(|e| e.into_inner());
        let s = check_range(bytes.len(), offset, buf.len())?;
        buf.copy_from_slice(&bytes[s..s + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut bytes = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        let s = check_range(bytes.len(), offset, buf.len())?;
        bytes[s..s + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> u64 {
        self.bytes.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut bytes = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        let s = check_range(bytes.len(), offset, len as usize)?;
        bytes[s..s + len as usize].fill(0);
        Ok(())
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// How unsynced writes fare in a simulated power cut.
#[derive(Debug, Clone, Copy)]
pub enum CutMode {
    /// Every unsynced write is lost.
    DropAll,
    /// Each unsynced write independently lands whole, is lost, or lands torn (a random subset of
    /// its 512-byte sectors), decided by the seed.
    Random(u64),
}

struct CrashState {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
    ops_left: Option<u64>,
    ops: u64,
}

/// A test device that keeps a durable image advancing only on `sync`, and can lose power after
/// a chosen number of writes and syncs. After the cut every write and sync fails.
pub struct CrashDevice {
    state: Mutex<CrashState>,
}

impl CrashDevice {
    /// A zero-filled device of `len` bytes.
    pub fn new(len: usize) -> Self {
        Self::from_bytes(vec![0; len])
    }

    /// A device whose live and durable images are `bytes`.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        CrashDevice {
            state: Mutex::new(CrashState {
                durable: bytes.clone(),
                live: bytes,
                pending: Vec::new(),
                ops_left: None,
                ops: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CrashState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts power after `n` more writes/syncs (`None`: never).
    pub fn cut_after(&self, n: Option<u64>) {
        self.lock().ops_left = n;
    }

    /// Writes and syncs issued so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// The image a reboot would find: the durable image plus what `mode` lets survive of the
    /// unsynced writes.
    pub fn crash_image(&self, mode: CutMode) -> Vec<u8> {
        let st = self.lock();
        let mut img = st.durable.clone();
        if let CutMode::Random(seed) = mode {
            let mut x = seed | 1;
            let mut next = move || {
                // xorshift64*: small, deterministic, good enough to pick fates.
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                x.wrapping_mul(0x2545_f491_4f6c_dd1d)
            };
            for (off, data) in &st.pending {
                let off = *off as usize;
                match next() % 3 {
                    0 => {}
                    1 => img[off..off + data.len()].copy_from_slice(data),
                    _ => {
                        for (i, sector) in data.chunks(512).enumerate() {
                            if next() % 2 == 0 {
                                let at = off + i * 512;
                                img[at..at + sector.len()].copy_from_slice(sector);
                            }
                        }
                    }
                }
            }
        }
        img
    }

    fn tick(st: &mut CrashState) -> io::Result<()> {
        st.ops += 1;
        match st.ops_left {
            Some(0) => Err(io::Error::other("simulated power cut")),
            Some(ref mut n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl Device for CrashDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let st = self.lock();
        let s = check_range(st.live.len(), offset, buf.len())?;
        buf.copy_from_slice(&st.live[s..s + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.lock();
        let s = check_range(st.live.len(), offset, buf.len())?;
        Self::tick(&mut st)?;
        st.live[s..s + buf.len()].copy_from_slice(buf);
        st.pending.push((offset, buf.to_vec()));
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut st = self.lock();
        Self::tick(&mut st)?;
        let pending = std::mem::take(&mut st.pending);
        for (off, data) in pending {
            let off = off as usize;
            st.durable[off..off + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }

    fn len(&self) -> u64 {
        self.lock().live.len() as u64
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_at(&vec![0; len as usize], offset)
    }

    fn describe(&self) -> String {
        "<crash-test device>".into()
    }
}
