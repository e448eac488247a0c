//! MQTT 3.1.1, 3.1 and 5.0 behaviour of a shard: one `match` on each decoded packet, then the
//! leaves: PUBLISH in (QoS 0/1/2, retained, exactly once, MQTT 5 properties), routing out
//! (dedupe, subscription options, shared groups, encode once), acks, wills. CONNECT and
//! DISCONNECT are in `connect.rs`, SUBSCRIBE and UNSUBSCRIBE in `subscribe.rs`. Writes only to
//! outboxes; the loop turn sends them.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;

use crate::protocol::{
    DecodeError, LastWill, Packet, Properties, Props, ProtocolVersion, PubAck, Publish,
    PublishParts, QoS, ReasonCode,
};
use crate::session::{self, ConnRef, Enqueued, IncomingQos2, InflightState, Message};

use super::conn::{ConnState, NO_SESSION};
use super::held::HeldPacket;
use super::limits::LimitHit;
use super::outgoing::{Outboxes, Written};
use super::route::{Grant, Member};
use super::{route, CloseReason, Shard};

/// PUBACK/PUBREC's reason: MQTT 5 tells a publisher nobody subscribed (0x10, still a success
/// [MQTT-3.4.2.1]); 3.1.1 has no code.
fn publish_ack_code(v5: bool, matched: bool) -> ReasonCode {
    if v5 && !matched {
        ReasonCode::NoMatchingSubscribers
    } else {
        ReasonCode::Success
    }
}

/// Retained messages deleted per timer tick at most, so a crowd expiring in one second is
/// spread over a few ticks instead of stalling one.
const RETAINED_EXPIRIES_PER_TICK_MAX: usize = 10_000;

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
                if let Some(s) = self.sessions.get_mut(session) {
                    s.on_pubcomp(ack.packet_id);
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
        if self.durable.is_some() {
            self.log_delivered(session, ack.packet_id, InflightState::AwaitPubRec);
        }
        if ack.code.is_failure() {
            let ended = self
                .sessions
                .get_mut(session)
                .is_some_and(|s| s.on_pubrec_refused(ack.packet_id));
            if ended {
                self.pump(session);
            }
            return;
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
            let m = &flight.message;
            match flight.state {
                InflightState::AwaitPubAck | InflightState::AwaitPubRec => {
                    // Delivery has begun: even an expired one completes, with what is left (0).
                    let properties = m.properties_at(now_secs);
                    let parts = PublishParts {
                        topic: &m.topic,
                        payload: &m.payload,
                        qos: m.qos,
                        retain: m.retain,
                        dup: true,
                        packet_id: flight.packet_id,
                        properties: properties.as_deref(),
                        topic_alias: None,
                    };
                    if out.publish(c, &parts, None) == Written::TooLarge {
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

    fn on_publish(&mut self, slot: u32, generation: u32, session: u32, publish: &Publish) {
        // Routing skips this session for its No Local subscriptions.
        self.publisher = session;
        self.on_publish_from(slot, generation, session, publish);
        self.publisher = NO_SESSION;
    }

    fn on_publish_from(&mut self, slot: u32, generation: u32, session: u32, publish: &Publish) {
        self.stats.messages_in += 1;
        // Properties travel only from an MQTT 5 publisher that set some; 3.1.1 and plain
        // PUBLISHes route with none (no copy, no allocation).
        let v5 = self.is_v5(slot, generation);
        if v5 && publish.qos as u8 > self.config.limits.qos_max {
            // [MQTT-3.2.2-11] Above the Maximum QoS the CONNACK announced.
            self.close_with(
                slot,
                generation,
                CloseReason::Protocol,
                Some(ReasonCode::QoSNotSupported),
            );
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
        if self.acl.is_some() && !self.acl_may_write(session, topic) {
            self.refuse_unauthorized_publish(slot, generation, v5, publish);
            return;
        }
        if v5 && publish.qos != QoS::AtMostOnce {
            if let Some(code) = self.publish_refusal(topic, publish, properties.as_ref()) {
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
                self.publish(
                    topic,
                    &publish.payload,
                    QoS::AtMostOnce,
                    publish.retain,
                    properties.as_ref(),
                );
            }
            QoS::AtLeastOnce => {
                if self.incoming_inflight(slot, generation, session) >= self.incoming_inflight_max()
                {
                    self.close_over_incoming_inflight(slot, generation);
                    return;
                }
                let matched = self.publish(
                    topic,
                    &publish.payload,
                    QoS::AtLeastOnce,
                    publish.retain,
                    properties.as_ref(),
                );
                let code = publish_ack_code(v5, matched);
                self.ack(
                    slot,
                    generation,
                    HeldPacket::PubAck(publish.packet_id, code),
                );
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
                // A repeat (not delivered again) is acknowledged as plain success.
                let matched = incoming != Some(IncomingQos2::New)
                    || self.publish(
                        topic,
                        &publish.payload,
                        QoS::ExactlyOnce,
                        publish.retain,
                        properties.as_ref(),
                    );
                let code = publish_ack_code(v5, matched);
                self.ack(
                    slot,
                    generation,
                    HeldPacket::PubRec(publish.packet_id, code),
                );
            }
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

    pub(super) fn publish_will(&mut self, will: LastWill) {
        self.stats.messages_in += 1;
        // Will properties go on with the message, but Will Delay Interval is not one of a
        // PUBLISH's.
        let properties = (!will.properties.is_empty()).then(|| {
            Arc::new(Properties {
                will_delay_interval: None,
                ..(*will.properties).clone()
            })
        });
        self.publish(
            &will.topic,
            &will.payload,
            will.qos,
            will.retain,
            properties.as_ref(),
        );
    }

    /// An application message from a client (or a will): retained store, then subscribers.
    /// Returns whether any subscriber (here or on another shard) was found.
    fn publish(
        &mut self,
        topic: &ByteString,
        payload: &Bytes,
        qos: QoS,
        retain: bool,
        properties: Option<&Arc<Properties>>,
    ) -> bool {
        // Spec 4.7.2: `$SYS/` is the server's. A client's message there is dropped (as
        // mosquitto does), and acknowledged as one nobody matched.
        if super::sys::is_sys_topic(topic) {
            self.stats.dropped_sys_publish += 1;
            return false;
        }
        self.publish_as_server(topic, payload, qos, retain, properties)
    }

    /// `publish` without the client's restrictions: the broker's own `$SYS` messages.
    pub(super) fn publish_as_server(
        &mut self,
        topic: &ByteString,
        payload: &Bytes,
        qos: QoS,
        retain: bool,
        properties: Option<&Arc<Properties>>,
    ) -> bool {
        if retain {
            if payload.is_empty() {
                // [MQTT-3.3.1-10] An empty retained message deletes the retained one.
                self.retained.remove(topic);
                self.log_retained(topic, payload, qos, None);
                self.replicate_retained(topic, payload, qos, None);
            } else if !self.retained_has_room(topic, payload, properties) {
                // Over retained_max / retained_bytes_max: delivered below, not retained. Only
                // what this shard accepts is replicated, so every shard holds the same set.
                self.limit_hit(LimitHit::Retained);
            } else {
                // [MQTT-3.3.1-5] Replaces the topic's retained message. Copied out of the
                // receive arena so a long-lived message does not pin a whole arena block.
                let message = Message {
                    topic: ByteString::from(&**topic),
                    payload: Bytes::copy_from_slice(payload),
                    qos,
                    retain: true,
                    properties: None,
                    expires_secs: session::NEVER,
                }
                .with_properties(properties, self.now_secs());
                let (copy_topic, copy_payload) = (message.topic.clone(), message.payload.clone());
                self.retained.set(topic, message);
                self.log_retained(&copy_topic, &copy_payload, qos, properties);
                self.replicate_retained(&copy_topic, &copy_payload, qos, properties);
            }
        }
        // [MQTT-3.3.1-9] Live delivery to existing subscriptions carries retain 0 (unless
        // they asked for Retain As Published).
        self.route(topic, payload, qos, retain, properties)
    }

    /// A PUBLISH the ACL does not let the client write: not retained, not delivered. MQTT 5
    /// says so with PUBACK/PUBREC 0x87 (at QoS 0 it is dropped); 3.1.1 has no code to say it,
    /// so as mosquitto does the message is dropped and still acknowledged, which keeps the
    /// client's flow going (its PUBREL then completes with a plain PUBCOMP).
    fn refuse_unauthorized_publish(
        &mut self,
        slot: u32,
        generation: u32,
        v5: bool,
        publish: &Publish,
    ) {
        let code = if v5 {
            ReasonCode::NotAuthorized
        } else {
            ReasonCode::Success
        };
        match publish.qos {
            QoS::AtMostOnce => {}
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
    }

    /// Why the broker refuses an MQTT 5 QoS 1/2 PUBLISH it could read, if it does: the one
    /// place a per-message policy answers, with the PUBACK/PUBREC reason code (spec 3.4.2.1).
    /// Today that is a retained message over `retained_max` / `retained_bytes_max` (0x97
    /// Quota exceeded): refused whole, so a publisher told "failed" knows nothing was
    /// delivered. (The ACL's 0x87 is answered before, `refuse_unauthorized_publish`.) At QoS 0
    /// and under 3.1.1 there is no ack to say it: such a retained message is delivered but not
    /// stored (`publish`).
    /// `topic`: the PUBLISH's, or what its Topic Alias names (`publish.topic` is then empty).
    fn publish_refusal(
        &mut self,
        topic: &str,
        publish: &Publish,
        properties: Option<&Arc<Properties>>,
    ) -> Option<ReasonCode> {
        let stores = publish.retain && !publish.payload.is_empty();
        if stores && !self.retained_has_room(topic, &publish.payload, properties) {
            self.limit_hit(LimitHit::Retained);
            return Some(ReasonCode::QuotaExceeded);
        }
        None
    }

    /// Room to retain this message under `retained_max` and `retained_bytes_max`, as this
    /// shard's replica counts them (expired messages deleted first): a new topic needs a place
    /// and its bytes, a replacement only bytes beyond what it replaces. Properties weigh what
    /// they take on the wire.
    fn retained_has_room(
        &mut self,
        topic: &str,
        payload: &[u8],
        properties: Option<&Arc<Properties>>,
    ) -> bool {
        if super::sys::is_sys_topic(topic) {
            // The broker's own: not counted against the clients' limits.
            return true;
        }
        self.expire_retained();
        let limits = &self.config.limits;
        let weight = topic.len()
            + payload.len()
            + properties.map_or(0, |p| crate::protocol::properties_len(p));
        let replaced = self
            .retained
            .get(topic)
            .map(|old| topic.len() + super::retained_weight(old));
        match replaced {
            Some(old) if weight <= old => true,
            Some(old) => {
                (self.retained.clients_bytes() - old + weight) as u64 <= limits.retained_bytes_max
            }
            None => {
                self.retained.clients_len() < limits.retained_max as usize
                    && (self.retained.clients_bytes() + weight) as u64 <= limits.retained_bytes_max
            }
        }
    }

    /// [MQTT-3.3.2-5] Retained messages whose Message Expiry Interval ran out are deleted, so
    /// they stop counting against the retained limits. Every shard deletes its own replica's by
    /// its clock (each counted the interval from the message's arrival), so the replicas stay
    /// the same set.
    pub(super) fn expire_retained(&mut self) {
        let now_secs = self.now_secs().min(u64::from(session::NEVER - 1)) as u32;
        self.retained
            .remove_expired(now_secs, RETAINED_EXPIRIES_PER_TICK_MAX);
    }

    fn route(
        &mut self,
        topic: &ByteString,
        payload: &Bytes,
        qos: QoS,
        retain: bool,
        properties: Option<&Arc<Properties>>,
    ) -> bool {
        if self.shard_count > 1 {
            return self.route_sharded(topic, payload, qos, retain, properties);
        }
        self.qos0.reset();
        self.unpinned = None;
        let mut matches = std::mem::take(&mut self.matches);
        matches.clear();
        self.subscriptions.for_each_match(topic, |session, grant| {
            matches.push((session, *grant));
        });
        route::dedupe_matches(&mut matches);
        let mut group_ids = std::mem::take(&mut self.group_ids);
        let mut picks = std::mem::take(&mut self.shared_picks);
        picks.clear();
        let sessions = &self.sessions;
        self.shared.pick_for_each(
            topic,
            &mut group_ids,
            |s| sessions.get(s).is_some_and(|s| s.conn.is_some()),
            |member| picks.push(member),
        );
        self.group_ids = group_ids;
        self.deliver_matches(&matches, topic, payload, qos, retain, properties);
        for &member in &picks {
            self.deliver_member(member, topic, payload, qos, retain, properties);
        }
        let matched = !matches.is_empty() || !picks.is_empty();
        self.matches = matches;
        self.shared_picks = picks;
        matched
    }

    /// This shard's plain subscribers of `topic` (shared groups are served by the one shard
    /// the publishing shard names, see `route_sharded`).
    pub(super) fn route_local(
        &mut self,
        topic: &ByteString,
        payload: &Bytes,
        qos: QoS,
        retain: bool,
        properties: Option<&Arc<Properties>>,
    ) -> bool {
        self.qos0.reset();
        self.unpinned = None;
        let mut matches = std::mem::take(&mut self.matches);
        matches.clear();
        self.subscriptions.for_each_match(topic, |session, grant| {
            matches.push((session, *grant));
        });
        route::dedupe_matches(&mut matches);
        self.deliver_matches(&matches, topic, payload, qos, retain, properties);
        let matched = !matches.is_empty();
        self.matches = matches;
        matched
    }

    /// One live delivery per match, with its subscription's options: none back to the
    /// publisher under No Local [MQTT-3.8.3-3], the RETAIN flag kept under Retain As Published
    /// and cleared otherwise [MQTT-3.3.1-12], every matching Subscription Identifier
    /// [MQTT-3.3.4-3] [MQTT-3.3.4-4].
    fn deliver_matches(
        &mut self,
        matches: &[(u32, Grant)],
        topic: &ByteString,
        payload: &Bytes,
        qos: QoS,
        retain: bool,
        properties: Option<&Arc<Properties>>,
    ) {
        let publisher = self.publisher;
        for &(session, grant) in matches {
            if session == publisher && grant.no_local() {
                continue;
            }
            let retain = retain && grant.retain_as_published();
            let qos = qos.min(grant.qos());
            if grant.has_subscription_id() {
                let with_ids = self.subscription_ids.for_match(topic, session, properties);
                self.deliver(
                    session,
                    topic,
                    payload,
                    qos,
                    retain,
                    true,
                    with_ids.as_ref(),
                );
                continue;
            }
            self.deliver(session, topic, payload, qos, retain, true, properties);
        }
    }

    /// The delivery to the member a `$share` group picked: its own options, and its own
    /// Subscription Identifier only.
    pub(super) fn deliver_member(
        &mut self,
        member: Member,
        topic: &ByteString,
        payload: &Bytes,
        qos: QoS,
        retain: bool,
        properties: Option<&Arc<Properties>>,
    ) {
        let retain = retain && member.grant.retain_as_published();
        let qos = qos.min(member.grant.qos());
        let with_id = member
            .subscription_id
            .map(|id| self.subscription_ids.for_one(id, properties));
        let properties = with_id.as_ref().or(properties);
        self.deliver(
            member.session,
            topic,
            payload,
            qos,
            retain,
            true,
            properties,
        );
    }

    /// One message to one session: QoS 0 into the outbox (dropped when the outbox is full, see
    /// `Conn::outbox_full`, or the client is away), QoS 1/2 into the in-flight window, or the
    /// session queue when the window is full, the outbox is full, or the client is away.
    /// `shared_encoding`: the bytes may be encoded once for all subscribers of this route.
    // The message's parts go by reference, each as the caller has it: no struct is built per
    // subscriber on the hot path.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn deliver(
        &mut self,
        session: u32,
        topic: &ByteString,
        payload: &Bytes,
        qos: QoS,
        retain: bool,
        shared_encoding: bool,
        properties: Option<&Arc<Properties>>,
    ) {
        let outbox_bytes_max = self.config.limits.outbox_bytes_max as usize;
        let inflight_max = self.config.limits.inflight_max;
        let queue_max = self.config.limits.offline_queue_max;
        let now_secs = self.now_secs();
        // Read access is checked per delivery, as mosquitto does: a wildcard subscription (or
        // a rule changed by a reload) can match a topic the client may not read.
        if self.acl.is_some() && !self.acl_may_read(session, topic) {
            return;
        }
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        let live = s.conn.and_then(|c| {
            let conn = self.conns.get(c.slot, c.generation)?;
            let full = conn.outbox_full(outbox_bytes_max);
            (conn.state == ConnState::Connected).then_some((c, conn.version, full))
        });
        if qos == QoS::AtMostOnce {
            let Some((c, _, full)) = live else {
                self.stats.dropped_offline_qos0 += 1;
                return;
            };
            if full {
                self.stats.dropped_outbox_full += 1;
                return;
            }
            let parts = PublishParts {
                topic,
                payload,
                qos: QoS::AtMostOnce,
                retain,
                dup: false,
                packet_id: 0,
                properties: properties.map(|p| &**p),
                topic_alias: None,
            };
            // Encoded once per route and layout where it can be (`outgoing.rs`).
            let mut out = Outboxes {
                conns: &mut self.conns,
                pools: &mut self.pools,
                dirty: &mut self.dirty,
                stats: &mut self.stats,
            };
            // Subscription Identifiers make the bytes this subscriber's own.
            let own_properties = properties.is_some_and(|p| !p.subscription_identifiers.is_empty());
            out.publish(
                c,
                &parts,
                (shared_encoding && !own_properties).then_some(&mut self.qos0),
            );
            return;
        }
        let message = Message {
            topic: topic.clone(),
            payload: payload.clone(),
            qos,
            retain,
            properties: None,
            expires_secs: session::NEVER,
        }
        .with_properties(properties, now_secs);
        let send_now = match live {
            Some((c, version, full)) => {
                (s.queue_len() == 0 && s.window_open(inflight_max) && !full).then_some((c, version))
            }
            None => None,
        };
        // Persistence off: this one predictable branch per QoS 1/2 delivery is all it costs
        // (the work is out of line, so this function's code stays as it was).
        let s = if self.durable.is_some() {
            let owed =
                !s.clean_session && (send_now.is_some() || s.queue_len() < queue_max as usize);
            if owed {
                self.log_owed(session, topic, payload, qos, retain, properties);
            }
            match self.sessions.get_mut(session) {
                Some(s) => s,
                None => return,
            }
        } else {
            s
        };
        // A live message's small payload shares a receive-arena block; one from the retained
        // store (the only deliveries not encoded once per route) is already a copy of its own.
        let pinned = shared_encoding && session::pins_a_block(payload);
        let Some((c, _)) = send_now else {
            // A message the full queue will drop is not worth a copy.
            let message = if !pinned || s.queue_len() >= queue_max as usize {
                message
            } else {
                // Queued (the window is full, the outbox over its cap, or the client away), for
                // as long as that lasts: a queue must cost what its messages weigh, not whole
                // receive blocks, so the bytes are copied out of the arena (once per route,
                // shared by every subscriber that queues the message; messages from other
                // shards arrive with the origin's arena bytes and are copied here alike).
                let (topic, payload) = match &self.unpinned {
                    Some(copy) if shared_encoding => copy.clone(),
                    _ => {
                        let copy = (unpinned_string(topic), Bytes::copy_from_slice(payload));
                        if shared_encoding {
                            self.unpinned = Some(copy.clone());
                        }
                        copy
                    }
                };
                Message {
                    topic,
                    payload,
                    ..message
                }
            };
            if s.enqueue(message, queue_max) == Enqueued::Dropped {
                self.stats.dropped_queue_full += 1;
            }
            return;
        };
        // Straight into the window, sharing the bytes: a client that acks promptly frees them
        // within the turn or the next, and one that does not gets them copied by the timer
        // sweep (`Session::unpin_inflight`): no copy per message on the hot path.
        let packet_id = s.start_inflight(message, pinned);
        let parts = PublishParts {
            topic,
            payload,
            qos,
            retain,
            dup: false,
            packet_id,
            properties: properties.map(|p| &**p),
            topic_alias: None,
        };
        if self.outboxes().publish(c, &parts, None) == Written::TooLarge {
            // [MQTT-3.1.2-24] Not sent, and done with: it must not hold a place in the window.
            if let Some(s) = self.sessions.get_mut(session) {
                s.discard_inflight(packet_id);
            }
        }
    }

    /// Moves queued messages into the window while it has room and the outbox is under its
    /// cap: after an ack, a send completion, or a resume.
    pub(super) fn pump(&mut self, session: u32) {
        let now_secs = self.now_ms / 1000;
        let outbox_bytes_max = self.config.limits.outbox_bytes_max as usize;
        let inflight_max = self.config.limits.inflight_max;
        loop {
            let Some(s) = self.sessions.get_mut(session) else {
                return;
            };
            let Some(c) = s.conn else {
                return;
            };
            let Some(conn) = self.conns.get(c.slot, c.generation) else {
                return;
            };
            if conn.state != ConnState::Connected || conn.outbox_full(outbox_bytes_max) {
                return;
            }
            let Some(message) = s.dequeue(inflight_max) else {
                return;
            };
            if message.expired(now_secs) {
                // [MQTT-3.3.2-5] Expired before its delivery began: deleted.
                self.stats.dropped_expired += 1;
                continue;
            }
            // Queued messages were copied out of the receive blocks already.
            let packet_id = s.start_inflight(message, false);
            // Encoded straight from the copy the window keeps: no reference counts touched.
            let Some(flight) = s.newest_inflight() else {
                return;
            };
            let m = &flight.message;
            let properties = m.properties_at(now_secs);
            let parts = PublishParts {
                topic: &m.topic,
                payload: &m.payload,
                qos: m.qos,
                retain: m.retain,
                dup: false,
                packet_id,
                properties: properties.as_deref(),
                topic_alias: None,
            };
            let mut out = Outboxes {
                conns: &mut self.conns,
                pools: &mut self.pools,
                dirty: &mut self.dirty,
                stats: &mut self.stats,
            };
            match out.publish(c, &parts, None) {
                Written::Sent => {}
                // Over the client's Maximum Packet Size: done with, the next one goes.
                Written::TooLarge => {
                    s.discard_inflight(packet_id);
                }
                Written::NoConnection => return,
            }
        }
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
