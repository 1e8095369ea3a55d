//! Token buckets per client and route class, in bounded memory.
//!
//! Each bucket is kept in GCRA form — one "theoretical arrival time" per client and
//! class, 8 bytes of state — which behaves exactly like a token bucket holding
//! `per_minute` tokens refilled at `per_minute` a minute: a client may spend the
//! whole minute's allowance at once, then one more every `60 s / per_minute`.
//!
//! Why not `governor`'s keyed limiter: its store grows with every distinct key until
//! a `retain_recent` sweep, so a flood of spoofed or distinct addresses inside one
//! sweep interval grows memory without limit. Here the map is sharded (one mutex
//! each, held for a hash lookup) and every shard has a hard cap: when a new client
//! arrives at a full shard, buckets that have refilled completely (indistinguishable
//! from a new client) go first, then the half closest to full. A flood can
//! therefore make the limiter forget some clients' recent use — leniency for them —
//! but never exhaust memory. Idle buckets are also swept periodically.
//!
//! IPv6 clients are keyed by their /64: one host usually holds a whole /64, and a
//! per-address key would let it rotate through 2⁶⁴ fresh buckets.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// Default bound on buckets held, over all classes.
pub const DEFAULT_MAX_BUCKETS: usize = 100_000;

/// Which allowance a route draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    /// Routes that create payments (orders, QR re-issue).
    Payment,
    /// Every other API or page route.
    Read,
    /// Provider callbacks.
    Callback,
}

impl RouteClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Payment => "payment",
            RouteClass::Read => "read",
            RouteClass::Callback => "callback",
        }
    }

    fn index(self) -> usize {
        match self {
            RouteClass::Payment => 0,
            RouteClass::Read => 1,
            RouteClass::Callback => 2,
        }
    }
}

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Refused; one more request will be allowed after `retry_after`.
    Limited {
        retry_after: Duration,
    },
}

#[derive(Debug, Clone, Copy)]
struct Allowance {
    /// Nanoseconds per token; 0 means unlimited.
    interval_ns: u64,
    /// Nanoseconds of credit a full bucket holds (interval × capacity).
    capacity_ns: u64,
}

impl Allowance {
    fn per_minute(n: u32) -> Allowance {
        if n == 0 {
            return Allowance {
                interval_ns: 0,
                capacity_ns: 0,
            };
        }
        let interval_ns = 60_000_000_000 / u64::from(n);
        Allowance {
            interval_ns,
            capacity_ns: interval_ns * u64::from(n),
        }
    }
}

type Key = (IpAddr, RouteClass);

pub struct RateLimiter {
    allowances: [Allowance; 3],
    shards: Vec<Mutex<HashMap<Key, u64>>>,
    hasher: RandomState,
    max_per_shard: usize,
    epoch: Instant,
}

impl RateLimiter {
    /// Allowances per minute for payment, read and callback routes (0: unlimited),
    /// holding at most `max_buckets` buckets.
    pub fn new(payment: u32, read: u32, callback: u32, max_buckets: usize) -> RateLimiter {
        RateLimiter {
            allowances: [
                Allowance::per_minute(payment),
                Allowance::per_minute(read),
                Allowance::per_minute(callback),
            ],
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            max_per_shard: (max_buckets / SHARDS).max(1),
            epoch: Instant::now(),
        }
    }

    pub fn check(&self, ip: IpAddr, class: RouteClass) -> Decision {
        self.check_at(ip, class, Instant::now())
    }

    /// [`check`](Self::check) at a given instant (tests move time with it).
    pub fn check_at(&self, ip: IpAddr, class: RouteClass, now: Instant) -> Decision {
        let allowance = self.allowances[class.index()];
        if allowance.interval_ns == 0 {
            return Decision::Allowed;
        }
        let now_ns = self.nanos(now);
        let key = (client_key(ip), class);
        let mut shard = self.shard(&key);
        let tat = shard.get(&key).copied().unwrap_or(now_ns).max(now_ns);
        let next = tat + allowance.interval_ns;
        if next - now_ns > allowance.capacity_ns {
            let wait = next - allowance.capacity_ns - now_ns;
            return Decision::Limited {
                retry_after: Duration::from_nanos(wait),
            };
        }
        if !shard.contains_key(&key) && shard.len() >= self.max_per_shard {
            make_room(&mut shard, now_ns, self.max_per_shard);
        }
        shard.insert(key, next);
        Decision::Allowed
    }

    /// Drops every bucket that has refilled completely; returns how many.
    pub fn evict_idle(&self) -> usize {
        self.evict_idle_at(Instant::now())
    }

    pub fn evict_idle_at(&self, now: Instant) -> usize {
        let now_ns = self.nanos(now);
        let mut evicted = 0;
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            let before = map.len();
            map.retain(|_, tat| *tat > now_ns);
            evicted += before - map.len();
        }
        evicted
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn shard(&self, key: &Key) -> std::sync::MutexGuard<'_, HashMap<Key, u64>> {
        let index = (self.hasher.hash_one(key) as usize) % self.shards.len();
        self.shards[index].lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Frees room in a full shard: refilled buckets first; if that frees less than a
/// quarter, the half with the most credit left goes too. Either way a quarter of the
/// shard is free afterwards, so the sweep costs O(1) per insertion, amortized.
fn make_room(map: &mut HashMap<Key, u64>, now_ns: u64, max: usize) {
    map.retain(|_, tat| *tat > now_ns);
    if map.len() < max && map.len() <= max - max / 4 {
        return;
    }
    let mut tats: Vec<u64> = map.values().copied().collect();
    let middle = tats.len() / 2;
    let (_, cut, _) = tats.select_nth_unstable(middle);
    let cut = *cut;
    map.retain(|_, tat| *tat > cut);
}

/// IPv4 as is; IPv6 by its /64 (an IPv4-mapped address counts as IPv4).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn the_twenty_first_payment_in_a_minute_waits_three_seconds() {
        let limiter = RateLimiter::new(20, 600, 6000, 1000);
        let t0 = Instant::now();
        for _ in 0..20 {
            assert_eq!(
                limiter.check_at(ip(1), RouteClass::Payment, t0),
                Decision::Allowed
            );
        }
        let Decision::Limited { retry_after } = limiter.check_at(ip(1), RouteClass::Payment, t0)
        else {
            panic!("the 21st request must be limited");
        };
        assert_eq!(retry_after, Duration::from_secs(3));
        // Another client and another class are unaffected.
        assert_eq!(
            limiter.check_at(ip(2), RouteClass::Payment, t0),
            Decision::Allowed
        );
        assert_eq!(
            limiter.check_at(ip(1), RouteClass::Read, t0),
            Decision::Allowed
        );
        // One token back after 3 s, the whole allowance after a minute.
        let later = t0 + Duration::from_secs(3);
        assert_eq!(
            limiter.check_at(ip(1), RouteClass::Payment, later),
            Decision::Allowed
        );
        assert!(matches!(
            limiter.check_at(ip(1), RouteClass::Payment, later),
            Decision::Limited { .. }
        ));
        let minute = t0 + Duration::from_secs(63);
        for _ in 0..20 {
            assert_eq!(
                limiter.check_at(ip(1), RouteClass::Payment, minute),
                Decision::Allowed
            );
        }
    }

    #[test]
    fn a_flood_of_distinct_addresses_keeps_memory_bounded() {
        let limiter = RateLimiter::new(20, 600, 6000, 10_000);
        let t0 = Instant::now();
        let victim = ip(u32::MAX);
        for _ in 0..20 {
            limiter.check_at(victim, RouteClass::Payment, t0);
        }
        for n in 0..100_000 {
            let now = t0 + Duration::from_micros(u64::from(n));
            assert_eq!(
                limiter.check_at(ip(n), RouteClass::Payment, now),
                Decision::Allowed
            );
            assert!(
                limiter.len() <= 10_000,
                "{} buckets after {n}",
                limiter.len()
            );
        }
        assert!(limiter.len() <= 10_000);
        // Buckets refill within a minute; then a sweep empties the limiter.
        let held = limiter.len();
        assert_eq!(limiter.evict_idle_at(t0 + Duration::from_secs(61)), held);
        assert!(limiter.is_empty());
    }

    #[test]
    fn idle_buckets_are_evicted_and_busy_ones_kept() {
        let limiter = RateLimiter::new(20, 600, 6000, 1000);
        let t0 = Instant::now();
        limiter.check_at(ip(1), RouteClass::Read, t0);
        for _ in 0..20 {
            limiter.check_at(ip(2), RouteClass::Payment, t0);
        }
        // After 1 s the read bucket (0.1 s per token) is full again; the payment
        // bucket still owes 60 s.
        assert_eq!(limiter.evict_idle_at(t0 + Duration::from_secs(1)), 1);
        assert_eq!(limiter.len(), 1);
        assert!(matches!(
            limiter.check_at(ip(2), RouteClass::Payment, t0 + Duration::from_secs(1)),
            Decision::Limited { .. }
        ));
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let limiter = RateLimiter::new(2, 0, 0, 1000);
        let t0 = Instant::now();
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(
            limiter.check_at(a.into(), RouteClass::Payment, t0),
            Decision::Allowed
        );
        assert_eq!(
            limiter.check_at(b.into(), RouteClass::Payment, t0),
            Decision::Allowed
        );
        assert!(matches!(
            limiter.check_at(a.into(), RouteClass::Payment, t0),
            Decision::Limited { .. }
        ));
        assert_eq!(
            limiter.check_at(c.into(), RouteClass::Payment, t0),
            Decision::Allowed
        );
        // Unlimited classes hold no state.
        assert_eq!(
            limiter.check_at(a.into(), RouteClass::Read, t0),
            Decision::Allowed
        );
        assert_eq!(limiter.len(), 2);
    }
}
