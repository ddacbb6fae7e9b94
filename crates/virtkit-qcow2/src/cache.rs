//! A small bounded write-back cache of metadata clusters keyed by host offset.

use std::collections::HashMap;

#[derive(Debug)]
pub(crate) struct Slot<T> {
    pub data: T,
    pub dirty: bool,
    used: u64,
}

/// Least-recently-used cache holding at most `cap` entries. Eviction is left
/// to the caller (who must write back dirty entries in the right order).
#[derive(Debug)]
pub(crate) struct Cache<T> {
    map: HashMap<u64, Slot<T>>,
    cap: usize,
    tick: u64,
}

impl<T> Cache<T> {
    pub fn new(cap: usize) -> Self {
        Cache {
            map: HashMap::new(),
            cap: cap.max(2),
            tick: 0,
        }
    }

    pub fn get(&mut self, key: u64) -> Option<&mut Slot<T>> {
        self.tick += 1;
        let t = self.tick;
        let s = self.map.get_mut(&key)?;
        s.used = t;
        Some(s)
    }

    pub fn contains(&self, key: u64) -> bool {
        self.map.contains_key(&key)
    }

    /// Whether inserting a new key requires evicting one first.
    pub fn full(&self) -> bool {
        self.map.len() >= self.cap
    }

    /// Remove and return the least recently used entry.
    pub fn pop_lru(&mut self) -> Option<(u64, Slot<T>)> {
        let k = self
            .map
            .iter()
            .min_by_key(|(_, s)| s.used)
            .map(|(k, _)| *k)?;
        self.map.remove(&k).map(|s| (k, s))
    }

    pub fn insert(&mut self, key: u64, data: T, dirty: bool) {
        self.tick += 1;
        self.map.insert(
            key,
            Slot {
                data,
                dirty,
                used: self.tick,
            },
        );
    }

    /// Keys of dirty entries, sorted by offset.
    pub fn dirty_keys(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(k, _)| *k)
            .collect();
        v.sort_unstable();
        v
    }
}
