//! A dataset's block tree, resident: level 0 holds the data block pointers, each level above
//! holds pointers to the indirect blocks (512 pointers, 16 KiB) of the level below, and the top
//! level has exactly one pointer, the root. Changes mark indirect blocks dirty; `sync` rewrites
//! them bottom-up into fresh space (copy-on-write).

use crate::error::{Error, Result};
use crate::phys::{decode_indirect, encode_indirect, BlockPtr, INDIRECT_SIZE, PTRS_PER_INDIRECT};
use std::collections::BTreeSet;

/// A resident block tree.
pub struct BlockTree {
    levels: Vec<Vec<BlockPtr>>,
    dirty: Vec<BTreeSet<usize>>,
}

/// Indirect levels above `nblocks` data blocks.
pub fn height_for(nblocks: usize) -> usize {
    shape(nblocks).len() - 1
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

/// Bytes of memory the resident tree of `nblocks` data blocks takes (all its levels).
pub fn map_bytes(nblocks: u64) -> u64 {
    let mut total = 0u64;
    let mut n = nblocks;
    loop {
        total = total.saturating_add(n.saturating_mul(std::mem::size_of::<BlockPtr>() as u64));
        if n <= 1 {
            return total;
        }
        n = n.div_ceil(PTRS_PER_INDIRECT as u64);
    }
}

/// `n` holes, or an error (not an abort) where memory cannot hold them.
fn holes(n: usize) -> Result<Vec<BlockPtr>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::TooLarge(format!(
            "a block map of {n} blocks ({} bytes) does not fit in this host's memory; \
             open the pool on a host with more memory",
            map_bytes(n as u64)
        ))
    })?;
    v.resize(n, BlockPtr::HOLE);
    Ok(v)
}

impl BlockTree {
    /// A tree of `nblocks` holes; an error where memory cannot hold it.
    pub fn empty(nblocks: usize) -> Result<Self> {
        let s = shape(nblocks);
        Ok(BlockTree {
            levels: s.iter().map(|&n| holes(n)).collect::<Result<_>>()?,
            dirty: vec![BTreeSet::new(); s.len()],
        })
    }

    /// Reads a tree from its root. `read` fetches and verifies one indirect block.
    pub fn load(
        root: BlockPtr,
        nblocks: usize,
        mut read: impl FnMut(&BlockPtr, &mut [u8]) -> Result<()>,
    ) -> Result<Self> {
        let mut t = Self::empty(nblocks)?;
        let top = t.levels.len() - 1;
        t.levels[top][0] = root;
        let mut buf = vec![0u8; INDIRECT_SIZE];
        for k in (1..=top).rev() {
            let (lower, upper) = t.levels.split_at_mut(k);
            let below = &mut lower[k - 1];
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
            }
        }
        Ok(t)
    }

    /// Number of data blocks.
    pub fn nblocks(&self) -> usize {
        self.levels[0].len()
    }

    /// The data block pointer at `idx`.
    pub fn get(&self, idx: usize) -> BlockPtr {
        self.levels[0][idx]
    }

    /// Replaces the data block pointer at `idx`, returning the old one.
    pub fn set(&mut self, idx: usize, p: BlockPtr) -> BlockPtr {
        let old = std::mem::replace(&mut self.levels[0][idx], p);
        let parent = idx / PTRS_PER_INDIRECT;
        // Runs of sets in index order mostly hit the last-marked parent: skip the insert then.
        if old != p && self.dirty[1].last() != Some(&parent) {
            self.dirty[1].insert(parent);
        }
        old
    }

    /// The root pointer.
    pub fn root(&self) -> BlockPtr {
        self.levels[self.levels.len() - 1][0]
    }

    /// Height: number of indirect levels.
    pub fn height(&self) -> usize {
        self.levels.len() - 1
    }

    /// Whether indirect blocks wait to be rewritten.
    pub fn is_dirty(&self) -> bool {
        self.dirty.iter().any(|d| !d.is_empty())
    }

    /// Rewrites every dirty indirect block bottom-up. `write` places a block and
    /// returns its pointer; `free` receives each replaced indirect block with its level. An
    /// indirect block whose children are all holes becomes a hole.
    pub fn sync(
        &mut self,
        mut write: impl FnMut(&[u8]) -> Result<BlockPtr>,
        mut free: impl FnMut(BlockPtr, u8),
    ) -> Result<()> {
        for k in 1..self.levels.len() {
            let dirty = std::mem::take(&mut self.dirty[k]);
            for i in dirty {
                let below = &self.levels[k - 1];
                let start = i * PTRS_PER_INDIRECT;
                let end = (start + PTRS_PER_INDIRECT).min(below.len());
                let children = &below[start.min(end)..end];
                let new = if children.iter().all(BlockPtr::is_hole) {
                    // A hole standing for holes: born when the newest of them was made, so a
                    // subtree that was never written stays unborn and diffs skip it.
                    BlockPtr::hole(children.iter().map(|c| c.birth).max().unwrap_or(0))
                } else {
                    write(&encode_indirect(children))?
                };
                let old = std::mem::replace(&mut self.levels[k][i], new);
                free(old, k as u8);
                if k + 1 < self.levels.len() {
                    self.dirty[k + 1].insert(i / PTRS_PER_INDIRECT);
                }
            }
        }
        Ok(())
    }

    /// Changes the number of data blocks in `txg`. Dropped data blocks and every indirect block
    /// go to `free` with their level; added blocks are holes born in `txg` (so a shrink and
    /// regrow between two snapshots still shows as a change); the whole upper tree is
    /// rewritten at the next sync.
    pub fn resize(&mut self, nblocks: usize, txg: u64, mut free: impl FnMut(BlockPtr, u8)) {
        let mut data = std::mem::take(&mut self.levels[0]);
        if nblocks < data.len() {
            data.drain(nblocks..).for_each(|p| free(p, 0));
        }
        data.resize(nblocks, BlockPtr::hole(txg));
        for (k, level) in self.levels.iter().enumerate().skip(1) {
            level.iter().for_each(|p| free(*p, k as u8));
        }
        // Fresh upper levels around the old data level (not `empty`, which would also build
        // a level 0 of holes only to drop it: a file growing by one WRITE at a time paid for
        // its whole size on every WRITE).
        let s = shape(nblocks);
        self.levels = std::iter::once(data)
            .chain(s[1..].iter().map(|&n| vec![BlockPtr::HOLE; n]))
            .collect();
        self.dirty = vec![BTreeSet::new(); s.len()];
        self.dirty[1].extend(0..s[1]);
    }

    /// Every non-hole pointer, data and indirect, with its level (0 = data).
    pub fn for_each_ptr(&self, mut f: impl FnMut(usize, usize, &BlockPtr)) {
        for (k, level) in self.levels.iter().enumerate() {
            for (i, p) in level.iter().enumerate() {
                if !p.is_hole() {
                    f(k, i, p);
                }
            }
        }
    }
}

/// Visits every pointer (holes included) of the tree under `root` whose birth is after
/// `after`, top-down: `visit(level, first_block, ptr)`. Subtrees born at or before `after` are
/// skipped unread — the cost follows what changed since then, not the size. `read` fetches and
/// verifies an indirect block.
pub fn walk_born_after(
    root: BlockPtr,
    nblocks: usize,
    after: u64,
    read: &mut dyn FnMut(&BlockPtr, &mut [u8]) -> Result<()>,
    visit: &mut dyn FnMut(usize, u64, &BlockPtr) -> Result<()>,
) -> Result<()> {
    fn go(
        p: &BlockPtr,
        level: usize,
        first: u64,
        nblocks: u64,
        after: u64,
        read: &mut dyn FnMut(&BlockPtr, &mut [u8]) -> Result<()>,
        visit: &mut dyn FnMut(usize, u64, &BlockPtr) -> Result<()>,
    ) -> Result<()> {
        if p.birth <= after {
            return Ok(());
        }
        visit(level, first, p)?;
        if level == 0 || p.is_hole() {
            return Ok(());
        }
        let mut buf = vec![0u8; INDIRECT_SIZE];
        read(p, &mut buf)?;
        let mut kids = vec![BlockPtr::HOLE; PTRS_PER_INDIRECT];
        decode_indirect(&buf, &mut kids)?;
        let span = (PTRS_PER_INDIRECT as u64).pow(level as u32 - 1);
        for (i, k) in kids.iter().enumerate() {
            let start = first + i as u64 * span;
            if start >= nblocks {
                break;
            }
            go(k, level - 1, start, nblocks, after, read, visit)?;
        }
        Ok(())
    }
    go(
        &root,
        height_for(nblocks),
        0,
        nblocks as u64,
        after,
        read,
        visit,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ptr(n: u64) -> BlockPtr {
        BlockPtr {
            sector: n,
            sectors: 1,
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
        let l = BlockTree::load(t.root(), 2000, |p, buf| {
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
