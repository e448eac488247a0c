//! The fixed header: the type-and-flags byte and the remaining length, a variable byte integer
//! (spec 1.5.5 / 2.1.4). Everything here works on a plain `&[u8]` so the broker can size a frame
//! (and refuse one over the limit) before it buffers the body.

use super::error::DecodeError;
use super::packet::ProtocolVersion;

/// The largest value a variable byte integer can carry (four bytes of 7 bits).
pub const VAR_INT_MAX: u32 = 268_435_455;

/// What reading a variable byte integer from a prefix of the stream found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VarInt {
    /// The value and how many bytes it took.
    Value(u32, usize),
    /// The bytes end with the continuation bit still set.
    Incomplete,
    /// A fourth byte with the continuation bit set [MQTT-1.5.5-1].
    Malformed,
}

pub(crate) fn read_var_int(bytes: &[u8]) -> VarInt {
    let mut value: u32 = 0;
    for (index, &byte) in bytes.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            return VarInt::Value(value, index + 1);
        }
    }
    if bytes.len() >= 4 {
        VarInt::Malformed
    } else {
        VarInt::Incomplete
    }
}

/// Bytes a variable byte integer takes on the wire; values over `VAR_INT_MAX` are the
/// encoder's to refuse.
pub fn var_int_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Checks the first byte of a packet: its type exists on a connection of `version`, and its
/// flags are the ones the type prescribes [MQTT-2.2.2-2]. Done before the body arrives, so a
/// stream of garbage is refused at its first byte.
pub(crate) fn check_first_byte(first: u8, version: ProtocolVersion) -> Result<(), DecodeError> {
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    let expected = match packet_type {
        0 => return Err(DecodeError::InvalidPacketType(0)),
        15 if !version.is_v5() => return Err(DecodeError::InvalidPacketType(15)),
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                // [MQTT-3.3.1-4]
                return Err(DecodeError::InvalidQoS);
            }
            if qos == 0 && flags & 0b1000 != 0 {
                // [MQTT-3.3.1-2] DUP must be 0 on QoS 0.
                return Err(DecodeError::InvalidFlags { packet_type, flags });
            }
            return Ok(());
        }
        // PUBREL, SUBSCRIBE, UNSUBSCRIBE [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1].
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    // MQTT 3.1 sets DUP on a PUBREL, SUBSCRIBE or UNSUBSCRIBE sent again (its section 2.1).
    let dup_allowed = version == ProtocolVersion::V3_1 && expected == 0b0010;
    if flags != expected && !(dup_allowed && flags == expected | 0b1000) {
        return Err(DecodeError::InvalidFlags { packet_type, flags });
    }
    Ok(())
}

/// The whole packet's length (fixed header included) from the front of `buf`, `Ok(None)` while
/// the remaining length is still incomplete. Refuses a packet over `packet_size_max` from the
/// header alone, before its body is buffered.
pub fn frame_len(buf: &[u8], packet_size_max: u32) -> Result<Option<usize>, DecodeError> {
    Ok(fixed_header(buf, packet_size_max)?.map(|(_, size)| size))
}

/// `(fixed header length, whole packet length)`, as `frame_len`.
pub(crate) fn fixed_header(
    buf: &[u8],
    packet_size_max: u32,
) -> Result<Option<(usize, usize)>, DecodeError> {
    let Some(rest) = buf.get(1..) else {
        return Ok(None);
    };
    match read_var_int(rest) {
        VarInt::Incomplete => Ok(None),
        VarInt::Malformed => Err(DecodeError::MalformedRemainingLength),
        VarInt::Value(remaining_length, len_len) => {
            // At most 1 + 4 + 268,435,455: no overflow in u32.
            let header_len = 1 + len_len;
            let size = header_len as u32 + remaining_length;
            if size > packet_size_max {
                return Err(DecodeError::PacketTooLarge {
                    size,
                    size_max: packet_size_max,
                });
            }
            Ok(Some((header_len, size as usize)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table in spec 1.5.5 (3.1.1 section 2.2.3): the bounds of each encoded length.
    const LENGTH_TABLE: [(u32, &[u8]); 8] = [
        (0, &[0x00]),
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
    ];

    #[test]
    fn remaining_length_table_from_the_spec() {
        for (value, bytes) in LENGTH_TABLE {
            assert_eq!(
                read_var_int(bytes),
                VarInt::Value(value, bytes.len()),
                "{value}"
            );
            assert_eq!(var_int_len(value as usize), bytes.len(), "{value}");
            let mut frame = vec![0x30];
            frame.extend_from_slice(bytes);
            assert_eq!(
                frame_len(&frame, u32::MAX),
                Ok(Some(1 + bytes.len() + value as usize))
            );
        }
    }

    #[test]
    fn remaining_length_incomplete_and_malformed() {
        assert_eq!(read_var_int(&[]), VarInt::Incomplete);
        assert_eq!(read_var_int(&[0x80, 0x80, 0x80]), VarInt::Incomplete);
        assert_eq!(read_var_int(&[0x80, 0x80, 0x80, 0x80]), VarInt::Malformed);
        assert_eq!(frame_len(&[], 100), Ok(None));
        assert_eq!(frame_len(&[0x30], 100), Ok(None));
        assert_eq!(frame_len(&[0x30, 0xFF, 0xFF, 0xFF], 100), Ok(None));
        assert_eq!(
            frame_len(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], u32::MAX),
            Err(DecodeError::MalformedRemainingLength)
        );
    }

    #[test]
    fn packet_size_limit_is_checked_from_the_header() {
        // 1 + 1 + 98 = 100 fits, 1 + 1 + 99 does not.
        assert_eq!(frame_len(&[0x30, 98], 100), Ok(Some(100)));
        assert_eq!(
            frame_len(&[0x30, 99], 100),
            Err(DecodeError::PacketTooLarge {
                size: 101,
                size_max: 100
            })
        );
    }

    #[test]
    fn first_byte_flags() {
        let v = ProtocolVersion::V3_1_1;
        assert_eq!(check_first_byte(0xC0, v), Ok(()));
        assert_eq!(check_first_byte(0x62, v), Ok(()));
        assert_eq!(
            check_first_byte(0x60, v),
            Err(DecodeError::InvalidFlags {
                packet_type: 6,
                flags: 0
            })
        );
        assert_eq!(check_first_byte(0x3D, v), Ok(())); // DUP, QoS 2, retain
        assert_eq!(check_first_byte(0x36, v), Err(DecodeError::InvalidQoS));
        assert_eq!(
            check_first_byte(0x00, v),
            Err(DecodeError::InvalidPacketType(0))
        );
        assert_eq!(
            check_first_byte(0xF0, v),
            Err(DecodeError::InvalidPacketType(15))
        );
        assert_eq!(check_first_byte(0xF0, ProtocolVersion::V5), Ok(()));
    }

    #[test]
    fn mqtt_3_1_may_set_dup_on_a_pubrel_subscribe_or_unsubscribe_sent_again() {
        let dup = |first: u8| first | 0b1000;
        for first in [0x62, 0x82, 0xA2] {
            assert_eq!(check_first_byte(dup(first), ProtocolVersion::V3_1), Ok(()));
            for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
                assert_eq!(
                    check_first_byte(dup(first), version),
                    Err(DecodeError::InvalidFlags {
                        packet_type: first >> 4,
                        flags: 0b1010
                    }),
                    "[MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1] under {version:?}"
                );
            }
        }
        // Still only DUP: the other reserved bits stay refused.
        assert!(check_first_byte(0x6B, ProtocolVersion::V3_1).is_err());
        assert!(check_first_byte(0x66, ProtocolVersion::V3_1).is_err());
    }
}
