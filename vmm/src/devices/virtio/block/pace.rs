//! Who runs a request when the device has workers: the queue thread itself, or a worker.
//!
//! Handing a request to another thread costs a few microseconds of CPU and a wake-up. That
//! pays when requests wait on a disk (tens of microseconds and more: the workers keep several
//! in flight) or copy a lot (a 1 MiB read from the page cache: copies in parallel), and loses
//! when the page cache answers a small request in a microsecond or two: then the hand-off
//! costs more than the request, and the queue thread is faster running it itself. [`Pace`]
//! keeps a moving average of how long small reads and writes ([`Pace::may_inline`], the only
//! requests that ever run inline) take to execute, measured wherever they run, and says to run
//! them inline while it stays below [`INLINE_BELOW`].

use super::request::{Disk, Lookup, Negotiated, Request, RequestType};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vm_memory::GuestMemoryMmap;

/// Requests that take less than this on average run on the queue thread.
pub const INLINE_BELOW: Duration = Duration::from_micros(20);

/// The largest read or write the queue thread runs itself. Flushes (a pool's commit),
/// discards and write-zeroes (up to gigabytes) and larger transfers always go to the workers:
/// one of them on the queue thread would hold up every request behind it, however fast the
/// requests before it were.
pub const INLINE_MAX_BYTES: u64 = 64 << 10;

/// The moving average of request execution times (see the module documentation).
#[derive(Debug)]
pub struct Pace {
    /// Nanoseconds, an exponential moving average over about the last 8 requests.
    avg_ns: AtomicU64,
}

impl Default for Pace {
    /// A pace that sends the first requests to the workers; their times decide the rest.
    fn default() -> Pace {
        Pace {
            avg_ns: AtomicU64::new(INLINE_BELOW.as_nanos() as u64),
        }
    }
}

impl Pace {
    /// Whether requests should run on the queue thread (those [`Pace::may_inline`] allows).
    pub fn inline(&self) -> bool {
        self.avg_ns.load(Ordering::Relaxed) < INLINE_BELOW.as_nanos() as u64
    }

    /// Whether `req` may run on the queue thread at all: a read or a write of at most
    /// [`INLINE_MAX_BYTES`].
    pub fn may_inline(req: &Request) -> bool {
        matches!(req.kind, RequestType::In | RequestType::Out) && req.data_len <= INLINE_MAX_BYTES
    }

    /// Executes `req` (as [`Request::execute`]) and returns its used length, timing it into
    /// the average if it is one the average decides about ([`Pace::may_inline`]).
    pub fn execute(
        &self,
        req: &Request,
        mem: &GuestMemoryMmap,
        disk: &Disk,
        neg: Negotiated,
    ) -> u32 {
        let counts = Pace::may_inline(req);
        let t = Instant::now();
        let used = req.execute(mem, disk, neg).used_len;
        if counts {
            self.record(t.elapsed());
        }
        used
    }

    /// Executes `req`, which [`Pace::may_inline`] allows, with the caller's lookups, and times
    /// it from `start` into the average; returns its used length and the time it ended. A
    /// thread that runs such requests one after another passes each one's end as the next
    /// one's start: one clock read per request instead of two. The time between them counts
    /// as the next one's: putting the last on the used ring under the queue lock, which a
    /// worker completing at that moment holds for as long (a fraction of a microsecond, which
    /// a 20 us threshold does not feel); the caller starts afresh after anything longer, such
    /// as an interrupt.
    pub(crate) fn execute_from(
        &self,
        req: &Request,
        look: &mut Lookup<'_>,
        disk: &Disk,
        neg: Negotiated,
        start: Instant,
    ) -> (u32, Instant) {
        debug_assert!(Pace::may_inline(req), "{req:?}");
        let used = req.execute_in(look, disk, neg).used_len;
        let end = Instant::now();
        self.record(end.saturating_duration_since(start));
        (used, end)
    }

    /// One request took `took` to execute. Updates from several threads may race and lose
    /// one another: an average of the rest is as good a guide.
    pub fn record(&self, took: Duration) {
        let t = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let old = self.avg_ns.load(Ordering::Relaxed);
        let new = old - old / 8 + t / 8;
        self.avg_ns.store(new, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_requests_move_to_the_workers_and_fast_ones_come_back() {
        let p = Pace::default();
        assert!(
            !p.inline(),
            "a new device's workers take the first requests"
        );
        // Fast ones bring them to the queue thread.
        p.record(Duration::from_micros(2));
        assert!(p.inline());
        // A disk's latency: after a couple of requests, the workers take them.
        p.record(Duration::from_micros(100));
        p.record(Duration::from_micros(100));
        assert!(!p.inline());
        // The page cache's: back on the queue thread within a few requests.
        let mut n = 0;
        while !p.inline() {
            p.record(Duration::from_micros(2));
            n += 1;
        }
        assert!((1..=8).contains(&n), "{n}");
        // One slow request among fast ones does not move them.
        for _ in 0..20 {
            p.record(Duration::from_micros(2));
        }
        p.record(Duration::from_micros(60));
        assert!(p.inline());
    }

    #[test]
    fn only_small_reads_and_writes_may_run_inline() {
        let req = |kind, data_len| Request {
            kind,
            sector: 0,
            data: crate::devices::virtio::block::request::Segments::new(),
            data_len,
            status: vm_memory::GuestAddress(0),
        };
        assert!(Pace::may_inline(&req(RequestType::In, 4096)));
        assert!(Pace::may_inline(&req(RequestType::Out, INLINE_MAX_BYTES)));
        assert!(!Pace::may_inline(&req(
            RequestType::In,
            INLINE_MAX_BYTES + 512
        )));
        for kind in [
            RequestType::Flush,
            RequestType::Discard,
            RequestType::WriteZeroes,
        ] {
            assert!(!Pace::may_inline(&req(kind, 16)), "{kind:?}");
        }
    }
}
