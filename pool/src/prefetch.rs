//! Sequential prefetch. A volume follows a few read streams; a read that goes on from near
//! where one of them ended advances it, and the stream then asks the device to start reading
//! the next blocks (`Device::prefetch`), so a reader at queue depth 1 finds them cached instead
//! of waiting for the device on every request. ZFS's zfetch does this for its ARC; here the
//! cache is the host's page cache, which the pool file's reads go through. Where the device
//! reads ahead itself (`Device::reads_ahead`: the page cache does), the blocks that lie on
//! the device as they lie in the volume, after the read's last one, are left to its
//! readahead, and only the runs a linear reader would not reach are hinted.

use std::ops::Range;
use std::sync::Mutex;

/// Streams followed per volume: readers scanning different parts at once (a guest's
/// readahead of several files, a copy of two volumes in one pool) each keep theirs.
const STREAMS: usize = 8;
/// Least and most bytes a stream reads ahead of its reader: four requests ahead, within these.
const MIN_AHEAD: u64 = 1 << 20;
const MAX_AHEAD: u64 = 8 << 20;
/// How many requests away from where a stream expects its next read (before or after) a read
/// may start and still continue it: a device that serves several requests at once (virtio-blk
/// workers) runs neighbours out of order.
const REORDER: u64 = 4;

/// One followed stream: where its next read is expected (the furthest end read so far) and how
/// far it has prefetched.
#[derive(Clone, Copy, Default)]
struct Stream {
    next: u64,
    ahead: u64,
    /// Tick of the last read that advanced or started it; 0 for an unused slot.
    used: u64,
}

/// What to do for one read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The read belongs to a stream: read through the cache, where the prefetch lands.
    pub sequential: bool,
    /// Byte range of the volume to prefetch now, if any.
    pub prefetch: Option<Range<u64>>,
    /// The stream's slot, for [`Streams::cut_short`].
    slot: usize,
}

impl Plan {
    const RANDOM: Plan = Plan {
        sequential: false,
        prefetch: None,
        slot: 0,
    };
}

/// The read streams of one volume.
#[derive(Default)]
pub(crate) struct Streams {
    inner: Mutex<(u64, [Stream; STREAMS])>,
}

impl Streams {
    /// Notes a read of `len` bytes at `offset` in a volume of `size` bytes. A read that starts
    /// within [`REORDER`] requests of a stream's front and ends past it advances the stream,
    /// which then prefetches up to four requests past its new front, in batches of at least
    /// half that distance. One that starts that near but ends at or before the front (a
    /// request overtaken by its successor, a re-read) belongs to the stream and changes
    /// nothing. Any other read starts a stream in the least recently used slot.
    pub(crate) fn observe(&self, offset: u64, len: u64, size: u64) -> Plan {
        if len == 0 {
            return Plan::RANDOM;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (tick, streams) = &mut *g;
        *tick += 1;
        let end = offset.saturating_add(len).min(size);
        let slack = len.saturating_mul(REORDER);
        let near = |s: &Stream| {
            s.used != 0
                && offset.saturating_add(slack) >= s.next
                && offset <= s.next.saturating_add(slack)
        };
        // One pass (this runs on every read): the first stream the read advances, whether it
        // is near any, and the least recently used slot.
        let (mut hit, mut near_any, mut lru) = (None, false, 0);
        for (j, s) in streams.iter().enumerate() {
            if near(s) {
                if end > s.next {
                    hit = Some(j);
                    break;
                }
                near_any = true;
            }
            if s.used < streams[lru].used {
                lru = j;
            }
        }
        let Some(i) = hit else {
            if near_any {
                return Plan {
                    sequential: true,
                    prefetch: None,
                    slot: 0,
                };
            }
            streams[lru] = Stream {
                next: end,
                ahead: end,
                used: *tick,
            };
            return Plan::RANDOM;
        };
        // Two streams that meet (a reader jumped back and caught up) become one.
        for (j, o) in streams.iter_mut().enumerate() {
            if j != i && o.used != 0 && o.next.abs_diff(end) <= slack {
                *o = Stream::default();
            }
        }
        let s = &mut streams[i];
        s.next = end;
        s.used = *tick;
        let distance = len.saturating_mul(4).clamp(MIN_AHEAD, MAX_AHEAD);
        let target = end.saturating_add(distance).min(size);
        let from = s.ahead.max(end);
        // The first batch of a stream goes at once; later ones when half the distance is free.
        let prefetch =
            (target > from && (s.ahead <= end || target - from >= distance / 2)).then(|| {
                s.ahead = target;
                from..target
            });
        Plan {
            sequential: true,
            prefetch,
            slot: i,
        }
    }

    /// Says that the prefetch `plan` asked for stopped at `reached` (the device runs it would
    /// take were too many): its stream goes on from there, unless another read has moved the
    /// stream since.
    pub(crate) fn cut_short(&self, plan: &Plan, reached: u64) {
        let Some(planned) = &plan.prefetch else {
            return;
        };
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut g.1[plan.slot];
        if s.used != 0 && s.ahead == planned.end {
            s.ahead = reached.clamp(planned.start, planned.end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_sequential_reader_is_prefetched_ahead_in_batches() {
        let s = Streams::default();
        let size = 64 * MIB;
        assert_eq!(
            s.observe(0, MIB, size),
            Plan::RANDOM,
            "a first read is not yet a stream"
        );
        let p = s.observe(MIB, MIB, size);
        assert!(p.sequential);
        assert_eq!(p.prefetch, Some(2 * MIB..6 * MIB), "four requests ahead");
        let p = s.observe(2 * MIB, MIB, size);
        assert!(p.sequential);
        assert_eq!(p.prefetch, None, "less than half the distance to fill");
        let p = s.observe(3 * MIB, MIB, size);
        assert_eq!(
            p.prefetch,
            Some(6 * MIB..8 * MIB),
            "a batch of half the distance"
        );
    }

    #[test]
    fn prefetch_stops_at_the_end_of_the_volume() {
        let s = Streams::default();
        let size = 3 * MIB;
        s.observe(0, MIB, size);
        assert_eq!(s.observe(MIB, MIB, size).prefetch, Some(2 * MIB..3 * MIB));
        let p = s.observe(2 * MIB, MIB, size);
        assert!(p.sequential);
        assert_eq!(p.prefetch, None);
    }

    #[test]
    fn random_reads_prefetch_nothing_and_interleaved_streams_are_each_followed() {
        let s = Streams::default();
        let size = 1 << 30;
        for i in 0..100u64 {
            let off = (i * 7919 % 1000) * MIB;
            let p = s.observe(off, 4096, size);
            assert!(!p.sequential && p.prefetch.is_none(), "{off}");
        }
        // Two scans, alternating.
        s.observe(0, MIB, size);
        s.observe(512 * MIB, MIB, size);
        assert_eq!(s.observe(MIB, MIB, size).prefetch, Some(2 * MIB..6 * MIB));
        assert_eq!(
            s.observe(513 * MIB, MIB, size).prefetch,
            Some(514 * MIB..518 * MIB)
        );
    }

    #[test]
    fn a_jump_backwards_starts_over() {
        let s = Streams::default();
        let size = 64 * MIB;
        for c in 0..6 {
            s.observe(c * MIB, MIB, size);
        }
        assert!(!s.observe(0, MIB, size).sequential);
        assert_eq!(s.observe(MIB, MIB, size).prefetch, Some(2 * MIB..6 * MIB));
    }

    #[test]
    fn neighbours_served_out_of_order_still_make_a_stream() {
        let s = Streams::default();
        let size = 64 * MIB;
        s.observe(0, MIB, size);
        // Request 2 overtakes request 1, 4 overtakes 3: all continue the stream, and the
        // prefetch runs four requests past the furthest end.
        let p = s.observe(2 * MIB, MIB, size);
        assert_eq!((p.sequential, p.prefetch), (true, Some(3 * MIB..7 * MIB)));
        let p = s.observe(MIB, MIB, size);
        assert_eq!((p.sequential, p.prefetch), (true, None));
        let p = s.observe(4 * MIB, MIB, size);
        assert_eq!((p.sequential, p.prefetch), (true, Some(7 * MIB..9 * MIB)));
        let p = s.observe(3 * MIB, MIB, size);
        assert_eq!((p.sequential, p.prefetch), (true, None));
        assert_eq!(s.observe(5 * MIB, MIB, size).prefetch, None);
        assert_eq!(
            s.observe(6 * MIB, MIB, size).prefetch,
            Some(9 * MIB..11 * MIB)
        );
    }

    #[test]
    fn rereads_and_backward_scans_prefetch_nothing() {
        let s = Streams::default();
        let size = 1 << 30;
        s.observe(MIB, 4096, size);
        for _ in 0..10 {
            let p = s.observe(MIB, 4096, size);
            assert_eq!(p.prefetch, None, "a re-read");
        }
        let s = Streams::default();
        for k in (0..200u64).rev() {
            assert_eq!(s.observe(k * 4096, 4096, size).prefetch, None, "block {k}");
        }
    }

    #[test]
    fn empty_reads_leave_the_streams_alone() {
        let s = Streams::default();
        let size = 64 * MIB;
        s.observe(0, MIB, size);
        for k in 0..2 * STREAMS as u64 {
            assert_eq!(s.observe(k * 8 * MIB, 0, size), Plan::RANDOM);
        }
        assert_eq!(s.observe(MIB, MIB, size).prefetch, Some(2 * MIB..6 * MIB));
    }

    #[test]
    fn offsets_near_the_top_of_the_range_do_not_overflow() {
        let s = Streams::default();
        let size = u64::MAX;
        s.observe(u64::MAX - 3 * MIB, MIB, size);
        let p = s.observe(u64::MAX - 2 * MIB, MIB, size);
        assert!(p.sequential);
        assert_eq!(p.prefetch, Some(u64::MAX - MIB..u64::MAX));
    }

    #[test]
    fn a_prefetch_cut_short_goes_on_from_where_it_stopped() {
        let s = Streams::default();
        let size = 64 * MIB;
        s.observe(0, MIB, size);
        let plan = s.observe(MIB, MIB, size);
        assert_eq!(plan.prefetch, Some(2 * MIB..6 * MIB));
        s.cut_short(&plan, 3 * MIB);
        assert_eq!(
            s.observe(2 * MIB, MIB, size).prefetch,
            Some(3 * MIB..7 * MIB)
        );
    }
}
