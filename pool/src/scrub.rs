//! Scrub: read every committed block, verify its checksum, and cross-check the allocator and
//! space accounting against what the trees actually reference (the pool's `zdb`).

use crate::blocktree::height_for;
use crate::error::Result;
use crate::phys::{decode_indirect, BlockPtr, INDIRECT_SIZE, PTRS_PER_INDIRECT, SECTOR};
use crate::pool::{lock, read, Pool};
use std::collections::HashSet;

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
    seen: HashSet<u64>,
    referenced: u64,
}

impl Walk<'_> {
    fn claim(&mut self, dataset: &str, p: &BlockPtr) {
        self.referenced += u64::from(p.sectors);
        let sm = lock(&self.pool.shared.spacemap);
        if !sm.is_allocated(p.sector, u64::from(p.sectors)) {
            self.err(
                dataset,
                None,
                format!(
                    "block at sector {} is referenced but not allocated",
                    p.sector
                ),
            );
        }
        drop(sm);
        for s in p.sector..p.sector + u64::from(p.sectors) {
            if !self.seen.insert(s) {
                self.err(dataset, None, format!("sector {s} is referenced twice"));
                break;
            }
        }
    }

    fn err(&mut self, dataset: &str, offset: Option<u64>, message: String) {
        self.report.errors.push(ScrubError {
            dataset: dataset.into(),
            offset,
            message,
        });
    }

    /// Walks the subtree under `p` (at `level`; 0 = data) covering data blocks from `first`.
    /// Returns the sectors it references.
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
        if let Err(e) = self.pool.shared.read_block(p, &mut buf, &|| match offset {
            Some(o) => format!("dataset {dataset} at byte offset {o}"),
            None => format!(
                "an indirect block of {dataset} covering byte offset {}",
                first * bs
            ),
        }) {
            self.err(dataset, offset.or(Some(first * bs)), e.to_string());
            return u64::from(p.sectors);
        }
        let mut total = u64::from(p.sectors);
        if level > 0 {
            let span = (PTRS_PER_INDIRECT as u64).pow(level as u32 - 1);
            let mut kids = vec![BlockPtr::HOLE; PTRS_PER_INDIRECT];
            if let Err(e) = decode_indirect(&buf, &mut kids) {
                self.err(dataset, Some(first * bs), e.to_string());
                return total;
            }
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
                total += self.walk(dataset, k, level - 1, start, nblocks, bs);
            }
        }
        total
    }
}

impl Pool {
    /// Commits, then reads and verifies every block of the committed state, and checks that the
    /// allocator and each dataset's `used` agree with what the trees reference.
    pub fn scrub(&self) -> Result<ScrubReport> {
        self.sync()?;
        let sh = &self.shared;
        let cs = lock(&sh.commit);
        let mut w = Walk {
            pool: self,
            report: ScrubReport::default(),
            seen: HashSet::new(),
            referenced: 0,
        };
        let pool_name = self.name().to_string();
        w.claim(&pool_name, &cs.meta);
        let entries: Vec<_> = read(&sh.datasets)
            .values()
            .map(|d| {
                let st = lock(&d.vol.state);
                (
                    format!("{}/{}", pool_name, d.name),
                    st.root,
                    st.size,
                    d.vol.block_size,
                    st.used_sectors,
                )
            })
            .collect();
        for (name, root, size, bs, used) in entries {
            let bs = u64::from(bs);
            let nblocks = size / bs;
            let height = height_for(nblocks as usize);
            let refd = w.walk(&name, &root, height, 0, nblocks, bs);
            if refd != used {
                w.err(
                    &name,
                    None,
                    format!("used is {} sectors but the tree references {refd}", used),
                );
            }
        }
        let sm = lock(&sh.spacemap);
        let expect = w.referenced + sm.deferred_sectors();
        if sm.allocated() != expect {
            let msg = format!(
                "space map says {} sectors are allocated, but {} are referenced and {} are deferred frees",
                sm.allocated(),
                w.referenced,
                sm.deferred_sectors()
            );
            drop(sm);
            w.err(&pool_name, None, msg);
        }
        let _ = SECTOR;
        Ok(w.report)
    }
}
