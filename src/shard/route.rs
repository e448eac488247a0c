//! Who gets a publish: the pieces of routing that are plain data. The shard walks its trie, then
//! `dedupe_matches` folds overlapping subscriptions of one session into one delivery at the
//! highest granted QoS (`Grant` keeps a subscription's MQTT 5 options in the same byte as its
//! QoS), and `SharedSubscriptions` picks one member per `$share` group, round robin,
//! preferring members that are connected.

use std::collections::HashMap;
use std::num::NonZeroU32;

use bytestring::ByteString;

use crate::protocol::QoS;
use crate::topic::trie::Trie;

/// What a subscription was granted, as the trie keeps it: the QoS in bits 0-1, the MQTT 5
/// options No Local and Retain As Published (spec 3.8.3.1), and whether it has a Subscription
/// Identifier (kept in `subscription_ids.rs`), in one byte like the QoS alone, so the trie
/// costs no more per subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant(u8);

impl Grant {
    const QOS_BITS: u8 = 0b11;
    const NO_LOCAL: u8 = 1 << 2;
    const RETAIN_AS_PUBLISHED: u8 = 1 << 3;
    const SUBSCRIPTION_ID: u8 = 1 << 4;

    pub fn new(qos: QoS, no_local: bool, retain_as_published: bool) -> Grant {
        Grant(
            qos as u8
                | if no_local { Grant::NO_LOCAL } else { 0 }
                | if retain_as_published {
                    Grant::RETAIN_AS_PUBLISHED
                } else {
                    0
                },
        )
    }

    pub fn qos(self) -> QoS {
        QoS::from_u8(self.0 & Grant::QOS_BITS).unwrap_or(QoS::ExactlyOnce)
    }

    /// [MQTT-3.8.3-3] Not to the connection that published it.
    pub fn no_local(self) -> bool {
        self.0 & Grant::NO_LOCAL != 0
    }

    /// [MQTT-3.3.1-12] Live messages keep the publisher's RETAIN flag.
    pub fn retain_as_published(self) -> bool {
        self.0 & Grant::RETAIN_AS_PUBLISHED != 0
    }

    /// The same grant, saying whether the subscription has a Subscription Identifier.
    pub fn with_subscription_id(self, has: bool) -> Grant {
        Grant(self.0 & !Grant::SUBSCRIPTION_ID | if has { Grant::SUBSCRIPTION_ID } else { 0 })
    }

    /// [MQTT-3.3.4-3] Its identifier goes out with the messages it matches.
    pub fn has_subscription_id(self) -> bool {
        self.0 & Grant::SUBSCRIPTION_ID != 0
    }

    /// Two subscriptions of one session match one topic: one delivery, at the higher QoS,
    /// keeping the RETAIN flag if either says so, with the identifiers of both
    /// [MQTT-3.3.4-4]. (The publisher's own No Local subscriptions never get here: they do
    /// not match its message, `route_local`.)
    fn merge(self, other: Grant) -> Grant {
        Grant::new(
            self.qos().max(other.qos()),
            self.no_local() && other.no_local(),
            self.retain_as_published() || other.retain_as_published(),
        )
        .with_subscription_id(self.has_subscription_id() || other.has_subscription_id())
    }
}

impl From<QoS> for Grant {
    fn from(qos: QoS) -> Grant {
        Grant::new(qos, false, false)
    }
}

/// Sorts `(session, grant)` pairs and keeps one per session, merged (`Grant::merge`): a client
/// with overlapping subscriptions receives a message once.
pub fn dedupe_matches(matches: &mut Vec<(u32, Grant)>) {
    if matches.len() < 2 {
        // Pairs and fan-in: one subscriber, nothing to merge.
        return;
    }
    matches.sort_unstable_by_key(|&(session, _)| session);
    matches.dedup_by(|later, kept| {
        if later.0 != kept.0 {
            return false;
        }
        kept.1 = kept.1.merge(later.1);
        true
    });
}

/// A session in a `$share` group, with its subscription's options and identifier: a message
/// the group gives it carries that identifier only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub session: u32,
    pub grant: Grant,
    pub subscription_id: Option<NonZeroU32>,
}

struct SharedGroup {
    members: Vec<Member>,
    /// Round-robin cursor into `members`.
    next: usize,
}

/// `$share/{group}/{filter}` subscriptions. The trie is keyed by group id, so a publish visits
/// each matching group once, however many members it has.
#[derive(Default)]
pub struct SharedSubscriptions {
    trie: Trie<()>,
    groups: Vec<Option<SharedGroup>>,
    free: Vec<u32>,
    /// The full `$share/{group}/{filter}` text names a group.
    by_name: HashMap<Box<str>, u32>,
}

impl SharedSubscriptions {
    /// No `$share` group on this shard: a publish has none to look for.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Members over every group: the `$share` subscriptions held (walked once a second for
    /// the counters, not per message).
    pub fn member_count(&self) -> usize {
        self.groups.iter().flatten().map(|g| g.members.len()).sum()
    }

    /// Adds (or updates the options and identifier of) `member` in the group `share_filter` =
    /// `$share/{group}/{filter}`, whose inner filter is `filter`.
    /// True when its session was not a member yet.
    pub fn insert(&mut self, share_filter: &str, filter: &str, member: Member) -> bool {
        let id = match self.by_name.get(share_filter) {
            Some(&id) => id,
            None => {
                let group = SharedGroup {
                    members: Vec::new(),
                    next: 0,
                };
                let id = place_in_slot(&mut self.groups, &mut self.free, group);
                self.by_name.insert(share_filter.into(), id);
                self.trie.insert(filter, id, ());
                id
            }
        };
        let Some(group) = self.groups[id as usize].as_mut() else {
            return false;
        };
        match group
            .members
            .iter_mut()
            .find(|m| m.session == member.session)
        {
            Some(existing) => {
                *existing = member;
                false
            }
            None => {
                group.members.push(member);
                true
            }
        }
    }

    /// Removes `session` from the group; the group goes when its last member does.
    pub fn remove(&mut self, share_filter: &str, filter: &str, session: u32) -> bool {
        let Some(&id) = self.by_name.get(share_filter) else {
            return false;
        };
        let Some(group) = self.groups[id as usize].as_mut() else {
            return false;
        };
        let before = group.members.len();
        group.members.retain(|m| m.session != session);
        let removed = group.members.len() != before;
        if group.members.is_empty() {
            self.groups[id as usize] = None;
            self.free.push(id);
            self.by_name.remove(share_filter);
            self.trie.remove(filter, id);
        }
        removed
    }

    /// One member of the group named `share_filter`, as `pick_for_each` picks it; `None` when
    /// this shard has no member of it (any more).
    pub fn pick_in_group(
        &mut self,
        share_filter: &str,
        connected: impl Fn(u32) -> bool,
    ) -> Option<Member> {
        let &id = self.by_name.get(share_filter)?;
        let group = self.groups[id as usize].as_mut()?;
        Some(Self::pick(group, connected))
    }

    fn pick(group: &mut SharedGroup, connected: impl Fn(u32) -> bool) -> Member {
        let count = group.members.len();
        let start = group.next % count;
        let chosen = (0..count)
            .map(|k| (start + k) % count)
            .find(|&index| connected(group.members[index].session))
            .unwrap_or(start);
        group.next = chosen + 1;
        group.members[chosen]
    }

    /// For each group matching `topic`, one member: the next connected one after the cursor,
    /// or (none connected) simply the next one, whose session queues the message.
    pub fn pick_for_each(
        &mut self,
        topic: &str,
        group_ids: &mut Vec<u32>,
        connected: impl Fn(u32) -> bool,
        mut deliver: impl FnMut(Member),
    ) {
        group_ids.clear();
        if self.by_name.is_empty() {
            return;
        }
        self.trie.for_each_match(topic, |id, _| group_ids.push(id));
        for &id in group_ids.iter() {
            let Some(group) = self.groups[id as usize].as_mut() else {
                continue;
            };
            if group.members.is_empty() {
                continue;
            }
            deliver(Self::pick(group, &connected));
        }
    }
}

struct GroupInterest {
    name: ByteString,
    /// Shards with at least one member.
    mask: u64,
    /// Round-robin cursor over the shards in `mask`.
    next: u32,
}

/// Which shards have members of each `$share` group, replicated like the interest index (a
/// shard announces a group when its first member joins and when its last one leaves). The
/// publishing shard names one shard per matching group, so a group gets each message once in
/// the whole broker.
#[derive(Default)]
pub struct SharedInterest {
    trie: Trie<()>,
    groups: Vec<Option<GroupInterest>>,
    free: Vec<u32>,
    by_name: HashMap<Box<str>, u32>,
}

impl SharedInterest {
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Sets or clears `shard`'s bit for the group `share_filter` (= `$share/{group}/{filter}`
    /// with inner filter `filter`); a group no shard has members of is forgotten.
    pub fn apply(&mut self, share_filter: &str, filter: &str, shard: usize, interested: bool) {
        let bit = 1u64 << shard;
        let id = match self.by_name.get(share_filter) {
            Some(&id) => id,
            None if !interested => return,
            None => {
                let group = GroupInterest {
                    name: ByteString::from(share_filter),
                    mask: 0,
                    next: 0,
                };
                let id = place_in_slot(&mut self.groups, &mut self.free, group);
                self.by_name.insert(share_filter.into(), id);
                self.trie.insert(filter, id, ());
                id
            }
        };
        let Some(group) = self.groups[id as usize].as_mut() else {
            return;
        };
        if interested {
            group.mask |= bit;
        } else {
            group.mask &= !bit;
        }
        if group.mask == 0 {
            self.groups[id as usize] = None;
            self.free.push(id);
            self.by_name.remove(share_filter);
            self.trie.remove(filter, id);
        }
    }

    /// Shards with members of the group `share_filter`.
    pub fn mask_of(&self, share_filter: &str) -> u64 {
        self.by_name
            .get(share_filter)
            .and_then(|&id| self.groups[id as usize].as_ref())
            .map_or(0, |group| group.mask)
    }

    /// For each group matching `topic`: its name and the shard that serves this message (round
    /// robin over the shards with members).
    pub fn assign(
        &mut self,
        topic: &str,
        group_ids: &mut Vec<u32>,
        mut serve: impl FnMut(&ByteString, usize),
    ) {
        group_ids.clear();
        if self.by_name.is_empty() {
            return;
        }
        self.trie.for_each_match(topic, |id, _| group_ids.push(id));
        for &id in group_ids.iter() {
            let Some(group) = self.groups[id as usize].as_mut() else {
                continue;
            };
            let Some(shard) = nth_shard(group.mask, group.next) else {
                continue;
            };
            group.next = group.next.wrapping_add(1);
            serve(&group.name, shard);
        }
    }
}

/// The `n`-th (modulo their count) shard in `mask`; `None` for an empty mask.
pub fn nth_shard(mask: u64, n: u32) -> Option<usize> {
    let count = mask.count_ones();
    if count == 0 {
        return None;
    }
    let mut rest = mask;
    for _ in 0..n % count {
        rest &= rest - 1;
    }
    Some(rest.trailing_zeros() as usize)
}

/// The shard a shared-group message goes to when `this` shard has no member left: the next one
/// after it (cyclically) among `mask`, other than `this`.
pub fn next_shard_after(mask: u64, this: usize, shard_count: usize) -> Option<usize> {
    (1..shard_count)
        .map(|k| (this + k) % shard_count)
        .find(|&shard| mask & (1u64 << shard) != 0)
}

/// Puts `value` in a freed slot of `slots` when there is one, else at the end; returns its index.
/// Both group tables (local members, cross-shard interest) recycle their ids this way.
fn place_in_slot<T>(slots: &mut Vec<Option<T>>, free: &mut Vec<u32>, value: T) -> u32 {
    match free.pop() {
        Some(id) => {
            slots[id as usize] = Some(value);
            id
        }
        None => {
            slots.push(Some(value));
            (slots.len() - 1) as u32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_subscriptions_deliver_once_at_highest_qos() {
        let mut matches: Vec<(u32, Grant)> = [
            (7, QoS::AtMostOnce),
            (3, QoS::AtLeastOnce),
            (7, QoS::ExactlyOnce),
            (3, QoS::AtMostOnce),
            (9, QoS::AtLeastOnce),
            (7, QoS::AtLeastOnce),
        ]
        .into_iter()
        .map(|(s, q)| (s, Grant::from(q)))
        .collect();
        dedupe_matches(&mut matches);
        let qos: Vec<(u32, QoS)> = matches.iter().map(|&(s, g)| (s, g.qos())).collect();
        assert_eq!(
            qos,
            vec![
                (3, QoS::AtLeastOnce),
                (7, QoS::ExactlyOnce),
                (9, QoS::AtLeastOnce)
            ]
        );
    }

    #[test]
    fn overlapping_subscriptions_merge_their_options() {
        // Issue 8: No Local only if every matching subscription says so, Retain As Published
        // if any does.
        let mut matches = vec![
            (1, Grant::new(QoS::AtMostOnce, true, false)),
            (1, Grant::new(QoS::AtLeastOnce, false, true)),
            (2, Grant::new(QoS::AtMostOnce, true, false)),
            (2, Grant::new(QoS::AtMostOnce, true, false)),
        ];
        dedupe_matches(&mut matches);
        assert_eq!(
            matches,
            vec![
                (1, Grant::new(QoS::AtLeastOnce, false, true)),
                (2, Grant::new(QoS::AtMostOnce, true, false)),
            ]
        );
        // Issue 8: one delivery carries the identifiers of every subscription that has one.
        let mut matches = vec![
            (4, Grant::from(QoS::AtMostOnce)),
            (4, Grant::from(QoS::AtLeastOnce).with_subscription_id(true)),
            (5, Grant::from(QoS::AtMostOnce)),
        ];
        dedupe_matches(&mut matches);
        assert!(matches[0].1.has_subscription_id());
        assert_eq!(matches[0].1.qos(), QoS::AtLeastOnce);
        assert!(!matches[1].1.has_subscription_id());
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let grant = Grant::new(qos, true, true);
            assert!(grant.with_subscription_id(true).has_subscription_id());
            assert_eq!(
                grant.with_subscription_id(true).with_subscription_id(false),
                grant
            );
            assert_eq!(
                (grant.qos(), grant.no_local(), grant.retain_as_published()),
                (qos, true, true)
            );
        }
    }

    fn member(session: u32, qos: QoS) -> Member {
        Member {
            session,
            grant: Grant::from(qos),
            subscription_id: None,
        }
    }

    fn picks(shared: &mut SharedSubscriptions, topic: &str, online: &[u32], n: usize) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut out = Vec::new();
        for _ in 0..n {
            shared.pick_for_each(
                topic,
                &mut ids,
                |s| online.contains(&s),
                |m| out.push(m.session),
            );
        }
        out
    }

    #[test]
    fn shared_group_round_robins_over_connected_members() {
        let mut shared = SharedSubscriptions::default();
        shared.insert("$share/g/a/+", "a/+", member(1, QoS::AtMostOnce));
        shared.insert("$share/g/a/+", "a/+", member(2, QoS::AtLeastOnce));
        shared.insert("$share/g/a/+", "a/+", member(3, QoS::AtMostOnce));
        assert_eq!(
            picks(&mut shared, "a/x", &[1, 2, 3], 6),
            vec![1, 2, 3, 1, 2, 3]
        );
        assert_eq!(
            picks(&mut shared, "a/x", &[2], 3),
            vec![2, 2, 2],
            "offline members skipped"
        );
        assert_eq!(picks(&mut shared, "b/x", &[1, 2, 3], 2), Vec::<u32>::new());
    }

    #[test]
    fn shared_interest_round_robins_over_shards_with_members() {
        let mut interest = SharedInterest::default();
        interest.apply("$share/g/a/+", "a/+", 1, true);
        interest.apply("$share/g/a/+", "a/+", 3, true);
        let mut ids = Vec::new();
        let mut chosen = Vec::new();
        for _ in 0..4 {
            interest.assign("a/x", &mut ids, |name, shard| {
                assert_eq!(&**name, "$share/g/a/+");
                chosen.push(shard);
            });
        }
        assert_eq!(chosen, vec![1, 3, 1, 3]);
        interest.assign("b/x", &mut ids, |_, _| panic!("no group on b/x"));
        interest.apply("$share/g/a/+", "a/+", 1, false);
        assert_eq!(interest.mask_of("$share/g/a/+"), 0b1000);
        interest.apply("$share/g/a/+", "a/+", 3, false);
        assert!(interest.is_empty());
        interest.assign("a/x", &mut ids, |_, _| panic!("group gone"));
    }

    /// Issue 7: `$share` groups over every inner filter shape (`#` at the root included), set
    /// and cleared by random shards in random order on 2, 3 and 4 shards, checked against a
    /// model after every step; the table ends empty.
    #[test]
    fn issue_7_shared_interest_every_filter_shape_in_random_order() {
        use crate::topic::filter::{matches, parse_shared};
        use crate::topic::trie::tests::Rng;
        const GROUPS: [&str; 12] = [
            "$share/g/#",
            "$share/h/#",
            "$share/g/+",
            "$share/g/+/#",
            "$share/g/a/#",
            "$share/g/a/+",
            "$share/g/a",
            "$share/g//",
            "$share/g//#",
            "$share/g/a//b",
            "$share/g/$s/#",
            "$share/h/+/+",
        ];
        const TOPICS: [&str; 10] = ["a", "a/b", "a//b", "/", "//", "", "b/c", "$s", "$s/a", "a/"];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for shard_count in 2..=4 {
            for round in 0..50 {
                let mut interest = SharedInterest::default();
                let mut model: HashMap<&str, u64> = HashMap::new();
                let mut ids = Vec::new();
                let mut check = |interest: &mut SharedInterest, model: &HashMap<&str, u64>| {
                    let context = format!("{shard_count} shards, round {round}: {model:?}");
                    assert_eq!(interest.is_empty(), model.is_empty(), "{context}");
                    for name in GROUPS {
                        let mask = model.get(name).copied().unwrap_or(0);
                        assert_eq!(interest.mask_of(name), mask, "{context}: {name}");
                    }
                    for topic in TOPICS {
                        let mut served: Vec<(String, usize)> = Vec::new();
                        interest.assign(topic, &mut ids, |name, shard| {
                            served.push((name.to_string(), shard))
                        });
                        let mut names: Vec<&str> = served.iter().map(|(n, _)| n.as_str()).collect();
                        names.sort_unstable();
                        let mut expected: Vec<&str> = model
                            .keys()
                            .copied()
                            .filter(|name| matches(parse_shared(name).expect("shared").1, topic))
                            .collect();
                        expected.sort_unstable();
                        assert_eq!(names, expected, "{context}: topic {topic:?}");
                        for (name, shard) in &served {
                            assert_ne!(model[name.as_str()] & 1 << shard, 0, "{context}: {name}");
                        }
                    }
                };
                for _ in 0..60 {
                    let name = GROUPS[rng.below(GROUPS.len())];
                    let inner = parse_shared(name).expect("shared").1;
                    let shard = rng.below(shard_count);
                    let interested = rng.below(2) == 0;
                    interest.apply(name, inner, shard, interested);
                    let mask = model.entry(name).or_default();
                    if interested {
                        *mask |= 1 << shard;
                    } else {
                        *mask &= !(1 << shard);
                    }
                    if *mask == 0 {
                        model.remove(name);
                    }
                    check(&mut interest, &model);
                }
                let mut left: Vec<(&str, usize)> = model
                    .iter()
                    .flat_map(|(&name, &mask)| {
                        (0..shard_count)
                            .filter(move |shard| mask & 1 << shard != 0)
                            .map(move |shard| (name, shard))
                    })
                    .collect();
                left.sort_unstable();
                while !left.is_empty() {
                    let (name, shard) = left.swap_remove(rng.below(left.len()));
                    interest.apply(name, parse_shared(name).expect("shared").1, shard, false);
                    let mask = model.get_mut(name).expect("in the model");
                    *mask &= !(1 << shard);
                    if *mask == 0 {
                        model.remove(name);
                    }
                    check(&mut interest, &model);
                }
                assert!(interest.is_empty());
                assert!(interest.trie.is_empty(), "every group left the trie");
                assert!(interest.groups.iter().all(Option::is_none));
            }
        }
    }

    #[test]
    fn shard_choice_helpers() {
        assert_eq!(nth_shard(0, 3), None);
        assert_eq!(nth_shard(0b1010, 0), Some(1));
        assert_eq!(nth_shard(0b1010, 1), Some(3));
        assert_eq!(nth_shard(0b1010, 2), Some(1));
        assert_eq!(next_shard_after(0b1011, 1, 4), Some(3));
        assert_eq!(next_shard_after(0b0010, 1, 4), None);
        assert_eq!(next_shard_after(0b0001, 3, 4), Some(0));
    }

    #[test]
    fn two_groups_each_get_one_copy_and_empty_groups_vanish() {
        let mut shared = SharedSubscriptions::default();
        shared.insert("$share/g/t", "t", member(1, QoS::AtMostOnce));
        shared.insert("$share/h/t", "t", member(2, QoS::AtMostOnce));
        let mut got = picks(&mut shared, "t", &[1, 2], 1);
        got.sort_unstable();
        assert_eq!(got, vec![1, 2]);
        assert!(shared.remove("$share/g/t", "t", 1));
        assert!(!shared.remove("$share/g/t", "t", 1));
        assert_eq!(picks(&mut shared, "t", &[1, 2], 1), vec![2]);
        shared.insert("$share/g/t", "t", member(5, QoS::AtMostOnce));
        let mut got = picks(&mut shared, "t", &[5, 2], 1);
        got.sort_unstable();
        assert_eq!(got, vec![2, 5], "a freed group id is reused cleanly");
    }
}
