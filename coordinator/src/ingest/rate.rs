//! Per-source rate limit for enrollment connections (issue 5 item 3).
//!
//! A connection without a client certificate may only enroll, and each attempt makes
//! the fleet check a token (and may write a log entry), so attempts are limited per
//! source address. The table of sources is bounded: when it is full, the entry whose
//! window started first is forgotten and the eviction is counted, so a flood from many
//! addresses costs a fixed amount of memory and can at worst reset someone's budget.
//!
//! Pure: time comes in as an argument.

use std::collections::HashMap;
use std::net::IpAddr;

/// Fixed-window counter per source address.
#[derive(Debug)]
pub struct EnrollLimiter {
    per_window: u32,
    window_ms: i64,
    max_sources: usize,
    sources: HashMap<IpAddr, (i64, u32)>,
    /// Sources forgotten because the table was full.
    pub evicted: u64,
}

impl EnrollLimiter {
    /// At most `per_window` attempts per source in each `window_ms`, tracking at most
    /// `max_sources` sources.
    pub fn new(per_window: u32, window_ms: i64, max_sources: usize) -> Self {
        EnrollLimiter {
            per_window,
            window_ms: window_ms.max(1),
            max_sources: max_sources.max(1),
            sources: HashMap::new(),
            evicted: 0,
        }
    }

    /// Counts an attempt from `ip` at `now_ms`; false when it is over the limit.
    pub fn allow(&mut self, ip: IpAddr, now_ms: i64) -> bool {
        if !self.sources.contains_key(&ip) && self.sources.len() >= self.max_sources {
            let window_ms = self.window_ms;
            self.sources
                .retain(|_, (start, _)| now_ms.saturating_sub(*start) < window_ms);
            if self.sources.len() >= self.max_sources
                && let Some(oldest) = self
                    .sources
                    .iter()
                    .min_by_key(|(_, (start, _))| *start)
                    .map(|(ip, _)| *ip)
            {
                self.sources.remove(&oldest);
                self.evicted += 1;
            }
        }
        let slot = self.sources.entry(ip).or_insert((now_ms, 0));
        if now_ms.saturating_sub(slot.0) >= self.window_ms {
            *slot = (now_ms, 0);
        }
        if slot.1 >= self.per_window {
            return false;
        }
        slot.1 += 1;
        true
    }

    /// Sources currently tracked.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_source_gets_its_budget_per_window_and_others_are_unaffected() {
        let mut l = EnrollLimiter::new(3, 60_000, 100);
        assert!((0..3).all(|_| l.allow(ip(1), 1_000)));
        assert!(!l.allow(ip(1), 2_000));
        assert!(l.allow(ip(2), 2_000));
        // The next window gives the budget back.
        assert!(l.allow(ip(1), 61_000));
    }

    #[test]
    fn the_table_stays_bounded_and_counts_evictions() {
        let mut l = EnrollLimiter::new(1, 60_000, 4);
        for n in 0..10 {
            assert!(l.allow(ip(n), i64::from(n)));
        }
        assert_eq!(l.len(), 4);
        assert_eq!(l.evicted, 6);
        // The newest sources are still limited.
        assert!(!l.allow(ip(9), 20));
    }
}
