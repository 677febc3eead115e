//! The channel-prefix trie: one node per name segment, each holding the subscribers
//! whose subscription ends there.
//!
//! A published channel `a:b:c` is delivered to the subscribers of the nodes `a`,
//! `a:b` and `a:b:c` — prefixes on segment boundaries only, so `server:srv_1`
//! never covers `server:srv_10` (the design document's `HasPrefix` bug, fixed by
//! SPEC §4).
//!
//! The same structure serves two owners: a shard maps names to connection keys,
//! and the bus router maps names to shard ids. Neither is shared across threads.
//!
//! Invariants: a value is in a node's set at most once; a node with no subscribers
//! and no children is removed, so memory follows the live subscriptions.
//! A subscriber holding two covering subscriptions is visited twice by
//! `for_each_covering`; callers dedupe (shards with a per-connection last-seq stamp,
//! the router with a shard bitmask) so that no allocation happens per lookup.

use indexmap::IndexSet;
use std::collections::HashMap;
use std::hash::Hash;

/// A node's subscribers: a plain vector while small (most nodes — a user's own
/// tree, a DM — hold one or two), an `IndexSet` (O(1) insert/remove, dense
/// iteration) once it passes `SMALL`.
#[derive(Debug)]
enum Subs<V> {
    Few(Vec<V>),
    Many(IndexSet<V>),
}

const SMALL: usize = 16;

impl<V: Copy + Eq + Hash> Subs<V> {
    fn is_empty(&self) -> bool {
        match self {
            Subs::Few(v) => v.is_empty(),
            Subs::Many(s) => s.is_empty(),
        }
    }

    fn contains(&self, x: &V) -> bool {
        match self {
            Subs::Few(v) => v.contains(x),
            Subs::Many(s) => s.contains(x),
        }
    }

    fn insert(&mut self, x: V) -> bool {
        match self {
            Subs::Few(v) => {
                if v.contains(&x) {
                    return false;
                }
                if v.len() < SMALL {
                    v.push(x);
                } else {
                    let mut set: IndexSet<V> = v.drain(..).collect();
                    set.insert(x);
                    *self = Subs::Many(set);
                }
                true
            }
            Subs::Many(s) => s.insert(x),
        }
    }

    fn remove(&mut self, x: &V) -> bool {
        match self {
            Subs::Few(v) => match v.iter().position(|y| y == x) {
                Some(i) => {
                    v.swap_remove(i);
                    true
                }
                None => false,
            },
            Subs::Many(s) => s.swap_remove(x),
        }
    }

    #[inline]
    fn for_each(&self, f: &mut impl FnMut(V)) {
        match self {
            Subs::Few(v) => v.iter().for_each(|x| f(*x)),
            Subs::Many(s) => s.iter().for_each(|x| f(*x)),
        }
    }
}

#[derive(Debug)]
struct Node<V> {
    /// Boxed and optional: most nodes are leaves, and a leaf then pays one
    /// pointer instead of an empty map's 48 bytes (idle memory is a target).
    #[allow(clippy::box_collection)]
    children: Option<Box<HashMap<Box<str>, Node<V>>>>,
    subs: Subs<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: None,
            subs: Subs::Few(Vec::new()),
        }
    }
}

impl<V> Node<V> {
    #[inline]
    fn child(&self, seg: &str) -> Option<&Node<V>> {
        self.children.as_ref()?.get(seg)
    }

    fn has_children(&self) -> bool {
        self.children.as_ref().is_some_and(|c| !c.is_empty())
    }
}

/// A channel-prefix trie from subscription names to subscriber values.
#[derive(Debug)]
pub struct Trie<V> {
    root: Node<V>,
    entries: usize,
}

impl<V> Default for Trie<V> {
    fn default() -> Self {
        Trie {
            root: Node::default(),
            entries: 0,
        }
    }
}

impl<V: Copy + Eq + Hash> Trie<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (name, value) pairs.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Add `value` under `name`. Returns `(inserted, first)`: whether the pair is
    /// new, and whether `name` had no subscriber before (the router is told then).
    pub fn insert(&mut self, name: &str, value: V) -> (bool, bool) {
        let mut node = &mut self.root;
        for seg in name.split(':') {
            node = node
                .children
                .get_or_insert_with(Default::default)
                .entry(Box::from(seg))
                .or_default();
        }
        let first = node.subs.is_empty();
        let inserted = node.subs.insert(value);
        if inserted {
            self.entries += 1;
        }
        (inserted, first && inserted)
    }

    /// Remove `value` from `name`. Returns `(removed, last)`: whether the pair
    /// existed, and whether `name` now has no subscriber.
    pub fn remove(&mut self, name: &str, value: V) -> (bool, bool) {
        let segs: Vec<&str> = name.split(':').collect();
        let r = Self::remove_at(&mut self.root, &segs, value);
        if r.0 {
            self.entries -= 1;
        }
        r
    }

    fn remove_at(node: &mut Node<V>, segs: &[&str], value: V) -> (bool, bool) {
        match segs.split_first() {
            None => {
                let removed = node.subs.remove(&value);
                (removed, node.subs.is_empty())
            }
            Some((seg, rest)) => {
                let Some(children) = node.children.as_mut() else {
                    return (false, false);
                };
                let Some(child) = children.get_mut(*seg) else {
                    return (false, false);
                };
                let r = Self::remove_at(child, rest, value);
                if child.subs.is_empty() && !child.has_children() {
                    children.remove(*seg);
                    if children.is_empty() {
                        node.children = None;
                    }
                }
                r
            }
        }
    }

    /// Whether `value` is subscribed exactly at `name`.
    pub fn contains(&self, name: &str, value: V) -> bool {
        self.node(name).is_some_and(|n| n.subs.contains(&value))
    }

    /// Whether any value is subscribed exactly at `name`.
    pub fn covers_exactly(&self, name: &str) -> bool {
        self.node(name).is_some_and(|n| !n.subs.is_empty())
    }

    fn node(&self, name: &str) -> Option<&Node<V>> {
        let mut node = &self.root;
        for seg in name.split(':') {
            node = node.child(seg)?;
        }
        Some(node)
    }

    /// FAST PATH. Call `f` for every subscriber of every segment-boundary prefix of
    /// `channel`, shortest prefix first. No allocation.
    #[inline]
    pub fn for_each_covering(&self, channel: &str, mut f: impl FnMut(V)) {
        let mut node = &self.root;
        for seg in channel.split(':') {
            match node.child(seg) {
                Some(n) => node = n,
                None => return,
            }
            node.subs.for_each(&mut f);
        }
    }

    /// Whether any subscriber covers `channel`.
    pub fn covers(&self, channel: &str) -> bool {
        let mut node = &self.root;
        for seg in channel.split(':') {
            match node.child(seg) {
                Some(n) => node = n,
                None => return false,
            }
            if !node.subs.is_empty() {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashSet};

    fn covering(t: &Trie<u32>, ch: &str) -> Vec<u32> {
        let mut v = Vec::new();
        t.for_each_covering(ch, |x| v.push(x));
        v
    }

    #[test]
    fn segment_boundaries() {
        let mut t = Trie::new();
        t.insert("server:srv_1", 1u32);
        assert_eq!(covering(&t, "server:srv_1"), vec![1]);
        assert_eq!(covering(&t, "server:srv_1:channel:c9"), vec![1]);
        assert!(covering(&t, "server:srv_10").is_empty());
        assert!(covering(&t, "server").is_empty());
        assert!(t.covers("server:srv_1:x"));
        assert!(!t.covers("server:srv_10:x"));
    }

    #[test]
    fn first_and_last_flags_and_pruning() {
        let mut t = Trie::new();
        assert_eq!(t.insert("a:b", 1u32), (true, true));
        assert_eq!(t.insert("a:b", 2), (true, false));
        assert_eq!(t.insert("a:b", 2), (false, false));
        assert_eq!(t.remove("a:b", 1), (true, false));
        assert_eq!(t.remove("a:b", 1), (false, false));
        assert_eq!(t.remove("a:b", 2), (true, true));
        assert!(!t.root.has_children(), "empty nodes are pruned");
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn overlapping_subscriptions_visit_each_level() {
        let mut t = Trie::new();
        t.insert("server:s", 7u32);
        t.insert("server:s:channel:c", 7);
        assert_eq!(covering(&t, "server:s:channel:c"), vec![7, 7]);
        let unique: HashSet<u32> = covering(&t, "server:s:channel:c").into_iter().collect();
        assert_eq!(unique.len(), 1);
    }

    /// The model: a set of (name, value) pairs; cover = any name that equals the
    /// channel or is a prefix of it ending at a ':'.
    fn model_cover(model: &BTreeSet<(String, u32)>, ch: &str) -> BTreeSet<u32> {
        model
            .iter()
            .filter(|(n, _)| {
                ch == n || (ch.starts_with(n.as_str()) && ch.as_bytes()[n.len()] == b':')
            })
            .map(|(_, v)| *v)
            .collect()
    }

    fn name() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec!["a", "b", "a1", "ab", "b:c"]),
            1..4,
        )
        .prop_map(|segs| segs.join(":"))
    }

    proptest! {
        #[test]
        fn matches_model(ops in prop::collection::vec((any::<bool>(), name(), 0u32..40), 1..200), probes in prop::collection::vec(name(), 1..10)) {
            let mut t = Trie::new();
            let mut model = BTreeSet::new();
            for (add, n, v) in ops {
                if add {
                    let (ins, _) = t.insert(&n, v);
                    prop_assert_eq!(ins, model.insert((n, v)));
                } else {
                    let (rem, _) = t.remove(&n, v);
                    prop_assert_eq!(rem, model.remove(&(n, v)));
                }
                prop_assert_eq!(t.len(), model.len());
            }
            for p in probes {
                let got: BTreeSet<u32> = covering(&t, &p).into_iter().collect();
                prop_assert_eq!(&got, &model_cover(&model, &p));
                prop_assert_eq!(t.covers(&p), !got.is_empty());
            }
            // Removing everything prunes the whole tree.
            for (n, v) in model.clone() {
                t.remove(&n, v);
            }
            prop_assert!(!t.root.has_children());
        }
    }
}
