//! Scrub: read every committed block, verify its checksum, and cross-check the allocator, the
//! deadlists and space accounting against what the trees actually reference (the pool's `zdb`).
//! Blocks shared by snapshots and clones are read once.

use crate::blocktree::height_for;
use crate::error::Result;
use crate::phys::{decode_indirect, BlockPtr, INDIRECT_SIZE, PTRS_PER_INDIRECT};
use crate::pool::{lock, read, Pool, SCRUB_ADVICE};
use std::collections::HashMap;

/// One problem found by a scrub.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ScrubError {
    /// Full dataset name, or the pool name for pool metadata.
    pub dataset: String,
    /// Byte offset in the dataset, for data blocks.
    pub offset: Option<u64>,
    /// What is wrong.
    pub message: String,
}

/// What a scrub read and found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ScrubReport {
    /// Blocks read and verified.
    pub blocks: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Damaged blocks and inconsistencies.
    pub errors: Vec<ScrubError>,
}

impl ScrubReport {
    /// Whether nothing was wrong.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

struct Walk<'a> {
    pool: &'a Pool,
    report: ScrubReport,
    /// Every tree block seen: its pointer, the data sectors below it, and whether it could
    /// not be read (so what lies below is unknown).
    seen: HashMap<u64, (BlockPtr, u64, bool)>,
    /// Sectors claimed by anything (trees, deadlist chains, the meta block): a bit each, so
    /// that a scrub of a large pool takes a bit per sector, not a hash entry.
    claimed: Vec<u64>,
    /// Indirect blocks that could not be read: what lies below them is unknown, so the
    /// counts that depend on it are not compared (they would only repeat the one error).
    unreadable: u64,
}

impl Walk<'_> {
    fn err(&mut self, dataset: &str, offset: Option<u64>, mut message: String) {
        // Errors met outside a scrub advise one; in its own report that is the command run.
        if let Some(at) = message.find(SCRUB_ADVICE) {
            message.truncate(at);
        }
        self.report.errors.push(ScrubError {
            dataset: dataset.into(),
            offset,
            message,
        });
    }

    /// Claims a block's sectors: each must be allocated and claimed once.
    fn claim(&mut self, dataset: &str, p: &BlockPtr) {
        if !lock(&self.pool.shared.spacemap).is_allocated(p.sector, u64::from(p.sectors)) {
            self.err(
                dataset,
                None,
                format!(
                    "block at sector {} is referenced but not allocated",
                    p.sector
                ),
            );
        }
        for s in p.sector..p.sector + u64::from(p.sectors) {
            let (word, bit) = ((s / 64) as usize, 1u64 << (s % 64));
            // Pointers past the device were reported as not allocated above.
            let Some(w) = self.claimed.get_mut(word) else {
                break;
            };
            if *w & bit != 0 {
                self.err(dataset, None, format!("sector {s} is referenced twice"));
                break;
            }
            *w |= bit;
        }
    }

    /// Walks the subtree under `p` (at `level`; 0 = data) covering data blocks from `first`.
    /// Returns the data sectors it references.
    fn walk(
        &mut self,
        dataset: &str,
        p: &BlockPtr,
        level: usize,
        first: u64,
        nblocks: u64,
        bs: u64,
    ) -> u64 {
        if p.is_hole() {
            return 0;
        }
        // A pointer of the wrong length, or into the labels, the uberblocks or the space map,
        // as loading the tree would refuse it.
        if let Err(e) = self
            .pool
            .shared
            .ptr_shape(bs as u32, dataset)
            .check(p, level == 0)
        {
            self.err(dataset, Some(first * bs), e.to_string());
            self.unreadable += 1;
            return 0;
        }
        if let Some(&(q, data, unread)) = self.seen.get(&p.sector) {
            if q == *p {
                // A subtree shared with a dataset walked before: unknown below for this one
                // too, if it was unreadable there.
                self.unreadable += u64::from(unread);
                return data;
            }
            self.err(
                dataset,
                None,
                format!(
                    "sector {} is the target of two different block pointers",
                    p.sector
                ),
            );
            return 0;
        }
        self.claim(dataset, p);
        let len = if level == 0 {
            bs as usize
        } else {
            INDIRECT_SIZE
        };
        let mut buf = vec![0u8; len];
        self.report.blocks += 1;
        self.report.bytes += len as u64;
        let offset = (level == 0).then_some(first * bs);
        let read = self.pool.shared.read_block(p, &mut buf, &|| match offset {
            Some(o) => format!("dataset {dataset} at byte offset {o}"),
            None => format!(
                "an indirect block of {dataset} covering byte offset {}",
                first * bs
            ),
        });
        if let Err(e) = &read {
            self.err(dataset, Some(first * bs), e.to_string());
            self.unreadable += u64::from(level > 0);
        }
        let mut data = if level == 0 { u64::from(p.sectors) } else { 0 };
        // The pointers of an indirect block that failed its checksum are not decoded: they
        // would send the walk to made-up sectors, each reported as another error.
        if level > 0 && read.is_ok() {
            let span = (PTRS_PER_INDIRECT as u64).pow(level as u32 - 1);
            let mut kids = vec![BlockPtr::HOLE; PTRS_PER_INDIRECT];
            match decode_indirect(&buf, &mut kids) {
                Err(e) => self.err(dataset, Some(first * bs), e.to_string()),
                Ok(()) => {
                    for (i, k) in kids.iter().enumerate() {
                        let start = first + i as u64 * span;
                        if start >= nblocks {
                            if !k.is_hole() {
                                self.err(
                                    dataset,
                                    None,
                                    format!("indirect block points past the end (block {start})"),
                                );
                            }
                            continue;
                        }
                        data += self.walk(dataset, k, level - 1, start, nblocks, bs);
                    }
                }
            }
        }
        self.seen
            .insert(p.sector, (*p, data, level > 0 && read.is_err()));
        data
    }
}

impl Pool {
    /// Commits, then reads and verifies every block of the committed state, and checks that the
    /// allocator, the deadlists and each dataset's `referenced` agree with the trees.
    pub fn scrub(&self) -> Result<ScrubReport> {
        self.sync()?;
        let sh = &self.shared;
        let cs = sh.lock_commit_settled()?;
        let mut w = Walk {
            pool: self,
            report: ScrubReport::default(),
            seen: HashMap::new(),
            claimed: vec![0; sh.data_area().1.div_ceil(64) as usize],
            unreadable: 0,
        };
        let pool_name = self.name().to_string();
        w.claim(&pool_name, &cs.meta);
        for (i, p) in cs.deferred_blocks.iter().enumerate() {
            w.claim(&pool_name, p);
            let mut buf = vec![0u8; p.byte_len() as usize];
            let read = sh
                .read_block(p, &mut buf, &|| format!("deferred-free block {i}"))
                .and_then(|()| crate::phys::decode_deferred_block(&buf, cs.txg).map(|_| ()));
            if let Err(e) = read {
                w.err(&pool_name, None, e.to_string());
            }
        }
        let leaves: Vec<(u64, BlockPtr)> = cs.leaves.iter().map(|(&i, &p)| (i, p)).collect();
        for (index, p) in leaves {
            w.claim(&pool_name, &p);
            let mut buf = vec![0u8; p.byte_len() as usize];
            if let Err(e) = sh.read_block(&p, &mut buf, &|| format!("directory leaf {index}")) {
                w.err(&pool_name, None, e.to_string());
            }
        }
        let vols: Vec<_> = read(&sh.datasets).values().map(|d| d.vol.clone()).collect();
        let mut deadlists = Vec::new();
        for v in &vols {
            let name = format!("{}/{}", pool_name, read(&v.name));
            let (root, size, referenced, dead) = {
                let st = lock(&v.state);
                (
                    st.root,
                    st.size,
                    st.referenced,
                    sh.load_deadlist(&st.deadlist),
                )
            };
            let bs = u64::from(v.block_size);
            let nblocks = size / bs;
            let unreadable = w.unreadable;
            let refd = w.walk(&name, &root, height_for(nblocks as usize), 0, nblocks, bs);
            if refd != referenced && w.unreadable == unreadable {
                w.err(
                    &name,
                    None,
                    format!("referenced is {referenced} sectors but the tree holds {refd}"),
                );
            }
            match dead {
                Ok((entries, chain)) => {
                    for c in &chain {
                        w.claim(&name, c);
                    }
                    deadlists.push((name, entries));
                }
                Err(e) => w.err(&name, None, format!("deadlist unreadable: {e}")),
            }
        }
        // Every deadlist entry must be a block some snapshot still references (unknown where a
        // tree could not be read).
        let deadlists = if w.unreadable == 0 {
            deadlists
        } else {
            Vec::new()
        };
        for (name, entries) in deadlists {
            for e in entries {
                if w.seen.get(&e.ptr.sector).map(|(q, ..)| *q) != Some(e.ptr) {
                    w.err(
                        &name,
                        None,
                        format!(
                            "deadlist entry for sector {} is not referenced by any snapshot",
                            e.ptr.sector
                        ),
                    );
                }
            }
        }
        let referenced: u64 = w.claimed.iter().map(|x| u64::from(x.count_ones())).sum();
        let sm = lock(&sh.spacemap);
        let expect = referenced + sm.deferred_sectors() + sm.placed();
        if sm.allocated() != expect && w.unreadable == 0 {
            let msg = format!(
                "space map says {} sectors are allocated, but {} are referenced, {} are deferred frees and {} are being written or held for indirect blocks",
                sm.allocated(),
                referenced,
                sm.deferred_sectors(),
                sm.placed()
            );
            drop(sm);
            w.err(&pool_name, None, msg);
        }
        Ok(w.report)
    }
}
