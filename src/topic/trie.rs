//! The subscription trie: one node per filter level, with `+` and `#` in dedicated slots so a
//! publish walks the topic's levels once and visits only nodes that can match.
//!
//! It is path-compressed, because a million clients each on their own topic
//! (`devices/{id}/in`) would otherwise cost a node per level per client: a run of literal levels
//! under a node that holds nothing else is one label (`{id}/in`), found by its first level. An
//! insert that leaves a label midway splits it; a removal that leaves a node holding one label
//! only merges the two. Children and labels live in a `LevelMap`.
//!
//! A shard matches every PUBLISH against its trie, so `for_each_match` allocates nothing: it
//! walks `&str` levels and keeps pending `+` branches on a small inline stack. Walks, pruning and
//! drop are iterative because a 65,535-byte filter may have 32,768 levels, too deep to recurse.
//! Shared subscriptions are the broker's business: it inserts the inner filter with its own `V`.

use super::filter::split_level;
use super::level_map::{after, literal_prefix_len, match_label, LevelMap, Step};
use super::stack::SmallStack;

/// Subscriptions keyed by filter and subscriber (the broker's session index), each with a `V`
/// (granted QoS, options, subscription identifier, ...).
pub struct Trie<V> {
    root: Node<V>,
    /// Number of (filter, subscriber) pairs.
    len: usize,
}

/// One filter level, or the last of a label's levels. Sized for the common node, the end of one
/// client's filter: few literal children, one subscriber, no wildcard below it (40 bytes for a
/// small `V`).
struct Node<V> {
    /// Literal next levels. A `#` that is not the last level (invalid, but not our call) is kept
    /// here as a literal, where no topic name can reach it.
    children: LevelMap<Node<V>, true>,
    /// Subscribers of exactly this node's path.
    subscribers: Subscribers<V>,
    /// The `+` child and the `#` subscribers, boxed apart because few nodes have either;
    /// `None` when both are empty.
    wild: Option<Box<Wild<V>>>,
}

struct Wild<V> {
    /// The `+` next level.
    plus: Option<Node<V>>,
    /// Subscribers of `{this node's path}/#`, which match this level and everything below.
    hash: Subscribers<V>,
}

/// One node's subscribers: a single one inline (a client's own topic), a vector only for more.
pub(super) enum Subscribers<V> {
    Empty,
    One((u32, V)),
    // Boxed: a bare `Vec` would make this enum, in every node, 32 bytes instead of 16.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<(u32, V)>>),
}

const _: () = assert!(std::mem::size_of::<Node<u8>>() == 40);

impl<V> Subscribers<V> {
    #[inline]
    pub(super) fn as_slice(&self) -> &[(u32, V)] {
        match self {
            Subscribers::Empty => &[],
            Subscribers::One(entry) => std::slice::from_ref(entry),
            Subscribers::Many(entries) => entries,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        matches!(self, Subscribers::Empty)
    }

    /// Adds `subscriber`, or replaces its value and returns the old one.
    pub(super) fn insert(&mut self, subscriber: u32, value: V) -> Option<V> {
        match self {
            Subscribers::Empty => {
                *self = Subscribers::One((subscriber, value));
                None
            }
            Subscribers::One((existing, old)) if *existing == subscriber => {
                Some(std::mem::replace(old, value))
            }
            Subscribers::One(_) => {
                let Subscribers::One(first) = std::mem::replace(self, Subscribers::Empty) else {
                    unreachable!("matched One above");
                };
                *self = Subscribers::Many(Box::new(vec![first, (subscriber, value)]));
                None
            }
            Subscribers::Many(entries) => {
                if let Some(entry) = entries.iter_mut().find(|(s, _)| *s == subscriber) {
                    return Some(std::mem::replace(&mut entry.1, value));
                }
                entries.push((subscriber, value));
                None
            }
        }
    }

    pub(super) fn remove(&mut self, subscriber: u32) -> Option<V> {
        match self {
            Subscribers::Empty => None,
            Subscribers::One((existing, _)) => {
                if *existing != subscriber {
                    return None;
                }
                let Subscribers::One((_, value)) = std::mem::replace(self, Subscribers::Empty)
                else {
                    unreachable!("matched One above");
                };
                Some(value)
            }
            Subscribers::Many(entries) => {
                let index = entries.iter().position(|(s, _)| *s == subscriber)?;
                // Order among one node's subscribers carries no meaning.
                let (_, value) = entries.swap_remove(index);
                if entries.len() == 1 {
                    let last = entries.pop().expect("one entry left");
                    *self = Subscribers::One(last);
                } else if entries.len() * 4 < entries.capacity() {
                    entries.shrink_to(entries.len() * 2);
                }
                Some(value)
            }
        }
    }
}

impl<V> Node<V> {
    fn new() -> Self {
        Node {
            children: LevelMap::new(),
            subscribers: Subscribers::Empty,
            wild: None,
        }
    }

    #[inline]
    fn plus(&self) -> Option<&Node<V>> {
        self.wild.as_deref().and_then(|wild| wild.plus.as_ref())
    }

    #[inline]
    fn hash(&self) -> &[(u32, V)] {
        self.wild
            .as_deref()
            .map_or(&[], |wild| wild.hash.as_slice())
    }

    fn wild_mut(&mut self) -> &mut Wild<V> {
        self.wild.get_or_insert_with(|| {
            Box::new(Wild {
                plus: None,
                hash: Subscribers::Empty,
            })
        })
    }

    /// Frees `wild` once it holds nothing.
    fn tidy_wild(&mut self) {
        if self
            .wild
            .as_deref()
            .is_some_and(|wild| wild.plus.is_none() && wild.hash.is_empty())
        {
            self.wild = None;
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<V>> {
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

    /// Must this node stay once `path_children` of its children (0 or 1) are gone?
    fn is_needed(&self, path_children: usize) -> bool {
        !self.subscribers.is_empty()
            || !self.hash().is_empty()
            || self.children.len() + usize::from(self.plus().is_some()) > path_children
    }
}

impl<V> Drop for Node<V> {
    /// Iterative, so dropping a 32,768-level chain does not overflow the stack. A leaf returns at
    /// once; an inner node moves its whole subtree onto one heap stack and drops it leaf-first.
    fn drop(&mut self) {
        if self.children.is_empty() && self.plus().is_none() {
            return;
        }
        let mut pending: Vec<Node<V>> = Vec::new();
        take_children(self, &mut pending);
        while let Some(mut node) = pending.pop() {
            take_children(&mut node, &mut pending);
        }
    }
}

fn take_children<V>(node: &mut Node<V>, pending: &mut Vec<Node<V>>) {
    node.children.take_all(pending);
    if let Some(plus) = node.wild.as_deref_mut().and_then(|wild| wild.plus.take()) {
        pending.push(plus);
    }
}

/// Splits a filter into the levels that lead to its node and whether it ends in `#`:
/// `"#"` -> (no levels, true), `"a/#"` -> ("a", true), `"a/b"` -> ("a/b", false).
fn split_filter(filter: &str) -> (Option<&str>, bool) {
    if filter == "#" {
        (None, true)
    } else if let Some(path) = filter.strip_suffix("/#") {
        (Some(path), true)
    } else {
        (Some(filter), false)
    }
}

impl<V> Default for Trie<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> Trie<V> {
    pub fn new() -> Self {
        Trie {
            root: Node::new(),
            len: 0,
        }
    }

    /// Number of (filter, subscriber) subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Subscribes `subscriber` to `filter` (a valid plain filter: for `$share/{group}/{filter}`
    /// pass the inner filter). Returns the previous value when this subscriber already had this
    /// filter [MQTT-3.8.4-3: a repeated subscription replaces the existing one].
    pub fn insert(&mut self, filter: &str, subscriber: u32, value: V) -> Option<V> {
        let (path, is_hash) = split_filter(filter);
        let node = self.node_or_insert(path);
        let list = if is_hash {
            &mut node.wild_mut().hash
        } else {
            &mut node.subscribers
        };
        let replaced = list.insert(subscriber, value);
        if replaced.is_none() {
            self.len += 1;
        }
        replaced
    }

    /// The node at the end of `path`, made on the way where missing. A run of literal levels
    /// below a node becomes one label; a label the path leaves midway is split there.
    fn node_or_insert(&mut self, path: Option<&str>) -> &mut Node<V> {
        let mut node = &mut self.root;
        let mut rest = path;
        while let Some(levels) = rest {
            let (level, next) = split_level(levels);
            if level == "+" {
                node = node.wild_mut().plus.get_or_insert_with(Node::new);
                rest = next;
                continue;
            }
            let Some((matched, whole)) = node
                .children
                .get_labeled(level)
                .map(|(label, _)| match_label(label, levels))
            else {
                let len = literal_prefix_len(levels);
                node = node.children.get_or_insert_with(&levels[..len], Node::new);
                rest = after(levels, len);
                continue;
            };
            if !whole {
                let (label, _) = node.children.get_labeled(level).expect("found above");
                let label = String::from_utf8_lossy(label).into_owned();
                let child = node.children.get_mut(level).expect("found above");
                let below = std::mem::replace(child, Node::new());
                child
                    .children
                    .get_or_insert_with(&label[matched + 1..], || below);
                node.children.relabel(level, &levels[..matched]);
            }
            node = node.children.get_mut(level).expect("found above");
            rest = after(levels, matched);
        }
        node
    }

    /// Unsubscribes `subscriber` from `filter`; `None` when it was not subscribed. Nodes left
    /// without subscribers or children are freed, and a node left with one literal child only
    /// merges with it.
    pub fn remove(&mut self, filter: &str, subscriber: u32) -> Option<V> {
        let (path, is_hash) = split_filter(filter);
        let (steps, keep) = self.find(path)?;
        let node = self.node_mut(&steps);
        let value = if is_hash {
            let value = node.wild.as_deref_mut()?.hash.remove(subscriber)?;
            node.tidy_wild();
            value
        } else {
            node.subscribers.remove(subscriber)?
        };
        let needed = node.is_needed(0);
        self.len -= 1;
        if needed || steps.is_empty() {
            self.merge_chain(&steps);
        } else {
            let parent = self.node_mut(&steps[..keep]);
            match steps[keep] {
                Step::Plus => parent.remove_child("+"),
                Step::Literal(level) => parent.remove_child(level),
            }
            self.merge_chain(&steps[..keep]);
        }
        Some(value)
    }

    /// The steps from the root to the node of `path`, and how many of them lead to the deepest
    /// node that holds something besides this path (where an emptied path is cut). Iterative
    /// and without parent pointers: filters may be 32,768 levels deep.
    fn find<'p>(&self, path: Option<&'p str>) -> Option<(Vec<Step<'p>>, usize)> {
        let mut steps = Vec::new();
        let mut keep = 0;
        let mut node = &self.root;
        let mut rest = path;
        while let Some(levels) = rest {
            if !steps.is_empty() && node.is_needed(1) {
                keep = steps.len();
            }
            let (level, next) = split_level(levels);
            if level == "+" {
                node = node.plus()?;
                steps.push(Step::Plus);
                rest = next;
                continue;
            }
            let (label, child) = node.children.get_labeled(level)?;
            let (matched, whole) = match_label(label, levels);
            if !whole {
                return None;
            }
            node = child;
            steps.push(Step::Literal(level));
            rest = after(levels, matched);
        }
        Some((steps, keep))
    }

    /// The node at the end of `steps`, which `find` just walked.
    fn node_mut(&mut self, steps: &[Step<'_>]) -> &mut Node<V> {
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
        if !node.subscribers.is_empty() || node.wild.is_some() || node.children.len() != 1 {
            return;
        }
        let (child_label, child) = node.children.take_only().expect("one child");
        *node = child;
        let (label, _) = parent.children.get_labeled(level).expect("the path exists");
        let label = format!("{}/{child_label}", String::from_utf8_lossy(label));
        parent.children.relabel(level, &label);
    }

    /// Calls `f(subscriber, value)` once per subscription whose filter matches `topic` (a valid
    /// topic name). A subscriber with several matching filters is called once per filter; the
    /// broker merges them. Allocates nothing unless more than 32 `+` branches are pending at once.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(u32, &V)) {
        let mut pending: SmallStack<(&Node<V>, Option<&str>), 32> = SmallStack::new();
        let root = &self.root;
        let (level, next) = split_level(topic);
        // [MQTT-4.7.2-1] A filter starting with a wildcard does not match a `$` topic.
        if !topic.starts_with('$') {
            for (subscriber, value) in root.hash() {
                f(*subscriber, value);
            }
            if let Some(plus) = root.plus() {
                pending.push((plus, next));
            }
        }
        if let Some(step) = root.children.step(level, next) {
            pending.push(step);
        }
        while let Some((mut node, mut rest)) = pending.pop() {
            // Follow one path down, leaving the `+` sides of forks on `pending`.
            loop {
                let plus = match node.wild.as_deref() {
                    Some(wild) => {
                        for (subscriber, value) in wild.hash.as_slice() {
                            f(*subscriber, value);
                        }
                        wild.plus.as_ref()
                    }
                    None => None,
                };
                let Some(levels) = rest else {
                    for (subscriber, value) in node.subscribers.as_slice() {
                        f(*subscriber, value);
                    }
                    break;
                };
                let (level, next) = split_level(levels);
                match (node.children.step(level, next), plus) {
                    (Some((exact, exact_rest)), Some(plus)) => {
                        pending.push((plus, next));
                        node = exact;
                        rest = exact_rest;
                    }
                    (Some((exact, exact_rest)), None) => {
                        node = exact;
                        rest = exact_rest;
                    }
                    (None, Some(plus)) => {
                        node = plus;
                        rest = next;
                    }
                    (None, None) => break,
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::topic::filter::matches;

    fn matched(trie: &Trie<u8>, topic: &str) -> Vec<(u32, u8)> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |s, v| out.push((s, *v)));
        out.sort();
        out
    }

    /// Subscriber i holds filters[i]; returns the sorted indexes matching `topic`.
    fn matched_filters(filters: &[&str], topic: &str) -> Vec<u32> {
        let mut trie = Trie::new();
        for (i, filter) in filters.iter().enumerate() {
            assert_eq!(trie.insert(filter, i as u32, 0u8), None);
        }
        matched(&trie, topic).into_iter().map(|(s, _)| s).collect()
    }

    #[test]
    fn wildcards_and_edge_cases() {
        let filters = [
            "#",                 // 0
            "+/+",               // 1
            "a/+/c",             // 2
            "a//b",              // 3
            "/a",                // 4
            "a/",                // 5
            "sport/#",           // 6
            "sport/tennis/#",    // 7
            "+",                 // 8
            "$SYS/#",            // 9
            "+/monitor/Clients", // 10
            "a/+",               // 11
            "/#",                // 12
        ];
        let cases: &[(&str, &[u32])] = &[
            ("a", &[0, 8]),
            ("a/b/c", &[0, 2]),
            ("a//c", &[0, 2]),
            ("a//b", &[0, 3]),
            ("a/b", &[0, 1, 11]),
            ("/a", &[0, 1, 4, 12]),
            ("/", &[0, 1, 12]),
            ("a/", &[0, 1, 5, 11]),
            ("sport", &[0, 6, 8]),
            ("sport/tennis", &[0, 1, 6, 7]),
            ("sport/tennis/player1", &[0, 6, 7]),
            ("$SYS/x", &[9]),
            ("$SYS", &[9]),
            ("$x", &[]),
            ("$SYS/monitor/Clients", &[9]),
            ("x/monitor/Clients", &[0, 10]),
        ];
        for (topic, expected) in cases {
            assert_eq!(matched_filters(&filters, topic), *expected, "topic {topic}");
            for (i, filter) in filters.iter().enumerate() {
                assert_eq!(
                    expected.contains(&(i as u32)),
                    matches(filter, topic),
                    "reference disagrees on {filter} vs {topic}"
                );
            }
        }
    }

    #[test]
    fn insert_replace_remove_prune() {
        let mut trie = Trie::new();
        assert!(trie.is_empty());
        assert_eq!(trie.insert("a/b", 1, 10u8), None);
        assert_eq!(trie.insert("a/b", 2, 20), None);
        assert_eq!(trie.insert("a/#", 1, 30), None);
        assert_eq!(trie.insert("a/+", 1, 40), None);
        assert_eq!(trie.len(), 4);
        // Replacing keeps the count and returns the old value.
        assert_eq!(trie.insert("a/b", 1, 11), Some(10));
        assert_eq!(trie.len(), 4);
        assert_eq!(
            matched(&trie, "a/b"),
            vec![(1, 11), (1, 30), (1, 40), (2, 20)]
        );
        assert_eq!(matched(&trie, "a"), vec![(1, 30)]);

        assert_eq!(trie.remove("a/b", 3), None);
        assert_eq!(trie.remove("a/c", 1), None);
        assert_eq!(trie.remove("x/y/z", 1), None);
        assert_eq!(trie.remove("a/b", 1), Some(11));
        assert_eq!(trie.remove("a/b", 1), None);
        assert_eq!(trie.len(), 3);
        assert_eq!(matched(&trie, "a/b"), vec![(1, 30), (1, 40), (2, 20)]);
        assert_eq!(trie.remove("a/b", 2), Some(20));
        assert_eq!(trie.remove("a/#", 1), Some(30));
        // "a" stays: it still leads to "a/+".
        let a = trie.root.children.get("a").expect("a stays");
        assert!(a.children.get("b").is_none());
        assert_eq!(trie.remove("a/+", 1), Some(40));
        assert!(trie.is_empty());
        assert!(!trie.root.is_needed(0), "every node pruned");
    }

    /// A node's labels, sorted.
    fn labels<V>(node: &Node<V>) -> Vec<String> {
        let mut labels: Vec<String> = node
            .children
            .labeled()
            .map(|(label, _)| String::from_utf8_lossy(label).into_owned())
            .collect();
        labels.sort();
        labels
    }

    /// Fails unless the trie is fully path-compressed: no node reached through a label holds
    /// nothing but one label.
    fn assert_compressed<V>(trie: &Trie<V>) {
        let mut stack = vec![&trie.root];
        while let Some(node) = stack.pop() {
            for (label, child) in node.children.labeled() {
                assert!(
                    !child.subscribers.is_empty()
                        || child.wild.is_some()
                        || child.children.len() != 1,
                    "uncompressed chain at {:?}",
                    String::from_utf8_lossy(label)
                );
                stack.push(child);
            }
            stack.extend(node.plus());
        }
    }

    #[test]
    fn literal_chains_are_one_label_split_and_merged() {
        let mut trie = Trie::new();
        trie.insert("a/b/c/d", 0, 0u8);
        assert_eq!(labels(&trie.root), ["a/b/c/d"]);
        trie.insert("a/b/x", 1, 0);
        assert_eq!(labels(&trie.root), ["a/b"]);
        assert_eq!(labels(trie.root.children.get("a").unwrap()), ["c/d", "x"]);
        trie.insert("a/b/+/d", 2, 0);
        trie.insert("a/b", 3, 0);
        trie.insert("a/b/c/d/#", 4, 0);
        assert_eq!(matched(&trie, "a/b/c/d"), vec![(0, 0), (2, 0), (4, 0)]);
        assert_eq!(matched(&trie, "a/b/c"), vec![]);
        assert_eq!(matched(&trie, "a/b/c/d/e"), vec![(4, 0)]);
        assert_eq!(matched(&trie, "a/b/x"), vec![(1, 0)]);
        assert_eq!(matched(&trie, "a/b"), vec![(3, 0)]);
        assert_eq!(matched(&trie, "a"), vec![]);
        assert_eq!(trie.remove("a/b/c", 0), None, "ends inside a label");
        assert_eq!(trie.remove("a/b/c/d/e", 0), None, "goes past a leaf");
        for (filter, subscriber) in [("a/b", 3), ("a/b/+/d", 2), ("a/b/x", 1), ("a/b/c/d/#", 4)] {
            assert_eq!(trie.remove(filter, subscriber), Some(0));
            assert_compressed(&trie);
        }
        assert_eq!(
            labels(&trie.root),
            ["a/b/c/d"],
            "merged back into one label"
        );
        // Empty levels are levels.
        trie.insert("a/", 1, 0);
        trie.insert("a//", 2, 0);
        assert_eq!(matched(&trie, "a/"), vec![(1, 0)]);
        assert_eq!(matched(&trie, "a//"), vec![(2, 0)]);
        assert_eq!(matched(&trie, "a"), vec![]);
        assert_eq!(trie.remove("a/b/c/d", 0), Some(0));
        assert_eq!(trie.remove("a/", 1), Some(0));
        assert_eq!(labels(&trie.root), ["a//"]);
        assert_eq!(trie.remove("a//", 2), Some(0));
        assert!(!trie.root.is_needed(0));
    }

    #[test]
    fn prune_keeps_shared_prefixes() {
        let mut trie = Trie::new();
        trie.insert("a/b/c/d", 1, 0u8);
        trie.insert("a/b", 2, 0);
        trie.insert("+/+/#", 3, 0);
        trie.insert("#", 4, 0);
        assert_eq!(trie.remove("a/b/c/d", 1), Some(0));
        assert_eq!(labels(&trie.root), ["a/b"], "c and d pruned, a/b kept");
        let ab = trie.root.children.get("a").expect("a/b kept");
        assert!(ab.children.is_empty());
        assert_eq!(trie.remove("a/b", 2), Some(0));
        assert!(trie.root.children.is_empty());
        assert_eq!(trie.remove("+/+/#", 3), Some(0));
        assert!(trie.root.plus().is_none());
        assert_eq!(matched(&trie, "q"), vec![(4, 0)]);
        assert_eq!(trie.remove("#", 4), Some(0));
        assert!(!trie.root.is_needed(0));
        assert!(
            trie.root.wild.is_none(),
            "no `+` child, no `#` subscriber: freed"
        );
    }

    #[test]
    fn many_subscribers() {
        let mut trie = Trie::new();
        for s in 0..10_000u32 {
            trie.insert("fan/out", s, (s % 3) as u8);
            if s % 2 == 0 {
                trie.insert("fan/+", s, 9);
            }
        }
        assert_eq!(trie.len(), 15_000);
        let mut count = 0;
        let mut sum = 0u64;
        trie.for_each_match("fan/out", |s, _| {
            count += 1;
            sum += u64::from(s);
        });
        assert_eq!(count, 15_000);
        assert_eq!(
            sum,
            (0..10_000u64).sum::<u64>() + (0..10_000u64).step_by(2).sum::<u64>()
        );
        for s in 0..10_000u32 {
            assert!(trie.remove("fan/out", s).is_some());
        }
        assert_eq!(trie.len(), 5_000);
        let mut count = 0;
        trie.for_each_match("fan/in", |_, v| {
            assert_eq!(*v, 9);
            count += 1;
        });
        assert_eq!(count, 5_000);
    }

    #[test]
    fn deep_filters_do_not_overflow_the_stack() {
        // 32,768 levels: the deepest a 65,535-byte filter can be.
        let deep = vec!["a"; 32_768].join("/");
        assert_eq!(deep.len(), 65_535);
        let plus = vec!["+"; 32_768].join("/");
        let mut trie = Trie::new();
        trie.insert(&deep, 1, 1u8);
        trie.insert(&plus, 2, 2);
        assert_eq!(matched(&trie, &deep), vec![(1, 1), (2, 2)]);
        assert_eq!(trie.remove(&deep, 1), Some(1));
        assert_eq!(matched(&trie, &deep), vec![(2, 2)]);
        // Many `+` forks pending at once spill the inline stack but still match.
        let mut forked = Trie::new();
        let mut prefix = String::new();
        for depth in 0..100u32 {
            forked.insert(&format!("{prefix}+"), depth, 0u8);
            prefix.push_str("a/");
        }
        let topic = vec!["a"; 100].join("/");
        assert_eq!(matched(&forked, &topic), vec![(99, 0)]);
        let topic = vec!["a"; 50].join("/");
        assert_eq!(matched(&forked, &topic), vec![(49, 0)]);
        drop(trie); // Iterative drop of the 32,768-level chain.
    }

    #[test]
    fn matching_allocates_nothing() {
        use crate::topic::alloc_count::allocations_during;
        let mut trie = Trie::new();
        for (i, filter) in ["#", "+/+/+", "a/+/c", "a/b/c", "a/#", "$SYS/#", "+/b/#"]
            .iter()
            .enumerate()
        {
            trie.insert(filter, i as u32, 0u8);
        }
        for s in 0..1000 {
            trie.insert("fan/+", s, 1);
        }
        let mut count = 0;
        let allocations = allocations_during(|| {
            for topic in ["a/b/c", "a", "$SYS/x", "fan/out", "x/b/y/z", "a//c"] {
                trie.for_each_match(topic, |_, _| count += 1);
            }
        });
        assert_eq!(allocations, 0);
        assert_eq!(count, 6 + 2 + 1 + 1001 + 2 + 4);
    }

    #[test]
    fn representation_boundaries_round_trip() {
        // Subscribers: none -> one inline -> a vector -> back to one inline -> none.
        let mut trie = Trie::new();
        assert_eq!(trie.insert("s", 1, 10u8), None);
        assert!(matches!(
            trie.root.children.get("s").unwrap().subscribers,
            Subscribers::One((1, 10))
        ));
        assert_eq!(trie.insert("s", 1, 11), Some(10), "replaced inline");
        assert_eq!(trie.insert("s", 2, 20), None);
        assert_eq!(trie.insert("s", 3, 30), None);
        assert_eq!(trie.insert("s", 2, 21), Some(20), "replaced in the vector");
        assert!(matches!(
            trie.root.children.get("s").unwrap().subscribers,
            Subscribers::Many(_)
        ));
        assert_eq!(matched(&trie, "s"), vec![(1, 11), (2, 21), (3, 30)]);
        assert_eq!(trie.remove("s", 1), Some(11));
        assert_eq!(trie.remove("s", 3), Some(30));
        assert!(matches!(
            trie.root.children.get("s").unwrap().subscribers,
            Subscribers::One((2, 21))
        ));
        assert_eq!(trie.remove("s", 3), None);
        assert_eq!(trie.remove("s", 2), Some(21));
        assert!(trie.is_empty() && trie.root.children.is_empty());

        // Children: past FEW_MAX literal levels under one node, the map becomes a table; every
        // level still matches on the way up and back down.
        use crate::topic::level_map::FEW_MAX;
        let count = FEW_MAX * 4;
        for i in 0..count {
            trie.insert(&format!("t/{i}"), i as u32, 0);
            trie.insert(&format!("t/{i}/#"), 1000 + i as u32, 0);
        }
        for round in 0..2 {
            for i in 0..count {
                let expected = if round == 1 && i % 2 == 0 {
                    vec![]
                } else {
                    vec![(i as u32, 0), (1000 + i as u32, 0)]
                };
                assert_eq!(matched(&trie, &format!("t/{i}")), expected, "{round} {i}");
            }
            for i in (0..count).step_by(2) {
                trie.remove(&format!("t/{i}"), i as u32);
                trie.remove(&format!("t/{i}/#"), 1000 + i as u32);
            }
        }
        assert_eq!(trie.len(), count);
        for i in (1..count).step_by(2) {
            assert_eq!(trie.remove(&format!("t/{i}/#"), 1000 + i as u32), Some(0));
            assert_eq!(trie.remove(&format!("t/{i}"), i as u32), Some(0));
        }
        assert!(trie.is_empty());
        assert!(!trie.root.is_needed(0), "every node pruned");

        // `+` and `#` share one box, freed when both are gone.
        trie.insert("w/+", 1, 0);
        trie.insert("w/#", 2, 0);
        let wild = |trie: &Trie<u8>| trie.root.children.get("w").unwrap().wild.is_some();
        assert!(wild(&trie));
        trie.remove("w/+", 1);
        assert!(wild(&trie), "still holds the `#` subscriber");
        trie.insert("w/x", 3, 0);
        trie.remove("w/#", 2);
        assert!(!wild(&trie), "freed with its last entry");
        assert_eq!(matched(&trie, "w/x"), vec![(3, 0)]);
    }

    /// Heap per distinct filter, one subscriber each, shaped like the broker's idle benchmark
    /// (`bench/client-{i}/in`): `cargo test --lib bytes_per_filter -- --nocapture` prints it.
    #[test]
    fn bytes_per_distinct_filter() {
        use crate::topic::alloc_count::live_bytes_of;
        const FILTER_COUNT: usize = 100_000;
        let filters: Vec<String> = (0..FILTER_COUNT)
            .map(|i| format!("bench/client-{i}/in"))
            .collect();
        let (requested, chunks) = live_bytes_of(|| {
            let mut trie: Trie<u8> = Trie::new();
            for (i, filter) in filters.iter().enumerate() {
                trie.insert(filter, i as u32, 1);
            }
            trie
        });
        let (requested, chunks) = (
            requested / FILTER_COUNT as i64,
            chunks / FILTER_COUNT as i64,
        );
        eprintln!("trie: {requested} B requested, {chunks} B in glibc chunks per distinct filter");
        assert!(chunks < 1024, "{chunks} B per filter");
    }

    /// xorshift64*: deterministic randomness without a dependency.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
        }

        pub(crate) fn topic(&mut self) -> String {
            const LEVELS: [&str; 5] = ["a", "b", "", "$x", "c"];
            let count = 1 + self.below(4);
            (0..count)
                .map(|_| LEVELS[self.below(LEVELS.len())])
                .collect::<Vec<_>>()
                .join("/")
        }

        pub(crate) fn filter(&mut self) -> String {
            const LEVELS: [&str; 6] = ["a", "b", "", "$x", "+", "+"];
            let count = 1 + self.below(4);
            let mut levels: Vec<&str> = (0..count)
                .map(|_| LEVELS[self.below(LEVELS.len())])
                .collect();
            if self.below(3) == 0 {
                levels.push("#");
            }
            levels.join("/")
        }
    }

    #[test]
    fn randomized_against_reference_matcher() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..200 {
            let mut trie = Trie::new();
            let mut subscriptions: Vec<(String, u32)> = Vec::new();
            for _ in 0..rng.below(40) {
                let filter = rng.filter();
                let subscriber = rng.below(8) as u32;
                let replaced = trie.insert(&filter, subscriber, 0u8).is_some();
                let known = subscriptions.contains(&(filter.clone(), subscriber));
                assert_eq!(replaced, known);
                if !known {
                    subscriptions.push((filter, subscriber));
                }
            }
            // Remove some, so pruning is exercised before matching.
            for _ in 0..rng.below(10) {
                if subscriptions.is_empty() {
                    break;
                }
                let (filter, subscriber) =
                    subscriptions.swap_remove(rng.below(subscriptions.len()));
                assert_eq!(trie.remove(&filter, subscriber), Some(0));
            }
            assert_eq!(trie.len(), subscriptions.len());
            assert_compressed(&trie);
            for _ in 0..50 {
                let topic = rng.topic();
                let mut got: Vec<u32> = Vec::new();
                trie.for_each_match(&topic, |s, _| got.push(s));
                let mut want: Vec<u32> = subscriptions
                    .iter()
                    .filter(|(f, _)| matches(f, &topic))
                    .map(|(_, s)| *s)
                    .collect();
                want.sort();
                got.sort();
                assert_eq!(
                    got, want,
                    "round {round} topic {topic:?} subs {subscriptions:?}"
                );
            }
            for (filter, subscriber) in subscriptions.drain(..) {
                assert!(trie.remove(&filter, subscriber).is_some());
            }
            assert!(trie.is_empty());
            assert!(!trie.root.is_needed(0), "round {round}: not fully pruned");
        }
    }
}
