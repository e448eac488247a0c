//! Retained messages, one per topic name, in a trie of topic levels.
//!
//! A new subscription must find every retained message its filter matches [MQTT-3.3.1-6], so the
//! store is walked by the filter's levels: a literal level follows one child, `+` each child,
//! `#` the whole subtree. Cost grows with what matches, not with how many topics are retained.
//! What `T` is (the broker's carries its own topic name, so the store keeps none beside it), and
//! that an empty payload deletes (the broker calls `remove`), is the broker's.
//!
//! Every shard holds a replica of the store, so what a message costs here is paid once per
//! shard: a node's children live in a `LevelMap` (16 bytes, short levels inline, no spare
//! slots below 9 children), the one map the subscription trie uses for the same reason.
//!
//! The store counts its messages and their bytes (topic name plus what `weigh` says a `T`
//! weighs), so the broker can bound both (`limits.retained_max`, `retained_bytes_max`).
//!
//! A message may run out (MQTT 5's Message Expiry Interval): the store keeps those that do in
//! a heap by deadline, and `remove_expired` deletes them when their time comes, so an expired
//! message stops counting against the bounds whether or not a subscription ever finds it.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::ControlFlow;

use super::filter::split_level;
use super::level_map::{Children, LevelMap};
use super::stack::SmallStack;

pub struct RetainedStore<T> {
    root: Node<T>,
    len: usize,
    /// Topic names plus `weigh` of every message held.
    bytes: usize,
    /// Of `len` and `bytes`, the server's own (`$SYS/...`): the broker's `$SYS` topics must
    /// not take the clients' room under the retained limits.
    server_len: usize,
    server_bytes: usize,
    weigh: fn(&T) -> usize,
    /// When a message runs out (`NO_DEADLINE`: never), in the caller's clock.
    deadline: fn(&T) -> u32,
    /// (deadline, topic) of the messages set with a deadline, soonest first. An entry whose
    /// topic holds another message by then is skipped when it comes up; stale entries are
    /// bounded by rebuilding the heap once they outnumber the messages.
    expiring: BinaryHeap<Reverse<(u32, Box<str>)>>,
}

/// The broker's own topics (`$SYS/...`), kept apart from the clients' in the counts.
fn is_server_topic(topic: &str) -> bool {
    topic.starts_with("$SYS/")
}

/// `topic`'s levels, as `topic.split('/')` gives them, by `split_level`'s plain byte scan:
/// levels are short, and `str::split`'s searcher cost a retained PUBLISH ~20 ns per walk.
fn levels(topic: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(topic);
    std::iter::from_fn(move || {
        let (level, next) = split_level(rest?);
        rest = next;
        Some(level)
    })
}

/// `deadline` of a message that never runs out.
pub const NO_DEADLINE: u32 = u32::MAX;

/// Expiring entries beyond twice the messages held that trigger a rebuild of the heap.
const EXPIRING_SLACK: usize = 1024;

struct Node<T> {
    children: LevelMap<Node<T>>,
    /// The retained message whose topic name ends at this node.
    message: Option<T>,
}

impl<T> Node<T> {
    fn new() -> Self {
        Node {
            children: LevelMap::new(),
            message: None,
        }
    }
}

impl<T> Drop for Node<T> {
    /// Iterative, so dropping a 32,768-level topic does not overflow the stack.
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut pending: Vec<Node<T>> = Vec::new();
        self.children.take_all(&mut pending);
        while let Some(mut node) = pending.pop() {
            node.children.take_all(&mut pending);
        }
    }
}

/// Work left on the walk's stack: the rest of one child iterator.
enum Frame<'a, T> {
    /// The filter had `+` here: try each child against the levels after the `+`.
    Plus {
        children: Children<'a, Node<T>>,
        rest: Option<&'a str>,
        skip_dollar: bool,
    },
    /// The filter had `#` here: every message in each child's subtree matches.
    Subtree {
        children: Children<'a, Node<T>>,
        skip_dollar: bool,
    },
}

impl<T> Default for RetainedStore<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> RetainedStore<T> {
    /// A store whose messages weigh nothing but their topic names.
    pub fn new() -> Self {
        RetainedStore::with_weigh(|_| 0)
    }

    /// A store that counts `weigh(message)` bytes per message, beside its topic name.
    pub fn with_weigh(weigh: fn(&T) -> usize) -> Self {
        RetainedStore::with_weigh_and_deadline(weigh, |_| NO_DEADLINE)
    }

    /// As `with_weigh`, for messages that run out at `deadline(message)` (see
    /// `remove_expired`).
    pub fn with_weigh_and_deadline(weigh: fn(&T) -> usize, deadline: fn(&T) -> u32) -> Self {
        RetainedStore {
            root: Node::new(),
            len: 0,
            bytes: 0,
            server_len: 0,
            server_bytes: 0,
            weigh,
            deadline,
            expiring: BinaryHeap::new(),
        }
    }

    /// Deletes up to `count_max` messages whose deadline is `now` or earlier, soonest first;
    /// returns how many it deleted. Looks at nothing when none is due.
    pub fn remove_expired(&mut self, now: u32, count_max: usize) -> usize {
        let mut removed = 0;
        while removed < count_max {
            match self.expiring.peek() {
                Some(Reverse((deadline, _))) if *deadline <= now => {}
                _ => break,
            }
            let Some(Reverse((_, topic))) = self.expiring.pop() else {
                break;
            };
            // The topic may hold a newer message by now, with a later deadline or none.
            let due = self
                .get(&topic)
                .is_some_and(|message| (self.deadline)(message) <= now);
            if due {
                self.remove(&topic);
                removed += 1;
            }
        }
        removed
    }

    /// Deletes the message of `topic` if its deadline is `now` or earlier (a subscription
    /// found it expired); true when it did.
    pub fn remove_if_expired(&mut self, topic: &str, now: u32) -> bool {
        let due = self
            .get(topic)
            .is_some_and(|message| (self.deadline)(message) <= now);
        if due {
            self.remove(topic);
        }
        due
    }

    /// Entries waiting in the expiry heap (stale ones included).
    pub fn expiring_len(&self) -> usize {
        self.expiring.len()
    }

    /// The heap again without its stale entries: those whose topic holds no message by now,
    /// or one with another deadline, and repeats.
    fn rebuild_expiring(&mut self) {
        let mut expiring = std::mem::take(&mut self.expiring).into_vec();
        expiring.sort_unstable();
        expiring.dedup();
        expiring.retain(|Reverse((at, topic))| {
            self.get(topic)
                .is_some_and(|message| (self.deadline)(message) == *at)
        });
        self.expiring = BinaryHeap::from(expiring);
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes held: topic names plus what `weigh` says of each message.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// `len` less the server's own `$SYS/...` messages: what the retained limits count.
    pub fn clients_len(&self) -> usize {
        self.len - self.server_len
    }

    /// `bytes` less the server's own `$SYS/...` messages.
    pub fn clients_bytes(&self) -> usize {
        self.bytes - self.server_bytes
    }

    pub fn contains(&self, topic: &str) -> bool {
        self.get(topic).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Retains `message` for `topic` (a valid topic name), replacing any previous one
    /// [MQTT-3.3.1-5].
    pub fn set(&mut self, topic: &str, message: T) {
        let mut node = &mut self.root;
        for level in levels(topic) {
            node = node.children.get_or_insert_with(level, Node::new);
        }
        let weigh = self.weigh;
        let (len_before, bytes_before) = (self.len, self.bytes);
        self.bytes += weigh(&message);
        let deadline = (self.deadline)(&message);
        match &mut node.message {
            Some(old) => {
                self.bytes -= weigh(old);
                *old = message;
            }
            None => {
                node.message = Some(message);
                self.len += 1;
                self.bytes += topic.len();
            }
        }
        if is_server_topic(topic) {
            self.server_len += self.len - len_before;
            self.server_bytes = self.server_bytes + self.bytes - bytes_before;
        }
        if deadline != NO_DEADLINE {
            self.expiring.push(Reverse((deadline, topic.into())));
            if self.expiring.len() > 2 * self.len + EXPIRING_SLACK {
                self.rebuild_expiring();
            }
        }
    }

    pub fn get(&self, topic: &str) -> Option<&T> {
        let mut node = &self.root;
        for level in levels(topic) {
            node = node.children.get(level)?;
        }
        node.message.as_ref()
    }

    /// Removes and returns the message retained for `topic`, freeing levels left empty.
    pub fn remove(&mut self, topic: &str) -> Option<T> {
        let mut node = &mut self.root;
        for level in levels(topic) {
            node = node.children.get_mut(level)?;
        }
        let message = node.message.take()?;
        let weight = topic.len() + (self.weigh)(&message);
        self.len -= 1;
        self.bytes -= weight;
        if is_server_topic(topic) {
            self.server_len -= 1;
            self.server_bytes -= weight;
        }
        self.prune(topic);
        Some(message)
    }

    /// Two passes, no recursion: find the deepest node on the path that must stay (it holds a
    /// message or another child), then cut the path below it.
    fn prune(&mut self, topic: &str) {
        let mut keep_depth = 0;
        let mut depth = 0;
        let mut node = &self.root;
        let mut path = levels(topic).peekable();
        while let Some(level) = path.next() {
            let Some(child) = node.children.get(level) else {
                return;
            };
            node = child;
            depth += 1;
            let path_children = usize::from(path.peek().is_some());
            if node.message.is_some() || node.children.len() > path_children {
                keep_depth = depth;
            }
        }
        if keep_depth == depth {
            return;
        }
        let mut node = &mut self.root;
        for (index, level) in levels(topic).enumerate() {
            if index == keep_depth {
                node.children.remove(level);
                return;
            }
            match node.children.get_mut(level) {
                Some(child) => node = child,
                None => return,
            }
        }
    }

    /// Calls `f(message)` for every retained message whose topic matches `filter` (a valid
    /// plain filter), with the `$` rule: a filter starting with `+` or `#` skips topics
    /// starting with `$` [MQTT-4.7.2-1]. Allocates only when more than 16 levels of `+`/`#` are
    /// being walked at once.
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&T)) {
        self.walk_matches(filter, |message| {
            f(message);
            ControlFlow::Continue(())
        });
    }

    /// As `for_each_match`, until `f` says `Break`. Returns the walk's cost: the nodes it
    /// visited, matching or not, so a caller handing out work in slices can count it.
    pub fn walk_matches(&self, filter: &str, mut f: impl FnMut(&T) -> ControlFlow<()>) -> usize {
        let stopped = Cell::new(false);
        let mut visits = 0;
        let mut report = |message: &T| {
            if !stopped.get() {
                stopped.set(f(message).is_break());
            }
        };
        let mut stack: SmallStack<Frame<'_, T>, 16> = SmallStack::new();
        visits += descend(&self.root, Some(filter), true, &mut stack, &mut report);
        loop {
            let Some(frame) = stack.last_mut() else {
                return visits;
            };
            visits += 1;
            if stopped.get() {
                return visits;
            }
            let (child, rest) = match frame {
                Frame::Plus {
                    children,
                    rest,
                    skip_dollar,
                } => match children.next() {
                    Some((level, child)) if !(*skip_dollar && level.starts_with(b"$")) => {
                        (child, Some(*rest))
                    }
                    Some(_) => continue,
                    None => {
                        stack.pop();
                        continue;
                    }
                },
                Frame::Subtree {
                    children,
                    skip_dollar,
                } => match children.next() {
                    Some((level, child)) if !(*skip_dollar && level.starts_with(b"$")) => {
                        (child, None)
                    }
                    Some(_) => continue,
                    None => {
                        stack.pop();
                        continue;
                    }
                },
            };
            match rest {
                // A `+` child: match the rest of the filter below it.
                Some(rest) => visits += descend(child, rest, false, &mut stack, &mut report),
                // A `#` child: report it and walk all of its subtree.
                None => {
                    if let Some(message) = &child.message {
                        report(message);
                    }
                    if !child.children.is_empty() {
                        stack.push(Frame::Subtree {
                            children: child.children.labeled(),
                            skip_dollar: false,
                        });
                    }
                }
            }
        }
    }
}

/// Follows literal filter levels from `node` down; at a wildcard, leaves a frame on `stack` for
/// the caller's loop. `rest` is the filter's remaining levels (`None`: the filter ended here).
/// Returns the levels it followed.
fn descend<'a, T>(
    mut node: &'a Node<T>,
    mut rest: Option<&'a str>,
    mut at_root: bool,
    stack: &mut SmallStack<Frame<'a, T>, 16>,
    f: &mut impl FnMut(&T),
) -> usize {
    let mut visits = 1;
    loop {
        let Some(levels) = rest else {
            if let Some(message) = &node.message {
                f(message);
            }
            return visits;
        };
        let (level, next) = split_level(levels);
        match level {
            "#" => {
                // `a/#` matches `a` itself [MQTT-4.7.1-2]; the root holds no topic of its own.
                if !at_root {
                    if let Some(message) = &node.message {
                        f(message);
                    }
                }
                stack.push(Frame::Subtree {
                    children: node.children.labeled(),
                    skip_dollar: at_root,
                });
                return visits;
            }
            "+" => {
                stack.push(Frame::Plus {
                    children: node.children.labeled(),
                    rest: next,
                    skip_dollar: at_root,
                });
                return visits;
            }
            _ => match node.children.get(level) {
                Some(child) => {
                    node = child;
                    rest = next;
                    at_root = false;
                    visits += 1;
                }
                None => return visits,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::filter::matches;
    use crate::topic::trie::tests::Rng;

    /// A store whose messages carry their topic names, as the broker's do.
    type Named = RetainedStore<(String, u32)>;

    fn put(store: &mut Named, topic: &str, value: u32) {
        store.set(topic, (topic.to_string(), value));
    }

    fn matched(store: &Named, filter: &str) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        store.for_each_match(filter, |message| out.push(message.clone()));
        out.sort();
        out
    }

    fn topics(store: &Named, filter: &str) -> Vec<String> {
        matched(store, filter).into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn server_topics_are_counted_apart_from_the_clients() {
        let mut store: RetainedStore<u32> = RetainedStore::with_weigh(|_| 10);
        store.set("a/b", 1);
        store.set("$SYS/broker/uptime", 2);
        store.set("$SYS/broker/uptime", 3);
        store.set("$SYSTEM/x", 4);
        assert_eq!(store.len(), 3);
        assert_eq!(store.clients_len(), 2);
        assert_eq!(store.clients_bytes(), 3 + 10 + 9 + 10);
        assert_eq!(store.bytes(), store.clients_bytes() + 18 + 10);
        store.remove("$SYS/broker/uptime");
        assert_eq!((store.len(), store.clients_len()), (2, 2));
        assert_eq!(store.bytes(), store.clients_bytes());
    }

    #[test]
    fn a_walk_stops_when_told_and_counts_what_it_visited() {
        let mut store = RetainedStore::new();
        for n in 0..100 {
            store.set(&format!("a/{n}"), n);
        }
        store.set("b", 100);
        let mut seen = 0;
        let visits = store.walk_matches("a/+", |_| {
            seen += 1;
            if seen == 10 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(seen, 10, "no match reported after the break");
        assert!(visits < 40, "the walk ended soon after: {visits} visits");
        let all = store.walk_matches("a/+", |_| ControlFlow::Continue(()));
        assert!(all >= 100, "every child of a/ was visited: {all}");
        assert_eq!(store.walk_matches("c/d", |_| ControlFlow::Continue(())), 1);
    }

    #[test]
    fn bytes_follow_sets_replacements_and_removals() {
        let mut store: RetainedStore<Vec<u8>> = RetainedStore::with_weigh(Vec::len);
        store.set("a/b", vec![0; 10]);
        assert_eq!((store.len(), store.bytes()), (1, 3 + 10));
        store.set("a/b", vec![0; 4]);
        assert_eq!(
            (store.len(), store.bytes()),
            (1, 3 + 4),
            "a replacement reweighs"
        );
        store.set("c", vec![0; 100]);
        assert_eq!(store.bytes(), 7 + 101);
        assert!(store.contains("c") && !store.contains("a"));
        assert_eq!(store.remove("a/b"), Some(vec![0; 4]));
        assert_eq!(store.remove("a/b"), None);
        assert_eq!((store.len(), store.bytes()), (1, 101));
        store.remove("c");
        assert_eq!((store.len(), store.bytes()), (0, 0));
    }

    #[test]
    fn expired_messages_are_deleted_and_stop_counting() {
        // (payload length, deadline)
        let mut store: RetainedStore<(usize, u32)> =
            RetainedStore::with_weigh_and_deadline(|m| m.0, |m| m.1);
        store.set("a", (10, 5));
        store.set("b", (20, NO_DEADLINE));
        store.set("c", (30, 7));
        assert_eq!((store.len(), store.bytes()), (3, 63));
        assert_eq!(store.remove_expired(4, 100), 0, "nothing due yet");
        assert_eq!(store.remove_expired(5, 100), 1);
        assert!(!store.contains("a") && store.contains("c"));
        assert_eq!((store.len(), store.bytes()), (2, 52));
        // Replaced before its time by a message that never runs out: kept.
        store.set("c", (1, NO_DEADLINE));
        assert_eq!(store.remove_expired(100, 100), 0);
        assert_eq!((store.len(), store.bytes()), (2, 23));
        assert!(!store.remove_if_expired("c", 100));
        store.set("d", (4, 9));
        assert!(!store.remove_if_expired("d", 8));
        assert!(store.remove_if_expired("d", 9));
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn remove_expired_takes_at_most_what_it_is_told() {
        let mut store: RetainedStore<(usize, u32)> =
            RetainedStore::with_weigh_and_deadline(|m| m.0, |m| m.1);
        for n in 0..10 {
            store.set(&format!("t/{n}"), (1, 3));
        }
        assert_eq!(store.remove_expired(3, 4), 4);
        assert_eq!(store.remove_expired(3, 100), 6);
        assert!(store.is_empty() && store.bytes() == 0);
    }

    #[test]
    fn stale_expiry_entries_stay_bounded() {
        let mut store: RetainedStore<(usize, u32)> =
            RetainedStore::with_weigh_and_deadline(|m| m.0, |m| m.1);
        // One topic replaced again and again, each with a far deadline.
        for n in 0..10_000u32 {
            store.set("one/topic", (1, 1_000_000 + n));
        }
        assert_eq!(store.len(), 1);
        assert!(
            store.expiring_len() <= 2 + EXPIRING_SLACK + 1,
            "{} entries",
            store.expiring_len()
        );
        assert_eq!(store.remove_expired(2_000_000, 100_000), 1);
        assert_eq!(store.expiring_len(), 0);
    }

    #[test]
    fn levels_are_those_of_split() {
        for topic in ["a", "a/b/c", "a/", "/a", "/", "", "a//b", "$SYS/x/"] {
            assert_eq!(
                levels(topic).collect::<Vec<_>>(),
                topic.split('/').collect::<Vec<_>>(),
                "{topic:?}"
            );
        }
    }

    #[test]
    fn set_get_replace_remove() {
        let mut store = RetainedStore::new();
        assert!(store.is_empty());
        store.set("a/b", 1);
        store.set("a", 2);
        store.set("a/b", 3);
        assert_eq!(store.len(), 2);
        assert_eq!(store.get("a/b"), Some(&3));
        assert_eq!(store.get("a"), Some(&2));
        assert_eq!(store.get("a/b/c"), None);
        assert_eq!(store.get("b"), None);
        assert_eq!(store.remove("a/c"), None);
        assert_eq!(store.remove("a/b/c"), None);
        assert_eq!(store.remove("a"), Some(2));
        assert_eq!(store.remove("a"), None);
        assert_eq!(
            store.get("a/b"),
            Some(&3),
            "removing a parent keeps the child"
        );
        assert_eq!(store.remove("a/b"), Some(3));
        assert!(store.is_empty());
        assert!(store.root.children.is_empty(), "every level pruned");
    }

    #[test]
    fn prune_keeps_other_branches() {
        let mut store = RetainedStore::new();
        store.set("a/b/c/d", 1);
        store.set("a/x", 2);
        assert_eq!(store.remove("a/b/c/d"), Some(1));
        let a = store.root.children.get("a").expect("a kept");
        assert_eq!(a.children.len(), 1);
        assert!(a.children.get("x").is_some());
        assert_eq!(store.remove("a/x"), Some(2));
        assert!(store.root.children.is_empty());
    }

    #[test]
    fn wildcards_and_edge_cases() {
        let mut store = Named::new();
        for (i, topic) in [
            "a",
            "a/b",
            "a/b/c",
            "a//c",
            "a/",
            "/a",
            "/",
            "sport",
            "sport/tennis",
            "sport/tennis/player1",
            "$SYS/x",
            "$SYS/monitor/Clients",
            "$x",
            "b/$x",
        ]
        .into_iter()
        .enumerate()
        {
            put(&mut store, topic, i as u32);
        }
        let cases: &[(&str, &[&str])] = &[
            ("a", &["a"]),
            ("+", &["a", "sport"]),
            ("+/+", &["/a", "/", "a/b", "a/", "sport/tennis", "b/$x"]),
            ("a/+/c", &["a//c", "a/b/c"]),
            ("a//c", &["a//c"]),
            ("/a", &["/a"]),
            ("/+", &["/", "/a"]),
            ("a/", &["a/"]),
            ("a/+", &["a/", "a/b"]),
            ("a/#", &["a", "a/", "a//c", "a/b", "a/b/c"]),
            (
                "sport/#",
                &["sport", "sport/tennis", "sport/tennis/player1"],
            ),
            ("sport/tennis/#", &["sport/tennis", "sport/tennis/player1"]),
            ("$SYS/#", &["$SYS/monitor/Clients", "$SYS/x"]),
            ("$SYS/+", &["$SYS/x"]),
            ("+/monitor/Clients", &[]),
            ("$SYS/monitor/Clients", &["$SYS/monitor/Clients"]),
            ("$x", &["$x"]),
            ("b/+", &["b/$x"]),
            ("nothing/#", &[]),
        ];
        for (filter, expected) in cases {
            let mut expected: Vec<String> = expected.iter().map(|t| t.to_string()).collect();
            expected.sort();
            assert_eq!(topics(&store, filter), expected, "filter {filter}");
        }
        // `#` alone: every topic except the `$` ones.
        let all = topics(&store, "#");
        assert_eq!(all.len(), 11);
        assert!(all.iter().all(|t| !t.starts_with('$')));
        assert_eq!(matched(&store, "a/b"), vec![("a/b".to_string(), 1)]);
    }

    #[test]
    fn matching_allocates_nothing() {
        use crate::topic::alloc_count::allocations_during;
        let mut store = RetainedStore::new();
        for (i, topic) in ["a/b/c", "a/x/c", "a", "$SYS/x", "b/c/d/e"]
            .iter()
            .enumerate()
        {
            store.set(topic, i as u32);
        }
        let mut count = 0;
        let allocations = allocations_during(|| {
            for filter in ["#", "a/+/c", "+/+/+", "a/#", "$SYS/#", "b/c/d/e", "+/c/#"] {
                store.for_each_match(filter, |_| count += 1);
            }
        });
        assert_eq!(allocations, 0);
        assert_eq!(count, 4 + 2 + 2 + 3 + 1 + 1 + 1);
    }

    #[test]
    fn deep_topics_do_not_overflow_the_stack() {
        let deep = vec!["a"; 32_768].join("/");
        let mut store = Named::new();
        put(&mut store, &deep, 7);
        put(&mut store, "a", 1);
        assert_eq!(store.get(&deep).map(|m| m.1), Some(7));
        assert_eq!(topics(&store, "a/#").len(), 2);
        assert_eq!(topics(&store, "#").len(), 2);
        let plus = vec!["+"; 32_768].join("/");
        assert_eq!(matched(&store, &plus), vec![(deep.clone(), 7)]);
        assert_eq!(store.remove(&deep).map(|m| m.1), Some(7));
        assert_eq!(store.len(), 1);
        assert!(store.root.children.get("a").unwrap().children.is_empty());
        put(&mut store, &deep, 8);
        drop(store); // Iterative drop of the 32,768-level chain.
    }

    #[test]
    fn randomized_against_reference_matcher() {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        for round in 0..200 {
            let mut store = Named::new();
            let mut retained: Vec<String> = Vec::new();
            for i in 0..rng.below(30) {
                let topic = rng.topic();
                put(&mut store, &topic, i as u32);
                if !retained.contains(&topic) {
                    retained.push(topic);
                }
            }
            for _ in 0..rng.below(8) {
                if retained.is_empty() {
                    break;
                }
                let topic = retained.swap_remove(rng.below(retained.len()));
                assert!(store.remove(&topic).is_some());
            }
            assert_eq!(store.len(), retained.len());
            for topic in &retained {
                assert!(store.get(topic).is_some());
            }
            for _ in 0..50 {
                let filter = rng.filter();
                let got = topics(&store, &filter);
                let mut want: Vec<String> = retained
                    .iter()
                    .filter(|t| matches(&filter, t))
                    .cloned()
                    .collect();
                want.sort();
                assert_eq!(got, want, "round {round} filter {filter:?}");
            }
            for topic in retained.drain(..) {
                assert!(store.remove(&topic).is_some());
            }
            assert!(store.is_empty());
            assert!(store.root.children.is_empty(), "round {round}: not pruned");
        }
    }
}
