//! Response-rate limiting for UDP answers: a token bucket per client
//! prefix, so a forged source address cannot turn the server into an
//! amplifier against a victim. Off unless configured.

use alloc::vec;
use alloc::vec::Vec;
use core::net::IpAddr;

/// Response-rate limiting settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Answers per second per client prefix; a burst of this many is let
    /// through at once.
    pub responses_per_second: u32,
    /// Every `slip`th answer over the limit is sent truncated (TC, no
    /// records) instead of dropped, so a real client behind the prefix
    /// can retry over TCP. 0 drops them all; 1 truncates them all.
    pub slip: u32,
    /// The prefix length that groups IPv4 clients (24 by default).
    pub ipv4_prefix: u8,
    /// The prefix length that groups IPv6 clients (56 by default).
    pub ipv6_prefix: u8,
    /// How many prefixes are tracked at once (a fixed table; a prefix
    /// whose slot another takes starts again with a full bucket).
    pub table_size: usize,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit { responses_per_second: 200, slip: 2, ipv4_prefix: 24, ipv6_prefix: 56, table_size: 4096 }
    }
}

/// What to do with one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit: send it.
    Send,
    /// Over the limit: send nothing.
    Drop,
    /// Over the limit, but this one goes out truncated.
    Slip,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// The prefix (with a marker for the family), or 0 when unused.
    key: u128,
    /// Tokens, in thousandths of an answer.
    tokens: u64,
    /// When the tokens were last topped up (milliseconds).
    updated: u64,
    /// Answers over the limit so far, for the slip count.
    over: u32,
}

/// The rate limiter's state: a fixed table of buckets.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    config: RateLimit,
    table: Vec<Bucket>,
}

impl RateLimiter {
    /// An empty limiter.
    pub fn new(config: RateLimit) -> Self {
        let size = config.table_size.max(1);
        RateLimiter { table: vec![Bucket::default(); size], config }
    }

    /// Counts one answer to `client` at `now_ms` and says what to do.
    pub fn check(&mut self, client: IpAddr, now_ms: u64) -> Verdict {
        let key = self.prefix(client);
        let slot = (mix(key) % self.table.len() as u64) as usize;
        let rate = u64::from(self.config.responses_per_second);
        let full = rate * 1000;
        let b = &mut self.table[slot];
        if b.key != key {
            *b = Bucket { key, tokens: full, updated: now_ms, over: 0 };
        }
        // Top up: `rate` answers per second, in thousandths per millisecond.
        let elapsed = now_ms.saturating_sub(b.updated);
        b.tokens = b.tokens.saturating_add(elapsed.saturating_mul(rate)).min(full);
        b.updated = now_ms.max(b.updated);
        if b.tokens >= 1000 {
            b.tokens -= 1000;
            return Verdict::Send;
        }
        b.over = b.over.wrapping_add(1);
        match self.config.slip {
            0 => Verdict::Drop,
            n if b.over.is_multiple_of(n) => Verdict::Slip,
            _ => Verdict::Drop,
        }
    }

    fn prefix(&self, client: IpAddr) -> u128 {
        match client {
            IpAddr::V4(a) => {
                let bits = u32::from(self.config.ipv4_prefix.min(32));
                let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
                (1u128 << 64) | u128::from(u32::from(a) & mask)
            }
            IpAddr::V6(a) => {
                let bits = u32::from(self.config.ipv6_prefix.min(128));
                let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
                // Keep it apart from IPv4's keys and from 0 (unused).
                (u128::from(a) & mask) | 1
            }
        }
    }
}

/// A 64-bit mix of the key (splitmix64's finaliser on both halves).
fn mix(key: u128) -> u64 {
    let mut x = (key as u64) ^ ((key >> 64) as u64).rotate_left(31);
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};

    fn limiter(rate: u32, slip: u32) -> RateLimiter {
        RateLimiter::new(RateLimit { responses_per_second: rate, slip, ..RateLimit::default() })
    }

    #[test]
    fn burst_then_limit_then_refill() {
        let mut l = limiter(10, 0);
        let c = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let sent = (0..50).filter(|_| l.check(c, 1000) == Verdict::Send).count();
        assert_eq!(sent, 10);
        // 100 ms later one more token.
        assert_eq!(l.check(c, 1100), Verdict::Send);
        assert_eq!(l.check(c, 1100), Verdict::Drop);
    }

    #[test]
    fn prefixes_share_a_bucket_others_do_not() {
        let mut l = limiter(2, 0);
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200));
        let other = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(l.check(a, 0), Verdict::Send);
        assert_eq!(l.check(b, 0), Verdict::Send);
        assert_eq!(l.check(a, 0), Verdict::Drop);
        assert_eq!(l.check(other, 0), Verdict::Send);
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(l.check(v6, 0), Verdict::Send);
    }

    #[test]
    fn slip_sends_every_nth() {
        let mut l = limiter(1, 3);
        let c = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
        assert_eq!(l.check(c, 0), Verdict::Send);
        let v: Vec<_> = (0..6).map(|_| l.check(c, 0)).collect();
        assert_eq!(v, [Verdict::Drop, Verdict::Drop, Verdict::Slip, Verdict::Drop, Verdict::Drop, Verdict::Slip]);
    }
}
