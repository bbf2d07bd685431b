//! Giving free space back to the file system under a pool file (`fallocate` punch), as ZFS's
//! `autotrim` property and `zpool trim` do for devices.
//!
//! By default a pool punches nothing: copy-on-write frees are reused, and space the file
//! already holds is cheap to write again, while a hole costs the file system (and a
//! thin-provisioned disk under it) an allocation on the next write. Measured with
//! `cargo run --release -p pool --example reuse [DIR ROUNDS --autotrim]` (1 GiB sequential
//! overwrites of one volume, alternating with a raw `O_DIRECT` file): from the third round on,
//! 3,177-3,409 MiB/s (1.12-1.26x the raw file) keeping released space, 1,368-1,636 MiB/s
//! (0.50-0.61x) punching it. [`PoolConfig::autotrim`] punches released runs at every commit;
//! [`Pool::trim`] punches all free space once.
//!
//! [`PoolConfig::autotrim`]: crate::PoolConfig::autotrim

use crate::error::Result;
use crate::phys::SECTOR;
use crate::pool::{lock, Pool, Shared};
use crate::spacemap::{Extent, RELEASE_COMMITS};
use std::sync::atomic::Ordering;

/// Shortest free run worth a punch: scattered small frees are reused soon, and each punch
/// costs a synchronous discard on file systems mounted with `discard`.
const MIN_RUN: u64 = (1 << 20) / SECTOR;

/// Longest run taken out of the allocator at once by [`Pool::trim`], so that writers are
/// never short of more than this while it runs.
const MAX_RUN: u64 = (256 << 20) / SECTOR;

/// What [`Pool::trim`] gave back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TrimReport {
    /// Free runs punched.
    pub runs: u64,
    /// Bytes punched.
    pub bytes: u64,
}

impl Shared {
    /// Punches the coalesced runs of at least [`MIN_RUN`] among `released` (extents still
    /// allocated, so that no writer is given them meanwhile) when `autotrim` is on.
    pub(crate) fn autotrim(&self, released: &[Extent]) {
        if !self.config.autotrim {
            return;
        }
        let mut released = released.to_vec();
        released.sort_unstable();
        let mut i = 0;
        while i < released.len() {
            let start = released[i].start;
            let mut end = start + released[i].len;
            let mut j = i + 1;
            while j < released.len() && released[j].start == end {
                end += released[j].len;
                j += 1;
            }
            if end - start >= MIN_RUN {
                self.punch(Extent {
                    start,
                    len: end - start,
                });
            }
            i = j;
        }
    }

    /// Punches one extent; a failure only leaves the space allocated in the file.
    fn punch(&self, e: Extent) -> bool {
        match self.dev.punch_hole(e.start * SECTOR, e.len * SECTOR) {
            Ok(()) => true,
            Err(err) => {
                tracing::debug!(error = %err, start = e.start, len = e.len, "punching free space failed");
                false
            }
        }
    }
}

impl Pool {
    /// Punches every free run of at least 1 MiB out of the pool file, giving the space back
    /// to the file system (a block device is left as it is). First commits until the frees
    /// deferred for crash safety are released (at most `RELEASE_COMMITS + 1` commits), so that
    /// space freed by a destroy just before is trimmed too. Then takes one run at a time out
    /// of the allocator (never space writers have reserved), punches it and gives it back.
    /// Commits go on meanwhile and write the run as free (where taking a run would leave
    /// them less than the slop, they wait for that run instead); a writer short of space
    /// waits for the run to come back, and goes before the next.
    pub fn trim(&self) -> Result<TrimReport> {
        let sh = &self.shared;
        sh.check_writable()?;
        {
            let mut cs = lock(&sh.commit);
            // Frees made up to the open txg; later commits only add their own (the meta block
            // and deferred-free chain each replaces), which trim does not wait for.
            let upto = cs.txg + 1;
            for _ in 0..=RELEASE_COMMITS {
                if lock(&sh.spacemap)
                    .oldest_deferred()
                    .is_none_or(|t| t > upto)
                {
                    break;
                }
                sh.commit_locked(&mut cs)?;
            }
        }
        // Runs held for coming commits' indirect blocks and not promised to any write are
        // free on disk: give them back so that they are trimmed too (commits hold others).
        lock(&sh.spacemap).give_back_unpromised();
        let mut report = TrimReport::default();
        let mut from = 0;
        loop {
            // Writers that waited for the last run go first: a plain mutex would let trim
            // take the gate straight back, run after run.
            while sh.trim_waiters.load(Ordering::Acquire) > 0 {
                // Short naps, not a spin: the writer may hold the gate through commits.
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
            let _gate = lock(&sh.trim_gate);
            let reserved = || sh.dirty_bytes.load(Ordering::Acquire).div_ceil(SECTOR);
            // Read the reserved count under the space-map lock, as `reserve` counts it.
            let taken = {
                let mut sm = lock(&sh.spacemap);
                let keep = reserved() + sm.slop();
                sm.take_free_run(from, MIN_RUN, MAX_RUN, keep)
            };
            let (run, _commits_held) = match taken {
                Some(run) => (run, None),
                None => {
                    // No run leaves the slop free (a nearly full pool): take one with commits
                    // held off, as only they spend the slop.
                    let cs = lock(&sh.commit);
                    let mut sm = lock(&sh.spacemap);
                    let keep = reserved();
                    match sm.take_free_run(from, MIN_RUN, MAX_RUN, keep) {
                        Some(run) => (run, Some(cs)),
                        None => break,
                    }
                }
            };
            if sh.punch(run) {
                report.runs += 1;
                report.bytes += run.len * SECTOR;
            }
            lock(&sh.spacemap).return_free_run(run);
            from = run.start + run.len;
        }
        Ok(report)
    }
}
