//! The 16-byte stamp at the front of every payload: when the message was meant to be sent, by
//! which publisher, and its sequence number. Receivers need nothing else to measure latency,
//! loss, duplicates and reordering, so the broker under test stays a black box.
//!
//! Layout, little endian: `sent_at_ns: u64` (CLOCK_MONOTONIC; the intended send time in rate
//! mode), `publisher_index: u32`, `sequence: u32`.

/// Bytes of the stamp; `--payload` may not be smaller.
pub const STAMP_LEN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub sent_at_ns: u64,
    pub publisher_index: u32,
    pub sequence: u32,
}

impl Stamp {
    /// Writes the stamp over the first 16 bytes of `payload`.
    pub fn write(&self, payload: &mut [u8]) {
        assert!(payload.len() >= STAMP_LEN, "payload shorter than the stamp");
        payload[0..8].copy_from_slice(&self.sent_at_ns.to_le_bytes());
        payload[8..12].copy_from_slice(&self.publisher_index.to_le_bytes());
        payload[12..16].copy_from_slice(&self.sequence.to_le_bytes());
    }

    /// `None` when the payload is too short to carry a stamp (not one of ours).
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let bytes: &[u8; STAMP_LEN] = payload.get(..STAMP_LEN)?.try_into().ok()?;
        let mut sent_at = [0u8; 8];
        sent_at.copy_from_slice(&bytes[0..8]);
        let mut publisher = [0u8; 4];
        publisher.copy_from_slice(&bytes[8..12]);
        let mut sequence = [0u8; 4];
        sequence.copy_from_slice(&bytes[12..16]);
        Some(Stamp {
            sent_at_ns: u64::from_le_bytes(sent_at),
            publisher_index: u32::from_le_bytes(publisher),
            sequence: u32::from_le_bytes(sequence),
        })
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock every stamp and deadline uses, so sender and
/// receiver threads of one process compare times directly.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_is_little_endian() {
        let stamp = Stamp {
            sent_at_ns: 0x0102_0304_0506_0708,
            publisher_index: 0x0a0b_0c0d,
            sequence: 0xdead_beef,
        };
        let mut payload = [0xffu8; 20];
        stamp.write(&mut payload);
        assert_eq!(&payload[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&payload[8..12], &[0x0d, 0x0c, 0x0b, 0x0a]);
        assert_eq!(&payload[12..16], &[0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(&payload[16..], &[0xff; 4], "bytes past the stamp untouched");
        assert_eq!(Stamp::read(&payload), Some(stamp));
    }

    #[test]
    fn short_payload_has_no_stamp() {
        assert_eq!(Stamp::read(&[0u8; 15]), None);
        assert!(Stamp::read(&[0u8; 16]).is_some());
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a);
    }
}
