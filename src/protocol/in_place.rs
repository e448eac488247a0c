//! Reading in place: a PUBLISH without properties (the bulk of what a broker or a load
//! generator receives) parsed from the bytes it arrived in, its topic and payload borrowed, so
//! routing it takes no reference count (`shard::body::Body`). `decode_in` reads a frozen buffer
//! packet by packet (every other packet as `decode` gives it); `publish_at` reads one PUBLISH at
//! the front of a plain slice, for a reader that keeps nothing (the load generator). Both agree
//! with `decode`, errors included: anything irregular is left to it.

use bytes::Bytes;
use bytestring::ByteString;

use super::decode::{checked_str, decode_body, decode_short, frame_at};
use super::error::DecodeError;
use super::packet::{Packet, ProtocolVersion, Publish, QoS};
use super::properties::Props;

/// A PUBLISH without properties (every 3.1.x one, and an MQTT 5 one whose property length is
/// 0), read in place: topic and payload borrow the receive buffer. What `decode` would give for
/// the same bytes, less the handles: `into_publish` makes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishIn<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Never empty: an empty topic needs a Topic Alias, a property.
    pub topic: &'a str,
    /// 0 for QoS 0.
    pub packet_id: u16,
    pub payload: &'a [u8],
}

impl PublishIn<'_> {
    /// The decoded `Publish`, its topic and payload sliced from `frame` (the buffer this was
    /// read from, which holds them).
    pub fn into_publish(self, frame: &Bytes) -> Publish {
        let topic = frame.slice_ref(self.topic.as_bytes());
        Publish {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            // SAFETY: the bytes of `self.topic`, a `str`.
            topic: unsafe { ByteString::from_bytes_unchecked(topic) },
            packet_id: self.packet_id,
            payload: frame.slice_ref(self.payload),
            properties: Props::NONE,
        }
    }
}

/// What `decode_in` read.
#[derive(Debug)]
pub enum Decoded<'a> {
    Publish(PublishIn<'a>),
    Packet(Packet),
}

/// `decode` over a frozen buffer, at `buf[at..]` (`at <= buf.len()`), leaving the buffer as it
/// is: the packet there and its size, `Ok(None)` when the buffer ends inside it. A PUBLISH
/// without properties is read in place (`PublishIn`); any other packet (or a malformed
/// PUBLISH: the error) is what `decode` gives for the same bytes.
pub fn decode_in<'a>(
    buf: &'a Bytes,
    at: usize,
    version: ProtocolVersion,
    packet_size_max: u32,
) -> Result<Option<(Decoded<'a>, usize)>, DecodeError> {
    let rest = buf.get(at..).unwrap_or_default();
    let Some((first, header_len, size)) = frame_at(rest, version, packet_size_max)? else {
        return Ok(None);
    };
    let body = &rest[header_len..size];
    if first >> 4 == 3 {
        if let Some(publish) = publish_in_place(first & 0x0F, body, version.is_v5()) {
            return Ok(Some((Decoded::Publish(publish), size)));
        }
    }
    let packet = match decode_short(first, body)? {
        Some(packet) => packet,
        None => {
            let frame = buf.slice(at + header_len..at + size);
            let Some(packet) = decode_body(first, frame, version)? else {
                return Ok(None);
            };
            packet
        }
    };
    Ok(Some((Decoded::Packet(packet), size)))
}

/// The PUBLISH at the front of `buf` and its size, read in place, if it is whole, well formed
/// and without properties; `None` for anything else, which `decode` then reads (or refuses).
/// For a reader that keeps nothing of what it receives (the load generator): no `Bytes` at all.
pub fn publish_at(
    buf: &[u8],
    version: ProtocolVersion,
    packet_size_max: u32,
) -> Option<(PublishIn<'_>, usize)> {
    let (first, header_len, size) = frame_at(buf, version, packet_size_max).ok()??;
    if first >> 4 != 3 {
        return None;
    }
    let publish = publish_in_place(first & 0x0F, &buf[header_len..size], version.is_v5())?;
    Some((publish, size))
}

/// A well-formed PUBLISH body without properties, read in place; `None` for anything else
/// (properties, or bytes `decode_publish` refuses: it is the one to say why).
#[inline(always)]
fn publish_in_place(flags: u8, body: &[u8], v5: bool) -> Option<PublishIn<'_>> {
    // The first byte was checked: QoS is 0-2, and DUP is clear at QoS 0.
    let qos = QoS::from_u8((flags >> 1) & 0b11)?;
    let (&topic_len, rest) = body.split_first_chunk::<2>()?;
    let (topic, mut rest) = rest.split_at_checked(usize::from(u16::from_be_bytes(topic_len)))?;
    let topic = checked_str(topic, true).ok().filter(|t| !t.is_empty())?;
    let mut packet_id = 0;
    if qos != QoS::AtMostOnce {
        let (&id, tail) = rest.split_first_chunk::<2>()?;
        packet_id = u16::from_be_bytes(id);
        if packet_id == 0 {
            return None;
        }
        rest = tail;
    }
    if v5 {
        // A property length of 0, one byte; any other has properties (or is malformed).
        rest = rest.strip_prefix(&[0])?;
    }
    Some(PublishIn {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 0b0001 != 0,
        topic,
        packet_id,
        payload: rest,
    })
}
