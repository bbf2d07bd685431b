//! The allocator: one bit per sector, resident, persisted as two alternating on-disk copies.
//!
//! Freed blocks are deferred: a block freed in txg T becomes allocatable only once txg
//! T + [`DEFER_TXGS`] has committed (the commit of T + DEFER_TXGS + 1 releases it, see
//! [`released_by`]), so the DEFER_TXGS uberblocks before the newest durable one stay openable
//! even after a crash in the middle of the next commit.
//! Allocation is next-fit, and rewinds to freed runs of at least [`REWIND_MIN`]: a pool file
//! then reuses the space it already holds before it grows into holes, which cost the file
//! system (and a thin-provisioned disk under it) an allocation on first write.
//! Txg T writes copy `T % 2`, rewriting each chunk dirtied in T or T-1, so each copy is exact for
//! the txgs that wrote it.

use crate::phys::{
    checksum, DeferredFree, Enc, SECTOR, SPACEMAP_BITS_PER_CHUNK, SPACEMAP_HEADER, SPACEMAP_MAGIC,
};
use std::collections::{BTreeMap, BTreeSet};

/// Txgs a freed block waits before reuse.
pub const DEFER_TXGS: u64 = 4;

/// Commits after which every free committed before the first of them is released (and one
/// more releases the frees of the txg open when they started).
pub const RELEASE_COMMITS: u64 = DEFER_TXGS + 1;

/// The newest txg whose frees the commit of `txg` releases: T's wait until T + DEFER_TXGS is
/// durable, because until then a crash can leave T − 1 … T − DEFER_TXGS as the fallbacks of
/// a damaged newest uberblock, and T − 1's tree still holds what T freed.
pub fn released_by(txg: u64) -> u64 {
    txg.saturating_sub(RELEASE_COMMITS)
}

/// Shortest freed run that next-fit moves back to (1 MiB). Longer runs come from sequential
/// overwrites and destroys, and writing them again fills them in order; scattered small frees
/// (random overwrites) are filled when the cursor comes round, not sought out after every
/// commit.
pub const REWIND_MIN: u64 = (1 << 20) / SECTOR;

/// Runs this long are kept for blocks that need them (an indirect block takes four sectors,
/// a 16 KiB data block as many): shorter allocations look for a shorter hole first, so that
/// the single blocks of random overwrites fill the holes other single blocks left instead of
/// splitting runs.
pub const SHORT_RUN: u64 = 4;

/// Free runs a short allocation looks at before it takes the next run, whatever its length.
pub const SHORT_SCAN: usize = 256;

/// Sectors a short allocation searches for a short hole (1,024 words of the map).
pub const SHORT_WINDOW: u64 = 1 << 16;

/// A run of sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Extent {
    /// First sector.
    pub start: u64,
    /// Sector count.
    pub len: u64,
}

const WORDS_PER_CHUNK: u64 = SPACEMAP_BITS_PER_CHUNK / 64;

/// The resident allocation bitmap.
pub struct SpaceMap {
    words: Vec<u64>,
    sectors: u64,
    allocated: u64,
    reserved: u64,
    cursor: u64,
    dirty: BTreeSet<u64>,
    prev_dirty: BTreeSet<u64>,
    deferred: BTreeMap<u64, Vec<Extent>>,
    /// Extents writers placed ahead of the commit that will reference them (start → length).
    /// Allocated here, but written to disk as free until committed, so a crash leaks nothing.
    placed: BTreeMap<u64, u64>,
    /// Placed extents dropped before any commit referenced them; freed at the next commit,
    /// when no reader can still be reading them.
    zombies: Vec<Extent>,
    /// Runs held for blocks coming commits write, by length (sectors → first sectors):
    /// placed, so that no writer takes them and a crash leaks nothing
    /// ([`SpaceMap::hold_runs`], [`SpaceMap::promise_runs`]).
    held: BTreeMap<u64, Vec<u64>>,
    /// Held runs promised to blocks writes dirtied, by length; never more than are held but
    /// where a commit took one as a last resort ([`SpaceMap::take_promised_run`]).
    promised: BTreeMap<u64, u64>,
    /// Of those, the ones the commit in progress may still take, by length.
    owed: BTreeMap<u64, u64>,
}

impl SpaceMap {
    /// A map of `sectors` sectors with the first `reserved` (label, ring, space maps) in use.
    pub fn new(sectors: u64, reserved: u64) -> Self {
        let nwords = sectors.div_ceil(SPACEMAP_BITS_PER_CHUNK) * WORDS_PER_CHUNK;
        let mut sm = SpaceMap {
            words: vec![0; nwords as usize],
            sectors,
            allocated: 0,
            reserved,
            cursor: reserved,
            dirty: BTreeSet::new(),
            prev_dirty: BTreeSet::new(),
            deferred: BTreeMap::new(),
            placed: BTreeMap::new(),
            zombies: Vec::new(),
            held: BTreeMap::new(),
            promised: BTreeMap::new(),
            owed: BTreeMap::new(),
        };
        sm.set_range(0, reserved, true);
        // Bits past the end of the device are permanently allocated.
        let end = nwords * 64;
        sm.set_range(sectors, end - sectors, true);
        sm.allocated = 0;
        sm.mark_all_dirty();
        sm
    }

    /// Sectors on the device.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Sectors allocated to data and metadata (deferred frees included), reserved area excluded.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Sectors usable for data (everything past the reserved area).
    pub fn usable(&self) -> u64 {
        self.sectors - self.reserved
    }

    /// Sectors free right now.
    pub fn free(&self) -> u64 {
        self.usable() - self.allocated
    }

    /// Sectors freed but waiting out their deferral.
    pub fn deferred_sectors(&self) -> u64 {
        self.deferred.values().flatten().map(|e| e.len).sum()
    }

    /// The oldest txg with frees still deferred, if any.
    pub fn oldest_deferred(&self) -> Option<u64> {
        self.deferred.keys().next().copied()
    }

    /// The first sector in `from..to` that is allocated (`on`) or free (`!on`), a word at a
    /// time.
    fn find_bit(&self, from: u64, to: u64, on: bool) -> Option<u64> {
        let mut s = from;
        while s < to {
            let word = self.words[(s / 64) as usize];
            let word = if on { word } else { !word } & (u64::MAX << (s % 64));
            if word != 0 {
                let hit = s / 64 * 64 + u64::from(word.trailing_zeros());
                return (hit < to).then_some(hit);
            }
            s = (s / 64 + 1) * 64;
        }
        None
    }

    fn set_range(&mut self, start: u64, len: u64, on: bool) {
        if len == 0 {
            return;
        }
        for s in start..start + len {
            let (w, b) = ((s / 64) as usize, s % 64);
            let was = self.words[w] & (1 << b) != 0;
            if was != on {
                self.words[w] ^= 1 << b;
                if on {
                    self.allocated += 1;
                } else {
                    self.allocated -= 1;
                }
            }
        }
        let first = start / SPACEMAP_BITS_PER_CHUNK;
        let last = (start + len - 1) / SPACEMAP_BITS_PER_CHUNK;
        self.dirty.extend(first..=last);
    }

    /// Whether every sector of the extent is allocated.
    pub fn is_allocated(&self, start: u64, len: u64) -> bool {
        start + len <= self.sectors && self.find_bit(start, start + len, false).is_none()
    }

    /// Allocates `len` contiguous sectors, next-fit from the last allocation (or the lowest
    /// space freed since). Fewer than [`SHORT_RUN`] sectors go in a hole shorter than that
    /// among the next [`SHORT_SCAN`] free runs, where there is one.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        if len == 0 || len > self.free() {
            return None;
        }
        if len < SHORT_RUN {
            if let Some(s) = self.short_hole(len) {
                self.set_range(s, len, true);
                self.cursor = s + len;
                return Some(s);
            }
        }
        let lo = self.reserved;
        let mut s = self.cursor.max(lo);
        let mut wrapped = false;
        loop {
            if s + len > self.sectors {
                if wrapped {
                    return None;
                }
                wrapped = true;
                s = lo;
                continue;
            }
            if wrapped && s >= self.cursor {
                return None;
            }
            match self.find_bit(s, s + len, true) {
                None => {
                    self.set_range(s, len, true);
                    self.cursor = s + len;
                    return Some(s);
                }
                // Go on at the next free sector past the allocated one.
                Some(used) => {
                    s = self
                        .find_bit(used, self.sectors, false)
                        .unwrap_or(self.sectors)
                }
            }
        }
    }

    /// The first hole of at least `len` and fewer than [`SHORT_RUN`] sectors among the next
    /// [`SHORT_SCAN`] free runs within [`SHORT_WINDOW`] sectors of the cursor (wrapping round
    /// to the start of the data area), so that the search costs a few microseconds however
    /// large the pool.
    fn short_hole(&self, len: u64) -> Option<u64> {
        let lo = self.reserved;
        let mut s = self.cursor.clamp(lo, self.sectors);
        let mut budget = SHORT_WINDOW;
        let mut runs = 0;
        while budget > 0 && runs < SHORT_SCAN {
            let limit = (s + budget).min(self.sectors);
            let Some(start) = self.find_bit(s, limit, false) else {
                budget -= limit - s;
                s = lo;
                continue;
            };
            runs += 1;
            let cap = (start + SHORT_RUN).min(self.sectors);
            let end = self.find_bit(start, cap, true).unwrap_or(cap);
            if end - start >= len && end - start < SHORT_RUN {
                return Some(start);
            }
            // A run of SHORT_RUN or more (or a hole too short): go on past its end.
            let next = self.find_bit(end, limit, true).unwrap_or(limit);
            budget -= next - s;
            s = next;
        }
        None
    }

    /// Allocates `len` sectors for a writer placing data ahead of its commit.
    /// Leaves at least `keep` sectors (space reserved by others, the runs held for their
    /// promises included) plus a slop of 1/32 of the pool for metadata.
    pub fn place(&mut self, len: u64, keep: u64) -> Option<u64> {
        // Runs held for writes' promises are counted in `keep` already; runs held and
        // promised to no write are free space too.
        let short = |sm: &Self| sm.free() + sm.promised_held_sectors() < len + keep + sm.slop();
        if short(self) && self.has_unpromised_runs() {
            self.give_back_unpromised();
        }
        if short(self) {
            return None;
        }
        let s = self.alloc(len)?;
        self.placed.insert(s, len);
        Some(s)
    }

    /// Holds `want` runs of `len` sectors (at most half the slop's worth, never fewer than
    /// promised) for the indirect blocks of coming commits, keeping `keep` sectors (data
    /// writers reserved) and half the slop free for everything else; gives back held runs
    /// beyond that, and held runs of other lengths beyond those promised. Random overwrites
    /// of small blocks leave free space in holes of one block, and writers placing single
    /// blocks split whatever runs they meet: a commit could find no run long enough for an
    /// indirect block with plenty of space free. Commits hold runs right after releasing
    /// frees (which return the runs of the indirect blocks they replaced), before writers can
    /// split them. Returns the runs of `len` held.
    pub fn hold_runs(&mut self, want: usize, len: u64, keep: u64) -> usize {
        let half_slop = self.slop() / 2;
        let want = want.min((half_slop / len.max(1)) as usize);
        self.give_back_beyond(|l, promised| {
            if l == len {
                want.max(promised)
            } else {
                promised
            }
        });
        let target = want.max(usize::try_from(self.promised(len)).unwrap_or(usize::MAX));
        self.hold_more(target, len, keep + half_slop);
        self.held_count(len)
    }

    /// Gives every held run promised to no write back to free space.
    pub fn give_back_unpromised(&mut self) {
        self.give_back_beyond(|_, promised| promised);
    }

    /// Gives held runs back to free space beyond `keep(length, promised)` of each length.
    fn give_back_beyond(&mut self, keep: impl Fn(u64, usize) -> usize) {
        let lens: Vec<u64> = self.held.keys().copied().collect();
        for l in lens {
            let promised = usize::try_from(self.promised(l)).unwrap_or(usize::MAX);
            let runs = self.held.entry(l).or_default();
            let extra = runs.split_off(keep(l, promised).min(runs.len()));
            for start in extra {
                // Never referenced, never readable: back to free at once.
                if self.placed.remove(&start).is_some() {
                    self.release(start, l);
                }
            }
        }
        self.held.retain(|_, runs| !runs.is_empty());
    }

    /// Holds runs of `len` sectors until `want` are held, leaving at least `floor` sectors
    /// free, or until free space has no such run.
    fn hold_more(&mut self, want: usize, len: u64, floor: u64) {
        while self.held_count(len) < want && self.free() >= len + floor {
            let Some(start) = self.alloc(len) else {
                break;
            };
            self.placed.insert(start, len);
            self.held.entry(len).or_default().push(start);
        }
    }

    fn held_count(&self, len: u64) -> usize {
        self.held.get(&len).map_or(0, Vec::len)
    }

    fn promised(&self, len: u64) -> u64 {
        self.promised.get(&len).copied().unwrap_or(0)
    }

    /// Promises `runs` held runs of `len` sectors to blocks a write dirties (indirect
    /// blocks, or data blocks of more than one sector buffered until the commit), so that
    /// the commit writing them finds a run for each. Holds more when those not yet promised
    /// fall short: the writer reserved their bytes already, so only half the slop is left
    /// free. False when free space has no more runs that long (it is cut into smaller holes).
    pub fn promise_runs(&mut self, len: u64, runs: u64) -> bool {
        if runs == 0 {
            return true;
        }
        let want = self.promised(len).saturating_add(runs);
        let want_held = usize::try_from(want).unwrap_or(usize::MAX);
        if self.held_count(len) < want_held {
            let floor = self.slop() / 2;
            self.hold_more(want_held, len, floor);
        }
        if self.held_count(len) < want_held {
            return false;
        }
        self.promised.insert(len, want);
        true
    }

    /// Takes back runs of `len` sectors promised to blocks no commit will write.
    pub fn unpromise_runs(&mut self, len: u64, runs: u64) {
        let p = self.promised(len);
        debug_assert!(runs <= p, "{runs} > {p}");
        self.set_promised(len, p.saturating_sub(runs));
    }

    fn set_promised(&mut self, len: u64, n: u64) {
        if n == 0 {
            self.promised.remove(&len);
        } else {
            self.promised.insert(len, n);
        }
    }

    /// The commit starting now writes the blocks `runs` (length, count) promised runs were
    /// for: it may take that many held runs of each length first.
    pub fn begin_commit_runs(&mut self, runs: &[(u64, u64)]) {
        self.owed.clear();
        for &(len, n) in runs.iter().filter(|r| r.1 > 0) {
            *self.owed.entry(len).or_default() += n;
        }
        let lens: Vec<u64> = self.owed.keys().copied().collect();
        for len in lens {
            let p = self.promised(len);
            let owed = self.owed.entry(len).or_default();
            debug_assert!(*owed <= p, "{owed} > {p}");
            *owed = (*owed).min(p);
        }
    }

    /// The commit is done: its promises not taken up (upper indirect blocks shared by
    /// leaves, data blocks a commit could place in longer runs of free space) are void.
    pub fn end_commit_runs(&mut self) {
        for (len, owed) in std::mem::take(&mut self.owed) {
            let p = self.promised(len);
            self.set_promised(len, p - owed);
        }
    }

    /// Gives up to `runs` held runs of `len` sectors promised to the commit in progress back
    /// to free space, right before it allocates the data blocks they were promised to: held,
    /// they kept writers from splitting them; free, the commit may place those blocks in
    /// longer runs, as it does where free space has them, and still finds a run for each.
    pub fn release_owed(&mut self, len: u64, runs: u64) {
        for _ in 0..runs {
            let Some(owed) = self.owed.get_mut(&len).filter(|o| **o > 0) else {
                return;
            };
            *owed -= 1;
            let p = self.promised(len);
            self.set_promised(len, p.saturating_sub(1));
            let Some(start) = self.held.get_mut(&len).and_then(Vec::pop) else {
                continue;
            };
            if self.held.get(&len).is_some_and(Vec::is_empty) {
                self.held.remove(&len);
            }
            if self.placed.remove(&start).is_some() {
                self.release(start, len);
            }
        }
    }

    /// Sectors held, of every length.
    pub fn held_sectors(&self) -> u64 {
        self.held.iter().map(|(len, v)| len * v.len() as u64).sum()
    }

    /// Sectors held and promised to writes: space their reservations already count.
    pub fn promised_held_sectors(&self) -> u64 {
        self.held
            .iter()
            .map(|(&len, v)| len * (v.len() as u64).min(self.promised(len)))
            .sum()
    }

    /// Runs of `len` sectors held and not promised to any write.
    pub fn unpromised_runs(&self, len: u64) -> u64 {
        (self.held_count(len) as u64).saturating_sub(self.promised(len))
    }

    /// Whether any held run, of any length, is promised to no write.
    pub fn has_unpromised_runs(&self) -> bool {
        self.held.keys().any(|&len| self.unpromised_runs(len) > 0)
    }

    /// Takes a held run of `len` sectors for a block the txg being committed writes: one
    /// promised to it, or one promised to no write. None when every run left is promised to
    /// the next txg's writes (the caller allocates from free space first, then takes one of
    /// those with [`SpaceMap::take_promised_run`]).
    pub fn take_run(&mut self, len: u64) -> Option<u64> {
        if let Some(owed) = self.owed.get_mut(&len).filter(|o| **o > 0) {
            *owed -= 1;
            // None where a commit took a promised run as a last resort.
            let start = self.take_held(len);
            let p = self.promised(len);
            self.set_promised(len, p.saturating_sub(1));
            return start;
        }
        if self.unpromised_runs(len) > 0 {
            return self.take_held(len);
        }
        None
    }

    /// Takes a held run for a data block the commit in progress found no free run for, after
    /// it gave its own runs back to free space ([`SpaceMap::release_owed`]): one promised to
    /// no write first, then one owed to this commit's other blocks, then one promised to the
    /// next txg's writes.
    pub fn take_spare_run(&mut self, len: u64) -> Option<u64> {
        if self.unpromised_runs(len) > 0 {
            return self.take_held(len);
        }
        self.take_run(len).or_else(|| self.take_promised_run(len))
    }

    /// Takes a held run promised to the next txg's writes: a last resort before failing
    /// the commit (that txg's commit then allocates from free space, or takes one the same
    /// way, and writes wait until there are runs again).
    pub fn take_promised_run(&mut self, len: u64) -> Option<u64> {
        self.take_held(len)
    }

    fn take_held(&mut self, len: u64) -> Option<u64> {
        let runs = self.held.get_mut(&len)?;
        let start = runs.pop()?;
        if runs.is_empty() {
            self.held.remove(&len);
        }
        debug_assert_eq!(self.placed.get(&start), Some(&len), "{start}+{len}");
        self.commit_placed(start, len);
        Some(start)
    }

    /// Sectors writers leave free for the metadata commits write: 1/32 of the pool.
    pub fn slop(&self) -> u64 {
        (self.usable() / 32).max(256)
    }

    /// Placed sectors `start..start + len` are referenced by the txg being committed (a placed
    /// extent may be committed block by block, and a range may span several placed extents).
    /// Sectors in the range that are not placed are left alone.
    pub fn commit_placed(&mut self, mut start: u64, mut len: u64) {
        while len > 0 {
            let end = start + len;
            let (s, l) = match self.placed.range(..=start).next_back() {
                Some((&s, &l)) if start < s + l => (s, l),
                // Not placed here: go on at the next placed extent inside the range, if any.
                _ => match self.placed.range(start..end).next() {
                    Some((&s, &l)) => {
                        len = end - s;
                        start = s;
                        (s, l)
                    }
                    None => return,
                },
            };
            let n = len.min(s + l - start);
            self.placed.remove(&s);
            if start > s {
                self.placed.insert(s, start - s);
            }
            if start + n < s + l {
                self.placed.insert(start + n, s + l - start - n);
            }
            self.mark_dirty(start, n);
            start += n;
            len -= n;
        }
    }

    /// A placed block was replaced or dropped before any commit referenced it.
    pub fn unplace(&mut self, start: u64, len: u64) {
        self.zombies.push(Extent { start, len });
    }

    /// Frees the placed blocks dropped since the last call (no reader can hold them now).
    pub fn bury_zombies(&mut self) {
        for z in std::mem::take(&mut self.zombies) {
            self.commit_placed(z.start, z.len);
            self.release(z.start, z.len);
        }
    }

    /// Frees an extent; a run of at least [`REWIND_MIN`] below the cursor is where the next
    /// allocation starts.
    fn release(&mut self, start: u64, len: u64) {
        self.set_range(start, len, false);
        if len >= REWIND_MIN {
            self.cursor = self.cursor.min(start);
        }
    }

    /// Sectors placed by writers and not yet committed (zombies included).
    pub fn placed(&self) -> u64 {
        self.placed.values().sum()
    }

    fn mark_dirty(&mut self, start: u64, len: u64) {
        if len > 0 {
            self.dirty.extend(
                start / SPACEMAP_BITS_PER_CHUNK..=(start + len - 1) / SPACEMAP_BITS_PER_CHUNK,
            );
        }
    }

    /// Whether `start..start + len` lies in the data area (what a pointer or a free read
    /// from disk must satisfy before it touches the map).
    pub fn in_data_area(&self, start: u64, len: u64) -> bool {
        start >= self.reserved
            && start
                .checked_add(len)
                .is_some_and(|end| end <= self.sectors)
    }

    /// Marks an extent allocated (used when rebuilding from a tree walk); false, changing
    /// nothing, for one outside the data area.
    pub fn claim(&mut self, start: u64, len: u64) -> bool {
        if !self.in_data_area(start, len) {
            return false;
        }
        self.set_range(start, len, true);
        true
    }

    /// Frees an extent in `txg`; it becomes reusable DEFER_TXGS txgs later. An extent outside
    /// the data area (only damaged metadata names one; loading checks block pointers) is
    /// logged and left alone: freeing it would write the map past its end, or free the labels.
    pub fn free_deferred(&mut self, txg: u64, start: u64, len: u64) {
        if !self.in_data_area(start, len) {
            tracing::error!(
                start,
                len,
                "a free outside the pool's data area was ignored: the pool's metadata is damaged"
            );
            return;
        }
        let list = self.deferred.entry(txg).or_default();
        match list.last_mut() {
            // Sequential overwrites free runs of adjacent blocks: keep them as one extent.
            Some(last)
                if last.start + last.len == start && last.len + len <= u64::from(u32::MAX) =>
            {
                last.len += len
            }
            _ => list.push(Extent { start, len }),
        }
    }

    /// Frees immediately: only for blocks that no committed txg ever referenced.
    pub fn free_now(&mut self, start: u64, len: u64) {
        self.release(start, len);
    }

    /// Takes the frees of txgs <= `upto` out of the deferred list, leaving them allocated:
    /// the caller may punch holes in them while no writer can be given them, then frees them
    /// with [`SpaceMap::free_released`].
    pub fn take_released(&mut self, upto: u64) -> Vec<Extent> {
        let keep = self.deferred.split_off(&(upto + 1));
        let ready = std::mem::replace(&mut self.deferred, keep);
        ready.into_values().flatten().collect()
    }

    /// Frees extents taken with [`SpaceMap::take_released`].
    pub fn free_released(&mut self, released: &[Extent]) {
        for e in released {
            self.release(e.start, e.len);
        }
    }

    /// Takes the first free run at or after sector `from` that is at least `min` sectors
    /// long (at most `max` of it), marking it allocated so that no writer is given it while
    /// the caller trims it; give it back with [`SpaceMap::return_free_run`]. Like placed
    /// data, the run is written to disk as free meanwhile, so commits may go on while it is
    /// out and a crash leaks nothing. Leaves at least `keep` sectors free (space reserved by
    /// writers, and the slop where commits may run meanwhile).
    pub fn take_free_run(&mut self, from: u64, min: u64, max: u64, keep: u64) -> Option<Extent> {
        let max = max.min(self.free().saturating_sub(keep));
        if max < min {
            return None;
        }
        let mut s = from.max(self.reserved);
        loop {
            let start = self.find_bit(s, self.sectors, false)?;
            let limit = self.sectors.min(start + max);
            let end = self.find_bit(start, limit, true).unwrap_or(limit);
            if end - start >= min {
                self.set_range(start, end - start, true);
                self.placed.insert(start, end - start);
                return Some(Extent {
                    start,
                    len: end - start,
                });
            }
            s = end;
        }
    }

    /// Gives back a run taken with [`SpaceMap::take_free_run`].
    pub fn return_free_run(&mut self, run: Extent) {
        let taken = self.placed.remove(&run.start);
        debug_assert_eq!(taken, Some(run.len), "{run:?} was not taken whole");
        if taken.is_some() {
            self.release(run.start, run.len);
        }
    }

    /// The pending frees, oldest txg first, for the deferred-free chain. Every extent fits
    /// its u32 sector count: frees are of single blocks, and [`SpaceMap::free_deferred`]
    /// merges them only up to that.
    pub fn deferred(&self) -> Vec<DeferredFree> {
        self.deferred
            .iter()
            .flat_map(|(&txg, extents)| {
                extents.iter().map(move |e| {
                    debug_assert!(e.len <= u64::from(u32::MAX), "{e:?}");
                    DeferredFree {
                        txg,
                        sector: e.start,
                        sectors: e.len as u32,
                    }
                })
            })
            .collect()
    }

    /// Restores the pending frees from the deferred-free chain.
    /// False, changing nothing, if an extent is empty, lies outside the data area, overlaps
    /// another, or (with `loaded`, the map as written by the same txg) is not allocated in the map,
    /// as every pending free is until its release: a damaged or crafted chain, whose
    /// release would index past the map or free a sector twice.
    pub fn set_deferred(&mut self, d: &[DeferredFree], loaded: bool) -> bool {
        let mut all: Vec<(u64, u64)> = d.iter().map(|f| (f.sector, u64::from(f.sectors))).collect();
        all.sort_unstable();
        if !all
            .iter()
            .all(|&(s, n)| n > 0 && self.in_data_area(s, n) && (!loaded || self.is_allocated(s, n)))
            || all.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0)
        {
            return false;
        }
        let mut deferred: BTreeMap<u64, Vec<Extent>> = BTreeMap::new();
        for f in d {
            deferred.entry(f.txg).or_default().push(Extent {
                start: f.sector,
                len: u64::from(f.sectors),
            });
        }
        self.deferred = deferred;
        true
    }

    /// After an open: the next commit writes the copy that was not loaded, and must rewrite
    /// exactly its chunks in `stale` (those that differ from the loaded copy); the rest already
    /// match.
    pub fn set_stale_after_open(&mut self, stale: impl IntoIterator<Item = u64>) {
        self.prev_dirty.clear();
        self.dirty = stale.into_iter().collect();
    }

    /// Forces the next two commits to rewrite every chunk (after a rebuild).
    pub fn mark_all_dirty(&mut self) {
        let n = self.chunks();
        self.dirty.extend(0..n);
        self.prev_dirty.extend(0..n);
    }

    /// Chunk count.
    pub fn chunks(&self) -> u64 {
        self.words.len() as u64 / WORDS_PER_CHUNK
    }

    /// Chunks the commit of a txg must write, and the rotation of the dirty sets.
    pub fn take_chunks_to_write(&mut self) -> Vec<u64> {
        let now = std::mem::take(&mut self.dirty);
        let out: Vec<u64> = now.union(&self.prev_dirty).copied().collect();
        self.prev_dirty = now;
        out
    }

    /// Encodes chunk `c` as written in `txg`.
    pub fn encode_chunk(&self, c: u64, txg: u64, guid: u64) -> Vec<u8> {
        let w = (c * WORDS_PER_CHUNK) as usize;
        let mut words = self.words[w..w + WORDS_PER_CHUNK as usize].to_vec();
        // Placed but uncommitted extents are written as free.
        let (lo, hi) = (
            c * SPACEMAP_BITS_PER_CHUNK,
            (c + 1) * SPACEMAP_BITS_PER_CHUNK,
        );
        let first = self
            .placed
            .range(..lo)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(lo);
        for (&s, &l) in self.placed.range(first..hi) {
            for sector in s.max(lo)..(s + l).min(hi) {
                let rel = sector - lo;
                words[(rel / 64) as usize] &= !(1 << (rel % 64));
            }
        }
        let mut bits = Enc::default();
        for word in &words {
            bits.u64(*word);
        }
        let sum = checksum(&bits.0, guid ^ c ^ txg.rotate_left(32));
        let mut e = Enc::default();
        e.bytes(&SPACEMAP_MAGIC).u64(txg).u128(sum).bytes(&bits.0);
        debug_assert_eq!(e.0.len(), SECTOR as usize);
        e.0
    }

    /// The txg stamped on an encoded chunk (unverified: `chunk_txg` checks the checksum).
    pub fn stamp(b: &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(b.get(8..16)?.try_into().ok()?))
    }

    /// The txg that wrote encoded chunk `c`, if it verifies (magic and checksum).
    pub fn chunk_txg(c: u64, b: &[u8], guid: u64) -> Option<u64> {
        if b.len() != SECTOR as usize || b[0..8] != SPACEMAP_MAGIC {
            return None;
        }
        let txg = Self::stamp(b)?;
        let sum = u128::from_le_bytes(b[16..32].try_into().ok()?);
        (checksum(&b[SPACEMAP_HEADER..], guid ^ c ^ txg.rotate_left(32)) == sum).then_some(txg)
    }

    /// Loads chunk `c` if it verifies, was written no later than `max_txg`, and marks the
    /// reserved area and the tail past the device allocated, as every chunk written does. A
    /// chunk that verifies but frees any of them (crafted) would hand the labels or live
    /// metadata to the allocator: refused, so that the map is rebuilt from the trees.
    pub fn load_chunk(&mut self, c: u64, b: &[u8], max_txg: u64, guid: u64) -> bool {
        if Self::chunk_txg(c, b, guid).is_none_or(|txg| txg > max_txg) {
            return false;
        }
        let bits = &b[SPACEMAP_HEADER..];
        let lo = c * SPACEMAP_BITS_PER_CHUNK;
        let hi = lo + SPACEMAP_BITS_PER_CHUNK;
        let set = |s: u64| {
            let rel = (s - lo) as usize;
            bits.get(rel / 8)
                .is_some_and(|byte| byte & (1 << (rel % 8)) != 0)
        };
        if !(lo..hi.min(self.reserved)).all(set) || !(lo.max(self.sectors)..hi).all(set) {
            return false;
        }
        let w = (c * WORDS_PER_CHUNK) as usize;
        for (i, word) in bits.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(word.try_into().unwrap_or_default());
            let old = self.words[w + i];
            self.allocated += u64::from(v.count_ones());
            self.allocated -= u64::from(old.count_ones());
            self.words[w + i] = v;
        }
        true
    }

    /// Recounts `allocated` from the bits (after loading every chunk).
    pub fn recount(&mut self) {
        let total: u64 = self.words.iter().map(|w| u64::from(w.count_ones())).sum();
        let tail = self.words.len() as u64 * 64 - self.sectors;
        // Loaded chunks mark both (`load_chunk`), fresh ones too: never below.
        self.allocated = total.saturating_sub(self.reserved + tail);
    }

    /// Clears every bit except the reserved area, the tail and the deferred frees (before a
    /// rebuild): what a txg freed stays allocated until its release, rebuilt or not, since
    /// older uberblocks' trees still hold it.
    pub fn reset(&mut self) {
        // Only at open, before any write could promise a run.
        debug_assert!(self.promised.is_empty() && self.owed.is_empty());
        for (_, runs) in std::mem::take(&mut self.held) {
            for start in runs {
                self.placed.remove(&start);
            }
        }
        let fresh = SpaceMap::new(self.sectors, self.reserved);
        self.words = fresh.words;
        self.allocated = 0;
        let deferred: Vec<Extent> = self.deferred.values().flatten().copied().collect();
        for e in deferred {
            self.claim(e.start, e.len);
        }
        self.mark_all_dirty();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_run_may_span_adjacent_placed_extents() {
        let mut sm = SpaceMap::new(1000, 10);
        let a = sm.place(8, 0).unwrap();
        let b = sm.place(8, 0).unwrap();
        let c = sm.place(8, 0).unwrap();
        assert_eq!((b, c), (a + 8, a + 16), "adjacent extents");
        // The middle of the first through the middle of the third, in one call.
        sm.commit_placed(a + 4, 16);
        assert_eq!(sm.placed(), 8, "only the outer halves stay placed");
        sm.unplace(a, 4);
        sm.unplace(c + 4, 4);
        sm.bury_zombies();
        assert_eq!((sm.placed(), sm.allocated()), (0, 16));
        // Sectors that were never placed are left alone.
        sm.commit_placed(500, 4);
        assert_eq!((sm.placed(), sm.allocated()), (0, 16));
        // A gap inside the range does not stop the extents after it from being committed.
        let d = sm.place(8, 0).unwrap();
        let e = sm.place(8, 0).unwrap();
        sm.unplace(d, 8);
        sm.bury_zombies();
        sm.commit_placed(d, e + 8 - d);
        assert_eq!((sm.placed(), sm.allocated()), (0, 24));
    }

    #[test]
    fn held_runs_are_free_on_disk_out_of_reach_and_given_back() {
        let mut sm = SpaceMap::new(20_000, 10);
        let slop = sm.slop();
        assert_eq!(sm.hold_runs(5, 4, 0), 5);
        assert_eq!((sm.placed(), sm.held_sectors()), (20, 20));
        let enc = sm.encode_chunk(0, 1, 9);
        let mut other = SpaceMap::new(20_000, 10);
        assert!(other.load_chunk(0, &enc, 1, 9));
        other.recount();
        assert_eq!(other.allocated(), 0, "held runs are written as free");
        // Writers allocate around them.
        let a = sm.alloc(8).unwrap();
        assert!(!(10..30).contains(&a), "{a}");
        // Taken for an indirect block: allocated for good, no longer placed.
        let run = sm.take_run(4).unwrap();
        assert!(sm.is_allocated(run, 4));
        assert_eq!((sm.placed(), sm.held_sectors()), (16, 16));
        assert_eq!(sm.take_run(2), None, "only runs of the length held");
        // Fewer wanted: the extras go back to free space at once.
        let before = sm.allocated();
        assert_eq!(sm.hold_runs(1, 4, 0), 1);
        assert_eq!((sm.placed(), sm.allocated()), (4, before - 12));
        // Never more than half the slop, never out of what writers reserved.
        let n = sm.hold_runs(usize::MAX, 4, 0);
        assert_eq!(n as u64, slop / 2 / 4);
        sm.hold_runs(0, 4, 0);
        let keep = sm.free() - slop / 2 - 3;
        assert_eq!(sm.hold_runs(10, 4, keep), 0);
    }

    #[test]
    fn promised_runs_are_held_until_their_commit_and_refused_when_free_space_has_none() {
        let mut sm = SpaceMap::new(2_000, 10);
        // Promising holds runs on demand, of each length apart, and holding never gives back
        // promised ones.
        assert!(sm.promise_runs(4, 3));
        assert!(sm.promise_runs(8, 1));
        assert_eq!(sm.held_sectors(), 20);
        assert_eq!((sm.unpromised_runs(4), sm.promised_held_sectors()), (0, 20));
        assert_eq!(sm.hold_runs(0, 4, 0), 3, "promised runs stay held");
        assert_eq!(sm.held_sectors(), 20);
        sm.unpromise_runs(4, 1);
        sm.unpromise_runs(8, 1);
        assert_eq!(sm.hold_runs(0, 4, 0), 2);
        assert_eq!(
            sm.held_sectors(),
            8,
            "unpromised runs of other lengths go back too"
        );
        // A commit takes its promised runs first; what it leaves untaken is void at its end.
        sm.begin_commit_runs(&[(4, 2)]);
        assert!(sm.take_run(4).is_some());
        sm.end_commit_runs();
        assert_eq!((sm.held_sectors(), sm.unpromised_runs(4)), (4, 1));
        // Runs promised to the next txg are taken only as a last resort.
        sm.hold_runs(0, 4, 0);
        assert!(sm.promise_runs(4, 1));
        assert_eq!(sm.take_run(4), None);
        assert!(sm.take_promised_run(4).is_some());
        sm.unpromise_runs(4, 1);
        // Free space cut into single sectors has no run to promise: refused, nothing held.
        while sm.alloc(1).is_some() {}
        assert_eq!(sm.free(), 0);
        for x in (10..1_600).step_by(2) {
            sm.free_now(x, 1);
        }
        assert!(sm.free() > sm.slop() / 2 + 4, "free {}", sm.free());
        assert!(!sm.promise_runs(4, 1));
        assert_eq!(sm.held_sectors(), 0);
        // A run freed (an indirect block released) is promised again.
        sm.free_now(1_700, 4);
        assert!(sm.promise_runs(4, 1));
        assert!(sm.is_allocated(1_700, 4));
    }

    #[test]
    fn short_allocations_fill_short_holes_before_splitting_runs() {
        let mut sm = SpaceMap::new(200, 10);
        while sm.alloc(1).is_some() {}
        sm.free_now(20, 4);
        sm.free_now(30, 1);
        sm.free_now(40, 2);
        sm.free_now(190, 6);
        // Past the last hole, wrapping round: the one-sector hole, then the two-sector one,
        // and the four-sector run only once no shorter hole is left.
        assert_eq!(sm.alloc(1), Some(30));
        assert_eq!(sm.alloc(2), Some(40));
        assert_eq!(
            sm.alloc(1),
            Some(190),
            "next-fit from the cursor: no short hole left"
        );
        assert_eq!(sm.alloc(3), Some(191));
        assert_eq!(sm.alloc(4), Some(20));
    }

    #[test]
    fn allocates_contiguously_and_defers_frees() {
        let mut sm = SpaceMap::new(1000, 10);
        let a = sm.alloc(100).unwrap();
        let b = sm.alloc(100).unwrap();
        assert_eq!((a, b), (10, 110));
        let p = sm.place(10, 0).unwrap();
        let enc = sm.encode_chunk(0, 1, 9);
        let mut other = SpaceMap::new(1000, 10);
        assert!(other.load_chunk(0, &enc, 1, 9));
        other.recount();
        assert_eq!(other.allocated(), 200, "placed blocks are written as free");
        sm.commit_placed(p, 4);
        sm.unplace(p + 4, 6);
        assert_eq!(sm.placed(), 6);
        sm.bury_zombies();
        assert_eq!((sm.placed(), sm.allocated()), (0, 204));
        sm.free_now(p, 4);
        sm.free_deferred(5, a, 60);
        sm.free_deferred(5, a + 60, 40);
        assert_eq!(
            sm.deferred(),
            vec![DeferredFree {
                txg: 5,
                sector: a,
                sectors: 100
            }]
        );
        assert_eq!(sm.allocated(), 200);
        assert!(sm.take_released(4).is_empty());
        let released = sm.take_released(5);
        assert_eq!(released.len(), 1);
        assert_eq!(sm.allocated(), 200, "taken, not yet freed");
        sm.free_released(&released);
        assert_eq!(sm.allocated(), 100);
        // Fill the rest; a wrap finds the freed hole.
        assert!(sm.alloc(790).is_some());
        assert_eq!(sm.alloc(100), Some(10));
        assert_eq!(sm.alloc(1), None);
        assert_eq!(sm.free(), 0);
    }

    #[test]
    fn released_runs_are_reused_before_fresh_space() {
        let m = REWIND_MIN;
        let mut sm = SpaceMap::new(100 * m, 10);
        let a = sm.alloc(4 * m).unwrap();
        let b = sm.alloc(4 * m).unwrap();
        sm.free_deferred(1, a, 2 * m);
        sm.free_deferred(2, a + 3 * m, 1);
        assert_eq!(sm.alloc(m), Some(b + 4 * m), "deferred space is not reused");
        let released = sm.take_released(2);
        sm.free_released(&released);
        assert_eq!(
            sm.alloc(m),
            Some(a),
            "next-fit moved back to the released run"
        );
        assert_eq!(
            sm.alloc(2 * m),
            Some(b + 5 * m),
            "too little left there: on to fresh space"
        );
        assert_eq!(
            sm.alloc(1),
            Some(a + 3 * m),
            "a short allocation fills a short hole"
        );
        assert_eq!(
            sm.alloc(SHORT_RUN),
            Some(b + 7 * m),
            "a short free does not move next-fit back"
        );
        sm.free_now(b, m);
        assert_eq!(sm.alloc(1), Some(b), "a freed run of REWIND_MIN does");
    }

    #[test]
    fn free_runs_are_taken_whole_or_in_pieces_of_at_most_max() {
        let mut sm = SpaceMap::new(10_000, 10);
        assert_eq!(sm.slop(), 312);
        sm.alloc(90).unwrap(); // 10..100
        let hole = sm.alloc(5).unwrap(); // 100..105
        sm.alloc(95).unwrap(); // 105..200
        sm.free_now(hole, 5);
        let before = sm.allocated();
        let run = |start, len| Some(Extent { start, len });
        assert_eq!(sm.take_free_run(0, 10, 500, 0), run(200, 500));
        assert_eq!(sm.take_free_run(700, 10, 500, 0), run(700, 500));
        assert_eq!(
            sm.take_free_run(9_800, 10, 500, 0),
            run(9_800, 200),
            "a run ends at the end of the map"
        );
        // 8,605 free: keeping 8,000 and the slop leaves 293 to take.
        let slop = sm.slop();
        assert_eq!(
            sm.take_free_run(1_200, 10, 100_000, 8_000 + slop),
            run(1_200, 293)
        );
        assert_eq!(sm.take_free_run(1_200, 10, 100_000, 8_300 + slop), None);
        assert_eq!(
            sm.take_free_run(0, 10, 500, 0),
            run(1_493, 500),
            "the 5-sector hole is too short"
        );
        assert_eq!(sm.take_free_run(0, 5, 500, 0), run(hole, 5));
        let taken = 500 + 500 + 200 + 293 + 500 + 5;
        assert_eq!(
            sm.allocated(),
            before + taken,
            "taken runs are allocated meanwhile"
        );
        assert_eq!(sm.placed(), taken, "and counted as being written");
        let mut on_disk = SpaceMap::new(10_000, 10);
        assert!(on_disk.load_chunk(0, &sm.encode_chunk(0, 1, 1), 1, 1));
        on_disk.recount();
        assert_eq!(
            on_disk.allocated(),
            before,
            "taken runs are written to disk as free"
        );
        sm.return_free_run(Extent {
            start: 200,
            len: 500,
        });
        assert_eq!(sm.allocated(), before + taken - 500);
        assert_eq!(sm.placed(), taken - 500);
        assert_eq!(sm.alloc(1), Some(200));
    }

    #[test]
    fn find_bit_agrees_with_a_bit_by_bit_scan() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let mut sm = SpaceMap::new(1_000, 0);
        for _ in 0..60 {
            let (start, len) = (rng.gen_range(0..990), rng.gen_range(1..10));
            sm.set_range(start, len.min(1_000 - start), true);
        }
        for _ in 0..5_000 {
            let from = rng.gen_range(0..1_000);
            let to = rng.gen_range(from..=1_000);
            let on = rng.gen_bool(0.5);
            let bit = |s: u64| sm.words[(s / 64) as usize] & (1 << (s % 64)) != 0;
            let naive = (from..to).find(|&s| bit(s) == on);
            assert_eq!(sm.find_bit(from, to, on), naive, "{from}..{to} {on}");
        }
    }

    #[test]
    fn chunks_round_trip_and_reject_newer_or_flipped() {
        let mut sm = SpaceMap::new(100_000, 10);
        sm.alloc(5000).unwrap();
        let c0 = sm.encode_chunk(0, 7, 1);
        let mut other = SpaceMap::new(100_000, 10);
        assert!(!other.load_chunk(0, &c0, 6, 1));
        assert!(other.load_chunk(0, &c0, 7, 1));
        other.recount();
        assert_eq!(other.allocated(), 5000);
        let mut bad = c0.clone();
        bad[100] ^= 1;
        assert!(!other.load_chunk(0, &bad, 9, 1));
    }
}
