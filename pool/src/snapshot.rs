//! Snapshots and clones, in the OpenZFS manner: birth txgs decide sharing, deadlists record
//! what a snapshot holds that later datasets dropped. Taking a snapshot or a clone writes one
//! directory entry (O(1)); destroying costs in proportion to what changed, not the volume size.

use crate::blocktree::walk_born_after;
use crate::datasets::{check_prop, rename_entries, rename_fits};
use crate::deadlist::Deadlist;
use crate::error::{Error, Result};
use crate::phys::{BlockPtr, DatasetKind, DeadEntry};
use crate::pool::{lock, read, write, DatasetEntry, DatasetInfo, Pool, Shared};
use crate::reservation;
use crate::spacemap::SpaceMap;
use crate::volume::{StateInit, Volume, VolumeState};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a destroy may take with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Recursion {
    /// Only the named dataset; refused while anything depends on it.
    None,
    /// A volume's snapshots too (`-r`); refused while clones depend on them.
    Snapshots,
    /// Snapshots and every clone of them, recursively (`-R`).
    All,
}

type Datasets = BTreeMap<u64, DatasetEntry>;

/// Adds snapshot `rest` (below the pool name) of volume `head_id` as dataset `id`, in `txg`
/// (from a commit hook: the head's tree is final for the txg), with `guid` if given.
fn add_snapshot(ds: &mut Datasets, head_id: u64, rest: &str, id: u64, txg: u64, guid: Option<u64>) {
    let head = ds[&head_id].vol.clone();
    let mut st = lock(&head.state);
    let init = StateInit {
        size: st.size,
        root: st.root,
        referenced: st.referenced,
        written: st.written,
        prev_snap_txg: 0,
        deadlist: std::mem::take(&mut st.deadlist),
        read_only: true,
    };
    st.prev_snap_txg = txg;
    st.written = 0;
    drop(st);
    let vol = Arc::new(Volume::new(id, rest.to_string(), head.block_size, init));
    let mut e = DatasetEntry::new(
        DatasetKind::Snapshot,
        rest.to_string(),
        head_id,
        txg,
        BTreeMap::new(),
        vol,
    );
    if let Some(g) = guid {
        e.guid = g;
    }
    ds.insert(id, e);
}

/// What lands with a received incremental stream, in the txg that gives the volume the
/// stream's data ([`Pool::land_clone`]).
#[derive(Clone, Copy, Debug)]
pub struct Landing<'a> {
    /// The snapshot to take, `POOL/VOL@SNAP` (of the target volume).
    pub snapshot: &'a str,
    /// Its GUID (the sender's).
    pub guid: u64,
    /// Properties to set on the volume (an empty value removes one).
    pub props: &'a [(String, String)],
    /// User properties of the snapshot taken.
    pub snapshot_props: &'a [(String, String)],
    /// Snapshots of the volume newer than the clone's origin, destroyed in the same txg
    /// (`recv -F`): they must have no clones or holds.
    pub destroy: &'a [String],
}

/// Whether a volume's head differs from a snapshot of it (`base`: its size and root): written
/// since, zeroed, resized (a resize or a zeroing writes no data, so `written` misses them), or
/// with changes not yet committed. The snapshot shares the head's root until the head changes.
fn changed_since(head: &VolumeState, base: (u64, BlockPtr)) -> bool {
    head.written > 0
        || !head.open.is_empty()
        || head.tree.as_ref().is_some_and(|t| t.is_dirty())
        || head.size != base.0
        || head.root != base.1
}

/// A volume's snapshots, oldest first.
fn snapshots_of(ds: &Datasets, head: u64) -> Vec<u64> {
    let mut v: Vec<(u64, u64)> = ds
        .values()
        .filter(|d| d.kind == DatasetKind::Snapshot && d.parent == head)
        .map(|d| (d.creation_txg, d.vol.id))
        .collect();
    v.sort_unstable();
    v.into_iter().map(|(_, id)| id).collect()
}

/// Volumes cloned from a snapshot.
fn clones_of(ds: &Datasets, snap: u64) -> Vec<u64> {
    ds.values()
        .filter(|d| d.kind != DatasetKind::Snapshot && d.parent == snap)
        .map(|d| d.vol.id)
        .collect()
}

/// The txg of the snapshot before `snap` in its lineage (the previous snapshot of its volume,
/// else the volume's origin), 0 for none.
fn prev_txg(ds: &Datasets, snap: u64) -> u64 {
    let head = ds[&snap].parent;
    let snaps = snapshots_of(ds, head);
    let pos = snaps.iter().position(|&s| s == snap).unwrap_or(0);
    match pos.checked_sub(1) {
        Some(p) => ds[&snaps[p]].creation_txg,
        None => origin_txg(ds, head),
    }
}

/// The txg of a volume's origin snapshot, 0 for none.
fn origin_txg(ds: &Datasets, head: u64) -> u64 {
    match ds[&head].parent {
        0 => 0,
        o => ds.get(&o).map(|e| e.creation_txg).unwrap_or(0),
    }
}

/// The dataset after `snap` in its lineage: its volume's next snapshot, else the volume.
fn next_of(ds: &Datasets, snap: u64) -> u64 {
    let head = ds[&snap].parent;
    let snaps = snapshots_of(ds, head);
    let pos = snaps.iter().position(|&s| s == snap).unwrap_or(0);
    snaps.get(pos + 1).copied().unwrap_or(head)
}

fn names(ds: &Datasets, sh: &Shared, ids: &[u64]) -> String {
    ids.iter()
        .map(|i| format!("{}/{}", sh.name(), ds[i].name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn free(sm: &mut SpaceMap, txg: u64, p: &BlockPtr) {
    if !p.is_hole() {
        sm.free_deferred(txg, p.sector, u64::from(p.sectors));
    }
}

/// Whether snapshot `from` is in the history of `to` (a volume or snapshot): `to`'s volume
/// took it, earlier than `to`, or `to` descends from a clone of it or of a later one.
fn is_ancestor(ds: &Datasets, from: u64, to: u64) -> bool {
    let (mut vol, mut limit) = match ds[&to].kind {
        DatasetKind::Snapshot => (ds[&to].parent, ds[&to].creation_txg),
        _ => (to, u64::MAX),
    };
    loop {
        if ds[&from].parent == vol && ds[&from].creation_txg <= limit {
            return true;
        }
        let origin = ds[&vol].parent;
        let Some(o) = ds.get(&origin) else {
            return false;
        };
        (vol, limit) = (o.parent, o.creation_txg);
    }
}

impl Shared {
    /// Reads a whole metadata block (its pointer's length) and verifies it.
    pub(crate) fn read_whole(&self, p: &BlockPtr, what: &str) -> Result<Vec<u8>> {
        let mut b = vec![0u8; p.byte_len() as usize];
        self.read_block(p, &mut b, &|| what.to_string())?;
        Ok(b)
    }

    /// Every entry of a deadlist and the blocks of its chain; corruption where a chain block
    /// or an entry (a block the deadlist will free) lies outside the data area, or a chain
    /// block is larger than one can be.
    pub(crate) fn load_deadlist(&self, dl: &Deadlist) -> Result<(Vec<DeadEntry>, Vec<BlockPtr>)> {
        let area = self.data_area();
        let inside = |p: &BlockPtr| {
            p.is_hole()
                || (p.sector >= area.0
                    && p.sector
                        .checked_add(u64::from(p.sectors))
                        .is_some_and(|e| e <= area.1))
        };
        let bad = |p: &BlockPtr, what: &str| {
            Error::Corrupt(format!(
                "a deadlist of pool {} names {what} of {} sectors at sector {}, outside the data \
                 area (sectors {}..{}) or too large; the pool's metadata is damaged",
                self.name(),
                p.sectors,
                p.sector,
                area.0,
                area.1
            ))
        };
        let (entries, blocks) = dl.load(|p| {
            if !inside(p) || p.byte_len() > crate::phys::DEADLIST_MAX_BYTES {
                return Err(bad(p, "a chain block"));
            }
            self.read_whole(p, "a deadlist block")
        })?;
        if let Some(e) = entries.iter().find(|e| !inside(&e.ptr)) {
            return Err(bad(&e.ptr, "a freed block"));
        }
        Ok((entries, blocks))
    }

    /// Sectors of data entries of `id`'s deadlist born in `(after, upto]`.
    fn dead_data(&self, ds: &Datasets, id: u64, after: u64, upto: u64) -> Result<u64> {
        let st = lock(&ds[&id].vol.state);
        let (entries, _) = self.load_deadlist(&st.deadlist)?;
        Ok(entries
            .iter()
            .filter(|e| e.level == 0 && e.ptr.birth > after && e.ptr.birth <= upto)
            .map(|e| u64::from(e.ptr.sectors))
            .sum())
    }

    /// (used, usedbysnapshots) in sectors of data.
    pub(crate) fn space(&self, ds: &Datasets, d: &DatasetEntry) -> Result<(u64, u64)> {
        let id = d.vol.id;
        if d.kind == DatasetKind::Snapshot {
            return Ok((
                self.dead_data(ds, next_of(ds, id), prev_txg(ds, id), d.creation_txg)?,
                0,
            ));
        }
        // Every block born since the origin that the volume or any of its snapshots holds was
        // "written" in exactly one interval of the lineage: used is the sum of those.
        let snaps = snapshots_of(ds, id);
        let used = snaps
            .iter()
            .copied()
            .chain([id])
            .map(|s| lock(&ds[&s].vol.state).written)
            .fold(0u64, u64::saturating_add);
        if snaps.is_empty() {
            return Ok((used, 0));
        }
        let origin = origin_txg(ds, id);
        let mut held = 0;
        for s in snaps.iter().copied().chain([id]) {
            held = u64::saturating_add(held, self.dead_data(ds, s, origin, u64::MAX)?);
        }
        Ok((used, held))
    }

    /// Destroys snapshot `id` in `txg`: frees the next dataset's deadlist entries born after the
    /// previous snapshot, hands it this snapshot's deadlist, and moves the accounting.
    fn destroy_snapshot(&self, ds: &mut Datasets, txg: u64, id: u64) -> Result<()> {
        let e = &ds[&id];
        if !e.holds.is_empty() {
            let tags: Vec<_> = e.holds.iter().cloned().collect();
            return Err(Error::HasDependents {
                action: "destroy".into(),
                name: format!("{}/{}", self.name(), e.name),
                reason: format!("it has holds ({}); release them first", tags.join(", ")),
            });
        }
        let clones = clones_of(ds, id);
        if !clones.is_empty() {
            return Err(Error::HasDependents {
                action: "destroy".into(),
                name: format!("{}/{}", self.name(), e.name),
                reason: format!(
                    "clones depend on it ({}); destroy or promote them, or use -R",
                    names(ds, self, &clones)
                ),
            });
        }
        let head = e.parent;
        let next = next_of(ds, id);
        let ptxg = prev_txg(ds, id);
        let snap_vol = e.vol.clone();
        let next_vol = ds[&next].vol.clone();
        let mut sst = lock(&snap_vol.state);
        let mut nst = lock(&next_vol.state);
        let (n_entries, n_chain) = self.load_deadlist(&nst.deadlist)?;
        let (s_entries, s_chain) = self.load_deadlist(&sst.deadlist)?;
        let mut sm = lock(&self.spacemap);
        let mut freed_data = 0;
        let mut kept = Vec::with_capacity(n_entries.len() + s_entries.len());
        for e in n_entries {
            if e.ptr.birth > ptxg {
                free(&mut sm, txg, &e.ptr);
                if e.level == 0 {
                    freed_data += u64::from(e.ptr.sectors);
                }
            } else {
                kept.push(e);
            }
        }
        kept.extend(s_entries);
        n_chain
            .iter()
            .chain(&s_chain)
            .for_each(|p| free(&mut sm, txg, p));
        nst.deadlist = Deadlist::from_entries(kept);
        nst.written =
            nst.written
                .saturating_add(crate::volume::uncount(sst.written, freed_data, "written"));
        if next == head {
            nst.prev_snap_txg = ptxg;
        }
        sst.destroyed = true;
        drop((sm, nst, sst));
        ds.remove(&id);
        Ok(())
    }

    /// Destroys volume `id` (which has no snapshots) in `txg`: frees what it wrote since its
    /// origin, walking only blocks born after that.
    fn destroy_volume(&self, ds: &mut Datasets, txg: u64, id: u64) -> Result<()> {
        let vol = ds[&id].vol.clone();
        let mut st = lock(&vol.state);
        let nblocks = (st.size / u64::from(vol.block_size)) as usize;
        let mut doomed = Vec::new();
        walk_born_after(
            st.root,
            nblocks,
            st.prev_snap_txg,
            &self.ptr_shape(vol.block_size, &format!("{}/{}", self.name(), ds[&id].name)),
            &mut |p, buf| {
                self.read_block(p, buf, &|| {
                    format!("an indirect block of {}/{}", self.name(), ds[&id].name)
                })
            },
            &mut |_, _, p| {
                doomed.push(*p);
                Ok(())
            },
        )?;
        let (_, chain) = self.load_deadlist(&st.deadlist)?;
        // Pending writes are dropped only once nothing can fail.
        self.unreserve(st.discard_dirty(&mut lock(&self.spacemap), 0, vol.block_size));
        let mut sm = lock(&self.spacemap);
        doomed
            .iter()
            .chain(&chain)
            .for_each(|p| free(&mut sm, txg, p));
        st.destroyed = true;
        st.tree = None;
        drop((sm, st));
        ds.remove(&id);
        Ok(())
    }

    /// Destroys `id` and, as `rec` allows, what depends on it; returns the names destroyed.
    fn destroy_rec(
        &self,
        ds: &mut Datasets,
        txg: u64,
        id: u64,
        rec: Recursion,
    ) -> Result<Vec<String>> {
        let mut gone = Vec::new();
        let name = format!("{}/{}", self.name(), ds[&id].name);
        if ds[&id].kind == DatasetKind::Snapshot {
            if rec == Recursion::All {
                for c in clones_of(ds, id) {
                    gone.extend(self.destroy_rec(ds, txg, c, Recursion::All)?);
                }
            }
            self.destroy_snapshot(ds, txg, id)?;
        } else {
            let snaps = snapshots_of(ds, id);
            if !snaps.is_empty() && rec == Recursion::None {
                return Err(Error::HasDependents {
                    action: "destroy".into(),
                    name,
                    reason: format!("it has snapshots ({}); use -r", names(ds, self, &snaps)),
                });
            }
            for s in snaps.into_iter().rev() {
                gone.extend(self.destroy_rec(ds, txg, s, rec)?);
            }
            self.destroy_volume(ds, txg, id)?;
        }
        gone.push(name);
        Ok(gone)
    }
}

impl Pool {
    fn entry_id(&self, ds: &Datasets, full: &str) -> Result<u64> {
        let rest = self.local(full)?;
        ds.values()
            .find(|d| d.name == rest)
            .map(|d| d.vol.id)
            .ok_or_else(|| Error::NotFound(full.into()))
    }

    /// Whether volume `full` changed since its newest snapshot (written, zeroed or resized,
    /// committed or not); `true` when it has none. A receive of an incremental stream onto it
    /// would discard such changes.
    pub fn changed_since_newest_snapshot(&self, full: &str) -> Result<bool> {
        let ds = read(&self.shared.datasets);
        let id = self.entry_id(&ds, full)?;
        let Some(newest) = snapshots_of(&ds, id).last().copied() else {
            return Ok(true);
        };
        let base = {
            let b = lock(&ds[&newest].vol.state);
            (b.size, b.root)
        };
        let head = lock(&ds[&id].vol.state);
        Ok(changed_since(&head, base))
    }

    /// Destroys a volume or snapshot, refusing while snapshots, clones or holds depend on it;
    /// durable on return.
    pub fn destroy(&self, full: &str) -> Result<()> {
        self.destroy_with(full, Recursion::None).map(|_| ())
    }

    /// Destroys a volume or snapshot and, as `rec` allows, its snapshots and clones; returns
    /// every name destroyed. Nothing is destroyed if anything is refused. Durable on return.
    pub fn destroy_with(&self, full: &str, rec: Recursion) -> Result<Vec<String>> {
        let sh = &self.shared;
        sh.check_writable()?;
        let mut cs = sh.lock_commit_settled()?;
        let txg = cs.txg + 1;
        let gone = {
            let mut ds = write(&sh.datasets);
            let id = self.entry_id(&ds, full)?;
            self.check_destroyable(&ds, id, rec)?;
            sh.destroy_rec(&mut ds, txg, id, rec)?
        };
        sh.commit_locked(&mut cs)?;
        Ok(gone)
    }

    /// Renames volume `from` to `to` as [`Pool::rename`] does, destroying a volume already
    /// named `to` (one without snapshots, clones or holds) in the same txg: after a crash,
    /// `to` names the old volume or `from`'s, never nothing (rename(2) over a file, which the
    /// NFS view needs). Nothing changes if anything is refused. Durable on return.
    pub fn rename_replacing(&self, from: &str, to: &str) -> Result<()> {
        let (old, new) = (self.local_volume(from)?, self.local_volume(to)?);
        let sh = &self.shared;
        sh.check_writable()?;
        let mut cs = sh.lock_commit_settled()?;
        let txg = cs.txg + 1;
        {
            let mut ds = write(&sh.datasets);
            let id = rename_fits(&ds, from, old, new, sh.name())?;
            match self.entry_id(&ds, to) {
                Ok(target) if target == id => return Ok(()),
                Ok(target) => {
                    if ds[&target].kind != DatasetKind::Volume {
                        return Err(Error::InvalidArgument(format!("{to} is not a volume")));
                    }
                    self.check_destroyable(&ds, target, Recursion::None)?;
                    sh.destroy_rec(&mut ds, txg, target, Recursion::None)?;
                }
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            rename_entries(&mut ds, id, new);
        }
        sh.commit_locked(&mut cs)?;
        Ok(())
    }

    /// Refuses a destroy up front (holds, clones, snapshots) so a refused one changes nothing.
    fn check_destroyable(&self, ds: &Datasets, id: u64, rec: Recursion) -> Result<()> {
        let sh = &self.shared;
        let e = &ds[&id];
        let name = format!("{}/{}", sh.name(), e.name);
        let refuse = |reason: String| {
            Err(Error::HasDependents {
                action: "destroy".into(),
                name: name.clone(),
                reason,
            })
        };
        if e.kind == DatasetKind::Snapshot {
            if !e.holds.is_empty() {
                return refuse(format!(
                    "it has holds ({}); release them first",
                    e.holds.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            let clones = clones_of(ds, id);
            if !clones.is_empty() {
                if rec < Recursion::All {
                    return refuse(format!(
                        "clones depend on it ({}); destroy or promote them, or use -R",
                        names(ds, sh, &clones)
                    ));
                }
                for c in clones {
                    self.check_destroyable(ds, c, rec)?;
                }
            }
        } else {
            let snaps = snapshots_of(ds, id);
            if !snaps.is_empty() && rec == Recursion::None {
                return refuse(format!(
                    "it has snapshots ({}); use -r",
                    names(ds, sh, &snaps)
                ));
            }
            for s in snaps {
                self.check_destroyable(ds, s, rec)?;
            }
        }
        Ok(())
    }

    /// Takes snapshots `POOL/VOL@SNAP`, all in one txg (atomic), each holding every write made
    /// before the call. O(1) per snapshot: nothing is copied. Durable on return.
    pub fn snapshot(&self, fulls: &[&str]) -> Result<Vec<DatasetInfo>> {
        // New names are held to the limit here. A receive's temporary snapshot may pass it
        // for a moment: it is checked under its final name, which the rename checks again.
        for full in fulls {
            crate::names::check_length(full)?;
        }
        self.snapshot_inner(fulls, None)
    }

    fn snapshot_inner(&self, fulls: &[&str], guid: Option<u64>) -> Result<Vec<DatasetInfo>> {
        let sh = &self.shared;
        sh.check_writable()?;
        let mut cs = lock(&sh.commit);
        let mut targets = Vec::new();
        {
            let ds = read(&sh.datasets);
            for full in fulls {
                let rest = self.local(full)?;
                let Some((head, _)) = rest.split_once('@') else {
                    return Err(Error::InvalidArgument(format!(
                        "{full} is not a snapshot name (POOL/VOL@SNAP)"
                    )));
                };
                let head_id = ds
                    .values()
                    .find(|d| d.name == head && d.kind == DatasetKind::Volume)
                    .map(|d| d.vol.id)
                    .ok_or_else(|| Error::NotFound(format!("{}/{head}", self.name())))?;
                if ds.values().any(|d| d.name == rest)
                    || targets.iter().any(|(_, r): &(u64, &str)| *r == rest)
                {
                    return Err(Error::AlreadyExists((*full).into()));
                }
                // Snapshots of one call share a txg; two of one volume could not be ordered
                // (zfs(8) refuses them too).
                if let Some((_, other)) = targets.iter().find(|(h, _)| *h == head_id) {
                    return Err(Error::InvalidArgument(format!(
                        "{full} and {}/{other}: one snapshot of a volume at a time",
                        self.name()
                    )));
                }
                targets.push((head_id, rest));
            }
            // A snapshot shares every block the volume has: its reservation is held whole
            // again (ZFS refuses such a snapshot where the pool cannot hold it, too).
            let increase = targets
                .iter()
                .map(|(h, _)| {
                    let d = &ds[h];
                    let r = reservation::reservation(&d.props, lock(&d.vol.state).size);
                    sh.slack_increase(&d.vol, reservation::held(r, 0, d.vol.block_size))
                })
                .sum();
            sh.admit(increase, None)?;
        }
        let first_id = cs.next_id;
        cs.next_id += targets.len() as u64;
        sh.commit_with(&mut cs, &mut |txg| {
            let mut ds = write(&sh.datasets);
            for (i, (head_id, rest)) in targets.iter().enumerate() {
                add_snapshot(&mut ds, *head_id, rest, first_id + i as u64, txg, guid);
            }
            Ok(())
        })?;
        drop(cs);
        fulls.iter().map(|f| self.dataset(f)).collect()
    }

    /// Takes one snapshot and gives it `guid` (receive keeps the sender's identity so later
    /// incremental streams find their base), in one txg. Durable on return.
    pub fn snapshot_with_guid(&self, full: &str, guid: u64) -> Result<DatasetInfo> {
        self.snapshot_inner(&[full], Some(guid))
            .map(|mut v| v.remove(0))
    }

    /// Gives volume `target` the contents of `clone`, a clone of `target`'s newest snapshot, and
    /// destroys the clone (how a received incremental stream lands atomically). Refuses if
    /// `target` changed since that snapshot, unless `force`, which discards those changes.
    /// Durable on return.
    pub fn replace_with_clone(&self, target: &str, clone: &str, force: bool) -> Result<()> {
        self.replace_inner(target, clone, force, None)
    }

    /// [`Pool::replace_with_clone`], and in the same txg takes `landing`'s snapshot of
    /// `target` (with the given GUID) and sets its properties: a crash leaves the volume
    /// either as it was or with the stream's data, snapshot and properties, never part of
    /// them. Durable on return.
    pub fn land_clone(
        &self,
        target: &str,
        clone: &str,
        force: bool,
        landing: Landing<'_>,
    ) -> Result<()> {
        self.replace_inner(target, clone, force, Some(landing))
    }

    fn replace_inner(
        &self,
        target: &str,
        clone: &str,
        force: bool,
        landing: Option<Landing<'_>>,
    ) -> Result<()> {
        let sh = &self.shared;
        sh.check_writable()?;
        // Everything the landing adds is checked before anything changes.
        let snap_rest = match landing {
            Some(l) => {
                let rest = self.local(l.snapshot)?;
                if rest.split_once('@').map(|(h, _)| h) != Some(self.local(target)?) {
                    return Err(Error::InvalidArgument(format!(
                        "{} is not a snapshot name of {target}",
                        l.snapshot
                    )));
                }
                l.props
                    .iter()
                    .chain(l.snapshot_props)
                    .try_for_each(|(k, v)| check_prop(k, v))?;
                reservation::refuse_in(l.props, "a received stream")?;
                reservation::refuse_in(l.snapshot_props, "a received stream")?;
                Some(rest.to_string())
            }
            None => None,
        };
        // The clone's writes so far are part of what lands.
        if sh.has_dirty() {
            self.sync()?;
        }
        let mut cs = sh.lock_commit_settled()?;
        let txg = cs.txg + 1;
        let tid = {
            let mut ds = write(&sh.datasets);
            let tid = self.entry_id(&ds, target)?;
            let cid = self.entry_id(&ds, clone)?;
            let base = ds[&cid].parent;
            // The snapshots the landing destroys: the target's, none with clones or holds.
            let mut doomed: Vec<u64> = match &landing {
                Some(l) => l
                    .destroy
                    .iter()
                    .map(|n| self.entry_id(&ds, n))
                    .collect::<Result<_>>()?,
                None => Vec::new(),
            };
            // Each once (a name given twice would be destroyed twice), in any order given.
            doomed.sort_unstable();
            doomed.dedup();
            let base_txg = ds.get(&base).map_or(u64::MAX, |b| b.creation_txg);
            for &d in &doomed {
                let e = &ds[&d];
                if e.kind != DatasetKind::Snapshot || e.parent != tid || e.creation_txg <= base_txg
                {
                    return Err(Error::InvalidArgument(format!(
                        "{}/{} is not a snapshot of {target} newer than the clone's origin",
                        self.name(),
                        ds[&d].name
                    )));
                }
                self.check_destroyable(&ds, d, Recursion::None)?;
            }
            let newest = snapshots_of(&ds, tid)
                .into_iter()
                .rfind(|s| !doomed.contains(s));
            if ds[&tid].kind != DatasetKind::Volume || base == 0 || newest != Some(base) {
                return Err(Error::InvalidArgument(format!(
                    "{clone} is not a clone of {target}'s newest snapshot"
                )));
            }
            if !snapshots_of(&ds, cid).is_empty() || !clones_of(&ds, cid).is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "{clone} has snapshots of its own"
                )));
            }
            let tvol = ds[&tid].vol.clone();
            let cvol = ds[&cid].vol.clone();
            if tvol.block_size != cvol.block_size {
                return Err(Error::InvalidArgument(format!(
                    "{clone} and {target} differ in block size"
                )));
            }
            // The last check that can fail: nothing has changed yet.
            if let Some(rest) = &snap_rest {
                if ds
                    .values()
                    .any(|d| &d.name == rest && !doomed.contains(&d.vol.id))
                {
                    return Err(Error::AlreadyExists(format!("{}/{rest}", self.name())));
                }
            }
            let base_state = {
                let b = lock(&ds[&base].vol.state);
                (b.size, b.root)
            };
            if changed_since(&lock(&tvol.state), base_state) && !force {
                return Err(Error::HasDependents {
                    action: "replace".into(),
                    name: target.into(),
                    reason: "it changed since its newest snapshot; use -F to discard those changes"
                        .into(),
                });
            }
            // A reserved target holds its reservation for the clone's size, and whole again
            // where the landing takes a snapshot (as `snapshot_inner` admits it).
            let (csize, cwritten) = {
                let c = lock(&cvol.state);
                (c.size, c.written.saturating_mul(crate::phys::SECTOR))
            };
            let r = reservation::reservation(&ds[&tid].props, csize);
            let written = if snap_rest.is_some() { 0 } else { cwritten };
            let target = reservation::held(r, written, tvol.block_size);
            sh.admit(sh.slack_increase(&tvol, target), Some(&tvol))?;
            // From here on memory changes: a failure must not let a later commit write half.
            // Newest first, as a user would destroy them.
            doomed.sort_unstable_by_key(|d| std::cmp::Reverse(ds[d].creation_txg));
            for &d in &doomed {
                if let Err(e) = sh.destroy_rec(&mut ds, txg, d, Recursion::None) {
                    sh.poison(&e);
                    return Err(e);
                }
            }
            {
                let mut tst = lock(&tvol.state);
                self.shared.unreserve(tst.discard_dirty(
                    &mut lock(&sh.spacemap),
                    0,
                    tvol.block_size,
                ));
                let mut cst = lock(&cvol.state);
                self.shared.unreserve(cst.discard_dirty(
                    &mut lock(&sh.spacemap),
                    0,
                    cvol.block_size,
                ));
                // Both heads share the same origin snapshot (same prev_snap_txg), so their states,
                // trees and deadlists are interchangeable; the old head's state then dies with the
                // clone entry.
                std::mem::swap(&mut tst.root, &mut cst.root);
                std::mem::swap(&mut tst.size, &mut cst.size);
                std::mem::swap(&mut tst.tree, &mut cst.tree);
                std::mem::swap(&mut tst.referenced, &mut cst.referenced);
                std::mem::swap(&mut tst.written, &mut cst.written);
                std::mem::swap(&mut tst.deadlist, &mut cst.deadlist);
            }
            // The heads are swapped in memory: a failure now must not let a later commit
            // write half of this.
            if let Err(e) = sh.destroy_volume(&mut ds, txg, cid) {
                sh.poison(&e);
                return Err(e);
            }
            tid
        };
        match (landing, snap_rest) {
            (Some(l), Some(rest)) => {
                let id = cs.next_id;
                cs.next_id += 1;
                sh.commit_with(&mut cs, &mut |txg| {
                    let mut ds = write(&sh.datasets);
                    add_snapshot(&mut ds, tid, &rest, id, txg, Some(l.guid));
                    if let Some(t) = ds.get_mut(&tid) {
                        t.merge_props(l.props);
                    }
                    if let Some(s) = ds.get_mut(&id) {
                        s.merge_props(l.snapshot_props);
                    }
                    Ok(())
                })?;
            }
            _ => {
                sh.commit_locked(&mut cs)?;
            }
        }
        Ok(())
    }

    /// Creates volume `new` from snapshot `snap`: O(1), sharing every block. Durable on return.
    pub fn clone_snapshot(
        &self,
        snap: &str,
        new: &str,
        props: &BTreeMap<String, String>,
    ) -> Result<DatasetInfo> {
        let new_rest = self.local(new)?;
        if new_rest.contains('@') {
            return Err(Error::InvalidArgument(format!(
                "{new} is a snapshot name; a clone is a volume"
            )));
        }
        let listed: Vec<(String, String)> =
            props.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        reservation::refuse_in(&listed, "a clone")?;
        let sh = &self.shared;
        sh.check_writable()?;
        let mut cs = lock(&sh.commit);
        {
            let mut ds = write(&sh.datasets);
            let sid = self.entry_id(&ds, snap)?;
            let s = &ds[&sid];
            if s.kind != DatasetKind::Snapshot {
                return Err(Error::InvalidArgument(format!("{snap} is not a snapshot")));
            }
            if ds.values().any(|d| d.name == new_rest) {
                return Err(Error::AlreadyExists(new.into()));
            }
            crate::datasets::check_nesting(&ds, new_rest, None, self.name())?;
            let (txg, block_size) = (s.creation_txg, s.vol.block_size);
            let init = {
                let st = lock(&s.vol.state);
                StateInit {
                    size: st.size,
                    root: st.root,
                    referenced: st.referenced,
                    written: 0,
                    prev_snap_txg: txg,
                    deadlist: Deadlist::default(),
                    read_only: false,
                }
            };
            let id = cs.next_id;
            cs.next_id += 1;
            let vol = Arc::new(Volume::new(id, new_rest.into(), block_size, init));
            ds.insert(
                id,
                DatasetEntry::new(
                    DatasetKind::Volume,
                    new_rest.into(),
                    sid,
                    cs.txg + 1,
                    props.clone(),
                    vol,
                ),
            );
        }
        sh.commit_locked(&mut cs)?;
        drop(cs);
        self.dataset(new)
    }

    /// Rolls a volume back to its newest snapshot `snap`, discarding every change since
    /// (including writes not yet committed). Newer snapshots must be destroyed first
    /// (`destroy_with`), as `zfs rollback -r` does. Durable on return.
    pub fn rollback(&self, snap: &str) -> Result<()> {
        let sh = &self.shared;
        sh.check_writable()?;
        let mut cs = sh.lock_commit_settled()?;
        let txg = cs.txg + 1;
        {
            let ds = read(&sh.datasets);
            let sid = self.entry_id(&ds, snap)?;
            let s = &ds[&sid];
            if s.kind != DatasetKind::Snapshot {
                return Err(Error::InvalidArgument(format!("{snap} is not a snapshot")));
            }
            let head = s.parent;
            let snaps = snapshots_of(&ds, head);
            let newer: Vec<u64> = snaps
                .iter()
                .copied()
                .skip_while(|&x| x != sid)
                .skip(1)
                .collect();
            if !newer.is_empty() {
                return Err(Error::HasDependents {
                    action: "roll back to".into(),
                    name: snap.into(),
                    reason: format!(
                        "newer snapshots exist ({}); use -r to destroy them",
                        names(&ds, sh, &newer)
                    ),
                });
            }
            let hv = ds[&head].vol.clone();
            let (s_root, s_size, s_ref) = {
                let st = lock(&s.vol.state);
                (st.root, st.size, st.referenced)
            };
            let mut st = lock(&hv.state);
            let nblocks = (st.size / u64::from(hv.block_size)) as usize;
            let mut doomed = Vec::new();
            walk_born_after(
                st.root,
                nblocks,
                s.creation_txg,
                &sh.ptr_shape(hv.block_size, &format!("{}/{}", sh.name(), ds[&head].name)),
                &mut |p, buf| {
                    sh.read_block(p, buf, &|| {
                        format!("an indirect block of {}", ds[&head].name)
                    })
                },
                &mut |_, _, p| {
                    doomed.push(*p);
                    Ok(())
                },
            )?;
            let (_, chain) = sh.load_deadlist(&st.deadlist)?;
            // An `auto` reservation growing with the size the snapshot had is held at once;
            // the rest of what a rollback holds again (its `written`) comes back as the
            // blocks it frees are released.
            let props = &ds[&head].props;
            let at =
                |size| reservation::held(reservation::reservation(props, size), 0, hv.block_size);
            sh.admit(at(s_size).saturating_sub(at(st.size)), Some(&hv))?;
            // Pending writes are dropped only once nothing can fail.
            self.shared
                .unreserve(st.discard_dirty(&mut lock(&sh.spacemap), 0, hv.block_size));
            let mut sm = lock(&sh.spacemap);
            doomed
                .iter()
                .chain(&chain)
                .for_each(|p| free(&mut sm, txg, p));
            st.root = s_root;
            st.size = s_size;
            st.tree = None;
            st.referenced = s_ref;
            st.written = 0;
            st.deadlist = Deadlist::default();
        }
        sh.commit_locked(&mut cs)?;
        Ok(())
    }

    /// Makes clone `full` independent of its origin: the origin's snapshots up to and including
    /// the one it was cloned from move to the clone, and the origin becomes a clone of that
    /// snapshot (ZFS semantics), so the origin can then be destroyed. Durable on return.
    pub fn promote(&self, full: &str) -> Result<()> {
        let sh = &self.shared;
        sh.check_writable()?;
        let mut cs = sh.lock_commit_settled()?;
        {
            let mut ds = write(&sh.datasets);
            let cid = self.entry_id(&ds, full)?;
            let c = &ds[&cid];
            if c.kind != DatasetKind::Volume || c.parent == 0 {
                return Err(Error::InvalidArgument(format!("{full} is not a clone")));
            }
            let sid = c.parent;
            let oid = ds[&sid].parent;
            let cut = ds[&sid].creation_txg;
            let moving: Vec<u64> = snapshots_of(&ds, oid)
                .into_iter()
                .filter(|s| ds[s].creation_txg <= cut)
                .collect();
            let cname = c.name.clone();
            let own: Vec<String> = snapshots_of(&ds, cid)
                .iter()
                .map(|s| ds[s].snap_name().to_string())
                .collect();
            if let Some(clash) = moving
                .iter()
                .find(|s| own.iter().any(|o| o == ds[*s].snap_name()))
            {
                return Err(Error::AlreadyExists(format!(
                    "{}/{cname}@{}",
                    sh.name(),
                    ds[clash].snap_name()
                )));
            }
            // The snapshots move under the clone's name: each must fit.
            for s in &moving {
                let name = format!("{}/{cname}@{}", sh.name(), ds[s].snap_name());
                crate::names::check_length(&name)?;
            }
            for s in &moving {
                let e = ds
                    .get_mut(s)
                    .ok_or_else(|| Error::NotFound("snapshot".into()))?;
                let renamed = format!("{cname}@{}", e.snap_name());
                *write(&e.vol.name) = renamed.clone();
                e.name = renamed;
                e.parent = cid;
            }
            let o_origin = ds[&oid].parent;
            if let Some(c) = ds.get_mut(&cid) {
                c.parent = o_origin;
            }
            if let Some(o) = ds.get_mut(&oid) {
                o.parent = sid;
            }
        }
        sh.commit_locked(&mut cs)?;
        Ok(())
    }

    /// Adds hold `tag` to a snapshot: it cannot be destroyed until released. Durable on return.
    pub fn hold(&self, snap: &str, tag: &str) -> Result<()> {
        self.hold_all(&[snap], tag)
    }

    /// Adds hold `tag` to each of `snaps` (a name given twice counts once), in one commit:
    /// every snapshot is checked before any changes, so all get the hold or none does.
    pub fn hold_all(&self, snaps: &[&str], tag: &str) -> Result<()> {
        use crate::phys::{MAX_HOLDS, MAX_HOLD_TAG};
        if tag.is_empty() || tag.len() > MAX_HOLD_TAG || tag.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(format!(
                "a hold tag is 1 to {MAX_HOLD_TAG} bytes with no control characters ({} given)",
                tag.len()
            )));
        }
        self.change_holds(snaps, |snap, h| {
            if h.len() >= MAX_HOLDS {
                return Err(Error::InvalidArgument(format!(
                    "{snap} has {MAX_HOLDS} holds already, the most a snapshot takes; release some"
                )));
            }
            if !h.insert(tag.to_string()) {
                return Err(Error::AlreadyExists(format!("hold '{tag}' on {snap}")));
            }
            Ok(())
        })
    }

    /// Removes hold `tag` from a snapshot. Durable on return.
    pub fn release(&self, snap: &str, tag: &str) -> Result<()> {
        self.release_all(&[snap], tag)
    }

    /// Removes hold `tag` from each of `snaps`, in one commit, all or none (as
    /// [`Pool::hold_all`]).
    pub fn release_all(&self, snaps: &[&str], tag: &str) -> Result<()> {
        self.change_holds(snaps, |snap, h| {
            if !h.remove(tag) {
                return Err(Error::NotFound(format!("hold '{tag}' on {snap}")));
            }
            Ok(())
        })
    }

    /// Applies `f` to the holds of each snapshot named once or more in `snaps`, changing
    /// nothing unless it succeeds for all of them; one commit.
    fn change_holds(
        &self,
        snaps: &[&str],
        f: impl Fn(&str, &mut std::collections::BTreeSet<String>) -> Result<()>,
    ) -> Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        let snaps: Vec<&str> = snaps.iter().copied().filter(|s| seen.insert(*s)).collect();
        if let Some(snap) = snaps.iter().find(|s| !s.contains('@')) {
            return Err(Error::InvalidArgument(format!("{snap} is not a snapshot")));
        }
        let sh = &self.shared;
        sh.check_writable()?;
        let mut cs = lock(&sh.commit);
        {
            let mut ds = write(&sh.datasets);
            let mut changed = Vec::with_capacity(snaps.len());
            for snap in &snaps {
                let id = self.entry_id(&ds, snap)?;
                let e = ds.get(&id).ok_or_else(|| Error::NotFound((*snap).into()))?;
                if e.kind != DatasetKind::Snapshot {
                    return Err(Error::InvalidArgument(format!("{snap} is not a snapshot")));
                }
                let mut holds = e.holds.clone();
                f(snap, &mut holds)?;
                changed.push((id, holds));
            }
            for (id, holds) in changed {
                if let Some(e) = ds.get_mut(&id) {
                    e.holds = holds;
                }
            }
        }
        sh.commit_locked(&mut cs)?;
        Ok(())
    }

    /// Byte ranges that differ between snapshot `from` and `to`: a later snapshot of its volume,
    /// a volume descended from it (a clone, or a clone of a clone) with writes committed first,
    /// or its own volume when `None`. Merged and sorted; only blocks born after `from` are
    /// visited.
    pub fn diff(&self, from: &str, to: Option<&str>) -> Result<Vec<(u64, u64)>> {
        let sh = &self.shared;
        // A volume's side of the diff is its committed state: commit what was written first
        // (only then: a diff of committed data writes nothing).
        if sh.has_dirty() {
            self.sync()?;
        }
        let _cs = sh.lock_commit_settled()?;
        let ds = read(&sh.datasets);
        let fid = self.entry_id(&ds, from)?;
        let f = &ds[&fid];
        if f.kind != DatasetKind::Snapshot {
            return Err(Error::InvalidArgument(format!("{from} is not a snapshot")));
        }
        let tid = match to {
            Some(t) => self.entry_id(&ds, t)?,
            None => f.parent,
        };
        let t = &ds[&tid];
        if !is_ancestor(&ds, fid, tid) {
            return Err(Error::InvalidArgument(format!(
                "{} is not a later state of {from} (its volume, a later snapshot of it, or a clone descended from it)",
                to.unwrap_or("the volume")
            )));
        }
        let bs = u64::from(t.vol.block_size);
        let (root, size) = {
            let st = lock(&t.vol.state);
            (st.root, st.size)
        };
        let from_size = lock(&f.vol.state).size;
        let mut out: Vec<(u64, u64)> = Vec::new();
        let nblocks = (size / bs) as usize;
        walk_born_after(
            root,
            nblocks,
            f.creation_txg,
            &sh.ptr_shape(t.vol.block_size, &format!("{}/{}", sh.name(), t.name)),
            &mut |p, buf| sh.read_block(p, buf, &|| format!("an indirect block of {}", t.name)),
            &mut |level, first, p| {
                // A data block, or a hole standing for a whole subtree zeroed since `from`.
                if level == 0 || p.is_hole() {
                    let span = (crate::phys::PTRS_PER_INDIRECT as u64)
                        .saturating_pow(level as u32)
                        .saturating_mul(bs);
                    let start = first.saturating_mul(bs);
                    let end = start.saturating_add(span).min(size);
                    match out.last_mut() {
                        Some(l) if l.0 + l.1 == start => l.1 = end - l.0,
                        _ => out.push((start, end - start)),
                    }
                }
                Ok(())
            },
        )?;
        if size != from_size {
            let (lo, hi) = (size.min(from_size), size.max(from_size));
            out.retain(|r| r.0 < lo);
            if let Some(l) = out.last_mut() {
                l.1 = l.1.min(lo - l.0);
            }
            out.push((lo, hi - lo));
        }
        Ok(out)
    }
}
