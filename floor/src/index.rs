//! Channel → subscribers: a map from each subscribed name to the connections
//! (slab slots) that hold it. An event on `a:b:c` is delivered to the lists of
//! `a`, `a:b` and `a:b:c` — SPEC §4's segment-boundary prefix rule, so `server:s1`
//! covers `server:s1:channel:c` and never `server:s10`.

use std::collections::HashMap;

#[derive(Default)]
pub struct Index {
    map: HashMap<Box<str>, Vec<u32>>,
}

impl Index {
    pub fn add(&mut self, name: &str, slot: u32) {
        match self.map.get_mut(name) {
            Some(list) => list.push(slot),
            None => {
                self.map.insert(name.into(), vec![slot]);
            }
        }
    }

    pub fn remove(&mut self, name: &str, slot: u32) {
        let Some(list) = self.map.get_mut(name) else {
            return;
        };
        if let Some(i) = list.iter().position(|s| *s == slot) {
            list.swap_remove(i);
        }
        if list.is_empty() {
            self.map.remove(name);
        }
    }

    /// The subscribers of exactly `name`.
    pub fn get(&self, name: &str) -> &[u32] {
        self.map.get(name).map_or(&[], Vec::as_slice)
    }
}

/// The segment-boundary prefixes of `channel`, shortest first: `a:b` → `a`, `a:b`.
pub fn prefixes(channel: &str) -> impl Iterator<Item = &str> {
    xcord_common::channels::prefixes(channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covering(ix: &Index, channel: &str) -> Vec<u32> {
        let mut v: Vec<u32> = prefixes(channel).flat_map(|p| ix.get(p).to_vec()).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn prefix_on_segment_boundaries() {
        let mut ix = Index::default();
        ix.add("server:s1", 1);
        ix.add("server:s10", 2);
        ix.add("server:s1:channel:c", 3);
        assert_eq!(covering(&ix, "server:s1:channel:c"), vec![1, 3]);
        assert_eq!(covering(&ix, "server:s10:channel:c"), vec![2]);
        assert_eq!(covering(&ix, "server:s1"), vec![1]);
        assert_eq!(covering(&ix, "server"), Vec::<u32>::new());
        ix.remove("server:s1", 1);
        assert_eq!(covering(&ix, "server:s1:channel:c"), vec![3]);
        ix.remove("server:s1:channel:c", 3);
        assert!(ix.get("server:s1:channel:c").is_empty());
    }
}
