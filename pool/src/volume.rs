//! Volumes: byte-addressed reads and writes over a block tree, with writes buffered per txg.
//!
//! A write lands in the open txg's dirty map (whole blocks; a partial write merges into the
//! block's current contents). A commit takes the dirty map, writes it to fresh space and points
//! the tree at it. Reads look in the open map, then the syncing map, then the tree.

use crate::blocktree::{BlockTree, LEAF_BYTES};
use crate::deadlist::Deadlist;
use crate::error::{Error, Result};
use crate::iov::{Iov, IovMut};
use crate::phys::{checksum, BlockPtr, INDIRECT_SECTORS, INDIRECT_SIZE, PTRS_PER_INDIRECT, SECTOR};
use crate::pool::{lock, read, Shared};
use crate::prefetch::Streams;
use crate::spacemap::SpaceMap;
use smallvec::SmallVec;
use std::collections::HashSet;
use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A block's pending contents.
pub(crate) enum Dirty {
    /// New bytes (exactly one block), written at commit (partial writes merge here).
    Data(Box<[u8]>),
    /// Already written to fresh space by the writer (whole-block writes): the commit only
    /// points the tree at it, with the commit's txg as its birth.
    Placed(BlockPtr),
    /// All zeroes: becomes a hole.
    Zero,
}

impl Dirty {
    /// The block this entry placed on disk, if any.
    pub(crate) fn placed(&self) -> Option<BlockPtr> {
        match self {
            Dirty::Placed(p) => Some(*p),
            _ => None,
        }
    }
}

/// Hash sets keyed by block index: foldhash (fast, randomly seeded per map, so a guest choosing
/// its write offsets cannot aim for collisions) instead of SipHash.
pub(crate) type BlockHasher = foldhash::fast::RandomState;
/// One txg's dirty blocks of a volume, by block index. Ordered: the commit walks it in index
/// order without sorting, and a sequential writer appends at its right edge. A hash map
/// here spent a quarter of a 1 GiB sequential write's CPU growing and rehashing (262,144
/// entries) and its commit sorting keys and looking each one up again.
pub(crate) type DirtyMap = std::collections::BTreeMap<u64, Dirty>;

/// Mutable state of one volume or snapshot.
pub(crate) struct VolumeState {
    pub size: u64,
    /// The resident tree, once loaded; `root` is authoritative until then.
    pub tree: Option<BlockTree>,
    pub root: BlockPtr,
    pub open: DirtyMap,
    /// Level-1 indirect blocks the open txg will rewrite (for space reservation).
    pub open_l1: HashSet<u64, BlockHasher>,
    /// Of those, the ones whose leaf the tree does not keep yet: the block-map memory the open
    /// txg adds ([`VolumeHandle::check_map_budget`]).
    pub open_new_leaves: u64,
    /// Bytes reserved for the open txg.
    pub open_reserved: u64,
    /// Indirect blocks above level 1 the open txg will rewrite, as `level << 56 | index`.
    pub open_upper: HashSet<u64, BlockHasher>,
    /// Held runs promised to the indirect blocks the open txg will rewrite
    /// ([`crate::spacemap::SpaceMap::promise_runs`]): one for each in `open_l1` and
    /// `open_upper`.
    pub open_runs: u64,
    /// Held runs of the volume's block length promised to the data blocks the open txg
    /// buffers, where a block is longer than a sector (a one-sector block fits any hole).
    pub open_data_runs: u64,
    pub syncing: Option<Arc<DirtyMap>>,
    /// Sectors of data blocks the committed tree references.
    pub referenced: u64,
    /// Sectors of those born after `prev_snap_txg` (unique to this volume).
    pub written: u64,
    /// Txg of the latest snapshot, or of the origin for a clone: blocks born at or before it
    /// are shared and go to the deadlist when replaced.
    pub prev_snap_txg: u64,
    pub deadlist: Deadlist,
    /// Snapshots refuse writes.
    pub read_only: bool,
    pub destroyed: bool,
}

/// `count - n` for a space count; a count that would go below zero (only a damaged or crafted
/// pool says so little) stays at zero, with a warning, instead of wrapping (or panicking a
/// debug build). `tarn pool scrub` reports the accounting as wrong.
pub(crate) fn uncount(count: u64, n: u64, what: &str) -> u64 {
    count.checked_sub(n).unwrap_or_else(|| {
        tracing::warn!(
            count,
            n,
            what,
            "space accounting below zero: the pool's counts are damaged"
        );
        0
    })
}

/// Writes with at least this many bytes of whole blocks place them on disk directly; smaller
/// ones are buffered and batched into the commit (cheaper for scattered small writes).
const PLACE_MIN_BYTES: u64 = 64 << 10;

/// Runs of committed blocks at least this long are read bypassing the page cache when the
/// caller's buffer allows it, as large writes bypass it: big sequential I/O streams at device
/// speed without evicting (or copying through) cached metadata and small blocks.
const DIRECT_READ_MIN: usize = 64 << 10;

/// What a dataset's state starts from: its directory entry's fields.
pub(crate) struct StateInit {
    pub size: u64,
    pub root: BlockPtr,
    pub referenced: u64,
    pub written: u64,
    pub prev_snap_txg: u64,
    pub deadlist: Deadlist,
    pub read_only: bool,
}

impl VolumeState {
    /// Block `idx`'s contents not yet in the committed tree: the open txg's, else the syncing
    /// txg's.
    pub(crate) fn pending(&self, idx: u64) -> Option<&Dirty> {
        self.open
            .get(&idx)
            .or_else(|| self.syncing.as_ref().and_then(|s| s.get(&idx)))
    }

    /// The first block at or after `idx` that may hold data: written in the tree, or with a
    /// change pending. `u64::MAX` if none.
    fn next_maybe_data(&self, idx: u64) -> u64 {
        let tree = self
            .tree
            .as_ref()
            .and_then(|t| t.next_data(usize::try_from(idx).ok()?))
            .map_or(u64::MAX, |i| i as u64);
        let open = self.open.range(idx..).next().map_or(u64::MAX, |(i, _)| *i);
        let syncing = self
            .syncing
            .as_ref()
            .and_then(|s| s.range(idx..).next())
            .map_or(u64::MAX, |(i, _)| *i);
        tree.min(open).min(syncing)
    }

    /// Whether block `idx` holds data now, counting writes not yet committed (else it reads
    /// as zeroes).
    fn holds_data(&self, idx: u64) -> bool {
        match self.pending(idx) {
            Some(d) => !matches!(d, Dirty::Zero),
            None => self
                .tree
                .as_ref()
                .is_some_and(|t| !t.get(idx as usize).is_hole()),
        }
    }

    /// Keys in `open_upper` of the indirect blocks above leaf `leaf` (levels 2 to `height`).
    fn upper_keys(leaf: u64, height: u64) -> impl Iterator<Item = u64> {
        (2..=height).scan(1u64, move |span, level| {
            *span = span.saturating_mul(PTRS_PER_INDIRECT as u64);
            Some((level << 56) | (leaf / *span))
        })
    }

    /// Indirect blocks a write opening leaf `leaf` adds to those the open txg rewrites: the
    /// leaf's and those above it not yet counted.
    fn runs_to_open(&self, leaf: u64, height: u64) -> u64 {
        let upper = Self::upper_keys(leaf, height).filter(|k| !self.open_upper.contains(k));
        1 + upper.count() as u64
    }

    /// Marks leaf `leaf` and the indirect blocks above it as rewritten by the open txg;
    /// returns how many were not yet (held runs they take at the commit).
    fn open_leaf(&mut self, leaf: u64, height: u64) -> u64 {
        if !self.open_l1.insert(leaf) {
            return 0;
        }
        let upper = Self::upper_keys(leaf, height).filter(|&k| self.open_upper.insert(k));
        1 + upper.count() as u64
    }

    pub(crate) fn new(init: StateInit) -> Self {
        VolumeState {
            size: init.size,
            tree: None,
            root: init.root,
            open: DirtyMap::new(),
            open_l1: HashSet::default(),
            open_new_leaves: 0,
            open_reserved: 0,
            open_upper: HashSet::default(),
            open_runs: 0,
            open_data_runs: 0,
            syncing: None,
            referenced: init.referenced,
            written: init.written,
            prev_snap_txg: init.prev_snap_txg,
            deadlist: init.deadlist,
            read_only: init.read_only,
            destroyed: false,
        }
    }

    /// Drops this dataset's reference to `p` (at `level`; 0 = data) in `txg`: a block born after
    /// the latest snapshot is freed; an older one is still a snapshot's, so it goes to the
    /// deadlist.
    pub(crate) fn kill(&mut self, sm: &mut SpaceMap, txg: u64, p: BlockPtr, level: u8) {
        if p.is_hole() {
            return;
        }
        let n = u64::from(p.sectors);
        if level == 0 {
            self.referenced = uncount(self.referenced, n, "referenced");
        }
        if p.birth > self.prev_snap_txg {
            sm.free_deferred(txg, p.sector, n);
            if level == 0 {
                self.written = uncount(self.written, n, "written");
            }
        } else {
            self.deadlist.push(p, level);
        }
    }

    /// Drops dirty blocks at or past `nblocks` (all of them for 0): frees what writers already
    /// placed (never referenced by a committed txg) and returns the bytes reserved for them.
    /// Only buffered data reserved its block until the commit; placed blocks have their space
    /// and zeroes need none, so dropping them gives back nothing the kept blocks still need.
    pub(crate) fn discard_dirty(
        &mut self,
        sm: &mut SpaceMap,
        nblocks: u64,
        block_size: u32,
    ) -> u64 {
        let mut buffered = 0u64;
        self.open.retain(|&i, d| {
            let keep = i < nblocks;
            if !keep {
                match d {
                    Dirty::Placed(p) => sm.unplace(p.sector, u64::from(p.sectors)),
                    Dirty::Data(_) => buffered += 1,
                    Dirty::Zero => {}
                }
            }
            keep
        });
        if nblocks == 0 {
            self.open_l1.clear();
            self.open_upper.clear();
            self.open_new_leaves = 0;
            sm.unpromise_runs(INDIRECT_SECTORS, std::mem::take(&mut self.open_runs));
            let data_runs = std::mem::take(&mut self.open_data_runs);
            sm.unpromise_runs(u64::from(block_size) / SECTOR, data_runs);
            return std::mem::take(&mut self.open_reserved);
        }
        let r = (buffered * u64::from(block_size)).min(self.open_reserved);
        self.open_reserved -= r;
        let d = buffered.min(self.open_data_runs);
        self.open_data_runs -= d;
        sm.unpromise_runs(u64::from(block_size) / SECTOR, d);
        r
    }
}

/// A volume: identity plus locked state.
pub(crate) struct Volume {
    pub id: u64,
    /// Name below the pool; changes on rename.
    pub name: RwLock<String>,
    pub block_size: u32,
    pub state: Mutex<VolumeState>,
    /// Sequential read streams, for prefetch.
    pub streams: Streams,
    /// Bytes held for its reservation beyond what it uses alone (see `reservation`).
    pub slack: AtomicU64,
}

impl Volume {
    pub(crate) fn new(id: u64, name: String, block_size: u32, init: StateInit) -> Self {
        Volume {
            id,
            name: RwLock::new(name),
            block_size,
            state: Mutex::new(VolumeState::new(init)),
            streams: Streams::default(),
            slack: AtomicU64::new(0),
        }
    }
}

/// A handle for I/O on one volume. Cheap to clone; usable from many threads.
#[derive(Clone)]
pub struct VolumeHandle {
    shared: Arc<Shared>,
    vol: Arc<Volume>,
}

/// Where one block's slice of a read comes from.
struct Fetch {
    buf_at: usize,
    in_block: usize,
    len: usize,
    ptr: BlockPtr,
    idx: u64,
}

/// Most device runs one prefetch asks for (a scattered layout stops it early).
const PREFETCH_RUNS: usize = 64;

/// Device byte ranges of the committed, not rewritten blocks of volume bytes `range`, with
/// blocks contiguous on the device merged, in volume order: what a prefetch reads. Blocks
/// whose device offset is their volume offset plus `linear` are left out (the device's own
/// readahead gets them). At most [`PREFETCH_RUNS`] of them; the second value says where in
/// the volume they stop.
fn committed_runs(
    st: &VolumeState,
    bs: u64,
    range: &std::ops::Range<u64>,
    linear: Option<i128>,
) -> (Vec<(u64, u64)>, u64) {
    let Some(tree) = &st.tree else {
        return (Vec::new(), range.start);
    };
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for idx in range.start / bs..range.end.div_ceil(bs) {
        let ptr = tree.get(idx as usize);
        if st.pending(idx).is_some() || ptr.is_hole() {
            continue;
        }
        let (at, n) = (ptr.offset(), u64::from(ptr.sectors) * SECTOR);
        if linear == Some(i128::from(at) - i128::from(idx * bs)) {
            continue;
        }
        if let Some((_, len)) = runs.last_mut().filter(|(s, l)| *s + *l == at) {
            *len += n;
        } else if runs.len() < PREFETCH_RUNS {
            runs.push((at, n));
        } else {
            return (runs, idx * bs);
        }
    }
    (runs, range.end)
}

impl VolumeHandle {
    pub(crate) fn new(shared: Arc<Shared>, vol: Arc<Volume>) -> Self {
        VolumeHandle { shared, vol }
    }

    /// Full name, `POOL/NAME`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.shared.name(), read(&self.vol.name))
    }

    /// Permanent dataset ID.
    pub fn id(&self) -> u64 {
        self.vol.id
    }

    /// The pool's GUID.
    pub fn pool_guid(&self) -> u64 {
        self.shared.label.guid
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.vol.block_size
    }

    /// Current size in bytes.
    pub fn size(&self) -> u64 {
        lock(&self.vol.state).size
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, VolumeState>> {
        let mut st = lock(&self.vol.state);
        if st.destroyed {
            return Err(Error::Destroyed(self.name()));
        }
        if st.tree.is_none() {
            let t = self.shared.load_tree(&self.vol, &st)?;
            st.tree = Some(t);
        }
        Ok(st)
    }

    fn check_range(&self, st: &VolumeState, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > st.size) {
            return Err(Error::InvalidArgument(format!(
                "I/O at byte {offset} of length {len} is past the end of {} ({} bytes)",
                self.name(),
                st.size
            )));
        }
        Ok(())
    }

    fn what(&self, idx: u64) -> impl Fn() -> String + '_ {
        move || {
            format!(
                "dataset {} at byte offset {}",
                self.name(),
                idx * u64::from(self.vol.block_size)
            )
        }
    }

    /// Reads `buf.len()` bytes at `offset`. Corruption is an error naming dataset and offset.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_vectored_at(offset, &mut [IoSliceMut::new(buf)])
    }

    /// Reads into several buffers back to back, starting at `offset`. Committed blocks are read
    /// from the device straight into the buffers wherever a block lies within one of them. A
    /// read that continues a sequential stream goes through the device's cache and prefetches
    /// the blocks after it (see `prefetch.rs`).
    pub fn read_vectored_at(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> Result<()> {
        let mut dst = IovMut::new(bufs);
        let len = dst.len();
        let bs = u64::from(self.vol.block_size);
        let fence = read(&self.shared.fence);
        // On the stack for reads of a few blocks (no allocation on the I/O path).
        let mut fetches: SmallVec<[Fetch; 4]> = SmallVec::new();
        let (plan, ahead) = {
            let st = self.state()?;
            self.check_range(&st, offset, len as u64)?;
            let plan = self.vol.streams.observe(offset, len as u64, st.size);
            let mut at = 0usize;
            while at < len {
                let pos = offset + at as u64;
                let idx = pos / bs;
                let in_block = (pos % bs) as usize;
                let n = (bs as usize - in_block).min(len - at);
                let dirty = st.pending(idx);
                match dirty {
                    Some(Dirty::Data(b)) => dst.copy_in(at, &b[in_block..in_block + n]),
                    Some(Dirty::Zero) => dst.zero(at, n),
                    Some(Dirty::Placed(ptr)) => fetches.push(Fetch {
                        buf_at: at,
                        in_block,
                        len: n,
                        ptr: *ptr,
                        idx,
                    }),
                    None => {
                        let ptr = st
                            .tree
                            .as_ref()
                            .map(|t| t.get(idx as usize))
                            .unwrap_or_default();
                        if ptr.is_hole() {
                            dst.zero(at, n);
                        } else {
                            fetches.push(Fetch {
                                buf_at: at,
                                in_block,
                                len: n,
                                ptr,
                                idx,
                            });
                        }
                    }
                }
                at += n;
            }
            let mut ahead = Vec::new();
            if let Some(r) = &plan.prefetch {
                // Where the device reads ahead itself, blocks that lie on from this read's
                // last one, as they do in the volume, are left to it.
                let linear = fetches
                    .last()
                    .filter(|_| self.shared.dev.reads_ahead())
                    .map(|f| i128::from(f.ptr.offset()) - i128::from(f.idx * bs));
                let reached;
                (ahead, reached) = committed_runs(&st, bs, r, linear);
                if reached < r.end {
                    self.vol.streams.cut_short(&plan, reached);
                }
            }
            (plan, ahead)
        };
        let read = self.fetch(&mut dst, &fetches, plan.sequential);
        // Hints only, which may block on the device: not under the fence that commits wait
        // for (a run freed meanwhile is just read into the cache). Sent even when the read
        // failed, since the stream counts them as sent.
        drop(fence);
        for (at, n) in ahead {
            self.shared.dev.prefetch(at, n);
        }
        read
    }

    /// Reads committed blocks outside the volume lock. Whole blocks contiguous on disk and in
    /// one destination buffer are read with one device read, in place; the rest bounce. Long
    /// runs bypass the device's cache unless `cached` (a sequential stream, prefetched).
    fn fetch(&self, dst: &mut IovMut<'_, '_>, fetches: &[Fetch], cached: bool) -> Result<()> {
        let bs = self.vol.block_size as usize;
        let mut i = 0;
        while i < fetches.len() {
            let f = &fetches[i];
            let mut j = i + 1;
            if f.len == bs {
                while j < fetches.len()
                    && fetches[j].len == bs
                    && fetches[j].buf_at == fetches[j - 1].buf_at + bs
                    && fetches[j].ptr.sector
                        == fetches[j - 1].ptr.sector + u64::from(fetches[j - 1].ptr.sectors)
                    && j - i < 256
                {
                    j += 1;
                }
                if j > i + 1 && dst.contiguous(f.buf_at, (j - i) * bs).is_none() {
                    j = i + 1;
                }
                if let Some(run) = dst.contiguous(f.buf_at, (j - i) * bs) {
                    let read = if run.len() >= DIRECT_READ_MIN && !cached {
                        self.shared.dev.read_direct_at(run, f.ptr.offset())
                    } else {
                        self.shared.dev.read_at(run, f.ptr.offset())
                    };
                    read.map_err(|e| {
                        Error::io(
                            format!(
                                "reading {} from {}",
                                (self.what(f.idx))(),
                                self.shared.dev.describe()
                            ),
                            e,
                        )
                    })?;
                    for (k, fk) in fetches[i..j].iter().enumerate() {
                        let got = &mut run[k * bs..(k + 1) * bs];
                        if self
                            .shared
                            .verify(&fk.ptr, got, &self.what(fk.idx))
                            .is_err()
                        {
                            // The bytes went straight into the caller's buffer, which the
                            // caller may change meanwhile (a guest's page): read the block
                            // again into one of ours before calling it damaged.
                            let mut own = vec![0u8; bs];
                            self.shared
                                .read_block(&fk.ptr, &mut own, &self.what(fk.idx))?;
                            got.copy_from_slice(&own);
                        }
                    }
                    i = j;
                    continue;
                }
            }
            let mut tmp = vec![0u8; bs];
            self.shared
                .read_block(&f.ptr, &mut tmp, &self.what(f.idx))?;
            dst.copy_in(f.buf_at, &tmp[f.in_block..f.in_block + f.len]);
            i += 1;
        }
        Ok(())
    }

    /// Writes `data` at `offset`. Durable after the next commit (see [`VolumeHandle::flush`]).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_vectored_at(offset, &[IoSlice::new(data)])
    }

    /// Writes several buffers back to back, starting at `offset`, as one request: the whole
    /// range is checked first, and each block is merged once.
    pub fn write_vectored_at(&self, offset: u64, bufs: &[IoSlice<'_>]) -> Result<()> {
        let src = Iov::new(bufs);
        self.modify(offset, src.len() as u64, Some(&src))
    }

    /// Zeroes a range: whole blocks become holes, partial blocks are zero-filled.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.modify(offset, len, None)
    }

    /// Discards a range; it reads back as zeroes (holes free their space at the next commit).
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len)
    }

    /// Makes every write acknowledged before this call durable.
    pub fn flush(&self) -> Result<()> {
        self.shared.commit().map(|_| ())
    }

    /// Reservation a write of `len` bytes at `offset` needs at most, in bytes: the blocks
    /// buffered until the commit (the partial ones at either end, or all of them when
    /// `buffered`) and the indirect blocks the commit rewrites. Placed blocks are allocated
    /// when placed, and whole blocks of zeroes (`data` false) become holes.
    fn worst_case(&self, offset: u64, len: u64, height: u64, data: bool, buffered: bool) -> u64 {
        let bs = u64::from(self.vol.block_size);
        let blocks = (offset + len).div_ceil(bs) - offset / bs;
        let indirect_paths = if data {
            blocks / PTRS_PER_INDIRECT as u64 + 2
        } else {
            2
        };
        let data_blocks = if data && buffered { blocks } else { 2 };
        data_blocks * bs + indirect_paths * INDIRECT_SIZE as u64 * height
    }

    /// Held runs a write of `len` bytes at `offset` may add to those the open txg's indirect
    /// blocks take ([`VolumeState::runs_to_open`]) for the leaves it spans, or for zeroes
    /// (`data` false) those of its partial blocks and those that may hold data (holes skipped
    /// a leaf at a time).
    fn runs_needed(
        st: &VolumeState,
        offset: u64,
        len: u64,
        bs: u64,
        data: bool,
        height: u64,
    ) -> u64 {
        if len == 0 {
            return 0;
        }
        let per_leaf = PTRS_PER_INDIRECT as u64;
        let (first, last) = (offset / bs / per_leaf, (offset + len - 1) / bs / per_leaf);
        let new = |leaf: u64| {
            if st.open_l1.contains(&leaf) {
                0
            } else {
                st.runs_to_open(leaf, height)
            }
        };
        if data {
            return (first..=last).map(new).sum();
        }
        // Zeroes rewrite the leaves of partial end blocks and of whole blocks holding data,
        // met in increasing order.
        let mut leaves: Vec<u64> = Vec::new();
        let mut add = |leaf: u64| {
            if leaves.last() != Some(&leaf) {
                leaves.push(leaf);
            }
        };
        if !offset.is_multiple_of(bs) {
            add(first);
        }
        let (mut idx, end) = (offset.div_ceil(bs), (offset + len) / bs);
        while idx < end {
            let hit = st.next_maybe_data(idx);
            if hit >= end {
                break;
            }
            if st.holds_data(hit) {
                let leaf = hit / per_leaf;
                add(leaf);
                idx = (leaf + 1) * per_leaf;
            } else {
                idx = hit + 1;
            }
        }
        if !(offset + len).is_multiple_of(bs) {
            add(last);
        }
        leaves.into_iter().map(new).sum()
    }

    /// Data blocks longer than a sector that a write may newly buffer until the commit
    /// (each needs a run of its length there): every block of a `buffered` write, else its
    /// partial end blocks, less those the open txg buffers already.
    fn data_runs_needed(st: &VolumeState, offset: u64, len: u64, bs: u64, buffered: bool) -> u64 {
        if bs <= SECTOR || len == 0 {
            return 0;
        }
        let (first, end) = (offset / bs, (offset + len).div_ceil(bs));
        let fresh = |i: u64| u64::from(!matches!(st.open.get(&i), Some(Dirty::Data(_))));
        if buffered {
            return (first..end).map(fresh).sum();
        }
        let head = !offset.is_multiple_of(bs);
        let tail = !(offset + len).is_multiple_of(bs);
        let mut n = if head { fresh(first) } else { 0 };
        if tail && (end - 1 != first || !head) {
            n += fresh(end - 1);
        }
        n
    }

    /// The byte ranges within `offset..offset + len` that hold data rather than holes, merged
    /// and clipped to the range, counting writes not yet committed. Lets copies skip holes
    /// without reading them.
    pub fn data_ranges(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        let bs = u64::from(self.vol.block_size);
        let st = self.state()?;
        self.check_range(&st, offset, len)?;
        let mut out: Vec<(u64, u64)> = Vec::new();
        if len == 0 {
            return Ok(out);
        }
        let end_idx = (offset + len).div_ceil(bs);
        let mut idx = offset / bs;
        while idx < end_idx {
            if !st.holds_data(idx) {
                // Holes are skipped to the next block that may hold data: the cost follows
                // what the volume holds, not the range's length.
                idx = st.next_maybe_data(idx + 1).clamp(idx + 1, end_idx);
                continue;
            }
            let start = (idx * bs).max(offset);
            let end = ((idx + 1) * bs).min(offset + len);
            match out.last_mut() {
                Some(last) if last.0 + last.1 == start => last.1 += end - start,
                _ => out.push((start, end - start)),
            }
            idx += 1;
        }
        Ok(out)
    }

    /// Refuses data for ranges of the block map not yet kept in memory (a leaf: 512 pointers,
    /// 24 KiB) where the map would then pass its budget, half of the memory the process may
    /// use: what is written here must open here again. The open txg's new leaves count too.
    fn check_map_budget(&self, st: &VolumeState, offset: u64, len: u64) -> Result<()> {
        let Some(tree) = st.tree.as_ref().filter(|_| len > 0) else {
            return Ok(());
        };
        let span = u64::from(self.vol.block_size) * PTRS_PER_INDIRECT as u64;
        let new = (offset / span..=(offset + len - 1) / span)
            .filter(|&i| !tree.keeps_leaf(i as usize) && !st.open_l1.contains(&i))
            .count() as u64;
        if new == 0 {
            return Ok(());
        }
        let budget = self.shared.memory_limit / 2;
        let needed = self
            .shared
            .map_bytes()
            .saturating_add((st.open_new_leaves + new) * LEAF_BYTES);
        if needed > budget {
            return Err(Error::TooLarge(format!(
                "{}: writing at byte {offset} would take the pool's block maps to {needed} bytes \
                 of memory, past their budget of {budget} (half of what this process may use); \
                 each block written keeps 48 bytes in memory: use a larger block size, or a host \
                 with more memory",
                self.name()
            )));
        }
        Ok(())
    }

    /// Writes `src` (zeroes when `None`) over the range: whole blocks of zeroes become holes;
    /// partial blocks merge with their current contents.
    fn modify(&self, offset: u64, len: u64, src: Option<&Iov<'_, '_>>) -> Result<()> {
        self.shared.check_writable()?;
        if lock(&self.vol.state).read_only {
            return Err(Error::ReadOnly(self.name()));
        }
        let bs = u64::from(self.vol.block_size);
        // Large writes put their whole blocks on disk now, from the caller's buffers, outside any
        // lock; small ones are buffered and batched into the commit's writes. Held runs to
        // promise: for the indirect blocks the write makes the open txg rewrite, and for the
        // buffered blocks longer than a sector (runs of their length).
        let (place, height, mut runs, mut data_runs) = {
            let st = self.state()?;
            self.check_range(&st, offset, len)?;
            if src.is_some() {
                self.check_map_budget(&st, offset, len)?;
            }
            let whole_bytes = ((offset + len) / bs).saturating_sub(offset.div_ceil(bs)) * bs;
            let place = src.is_some() && whole_bytes >= PLACE_MIN_BYTES;
            let height = st.tree.as_ref().map(|t| t.height() as u64).unwrap_or(1);
            let buffered = src.is_some() && !place;
            (
                place,
                height,
                Self::runs_needed(&st, offset, len, bs, src.is_some(), height),
                Self::data_runs_needed(&st, offset, len, bs, buffered),
            )
        };
        if len == 0 {
            return Ok(());
        }
        let reserve = self.worst_case(offset, len, height, src.is_some(), !place);
        let data_len = bs / SECTOR;
        self.reserve(reserve, &[(INDIRECT_SECTORS, runs), (data_len, data_runs)])?;
        let unpromise = |sm: &mut SpaceMap, runs: u64, data: u64| {
            sm.unpromise_runs(INDIRECT_SECTORS, runs);
            sm.unpromise_runs(data_len, data);
        };
        let mut placed = match src {
            Some(iov) if place => match self.place_whole_blocks(offset, len, iov) {
                Ok(p) => p,
                Err(e) => {
                    self.shared.unreserve(reserve);
                    unpromise(&mut lock(&self.shared.spacemap), runs, data_runs);
                    return Err(e);
                }
            },
            _ => Vec::new(),
        }
        .into_iter()
        .peekable();
        let fill = |dst: &mut [u8], at: usize| match src {
            Some(iov) => iov.copy_out(at, dst),
            None => dst.fill(0),
        };
        let _fence = read(&self.shared.fence);
        let st = self
            .state()
            .and_then(|st| self.check_range(&st, offset, len).map(|_| st));
        let mut st = match st {
            Ok(st) => st,
            Err(e) => {
                let mut sm = lock(&self.shared.spacemap);
                placed
                    .filter_map(|(_, d)| d.placed())
                    .for_each(|p| sm.unplace(p.sector, u64::from(p.sectors)));
                unpromise(&mut sm, runs, data_runs);
                drop(sm);
                self.shared.unreserve(reserve);
                return Err(e);
            }
        };
        // The tree may have grown since the count (a resize, a rollback): runs follow it,
        // bytes stay within what was reserved.
        let reserved_height = height;
        let height = st.tree.as_ref().map_or(height, |t| t.height() as u64);
        let mut used = 0u64;
        let mut used_runs = 0u64;
        let mut used_data_runs = 0u64;
        let mut at = 0u64;
        let mut result = Ok(());
        while at < len {
            let pos = offset + at;
            let idx = pos / bs;
            let in_block = (pos % bs) as usize;
            let n = (bs - in_block as u64).min(len - at) as usize;
            let whole = n as u64 == bs;
            if whole && src.is_none() && !st.holds_data(idx) {
                // Nothing to zero here: go on at the next block that may hold data (or the
                // partial block at the end), so that zeroing a range costs what it holds, not
                // its length (a 40-byte FREE record over 16 TiB took minutes).
                let whole_end = (offset + len) / bs * bs - offset;
                let next = st.next_maybe_data(idx + 1).saturating_mul(bs);
                at = next.saturating_sub(offset).clamp(at + n as u64, whole_end);
                continue;
            }
            // A leaf the open txg does not rewrite yet needs held runs, for itself and the
            // blocks above it: promised with the reservation, or here where a commit took
            // the open leaves since the count (refused here, the write is partial).
            let leaf = idx / PTRS_PER_INDIRECT as u64;
            if !st.open_l1.contains(&leaf) {
                let need = used_runs + st.runs_to_open(leaf, height);
                if need > runs {
                    let mut sm = lock(&self.shared.spacemap);
                    if !sm.promise_runs(INDIRECT_SECTORS, need - runs) {
                        result = Err(self.shared.fragmented(&sm, INDIRECT_SECTORS));
                        break;
                    }
                    runs = need;
                }
            }
            let prev = st.open.get(&idx);
            let fresh = prev.is_none();
            let had_data = matches!(prev, Some(Dirty::Data(_)));
            // A block newly buffered (longer than a sector) needs a run of its length: counted
            // with the reservation, or promised here where a commit took the open blocks since.
            let buffers = !had_data && (!whole || (src.is_some() && !place));
            if data_len > 1 && buffers && used_data_runs == data_runs {
                let mut sm = lock(&self.shared.spacemap);
                if !sm.promise_runs(data_len, 1) {
                    result = Err(self.shared.fragmented(&sm, data_len));
                    break;
                }
                data_runs += 1;
            }
            let replaced = if whole && src.is_none() {
                // Only blocks that hold data now need a hole recorded (checked above).
                st.open.insert(idx, Dirty::Zero)
            } else if whole && !place {
                let b: Box<[u8]> = match src.and_then(|iov| iov.contiguous(at as usize, n)) {
                    Some(b) => b.into(),
                    None => {
                        let mut b = vec![0u8; n].into_boxed_slice();
                        fill(&mut b, at as usize);
                        b
                    }
                };
                st.open.insert(idx, Dirty::Data(b))
            } else if whole {
                match placed.next_if(|(i, _)| *i == idx) {
                    Some((_, d)) => st.open.insert(idx, d),
                    None => {
                        result = Err(Error::InvalidArgument(format!(
                            "internal: block {idx} was not placed"
                        )));
                        break;
                    }
                }
            } else if let Some(Dirty::Data(b)) = st.open.get_mut(&idx) {
                fill(&mut b[in_block..in_block + n], at as usize);
                None
            } else {
                match self.current_block(&st, idx) {
                    Ok(mut b) => {
                        fill(&mut b[in_block..in_block + n], at as usize);
                        st.open.insert(idx, Dirty::Data(b))
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            };
            if let Some(p) = replaced.and_then(|d| d.placed()) {
                lock(&self.shared.spacemap).unplace(p.sector, u64::from(p.sectors));
            }
            // Buffered partial blocks need space at commit; placed blocks already have theirs.
            if buffers {
                used += bs;
                if data_len > 1 {
                    used_data_runs += 1;
                }
            }
            // Every leaf the txg changes is rewritten, zeroed ones too; its bytes were reserved
            // where it may get data (zeroes free more than the leaf takes).
            let opened = if fresh { st.open_leaf(leaf, height) } else { 0 };
            if opened > 0 {
                used_runs += opened;
                if src.is_some() || !whole {
                    used += INDIRECT_SIZE as u64 * reserved_height;
                    if !st
                        .tree
                        .as_ref()
                        .is_some_and(|t| t.keeps_leaf(leaf as usize))
                    {
                        st.open_new_leaves += 1;
                    }
                }
            }
            at += n as u64;
        }
        if result.is_err() {
            let mut sm = lock(&self.shared.spacemap);
            placed
                .filter_map(|(_, d)| d.placed())
                .for_each(|p| sm.unplace(p.sector, u64::from(p.sectors)));
        }
        st.open_reserved += used;
        st.open_runs += used_runs;
        st.open_data_runs += used_data_runs;
        self.shared.pending.store(true, Ordering::Release);
        drop(st);
        drop(_fence);
        self.shared.unreserve(reserve - used);
        if runs > used_runs || data_runs > used_data_runs {
            let mut sm = lock(&self.shared.spacemap);
            unpromise(&mut sm, runs - used_runs, data_runs - used_data_runs);
        }
        result?;
        self.shared.throttle()
    }

    /// Writes the whole blocks of a request to fresh space: consecutive non-zero blocks share
    /// one allocation and one vectored write straight from the caller's buffers; all-zero blocks
    /// become holes. Returns each whole block's dirty entry, in order.
    fn place_whole_blocks(
        &self,
        offset: u64,
        len: u64,
        iov: &Iov<'_, '_>,
    ) -> Result<Vec<(u64, Dirty)>> {
        let bs = u64::from(self.vol.block_size);
        let sectors = bs / SECTOR;
        let (first, end) = (offset.div_ceil(bs), (offset + len) / bs);
        let mut gathered: Vec<Box<[u8]>> = Vec::new();
        let mut blocks: Vec<(u64, usize, bool)> = Vec::new(); // (idx, gathered index or usize::MAX, zero)
        for idx in first..end {
            let at = (idx * bs - offset) as usize;
            let (slot, zero) = match iov.contiguous(at, bs as usize) {
                Some(b) => (usize::MAX, is_zero(b)),
                None => {
                    let mut b = vec![0u8; bs as usize].into_boxed_slice();
                    iov.copy_out(at, &mut b);
                    let z = is_zero(&b);
                    gathered.push(b);
                    (gathered.len() - 1, z)
                }
            };
            blocks.push((idx, slot, zero));
        }
        let bytes = |idx: u64, slot: usize| -> &[u8] {
            if slot == usize::MAX {
                iov.contiguous((idx * bs - offset) as usize, bs as usize)
                    .unwrap_or_default()
            } else {
                &gathered[slot]
            }
        };
        let guid = self.shared.label.guid;
        let mut out: Vec<(u64, Dirty)> = Vec::with_capacity(blocks.len());
        let mut i = 0;
        while i < blocks.len() {
            if blocks[i].2 {
                out.push((blocks[i].0, Dirty::Zero));
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < blocks.len() && !blocks[j].2 && j - i < 1024 {
                j += 1;
            }
            let run = (j - i) as u64;
            let start = match self.place_extent(run * sectors) {
                Ok(s) => s,
                Err(e) => {
                    let mut sm = lock(&self.shared.spacemap);
                    out.iter()
                        .filter_map(|(_, d)| d.placed())
                        .for_each(|p| sm.unplace(p.sector, u64::from(p.sectors)));
                    return Err(e);
                }
            };
            // One iovec for the run when it lies in one caller buffer (fewer segments for the
            // kernel to pin and map); otherwise one per block.
            let whole = blocks[i..j]
                .iter()
                .all(|b| b.1 == usize::MAX)
                .then(|| iov.contiguous((blocks[i].0 * bs - offset) as usize, (run * bs) as usize))
                .flatten();
            let mut iovs = Vec::with_capacity(if whole.is_some() { 1 } else { run as usize });
            iovs.extend(whole.map(IoSlice::new));
            if whole.is_none() {
                iovs.extend(
                    blocks[i..j]
                        .iter()
                        .map(|&(idx, slot, _)| IoSlice::new(bytes(idx, slot))),
                );
            }
            let first = out.len();
            out.extend(blocks[i..j].iter().enumerate().map(|(k, &(idx, slot, _))| {
                let ptr = BlockPtr {
                    sector: start + k as u64 * sectors,
                    sectors: sectors as u32,
                    birth: 0,
                    checksum: checksum(bytes(idx, slot), guid),
                };
                (idx, Dirty::Placed(ptr))
            }));
            let mut written = self.shared.dev.write_placed_at(&iovs, start * SECTOR);
            if written.is_ok() {
                written = self.restabilize(&mut out[first..], &blocks[i..j], &bytes);
            }
            if let Err(e) = written {
                let err = Error::io(
                    format!(
                        "writing {} to {}",
                        (self.what(blocks[i].0))(),
                        self.shared.dev.describe()
                    ),
                    e,
                );
                self.shared.poison(&err);
                let mut sm = lock(&self.shared.spacemap);
                out.iter()
                    .filter_map(|(_, d)| d.placed())
                    .for_each(|p| sm.unplace(p.sector, u64::from(p.sectors)));
                return Err(err);
            }
            self.shared.note_placed(run * bs);
            i = j;
        }
        Ok(out)
    }

    /// Checksums again the blocks just written from the caller's buffers, and writes any
    /// that changed meanwhile once more, from a copy of its own. A caller's buffer may change
    /// while it is written (a guest rewriting a page under writeback: virtio-blk does not ask
    /// for stable pages); the first checksum then describes bytes other than those on disk,
    /// and the block would read as damaged (ZFS verifies its Direct I/O writes for the same
    /// reason). Blocks gathered into buffers of the pool's own cannot change. A buffer changed
    /// and changed back within the write still escapes, as in ZFS: only the caller's own
    /// block can be damaged that way.
    fn restabilize<'b>(
        &self,
        placed: &mut [(u64, Dirty)],
        blocks: &[(u64, usize, bool)],
        bytes: &dyn Fn(u64, usize) -> &'b [u8],
    ) -> std::io::Result<()> {
        let guid = self.shared.label.guid;
        for ((_, dirty), &(idx, slot, _)) in placed.iter_mut().zip(blocks) {
            let Dirty::Placed(ptr) = dirty else { continue };
            if slot != usize::MAX || checksum(bytes(idx, slot), guid) == ptr.checksum {
                continue;
            }
            let copy: Box<[u8]> = bytes(idx, slot).into();
            ptr.checksum = checksum(&copy, guid);
            tracing::debug!(
                block = idx,
                "a buffer changed while it was written; rewriting it"
            );
            self.shared
                .dev
                .write_placed_at(&[IoSlice::new(&copy)], ptr.sector * SECTOR)?;
        }
        Ok(())
    }

    /// Allocates `len` contiguous sectors for placed data, leaving room for what others have
    /// reserved; commits to release deferred frees when the pool looks full.
    fn place_extent(&self, len: u64) -> Result<u64> {
        let mut tries = 0;
        let mut gate = None;
        loop {
            {
                // Read the reserved count under the space-map lock, as `reserve` counts it.
                let mut sm = lock(&self.shared.spacemap);
                let keep = (self.shared.dirty_bytes.load(Ordering::Acquire))
                    .saturating_add(self.shared.held_for_others(&self.vol))
                    .div_ceil(SECTOR);
                if let Some(s) = sm.place(len, keep) {
                    return Ok(s);
                }
            }
            if gate.is_none() {
                // Short of space: a trim may have a free run out; wait for it, and try again.
                gate = Some(self.shared.wait_for_trim());
                continue;
            }
            let pending =
                lock(&self.shared.spacemap).deferred_sectors() > 0 || self.shared.has_dirty();
            if !pending || tries > crate::spacemap::RELEASE_COMMITS {
                let avail = self.shared.writable_bytes();
                return Err(Error::NoSpace {
                    pool: self.shared.name().into(),
                    needed: len * SECTOR,
                    available: avail,
                });
            }
            self.shared.commit()?;
            tries += 1;
        }
    }

    /// The block's current bytes (open txg, syncing txg, or disk), as an owned buffer.
    fn current_block(&self, st: &VolumeState, idx: u64) -> Result<Box<[u8]>> {
        let bs = self.vol.block_size as usize;
        let ptr = match st.pending(idx) {
            Some(Dirty::Data(b)) => return Ok(b.clone()),
            Some(Dirty::Zero) => return Ok(vec![0u8; bs].into_boxed_slice()),
            Some(Dirty::Placed(p)) => *p,
            None => st
                .tree
                .as_ref()
                .map(|t| t.get(idx as usize))
                .unwrap_or_default(),
        };
        let mut b = vec![0u8; bs].into_boxed_slice();
        if !ptr.is_hole() {
            self.shared.read_block(&ptr, &mut b, &self.what(idx))?;
        }
        Ok(b)
    }

    /// Reserves space, committing to release deferred frees when the pool looks full.
    fn reserve(&self, bytes: u64, runs: &[(u64, u64)]) -> Result<()> {
        let mut tries = 0;
        let mut gate = None;
        loop {
            match self.shared.reserve(bytes, runs, &self.vol) {
                Ok(()) => return Ok(()),
                Err(_) if gate.is_none() => {
                    // A trim may have a free run out; wait for it, and try again.
                    gate = Some(self.shared.wait_for_trim());
                }
                Err(e) if tries > crate::spacemap::RELEASE_COMMITS => return Err(e),
                Err(e) => {
                    let pending = lock(&self.shared.spacemap).deferred_sectors() > 0
                        || self.shared.dirty_bytes.load(Ordering::Acquire) > 0;
                    if !pending {
                        return Err(e);
                    }
                    self.shared.commit()?;
                    tries += 1;
                }
            }
        }
    }

    /// Bytes of data blocks the committed state references.
    pub fn referenced(&self) -> u64 {
        lock(&self.vol.state).referenced * SECTOR
    }

    /// Whether this is a (read-only) snapshot.
    pub fn is_read_only(&self) -> bool {
        lock(&self.vol.state).read_only
    }
}

/// Whether a buffer is all zero bytes.
pub(crate) fn is_zero(b: &[u8]) -> bool {
    // SAFETY: u64 has no invalid bit patterns; align_to only splits at aligned boundaries.
    let (pre, words, post) = unsafe { b.align_to::<u64>() };
    pre.iter().all(|&x| x == 0) && words.iter().all(|&x| x == 0) && post.iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_gives_back_only_what_the_dropped_buffered_blocks_reserved() {
        let mut st = VolumeState::new(StateInit {
            size: 64 * 4096,
            root: BlockPtr::default(),
            referenced: 0,
            written: 0,
            prev_snap_txg: 0,
            deadlist: Deadlist::default(),
            read_only: false,
        });
        let mut sm = SpaceMap::new(10_000, 10);
        let placed = sm.place(8, 0).expect("room");
        // Kept: two buffered blocks. Dropped: one buffered, one placed, one zeroed.
        for idx in [1, 2, 40] {
            st.open.insert(idx, Dirty::Data(vec![1u8; 4096].into()));
        }
        st.open.insert(
            41,
            Dirty::Placed(BlockPtr {
                sector: placed,
                sectors: 8,
                birth: 0,
                checksum: 0,
            }),
        );
        st.open.insert(42, Dirty::Zero);
        st.open_reserved = 3 * 4096;
        assert_eq!(st.discard_dirty(&mut sm, 32, 4096), 4096);
        assert_eq!(st.open_reserved, 2 * 4096, "the kept blocks keep theirs");
        assert_eq!(st.open.len(), 2);
        sm.bury_zombies();
        assert_eq!(sm.placed(), 0, "the dropped placed block is freed");
    }
}
