//! QoS 2 exactly once across shards and crashes (issue 10), with persistence on.
//!
//! The shard of a QoS 2 publisher (A) records the inbound packet id only once every shard it
//! forwarded the message to (B) made durable the messages it queued for persistent sessions
//! (`held.rs`, `PubRecLogged`): a crash never leaves the id without the messages. A crash
//! between the two leaves the messages without the id: the publisher sends the PUBLISH again
//! (DUP=1), and A, which does not know the id, routes it as a new one. So while A routes a QoS
//! 2 message from a persistent session, its deliveries are keyed by the flow, (publisher's
//! client id, packet id) (`Shard::flow_key`, carried to B in the forward): each delivery to a
//! persistent session records the key (`Seen`) in the batch that records the message, and a
//! re-sent copy is not delivered to a session that holds its key.
//!
//! A key holds until the publisher's PUBREL: A then tells the shards it forwarded the flow to
//! (`MeshMessage::FlowReleased`; every other shard for an id it does not know from this run),
//! each forgets the key (`Unseen`), and the PUBCOMP waits until that is durable everywhere,
//! since a key left behind would make the next flow under the id, were its first copy cut by a
//! crash, look like a repeat: a loss. The keys are the subscribing session's, in its home
//! shard's log as its messages are, so a change of `--shards` re-homes them with the session;
//! a session's end takes its keys, and a publisher's session's end releases all its flows.
//!
//! With one shard none of this runs: the id's record goes in the batch of the messages.

use bytestring::ByteString;
use foldhash::fast::RandomState;
use hashbrown::HashMap;

use crate::mesh::{FlowKey, MeshMessage};
use crate::persist::{self, Kind};

use super::durable::DISK;
use super::peers::for_each_bit;
use super::Shard;

/// A publisher's open flows as this shard holds them: (packet id, client ids of the persistent
/// sessions that hold the flow's key).
type Flows = Vec<(u16, Vec<Box<str>>)>;

/// The flow keys of one shard's persistent sessions, and where its publishers' flows went.
#[derive(Default)]
pub(super) struct FlowKeys {
    /// Publisher's client id -> its flows whose keys sessions here hold. Few: the QoS 2
    /// flows open, each until its PUBREL.
    held: HashMap<Box<str>, Flows, RandomState>,
    /// (publisher's session, packet id) -> the shards its keyed forwards went to, told of its
    /// PUBREL.
    forwarded: HashMap<(u32, u16), u64, RandomState>,
}

impl FlowKeys {
    fn holds(&self, publisher: &str, packet_id: u16, session: &str) -> bool {
        self.held
            .get(publisher)
            .and_then(|flows| flows.iter().find(|(id, _)| *id == packet_id))
            .is_some_and(|(_, sessions)| sessions.iter().any(|s| &**s == session))
    }

    /// Returns whether the key is new for `session`.
    fn insert(&mut self, publisher: &str, packet_id: u16, session: &str) -> bool {
        let flows = match self.held.get_mut(publisher) {
            Some(flows) => flows,
            None => self.held.entry(publisher.into()).or_default(),
        };
        let index = match flows.iter().position(|(id, _)| *id == packet_id) {
            Some(index) => index,
            None => {
                flows.push((packet_id, Vec::new()));
                flows.len() - 1
            }
        };
        let sessions = &mut flows[index].1;
        if sessions.iter().any(|s| &**s == session) {
            return false;
        }
        sessions.push(session.into());
        true
    }

    /// Removes the keys of `publisher`'s flow `packet_id` (of all its flows with `None`) into
    /// `into`, as (packet id, session).
    fn release(
        &mut self,
        publisher: &str,
        packet_id: Option<u16>,
        into: &mut Vec<(u16, Box<str>)>,
    ) {
        let Some(flows) = self.held.get_mut(publisher) else {
            return;
        };
        flows.retain_mut(|(id, sessions)| {
            if packet_id.is_some_and(|p| p != *id) {
                return true;
            }
            into.extend(sessions.drain(..).map(|s| (*id, s)));
            false
        });
        if flows.is_empty() {
            self.held.remove(publisher);
        }
    }

    /// Session `session` ended: its keys go with it (as its records do at the replay).
    fn forget_session(&mut self, session: &str) {
        self.held.retain(|_, flows| {
            flows.retain_mut(|(_, sessions)| {
                sessions.retain(|s| &**s != session);
                !sessions.is_empty()
            });
            !flows.is_empty()
        });
    }
}

impl Shard {
    /// Every shard but this one, as a mask.
    fn other_shards(&self) -> u64 {
        let all = if self.shard_count >= 64 {
            u64::MAX
        } else {
            (1u64 << self.shard_count) - 1
        };
        all & !(1u64 << self.index)
    }

    /// A QoS 2 PUBLISH new to this shard (its id not held) from `session`: when the session
    /// is persistent, with persistence on and several shards, its deliveries are keyed while it
    /// is routed (until `end_keyed_flow`).
    pub(super) fn begin_keyed_flow(&mut self, session: u32, packet_id: u16, dup: bool) {
        if self.shard_count == 1 || self.durable.is_none() {
            return;
        }
        let Some(s) = self.sessions.get(session).filter(|s| !s.clean_session) else {
            return;
        };
        self.flow_key = Some(FlowKey {
            client_id: ByteString::from(&*s.client_id),
            packet_id,
            dup,
        });
    }

    pub(super) fn end_keyed_flow(&mut self) {
        self.flow_key = None;
    }

    /// Whether persistent `session` holds the key of the re-sent flow being routed: it has
    /// the message already, and is not given it again.
    #[inline(never)]
    pub(super) fn holds_flow_key(&self, session: u32) -> bool {
        let (Some(key), Some(durable)) = (&self.flow_key, self.durable.as_deref()) else {
            return false;
        };
        key.dup
            && self.sessions.get(session).is_some_and(|s| {
                !s.clean_session
                    && durable
                        .keys
                        .holds(&key.client_id, key.packet_id, &s.client_id)
            })
    }

    /// The message of the flow being routed was just recorded for persistent `session`: the
    /// key goes in the same batch.
    pub(super) fn log_flow_key(&mut self, session: u32) {
        let (Some(key), Some(durable)) = (&self.flow_key, self.durable.as_deref_mut()) else {
            return;
        };
        let Some(s) = self.sessions.get(session) else {
            return;
        };
        if durable
            .keys
            .insert(&key.client_id, key.packet_id, &s.client_id)
        {
            durable.append(|out| {
                persist::append_flow_key(
                    out,
                    Kind::Seen,
                    &s.client_id,
                    &key.client_id,
                    key.packet_id,
                )
            });
        }
    }

    /// The keyed forwards of the flow being routed went to `targets`.
    pub(super) fn note_flow_forwarded(&mut self, targets: u64) {
        let (Some(key), Some(durable)) = (&self.flow_key, self.durable.as_deref_mut()) else {
            return;
        };
        if targets != 0 {
            *durable
                .keys
                .forwarded
                .entry((self.publisher, key.packet_id))
                .or_default() |= targets;
        }
    }

    /// The PUBREL of persistent `session`'s flow `packet_id` (`known`: the id was held): the
    /// flow's keys go, here and on the shards it was forwarded to (every other shard when the
    /// flow is not known from this run: taken before a restart, or its id lost with a crash),
    /// and the PUBCOMP being handled waits until that is durable everywhere.
    pub(super) fn release_flow(&mut self, session: u32, packet_id: u16, known: bool) {
        if self.shard_count == 1 {
            return;
        }
        let others = self.other_shards();
        let Some(durable) = self.durable.as_deref_mut() else {
            return;
        };
        let Some(s) = self.sessions.get(session).filter(|s| !s.clean_session) else {
            return;
        };
        let targets = match durable.keys.forwarded.remove(&(session, packet_id)) {
            Some(targets) => targets,
            None if known => 0,
            None => others,
        };
        let client_id = ByteString::from(&*s.client_id);
        if let Some(record) = self.forget_flow_keys(&client_id, Some(packet_id)) {
            if self.durable_acks {
                self.held.record(usize::from(DISK), record as usize);
            }
        }
        for_each_bit(targets, |target| {
            let message = MeshMessage::FlowReleased {
                client_id: client_id.clone(),
                packet_id: Some(packet_id),
            };
            self.mesh_push(target, message);
        });
    }

    /// Persistent session `session` ends: the keys it holds go with it, and its own flows as
    /// a publisher are released on every shard (nothing waits for that).
    pub(super) fn end_flow_keys(&mut self, session: u32) {
        let Some(durable) = self.durable.as_deref_mut() else {
            return;
        };
        let Some(s) = self.sessions.get(session) else {
            return;
        };
        if !durable.keys.held.is_empty() {
            durable.keys.forget_session(&s.client_id);
        }
        if !durable.keys.forwarded.is_empty() {
            durable
                .keys
                .forwarded
                .retain(|&(publisher, _), _| publisher != session);
        }
        if self.shard_count == 1 {
            return;
        }
        let client_id = ByteString::from(&*s.client_id);
        self.forget_flow_keys(&client_id, None);
        for_each_bit(self.other_shards(), |target| {
            let message = MeshMessage::FlowReleased {
                client_id: client_id.clone(),
                packet_id: None,
            };
            self.mesh_push(target, message);
        });
    }

    /// Forgets the keys of `publisher`'s flow `packet_id` (of all its flows with `None`) that
    /// this shard's sessions hold, an `Unseen` record each; returns the last one's number.
    pub(super) fn forget_flow_keys(
        &mut self,
        publisher: &str,
        packet_id: Option<u16>,
    ) -> Option<u64> {
        let durable = self.durable.as_deref_mut()?;
        let mut released = Vec::new();
        durable.keys.release(publisher, packet_id, &mut released);
        let mut last = None;
        for (id, session) in released {
            last = Some(durable.append(|out| {
                persist::append_flow_key(out, Kind::Unseen, &session, publisher, id)
            }));
        }
        last
    }

    /// At start, for restored persistent session `session` (`client_id`): the keys it held,
    /// and its inbound QoS 2 ids, whose flows may have been forwarded anywhere.
    pub(super) fn restore_flow_keys(
        &mut self,
        session: u32,
        client_id: &str,
        keys: &[(Box<str>, u16)],
        incoming: &[u16],
    ) {
        let others = self.other_shards();
        let shard_count = self.shard_count;
        let Some(durable) = self.durable.as_deref_mut() else {
            return;
        };
        for (publisher, packet_id) in keys {
            durable.keys.insert(publisher, *packet_id, client_id);
        }
        if shard_count > 1 {
            for &packet_id in incoming {
                durable.keys.forwarded.insert((session, packet_id), others);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FlowKeys;

    #[test]
    fn keys_are_held_per_session_until_their_flow_is_released() {
        let mut keys = FlowKeys::default();
        assert!(keys.insert("pub", 7, "sub-a"));
        assert!(!keys.insert("pub", 7, "sub-a"));
        assert!(keys.insert("pub", 7, "sub-b"));
        assert!(keys.insert("pub", 8, "sub-a"));
        assert!(keys.insert("other", 7, "sub-a"));
        assert!(keys.holds("pub", 7, "sub-b"));
        assert!(!keys.holds("pub", 9, "sub-a"));
        assert!(!keys.holds("pub", 7, "sub-c"));

        let mut released = Vec::new();
        keys.release("pub", Some(7), &mut released);
        released.sort();
        assert_eq!(released, [(7, "sub-a".into()), (7, "sub-b".into())]);
        assert!(!keys.holds("pub", 7, "sub-a"));
        assert!(keys.holds("pub", 8, "sub-a"));

        keys.forget_session("sub-a");
        assert!(!keys.holds("pub", 8, "sub-a"));
        assert!(keys.held.get("pub").is_none());

        released.clear();
        assert!(keys.insert("other", 9, "sub-b"));
        keys.release("other", None, &mut released);
        assert_eq!(released.len(), 1, "sub-a's key went with its session");
        assert!(keys.held.is_empty());
    }
}
