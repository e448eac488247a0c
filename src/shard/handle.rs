//! MQTT 3.1.1, 3.1 and 5.0 behaviour of a shard: one `match` on each decoded packet, then the
//! leaves: PUBLISH in (QoS 0/1/2, exactly once, topic aliases, MQTT 5 properties), acks, the
//! window resent on resume. Routing and delivery out are in `deliver.rs`, CONNECT and
//! DISCONNECT in `connect.rs`, SUBSCRIBE and UNSUBSCRIBE in `subscribe.rs`. Writes only to
//! outboxes; the loop turn sends them.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;

use crate::protocol::{
    DecodeError, Packet, Properties, Props, ProtocolVersion, PubAck, Publish, PublishIn, QoS,
    ReasonCode,
};
use crate::session::{ConnRef, IncomingQos2, InflightState};

use super::body::Body;
use super::conn::{ConnState, NO_SESSION};
use super::held::HeldPacket;
use super::limits::LimitHit;
use super::outgoing::{Outboxes, Written};
use super::{CloseReason, Shard};

/// PUBACK/PUBREC's reason: MQTT 5 tells a publisher nobody subscribed (0x10, still a success
/// [MQTT-3.4.2.1]); 3.1.1 has no code.
fn publish_ack_code(v5: bool, matched: bool) -> ReasonCode {
    if v5 && !matched {
        ReasonCode::NoMatchingSubscribers
    } else {
        ReasonCode::Success
    }
}

/// A copy of a string that shares no receive buffer, for state that outlives the turn.
pub(super) fn unpinned_string(text: &ByteString) -> ByteString {
    ByteString::from(&**text)
}

impl Shard {
    /// Past this point a `Packet` is handled by reference, never moved again.
    #[inline]
    pub(super) fn handle(&mut self, slot: u32, generation: u32, packet: Packet) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        match (conn.state, packet) {
            (ConnState::AwaitConnect, Packet::Connect(connect)) => {
                self.on_connect(slot, generation, connect)
            }
            // [MQTT-3.1.0-1] The first packet must be CONNECT.
            (ConnState::AwaitConnect, _) => self.close(slot, generation, CloseReason::Protocol),
            // A SUBSCRIBE of this connection is being handled in slices: later packets wait.
            (ConnState::Connected, packet) if self.subscribe_jobs.busy(slot, generation) => {
                self.defer_while_subscribing(slot, generation, packet)
            }
            (ConnState::Connected, packet) => self.on_packet(slot, generation, &packet),
            (ConnState::Closing | ConnState::HandingOff, _) => {}
        }
    }

    fn on_packet(&mut self, slot: u32, generation: u32, packet: &Packet) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        let session = conn.session;
        self.held.begin();
        match packet {
            // [MQTT-3.1.0-2] A second CONNECT is a protocol violation.
            Packet::Connect(_) => self.close(slot, generation, CloseReason::Protocol),
            Packet::Publish(publish) => self.on_publish(slot, generation, session, publish),
            // A PUBACK or PUBCOMP for an id not in flight (a repeat, or a client that lost its
            // state) is ignored: there is nothing to complete (spec 4.3.2, 4.3.3).
            Packet::PubAck(ack) => {
                if self.durable.is_some() {
                    self.log_delivered(session, ack.packet_id, InflightState::AwaitPubAck);
                }
                if let Some(s) = self.sessions.get_mut(session) {
                    s.on_puback(ack.packet_id);
                }
                self.pump(session);
            }
            Packet::PubRec(ack) => self.on_pubrec(slot, generation, session, ack),
            Packet::PubRel(ack) => {
                let held = self
                    .sessions
                    .get_mut(session)
                    .is_some_and(|s| s.incoming_qos2_release(ack.packet_id));
                if self.durable.is_some() {
                    if held {
                        // The PUBCOMP waits for the record: once the client has it, it may
                        // reuse the id, which a restart must then not take for a repeat.
                        self.log_incoming_qos2(session, ack.packet_id, false);
                    }
                    // And for the flow's keys to be gone (`exactly_once.rs`).
                    self.release_flow(session, ack.packet_id, held);
                }
                // MQTT 5: a PUBREL for an id we hold no QoS 2 state for (its PUBCOMP was lost,
                // or there never was a PUBLISH) still completes the flow, with 0x92 (spec
                // 3.7.2.1); 3.1.1 answers a plain PUBCOMP.
                let code = if held || !self.is_v5(slot, generation) {
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                self.ack(slot, generation, HeldPacket::PubComp(ack.packet_id, code));
            }
            Packet::PubComp(ack) => {
                let completed = self
                    .sessions
                    .get_mut(session)
                    .is_some_and(|s| s.on_pubcomp(ack.packet_id));
                if completed && self.durable.is_some() {
                    self.log_completed(session, ack.packet_id);
                }
                self.pump(session);
            }
            Packet::Subscribe(subscribe) => self.on_subscribe(slot, generation, session, subscribe),
            Packet::Unsubscribe(unsubscribe) => {
                self.on_unsubscribe(slot, generation, session, unsubscribe)
            }
            Packet::PingReq => self.write(slot, generation, &Packet::PingResp),
            Packet::Disconnect(disconnect) => self.on_disconnect(slot, generation, disconnect),
            // AUTH is refused by the decoder under 3.1.x.
            Packet::Auth(auth) => self.on_auth(slot, generation, auth),
            // Server-to-client packets.
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.close(slot, generation, CloseReason::Protocol)
            }
        }
    }

    pub(super) fn on_decode_error(&mut self, slot: u32, generation: u32, error: DecodeError) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if conn.state == ConnState::AwaitConnect {
            if let DecodeError::UnsupportedProtocolVersion { .. } = error {
                // [MQTT-3.1.2-2] Unknown level: return code 1, then close.
                self.refuse(
                    slot,
                    generation,
                    ProtocolVersion::V3_1_1,
                    ReasonCode::UnsupportedProtocolVersion,
                );
                return;
            }
        }
        // Under 3.1.1 a bad packet just ends the connection; MQTT 5 first sends a DISCONNECT
        // with the reason (0x81 malformed, 0x82 protocol error, 0x95 too large) [MQTT-4.13.1-1].
        let code = match error.reason_code() {
            // Not a DISCONNECT reason (spec 3.14.2.1): a second CONNECT with an unknown
            // level is a protocol error.
            ReasonCode::UnsupportedProtocolVersion => ReasonCode::ProtocolError,
            code => code,
        };
        // For the disconnect line; not left for another connection if this one was closing.
        self.close_detail = Some(error);
        self.close_with(slot, generation, CloseReason::Protocol, Some(code));
        self.close_detail = None;
    }

    pub(super) fn is_v5(&self, slot: u32, generation: u32) -> bool {
        self.conns
            .get(slot, generation)
            .is_some_and(|c| c.version.is_v5())
    }

    /// PUBREC for one of our QoS 2 sends. PUBREL answers it (spec 4.3.3), also a repeated
    /// one (a client that lost our PUBREL completes its flow). MQTT 5: a PUBREC for an id not
    /// in flight gets PUBREL 0x92, and one with a failure code (the client refused the
    /// message) ends the flow with no PUBREL at all, freeing the id (spec 4.3.3).
    fn on_pubrec(&mut self, slot: u32, generation: u32, session: u32, ack: &PubAck) {
        if ack.code.is_failure() {
            if self.durable.is_some() {
                self.log_delivered(session, ack.packet_id, InflightState::AwaitPubRec);
            }
            let ended = self
                .sessions
                .get_mut(session)
                .is_some_and(|s| s.on_pubrec_refused(ack.packet_id));
            if ended {
                self.pump(session);
            }
            return;
        }
        if self.durable.is_some() {
            // The message is no longer owed, its PUBREL is: the PUBREL waits for the record,
            // so a client that got it never sees the message again after a crash.
            self.log_released(session, ack.packet_id);
        }
        let known = self
            .sessions
            .get_mut(session)
            .is_some_and(|s| s.on_pubrec(ack.packet_id));
        let code = if known || !self.is_v5(slot, generation) {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        if self.durable.is_some() {
            self.ack(slot, generation, HeldPacket::PubRel(ack.packet_id, code));
            return;
        }
        let pubrel = PubAck {
            packet_id: ack.packet_id,
            code,
            // No Reason String on a publish ack (see `write_held`).
            properties: Props::NONE,
        };
        self.write(slot, generation, &Packet::PubRel(pubrel));
    }

    /// Appends one packet (not a PUBLISH: `outgoing.rs`) to a connection's outbox.
    pub(super) fn write(&mut self, slot: u32, generation: u32, packet: &Packet) {
        self.outboxes().packet(ConnRef { slot, generation }, packet);
    }

    /// The shard's outboxes, for a write that does not keep a session borrowed.
    pub(super) fn outboxes(&mut self) -> Outboxes<'_> {
        Outboxes {
            conns: &mut self.conns,
            pools: &mut self.pools,
            dirty: &mut self.dirty,
            stats: &mut self.stats,
        }
    }

    /// On resume, messages still unacknowledged go out again, in order: PUBLISH with DUP=1,
    /// or PUBREL for those the client already received [MQTT-4.4.0-1]. On this new connection
    /// their topics get aliases afresh. One now over the client's Maximum Packet Size is done
    /// with, as if delivered.
    pub(super) fn resend_inflight(&mut self, session: u32, slot: u32, generation: u32) {
        let now_secs = self.now_ms / 1000;
        let Some(s) = self.sessions.get(session) else {
            return;
        };
        let c = ConnRef { slot, generation };
        let mut out = Outboxes {
            conns: &mut self.conns,
            pools: &mut self.pools,
            dirty: &mut self.dirty,
            stats: &mut self.stats,
        };
        let mut too_large = Vec::new();
        for flight in s.inflight() {
            match flight.state {
                InflightState::AwaitPubAck | InflightState::AwaitPubRec => {
                    // Delivery has begun: even an expired one completes, with what is left (0).
                    let m = &flight.message;
                    if out.publish_stored(c, m, flight.packet_id, true, now_secs)
                        == Written::TooLarge
                    {
                        too_large.push(flight.packet_id);
                    }
                }
                InflightState::AwaitPubComp => {
                    out.packet(c, &Packet::PubRel(PubAck::new(flight.packet_id)))
                }
            }
        }
        if let Some(s) = self.sessions.get_mut(session) {
            for packet_id in too_large {
                s.discard_inflight(packet_id);
            }
        }
    }

    /// A PUBLISH `recv.rs` read in place (`protocol::decode_in`): without properties, so
    /// without a Topic Alias, and routed borrowing the receive buffer (`Body`).
    pub(super) fn handle_publish_in(
        &mut self,
        slot: u32,
        generation: u32,
        publish: PublishIn<'_>,
        frame: &Bytes,
    ) {
        let Some(conn) = self.conns.get(slot, generation) else {
            return;
        };
        let (session, v5) = (conn.session, conn.version.is_v5());
        if conn.state != ConnState::Connected || self.subscribe_jobs.busy(slot, generation) {
            // Refused, deferred or ignored as `handle` says, which keeps what it takes.
            let packet = Packet::Publish(publish.into_publish(frame));
            self.handle(slot, generation, packet);
            return;
        }
        self.held.begin();
        // Routing skips this session for its No Local subscriptions.
        self.publisher = session;
        self.stats.messages_in += 1;
        if !self.over_qos_max(slot, generation, v5, publish.qos) {
            let body = Body::within(frame, publish.topic, publish.payload);
            self.accept_publish(slot, generation, session, v5, &publish, &body, None);
        }
        self.publisher = NO_SESSION;
    }

    fn on_publish(&mut self, slot: u32, generation: u32, session: u32, publish: &Publish) {
        // Routing skips this session for its No Local subscriptions.
        self.publisher = session;
        self.on_publish_from(slot, generation, session, publish);
        self.publisher = NO_SESSION;
    }

    /// [MQTT-3.2.2-11] Above the Maximum QoS the CONNACK announced: closed, and true.
    fn over_qos_max(&mut self, slot: u32, generation: u32, v5: bool, qos: QoS) -> bool {
        if v5 && qos as u8 > self.config.limits.qos_max {
            self.close_with(
                slot,
                generation,
                CloseReason::Protocol,
                Some(ReasonCode::QoSNotSupported),
            );
            return true;
        }
        false
    }

    fn on_publish_from(&mut self, slot: u32, generation: u32, session: u32, publish: &Publish) {
        self.stats.messages_in += 1;
        // Properties travel only from an MQTT 5 publisher that set some; 3.1.1 and plain
        // PUBLISHes route with none (no copy, no allocation).
        let v5 = self.is_v5(slot, generation);
        if self.over_qos_max(slot, generation, v5, publish.qos) {
            return;
        }
        let aliased;
        let topic = match publish.properties.topic_alias {
            Some(alias) if v5 => {
                let Some(topic) = self.topic_by_alias(slot, generation, alias, &publish.topic)
                else {
                    return;
                };
                aliased = topic;
                &aliased
            }
            _ => &publish.topic,
        };
        let properties = if v5 && !publish.properties.is_empty() {
            if !publish.properties.subscription_identifiers.is_empty() {
                // [MQTT-3.3.4-6] Only the server sends Subscription Identifiers.
                self.close(slot, generation, CloseReason::Protocol);
                return;
            }
            if publish.properties.payload_format_indicator == Some(1)
                && std::str::from_utf8(&publish.payload).is_err()
            {
                // Said to be UTF-8 and is not: refused with 0x99 (spec 3.3.2.3.2), by the
                // ack where there is one, or else by DISCONNECT.
                let code = ReasonCode::PayloadFormatInvalid;
                match publish.qos {
                    QoS::AtMostOnce => {
                        self.close_with(slot, generation, CloseReason::Protocol, Some(code))
                    }
                    QoS::AtLeastOnce => self.ack(
                        slot,
                        generation,
                        HeldPacket::PubAck(publish.packet_id, code),
                    ),
                    QoS::ExactlyOnce => self.ack(
                        slot,
                        generation,
                        HeldPacket::PubRec(publish.packet_id, code),
                    ),
                }
                return;
            }
            // One allocation per route, shared by every message queued from it. The alias was
            // this hop's: each subscriber's connection has its own [MQTT-3.3.2-12].
            let mut properties = (*publish.properties).clone();
            properties.topic_alias = None;
            (!properties.is_empty()).then(|| Arc::new(properties))
        } else {
            None
        };
        let header = PublishIn {
            dup: publish.dup,
            qos: publish.qos,
            retain: publish.retain,
            topic,
            packet_id: publish.packet_id,
            payload: &publish.payload,
        };
        let body = Body::of(topic, &publish.payload);
        self.accept_publish(slot, generation, session, v5, &header, &body, properties);
    }

    /// A PUBLISH past the checks of how it was read: the ACL, MQTT 5's refusals, then routed
    /// and acknowledged by its QoS. `publish`: its header fields; `body`: its topic (the one
    /// its Topic Alias names, if it has one) and payload; `properties`: those it travels with.
    #[allow(clippy::too_many_arguments)]
    fn accept_publish(
        &mut self,
        slot: u32,
        generation: u32,
        session: u32,
        v5: bool,
        publish: &PublishIn<'_>,
        body: &Body<'_>,
        properties: Option<Arc<Properties>>,
    ) {
        let topic = body.topic;
        if self.acl.is_some() && !self.acl_may_write(session, topic) {
            let (qos, packet_id) = (publish.qos, publish.packet_id);
            self.refuse_unauthorized_publish(slot, generation, v5, qos, packet_id);
            return;
        }
        if v5 && publish.qos != QoS::AtMostOnce {
            let (retain, payload) = (publish.retain, body.payload);
            if let Some(code) = self.publish_refusal(topic, retain, payload, properties.as_ref()) {
                // Refused, so nothing of it happens: not retained, not delivered, and a QoS 2
                // id is not kept (a PUBREC of 0x80 or above ends the flow, spec 4.3.3).
                let ack = match publish.qos {
                    QoS::AtLeastOnce => HeldPacket::PubAck(publish.packet_id, code),
                    _ => HeldPacket::PubRec(publish.packet_id, code),
                };
                self.ack(slot, generation, ack);
                return;
            }
        }
        match publish.qos {
            QoS::AtMostOnce => {
                self.publish(body, QoS::AtMostOnce, publish.retain, properties.as_ref());
                if publish.retain {
                    // Replicas are never dropped, and no ack holds this publisher back.
                    self.pause_recv_if_mesh_behind(slot, generation);
                }
            }
            QoS::AtLeastOnce => {
                if self.incoming_inflight(slot, generation, session) >= self.incoming_inflight_max()
                {
                    self.close_over_incoming_inflight(slot, generation);
                    return;
                }
                let before_publish = self.outbox_len(slot, generation);
                let matched =
                    self.publish(body, QoS::AtLeastOnce, publish.retain, properties.as_ref());
                let code = publish_ack_code(v5, matched);
                let before_ack = self.outbox_len(slot, generation);
                self.ack(
                    slot,
                    generation,
                    HeldPacket::PubAck(publish.packet_id, code),
                );
                self.ack_first(slot, generation, before_publish, before_ack);
            }
            QoS::ExactlyOnce => {
                // [MQTT-4.3.3-2] Exactly once: a re-sent PUBLISH before PUBREL is acknowledged
                // again but not delivered again.
                // Room for QoS 2 ids: the bound less the QoS 1 PUBACKs held for the client.
                let ids_max = self
                    .incoming_inflight_max()
                    .saturating_sub(self.held.pubacks((slot, generation)) as usize);
                let incoming = self
                    .sessions
                    .get_mut(session)
                    .map(|s| s.incoming_qos2_begin(publish.packet_id, ids_max));
                if incoming == Some(IncomingQos2::OverLimit) {
                    self.close_over_incoming_inflight(slot, generation);
                    return;
                }
                let new = incoming == Some(IncomingQos2::New);
                if new && self.durable.is_some() {
                    self.begin_keyed_flow(session, publish.packet_id, publish.dup);
                }
                // A repeat (not delivered again) is acknowledged as plain success.
                let before_publish = self.outbox_len(slot, generation);
                let matched = !new
                    || self.publish(body, QoS::ExactlyOnce, publish.retain, properties.as_ref());
                self.end_keyed_flow();
                let code = publish_ack_code(v5, matched);
                let packet = if incoming == Some(IncomingQos2::New) && self.durable.is_some() {
                    // Its id is recorded once what the PUBLISH caused is on disk (`held.rs`).
                    HeldPacket::PubRecLogged {
                        packet_id: publish.packet_id,
                        code,
                        session,
                    }
                } else {
                    HeldPacket::PubRec(publish.packet_id, code)
                };
                let before_ack = self.outbox_len(slot, generation);
                self.ack(slot, generation, packet);
                self.ack_first(slot, generation, before_publish, before_ack);
            }
        }
    }

    /// The length of the connection's outbox (`None` without one).
    fn outbox_len(&self, slot: u32, generation: u32) -> Option<usize> {
        let conn = self.conns.get(slot, generation)?;
        Some(conn.buffers.as_ref().map_or(0, |b| b.outbox.len()))
    }

    /// A publisher subscribed to its own topic got its copy in the outbox before the PUBACK or
    /// PUBREC written after it (the ack's code says whether anyone matched): puts the ack first,
    /// where a client reading packet by packet looks for it. `before_publish` and
    /// `before_ack` are the outbox's lengths before each; an ack held for later, or no copy,
    /// moves nothing.
    fn ack_first(
        &mut self,
        slot: u32,
        generation: u32,
        before_publish: Option<usize>,
        before_ack: Option<usize>,
    ) {
        let (Some(start), Some(ack_at)) = (before_publish, before_ack) else {
            return;
        };
        let Some(outbox) = self
            .conns
            .get_mut(slot, generation)
            .and_then(|c| c.buffers.as_mut())
            .map(|b| &mut b.outbox)
        else {
            return;
        };
        // Only bytes this packet's handling appended: the outbox goes to the kernel at the end
        // of the turn, so nothing here is in flight.
        if start < ack_at && ack_at < outbox.len() {
            let ack_len = outbox.len() - ack_at;
            outbox[start..].rotate_right(ack_len);
        }
    }

    /// The topic of a PUBLISH that carries Topic Alias `alias` (3.3.2.3.4): with a topic, the
    /// alias names it from now on; without, the alias says which. `None` when the connection
    /// is being closed: an alias of 0 or over our maximum is DISCONNECT 0x94 [MQTT-3.2.2-17]
    /// [MQTT-3.3.2-9], one the client never set on this connection a protocol error.
    fn topic_by_alias(
        &mut self,
        slot: u32,
        generation: u32,
        alias: u16,
        topic: &ByteString,
    ) -> Option<ByteString> {
        let alias_max = self.config.limits.topic_alias_max;
        let conn = self.conns.get_mut(slot, generation)?;
        if alias == 0 || alias > alias_max {
            self.close_with(
                slot,
                generation,
                CloseReason::Protocol,
                Some(ReasonCode::TopicAliasInvalid),
            );
            return None;
        }
        // The connection's alias table, allocated on its first alias.
        let aliases = &mut conn.v5.get_or_insert_with(Box::default).inbound;
        if !topic.is_empty() {
            aliases.set(alias, topic);
            return Some(topic.clone());
        }
        match aliases.get(alias) {
            Some(topic) => Some(topic.clone()),
            None => {
                self.close_with(
                    slot,
                    generation,
                    CloseReason::Protocol,
                    Some(ReasonCode::ProtocolError),
                );
                None
            }
        }
    }

    fn incoming_inflight_max(&self) -> usize {
        usize::from(self.config.limits.incoming_inflight_max)
    }

    /// Inbound QoS 1/2 messages the client has not seen fully acknowledged: QoS 2 awaiting
    /// PUBREL, and QoS 1 whose PUBACK is held behind the mesh (`held.rs`). MQTT 5's Receive
    /// Maximum counts the same.
    fn incoming_inflight(&self, slot: u32, generation: u32, session: u32) -> usize {
        let pubacks = self.held.pubacks((slot, generation)) as usize;
        if pubacks == 0 {
            // Nothing held: a QoS 1 PUBLISH is acknowledged at once and counts nothing.
            return 0;
        }
        pubacks
            + self
                .sessions
                .get(session)
                .map_or(0, |s| s.incoming_qos2_len())
    }

    /// The client has more QoS 1/2 messages unacknowledged than `incoming_inflight_max`: it
    /// ignores any window, and MQTT 3.1.1 has no way to refuse one PUBLISH. An MQTT 5 client
    /// was told the bound as Receive Maximum: DISCONNECT 0x93 [MQTT-3.3.4-9].
    fn close_over_incoming_inflight(&mut self, slot: u32, generation: u32) {
        self.limit_hit(LimitHit::IncomingInflight);
        self.close_with(
            slot,
            generation,
            CloseReason::Protocol,
            Some(ReasonCode::ReceiveMaximumExceeded),
        );
    }

    /// The session's connection has gone: a clean session ends with it, a persistent one
    /// waits (and queues) for the client's return.
    pub(super) fn detach_session(&mut self, session: u32) {
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        s.conn = None;
        // The window is kept for the client's return: it must not pin receive blocks meanwhile.
        s.unpin_inflight();
        s.trim();
        if s.clean_session {
            self.clear_subscriptions(session);
            self.sessions.remove(session);
            self.forget_client_acl(session);
        } else {
            self.log_session_left(session);
            self.queue_expiry(session);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::shard::conn::NO_SESSION;

    #[test]
    fn no_session_sentinel_is_never_a_real_index() {
        assert_eq!(NO_SESSION, u32::MAX);
    }
}
