//! Committing a transaction group: the one path by which anything becomes durable.
//!
//! Order (each step only writes free space until the last):
//! 1. release frees old enough to reuse (`spacemap::released_by`: DEFER_TXGS + 1 back), punching
//!    them out of the file first with `autotrim`;
//! 2. take every volume's dirty map (writers continue into the next txg);
//! 3. write dirty data blocks to fresh space, all-zero blocks becoming holes;
//! 4. point the trees at them and rewrite dirty indirect blocks bottom-up;
//! 5. write the changed directory leaves, the deferred-free chain (pending frees) and the meta
//!    block that roots them;
//! 6. write the changed space-map chunks to copy `txg % 2`;
//! 7. sync; write uberblock `txg` to ring slot `txg % 64`; sync.

use crate::error::{Error, Result};
use crate::phys::{
    checksum, encode_deferred_block, encode_dir_leaf, BlockPtr, DatasetKind, DatasetPhys,
    DeferredFree, MetaPhys, UberblockPhys, DEFERRED_WRITE_ENTRIES, DIR_LEAF_IDS, INDIRECT_SECTORS,
    RING_OFFSET, RING_SLOTS, SECTOR,
};
use crate::pool::{lock, now_secs, read, write, CommitState, Shared};
use crate::spacemap::released_by;
use crate::volume::{is_zero, Dirty, DirtyMap, Volume};
use std::collections::BTreeMap;
use std::io::IoSlice;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Runs for indirect blocks a commit holds beyond what the busiest recent one used.
const MIN_META_RUNS: usize = 8;
/// The remembered peak of indirect blocks per commit loses 1/PEAK_DECAY of itself a commit.
const PEAK_DECAY: usize = 64;

impl Shared {
    /// Whether anything waits to be committed.
    pub(crate) fn has_dirty(&self) -> bool {
        self.pending.load(Ordering::Acquire) || self.dirty_bytes.load(Ordering::Acquire) > 0
    }

    /// Commits the open txg and waits for it to be durable.
    pub(crate) fn commit(&self) -> Result<u64> {
        let mut cs = lock(&self.commit);
        self.commit_locked(&mut cs)
    }

    /// Commits with the commit lock already held. Any failure poisons the pool.
    pub(crate) fn commit_locked(&self, cs: &mut CommitState) -> Result<u64> {
        self.commit_with(cs, &mut |_| Ok(()))
    }

    /// Takes the commit lock, committing first if a volume grew since the last commit. A
    /// grow waits for the next commit, and until then a volume's committed `root` is the tree
    /// of its old size while `size` is the new one: a walk of `root` (destroy, rollback, diff,
    /// scrub) would read data blocks as indirect ones across a change of height, or free the
    /// replaced indirect blocks a second time.
    pub(crate) fn lock_commit_settled(&self) -> Result<MutexGuard<'_, CommitState>> {
        let mut cs = lock(&self.commit);
        let grown = read(&self.datasets).values().any(|d| {
            lock(&d.vol.state)
                .tree
                .as_ref()
                .is_some_and(|t| t.is_dirty())
        });
        if grown {
            self.commit_locked(&mut cs)?;
        }
        Ok(cs)
    }

    /// Commits, running `hook(txg)` once every volume's tree is final for the txg and before
    /// the directory is written: snapshots are taken there, so they hold exactly that state.
    /// Any failure poisons the pool.
    pub(crate) fn commit_with(
        &self,
        cs: &mut CommitState,
        hook: &mut dyn FnMut(u64) -> Result<()>,
    ) -> Result<u64> {
        self.check_writable()?;
        let r = self.commit_inner(cs, hook);
        if let Err(e) = &r {
            self.poison(e);
        }
        self.throttle.1.notify_all();
        r
    }

    fn io(&self, what: &str, e: std::io::Error) -> Error {
        Error::io(format!("{what} on {}", self.dev.describe()), e)
    }

    fn no_space(&self, needed: u64) -> Error {
        let free = lock(&self.spacemap).free() * SECTOR;
        Error::NoSpace {
            pool: self.name().into(),
            needed,
            available: free,
        }
    }

    /// Allocates and writes one metadata block: an indirect block in a run held for one
    /// ([`crate::spacemap::SpaceMap::hold_runs`]) where there is one.
    fn write_meta_block(&self, data: &[u8], txg: u64) -> Result<BlockPtr> {
        let sectors = (data.len() as u64).div_ceil(SECTOR);
        // Bind the allocation first: `no_space` takes the space-map lock itself.
        let allocated = {
            let mut sm = lock(&self.spacemap);
            if sectors == INDIRECT_SECTORS {
                self.meta_runs_used.fetch_add(1, Ordering::Relaxed);
                sm.take_run(sectors)
                    .or_else(|| sm.alloc(sectors))
                    .or_else(|| sm.take_promised_run(sectors))
            } else {
                sm.alloc(sectors)
            }
        };
        let sector = allocated.ok_or_else(|| self.no_space(data.len() as u64))?;
        let p = BlockPtr {
            sector,
            sectors: sectors as u32,
            birth: txg,
            checksum: checksum(data, self.label.guid),
        };
        self.dev
            .write_at(data, p.offset())
            .map_err(|e| self.io("writing a metadata block", e))?;
        Ok(p)
    }

    /// Writes the deferred-free chain of txg `txg` holding `frees` (oldest first), in blocks
    /// of [`DEFERRED_WRITE_ENTRIES`] (one sector), each linking to the one written before it;
    /// returns the newest block (hole for no frees) and every block.
    fn write_deferred_chain(
        &self,
        frees: &[DeferredFree],
        txg: u64,
    ) -> Result<(BlockPtr, Vec<BlockPtr>)> {
        let mut head = BlockPtr::HOLE;
        let mut blocks = Vec::with_capacity(frees.len().div_ceil(DEFERRED_WRITE_ENTRIES));
        for chunk in frees.chunks(DEFERRED_WRITE_ENTRIES) {
            head = self.write_meta_block(&encode_deferred_block(txg, &head, chunk), txg)?;
            blocks.push(head);
        }
        Ok((head, blocks))
    }

    fn commit_inner(
        &self,
        cs: &mut CommitState,
        hook: &mut dyn FnMut(u64) -> Result<()>,
    ) -> Result<u64> {
        let txg = cs.txg + 1;
        let guid = self.label.guid;

        // 1. Release old frees: take them under the fence (no reader still holds one of
        // them), punch holes in them (autotrim) while they are still allocated (a writer
        // placing data there first would have it zeroed by the punch), then free them.
        let released = {
            let _fence = write(&self.fence);
            let mut sm = lock(&self.spacemap);
            sm.bury_zombies();
            sm.take_released(released_by(txg))
        };
        self.autotrim(&released);
        {
            // Runs for the indirect blocks of coming commits, twice as many as the busiest
            // recent one wrote: writes promise them, and hold more only where free space
            // still has runs. Taken now: the released frees hold the runs of the indirect
            // blocks they replaced, and writers would split them into single blocks.
            let mut sm = lock(&self.spacemap);
            sm.free_released(&released);
            let last = self.meta_runs_used.swap(0, Ordering::Relaxed);
            let peak = self.meta_runs_peak.load(Ordering::Relaxed);
            let peak = last.max(peak - peak.div_ceil(PEAK_DECAY));
            self.meta_runs_peak.store(peak, Ordering::Relaxed);
            let keep = self.dirty_bytes.load(Ordering::Acquire).div_ceil(SECTOR);
            sm.hold_runs(2 * peak + MIN_META_RUNS, INDIRECT_SECTORS, keep);
        }

        // 2. Take the dirty maps.
        self.placed_bytes.store(0, Ordering::Release);
        let vols: Vec<Arc<Volume>> = read(&self.datasets)
            .values()
            .map(|d| d.vol.clone())
            .collect();
        // Each volume with dirty blocks, its map and the runs promised to its buffered blocks.
        let mut work: Vec<(Arc<Volume>, Arc<DirtyMap>, u64)> = Vec::new();
        let mut reserved = 0u64;
        let mut runs: Vec<(u64, u64)> = Vec::new();
        self.pending.store(false, Ordering::Release);
        for v in &vols {
            let mut st = lock(&v.state);
            // Leaves whose dirty blocks were all dropped since (a shrink) are no longer open
            // either: their promised runs are void with this commit's.
            runs.push((INDIRECT_SECTORS, std::mem::take(&mut st.open_runs)));
            let data_runs = std::mem::take(&mut st.open_data_runs);
            runs.push((u64::from(v.block_size) / SECTOR, data_runs));
            let data_runs = if st.open.is_empty() { 0 } else { data_runs };
            st.open_l1.clear();
            st.open_upper.clear();
            st.open_new_leaves = 0;
            if !st.open.is_empty() {
                let map = Arc::new(std::mem::take(&mut st.open));
                reserved += std::mem::take(&mut st.open_reserved);
                st.syncing = Some(map.clone());
                work.push((v.clone(), map, data_runs));
            }
        }

        lock(&self.spacemap).begin_commit_runs(&runs);

        // 3. Write data blocks.
        let mut placed: Vec<Vec<(u64, BlockPtr, bool)>> = Vec::with_capacity(work.len());
        for (v, map, data_runs) in &work {
            placed.push(self.write_data(v, map, txg, *data_runs)?);
        }

        // 4. Point trees at the new blocks; rewrite indirect blocks.
        for ((v, _, _), ptrs) in work.iter().zip(placed) {
            let mut st = lock(&v.state);
            let mut sm = lock(&self.spacemap);
            let st = &mut *st;
            let nblocks = st.tree.as_ref().map(|t| t.nblocks() as u64).unwrap_or(0);
            // Placed blocks committed, as runs of adjacent sectors: (start, len).
            let mut run = (0u64, 0u64);
            for (idx, p, was_placed) in ptrs {
                if idx >= nblocks || st.destroyed {
                    if was_placed {
                        sm.unplace(p.sector, u64::from(p.sectors));
                    } else if !p.is_hole() {
                        sm.free_now(p.sector, u64::from(p.sectors));
                    }
                    continue;
                }
                if was_placed {
                    if run.0 + run.1 != p.sector {
                        sm.commit_placed(run.0, run.1);
                        run = (p.sector, 0);
                    }
                    run.1 += u64::from(p.sectors);
                }
                let Some(tree) = st.tree.as_mut() else {
                    continue;
                };
                if p.is_hole() && tree.get(idx as usize).is_hole() {
                    continue;
                }
                let old = tree.set(idx as usize, p);
                st.kill(&mut sm, txg, old, 0);
                st.referenced = st.referenced.saturating_add(u64::from(p.sectors));
                st.written = st.written.saturating_add(u64::from(p.sectors));
            }
            sm.commit_placed(run.0, run.1);
            st.syncing = None;
        }
        for v in &vols {
            let mut st = lock(&v.state);
            let st = &mut *st;
            let Some(tree) = st.tree.as_mut() else {
                continue;
            };
            if !tree.is_dirty() {
                continue;
            }
            let mut killed = Vec::new();
            tree.sync(
                |b| self.write_meta_block(b, txg),
                |p, level| killed.push((p, level)),
            )?;
            st.root = tree.root();
            let mut sm = lock(&self.spacemap);
            for (p, level) in killed {
                st.kill(&mut sm, txg, p, level);
            }
        }
        hook(txg)?;
        // `written` is final for the txg: what reservations hold follows it.
        self.refresh_slack(&read(&self.datasets));

        // 5. Deadlists, then the meta block.
        for d in read(&self.datasets).values() {
            let mut st = lock(&d.vol.state);
            if !st.deadlist.pending.is_empty() {
                st.deadlist.persist(|b| self.write_meta_block(b, txg))?;
            }
        }
        {
            let mut sm = lock(&self.spacemap);
            for p in std::iter::once(&cs.meta).chain(&cs.deferred_blocks) {
                if !p.is_hole() {
                    sm.free_deferred(txg, p.sector, u64::from(p.sectors));
                }
            }
        }
        let leaves = self.write_directory(&cs.leaves, txg)?;
        // Every free of this txg is in the list by now (replaced leaves, the old meta block and
        // chain); writing the chain only allocates.
        let deferred = lock(&self.spacemap).deferred();
        let (deferred_head, deferred_blocks) = self.write_deferred_chain(&deferred, txg)?;
        let meta = MetaPhys {
            txg,
            next_dataset_id: cs.next_id,
            leaves: leaves.iter().map(|(&i, &p)| (i, p)).collect(),
            deferred_count: deferred.len() as u64,
            deferred_head,
        };
        let meta_ptr = self.write_meta_block(&meta.encode(), txg)?;

        // 6. Space-map chunks.
        let copy = (txg % 2) as usize;
        let (chunks, encoded): (Vec<u64>, Vec<Vec<u8>>) = {
            let mut sm = lock(&self.spacemap);
            let cs = sm.take_chunks_to_write();
            let enc = cs.iter().map(|&c| sm.encode_chunk(c, txg, guid)).collect();
            (cs, enc)
        };
        let base = self.label.spacemap_offsets[copy];
        let mut i = 0;
        while i < chunks.len() {
            let mut j = i + 1;
            while j < chunks.len() && chunks[j] == chunks[j - 1] + 1 {
                j += 1;
            }
            let iov: Vec<IoSlice<'_>> = encoded[i..j].iter().map(|b| IoSlice::new(b)).collect();
            self.dev
                .write_vectored_at(&iov, base + chunks[i] * SECTOR)
                .map_err(|e| self.io("writing the space map", e))?;
            i = j;
        }

        // 7. Sync, uberblock, sync.
        self.dev
            .sync()
            .map_err(|e| self.io("syncing txg data", e))?;
        let ub = UberblockPhys {
            txg,
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            guid,
            root: meta_ptr,
            spacemap_copy: copy as u8,
        };
        self.dev
            .write_at(&ub.encode(), RING_OFFSET + (txg % RING_SLOTS) * SECTOR)
            .map_err(|e| self.io("writing the uberblock", e))?;
        self.dev
            .sync()
            .map_err(|e| self.io("syncing the uberblock", e))?;

        cs.txg = txg;
        cs.meta = meta_ptr;
        cs.deferred_blocks = deferred_blocks;
        cs.leaves = leaves;
        self.last_txg.store(txg, Ordering::Release);
        // Promises void first: writers' room counts promised runs as theirs.
        lock(&self.spacemap).end_commit_runs();
        if reserved > 0 {
            self.dirty_bytes.fetch_sub(reserved, Ordering::AcqRel);
        }
        tracing::trace!(pool = self.name(), txg, time = now_secs(), "txg committed");
        Ok(txg)
    }

    /// Writes the directory leaves whose contents changed since `committed` (a leaf is
    /// unchanged when its encoding checksums to the committed pointer's checksum), freeing the
    /// blocks they replace; returns the new leaf map. The cost in I/O follows what changed,
    /// not how many datasets exist.
    fn write_directory(
        &self,
        committed: &BTreeMap<u64, BlockPtr>,
        txg: u64,
    ) -> Result<BTreeMap<u64, BlockPtr>> {
        let records: Vec<DatasetPhys> = read(&self.datasets)
            .iter()
            .map(|(&id, d)| {
                let st = lock(&d.vol.state);
                DatasetPhys {
                    id,
                    kind: d.kind,
                    name: match d.kind {
                        DatasetKind::Snapshot => d.snap_name().to_string(),
                        _ => d.name.clone(),
                    },
                    guid: d.guid,
                    parent: d.parent,
                    creation_txg: d.creation_txg,
                    creation_time: d.creation_time,
                    size: st.size,
                    block_size: d.vol.block_size,
                    root: st.root,
                    referenced: st.referenced,
                    written: st.written,
                    prev_snap_txg: st.prev_snap_txg,
                    deadlist: st.deadlist.head,
                    deadlist_count: st.deadlist.count,
                    holds: d.holds.iter().cloned().collect(),
                    props: d
                        .props
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                }
            })
            .collect();
        let mut by_leaf: BTreeMap<u64, Vec<&DatasetPhys>> = BTreeMap::new();
        for r in &records {
            by_leaf.entry(r.id / DIR_LEAF_IDS).or_default().push(r);
        }
        let mut leaves = BTreeMap::new();
        let mut replaced = Vec::new();
        for (index, datasets) in by_leaf {
            let b = encode_dir_leaf(index, &datasets);
            let old = committed.get(&index);
            let ptr = match old {
                Some(p)
                    if p.byte_len() == b.len() as u64
                        && p.checksum == checksum(&b, self.label.guid) =>
                {
                    *p
                }
                _ => {
                    replaced.extend(old.copied());
                    self.write_meta_block(&b, txg)?
                }
            };
            leaves.insert(index, ptr);
        }
        replaced.extend(
            committed
                .iter()
                .filter(|(i, _)| !leaves.contains_key(i))
                .map(|(_, p)| *p),
        );
        let mut sm = lock(&self.spacemap);
        for p in replaced {
            sm.free_deferred(txg, p.sector, u64::from(p.sectors));
        }
        Ok(leaves)
    }

    /// Places one volume's dirty blocks: allocates contiguous space in index order (the
    /// `data_runs` runs held for its buffered blocks given back to free space first, see
    /// [`crate::spacemap::SpaceMap::release_owed`]), checksums, and writes runs that are
    /// contiguous on disk with one vectored write each.
    fn write_data(
        &self,
        v: &Volume,
        map: &DirtyMap,
        txg: u64,
        data_runs: u64,
    ) -> Result<Vec<(u64, BlockPtr, bool)>> {
        let guid = self.label.guid;
        let sectors = u64::from(v.block_size) / SECTOR;
        let mut out = Vec::with_capacity(map.len());
        let mut pending: Vec<(u64, &[u8])> = Vec::new();
        for (&idx, dirty) in map {
            match dirty {
                Dirty::Data(b) if !is_zero(b) => pending.push((idx, b)),
                Dirty::Placed(p) => out.push((idx, BlockPtr { birth: txg, ..*p }, true)),
                _ => out.push((idx, BlockPtr::hole(txg), false)),
            }
        }
        let mut placed: Vec<(u64, BlockPtr, &[u8])> = Vec::with_capacity(pending.len());
        {
            let mut sm = lock(&self.spacemap);
            sm.release_owed(sectors, data_runs);
            // Contiguous runs first (a run of up to 1,024 blocks, halving down to one block
            // where no free run is that long): scattered frees of random overwrites would
            // otherwise turn the commit's sequential writes into one small write per block.
            let mut rest = pending.as_slice();
            let mut run = rest.len().min(1024);
            while !rest.is_empty() {
                run = run.min(rest.len());
                let mut start = sm.alloc(run as u64 * sectors);
                if start.is_none() && run == 1 && sectors > 1 {
                    // A single block takes a run held for it where free space has none that
                    // long.
                    start = sm.take_spare_run(sectors);
                }
                let Some(start) = start else {
                    if run > 1 {
                        run /= 2;
                        continue;
                    }
                    for (_, p, _) in &placed {
                        sm.free_now(p.sector, sectors);
                    }
                    drop(sm);
                    return Err(self.no_space(u64::from(v.block_size)));
                };
                for (k, &(idx, b)) in rest[..run].iter().enumerate() {
                    placed.push((
                        idx,
                        BlockPtr {
                            sector: start + k as u64 * sectors,
                            sectors: sectors as u32,
                            birth: txg,
                            checksum: 0,
                        },
                        b,
                    ));
                }
                rest = &rest[run..];
            }
        }
        for (_, p, b) in placed.iter_mut() {
            p.checksum = checksum(b, guid);
        }
        let mut i = 0;
        while i < placed.len() {
            let mut j = i + 1;
            while j < placed.len()
                && placed[j].1.sector == placed[j - 1].1.sector + sectors
                && j - i < 1024
            {
                j += 1;
            }
            let iov: Vec<IoSlice<'_>> = placed[i..j]
                .iter()
                .map(|(_, _, b)| IoSlice::new(b))
                .collect();
            self.dev
                .write_vectored_at(&iov, placed[i].1.offset())
                .map_err(|e| {
                    self.io(
                        &format!("writing data of {}/{}", self.name(), read(&v.name)),
                        e,
                    )
                })?;
            i = j;
        }
        out.extend(placed.into_iter().map(|(idx, p, _)| (idx, p, false)));
        Ok(out)
    }

    /// Rebuilds the allocator from the meta block and every block tree.
    pub(crate) fn rebuild_spacemap(&self) -> Result<()> {
        let cs = lock(&self.commit);
        let vols: Vec<Arc<Volume>> = read(&self.datasets)
            .values()
            .map(|d| d.vol.clone())
            .collect();
        let mut claims: Vec<(u64, u64)> = std::iter::once(&cs.meta)
            .chain(&cs.deferred_blocks)
            .map(|p| (p.sector, u64::from(p.sectors)))
            .collect();
        claims.extend(cs.leaves.values().map(|p| (p.sector, u64::from(p.sectors))));
        for v in vols {
            let mut st = lock(&v.state);
            if st.tree.is_none() {
                let t = self.load_tree(&v, &st)?;
                st.tree = Some(t);
            }
            if let Some(t) = st.tree.as_ref() {
                t.for_each_ptr(|_, _, p| claims.push((p.sector, u64::from(p.sectors))));
            }
            let (_, chain) = self.load_deadlist(&st.deadlist)?;
            claims.extend(chain.iter().map(|p| (p.sector, u64::from(p.sectors))));
        }
        let mut sm = lock(&self.spacemap);
        sm.reset();
        for (s, n) in claims {
            if !sm.claim(s, n) {
                return Err(Error::Corrupt(format!(
                    "pool {}: a block pointer names sectors {s}..{} outside the data area",
                    self.name(),
                    s.saturating_add(n)
                )));
            }
        }
        Ok(())
    }
}
