//! The literal children of a trie node, keyed by level text: shared by the subscription trie and
//! the mesh's interest index, which hold a node per distinct filter (the interest index on every
//! shard), so what a child costs is paid per filter, times the shard count. With `LABELS` a key
//! is a path-compressed label of one or more literal levels, found by its first level; the
//! helpers at the bottom walk such labels.
//!
//! Most nodes have one child or none (`bench/client-17/in`), so up to `FEW_MAX` children live in
//! an exact-size boxed slice searched linearly: no hash, no spare capacity, no allocation when
//! empty. Past `FEW_MAX` they move to a hash table (foldhash, seeded per process: levels come from
//! clients, who must not be able to pick colliding keys cheaply), and back below `FEW_MAX / 2`
//! (the gap keeps a node that hovers around the threshold from converting on every change).
//! Level text up to `LEVEL_INLINE_MAX` bytes lives inside the entry, so a short level costs no
//! allocation of its own.
//!
//! The mesh's `LocalInterest` keys whole filters by it too: a short text -> value map is what it
//! needs, and most filters fit inline.

use std::fmt;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use hashbrown::HashTable;

/// Children kept in the boxed slice; one more moves them to a hash table.
pub(crate) const FEW_MAX: usize = 8;

/// Level text up to this long is stored inline: 22 bytes plus the length make a `Level` 24
/// bytes, what a `Box<[u8]>` and its enum tag take anyway.
const LEVEL_INLINE_MAX: usize = 22;

/// One level's text, compared as bytes (levels are never split or printed on the hot path).
enum Level {
    Inline {
        len: u8,
        bytes: [u8; LEVEL_INLINE_MAX],
    },
    Heap(Box<[u8]>),
}

const _: () = assert!(std::mem::size_of::<Level>() == 24);
const _: () = assert!(LEVEL_INLINE_MAX <= u8::MAX as usize);
const _: () = assert!(std::mem::size_of::<LevelMap<u64>>() == 16);

impl Level {
    fn new(level: &str) -> Level {
        let text = level.as_bytes();
        if text.len() <= LEVEL_INLINE_MAX {
            let mut bytes = [0; LEVEL_INLINE_MAX];
            bytes[..text.len()].copy_from_slice(text);
            Level::Inline {
                len: text.len() as u8,
                bytes,
            }
        } else {
            Level::Heap(text.into())
        }
    }

    #[inline]
    fn as_bytes(&self) -> &[u8] {
        match self {
            Level::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Level::Heap(bytes) => bytes,
        }
    }
}

impl fmt::Debug for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(self.as_bytes()), f)
    }
}

/// Level text -> child node: 16 bytes (the slice pointer's niche tags the table variant).
///
/// With `LABELS`, a key may be a label of several literal levels (`client-17/in`, a path-
/// compressed chain) and is found by its first level: at most one key per first level.
pub(crate) struct LevelMap<N, const LABELS: bool = false> {
    repr: Repr<N>,
}

enum Repr<N> {
    /// At most `FEW_MAX` entries, unordered, exactly as many slots as entries.
    Few(Box<[(Level, N)]>),
    Many(Box<Many<N>>),
}

struct Many<N> {
    table: HashTable<(Level, N)>,
    hasher: RandomState,
}

impl<N> Many<N> {
    fn hash(&self, level: &[u8]) -> u64 {
        self.hasher.hash_one(level)
    }
}

impl<N, const LABELS: bool> Default for LevelMap<N, LABELS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<N, const LABELS: bool> LevelMap<N, LABELS> {
    /// What a key is found by: all of it, or with `LABELS` its first level.
    #[inline]
    fn head(key: &Level) -> &[u8] {
        Self::head_of(key.as_bytes())
    }

    #[inline]
    fn head_of(bytes: &[u8]) -> &[u8] {
        if LABELS {
            match bytes.iter().position(|&byte| byte == b'/') {
                Some(end) => &bytes[..end],
                None => bytes,
            }
        } else {
            bytes
        }
    }

    /// `head(key) == level` for a `level` without `/`, comparing `level`'s bytes and the one
    /// after them instead of first scanning the key for its `/`.
    #[inline]
    fn found_by(key: &Level, level: &[u8]) -> bool {
        let key = key.as_bytes();
        if !LABELS {
            return key == level;
        }
        match key.get(level.len()) {
            None => key == level,
            Some(&next) => next == b'/' && key[..level.len()] == *level,
        }
    }

    pub(crate) fn new() -> Self {
        LevelMap {
            repr: Repr::Few(Box::default()),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match &self.repr {
            Repr::Few(few) => few.len(),
            Repr::Many(many) => many.table.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub(crate) fn get(&self, level: &str) -> Option<&N> {
        let level = level.as_bytes();
        match &self.repr {
            Repr::Few(few) => few
                .iter()
                .find(|(key, _)| Self::head(key) == level)
                .map(|(_, node)| node),
            Repr::Many(many) => many
                .table
                .find(many.hash(level), |(key, _)| Self::head(key) == level)
                .map(|(_, node)| node),
        }
    }

    pub(crate) fn get_mut(&mut self, level: &str) -> Option<&mut N> {
        let level = level.as_bytes();
        match &mut self.repr {
            Repr::Few(few) => few
                .iter_mut()
                .find(|(key, _)| Self::head(key) == level)
                .map(|(_, node)| node),
            Repr::Many(many) => {
                let hash = many.hash(level);
                many.table
                    .find_mut(hash, |(key, _)| Self::head(key) == level)
                    .map(|(_, node)| node)
            }
        }
    }

    /// The child at `level`, made with `make` when there is none. In a `LABELS` map `level` may
    /// be a label: the child is found by its first level, and a new one keyed by all of it.
    pub(crate) fn get_or_insert_with(&mut self, level: &str, make: impl FnOnce() -> N) -> &mut N {
        let text = Self::head_of(level.as_bytes());
        if let Repr::Few(few) = &self.repr {
            if few.len() >= FEW_MAX && !few.iter().any(|(key, _)| Self::head(key) == text) {
                self.promote();
            }
        }
        match &mut self.repr {
            Repr::Few(few) => {
                let index = match few.iter().position(|(key, _)| Self::head(key) == text) {
                    Some(index) => index,
                    None => {
                        // Exact size: a slot costs what it holds, and inserts are rare
                        // (subscribe, never publish).
                        let mut entries = std::mem::take(few).into_vec();
                        entries.reserve_exact(1);
                        entries.push((Level::new(level), make()));
                        *few = entries.into_boxed_slice();
                        few.len() - 1
                    }
                };
                &mut few[index].1
            }
            Repr::Many(many) => {
                let Many { table, hasher } = &mut **many;
                let entry = table.entry(
                    hasher.hash_one(text),
                    |(key, _)| Self::head(key) == text,
                    |(key, _)| hasher.hash_one(Self::head(key)),
                );
                &mut entry
                    .or_insert_with(|| (Level::new(level), make()))
                    .into_mut()
                    .1
            }
        }
    }

    /// Removes and returns the child at `level`.
    pub(crate) fn remove(&mut self, level: &str) -> Option<N> {
        let text = level.as_bytes();
        match &mut self.repr {
            Repr::Few(few) => {
                let index = few.iter().position(|(key, _)| Self::head(key) == text)?;
                let mut entries = std::mem::take(few).into_vec();
                let (_, node) = entries.swap_remove(index);
                // `into_boxed_slice` gives the spare slot back; an empty one allocates nothing.
                *few = entries.into_boxed_slice();
                Some(node)
            }
            Repr::Many(many) => {
                let Many { table, hasher } = &mut **many;
                let entry = table
                    .find_entry(hasher.hash_one(text), |(key, _)| Self::head(key) == text)
                    .ok()?;
                let ((_, node), _) = entry.remove();
                if table.len() <= FEW_MAX / 2 {
                    self.demote();
                } else if table.len() * 4 < table.capacity() {
                    // A node that once had many children does not keep their table forever.
                    table.shrink_to(table.len(), |(key, _)| hasher.hash_one(Self::head(key)));
                }
                Some(node)
            }
        }
    }

    /// Moves every child out into `out`, leaving the map empty: the iterative drops of the
    /// tries take subtrees apart this way.
    pub(crate) fn take_all(&mut self, out: &mut Vec<N>) {
        match std::mem::take(&mut self.repr) {
            Repr::Few(few) => out.extend(few.into_vec().into_iter().map(|(_, node)| node)),
            Repr::Many(many) => out.extend(many.table.into_iter().map(|(_, node)| node)),
        }
    }

    /// The label and child found by first level `level` (`LABELS` maps): one level, without a
    /// `/` (every publish asks, once per topic level).
    #[inline]
    pub(crate) fn get_labeled(&self, level: &str) -> Option<(&[u8], &N)> {
        let level = level.as_bytes();
        debug_assert!(!level.contains(&b'/'), "one level: {level:?}");
        let entry = match &self.repr {
            Repr::Few(few) => few.iter().find(|(key, _)| Self::found_by(key, level)),
            Repr::Many(many) => many
                .table
                .find(many.hash(level), |(key, _)| Self::found_by(key, level)),
        };
        entry.map(|(key, node)| (key.as_bytes(), node))
    }

    /// Where a topic goes from here: the child its level `level` (followed by the levels
    /// `next`) reaches through that child's label, with the topic's levels left after the
    /// label (`follow`); `None` when no label matches.
    #[inline]
    pub(crate) fn step<'t>(
        &self,
        level: &str,
        next: Option<&'t str>,
    ) -> Option<(&N, Option<&'t str>)> {
        let (label, child) = self.get_labeled(level)?;
        Some((child, follow(label, level.len(), next)?))
    }

    /// Replaces the label of the child found by first level `level`; `label` must start with
    /// the same first level (the table is hashed by it).
    pub(crate) fn relabel(&mut self, level: &str, label: &str) {
        assert!(LABELS, "relabel is for label maps");
        let text = level.as_bytes();
        let key = match &mut self.repr {
            Repr::Few(few) => few
                .iter_mut()
                .find(|(key, _)| Self::head(key) == text)
                .map(|(key, _)| key),
            Repr::Many(many) => {
                let hash = many.hash(text);
                many.table
                    .find_mut(hash, |(key, _)| Self::head(key) == text)
                    .map(|(key, _)| key)
            }
        };
        let key = key.expect("relabel an existing child");
        *key = Level::new(label);
        assert_eq!(Self::head(key), text, "a label keeps its first level");
    }

    /// Takes out the only child with its label; `None` unless there is exactly one.
    pub(crate) fn take_only(&mut self) -> Option<(String, N)> {
        if self.len() != 1 {
            return None;
        }
        let entry = match std::mem::take(&mut self.repr) {
            Repr::Few(few) => few.into_vec().pop(),
            Repr::Many(many) => many.table.into_iter().next(),
        };
        entry.map(|(key, node)| (String::from_utf8_lossy(key.as_bytes()).into_owned(), node))
    }

    /// Every key and child, in no particular order.
    pub(crate) fn labeled(&self) -> Children<'_, N> {
        match &self.repr {
            Repr::Few(few) => Children(ChildIter::Few(few.iter())),
            Repr::Many(many) => Children(ChildIter::Many(many.table.iter())),
        }
    }

    #[cfg(test)]
    fn is_table(&self) -> bool {
        matches!(self.repr, Repr::Many(_))
    }

    fn promote(&mut self) {
        let Repr::Few(few) = std::mem::take(&mut self.repr) else {
            return;
        };
        let hasher = RandomState::default();
        let mut table = HashTable::with_capacity(2 * FEW_MAX);
        for entry in few.into_vec() {
            let hash = hasher.hash_one(Self::head(&entry.0));
            table.insert_unique(hash, entry, |(key, _)| hasher.hash_one(Self::head(key)));
        }
        self.repr = Repr::Many(Box::new(Many { table, hasher }));
    }

    fn demote(&mut self) {
        let Repr::Many(many) = std::mem::take(&mut self.repr) else {
            return;
        };
        let entries: Vec<(Level, N)> = many.table.into_iter().collect();
        self.repr = Repr::Few(entries.into_boxed_slice());
    }
}

/// `LevelMap::labeled`'s iterator: a type with a name, so a walk can keep one on its stack.
pub(crate) struct Children<'a, N>(ChildIter<'a, N>);

enum ChildIter<'a, N> {
    Few(std::slice::Iter<'a, (Level, N)>),
    Many(hashbrown::hash_table::Iter<'a, (Level, N)>),
}

impl<'a, N> Iterator for Children<'a, N> {
    type Item = (&'a [u8], &'a N);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let (key, node) = match &mut self.0 {
            ChildIter::Few(few) => few.next()?,
            ChildIter::Many(many) => many.next()?,
        };
        Some((key.as_bytes(), node))
    }
}

impl<N> Default for Repr<N> {
    fn default() -> Self {
        Repr::Few(Box::default())
    }
}

impl<N: fmt::Debug, const LABELS: bool> fmt::Debug for LevelMap<N, LABELS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Box<dyn Iterator<Item = &(Level, N)>> = match &self.repr {
            Repr::Few(few) => Box::new(few.iter()),
            Repr::Many(many) => Box::new(many.table.iter()),
        };
        f.debug_map()
            .entries(entries.map(|(key, node)| (key, node)))
            .finish()
    }
}

// Walking label-compressed tries (`LevelMap<N, true>`).

/// One step down the trie from a node: its `+` child, or the literal child whose label starts
/// with this level.
#[derive(Clone, Copy)]
pub(crate) enum Step<'a> {
    Plus,
    Literal(&'a str),
}

/// The levels left after the first `len` bytes of `levels`, which end at a level boundary.
pub(crate) fn after(levels: &str, len: usize) -> Option<&str> {
    (len < levels.len()).then(|| &levels[len + 1..])
}

/// Bytes of the leading literal levels of `levels`, up to (not including) the first `+` level.
pub(crate) fn literal_prefix_len(levels: &str) -> usize {
    let mut len = 0;
    for (index, level) in levels.split('/').enumerate() {
        if level == "+" {
            break;
        }
        len += level.len() + usize::from(index > 0);
    }
    len
}

/// Compares a label with a filter's `levels`, level by level: the bytes of `levels` matched (a
/// level boundary) and whether the whole label matched.
pub(crate) fn match_label(label: &[u8], levels: &str) -> (usize, bool) {
    let mut matched = 0;
    let mut filter_levels = levels.as_bytes().split(|&byte| byte == b'/');
    for (index, label_level) in label.split(|&byte| byte == b'/').enumerate() {
        if filter_levels.next() != Some(label_level) {
            return (matched, false);
        }
        matched += label_level.len() + usize::from(index > 0);
    }
    (matched, true)
}

/// Follows a label whose first level (`head_len` bytes) the topic's level just matched: the
/// topic's levels after the label (`Some(None)`: the topic ends there), or `None` when the
/// topic does not continue with the label's other levels.
#[inline]
pub(crate) fn follow<'t>(
    label: &[u8],
    head_len: usize,
    rest: Option<&'t str>,
) -> Option<Option<&'t str>> {
    if label.len() == head_len {
        return Some(rest);
    }
    let tail = &label[head_len + 1..];
    let rest = rest?;
    let bytes = rest.as_bytes();
    if !bytes.starts_with(tail) {
        return None;
    }
    if bytes.len() == tail.len() {
        return Some(None);
    }
    (bytes[tail.len()] == b'/').then(|| Some(&rest[tail.len() + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_levels_round_trip() {
        for text in ["", "a", "client-1234567890123456", "x".repeat(23).as_str()] {
            assert_eq!(Level::new(text).as_bytes(), text.as_bytes());
        }
        assert!(matches!(Level::new(&"y".repeat(22)), Level::Inline { .. }));
        assert!(matches!(Level::new(&"y".repeat(23)), Level::Heap(_)));
        let mut map: LevelMap<u32> = LevelMap::new();
        let long = "l".repeat(100);
        *map.get_or_insert_with(&long, || 0u32) += 7;
        assert_eq!(map.get(&long), Some(&7));
        assert_eq!(map.get(&long[1..]), None);
    }

    #[test]
    fn promotes_past_few_max_and_demotes_on_removal() {
        let mut map: LevelMap<usize> = LevelMap::new();
        assert!(map.is_empty());
        let levels: Vec<String> = (0..100).map(|i| format!("level-{i}")).collect();
        for (i, level) in levels.iter().enumerate() {
            assert_eq!(*map.get_or_insert_with(level, || i), i);
            // Inserting an existing level neither replaces nor converts.
            assert_eq!(*map.get_or_insert_with(level, || usize::MAX), i);
            assert_eq!(map.len(), i + 1);
            assert_eq!(map.is_table(), i + 1 > FEW_MAX, "after {} levels", i + 1);
        }
        for (i, level) in levels.iter().enumerate() {
            assert_eq!(map.get(level), Some(&i));
        }
        *map.get_mut("level-42").unwrap() += 1000;
        assert_eq!(map.get("level-42"), Some(&1042));
        assert_eq!(map.get("level-100"), None);
        assert_eq!(map.remove("level-100"), None);
        // Back down: the table stays until FEW_MAX / 2, then the slice takes over.
        for (i, level) in levels.iter().enumerate().rev() {
            let removed = map.remove(level).expect("present");
            assert_eq!(removed % 1000, i);
            assert_eq!(map.len(), i);
            assert_eq!(
                map.is_table(),
                i > FEW_MAX / 2,
                "after removing down to {i}"
            );
            for (j, other) in levels.iter().enumerate().take(i) {
                assert_eq!(map.get(other).map(|v| v % 1000), Some(j), "{i} {j}");
            }
        }
        assert!(map.is_empty());
        assert!(!map.is_table());
        // Hovering at the threshold converts once, not on every change.
        for (i, level) in levels.iter().enumerate().take(FEW_MAX + 1) {
            map.get_or_insert_with(level, || i);
        }
        assert!(map.is_table());
        map.remove(&levels[0]);
        assert!(map.is_table(), "the gap keeps the table");
        let mut taken = Vec::new();
        map.take_all(&mut taken);
        taken.sort_unstable();
        assert_eq!(taken, (1..=FEW_MAX).collect::<Vec<_>>());
        assert!(map.is_empty() && !map.is_table());
    }

    #[test]
    fn empty_and_single_child_maps_allocate_only_the_slot() {
        use crate::topic::alloc_count::live_bytes_of;
        let (bytes, _) = live_bytes_of(LevelMap::<u64>::new);
        assert_eq!(bytes, 0, "an empty map allocates nothing");
        let (bytes, _) = live_bytes_of(|| {
            let mut map = LevelMap::<u64>::new();
            map.get_or_insert_with("in", || 1);
            map
        });
        assert_eq!(bytes, std::mem::size_of::<(Level, u64)>() as i64);
    }
}
