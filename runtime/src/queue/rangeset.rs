//! A set of u64 kept as disjoint inclusive ranges: the message ids of one instrument that
//! are in the queue. Instruments number their messages with a counter, so the set is a
//! handful of ranges however many messages are queued; its size grows only with gaps.

use std::collections::BTreeMap;

/// Disjoint, non-adjacent inclusive ranges `start => end`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RangeSet {
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn contains(&self, x: u64) -> bool {
        self.ranges.range(..=x).next_back().is_some_and(|(_, &end)| end >= x)
    }

    /// Adds `x`; false if it was there already.
    pub fn insert(&mut self, x: u64) -> bool {
        // The common case: one past the highest range.
        if let Some(mut last) = self.ranges.last_entry() {
            if *last.get() == x.wrapping_sub(1) && x != 0 {
                *last.get_mut() = x;
                return true;
            }
        }
        self.insert_range(x, x)
    }

    /// Adds `start..=end`; false if every id was there already.
    pub fn insert_range(&mut self, start: u64, end: u64) -> bool {
        debug_assert!(start <= end);
        let (mut s, mut e) = (start, end);
        // Merge with a range that overlaps or touches on the left.
        if let Some((&ls, &le)) = self.ranges.range(..=s).next_back() {
            if le >= e {
                return false;
            }
            if le.saturating_add(1) >= s {
                s = ls;
                e = e.max(le);
                self.ranges.remove(&ls);
            }
        }
        // Swallow ranges that start inside or just after.
        while let Some((&rs, &re)) = self.ranges.range(s..).next() {
            if rs > e.saturating_add(1) {
                break;
            }
            e = e.max(re);
            self.ranges.remove(&rs);
        }
        self.ranges.insert(s, e);
        true
    }

    /// Removes `start..=end` (ids not in the set are ignored).
    pub fn remove_range(&mut self, start: u64, end: u64) {
        debug_assert!(start <= end);
        // A range that starts before `start` and reaches into the removed part.
        if let Some((&ls, &le)) = self.ranges.range(..start).next_back() {
            if le >= start {
                self.ranges.insert(ls, start - 1);
                if le > end {
                    self.ranges.insert(end + 1, le);
                    return;
                }
            }
        }
        let inside: Vec<(u64, u64)> = self.ranges.range(start..=end).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in inside {
            self.ranges.remove(&s);
            if e > end {
                self.ranges.insert(end + 1, e);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of ranges (the memory it takes is proportional to this).
    #[cfg(test)]
    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ranges: &[(u64, u64)]) -> RangeSet {
        let mut s = RangeSet::default();
        for &(a, b) in ranges {
            s.insert_range(a, b);
        }
        s
    }

    #[test]
    fn consecutive_ids_stay_one_range() {
        let mut s = RangeSet::default();
        for i in 1..=10_000 {
            assert!(s.insert(i));
        }
        assert_eq!(s.ranges(), 1);
        assert!(!s.insert(5));
        assert!(s.contains(1) && s.contains(10_000) && !s.contains(0) && !s.contains(10_001));
    }

    #[test]
    fn inserts_merge_neighbours() {
        let mut s = set(&[(1, 3), (7, 9)]);
        assert!(s.insert(5));
        assert_eq!(s.ranges(), 3);
        assert!(s.insert(4));
        assert!(s.insert(6));
        assert_eq!(s, set(&[(1, 9)]));
        assert!(s.insert_range(0, 20));
        assert_eq!(s, set(&[(0, 20)]));
        assert!(!s.insert_range(2, 8));
        assert!(s.insert(u64::MAX));
        assert!(s.contains(u64::MAX) && !s.contains(u64::MAX - 1));
        assert!(!s.insert(0));
    }

    #[test]
    fn removal_splits_and_trims() {
        let mut s = set(&[(1, 100)]);
        s.remove_range(1, 10);
        assert_eq!(s, set(&[(11, 100)]));
        s.remove_range(50, 60);
        assert_eq!(s, set(&[(11, 49), (61, 100)]));
        s.remove_range(40, 70);
        assert_eq!(s, set(&[(11, 39), (71, 100)]));
        s.remove_range(0, 1000);
        assert!(s.is_empty());
        let mut s = set(&[(5, 5), (7, 7), (9, 12)]);
        s.remove_range(6, 10);
        assert_eq!(s, set(&[(5, 5), (11, 12)]));
        s.remove_range(u64::MAX - 1, u64::MAX);
        assert_eq!(s, set(&[(5, 5), (11, 12)]));
    }

    #[test]
    fn matches_a_plain_set() {
        // A deterministic pseudo-random workload against BTreeSet.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut s = RangeSet::default();
        let mut reference = std::collections::BTreeSet::new();
        for _ in 0..20_000 {
            let a = rnd() % 500;
            match rnd() % 3 {
                0 => assert_eq!(s.insert(a), reference.insert(a)),
                1 => {
                    let b = a + rnd() % 20;
                    s.insert_range(a, b);
                    reference.extend(a..=b);
                }
                _ => {
                    let b = a + rnd() % 30;
                    s.remove_range(a, b);
                    for i in a..=b {
                        reference.remove(&i);
                    }
                }
            }
        }
        for i in 0..600 {
            assert_eq!(s.contains(i), reference.contains(&i), "{i}");
        }
    }
}
