//! A dataset's block tree, resident: level 0 holds the data block pointers, each level above
//! holds pointers to the indirect blocks (512 pointers, 16 KiB) of the level below, and the top
//! level has exactly one pointer, the root. Changes mark indirect blocks dirty; `sync` rewrites
//! them bottom-up into fresh space (copy-on-write).
//!
//! Level 0 is sparse: it is kept as one leaf per level-1 pointer, and a leaf whose level-1
//! pointer is a hole (all its data pointers holes) is not kept at all. A thin volume then costs
//! memory for what was written (48 bytes a block) plus a small index (about 0.13 bytes a block
//! for the levels above and the leaf slots), not 48 bytes for every block of its size.

use crate::error::{Error, Result};
use crate::phys::{decode_indirect, encode_indirect, BlockPtr, INDIRECT_SIZE, PTRS_PER_INDIRECT};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Memory the resident block maps of a pool take together: each tree adds what it holds,
/// and takes it back as it shrinks or is dropped.
pub type MapMeter = Arc<AtomicU64>;

/// What a tree's pointers may be. One read from disk that is not is corruption: believed, a
/// crafted pool could have an overwrite free (and the allocator hand out again) sectors that
/// are not the tree's, another volume's live blocks among them.
#[derive(Clone, Debug)]
pub struct PtrShape {
    /// The dataset whose tree it is (for messages).
    pub owner: String,
    /// The pool's data area, in sectors: `[start, end)`.
    pub area: (u64, u64),
    /// Sectors of one data block (the volume's block size).
    pub data_sectors: u32,
}

impl PtrShape {
    /// Refuses a non-hole pointer outside the data area, or of another length than a data
    /// block (`data`) or an indirect block takes.
    pub fn check(&self, p: &BlockPtr, data: bool) -> Result<()> {
        if p.is_hole() {
            return Ok(());
        }
        let (want, what, a) = if data {
            (self.data_sectors, "data", "a")
        } else {
            (INDIRECT_SECTORS, "indirect", "an")
        };
        let end = p.sector.checked_add(u64::from(p.sectors));
        if p.sectors == want && p.sector >= self.area.0 && end.is_some_and(|e| e <= self.area.1) {
            return Ok(());
        }
        Err(Error::Corrupt(format!(
            "the block map of {} points to {a} {what} block of {} sectors at sector {} (born in \
             txg {}), but {what} blocks take {want} sectors within sectors {}..{}; the pool's \
             metadata is damaged (or crafted): restore the volume from a snapshot or a copy \
             (`tarn pool scrub` lists every such block)",
            self.owner, p.sectors, p.sector, p.birth, self.area.0, self.area.1
        )))
    }
}

/// Sectors of an indirect block.
const INDIRECT_SECTORS: u32 = crate::phys::INDIRECT_SECTORS as u32;

/// One leaf: the data block pointers under one level-1 pointer.
type Leaf = Box<[BlockPtr]>;

/// A resident block tree.
pub struct BlockTree {
    nblocks: usize,
    /// Level 0, by leaf: `leaves[i]` holds the pointers under level-1 pointer `i`; `None`
    /// while that pointer is a hole, whose data pointers are all holes born when it was.
    leaves: Vec<Option<Leaf>>,
    /// Leaves kept (`Some`).
    kept: usize,
    /// Levels 1 and up (`upper[k - 1]` is level `k`); the last holds only the root.
    upper: Vec<Vec<BlockPtr>>,
    /// Indirect blocks to rewrite, by level (`dirty[k - 1]` for level `k`).
    dirty: Vec<BTreeSet<usize>>,
    /// Resized since the last sync: the root may be another block even where no indirect
    /// block is dirty (a shrink to one leaf makes that leaf's level-1 block the root).
    resized: bool,
    /// Where this tree's memory is counted, and how much it has counted there.
    meter: Option<MapMeter>,
    charged: u64,
}

impl Drop for BlockTree {
    fn drop(&mut self) {
        if let Some(m) = &self.meter {
            m.fetch_sub(self.charged, Ordering::Relaxed);
        }
    }
}

/// Indirect levels above `nblocks` data blocks.
pub fn height_for(nblocks: usize) -> usize {
    shape(nblocks).len() - 1
}

/// Indirect blocks on disk above `nblocks` data blocks, every level.
pub(crate) fn indirect_blocks(nblocks: usize) -> usize {
    shape(nblocks)[1..].iter().sum()
}

/// Lengths of each level for `nblocks` data blocks; always at least one indirect level.
fn shape(nblocks: usize) -> Vec<usize> {
    let mut v = vec![nblocks];
    loop {
        let next = v[v.len() - 1].div_ceil(PTRS_PER_INDIRECT).max(1);
        v.push(next);
        if next == 1 {
            return v;
        }
    }
}

/// Bytes of memory one written leaf takes.
pub const LEAF_BYTES: u64 = (PTRS_PER_INDIRECT * std::mem::size_of::<BlockPtr>()) as u64;

/// Bytes of memory the resident tree of `nblocks` data blocks takes with nothing written:
/// its levels above the data pointers and a slot per leaf. Each leaf written adds at most
/// [`LEAF_BYTES`].
pub fn map_bytes(nblocks: u64) -> u64 {
    let ptr = std::mem::size_of::<BlockPtr>() as u64;
    let slot = std::mem::size_of::<Option<Leaf>>() as u64;
    let mut n = nblocks.div_ceil(PTRS_PER_INDIRECT as u64).max(1);
    let mut total = n.saturating_mul(slot);
    loop {
        total = total.saturating_add(n.saturating_mul(ptr));
        if n <= 1 {
            return total;
        }
        n = n.div_ceil(PTRS_PER_INDIRECT as u64);
    }
}

/// The error for a map that memory cannot hold.
fn too_large(what: &str, bytes: u64) -> Error {
    Error::TooLarge(format!(
        "{what} ({bytes} bytes) does not fit in this host's memory; open the pool on a host \
         with more memory"
    ))
}

/// `n` copies of `fill`, or an error (not an abort) where memory cannot hold them.
fn filled<T: Clone>(n: usize, fill: T, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        too_large(
            what,
            (n as u64).saturating_mul(std::mem::size_of::<T>() as u64),
        )
    })?;
    v.resize(n, fill);
    Ok(v)
}

impl BlockTree {
    /// A tree of `nblocks` holes; an error where memory cannot hold its index.
    pub fn empty(nblocks: usize) -> Result<Self> {
        let s = shape(nblocks);
        let what = "a block map's index";
        Ok(BlockTree {
            nblocks,
            kept: 0,
            leaves: filled(s[1], None, what)?,
            upper: s[1..]
                .iter()
                .map(|&n| filled(n, BlockPtr::HOLE, what))
                .collect::<Result<_>>()?,
            dirty: vec![BTreeSet::new(); s.len() - 1],
            resized: false,
            meter: None,
            charged: 0,
        })
    }

    /// Reads a tree from its root; an error, before memory runs out, where its index or the
    /// leaves it keeps would take the tree past `limit` bytes, and where a pointer is not of
    /// `shape`. `read` fetches and verifies one indirect block.
    pub fn load(
        root: BlockPtr,
        nblocks: usize,
        limit: u64,
        shape: &PtrShape,
        mut read: impl FnMut(&BlockPtr, &mut [u8]) -> Result<()>,
    ) -> Result<Self> {
        if map_bytes(nblocks as u64) > limit {
            return Err(Error::TooLarge(format!(
                "a block map of {nblocks} blocks needs more than the {limit} bytes of memory \
                 this process may use; open the pool on a host with more memory"
            )));
        }
        shape.check(&root, false)?;
        let mut t = Self::empty(nblocks)?;
        let top = t.upper.len();
        t.upper[top - 1][0] = root;
        let mut buf = vec![0u8; INDIRECT_SIZE];
        for k in (2..=top).rev() {
            let (lower, upper) = t.upper.split_at_mut(k - 1);
            let below = &mut lower[k - 2];
            for (i, p) in upper[0].iter().enumerate() {
                let start = i * PTRS_PER_INDIRECT;
                let end = (start + PTRS_PER_INDIRECT).min(below.len());
                if p.is_hole() {
                    // The children of a hole are holes born when it was (no later than it):
                    // giving them birth 0 would hide, from a diff or an incremental send, data
                    // that was zeroed after a snapshot once anything below is written again.
                    below[start..end].fill(BlockPtr::hole(p.birth));
                    continue;
                }
                read(p, &mut buf)?;
                decode_indirect(&buf, &mut below[start..end])?;
                for q in &below[start..end] {
                    shape.check(q, false)?;
                }
            }
        }
        let mut resident = map_bytes(nblocks as u64);
        let mut written = 0usize;
        for i in 0..t.leaves.len() {
            let p = t.upper[0][i];
            if p.is_hole() {
                continue; // its leaf stays unkept: holes born when `p` was
            }
            resident = resident.saturating_add(LEAF_BYTES);
            written += 1;
            if resident > limit {
                return Err(Error::TooLarge(format!(
                    "a block map of {nblocks} blocks, with at least {written} written ranges of \
                     {PTRS_PER_INDIRECT} blocks, needs more than the {limit} bytes of memory \
                     this process may use; open the pool on a host with more memory"
                )));
            }
            read(&p, &mut buf)?;
            let mut leaf = filled(t.leaf_len(i), BlockPtr::HOLE, "a block map")?;
            decode_indirect(&buf, &mut leaf)?;
            for q in &leaf {
                shape.check(q, true)?;
            }
            t.leaves[i] = Some(leaf.into_boxed_slice());
            t.kept += 1;
        }
        Ok(t)
    }

    /// Counts this tree's memory in `meter` from now on (and takes it back when dropped).
    pub fn metered(mut self, meter: MapMeter) -> Self {
        self.meter = Some(meter);
        self.recharge();
        self
    }

    /// Brings the meter up to what the tree takes now.
    fn recharge(&mut self) {
        let Some(m) = &self.meter else { return };
        let now = self.resident_bytes();
        if now >= self.charged {
            m.fetch_add(now - self.charged, Ordering::Relaxed);
        } else {
            m.fetch_sub(self.charged - now, Ordering::Relaxed);
        }
        self.charged = now;
    }

    /// Number of data blocks.
    pub fn nblocks(&self) -> usize {
        self.nblocks
    }

    /// Data blocks under level-1 pointer `i`.
    fn leaf_len(&self, i: usize) -> usize {
        PTRS_PER_INDIRECT.min(self.nblocks - i * PTRS_PER_INDIRECT)
    }

    /// The first block at or after `idx` whose pointer is not a hole, if any: leaves not kept
    /// (all holes) are skipped whole, so the cost follows what is written, not the range.
    pub fn next_data(&self, idx: usize) -> Option<usize> {
        if self.kept == 0 {
            return None;
        }
        let mut i = idx;
        while i < self.nblocks {
            let leaf = i / PTRS_PER_INDIRECT;
            if let Some(l) = &self.leaves[leaf] {
                let from = i % PTRS_PER_INDIRECT;
                if let Some(j) = l[from..].iter().position(|p| !p.is_hole()) {
                    return Some(i + j);
                }
            }
            i = (leaf + 1) * PTRS_PER_INDIRECT;
        }
        None
    }

    /// The data block pointer at `idx`.
    pub fn get(&self, idx: usize) -> BlockPtr {
        let i = idx / PTRS_PER_INDIRECT;
        match &self.leaves[i] {
            Some(leaf) => leaf[idx % PTRS_PER_INDIRECT],
            None => {
                assert!(idx < self.nblocks, "block {idx} of {}", self.nblocks);
                BlockPtr::hole(self.upper[0][i].birth)
            }
        }
    }

    /// Replaces the data block pointer at `idx`, returning the old one.
    pub fn set(&mut self, idx: usize, p: BlockPtr) -> BlockPtr {
        let old = self.get(idx);
        if old == p {
            return old;
        }
        let i = idx / PTRS_PER_INDIRECT;
        if self.leaves[i].is_none() {
            self.leaves[i] = Some(vec![old; self.leaf_len(i)].into_boxed_slice());
            self.kept += 1;
            self.recharge();
        }
        if let Some(leaf) = &mut self.leaves[i] {
            leaf[idx % PTRS_PER_INDIRECT] = p;
        }
        // Runs of sets in index order mostly hit the last-marked parent: skip the insert then.
        if self.dirty[0].last() != Some(&i) {
            self.dirty[0].insert(i);
        }
        old
    }

    /// The root pointer.
    pub fn root(&self) -> BlockPtr {
        self.upper[self.upper.len() - 1][0]
    }

    /// Height: number of indirect levels.
    pub fn height(&self) -> usize {
        self.upper.len()
    }

    /// Whether indirect blocks wait to be rewritten.
    pub fn is_dirty(&self) -> bool {
        self.resized || self.dirty.iter().any(|d| !d.is_empty())
    }

    /// Whether the leaf under level-1 pointer `i` is kept (its range has data, or had it
    /// since the last sync).
    pub fn keeps_leaf(&self, i: usize) -> bool {
        self.leaves.get(i).is_some_and(Option::is_some)
    }

    /// Bytes of memory the tree takes now (at most): its index and the leaves it keeps.
    pub fn resident_bytes(&self) -> u64 {
        map_bytes(self.nblocks as u64).saturating_add(self.kept as u64 * LEAF_BYTES)
    }

    /// Rewrites every dirty indirect block bottom-up. `write` places a block and
    /// returns its pointer; `free` receives each replaced indirect block with its level. An
    /// indirect block whose children are all holes becomes a hole (and a leaf of holes is no
    /// longer kept).
    pub fn sync(
        &mut self,
        mut write: impl FnMut(&[u8]) -> Result<BlockPtr>,
        mut free: impl FnMut(BlockPtr, u8),
    ) -> Result<()> {
        // A hole standing for holes: born when the newest of them was made, so a subtree that
        // was never written stays unborn and diffs skip it.
        let hole_for = |children: &[BlockPtr]| {
            children
                .iter()
                .all(BlockPtr::is_hole)
                .then(|| BlockPtr::hole(children.iter().map(|c| c.birth).max().unwrap_or(0)))
        };
        for k in 1..=self.upper.len() {
            let dirty = std::mem::take(&mut self.dirty[k - 1]);
            for i in dirty {
                let new = if k == 1 {
                    match &self.leaves[i] {
                        None => self.upper[0][i],
                        Some(leaf) => match hole_for(leaf) {
                            Some(h) => {
                                self.leaves[i] = None;
                                self.kept -= 1;
                                h
                            }
                            None => write(&encode_indirect(leaf))?,
                        },
                    }
                } else {
                    let below = &self.upper[k - 2];
                    let start = i * PTRS_PER_INDIRECT;
                    let end = (start + PTRS_PER_INDIRECT).min(below.len());
                    let children = &below[start.min(end)..end];
                    match hole_for(children) {
                        Some(h) => h,
                        None => write(&encode_indirect(children))?,
                    }
                };
                let old = std::mem::replace(&mut self.upper[k - 1][i], new);
                free(old, k as u8);
                if k < self.upper.len() {
                    self.dirty[k].insert(i / PTRS_PER_INDIRECT);
                }
            }
        }
        self.resized = false;
        self.recharge();
        Ok(())
    }

    /// Changes the number of data blocks in `txg`. Dropped data blocks, the level-1 blocks of
    /// dropped leaves and every block above level 1 go to `free` with their level; added
    /// blocks are holes born in `txg` (so a shrink and regrow between two snapshots still shows
    /// as a change). A level-1 block depends only on its own leaf, whatever the tree's height,
    /// so those of leaves the resize leaves as they were stay; the last leaf, if its length
    /// changed, and the levels above 1 are rewritten at the next sync. A file growing by one
    /// NFS WRITE at a time so rewrites a few blocks per commit, not its whole tree.
    pub fn resize(&mut self, nblocks: usize, txg: u64, mut free: impl FnMut(BlockPtr, u8)) {
        let s = shape(nblocks);
        let (old_n, old_slots) = (self.nblocks, self.leaves.len());
        let mut leaves = std::mem::take(&mut self.leaves);
        let mut l1 = std::mem::take(&mut self.upper[0]);
        // Dropped leaves and their level-1 blocks, then the dropped tail of the last kept one.
        for leaf in leaves.drain(s[1].min(old_slots)..).flatten() {
            leaf.iter().for_each(|p| free(*p, 0));
        }
        l1.drain(s[1].min(old_slots)..).for_each(|p| free(p, 1));
        let last = s[1].min(old_slots).saturating_sub(1);
        let old_len = PTRS_PER_INDIRECT.min(old_n.saturating_sub(last * PTRS_PER_INDIRECT));
        let new_len = PTRS_PER_INDIRECT.min(nblocks.saturating_sub(last * PTRS_PER_INDIRECT));
        let mut dirty_l1: BTreeSet<usize> = std::mem::take(&mut self.dirty[0]);
        dirty_l1.retain(|&i| i < s[1]);
        if new_len != old_len {
            match leaves.get_mut(last).and_then(Option::as_mut) {
                Some(leaf) => {
                    if new_len < leaf.len() {
                        leaf[new_len..].iter().for_each(|p| free(*p, 0));
                    }
                    let mut v = leaf.to_vec();
                    v.resize(new_len, BlockPtr::hole(txg));
                    *leaf = v.into_boxed_slice();
                    dirty_l1.insert(last);
                }
                // An unkept leaf that gains blocks: born now, newer than its hole. One that
                // only loses some stays the hole it was.
                None if new_len > old_len => l1[last] = BlockPtr::hole(txg),
                None => {}
            }
        }
        for (k, level) in self.upper.iter().enumerate().skip(1) {
            level.iter().for_each(|p| free(*p, k as u8 + 1));
        }
        l1.resize(s[1], BlockPtr::hole(txg));
        leaves.resize_with(s[1], || None);
        self.nblocks = nblocks;
        self.kept = leaves.iter().flatten().count();
        self.leaves = leaves;
        self.upper = std::iter::once(l1)
            .chain(s[2..].iter().map(|&n| vec![BlockPtr::HOLE; n]))
            .collect();
        self.dirty = vec![BTreeSet::new(); s.len() - 1];
        self.dirty[0] = dirty_l1;
        if let Some(level2) = self.dirty.get_mut(1) {
            level2.extend(0..s[2]);
        }
        self.resized = true;
        self.recharge();
    }

    /// Every non-hole pointer, data and indirect, with its level (0 = data) and index.
    pub fn for_each_ptr(&self, mut f: impl FnMut(usize, usize, &BlockPtr)) {
        for (i, leaf) in self.leaves.iter().enumerate() {
            for (j, p) in leaf.iter().flat_map(|l| l.iter()).enumerate() {
                if !p.is_hole() {
                    f(0, i * PTRS_PER_INDIRECT + j, p);
                }
            }
        }
        for (k, level) in self.upper.iter().enumerate() {
            for (i, p) in level.iter().enumerate() {
                if !p.is_hole() {
                    f(k + 1, i, p);
                }
            }
        }
    }
}

/// Visits every pointer (holes included) of the tree under `root` whose birth is after
/// `after`, top-down: `visit(level, first_block, ptr)`. Subtrees born at or before `after` are
/// skipped unread — the cost follows what changed since then, not the size. `read` fetches and
/// verifies an indirect block; a pointer not of `shape` is an error before it is visited.
pub fn walk_born_after(
    root: BlockPtr,
    nblocks: usize,
    after: u64,
    shape: &PtrShape,
    read: &mut dyn FnMut(&BlockPtr, &mut [u8]) -> Result<()>,
    visit: &mut dyn FnMut(usize, u64, &BlockPtr) -> Result<()>,
) -> Result<()> {
    struct Walk<'a> {
        nblocks: u64,
        after: u64,
        shape: &'a PtrShape,
        read: &'a mut dyn FnMut(&BlockPtr, &mut [u8]) -> Result<()>,
        visit: &'a mut dyn FnMut(usize, u64, &BlockPtr) -> Result<()>,
    }
    fn go(w: &mut Walk<'_>, p: &BlockPtr, level: usize, first: u64) -> Result<()> {
        if p.birth <= w.after {
            return Ok(());
        }
        w.shape.check(p, level == 0)?;
        (w.visit)(level, first, p)?;
        if level == 0 || p.is_hole() {
            return Ok(());
        }
        let mut buf = vec![0u8; INDIRECT_SIZE];
        (w.read)(p, &mut buf)?;
        let mut kids = vec![BlockPtr::HOLE; PTRS_PER_INDIRECT];
        decode_indirect(&buf, &mut kids)?;
        let span = (PTRS_PER_INDIRECT as u64).saturating_pow(level as u32 - 1);
        for (i, k) in kids.iter().enumerate() {
            let start = first.saturating_add((i as u64).saturating_mul(span));
            if start >= w.nblocks {
                break;
            }
            go(w, k, level - 1, start)?;
        }
        Ok(())
    }
    let mut w = Walk {
        nblocks: nblocks as u64,
        after,
        shape,
        read,
        visit,
    };
    go(&mut w, &root, height_for(nblocks), 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Pointers anywhere, data blocks as large as indirect ones (what `ptr` makes).
    fn any() -> PtrShape {
        PtrShape {
            owner: "test".into(),
            area: (0, u64::MAX),
            data_sectors: INDIRECT_SECTORS,
        }
    }

    fn ptr(n: u64) -> BlockPtr {
        BlockPtr {
            sector: n,
            sectors: INDIRECT_SECTORS,
            birth: 1,
            checksum: u128::from(n),
        }
    }

    #[test]
    fn shapes() {
        assert_eq!(shape(0), vec![0, 1]);
        assert_eq!(shape(1), vec![1, 1]);
        assert_eq!(shape(512), vec![512, 1]);
        assert_eq!(shape(513), vec![513, 2, 1]);
    }

    #[test]
    fn sync_then_load_round_trips() {
        let mut store: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut next = 1000u64;
        let mut t = BlockTree::empty(2000).unwrap();
        for i in [0usize, 511, 512, 1999] {
            t.set(i, ptr(i as u64 + 1));
        }
        let mut freed = vec![];
        t.sync(
            |b| {
                next += 4;
                store.insert(next, b.to_vec());
                Ok(BlockPtr {
                    sector: next,
                    sectors: 4,
                    birth: 2,
                    checksum: 0,
                })
            },
            |p, _| freed.push(p),
        )
        .unwrap();
        assert!(freed.iter().all(|p| p.is_hole()) && !t.is_dirty());
        let l = BlockTree::load(t.root(), 2000, u64::MAX, &any(), |p, buf| {
            buf.copy_from_slice(&store[&p.sector]);
            Ok(())
        })
        .unwrap();
        for i in 0..2000 {
            assert_eq!(l.get(i), t.get(i));
        }
        // L1 blocks: 0 (holds 0 and 511), 1 (512), 3 (1999); plus the root.
        assert_eq!(store.len(), 4);
    }

    #[test]
    fn unwritten_ranges_keep_no_leaf() {
        // 2^30 blocks (4 TiB in 4 KiB blocks): a dense level 0 would take 48 GiB.
        let n = 1usize << 30;
        let mut t = BlockTree::empty(n).unwrap();
        let index = t.resident_bytes();
        assert_eq!(index, map_bytes(n as u64));
        assert!(index < 200 << 20, "{index}");
        assert!(t.get(n - 1).is_hole() && t.get(0).is_hole());
        t.set(5, ptr(1));
        t.set(n - 1, ptr(2));
        assert_eq!(t.resident_bytes(), index + 2 * LEAF_BYTES);
        t.sync(|_| Ok(ptr(50)), |_, _| {}).unwrap();
        assert_eq!(
            (t.get(5), t.get(n - 1), t.get(6)),
            (ptr(1), ptr(2), BlockPtr::HOLE)
        );
        // Zeroed again in txg 9: the leaf is dropped at the sync, its holes keep that birth.
        t.set(n - 1, BlockPtr::hole(9));
        t.sync(|_| Ok(ptr(50)), |_, _| {}).unwrap();
        assert_eq!(t.resident_bytes(), index + LEAF_BYTES);
        assert_eq!(t.get(n - 2), BlockPtr::hole(9));
        assert_eq!(t.get(n - 1), BlockPtr::hole(9));
        let mut seen = vec![];
        t.for_each_ptr(|level, i, p| seen.push((level, i, *p)));
        assert!(seen.contains(&(0, 5, ptr(1))) && !seen.iter().any(|s| s.2 == ptr(2)));
    }

    #[test]
    fn the_meter_follows_every_tree() {
        let meter = MapMeter::default();
        let mut a = BlockTree::empty(5000).unwrap().metered(meter.clone());
        let b = BlockTree::empty(600).unwrap().metered(meter.clone());
        let total = |t: &[&BlockTree]| t.iter().map(|t| t.resident_bytes()).sum::<u64>();
        assert_eq!(meter.load(Ordering::Relaxed), total(&[&a, &b]));
        a.set(4000, ptr(1));
        a.set(10, ptr(2));
        assert_eq!(meter.load(Ordering::Relaxed), total(&[&a, &b]));
        a.resize(700, 3, |_, _| {});
        a.set(10, BlockPtr::hole(4));
        a.sync(|_| Ok(ptr(9)), |_, _| {}).unwrap();
        assert_eq!(meter.load(Ordering::Relaxed), total(&[&a, &b]));
        drop(a);
        assert_eq!(meter.load(Ordering::Relaxed), b.resident_bytes());
        drop(b);
        assert_eq!(meter.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_load_past_the_budget_is_refused() {
        let mut t = BlockTree::empty(2000).unwrap();
        for i in [0usize, 600, 1200, 1800] {
            t.set(i, ptr(i as u64 + 1));
        }
        let mut store: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut next = 0;
        t.sync(
            |b| {
                next += 1;
                store.insert(next, b.to_vec());
                Ok(ptr(next))
            },
            |_, _| {},
        )
        .unwrap();
        let read = |p: &BlockPtr, buf: &mut [u8]| {
            buf.copy_from_slice(&store[&p.sector]);
            Ok(())
        };
        let fits = map_bytes(2000) + 4 * LEAF_BYTES;
        assert!(BlockTree::load(t.root(), 2000, fits, &any(), read).is_ok());
        let err = BlockTree::load(t.root(), 2000, fits - 1, &any(), read)
            .err()
            .expect("refused");
        assert!(matches!(err, Error::TooLarge(_)), "{err}");
    }

    #[test]
    fn grown_blocks_are_born_in_the_resize_txg() {
        let mut t = BlockTree::empty(700).unwrap();
        t.set(650, ptr(1));
        t.sync(|_| Ok(ptr(50)), |_, _| {}).unwrap();
        // Shrink past the written block, then grow back: the regrown blocks are new holes,
        // in the kept leaf and in the unkept one alike.
        let mut freed = vec![];
        t.resize(600, 3, |p, _| freed.push(p));
        assert!(freed.contains(&ptr(1)));
        t.sync(|_| Ok(ptr(51)), |_, _| {}).unwrap();
        t.resize(1200, 4, |_, _| {});
        assert_eq!(t.get(650), BlockPtr::hole(4));
        assert_eq!(t.get(1100), BlockPtr::hole(4));
        assert_eq!(t.get(10), BlockPtr::HOLE, "untouched leaf keeps its births");
        t.sync(|_| Ok(ptr(52)), |_, _| {}).unwrap();
        assert_eq!(
            (t.get(650), t.get(1100)),
            (BlockPtr::hole(4), BlockPtr::hole(4))
        );
    }

    #[test]
    fn a_resize_rewrites_only_what_it_changed() {
        let store: std::cell::RefCell<HashMap<u64, Vec<u8>>> = Default::default();
        let next = std::cell::Cell::new(0u64);
        let write = |b: &[u8]| {
            next.set(next.get() + 1);
            store.borrow_mut().insert(next.get(), b.to_vec());
            Ok(ptr(next.get()))
        };
        let read = |p: &BlockPtr, buf: &mut [u8]| {
            buf.copy_from_slice(&store.borrow()[&p.sector]);
            Ok(())
        };
        // Three full leaves and a partial one; each leaf written.
        let mut t = BlockTree::empty(1600).unwrap();
        for i in [0usize, 600, 1100, 1599] {
            t.set(
                i,
                BlockPtr {
                    birth: 2,
                    ..ptr(i as u64 + 1)
                },
            );
        }
        t.sync(write, |_, _| {}).unwrap();
        // Grown (past a height change: 1600 -> 512 * 512 + 1 blocks): the full leaves' level-1
        // blocks stay; the partial leaf's is rewritten, and the levels above.
        let mut freed = vec![];
        t.resize(512 * 512 + 1, 3, |p, level| freed.push((p, level)));
        let mut written = 0;
        t.sync(
            |b| {
                written += 1;
                write(b)
            },
            |p, level| freed.push((p, level)),
        )
        .unwrap();
        let l1_freed = freed
            .iter()
            .filter(|(p, l)| *l == 1 && !p.is_hole())
            .count();
        assert_eq!(
            l1_freed, 1,
            "only the partial leaf's level-1 block: {freed:?}"
        );
        assert_eq!(t.height(), 3);
        assert_eq!(written, 1 + 1 + 1, "one level-1, one level-2 and the root");
        let loaded = BlockTree::load(t.root(), 512 * 512 + 1, u64::MAX, &any(), read).unwrap();
        for i in [0usize, 600, 1100, 1599] {
            assert_eq!(loaded.get(i), t.get(i), "block {i}");
        }
        assert_eq!(loaded.get(1600), BlockPtr::hole(3));
        // Shrunk to one full leaf: its level-1 block, unchanged, becomes the root.
        t.resize(512, 4, |_, _| {});
        assert!(t.is_dirty());
        t.sync(write, |_, _| {}).unwrap();
        assert_eq!(t.height(), 1);
        let loaded = BlockTree::load(t.root(), 512, u64::MAX, &any(), read).unwrap();
        assert_eq!(loaded.get(0), BlockPtr { birth: 2, ..ptr(1) });
        assert!(!t.is_dirty());
    }

    #[test]
    fn resize_frees_tail_and_indirects() {
        let mut t = BlockTree::empty(1000).unwrap();
        t.set(10, ptr(1));
        t.set(900, ptr(2));
        t.sync(|_| Ok(ptr(50)), |_, _| {}).unwrap();
        let mut freed = vec![];
        t.resize(100, 3, |p, _| freed.push(p));
        assert!(freed.contains(&ptr(2)) && !freed.contains(&ptr(1)));
        assert_eq!(t.get(10), ptr(1));
        assert!(t.is_dirty());
    }
}
