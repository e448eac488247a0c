//! The shard's side of the mesh (DESIGN: "Routing a publish"): interest changes announced to
//! every shard, publishes forwarded to the shards whose clients want them, retained messages
//! replicated, shared groups served by exactly one shard per message, inbound rings drained in
//! bounded batches, and wake-ups at most once per target per turn, only to shards that may be
//! asleep.
//!
//! With one shard none of this runs: the mesh has no rings and every check is one comparison.

use std::io;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use crate::mesh::exact::hashed;
use crate::mesh::{Forward, InlineForward, MeshMessage, SharedForward};
use crate::protocol::{Properties, QoS};
use crate::ring::{Op, Token};
use crate::session::Message;
use crate::topic::filter::parse_shared;

use super::body::Body;
use super::deliver::Retained;
use super::limits::LimitHit;
use super::peers::for_each_bit;
use super::recv::arena_reserve;
use super::route::next_shard_after;
use super::Shard;

/// A forwarded message whose topic and payload together are at most this long is copied into
/// the target's block (`mesh_copy`); a longer one shares the receive arena's bytes. (A plain
/// one of at most `INLINE_MAX` bytes without properties travels in its ring slot instead.)
const MESH_COPY_MAX: usize = 512;

/// The per-target copy blocks grow by this much: one allocation per ~16 KiB forwarded.
const MESH_BLOCK: usize = 16 << 10;

impl Shard {
    /// Blocks in the kernel for the next completion (unless `ready`), telling the other shards
    /// we may be asleep; a message that arrived meanwhile keeps us awake.
    pub(super) fn wait(&mut self, ready: bool) -> io::Result<()> {
        // A SUBSCRIBE in slices goes on next turn: do not sleep.
        let mut want = usize::from(!ready && !self.subscribe_jobs.has_runnable());
        if want == 1 && self.shard_count > 1 {
            // Messages waiting for room in a ring, or acks waiting for a target to take what
            // they follow: either way a target that drains must wake us.
            let backlogged = self.mesh.overflow_total() > 0 || !self.held.is_empty();
            self.peers.set_sleeping(self.index, true, backlogged);
            // Pairs with the producer's fence between its push and its read of the flag.
            fence(Ordering::SeqCst);
            if backlogged && self.wake_targets() {
                // A held ack went out: flush it before sleeping.
                want = 0;
            }
            if self.mesh.inbound_len() > 0 {
                want = 0;
            }
        }
        // Asleep, the shard reads no shared interest table: one it replaced may be freed.
        if self.shard_count > 1 {
            self.interest.offline(self.index);
        }
        let result = self.rings[0].submit_and_wait(want);
        if self.shard_count > 1 {
            self.peers.set_sleeping(self.index, false, false);
            self.interest.quiescent(self.index);
        }
        result
    }

    /// Takes at most `mesh_batch_max` messages from each inbound ring, of those there when the
    /// turn began (`see_mesh`), and handles each as it leaves its ring; wakes a source that
    /// sleeps with messages waiting for room in its ring to us.
    pub(super) fn drain_mesh(&mut self) {
        if self.shard_count == 1 {
            return;
        }
        // Lent out of the mesh while they drain: a message goes from its ring slot straight to
        // its handler, which may push to other shards through the mesh's other half.
        let mut inbound = self.mesh.take_sources();
        let mut sources = 0u64;
        let taken = inbound.drain_seen(
            self.config.limits.mesh_batch_max as usize,
            |source, message| {
                if sources == 0 && self.latency.is_some() {
                    // One clock read per drain that takes messages, for the forwards' transit.
                    let now_ns = self.clock.elapsed().as_nanos() as u64;
                    self.mesh_taken_us = self.epoch_us(now_ns);
                }
                sources |= 1u64 << source;
                self.on_mesh(message);
            },
        );
        self.mesh.restore_sources(inbound);
        if taken == 0 {
            return;
        }
        self.stats.mesh_received += taken as u64;
        fence(Ordering::SeqCst);
        let mut backlogged = 0u64;
        for_each_bit(sources, |source| {
            if self.peers.is_backlogged_sleeper(source) {
                backlogged |= 1u64 << source;
            }
        });
        self.wake(backlogged);
    }

    /// At the start of a turn, right after the wait that posted the completions of what the
    /// connections sent so far: the messages the turn's drains may take. One pushed later
    /// waits for the next turn, after the completions of everything that came before it.
    pub(super) fn see_mesh(&mut self) {
        if self.shard_count > 1 {
            self.mesh.see_inbound();
        }
    }

    /// Wakes each shard in `shards` with a MSG_RING on its primary ring: the entry rides with
    /// this turn's submit, so a wake-up costs no syscall of its own here.
    pub(super) fn wake(&mut self, shards: u64) {
        let peers = &self.peers;
        let ring = &mut self.rings[0];
        for_each_bit(shards, |shard| match peers.ring_fd(shard, 0) {
            Some(fd) => ring.wake_ring(fd, Token::shard(Op::MeshWake)),
            None => peers.wake_by_eventfd(shard),
        });
        self.stats.mesh_wakes += u64::from(shards.count_ones());
    }

    /// The messages written since `messages_out` was `out_before` came from a forward stamped
    /// `turn_us` on its publisher's shard (or on the shard that passed a `$share` message on).
    fn record_transit(&mut self, turn_us: u32, out_before: u64) {
        let delivered = self.stats.messages_out - out_before;
        if let (Some(latency), true) = (self.latency.as_deref_mut(), delivered > 0) {
            // Stamped before it was pushed, read after it was taken: not negative but for
            // clock skew between cores, which counts as 0.
            let transit_us = self.mesh_taken_us.wrapping_sub(turn_us) as i32;
            let transit_ns = u64::from(transit_us.max(0).unsigned_abs()) * 1000;
            latency.mesh_transit.record(transit_ns, delivered);
        }
    }

    fn on_mesh(&mut self, message: MeshMessage) {
        match message {
            MeshMessage::Publish(forward) => {
                let out_before = self.stats.messages_out;
                let topic_hash = self.topic_hash(&forward.topic, false);
                self.route_local(
                    &Body::of(&forward.topic, &forward.payload),
                    topic_hash,
                    forward.qos,
                    forward.retain,
                    forward.properties.as_ref(),
                );
                self.record_transit(forward.turn_us, out_before);
            }
            MeshMessage::PublishInline(forward) => {
                let out_before = self.stats.messages_out;
                let topic_hash = self.topic_hash(forward.topic(), false);
                if forward.qos == QoS::AtMostOnce {
                    // Delivered from the ring slot: QoS 0 keeps nothing, so nothing is copied
                    // but into the outboxes.
                    let body = Body::borrowed(forward.topic(), forward.payload());
                    self.route_local(&body, topic_hash, forward.qos, forward.retain, None);
                } else {
                    let (topic, payload) = self.arena_copy(forward.topic(), forward.payload());
                    let body = Body::of(&topic, &payload);
                    self.route_local(&body, topic_hash, forward.qos, forward.retain, None);
                }
                self.record_transit(forward.turn_us, out_before);
            }
            MeshMessage::SharedPublish(shared) => {
                let out_before = self.stats.messages_out;
                let turn_us = shared.forward.turn_us;
                self.on_shared_forward(*shared);
                self.record_transit(turn_us, out_before);
            }
            MeshMessage::Interest {
                filter,
                shard,
                interested,
            } => self.apply_interest(&filter, usize::from(shard), interested),
            MeshMessage::Retained(message) => {
                let replica = Retained::new(Arc::clone(&message), self.now_secs());
                self.retained.set(&message.topic, replica);
            }
            MeshMessage::RetainedCleared(topic) => {
                self.retained.remove(&topic);
            }
            MeshMessage::Connection(handoff) => self.on_handoff_message(handoff),
            MeshMessage::HandOffLost { ring } => self.on_handoff_lost(usize::from(ring)),
            MeshMessage::FlowReleased {
                client_id,
                packet_id,
            } => {
                self.forget_flow_keys(&client_id, packet_id);
            }
        }
    }

    /// After the turn: overflowed messages into rings with room, held acks whose messages
    /// were taken (`held.rs`), then one wake-up per target that got messages and may be
    /// asleep. Returns whether a held ack was written.
    pub(super) fn wake_targets(&mut self) -> bool {
        if self.shard_count == 1 {
            return false;
        }
        self.mesh.flush_overflow();
        self.resume_mesh_paused();
        let released = self.release_held();
        let targets = self.mesh.take_wake_targets();
        if targets == 0 {
            return released;
        }
        // Pairs with the sleeper's fence between setting its flag and checking its rings.
        fence(Ordering::SeqCst);
        let sleepers = self.peers.sleepers(targets);
        self.wake(sleepers);
        released
    }

    /// Pushes to one shard. Over `mesh_overflow_max` waiting for that shard, a QoS 0 publish
    /// is dropped (counted), and a QoS 1/2 one waits with its publisher's ack held until the
    /// target takes it (back-pressure through the client's window, `held.rs`); forwards for
    /// `$share` groups alike. Interest, retained and hand-off messages always wait: they carry
    /// state (`held.rs` says what bounds them; a QoS 0 retained publisher is paused,
    /// `backpressure.rs`). The ack of the packet being handled waits for a new interest and a
    /// retained message too (their promise is that every shard has them).
    pub(super) fn mesh_push(&mut self, target: usize, message: MeshMessage) {
        let waiting = self.mesh.overflow_len(target);
        let over = waiting >= self.config.limits.mesh_overflow_max as usize;
        if over && self.limits_logged & (1 << LimitHit::MeshOverflow as u32) == 0 {
            self.limit_hit(LimitHit::MeshOverflow);
        }
        let ack_waits = match &message {
            MeshMessage::Publish(Forward { qos, .. })
            | MeshMessage::PublishInline(InlineForward { qos, .. })
                if over && *qos == QoS::AtMostOnce =>
            {
                self.stats.mesh_dropped_qos0 += 1;
                return;
            }
            // The same for one a `$share` group gets there: neither dropped nor throttled, a
            // QoS 0 flood to a group served by another shard grew its overflow without bound.
            MeshMessage::SharedPublish(shared) if over && shared.forward.qos == QoS::AtMostOnce => {
                self.stats.mesh_dropped_qos0 += 1;
                return;
            }
            // With persistence on and `sync = "ack"`, a QoS 1/2 forward's ack waits for the
            // target to make durable what it caused (a message owed to a persistent session).
            MeshMessage::Publish(Forward { qos, .. })
            | MeshMessage::PublishInline(InlineForward { qos, .. }) => {
                (over || self.durable_acks) && *qos != QoS::AtMostOnce
            }
            MeshMessage::SharedPublish(shared) => {
                (over || self.durable_acks) && shared.forward.qos != QoS::AtMostOnce
            }
            MeshMessage::Interest { interested, .. } => *interested,
            MeshMessage::Retained(_) | MeshMessage::RetainedCleared(_) => true,
            // A PUBCOMP waits until the flow's keys are gone on every shard that had them.
            MeshMessage::FlowReleased { packet_id, .. } => packet_id.is_some(),
            MeshMessage::Connection(_) | MeshMessage::HandOffLost { .. } => false,
        };
        let sequence = self.mesh.push(target, message);
        if ack_waits {
            self.held.record(target, sequence);
        }
        self.stats.mesh_pushes += 1;
        let overflow_len = self.mesh.overflow_len(target);
        if overflow_len > waiting {
            self.stats.mesh_overflowed += 1;
            self.stats.mesh_overflow_high_water =
                self.stats.mesh_overflow_high_water.max(overflow_len as u64);
        }
    }

    fn mesh_broadcast(&mut self, message: MeshMessage) {
        let own = self.index;
        for target in (0..self.shard_count).filter(|&target| target != own) {
            self.mesh_push(target, message.clone());
        }
    }

    /// A subscriber was added to `filter` (a plain filter or a `$share/..` group) on this
    /// shard. Announced before the SUBACK, which waits until every shard took the change
    /// (`held.rs`), so a client that saw the SUBACK can rely on every shard routing to it.
    pub(super) fn note_subscribed(&mut self, filter: &str) {
        if self.shard_count > 1 && self.interest_changed(filter, true) {
            self.announce(filter, true);
        }
    }

    pub(super) fn note_unsubscribed(&mut self, filter: &str) {
        if self.shard_count > 1 && self.interest_changed(filter, false) {
            self.announce(filter, false);
        }
    }

    /// Whether the subscriber `filter` just gained (`subscribed`) or lost was its first or its
    /// last on this shard: the moment to tell the other shards. A filter kept by hash is
    /// counted by the local subscriptions' table itself (subscribers per hash, the unit the
    /// mesh announces), so it needs no second table; the others by `local_interest`.
    fn interest_changed(&mut self, filter: &str, subscribed: bool) -> bool {
        match self.subscriptions.hashed_subscribers(filter) {
            Some(count) => count == usize::from(subscribed),
            None if subscribed => self.local_interest.subscribe(filter),
            None => self.local_interest.unsubscribe(filter),
        }
    }

    /// Tells every other shard. Our own interest index keeps no plain filter of ours (our trie
    /// has them; an entry per filter per shard is the index's whole memory cost), but it does
    /// keep our `$share` groups: choosing the shard that serves a group needs every member.
    ///
    /// Past `SETS_SHARDS_MAX` shards a filter without wildcards is not announced: the shard
    /// writes its own bit into the table every shard reads (`shared_masks.rs`), visible to all
    /// at once, so its SUBACK waits for nobody.
    fn announce(&mut self, filter: &str, interested: bool) {
        if self.interest.exact_is_shared() && hashed(filter) {
            self.apply_interest(filter, self.index, interested);
            return;
        }
        if parse_shared(filter).is_some() {
            self.apply_interest(filter, self.index, interested);
        }
        self.mesh_broadcast(MeshMessage::Interest {
            filter: ByteString::from(filter),
            shard: self.index as u16,
            interested,
        });
    }

    pub(super) fn apply_interest(&mut self, filter: &str, shard: usize, interested: bool) {
        if shard >= self.shard_count {
            return;
        }
        match parse_shared(filter) {
            Some((_, inner)) => self.shared_interest.apply(filter, inner, shard, interested),
            None => self.interest.apply(filter, shard, interested),
        }
    }

    /// A retained message set on this shard: every other shard gets it before the PUBACK goes
    /// out (the ack waits until each took it, `held.rs`), so a subscription anywhere after the
    /// PUBACK is answered locally. Each stores the same allocation (`deliver::Retained`), with
    /// its expiry counted from the message's arrival there, a moment after ours.
    ///
    /// Known limit: two clients on different shards writing one topic's retained message at the
    /// same moment may leave shards disagreeing on which came last (each ring is FIFO, but there
    /// is no order across rings). Ordering through a per-topic owner shard would fix it at the
    /// cost of a hop, which would break the visibility-after-PUBACK above without versions.
    pub(super) fn replicate_retained(&mut self, message: &Arc<Message>) {
        if self.shard_count > 1 {
            self.mesh_broadcast(MeshMessage::Retained(Arc::clone(message)));
        }
    }

    /// `replicate_retained` for a cleared topic.
    pub(super) fn replicate_retained_clear(&mut self, topic: &str) {
        if self.shard_count > 1 {
            self.mesh_broadcast(MeshMessage::RetainedCleared(ByteString::from(topic)));
        }
    }

    /// Routing with several shards: local plain subscribers, then one shard per matching
    /// `$share` group, then one forward per other shard that has interest (the index) or
    /// serves a group.
    pub(super) fn route_sharded(
        &mut self,
        body: &Body<'_>,
        qos: QoS,
        retain: bool,
        properties: Option<&Arc<Properties>>,
    ) -> bool {
        let own = 1u64 << self.index;
        let topic = body.topic;
        let topic_hash = self.topic_hash(topic, true);
        let local = self.route_local(body, topic_hash, qos, retain, properties);
        let mut assigned = std::mem::take(&mut self.shared_assigned);
        assigned.clear();
        let mut group_ids = std::mem::take(&mut self.group_ids);
        self.shared_interest
            .assign(topic, &mut group_ids, |name, shard| {
                assigned.push((name.clone(), shard))
            });
        self.group_ids = group_ids;
        let mut group_targets = 0u64;
        for (name, shard) in &assigned {
            if *shard == self.index {
                self.serve_group(name, body, qos, retain, properties, 0);
            } else {
                group_targets |= 1u64 << shard;
            }
        }
        let plain_targets = self.interest.shards_for_hashed(topic, topic_hash) & !own;
        if self.flow_key.is_some() {
            self.note_flow_forwarded(plain_targets | group_targets);
        }
        for_each_bit(plain_targets | group_targets, |target| {
            let plain_only = group_targets & (1u64 << target) == 0 && self.flow_key.is_none();
            if plain_only && properties.is_none() {
                let inline = InlineForward::new(
                    topic,
                    body.payload,
                    qos,
                    retain,
                    self.index as u16,
                    self.turn_us,
                );
                if let Some(inline) = inline {
                    self.mesh_push(target, MeshMessage::PublishInline(inline));
                    return;
                }
            }
            let (topic, payload) = self.mesh_copy(target, body);
            let forward = |topic, payload| Forward {
                topic,
                payload,
                qos,
                // The publisher's flag, for subscribers asking Retain As Published.
                retain,
                // Boxed only for a message that has properties: a plain one allocates nothing.
                properties: properties.cloned(),
                origin_shard: self.index as u16,
                turn_us: self.turn_us,
            };
            // Each variant built in one expression, so the common one is written in place.
            let message = if plain_only {
                MeshMessage::Publish(forward(topic, payload))
            } else {
                let groups = assigned
                    .iter()
                    .filter(|(_, shard)| *shard == target)
                    .map(|(name, _)| name.clone())
                    .collect();
                MeshMessage::SharedPublish(Box::new(SharedForward {
                    forward: forward(topic, payload),
                    plain: plain_targets & (1u64 << target) != 0,
                    groups,
                    hops: 0,
                    flow: self.flow_key.clone(),
                }))
            };
            self.mesh_push(target, message);
        });
        let matched = local || !assigned.is_empty() || plain_targets != 0;
        self.shared_assigned = assigned;
        matched
    }

    /// The topic and payload a forward to `target` carries when it does not travel inline (it
    /// has properties, serves a `$share` group, or is longer than `INLINE_MAX`). A small message
    /// is copied into a block of this shard's kept for that target alone: the reference count
    /// that the target's drops decrement is then shared by two cores only, though each push
    /// and drop still takes its cache line from the other (`cargo bench --bench mesh`: 75-100
    /// ns per message between two cores, against ~60 inline). Sharing the receive arena's bytes
    /// instead puts one count, that of the block every message of a read landed in, under the
    /// drops of every shard the messages went to at once. (On 16 cores, before this copy, pairs
    /// QoS 0 cost 393 ns of CPU per message on 1 and 2 shards and 541 ns on 8; that this count
    /// is the cause is still to be measured there. On 2 cores the copy costs nothing visible.)
    /// A large message is shared all the same: its copy would cost more than the cache line.
    fn mesh_copy(&mut self, target: usize, body: &Body<'_>) -> (ByteString, Bytes) {
        let (topic, payload) = (body.topic, body.payload);
        if topic.len() + payload.len() > MESH_COPY_MAX {
            return (body.topic_handle(), body.payload_handle());
        }
        let block = &mut self.mesh_out[target];
        if block.capacity() - block.len() < topic.len() + payload.len() {
            // A new block while the target still holds bytes of the old one (else reused).
            block.reserve(MESH_BLOCK);
        }
        split_message(block, topic, payload)
    }

    /// An inline forward's topic and payload, copied into this shard's receive arena as a
    /// PUBLISH read here would be: the deliveries that keep them (QoS 1/2 windows and queues)
    /// need owned bytes, and the arena's counts are touched by this core alone.
    fn arena_copy(&mut self, topic: &str, payload: &[u8]) -> (ByteString, Bytes) {
        let len = topic.len() + payload.len();
        arena_reserve(&mut self.arena, &mut self.arena_block, &mut self.stats, len);
        split_message(&mut self.arena, topic, payload)
    }

    fn on_shared_forward(&mut self, mut shared: SharedForward) {
        // Its deliveries to persistent sessions are keyed (`exactly_once.rs`).
        self.flow_key = shared.flow.take();
        let f = &shared.forward;
        let body = Body::of(&f.topic, &f.payload);
        if shared.plain {
            let topic_hash = self.topic_hash(&f.topic, false);
            self.route_local(&body, topic_hash, f.qos, f.retain, f.properties.as_ref());
        } else {
            self.encoding.reset();
            self.unpinned = None;
        }
        for name in &shared.groups {
            self.serve_group(
                name,
                &body,
                f.qos,
                f.retain,
                f.properties.as_ref(),
                shared.hops,
            );
        }
        self.flow_key = None;
    }

    /// Delivers to one member of group `name` on this shard; with none left (it left after the
    /// publishing shard chose us), passes the message on to the next shard with members.
    /// `retain`: the publisher's flag, for a member asking Retain As Published.
    #[allow(clippy::too_many_arguments)]
    fn serve_group(
        &mut self,
        name: &ByteString,
        body: &Body<'_>,
        qos: QoS,
        retain: bool,
        properties: Option<&Arc<Properties>>,
        hops: u8,
    ) {
        let sessions = &self.sessions;
        let picked = self
            .shared
            .pick_in_group(name, |s| sessions.get(s).is_some_and(|s| s.conn.is_some()));
        if let Some(member) = picked {
            self.deliver_member(member, body, qos, retain, properties);
            return;
        }
        let mask = self.shared_interest.mask_of(name);
        let next = next_shard_after(mask, self.index, self.shard_count);
        match next {
            Some(target) if usize::from(hops) + 1 < self.shard_count => {
                let forward = Forward {
                    topic: body.topic_handle(),
                    payload: body.payload_handle(),
                    qos,
                    retain,
                    properties: properties.cloned(),
                    origin_shard: self.index as u16,
                    turn_us: self.turn_us,
                };
                let message = MeshMessage::SharedPublish(Box::new(SharedForward {
                    forward,
                    plain: false,
                    groups: vec![name.clone()],
                    hops: hops + 1,
                    // Unkeyed: the publisher's shard releases the keys only on the shards it
                    // forwarded to, and a key never released could take a later flow's re-send
                    // for a repeat (a loss); without one, a crash may cost a duplicate instead.
                    flow: None,
                }));
                self.mesh_push(target, message);
            }
            _ => self.stats.dropped_no_group_member += 1,
        }
    }
}

/// Copies `topic`, then `payload`, into `block` (which has room for both) and splits each off
/// as its own handle.
fn split_message(block: &mut BytesMut, topic: &str, payload: &[u8]) -> (ByteString, Bytes) {
    block.extend_from_slice(topic.as_bytes());
    let topic_bytes = block.split().freeze();
    block.extend_from_slice(payload);
    let payload = block.split().freeze();
    // SAFETY: the bytes are a copy of `topic`, a valid UTF-8 string.
    let topic = unsafe { ByteString::from_bytes_unchecked(topic_bytes) };
    (topic, payload)
}
