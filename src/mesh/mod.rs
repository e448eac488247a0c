//! The shard-to-shard mesh: what shards tell each other, and the rings it travels on.
//!
//! Shards share no state; they send messages. Every ordered pair of shards (i -> j, i != j) has
//! its own [`spsc`] ring, so each ring has exactly one writer and one reader and stays FIFO:
//! messages from one publisher to one subscriber keep their order. [`Mesh::new`] builds all the
//! rings and hands back one [`ShardMesh`] per shard, to be moved into that shard's thread.
//!
//! A shard loop uses its `ShardMesh` like this, once per turn:
//! - `push` (or `broadcast`) as it handles publishes and subscription changes. A full ring never
//!   blocks: the message waits in a local per-target overflow queue, behind which later messages
//!   for that target also wait, so order is kept.
//! - `flush_overflow` to move waiting messages into rings that have room again.
//! - `take_wake_targets` to publish this turn's messages (one store per ring, not per message)
//!   and learn which shards got them, to wake each once (the wake itself, MSG_RING or an
//!   eventfd, belongs to the ring driver). Until then a target does not see them.
//! - `drain(mesh_batch_max, ..)` to take at most a batch from each inbound ring. To handle
//!   each message with full access to its owner (which may push it on: a shared subscription
//!   whose members left), `take_sources`, drain those, and `restore_sources`.
//!
//! `push` returns the message's sequence number on its way to that target (0, 1, 2, ... per
//! target, overflow included: nothing is dropped once pushed, and the overflow keeps order), and
//! `taken(target, sequence)` says whether the target has taken it from the ring. A shard that
//! must not acknowledge a packet before another shard has seen what it caused (a SUBACK after
//! an interest change) waits for that.
//!
//! Memory: every ring slot holds one `MeshMessage` (128 bytes on x86-64, two cache lines: a
//! small publish travels inside its slot, [`InlineForward`]), so the mesh takes about
//! `N * (N - 1) * ring_capacity * 128` bytes once every slot has been used: 31 MB for 16
//! shards at 1024 slots, 7.9 MB at the 256 the broker picks for 16 by default
//! (`Limits::mesh_ring_capacity_for`).
//!
//! [`home_shard`] places a client id on its home shard (DESIGN: "Client ids own a home shard").

pub mod exact;
pub mod interest;
pub mod shared_masks;
pub mod spsc;

use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;

use crate::protocol::{Properties, QoS};
use crate::session::Message;

pub use interest::{InterestIndex, LocalInterest, SHARDS_MAX};

/// What one shard sends another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeshMessage {
    /// A PUBLISH for the target's subscribers.
    Publish(Forward),
    /// A small PUBLISH without properties for the target's plain subscribers, its bytes in the
    /// ring slot itself (the common forward).
    PublishInline(InlineForward),
    /// `shard`'s subscriber count on `filter` went 0 -> 1 (`interested`) or 1 -> 0: apply it to
    /// the target's `InterestIndex`.
    Interest {
        filter: ByteString,
        shard: u16,
        interested: bool,
    },
    /// A retained message, replicated to every shard so a new subscription is answered
    /// locally: one allocation, the publisher's shard's, shared by every shard's replica.
    Retained(Arc<Message>),
    /// A topic's retained message was cleared.
    RetainedCleared(ByteString),
    /// A socket whose CONNECT names a client id homed on the target shard.
    Connection(HandOff),
    /// A socket handed to the target's ring `ring` landed in a slot the kernel could not
    /// announce (the sender's MSG_RING read -EOVERFLOW): the target counts the slot as taken.
    HandOffLost { ring: u16 },
    /// A PUBLISH that the target also serves to some `$share` groups, or one of a QoS 2 flow
    /// whose deliveries are keyed (boxed: rare, and it keeps every ring slot small).
    SharedPublish(Box<SharedForward>),
    /// The publisher `client_id` released its QoS 2 flow `packet_id` (PUBREL), or, with
    /// `None`, its session ended: the target forgets those flows' keys
    /// (`shard/exactly_once.rs`).
    FlowReleased {
        client_id: ByteString,
        packet_id: Option<u16>,
    },
}

/// A publish that the target delivers to one member of each of `groups` (and, when `plain`, to
/// its plain subscribers too). For each group and message the publishing shard names exactly
/// one shard, so the group gets the message once in the whole broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedForward {
    pub forward: Forward,
    /// Deliver to the target's plain (not shared) subscribers as well.
    pub plain: bool,
    /// `$share/{group}/{filter}` names of the groups the target serves with this message.
    pub groups: Vec<ByteString>,
    /// Times the message was passed on because the chosen shard had no member left; it stops
    /// once every shard had its turn.
    pub hops: u8,
    /// The key of the message's QoS 2 flow when its publisher's session is persistent and
    /// persistence is on: the target records it with every delivery to a persistent session
    /// and skips those sessions that already hold it when `dup` is set
    /// (`shard/exactly_once.rs`).
    pub flow: Option<FlowKey>,
}

/// Names a QoS 2 flow from a persistent session: its client id and the packet id, and
/// whether this PUBLISH was a re-send (DUP=1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowKey {
    pub client_id: ByteString,
    pub packet_id: u16,
    pub dup: bool,
}

/// A published message on its way to another shard. Cloning it shares the payload and topic
/// (reference counts), so a fan-out to many shards copies no bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 properties that travel with the message (user properties, content type, expiry,
    /// ...). `None` in the common case, so a plain publish allocates nothing here; shared
    /// with the messages queued from it.
    pub properties: Option<Arc<Properties>>,
    /// The shard the publisher is on.
    pub origin_shard: u16,
    /// When the publisher's shard received it: its loop turn's start in µs since
    /// `shard::stats::epoch()` (wrapping; 0 while latency is not measured). In the padding
    /// after `origin_shard`: the message grows by nothing.
    pub turn_us: u32,
}

/// Topic and payload bytes an [`InlineForward`] holds: the slot is 128 bytes, two cache lines.
pub const INLINE_MAX: usize = 114;

/// A published message small enough to travel inside its ring slot: the target reads its
/// bytes from the slot it reads anyway, and no reference count is touched by two cores (a
/// `Forward`'s topic and payload share a block of the publisher's shard, whose count the
/// publisher's clones and the target's drops then take turns at, a cache line moving between
/// two cores for each). At QoS 0 the target delivers straight from the slot (nothing keeps
/// the message); at QoS 1/2 it copies the bytes into its own receive arena first.
#[derive(Clone)]
pub struct InlineForward {
    pub qos: QoS,
    /// The publisher's RETAIN flag, for subscribers asking Retain As Published.
    pub retain: bool,
    topic_len: u8,
    payload_len: u8,
    /// As `Forward::turn_us`.
    pub turn_us: u32,
    /// The topic, then the payload; past them, uninitialised (a forward writes what it
    /// carries and no more).
    bytes: [MaybeUninit<u8>; INLINE_MAX],
    /// As `Forward::origin_shard`.
    pub origin_shard: u16,
}

impl InlineForward {
    /// `None` when topic and payload together are longer than [`INLINE_MAX`].
    pub fn new(
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        origin_shard: u16,
        turn_us: u32,
    ) -> Option<InlineForward> {
        let end = topic.len() + payload.len();
        if end > INLINE_MAX {
            return None;
        }
        let mut bytes = [MaybeUninit::uninit(); INLINE_MAX];
        // SAFETY: `end <= INLINE_MAX`: both copies stay within `bytes`, and the sources (a
        // `&str` and a slice owned by the caller) do not overlap it.
        unsafe {
            let at = bytes.as_mut_ptr().cast::<u8>();
            std::ptr::copy_nonoverlapping(topic.as_ptr(), at, topic.len());
            std::ptr::copy_nonoverlapping(payload.as_ptr(), at.add(topic.len()), payload.len());
        }
        Some(InlineForward {
            qos,
            retain,
            topic_len: topic.len() as u8,
            payload_len: payload.len() as u8,
            turn_us,
            bytes,
            origin_shard,
        })
    }

    pub fn topic(&self) -> &str {
        // SAFETY: `new` initialised these bytes, copied from a `&str`; nothing else writes them.
        unsafe { std::str::from_utf8_unchecked(self.initialised(0, self.topic_len)) }
    }

    pub fn payload(&self) -> &[u8] {
        self.initialised(usize::from(self.topic_len), self.payload_len)
    }

    fn initialised(&self, start: usize, len: u8) -> &[u8] {
        let written = usize::from(self.topic_len) + usize::from(self.payload_len);
        debug_assert!(start + usize::from(len) <= written);
        // SAFETY: `new` initialised `bytes[..written]`, and the range is within it.
        unsafe {
            std::slice::from_raw_parts(self.bytes.as_ptr().cast::<u8>().add(start), len.into())
        }
    }
}

impl PartialEq for InlineForward {
    fn eq(&self, other: &InlineForward) -> bool {
        (self.qos, self.retain, self.origin_shard, self.turn_us)
            == (other.qos, other.retain, other.origin_shard, other.turn_us)
            && self.topic() == other.topic()
            && self.payload() == other.payload()
    }
}

impl Eq for InlineForward {}

impl std::fmt::Debug for InlineForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineForward")
            .field("topic", &self.topic())
            .field("payload", &Bytes::copy_from_slice(self.payload()))
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("origin_shard", &self.origin_shard)
            .field("turn_us", &self.turn_us)
            .finish()
    }
}

/// A connection moving to its client's home shard, with the bytes the accepting shard already
/// read from it. The socket itself travels separately, as a direct descriptor sent with
/// `MsgRingSendFd` after the accepting shard's multishot recv on it has finished (so no byte
/// lands on the wrong shard). The home shard pairs the two by `handoff_id`, whichever arrives
/// first (see `shard::handoff`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandOff {
    /// The shard that accepted the socket and read its CONNECT.
    pub source_shard: u16,
    /// The listener it came in through.
    pub listener: u8,
    /// Its TLS state, for a connection from an `mqtt+tls` listener: the handshake is done and
    /// `bytes_read` is plaintext; records still in flight continue on the home shard.
    pub tls: crate::tls::TlsHandOff,
    /// Its WebSocket state, for a connection from a `ws` or `wss` listener: the upgrade is
    /// done and `bytes_read` is the MQTT payload of its frames; what it owes (the 101, pongs)
    /// is sent by the home shard.
    pub ws: Carried<crate::websocket::WsConn>,
    /// Equal to the `user_data` of the `MsgRingSendFd` that carries the descriptor.
    pub handoff_id: u64,
    /// The fixed-file slot the accepting shard asked for on the target ring, if it chose one;
    /// `None`: the target ring allocates it (`DestinationSlot::auto_target()`).
    pub ring_slot_hint: Option<u32>,
    /// Every byte read from the socket so far, starting with the CONNECT packet; the home shard
    /// decodes them as if it had read them itself.
    pub bytes_read: Bytes,
}

/// A connection's transport state (TLS, WebSocket) on its way to the client's home shard
/// inside the hand-off message, which is `Clone` like every mesh message: the home shard takes
/// it once. One lock per hand-off of such a connection, none on any other path.
pub struct Carried<T>(Option<Arc<std::sync::Mutex<Option<Box<T>>>>>);

impl<T> Carried<T> {
    pub fn new(state: Option<Box<T>>) -> Carried<T> {
        Carried(state.map(|state| Arc::new(std::sync::Mutex::new(Some(state)))))
    }

    pub fn take(&self) -> Option<Box<T>> {
        let carried = self.0.as_ref()?;
        carried
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

impl<T> Default for Carried<T> {
    fn default() -> Carried<T> {
        Carried(None)
    }
}

impl<T> Clone for Carried<T> {
    fn clone(&self) -> Carried<T> {
        Carried(self.0.clone())
    }
}

impl<T> PartialEq for Carried<T> {
    fn eq(&self, other: &Carried<T>) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl<T> Eq for Carried<T> {}

impl<T> std::fmt::Debug for Carried<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Carried(Some)"
        } else {
            "Carried(None)"
        })
    }
}

/// Slots an emptied overflow queue keeps (128 B each); a burst's larger queue is shrunk to it.
const OVERFLOW_KEPT: usize = 256;

/// Builds the mesh: one SPSC ring per ordered pair of shards.
pub struct Mesh;

impl Mesh {
    /// Returns one [`ShardMesh`] per shard, index = shard. Each ring holds `ring_capacity`
    /// messages, rounded up to a power of two; the mesh's memory is about
    /// `shard_count * (shard_count - 1) * ring_capacity * size_of::<MeshMessage>()`.
    ///
    /// Panics unless `1 <= shard_count <= SHARDS_MAX` and `ring_capacity >= 1` (configuration
    /// errors, caught when `Config` is validated).
    #[allow(clippy::new_ret_no_self)] // The mesh exists only to be split between shard threads.
    pub fn new(shard_count: usize, ring_capacity: usize) -> Vec<ShardMesh> {
        assert!(
            (1..=SHARDS_MAX).contains(&shard_count),
            "shard_count {shard_count} must be in 1..={SHARDS_MAX}"
        );
        let exact = exact::ExactMasks::shared_for(shard_count);
        let mut shards: Vec<ShardMesh> = (0..shard_count)
            .map(|shard| ShardMesh {
                exact: exact.clone(),
                sources: Sources {
                    consumers: (0..shard_count).map(|_| None).collect(),
                },
                targets: Targets {
                    shard,
                    producers: (0..shard_count).map(|_| None).collect(),
                    overflow: (0..shard_count).map(|_| VecDeque::new()).collect(),
                    pushed: vec![0; shard_count],
                    overflow_targets: 0,
                    wake_targets: 0,
                },
            })
            .collect();
        for source in 0..shard_count {
            for target in 0..shard_count {
                if source == target {
                    continue;
                }
                let (producer, consumer) = spsc::channel(ring_capacity);
                shards[source].targets.producers[target] = Some(producer);
                shards[target].sources.consumers[source] = Some(consumer);
            }
        }
        shards
    }
}

/// One shard's ends of the mesh: consumers from every other shard ([`Sources`]) and producers
/// to every other shard with the overflow for rings that were full ([`Targets`]). The methods
/// here forward to the two halves; [`ShardMesh::take_sources`] lends the inbound half out, so
/// a message taken from it can be handled, and pushed on, with the mesh still at hand.
pub struct ShardMesh {
    /// The interest in filters without wildcards that every shard shares, past
    /// `exact::SETS_SHARDS_MAX` shards (`shared_masks.rs`).
    exact: Option<Arc<shared_masks::SharedMasks>>,
    sources: Sources,
    targets: Targets,
}

impl ShardMesh {
    /// The shared exact-interest table, for this shard's `InterestIndex`.
    pub fn exact_masks(&self) -> Option<Arc<shared_masks::SharedMasks>> {
        self.exact.clone()
    }

    /// This shard's index.
    pub fn shard(&self) -> usize {
        self.targets.shard
    }

    pub fn shard_count(&self) -> usize {
        self.targets.producers.len()
    }

    /// See [`Targets::push`].
    pub fn push(&mut self, target: usize, message: MeshMessage) -> usize {
        self.targets.push(target, message)
    }

    /// See [`Targets::taken`].
    pub fn taken(&self, target: usize, sequence: usize) -> bool {
        self.targets.taken(target, sequence)
    }

    /// See [`Targets::broadcast`].
    pub fn broadcast(&mut self, message: MeshMessage) {
        self.targets.broadcast(message);
    }

    /// See [`Targets::flush_overflow`].
    pub fn flush_overflow(&mut self) -> usize {
        self.targets.flush_overflow()
    }

    /// See [`Targets::overflow_len`].
    pub fn overflow_len(&self, target: usize) -> usize {
        self.targets.overflow_len(target)
    }

    /// See [`Targets::overflow_total`].
    pub fn overflow_total(&self) -> usize {
        self.targets.overflow_total()
    }

    /// See [`Targets::overflow_deepest`].
    pub fn overflow_deepest(&self) -> usize {
        self.targets.overflow_deepest()
    }

    /// See [`Targets::take_wake_targets`].
    pub fn take_wake_targets(&mut self) -> u64 {
        self.targets.take_wake_targets()
    }

    /// See [`Sources::drain`].
    pub fn drain(&mut self, max_per_ring: usize, f: impl FnMut(usize, MeshMessage)) -> usize {
        self.sources.drain(max_per_ring, f)
    }

    /// See [`Sources::see`].
    pub fn see_inbound(&mut self) {
        self.sources.see();
    }

    /// Lends out the inbound half, so its owner can drain it while handling each message with
    /// full access to itself (pushing on goes through this mesh's [`Targets`]). Until
    /// [`ShardMesh::restore_sources`], this mesh sees no inbound ring: `inbound_len` and
    /// `taken_from` say 0.
    pub fn take_sources(&mut self) -> Sources {
        std::mem::take(&mut self.sources)
    }

    /// Puts back what [`ShardMesh::take_sources`] lent.
    pub fn restore_sources(&mut self, sources: Sources) {
        debug_assert!(self.sources.consumers.is_empty(), "sources restored twice");
        self.sources = sources;
    }

    /// See [`Sources::len`].
    pub fn inbound_len(&self) -> usize {
        self.sources.len()
    }

    /// See [`Sources::taken_from`].
    pub fn taken_from(&self, source: usize) -> usize {
        self.sources.taken_from(source)
    }
}

/// The consumers of one shard's inbound rings, one per other shard (none by default: the
/// place left while they are lent out).
#[derive(Default)]
pub struct Sources {
    /// Index = source shard; `None` at this shard's own index.
    consumers: Vec<Option<spsc::Consumer<MeshMessage>>>,
}

impl Sources {
    /// Takes up to `max_per_ring` messages from each inbound ring, handing each to
    /// `f(source_shard, message)`; returns how many in all. The bound keeps one busy source
    /// from starving the others and the shard's own connections (`Limits::mesh_batch_max`).
    pub fn drain(&mut self, max_per_ring: usize, f: impl FnMut(usize, MeshMessage)) -> usize {
        self.see();
        self.drain_seen(max_per_ring, f)
    }

    /// Looks at every inbound ring: what `drain_seen` may take until the next look.
    pub fn see(&mut self) {
        self.consumers
            .iter_mut()
            .flatten()
            .for_each(spsc::Consumer::see);
    }

    /// As `drain`, of the messages there at the last `see` only.
    pub fn drain_seen(
        &mut self,
        max_per_ring: usize,
        mut f: impl FnMut(usize, MeshMessage),
    ) -> usize {
        let mut count = 0;
        for (source, consumer) in self.consumers.iter_mut().enumerate() {
            if let Some(consumer) = consumer {
                count += consumer.drain_seen(max_per_ring, |message| f(source, message));
            }
        }
        count
    }

    /// Messages taken so far from `source`'s ring (wrapping; 0 for this shard itself): the
    /// message `source` pushed with sequence n has been taken once this passes n.
    pub fn taken_from(&self, source: usize) -> usize {
        self.consumers
            .get(source)
            .and_then(Option::as_ref)
            .map_or(0, spsc::Consumer::taken_count)
    }

    /// Messages waiting in the inbound rings (a snapshot; producers may be adding).
    pub fn len(&self) -> usize {
        self.consumers
            .iter()
            .flatten()
            .map(spsc::Consumer::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The producers of one shard's outbound rings, one per other shard, with the overflow queues
/// and the set of shards to wake.
pub struct Targets {
    /// This shard, the one that pushes.
    shard: usize,
    /// Index = target shard; `None` at this shard's own index.
    producers: Vec<Option<spsc::Producer<MeshMessage>>>,
    /// Index = target shard: messages that found its ring full, oldest first.
    overflow: Vec<VecDeque<MeshMessage>>,
    /// Index = target shard: messages pushed to it so far (wrapping), ring and overflow. The
    /// ring gets them all in this order, so a message's sequence is its index in the ring.
    pushed: Vec<usize>,
    /// Bit per target whose overflow queue is not empty.
    overflow_targets: u64,
    /// Bit per target that got messages since the last `take_wake_targets`.
    wake_targets: u64,
}

impl Targets {
    /// Sends `message` to `target`; never blocks. When the target's ring is full (or messages
    /// already wait for it) the message waits in the overflow queue, in order. Returns the
    /// message's sequence number to `target` (see `taken`).
    ///
    /// Panics if `target` is this shard or out of range: a route is computed by the broker, and
    /// a shard delivers to itself directly.
    pub fn push(&mut self, target: usize, message: MeshMessage) -> usize {
        assert!(
            target != self.shard && target < self.producers.len(),
            "shard {} pushed to shard {target} (shard_count {})",
            self.shard,
            self.producers.len()
        );
        let sequence = self.pushed[target];
        self.pushed[target] = sequence.wrapping_add(1);
        self.push_in_order(target, message);
        sequence
    }

    /// Whether `target` has taken the message pushed to it with `sequence` out of its ring
    /// (it handles what it takes before anything else, in the same turn).
    pub fn taken(&self, target: usize, sequence: usize) -> bool {
        let Some(producer) = self.producers.get(target).and_then(Option::as_ref) else {
            return true;
        };
        // Sequences wrap: "taken passed sequence" within half the number space.
        (producer.taken().wrapping_sub(sequence) as isize) > 0
    }

    fn push_in_order(&mut self, target: usize, message: MeshMessage) {
        let bit = 1u64 << target;
        self.wake_targets |= bit;
        if self.overflow_targets & bit != 0 {
            // Behind the messages already waiting, in order: `flush_overflow` moves them once
            // per turn. Trying to here, per push, cost a failed write (a load of the line the
            // target writes) and two moves of each message while the target was behind.
            self.overflow[target].push_back(message);
            return;
        }
        let producer = self.producers[target]
            .as_mut()
            .expect("every other shard has a ring");
        if let Err(message) = producer.try_write(message) {
            self.overflow[target].push_back(message);
            self.overflow_targets |= bit;
        }
    }

    /// Sends a clone of `message` to every other shard (payloads and topics are shared, not
    /// copied). Used for interest changes and retained messages.
    pub fn broadcast(&mut self, message: MeshMessage) {
        for target in 0..self.producers.len() {
            if target != self.shard {
                self.push(target, message.clone());
            }
        }
    }

    /// Moves overflowed messages into rings that have room again, oldest first; returns how
    /// many moved. Call once per loop turn, before `take_wake_targets`.
    pub fn flush_overflow(&mut self) -> usize {
        let mut moved = 0;
        let mut targets = self.overflow_targets;
        while targets != 0 {
            let target = targets.trailing_zeros() as usize;
            targets &= targets - 1;
            moved += self.flush_target(target);
        }
        moved
    }

    fn flush_target(&mut self, target: usize) -> usize {
        let producer = self.producers[target]
            .as_mut()
            .expect("every other shard has a ring");
        let queue = &mut self.overflow[target];
        let mut moved = 0;
        while let Some(message) = queue.pop_front() {
            if let Err(message) = producer.try_write(message) {
                queue.push_front(message);
                break;
            }
            moved += 1;
        }
        if queue.is_empty() {
            self.overflow_targets &= !(1u64 << target);
            // A burst (a retained or subscription storm, a slow target) must not keep its
            // queue's memory for good: past a ring's worth, give the rest back once drained.
            if queue.capacity() > OVERFLOW_KEPT {
                queue.shrink_to(OVERFLOW_KEPT);
            }
        }
        if moved > 0 {
            self.wake_targets |= 1u64 << target;
        }
        moved
    }

    /// Messages waiting in the overflow for `target` (its ring was full).
    pub fn overflow_len(&self, target: usize) -> usize {
        self.overflow[target].len()
    }

    /// Messages waiting in the overflow for all targets. Unbounded here: the shard watches it
    /// against its own limit and sheds QoS 0 or stops reading when a peer falls behind.
    pub fn overflow_total(&self) -> usize {
        self.overflow.iter().map(VecDeque::len).sum()
    }

    /// Messages waiting for the target furthest behind.
    pub fn overflow_deepest(&self) -> usize {
        let mut deepest = 0;
        let mut targets = self.overflow_targets;
        while targets != 0 {
            let target = targets.trailing_zeros() as usize;
            targets &= targets - 1;
            deepest = deepest.max(self.overflow[target].len());
        }
        deepest
    }

    /// The shards that got messages since the last call (bit per shard), and clears the set, so
    /// each is woken at most once per turn however many messages it got. A push that went to
    /// the overflow counts too: the target's ring is full, so it has work either way.
    ///
    /// Publishes those messages first: a push only writes its ring's slot, and this makes the
    /// turn's writes to each target visible with one store of its ring's tail, before the
    /// caller wakes it.
    pub fn take_wake_targets(&mut self) -> u64 {
        let targets = std::mem::take(&mut self.wake_targets);
        let mut rest = targets;
        while rest != 0 {
            let target = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            if let Some(producer) = self.producers[target].as_mut() {
                producer.publish();
            }
        }
        targets
    }
}

/// The home shard of `client_id`: FNV-1a 64 over the bytes, mixed with MurmurHash3's 64-bit
/// finalizer (FNV's low bits alone spread short, similar ids poorly), modulo `shard_count`.
///
/// A fixed function of the bytes: the same on every run, process and platform (no random seed,
/// no `usize`), so every shard agrees on a client's home, and so would a restarted broker.
/// Not keyed: a client can choose an id to land on a given shard, which only lets it pick a
/// shard for itself.
///
/// Panics if `shard_count` is 0.
pub fn home_shard(client_id: &[u8], shard_count: usize) -> usize {
    assert!(shard_count > 0, "shard_count must be at least 1");
    let hash = fmix64(fnv1a_64(client_id));
    // The remainder is below `shard_count`, so it fits back into `usize`.
    (hash % shard_count as u64) as usize
}

fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
fn fmix64(mut hash: u64) -> u64 {
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests;
