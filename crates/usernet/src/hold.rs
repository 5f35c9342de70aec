//! Holding a published connection until the guest listens.
//!
//! A host client may reach a published port before the guest has its
//! address or listens (a scale-from-zero proxy, a readiness probe, a client
//! started with the service). The guest then drops the gateway's SYN (no
//! address yet) or answers it with a reset (no listener yet). Left to TCP,
//! the gateway would resend the SYN after its retransmission timeout, a
//! second, or give up on the reset. Instead the relay keeps the host
//! connection and sends a fresh SYN on the internal link in millisecond
//! steps ([`Hold::FIRST_STEP`], doubling up to [`Hold::MAX_STEP`]), at once
//! when the tender says the guest now listens ([`Hold::hurry`]), until the
//! guest accepts or `Limits::hold` has passed; then the host side is reset
//! as before. The relay keeps its slot meanwhile, so the connection limits
//! and the listen backlog bound what waits.
//!
//! This is the state machine alone: the caller says what time it is and
//! replaces the gateway's socket when told to retry.

use std::time::{Duration, Instant};

/// What a held connection should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldAction {
    /// Keep waiting for the guest's answer.
    Wait,
    /// Send the guest a fresh SYN (a new gateway socket).
    Retry,
    /// The hold expired: reset the host side.
    GiveUp,
}

/// One published connection the guest has not accepted yet.
#[derive(Clone, Copy, Debug)]
pub struct Hold {
    since: Instant,
    next: Instant,
    step: Duration,
    retries: u32,
}

impl Hold {
    /// The first retry comes this long after the first SYN.
    pub const FIRST_STEP: Duration = Duration::from_millis(2);
    /// Retries come at least this often.
    pub const MAX_STEP: Duration = Duration::from_millis(32);

    /// A connection whose first SYN went to the guest at `now`.
    pub fn new(now: Instant) -> Hold {
        Hold { since: now, next: now + Hold::FIRST_STEP, step: Hold::FIRST_STEP, retries: 0 }
    }

    /// What to do at `now`, for a connection held at most `timeout`.
    pub fn poll(&mut self, now: Instant, timeout: Duration) -> HoldAction {
        if now.duration_since(self.since) >= timeout {
            return HoldAction::GiveUp;
        }
        if now < self.next {
            return HoldAction::Wait;
        }
        self.retries += 1;
        self.next = now + self.step;
        self.step = (self.step * 2).min(Hold::MAX_STEP);
        HoldAction::Retry
    }

    /// The guest listens now: retry at the next poll, and in short steps
    /// again after that.
    pub fn hurry(&mut self, now: Instant) {
        self.next = now;
        self.step = Hold::FIRST_STEP;
    }

    /// When [`Hold::poll`] has something to do next.
    pub fn deadline(&self, timeout: Duration) -> Instant {
        self.next.min(self.since + timeout)
    }

    /// Fresh SYNs sent so far.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// How long the connection has been held at `now`.
    pub fn held(&self, now: Instant) -> Duration {
        now.duration_since(self.since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn retries_start_within_milliseconds_and_double_up_to_the_cap() {
        let t0 = Instant::now();
        let mut h = Hold::new(t0);
        let timeout = 2000 * MS;
        assert_eq!(h.poll(t0, timeout), HoldAction::Wait);
        assert_eq!(h.poll(t0 + MS, timeout), HoldAction::Wait);
        // Step through time a millisecond at a time and note each retry.
        let mut at = Vec::new();
        for ms in 0..300u32 {
            if h.poll(t0 + ms * MS, timeout) == HoldAction::Retry {
                at.push(ms);
            }
        }
        assert_eq!(&at[..7], &[2, 4, 8, 16, 32, 64, 96], "{at:?}");
        assert!(at.windows(2).all(|w| w[1] - w[0] <= 32), "never more than MAX_STEP apart: {at:?}");
        assert_eq!(h.retries() as usize, at.len());
    }

    #[test]
    fn gives_up_at_the_timeout_and_not_before() {
        let t0 = Instant::now();
        let mut h = Hold::new(t0);
        let timeout = 100 * MS;
        let mut last = HoldAction::Wait;
        for ms in 0..100u32 {
            last = h.poll(t0 + ms * MS, timeout);
            assert_ne!(last, HoldAction::GiveUp, "gave up at {ms} ms");
        }
        assert_ne!(last, HoldAction::GiveUp);
        assert_eq!(h.poll(t0 + timeout, timeout), HoldAction::GiveUp);
        assert_eq!(h.poll(t0 + 10 * timeout, timeout), HoldAction::GiveUp, "and stays given up");
        assert!(h.deadline(timeout) <= t0 + timeout);
    }

    #[test]
    fn a_zero_timeout_never_holds() {
        let t0 = Instant::now();
        assert_eq!(Hold::new(t0).poll(t0, Duration::ZERO), HoldAction::GiveUp);
    }

    #[test]
    fn hurry_retries_at_once_then_in_short_steps() {
        let t0 = Instant::now();
        let mut h = Hold::new(t0);
        let timeout = 2000 * MS;
        // Let the steps grow to the cap.
        for ms in 0..500u32 {
            h.poll(t0 + ms * MS, timeout);
        }
        let now = t0 + 500 * MS;
        assert_eq!(h.poll(now, timeout), HoldAction::Wait);
        h.hurry(now);
        assert_eq!(h.deadline(timeout), now);
        assert_eq!(h.poll(now, timeout), HoldAction::Retry);
        assert_eq!(h.poll(now + MS, timeout), HoldAction::Wait);
        assert_eq!(h.poll(now + 2 * MS, timeout), HoldAction::Retry, "back to the first step");
        assert_eq!(h.held(now), 500 * MS);
    }

    #[test]
    fn the_deadline_is_the_next_retry_or_the_timeout() {
        let t0 = Instant::now();
        let h = Hold::new(t0);
        assert_eq!(h.deadline(2000 * MS), t0 + Hold::FIRST_STEP);
        assert_eq!(h.deadline(MS), t0 + MS);
    }
}
