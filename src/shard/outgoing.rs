//! The one place a PUBLISH is encoded for a connection: a live QoS 0 message (encoded once per
//! route and layout where it can be), a QoS 1/2 message put in the window, one pumped from the
//! queue, the window resent on resume, a retained message on subscribe. Here the connection's
//! MQTT 5 state (`conn_v5.rs`) applies: its outbound topic aliases, and its Maximum Packet
//! Size, for every packet the shard writes it. A connection without that state (every 3.1.1
//! one, and a 5.0 one that asked for neither) takes the path it always took: the shared
//! encoding copied into its outbox.

use bytes::BytesMut;

use crate::protocol::{
    self, encode_publish_parts, publish_parts_len, Packet, ProtocolVersion, PublishParts, QoS,
    ReasonCode,
};
use crate::session::{ConnRef, Message};

use super::conn::{Conn, ConnState, Conns, Pools};
use super::conn_v5::AliasUse;
use super::stats::ShardStats;
use super::OUTBOX_INITIAL;

/// Encode once: one route's message, as bytes per layout (3.1.x or 5.0, RETAIN clear or set
/// by Retain As Published, QoS 0, 1 or 2), copied into the outbox of every subscriber that takes
/// it as it is (no topic alias of its own). At QoS 1 and 2 each copy gets its subscriber's
/// packet id written over the one the bytes were encoded with.
#[derive(Default)]
pub(super) struct SharedEncoding {
    encoded: [BytesMut; LAYOUTS],
    ready: [bool; LAYOUTS],
    /// Where the packet id sits in each layout's bytes (QoS 1 and 2).
    packet_id_at: [usize; LAYOUTS],
}

/// 2 versions x RETAIN clear or set x 3 QoS.
const LAYOUTS: usize = 12;

impl SharedEncoding {
    /// A new route: the bytes of the last one are stale.
    pub fn reset(&mut self) {
        self.ready = [false; LAYOUTS];
    }

    /// The message's bytes for `parts`' layout, and where its packet id sits in them.
    fn bytes(&mut self, version: ProtocolVersion, parts: &PublishParts<'_>) -> (&[u8], usize) {
        let layout = usize::from(version.is_v5())
            | usize::from(parts.retain) << 1
            | (parts.qos as usize) << 2;
        let cache = &mut self.encoded[layout];
        if !self.ready[layout] {
            cache.clear();
            let encoded = encode_publish_parts(cache, version, parts);
            debug_assert!(encoded.is_ok(), "{encoded:?}");
            // After the fixed header (its remaining length ends at the first byte without
            // the high bit) and the topic: [MQTT-3.3.2-1] the packet id follows the topic name.
            let length_len = cache[1..].iter().take_while(|&&b| b & 0x80 != 0).count() + 1;
            self.packet_id_at[layout] = 1 + length_len + 2 + parts.topic.len();
            self.ready[layout] = true;
        }
        (cache, self.packet_id_at[layout])
    }
}

/// What became of a PUBLISH written for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Written {
    Sent,
    /// Over the client's Maximum Packet Size: not sent [MQTT-3.1.2-24], counted. A QoS 1/2
    /// message is then done with, as if delivered.
    TooLarge,
    /// The connection is gone or closing.
    NoConnection,
}

/// The outbox of connection `(slot, generation)`, a pooled buffer when it had none, and the
/// connection marked for this turn's flush.
pub(super) fn outbox_of<'a>(
    conn: &'a mut Conn,
    pools: &mut Pools,
    dirty: &mut Vec<(u32, u32)>,
    slot: u32,
    generation: u32,
) -> &'a mut BytesMut {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push((slot, generation));
    }
    let buffers = conn.buffers(pools);
    if buffers.outbox.capacity() == 0 {
        buffers.outbox = pools
            .outboxes
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(OUTBOX_INITIAL));
    }
    &mut buffers.outbox
}

/// The shard's fields a write touches, taken apart so a caller can keep borrowing the
/// sessions (a window being resent, a message just put in flight).
pub(super) struct Outboxes<'a> {
    pub conns: &'a mut Conns,
    pub pools: &'a mut Pools,
    pub dirty: &'a mut Vec<(u32, u32)>,
    pub stats: &'a mut ShardStats,
}

impl Outboxes<'_> {
    /// Writes `m`, a message a session keeps (its window), to connection `c` as a PUBLISH
    /// under `packet_id`, encoded straight from that copy (no reference counts touched), with
    /// its properties as of `now_secs` (`Message::properties_at`).
    #[inline]
    pub fn publish_stored(
        &mut self,
        c: ConnRef,
        m: &Message,
        packet_id: u16,
        dup: bool,
        now_secs: u64,
    ) -> Written {
        let properties = m.properties_at(now_secs);
        let parts = PublishParts {
            topic: &m.topic,
            payload: &m.payload,
            qos: m.qos,
            retain: m.retain,
            dup,
            packet_id,
            properties: properties.as_deref(),
            topic_alias: None,
        };
        self.publish(c, &parts, None)
    }

    /// Writes a PUBLISH (`parts.topic_alias` unset) to connection `c`: with the alias the
    /// connection has or gets for the topic [MQTT-3.3.2-11], unless it is larger than the
    /// client takes. `shared`: the same message goes to every subscriber of this route, so a
    /// connection without aliases copies the bytes encoded once (with its own packet id).
    pub fn publish(
        &mut self,
        c: ConnRef,
        parts: &PublishParts<'_>,
        shared: Option<&mut SharedEncoding>,
    ) -> Written {
        debug_assert!(parts.topic_alias.is_none() && !parts.topic.is_empty());
        let Outboxes {
            conns,
            pools,
            dirty,
            stats,
        } = self;
        let Some(conn) = conns.get_mut(c.slot, c.generation) else {
            return Written::NoConnection;
        };
        if conn.state == ConnState::Closing {
            return Written::NoConnection;
        }
        let version = conn.version;
        let v5 = conn.v5.as_deref();
        let size_max = v5
            .and_then(|v5| v5.packet_size_max)
            .map_or(usize::MAX, |m| m as usize);
        let plan = v5
            .and_then(|v5| v5.outbound.as_ref())
            .map(|aliases| aliases.plan(parts.topic));
        match (plan, shared) {
            (None, Some(shared)) => {
                let (bytes, packet_id_at) = shared.bytes(version, parts);
                if bytes.len() > size_max {
                    stats.dropped_packet_too_large += 1;
                    return Written::TooLarge;
                }
                let outbox = outbox_of(conn, pools, dirty, c.slot, c.generation);
                let start = outbox.len();
                outbox.extend_from_slice(bytes);
                if parts.qos != QoS::AtMostOnce {
                    let at = start + packet_id_at;
                    outbox[at..at + 2].copy_from_slice(&parts.packet_id.to_be_bytes());
                }
            }
            (None, None) => {
                if too_large(version, parts, size_max) {
                    stats.dropped_packet_too_large += 1;
                    return Written::TooLarge;
                }
                let outbox = outbox_of(conn, pools, dirty, c.slot, c.generation);
                let encoded = encode_publish_parts(outbox, version, parts);
                debug_assert!(encoded.is_ok(), "{encoded:?}");
            }
            (Some((plan, hash)), _) => {
                let aliased = match plan {
                    AliasUse::Known(alias) => PublishParts {
                        topic: "",
                        topic_alias: Some(alias),
                        ..*parts
                    },
                    AliasUse::New(alias) => PublishParts {
                        topic_alias: Some(alias),
                        ..*parts
                    },
                };
                if too_large(version, &aliased, size_max) {
                    stats.dropped_packet_too_large += 1;
                    return Written::TooLarge;
                }
                let outbox = outbox_of(conn, pools, dirty, c.slot, c.generation);
                let encoded = encode_publish_parts(outbox, version, &aliased);
                debug_assert!(encoded.is_ok(), "{encoded:?}");
                if let AliasUse::New(alias) = plan {
                    if let Some(aliases) = conn.v5.as_mut().and_then(|v5| v5.outbound.as_mut()) {
                        aliases.assign(alias, parts.topic, hash);
                    }
                }
            }
        }
        stats.messages_out += 1;
        Written::Sent
    }

    /// Writes the four bytes of a plain ack (`plain_ack`): the commonest packet the broker
    /// writes, the same under both versions (no reason code or properties after a success
    /// without any, MQTT 5 3.4.2.1), with no `Packet` built, no length pass and no generic
    /// encoder. False, with nothing written, for a client that takes no packet of 4 bytes (none
    /// does, but one that says so gets `packet`'s general path).
    pub fn plain_ack(&mut self, c: ConnRef, bytes: [u8; 4]) -> bool {
        let Some(conn) = self.conns.get_mut(c.slot, c.generation) else {
            return true;
        };
        if conn.state == ConnState::Closing {
            return true;
        }
        let size_max = conn.v5.as_ref().and_then(|v5| v5.packet_size_max);
        if size_max.is_some_and(|max| max < 4) {
            return false;
        }
        outbox_of(conn, self.pools, self.dirty, c.slot, c.generation).extend_from_slice(&bytes);
        true
    }

    /// Writes a packet the broker builds (not a PUBLISH: `publish`) to connection `c`. Over
    /// the client's Maximum Packet Size it goes without its Reason String and User Properties
    /// [MQTT-3.1.2-25], and if that is still too large, not at all (counted).
    pub fn packet(&mut self, c: ConnRef, packet: &Packet) {
        if let Some(bytes) = plain_ack(packet) {
            if self.plain_ack(c, bytes) {
                return;
            }
        }
        let Some(conn) = self.conns.get_mut(c.slot, c.generation) else {
            return;
        };
        if conn.state == ConnState::Closing {
            return;
        }
        let version = conn.version;
        let size_max = conn.v5.as_ref().and_then(|v5| v5.packet_size_max);
        let trimmed;
        let packet = match size_max {
            Some(size_max) if protocol::encoded_len(packet, version) > size_max as usize => {
                let mut smaller = packet.clone();
                if let Some(properties) = smaller.properties_mut() {
                    if properties.reason_string.is_some() || !properties.user_properties.is_empty()
                    {
                        properties.reason_string = None;
                        properties.user_properties = Vec::new();
                    }
                }
                if protocol::encoded_len(&smaller, version) > size_max as usize {
                    self.stats.dropped_packet_too_large += 1;
                    return;
                }
                trimmed = smaller;
                &trimmed
            }
            _ => packet,
        };
        let outbox = outbox_of(conn, self.pools, self.dirty, c.slot, c.generation);
        // Packets the broker builds always encode; a failure would be a bug, not input.
        let encoded = protocol::encode(packet, version, outbox);
        debug_assert!(encoded.is_ok(), "encoding {packet:?}: {encoded:?}");
    }
}

/// A PUBACK, PUBREC, PUBREL or PUBCOMP of Reason Code 0 without properties, as its four bytes
/// (the same under 3.1.1 and 5.0); `None` for every other packet.
fn plain_ack(packet: &Packet) -> Option<[u8; 4]> {
    let (first, ack) = match packet {
        Packet::PubAck(ack) => (0x40, ack),
        Packet::PubRec(ack) => (0x50, ack),
        // [MQTT-3.6.1-1] PUBREL's fixed header flags are 0010.
        Packet::PubRel(ack) => (0x62, ack),
        Packet::PubComp(ack) => (0x70, ack),
        _ => return None,
    };
    if ack.code != ReasonCode::Success || !ack.properties.is_empty() {
        return None;
    }
    let [high, low] = ack.packet_id.to_be_bytes();
    Some([first, 2, high, low])
}

/// Over the client's Maximum Packet Size, which is looked at only when it set one.
fn too_large(version: ProtocolVersion, parts: &PublishParts<'_>, size_max: usize) -> bool {
    size_max != usize::MAX && publish_parts_len(version, parts) > size_max
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Props, PubAck};

    #[test]
    fn a_plain_ack_is_what_the_encoder_writes_under_both_versions() {
        let ack = PubAck::new(0xBEEF);
        let packets = [
            Packet::PubAck(ack.clone()),
            Packet::PubRec(ack.clone()),
            Packet::PubRel(ack.clone()),
            Packet::PubComp(ack),
        ];
        for packet in &packets {
            let bytes = plain_ack(packet).expect("a plain ack");
            for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
                let mut encoded = BytesMut::new();
                protocol::encode(packet, version, &mut encoded).expect("encodes");
                assert_eq!(&encoded[..], &bytes[..], "{packet:?} under {version:?}");
            }
        }
    }

    /// Issue 12: one encoding per layout serves every subscriber of a route, at QoS 1 and 2
    /// with each one's packet id written in: the bytes are what encoding for it would give.
    #[test]
    fn a_shared_encoding_with_its_packet_id_is_the_subscribers_own_encoding() {
        let with_expiry = crate::protocol::Properties {
            message_expiry_interval: Some(60),
            ..Default::default()
        };
        let payload = bytes::Bytes::from(vec![7u8; 200]);
        let mut shared = SharedEncoding::default();
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            for properties in [None, Some(&with_expiry)] {
                if properties.is_some() && !version.is_v5() {
                    continue;
                }
                shared.reset();
                for (qos, retain, packet_id) in [
                    (QoS::AtLeastOnce, false, 1),
                    (QoS::AtLeastOnce, false, 0xBEEF),
                    (QoS::ExactlyOnce, true, 300),
                    (QoS::ExactlyOnce, true, 2),
                    (QoS::AtMostOnce, false, 0),
                ] {
                    let parts = PublishParts {
                        topic: "a/b",
                        payload: &payload,
                        qos,
                        retain,
                        dup: false,
                        packet_id,
                        properties,
                        topic_alias: None,
                    };
                    let (bytes, packet_id_at) = shared.bytes(version, &parts);
                    let mut patched = bytes.to_vec();
                    if qos != QoS::AtMostOnce {
                        patched[packet_id_at..packet_id_at + 2]
                            .copy_from_slice(&packet_id.to_be_bytes());
                    }
                    let mut own = BytesMut::new();
                    encode_publish_parts(&mut own, version, &parts).expect("encodes");
                    assert_eq!(patched, &own[..], "{version:?} {qos:?} {packet_id}");
                }
            }
        }
    }

    #[test]
    fn an_ack_with_a_reason_or_properties_takes_the_encoder() {
        let refused = PubAck {
            packet_id: 1,
            code: ReasonCode::QuotaExceeded,
            properties: Props::NONE,
        };
        assert!(plain_ack(&Packet::PubAck(refused)).is_none());
        let mut properties = Props::NONE;
        properties.reason_string = Some("why".into());
        let explained = PubAck {
            packet_id: 1,
            code: ReasonCode::Success,
            properties,
        };
        assert!(plain_ack(&Packet::PubAck(explained)).is_none());
        assert!(plain_ack(&Packet::PingResp).is_none());
    }
}
