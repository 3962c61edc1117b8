//! A map bounded in size and age, for the caches the webhook keeps per object uid (owner chains,
//! owner settings, what the controller last wrote): a cluster with churn creates new uids forever,
//! so every entry expires after `ttl`, and when `capacity` is reached the expired entries go first,
//! then the oldest half. Time is passed in, so the policy is tested without sleeping.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

pub struct BoundedCache<K, V> {
    entries: HashMap<K, (Instant, V)>,
    capacity: usize,
    ttl: Duration,
}

impl<K: Eq + Hash + Clone, V: Clone> BoundedCache<K, V> {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        BoundedCache { entries: HashMap::new(), capacity: capacity.max(1), ttl }
    }

    /// The value stored for `key` unless it is older than the ttl.
    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        self.entries.get(key).filter(|(at, _)| now.saturating_duration_since(*at) < self.ttl).map(|(_, value)| value.clone())
    }

    pub fn insert(&mut self, key: K, value: V, now: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.make_room(now);
        }
        self.entries.insert(key, (now, value));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops the expired entries; if that frees nothing, the older half (one sort per
    /// `capacity / 2` inserts, so inserting stays amortised O(log n)).
    fn make_room(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.entries.retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
        if self.entries.len() < self.capacity {
            return;
        }
        let mut ages: Vec<Instant> = self.entries.values().map(|(at, _)| *at).collect();
        ages.sort_unstable();
        if let Some(&cut) = ages.get((ages.len() / 2).saturating_sub(1)) {
            self.entries.retain(|_, (at, _)| *at > cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_the_ttl() {
        let start = Instant::now();
        let mut cache = BoundedCache::new(10, Duration::from_secs(60));
        cache.insert("a", 1, start);
        assert_eq!(cache.get(&"a", start + Duration::from_secs(59)), Some(1));
        assert_eq!(cache.get(&"a", start + Duration::from_secs(60)), None);
    }

    /// A cache of 4 holding "a" to "d", inserted at 0 to 3 s.
    fn full(ttl_seconds: u64) -> (BoundedCache<&'static str, usize>, impl Fn(u64) -> Instant) {
        let start = Instant::now();
        let at = move |s: u64| start + Duration::from_secs(s);
        let mut cache = BoundedCache::new(4, Duration::from_secs(ttl_seconds));
        for (i, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
            cache.insert(key, i, at(i as u64));
        }
        (cache, at)
    }

    #[test]
    fn a_full_cache_drops_expired_entries_first() {
        let (mut cache, at) = full(100);
        cache.insert("e", 4, at(101)); // "a" (0 s) and "b" (1 s) have expired
        assert_eq!((cache.len(), cache.get(&"a", at(101)), cache.get(&"c", at(101))), (3, None, Some(2)));
    }

    #[test]
    fn a_full_cache_without_expired_entries_drops_its_older_half() {
        let (mut cache, at) = full(1000);
        cache.insert("d", 9, at(4)); // replacing never evicts
        assert_eq!(cache.len(), 4);
        cache.insert("e", 4, at(5));
        assert_eq!(cache.len(), 3, "a and b went, c, d and e stay");
        assert!(["a", "b"].iter().all(|k| cache.get(k, at(5)).is_none()));
        assert_eq!((cache.get(&"c", at(5)), cache.get(&"d", at(5)), cache.get(&"e", at(5))), (Some(2), Some(9), Some(4)));
    }
}
