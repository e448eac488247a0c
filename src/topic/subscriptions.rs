//! A shard's plain subscriptions: filters without wildcards by hash, the others in the trie.
//!
//! Most filters are one client's own topic (`devices/17/in`, no `+` or `#`), which matches one
//! topic name only: itself. As a trie node such a filter costs a node and its table slot; here
//! it is a `hash -> subscribers` entry, and a publish finds it with one probe of its topic's
//! hash before walking the (smaller) trie of wildcard filters.
//!
//! The table keeps no text: two filters whose hashes collide share one entry. The caller holds
//! each subscriber's copy of its filters (the session's), so a match asks it whether the
//! subscriber really has a filter equal to the topic (`holds`); a collision delivers nothing
//! wrong. The hash is the mesh's (`mesh::exact`): seeded per process, so a client cannot choose
//! colliding filters.

use hashbrown::HashTable;

use super::trie::{Subscribers, Trie};
use crate::mesh::exact::{hashed, FilterHasher};

/// Entries below this many table slots are never shrunk.
const SHRINK_MIN: usize = 64;

pub struct Subscriptions<V> {
    /// Filters with a wildcard (and invalid mixes such as `a+`, kept there as literal text).
    wild: Trie<V>,
    /// Filters without a wildcard: hash -> subscribers of every such filter with that hash.
    exact: HashTable<(u64, Subscribers<V>)>,
    /// Number of (filter, subscriber) pairs in `exact`.
    exact_len: usize,
    hasher: FilterHasher,
}

impl<V> Default for Subscriptions<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> Subscriptions<V> {
    pub fn new() -> Self {
        Subscriptions {
            wild: Trie::new(),
            exact: HashTable::new(),
            exact_len: 0,
            hasher: FilterHasher::process(),
        }
    }

    /// Number of (filter, subscriber) subscriptions.
    pub fn len(&self) -> usize {
        self.wild.len() + self.exact_len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any filter without a wildcard is held: only then does a publish need its
    /// topic's hash (`for_each_match`).
    pub fn has_exact(&self) -> bool {
        self.exact_len > 0
    }

    /// The hash `for_each_match` takes, for callers without one of their own (the shard hashes
    /// each topic once for this table and the interest index alike).
    pub fn topic_hash(&self, topic: &str) -> Option<u64> {
        self.has_exact().then(|| self.hasher.hash(topic))
    }

    /// Subscribes `subscriber` to `filter` (a valid plain filter, not `$share/`). Returns the
    /// previous value when this subscriber already had this filter [MQTT-3.8.4-3]. The caller
    /// must already hold `filter` for `subscriber` (what `holds` answers from).
    pub fn insert(&mut self, filter: &str, subscriber: u32, value: V) -> Option<V> {
        if !hashed(filter) {
            return self.wild.insert(filter, subscriber, value);
        }
        let hash = self.hasher.hash(filter);
        let (_, subscribers) = self
            .exact
            .entry(hash, |&(key, _)| key == hash, |&(key, _)| key)
            .or_insert((hash, Subscribers::Empty))
            .into_mut();
        // One subscriber with two different exact filters of one 64-bit hash (odds about
        // k^2 / 2^65 for its k filters, with a seed no client knows) would keep one entry:
        // the second filter's value replaces the first's. `holds` still keeps every delivery
        // to a topic the subscriber really has.
        let replaced = subscribers.insert(subscriber, value);
        if replaced.is_none() {
            self.exact_len += 1;
        }
        replaced
    }

    /// Unsubscribes `subscriber` from `filter`; its value, or `None` when it had no such
    /// subscription.
    pub fn remove(&mut self, filter: &str, subscriber: u32) -> Option<V> {
        if !hashed(filter) {
            return self.wild.remove(filter, subscriber);
        }
        let hash = self.hasher.hash(filter);
        let Ok(entry) = self.exact.find_entry(hash, |&(key, _)| key == hash) else {
            return None;
        };
        let mut entry = entry;
        let value = entry.get_mut().1.remove(subscriber)?;
        self.exact_len -= 1;
        if entry.get().1.is_empty() {
            entry.remove();
            let capacity = self.exact.capacity();
            if capacity > SHRINK_MIN && self.exact.len() * 4 < capacity {
                self.exact.shrink_to(self.exact.len() * 2, |&(key, _)| key);
            }
        }
        Some(value)
    }

    /// Subscribers on `filter`'s hash when it is kept by hash: every (exact filter, subscriber)
    /// pair with that hash, which is what the mesh announces (`mesh::exact`: its first
    /// subscriber and its last are when other shards hear of it). `None` for a filter kept in
    /// the trie, whose interest the shard counts by text (`mesh::LocalInterest`).
    pub fn hashed_subscribers(&self, filter: &str) -> Option<usize> {
        if !hashed(filter) {
            return None;
        }
        let hash = self.hasher.hash(filter);
        let count = self
            .exact
            .find(hash, |&(key, _)| key == hash)
            .map_or(0, |(_, subscribers)| subscribers.as_slice().len());
        Some(count)
    }

    /// Distinct hashes of the filters kept by hash.
    pub fn hashed_filter_count(&self) -> usize {
        self.exact.len()
    }

    /// Calls `f(subscriber, value)` once per subscription whose filter matches `topic` (a valid
    /// topic name), as `Trie::for_each_match`. An exact filter's subscriber is called only when
    /// `holds(subscriber)` says it has a filter equal to `topic`. Allocates nothing.
    /// `topic_hash`: the topic's `FilterHasher` hash, `Some` whenever `has_exact` is true.
    #[inline]
    pub fn for_each_match(
        &self,
        topic: &str,
        topic_hash: Option<u64>,
        holds: impl Fn(u32) -> bool,
        mut f: impl FnMut(u32, &V),
    ) {
        debug_assert!(topic_hash.is_some() || !self.has_exact());
        // No byte scan for wildcards first: a topic name holds none [MQTT-4.7.3-1] (the decoder
        // refuses one), and a filter with one, or a `$share/` one, is never in this table, so
        // such a topic could only meet a colliding hash, which `holds` turns away.
        if let Some(hash) = topic_hash.filter(|_| self.has_exact()) {
            if let Some((_, subscribers)) = self.exact.find(hash, |&(key, _)| key == hash) {
                for (subscriber, value) in subscribers.as_slice() {
                    if holds(*subscriber) {
                        f(*subscriber, value);
                    }
                }
            }
        }
        if !self.wild.is_empty() {
            self.wild.for_each_match(topic, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(subs: &Subscriptions<u8>, topic: &str, holds: impl Fn(u32) -> bool) -> Vec<u32> {
        let mut found = Vec::new();
        let hash = subs.topic_hash(topic);
        subs.for_each_match(topic, hash, holds, |subscriber, _| found.push(subscriber));
        found.sort_unstable();
        found
    }

    #[test]
    fn exact_filters_by_hash_wildcards_in_the_trie() {
        let mut subs = Subscriptions::default();
        assert_eq!(subs.insert("a/b", 1, 0), None);
        assert_eq!(subs.insert("a/b", 2, 1), None);
        assert_eq!(
            subs.insert("a/b", 1, 2),
            Some(0),
            "a repeated filter replaces"
        );
        assert_eq!(subs.insert("a/+", 3, 0), None);
        assert_eq!(
            subs.insert("$share/g/a/b", 4, 0),
            None,
            "literal text in the trie"
        );
        assert_eq!(subs.len(), 4);
        assert_eq!(subs.exact_len, 2);
        assert_eq!(matches(&subs, "a/b", |_| true), [1, 2, 3]);
        assert_eq!(matches(&subs, "a/c", |_| true), [3]);
        assert_eq!(
            matches(&subs, "$share/g/a/b", |_| true),
            [4],
            "never probed"
        );
        assert_eq!(subs.remove("a/b", 1), Some(2));
        assert_eq!(subs.remove("a/b", 1), None);
        assert_eq!(subs.remove("x/y", 1), None);
        assert_eq!(matches(&subs, "a/b", |_| true), [2, 3]);
        assert_eq!(subs.remove("a/b", 2), Some(1));
        assert!(subs.exact.is_empty());
        assert_eq!(subs.len(), 2);
    }

    /// A topic whose hash is some filter's is delivered only to subscribers the caller says
    /// hold that text: a collision delivers nothing.
    #[test]
    fn a_subscriber_without_the_text_gets_nothing() {
        let mut subs = Subscriptions::default();
        subs.insert("a/b", 1, 0);
        subs.insert("a/b", 2, 0);
        assert_eq!(matches(&subs, "a/b", |subscriber| subscriber == 2), [2]);
        assert!(matches(&subs, "a/b", |_| false).is_empty());
    }

    #[test]
    fn the_table_shrinks_back() {
        let mut subs = Subscriptions::default();
        let filters: Vec<String> = (0..10_000).map(|i| format!("d/{i}/in")).collect();
        for (i, filter) in filters.iter().enumerate() {
            subs.insert(filter, i as u32, 0);
        }
        let grown = subs.exact.capacity();
        for (i, filter) in filters.iter().enumerate().skip(10) {
            assert_eq!(subs.remove(filter, i as u32), Some(0));
        }
        assert!(subs.exact.capacity() < grown / 16);
        assert_eq!(subs.len(), 10);
        assert_eq!(matches(&subs, "d/3/in", |_| true), [3]);
    }

    /// What the shard announces to the other shards: subscribers per hash, so filters whose
    /// hashes collide count together (first in, last out), and a topic with that hash still
    /// reaches only the subscribers holding its text.
    #[test]
    fn subscribers_per_hash_count_colliding_filters_together() {
        crate::mesh::exact::collide_on_this_thread(0);
        let mut subs = Subscriptions::default();
        assert_eq!(subs.hashed_subscribers("a/b"), Some(0));
        assert_eq!(subs.hashed_subscribers("a/+"), None, "kept in the trie");
        assert_eq!(subs.hashed_subscribers("$share/g/a"), None);
        subs.insert("a/b", 1, 0);
        assert_eq!(subs.hashed_subscribers("a/b"), Some(1));
        subs.insert("c/d", 2, 0);
        assert_eq!(subs.hashed_subscribers("a/b"), Some(2), "one hash");
        assert_eq!(subs.hashed_subscribers("never/subscribed"), Some(2));
        assert_eq!(subs.hashed_filter_count(), 1);
        let holds_own =
            |topic: &'static str| move |subscriber: u32| (subscriber == 1) == (topic == "a/b");
        assert_eq!(matches(&subs, "a/b", holds_own("a/b")), [1]);
        assert_eq!(matches(&subs, "c/d", holds_own("c/d")), [2]);
        assert_eq!(subs.remove("a/b", 1), Some(0));
        assert_eq!(subs.hashed_subscribers("c/d"), Some(1), "c/d still there");
        assert_eq!(matches(&subs, "c/d", holds_own("c/d")), [2]);
        assert_eq!(subs.remove("c/d", 2), Some(0));
        assert_eq!(subs.hashed_subscribers("c/d"), Some(0), "the last one left");
        assert_eq!(subs.hashed_filter_count(), 0);
    }
}
