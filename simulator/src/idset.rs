//! A compact set of message ids, stored as disjoint inclusive ranges.
//!
//! Acknowledged ids are nearly contiguous (an instrument numbers its messages
//! monotonically and most are acked in order), so a run of a million messages costs a
//! handful of ranges instead of a million tree nodes.

use std::collections::BTreeMap;

/// A set of `u64` ids kept as disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdSet {
    /// start -> end (inclusive); ranges never overlap nor touch.
    ranges: BTreeMap<u64, u64>,
    len: u64,
}

impl IdSet {
    /// An empty set.
    pub fn new() -> IdSet {
        IdSet::default()
    }

    /// Number of ids in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: u64) -> bool {
        self.ranges.range(..=id).next_back().is_some_and(|(_, &end)| id <= end)
    }

    /// Adds `id`; returns false if it was already present.
    pub fn insert(&mut self, id: u64) -> bool {
        if self.contains(id) {
            return false;
        }
        let prev = self.ranges.range(..id).next_back().map(|(&s, &e)| (s, e));
        let next_start = id.checked_add(1).filter(|n| self.ranges.contains_key(n));
        match (prev.filter(|&(_, e)| e.checked_add(1) == Some(id)), next_start) {
            (Some((s, _)), Some(n)) => {
                let e = self.ranges.remove(&n).unwrap_or(n);
                self.ranges.insert(s, e);
            }
            (Some((s, _)), None) => {
                self.ranges.insert(s, id);
            }
            (None, Some(n)) => {
                let e = self.ranges.remove(&n).unwrap_or(n);
                self.ranges.insert(id, e);
            }
            (None, None) => {
                self.ranges.insert(id, id);
            }
        }
        self.len += 1;
        true
    }

    /// The ranges, in ascending order, as inclusive `(first, last)` pairs.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }

    /// Every id, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges().flat_map(|(s, e)| s..=e)
    }
}

impl FromIterator<u64> for IdSet {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> IdSet {
        let mut set = IdSet::new();
        for id in iter {
            set.insert(id);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_neighbours_in_any_order() {
        let mut s = IdSet::new();
        for id in [5, 7, 6, 1, 3, 2, 9, 4, 8, u64::MAX, 0] {
            assert!(s.insert(id));
        }
        assert!(!s.insert(6));
        assert_eq!(s.len(), 11);
        assert_eq!(s.ranges().collect::<Vec<_>>(), vec![(0, 9), (u64::MAX, u64::MAX)]);
        assert!(s.contains(0) && s.contains(9) && s.contains(u64::MAX));
        assert!(!s.contains(10) && !s.contains(u64::MAX - 1));
        assert_eq!(s.iter().take(3).collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    #[test]
    fn agrees_with_a_btreeset() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut s = IdSet::new();
        let mut reference = std::collections::BTreeSet::new();
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = x % 700;
            assert_eq!(s.insert(id), reference.insert(id));
        }
        assert_eq!(s.len() as usize, reference.len());
        assert!(s.iter().eq(reference.iter().copied()));
        let r: Vec<_> = s.ranges().collect();
        assert!(r.windows(2).all(|w| w[0].1 + 1 < w[1].0), "ranges touch: {r:?}");
    }
}
