//! An open pool: creation, import, the dataset directory and its administrative operations.

use crate::blocktree::BlockTree;
use crate::device::{Device, FileDevice};
use crate::error::{Error, Result};
use crate::lock::{lock_exclusive, LockError};
use crate::names::{check_pool_name, split_dataset_name};
use crate::phys::{
    checksum, BlockPtr, DatasetKind, LabelPhys, MetaPhys, UberblockPhys, LABEL_OFFSETS,
    RING_OFFSET, RING_SLOTS, SECTOR,
};
use crate::spacemap::SpaceMap;
use crate::volume::{Volume, VolumeHandle, VolumeState};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Dirty bytes held in memory before writers wait for (or run) a commit.
    pub dirty_max: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            sync_interval: Some(Duration::from_secs(1)),
            dirty_max: 256 << 20,
        }
    }
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
    pub name: String,
    pub creation_txg: u64,
    pub creation_time: u64,
    pub props: BTreeMap<String, String>,
    pub vol: Arc<Volume>,
}

/// What the commit lock protects: the last committed state.
pub(crate) struct CommitState {
    pub txg: u64,
    pub meta: BlockPtr,
    pub next_id: u64,
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
    pub datasets: RwLock<BTreeMap<u64, DatasetEntry>>,
    pub dirty_bytes: AtomicU64,
    /// Set by every change to a volume's dirty map, cleared when a commit takes the maps.
    pub pending: AtomicBool,
    pub poisoned: AtomicBool,
    pub last_txg: AtomicU64,
    pub sync_signal: (Mutex<bool>, Condvar),
    pub throttle: (Mutex<()>, Condvar),
    pub stop: AtomicBool,
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
                "checksum mismatch in pool {}: {} (device sector {}, born in txg {}); the block is damaged; run `tarn pool scrub {}`",
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
        BlockTree::load(st.root, nblocks, |p, buf| {
            self.read_block(p, buf, &|| {
                format!("an indirect block of {}/{}", self.name(), read(&vol.name))
            })
        })
    }

    pub(crate) fn poison(&self, e: &Error) {
        tracing::error!(pool = self.name(), error = %e, "pool stops accepting writes");
        self.poisoned.store(true, Ordering::Release);
    }

    /// Free bytes a writer may still dirty.
    /// Bytes free for new data beyond the slop kept for metadata (frees still deferred count
    /// as free: a writer that needs them commits until they are released).
    pub(crate) fn writable_bytes(&self) -> u64 {
        let sm = lock(&self.spacemap);
        let slop = (sm.usable() * SECTOR / 32).max(1 << 20);
        (sm.free() * SECTOR).saturating_sub(slop)
    }

    pub(crate) fn reserve(&self, bytes: u64) -> Result<()> {
        let avail = self.writable_bytes();
        let dirty = self.dirty_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if dirty > avail {
            self.dirty_bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Err(Error::NoSpace {
                pool: self.name().into(),
                needed: bytes,
                available: avail.saturating_sub(dirty - bytes),
            });
        }
        Ok(())
    }

    pub(crate) fn unreserve(&self, bytes: u64) {
        if bytes > 0 {
            self.dirty_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.throttle.1.notify_all();
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

/// Facts about an open pool.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PoolInfo {
    /// Pool name.
    pub name: String,
    /// Permanent pool identity.
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

/// Facts about one dataset.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DatasetInfo {
    /// Full name, `POOL/a/b`.
    pub name: String,
    /// Permanent ID.
    pub id: u64,
    /// Type.
    #[serde(rename = "type")]
    pub kind: DatasetKind,
    /// Logical size, bytes.
    pub size: u64,
    /// Block size, bytes.
    pub block_size: u32,
    /// Bytes of data and indirect blocks it references (committed state).
    pub used: u64,
    /// Creation txg.
    pub creation_txg: u64,
    /// Creation time, seconds since the Unix epoch.
    pub creation_time: u64,
    /// User properties.
    pub props: BTreeMap<String, String>,
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
    for off in LABEL_OFFSETS {
        let mut b = vec![0u8; SECTOR as usize];
        dev.read_at(&mut b, off)
            .map_err(|e| Error::io(format!("reading the label of {path}"), e))?;
        match LabelPhys::decode(&b, &path) {
            Ok(Some(l)) => return Ok(l),
            Ok(None) => {}
            Err(e @ Error::UnsupportedVersion { .. }) => return Err(e),
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    Err(first_err.unwrap_or(Error::NotAPool { path }))
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
                Ok(meta) => return Self::open_at(dev.clone(), label, *ub, meta, config),
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

    fn load_meta(dev: &dyn Device, label: &LabelPhys, ub: &UberblockPhys) -> Result<MetaPhys> {
        let p = ub.root;
        if p.is_hole() || p.offset() < label.data_offset || p.offset() + p.byte_len() > label.size {
            return Err(Error::Corrupt(format!(
                "uberblock {} points outside the data region",
                ub.txg
            )));
        }
        let mut b = vec![0u8; p.byte_len() as usize];
        dev.read_at(&mut b, p.offset())
            .map_err(|e| Error::io("reading the meta block", e))?;
        if checksum(&b, label.guid) != p.checksum {
            return Err(Error::Corrupt(format!(
                "meta block of txg {} fails its checksum",
                ub.txg
            )));
        }
        let meta = MetaPhys::decode(&b)?;
        if meta.txg != ub.txg {
            return Err(Error::Corrupt(format!(
                "meta block says txg {} but its uberblock says {}",
                meta.txg, ub.txg
            )));
        }
        Ok(meta)
    }

    fn open_at(
        dev: Arc<dyn Device>,
        label: LabelPhys,
        ub: UberblockPhys,
        meta: MetaPhys,
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
        sm.set_deferred(&meta.deferred);
        let mut datasets = BTreeMap::new();
        for d in &meta.datasets {
            let vol = Arc::new(Volume::new(
                d.id,
                d.name.clone(),
                d.block_size,
                d.size,
                d.root,
                d.used_sectors,
            ));
            datasets.insert(
                d.id,
                DatasetEntry {
                    kind: d.kind,
                    name: d.name.clone(),
                    creation_txg: d.creation_txg,
                    creation_time: d.creation_time,
                    props: d.props.iter().cloned().collect(),
                    vol,
                },
            );
        }
        let state = CommitState {
            txg: ub.txg,
            meta: ub.root,
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
            pending: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            last_txg: AtomicU64::new(txg),
            sync_signal: (Mutex::new(false), Condvar::new()),
            throttle: (Mutex::new(()), Condvar::new()),
            stop: AtomicBool::new(false),
        });
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
            allocated: sm.allocated() * SECTOR,
            deferred: sm.deferred_sectors() * SECTOR,
            free: sm.free() * SECTOR,
            txg: self.txg(),
            poisoned: self.shared.poisoned.load(Ordering::Acquire),
            datasets: read(&self.shared.datasets).len(),
        }
    }

    /// Bytes that new writes may still fill: free space, plus frees still waiting out their
    /// deferral, less what is already dirty and a slop kept for metadata.
    pub fn available(&self) -> u64 {
        let sh = &self.shared;
        let deferred = lock(&sh.spacemap).deferred_sectors() * SECTOR;
        (sh.writable_bytes() + deferred).saturating_sub(sh.dirty_bytes.load(Ordering::Acquire))
    }

    fn local<'a>(&self, full: &'a str) -> Result<&'a str> {
        let (pool, rest) = split_dataset_name(full)?;
        if pool != self.name() {
            return Err(Error::NotFound(format!(
                "{full} (this pool is {})",
                self.name()
            )));
        }
        Ok(rest)
    }

    /// Creates a volume `POOL/NAME` of `size` bytes (rounded up to the block size); durable on return.
    pub fn create_volume(
        &self,
        full: &str,
        size: u64,
        block_size: u32,
        props: &BTreeMap<String, String>,
    ) -> Result<DatasetInfo> {
        let rest = self.local(full)?;
        if !block_size.is_power_of_two()
            || block_size < BLOCK_SIZE_RANGE.0
            || block_size > BLOCK_SIZE_RANGE.1
        {
            return Err(Error::InvalidArgument(format!(
                "block size {block_size} is not a power of two from {} to {}",
                BLOCK_SIZE_RANGE.0, BLOCK_SIZE_RANGE.1
            )));
        }
        let size = round_size(size, block_size)?;
        props.iter().try_for_each(|(k, v)| check_prop(k, v))?;
        let sh = &self.shared;
        sh.check_writable()?;
        let mut cs = lock(&sh.commit);
        {
            let mut ds = write(&sh.datasets);
            if ds.values().any(|d| d.name == rest) {
                return Err(Error::AlreadyExists(full.into()));
            }
            let id = cs.next_id;
            cs.next_id += 1;
            let vol = Arc::new(Volume::new(
                id,
                rest.into(),
                block_size,
                size,
                BlockPtr::HOLE,
                0,
            ));
            *lock(&vol.state) = VolumeState::new_empty(size, block_size);
            ds.insert(
                id,
                DatasetEntry {
                    kind: DatasetKind::Volume,
                    name: rest.into(),
                    creation_txg: cs.txg + 1,
                    creation_time: now_secs(),
                    props: props.clone(),
                    vol,
                },
            );
        }
        sh.commit_locked(&mut cs)?;
        drop(cs);
        self.dataset(full)
    }

    /// Destroys a dataset and frees its blocks; durable on return.
    pub fn destroy(&self, full: &str) -> Result<()> {
        let rest = self.local(full)?;
        let sh = &self.shared;
        sh.check_writable()?;
        let mut cs = lock(&sh.commit);
        let txg = cs.txg + 1;
        let vol = sh.find(rest).ok_or_else(|| Error::NotFound(full.into()))?;
        {
            let mut st = lock(&vol.state);
            let tree = match st.tree.take() {
                Some(t) => t,
                None => sh.load_tree(&vol, &st)?,
            };
            let mut sm = lock(&sh.spacemap);
            tree.for_each_ptr(|_, _, p| sm.free_deferred(txg, p.sector, u64::from(p.sectors)));
            sh.unreserve(st.drop_dirty());
            st.destroyed = true;
        }
        write(&sh.datasets).remove(&vol.id);
        sh.commit_locked(&mut cs)?;
        Ok(())
    }

    /// Changes a volume's size (rounded up to its block size); shrinking discards the tail.
    pub fn resize_volume(&self, full: &str, size: u64) -> Result<DatasetInfo> {
        let rest = self.local(full)?;
        let sh = &self.shared;
        sh.check_writable()?;
        let mut cs = lock(&sh.commit);
        let txg = cs.txg + 1;
        let vol = sh.find(rest).ok_or_else(|| Error::NotFound(full.into()))?;
        let size = round_size(size, vol.block_size)?;
        {
            let mut st = lock(&vol.state);
            if st.tree.is_none() {
                st.tree = Some(sh.load_tree(&vol, &st)?);
            }
            let nblocks = (size / u64::from(vol.block_size)) as usize;
            let mut sm = lock(&sh.spacemap);
            let mut freed = 0u64;
            if let Some(t) = st.tree.as_mut() {
                t.resize(nblocks, |p| {
                    freed += u64::from(p.sectors);
                    sm.free_deferred(txg, p.sector, u64::from(p.sectors));
                });
            }
            st.used_sectors -= freed;
            let released = st.truncate_dirty(nblocks as u64, vol.block_size);
            sh.unreserve(released);
            st.size = size;
        }
        sh.commit_locked(&mut cs)?;
        drop(cs);
        self.dataset(full)
    }

    /// Renames a dataset within the pool; its ID (and so NFS handles) stays. Durable on return.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        let old = self.local(from)?;
        let new = self.local(to)?;
        let sh = &self.shared;
        sh.check_writable()?;
        let mut cs = lock(&sh.commit);
        {
            let mut ds = write(&sh.datasets);
            if ds.values().any(|d| d.name == new) {
                return Err(Error::AlreadyExists(to.into()));
            }
            let d = ds
                .values_mut()
                .find(|d| d.name == old)
                .ok_or_else(|| Error::NotFound(from.into()))?;
            d.name = new.to_string();
            *write(&d.vol.name) = new.to_string();
        }
        sh.commit_locked(&mut cs)?;
        Ok(())
    }

    /// Sets user properties on a dataset (an empty value removes the key); durable on return.
    pub fn set_props(&self, full: &str, props: &[(String, String)]) -> Result<()> {
        let rest = self.local(full)?;
        props.iter().try_for_each(|(k, v)| check_prop(k, v))?;
        let sh = &self.shared;
        sh.check_writable()?;
        let mut cs = lock(&sh.commit);
        {
            let mut ds = write(&sh.datasets);
            let d = ds
                .values_mut()
                .find(|d| d.name == rest)
                .ok_or_else(|| Error::NotFound(full.into()))?;
            for (k, v) in props {
                if v.is_empty() {
                    d.props.remove(k);
                } else {
                    d.props.insert(k.clone(), v.clone());
                }
            }
        }
        sh.commit_locked(&mut cs)?;
        Ok(())
    }

    /// One dataset's facts.
    pub fn dataset(&self, full: &str) -> Result<DatasetInfo> {
        let rest = self.local(full)?;
        let ds = read(&self.shared.datasets);
        let d = ds
            .values()
            .find(|d| d.name == rest)
            .ok_or_else(|| Error::NotFound(full.into()))?;
        Ok(self.describe(d))
    }

    fn describe(&self, d: &DatasetEntry) -> DatasetInfo {
        let st = lock(&d.vol.state);
        DatasetInfo {
            name: format!("{}/{}", self.name(), d.name),
            id: d.vol.id,
            kind: d.kind,
            size: st.size,
            block_size: d.vol.block_size,
            used: st.used_sectors * SECTOR,
            creation_txg: d.creation_txg,
            creation_time: d.creation_time,
            props: d.props.clone(),
        }
    }

    /// Every dataset, by name.
    pub fn datasets(&self) -> Vec<DatasetInfo> {
        let ds = read(&self.shared.datasets);
        let mut v: Vec<DatasetInfo> = ds.values().map(|d| self.describe(d)).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Opens a volume for I/O.
    pub fn volume(&self, full: &str) -> Result<VolumeHandle> {
        let rest = self.local(full)?;
        let vol = self
            .shared
            .find(rest)
            .ok_or_else(|| Error::NotFound(full.into()))?;
        Ok(VolumeHandle::new(self.shared.clone(), vol))
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

fn round_size(size: u64, block_size: u32) -> Result<u64> {
    if size == 0 {
        return Err(Error::InvalidArgument(
            "a volume size must be greater than zero".into(),
        ));
    }
    let bs = u64::from(block_size);
    let blocks = size.div_ceil(bs);
    if blocks > (1 << 40) {
        return Err(Error::InvalidArgument(format!(
            "volume size {size} is too large"
        )));
    }
    Ok(blocks * bs)
}

/// Checks a user property: the key's characters and length, the value's length.
fn check_prop(k: &str, v: &str) -> Result<()> {
    if k.is_empty()
        || k.len() > 255
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
    {
        return Err(Error::InvalidArgument(format!(
            "property name '{k}' must be 1-255 letters, digits, '_', '.', ':' or '-'"
        )));
    }
    if v.len() > MAX_PROP_VALUE {
        return Err(Error::InvalidArgument(format!(
            "property {k}: value of {} bytes is longer than {MAX_PROP_VALUE}",
            v.len()
        )));
    }
    Ok(())
}
