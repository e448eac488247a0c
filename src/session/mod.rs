//! Session state per client id, owned by the client's shard: its subscriptions, the window of
//! QoS 1/2 messages in flight to the client, the bounded queue of messages waiting for that
//! window (or for the client to come back), and the inbound QoS 2 packet ids awaiting PUBREL.
//! A session outlives its connection when the client asked for clean session 0.
//!
//! Plain data and small state transitions, no I/O: the shard encodes and sends, this decides
//! what is owed to whom, so the window and queue rules are unit-tested without a socket.
//!
//! No packet costs work in proportion to what the session already holds (issue 7): the
//! subscriptions are a map keyed by filter (a short exact-size list while a session holds a
//! few, as most do, a hash table past that), and the inbound QoS 2 ids a sorted list searched
//! by halves, bounded by `limits.incoming_inflight_max`.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;

use crate::protocol::{Properties, ProtocolVersion, QoS};
use crate::topic::level_map::LevelMap;

/// One application message on its way to a subscriber. Topic and payload are reference counted:
/// queueing a message for many sessions copies no bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 properties that go out with it: `None` for a message without any, so a plain
    /// message allocates nothing for them; else one allocation per route, shared by every
    /// subscriber's copy.
    pub properties: Option<Arc<Properties>>,
    /// Shard clock second when its Message Expiry Interval runs out (`NEVER`: it has none);
    /// a queued message past it is dropped [MQTT-3.3.2-5], a sent one carries the rest.
    pub expires_secs: u32,
}

/// `Message::expires_secs` of a message without a Message Expiry Interval.
pub const NEVER: u32 = u32::MAX;

/// `Message::expires_secs` of a message with `properties` that arrives at `now_secs`.
pub fn expires_secs(properties: &Properties, now_secs: u64) -> u32 {
    let Some(interval_secs) = properties.message_expiry_interval else {
        return NEVER;
    };
    // The shard clock is in whole seconds, rounded down: one more second so a message never
    // expires before its interval (it may outlive it by under a second), [MQTT-3.3.2-5].
    let expires_secs = now_secs.saturating_add(u64::from(interval_secs) + 1);
    expires_secs.min(u64::from(NEVER - 1)) as u32
}

/// A payload shorter than this came in whole with one read, cut out of a shared receive-arena
/// block (64 KiB, `shard::ARENA_BLOCK`), and keeps the whole block alive while it is held: a
/// message kept for a while (queued, or unacknowledged in flight) is copied out when its
/// payload is this short, so it costs what it weighs. A longer payload arrived over several
/// reads into a buffer of its own, about its size, and is kept as it is.
pub const PINNING_PAYLOAD_MAX: usize = 64 << 10;

/// Whether a payload of a message delivered live (not from the retained store, which keeps
/// copies) shares a receive block it would pin.
pub fn pins_a_block(payload: &[u8]) -> bool {
    payload.len() < PINNING_PAYLOAD_MAX
}

impl Message {
    /// The same message in allocations of its own, sharing no receive buffer.
    pub fn unpinned(&self) -> Message {
        Message {
            topic: ByteString::from(&*self.topic),
            payload: Bytes::copy_from_slice(&self.payload),
            qos: self.qos,
            retain: self.retain,
            properties: self.properties.clone(),
            expires_secs: self.expires_secs,
        }
    }

    /// A message routed now with `properties`: kept with it, its expiry counted from now.
    pub fn with_properties(
        mut self,
        properties: Option<&Arc<Properties>>,
        now_secs: u64,
    ) -> Message {
        if let Some(properties) = properties {
            self.expires_secs = expires_secs(properties, now_secs);
            self.properties = Some(Arc::clone(properties));
        }
        self
    }

    /// `properties_at`, shared: the same allocation when there is no expiry to lower.
    pub fn shared_properties_at(&self, now_secs: u64) -> Option<Arc<Properties>> {
        match self.properties_at(now_secs)? {
            Cow::Borrowed(_) => self.properties.clone(),
            Cow::Owned(properties) => Some(Arc::new(properties)),
        }
    }

    /// Its Message Expiry Interval has run out at `now_secs`.
    pub fn expired(&self, now_secs: u64) -> bool {
        self.expires_secs != NEVER && now_secs >= u64::from(self.expires_secs)
    }

    /// The properties to send it with at `now_secs`: its own, with the Message Expiry
    /// Interval lowered to what is left of it [MQTT-3.3.2-6]; `None` without properties.
    pub fn properties_at(&self, now_secs: u64) -> Option<Cow<'_, Properties>> {
        let properties = self.properties.as_deref()?;
        if self.expires_secs == NEVER {
            return Some(Cow::Borrowed(properties));
        }
        // The expiry was rounded up a second (`with_properties`); what is left is told without
        // that second, so never more than it came with, and at least 1 while it is deliverable
        // (0 would tell the receiver it has run out).
        let left_secs = u64::from(self.expires_secs)
            .saturating_sub(now_secs + 1)
            .max(1);
        Some(Cow::Owned(Properties {
            message_expiry_interval: Some(left_secs as u32),
            ..properties.clone()
        }))
    }
}

/// Where an outbound QoS 1/2 message stands in its acknowledgement flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflightState {
    /// QoS 1 PUBLISH sent, PUBACK owed by the client.
    AwaitPubAck,
    /// QoS 2 PUBLISH sent, PUBREC owed.
    AwaitPubRec,
    /// PUBREL sent, PUBCOMP owed. The payload is no longer needed.
    AwaitPubComp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inflight {
    pub packet_id: u16,
    pub state: InflightState,
    /// The message still shares the receive block it came in (see `pins_a_block`): it went
    /// straight into the window, and the client has not acknowledged it yet.
    pub pinned: bool,
    /// With persistence on, the low 32 bits of the number of the message's log record while
    /// its PUBACK may still void it (`shard/durable/`, `void_unwritten`); 0: none. In the
    /// struct's padding: the window grows by nothing.
    pub log_tag: u32,
    pub message: Message,
}

const _: () = assert!(std::mem::size_of::<Inflight>() <= 88);

/// Which connection a session is attached to: the slot and its generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRef {
    pub slot: u32,
    pub generation: u32,
}

/// What an inbound QoS 2 PUBLISH's packet id means for the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncomingQos2 {
    /// A new message: deliver it, and remember the id until PUBREL.
    New,
    /// A re-send of one already delivered and not yet released: acknowledge, do not deliver.
    Repeat,
    /// The client already holds as many ids unreleased as it may: the id was not taken.
    OverLimit,
}

/// What happened to a message offered to a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// The queue was at `offline_queue_max`; the message was dropped and counted.
    Dropped,
}

/// The QoS 1/2 state of a session, allocated on its first QoS 1/2 message and freed by `trim`
/// once everything is acknowledged: most idle sessions never need it.
#[derive(Debug, Default)]
struct Flows {
    inflight: VecDeque<Inflight>,
    queue: VecDeque<Message>,
    /// Inbound QoS 2 packet ids delivered but not yet released by PUBREL, sorted: a re-sent
    /// PUBLISH with one of these ids is acknowledged again but not delivered again (exactly
    /// once). At most `incoming_inflight_max` of them, so an insert moves at most that many.
    incoming_qos2: Vec<u16>,
    /// The last packet id handed out (0 before the first).
    last_packet_id: u16,
    /// Messages in `inflight` with `pinned` set: all among the newest, since `unpin_inflight`
    /// leaves none behind it.
    pinned_count: u32,
}

impl Flows {
    fn is_idle(&self) -> bool {
        self.inflight.is_empty() && self.queue.is_empty() && self.incoming_qos2.is_empty()
    }

    fn position(&self, packet_id: u16, state: InflightState) -> Option<usize> {
        self.inflight
            .iter()
            .position(|f| f.packet_id == packet_id && f.state == state)
    }
}

#[derive(Debug)]
pub struct Session {
    /// Its own allocation, never a slice of a receive buffer.
    pub client_id: Box<str>,
    /// 3.1.1 clean session / 5.0 clean start. A clean session ends with its connection.
    pub clean_session: bool,
    pub version: ProtocolVersion,
    pub conn: Option<ConnRef>,
    /// Every filter this session holds (shared ones in their `$share/group/filter` form) with
    /// the QoS granted, so a clean-up removes exactly what was inserted into the tries. Keyed
    /// by filter: a SUBSCRIBE with many filters costs one lookup each, not a scan each. A
    /// filter up to 22 bytes is stored inline, with no allocation of its own.
    subscriptions: LevelMap<QoS>,
    flows: Option<Box<Flows>>,
    /// Shard clock (seconds) when the connection went: a persistent session away for
    /// `limits.persistent_session_expiry_secs` from then is removed.
    pub detached_secs: u32,
    /// MQTT 5 room (not used under 3.1.1): session expiry and the client's receive maximum.
    pub session_expiry_secs: u32,
    pub receive_maximum: u16,
}

// The session's share of the 512 B budget per idle, subscribed connection (DESIGN.md).
// 64 since issue 12: the write-only drop count went (the shard counts drops, `Enqueued`).
const _: () = assert!(std::mem::size_of::<Session>() <= 64);

impl Session {
    pub fn new(client_id: Box<str>, clean_session: bool, version: ProtocolVersion) -> Session {
        Session {
            client_id,
            clean_session,
            version,
            conn: None,
            subscriptions: LevelMap::new(),
            flows: None,
            detached_secs: 0,
            session_expiry_secs: 0,
            receive_maximum: u16::MAX,
        }
    }

    /// Adds or replaces [MQTT-3.8.4-3] the subscription to `filter`; true when it is new.
    pub fn subscribe(&mut self, filter: &str, granted: QoS) -> bool {
        let mut new = false;
        let qos = self.subscriptions.get_or_insert_with(filter, || {
            new = true;
            granted
        });
        *qos = granted;
        new
    }

    /// Removes the subscription to `filter`; true when there was one.
    pub fn unsubscribe(&mut self, filter: &str) -> bool {
        self.subscriptions.remove(filter).is_some()
    }

    pub fn has_subscription(&self, filter: &str) -> bool {
        self.subscriptions.get(filter).is_some()
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Every filter held, in no particular order.
    pub fn subscription_filters(&self) -> impl Iterator<Item = &str> {
        // Filters went in as `&str`: the bytes are UTF-8.
        self.subscriptions
            .labeled()
            .map(|(filter, _)| std::str::from_utf8(filter).unwrap_or_default())
    }

    /// Takes every subscription out (their filters into `filters`), leaving none.
    pub fn take_subscriptions(&mut self, filters: &mut Vec<Box<str>>) {
        filters.extend(self.subscription_filters().map(Box::from));
        self.subscriptions = LevelMap::new();
    }

    fn flows(&mut self) -> &mut Flows {
        self.flows.get_or_insert_with(Box::default)
    }

    /// Frees the QoS 1/2 state once nothing is in flight, queued or awaiting PUBREL. Called
    /// from the shard's coarse timer, not per ack, so a busy flow keeps its buffers.
    pub fn trim(&mut self) {
        if self.flows.as_ref().is_some_and(|f| f.is_idle()) {
            self.flows = None;
        }
    }

    /// Can one more QoS 1/2 message go out now? The window is the smaller of the broker's
    /// `inflight_max` and the client's receive maximum (MQTT 5; 65535 under 3.1.1).
    pub fn window_open(&self, inflight_max: u16) -> bool {
        self.inflight_len() < inflight_max.min(self.receive_maximum) as usize
    }

    pub fn inflight_len(&self) -> usize {
        self.flows.as_ref().map_or(0, |f| f.inflight.len())
    }

    pub fn queue_len(&self) -> usize {
        self.flows.as_ref().map_or(0, |f| f.queue.len())
    }

    pub fn inflight(&self) -> impl Iterator<Item = &Inflight> {
        self.flows.iter().flat_map(|f| f.inflight.iter())
    }

    /// The message `start_inflight` just put in the window.
    pub fn newest_inflight(&self) -> Option<&Inflight> {
        self.flows.as_ref()?.inflight.back()
    }

    /// Parks a message until the window opens or the client comes back. Bounded: over
    /// `queue_max` the new message is dropped (the oldest ones keep their order).
    pub fn enqueue(&mut self, message: Message, queue_max: u32) -> Enqueued {
        if self.queue_len() >= queue_max as usize {
            return Enqueued::Dropped;
        }
        self.flows().queue.push_back(message);
        Enqueued::Queued
    }

    /// The oldest waiting message, if the window has room for it.
    pub fn dequeue(&mut self, inflight_max: u16) -> Option<Message> {
        if !self.window_open(inflight_max) {
            return None;
        }
        self.flows.as_mut()?.queue.pop_front()
    }

    /// Puts a QoS 1/2 message in flight and returns the packet id to send it with. `pinned`:
    /// its bytes share a receive block (`unpin_inflight` copies them if it stays).
    pub fn start_inflight(&mut self, message: Message, pinned: bool) -> u16 {
        debug_assert!(message.qos != QoS::AtMostOnce, "QoS 0 has no flow");
        let flows = self.flows();
        let packet_id = allocate_packet_id(flows);
        let state = match message.qos {
            QoS::ExactlyOnce => InflightState::AwaitPubRec,
            _ => InflightState::AwaitPubAck,
        };
        flows.pinned_count += u32::from(pinned);
        flows.inflight.push_back(Inflight {
            packet_id,
            state,
            pinned,
            log_tag: 0,
            message,
        });
        packet_id
    }

    /// Tags the message `start_inflight` just put in the window with its log record
    /// (`Inflight::log_tag`).
    pub fn tag_newest_inflight(&mut self, log_tag: u32) {
        if let Some(flight) = self.flows.as_mut().and_then(|f| f.inflight.back_mut()) {
            flight.log_tag = log_tag;
        }
    }

    /// The window's entry for `packet_id` in `state`.
    pub fn inflight_entry(&self, packet_id: u16, state: InflightState) -> Option<&Inflight> {
        let flows = self.flows.as_deref()?;
        let index = flows.position(packet_id, state)?;
        Some(&flows.inflight[index])
    }

    /// Copies the messages in flight that still share a receive block into allocations of
    /// their own. The window holds a message until the client acknowledges it; a client that
    /// acks promptly never gets here (no copy per message on the hot path), one that does not
    /// would otherwise keep up to `inflight_max` whole blocks alive. Called by the shard's
    /// timer sweep (so a message in flight across a tick is copied once) and when the client
    /// goes away.
    pub fn unpin_inflight(&mut self) {
        let Some(flows) = self.flows.as_mut() else {
            return;
        };
        // Newest first, and only as far as the pinned ones go: the work is bounded by the
        // messages put in flight since the last call, not by the window.
        for flight in flows.inflight.iter_mut().rev() {
            if flows.pinned_count == 0 {
                break;
            }
            if flight.pinned {
                flight.message = flight.message.unpinned();
                flight.pinned = false;
                flows.pinned_count -= 1;
            }
        }
        debug_assert_eq!(flows.pinned_count, 0);
    }

    /// The message in flight with `packet_id` is done with without an ack: it could not be
    /// sent (over an MQTT 5 client's Maximum Packet Size), which counts as delivered.
    pub fn discard_inflight(&mut self, packet_id: u16) {
        let Some(flows) = self.flows.as_mut() else {
            return;
        };
        if let Some(index) = flows
            .inflight
            .iter()
            .rposition(|f| f.packet_id == packet_id)
        {
            if flows.inflight.remove(index).is_some_and(|f| f.pinned) {
                flows.pinned_count -= 1;
            }
        }
    }

    /// The message in flight with `packet_id` awaiting `state`, if there is one.
    pub fn inflight_message(&self, packet_id: u16, state: InflightState) -> Option<&Message> {
        self.inflight_entry(packet_id, state).map(|f| &f.message)
    }

    /// PUBACK for a QoS 1 message: its flow is complete. False for an unknown id.
    pub fn on_puback(&mut self, packet_id: u16) -> bool {
        let Some(flows) = self.flows.as_mut() else {
            return false;
        };
        match flows.position(packet_id, InflightState::AwaitPubAck) {
            Some(index) => {
                // Acks mostly come in order: the oldest goes without `remove`'s shifting.
                let done = if index == 0 {
                    flows.inflight.pop_front()
                } else {
                    flows.inflight.remove(index)
                };
                if done.is_some_and(|f| f.pinned) {
                    flows.pinned_count -= 1;
                }
                true
            }
            None => false,
        }
    }

    /// PUBREC for a QoS 2 message: the client has it; PUBREL is owed (also when the PUBREC is
    /// a repeat). Topic and payload are released: only the packet id matters from here on.
    pub fn on_pubrec(&mut self, packet_id: u16) -> bool {
        let Some(flows) = self.flows.as_mut() else {
            return false;
        };
        if let Some(index) = flows.position(packet_id, InflightState::AwaitPubRec) {
            let flight = &mut flows.inflight[index];
            flight.state = InflightState::AwaitPubComp;
            // Only the packet id is needed from here on (a resend is a PUBREL).
            flight.message.payload = Bytes::new();
            flight.message.topic = ByteString::new();
            if flight.pinned {
                flight.pinned = false;
                flows.pinned_count -= 1;
            }
            return true;
        }
        flows
            .position(packet_id, InflightState::AwaitPubComp)
            .is_some()
    }

    /// MQTT 5 PUBREC with a failure code (0x80 or above): the client refused the message, the
    /// flow ends without PUBREL and the id is free again (spec 4.3.3). False for an unknown id.
    pub fn on_pubrec_refused(&mut self, packet_id: u16) -> bool {
        let Some(flows) = self.flows.as_mut() else {
            return false;
        };
        match flows.position(packet_id, InflightState::AwaitPubRec) {
            Some(index) => {
                if flows.inflight.remove(index).is_some_and(|f| f.pinned) {
                    flows.pinned_count -= 1;
                }
                true
            }
            None => false,
        }
    }

    /// PUBCOMP: the QoS 2 flow is complete. False for an unknown id.
    pub fn on_pubcomp(&mut self, packet_id: u16) -> bool {
        let Some(flows) = self.flows.as_mut() else {
            return false;
        };
        match flows.position(packet_id, InflightState::AwaitPubComp) {
            Some(index) => {
                flows.inflight.remove(index);
                true
            }
            None => false,
        }
    }

    /// An inbound QoS 2 PUBLISH: new (deliver it), a re-send of one already delivered and not
    /// yet released [MQTT-4.3.3-2], or one past `ids_max` ids held at once (`limits.incoming_inflight_max`).
    pub fn incoming_qos2_begin(&mut self, packet_id: u16, ids_max: usize) -> IncomingQos2 {
        let flows = self.flows();
        match flows.incoming_qos2.binary_search(&packet_id) {
            Ok(_) => IncomingQos2::Repeat,
            Err(_) if flows.incoming_qos2.len() >= ids_max => IncomingQos2::OverLimit,
            Err(index) => {
                flows.incoming_qos2.insert(index, packet_id);
                IncomingQos2::New
            }
        }
    }

    /// PUBREL: the client may reuse the id; forget it. False when the id was not held (the
    /// PUBREL of a flow already completed, or of none: MQTT 5 answers PUBCOMP 0x92).
    pub fn incoming_qos2_release(&mut self, packet_id: u16) -> bool {
        let Some(flows) = self.flows.as_mut() else {
            return false;
        };
        match flows.incoming_qos2.binary_search(&packet_id) {
            Ok(index) => {
                flows.incoming_qos2.remove(index);
                true
            }
            Err(_) => false,
        }
    }

    /// Restored from the persistence log: outbound QoS 2 flows that had begun, each under
    /// the packet id it went out with: `Some(message)` awaiting PUBREC (a resume sends it
    /// again with DUP=1, `resend_inflight`), `None` awaiting PUBCOMP (its PUBREL is sent
    /// again) [MQTT-4.4.0-1]. The window takes them in ascending packet id order, and new ids
    /// go after the highest, so none is handed out again while its flow is open.
    pub fn restore_window(&mut self, mut flights: Vec<(u16, Option<Message>)>) {
        if flights.is_empty() {
            return;
        }
        flights.sort_by_key(|&(packet_id, _)| packet_id);
        // One flow per id: a log never holds two, but a repeat must not take two places.
        flights.dedup_by_key(|&mut (packet_id, _)| packet_id);
        let flows = self.flows();
        // `allocate_packet_id` counts on the window's ids rising from its oldest one.
        flows.last_packet_id = flights.last().map_or(0, |&(packet_id, _)| packet_id);
        for (packet_id, message) in flights {
            let (state, message) = match message {
                Some(message) => (InflightState::AwaitPubRec, message),
                None => (
                    InflightState::AwaitPubComp,
                    Message {
                        topic: ByteString::new(),
                        payload: Bytes::new(),
                        qos: QoS::ExactlyOnce,
                        retain: false,
                        properties: None,
                        expires_secs: NEVER,
                    },
                ),
            };
            flows.inflight.push_back(Inflight {
                packet_id,
                state,
                pinned: false,
                log_tag: 0,
                message,
            });
        }
    }

    /// Inbound QoS 2 ids awaiting PUBREL.
    pub fn incoming_qos2_len(&self) -> usize {
        self.flows.as_ref().map_or(0, |f| f.incoming_qos2.len())
    }

    /// Clean session 1 on reconnect: everything the old session held goes.
    pub fn reset(&mut self, clean_session: bool, version: ProtocolVersion) {
        let client_id = std::mem::take(&mut self.client_id);
        let conn = self.conn;
        *self = Session::new(client_id, clean_session, version);
        self.conn = conn;
    }
}

/// Packet ids run 1..=65535, skipping ones still in flight [MQTT-2.3.1-4]. The window (at
/// most 65535) guarantees a free one.
///
/// Ids are handed out in order and the window keeps that order, so the ids in flight all lie
/// on the cyclic stretch from the oldest one to the last one handed out: the next id can only
/// be taken when it is the oldest one's (the stretch has come full circle). Only then is the
/// window searched; otherwise this is O(1).
fn allocate_packet_id(flows: &mut Flows) -> u16 {
    let next = if flows.last_packet_id == u16::MAX {
        1
    } else {
        flows.last_packet_id + 1
    };
    if flows
        .inflight
        .front()
        .is_none_or(|oldest| oldest.packet_id != next)
    {
        flows.last_packet_id = next;
        return next;
    }
    loop {
        let packet_id = if flows.last_packet_id == u16::MAX {
            1
        } else {
            flows.last_packet_id + 1
        };
        flows.last_packet_id = packet_id;
        if !flows.inflight.iter().any(|f| f.packet_id == packet_id) {
            return packet_id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(qos: QoS, n: u8) -> Message {
        Message {
            topic: ByteString::from_static("a/b"),
            payload: Bytes::from(vec![n]),
            qos,
            retain: false,
            properties: None,
            expires_secs: NEVER,
        }
    }

    /// Issue 12: every subscriber's copy of a routed message shares one properties
    /// allocation, and a retained one is re-sent with it unless its expiry must be lowered.
    #[test]
    fn messages_of_one_route_share_their_properties() {
        let properties = Arc::new(Properties {
            content_type: Some("text/plain".into()),
            ..Properties::default()
        });
        let one = message(QoS::AtLeastOnce, 1).with_properties(Some(&properties), 10);
        let two = message(QoS::AtLeastOnce, 2).with_properties(Some(&properties), 10);
        assert!(Arc::ptr_eq(one.properties.as_ref().unwrap(), &properties));
        assert!(Arc::ptr_eq(two.properties.as_ref().unwrap(), &properties));
        let again = one.shared_properties_at(20).unwrap();
        assert!(Arc::ptr_eq(&again, &properties));

        let expiring = Arc::new(Properties {
            message_expiry_interval: Some(30),
            ..Properties::default()
        });
        let retained = message(QoS::AtMostOnce, 3).with_properties(Some(&expiring), 10);
        // Routed in second 10 (10.0 to 10.999): in second 25 it has waited 14 to 16 s.
        let left = retained.shared_properties_at(25).unwrap();
        assert_eq!(left.message_expiry_interval, Some(15));
        assert_eq!(expiring.message_expiry_interval, Some(30));
        // Never more than it came with [MQTT-3.3.2-6], never expired early [MQTT-3.3.2-5]: a
        // 1 s message routed at 10.999 is still there in second 11 (told 1 s left) and gone
        // from second 12.
        let left = retained.shared_properties_at(10).unwrap();
        assert_eq!(left.message_expiry_interval, Some(30));
        let short = Arc::new(Properties {
            message_expiry_interval: Some(1),
            ..Properties::default()
        });
        let short = message(QoS::AtLeastOnce, 5).with_properties(Some(&short), 10);
        assert!(!short.expired(11));
        let told = short.shared_properties_at(11).unwrap();
        assert_eq!(told.message_expiry_interval, Some(1));
        assert!(short.expired(12));
        assert!(message(QoS::AtMostOnce, 4)
            .shared_properties_at(0)
            .is_none());
    }

    #[test]
    fn window_limits_inflight_and_queue_keeps_order() {
        let mut session = Session::new("c".into(), false, ProtocolVersion::V3_1_1);
        for n in 0..5 {
            assert_eq!(
                session.enqueue(message(QoS::AtLeastOnce, n), 100),
                Enqueued::Queued
            );
        }
        let mut sent = Vec::new();
        while let Some(m) = session.dequeue(2) {
            sent.push(session.start_inflight(m, false));
        }
        assert_eq!(sent, vec![1, 2]);
        assert!(!session.window_open(2));
        assert_eq!(session.queue_len(), 3);
        assert!(session.on_puback(1));
        assert!(
            !session.on_puback(1),
            "a second PUBACK for the same id is unknown"
        );
        let next = session.dequeue(2).expect("window reopened");
        assert_eq!(next.payload[0], 2, "queue order kept");
    }

    #[test]
    fn queue_is_bounded_and_says_what_it_dropped() {
        let mut session = Session::new("c".into(), false, ProtocolVersion::V3_1_1);
        assert_eq!(
            session.enqueue(message(QoS::AtLeastOnce, 0), 2),
            Enqueued::Queued
        );
        assert_eq!(
            session.enqueue(message(QoS::AtLeastOnce, 1), 2),
            Enqueued::Queued
        );
        assert_eq!(
            session.enqueue(message(QoS::AtLeastOnce, 2), 2),
            Enqueued::Dropped
        );
        assert_eq!(session.queue_len(), 2);
    }

    #[test]
    fn qos2_flow_goes_rec_then_comp() {
        let mut session = Session::new("c".into(), false, ProtocolVersion::V3_1_1);
        let id = session.start_inflight(message(QoS::ExactlyOnce, 7), false);
        assert!(
            !session.on_puback(id),
            "PUBACK does not complete a QoS 2 flow"
        );
        assert!(!session.on_pubcomp(id), "PUBCOMP before PUBREC is unknown");
        assert!(session.on_pubrec(id));
        assert!(
            session.on_pubrec(id),
            "a repeated PUBREC still owes a PUBREL"
        );
        assert_eq!(
            session.inflight().next().map(|f| f.state),
            Some(InflightState::AwaitPubComp)
        );
        assert!(session
            .inflight()
            .next()
            .is_some_and(|f| f.message.payload.is_empty()));
        assert!(session.on_pubcomp(id));
        assert_eq!(session.inflight_len(), 0);
    }

    #[test]
    fn a_restored_window_keeps_its_ids_and_new_ones_go_after_them() {
        let mut session = Session::new("c".into(), false, ProtocolVersion::V3_1_1);
        // As a restart hands them over: PUBRELs owed and messages awaiting PUBREC, any order.
        session.restore_window(vec![
            (9, Some(message(QoS::ExactlyOnce, 9))),
            (4, None),
            (7, Some(message(QoS::ExactlyOnce, 7))),
        ]);
        let window: Vec<(u16, InflightState)> =
            session.inflight().map(|f| (f.packet_id, f.state)).collect();
        assert_eq!(
            window,
            [
                (4, InflightState::AwaitPubComp),
                (7, InflightState::AwaitPubRec),
                (9, InflightState::AwaitPubRec),
            ]
        );
        assert_eq!(
            session.inflight_message(7, InflightState::AwaitPubRec),
            Some(&message(QoS::ExactlyOnce, 7))
        );
        let new = session.start_inflight(message(QoS::ExactlyOnce, 1), false);
        assert_eq!(new, 10, "after the highest restored id");

        // Ids that had wrapped: new ones go on from the highest and skip the restored ones
        // still open when they come round.
        let mut session = Session::new("c".into(), false, ProtocolVersion::V3_1_1);
        session.restore_window(vec![(2, None), (u16::MAX - 1, None)]);
        let ids: Vec<u16> = (0..3)
            .map(|n| session.start_inflight(message(QoS::AtLeastOnce, n), false))
            .collect();
        assert_eq!(ids, [u16::MAX, 1, 3]);
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap() {
        let mut session = Session::new("c".into(), false, ProtocolVersion::V3_1_1);
        session.flows().last_packet_id = u16::MAX - 1;
        let a = session.start_inflight(message(QoS::AtLeastOnce, 0), false);
        assert_eq!(a, u16::MAX);
        let b = session.start_inflight(message(QoS::AtLeastOnce, 0), false);
        assert_eq!(b, 1, "0 is never a packet id");
        session.flows().last_packet_id = u16::MAX - 1;
        let c = session.start_inflight(message(QoS::AtLeastOnce, 0), false);
        assert_eq!(c, 2, "ids in flight are skipped");
    }

    #[test]
    fn idle_flows_are_freed_by_trim_only_when_idle() {
        let mut session = Session::new("c".into(), false, ProtocolVersion::V3_1_1);
        assert!(
            session.flows.is_none(),
            "a new session holds no QoS 1/2 state"
        );
        let id = session.start_inflight(message(QoS::AtLeastOnce, 0), false);
        session.trim();
        assert!(session.flows.is_some(), "a message in flight keeps it");
        assert!(session.on_puback(id));
        assert_eq!(session.incoming_qos2_begin(4, 10), IncomingQos2::New);
        session.trim();
        assert!(session.flows.is_some(), "an id awaiting PUBREL keeps it");
        session.incoming_qos2_release(4);
        session.trim();
        assert!(session.flows.is_none());
        assert!(
            !session.on_puback(id),
            "acks after a trim are simply unknown"
        );
        assert_eq!(session.dequeue(10), None);
    }

    #[test]
    fn packet_ids_never_collide_with_the_window_under_out_of_order_acks() {
        // Stress the O(1) path: random acks, ids wrapping many times, a window of 300.
        let mut session = Session::new("c".into(), false, ProtocolVersion::V3_1_1);
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300_000 {
            if session.inflight_len() < 300 {
                let id = session.start_inflight(message(QoS::AtLeastOnce, 0), false);
                assert_ne!(id, 0);
                let uses = session.inflight().filter(|f| f.packet_id == id).count();
                assert_eq!(uses, 1, "packet id {id} handed out twice");
            } else {
                let ids: Vec<u16> = session.inflight().map(|f| f.packet_id).collect();
                // Mostly the oldest, sometimes any: acks arrive out of order.
                let index = if rand() % 4 == 0 {
                    rand() as usize % ids.len()
                } else {
                    0
                };
                assert!(session.on_puback(ids[index]));
            }
        }
    }

    /// True when `part` lies inside `block`'s bytes.
    fn shares(part: &[u8], block: &[u8]) -> bool {
        let range = block.as_ptr_range();
        range.contains(&part.as_ptr())
    }

    #[test]
    fn issue_7_messages_kept_in_flight_stop_sharing_their_receive_block() {
        // A receive block with one small message in it, as the shard's arena cuts them.
        let block = Bytes::from(vec![b'x'; 64 << 10]);
        let message = Message {
            topic: ByteString::try_from(block.slice(0..3)).expect("UTF-8"),
            payload: block.slice(100..116),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            expires_secs: NEVER,
        };
        assert!(pins_a_block(&message.payload));
        let mut session = Session::new("c".into(), false, ProtocolVersion::V3_1_1);
        session.start_inflight(message.clone(), true);
        let qos2 = Message {
            qos: QoS::ExactlyOnce,
            ..message.clone()
        };
        let qos2_id = session.start_inflight(qos2, true);
        let flight = session.inflight().next().expect("in flight");
        assert!(
            shares(&flight.message.payload, &block),
            "shared until unpinned"
        );
        session.unpin_inflight();
        for flight in session.inflight() {
            assert!(!flight.pinned);
            assert!(!shares(&flight.message.payload, &block));
            assert!(!shares(flight.message.topic.as_bytes(), &block));
            assert_eq!(flight.message.payload, message.payload, "same bytes");
            assert_eq!(flight.message.topic, message.topic);
        }
        // PUBREC: the rest of the QoS 2 flow needs only the packet id.
        let fresh = session.start_inflight(message, true);
        assert!(session.on_pubrec(qos2_id));
        assert!(session.on_puback(fresh));
        let awaiting = session.inflight().find(|f| f.packet_id == qos2_id).unwrap();
        assert!(awaiting.message.topic.is_empty() && awaiting.message.payload.is_empty());
    }

    #[test]
    fn pinned_count_follows_acks_in_any_order() {
        let mut session = Session::new("c".into(), false, ProtocolVersion::V3_1_1);
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for step in 0..20_000 {
            match rand() % 8 {
                0..=3 if session.inflight_len() < 50 => {
                    let qos = if rand() % 2 == 0 {
                        QoS::AtLeastOnce
                    } else {
                        QoS::ExactlyOnce
                    };
                    session.start_inflight(message(qos, 0), rand() % 2 == 0);
                }
                6 => session.unpin_inflight(),
                _ => {
                    let ids: Vec<(u16, InflightState)> =
                        session.inflight().map(|f| (f.packet_id, f.state)).collect();
                    if let Some(&(id, state)) = ids.get(rand() as usize % ids.len().max(1)) {
                        match state {
                            InflightState::AwaitPubAck => assert!(session.on_puback(id)),
                            InflightState::AwaitPubRec => assert!(session.on_pubrec(id)),
                            InflightState::AwaitPubComp => assert!(session.on_pubcomp(id)),
                        }
                    }
                }
            }
            let pinned = session.inflight().filter(|f| f.pinned).count() as u32;
            let counted = session.flows.as_ref().map_or(0, |f| f.pinned_count);
            assert_eq!(counted, pinned, "step {step}");
        }
    }

    #[test]
    fn issue_7_a_queued_message_copy_shares_nothing() {
        let block = Bytes::from(vec![b'y'; 64 << 10]);
        let message = Message {
            topic: ByteString::try_from(block.slice(0..5)).expect("UTF-8"),
            payload: block.slice(10..20),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            expires_secs: NEVER,
        };
        let copy = message.unpinned();
        assert_eq!(copy, message);
        assert!(!shares(&copy.payload, &block) && !shares(copy.topic.as_bytes(), &block));
        assert!(
            !pins_a_block(&vec![0u8; PINNING_PAYLOAD_MAX]),
            "large ones are kept as is"
        );
    }

    #[test]
    fn inbound_qos2_is_delivered_once_until_released() {
        let mut session = Session::new("c".into(), false, ProtocolVersion::V3_1_1);
        assert_eq!(session.incoming_qos2_begin(10, 10), IncomingQos2::New);
        assert_eq!(
            session.incoming_qos2_begin(10, 10),
            IncomingQos2::Repeat,
            "re-sent PUBLISH before PUBREL"
        );
        session.incoming_qos2_release(10);
        assert_eq!(
            session.incoming_qos2_begin(10, 10),
            IncomingQos2::New,
            "the id is free again after PUBREL"
        );
    }

    #[test]
    fn inbound_qos2_ids_are_bounded_and_found_in_any_order() {
        // Issue 7 item 9: every id the space has, in a scrambled order, then released in
        // another; a repeat is recognised however many are held, and the bound holds.
        let mut session = Session::new("c".into(), false, ProtocolVersion::V3_1_1);
        let scrambled = |n: u32| (n.wrapping_mul(40_507) % 65_535 + 1) as u16;
        for n in 0..65_535 {
            assert_eq!(
                session.incoming_qos2_begin(scrambled(n), 65_535),
                IncomingQos2::New
            );
        }
        assert_eq!(session.incoming_qos2_len(), 65_535);
        for n in (0..65_535).step_by(97) {
            let id = scrambled(n);
            assert_eq!(
                session.incoming_qos2_begin(id, 65_535),
                IncomingQos2::Repeat
            );
        }
        for n in 0..65_535 {
            session.incoming_qos2_release(scrambled(n * 7 % 65_535));
        }
        assert_eq!(session.incoming_qos2_len(), 0);
        for id in 1..=3 {
            assert_eq!(session.incoming_qos2_begin(id, 3), IncomingQos2::New);
        }
        assert_eq!(session.incoming_qos2_begin(2, 3), IncomingQos2::Repeat);
        assert_eq!(
            session.incoming_qos2_begin(4, 3),
            IncomingQos2::OverLimit,
            "a fourth id past incoming_inflight_max = 3"
        );
        assert_eq!(
            session.incoming_qos2_len(),
            3,
            "the id over the bound is not kept"
        );
        session.incoming_qos2_release(1);
        assert_eq!(session.incoming_qos2_begin(4, 3), IncomingQos2::New);
    }

    #[test]
    fn subscriptions_are_a_map_keyed_by_filter() {
        // Issue 7 item 9: 50,000 filters, each added, replaced and removed by a lookup.
        let mut session = Session::new("c".into(), false, ProtocolVersion::V3_1_1);
        let filter = |n: usize| match n % 3 {
            0 => format!("sensors/{n}/temperature/+"),
            1 => format!("s/{n}"),
            _ => format!("$share/g/{n}/#"),
        };
        for n in 0..50_000 {
            assert!(session.subscribe(&filter(n), QoS::AtMostOnce), "{n} is new");
        }
        for n in (0..50_000).step_by(7) {
            assert!(
                !session.subscribe(&filter(n), QoS::ExactlyOnce),
                "{n} replaces"
            );
        }
        assert_eq!(
            session.subscription_count(),
            50_000,
            "a repeat replaces, never adds"
        );
        for n in (1..50_000).step_by(2) {
            assert!(session.unsubscribe(&filter(n)));
            assert!(!session.unsubscribe(&filter(n)), "removed once");
        }
        assert_eq!(session.subscription_count(), 25_000);
        assert!(session.has_subscription(&filter(0)) && !session.has_subscription(&filter(1)));
        let mut filters = Vec::new();
        session.take_subscriptions(&mut filters);
        filters.sort_unstable();
        let mut expected: Vec<Box<str>> =
            (0..50_000).step_by(2).map(|n| filter(n).into()).collect();
        expected.sort_unstable();
        assert_eq!(filters, expected);
        assert_eq!(session.subscription_count(), 0);
    }

    #[test]
    fn reset_clears_state_but_keeps_identity_and_connection() {
        let mut session = Session::new("c".into(), false, ProtocolVersion::V3_1_1);
        session.conn = Some(ConnRef {
            slot: 3,
            generation: 9,
        });
        session.subscribe("a/#", QoS::AtLeastOnce);
        session.start_inflight(message(QoS::AtLeastOnce, 0), false);
        session.enqueue(message(QoS::AtLeastOnce, 1), 10);
        session.reset(true, ProtocolVersion::V3_1);
        assert_eq!(&*session.client_id, "c");
        assert_eq!(
            session.conn,
            Some(ConnRef {
                slot: 3,
                generation: 9
            })
        );
        assert_eq!(session.subscription_count(), 0);
        assert_eq!((session.inflight_len(), session.queue_len()), (0, 0));
        assert!(session.clean_session);
        assert_eq!(session.version, ProtocolVersion::V3_1);
    }
}
