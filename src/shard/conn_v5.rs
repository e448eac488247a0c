//! The state of one network connection that only some clients use: its will (either protocol
//! version), and MQTT 5's topic aliases both ways, the client's Maximum Packet Size, its
//! Request Problem Information 0 and its enhanced authentication method. A side allocation
//! (`Conn::v5`), made at CONNECT for a client that has a will or asks for any of these, or on
//! its first inbound alias; a client that uses none of this holds a `None`, which keeps an idle
//! `Conn` at 40 B (issue 12). Aliases belong to the network
//! connection, not the session: a new connection starts with none [MQTT-3.3.2-7], so this goes
//! with the `Conn`.

use std::collections::HashMap;
use std::hash::BuildHasher;

use bytestring::ByteString;

use crate::protocol::{LastWill, Properties};

#[derive(Debug, Default)]
pub struct ConnV5 {
    /// Topics the client named by alias in its PUBLISHes.
    pub inbound: InboundAliases,
    /// Aliases the broker assigned for topics it sends; `None` when the client allows none.
    pub outbound: Option<OutboundAliases>,
    /// The client's Maximum Packet Size (CONNECT property 0x27); `None`: only the protocol's.
    pub packet_size_max: Option<u32>,
    /// The client sent Request Problem Information 0: no Reason String or User Property on
    /// anything but PUBLISH, CONNACK and DISCONNECT [MQTT-3.1.2-29].
    pub no_problem_information: bool,
    /// The Authentication Method of its CONNECT, which re-authentication must repeat
    /// [MQTT-4.12.1-1]. Only set once an enhanced method accepted the client.
    pub auth_method: Option<Box<str>>,
    /// Closing after a server DISCONNECT: once it is flushed only the write side is shut, and
    /// what the client still sends is read and dropped until it closes (or `LINGER_MS`), so
    /// that the close is not a reset that loses the DISCONNECT (`close.rs`). Here rather than
    /// in `Conn`: only a v5 client is told a DISCONNECT.
    pub linger: bool,
    /// The will of its CONNECT, of either protocol version, until it is published (abnormal
    /// close) or discarded (DISCONNECT 0x00) (`Conn::will`, `set_will`, `take_will`).
    pub will: Option<Box<LastWill>>,
}

impl ConnV5 {
    /// The state a CONNECT asks for: outbound aliases up to the client's Topic Alias Maximum
    /// (and at most `alias_max`, ours, so what a connection can make us hold is bounded both
    /// ways), its Maximum Packet Size, no problem information. `None` when it asks for none
    /// of these (the enhanced authentication method is added by the caller).
    pub fn for_connect(properties: &Properties, alias_max: u16) -> Option<Box<ConnV5>> {
        let outbound_max = properties.topic_alias_maximum.unwrap_or(0).min(alias_max);
        let packet_size_max = properties.maximum_packet_size;
        let no_problem_information = properties.request_problem_information == Some(0);
        if outbound_max == 0 && packet_size_max.is_none() && !no_problem_information {
            return None;
        }
        Some(Box::new(ConnV5 {
            inbound: InboundAliases::default(),
            outbound: (outbound_max > 0).then(|| OutboundAliases::new(outbound_max)),
            packet_size_max,
            no_problem_information,
            auth_method: None,
            linger: false,
            will: None,
        }))
    }
}

/// Alias -> topic, as the client set them (3.3.2.3.4): grown to the highest alias used, at most
/// the Topic Alias Maximum the CONNACK gave (the caller checks the range first).
#[derive(Debug, Default)]
pub struct InboundAliases {
    /// `topics[alias - 1]`; empty: not set (a topic name is never empty).
    topics: Vec<ByteString>,
}

impl InboundAliases {
    /// A PUBLISH with a topic and `alias`: the alias names that topic from now on, replacing
    /// what it named before. The topic is copied (it lives as long as the connection and must
    /// not pin a receive block), unless the alias already names it.
    pub fn set(&mut self, alias: u16, topic: &str) {
        debug_assert!(alias > 0 && !topic.is_empty());
        let index = usize::from(alias) - 1;
        if index >= self.topics.len() {
            self.topics.resize(index + 1, ByteString::new());
        }
        if &*self.topics[index] != topic {
            self.topics[index] = ByteString::from(topic);
        }
    }

    /// The topic `alias` names; `None` when the client never set it on this connection.
    pub fn get(&self, alias: u16) -> Option<&ByteString> {
        let topic = self.topics.get(usize::from(alias).checked_sub(1)?)?;
        (!topic.is_empty()).then_some(topic)
    }
}

/// How a topic goes out with the aliases of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AliasUse {
    /// The client knows the topic by this alias: empty topic name plus the alias.
    Known(u16),
    /// First time (or since its alias was taken by another): the topic plus this alias, which
    /// names it once `OutboundAliases::assign` records that it went out.
    New(u16),
}

/// Topic -> alias for what the broker sends one client [MQTT-3.3.2-11]: the first PUBLISH of a
/// topic carries the topic and a new alias, later ones only the alias. Never more aliases than
/// the client allows [MQTT-3.3.2-10]; once all are taken, a new topic takes over the least
/// recently assigned alias (a cursor going round, O(1)), so a client following a few hot
/// topics among many keeps getting aliases for the ones that repeat.
///
/// The topics sit in strings reused in place when an alias is reassigned, and the lookup is by
/// the topic's hash (checked against the string; a collision is a miss, the topic then goes
/// out in full): once every alias has been assigned, nothing is allocated per message.
#[derive(Debug)]
pub struct OutboundAliases {
    /// `topics[alias - 1]`, up to `max`.
    topics: Vec<String>,
    /// Hash of a topic -> its alias.
    by_hash: HashMap<u64, u16>,
    hasher: std::collections::hash_map::RandomState,
    max: u16,
    /// The alias a new topic takes once all `max` are assigned: the least recently assigned.
    next_reassigned: u16,
}

impl OutboundAliases {
    pub fn new(max: u16) -> OutboundAliases {
        assert!(max > 0, "a client allowing no alias has no alias table");
        OutboundAliases {
            topics: Vec::new(),
            by_hash: HashMap::new(),
            hasher: Default::default(),
            max,
            next_reassigned: 1,
        }
    }

    /// How `topic` goes out now, and its hash for `assign`. Changes nothing: a PUBLISH that is
    /// then not sent (too large for the client) must not leave an alias the client never saw.
    pub fn plan(&self, topic: &str) -> (AliasUse, u64) {
        let hash = self.hasher.hash_one(topic);
        if let Some(&alias) = self.by_hash.get(&hash) {
            if self.topics[usize::from(alias) - 1] == topic {
                return (AliasUse::Known(alias), hash);
            }
        }
        let alias = if self.topics.len() < usize::from(self.max) {
            self.topics.len() as u16 + 1
        } else {
            self.next_reassigned
        };
        (AliasUse::New(alias), hash)
    }

    /// `alias` (from `plan`'s `New`) went out naming `topic`.
    pub fn assign(&mut self, alias: u16, topic: &str, hash: u64) {
        let index = usize::from(alias) - 1;
        if index == self.topics.len() {
            self.topics.push(topic.to_owned());
        } else {
            debug_assert_eq!(alias, self.next_reassigned);
            let old = self.hasher.hash_one(&self.topics[index]);
            if self.by_hash.get(&old) == Some(&alias) {
                self.by_hash.remove(&old);
            }
            self.topics[index].clear();
            self.topics[index].push_str(topic);
            self.next_reassigned = alias % self.max + 1;
        }
        self.by_hash.insert(hash, alias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(aliases: &mut OutboundAliases, topic: &str) -> AliasUse {
        let (plan, hash) = aliases.plan(topic);
        if let AliasUse::New(alias) = plan {
            aliases.assign(alias, topic, hash);
        }
        plan
    }

    #[test]
    fn outbound_aliases_are_assigned_reused_and_bounded() {
        let mut aliases = OutboundAliases::new(2);
        assert_eq!(send(&mut aliases, "a"), AliasUse::New(1));
        assert_eq!(send(&mut aliases, "a"), AliasUse::Known(1));
        assert_eq!(send(&mut aliases, "b"), AliasUse::New(2));
        assert_eq!(send(&mut aliases, "a"), AliasUse::Known(1));
        // All taken: the least recently assigned goes to the new topic, round and round.
        assert_eq!(send(&mut aliases, "c"), AliasUse::New(1));
        assert_eq!(
            send(&mut aliases, "a"),
            AliasUse::New(2),
            "a lost its alias"
        );
        assert_eq!(send(&mut aliases, "c"), AliasUse::Known(1));
        assert_eq!(send(&mut aliases, "a"), AliasUse::Known(2));
        assert_eq!(send(&mut aliases, "b"), AliasUse::New(1));
        assert_eq!(aliases.topics.len(), 2);
        assert_eq!(
            aliases.by_hash.len(),
            2,
            "a reassigned alias forgets its old topic"
        );
    }

    #[test]
    fn a_plan_not_sent_assigns_nothing() {
        let mut aliases = OutboundAliases::new(1);
        assert_eq!(aliases.plan("a").0, AliasUse::New(1));
        assert_eq!(aliases.plan("a").0, AliasUse::New(1), "never went out");
        assert_eq!(send(&mut aliases, "b"), AliasUse::New(1));
        assert_eq!(aliases.plan("b").0, AliasUse::Known(1));
    }

    #[test]
    fn inbound_aliases_set_replace_and_stay_unset() {
        let mut aliases = InboundAliases::default();
        assert_eq!(aliases.get(1), None);
        aliases.set(3, "a/b");
        assert_eq!(aliases.get(3).map(|t| &**t), Some("a/b"));
        assert_eq!(
            (aliases.get(1), aliases.get(2), aliases.get(4)),
            (None, None, None)
        );
        aliases.set(3, "c");
        assert_eq!(aliases.get(3).map(|t| &**t), Some("c"));
        assert_eq!(aliases.get(0), None);
    }

    #[test]
    fn only_a_client_asking_for_it_gets_the_side_allocation() {
        assert!(ConnV5::for_connect(&Properties::default(), 10).is_none());
        let aliases = Properties {
            topic_alias_maximum: Some(100),
            ..Properties::default()
        };
        assert!(
            ConnV5::for_connect(&aliases, 0).is_none(),
            "ours is 0: none"
        );
        let v5 = ConnV5::for_connect(&aliases, 10).expect("aliases");
        assert_eq!(
            v5.outbound.as_ref().map(|o| o.max),
            Some(10),
            "capped by ours"
        );
        let size = Properties {
            maximum_packet_size: Some(64),
            ..Properties::default()
        };
        let v5 = ConnV5::for_connect(&size, 10).expect("a size limit");
        assert!(v5.outbound.is_none());
        assert_eq!(v5.packet_size_max, Some(64));
    }
}
