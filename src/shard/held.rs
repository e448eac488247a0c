//! Acknowledgements that must not overtake the mesh (issue 7 items 8 and 10).
//!
//! A SUBACK tells the client that publishes anywhere now reach it, so it must not go out
//! before every other shard has applied the interest change the SUBSCRIBE caused; a PUBACK for
//! a retained message tells it that a subscription anywhere now finds it. A full ring used to
//! break both: the change waited in the local overflow while the ack was written at once, and
//! even in the ring it could sit behind a backlog the target takes a batch per turn. So such
//! an ack is held until the target has taken the message out of its ring (`ShardMesh::taken`:
//! a shard handles what it drains before anything else), with the sequence numbers the mesh
//! gave the messages, recorded as they were pushed.
//!
//! The same hold is the back-pressure for QoS 1/2 forwards waiting over `mesh_overflow_max`
//! (item 8): their PUBACK/PUBREC waits for the forward to be taken, so the publisher's own
//! in-flight window (every client keeps one) stops it while the target catches up, and the
//! overflow grows by at most what those windows hold, not without bound. A client that ignores
//! its window runs into `limits.incoming_inflight_max` and is disconnected. QoS 0 forwards
//! past the limit are dropped (counted) instead. Interest, retained and hand-off messages are
//! never dropped: they carry state. Interest and hand-offs are bounded by subscriptions and
//! connections; retained messages by their publishers' windows at QoS 1/2 (the PUBACK waits
//! for every shard), and at QoS 0 by pausing the publisher's reads (`backpressure.rs`).
//!
//! Acks of one connection keep their order [MQTT-4.6.0-2, 4.6.0-3]: once one is held, later
//! ones queue behind it, waiting or not. A PINGRESP is not an ack and is never held. Behind a
//! held SUBACK the connection's later packets wait too (`subscribe.rs`), so its retained
//! messages and its own publishes come after the SUBACK, as clients expect; behind a held
//! PUBACK they do not (the window does the throttling). Holds are looked at once per turn,
//! and only while there are some; a shard going to sleep with holds asks to be woken when a
//! target drains (`Peers::set_sleeping`, "backlogged").
//!
//! With persistence on and `sync = "ack"`, an ack may also wait for this shard's own log: the
//! pseudo-target `durable::DISK` with a record's number, released when the log's fdatasync
//! completes (`durable/`). So does one packet that is not an ack: a QoS 2 PUBLISH to a
//! persistent session waits for the record of its packet id (`HeldPacket::Publish`), in its
//! connection's order like the acks.

use std::collections::VecDeque;

use foldhash::fast::RandomState;
use hashbrown::HashMap;
use smallvec::{smallvec, SmallVec};

use crate::protocol::{Packet, PubAck, ReasonCode, SubAck, UnsubAck};
use crate::session::{ConnRef, InflightState};

use super::outgoing::{Outboxes, Written};
use super::Shard;

/// (target shard or `durable::DISK`, sequence) of the messages or record an ack waits for,
/// the last one per target. Mostly one (the log, or one shard): inline, no allocation per
/// held ack.
pub(super) type Waits = SmallVec<[(u16, usize); 2]>;

/// An acknowledgement waiting for the mesh, small enough to hold many.
#[derive(Debug)]
pub(super) enum HeldPacket {
    SubAck {
        packet_id: u16,
        codes: Vec<ReasonCode>,
    },
    /// MQTT 5: one code per filter; empty under 3.1.1 (not on the wire).
    UnsubAck {
        packet_id: u16,
        codes: Vec<ReasonCode>,
    },
    /// With the MQTT 5 reason code (3.1.1 sends none), and no Reason String (`write_held`).
    PubAck(u16, ReasonCode),
    PubRec(u16, ReasonCode),
    /// The PUBREC of a new inbound QoS 2 PUBLISH with persistence on: the id is recorded for
    /// `session` (`durable/`) right after the deliveries when they are all in this shard's
    /// log, else once the other shards made theirs durable; the PUBREC then waits for that
    /// record. So a crash never leaves the id recorded without the messages: a re-sent
    /// PUBLISH after it is a repeat only if its deliveries were kept.
    PubRecLogged {
        packet_id: u16,
        code: ReasonCode,
        session: u32,
    },
    PubComp(u16, ReasonCode),
    /// Ours to the client's PUBREC; held with persistence on until the record of the PUBREC
    /// is on disk.
    PubRel(u16, ReasonCode),
    /// Not an ack: a QoS 2 PUBLISH to persistent `session`, in its window as `packet_id`,
    /// held with `sync = "ack"` until the record of its packet id is on disk (`log_sent`),
    /// then encoded from the window. The connection's acks keep their order around it.
    Publish {
        session: u32,
        packet_id: u16,
    },
}

impl HeldPacket {
    /// A PUBACK, PUBREC or PUBCOMP of Reason Code 0 as its four bytes (`outgoing::plain_ack`).
    fn plain_ack(&self) -> Option<[u8; 4]> {
        let (first, packet_id, code) = match *self {
            HeldPacket::PubAck(packet_id, code) => (0x40, packet_id, code),
            HeldPacket::PubRec(packet_id, code) => (0x50, packet_id, code),
            HeldPacket::PubComp(packet_id, code) => (0x70, packet_id, code),
            _ => return None,
        };
        let [high, low] = packet_id.to_be_bytes();
        (code == ReasonCode::Success).then_some([first, 2, high, low])
    }

    /// `None` for a `Publish` (`send_held_publish`).
    fn into_packet(self) -> Option<Packet> {
        Some(match self {
            HeldPacket::SubAck { packet_id, codes } => Packet::SubAck(SubAck {
                packet_id,
                codes,
                properties: Default::default(),
            }),
            HeldPacket::UnsubAck { packet_id, codes } => Packet::UnsubAck(UnsubAck {
                packet_id,
                codes,
                properties: Default::default(),
            }),
            HeldPacket::PubAck(packet_id, code) => Packet::PubAck(PubAck {
                code,
                ..PubAck::new(packet_id)
            }),
            HeldPacket::PubRec(packet_id, code)
            | HeldPacket::PubRecLogged {
                packet_id, code, ..
            } => Packet::PubRec(PubAck {
                code,
                ..PubAck::new(packet_id)
            }),
            HeldPacket::PubRel(packet_id, code) => Packet::PubRel(PubAck {
                code,
                ..PubAck::new(packet_id)
            }),
            HeldPacket::PubComp(packet_id, code) => Packet::PubComp(PubAck {
                code,
                ..PubAck::new(packet_id)
            }),
            HeldPacket::Publish { .. } => return None,
        })
    }
}

struct Hold {
    packet: HeldPacket,
    /// (target shard, sequence) of the messages the ack waits for, the last one per target
    /// (rings are FIFO). Empty: it only keeps its connection's order.
    waits: Waits,
}

/// One connection's held acks, in order, and how many of them are PUBACKs (QoS 1 publishes
/// the client has not seen acknowledged, against `incoming_inflight_max`).
#[derive(Default)]
struct ConnHolds {
    holds: VecDeque<Hold>,
    pubacks: u32,
}

#[derive(Default)]
pub(super) struct HeldAcks {
    /// Waits recorded by mesh pushes while the current packet is handled.
    recording: Waits,
    /// Per connection with acks held. Only a connection's first hold can be due, so a release
    /// pass looks at one hold per connection and at those it releases, never at the rest: a
    /// single queue of every hold, looked through whole each turn, cost a busy 2-shard broker
    /// 1.3 µs per retained QoS 1 message with 10,000 PUBACKs held.
    per_conn: HashMap<(u32, u32), ConnHolds, RandomState>,
    /// Scratch for a release pass: the acks found due, in each connection's order.
    due: Vec<((u32, u32), HeldPacket)>,
}

impl HeldAcks {
    pub(super) fn is_empty(&self) -> bool {
        self.per_conn.is_empty()
    }

    /// A new packet is being handled: what earlier work pushed is not its concern.
    pub(super) fn begin(&mut self) {
        self.recording.clear();
    }

    /// The ack of the packet being handled must wait for this message.
    pub(super) fn record(&mut self, target: usize, sequence: usize) {
        let target = target as u16;
        match self.recording.iter_mut().find(|(t, _)| *t == target) {
            Some(wait) => wait.1 = sequence,
            None => self.recording.push((target, sequence)),
        }
    }

    /// The ack of the packet being handled must wait for record `record` of this shard's
    /// log to be on disk or voided (`durable::VOIDABLE`). One such wait per ack: a second
    /// record (a message owed to two sessions) waits to be on disk, as other records do.
    pub(super) fn record_voidable(&mut self, record: usize) {
        let voidable = super::durable::VOIDABLE;
        if self.recording.iter().any(|&(target, _)| target == voidable) {
            self.record(usize::from(super::durable::DISK), record);
        } else {
            self.recording.push((voidable, record));
        }
    }

    /// Takes what was recorded so far (a packet handled in parts adds them up).
    pub(super) fn take_recorded(&mut self, into: &mut Waits) {
        for &(target, sequence) in &self.recording {
            match into.iter_mut().find(|(t, _)| *t == target) {
                Some(wait) => wait.1 = sequence,
                None => into.push((target, sequence)),
            }
        }
        self.recording.clear();
    }

    /// PUBACKs held for this connection.
    pub(super) fn pubacks(&self, conn: (u32, u32)) -> u32 {
        self.per_conn.get(&conn).map_or(0, |c| c.pubacks)
    }

    fn hold(&mut self, conn: (u32, u32), packet: HeldPacket, waits: Waits) {
        let holds = self.per_conn.entry(conn).or_default();
        holds.pubacks += u32::from(matches!(packet, HeldPacket::PubAck(..)));
        holds.holds.push_back(Hold { packet, waits });
    }

    /// Puts back, first in its connection's order, a hold taken out as due that must wait
    /// after all (a PUBREC for its log record).
    fn hold_first(&mut self, conn: (u32, u32), packet: HeldPacket, waits: Waits) {
        let holds = self.per_conn.entry(conn).or_default();
        holds.pubacks += u32::from(matches!(packet, HeldPacket::PubAck(..)));
        holds.holds.push_front(Hold { packet, waits });
    }
}

impl Shard {
    /// Writes the ack of the packet just handled, or holds it: when a message it pushed to
    /// another shard must be taken first, or when an earlier ack of the connection is held.
    pub(super) fn ack(&mut self, slot: u32, generation: u32, packet: HeldPacket) {
        let mut waits = Waits::new();
        self.held.take_recorded(&mut waits);
        self.ack_after(slot, generation, packet, waits);
    }

    /// As `ack`, with the waits gathered by the caller. Returns whether it was written now.
    pub(super) fn ack_after(
        &mut self,
        slot: u32,
        generation: u32,
        packet: HeldPacket,
        waits: Waits,
    ) -> bool {
        let conn = (slot, generation);
        let mut waits = waits;
        let mut packet = packet;
        if matches!(packet, HeldPacket::PubRecLogged { .. })
            && waits
                .iter()
                .all(|&(target, _)| target == super::durable::DISK)
        {
            // Everything the PUBLISH caused is in this shard's log: the id's record goes in
            // the same batch, after them, and the PUBREC waits for it alone.
            let (pubrec, wait) = self.log_pubrec(packet);
            packet = pubrec;
            waits.clear();
            waits.extend(wait);
        }
        // Most acks wait for nothing: the filtering is out of line.
        let mut waits = if waits.is_empty() {
            waits
        } else {
            self.still_waiting(waits)
        };
        if waits.is_empty() {
            if let HeldPacket::PubRecLogged { .. } = packet {
                let (pubrec, wait) = self.log_pubrec(packet);
                packet = pubrec;
                waits.extend(wait);
            }
        }
        if waits.is_empty()
            && (self.held.per_conn.is_empty() || !self.held.per_conn.contains_key(&conn))
        {
            self.write_held(slot, generation, packet);
            return true;
        }
        if !waits.is_empty() {
            self.stats.acks_held += 1;
        }
        self.held.hold(conn, packet, waits);
        false
    }

    /// The waits of `waits` that are not over yet.
    #[inline(never)]
    fn still_waiting(&self, mut waits: Waits) -> Waits {
        waits.retain(|wait| !self.wait_over(*wait));
        waits
    }

    /// Writes an ack, with its Reason String where it has one and the client takes them.
    fn write_held(&mut self, slot: u32, generation: u32, packet: HeldPacket) {
        // Every QoS 1/2 PUBLISH gets one: its four bytes, no `Packet` built.
        if let Some(bytes) = packet.plain_ack() {
            if self
                .outboxes()
                .plain_ack(ConnRef { slot, generation }, bytes)
            {
                return;
            }
        }
        if let HeldPacket::Publish { session, packet_id } = packet {
            return self.send_held_publish(ConnRef { slot, generation }, session, packet_id);
        }
        let Some(mut packet) = packet.into_packet() else {
            return;
        };
        // PUBACK, PUBREC and PUBCOMP go without a Reason String (a MAY): Eclipse Paho's
        // reference client codec refuses a publish ack longer than 4 bytes, and the code says
        // what went wrong. SUBACK and UNSUBACK carry one: that codec reads their properties.
        match &mut packet {
            // One Reason String a packet: the first refused filter's (3.1.1 writes none).
            Packet::SubAck(SubAck {
                codes, properties, ..
            })
            | Packet::UnsubAck(UnsubAck {
                codes, properties, ..
            }) => {
                if let Some(&code) = codes.iter().find(|code| code.is_failure()) {
                    *properties = self.ack_properties(slot, generation, code);
                }
            }
            _ => {}
        }
        self.write(slot, generation, &packet);
    }

    /// Holds the QoS 2 PUBLISH `packet_id` of `session` to `conn` until record `record` of
    /// this shard's log is on disk (`log_sent`).
    pub(super) fn hold_publish(
        &mut self,
        conn: ConnRef,
        session: u32,
        packet_id: u16,
        record: u64,
    ) {
        let packet = HeldPacket::Publish { session, packet_id };
        self.held.hold(
            (conn.slot, conn.generation),
            packet,
            smallvec![(super::durable::DISK, record as usize)],
        );
    }

    /// A held QoS 2 PUBLISH goes out, encoded from the window, unless its client left
    /// meanwhile (a resume sends the window again, `resend_inflight`) or its flow ended.
    fn send_held_publish(&mut self, conn: ConnRef, session: u32, packet_id: u16) {
        let now_secs = self.now_ms / 1000;
        let Some(s) = self
            .sessions
            .get_mut(session)
            .filter(|s| s.conn == Some(conn))
        else {
            return;
        };
        let Some(m) = s.inflight_message(packet_id, InflightState::AwaitPubRec) else {
            return;
        };
        let mut out = Outboxes {
            conns: &mut self.conns,
            pools: &mut self.pools,
            dirty: &mut self.dirty,
            stats: &mut self.stats,
        };
        if out.publish_stored(conn, m, packet_id, false, now_secs) == Written::TooLarge {
            // Over the client's Maximum Packet Size: done with, as in `pump`.
            s.discard_inflight(packet_id);
        }
    }

    /// Writes every held ack whose messages were taken, in each connection's order. Returns
    /// whether it wrote any.
    pub(super) fn release_held(&mut self) -> bool {
        if self.held.per_conn.is_empty() {
            return false;
        }
        // Out of `self` while `wait_over` reads the mesh and the log.
        let mut per_conn = std::mem::take(&mut self.held.per_conn);
        let mut due = std::mem::take(&mut self.held.due);
        per_conn.retain(|&conn, holds| {
            while let Some(first) = holds.holds.front() {
                if first.waits.iter().any(|&wait| !self.wait_over(wait)) {
                    break;
                }
                let Some(Hold { packet, .. }) = holds.holds.pop_front() else {
                    break;
                };
                holds.pubacks -= u32::from(matches!(packet, HeldPacket::PubAck(..)));
                // Its log record may make it wait again, and the rest behind it.
                let logged = matches!(packet, HeldPacket::PubRecLogged { .. });
                due.push((conn, packet));
                if logged {
                    break;
                }
            }
            !holds.holds.is_empty()
        });
        self.held.per_conn = per_conn;
        let mut released = false;
        for (conn, packet) in due.drain(..) {
            let packet = match packet {
                HeldPacket::PubRecLogged { .. } => {
                    let (pubrec, wait) = self.log_pubrec(packet);
                    if let Some(wait) = wait {
                        // Nothing of its connection was taken out after it.
                        self.held.hold_first(conn, pubrec, smallvec![wait]);
                        continue;
                    }
                    pubrec
                }
                packet => packet,
            };
            let suback = matches!(packet, HeldPacket::SubAck { .. });
            self.write_held(conn.0, conn.1, packet);
            if suback {
                // Its SUBSCRIBE's retained messages were waiting for it (`subscribe.rs`).
                self.on_suback_released(conn);
            }
            released = true;
        }
        self.held.due = due;
        released
    }
}
