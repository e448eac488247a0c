//! Loss, duplicates and reordering of one publisher's stream as one receiver sees it. Keeps the
//! highest sequence seen and a 128-bit window of which sequences just below it arrived, so a
//! late message is told apart from a repeated one in constant memory and time per message.
//!
//! - A sequence above the highest: new. Sequences it skips are missing for now.
//! - Below the highest, inside the window, not yet seen: new, and counted as reordered.
//! - Below the highest, inside the window, already seen: a duplicate.
//! - Below the window: counted as reordered and new; the window cannot tell (`beyond_window`).
//!
//! Loss is counted at the end, from the publisher's side: `sent × receivers - unique`, so a
//! message missing at the tail (nothing came after it) counts as much as a gap in the middle.

/// How far below the highest sequence a late arrival is still checked for being a duplicate.
pub const WINDOW: u64 = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    New,
    Late,
    Duplicate,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqTracker {
    /// Highest sequence seen plus one; 0 before the first message.
    next: u64,
    /// Bit `i` set: sequence `next - 1 - i` has arrived.
    seen: u128,
    /// Every copy received, duplicates included.
    pub received: u64,
    /// Distinct sequences received.
    pub unique: u64,
    pub duplicates: u64,
    /// Arrived after a higher sequence of the same publisher.
    pub reordered: u64,
    /// Late arrivals too far back to check against the window.
    pub beyond_window: u64,
}

impl SeqTracker {
    pub fn record(&mut self, sequence: u64) -> Arrival {
        self.received += 1;
        if sequence >= self.next {
            let shift = sequence - self.next + 1;
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.next = sequence + 1;
            self.unique += 1;
            return Arrival::New;
        }
        let back = self.next - 1 - sequence;
        if back >= WINDOW {
            self.beyond_window += 1;
            self.reordered += 1;
            self.unique += 1;
            return Arrival::Late;
        }
        let bit = 1u128 << back;
        if self.seen & bit != 0 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.seen |= bit;
        self.reordered += 1;
        self.unique += 1;
        Arrival::Late
    }

    /// Highest sequence seen plus one.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Sequences below the highest that have not arrived (yet): gaps in the middle.
    pub fn gaps(&self) -> u64 {
        self.next.saturating_sub(self.unique)
    }

    pub fn merge(&mut self, other: &SeqTracker) {
        self.received += other.received;
        self.unique += other.unique;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.beyond_window += other.beyond_window;
        self.next = self.next.max(other.next);
    }
}

/// Messages lost: what should have arrived (`sent` by the publisher times the receivers that
/// subscribed to it) minus the distinct messages that did. Never negative: a broker delivering
/// more than expected shows in duplicates, not in negative loss.
pub fn lost(sent: u64, receivers: u64, unique: u64) -> u64 {
    (sent * receivers).saturating_sub(unique)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(sequences: &[u64]) -> SeqTracker {
        let mut t = SeqTracker::default();
        for &s in sequences {
            t.record(s);
        }
        t
    }

    #[test]
    fn in_order_stream_is_clean() {
        let t = track(&(0..1000).collect::<Vec<_>>());
        assert_eq!(
            (t.received, t.unique, t.duplicates, t.reordered),
            (1000, 1000, 0, 0)
        );
        assert_eq!(t.gaps(), 0);
        assert_eq!(lost(1000, 1, t.unique), 0);
    }

    #[test]
    fn gaps_and_tail_loss_count_as_lost() {
        // 0..10 sent; 3 and 7 dropped in the middle, 9 dropped at the tail.
        let t = track(&[0, 1, 2, 4, 5, 6, 8]);
        assert_eq!(t.unique, 7);
        assert_eq!(t.gaps(), 2, "3 and 7 are gaps below the highest");
        assert_eq!(lost(10, 1, t.unique), 3, "the tail loss counts too");
        assert_eq!((t.duplicates, t.reordered), (0, 0));
    }

    #[test]
    fn swapped_pair_is_one_reorder_not_a_loss() {
        let t = track(&[0, 2, 1, 3]);
        assert_eq!((t.unique, t.reordered, t.duplicates), (4, 1, 0));
        assert_eq!(t.gaps(), 0);
    }

    #[test]
    fn repeats_are_duplicates_not_new() {
        let mut t = SeqTracker::default();
        assert_eq!(t.record(0), Arrival::New);
        assert_eq!(t.record(1), Arrival::New);
        assert_eq!(t.record(1), Arrival::Duplicate);
        assert_eq!(t.record(0), Arrival::Duplicate);
        assert_eq!(t.record(3), Arrival::New);
        assert_eq!(t.record(2), Arrival::Late);
        assert_eq!(t.record(2), Arrival::Duplicate);
        assert_eq!(
            (t.received, t.unique, t.duplicates, t.reordered),
            (7, 4, 3, 1)
        );
    }

    #[test]
    fn window_edges() {
        let mut t = SeqTracker::default();
        t.record(0);
        t.record(WINDOW); // sequence 0 is now exactly WINDOW back: outside
        assert_eq!(
            t.record(0),
            Arrival::Late,
            "beyond the window cannot be a known duplicate"
        );
        assert_eq!(t.beyond_window, 1);
        assert_eq!(
            t.record(1),
            Arrival::Late,
            "WINDOW-1 back is inside and unseen"
        );
        assert_eq!(t.beyond_window, 1);
        assert_eq!(t.record(1), Arrival::Duplicate);
        // A jump far ahead clears the window entirely.
        t.record(10_000);
        assert_eq!(t.record(9_999), Arrival::Late);
        assert_eq!(t.record(10_000), Arrival::Duplicate);
    }

    #[test]
    fn fanout_receivers_multiply_expected() {
        assert_eq!(lost(100, 3, 300), 0);
        assert_eq!(lost(100, 3, 297), 3);
        assert_eq!(lost(100, 3, 400), 0, "extra copies are not negative loss");
    }
}
