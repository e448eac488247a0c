//! CRC32C (Castagnoli) of the log's records: the `crc32c` crate's, with a faster path for the
//! short inputs a record mostly is (a header of 5 bytes, a body of some tens of bytes, a topic
//! and a payload for a message's id). The crate aligns its input to 8 bytes a byte at a time
//! and pays a call per use; here unaligned 8-byte steps, inlined. A profile of `sync = "ack"`
//! pairs (results/2026-12-04-vm-persistence-crc/) had 12 % of the shard's samples in the crate.
//! Inputs of `LONG` bytes or more go to the crate, whose three interleaved streams are faster
//! there. Same values either way (`tests`).

/// From this many bytes on, the crate's parallel path wins.
const LONG: usize = 256;

/// The CRC32C of `crc`'s input followed by `data`, as `crc32c::crc32c_append`.
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if data.len() < LONG && std::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE 4.2, checked just above.
        return unsafe { short_sse42(crc, data) };
    }
    crc32c::crc32c_append(crc, data)
}

/// The CRC32C of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_append(0, data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn short_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};
    let mut state = u64::from(!crc);
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        state = _mm_crc32_u64(
            state,
            u64::from_le_bytes(chunk.try_into().expect("8 bytes")),
        );
    }
    let mut state = state as u32;
    let mut rest = chunks.remainder();
    if rest.len() >= 4 {
        state = _mm_crc32_u32(state, u32::from_le_bytes(rest[..4].try_into().expect("4")));
        rest = &rest[4..];
    }
    if rest.len() >= 2 {
        state = _mm_crc32_u16(state, u16::from_le_bytes(rest[..2].try_into().expect("2")));
        rest = &rest[2..];
    }
    if let Some(&byte) = rest.first() {
        state = _mm_crc32_u8(state, byte);
    }
    !state
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_same_values_as_the_crate_for_every_length_and_start() {
        let data: Vec<u8> = (0..700u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in [0u32, 1, 0xDEAD_BEEF, u32::MAX] {
            for offset in 0..9 {
                for len in 0..data.len() - offset {
                    let slice = &data[offset..offset + len];
                    assert_eq!(
                        super::crc32c_append(start, slice),
                        crc32c::crc32c_append(start, slice),
                        "start {start:#x}, offset {offset}, length {len}"
                    );
                }
            }
        }
        // The check value of CRC-32C.
        assert_eq!(super::crc32c(b"123456789"), 0xE306_9283);
    }
}
