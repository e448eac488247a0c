//! Connections: one per fixed-file slot, in a slab per ring indexed by the slot the kernel
//! allocated on accept. A connection's id is its ring and slot in one `u32` (`conn_id`), which
//! is what tokens carry and what the shard passes around. Each slot carries a generation,
//! bumped when its connection is removed, so a completion that arrives for an older connection
//! in the same slot is recognised and dropped.
//!
//! An idle connection holds no buffer: `inbox` only keeps the bytes of a partial packet (freed
//! when the packet completes), `outbox` and `sending` go back to the shard's pool once sent.

use bytes::BytesMut;

use crate::protocol::{LastWill, ProtocolVersion};
use crate::ring::next_generation;

use super::conn_v5::ConnV5;

/// A new buffer for the bytes of a partial packet: room for what arrived, not for what its
/// header announces, or a client sending only headers would make the broker hold a large
/// buffer per connection (issue 7: 64 KiB each). It grows with the bytes as they come
/// (`extend_from_slice`, doubling), so a large packet costs a few copies of itself at most.
pub fn partial_inbox(partial: &[u8]) -> BytesMut {
    BytesMut::from(partial)
}

/// No session attached (before CONNECT, and once closing).
pub const NO_SESSION: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Accepted; the first packet must be CONNECT [MQTT-3.1.0-1].
    AwaitConnect,
    Connected,
    /// Its CONNECT names a client homed on another shard: the multishot recv is being ended
    /// (bytes still arriving are kept for the home shard), then the descriptor moves there.
    HandingOff,
    /// On its way out: waiting for the outbox to drain (when `close_after_flush`), then for the
    /// shutdown to end the recv and any send, then the slot is closed and freed.
    Closing,
}

/// The byte buffers of a connection that is doing something: a partial packet in, bytes on
/// their way out. Taken from the shard's pool when first needed and handed back by `trim` once
/// all three are empty, so an idle connection holds a `None` instead of three `BytesMut`.
#[derive(Debug, Default)]
pub struct ConnBuffers {
    /// Bytes of a packet that has not fully arrived yet.
    pub inbox: BytesMut,
    /// Bytes encoded this turn, waiting for the next send.
    pub outbox: BytesMut,
    /// Bytes handed to the kernel by the send in flight; must not move until it completes.
    pub sending: BytesMut,
    /// While the outbox pauses reads (`Pause::OUTBOX`): shard clock (ms) of the pause or of the
    /// last send that moved bytes since, whichever is later (see `backpressure.rs`).
    pub progress_ms: u64,
}

impl ConnBuffers {
    fn is_idle(&self) -> bool {
        self.inbox.is_empty() && self.outbox.is_empty() && self.sending.is_empty()
    }
}

/// Spare `ConnBuffers` boxes and outbox buffers, reused so a busy connection does not allocate
/// per turn and an idle one holds nothing.
#[derive(Default)]
pub struct Pools {
    pub buffers: Vec<Box<ConnBuffers>>,
    pub outboxes: Vec<BytesMut>,
}

/// Spares kept per pool; a buffer larger than `POOL_BUFFER_MAX` is freed instead.
pub const POOL_MAX: usize = 256;
pub const POOL_BUFFER_MAX: usize = 64 << 10;

impl Pools {
    /// Keeps an emptied outbox buffer for the next connection that writes.
    pub fn put_outbox(&mut self, mut buf: BytesMut) {
        if self.outboxes.len() < POOL_MAX && buf.capacity() > 0 && buf.capacity() <= POOL_BUFFER_MAX
        {
            buf.clear();
            self.outboxes.push(buf);
        }
    }
}

/// Why reading from a connection is paused (`backpressure.rs`): a set of reasons, each lifted
/// on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pause(u8);

impl Pause {
    pub const NONE: Pause = Pause(0);
    /// The outbox passed `outbox_bytes_max`; lifted when it drains to half.
    pub const OUTBOX: Pause = Pause(1);
    /// A QoS 0 retained PUBLISH found a shard-to-shard overflow at `mesh_overflow_max`;
    /// lifted when every overflow is under half of it.
    pub const MESH: Pause = Pause(2);

    pub fn any(self) -> bool {
        self.0 != 0
    }

    pub fn has(self, reason: Pause) -> bool {
        self.0 & reason.0 != 0
    }

    pub fn set(&mut self, reason: Pause, on: bool) {
        if on {
            self.0 |= reason.0;
        } else {
            self.0 &= !reason.0;
        }
    }
}

#[derive(Debug)]
pub struct Conn {
    pub state: ConnState,
    pub session: u32,
    pub version: ProtocolVersion,
    pub keepalive_secs: u16,
    /// Shard clock (ms) of the last packet received, or of the accept before CONNECT.
    pub last_packet_ms: u64,
    /// `None` while idle (see `ConnBuffers`).
    pub buffers: Option<Box<ConnBuffers>>,
    /// State only some clients use: their will, MQTT 5 topic aliases and Maximum Packet Size;
    /// `None` for the others (`conn_v5.rs`; the will through `will`, `set_will`, `take_will`).
    pub v5: Option<Box<ConnV5>>,
    pub recv_armed: bool,
    /// Why reading is paused, if it is: nothing re-arms the recv meanwhile (`backpressure.rs`).
    pub recv_paused: Pause,
    /// A pause's cancel of the armed recv is in flight; cleared by the recv's last completion.
    pub recv_cancelling: bool,
    pub send_in_flight: bool,
    /// Already on the shard's flush list this turn.
    pub dirty: bool,
    /// Closing: flush the outbox (e.g. a CONNACK refusing the client) before shutting down.
    pub close_after_flush: bool,
    pub shutdown_sent: bool,
    /// Shutdown and cancel operations not yet completed. The kernel runs a shutdown from a
    /// worker thread and resolves the fixed slot only then, so the slot must not be closed
    /// (and reused by the next accept) before it has completed.
    pub control_in_flight: u8,
}

// An idle connection's share of the 512 B budget per connection (DESIGN.md): the boxed state
// plus its slab entry. Grow it only knowingly (issue 12 took it from 48 to 40 B by moving the
// will into the side allocation).
const _: () = assert!(std::mem::size_of::<Conn>() <= 40);
const _: () = assert!(std::mem::size_of::<Entry>() <= 16);

impl Conn {
    fn new(now_ms: u64) -> Conn {
        Conn {
            state: ConnState::AwaitConnect,
            session: NO_SESSION,
            version: ProtocolVersion::V3_1_1,
            keepalive_secs: 0,
            last_packet_ms: now_ms,
            buffers: None,
            v5: None,
            recv_armed: false,
            recv_paused: Pause::NONE,
            recv_cancelling: false,
            send_in_flight: false,
            dirty: false,
            close_after_flush: false,
            shutdown_sent: false,
            control_in_flight: 0,
        }
    }

    /// The connection's buffers, from the pool if it had none.
    pub fn buffers(&mut self, pools: &mut Pools) -> &mut ConnBuffers {
        self.buffers
            .get_or_insert_with(|| pools.buffers.pop().unwrap_or_default())
    }

    /// The will of its CONNECT, until published or discarded (`ConnV5::will`).
    pub fn will(&self) -> Option<&LastWill> {
        self.v5.as_ref()?.will.as_deref()
    }

    pub fn set_will(&mut self, will: Option<Box<LastWill>>) {
        if will.is_some() {
            self.v5.get_or_insert_with(Box::default).will = will;
        } else if let Some(v5) = self.v5.as_mut() {
            v5.will = None;
        }
    }

    pub fn take_will(&mut self) -> Option<Box<LastWill>> {
        self.v5.as_mut()?.will.take()
    }

    /// Closing after a server DISCONNECT (`ConnV5::linger`).
    pub fn lingers(&self) -> bool {
        self.v5.as_ref().is_some_and(|v5| v5.linger)
    }

    pub fn set_linger(&mut self, linger: bool) {
        if linger {
            self.v5.get_or_insert_with(Box::default).linger = true;
        } else if let Some(v5) = self.v5.as_mut() {
            v5.linger = false;
        }
    }

    pub fn inbox_len(&self) -> usize {
        self.buffers.as_ref().map_or(0, |b| b.inbox.len())
    }

    /// Bytes waiting to go out: queued in the outbox plus the send in flight.
    pub fn pending_bytes(&self) -> usize {
        self.buffers
            .as_ref()
            .map_or(0, |b| b.outbox.len() + b.sending.len())
    }

    /// No QoS 0 message or queued one goes out to this connection now: its outbox is at the
    /// cap, or reading from it is paused. A paused connection takes nothing new until the
    /// kernel has drained its outbox to half, so reading resumes even while publishers outpace
    /// it (and its PINGREQ gets answered), see `backpressure.rs`.
    pub fn outbox_full(&self, outbox_bytes_max: usize) -> bool {
        self.recv_paused.has(Pause::OUTBOX) || self.pending_bytes() >= outbox_bytes_max
    }

    /// Hands the buffers back once none holds a byte (the connection went idle).
    pub fn trim(&mut self, pools: &mut Pools) {
        if !self.buffers.as_ref().is_some_and(|b| b.is_idle()) {
            return;
        }
        let Some(mut buffers) = self.buffers.take() else {
            return;
        };
        // A spare keeps no large buffer; small outbox capacity is worth keeping.
        buffers.inbox = BytesMut::new();
        pools.put_outbox(std::mem::take(&mut buffers.outbox));
        pools.put_outbox(std::mem::take(&mut buffers.sending));
        if pools.buffers.len() < POOL_MAX {
            pools.buffers.push(buffers);
        }
    }

    /// Nothing of this connection is in the kernel's hands any more: its slot can be closed.
    pub fn quiescent(&self) -> bool {
        self.state == ConnState::Closing
            && self.shutdown_sent
            && !self.recv_armed
            && !self.send_in_flight
            && self.control_in_flight == 0
    }
}

struct Entry {
    generation: u32,
    /// The listener the connection came in through (`Shard::listeners`): its transport and
    /// its `connections_max`. In the entry's padding, so `Conn` stays at its 40 B.
    listener: u8,
    conn: Option<Box<Conn>>,
}

/// Bits of a connection id that hold the slot; the ring index sits above them. A ring's table
/// never exceeds 2^24 slots (config validation).
pub const SLOT_BITS: u32 = 24;
pub const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
/// At most this many rings per shard: the ring index gets the top 8 bits of an id.
pub const RINGS_MAX: usize = 1 << (32 - SLOT_BITS);

/// The id of the connection in `slot` of the shard's ring `ring`: what tokens carry.
pub fn conn_id(ring: usize, slot: u32) -> u32 {
    debug_assert!(ring < RINGS_MAX && slot <= SLOT_MASK);
    (ring as u32) << SLOT_BITS | slot
}

pub fn ring_of(id: u32) -> usize {
    (id >> SLOT_BITS) as usize
}

pub fn slot_of(id: u32) -> u32 {
    id & SLOT_MASK
}

/// The slabs: `rings[ring][slot]` for every slot each ring's table has handed out so far.
#[derive(Default)]
pub struct Conns {
    rings: Vec<Vec<Entry>>,
    /// Connections per ring, to tell which ring has free slots.
    ring_counts: Vec<u32>,
    count: usize,
}

impl Conns {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Rings that have held a connection so far.
    pub fn ring_count(&self) -> usize {
        self.rings.len()
    }

    /// Slots ring `ring`'s slab has grown to (its highest slot used plus one).
    pub fn ring_slots(&self, ring: usize) -> u32 {
        self.rings
            .get(ring)
            .map_or(0, |entries| entries.len() as u32)
    }

    /// Connections ring `ring` holds.
    pub fn ring_len(&self, ring: usize) -> u32 {
        self.ring_counts.get(ring).copied().unwrap_or(0)
    }

    fn entry(&self, id: u32) -> Option<&Entry> {
        self.rings.get(ring_of(id))?.get(slot_of(id) as usize)
    }

    fn entry_mut(&mut self, id: u32) -> Option<&mut Entry> {
        self.rings
            .get_mut(ring_of(id))?
            .get_mut(slot_of(id) as usize)
    }

    /// A new connection `id` from listener `listener`, returning its generation.
    pub fn insert(&mut self, id: u32, now_ms: u64, listener: u8) -> u32 {
        let (ring, index) = (ring_of(id), slot_of(id) as usize);
        if ring >= self.rings.len() {
            self.rings.resize_with(ring + 1, Vec::new);
            self.ring_counts.resize(ring + 1, 0);
        }
        let entries = &mut self.rings[ring];
        if index >= entries.len() {
            entries.resize_with(index + 1, || Entry {
                generation: 0,
                listener: 0,
                conn: None,
            });
        }
        let entry = &mut entries[index];
        // The kernel hands out a slot only after it was closed, and we free the entry before
        // submitting the close.
        assert!(
            entry.conn.is_none(),
            "connection {id:#x} allocated while still in use"
        );
        entry.conn = Some(Box::new(Conn::new(now_ms)));
        entry.listener = listener;
        self.ring_counts[ring] += 1;
        self.count += 1;
        entry.generation
    }

    pub fn get_mut(&mut self, id: u32, generation: u32) -> Option<&mut Conn> {
        let entry = self.entry_mut(id)?;
        if entry.generation != generation {
            return None;
        }
        entry.conn.as_deref_mut()
    }

    pub fn get(&self, id: u32, generation: u32) -> Option<&Conn> {
        let entry = self.entry(id)?;
        if entry.generation != generation {
            return None;
        }
        entry.conn.as_deref()
    }

    /// The listener connection `id` came in through (0 for a free slot).
    pub fn listener(&self, id: u32) -> usize {
        self.entry(id).map_or(0, |entry| entry.listener as usize)
    }

    /// The current connection `id`, if any, with its generation.
    pub fn at(&mut self, id: u32) -> Option<(u32, &mut Conn)> {
        let entry = self.entry_mut(id)?;
        let generation = entry.generation;
        entry.conn.as_deref_mut().map(|conn| (generation, conn))
    }

    /// Frees the connection's entry and bumps its generation, so completions still addressed
    /// to the old connection are dropped.
    pub fn remove(&mut self, id: u32, generation: u32) -> Option<Box<Conn>> {
        let entry = self.entry_mut(id)?;
        if entry.generation != generation {
            return None;
        }
        let conn = entry.conn.take()?;
        entry.generation = next_generation(entry.generation);
        self.ring_counts[ring_of(id)] -= 1;
        self.count -= 1;
        Some(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_generation_finds_nothing() {
        let mut conns = Conns::default();
        let g0 = conns.insert(5, 0, 0);
        assert!(conns.get_mut(5, g0).is_some());
        assert!(conns.remove(5, g0).is_some());
        assert!(conns.get_mut(5, g0).is_none(), "removed");
        let g1 = conns.insert(5, 0, 0);
        assert_ne!(g0, g1);
        assert!(
            conns.get_mut(5, g0).is_none(),
            "old completion must not reach the new conn"
        );
        assert!(conns.get_mut(5, g1).is_some());
        assert_eq!(conns.len(), 1);
        assert!(conns.remove(5, g0).is_none(), "stale remove does nothing");
        assert_eq!(conns.len(), 1);
    }

    #[test]
    fn rings_have_separate_slabs() {
        let mut conns = Conns::default();
        let a = conn_id(0, 7);
        let b = conn_id(2, 7);
        assert_eq!((ring_of(b), slot_of(b)), (2, 7));
        let ga = conns.insert(a, 0, 0);
        let gb = conns.insert(b, 0, 0);
        assert!(conns.get(a, ga).is_some() && conns.get(b, gb).is_some());
        assert_eq!(
            (conns.ring_len(0), conns.ring_len(1), conns.ring_len(2)),
            (1, 0, 1)
        );
        assert!(conns.remove(b, gb).is_some());
        assert!(
            conns.get(a, ga).is_some(),
            "the same slot on another ring is untouched"
        );
        assert_eq!((conns.ring_len(2), conns.len()), (0, 1));
        assert_eq!((conns.ring_count(), conns.ring_slots(2)), (3, 8));
    }

    #[test]
    fn buffers_come_from_the_pool_and_go_back_when_idle() {
        let mut pools = Pools::default();
        let mut conn = Conn::new(0);
        assert!(conn.buffers.is_none(), "a new connection holds no buffer");
        conn.buffers(&mut pools)
            .outbox
            .extend_from_slice(b"CONNACK");
        assert_eq!(conn.pending_bytes(), 7);
        conn.trim(&mut pools);
        assert!(
            conn.buffers.is_some(),
            "bytes still to send keep the buffers"
        );
        let buffers = conn.buffers(&mut pools);
        std::mem::swap(&mut buffers.sending, &mut buffers.outbox);
        buffers.sending.clear();
        conn.trim(&mut pools);
        assert!(conn.buffers.is_none());
        assert_eq!(pools.buffers.len(), 1);
        assert_eq!(
            pools.outboxes.len(),
            1,
            "the sent buffer's capacity is kept"
        );
        conn.buffers(&mut pools).inbox.extend_from_slice(b"\x30");
        assert_eq!(
            (pools.buffers.len(), conn.inbox_len()),
            (0, 1),
            "the spare is reused"
        );
    }

    #[test]
    fn issue7_a_partial_packet_reserves_what_arrived_not_what_it_announces() {
        // The fixed header of a PUBLISH announcing 1,000,000 bytes, and nothing more.
        let header = [0x30, 0xc0, 0x84, 0x3d];
        let mut inbox = partial_inbox(&header);
        assert_eq!(&inbox[..], &header);
        assert!(inbox.capacity() <= 64, "reserved {} B", inbox.capacity());
        // Then it grows with the bytes, doubling: few reallocations, never far past them.
        let chunk = [0u8; 1000];
        let mut reallocations = 0;
        while inbox.len() < 1_000_004 {
            let capacity = inbox.capacity();
            inbox.extend_from_slice(&chunk);
            reallocations += usize::from(inbox.capacity() != capacity);
            assert!(inbox.capacity() <= 2 * inbox.len() + chunk.len());
        }
        assert!(reallocations <= 20, "{reallocations} reallocations");
    }

    #[test]
    fn quiescent_only_when_closing_and_idle() {
        let mut conn = Conn::new(0);
        assert!(!conn.quiescent());
        conn.state = ConnState::Closing;
        conn.shutdown_sent = true;
        conn.recv_armed = true;
        assert!(!conn.quiescent());
        conn.recv_armed = false;
        conn.send_in_flight = true;
        assert!(!conn.quiescent());
        conn.send_in_flight = false;
        conn.control_in_flight = 1;
        assert!(
            !conn.quiescent(),
            "a shutdown still in flight holds the slot"
        );
        conn.control_in_flight = 0;
        assert!(conn.quiescent());
    }

    #[test]
    fn a_will_lives_in_the_side_allocation() {
        let mut conn = Conn::new(0);
        conn.set_will(None);
        assert!(conn.v5.is_none(), "no will, no side allocation");
        conn.set_will(Some(Box::new(LastWill {
            topic: "gone".into(),
            payload: bytes::Bytes::from_static(b"bye"),
            qos: crate::protocol::QoS::AtLeastOnce,
            retain: false,
            properties: crate::protocol::Props::NONE,
        })));
        assert_eq!(conn.will().map(|w| &*w.topic), Some("gone"));
        assert_eq!(conn.take_will().map(|w| w.payload), Some("bye".into()));
        assert!(conn.will().is_none() && conn.take_will().is_none());
    }
}
