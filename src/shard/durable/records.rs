//! What each packet and each session change records in the shard's log, and the sessions
//! read back at start (`Durable`, `mod.rs`).

use std::num::NonZeroU32;

use bytestring::ByteString;

use crate::persist::{self, RestoredSession};
use crate::protocol::{LastWill, Properties, ProtocolVersion, QoS, SubscriptionOptions};
use crate::session::{InflightState, Message, Session};

use super::super::held::HeldPacket;
use super::super::Shard;
use super::DISK;

/// A subscription's options as the MQTT 5 options byte (how the log keeps them).
fn options_byte(granted: QoS, options: SubscriptionOptions) -> u8 {
    granted as u8
        | u8::from(options.no_local) << 2
        | u8::from(options.retain_as_published) << 3
        | (options.retain_handling & 3) << 4
}

fn options_from_byte(byte: u8) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::from_u8(byte & 3).unwrap_or(QoS::AtMostOnce),
        no_local: byte & 4 != 0,
        retain_as_published: byte & 8 != 0,
        retain_handling: (byte >> 4) & 3,
    }
}

impl Shard {
    /// Appends a record about `session` when it is persistent (a clean one is never
    /// recorded); with `wait`, the ack of the packet being handled waits for it.
    fn log_for_session(
        &mut self,
        session: u32,
        wait: bool,
        write: impl FnOnce(&mut Vec<u8>, &str),
    ) {
        self.log_for_session_as(session, wait, None, write);
    }

    /// `log_for_session`; with `unwritten`, the record is a QoS 1 message's of that
    /// `message_id`, which its PUBACK may void before it is written (`append_unwritten`).
    fn log_for_session_as(
        &mut self,
        session: u32,
        wait: bool,
        unwritten: Option<u32>,
        write: impl FnOnce(&mut Vec<u8>, &str),
    ) -> Option<u64> {
        let durable = self.durable.as_deref_mut()?;
        let s = self.sessions.get(session).filter(|s| !s.clean_session)?;
        let record = match unwritten {
            Some(id) => durable.append_unwritten(session, id, |out| write(out, &s.client_id)),
            None => durable.append(|out| write(out, &s.client_id)),
        };
        if wait && durable.acks_wait() {
            if durable.failed() {
                // Not stored: the ack never goes (back-pressure), counted every time.
                self.stats.persistence_refused += 1;
                self.held.record(usize::from(DISK), record as usize);
            } else if unwritten.is_some() {
                self.held.record_voidable(record as usize);
            } else {
                self.held.record(usize::from(DISK), record as usize);
            }
        }
        Some(record)
    }

    /// A persistent session was made, resumed, or given a new expiry. The CONNACK does not
    /// wait: whatever the client does next is recorded after it, in the same log.
    pub(in crate::shard) fn log_session(&mut self, session: u32, version: u8, expiry_secs: u32) {
        self.log_for_session(session, false, |out, client_id| {
            persist::append_session(out, client_id, version, expiry_secs, 0)
        });
    }

    /// `log_session` at a CONNECT, with the username the client connected with: after a
    /// restart the ACL's rules for the session are resolved with it, so the messages it is
    /// owed while away are queued as they were before.
    pub(in crate::shard) fn log_session_connected(
        &mut self,
        session: u32,
        version: u8,
        expiry_secs: u32,
        username: Option<&str>,
    ) {
        self.log_for_session(session, false, |out, client_id| {
            persist::append_session_as(out, client_id, version, expiry_secs, 0, username)
        });
    }

    /// The client of persistent session `session` left: its record again, with when (wall
    /// clock), so that a restart lets its expiry run on from there. Not waited for.
    pub(in crate::shard) fn log_session_left(&mut self, session: u32) {
        if self.durable.is_none() {
            return;
        }
        let Some(s) = self.sessions.get(session) else {
            return;
        };
        let (version, expiry_secs) = (s.version as u8, s.session_expiry_secs);
        let left_unix_ms = persist::unix_ns() / 1_000_000;
        self.log_for_session(session, false, |out, client_id| {
            persist::append_session(out, client_id, version, expiry_secs, left_unix_ms)
        });
    }

    /// The will of persistent session `session`'s new connection `(slot, generation)`, or its
    /// end when the CONNECT had none. The CONNACK does not wait, as for `log_session`.
    pub(in crate::shard) fn log_will(&mut self, session: u32, slot: u32, generation: u32) {
        let Some(durable) = self.durable.as_deref_mut() else {
            return;
        };
        let Some(s) = self.sessions.get(session).filter(|s| !s.clean_session) else {
            return;
        };
        let will = self.conns.get(slot, generation).and_then(|c| c.will());
        durable.append(|out| match will {
            Some(will) => persist::append_will(out, &s.client_id, will),
            None => persist::append_will_end(out, &s.client_id),
        });
    }

    /// The will of persistent session `session` was published or discarded.
    pub(in crate::shard) fn log_will_end(&mut self, session: u32) {
        self.log_for_session(session, false, |out, client_id| {
            persist::append_will_end(out, client_id)
        });
    }

    /// A persistent session ends (before it is made clean or removed).
    pub(in crate::shard) fn log_session_end(&mut self, session: u32) {
        self.log_for_session(session, false, |out, client_id| {
            persist::append_session_end(out, client_id)
        });
        if self.sessions.get(session).is_some_and(|s| !s.clean_session) {
            self.end_flow_keys(session);
        }
    }

    /// A persistent session's subscription: the SUBACK waits for it.
    pub(in crate::shard) fn log_subscribe(
        &mut self,
        session: u32,
        filter: &str,
        granted: QoS,
        options: SubscriptionOptions,
        subscription_id: Option<NonZeroU32>,
    ) {
        let options = options_byte(granted, options);
        let id = subscription_id.map_or(0, NonZeroU32::get);
        self.log_for_session(session, true, |out, client_id| {
            persist::append_subscribe(out, client_id, filter, options, id)
        });
    }

    /// The UNSUBACK waits for it.
    pub(in crate::shard) fn log_unsubscribe(&mut self, session: u32, filter: &str) {
        self.log_for_session(session, true, |out, client_id| {
            persist::append_unsubscribe(out, client_id, filter)
        });
    }

    /// The client acknowledged the message in flight as `packet_id` (PUBACK, or PUBREC for
    /// QoS 2): it is no longer owed. Nothing waits for this record: lost in a crash, the
    /// message is sent again after the restart (QoS 1 allows the duplicate).
    pub(in crate::shard) fn log_delivered(
        &mut self,
        session: u32,
        packet_id: u16,
        state: InflightState,
    ) {
        if self.durable.is_none() {
            return;
        }
        let Some((id, log_tag)) = self
            .sessions
            .get(session)
            .and_then(|s| s.inflight_entry(packet_id, state))
            .map(|f| {
                let m = &f.message;
                (persist::message_id(&m.topic, &m.payload), f.log_tag)
            })
        else {
            return;
        };
        let voided = state == InflightState::AwaitPubAck
            && self
                .durable
                .as_deref_mut()
                .is_some_and(|d| d.void_unwritten(session, id, log_tag));
        if voided {
            // Its record was not written yet: now it never is (`void_unwritten`).
            return;
        }
        self.log_for_session(session, false, |out, client_id| {
            persist::append_delivered(out, client_id, id)
        });
    }

    /// PUBREC for an outbound QoS 2 message of `session`: the message is no longer owed, the
    /// PUBREL for `packet_id` is. The PUBREL waits for the record (`on_pubrec`). A repeated
    /// PUBREC (the flow already past it) records nothing.
    pub(in crate::shard) fn log_released(&mut self, session: u32, packet_id: u16) {
        let Some(s) = self.sessions.get(session) else {
            return;
        };
        let message_id = match s.inflight_message(packet_id, InflightState::AwaitPubRec) {
            Some(m) => persist::message_id(&m.topic, &m.payload),
            None => return,
        };
        self.log_for_session(session, true, |out, client_id| {
            persist::append_released(out, client_id, packet_id, Some(message_id))
        });
    }

    /// The QoS 2 message `start_inflight` just put in persistent `session`'s window as
    /// `packet_id` goes out: its id is recorded, so that after a restart it is sent again under
    /// the same id [MQTT-4.4.0-1] and a receiver that has it does not deliver it twice. With
    /// `sync = "ack"` returns the record's number: the PUBLISH waits for it (`hold_publish`),
    /// as a receiver that got it before a crash took the record would get it again under
    /// another id. Not called when persistence is off.
    #[inline(never)]
    pub(in crate::shard) fn log_sent(&mut self, session: u32, packet_id: u16) -> Option<u64> {
        let durable = self.durable.as_deref_mut()?;
        let s = self.sessions.get(session).filter(|s| !s.clean_session)?;
        let m = &s
            .newest_inflight()
            .filter(|f| f.packet_id == packet_id && f.state == InflightState::AwaitPubRec)?
            .message;
        let message_id = persist::message_id(&m.topic, &m.payload);
        let record =
            durable.append(|out| persist::append_sent(out, &s.client_id, packet_id, message_id));
        (durable.acks_wait() && !durable.failed()).then_some(record)
    }

    /// PUBCOMP: the outbound QoS 2 flow is over. Nothing waits: lost in a crash, the PUBREL is
    /// sent again after the restart and the client answers it again (spec 4.3.3).
    pub(in crate::shard) fn log_completed(&mut self, session: u32, packet_id: u16) {
        self.log_for_session(session, false, |out, client_id| {
            persist::append_packet_id(out, persist::Kind::Completed, client_id, packet_id)
        });
    }

    /// The client's PUBREL released inbound QoS 2 id `packet_id` (`taken`: false); the
    /// PUBCOMP waits for the record.
    pub(in crate::shard) fn log_incoming_qos2(
        &mut self,
        session: u32,
        packet_id: u16,
        taken: bool,
    ) {
        let kind = if taken {
            persist::Kind::IncomingQos2
        } else {
            persist::Kind::IncomingReleased
        };
        self.log_for_session(session, true, |out, client_id| {
            persist::append_packet_id(out, kind, client_id, packet_id)
        });
    }

    /// A held `PubRecLogged` whose waits are over: records its id for its session (when
    /// persistent) and returns the plain PUBREC, with the wait for that record when acks wait
    /// for the disk. The record comes after everything the PUBLISH caused in this log, and
    /// after the other shards made theirs durable: a crash leaves either both or a repeat that
    /// is delivered again, never the id without the messages.
    pub(in crate::shard) fn log_pubrec(
        &mut self,
        packet: HeldPacket,
    ) -> (HeldPacket, Option<(u16, usize)>) {
        let HeldPacket::PubRecLogged {
            packet_id,
            code,
            session,
        } = packet
        else {
            return (packet, None);
        };
        let pubrec = HeldPacket::PubRec(packet_id, code);
        let Some(durable) = self.durable.as_deref_mut() else {
            return (pubrec, None);
        };
        let Some(s) = self.sessions.get(session).filter(|s| !s.clean_session) else {
            return (pubrec, None);
        };
        let record = durable.append(|out| {
            persist::append_packet_id(out, persist::Kind::IncomingQos2, &s.client_id, packet_id)
        });
        let wait = durable.acks_wait().then_some((DISK, record as usize));
        (pubrec, wait)
    }

    /// A QoS 1/2 message owed to persistent session `session` (queued, or going into its
    /// window): on disk before the publisher's ack (`sync = "ack"`). Out of line: `deliver`
    /// pays only the branch that calls it when persistence is off. Returns the `log_tag` of a
    /// QoS 1 message's record, for its window entry (0: none).
    #[inline(never)]
    pub(in crate::shard) fn log_owed(
        &mut self,
        session: u32,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        properties: Option<&std::sync::Arc<Properties>>,
    ) -> u32 {
        let unwritten = (qos == QoS::AtLeastOnce).then(|| persist::message_id(topic, payload));
        let record = self.log_for_session_as(session, true, unwritten, |out, client_id| {
            persist::append_message(
                out,
                client_id,
                topic,
                payload,
                qos,
                retain,
                properties.map(|p| &**p),
            )
        });
        if self.flow_key.is_some() {
            self.log_flow_key(session);
        }
        match (unwritten, record) {
            (Some(_), Some(record)) => record as u32,
            _ => 0,
        }
    }

    /// Wills of sessions that ended while the broker was down: the home shard of each client
    /// id publishes them on its first timer tick (as a will whose delay has passed, under no
    /// session: nothing of it is left to record).
    pub(in crate::shard) fn restore_wills_due(
        &mut self,
        wills: &[(Box<str>, persist::RetainedMessage)],
    ) {
        for (client_id, m) in wills {
            if crate::mesh::home_shard(client_id.as_bytes(), self.shard_count) != self.index {
                continue;
            }
            let will = LastWill {
                topic: m.topic.clone(),
                payload: m.payload.clone(),
                qos: m.qos,
                retain: m.retain,
                properties: m.properties.as_deref().cloned().unwrap_or_default().into(),
            };
            let no_session = super::super::conn::NO_SESSION;
            self.delayed_wills
                .push((self.now_ms, no_session, Box::new(will)));
        }
    }

    /// Sessions read back from the logs at start. Every shard gets them all: it keeps those
    /// whose client ids home on it (whatever the shard count was when they were written), and
    /// takes the others' subscriptions into its interest index at once, as their shards'
    /// announcements would, so no publish right after the start misses them.
    pub(in crate::shard) fn restore_sessions(&mut self, sessions: &[RestoredSession]) {
        let now_secs = self.now_secs();
        let queue_max = self.config.limits.offline_queue_max;
        for restored in sessions {
            let home = crate::mesh::home_shard(restored.client_id.as_bytes(), self.shard_count);
            if home != self.index {
                for (filter, _, _) in &restored.subscriptions {
                    self.apply_interest(filter, home, true);
                }
                continue;
            }
            let version = match restored.version {
                3 => ProtocolVersion::V3_1,
                5 => ProtocolVersion::V5,
                _ => ProtocolVersion::V3_1_1,
            };
            let mut session = Session::new(restored.client_id.clone(), false, version);
            session.session_expiry_secs = restored.expiry_secs;
            let index = self.sessions.insert(session);
            // With an ACL: its rules, as its client's CONNECT resolved them, so what it may
            // read is queued for it before it is back.
            let username = restored.username.as_deref();
            if let Some(rules) = self.resolve_acl(username, &restored.client_id) {
                self.keep_client_acl(index, username, rules);
            }
            // Counted against sessions_max like any persistent session, never refused.
            self.peers.admit_session(u32::MAX);
            for (filter, options, id) in &restored.subscriptions {
                let options = options_from_byte(*options);
                if let Some(s) = self.sessions.get_mut(index) {
                    s.subscribe(filter, options.qos);
                }
                let filter = ByteString::from(&**filter);
                self.insert_subscription(
                    index,
                    &filter,
                    options.qos,
                    options,
                    NonZeroU32::new(*id),
                );
            }
            let restored_message = |m: &persist::RetainedMessage| {
                Message {
                    topic: m.topic.clone(),
                    payload: m.payload.clone(),
                    qos: m.qos,
                    retain: m.retain,
                    properties: None,
                    expires_secs: crate::session::NEVER,
                }
                .with_properties(m.properties.as_ref(), now_secs)
            };
            if let Some(s) = self.sessions.get_mut(index) {
                // The flows that had begun keep their packet ids [MQTT-4.4.0-1]: the client
                // may hold them (`Session::restore_window`).
                let window = restored
                    .released
                    .iter()
                    .map(|&packet_id| (packet_id, None))
                    .chain(
                        restored
                            .inflight
                            .iter()
                            .map(|(packet_id, m)| (*packet_id, Some(restored_message(m)))),
                    )
                    .collect();
                s.restore_window(window);
                for m in &restored.messages {
                    s.enqueue(restored_message(m), queue_max);
                }
            }
            if let Some((delay_secs, m)) = &restored.will {
                // The restart ended its connection: due `delay_secs` from now, unless the
                // client is back first (`publish_due_wills`, `cancel_delayed_will`).
                let mut properties = m.properties.as_deref().cloned().unwrap_or_default();
                properties.will_delay_interval = Some(*delay_secs);
                let will = LastWill {
                    topic: m.topic.clone(),
                    payload: m.payload.clone(),
                    qos: m.qos,
                    retain: m.retain,
                    properties: properties.into(),
                };
                let due_ms = self.now_ms + u64::from(*delay_secs) * 1000;
                self.delayed_wills.push((due_ms, index, Box::new(will)));
            }
            if let Some(s) = self.sessions.get_mut(index) {
                for &packet_id in &restored.incoming_qos2 {
                    s.incoming_qos2_begin(packet_id, usize::MAX);
                }
            }
            self.restore_flow_keys(
                index,
                &restored.client_id,
                &restored.flow_keys,
                &restored.incoming_qos2,
            );
            self.queue_restored_expiry(index, restored.away_ms);
        }
    }
}
