//! The dataset directory as users see it: create, resize, rename, properties, listing, and
//! opening datasets for I/O. Snapshot, clone and destroy mechanics live in `snapshot.rs`.

use crate::error::{Error, Result};
use crate::names::split_any_name_of_any_length;
use crate::phys::{BlockPtr, DatasetKind, SECTOR};
use crate::pool::{
    lock, now_secs, read, write, DatasetEntry, DatasetInfo, Pool, Shared, BLOCK_SIZE_RANGE,
    MAX_PROP_VALUE,
};
use crate::reservation::{self, REFRESERVATION_PROP};
use crate::volume::{StateInit, Volume, VolumeHandle};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Pool {
    /// The part of `full` below this pool's name (`a/b` or `a/b@snap`).
    pub(crate) fn local<'a>(&self, full: &'a str) -> Result<&'a str> {
        // Any length: this looks names up, and a pool may hold snapshot names from before the
        // limit; new snapshot names are checked where they are made.
        let (pool, rest) = split_any_name_of_any_length(full)?;
        if pool != self.name() {
            return Err(Error::NotFound(format!(
                "{full} (this pool is {})",
                self.name()
            )));
        }
        Ok(rest)
    }

    /// Like [`Pool::local`], refusing snapshot names.
    pub(crate) fn local_volume<'a>(&self, full: &'a str) -> Result<&'a str> {
        let rest = self.local(full)?;
        if rest.contains('@') {
            return Err(Error::InvalidArgument(format!(
                "{full} is a snapshot; this needs a volume"
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
        let rest = self.local_volume(full)?;
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
        check_map_fits(&self.shared, size, block_size, 0)?;
        props.iter().try_for_each(|(k, v)| check_prop(k, v))?;
        reservation::check_values(props.iter())?;
        let sh = &self.shared;
        sh.check_writable()?;
        let mut cs = lock(&sh.commit);
        {
            let mut ds = write(&sh.datasets);
            if ds.values().any(|d| d.name == rest) {
                return Err(Error::AlreadyExists(full.into()));
            }
            check_nesting(&ds, rest, None, self.name())?;
            // A thick volume: the pool must hold its whole reservation now (the last check).
            let r = reservation::reservation(props, size);
            sh.admit(reservation::held(r, 0, block_size), None)?;
            let id = cs.next_id;
            cs.next_id += 1;
            let init = StateInit {
                size,
                root: BlockPtr::HOLE,
                referenced: 0,
                written: 0,
                prev_snap_txg: 0,
                deadlist: Default::default(),
                read_only: false,
            };
            let vol = Arc::new(Volume::new(id, rest.into(), block_size, init));
            ds.insert(
                id,
                DatasetEntry::new(
                    DatasetKind::Volume,
                    rest.into(),
                    0,
                    cs.txg + 1,
                    props.clone(),
                    vol,
                ),
            );
        }
        sh.commit_locked(&mut cs)?;
        drop(cs);
        self.dataset(full)
    }

    /// Changes a volume's size (rounded up to its block size); shrinking discards the tail.
    pub fn resize_volume(&self, full: &str, size: u64) -> Result<DatasetInfo> {
        let rest = self.local_volume(full)?;
        let sh = &self.shared;
        sh.check_writable()?;
        let mut cs = lock(&sh.commit);
        let txg = cs.txg + 1;
        let vol = sh.find(rest).ok_or_else(|| Error::NotFound(full.into()))?;
        let size = round_size(size, vol.block_size)?;
        // A reservation of `auto` follows the size (read before the volume's lock: the
        // directory's lock comes first).
        let r = read(&sh.datasets)
            .get(&vol.id)
            .map_or(0, |d| reservation::reservation(&d.props, size));
        {
            let mut st = lock(&vol.state);
            if st.tree.is_none() {
                st.tree = Some(sh.load_tree(&vol, &st)?);
            }
            if size > st.size {
                check_map_fits(sh, size, vol.block_size, st.size)?;
            }
            // The last check, before the tree changes.
            let target = reservation::held(r, st.written.saturating_mul(SECTOR), vol.block_size);
            sh.admit(sh.slack_increase(&vol, target), Some(&vol))?;
            let nblocks = (size / u64::from(vol.block_size)) as usize;
            let mut sm = lock(&sh.spacemap);
            let st = &mut *st;
            if let Some(t) = st.tree.as_mut() {
                let mut dropped = Vec::new();
                t.resize(nblocks, txg, |p, level| dropped.push((p, level)));
                for (p, level) in dropped {
                    st.kill(&mut sm, txg, p, level);
                }
            }
            sh.unreserve(st.discard_dirty(&mut sm, nblocks as u64, vol.block_size));
            st.size = size;
        }
        sh.commit_locked(&mut cs)?;
        drop(cs);
        self.dataset(full)
    }

    /// Renames a volume within the pool (its snapshots follow); IDs, and so NFS handles, stay.
    /// Durable on return.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        let old = self.local_volume(from)?;
        let new = self.local_volume(to)?;
        let pool_name = self.name();
        self.renaming(new, to, |ds| {
            let id = rename_fits(ds, from, old, new, pool_name)?;
            rename_entries(ds, id, new);
            Ok(())
        })
    }

    /// Runs `f` to rename entries under the commit lock, refusing first if a dataset is
    /// named `new` already (`to` in full, for the message), then commits. Durable on return.
    fn renaming(
        &self,
        new: &str,
        to: &str,
        f: impl FnOnce(&mut BTreeMap<u64, DatasetEntry>) -> Result<()>,
    ) -> Result<()> {
        let sh = &self.shared;
        sh.check_writable()?;
        let mut cs = lock(&sh.commit);
        {
            let mut ds = write(&sh.datasets);
            if ds.values().any(|d| d.name == new) {
                return Err(Error::AlreadyExists(to.into()));
            }
            f(&mut ds)?;
        }
        sh.commit_locked(&mut cs)?;
        Ok(())
    }

    /// Renames snapshot `POOL/VOL@OLD` to `POOL/VOL@NEW` (the same volume, as in ZFS). Its
    /// GUID stays, so incremental streams still find it as a base; clones and holds stay on
    /// it. Durable on return.
    pub fn rename_snapshot(&self, from: &str, to: &str) -> Result<()> {
        let old = self.local(from)?;
        crate::names::split_any_name(to)?;
        let new = self.local(to)?;
        let (Some((old_vol, _)), Some((new_vol, _))) = (old.split_once('@'), new.split_once('@'))
        else {
            return Err(Error::InvalidArgument(format!(
                "{from} and {to} must both be snapshots, POOL/VOL@SNAP"
            )));
        };
        if old_vol != new_vol {
            return Err(Error::InvalidArgument(format!(
                "{from} can only be renamed to another snapshot name of {}/{old_vol}",
                self.name()
            )));
        }
        self.renaming(new, to, |ds| {
            ds.values_mut()
                .find(|d| d.kind == DatasetKind::Snapshot && d.name == old)
                .ok_or_else(|| Error::NotFound(from.into()))?
                .set_name(new.to_string());
            Ok(())
        })
    }

    /// Sets user properties on a dataset (an empty value removes the key); durable on return.
    pub fn set_props(&self, full: &str, props: &[(String, String)]) -> Result<()> {
        let rest = self.local(full)?;
        props.iter().try_for_each(|(k, v)| check_prop(k, v))?;
        reservation::check_values(props.iter().map(|(k, v)| (k, v)))?;
        let sh = &self.shared;
        sh.check_writable()?;
        let mut cs = lock(&sh.commit);
        {
            let mut ds = write(&sh.datasets);
            let d = ds
                .values_mut()
                .find(|d| d.name == rest)
                .ok_or_else(|| Error::NotFound(full.into()))?;
            if props.iter().any(|(k, _)| k == REFRESERVATION_PROP) {
                if d.kind != DatasetKind::Volume {
                    return Err(Error::InvalidArgument(format!(
                        "{full}: only a volume has a refreservation"
                    )));
                }
                let mut merged = d.props.clone();
                merge_into(&mut merged, props);
                let st = lock(&d.vol.state);
                let r = reservation::reservation(&merged, st.size);
                let written = st.written.saturating_mul(SECTOR);
                let target = reservation::held(r, written, d.vol.block_size);
                sh.admit(sh.slack_increase(&d.vol, target), Some(&d.vol))?;
            }
            d.merge_props(props);
        }
        sh.commit_locked(&mut cs)?;
        Ok(())
    }

    /// Sets user properties on the dataset with permanent ID `id` (not a name, which a rename
    /// can give another dataset meanwhile), durable with the next commit rather than one of
    /// its own: for properties that follow data (an NFS file's modification time), made
    /// durable by whichever commit makes that data durable. False if no dataset has that ID.
    pub fn stage_props(&self, id: u64, props: &[(String, String)]) -> Result<bool> {
        props.iter().try_for_each(|(k, v)| check_prop(k, v))?;
        reservation::refuse_in(props, "staged properties")?;
        let sh = &self.shared;
        sh.check_writable()?;
        // No commit lock: a commit takes the pending flag before it reads the directory, so
        // a change lands in the commit running or in the next.
        let mut ds = write(&sh.datasets);
        let Some(d) = ds.get_mut(&id) else {
            return Ok(false);
        };
        d.merge_props(props);
        drop(ds);
        sh.pending.store(true, Ordering::Release);
        Ok(true)
    }

    /// One dataset's facts (a volume or a snapshot).
    pub fn dataset(&self, full: &str) -> Result<DatasetInfo> {
        let rest = self.local(full)?;
        let ds = read(&self.shared.datasets);
        let d = ds
            .values()
            .find(|d| d.name == rest)
            .ok_or_else(|| Error::NotFound(full.into()))?;
        self.shared.describe(&ds, d)
    }

    /// Every dataset, volumes and snapshots, by name. Space figures that need deadlists read
    /// them from disk; a failure there is reported as an error.
    pub fn list(&self) -> Result<Vec<DatasetInfo>> {
        let ds = read(&self.shared.datasets);
        let mut v = ds
            .values()
            .map(|d| self.shared.describe(&ds, d))
            .collect::<Result<Vec<_>>>()?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// Every volume (no snapshots), by name, with the space figures that need no disk reads.
    pub fn datasets(&self) -> Vec<DatasetInfo> {
        self.list()
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d.kind != DatasetKind::Snapshot)
            .collect()
    }

    /// Names, IDs and types of every dataset, volumes and snapshots, by name — cheap: no
    /// space figures, no disk reads.
    pub fn names(&self) -> Vec<(String, u64, DatasetKind)> {
        let ds = read(&self.shared.datasets);
        let mut v: Vec<_> = ds
            .values()
            .map(|d| (format!("{}/{}", self.name(), d.name), d.vol.id, d.kind))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Grows a volume to at least `size` bytes without waiting for a commit: the new size is
    /// durable with the next commit, like the writes that need it (a file growing under NFS
    /// WRITEs). Never shrinks.
    pub fn grow_volume(&self, full: &str, size: u64) -> Result<()> {
        let rest = self.local_volume(full)?;
        let sh = &self.shared;
        sh.check_writable()?;
        let cs = lock(&sh.commit);
        let vol = sh.find(rest).ok_or_else(|| Error::NotFound(full.into()))?;
        let size = round_size(size, vol.block_size)?;
        // As in `resize_volume`: an `auto` reservation follows the size.
        let r = read(&sh.datasets)
            .get(&vol.id)
            .map_or(0, |d| reservation::reservation(&d.props, size));
        let mut st = lock(&vol.state);
        if size > st.size {
            if st.tree.is_none() {
                st.tree = Some(sh.load_tree(&vol, &st)?);
            }
            check_map_fits(sh, size, vol.block_size, st.size)?;
            let target = reservation::held(r, st.written.saturating_mul(SECTOR), vol.block_size);
            sh.admit(sh.slack_increase(&vol, target), Some(&vol))?;
            let nblocks = (size / u64::from(vol.block_size)) as usize;
            let txg = cs.txg + 1;
            let mut sm = lock(&sh.spacemap);
            let st = &mut *st;
            if let Some(t) = st.tree.as_mut() {
                let mut dropped = Vec::new();
                t.resize(nblocks, txg, |p, level| dropped.push((p, level)));
                for (p, level) in dropped {
                    st.kill(&mut sm, txg, p, level);
                }
            }
            st.size = size;
            sh.pending.store(true, std::sync::atomic::Ordering::Release);
        }
        Ok(())
    }

    /// Opens a volume for I/O, or a snapshot for reading (`POOL/VOL@SNAP`).
    pub fn volume(&self, full: &str) -> Result<VolumeHandle> {
        let rest = self.local(full)?;
        let vol = self
            .shared
            .find(rest)
            .ok_or_else(|| Error::NotFound(full.into()))?;
        Ok(VolumeHandle::new(self.shared.clone(), vol))
    }
}

impl DatasetEntry {
    /// Merges user properties in: an empty value removes the key.
    pub(crate) fn merge_props(&mut self, props: &[(String, String)]) {
        merge_into(&mut self.props, props);
    }

    pub(crate) fn new(
        kind: DatasetKind,
        name: String,
        parent: u64,
        creation_txg: u64,
        props: BTreeMap<String, String>,
        vol: Arc<Volume>,
    ) -> Self {
        DatasetEntry {
            kind,
            name,
            guid: random_guid(vol.id),
            parent,
            creation_txg,
            creation_time: now_secs(),
            holds: BTreeSet::new(),
            props,
            vol,
        }
    }

    /// For a snapshot, the part after `@`.
    pub(crate) fn snap_name(&self) -> &str {
        self.name
            .split_once('@')
            .map(|(_, s)| s)
            .unwrap_or(&self.name)
    }

    /// Renames the entry and its volume (whose handles say the new name).
    fn set_name(&mut self, name: String) {
        *write(&self.vol.name) = name.clone();
        self.name = name;
    }
}

impl Shared {
    pub(crate) fn describe(
        &self,
        ds: &BTreeMap<u64, DatasetEntry>,
        d: &DatasetEntry,
    ) -> Result<DatasetInfo> {
        let (used, usedbysnapshots) = self.space(ds, d)?;
        let st = lock(&d.vol.state);
        let (refreservation, usedbyrefreservation) = match d.kind {
            DatasetKind::Snapshot => (0, 0),
            _ => {
                let r = reservation::reservation(&d.props, st.size);
                (r, r.saturating_sub(st.written.saturating_mul(SECTOR)))
            }
        };
        let full = |id: u64| ds.get(&id).map(|e| format!("{}/{}", self.name(), e.name));
        let origin = match d.kind {
            DatasetKind::Snapshot => None,
            _ => full(d.parent),
        };
        let mut clones: Vec<String> = match d.kind {
            DatasetKind::Snapshot => ds
                .values()
                .filter(|c| c.kind != DatasetKind::Snapshot && c.parent == d.vol.id)
                .filter_map(|c| full(c.vol.id))
                .collect(),
            _ => Vec::new(),
        };
        clones.sort();
        Ok(DatasetInfo {
            name: format!("{}/{}", self.name(), d.name),
            id: d.vol.id,
            guid: d.guid,
            kind: d.kind,
            size: st.size,
            block_size: d.vol.block_size,
            // Saturating: the counts come from disk, and a damaged one must not panic a listing.
            referenced: st.referenced.saturating_mul(SECTOR),
            written: st.written.saturating_mul(SECTOR),
            used: used
                .saturating_mul(SECTOR)
                .saturating_add(usedbyrefreservation),
            usedbysnapshots: usedbysnapshots.saturating_mul(SECTOR),
            refreservation,
            usedbyrefreservation,
            origin,
            clones,
            holds: d.holds.iter().cloned().collect(),
            creation_txg: d.creation_txg,
            creation_time: d.creation_time,
            // The reservation is shown as `refreservation`, not as a user property.
            props: d
                .props
                .iter()
                .filter(|(k, _)| *k != REFRESERVATION_PROP)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

/// Sets `changes` in `props` (an empty value removes the property).
fn merge_into(props: &mut BTreeMap<String, String>, changes: &[(String, String)]) {
    for (k, v) in changes {
        if v.is_empty() {
            props.remove(k);
        } else {
            props.insert(k.clone(), v.clone());
        }
    }
}

fn random_guid(salt: u64) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = [
        t.to_le_bytes().as_slice(),
        &salt.to_le_bytes(),
        &std::process::id().to_le_bytes(),
    ]
    .concat();
    (crate::phys::checksum(&seed, 0x5eed) as u64) | 1
}

/// Names volume `id` `new` (below the pool), its snapshots following it.
pub(crate) fn rename_entries(ds: &mut BTreeMap<u64, DatasetEntry>, id: u64, new: &str) {
    for d in ds.values_mut() {
        let renamed = if d.vol.id == id {
            new.to_string()
        } else if d.kind == DatasetKind::Snapshot && d.parent == id {
            format!("{new}@{}", d.snap_name())
        } else {
            continue;
        };
        d.set_name(renamed);
    }
}

/// Volume `old` (`from` in full) can be named `new`: it exists, `new` nests nowhere it may
/// not, and the names its snapshots take with it fit. Returns its id.
pub(crate) fn rename_fits(
    ds: &BTreeMap<u64, DatasetEntry>,
    from: &str,
    old: &str,
    new: &str,
    pool_name: &str,
) -> Result<u64> {
    let id = ds
        .values()
        .find(|d| d.name == old)
        .map(|d| d.vol.id)
        .ok_or_else(|| Error::NotFound(from.into()))?;
    check_nesting(ds, new, Some(id), pool_name)?;
    for d in ds.values() {
        if d.kind == DatasetKind::Snapshot && d.parent == id {
            crate::names::check_length(&format!("{pool_name}/{new}@{}", d.snap_name()))?;
        }
    }
    Ok(id)
}

/// Refuses a new volume name that would nest with another dataset (the volume with ID
/// `moving`, being renamed, and its snapshots aside): names are flat, and a volume has no
/// children (as in zfs(8)), so none may lie below a volume, and none may be made where others
/// lie below it (it would be a file and a directory at once in the NFS view).
pub(crate) fn check_nesting(
    ds: &BTreeMap<u64, DatasetEntry>,
    rest: &str,
    moving: Option<u64>,
    pool: &str,
) -> Result<()> {
    let moves = |d: &DatasetEntry| {
        Some(d.vol.id) == moving || (d.kind == DatasetKind::Snapshot && Some(d.parent) == moving)
    };
    for d in ds.values().filter(|d| !moves(d)) {
        if d.kind == DatasetKind::Volume
            && rest.len() > d.name.len()
            && rest.starts_with(&d.name)
            && rest.as_bytes()[d.name.len()] == b'/'
        {
            return Err(Error::InvalidArgument(format!(
                "{pool}/{rest} would lie below volume {pool}/{}: a volume has no children",
                d.name
            )));
        }
        let head = d.name.split('@').next().unwrap_or(&d.name);
        if head.len() > rest.len() && head.starts_with(rest) && head.as_bytes()[rest.len()] == b'/'
        {
            return Err(Error::InvalidArgument(format!(
                "{pool}/{rest} is where {pool}/{head} lies below: pick a name no dataset \
                 lies below"
            )));
        }
    }
    Ok(())
}

pub(crate) fn round_size(size: u64, block_size: u32) -> Result<u64> {
    if size == 0 {
        return Err(Error::InvalidArgument(
            "a volume size must be greater than zero".into(),
        ));
    }
    let bs = u64::from(block_size);
    let blocks = size.div_ceil(bs);
    if blocks > crate::phys::MAX_VOLUME_BLOCKS {
        return Err(Error::TooLarge(format!(
            "a volume of {size} bytes in {bs}-byte blocks is too large: at most 2^40 blocks"
        )));
    }
    Ok(blocks * bs)
}

/// Refuses a volume size (rounded; `from`: its size now, 0 for a new volume) whose block
/// map's index, kept in memory while the volume is in use, would take the pool's block maps
/// past half of the memory limit: a clear error now instead of an allocation failing (or the
/// process being killed) later. Checked where a volume is created or grows; a shrink always
/// goes through. What is written later adds to the map (48 bytes a block), checked as it is
/// written.
fn check_map_fits(sh: &Shared, size: u64, block_size: u32, from: u64) -> Result<()> {
    use crate::blocktree::map_bytes;
    let bs = u64::from(block_size);
    let index = map_bytes(size.div_ceil(bs));
    let now = if from == 0 {
        0
    } else {
        map_bytes(from.div_ceil(bs))
    };
    let map = sh.map_bytes().saturating_sub(now).saturating_add(index);
    let budget = sh.memory_limit / 2;
    if map > budget {
        return Err(Error::TooLarge(format!(
            "a volume of {size} bytes in {bs}-byte blocks is too large: with the index of its \
             block map, the pool's block maps, kept in memory, would take {map} bytes, more \
             than half of the memory this process may use ({budget} bytes allowed); use a \
             larger block size or a smaller volume"
        )));
    }
    Ok(())
}

/// The largest volume this host can serve in `block_size` blocks: the index of its resident
/// block map must fit in half of the memory this process may use.
pub fn max_volume_size(block_size: u32) -> u64 {
    let budget = map_budget();
    // The most blocks whose map fits: map_bytes grows with the count.
    let (mut lo, mut hi) = (0u64, 1u64 << 40);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if crate::blocktree::map_bytes(mid) <= budget {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo.saturating_mul(u64::from(block_size))
}

/// Most memory one volume's resident block map may take: half of what this process may use.
/// Creating or growing a volume checks its index against it, and writes check what they add
/// (`VolumeHandle::check_map_budget`); opening only refuses a map past [`memory_limit`], so
/// that what was written here always opens here.
pub(crate) fn map_budget() -> u64 {
    memory_limit() / 2
}

/// The memory this process may use: the host's, its memory cgroup's limit, its address-space
/// limit, the least.
pub(crate) fn memory_limit() -> u64 {
    // SAFETY: sysconf(3) reads system configuration; it touches no memory of ours.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let phys = match (u64::try_from(pages), u64::try_from(page)) {
        (Ok(n), Ok(p)) if n > 0 && p > 0 => n.saturating_mul(p),
        _ => u64::MAX,
    };
    [Some(phys), cgroup_memory_limit(), address_space_limit()]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(u64::MAX)
}

/// The memory limit of this process's cgroup (v2 `memory.max`, v1
/// `memory.limit_in_bytes`), if it has one.
fn cgroup_memory_limit() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroups
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (hier, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let file = if hier == "0" && controllers.is_empty() {
                format!("/sys/fs/cgroup{path}/memory.max")
            } else if controllers.split(',').any(|c| c == "memory") {
                format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
            } else {
                return None;
            };
            std::fs::read_to_string(file)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .min()
}

/// `RLIMIT_AS`, if set.
fn address_space_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) fills the struct we pass, which lives across the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut r) };
    (rc == 0 && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur)
}

/// Built-in properties, in the order `get all` shows them. Space figures count data blocks
/// only (metadata is the pool's overhead, see `tarn pool status`).
pub const BUILTIN_PROPS: [&str; 18] = [
    "name",
    "type",
    "volsize",
    "volblocksize",
    "used",
    "referenced",
    "written",
    "usedbysnapshots",
    "refreservation",
    "usedbyrefreservation",
    "origin",
    "clones",
    "holds",
    "creation",
    "createtxg",
    "id",
    "guid",
    "pool",
];

/// The canonical name of a built-in property (accepting aliases), or `None` for a user one.
pub fn builtin_prop(prop: &str) -> Option<&'static str> {
    let p = prop.to_ascii_lowercase();
    let p = match p.as_str() {
        "size" => "volsize",
        "blocksize" | "volblock" => "volblocksize",
        "refer" => "referenced",
        "usedsnap" => "usedbysnapshots",
        "refreserv" => "refreservation",
        "usedrefreserv" => "usedbyrefreservation",
        "userrefs" => "holds",
        other => return BUILTIN_PROPS.iter().copied().find(|b| *b == other),
    };
    Some(p)
}

/// Checks a user property: the key's characters and length, not a built-in's name (a stream
/// could bring one, shown twice by `get all` and never removable), the value's length (what
/// [`Pool::set_props`] refuses), so that a caller can check every assignment before it makes
/// the first.
pub fn check_prop(k: &str, v: &str) -> Result<()> {
    if let Some(b) = builtin_prop(k) {
        return Err(Error::InvalidArgument(format!(
            "property '{k}' is built in ({b}): a user property needs another name"
        )));
    }
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
    // A tab or a newline would break the rows of scripted listings (`tarn list -H`).
    if v.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "property {k}: the value holds a control character (a tab, a newline, ...)"
        )));
    }
    Ok(())
}
