//! Open-loop send times. A thread's publishers share one stream of intended times, spaced
//! `1/rate` apart and dealt round-robin: message `j` of the stream is sequence `j / P` of
//! publisher `j % P`, due at `start + j / rate`. A message is stamped with that intended time,
//! not the time it finally left, so when the broker (or the socket) stalls, the wait shows in
//! the latency histogram instead of silently slowing the sender (no coordinated omission).
//! Everything here is a pure function of `now`, so tests move an integer instead of sleeping.

const NANOS_PER_SEC: u128 = 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Intended time of message 0 of this thread's stream.
    pub start_ns: u64,
    /// Messages per second over all of this thread's publishers; at least 1.
    pub rate_per_sec: u64,
    /// Publishers the stream is dealt to; at least 1.
    pub publisher_count: u32,
}

impl Schedule {
    pub fn new(start_ns: u64, rate_per_sec: u64, publisher_count: u32) -> Schedule {
        assert!(rate_per_sec > 0, "a schedule needs a positive rate");
        assert!(publisher_count > 0, "a schedule needs a publisher");
        Schedule {
            start_ns,
            rate_per_sec,
            publisher_count,
        }
    }

    /// Intended send time of message `index` of the stream. Computed from `start` each time
    /// (never by adding intervals), so rounding never drifts.
    pub fn intended_ns(&self, index: u64) -> u64 {
        let offset = index as u128 * NANOS_PER_SEC / self.rate_per_sec as u128;
        self.start_ns
            .saturating_add(offset.min(u64::MAX as u128) as u64)
    }

    /// How many messages of the stream are due at `now` (intended time <= now).
    pub fn due_count(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        let elapsed = (now_ns - self.start_ns) as u128;
        let count = elapsed * self.rate_per_sec as u128 / NANOS_PER_SEC + 1;
        count.min(u64::MAX as u128) as u64
    }

    /// Which publisher (local index) sends message `index`, and its sequence number.
    pub fn slot(&self, index: u64) -> (u32, u64) {
        let p = self.publisher_count as u64;
        ((index % p) as u32, index / p)
    }

    /// Stream index of sequence `sequence` of publisher `publisher`: the inverse of `slot`.
    pub fn index_of(&self, publisher: u32, sequence: u64) -> u64 {
        sequence * self.publisher_count as u64 + publisher as u64
    }

    /// Number of messages due at `now` for one publisher: sequences `0..n` are due.
    pub fn due_for(&self, publisher: u32, now_ns: u64) -> u64 {
        let due = self.due_count(now_ns);
        let p = self.publisher_count as u64;
        // Indices publisher, publisher + p, ... below `due`.
        if due <= publisher as u64 {
            0
        } else {
            (due - publisher as u64).div_ceil(p)
        }
    }
}

/// Splits `total` over `parts` as evenly as integers allow: the first `total % parts` parts get
/// one more. Used for the per-thread share of a rate or of connections.
pub fn share(total: u64, parts: u64, part_index: u64) -> u64 {
    assert!(parts > 0 && part_index < parts);
    total / parts + u64::from(part_index < total % parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_are_exact_multiples_of_the_interval() {
        let s = Schedule::new(1_000, 3, 1);
        assert_eq!(s.intended_ns(0), 1_000);
        assert_eq!(s.intended_ns(1), 1_000 + 333_333_333);
        assert_eq!(s.intended_ns(2), 1_000 + 666_666_666);
        assert_eq!(
            s.intended_ns(3),
            1_000 + 1_000_000_000,
            "no drift after a second"
        );
        assert_eq!(s.intended_ns(3_000_000), 1_000 + 1_000_000_000_000_000);
    }

    #[test]
    fn due_count_steps_at_each_intended_time() {
        let s = Schedule::new(10_000, 1_000, 1); // one message per millisecond
        assert_eq!(s.due_count(0), 0);
        assert_eq!(s.due_count(9_999), 0);
        assert_eq!(s.due_count(10_000), 1);
        assert_eq!(s.due_count(10_000 + 999_999), 1);
        assert_eq!(s.due_count(10_000 + 1_000_000), 2);
        // A stalled sender that wakes a second late owes 1000 more, all with past stamps.
        assert_eq!(s.due_count(10_000 + 1_000_000_000), 1_001);
        for n in 0..5_000u64 {
            let t = s.intended_ns(n);
            assert_eq!(s.due_count(t), n + 1, "message {n} is due at its own time");
            assert_eq!(s.due_count(t - 1), n, "and not a nanosecond before");
        }
    }

    #[test]
    fn stream_is_dealt_round_robin() {
        let s = Schedule::new(0, 100, 3);
        assert_eq!(s.slot(0), (0, 0));
        assert_eq!(s.slot(1), (1, 0));
        assert_eq!(s.slot(2), (2, 0));
        assert_eq!(s.slot(3), (0, 1));
        assert_eq!(s.slot(7), (1, 2));
        for index in 0..100 {
            let (p, seq) = s.slot(index);
            assert_eq!(s.index_of(p, seq), index);
        }
    }

    #[test]
    fn due_for_one_publisher_matches_the_stream() {
        let s = Schedule::new(0, 1_000, 4);
        for now in (0..20_000_000u64).step_by(250_000) {
            let due = s.due_count(now);
            for p in 0..4 {
                let expected = (0..due).filter(|&i| s.slot(i).0 == p).count() as u64;
                assert_eq!(s.due_for(p, now), expected, "publisher {p} at {now}");
            }
        }
    }

    #[test]
    fn share_spreads_the_remainder() {
        assert_eq!(
            (0..3).map(|i| share(10, 3, i)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        assert_eq!((0..4).map(|i| share(2, 4, i)).sum::<u64>(), 2);
    }
}
