//! SUBSCRIBE and UNSUBSCRIBE: the session's filters, the tries, the interest the other shards
//! learn of, the retained messages a new subscription gets, and the SUBACK.
//!
//! One packet's work is bounded per loop turn (issue 7 item 9). A SUBSCRIBE may carry a
//! quarter of a million filters (packet_size_max / 4), each costing a trie insert, an interest
//! change and a walk of the retained messages: done at once, that stalled every other client of
//! the shard (50,000 filters: 20 ms after the per-session map, 1.8 s before it). So a
//! SUBSCRIBE is a job that moves on by at most `SLICE_WORK_MAX` units of work per loop turn
//! (a filter, or a retained node visited or message delivered), for all such jobs together:
//! its filters, then its SUBACK (held until the other shards took the interest changes,
//! `held.rs`), then the retained messages the granted filters match, after the SUBACK as
//! clients expect [MQTT-3.3.1-6]. A small SUBSCRIBE on one shard is done in the packet's turn.
//!
//! Meanwhile the connection's later packets wait, decoded, in order, so an UNSUBSCRIBE or a
//! second SUBSCRIBE never overtakes it and its own publishes come after the SUBACK. What waits
//! is bounded: past `packet_size_max` bytes of them (and at a DISCONNECT, which must not be
//! lost if the socket closes right after it) the job is finished at once, without waiting for
//! the SUBACK any more; that costs one packet's work, bounded by its size.
//!
//! Retained messages per SUBSCRIBE are bounded by what the session can take anyway: past
//! `inflight_max + offline_queue_max` messages and `outbox_bytes_max` bytes every further one
//! would be dropped, so the walk stops there. One filter's walk is not cut (a `#` visits the
//! whole store, bounded by `retained_max`).

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::ops::ControlFlow;

use bytestring::ByteString;
use foldhash::fast::RandomState;
use hashbrown::HashMap;

use crate::protocol::{Packet, QoS, ReasonCode, Subscribe, SubscriptionOptions, Unsubscribe};
use crate::session::Message;
use crate::topic::filter::{parse_shared, validate_topic_filter};

use super::body::Body;
use super::conn::ConnState;
use super::deliver::Delivery;
use super::held::HeldPacket;
use super::limits::LimitHit;
use super::route::{Grant, Member};
use super::{CloseReason, Shard};

/// Work per loop turn for all SUBSCRIBEs in progress: a filter is one unit, a retained message
/// delivered or a node of the retained store visited one more. About 0.4 µs each measured
/// (bench/subscribe.sh), so a slice stays near a millisecond.
pub(super) const SLICE_WORK_MAX: usize = 2048;

fn granted_code(qos: QoS) -> ReasonCode {
    match qos {
        QoS::AtMostOnce => ReasonCode::GRANTED_QOS0,
        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
    }
}

/// Where a SUBSCRIBE stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Filters going into the session, the tries and the interest.
    Filters,
    /// The SUBACK waits for the mesh (`held.rs`); retained messages come after it.
    AwaitSuback,
    /// The retained messages the granted filters match.
    Retained,
    Done,
}

/// A SUBSCRIBE being handled, and the packets of its connection that came after it.
struct SubscribeJob {
    session: u32,
    packet_id: u16,
    phase: Phase,
    filters: Vec<(ByteString, SubscriptionOptions)>,
    /// The SUBSCRIBE's Subscription Identifier, given to each of its subscriptions.
    subscription_id: Option<NonZeroU32>,
    /// Filters handled so far; `codes` has one per each.
    next: usize,
    codes: Vec<ReasonCode>,
    /// The mesh messages the SUBACK waits for (`held.rs`).
    waits: super::held::Waits,
    /// The plain filters granted, whose retained messages are owed, and how many were walked.
    granted: Vec<(ByteString, QoS)>,
    granted_next: usize,
    /// Retained messages delivered so far, and their bytes (see the file's doc).
    retained_count: usize,
    retained_bytes: usize,
    deferred: VecDeque<Packet>,
    deferred_bytes: usize,
}

/// SUBSCRIBEs in progress, one per connection at most (later ones wait in its `deferred`).
#[derive(Default)]
pub(super) struct SubscribeJobs {
    jobs: HashMap<(u32, u32), SubscribeJob, RandomState>,
    /// The jobs that can go on (not waiting for their SUBACK), round robin, one slice of
    /// work per turn for all of them together.
    runnable: VecDeque<(u32, u32)>,
}

impl SubscribeJobs {
    /// Work is waiting for the next turn: the loop must not sleep.
    pub(super) fn has_runnable(&self) -> bool {
        !self.runnable.is_empty()
    }

    /// A SUBSCRIBE of this connection is in progress: its packets wait.
    pub(super) fn busy(&self, slot: u32, generation: u32) -> bool {
        !self.jobs.is_empty() && self.jobs.contains_key(&(slot, generation))
    }
}

/// Bytes a decoded packet stands for, near enough to bound what waits.
fn weight(packet: &Packet) -> usize {
    match packet {
        Packet::Publish(publish) => 8 + publish.topic.len() + publish.payload.len(),
        Packet::Subscribe(subscribe) => {
            4 + subscribe
                .filters
                .iter()
                .map(|(f, _)| 3 + f.len())
                .sum::<usize>()
        }
        Packet::Unsubscribe(unsubscribe) => {
            4 + unsubscribe
                .filters
                .iter()
                .map(|f| 2 + f.len())
                .sum::<usize>()
        }
        _ => 4,
    }
}

impl Shard {
    pub(super) fn on_subscribe(
        &mut self,
        slot: u32,
        generation: u32,
        session: u32,
        subscribe: &Subscribe,
    ) {
        let v5 = self
            .conns
            .get(slot, generation)
            .is_some_and(|c| c.version.is_v5());
        if v5 {
            // [MQTT-3.8.3-4] No Local on a shared subscription is a protocol error.
            let no_local_shared = subscribe
                .filters
                .iter()
                .any(|(filter, options)| options.no_local && parse_shared(filter).is_some());
            if no_local_shared {
                self.close(slot, generation, CloseReason::Protocol);
                return;
            }
        }
        // At most one, never 0: the decoder refuses both (0x82).
        let subscription_id = subscribe
            .properties
            .subscription_identifiers
            .first()
            .and_then(|&id| NonZeroU32::new(id));
        let mut job = SubscribeJob {
            session,
            packet_id: subscribe.packet_id,
            phase: Phase::Filters,
            filters: subscribe.filters.clone(),
            subscription_id,
            next: 0,
            codes: Vec::with_capacity(subscribe.filters.len()),
            waits: Default::default(),
            granted: Vec::new(),
            granted_next: 0,
            retained_count: 0,
            retained_bytes: 0,
            deferred: VecDeque::new(),
            deferred_bytes: 0,
        };
        self.advance_subscribe(slot, generation, &mut job, SLICE_WORK_MAX, false);
        self.park_or_finish(slot, generation, job);
    }

    /// A job that is done lets its connection's waiting packets go; one that is not waits for
    /// a later turn, or for its SUBACK.
    fn park_or_finish(&mut self, slot: u32, generation: u32, job: SubscribeJob) {
        let conn = (slot, generation);
        match job.phase {
            Phase::Done => self.finish_subscribe(slot, generation, job),
            Phase::AwaitSuback => {
                self.subscribe_jobs.jobs.insert(conn, job);
            }
            Phase::Filters | Phase::Retained => {
                self.subscribe_jobs.runnable.push_back(conn);
                self.subscribe_jobs.jobs.insert(conn, job);
            }
        }
    }

    /// A packet of a connection whose SUBSCRIBE is in progress: it waits, unless too much
    /// waits already or it is a DISCONNECT; then the SUBSCRIBE is finished now.
    pub(super) fn defer_while_subscribing(&mut self, slot: u32, generation: u32, packet: Packet) {
        let conn = (slot, generation);
        let deferred_max = self.config.limits.packet_size_max as usize;
        let Some(job) = self.subscribe_jobs.jobs.get_mut(&conn) else {
            return;
        };
        let finish_now = matches!(packet, Packet::Disconnect(_))
            || job.deferred_bytes + weight(&packet) > deferred_max;
        job.deferred_bytes += weight(&packet);
        job.deferred.push_back(packet);
        if finish_now {
            if let Some(mut job) = self.subscribe_jobs.jobs.remove(&conn) {
                self.advance_subscribe(slot, generation, &mut job, usize::MAX, true);
                self.finish_subscribe(slot, generation, job);
            }
        }
    }

    /// One turn's slice of the SUBSCRIBEs in progress.
    pub(super) fn run_subscribe_jobs(&mut self) {
        let mut budget = SLICE_WORK_MAX;
        while budget > 0 {
            let Some(conn) = self.subscribe_jobs.runnable.pop_front() else {
                break;
            };
            let Some(mut job) = self.subscribe_jobs.jobs.remove(&conn) else {
                continue; // Finished early (see `defer_while_subscribing`).
            };
            let (slot, generation) = conn;
            let alive = self
                .conns
                .get(slot, generation)
                .is_some_and(|c| c.state == ConnState::Connected && c.session == job.session);
            if !alive {
                // The connection went (or its session did): so does what it asked.
                continue;
            }
            let work = self.advance_subscribe(slot, generation, &mut job, budget, false);
            budget = budget.saturating_sub(work);
            self.park_or_finish(slot, generation, job);
        }
    }

    /// The SUBACK of a job waiting for it went out (`held.rs`): its retained messages follow.
    pub(super) fn on_suback_released(&mut self, conn: (u32, u32)) {
        if let Some(job) = self.subscribe_jobs.jobs.get_mut(&conn) {
            if job.phase == Phase::AwaitSuback {
                job.phase = Phase::Retained;
                self.subscribe_jobs.runnable.push_back(conn);
            }
        }
    }

    /// Moves `job` on until `budget` units of work are spent or it must wait for its SUBACK
    /// (unless `force`: then the retained messages do not wait for it). Returns the work.
    fn advance_subscribe(
        &mut self,
        slot: u32,
        generation: u32,
        job: &mut SubscribeJob,
        budget: usize,
        force: bool,
    ) -> usize {
        let mut work = 0;
        loop {
            match job.phase {
                Phase::Filters => {
                    work += self.subscribe_slice(job, budget - work);
                    if job.next < job.filters.len() {
                        return work;
                    }
                    // Not before every other shard has applied the interest changes.
                    let ack = HeldPacket::SubAck {
                        packet_id: job.packet_id,
                        codes: std::mem::take(&mut job.codes),
                    };
                    let waits = std::mem::take(&mut job.waits);
                    let written = self.ack_after(slot, generation, ack, waits);
                    // [MQTT-3.3.1-6] After the SUBACK, as clients expect, the retained
                    // messages the new subscriptions match.
                    job.phase = if written || force {
                        Phase::Retained
                    } else {
                        Phase::AwaitSuback
                    };
                }
                Phase::AwaitSuback if force => job.phase = Phase::Retained,
                Phase::AwaitSuback | Phase::Done => return work,
                Phase::Retained => {
                    while job.granted_next < job.granted.len() && work < budget {
                        let (filter, granted) = job.granted[job.granted_next].clone();
                        job.granted_next += 1;
                        let id = job.subscription_id;
                        work += 1 + self.deliver_retained(job, &filter, granted, id);
                    }
                    if job.granted_next < job.granted.len() {
                        return work;
                    }
                    job.phase = Phase::Done;
                }
            }
        }
    }

    /// Handles filters of `job` until `budget` units of work are spent; returns those spent.
    fn subscribe_slice(&mut self, job: &mut SubscribeJob, budget: usize) -> usize {
        let mut work = 0;
        self.held.begin();
        while job.next < job.filters.len() && work < budget {
            let (filter, options) = job.filters[job.next].clone();
            job.next += 1;
            work += 1;
            let subscribed =
                self.subscribe_filter(job.session, &filter, options, job.subscription_id);
            let (granted, new) = match subscribed {
                Ok(granted) => granted,
                Err(code) => {
                    // 3.1.1 encodes every failure as 0x80.
                    job.codes.push(code);
                    continue;
                }
            };
            job.codes.push(granted_code(granted));
            // [MQTT-3.3.1-9] [MQTT-3.3.1-10] Retain Handling 0: retained messages on every
            // subscribe; 1: only for a new subscription; 2: never. A shared subscription gets
            // none (spec 4.8.2). 3.1.1 clients always send 0.
            let retained_owed = match options.retain_handling {
                0 => true,
                1 => new,
                _ => false,
            };
            if retained_owed && parse_shared(&filter).is_none() {
                job.granted.push((filter, granted));
            }
        }
        self.held.take_recorded(&mut job.waits);
        work
    }

    /// One filter into the session, the tries and the interest: the QoS granted and whether
    /// the subscription is new, or the failure's MQTT 5 code (3.1.1: all 0x80).
    fn subscribe_filter(
        &mut self,
        session: u32,
        filter: &ByteString,
        options: SubscriptionOptions,
        subscription_id: Option<NonZeroU32>,
    ) -> Result<(QoS, bool), ReasonCode> {
        if validate_topic_filter(filter).is_err() {
            return Err(ReasonCode::TopicFilterInvalid);
        }
        if self.acl.is_some() && !self.acl_may_subscribe(session, filter) {
            // 3.1.1: 0x80, as every failure.
            return Err(ReasonCode::NotAuthorized);
        }
        let qos_max = QoS::from_u8(self.config.limits.qos_max).unwrap_or(QoS::ExactlyOnce);
        let subscriptions_max = self.config.limits.subscriptions_per_client_max as usize;
        let granted = options.qos.min(qos_max);
        let s = self
            .sessions
            .get_mut(session)
            .ok_or(ReasonCode::UnspecifiedError)?;
        // [MQTT-3.8.4-3] A repeated filter replaces the subscription, also at the bound.
        if !s.has_subscription(filter) && s.subscription_count() >= subscriptions_max {
            self.limit_hit(LimitHit::SubscriptionsPerClient);
            return Err(ReasonCode::QuotaExceeded);
        }
        let new_to_session = s.subscribe(filter, granted);
        self.insert_subscription(session, filter, granted, options, subscription_id);
        // A persistent session's subscription is on disk before its SUBACK (`durable/records.rs`).
        self.log_subscribe(session, filter, granted, options, subscription_id);
        Ok((granted, new_to_session))
    }

    /// A subscription granted `granted` into the tries and the interest (the session holds it
    /// already): at a SUBSCRIBE, and for a session restored at start.
    pub(super) fn insert_subscription(
        &mut self,
        session: u32,
        filter: &ByteString,
        granted: QoS,
        options: SubscriptionOptions,
        subscription_id: Option<NonZeroU32>,
    ) {
        let grant = Grant::new(granted, options.no_local, options.retain_as_published)
            .with_subscription_id(subscription_id.is_some());
        let new = match parse_shared(filter) {
            Some((_, inner)) => {
                let member = Member {
                    session,
                    grant,
                    subscription_id,
                };
                self.shared.insert(filter, inner, member)
            }
            None => {
                let replaced = self.subscriptions.insert(filter, session, grant);
                // A repeated filter takes the new SUBSCRIBE's identifier, or none
                // [MQTT-3.8.4-3]. A client that never sends one never gets here.
                if subscription_id.is_some() || replaced.is_some_and(|g| g.has_subscription_id()) {
                    self.subscription_ids
                        .set(filter, session, subscription_id, grant.no_local());
                }
                replaced.is_none()
            }
        };
        if new {
            // Every shard learns of it before the SUBACK is written (`held.rs`).
            self.note_subscribed(filter);
        }
    }

    /// [MQTT-3.3.1-6] The retained messages `filter` matches go to the new subscription,
    /// retain flag set, with its Subscription Identifier, up to what the session can take.
    /// Returns the work it cost.
    fn deliver_retained(
        &mut self,
        job: &mut SubscribeJob,
        filter: &str,
        granted: QoS,
        subscription_id: Option<NonZeroU32>,
    ) -> usize {
        let limits = &self.config.limits;
        let count_max = usize::from(limits.inflight_max) + limits.offline_queue_max as usize;
        let bytes_max = limits.outbox_bytes_max as usize;
        let full = |count: usize, bytes: usize| count >= count_max && bytes >= bytes_max;
        if full(job.retained_count, job.retained_bytes) {
            return 0;
        }
        let mut retained: Vec<Message> = std::mem::take(&mut self.retained_scratch);
        let (mut count, mut bytes) = (job.retained_count, job.retained_bytes);
        let visits = self.retained.walk_matches(filter, |replica| {
            let message = replica.to_message();
            count += 1;
            bytes += message.topic.len() + message.payload.len();
            retained.push(message);
            if full(count, bytes) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        (job.retained_count, job.retained_bytes) = (count, bytes);
        let delivered = retained.len();
        let now_secs = self.now_secs();
        for message in retained.drain(..) {
            if message.expired(now_secs) {
                // [MQTT-3.3.2-5] An expired retained message is no longer sent, and goes from
                // the store (every shard deletes its replica's on its own, `expire_retained`).
                let now = now_secs.min(u64::from(crate::session::NEVER - 1)) as u32;
                self.retained.remove_if_expired(&message.topic, now);
                continue;
            }
            let qos = message.qos.min(granted);
            // With what is left of its Message Expiry Interval [MQTT-3.3.2-6].
            let mut properties = message.shared_properties_at(now_secs);
            if let Some(id) = subscription_id {
                properties = Some(self.subscription_ids.for_one(id, properties.as_ref()));
            }
            self.deliver(
                job.session,
                &Body::of(&message.topic, &message.payload),
                qos,
                true,
                Delivery::Retained,
                properties.as_ref(),
            );
        }
        // A scratch that once held a crowd does not keep its memory.
        retained.shrink_to(1024);
        self.retained_scratch = retained;
        visits + delivered
    }

    /// The SUBSCRIBE is done: the packets that waited go, in order (one may start another
    /// SUBSCRIBE, which the rest then wait for).
    fn finish_subscribe(&mut self, slot: u32, generation: u32, mut job: SubscribeJob) {
        for packet in job.deferred.drain(..) {
            self.handle(slot, generation, packet);
        }
    }

    pub(super) fn on_unsubscribe(
        &mut self,
        slot: u32,
        generation: u32,
        session: u32,
        unsubscribe: &Unsubscribe,
    ) {
        let v5 = self
            .conns
            .get(slot, generation)
            .is_some_and(|c| c.version.is_v5());
        let mut codes = Vec::new();
        for filter in &unsubscribe.filters {
            let held = self
                .sessions
                .get_mut(session)
                .is_some_and(|s| s.unsubscribe(filter));
            if held {
                self.remove_subscription(session, filter);
                self.log_unsubscribe(session, filter);
            }
            if v5 {
                // [MQTT-3.11.3-1] One code per filter, in order.
                codes.push(if held {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                });
            }
        }
        // [MQTT-3.10.4-4] UNSUBACK even when nothing matched. 3.1.1 carries no codes.
        let ack = HeldPacket::UnsubAck {
            packet_id: unsubscribe.packet_id,
            codes,
        };
        self.ack(slot, generation, ack);
    }

    fn remove_subscription(&mut self, session: u32, filter: &str) {
        let removed = match parse_shared(filter) {
            Some((_, inner)) => self.shared.remove(filter, inner, session),
            None => match self.subscriptions.remove(filter, session) {
                Some(grant) => {
                    if grant.has_subscription_id() {
                        self.subscription_ids.set(filter, session, None, false);
                    }
                    true
                }
                None => false,
            },
        };
        if removed {
            self.note_unsubscribed(filter);
        }
    }

    /// Takes every subscription of a session out of the tries.
    pub(super) fn clear_subscriptions(&mut self, session: u32) {
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        let mut filters = Vec::new();
        s.take_subscriptions(&mut filters);
        for filter in &filters {
            self.remove_subscription(session, filter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granted_codes_are_the_qos_values() {
        assert_eq!(granted_code(QoS::AtMostOnce) as u8, 0);
        assert_eq!(granted_code(QoS::AtLeastOnce) as u8, 1);
        assert_eq!(granted_code(QoS::ExactlyOnce) as u8, 2);
    }
}
