//! A pool seen as a tree of files: the layer NFS serves (and a FUSE mount can reuse). No NFS
//! types here.
//!
//! - The pool's root is a directory. A dataset name `POOL/a/b/vm1` makes directories `a` and
//!   `a/b` (implicit: they exist while some dataset lies below them) and a regular file `vm1`.
//!   `mkdir` makes an empty directory that lives in memory until a volume is created below it
//!   (it does not survive a restart on its own).
//! - A volume is a regular file whose size is the volume size and whose bytes are its raw
//!   image; holes read as zeroes without touching the device. Creating a file creates a volume
//!   (one block of zeroes: pool volumes are whole blocks, never empty); writes past the end grow
//!   it; setting the size resizes it; removing destroys it; renaming renames it. File sizes are
//!   whole blocks of the volume (an image whose size is not a multiple of the block size is
//!   padded with zeroes, as `tarn vol import` pads it).
//! - Snapshots (`POOL/a/vm1@snap`, once the pool has them) are read-only files under a
//!   directory `.snapshot` inside the directory that holds the volume: `a/.snapshot/vm1@snap`.
//!   `.snapshot` is listed only where there are snapshots, but can be looked up everywhere.
//!
//! File IDs are stable across restarts: a volume's (or snapshot's) ID is its permanent dataset
//! ID (below 2^62); a directory's is `1 << 63` with a 62-bit hash (FNV-1a) of its path in the
//! low bits (the root's path is empty), and a `.snapshot` directory's is `3 << 62` with the
//! hash of the directory it sits in. A directory renamed while the view lives keeps its ID
//! (and so do those below it): clients hold it as a file handle. That is kept in memory only:
//! after a restart a renamed directory's ID is its new path's hash again.
//!
//! Durability: [`FileView::write`] leaves data dirty; [`FileView::sync`] makes every write that
//! returned before it durable, sharing one pool commit among concurrent callers (group commit).
//! Namespace changes (create, remove, rename, resize) are durable when they return. A file's
//! modification time is kept in the volume's user property [`MTIME_PROP`] (nanoseconds since
//! the epoch), set before each data change and made durable by whichever commit makes the
//! data durable (a crash may keep a newer time than data, never older); a file never written
//! through a view shows its creation time.

use pool::{DatasetKind, ErrorKind, Pool, VolumeHandle};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Tag bit of directory file IDs.
pub const DIR_TAG: u64 = 1 << 63;
/// Tag bits of `.snapshot` directory file IDs.
pub const SNAPDIR_TAG: u64 = 3 << 62;
const HASH_MASK: u64 = (1 << 62) - 1;
/// The name of the snapshot directory.
pub const SNAPSHOT_DIR: &str = ".snapshot";
/// Longest name component.
pub const MAX_NAME_LEN: usize = 255;

/// Most empty directories a view holds (in memory: one is ~1 KiB with its ID and node, and
/// every READDIR scans them).
pub const MAX_EMPTY_DIRS: usize = 65_536;

/// Errors from the file view.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The pool failed or refused the request.
    #[error(transparent)]
    Pool(#[from] pool::Error),
    /// No such file or directory.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    /// The ID no longer names anything (destroyed, or never existed).
    #[error("file ID {0:#x} names nothing in this pool")]
    Stale(u64),
    /// A directory was expected.
    #[error("{0} is not a directory")]
    NotDir(String),
    /// A regular file was expected.
    #[error("{0} is a directory")]
    IsDir(String),
    /// The name is taken.
    #[error("{0} already exists")]
    Exists(String),
    /// The directory has entries.
    #[error("directory {0} is not empty")]
    NotEmpty(String),
    /// Writes are refused (read-only export, or a snapshot).
    #[error("{0} is read-only")]
    ReadOnly(String),
    /// A name that cannot be a dataset name component.
    #[error("invalid name '{0}': use letters, digits, '_', '.', ':', '-'")]
    BadName(String),
    /// A name longer than [`MAX_NAME_LEN`].
    #[error("name too long: {0}")]
    NameTooLong(String),
    /// A malformed request.
    #[error("{0}")]
    Invalid(String),
    /// Past a limit of the view (empty directories, held in memory).
    #[error("{0}")]
    NoSpace(String),
}

impl ViewError {
    /// The broad class, as the pool classifies errors.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ViewError::Pool(e) => e.kind(),
            ViewError::NotFound(_) | ViewError::Stale(_) => ErrorKind::NotFound,
            ViewError::Exists(_) => ErrorKind::AlreadyExists,
            ViewError::ReadOnly(_) => ErrorKind::ReadOnly,
            ViewError::NotEmpty(_) => ErrorKind::Busy,
            ViewError::NoSpace(_) => ErrorKind::NoSpace,
            ViewError::NotDir(_)
            | ViewError::IsDir(_)
            | ViewError::BadName(_)
            | ViewError::NameTooLong(_)
            | ViewError::Invalid(_) => ErrorKind::InvalidInput,
        }
    }
}

/// Result alias for the view.
pub type Result<T, E = ViewError> = std::result::Result<T, E>;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory (the root, a dataset name prefix, or a `mkdir` one).
    Dir,
    /// A `.snapshot` directory.
    SnapshotDir,
    /// A volume's image.
    File,
    /// A snapshot's image (read-only).
    SnapshotFile,
}

/// A node's attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Stable file ID.
    pub id: u64,
    /// What it is.
    pub kind: NodeKind,
    /// Size in bytes (files: the volume size; directories: 4096).
    pub size: u64,
    /// Bytes the pool holds for it.
    pub used: u64,
    /// Block size (files) or 4096.
    pub block_size: u32,
    /// Whether writes are refused.
    pub read_only: bool,
    /// Last data change, nanoseconds since the Unix epoch.
    pub mtime_ns: u64,
    /// Last attribute change, nanoseconds since the Unix epoch.
    pub ctime_ns: u64,
}

impl Attr {
    /// Whether this is a directory of either kind.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir | NodeKind::SnapshotDir)
    }
}

/// One directory entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Name within the directory.
    pub name: String,
    /// Its attributes.
    pub attr: Attr,
}

/// Space figures for statfs/FSSTAT.
#[derive(Debug, Clone, Copy)]
pub struct SpaceInfo {
    /// Usable bytes of the pool.
    pub total: u64,
    /// Free bytes.
    pub free: u64,
    /// Bytes new writes may fill.
    pub available: u64,
    /// Datasets now.
    pub datasets: u64,
}

/// How the view behaves.
#[derive(Debug, Clone)]
pub struct ViewOptions {
    /// Refuse every change.
    pub read_only: bool,
    /// Block size of volumes created through the view.
    pub block_size: u32,
}

impl Default for ViewOptions {
    fn default() -> Self {
        ViewOptions {
            read_only: false,
            block_size: zvol::DEFAULT_BLOCK_SIZE,
        }
    }
}

/// FNV-1a, 64-bit: stable across builds and restarts.
pub(crate) fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The file ID of the directory at `path` (relative to the pool root, no leading '/').
pub fn dir_id(path: &str) -> u64 {
    if path.is_empty() {
        DIR_TAG
    } else {
        // Never the root's ID.
        DIR_TAG | (fnv1a(path) & HASH_MASK).max(1)
    }
}

/// The file ID of the `.snapshot` directory inside the directory at `path`.
pub fn snapdir_id(path: &str) -> u64 {
    SNAPDIR_TAG | (fnv1a(path) & HASH_MASK)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What an ID resolves to.
#[derive(Debug, Clone)]
enum Node {
    Dir(String),
    SnapDir(String),
    /// A dataset: its local name (below the pool name).
    Data(String),
}

/// Group commit: callers take a ticket after their writes; one leader commits for everyone
/// whose ticket was issued before its commit began.
#[derive(Default)]
struct GroupState {
    issued: u64,
    done: u64,
    running: bool,
    /// The last failed batch: every ticket up to this one gets the error.
    failed_upto: u64,
    error: Option<String>,
}

/// The user property holding a file's modification time (nanoseconds since the epoch).
pub const MTIME_PROP: &str = "tarn.nfs:mtime";

/// A pool as files and directories.
pub struct FileView {
    pool: Arc<Pool>,
    opts: ViewOptions,
    /// Volume handles by dataset ID.
    handles: RwLock<HashMap<u64, VolumeHandle>>,
    /// Directory and `.snapshot` paths by ID (filled on the way; rebuilt on a miss).
    dirs: RwLock<HashMap<u64, Node>>,
    /// Directories made with `mkdir` that hold no dataset yet.
    empty_dirs: Mutex<BTreeSet<String>>,
    /// Directory IDs that are not their path's hash (see [`DirIds`]).
    dir_ids: RwLock<DirIds>,
    /// When the namespace last changed (directory mtime).
    ns_time: Mutex<u64>,
    group: Mutex<GroupState>,
    group_cv: Condvar,
    /// Serializes namespace changes so that checks and changes do not interleave.
    ns_lock: Mutex<()>,
}

/// Directory IDs that are not their path's hash, kept while the view lives: a renamed
/// directory keeps the ID it had (clients hold it as a file handle, and its file ID must not
/// change), and a directory later made at a path whose hash such a one holds gets another.
#[derive(Default)]
struct DirIds {
    by_path: HashMap<String, u64>,
    by_id: HashMap<u64, String>,
}

impl DirIds {
    fn set(&mut self, path: String, id: u64) {
        if let Some(old) = self.by_id.insert(id, path.clone()) {
            if old != path {
                self.by_path.remove(&old);
            }
        }
        self.by_path.insert(path, id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
fn rlock<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}
fn wlock<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

fn is_snapshot_name(local: &str) -> bool {
    local.contains('@')
}

impl FileView {
    /// The ID of the directory at `path`: its path's hash ([`dir_id`]), unless it was renamed
    /// there (it keeps its ID) or a renamed one holds that hash (it gets another, kept).
    fn dir_id_of(&self, path: &str) -> u64 {
        if let Some(&id) = rlock(&self.dir_ids).by_path.get(path) {
            return id;
        }
        let hashed = dir_id(path);
        if !rlock(&self.dir_ids).by_id.contains_key(&hashed) {
            return hashed;
        }
        let mut ids = wlock(&self.dir_ids);
        if let Some(&id) = ids.by_path.get(path) {
            return id;
        }
        let id = (1u64..)
            .map(|n| DIR_TAG | (fnv1a(&format!("{path}\0{n}")) & HASH_MASK).max(1))
            .find(|id| !ids.by_id.contains_key(id))
            .unwrap_or(hashed);
        ids.set(path.to_string(), id);
        id
    }

    /// The ID of the `.snapshot` directory inside the directory at `path`: its directory's
    /// ID with the other tag.
    fn snapdir_id_of(&self, path: &str) -> u64 {
        let id = self.dir_id_of(path);
        if id == dir_id(path) {
            snapdir_id(path)
        } else {
            SNAPDIR_TAG | (id & HASH_MASK)
        }
    }

    /// Moves the IDs of directory `from` and those below it to their new paths under `to`.
    fn move_dir_ids(&self, from: &str, to: &str, below: &BTreeSet<String>) {
        let ids: Vec<(String, u64)> = below
            .iter()
            .map(|d| (format!("{to}{}", &d[from.len()..]), self.dir_id_of(d)))
            .collect();
        let mut map = wlock(&self.dir_ids);
        for (path, id) in ids {
            map.set(path, id);
        }
        drop(map);
        // Cached paths by ID are stale now.
        wlock(&self.dirs).clear();
    }

    /// The largest file this view lets a WRITE or SETATTR make: a volume in its block size that
    /// the host can serve ([`pool::max_volume_size`]), and no larger than the pool itself. (A
    /// file the pool could never fill is only a block map in memory: one WRITE of a byte at
    /// the host's limit used to take half of this process's memory budget, leaving none for
    /// any other file to grow.)
    pub fn max_file_size(&self) -> u64 {
        pool::max_volume_size(self.opts.block_size).min(self.pool.info().size)
    }

    /// Refuses to grow `name` to `end` bytes past [`FileView::max_file_size`].
    fn check_growth(&self, name: &str, end: u64) -> Result<()> {
        let max = self.max_file_size();
        if end > max {
            return Err(pool::Error::TooLarge(format!(
                "{name} cannot grow to {end} bytes over NFS: at most {max} (the pool's size, or \
                 what this host can map)"
            ))
            .into());
        }
        Ok(())
    }

    /// A view of `pool`.
    pub fn new(pool: Arc<Pool>, opts: ViewOptions) -> FileView {
        let mut dirs = HashMap::new();
        dirs.insert(DIR_TAG, Node::Dir(String::new()));
        FileView {
            pool,
            opts,
            handles: RwLock::new(HashMap::new()),
            dirs: RwLock::new(dirs),
            empty_dirs: Mutex::new(BTreeSet::new()),
            dir_ids: RwLock::new(DirIds::default()),
            ns_time: Mutex::new(now_ns()),
            group: Mutex::new(GroupState::default()),
            group_cv: Condvar::new(),
            ns_lock: Mutex::new(()),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Whether the view refuses changes.
    pub fn read_only(&self) -> bool {
        self.opts.read_only
    }

    /// The root directory's ID.
    pub fn root(&self) -> u64 {
        DIR_TAG
    }

    fn full(&self, local: &str) -> String {
        format!("{}/{local}", self.pool.name())
    }

    fn local_of<'a>(&self, full: &'a str) -> &'a str {
        full.split_once('/').map_or("", |(_, r)| r)
    }

    /// Local names of every dataset (volumes and snapshots), with IDs and kinds.
    fn all(&self) -> Vec<(String, u64, DatasetKind)> {
        self.pool
            .names()
            .into_iter()
            .map(|(name, id, kind)| (self.local_of(&name).to_string(), id, kind))
            .collect()
    }

    fn check_writable(&self, what: &str) -> Result<()> {
        if self.opts.read_only {
            return Err(ViewError::ReadOnly(format!("{what} (read-only export)")));
        }
        Ok(())
    }

    fn touch_ns(&self) {
        *lock(&self.ns_time) = now_ns();
    }

    /// Resolves an ID.
    fn node(&self, id: u64) -> Result<Node> {
        if id & DIR_TAG != 0 {
            if let Some(n) = rlock(&self.dirs).get(&id) {
                let n = n.clone();
                // A cached directory may have emptied out since.
                if let Node::Dir(p) = &n {
                    if self.dir_exists(p) {
                        return Ok(n);
                    }
                    return Err(ViewError::Stale(id));
                }
                return Ok(n);
            }
            // Rebuild: every directory any dataset implies.
            let mut paths: BTreeSet<String> = BTreeSet::new();
            paths.insert(String::new());
            for (name, _, _) in self.all() {
                let mut p = name.as_str();
                loop {
                    p = parent_of(p);
                    if !paths.insert(p.to_string()) || p.is_empty() {
                        break;
                    }
                }
            }
            paths.extend(lock(&self.empty_dirs).iter().cloned());
            let mut dirs = wlock(&self.dirs);
            let mut found = None;
            for p in paths {
                let d = self.dir_id_of(&p);
                let s = self.snapdir_id_of(&p);
                if d == id {
                    found = Some(Node::Dir(p.clone()));
                } else if s == id {
                    found = Some(Node::SnapDir(p.clone()));
                }
                dirs.insert(d, Node::Dir(p.clone()));
                dirs.insert(s, Node::SnapDir(p));
            }
            return found.ok_or(ViewError::Stale(id));
        }
        let h = self.handle(id)?;
        let full = h.name();
        Ok(Node::Data(self.local_of(&full).to_string()))
    }

    /// The volume handle for a dataset ID.
    fn handle(&self, id: u64) -> Result<VolumeHandle> {
        if let Some(h) = rlock(&self.handles).get(&id) {
            return Ok(h.clone());
        }
        let name = self
            .pool
            .names()
            .into_iter()
            .find(|d| d.1 == id)
            .map(|d| d.0)
            .ok_or(ViewError::Stale(id))?;
        let h = self.pool.volume(&name)?;
        wlock(&self.handles).insert(id, h.clone());
        Ok(h)
    }

    /// Records a data change of file `id` now, before the change: the commit that makes the
    /// change durable makes the time durable too.
    fn touch(&self, id: u64) {
        let prop = [(MTIME_PROP.to_string(), now_ns().to_string())];
        if let Err(e) = self.pool.stage_props(id, &prop) {
            tracing::debug!(id, error = %e, "a file's modification time was not set");
        }
    }

    fn forget(&self, id: u64) {
        wlock(&self.handles).remove(&id);
    }

    /// Whether a directory path exists (implied by a dataset, made by mkdir, or the root).
    fn dir_exists(&self, path: &str) -> bool {
        if path.is_empty() || lock(&self.empty_dirs).contains(path) {
            return true;
        }
        let prefix = format!("{path}/");
        self.all().iter().any(|(n, _, _)| n.starts_with(&prefix))
    }

    fn dir_attr(&self, id: u64, kind: NodeKind) -> Attr {
        let t = *lock(&self.ns_time);
        Attr {
            id,
            kind,
            size: 4096,
            used: 0,
            block_size: 4096,
            read_only: self.opts.read_only || kind == NodeKind::SnapshotDir,
            mtime_ns: t,
            ctime_ns: t,
        }
    }

    /// The name of file `id`'s volume (held by `h`), checked against the pool: a handle to a
    /// volume destroyed meanwhile keeps its last name, which may be another volume's now (a
    /// RENAME over it): that is Stale, not the other file.
    fn live_name(&self, id: u64, h: &VolumeHandle) -> Result<String> {
        self.live_info(id, h).map(|info| info.name)
    }

    /// [`FileView::live_name`], with the rest of what the pool says of the volume.
    fn live_info(&self, id: u64, h: &VolumeHandle) -> Result<pool::DatasetInfo> {
        match self.pool.dataset(&h.name()) {
            Ok(info) if info.id == h.id() => Ok(info),
            Ok(_) => Err(ViewError::Stale(id)),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(ViewError::Stale(id)),
            Err(e) => Err(e.into()),
        }
    }

    fn file_attr(&self, id: u64) -> Result<Attr> {
        let h = self.handle(id)?;
        let info = self.live_info(id, &h)?;
        let snap = is_snapshot_name(self.local_of(&info.name))
            || matches!(info.kind, DatasetKind::Filesystem);
        let created = info.creation_time.saturating_mul(1_000_000_000);
        let mtime = info
            .props
            .get(MTIME_PROP)
            .and_then(|v| v.parse().ok())
            .unwrap_or(created);
        Ok(Attr {
            id,
            kind: if snap {
                NodeKind::SnapshotFile
            } else {
                NodeKind::File
            },
            size: info.size,
            used: info.used,
            block_size: info.block_size,
            read_only: self.opts.read_only || snap,
            mtime_ns: mtime,
            ctime_ns: mtime,
        })
    }

    /// A node's attributes.
    pub fn getattr(&self, id: u64) -> Result<Attr> {
        match self.node(id)? {
            Node::Dir(_) => Ok(self.dir_attr(id, NodeKind::Dir)),
            Node::SnapDir(_) => Ok(self.dir_attr(id, NodeKind::SnapshotDir)),
            Node::Data(_) => self.file_attr(id),
        }
    }

    fn dir_path(&self, id: u64) -> Result<String> {
        match self.node(id)? {
            Node::Dir(p) => Ok(p),
            Node::SnapDir(p) => Err(ViewError::Invalid(format!(
                "{} is a snapshot directory",
                join(&p, SNAPSHOT_DIR)
            ))),
            Node::Data(n) => Err(ViewError::NotDir(n)),
        }
    }

    fn check_name(name: &str) -> Result<()> {
        if name.len() > MAX_NAME_LEN {
            return Err(ViewError::NameTooLong(name.into()));
        }
        if name.is_empty()
            || name == "."
            || name == ".."
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
        {
            return Err(ViewError::BadName(name.into()));
        }
        // Every directory has one already: a volume renamed or created over it could no
        // longer be looked up, renamed back or removed.
        if name == SNAPSHOT_DIR {
            return Err(ViewError::Exists(name.into()));
        }
        Ok(())
    }

    /// Looks `name` up in directory `dir`.
    pub fn lookup(&self, dir: u64, name: &str) -> Result<u64> {
        // One component: "a/x" would otherwise name a volume two levels down.
        if name.contains(['/', '\0']) {
            return Err(ViewError::NotFound(name.into()));
        }
        match self.node(dir)? {
            Node::Data(n) => Err(ViewError::NotDir(n)),
            Node::SnapDir(p) => {
                if name == "." {
                    return Ok(dir);
                }
                if name == ".." {
                    return Ok(self.dir_id_of(&p));
                }
                let local = join(&p, name);
                if !is_snapshot_name(name) {
                    return Err(ViewError::NotFound(local));
                }
                self.all()
                    .into_iter()
                    .find(|(n, _, _)| *n == local)
                    .map(|(_, id, _)| id)
                    .ok_or(ViewError::NotFound(local))
            }
            Node::Dir(p) => {
                if name == "." {
                    return Ok(dir);
                }
                if name == ".." {
                    return Ok(self.dir_id_of(parent_of(&p)));
                }
                if name == SNAPSHOT_DIR {
                    let id = self.snapdir_id_of(&p);
                    wlock(&self.dirs).insert(id, Node::SnapDir(p));
                    return Ok(id);
                }
                let local = join(&p, name);
                if is_snapshot_name(name) {
                    return Err(ViewError::NotFound(local));
                }
                let prefix = format!("{local}/");
                let mut is_dir = false;
                for (n, id, _) in self.all() {
                    if n == local {
                        return Ok(id);
                    }
                    is_dir |= n.starts_with(&prefix);
                }
                if is_dir || lock(&self.empty_dirs).contains(&local) {
                    let id = self.dir_id_of(&local);
                    wlock(&self.dirs).insert(id, Node::Dir(local));
                    return Ok(id);
                }
                Err(ViewError::NotFound(local))
            }
        }
    }

    /// Resolves a path of names from the root (`a/b/vm1`).
    pub fn lookup_path(&self, path: &str) -> Result<u64> {
        let mut id = self.root();
        for c in path.split('/').filter(|c| !c.is_empty()) {
            id = self.lookup(id, c)?;
        }
        Ok(id)
    }

    /// A directory's entries, sorted by name (no `.` or `..`).
    pub fn readdir(&self, dir: u64) -> Result<Vec<Entry>> {
        let all = self.all();
        let mut out: BTreeMap<String, Attr> = BTreeMap::new();
        match self.node(dir)? {
            Node::Data(n) => return Err(ViewError::NotDir(n)),
            Node::SnapDir(p) => {
                let prefix = if p.is_empty() {
                    String::new()
                } else {
                    format!("{p}/")
                };
                for (n, id, _) in &all {
                    let Some(rest) = n.strip_prefix(&prefix) else {
                        continue;
                    };
                    if is_snapshot_name(rest) && !rest.contains('/') {
                        if let Ok(a) = self.file_attr(*id) {
                            out.insert(rest.to_string(), a);
                        }
                    }
                }
            }
            Node::Dir(p) => {
                let prefix = if p.is_empty() {
                    String::new()
                } else {
                    format!("{p}/")
                };
                let mut has_snaps = false;
                let mut dirs_seen: BTreeSet<String> = BTreeSet::new();
                for (n, id, _) in &all {
                    let Some(rest) = n.strip_prefix(&prefix) else {
                        continue;
                    };
                    match rest.split_once('/') {
                        None if is_snapshot_name(rest) => has_snaps = true,
                        None => {
                            if let Ok(a) = self.file_attr(*id) {
                                out.insert(rest.to_string(), a);
                            }
                        }
                        Some((d, _)) => {
                            dirs_seen.insert(d.to_string());
                        }
                    }
                }
                for d in lock(&self.empty_dirs).iter() {
                    if let Some(rest) = d.strip_prefix(&prefix) {
                        if !rest.contains('/') && !rest.is_empty() {
                            dirs_seen.insert(rest.to_string());
                        }
                    } else if p.is_empty() && !d.contains('/') {
                        dirs_seen.insert(d.clone());
                    }
                }
                let mut dirs = wlock(&self.dirs);
                for d in dirs_seen {
                    // A volume and a directory of one name: the volume is shown.
                    if out.contains_key(&d) {
                        continue;
                    }
                    let path = join(&p, &d);
                    let id = self.dir_id_of(&path);
                    dirs.insert(id, Node::Dir(path));
                    out.insert(d, self.dir_attr(id, NodeKind::Dir));
                }
                if has_snaps {
                    let id = self.snapdir_id_of(&p);
                    dirs.insert(id, Node::SnapDir(p.clone()));
                    out.insert(
                        SNAPSHOT_DIR.to_string(),
                        self.dir_attr(id, NodeKind::SnapshotDir),
                    );
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|(name, attr)| Entry { name, attr })
            .collect())
    }

    fn file_handle(&self, id: u64) -> Result<(VolumeHandle, bool)> {
        match self.node(id)? {
            Node::Dir(p) | Node::SnapDir(p) => {
                Err(ViewError::IsDir(if p.is_empty() { "/".into() } else { p }))
            }
            Node::Data(n) => Ok((self.handle(id)?, is_snapshot_name(&n))),
        }
    }

    /// Reads up to `len` bytes at `offset`; returns the bytes and whether they reach the end.
    /// Holes are not read from the device.
    pub fn read(&self, id: u64, offset: u64, len: u32) -> Result<(Vec<u8>, bool)> {
        self.read_into(id, offset, len, Vec::new())
    }

    /// [`FileView::read`] into `buf`'s allocation. Whatever `buf` held (another file's bytes,
    /// say) is overwritten: data ranges are read, holes zeroed, the length set.
    pub fn read_into(
        &self,
        id: u64,
        offset: u64,
        len: u32,
        mut buf: Vec<u8>,
    ) -> Result<(Vec<u8>, bool)> {
        let (h, _) = self.file_handle(id)?;
        let size = h.size();
        if offset >= size {
            buf.clear();
            return Ok((buf, true));
        }
        let n = u64::from(len).min(size - offset);
        let n_usize = usize::try_from(n).unwrap_or(usize::MAX);
        // Only bytes beyond the old length are zero-filled here; the rest are overwritten below.
        buf.truncate(n_usize);
        buf.resize(n_usize, 0);
        let mut filled = 0usize;
        for (start, rlen) in h.data_ranges(offset, n)? {
            let at = usize::try_from(start - offset).unwrap_or(usize::MAX);
            let l = usize::try_from(rlen).unwrap_or(usize::MAX);
            if at > filled {
                buf[filled..at].fill(0);
            }
            h.read_at(start, &mut buf[at..at + l])?;
            filled = filled.max(at + l);
        }
        buf[filled..].fill(0);
        Ok((buf, offset + n >= size))
    }

    /// Writes `data` at `offset`, growing the volume if the write ends past it. The data, and
    /// the growth, are durable after the next [`FileView::sync`] (or the pool's own commit).
    pub fn write(&self, id: u64, offset: u64, data: &[u8]) -> Result<Attr> {
        let (h, snap) = self.file_handle(id)?;
        self.check_writable(&h.name())?;
        if snap {
            return Err(ViewError::ReadOnly(h.name()));
        }
        // A WRITE of no bytes changes nothing, not even the size (RFC 1813).
        if data.is_empty() {
            return self.file_attr(id);
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| ViewError::Invalid("write past 2^64".into()))?;
        if end > h.size() {
            self.check_growth(&h.name(), end)?;
            let _g = lock(&self.ns_lock);
            if end > h.size() {
                let name = self.live_name(id, &h)?;
                self.pool.grow_volume(&name, end)?;
            }
        }
        self.touch(id);
        h.write_at(offset, data)?;
        self.file_attr(id)
    }

    /// Makes every write that returned before this call durable. Concurrent callers share one
    /// pool commit.
    pub fn sync(&self) -> Result<()> {
        let mut g = lock(&self.group);
        g.issued += 1;
        let ticket = g.issued;
        loop {
            if g.done >= ticket {
                if g.failed_upto >= ticket {
                    let msg = g.error.clone().unwrap_or_default();
                    return Err(ViewError::Pool(pool::Error::io(
                        "committing writes",
                        std::io::Error::other(msg),
                    )));
                }
                return Ok(());
            }
            if !g.running {
                g.running = true;
                let target = g.issued;
                drop(g);
                let r = self.pool.sync();
                g = lock(&self.group);
                g.running = false;
                g.done = target;
                if let Err(e) = r {
                    g.failed_upto = target;
                    g.error = Some(e.to_string());
                }
                self.group_cv.notify_all();
                continue;
            }
            g = self.group_cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Creates a file (a volume) `name` in `dir`, of `size` bytes (at least one block);
    /// durable on return. Fails with [`ViewError::Exists`] if the name is taken.
    pub fn create(&self, dir: u64, name: &str, size: u64) -> Result<Attr> {
        self.create_with(dir, name, size, &BTreeMap::new())
    }

    /// [`FileView::create`] with initial user properties.
    pub fn create_with(
        &self,
        dir: u64,
        name: &str,
        size: u64,
        props: &BTreeMap<String, String>,
    ) -> Result<Attr> {
        let p = self.dir_path(dir)?;
        Self::check_name(name)?;
        let local = join(&p, name);
        self.check_writable(&local)?;
        let _g = lock(&self.ns_lock);
        if self.dir_exists(&local) {
            return Err(ViewError::Exists(local));
        }
        let full = self.full(&local);
        let size = size.max(u64::from(self.opts.block_size));
        let info = self
            .pool
            .create_volume(&full, size, self.opts.block_size, props)
            .map_err(|e| match e.kind() {
                ErrorKind::AlreadyExists => ViewError::Exists(local.clone()),
                _ => e.into(),
            })?;
        self.touch_ns();
        // The directory it sits in now exists through it.
        let mut ed = lock(&self.empty_dirs);
        let mut q = p.as_str();
        while !q.is_empty() {
            ed.remove(q);
            q = parent_of(q);
        }
        drop(ed);
        self.file_attr(info.id)
    }

    /// A user property of a file's dataset.
    pub fn prop(&self, id: u64, key: &str) -> Result<Option<String>> {
        let h = self.handle(id)?;
        Ok(self.pool.dataset(&h.name())?.props.get(key).cloned())
    }

    /// Makes an empty directory (in memory until a volume is created below it).
    pub fn mkdir(&self, dir: u64, name: &str) -> Result<Attr> {
        let p = self.dir_path(dir)?;
        Self::check_name(name)?;
        let local = join(&p, name);
        self.check_writable(&local)?;
        let _g = lock(&self.ns_lock);
        if self.dir_exists(&local) || self.all().iter().any(|(n, _, _)| *n == local) {
            return Err(ViewError::Exists(local));
        }
        if pool::names::split_dataset_name(&self.full(&join(&local, "x"))).is_err() {
            return Err(ViewError::NameTooLong(local));
        }
        let mut ed = lock(&self.empty_dirs);
        if ed.len() >= MAX_EMPTY_DIRS {
            return Err(ViewError::NoSpace(format!(
                "{local}: already {MAX_EMPTY_DIRS} empty directories (they live in memory until \
                 a file is created in them)"
            )));
        }
        ed.insert(local.clone());
        drop(ed);
        self.touch_ns();
        let id = self.dir_id_of(&local);
        wlock(&self.dirs).insert(id, Node::Dir(local));
        Ok(self.dir_attr(id, NodeKind::Dir))
    }

    /// Removes a file (destroying its volume; durable on return) or an empty directory.
    pub fn remove(&self, dir: u64, name: &str) -> Result<()> {
        // Not "." or "..": those name the directory itself or its parent, not an entry.
        Self::check_name(name)?;
        // Looked up under the lock: a RENAME between the lookup and the removal would
        // otherwise make this remove the renamed file.
        let _g = lock(&self.ns_lock);
        let id = self.lookup(dir, name)?;
        match self.node(id)? {
            Node::SnapDir(p) => Err(ViewError::ReadOnly(join(&p, SNAPSHOT_DIR))),
            Node::Dir(p) => {
                self.check_writable(&p)?;
                let prefix = format!("{p}/");
                if self.all().iter().any(|(n, _, _)| n.starts_with(&prefix))
                    || lock(&self.empty_dirs)
                        .iter()
                        .any(|d| d.starts_with(&prefix))
                {
                    return Err(ViewError::NotEmpty(p));
                }
                lock(&self.empty_dirs).remove(&p);
                wlock(&self.dirs).remove(&id);
                self.keep_dir(parent_of(&p));
                self.touch_ns();
                Ok(())
            }
            Node::Data(n) => {
                self.check_writable(&n)?;
                if is_snapshot_name(&n) {
                    return Err(ViewError::ReadOnly(n));
                }
                self.pool.destroy(&self.full(&n))?;
                self.forget(id);
                self.keep_dir(parent_of(&n));
                self.touch_ns();
                Ok(())
            }
        }
    }

    /// Keeps directory `dir`, and those above it, after the last file below them went
    /// (removed or moved away): a directory exists through a dataset below it or as an empty
    /// one, and would vanish from under its handle.
    fn keep_dir(&self, dir: &str) {
        let all = self.all();
        let mut ed = lock(&self.empty_dirs);
        let mut q = dir;
        while !q.is_empty() {
            let prefix = format!("{q}/");
            if all.iter().any(|(n, _, _)| n.starts_with(&prefix)) {
                break;
            }
            ed.insert(q.to_string());
            q = parent_of(q);
        }
    }

    /// Renames a file or directory. A file replaces an existing file of the target name
    /// atomically ([`Pool::rename_replacing`]). A directory is renamed dataset by dataset.
    pub fn rename(&self, from_dir: u64, from: &str, to_dir: u64, to: &str) -> Result<()> {
        // Not "." or "..": they name a directory itself or its parent, not an entry.
        if from == "." || from == ".." {
            return Err(ViewError::BadName(from.into()));
        }
        let tp = self.dir_path(to_dir)?;
        Self::check_name(to)?;
        let target = join(&tp, to);
        self.check_writable(&target)?;
        let _g = lock(&self.ns_lock);
        // Under the lock, as in `remove`.
        let src = self.lookup(from_dir, from)?;
        match self.node(src)? {
            Node::SnapDir(p) => Err(ViewError::ReadOnly(join(&p, SNAPSHOT_DIR))),
            Node::Data(n) => {
                if is_snapshot_name(&n) {
                    return Err(ViewError::ReadOnly(n));
                }
                if n == target {
                    return Ok(());
                }
                if self.dir_exists(&target) {
                    return Err(ViewError::Exists(target));
                }
                let replaced = self
                    .all()
                    .into_iter()
                    .find(|(x, _, _)| *x == target)
                    .map(|(_, old, _)| old);
                // The file it replaces goes in the same txg: `target` is never missing.
                self.pool
                    .rename_replacing(&self.full(&n), &self.full(&target))?;
                if let Some(old) = replaced {
                    self.forget(old);
                }
                self.keep_dir(parent_of(&n));
                self.touch_ns();
                Ok(())
            }
            Node::Dir(p) => {
                if p.is_empty() || target.starts_with(&format!("{p}/")) {
                    return Err(ViewError::Invalid(format!("cannot move {p} into itself")));
                }
                if p == target {
                    return Ok(());
                }
                let tprefix = format!("{target}/");
                if self
                    .all()
                    .iter()
                    .any(|(n, _, _)| *n == target || n.starts_with(&tprefix))
                {
                    return Err(ViewError::Exists(target));
                }
                let prefix = format!("{p}/");
                // The directories that move: `p`, those its datasets imply, the empty ones.
                let mut below: BTreeSet<String> = BTreeSet::from([p.clone()]);
                for (n, _, _) in self.all() {
                    let mut d = parent_of(&n);
                    while d.starts_with(&prefix) {
                        below.insert(d.to_string());
                        d = parent_of(d);
                    }
                }
                below.extend(
                    lock(&self.empty_dirs)
                        .iter()
                        .filter(|d| d.starts_with(&prefix))
                        .cloned(),
                );
                // Volumes only: their snapshots follow them. Every new name is checked before
                // the first rename, and a failure puts back what was already moved.
                let moves: Vec<(String, String)> = self
                    .all()
                    .into_iter()
                    .filter(|(n, _, _)| !is_snapshot_name(n))
                    .filter_map(|(n, _, _)| {
                        let rest = n.strip_prefix(&prefix)?;
                        Some((self.full(&n), self.full(&join(&target, rest))))
                    })
                    .collect();
                for (_, to) in &moves {
                    pool::names::split_dataset_name(to)?;
                }
                for (i, (from, to)) in moves.iter().enumerate() {
                    if let Err(e) = self.pool.rename(from, to) {
                        for (back_from, back_to) in moves[..i].iter().rev() {
                            if let Err(u) = self.pool.rename(back_to, back_from) {
                                tracing::error!(from = %back_to, to = %back_from, error = %u, "could not undo a rename");
                            }
                        }
                        return Err(e.into());
                    }
                }
                let mut ed = lock(&self.empty_dirs);
                let moved: Vec<String> = ed
                    .iter()
                    .filter(|d| **d == p || d.starts_with(&prefix))
                    .cloned()
                    .collect();
                for d in moved {
                    ed.remove(&d);
                    ed.insert(format!("{target}{}", &d[p.len()..]));
                }
                drop(ed);
                self.move_dir_ids(&p, &target, &below);
                self.keep_dir(parent_of(&p));
                self.touch_ns();
                Ok(())
            }
        }
    }

    /// Sets a file's size (rounded up to its block size; at least one block); durable on
    /// return.
    pub fn set_size(&self, id: u64, size: u64) -> Result<Attr> {
        let (h, snap) = self.file_handle(id)?;
        self.check_writable(&h.name())?;
        if snap {
            return Err(ViewError::ReadOnly(h.name()));
        }
        let size = size.max(1);
        let _g = lock(&self.ns_lock);
        // Under the lock, which RENAME holds: the name is this file's until the resize.
        let name = self.live_name(id, &h)?;
        let bs = u64::from(h.block_size());
        let rounded = size
            .div_ceil(bs)
            .checked_mul(bs)
            .ok_or_else(|| pool::Error::TooLarge(format!("a file of {size} bytes is too large")))?;
        if rounded != h.size() {
            if rounded > h.size() {
                self.check_growth(&name, rounded)?;
            }
            self.touch(id);
            self.pool.resize_volume(&name, size)?;
        }
        self.file_attr(id)
    }

    /// Space figures.
    pub fn space(&self) -> SpaceInfo {
        let info = self.pool.info();
        SpaceInfo {
            total: info.usable,
            free: info.free,
            available: self.pool.available(),
            datasets: info.datasets as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use pool::PoolConfig;

    fn view(dir: &std::path::Path) -> FileView {
        let pool = Pool::create_file(
            &dir.join("p.tarn"),
            "tank",
            256 << 20,
            PoolConfig {
                sync_interval: None,
                ..PoolConfig::default()
            },
        )
        .unwrap();
        FileView::new(Arc::new(pool), ViewOptions::default())
    }

    #[test]
    fn modification_times_survive_the_view_and_the_pool() {
        let d = tempfile::tempdir().unwrap();
        let v = view(d.path());
        let pool = v.pool().clone();
        let a = v.create(v.root(), "a", 8192).unwrap();
        let b = v.create(v.root(), "b", 8192).unwrap();
        let created = v.getattr(a.id).unwrap().mtime_ns;
        std::thread::sleep(std::time::Duration::from_millis(20));
        let written_a = v.write(a.id, 0, &[1u8; 4096]).unwrap().mtime_ns;
        assert!(written_a > created, "{written_a} <= {created}");
        v.sync().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Written but never synced: committed with the pool's next commit (here its close).
        let written_b = v.write(b.id, 0, &[2u8; 4096]).unwrap().mtime_ns;
        drop(v);
        let v = FileView::new(pool.clone(), ViewOptions::default());
        assert_eq!(v.getattr(a.id).unwrap().mtime_ns, written_a);
        assert_eq!(v.getattr(b.id).unwrap().mtime_ns, written_b);
        drop(v);
        let path = d.path().join("p.tarn");
        drop(Arc::into_inner(pool).unwrap().close());
        let pool = Pool::open_path(&path, PoolConfig::default()).unwrap();
        let v = FileView::new(Arc::new(pool), ViewOptions::default());
        assert_eq!(v.getattr(a.id).unwrap().mtime_ns, written_a);
        assert_eq!(v.getattr(b.id).unwrap().mtime_ns, written_b);
    }

    #[test]
    fn tree_files_and_ids() {
        let d = tempfile::tempdir().unwrap();
        let v = view(d.path());
        let p = v.pool().clone();
        p.create_volume("tank/a/b/vm1", 1 << 20, 4096, &BTreeMap::new())
            .unwrap();
        p.create_volume("tank/top", 8192, 4096, &BTreeMap::new())
            .unwrap();
        let root = v.readdir(v.root()).unwrap();
        let names: Vec<_> = root.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "top"]);
        assert_eq!(root[0].attr.kind, NodeKind::Dir);
        assert_eq!(root[1].attr.size, 8192);
        let vm1 = v.lookup_path("a/b/vm1").unwrap();
        assert_eq!(vm1, p.dataset("tank/a/b/vm1").unwrap().id);
        assert_eq!(v.lookup_path("a/b").unwrap(), dir_id("a/b"));
        assert!(matches!(v.lookup_path("a/zz"), Err(ViewError::NotFound(_))));
        // A fresh view (as after a restart) resolves directory IDs it never saw.
        let v2 = FileView::new(p.clone(), ViewOptions::default());
        assert!(matches!(
            v2.getattr(dir_id("a/b")).unwrap().kind,
            NodeKind::Dir
        ));
        assert!(matches!(
            v2.getattr(dir_id("nope")),
            Err(ViewError::Stale(_))
        ));
    }

    /// A RENAME over an existing file that the pool would refuse (the source's snapshot name
    /// would pass 255 bytes under the new name) fails before the target is destroyed; "." is
    /// no source, and a LOOKUP name is one component.
    #[test]
    fn a_refused_rename_keeps_the_file_it_would_replace() {
        let d = tempfile::tempdir().unwrap();
        let v = view(d.path());
        let p = v.pool().clone();
        p.create_volume("tank/src", 8192, 4096, &BTreeMap::new())
            .unwrap();
        p.snapshot(&[format!("tank/src@{}", "s".repeat(240)).as_str()])
            .unwrap();
        let target = "t".repeat(40);
        p.create_volume(&format!("tank/{target}"), 8192, 4096, &BTreeMap::new())
            .unwrap();
        let e = v.rename(v.root(), "src", v.root(), &target).unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        assert!(
            p.dataset(&format!("tank/{target}")).is_ok(),
            "the target survives"
        );
        assert!(p.dataset("tank/src").is_ok());

        v.mkdir(v.root(), "dir").unwrap();
        assert!(matches!(
            v.rename(v.lookup_path("dir").unwrap(), ".", v.root(), "moved"),
            Err(ViewError::BadName(_))
        ));
        p.create_volume("tank/dir/x", 8192, 4096, &BTreeMap::new())
            .unwrap();
        assert!(matches!(
            v.lookup(v.root(), "dir/x"),
            Err(ViewError::NotFound(_))
        ));
    }

    /// A handle to a file that a RENAME replaced is stale: a SETATTR or WRITE through it
    /// reached the file that took its name (truncated it, grew it).
    #[test]
    fn a_replaced_file_s_handle_is_stale() {
        let d = tempfile::tempdir().unwrap();
        let v = view(d.path());
        let old = v.create(v.root(), "b", 8192).unwrap().id;
        v.create(v.root(), "tmp", 8192).unwrap();
        v.write(v.lookup(v.root(), "tmp").unwrap(), 0, b"saved")
            .unwrap();
        v.rename(v.root(), "tmp", v.root(), "b").unwrap();
        assert!(matches!(v.set_size(old, 0), Err(ViewError::Stale(_))));
        assert!(matches!(
            v.write(old, 1 << 20, b"x"),
            Err(ViewError::Stale(_))
        ));
        let b = v.lookup(v.root(), "b").unwrap();
        let (data, _) = v.read(b, 0, 5).unwrap();
        assert_eq!(data, b"saved");
        assert_eq!(v.pool().dataset("tank/b").unwrap().size, 8192);
    }

    /// A directory stays when its last file is removed or moved away (it exists through what
    /// lies below it), with its ID: `rm dir/x; cp y dir/` and `rmdir` work.
    #[test]
    fn a_directory_outlives_its_last_file() {
        let d = tempfile::tempdir().unwrap();
        let v = view(d.path());
        let dir = v.mkdir(v.root(), "d").unwrap().id;
        for name in ["x", "y"] {
            v.create(dir, name, 4096).unwrap();
        }
        v.remove(dir, "x").unwrap();
        v.rename(dir, "y", v.root(), "y").unwrap();
        assert_eq!(v.getattr(dir).unwrap().kind, NodeKind::Dir);
        assert_eq!(v.lookup_path("d").unwrap(), dir);
        v.create(dir, "z", 4096).unwrap();
        v.remove(dir, "z").unwrap();
        v.remove(v.root(), "d").unwrap();
        assert!(matches!(v.lookup_path("d"), Err(ViewError::NotFound(_))));

        // Two levels: the directories above stay too (`rm -rf a` after `mkdir -p a/b`, a
        // file in it, and the file removed or the directory moved away).
        let a = v.mkdir(v.root(), "a").unwrap().id;
        let b = v.mkdir(a, "b").unwrap().id;
        v.create(b, "x", 4096).unwrap();
        v.remove(b, "x").unwrap();
        assert_eq!(v.getattr(a).unwrap().kind, NodeKind::Dir);
        assert_eq!(v.getattr(b).unwrap().kind, NodeKind::Dir);
        v.create(b, "x", 4096).unwrap();
        v.rename(a, "b", v.root(), "c").unwrap();
        assert_eq!(
            v.getattr(a).unwrap().kind,
            NodeKind::Dir,
            "a stays when b moves away"
        );
        let c = v.lookup_path("c").unwrap();
        v.remove(c, "x").unwrap();
        v.remove(v.root(), "c").unwrap();
        v.remove(v.root(), "a").unwrap();
        let names: Vec<String> = v
            .readdir(v.root())
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(!names.iter().any(|n| n == "a" || n == "c"), "{names:?}");
    }

    /// A renamed directory keeps its ID, and so do those below it (clients hold them as file
    /// handles: they went stale), with their `.snapshot` directories; a directory made later
    /// where it was gets another ID.
    #[test]
    fn renamed_directories_keep_their_ids() {
        let d = tempfile::tempdir().unwrap();
        let v = view(d.path());
        let p = v.pool().clone();
        p.create_volume("tank/a/b/vm1", 1 << 20, 4096, &BTreeMap::new())
            .unwrap();
        p.snapshot(&["tank/a/b/vm1@s"]).unwrap();
        let a = v.lookup_path("a").unwrap();
        let b = v.lookup_path("a/b").unwrap();
        let snaps = v.lookup(b, SNAPSHOT_DIR).unwrap();
        let vm1 = v.lookup_path("a/b/vm1").unwrap();
        v.rename(v.root(), "a", v.root(), "c").unwrap();
        assert_eq!(v.lookup_path("c").unwrap(), a);
        assert_eq!(v.lookup_path("c/b").unwrap(), b);
        assert_eq!(v.lookup(b, SNAPSHOT_DIR).unwrap(), snaps);
        assert_eq!(v.lookup(b, "vm1").unwrap(), vm1);
        assert_eq!(v.getattr(a).unwrap().kind, NodeKind::Dir);
        assert_eq!(v.getattr(a).unwrap().id, a);
        assert_eq!(v.lookup(b, "..").unwrap(), a);
        let names: Vec<_> = v
            .readdir(snaps)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["vm1@s"]);
        // A new `a` is another directory.
        let new_a = v.mkdir(v.root(), "a").unwrap();
        assert_ne!(new_a.id, a);
        assert_eq!(v.lookup_path("a").unwrap(), new_a.id);
        assert_eq!(v.lookup_path("c").unwrap(), a);
        // And back: `c` to `d`, then `a` (the new one) is untouched.
        v.rename(v.root(), "c", v.root(), "d").unwrap();
        assert_eq!(v.lookup_path("d/b").unwrap(), b);
        assert_eq!(v.lookup_path("a").unwrap(), new_a.id);
    }

    /// A client cannot grow a file past the pool's size (one byte written at the host's
    /// largest volume size used to take half of the memory budget and leave no other file
    /// room to grow), a WRITE of no bytes changes nothing, and `.snapshot` cannot be made.
    #[test]
    fn growth_is_held_to_the_pool_and_snapshot_dirs_are_reserved() {
        let d = tempfile::tempdir().unwrap();
        let v = view(d.path());
        assert_eq!(v.max_file_size(), 256 << 20);
        let a = v.create(v.root(), "a", 0).unwrap();
        let e = v.write(a.id, v.max_file_size(), b"x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
        let e = v.set_size(a.id, v.max_file_size() + 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
        assert_eq!(v.write(a.id, 1 << 30, b"").unwrap().size, 4096);
        assert_eq!(v.getattr(a.id).unwrap().size, 4096);
        // Another file still grows to the limit.
        let b = v.create(v.root(), "b", 0).unwrap();
        let end = v.max_file_size() - 1;
        assert_eq!(v.write(b.id, end, b"y").unwrap().size, end + 1);
        for made in [
            v.create(v.root(), SNAPSHOT_DIR, 0).map(|_| ()),
            v.mkdir(v.root(), SNAPSHOT_DIR).map(|_| ()),
            v.rename(v.root(), "a", v.root(), SNAPSHOT_DIR),
        ] {
            assert!(matches!(made, Err(ViewError::Exists(_))), "{made:?}");
        }
        assert_eq!(v.lookup(v.root(), "a").unwrap(), a.id);
    }

    #[test]
    fn write_grows_reads_holes_and_resizes() {
        let d = tempfile::tempdir().unwrap();
        let v = view(d.path());
        let a = v.create(v.root(), "img", 0).unwrap();
        assert_eq!(a.size, 4096);
        v.write(a.id, 10_000, b"hello").unwrap();
        v.sync().unwrap();
        let at = v.getattr(a.id).unwrap();
        assert_eq!(at.size, 12288);
        let (buf, eof) = v.read(a.id, 0, 1 << 20).unwrap();
        assert!(eof);
        assert_eq!(buf.len(), 12288);
        assert!(buf[..10_000].iter().all(|b| *b == 0));
        assert_eq!(&buf[10_000..10_005], b"hello");
        let (buf, eof) = v.read(a.id, 4096, 100).unwrap();
        assert!(!eof);
        assert_eq!(buf.len(), 100);
        assert_eq!(v.set_size(a.id, 5000).unwrap().size, 8192);
        assert!(matches!(
            v.create(v.root(), "img", 0),
            Err(ViewError::Exists(_))
        ));
        v.rename(v.root(), "img", v.root(), "img2").unwrap();
        assert_eq!(v.lookup(v.root(), "img2").unwrap(), a.id);
        v.remove(v.root(), "img2").unwrap();
        assert!(matches!(v.getattr(a.id), Err(ViewError::Stale(_))));
    }

    #[test]
    fn mkdir_then_create_and_read_only() {
        let d = tempfile::tempdir().unwrap();
        let v = view(d.path());
        let dd = v.mkdir(v.root(), "vms").unwrap();
        assert_eq!(v.readdir(v.root()).unwrap()[0].name, "vms");
        let f = v.create(dd.id, "x", 4096).unwrap();
        assert_eq!(v.pool().dataset("tank/vms/x").unwrap().id, f.id);
        assert!(matches!(
            v.remove(v.root(), "vms"),
            Err(ViewError::NotEmpty(_))
        ));
        assert!(matches!(
            v.create(v.root(), "a b", 1),
            Err(ViewError::BadName(_))
        ));
        let ro = FileView::new(
            v.pool().clone(),
            ViewOptions {
                read_only: true,
                ..ViewOptions::default()
            },
        );
        assert!(matches!(
            ro.write(f.id, 0, b"x"),
            Err(ViewError::ReadOnly(_))
        ));
        assert!(matches!(ro.remove(dd.id, "x"), Err(ViewError::ReadOnly(_))));
        assert!(ro.getattr(f.id).unwrap().read_only);
    }

    #[test]
    fn group_commit_from_many_threads() {
        let d = tempfile::tempdir().unwrap();
        let v = Arc::new(view(d.path()));
        let f = v.create(v.root(), "g", 1 << 20).unwrap();
        let ts: Vec<_> = (0..8u64)
            .map(|i| {
                let v = v.clone();
                std::thread::spawn(move || {
                    for j in 0..8u64 {
                        v.write(f.id, (i * 8 + j) * 4096, &[i as u8 + 1; 4096])
                            .unwrap();
                        v.sync().unwrap();
                    }
                })
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
        let (buf, _) = v.read(f.id, 0, 64 * 4096).unwrap();
        for i in 0..64usize {
            assert_eq!(buf[i * 4096], (i / 8) as u8 + 1);
        }
    }
}
