//! Which shards want a topic: the replicated interest index, and the local counts that feed it.
//!
//! Every shard keeps an [`InterestIndex`]: topic filter -> bitmask of the shards with at least
//! one subscriber on it. On PUBLISH the shard asks `shards_for(topic)` and forwards the message
//! through the mesh to each shard in the mask (other than itself), so a publish crosses to a
//! shard only when someone there can receive it.
//!
//! The index changes only when some shard's count for a filter goes 0 -> 1 or 1 -> 0, which its
//! [`LocalInterest`] reports; that shard then broadcasts `MeshMessage::Interest` to the others
//! and applies it to its own index. A thousand clients on one filter cost one broadcast.
//!
//! A filter without wildcards (most of them: one per client, `devices/17/commands`) is kept as
//! a 64-bit hash rather than in the trie (`exact.rs`: in a set per shard with up to 4 shards,
//! else in one hash -> mask table that every shard reads and each writes its own bits to,
//! `shared_masks.rs`, so such a filter is neither replicated nor announced): a lookup hashes
//! the topic once. A hash collision can only add a shard to the mask (one forward that finds no
//! subscriber there), never drop one.
//!
//! The other filters are in a small trie with one node per filter level (`+` and `#` kept apart from the
//! literal children; a run of literal levels with nothing else on it is one label, as in the
//! subscription trie, since every shard holds every filter), matched with MQTT's wildcard rules (spec 4.7): `+` is exactly one level,
//! `#` is the rest including none (`sport/#` matches `sport`), and a filter starting with a
//! wildcard does not match a topic starting with `$` [MQTT-4.7.2-1]. Lookup walks borrowed
//! slices of the topic and allocates nothing; only `apply` allocates, once per new level.
//!
//! Shared subscriptions (`$share/group/filter`) are not interpreted here: the publishing shard
//! must pick one shard per group, which needs per-group masks (to be added with shared-group
//! routing). Such a filter is stored and matched literally.

use std::sync::Arc;

use super::exact::{hashed, ExactMasks, FilterHasher};
use super::shared_masks::SharedMasks;
use crate::topic::filter::split_level;
use crate::topic::level_map::{after, literal_prefix_len, match_label, LevelMap, Step};
use crate::topic::stack::SmallStack;

/// The most shards a broker can run: interest masks are one `u64`, one bit per shard.
pub const SHARDS_MAX: usize = 64;
const _: () = assert!(SHARDS_MAX <= u64::BITS as usize);

/// Filter -> bitmask of the shards that have a subscriber on it.
#[derive(Debug)]
pub struct InterestIndex {
    shard_count: usize,
    /// Filters with a wildcard.
    root: Node,
    /// Filters without one, by hash (`exact.rs`).
    exact: ExactMasks,
    hasher: FilterHasher,
    /// Distinct filters in the trie with a non-zero mask.
    filter_count: usize,
}

/// One filter level (or label). Every shard holds one per distinct filter in the broker, so it
/// is kept to 32 bytes: literal children in a [`LevelMap`] (inline for a few, a foldhash table
/// past that, seeded per process because filters come from clients), the `+` child and the `#`
/// mask boxed apart because few nodes have either.
#[derive(Debug, Default)]
struct Node {
    children: LevelMap<Node, true>,
    /// Shards subscribed to the filter that ends at this node.
    exact_mask: u64,
    /// `None` when there is neither a `+` child nor a `#` subscriber.
    wild: Option<Box<Wild>>,
}

#[derive(Debug, Default)]
struct Wild {
    /// The `+` child.
    plus: Option<Node>,
    /// Shards subscribed to this node's path followed by `/#` (or to `#` at the root).
    multi_mask: u64,
}

const _: () = assert!(std::mem::size_of::<Node>() == 32);

impl Node {
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.exact_mask == 0 && self.multi_mask() == 0 && self.edge_count() == 0
    }

    fn edge_count(&self) -> usize {
        self.children.len() + usize::from(self.plus().is_some())
    }

    #[inline]
    fn plus(&self) -> Option<&Node> {
        self.wild.as_deref().and_then(|wild| wild.plus.as_ref())
    }

    #[inline]
    fn multi_mask(&self) -> u64 {
        self.wild.as_deref().map_or(0, |wild| wild.multi_mask)
    }

    fn wild_mut(&mut self) -> &mut Wild {
        self.wild.get_or_insert_with(Box::default)
    }

    /// Frees `wild` once it holds nothing.
    fn tidy_wild(&mut self) {
        if self
            .wild
            .as_deref()
            .is_some_and(|wild| wild.plus.is_none() && wild.multi_mask == 0)
        {
            self.wild = None;
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node> {
        if level == "+" {
            self.wild.as_deref_mut().and_then(|wild| wild.plus.as_mut())
        } else {
            self.children.get_mut(level)
        }
    }

    fn remove_child(&mut self, level: &str) {
        if level == "+" {
            if let Some(wild) = self.wild.as_deref_mut() {
                wild.plus = None;
            }
            self.tidy_wild();
        } else {
            self.children.remove(level);
        }
    }

    fn set_bit(&mut self, multi: bool, bit: u64) {
        if multi {
            self.wild_mut().multi_mask |= bit;
        } else {
            self.exact_mask |= bit;
        }
    }

    fn clear_bit(&mut self, multi: bool, bit: u64) {
        if multi {
            if let Some(wild) = self.wild.as_deref_mut() {
                wild.multi_mask &= !bit;
            }
            self.tidy_wild();
        } else {
            self.exact_mask &= !bit;
        }
    }

    fn take_children(&mut self, orphans: &mut Vec<Node>) {
        self.children.take_all(orphans);
        if let Some(plus) = self.wild.as_deref_mut().and_then(|wild| wild.plus.take()) {
            orphans.push(plus);
        }
    }
}

impl Drop for Node {
    /// Flattens the subtree before it drops: a client may subscribe to a filter thousands of
    /// levels deep, and the default drop would recurse once per level.
    fn drop(&mut self) {
        if self.edge_count() == 0 {
            return;
        }
        let mut orphans: Vec<Node> = Vec::new();
        self.take_children(&mut orphans);
        while let Some(mut node) = orphans.pop() {
            node.take_children(&mut orphans);
            // `node` drops here childless, so this `drop` returns at once.
        }
    }
}

impl InterestIndex {
    /// Panics unless `1 <= shard_count <= SHARDS_MAX` (a configuration error).
    pub fn new(shard_count: usize) -> InterestIndex {
        InterestIndex::sharing(shard_count, ExactMasks::shared_for(shard_count))
    }

    /// As `new`, on the exact-interest table every shard shares (`ShardMesh::exact_masks`).
    pub fn sharing(shard_count: usize, shared: Option<Arc<SharedMasks>>) -> InterestIndex {
        assert!(
            (1..=SHARDS_MAX).contains(&shard_count),
            "shard_count {shard_count} must be in 1..={SHARDS_MAX}"
        );
        InterestIndex {
            shard_count,
            root: Node::default(),
            exact: ExactMasks::sharing(shard_count, shared),
            hasher: FilterHasher::process(),
            filter_count: 0,
        }
    }

    /// Whether filters without wildcards are kept in one table for every shard: then the
    /// subscribing shard applies its own changes to them, and nobody announces them.
    pub fn exact_is_shared(&self) -> bool {
        self.exact.is_shared()
    }

    /// `shard`'s loop turn starts (see `shared_masks.rs`).
    #[inline]
    pub fn quiescent(&self, shard: usize) {
        self.exact.quiescent(shard);
    }

    /// `shard` is about to sleep in the kernel, or stops.
    #[inline]
    pub fn offline(&self, shard: usize) {
        self.exact.offline(shard);
    }

    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    /// Distinct filters some shard is interested in (filters without wildcards counted by
    /// hash).
    pub fn filter_count(&self) -> usize {
        self.filter_count + self.exact.len()
    }

    /// Sets (`interested`) or clears `shard`'s bit on `filter`. A filter whose mask becomes 0
    /// is removed, with the trie nodes that only it used.
    ///
    /// The filter is expected to be valid (the subscribing shard checked it). An invalid one
    /// cannot hurt: a `#` that is not the last level, or a level mixing a wildcard with other
    /// characters, is stored as literal text, which no topic name can contain.
    ///
    /// Panics if `shard >= shard_count` (shard indexes come from the broker, not the network).
    pub fn apply(&mut self, filter: &str, shard: usize, interested: bool) {
        assert!(
            shard < self.shard_count,
            "shard {shard} out of range (shard_count {})",
            self.shard_count
        );
        if hashed(filter) {
            let hash = self.hasher.hash(filter);
            self.exact.apply(hash, shard, interested);
        } else {
            self.apply_trie(filter, shard, interested);
        }
    }

    /// `apply` for a filter kept in the trie (tests put filters without wildcards there too,
    /// to exercise the trie's labels on them).
    fn apply_trie(&mut self, filter: &str, shard: usize, interested: bool) {
        let bit = 1u64 << shard;
        let (path, multi) = split_filter(filter);
        if interested {
            self.set(path, multi, bit);
        } else {
            self.clear(path, multi, bit);
        }
    }

    fn set(&mut self, path: Option<&str>, multi: bool, bit: u64) {
        let mut node = &mut self.root;
        let mut rest = path;
        while let Some(levels) = rest {
            let (level, next) = split_level(levels);
            if level == "+" {
                node = node.wild_mut().plus.get_or_insert_with(Node::default);
                rest = next;
                continue;
            }
            let Some((matched, whole)) = node
                .children
                .get_labeled(level)
                .map(|(label, _)| match_label(label, levels))
            else {
                // A new chain: every literal level up to the next `+` (or the end) in one label.
                let len = literal_prefix_len(levels);
                node = node
                    .children
                    .get_or_insert_with(&levels[..len], Node::default);
                rest = after(levels, len);
                continue;
            };
            if !whole {
                // The filter leaves the label after `matched` bytes: cut the label there, and
                // hang the old child below a new node under the label's remainder.
                let (label, _) = node.children.get_labeled(level).expect("found above");
                let label = String::from_utf8_lossy(label).into_owned();
                let child = node.children.get_mut(level).expect("found above");
                let below = std::mem::take(child);
                child
                    .children
                    .get_or_insert_with(&label[matched + 1..], || below);
                node.children.relabel(level, &levels[..matched]);
            }
            node = node.children.get_mut(level).expect("found above");
            rest = after(levels, matched);
        }
        let mask = if multi {
            node.multi_mask()
        } else {
            node.exact_mask
        };
        if mask == 0 {
            self.filter_count += 1;
        }
        node.set_bit(multi, bit);
    }

    /// Iterative, like every walk here: filters may be thousands of levels deep.
    fn clear(&mut self, path: Option<&str>, multi: bool, bit: u64) {
        // Find the filter's node, remembering the steps to it and the deepest node that holds
        // something besides this path (a mask or another child): if the filter's node empties,
        // the path is cut below that one. The root is never removed, so it is the default.
        let mut steps: Vec<Step<'_>> = Vec::new();
        let mut node = &self.root;
        let mut keep = 0;
        let mut rest = path;
        while let Some(levels) = rest {
            if !steps.is_empty()
                && (node.exact_mask != 0 || node.multi_mask() != 0 || node.edge_count() > 1)
            {
                keep = steps.len();
            }
            let (level, next) = split_level(levels);
            if level == "+" {
                let Some(plus) = node.plus() else {
                    return;
                };
                node = plus;
                steps.push(Step::Plus);
                rest = next;
                continue;
            }
            let Some((label, child)) = node.children.get_labeled(level) else {
                return;
            };
            let (matched, whole) = match_label(label, levels);
            if !whole {
                return;
            }
            node = child;
            steps.push(Step::Literal(level));
            rest = after(levels, matched);
        }
        let (mask, other_mask) = if multi {
            (node.multi_mask(), node.exact_mask)
        } else {
            (node.exact_mask, node.multi_mask())
        };
        if mask & bit == 0 {
            return;
        }
        let emptied = mask & !bit == 0;
        if emptied {
            self.filter_count -= 1;
        }
        let cut = emptied && other_mask == 0 && node.edge_count() == 0;
        match steps.get(keep) {
            // The filter's node holds nothing more: cut the path below the kept node.
            Some(&step) if cut => {
                let kept = self.node_mut(&steps[..keep]);
                match step {
                    Step::Plus => kept.remove_child("+"),
                    Step::Literal(level) => kept.remove_child(level),
                }
                self.merge_chain(&steps[..keep]);
            }
            // Still needed, or the root (the node of `#`, which has no path and no step to
            // cut): the root is never removed (issue 7: indexing that step panicked).
            _ => {
                self.node_mut(&steps).clear_bit(multi, bit);
                self.merge_chain(&steps);
            }
        }
    }

    /// The node at the end of `steps`, which `clear` just walked.
    fn node_mut(&mut self, steps: &[Step<'_>]) -> &mut Node {
        let mut node = &mut self.root;
        for step in steps {
            node = match step {
                Step::Plus => node.child_mut("+"),
                Step::Literal(level) => node.children.get_mut(level),
            }
            .expect("the path exists");
        }
        node
    }

    /// Keeps the trie path-compressed: once the node at the end of `steps`, reached through a
    /// label, holds nothing but one literal child, the two labels become one.
    fn merge_chain(&mut self, steps: &[Step<'_>]) {
        let Some((&Step::Literal(level), parent_steps)) = steps.split_last() else {
            return;
        };
        let parent = self.node_mut(parent_steps);
        let node = parent.children.get_mut(level).expect("the path exists");
        if node.exact_mask != 0 || node.wild.is_some() || node.children.len() != 1 {
            return;
        }
        let (child_label, child) = node.children.take_only().expect("one child");
        *node = child;
        let (label, _) = parent.children.get_labeled(level).expect("the path exists");
        let label = format!("{}/{child_label}", String::from_utf8_lossy(label));
        parent.children.relabel(level, &label);
    }

    /// The OR of the masks of every filter matching `topic` (a topic name, without wildcards).
    /// Allocates nothing unless the filters branch (`+`) more than `PENDING_INLINE` times on one
    /// path; never recurses.
    pub fn shards_for(&self, topic: &str) -> u64 {
        self.shards_for_hashed(topic, self.topic_hash(topic))
    }

    /// Whether any filter without a wildcard is held: only then does a publish need its
    /// topic's hash (`shards_for_hashed`).
    pub fn has_exact(&self) -> bool {
        !self.exact.is_empty()
    }

    /// The hash `shards_for_hashed` takes; `None` when no filter needs it.
    pub fn topic_hash(&self, topic: &str) -> Option<u64> {
        self.has_exact().then(|| self.hasher.hash(topic))
    }

    /// `shards_for` with the topic's `FilterHasher` hash already computed (`Some` whenever
    /// `has_exact` is true): the shard hashes a topic once for this index and its own
    /// subscriptions.
    pub fn shards_for_hashed(&self, topic: &str, topic_hash: Option<u64>) -> u64 {
        debug_assert!(topic_hash.is_some() || !self.has_exact());
        let mut mask = match topic_hash {
            Some(hash) if self.has_exact() => self.exact.mask(hash),
            _ => 0,
        };
        if self.filter_count == 0 {
            return mask;
        }
        let mut pending: SmallStack<Branch<'_>, PENDING_INLINE> = SmallStack::new();
        let (first, rest) = split_level(topic);
        // [MQTT-4.7.2-1] A filter starting with `+` or `#` does not match a topic starting with
        // `$` (e.g. `$SYS/...`): such topics are only reached by filters naming them literally.
        if !first.starts_with('$') {
            mask |= self.root.multi_mask();
            if let Some(plus) = self.root.plus() {
                pending.push((plus, rest));
            }
        }
        if let Some(step) = self.root.children.step(first, rest) {
            pending.push(step);
        }
        while let Some((mut node, mut rest)) = pending.pop() {
            // Follow one path down, leaving the `+` sides of forks on `pending` (as
            // `Trie::for_each_match` does): a topic that meets no `+` pushes nothing.
            loop {
                let Some(levels) = rest else {
                    // The topic ends at this node: the filter ending here matches, and so does
                    // `<path>/#`, because `#` also matches the parent level [MQTT-4.7.1-2].
                    mask |= node.exact_mask | node.multi_mask();
                    break;
                };
                let (level, next) = split_level(levels);
                let plus = match node.wild.as_deref() {
                    Some(wild) => {
                        mask |= wild.multi_mask;
                        wild.plus.as_ref()
                    }
                    None => None,
                };
                match (node.children.step(level, next), plus) {
                    (Some((exact, exact_rest)), Some(plus)) => {
                        pending.push((plus, next));
                        (node, rest) = (exact, exact_rest);
                    }
                    (Some((exact, exact_rest)), None) => (node, rest) = (exact, exact_rest),
                    (None, Some(plus)) => (node, rest) = (plus, next),
                    (None, None) => break,
                }
            }
        }
        mask
    }
}

/// A filter's levels before a trailing `#` (`None` for `#` itself), and whether it ends in `#`
/// (the mask then lives in the last node's `multi_mask`).
fn split_filter(filter: &str) -> (Option<&str>, bool) {
    if filter == "#" {
        (None, true)
    } else if let Some(path) = filter.strip_suffix("/#") {
        (Some(path), true)
    } else {
        (Some(filter), false)
    }
}

/// A trie node still to visit in `shards_for`, with the topic levels left to match there.
type Branch<'a> = (&'a Node, Option<&'a str>);

/// Branches kept on the stack in `shards_for` before it spills to the heap: about one per `+`
/// on the path, so real filters fit.
const PENDING_INLINE: usize = 16;

/// This shard's subscriber count per filter kept by text (filters with a wildcard, `$share`
/// groups). It says when the shard's interest in a filter changes (0 -> 1 or 1 -> 0), which is
/// the only time the shard broadcasts.
///
/// Keyed by the whole filter in a `LevelMap`: a filter up to 22 bytes is stored inline in its
/// 32-byte entry, with no allocation of its own, and the table hashes with foldhash.
///
/// A filter without wildcards is not counted here: the shard's subscriptions keep those by
/// hash with their subscribers (`topic::Subscriptions::hashed_subscribers`), which is already
/// the count per hash the other shards hear about (`exact.rs`).
#[derive(Debug, Default)]
pub struct LocalInterest {
    counts: LevelMap<u32>,
}

impl LocalInterest {
    pub fn new() -> LocalInterest {
        LocalInterest::default()
    }

    /// Counts one more subscriber on `filter`; true when it is the first (broadcast it).
    pub fn subscribe(&mut self, filter: &str) -> bool {
        let count = self.counts.get_or_insert_with(filter, || 0);
        // A u32 of subscribers on one shard cannot overflow before memory runs out.
        *count += 1;
        *count == 1
    }

    /// Counts one subscriber fewer on `filter`; true when it was the last (broadcast it).
    /// An unknown filter changes nothing and returns false.
    pub fn unsubscribe(&mut self, filter: &str) -> bool {
        let Some(count) = self.counts.get_mut(filter) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            self.counts.remove(filter);
            return true;
        }
        false
    }

    /// Subscribers this shard has on `filter`.
    pub fn count(&self, filter: &str) -> u32 {
        self.counts.get(filter).copied().unwrap_or(0)
    }

    /// Distinct filters with at least one subscriber on this shard.
    pub fn filter_count(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_with(filters: &[(&str, usize)]) -> InterestIndex {
        let mut index = InterestIndex::new(8);
        for &(filter, shard) in filters {
            index.apply(filter, shard, true);
        }
        index
    }

    #[test]
    fn literal_filters_match_only_their_topic() {
        let index = index_with(&[("sport/tennis", 1), ("sport/tennis", 3), ("sport", 2)]);
        assert_eq!(index.shards_for("sport/tennis"), 0b1010);
        assert_eq!(index.shards_for("sport"), 0b0100);
        assert_eq!(index.shards_for("sport/tennis/player1"), 0);
        assert_eq!(index.shards_for("sport/golf"), 0);
        assert_eq!(
            index.shards_for("Sport/tennis"),
            0,
            "topics are case sensitive"
        );
        assert_eq!(index.filter_count(), 2);
    }

    #[test]
    fn multi_level_wildcard_matches_the_parent_and_everything_below() {
        // Spec 4.7.1.2 examples.
        let index = index_with(&[("sport/tennis/player1/#", 0)]);
        assert_eq!(index.shards_for("sport/tennis/player1"), 1);
        assert_eq!(index.shards_for("sport/tennis/player1/ranking"), 1);
        assert_eq!(index.shards_for("sport/tennis/player1/score/wimbledon"), 1);
        assert_eq!(index.shards_for("sport/tennis/player2"), 0);
        let index = index_with(&[("sport/#", 4)]);
        assert_eq!(index.shards_for("sport"), 1 << 4);
        assert_eq!(index.shards_for("sport/"), 1 << 4);
        assert_eq!(index.shards_for("sports"), 0);
        let index = index_with(&[("#", 5)]);
        assert_eq!(index.shards_for("a"), 1 << 5);
        assert_eq!(index.shards_for("a/b/c"), 1 << 5);
        assert_eq!(index.shards_for("/"), 1 << 5);
    }

    #[test]
    fn single_level_wildcard_matches_exactly_one_level() {
        // Spec 4.7.1.3 examples.
        let index = index_with(&[
            ("sport/tennis/+", 0),
            ("sport/+", 1),
            ("+/+", 2),
            ("/+", 3),
            ("+", 4),
        ]);
        assert_eq!(index.shards_for("sport/tennis/player1"), 0b00001);
        assert_eq!(index.shards_for("sport/tennis/player1/ranking"), 0);
        assert_eq!(index.shards_for("sport"), 0b10000);
        assert_eq!(
            index.shards_for("sport/"),
            0b00110,
            "an empty level is a level"
        );
        assert_eq!(index.shards_for("/finance"), 0b01100);
        assert_eq!(index.shards_for("+"), 0b10000);
        let index = index_with(&[("+/tennis/#", 6)]);
        assert_eq!(index.shards_for("sport/tennis"), 1 << 6);
        assert_eq!(index.shards_for("sport/tennis/x/y"), 1 << 6);
        assert_eq!(index.shards_for("sport/golf"), 0);
    }

    #[test]
    fn wildcards_at_the_start_do_not_match_dollar_topics() {
        // [MQTT-4.7.2-1] and the spec 4.7.2 examples.
        let index = index_with(&[
            ("#", 0),
            ("+/monitor/Clients", 1),
            ("$SYS/#", 2),
            ("$SYS/monitor/+", 3),
        ]);
        assert_eq!(index.shards_for("$SYS/monitor/Clients"), 0b1100);
        assert_eq!(index.shards_for("$SYS"), 0b0100);
        assert_eq!(index.shards_for("SYS/monitor/Clients"), 0b0011);
        assert_eq!(
            index.shards_for("a/$SYS"),
            0b0001,
            "only the first level counts"
        );
    }

    #[test]
    fn clearing_the_last_shard_removes_the_filter() {
        let mut index = index_with(&[("a/+/c", 1), ("a/+/c", 2), ("a/#", 1)]);
        assert_eq!(index.filter_count(), 2);
        index.apply("a/+/c", 1, false);
        assert_eq!(index.shards_for("a/b/c"), 0b110);
        index.apply("a/+/c", 2, false);
        assert_eq!(index.shards_for("a/b/c"), 0b010);
        assert_eq!(index.filter_count(), 1);
        index.apply("a/#", 1, false);
        assert_eq!(index.filter_count(), 0);
        assert!(
            index.root.is_empty(),
            "empty nodes are pruned: {:?}",
            index.root
        );
        // Clearing what is not there changes nothing.
        index.apply("a/#", 1, false);
        index.apply("x/y", 0, false);
        assert_eq!(index.filter_count(), 0);
        assert!(index.root.is_empty());
    }

    #[test]
    fn setting_twice_is_idempotent() {
        let mut index = index_with(&[("a/b", 3), ("a/b", 3)]);
        assert_eq!(index.filter_count(), 1);
        index.apply("a/b", 3, false);
        assert_eq!(index.shards_for("a/b"), 0);
        assert_eq!(index.filter_count(), 0);
    }

    #[test]
    fn malformed_filters_match_nothing_and_do_not_panic() {
        let index = index_with(&[("a/#/b", 0), ("a+/b", 1), ("#a", 2), ("", 3)]);
        assert_eq!(index.shards_for("a/x/b"), 0);
        assert_eq!(index.shards_for("ax/b"), 0);
        assert_eq!(index.shards_for("a"), 0);
    }

    #[test]
    fn filters_thousands_of_levels_deep_need_no_deep_stack() {
        // A client can send a 65,535-byte filter: 32,768 levels. Nothing may recurse per level,
        // so run on a thread whose stack a per-level recursion would overflow.
        let worker = std::thread::Builder::new().stack_size(64 * 1024).spawn(|| {
            let levels = 30_000;
            let plus_filter = vec!["+"; levels].join("/");
            let literal_filter = vec!["a"; levels].join("/");
            let topic = literal_filter.clone();
            let mut index = InterestIndex::new(4);
            index.apply(&plus_filter, 1, true);
            index.apply(&literal_filter, 2, true);
            index.apply(&format!("{literal_filter}/#"), 3, true);
            assert_eq!(index.shards_for(&topic), 0b1110);
            assert_eq!(index.shards_for(&topic[2..]), 0, "one level short");
            index.apply(&plus_filter, 1, false);
            assert_eq!(index.shards_for(&topic), 0b1100);
            index.apply(&literal_filter, 2, false);
            assert_eq!(index.shards_for(&topic), 0b1000);
            index.apply(&plus_filter, 0, true);
            // Dropped with two deep chains in it.
            drop(index);
        });
        worker.unwrap().join().expect("no stack overflow");
    }

    #[test]
    fn many_plus_branches_spill_past_the_inline_stack() {
        // Every `+` and literal pair on a path leaves a branch pending: more than PENDING_INLINE.
        let depth = PENDING_INLINE * 3;
        let mut index = InterestIndex::new(4);
        let topic = vec!["x"; depth].join("/");
        for shard in 0..3 {
            let filter: Vec<&str> = (0..depth)
                .map(|level| match shard {
                    0 | 1 if (level + shard) % 2 == 0 => "x",
                    _ => "+",
                })
                .collect();
            index.apply(&filter.join("/"), shard, true);
        }
        index.apply(&topic, 3, true);
        assert_eq!(index.shards_for(&topic), 0b1111);
        assert_eq!(index.shards_for(&topic[2..]), 0);
    }

    #[test]
    fn highest_shard_uses_the_top_bit() {
        let mut index = InterestIndex::new(SHARDS_MAX);
        index.apply("t", SHARDS_MAX - 1, true);
        assert_eq!(index.shards_for("t"), 1 << 63);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn shard_outside_the_count_is_a_programmer_error() {
        InterestIndex::new(4).apply("t", 4, true);
    }

    #[test]
    #[should_panic(expected = "must be in 1..=64")]
    fn more_than_sixty_four_shards_is_refused() {
        InterestIndex::new(65);
    }

    /// The root's labels, sorted, and those one level below the label starting with `level`.
    fn labels(node: &Node) -> Vec<String> {
        let mut labels: Vec<String> = node
            .children
            .labeled()
            .map(|(label, _)| String::from_utf8_lossy(label).into_owned())
            .collect();
        labels.sort();
        labels
    }

    #[test]
    fn literal_chains_are_one_label_split_and_merged_as_filters_come_and_go() {
        let mut index = InterestIndex::new(4);
        index.apply_trie("a/b/c/d", 0, true);
        assert_eq!(labels(&index.root), ["a/b/c/d"]);
        index.apply_trie("a/b/x", 1, true);
        assert_eq!(labels(&index.root), ["a/b"]);
        let ab = index.root.children.get("a").expect("a/b");
        assert_eq!(labels(ab), ["c/d", "x"]);
        index.apply_trie("a/b/+/d", 2, true);
        index.apply_trie("a/b", 3, true);
        assert_eq!(index.shards_for("a/b/c/d"), 0b0101);
        assert_eq!(index.shards_for("a/b/c"), 0);
        assert_eq!(index.shards_for("a/b/c/d/e"), 0);
        assert_eq!(index.shards_for("a/b/x"), 0b0010);
        assert_eq!(index.shards_for("a/b"), 0b1000);
        assert_eq!(index.shards_for("a"), 0);
        index.apply_trie("a/b", 3, false);
        index.apply_trie("a/b/+/d", 2, false);
        index.apply_trie("a/b/x", 1, false);
        assert_eq!(
            labels(&index.root),
            ["a/b/c/d"],
            "merged back into one label"
        );
        // Empty levels are levels: `a/` and `a//` are different labels' worth of levels.
        index.apply_trie("a/", 1, true);
        index.apply_trie("a//", 2, true);
        assert_eq!(index.shards_for("a/"), 0b010);
        assert_eq!(index.shards_for("a//"), 0b100);
        assert_eq!(index.shards_for("a"), 0);
        assert_eq!(index.shards_for("a/b/c/d"), 0b001);
        index.apply_trie("a/b/c/d", 0, false);
        index.apply_trie("a/", 1, false);
        assert_eq!(labels(&index.root), ["a//"]);
        index.apply_trie("a//", 2, false);
        assert!(index.root.is_empty());
    }

    #[test]
    fn wild_box_and_child_table_come_and_go() {
        use crate::topic::level_map::FEW_MAX;
        let mut index = InterestIndex::new(4);
        index.apply_trie("w/+", 1, true);
        index.apply_trie("w/#", 2, true);
        let w = |index: &InterestIndex| index.root.children.get("w").map(|w| w.wild.is_some());
        assert_eq!(w(&index), Some(true));
        index.apply_trie("w/+", 1, false);
        assert_eq!(w(&index), Some(true), "the `#` mask still set");
        index.apply_trie("w/x", 3, true);
        index.apply_trie("w/#", 2, false);
        assert_eq!(w(&index), Some(false), "freed with its last entry");
        assert_eq!(index.shards_for("w/x"), 1 << 3);
        index.apply_trie("w/x", 3, false);
        assert!(index.root.is_empty());
        // Past FEW_MAX children under one node and back: lookups hold throughout.
        let count = FEW_MAX * 4;
        for i in 0..count {
            index.apply_trie(&format!("t/{i}"), i % 4, true);
        }
        for i in 0..count {
            assert_eq!(index.shards_for(&format!("t/{i}")), 1 << (i % 4));
        }
        for i in 0..count - 1 {
            index.apply_trie(&format!("t/{i}"), i % 4, false);
            assert_eq!(index.shards_for(&format!("t/{i}")), 0);
            let last = count - 1;
            assert_eq!(index.shards_for(&format!("t/{last}")), 1 << (last % 4));
        }
        assert_eq!(index.filter_count(), 1);
    }

    /// Heap per distinct filter, replicated on every shard: `bench/client-{i}/in`, as the
    /// broker's idle benchmark subscribes. `cargo test --lib bytes_per_filter -- --nocapture`.
    #[test]
    fn bytes_per_distinct_filter() {
        use crate::topic::alloc_count::live_bytes_of;
        const FILTER_COUNT: usize = 100_000;
        let filters: Vec<String> = (0..FILTER_COUNT)
            .map(|i| format!("bench/client-{i}/in"))
            .collect();
        let (requested, chunks) = live_bytes_of(|| {
            let mut index = InterestIndex::new(4);
            for (i, filter) in filters.iter().enumerate() {
                index.apply(filter, i % 4, true);
            }
            index
        });
        let (requested, chunks) = (
            requested / FILTER_COUNT as i64,
            chunks / FILTER_COUNT as i64,
        );
        eprintln!(
            "interest index: {requested} B requested, {chunks} B in glibc chunks per distinct filter"
        );
        assert!(chunks < 1024, "{chunks} B per filter");
    }

    /// Heap per distinct filter in a shard's own counts (one subscriber each).
    #[test]
    fn local_interest_bytes_per_distinct_filter() {
        use crate::topic::alloc_count::live_bytes_of;
        const FILTER_COUNT: usize = 100_000;
        let filters: Vec<String> = (0..FILTER_COUNT)
            .map(|i| format!("bench/client-{i}/in"))
            .collect();
        let (requested, chunks) = live_bytes_of(|| {
            let mut local = LocalInterest::new();
            for filter in &filters {
                assert!(local.subscribe(filter));
            }
            local
        });
        let (requested, chunks) = (
            requested / FILTER_COUNT as i64,
            chunks / FILTER_COUNT as i64,
        );
        eprintln!(
            "local interest: {requested} B requested, {chunks} B in glibc chunks per distinct filter"
        );
        assert!(chunks < 256, "{chunks} B per filter");
    }

    /// The spec's matching rules, written the obvious way: the oracle for the trie.
    fn naive_matches(filter: &str, topic: &str) -> bool {
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let filter: Vec<&str> = filter.split('/').collect();
        let topic: Vec<&str> = topic.split('/').collect();
        for (index, level) in filter.iter().enumerate() {
            if *level == "#" {
                return index == filter.len() - 1 && topic.len() >= index;
            }
            match topic.get(index) {
                Some(topic_level) if *level == "+" || level == topic_level => {}
                _ => return false,
            }
        }
        filter.len() == topic.len()
    }

    /// xorshift64*: reproducible randomness without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }
    }

    fn random_path(rng: &mut Rng, words: &[&str]) -> Vec<String> {
        let depth = 1 + rng.below(4);
        (0..depth)
            .map(|_| words[rng.below(words.len())].to_string())
            .collect()
    }

    fn random_filter(rng: &mut Rng) -> String {
        let mut levels = random_path(rng, &["a", "b", "$s", "", "+", "+"]);
        if rng.below(3) == 0 {
            levels.push("#".to_string());
        }
        levels.join("/")
    }

    fn random_topic(rng: &mut Rng) -> String {
        random_path(rng, &["a", "b", "$s", ""]).join("/")
    }

    /// Levels below `root` (a label counts each of its levels), checking on the way that the
    /// trie is fully path-compressed: no node reached through a label holds just one label.
    fn node_count(root: &Node) -> usize {
        let mut count = 0;
        let mut stack = vec![root];
        while let Some(node) = stack.pop() {
            for (label, child) in node.children.labeled() {
                count += label.split(|&byte| byte == b'/').count();
                assert!(
                    child.exact_mask != 0 || child.wild.is_some() || child.children.len() != 1,
                    "uncompressed chain at {:?}",
                    String::from_utf8_lossy(label)
                );
                stack.push(child);
            }
            if let Some(plus) = node.plus() {
                count += 1;
                stack.push(plus);
            }
        }
        count
    }

    /// Trie levels the filters need: every prefix of each filter's path (the levels before a
    /// trailing `#`), counted once. `#` alone lives in the root and needs none.
    fn path_count(filters: &[&str]) -> usize {
        let mut paths: Vec<&str> = Vec::new();
        for filter in filters.iter().filter(|filter| !hashed(filter)) {
            let (Some(path), _) = split_filter(filter) else {
                continue;
            };
            paths.extend(path.match_indices('/').map(|(at, _)| &path[..at]));
            paths.push(path);
        }
        paths.sort_unstable();
        paths.dedup();
        paths.len()
    }

    #[test]
    fn randomized_against_the_naive_matcher() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let shard_count = 8;
        let mut index = InterestIndex::new(shard_count);
        // The model: (filter, shard) pairs currently set.
        let mut model: Vec<(String, usize)> = Vec::new();
        for step in 0..4_000 {
            let filter = random_filter(&mut rng);
            let shard = rng.below(shard_count);
            // Clear more often than set once the model is big, so filters also disappear.
            let interested = rng.below(100) < if model.len() > 60 { 30 } else { 70 };
            index.apply(&filter, shard, interested);
            model.retain(|(f, s)| !(*f == filter && *s == shard));
            if interested {
                model.push((filter, shard));
            }
            let mut distinct: Vec<&str> = model.iter().map(|(f, _)| f.as_str()).collect();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(index.filter_count(), distinct.len(), "step {step}");
            // Pruning: the trie holds exactly the paths of the filters in the model.
            assert_eq!(
                node_count(&index.root),
                path_count(&distinct),
                "step {step}: {distinct:?}"
            );
            for _ in 0..8 {
                let topic = random_topic(&mut rng);
                let expected = model
                    .iter()
                    .filter(|(f, _)| naive_matches(f, &topic))
                    .fold(0u64, |mask, (_, s)| mask | 1 << s);
                assert_eq!(
                    index.shards_for(&topic),
                    expected,
                    "step {step}, topic {topic:?}, model {model:?}"
                );
            }
        }
        for (filter, shard) in model.drain(..) {
            index.apply(&filter, shard, false);
        }
        assert_eq!(index.filter_count(), 0);
        assert!(index.root.is_empty());
    }

    /// Every shape of filter a client can send, wildcards at the root included.
    const FILTER_SHAPES: [&str; 22] = [
        "#", "+", "+/#", "+/+", "+//#", "a/#", "a/+", "a/+/#", "a", "a/b", "a/b/c", "a/+/c", "/",
        "/#", "//", "a//b", "", "a/", "$s/#", "$s/+", "$s", "+/b/#",
    ];
    const TOPICS: [&str; 16] = [
        "a", "a/b", "a/b/c", "a/x/c", "a/", "a//b", "/", "//", "", "b", "b/b", "x/b/y", "$s",
        "$s/a", "$s/a/b", "a/b/c/d",
    ];

    /// Checks `index` against `model`, the (filter, shard) pairs set: masks for every topic,
    /// the filter count, and a trie holding exactly the filters' paths.
    fn check_model(index: &InterestIndex, model: &[(&str, usize)], context: &str) {
        let mut distinct: Vec<&str> = model.iter().map(|&(filter, _)| filter).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(index.filter_count(), distinct.len(), "{context}");
        assert_eq!(node_count(&index.root), path_count(&distinct), "{context}");
        for topic in TOPICS {
            let expected = model
                .iter()
                .filter(|(filter, _)| naive_matches(filter, topic))
                .fold(0u64, |mask, (_, shard)| mask | 1 << shard);
            assert_eq!(
                index.shards_for(topic),
                expected,
                "{context}: topic {topic:?}"
            );
        }
    }

    /// Issue 7: with 2+ shards, the last `#` subscription going away indexed an empty step
    /// list (`#` has no path) and panicked the shard applying it.
    #[test]
    fn issue_7_clearing_the_last_root_multi_level_wildcard() {
        let mut index = InterestIndex::new(2);
        index.apply("#", 0, true);
        index.apply("#", 1, true);
        index.apply("#", 0, false);
        assert_eq!(index.shards_for("a"), 0b10);
        index.apply("#", 1, false);
        assert_eq!(index.shards_for("a"), 0);
        assert_eq!(index.filter_count(), 0);
        assert!(index.root.is_empty());
        // Again, with other filters around it.
        index.apply("#", 1, true);
        index.apply("+", 0, true);
        index.apply("#", 1, false);
        index.apply("+", 0, false);
        assert!(index.root.is_empty());
    }

    /// Issue 7: every filter shape, set and cleared by random shards in random order on 2, 3
    /// and 4 shards, checked against the naive matcher after every step; the index ends empty.
    #[test]
    fn issue_7_every_filter_shape_set_and_cleared_in_random_order() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for shard_count in 2..=4 {
            for round in 0..50 {
                let mut index = InterestIndex::new(shard_count);
                let mut model: Vec<(&str, usize)> = Vec::new();
                for step in 0..60 {
                    let filter = FILTER_SHAPES[rng.below(FILTER_SHAPES.len())];
                    let shard = rng.below(shard_count);
                    let interested = rng.below(2) == 0;
                    index.apply(filter, shard, interested);
                    model.retain(|&pair| pair != (filter, shard));
                    if interested {
                        model.push((filter, shard));
                    }
                    let context = format!(
                        "{shard_count} shards, round {round}, step {step}: \
                         {filter:?} on {shard} {interested}, model {model:?}"
                    );
                    check_model(&index, &model, &context);
                }
                // Clear what is left in random order.
                while !model.is_empty() {
                    let (filter, shard) = model.swap_remove(rng.below(model.len()));
                    index.apply(filter, shard, false);
                    check_model(&index, &model, &format!("draining {filter:?} on {shard}"));
                }
                assert_eq!(index.filter_count(), 0);
                assert!(index.root.is_empty(), "{:?}", index.root);
            }
        }
    }

    #[test]
    fn local_interest_reports_only_the_first_and_the_last() {
        let mut local = LocalInterest::new();
        assert!(local.subscribe("a/+"));
        assert!(!local.subscribe("a/+"));
        assert!(!local.subscribe("a/+"));
        assert!(local.subscribe("b"));
        assert_eq!(local.count("a/+"), 3);
        assert_eq!(local.filter_count(), 2);
        assert!(!local.unsubscribe("a/+"));
        assert!(!local.unsubscribe("a/+"));
        assert!(local.unsubscribe("a/+"));
        assert_eq!(local.count("a/+"), 0);
        assert!(
            !local.unsubscribe("a/+"),
            "already gone: no change to broadcast"
        );
        assert!(!local.unsubscribe("never"));
        assert!(local.subscribe("a/+"), "0 -> 1 again");
        assert_eq!(local.filter_count(), 2);
    }

    #[test]
    fn local_changes_drive_the_index() {
        // Two shards, each with its own LocalInterest, sharing changes the way the mesh does.
        let mut index = InterestIndex::new(2);
        let mut locals = [LocalInterest::new(), LocalInterest::new()];
        let mut subscribe = |shard: usize, filter: &str, on: bool, index: &mut InterestIndex| {
            let changed = if on {
                locals[shard].subscribe(filter)
            } else {
                locals[shard].unsubscribe(filter)
            };
            if changed {
                index.apply(filter, shard, on);
            }
        };
        subscribe(0, "t/#", true, &mut index);
        subscribe(0, "t/#", true, &mut index);
        subscribe(1, "t/x", true, &mut index);
        assert_eq!(index.shards_for("t/x"), 0b11);
        subscribe(0, "t/#", false, &mut index);
        assert_eq!(
            index.shards_for("t/x"),
            0b11,
            "one subscriber left on shard 0"
        );
        subscribe(0, "t/#", false, &mut index);
        assert_eq!(index.shards_for("t/x"), 0b10);
        subscribe(1, "t/x", false, &mut index);
        assert_eq!(index.shards_for("t/x"), 0);
        assert_eq!(index.filter_count(), 0);
    }
}
