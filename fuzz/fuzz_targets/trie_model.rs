//! `channels::Trie<u32>` driven by an arbitrary sequence of operations, checked
//! against a model: a `BTreeSet` of (name, value) pairs, where a name covers a
//! channel when it equals it or is a prefix of it ending at a ':' boundary.
//!
//! Checks after every operation: `insert`/`remove` report (new pair?, first/last
//! subscriber of the name?) as the model says, `len` equals the model size, and
//! `contains`, `covers_exactly`, `covers` and `for_each_covering` agree with the
//! model (`for_each_covering` visits each covering pair once, grouped by prefix,
//! shortest first). At the end, removing every pair empties the trie. Never panics.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use xcord_gateway::channels::Trie;

const SEGS: [&str; 9] = ["a", "b", "a1", "ab", "", "srv_1", "srv_10", "*", "a:b"];

#[derive(Arbitrary, Debug)]
enum NameIn {
    /// Segments from a small table, so that names share prefixes.
    Segs(Vec<u8>),
    Raw(String),
}

impl NameIn {
    fn get(&self) -> String {
        match self {
            NameIn::Segs(v) => v
                .iter()
                .take(6)
                .map(|i| SEGS[*i as usize % SEGS.len()])
                .collect::<Vec<_>>()
                .join(":"),
            NameIn::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Insert(NameIn, u8),
    Remove(NameIn, u8),
    Contains(NameIn, u8),
    CoversExactly(NameIn),
    Covers(NameIn),
    Covering(NameIn),
}

type Model = BTreeSet<(String, u32)>;

fn val(v: u8) -> u32 {
    (v % 6) as u32
}

fn covers_name(name: &str, ch: &str) -> bool {
    ch == name || (ch.starts_with(name) && ch.as_bytes()[name.len()] == b':')
}

fn subs_at(model: &Model, name: &str) -> BTreeSet<u32> {
    model
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .collect()
}

fn check_probe(t: &Trie<u32>, model: &Model, ch: &str) {
    let mut got = Vec::new();
    t.for_each_covering(ch, |v| got.push(v));
    // Expected: for each segment-boundary prefix of ch, shortest first, its values.
    let segs: Vec<&str> = ch.split(':').collect();
    let mut rest = got.as_slice();
    for i in 1..=segs.len() {
        let p = segs[..i].join(":");
        let want = subs_at(model, &p);
        assert!(
            rest.len() >= want.len(),
            "covering({ch:?}) missed {p:?}: {got:?}"
        );
        let (group, tail) = rest.split_at(want.len());
        let group: BTreeSet<u32> = group.iter().copied().collect();
        assert_eq!(
            group.len(),
            want.len(),
            "covering({ch:?}) repeated a value at {p:?}"
        );
        assert_eq!(group, want, "covering({ch:?}) at {p:?}: {got:?}");
        rest = tail;
    }
    assert!(rest.is_empty(), "covering({ch:?}) visited extra {rest:?}");
    let any = model.iter().any(|(n, _)| covers_name(n, ch));
    assert_eq!(t.covers(ch), any, "covers({ch:?})");
    assert_eq!(any, !got.is_empty());
    assert_eq!(t.covers_exactly(ch), !subs_at(model, ch).is_empty());
}

fuzz_target!(|ops: Vec<Op>| {
    let mut t: Trie<u32> = Trie::new();
    let mut model = Model::new();
    let mut probes = Vec::new();
    for op in ops.iter().take(200) {
        match op {
            Op::Insert(n, v) => {
                let (n, v) = (n.get(), val(*v));
                let was_empty = subs_at(&model, &n).is_empty();
                let (ins, first) = t.insert(&n, v);
                let new = model.insert((n.clone(), v));
                assert_eq!(ins, new, "insert({n:?}, {v})");
                assert_eq!(first, new && was_empty, "insert({n:?}, {v}) first");
                probes.push(n);
            }
            Op::Remove(n, v) => {
                let (n, v) = (n.get(), val(*v));
                let (rem, last) = t.remove(&n, v);
                let had = model.remove(&(n.clone(), v));
                assert_eq!(rem, had, "remove({n:?}, {v})");
                if rem {
                    assert_eq!(
                        last,
                        subs_at(&model, &n).is_empty(),
                        "remove({n:?}, {v}) last"
                    );
                }
                probes.push(n);
            }
            Op::Contains(n, v) => {
                let (n, v) = (n.get(), val(*v));
                assert_eq!(t.contains(&n, v), model.contains(&(n.clone(), v)));
            }
            Op::CoversExactly(n) => {
                let n = n.get();
                assert_eq!(t.covers_exactly(&n), !subs_at(&model, &n).is_empty());
            }
            Op::Covers(n) | Op::Covering(n) => {
                let n = n.get();
                check_probe(&t, &model, &n);
                probes.push(n);
            }
        }
        assert_eq!(t.len(), model.len());
        assert_eq!(t.is_empty(), model.is_empty());
    }
    for p in &probes {
        check_probe(&t, &model, p);
    }
    for (n, v) in std::mem::take(&mut model) {
        let (rem, _) = t.remove(&n, v);
        assert!(rem);
    }
    assert!(t.is_empty());
    assert_eq!(t.len(), 0);
    for p in &probes {
        assert!(!t.covers(p));
        let mut any = false;
        t.for_each_covering(p, |_| any = true);
        assert!(!any);
    }
});
