//! An open pool: creation, import, the dataset directory and its administrative operations.

use crate::blocktree::{BlockTree, PtrShape};
use crate::deadlist::Deadlist;
use crate::device::{Device, FileDevice};
use crate::error::{Error, Result};
use crate::lock::{lock_exclusive, LockError};
use crate::names::check_pool_name;
use crate::phys::{
    checksum, decode_deferred_block, decode_dir_leaf, BlockPtr, DatasetKind, DatasetPhys,
    DeferredFree, LabelPhys, MetaPhys, UberblockPhys, DEFERRED_MAX_BYTES, LABEL_OFFSETS,
    RING_OFFSET, RING_SLOTS, SECTOR, SPACEMAP_HEADER,
};
use crate::spacemap::SpaceMap;
use crate::volume::{StateInit, Volume, VolumeState};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Smallest pool: room for the reserved area and a few blocks.
pub const MIN_POOL_SIZE: u64 = 16 << 20;
/// Longest user property value, bytes.
pub const MAX_PROP_VALUE: usize = 8192;
/// Smallest and largest volume block sizes.
pub const BLOCK_SIZE_RANGE: (u32, u32) = (4096, 131072);

/// How an open pool behaves.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// How often a background thread commits dirty data; `None` runs no thread (commits happen
    /// on flush, on dataset changes, when dirty data passes `dirty_max`, and on close).
    pub sync_interval: Option<Duration>,
    /// Dirty bytes held in memory before writers wait for (or run) a commit. Every quarter
    /// of it written straight to fresh space (placed) also wakes the sync thread.
    pub dirty_max: u64,
    /// Punch released runs of at least 1 MiB out of a pool file at every commit (ZFS's
    /// `autotrim`). Off by default: reusing space the file holds is faster (see `trim`).
    pub autotrim: bool,
    /// Memory this process may use, for the block maps' budget (they are held to half of it
    /// as volumes grow and are written, and refused past it when loaded). `None`: the least of
    /// the host's memory, the memory cgroup's limit and the address-space limit.
    pub memory_limit: Option<u64>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            sync_interval: Some(Duration::from_secs(1)),
            dirty_max: 256 << 20,
            autotrim: false,
            memory_limit: None,
        }
    }
}

/// Bytes free for new data in `sm` beyond the slop kept for metadata.
pub(crate) fn writable(sm: &SpaceMap) -> u64 {
    let slop = (sm.usable() * SECTOR / 32).max(1 << 20);
    // Runs held for writes' promises hold blocks their reservations count (but for the
    // leaves of zero writes, which reserve no bytes for them: frees pay for those).
    ((sm.free() + sm.promised_held_sectors()) * SECTOR).saturating_sub(slop)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
pub(crate) fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}
pub(crate) fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One dataset in the resident directory.
pub(crate) struct DatasetEntry {
    pub kind: DatasetKind,
    /// Name below the pool: `a/b`, or `a/b@snap` for a snapshot.
    pub name: String,
    pub guid: u64,
    /// Snapshots: their volume's ID. Volumes: the origin snapshot's ID, 0 for none.
    pub parent: u64,
    /// Volumes: the creating txg. Snapshots: the txg they freeze.
    pub creation_txg: u64,
    pub creation_time: u64,
    pub holds: BTreeSet<String>,
    pub props: BTreeMap<String, String>,
    pub vol: Arc<Volume>,
}

/// What the commit lock protects: the last committed state.
pub(crate) struct CommitState {
    pub txg: u64,
    pub meta: BlockPtr,
    /// The blocks of the committed deferred-free chain (the next commit frees them).
    pub deferred_blocks: Vec<BlockPtr>,
    /// The committed directory leaves, by index.
    pub leaves: BTreeMap<u64, BlockPtr>,
    pub next_id: u64,
}

/// A committed deferred-free chain, as read at open.
#[derive(Default)]
struct DeferredChain {
    /// Its entries, oldest first.
    frees: Vec<DeferredFree>,
    /// Its blocks, newest first.
    blocks: Vec<BlockPtr>,
}

/// State shared by the pool handle, volume handles and the sync thread.
pub(crate) struct Shared {
    pub dev: Arc<dyn Device>,
    pub label: LabelPhys,
    pub config: PoolConfig,
    pub spacemap: Mutex<SpaceMap>,
    /// Held shared by readers between looking up a block pointer and reading it; taken
    /// exclusively to release deferred frees, so no block is reused under a reader.
    pub fence: RwLock<()>,
    pub commit: Mutex<CommitState>,
    /// Held by [`Pool::trim`] while a free run is out of the allocator; a writer short of
    /// space takes it ([`Shared::wait_for_trim`]) to wait for the run to come back, and to
    /// keep the next one in.
    pub trim_gate: Mutex<()>,
    /// Writers waiting for `trim_gate`: trim lets them in before it takes its next run.
    pub trim_waiters: AtomicUsize,
    pub datasets: RwLock<BTreeMap<u64, DatasetEntry>>,
    pub dirty_bytes: AtomicU64,
    /// Bytes of data placed since a commit last took the dirty maps.
    pub placed_bytes: AtomicU64,
    /// Set by every change to a volume's dirty map, cleared when a commit takes the maps.
    pub pending: AtomicBool,
    pub poisoned: AtomicBool,
    /// Four-sector metadata blocks (indirect blocks, mostly) written since the last commit
    /// started: how many runs the next one holds for them.
    pub meta_runs_used: AtomicUsize,
    /// The most of those a recent commit wrote, decaying by 1/64 a commit.
    pub meta_runs_peak: AtomicUsize,
    pub last_txg: AtomicU64,
    pub sync_signal: (Mutex<bool>, Condvar),
    pub throttle: (Mutex<()>, Condvar),
    pub stop: AtomicBool,
    /// What this process may use of memory ([`crate::datasets::memory_limit`]), read at open:
    /// the pool's block maps together are held to half of it as they grow, and refused past
    /// it when loaded.
    pub memory_limit: u64,
    /// Memory the pool's resident block maps take together.
    pub map_meter: crate::blocktree::MapMeter,
    /// Bytes held for volumes' reservations beyond what they use (see `reservation`).
    pub slack_total: AtomicU64,
}

impl Shared {
    pub(crate) fn name(&self) -> &str {
        &self.label.name
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned(self.name().to_string()));
        }
        Ok(())
    }

    /// Reads a block and verifies its checksum; `what` names it for errors.
    pub(crate) fn read_block(
        &self,
        p: &BlockPtr,
        buf: &mut [u8],
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        self.dev.read_at(buf, p.offset()).map_err(|e| {
            Error::io(
                format!(
                    "reading {} from {} at byte {}",
                    what(),
                    self.dev.describe(),
                    p.offset()
                ),
                e,
            )
        })?;
        self.verify(p, buf, what)
    }

    pub(crate) fn verify(&self, p: &BlockPtr, buf: &[u8], what: &dyn Fn() -> String) -> Result<()> {
        if checksum(buf, self.label.guid) != p.checksum {
            return Err(Error::Corrupt(format!(
                "checksum mismatch in pool {}: {} (device sector {}, born in txg {}); the block is damaged{SCRUB_ADVICE}{}`",
                self.name(),
                what(),
                p.sector,
                p.birth,
                self.name()
            )));
        }
        Ok(())
    }

    pub(crate) fn load_tree(&self, vol: &Volume, st: &VolumeState) -> Result<BlockTree> {
        let nblocks = st.size.div_ceil(u64::from(vol.block_size)) as usize;
        let room = self.memory_limit.saturating_sub(self.map_bytes());
        let owner = format!("{}/{}", self.name(), read(&vol.name));
        let shape = self.ptr_shape(vol.block_size, &owner);
        let tree = BlockTree::load(st.root, nblocks, room, &shape, |p, buf| {
            self.read_block(p, buf, &|| format!("an indirect block of {owner}"))
        })?;
        Ok(tree.metered(self.map_meter.clone()))
    }

    /// The data area, in sectors: `[start, end)`.
    pub(crate) fn data_area(&self) -> (u64, u64) {
        (self.label.data_offset / SECTOR, self.label.size / SECTOR)
    }

    /// What the block pointers of `owner`, a volume (or snapshot) of `block_size`-byte
    /// blocks, may be.
    pub(crate) fn ptr_shape(&self, block_size: u32, owner: &str) -> PtrShape {
        PtrShape {
            owner: owner.to_string(),
            area: self.data_area(),
            data_sectors: (u64::from(block_size) / SECTOR) as u32,
        }
    }

    /// Memory the pool's resident block maps take together.
    pub(crate) fn map_bytes(&self) -> u64 {
        self.map_meter.load(Ordering::Relaxed)
    }

    pub(crate) fn poison(&self, e: &Error) {
        tracing::error!(pool = self.name(), error = %e, "pool stops accepting writes");
        self.poisoned.store(true, Ordering::Release);
    }

    /// Free bytes a writer may still dirty.
    /// Bytes free for new data beyond the slop kept for metadata (frees still deferred count
    /// as free: a writer that needs them commits until they are released).
    pub(crate) fn writable_bytes(&self) -> u64 {
        writable(&lock(&self.spacemap))
    }

    /// Reserves `bytes` of dirty data for `vol` against the writable space less what other
    /// volumes' reservations hold, and promises held runs (length, count) to the blocks the
    /// write dirties ([`SpaceMap::promise_runs`]).
    /// Checked and counted under the space-map lock, where placement checks its room against
    /// the same count, so that neither can spend space the other has just counted on (near
    /// full, that would end in a commit failing for space, which poisons the pool).
    pub(crate) fn reserve(&self, bytes: u64, runs: &[(u64, u64)], vol: &Volume) -> Result<()> {
        let mut sm = lock(&self.spacemap);
        // Read under the lock reservations are admitted under.
        let held = self.held_for_others(vol);
        let mut avail = writable(&sm).saturating_sub(held);
        let dirty = self.dirty_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if dirty > avail && sm.has_unpromised_runs() {
            // Runs held for coming commits and promised to no write are free space too.
            sm.give_back_unpromised();
            avail = writable(&sm).saturating_sub(held);
        }
        if dirty > avail {
            self.dirty_bytes.fetch_sub(bytes, Ordering::AcqRel);
            drop(sm);
            return Err(Error::NoSpace {
                pool: self.name().into(),
                needed: bytes,
                available: avail.saturating_sub(dirty - bytes),
            });
        }
        for (i, &(len, n)) in runs.iter().enumerate() {
            if !sm.promise_runs(len, n) {
                for &(len, n) in &runs[..i] {
                    sm.unpromise_runs(len, n);
                }
                self.dirty_bytes.fetch_sub(bytes, Ordering::AcqRel);
                return Err(self.fragmented(&sm, len));
            }
        }
        Ok(())
    }

    /// The error for a write that found no run of `len` sectors to promise.
    pub(crate) fn fragmented(&self, sm: &SpaceMap, len: u64) -> Error {
        Error::Fragmented {
            pool: self.name().into(),
            free: sm.free() * SECTOR,
            run: len * SECTOR,
        }
    }

    /// Waits until no free run is out for trimming, and keeps trim from taking another
    /// while the guard lives (for a writer short of space).
    pub(crate) fn wait_for_trim(&self) -> std::sync::MutexGuard<'_, ()> {
        self.trim_waiters.fetch_add(1, Ordering::AcqRel);
        let gate = lock(&self.trim_gate);
        self.trim_waiters.fetch_sub(1, Ordering::AcqRel);
        gate
    }

    pub(crate) fn unreserve(&self, bytes: u64) {
        if bytes > 0 {
            self.dirty_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.throttle.1.notify_all();
        }
    }

    /// Counts data placed for the open txg, and wakes the sync thread each time another
    /// quarter of `dirty_max` is placed: its commit releases older frees while a long write
    /// goes on, so a sequential overwrite reuses space the file already holds instead of
    /// growing into holes. (At one commit a second, the `reuse` example's pool file grew by
    /// the whole 1 GiB in each of its first three rounds; with this, by 0.4-1.0 GiB once.)
    pub(crate) fn note_placed(&self, bytes: u64) {
        let step = (self.config.dirty_max / 4).max(1);
        let before = self.placed_bytes.fetch_add(bytes, Ordering::AcqRel);
        if self.config.sync_interval.is_some() && (before + bytes) / step > before / step {
            self.kick();
        }
    }

    /// Wakes the sync thread.
    pub(crate) fn kick(&self) {
        *lock(&self.sync_signal.0) = true;
        self.sync_signal.1.notify_one();
    }

    /// Keeps dirty data under `dirty_max`: wakes the sync thread early and, past the limit,
    /// waits for it (or commits inline when there is no thread, or it has stopped because the
    /// pool handle was dropped while volume handles live on).
    pub(crate) fn throttle(&self) -> Result<()> {
        let max = self.config.dirty_max;
        let dirty = self.dirty_bytes.load(Ordering::Acquire);
        if dirty < max / 4 {
            return Ok(());
        }
        if self.config.sync_interval.is_none() || self.stop.load(Ordering::Acquire) {
            if dirty >= max {
                self.commit()?;
            }
            return Ok(());
        }
        self.kick();
        let mut g = lock(&self.throttle.0);
        while self.dirty_bytes.load(Ordering::Acquire) >= max
            && !self.poisoned.load(Ordering::Acquire)
        {
            g = self
                .throttle
                .1
                .wait_timeout(g, Duration::from_millis(100))
                .map(|r| r.0)
                .unwrap_or_else(|e| e.into_inner().0);
            self.kick();
        }
        Ok(())
    }

    /// The volume named `rest` (the part below the pool name).
    pub(crate) fn find(&self, rest: &str) -> Option<Arc<Volume>> {
        read(&self.datasets)
            .values()
            .find(|d| d.name == rest)
            .map(|d| d.vol.clone())
    }
}

/// The advice that ends a checksum error met outside a scrub (the pool's name and a backquote
/// follow it); a scrub's own report leaves it out.
pub(crate) const SCRUB_ADVICE: &str = "; run `tarn pool scrub ";

/// Serializes a GUID as a decimal string: GUIDs use all 64 bits, and JSON readers that hold
/// numbers as doubles (JavaScript, `jq`) would round one past 2^53 to another GUID.
pub fn guid_as_string<S: serde::Serializer>(
    guid: &u64,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(guid)
}

/// Facts about an open pool.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PoolInfo {
    /// Pool name.
    pub name: String,
    /// Permanent pool identity (a decimal string in JSON: [`guid_as_string`]).
    #[serde(serialize_with = "guid_as_string")]
    pub guid: u64,
    /// Device path.
    pub path: String,
    /// Format version.
    pub version: u32,
    /// Device size, bytes.
    pub size: u64,
    /// Bytes usable for data.
    pub usable: u64,
    /// Bytes allocated (data, metadata, frees still deferred).
    pub allocated: u64,
    /// Of the free bytes, those held for volumes' reservations (`refreservation`, with
    /// their overwrite headroom): free on disk, not for other volumes' writes.
    pub reserved: u64,
    /// Bytes of frees waiting out their deferral.
    pub deferred: u64,
    /// Bytes free.
    pub free: u64,
    /// Last committed txg.
    pub txg: u64,
    /// Whether an I/O error stopped writes.
    pub poisoned: bool,
    /// Datasets.
    pub datasets: usize,
}

/// Facts about one dataset. Space is in bytes of data blocks (metadata — indirect blocks,
/// deadlists, the directory — is the pool's overhead, shown by `PoolInfo::allocated`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct DatasetInfo {
    /// Full name, `POOL/a/b` or `POOL/a/b@snap`.
    pub name: String,
    /// Permanent ID.
    pub id: u64,
    /// Identity kept by send/receive (a decimal string in JSON: [`guid_as_string`]).
    #[serde(serialize_with = "guid_as_string")]
    pub guid: u64,
    /// Type.
    #[serde(rename = "type")]
    pub kind: DatasetKind,
    /// Logical size, bytes.
    pub size: u64,
    /// Block size, bytes.
    pub block_size: u32,
    /// Data it references (shared or not).
    pub referenced: u64,
    /// Data born since the previous snapshot (or the origin).
    pub written: u64,
    /// Space destroying it would free: for a volume its unique data plus `usedbysnapshots`
    /// and `usedbyrefreservation`; for a snapshot the data only it references.
    pub used: u64,
    /// Volumes: space its snapshots hold that the volume no longer references.
    pub usedbysnapshots: u64,
    /// Volumes: space guaranteed to it (`auto` resolved to its size; 0 for none).
    pub refreservation: u64,
    /// Volumes: what the pool holds for that guarantee beyond what the volume uses alone
    /// (counted in `used`).
    pub usedbyrefreservation: u64,
    /// Volumes cloned from a snapshot: that snapshot's full name.
    pub origin: Option<String>,
    /// Snapshots: the volumes cloned from it.
    pub clones: Vec<String>,
    /// Snapshots: hold tags.
    pub holds: Vec<String>,
    /// Creation txg (snapshots: the txg they freeze).
    pub creation_txg: u64,
    /// Creation time, seconds since the Unix epoch.
    pub creation_time: u64,
    /// User properties.
    pub props: BTreeMap<String, String>,
}

/// The largest next dataset ID a pool may record: one ID a dataset created, so no pool comes
/// near it, and no ID handed out after it can overflow.
const MAX_NEXT_DATASET_ID: u64 = 1 << 48;

/// Checks the dataset graph a directory describes, as a crafted pool could make it: names
/// valid and unique (a volume named like a snapshot would shadow it), IDs below the next ID,
/// a clone's origin an existing snapshot, and no origin chain that loops (walks of it would
/// never end). The next ID must be far from overflowing: IDs are handed out one a dataset.
fn check_datasets(ds: &BTreeMap<u64, DatasetEntry>, next_id: u64) -> Result<()> {
    let bad = |msg: String| Err(Error::Corrupt(format!("dataset directory: {msg}")));
    if next_id > MAX_NEXT_DATASET_ID {
        return bad(format!(
            "the next dataset id is {next_id}, past the most a pool reaches (2^48)"
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (id, d) in ds {
        if *id >= next_id {
            return bad(format!(
                "dataset {} has id {id}, not below {next_id}",
                d.name
            ));
        }
        let valid = match d.kind {
            DatasetKind::Snapshot => {
                crate::names::split_any_name_of_any_length(&format!("p/{}", d.name)).is_ok()
            }
            _ => {
                !d.name.contains('@')
                    && crate::names::split_dataset_name(&format!("p/{}", d.name)).is_ok()
            }
        };
        if !valid || !names.insert(d.name.as_str()) {
            return bad(format!(
                "dataset {id} has an invalid or duplicate name {:?}",
                d.name
            ));
        }
        if d.kind == DatasetKind::Volume && d.parent != 0 {
            match ds.get(&d.parent) {
                Some(o) if o.kind == DatasetKind::Snapshot => {}
                _ => {
                    return bad(format!(
                        "clone {} has no origin snapshot {}",
                        d.name, d.parent
                    ))
                }
            }
        }
    }
    // Volume -> origin snapshot -> its volume -> ...: at most one step per dataset.
    for (id, d) in ds {
        let (mut at, mut steps) = (d, 0);
        while at.parent != 0 {
            steps += 1;
            match ds.get(&at.parent) {
                Some(next) if steps <= ds.len() => at = next,
                _ => return bad(format!("the origin chain of dataset {id} loops or breaks")),
            }
        }
    }
    Ok(())
}

/// An open pool, held exclusively by this process until dropped.
pub struct Pool {
    pub(crate) shared: Arc<Shared>,
    sync_thread: Option<JoinHandle<()>>,
}

fn read_label(dev: &dyn Device) -> Result<LabelPhys> {
    let path = dev.describe();
    if dev.len() < 2 * SECTOR {
        return Err(Error::NotAPool { path });
    }
    let mut first_err = None;
    let mut other_version = None;
    for off in LABEL_OFFSETS {
        let mut b = vec![0u8; SECTOR as usize];
        dev.read_at(&mut b, off)
            .map_err(|e| Error::io(format!("reading the label of {path}"), e))?;
        match LabelPhys::decode(&b, &path) {
            Ok(Some(l)) => return Ok(l),
            Ok(None) => {}
            // A verified label of another version: that pool is not ours to open.
            Err(e @ Error::UnsupportedVersion { .. }) => return Err(e),
            Err(e) => {
                // One that does not verify but names another version: a newer format whose
                // checksum differs, or a damaged version byte, which must not hide an intact
                // other copy. Said only if no copy decodes.
                let found = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
                if found != crate::phys::FORMAT_VERSION {
                    other_version = other_version.or(Some(Error::UnsupportedVersion {
                        path: path.clone(),
                        found,
                        supported: crate::phys::FORMAT_VERSION,
                    }));
                }
                first_err = first_err.or(Some(e));
            }
        }
    }
    Err(other_version
        .or(first_err)
        .unwrap_or(Error::NotAPool { path }))
}

impl Pool {
    /// Creates a pool in a new sparse file of `size` bytes at `path`.
    pub fn create_file(path: &Path, name: &str, size: u64, config: PoolConfig) -> Result<Pool> {
        check_pool_name(name)?;
        if size < MIN_POOL_SIZE {
            return Err(Error::InvalidArgument(format!(
                "pool size {size} is below the minimum of {MIN_POOL_SIZE} bytes"
            )));
        }
        let dev = FileDevice::create(path, size)
            .map_err(|e| Error::io(format!("creating pool file {}", path.display()), e))?;
        if let Err(LockError::Io(e)) = lock_exclusive(dev.file()) {
            return Err(Error::io(format!("locking {}", path.display()), e));
        }
        let created = Self::create_on(Arc::new(dev), name, config);
        if created.is_err() {
            let _ = std::fs::remove_file(path);
        }
        created
    }

    /// Opens the pool in the file or block device at `path`, locking it.
    pub fn open_path(path: &Path, config: PoolConfig) -> Result<Pool> {
        let dev = FileDevice::open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        match lock_exclusive(dev.file()) {
            Ok(()) => {}
            Err(LockError::Held(holder)) => {
                let name = read_label(&dev)
                    .map(|l| l.name)
                    .unwrap_or_else(|_| path.display().to_string());
                return Err(Error::InUse { name, holder });
            }
            Err(LockError::Io(e)) => {
                return Err(Error::io(format!("locking {}", path.display()), e))
            }
        }
        Self::open(Arc::new(dev), config)
    }

    /// Formats `dev` as a new, empty pool (txg 1).
    pub fn create_on(dev: Arc<dyn Device>, name: &str, config: PoolConfig) -> Result<Pool> {
        check_pool_name(name)?;
        let size = dev.len() / SECTOR * SECTOR;
        if size < MIN_POOL_SIZE {
            return Err(Error::InvalidArgument(format!(
                "device of {size} bytes is below the minimum pool size of {MIN_POOL_SIZE}"
            )));
        }
        let guid = {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let mix = checksum(
                &[
                    t.to_le_bytes().as_slice(),
                    &std::process::id().to_le_bytes(),
                    name.as_bytes(),
                ]
                .concat(),
                0x7a72,
            );
            (mix as u64) | 1
        };
        let label = LabelPhys::new(name, guid, size, now_secs());
        let enc = label.encode();
        for off in LABEL_OFFSETS {
            dev.write_at(&enc, off)
                .map_err(|e| Error::io(format!("writing the label of {}", dev.describe()), e))?;
        }
        // Clear the ring so uberblocks of an earlier pool on this device are gone for good.
        let zeros = vec![0u8; (RING_SLOTS * SECTOR) as usize];
        dev.write_at(&zeros, RING_OFFSET).map_err(|e| {
            Error::io(
                format!("clearing the uberblock ring of {}", dev.describe()),
                e,
            )
        })?;
        let spacemap = SpaceMap::new(size / SECTOR, label.data_offset / SECTOR);
        let pool = Self::assemble(
            dev,
            label,
            spacemap,
            CommitState {
                txg: 0,
                meta: BlockPtr::HOLE,
                deferred_blocks: Vec::new(),
                leaves: BTreeMap::new(),
                next_id: 1,
            },
            BTreeMap::new(),
            config,
        );
        pool.shared.commit()?;
        Ok(pool)
    }

    /// Opens the pool on `dev`: the newest uberblock whose meta block verifies wins.
    pub fn open(dev: Arc<dyn Device>, config: PoolConfig) -> Result<Pool> {
        let label = read_label(dev.as_ref())?;
        let path = dev.describe();
        if dev.len() < label.size {
            return Err(Error::Truncated {
                path,
                expected: label.size,
                actual: dev.len(),
            });
        }
        let mut ring = vec![0u8; (RING_SLOTS * SECTOR) as usize];
        dev.read_at(&mut ring, RING_OFFSET)
            .map_err(|e| Error::io(format!("reading the uberblock ring of {path}"), e))?;
        let mut ubs: Vec<UberblockPhys> = ring
            .chunks(SECTOR as usize)
            .filter_map(|s| UberblockPhys::decode(s, label.guid))
            .collect();
        ubs.sort_by_key(|u| std::cmp::Reverse(u.txg));
        let mut last_err = None;
        for ub in &ubs {
            match Self::load_meta(dev.as_ref(), &label, ub) {
                Ok((meta, datasets, deferred)) => {
                    return Self::open_at(dev.clone(), label, *ub, meta, datasets, deferred, config)
                }
                Err(e) => {
                    tracing::warn!(pool = %label.name, txg = ub.txg, error = %e, "skipping uberblock");
                    last_err = Some(e);
                }
            }
        }
        Err(match last_err {
            Some(e) => Error::Corrupt(format!(
                "{path}: no uberblock with a valid meta block ({e}); the pool cannot be opened"
            )),
            None => Error::Corrupt(format!(
                "{path}: pool {} has no valid uberblock; the pool cannot be opened",
                label.name
            )),
        })
    }

    /// Reads and verifies the meta block `ub` roots, its directory leaves and its
    /// deferred-free chain.
    fn load_meta(
        dev: &dyn Device,
        label: &LabelPhys,
        ub: &UberblockPhys,
    ) -> Result<(MetaPhys, Vec<DatasetPhys>, DeferredChain)> {
        let read_verified = |p: &BlockPtr, what: &str| -> Result<Vec<u8>> {
            if p.is_hole()
                || p.offset() < label.data_offset
                || p.offset() + p.byte_len() > label.size
            {
                return Err(Error::Corrupt(format!(
                    "the {what} of txg {} lies outside the data region",
                    ub.txg
                )));
            }
            let mut b = vec![0u8; p.byte_len() as usize];
            dev.read_at(&mut b, p.offset())
                .map_err(|e| Error::io(format!("reading the {what}"), e))?;
            if checksum(&b, label.guid) != p.checksum {
                return Err(Error::Corrupt(format!(
                    "the {what} of txg {} fails its checksum",
                    ub.txg
                )));
            }
            Ok(b)
        };
        let meta = MetaPhys::decode(&read_verified(&ub.root, "meta block")?)?;
        if meta.txg != ub.txg {
            return Err(Error::Corrupt(format!(
                "meta block says txg {} but its uberblock says {}",
                meta.txg, ub.txg
            )));
        }
        let mut datasets = Vec::new();
        for (index, p) in &meta.leaves {
            let b = read_verified(p, &format!("directory leaf {index}"))?;
            datasets.extend(decode_dir_leaf(&b, *index)?);
        }
        // Newest block first; each links to the one written before it. Every entry names at
        // least one sector of the data area, none twice: a count above the data area's
        // sectors is a lie, and every block holds an entry, so the chain (however crafted)
        // ends within that many blocks.
        let data_sectors = (label.size - label.data_offset) / SECTOR;
        if meta.deferred_count > data_sectors {
            return Err(Error::Corrupt(format!(
                "the meta block of txg {} counts {} deferred frees in a data area of {} sectors",
                ub.txg, meta.deferred_count, data_sectors
            )));
        }
        let mut chain = DeferredChain::default();
        let mut newest_first = Vec::new();
        let mut read_entries = 0u64;
        let mut at = meta.deferred_head;
        while !at.is_hole() {
            if at.byte_len() > DEFERRED_MAX_BYTES {
                return Err(Error::Corrupt(format!(
                    "a deferred-free block of txg {} is {} bytes, more than {DEFERRED_MAX_BYTES}",
                    ub.txg,
                    at.byte_len()
                )));
            }
            let b = read_verified(&at, "deferred-free block")?;
            let (prev, entries) = decode_deferred_block(&b, ub.txg)?;
            read_entries += entries.len() as u64;
            if entries.is_empty() || read_entries > meta.deferred_count {
                return Err(Error::Corrupt(format!(
                    "the deferred-free chain of txg {} holds more than the {} entries its meta \
                     block counts, or an empty block (a loop?)",
                    ub.txg, meta.deferred_count
                )));
            }
            chain.blocks.push(at);
            newest_first.push(entries);
            at = prev;
        }
        chain.frees = newest_first.into_iter().rev().flatten().collect();
        if chain.frees.len() as u64 != meta.deferred_count {
            return Err(Error::Corrupt(format!(
                "the deferred-free chain of txg {} holds {} entries, its meta block says {}",
                ub.txg,
                chain.frees.len(),
                meta.deferred_count
            )));
        }
        Ok((meta, datasets, chain))
    }

    fn open_at(
        dev: Arc<dyn Device>,
        label: LabelPhys,
        ub: UberblockPhys,
        meta: MetaPhys,
        datasets_phys: Vec<DatasetPhys>,
        deferred: DeferredChain,
        config: PoolConfig,
    ) -> Result<Pool> {
        let mut sm = SpaceMap::new(label.size / SECTOR, label.data_offset / SECTOR);
        let base = label.spacemap_offsets[ub.spacemap_copy as usize];
        let mut chunks = vec![0u8; (u64::from(label.spacemap_chunks) * SECTOR) as usize];
        dev.read_at(&mut chunks, base)
            .map_err(|e| Error::io("reading the space map", e))?;
        let mut intact = true;
        for (c, b) in chunks.chunks(SECTOR as usize).enumerate() {
            intact &= sm.load_chunk(c as u64, b, ub.txg, label.guid);
        }
        sm.recount();
        if !sm.set_deferred(&deferred.frees, intact) {
            return Err(Error::Corrupt(format!(
                "{}: the deferred-free chain of txg {} lists a free outside the pool's data area, \
                 overlapping another, or not allocated in its space map",
                dev.describe(),
                ub.txg
            )));
        }
        // The next commit writes the other copy: only its chunks that differ from this one (or
        // were written by an abandoned newer txg) need rewriting, so a commit after an open
        // costs what it changed, not the pool's size.
        let other = label.spacemap_offsets[1 - ub.spacemap_copy as usize];
        let mut theirs = vec![0u8; chunks.len()];
        dev.read_at(&mut theirs, other)
            .map_err(|e| Error::io("reading the other space-map copy", e))?;
        let sector = SECTOR as usize;
        sm.set_stale_after_open((0..u64::from(label.spacemap_chunks)).filter(|&c| {
            let at = c as usize * sector;
            let (mine, other) = (&chunks[at..at + sector], &theirs[at..at + sector]);
            // Bits equal to the verified copy's need no checksum of their own: a damaged
            // header there fails that copy's next load, which rebuilds the map.
            mine[SPACEMAP_HEADER..] != other[SPACEMAP_HEADER..]
                || other[..8] != mine[..8]
                || SpaceMap::stamp(other).is_none_or(|t| t > ub.txg)
        }));
        let heads: BTreeMap<u64, &str> = datasets_phys
            .iter()
            .filter(|d| d.kind != DatasetKind::Snapshot)
            .map(|d| (d.id, d.name.as_str()))
            .collect();
        let mut datasets = BTreeMap::new();
        for d in &datasets_phys {
            let name = match d.kind {
                DatasetKind::Snapshot => {
                    let head = heads.get(&d.parent).ok_or_else(|| {
                        Error::Corrupt(format!(
                            "snapshot {} (id {}) belongs to missing volume {}",
                            d.name, d.id, d.parent
                        ))
                    })?;
                    format!("{head}@{}", d.name)
                }
                _ => d.name.clone(),
            };
            let init = StateInit {
                size: d.size,
                root: d.root,
                referenced: d.referenced,
                written: d.written,
                prev_snap_txg: d.prev_snap_txg,
                deadlist: Deadlist::persisted(d.deadlist, d.deadlist_count),
                read_only: d.kind == DatasetKind::Snapshot,
            };
            let vol = Arc::new(Volume::new(d.id, name.clone(), d.block_size, init));
            let twice = datasets.insert(
                d.id,
                DatasetEntry {
                    kind: d.kind,
                    name,
                    guid: d.guid,
                    parent: d.parent,
                    creation_txg: d.creation_txg,
                    creation_time: d.creation_time,
                    holds: d.holds.iter().cloned().collect(),
                    props: d.props.iter().cloned().collect(),
                    vol,
                },
            );
            // One would silently hide the other (a crafted or damaged leaf).
            if let Some(first) = twice {
                return Err(Error::Corrupt(format!(
                    "{}: the directory of txg {} lists dataset id {} twice ({} and {})",
                    dev.describe(),
                    ub.txg,
                    d.id,
                    first.name,
                    d.name
                )));
            }
        }
        check_datasets(&datasets, meta.next_dataset_id)?;
        let state = CommitState {
            txg: ub.txg,
            meta: ub.root,
            deferred_blocks: deferred.blocks,
            leaves: meta.leaves.iter().copied().collect(),
            next_id: meta.next_dataset_id,
        };
        let pool = Self::assemble(dev, label, sm, state, datasets, config);
        if !intact {
            tracing::warn!(
                pool = pool.name(),
                "space map copy is stale or damaged; rebuilding it from the block trees"
            );
            pool.shared.rebuild_spacemap()?;
        }
        Ok(pool)
    }

    fn assemble(
        dev: Arc<dyn Device>,
        label: LabelPhys,
        spacemap: SpaceMap,
        state: CommitState,
        datasets: BTreeMap<u64, DatasetEntry>,
        config: PoolConfig,
    ) -> Pool {
        let txg = state.txg;
        let shared = Arc::new(Shared {
            dev,
            label,
            config: config.clone(),
            spacemap: Mutex::new(spacemap),
            fence: RwLock::new(()),
            commit: Mutex::new(state),
            datasets: RwLock::new(datasets),
            dirty_bytes: AtomicU64::new(0),
            placed_bytes: AtomicU64::new(0),
            pending: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            meta_runs_used: AtomicUsize::new(0),
            meta_runs_peak: AtomicUsize::new(0),
            last_txg: AtomicU64::new(txg),
            sync_signal: (Mutex::new(false), Condvar::new()),
            throttle: (Mutex::new(()), Condvar::new()),
            trim_gate: Mutex::new(()),
            trim_waiters: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            memory_limit: config
                .memory_limit
                .unwrap_or_else(crate::datasets::memory_limit),
            map_meter: Default::default(),
            slack_total: AtomicU64::new(0),
        });
        shared.refresh_slack(&read(&shared.datasets));
        let sync_thread = config.sync_interval.map(|every| {
            let weak = Arc::downgrade(&shared);
            std::thread::Builder::new()
                .name(format!("txg-sync-{}", shared.label.name))
                .spawn(move || sync_loop(weak, every))
                .expect("spawning the txg sync thread")
        });
        Pool {
            shared,
            sync_thread,
        }
    }

    /// Pool name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// Permanent pool identity.
    pub fn guid(&self) -> u64 {
        self.shared.label.guid
    }

    /// Last committed txg.
    pub fn txg(&self) -> u64 {
        self.shared.last_txg.load(Ordering::Acquire)
    }

    /// Commits everything written so far and waits until it is durable; returns the txg.
    pub fn sync(&self) -> Result<u64> {
        self.shared.commit()
    }

    /// Size, space and state.
    pub fn info(&self) -> PoolInfo {
        let sm = lock(&self.shared.spacemap);
        PoolInfo {
            name: self.name().into(),
            guid: self.guid(),
            path: self.shared.dev.describe(),
            version: self.shared.label.version,
            size: self.shared.label.size,
            usable: sm.usable() * SECTOR,
            // Runs held for coming indirect blocks are free space set aside (and free on disk).
            allocated: (sm.allocated() - sm.held_sectors()) * SECTOR,
            deferred: sm.deferred_sectors() * SECTOR,
            free: (sm.free() + sm.held_sectors()) * SECTOR,
            reserved: self.shared.slack_total.load(Ordering::Acquire),
            txg: self.txg(),
            poisoned: self.shared.poisoned.load(Ordering::Acquire),
            datasets: read(&self.shared.datasets).len(),
        }
    }

    /// Bytes that new writes may still fill: free space, plus frees still waiting out their
    /// deferral, less what is already dirty, what volumes' reservations hold, and a slop kept
    /// for metadata.
    pub fn available(&self) -> u64 {
        let sh = &self.shared;
        let deferred = lock(&sh.spacemap).deferred_sectors() * SECTOR;
        (sh.writable_bytes() + deferred)
            .saturating_sub(sh.dirty_bytes.load(Ordering::Acquire))
            .saturating_sub(sh.slack_total.load(Ordering::Acquire))
    }

    /// Commits anything written and closes the pool, reporting any error the final commit
    /// hits. A pool that was only read is left byte-for-byte unchanged.
    pub fn close(mut self) -> Result<()> {
        self.stop_sync_thread();
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned(self.name().into()));
        }
        if self.shared.has_dirty() {
            self.shared.commit()?;
        }
        Ok(())
    }

    fn stop_sync_thread(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.kick();
        if let Some(t) = self.sync_thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Pool {
    /// Dropping a pool commits what was written (as `close` does, minus the error report).
    fn drop(&mut self) {
        self.stop_sync_thread();
        if !self.shared.poisoned.load(Ordering::Acquire) && self.shared.has_dirty() {
            if let Err(e) = self.shared.commit() {
                tracing::error!(pool = self.name(), error = %e, "final commit failed");
            }
        }
    }
}

fn sync_loop(weak: Weak<Shared>, every: Duration) {
    loop {
        let Some(sh) = weak.upgrade() else { return };
        {
            let g = lock(&sh.sync_signal.0);
            let (mut g, _) = sh
                .sync_signal
                .1
                .wait_timeout_while(g, every, |kicked| {
                    !*kicked && !sh.stop.load(Ordering::Acquire)
                })
                .unwrap_or_else(|e| e.into_inner());
            *g = false;
        }
        if sh.stop.load(Ordering::Acquire) {
            return;
        }
        if !sh.poisoned.load(Ordering::Acquire) && sh.has_dirty() {
            if let Err(e) = sh.commit() {
                tracing::error!(pool = sh.name(), error = %e, "background commit failed");
            }
        }
        sh.throttle.1.notify_all();
    }
}
