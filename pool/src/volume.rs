//! Volumes: byte-addressed reads and writes over a block tree, with writes buffered per txg.
//!
//! A write lands in the open txg's dirty map (whole blocks; a partial write merges into the
//! block's current contents). A commit takes the dirty map, writes it to fresh space and points
//! the tree at it. Reads look in the open map, then the syncing map, then the tree.

use crate::blocktree::BlockTree;
use crate::deadlist::Deadlist;
use crate::error::{Error, Result};
use crate::iov::{Iov, IovMut};
use crate::phys::{BlockPtr, INDIRECT_SIZE, PTRS_PER_INDIRECT, SECTOR};
use crate::pool::{lock, read, Shared};
use crate::spacemap::SpaceMap;
use std::collections::{HashMap, HashSet};
use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

/// A block's pending contents.
pub(crate) enum Dirty {
    /// New bytes (exactly one block).
    Data(Box<[u8]>),
    /// All zeroes: becomes a hole.
    Zero,
}

/// One txg's dirty blocks of a volume, by block index.
pub(crate) type DirtyMap = HashMap<u64, Dirty>;

/// Mutable state of one volume or snapshot.
pub(crate) struct VolumeState {
    pub size: u64,
    /// The resident tree, once loaded; `root` is authoritative until then.
    pub tree: Option<BlockTree>,
    pub root: BlockPtr,
    pub open: DirtyMap,
    /// Level-1 indirect blocks the open txg will rewrite (for space reservation).
    pub open_l1: HashSet<u64>,
    /// Bytes reserved for the open txg.
    pub open_reserved: u64,
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
    pub(crate) fn new(init: StateInit) -> Self {
        VolumeState {
            size: init.size,
            tree: None,
            root: init.root,
            open: HashMap::new(),
            open_l1: HashSet::new(),
            open_reserved: 0,
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
            self.referenced -= n;
        }
        if p.birth > self.prev_snap_txg {
            sm.free_deferred(txg, p.sector, n);
            if level == 0 {
                self.written -= n;
            }
        } else {
            self.deadlist.push(p, level);
        }
    }

    /// Drops all dirty data, returning the bytes reserved for it.
    pub(crate) fn drop_dirty(&mut self) -> u64 {
        self.open.clear();
        self.open_l1.clear();
        std::mem::take(&mut self.open_reserved)
    }

    /// Drops dirty blocks at or past `nblocks` (after a shrink); returns bytes to unreserve.
    pub(crate) fn truncate_dirty(&mut self, nblocks: u64, block_size: u32) -> u64 {
        let before = self.open.len();
        self.open.retain(|&i, _| i < nblocks);
        let dropped = (before - self.open.len()) as u64 * u64::from(block_size);
        let r = dropped.min(self.open_reserved);
        self.open_reserved -= r;
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
}

impl Volume {
    pub(crate) fn new(id: u64, name: String, block_size: u32, init: StateInit) -> Self {
        Volume {
            id,
            name: RwLock::new(name),
            block_size,
            state: Mutex::new(VolumeState::new(init)),
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
    /// from the device straight into the buffers wherever a block lies within one of them.
    pub fn read_vectored_at(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> Result<()> {
        let mut dst = IovMut::new(bufs);
        let len = dst.len();
        let bs = u64::from(self.vol.block_size);
        let _fence = read(&self.shared.fence);
        let mut fetches = Vec::new();
        {
            let st = self.state()?;
            self.check_range(&st, offset, len as u64)?;
            let mut at = 0usize;
            while at < len {
                let pos = offset + at as u64;
                let idx = pos / bs;
                let in_block = (pos % bs) as usize;
                let n = (bs as usize - in_block).min(len - at);
                let dirty = st
                    .open
                    .get(&idx)
                    .or_else(|| st.syncing.as_ref().and_then(|s| s.get(&idx)));
                match dirty {
                    Some(Dirty::Data(b)) => dst.copy_in(at, &b[in_block..in_block + n]),
                    Some(Dirty::Zero) => dst.zero(at, n),
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
        }
        self.fetch(&mut dst, &fetches)
    }

    /// Reads committed blocks outside the volume lock. Whole blocks contiguous on disk and in
    /// one destination buffer are read with one device read, in place; the rest bounce.
    fn fetch(&self, dst: &mut IovMut<'_, '_>, fetches: &[Fetch]) -> Result<()> {
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
                    self.shared.dev.read_at(run, f.ptr.offset()).map_err(|e| {
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
                        self.shared.verify(
                            &fk.ptr,
                            &run[k * bs..(k + 1) * bs],
                            &self.what(fk.idx),
                        )?;
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

    /// Reservation a write of `len` bytes at `offset` needs at most. Zeroing needs space only
    /// for the partial blocks at either end (whole blocks become holes, which cost nothing).
    fn worst_case(&self, offset: u64, len: u64, height: u64, data: bool) -> u64 {
        let bs = u64::from(self.vol.block_size);
        let blocks = (offset + len).div_ceil(bs) - offset / bs;
        if !data {
            return 2 * (bs + INDIRECT_SIZE as u64 * height);
        }
        blocks * bs + (blocks / PTRS_PER_INDIRECT as u64 + 2) * INDIRECT_SIZE as u64 * height
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
        for idx in offset / bs..(offset + len).div_ceil(bs) {
            let dirty = st
                .open
                .get(&idx)
                .or_else(|| st.syncing.as_ref().and_then(|s| s.get(&idx)));
            let data = match dirty {
                Some(Dirty::Data(_)) => true,
                Some(Dirty::Zero) => false,
                None => st
                    .tree
                    .as_ref()
                    .is_some_and(|t| !t.get(idx as usize).is_hole()),
            };
            if !data {
                continue;
            }
            let start = (idx * bs).max(offset);
            let end = ((idx + 1) * bs).min(offset + len);
            match out.last_mut() {
                Some(last) if last.0 + last.1 == start => last.1 += end - start,
                _ => out.push((start, end - start)),
            }
        }
        Ok(out)
    }

    /// Writes `src` (zeroes when `None`) over the range: whole blocks of zeroes become holes;
    /// partial blocks merge with their current contents.
    fn modify(&self, offset: u64, len: u64, src: Option<&Iov<'_, '_>>) -> Result<()> {
        self.shared.check_writable()?;
        if lock(&self.vol.state).read_only {
            return Err(Error::ReadOnly(self.name()));
        }
        let bs = u64::from(self.vol.block_size);
        let height = {
            let st = self.state()?;
            self.check_range(&st, offset, len)?;
            st.tree.as_ref().map(|t| t.height() as u64).unwrap_or(1)
        };
        if len == 0 {
            return Ok(());
        }
        let reserve = self.worst_case(offset, len, height, src.is_some());
        self.reserve(reserve)?;
        let fill = |dst: &mut [u8], at: usize| match src {
            Some(iov) => iov.copy_out(at, dst),
            None => dst.fill(0),
        };
        let _fence = read(&self.shared.fence);
        let mut st = match self.state() {
            Ok(st) => st,
            Err(e) => {
                self.shared.unreserve(reserve);
                return Err(e);
            }
        };
        if let Err(e) = self.check_range(&st, offset, len) {
            self.shared.unreserve(reserve);
            return Err(e);
        }
        let mut used = 0u64;
        let mut at = 0u64;
        let mut result = Ok(());
        while at < len {
            let pos = offset + at;
            let idx = pos / bs;
            let in_block = (pos % bs) as usize;
            let n = (bs - in_block as u64).min(len - at) as usize;
            let fresh = !st.open.contains_key(&idx);
            let had_data = matches!(st.open.get(&idx), Some(Dirty::Data(_)));
            let whole = n as u64 == bs;
            if whole && src.is_none() {
                // Only blocks that hold data now need a hole recorded; the rest already read as zero.
                let data = match st.open.get(&idx) {
                    Some(Dirty::Data(_)) => true,
                    Some(Dirty::Zero) => false,
                    None => match st.syncing.as_ref().and_then(|s| s.get(&idx)) {
                        Some(d) => matches!(d, Dirty::Data(_)),
                        None => st
                            .tree
                            .as_ref()
                            .is_some_and(|t| !t.get(idx as usize).is_hole()),
                    },
                };
                if data {
                    st.open.insert(idx, Dirty::Zero);
                }
            } else if whole {
                let dirty = match src {
                    None => Dirty::Zero,
                    Some(iov) => Dirty::Data(match iov.contiguous(at as usize, n) {
                        Some(b) => b.into(),
                        None => {
                            let mut b = vec![0u8; n].into_boxed_slice();
                            iov.copy_out(at as usize, &mut b);
                            b
                        }
                    }),
                };
                st.open.insert(idx, dirty);
            } else if let Some(Dirty::Data(b)) = st.open.get_mut(&idx) {
                fill(&mut b[in_block..in_block + n], at as usize);
            } else {
                match self.current_block(&st, idx) {
                    Ok(mut b) => {
                        fill(&mut b[in_block..in_block + n], at as usize);
                        st.open.insert(idx, Dirty::Data(b));
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if !had_data && (src.is_some() || !whole) {
                used += bs;
            }
            if fresh
                && (src.is_some() || !whole)
                && st.open_l1.insert(idx / PTRS_PER_INDIRECT as u64)
            {
                used += INDIRECT_SIZE as u64 * height;
            }
            at += n as u64;
        }
        st.open_reserved += used;
        self.shared.pending.store(true, Ordering::Release);
        drop(st);
        drop(_fence);
        self.shared.unreserve(reserve - used);
        result?;
        self.shared.throttle()
    }

    /// The block's current bytes (open txg, syncing txg, or disk), as an owned buffer.
    fn current_block(&self, st: &VolumeState, idx: u64) -> Result<Box<[u8]>> {
        let bs = self.vol.block_size as usize;
        if let Some(Dirty::Data(b)) = st.open.get(&idx) {
            return Ok(b.clone());
        }
        if st.open.contains_key(&idx) {
            return Ok(vec![0u8; bs].into_boxed_slice());
        }
        match st.syncing.as_ref().and_then(|s| s.get(&idx)) {
            Some(Dirty::Data(b)) => return Ok(b.clone()),
            Some(Dirty::Zero) => return Ok(vec![0u8; bs].into_boxed_slice()),
            None => {}
        }
        let mut b = vec![0u8; bs].into_boxed_slice();
        let ptr = st
            .tree
            .as_ref()
            .map(|t| t.get(idx as usize))
            .unwrap_or_default();
        if !ptr.is_hole() {
            self.shared.read_block(&ptr, &mut b, &self.what(idx))?;
        }
        Ok(b)
    }

    /// Reserves space, committing to release deferred frees when the pool looks full.
    fn reserve(&self, bytes: u64) -> Result<()> {
        let mut tries = 0;
        loop {
            match self.shared.reserve(bytes) {
                Ok(()) => return Ok(()),
                Err(e) if tries > crate::spacemap::DEFER_TXGS => return Err(e),
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
