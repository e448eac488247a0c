//! An application message's way out of a shard: the retained store, routing (dedupe,
//! subscription options, shared groups, Subscription Identifiers, the mesh for other shards),
//! and delivery to each session (QoS 0 into the outbox, QoS 1/2 into the window or the queue;
//! encoded once per route where it can be), then the queue pumped as acks free the window.
//! PUBLISH in is `handle.rs`; the encoding for one connection is `outgoing.rs`.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;

use crate::protocol::{LastWill, Properties, PublishParts, QoS, ReasonCode};
use crate::session::{self, Enqueued, Message};

use super::body::Body;
use super::conn::ConnState;
use super::held::HeldPacket;
use super::limits::LimitHit;
use super::outgoing::{Outboxes, Written};
use super::route::{Grant, Member};
use super::{route, Shard};

/// How one delivery of a message goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Delivery {
    /// One of a live route's deliveries: its bytes are encoded once per layout for every
    /// subscriber that takes them as they are (`SharedEncoding`), at QoS 1 and 2 with each
    /// one's packet id written in.
    Shared,
    /// A live route's only delivery: encoded straight into the outbox, with no copy through
    /// the shared encoding.
    Alone,
    /// A message from the retained store, for one subscriber: already a copy of its own.
    Retained,
}

/// A shard's replica of a retained message: 16 bytes, since every shard holds one per retained
/// topic. The message is one allocation, made by the shard it was published on and shared by
/// every replica (replaced or cleared, never changed); only the expiry is the replica's own,
/// counted by this shard's clock from the message's arrival here.
pub(super) struct Retained {
    message: Arc<Message>,
    expires_secs: u32,
}

impl Retained {
    /// A replica of `message` stored at `now_secs`.
    pub(super) fn new(message: Arc<Message>, now_secs: u64) -> Retained {
        let expires_secs = match message.properties.as_deref() {
            Some(properties) => session::expires_secs(properties, now_secs),
            None => session::NEVER,
        };
        Retained {
            message,
            expires_secs,
        }
    }

    /// The message as published: its `expires_secs` is `NEVER`, the replica's is the one that
    /// counts.
    pub(super) fn message(&self) -> &Message {
        &self.message
    }

    pub(super) fn expires_secs(&self) -> u32 {
        self.expires_secs
    }

    /// The message as this shard delivers it: with this replica's expiry.
    pub(super) fn to_message(&self) -> Message {
        Message {
            expires_secs: self.expires_secs,
            ..Message::clone(&self.message)
        }
    }
}

/// Retained messages deleted per timer tick at most, so a crowd expiring in one second is
/// spread over a few ticks instead of stalling one.
const RETAINED_EXPIRIES_PER_TICK_MAX: usize = 10_000;

impl Shard {
    /// Publishes the will of `session`'s client. It is that client's message: its session,
    /// while it lasts, is the publisher its No Local subscriptions skip [MQTT-3.8.3-3].
    pub(super) fn publish_will(&mut self, session: u32, will: LastWill) {
        let before = self.publisher;
        if self.sessions.get(session).is_some() {
            self.publisher = session;
        }
        self.publish_will_from(will);
        self.publisher = before;
    }

    fn publish_will_from(&mut self, will: LastWill) {
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
            &Body::of(&will.topic, &will.payload),
            will.qos,
            will.retain,
            properties.as_ref(),
        );
    }

    /// An application message from a client (or a will): retained store, then subscribers.
    /// Returns whether any subscriber (here or on another shard) was found.
    pub(super) fn publish(
        &mut self,
        body: &Body<'_>,
        qos: QoS,
        retain: bool,
        properties: Option<&Arc<Properties>>,
    ) -> bool {
        // Spec 4.7.2: `$SYS/` is the server's. A client's message there is dropped (as
        // mosquitto does): an MQTT 5 QoS 1/2 one is refused with 0x87 before it gets here
        // (`publish_refusal`), a 3.1.1 one acknowledged as one nobody matched.
        if super::sys::is_sys_topic(body.topic) {
            self.stats.dropped_sys_publish += 1;
            return false;
        }
        self.publish_as_server(body, qos, retain, properties)
    }

    /// `publish` without the client's restrictions: the broker's own `$SYS` messages.
    pub(super) fn publish_as_server(
        &mut self,
        body: &Body<'_>,
        qos: QoS,
        retain: bool,
        properties: Option<&Arc<Properties>>,
    ) -> bool {
        let (topic, payload) = (body.topic, body.payload);
        if retain {
            if payload.is_empty() {
                // [MQTT-3.3.1-10] An empty retained message deletes the retained one.
                self.retained.remove(topic);
                self.log_retained(topic, payload, qos, None);
                self.replicate_retained_clear(topic);
            } else if !self.retained_has_room(topic, payload, properties) {
                // Over retained_max / retained_bytes_max: delivered below, not retained. Only
                // what this shard accepts is replicated, so every shard holds the same set.
                self.limit_hit(LimitHit::Retained);
            } else {
                // [MQTT-3.3.1-5] Replaces the topic's retained message. Copied out of the
                // receive arena so a long-lived message does not pin a whole arena block.
                let message = Arc::new(Message {
                    topic: ByteString::from(topic),
                    payload: Bytes::copy_from_slice(payload),
                    qos,
                    retain: true,
                    properties: properties.cloned(),
                    expires_secs: session::NEVER,
                });
                self.log_retained(topic, payload, qos, properties);
                self.replicate_retained(&message);
                let replica = Retained::new(message, self.now_secs());
                self.retained.set(topic, replica);
            }
        }
        // [MQTT-3.3.1-9] Live delivery to existing subscriptions carries retain 0 (unless
        // they asked for Retain As Published).
        self.route(body, qos, retain, properties)
    }

    /// A PUBLISH the ACL does not let the client write: not retained, not delivered. MQTT 5
    /// says so with PUBACK/PUBREC 0x87 (at QoS 0 it is dropped); 3.1.1 has no code to say it,
    /// so as mosquitto does the message is dropped and still acknowledged, which keeps the
    /// client's flow going (its PUBREL then completes with a plain PUBCOMP).
    pub(super) fn refuse_unauthorized_publish(
        &mut self,
        slot: u32,
        generation: u32,
        v5: bool,
        qos: QoS,
        packet_id: u16,
    ) {
        let code = if v5 {
            ReasonCode::NotAuthorized
        } else {
            ReasonCode::Success
        };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.ack(slot, generation, HeldPacket::PubAck(packet_id, code)),
            QoS::ExactlyOnce => self.ack(slot, generation, HeldPacket::PubRec(packet_id, code)),
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
    pub(super) fn publish_refusal(
        &mut self,
        topic: &str,
        retain: bool,
        payload: &[u8],
        properties: Option<&Arc<Properties>>,
    ) -> Option<ReasonCode> {
        if super::sys::is_sys_topic(topic) {
            // Spec 4.7.2: `$SYS/` is the server's; dropped as `publish` drops it, and said so.
            self.stats.dropped_sys_publish += 1;
            return Some(ReasonCode::NotAuthorized);
        }
        if self.durable.as_deref().is_some_and(|d| d.failed()) {
            // The log failed: nothing the message would cause can be stored (issue 10).
            self.stats.persistence_refused += 1;
            return Some(ReasonCode::QuotaExceeded);
        }
        let stores = retain && !payload.is_empty();
        if stores && !self.retained_has_room(topic, payload, properties) {
            self.limit_hit(LimitHit::Retained);
            return Some(ReasonCode::QuotaExceeded);
        }
        None
    }

    /// Room to retain this message under `retained_max` and `retained_bytes_max`, as this
    /// shard's replica counts them (expired messages deleted first): a new topic needs a place
    /// and its bytes, a replacement only bytes beyond what it replaces. Properties weigh what
    /// they take on the wire.
    pub(super) fn retained_has_room(
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
            .map(|old| topic.len() + super::retained_weight(old.message()));
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

    /// `topic`'s hash for the tables of filters without wildcards, computed once per publish
    /// for the local subscriptions and (`with_interest`: several shards) the interest index;
    /// `None` when none of them holds such a filter, so a wildcard-only broker hashes nothing.
    pub(super) fn topic_hash(&self, topic: &str, with_interest: bool) -> Option<u64> {
        let needed = self.subscriptions.has_exact() || with_interest && self.interest.has_exact();
        needed.then(|| self.topic_hasher.hash(topic))
    }

    pub(super) fn route(
        &mut self,
        body: &Body<'_>,
        qos: QoS,
        retain: bool,
        properties: Option<&Arc<Properties>>,
    ) -> bool {
        if self.shard_count > 1 {
            return self.route_sharded(body, qos, retain, properties);
        }
        // Plain subscribers, then one member per matching `$share` group, sharing the route's
        // encoding (`route_local` starts it).
        let topic_hash = self.topic_hash(body.topic, false);
        let local = self.route_local(body, topic_hash, qos, retain, properties);
        if self.shared.is_empty() {
            return local;
        }
        let mut group_ids = std::mem::take(&mut self.group_ids);
        let mut picks = std::mem::take(&mut self.shared_picks);
        picks.clear();
        let sessions = &self.sessions;
        self.shared.pick_for_each(
            body.topic,
            &mut group_ids,
            |s| sessions.get(s).is_some_and(|s| s.conn.is_some()),
            |member| picks.push(member),
        );
        self.group_ids = group_ids;
        for &member in &picks {
            self.deliver_member(member, body, qos, retain, properties);
        }
        let matched = local || !picks.is_empty();
        self.shared_picks = picks;
        matched
    }

    /// This shard's plain subscribers of `topic` (shared groups are served by the one shard
    /// the publishing shard names, see `route_sharded`). `topic_hash`: from `topic_hash`.
    pub(super) fn route_local(
        &mut self,
        body: &Body<'_>,
        topic_hash: Option<u64>,
        qos: QoS,
        retain: bool,
        properties: Option<&Arc<Properties>>,
    ) -> bool {
        self.encoding.reset();
        self.unpinned = None;
        let mut matches = std::mem::take(&mut self.matches);
        matches.clear();
        let sessions = &self.sessions;
        let publisher = self.publisher;
        let mut own_no_local = false;
        let topic = body.topic;
        self.subscriptions.for_each_match(
            topic,
            topic_hash,
            |session| {
                sessions
                    .get(session)
                    .is_some_and(|s| s.has_subscription(topic))
            },
            |session, grant| {
                // The publisher's No Local subscriptions do not take its own message
                // [MQTT-3.8.3-3]: they lend an overlapping one neither QoS, Retain As
                // Published nor identifier.
                if session == publisher && grant.no_local() {
                    own_no_local = true;
                } else {
                    matches.push((session, *grant));
                }
            },
        );
        route::dedupe_matches(&mut matches);
        self.deliver_matches(&matches, body, qos, retain, properties);
        // A subscriber was there, though it is the publisher's own No Local one: the MQTT 5
        // ack says Success, not 0x10 No matching subscribers (as mosquitto answers).
        let matched = !matches.is_empty() || own_no_local;
        self.matches = matches;
        matched
    }

    /// One live delivery per match (the publisher's No Local subscriptions already left out,
    /// [MQTT-3.8.3-3]), with its subscription's options: the RETAIN flag kept under Retain As
    /// Published and cleared otherwise [MQTT-3.3.1-12], every matching Subscription
    /// Identifier [MQTT-3.3.4-3] [MQTT-3.3.4-4].
    pub(super) fn deliver_matches(
        &mut self,
        matches: &[(u32, Grant)],
        body: &Body<'_>,
        qos: QoS,
        retain: bool,
        properties: Option<&Arc<Properties>>,
    ) {
        let publisher = self.publisher;
        // Pairs and fan-in route each message to one subscriber: nothing to share.
        let delivery = if matches.len() == 1 {
            Delivery::Alone
        } else {
            Delivery::Shared
        };
        for &(session, grant) in matches {
            let retain = retain && grant.retain_as_published();
            let qos = qos.min(grant.qos());
            if grant.has_subscription_id() {
                let with_ids = self.subscription_ids.for_match(
                    body.topic,
                    session,
                    session == publisher,
                    properties,
                );
                self.deliver(session, body, qos, retain, delivery, with_ids.as_ref());
                continue;
            }
            self.deliver(session, body, qos, retain, delivery, properties);
        }
    }

    /// The delivery to the member a `$share` group picked: its own options, and its own
    /// Subscription Identifier only.
    pub(super) fn deliver_member(
        &mut self,
        member: Member,
        body: &Body<'_>,
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
            body,
            qos,
            retain,
            Delivery::Shared,
            properties,
        );
    }

    /// One message to one session: QoS 0 into the outbox (dropped when the outbox is full, see
    /// `Conn::outbox_full`, or the client is away), QoS 1/2 into the in-flight window, or the
    /// session queue when the window is full, the outbox is full, or the client is away.
    /// `delivery`: shared with the route's other subscribers, its only one, or from the store.
    // The message's parts go by reference, as the caller has them: owned handles are taken
    // only for a message kept (QoS 1/2).
    pub(super) fn deliver(
        &mut self,
        session: u32,
        body: &Body<'_>,
        qos: QoS,
        retain: bool,
        delivery: Delivery,
        properties: Option<&Arc<Properties>>,
    ) {
        let outbox_bytes_max = self.config.limits.outbox_bytes_max as usize;
        let inflight_max = self.config.limits.inflight_max;
        let queue_max = self.config.limits.offline_queue_max;
        let now_secs = self.now_secs();
        let (topic, payload) = (body.topic, body.payload);
        // Read access is checked per delivery, as mosquitto does: a wildcard subscription (or
        // a rule changed by a reload) can match a topic the client may not read.
        if self.acl.is_some() && !self.acl_may_read(session, topic) {
            return;
        }
        // A re-sent QoS 2 message a persistent session was given before a crash
        // (`exactly_once.rs`): not again.
        if self.flow_key.is_some() && qos != QoS::AtMostOnce && self.holds_flow_key(session) {
            self.stats.qos2_repeats_skipped += 1;
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
                (delivery == Delivery::Shared && !own_properties).then_some(&mut self.encoding),
            );
            return;
        }
        let message = Message {
            topic: body.topic_handle(),
            payload: body.payload_handle(),
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
        let mut log_tag = 0;
        let s = if self.durable.is_some() {
            let owed =
                !s.clean_session && (send_now.is_some() || s.queue_len() < queue_max as usize);
            if owed {
                log_tag = self.log_owed(session, topic, payload, qos, retain, properties);
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
        let from_route = delivery != Delivery::Retained;
        let pinned = from_route && session::pins_a_block(payload);
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
                    Some(copy) if from_route => copy.clone(),
                    _ => {
                        let copy = (ByteString::from(topic), Bytes::copy_from_slice(payload));
                        if from_route {
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
        if log_tag != 0 {
            s.tag_newest_inflight(log_tag);
        }
        if qos == QoS::ExactlyOnce && self.durable.is_some() {
            if let Some(record) = self.log_sent(session, packet_id) {
                self.hold_publish(c, session, packet_id, record);
                return;
            }
        }
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
        // Encoded once per route and layout where it can be, as at QoS 0.
        let own_properties = properties.is_some_and(|p| !p.subscription_identifiers.is_empty());
        let shared =
            (delivery == Delivery::Shared && !own_properties).then_some(&mut self.encoding);
        let mut out = Outboxes {
            conns: &mut self.conns,
            pools: &mut self.pools,
            dirty: &mut self.dirty,
            stats: &mut self.stats,
        };
        if out.publish(c, &parts, shared) == Written::TooLarge {
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
            // Nothing queued (the common case: every ack and send completion asks): done
            // before looking the connection up.
            if s.queue_len() == 0 {
                return;
            }
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
            let qos = message.qos;
            let packet_id = s.start_inflight(message, false);
            if qos == QoS::ExactlyOnce && self.durable.is_some() {
                if let Some(record) = self.log_sent(session, packet_id) {
                    self.hold_publish(c, session, packet_id, record);
                    continue;
                }
            }
            let Some(s) = self.sessions.get_mut(session) else {
                return;
            };
            // Encoded straight from the copy the window keeps: no reference counts touched.
            let Some(flight) = s.newest_inflight() else {
                return;
            };
            let mut out = Outboxes {
                conns: &mut self.conns,
                pools: &mut self.pools,
                dirty: &mut self.dirty,
                stats: &mut self.stats,
            };
            match out.publish_stored(c, &flight.message, packet_id, false, now_secs) {
                Written::Sent => {}
                // Over the client's Maximum Packet Size: done with, the next one goes.
                Written::TooLarge => {
                    s.discard_inflight(packet_id);
                }
                Written::NoConnection => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(properties: Option<Properties>) -> Arc<Message> {
        Arc::new(Message {
            topic: ByteString::from_static("a/b"),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: properties.map(Arc::new),
            expires_secs: session::NEVER,
        })
    }

    #[test]
    fn a_replica_counts_its_expiry_from_its_own_arrival_and_shares_the_message() {
        let expiring = message(Some(Properties {
            message_expiry_interval: Some(10),
            ..Properties::default()
        }));
        let early = Retained::new(Arc::clone(&expiring), 100);
        let late = Retained::new(Arc::clone(&expiring), 103);
        // Rounded up a second: never expired before its interval [MQTT-3.3.2-5].
        assert_eq!((early.expires_secs(), late.expires_secs()), (111, 114));
        assert_eq!(late.to_message().expires_secs, 114);
        assert!(
            std::ptr::eq(early.message(), late.message()),
            "one allocation"
        );
        assert_eq!(Arc::strong_count(&expiring), 3);
        let plain = Retained::new(message(None), 100);
        assert_eq!(plain.expires_secs(), session::NEVER);
        assert_eq!(plain.to_message(), Message::clone(plain.message()));
        assert_eq!(std::mem::size_of::<Retained>(), 16);
    }
}
