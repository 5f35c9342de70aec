//! Holding a published connection until the guest listens.
//!
//! A host client may reach a published port before the guest has its
//! address or listens (a scale-from-zero proxy, a readiness probe, a client
//! started with the service). The guest then drops the gateway's SYN (no
//! address yet) or answers it with a reset (no listener yet). Left to TCP,
//! the gateway would resend the SYN after its retransmission timeout, a
//! second, or give up on the reset. Instead the relay keeps the host
//! connection and sends a fresh SYN on the internal link: after a reset in
//! millisecond steps ([`Hold::FIRST_STEP`], doubling up to
//! [`Hold::MAX_STEP`]); while a SYN is merely unanswered, no sooner than
//! [`Hold::UNANSWERED_STEP`] after it (a busy guest that answers late
//! would otherwise get a new connection attempt every few milliseconds);
//! and at once when the tender says the guest now listens
//! ([`Hold::hurry`]); until the guest accepts or `Limits::hold` has
//! passed; then the host side is reset as before. The relay keeps its slot meanwhile, so the connection limits
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
    /// When the last SYN went out.
    last: Instant,
    /// Until then an unanswered SYN is replaced in the short steps too:
    /// the guest has just become able to answer (see [`Hold::hurry`]).
    fast_until: Instant,
}

impl Hold {
    /// The first retry comes this long after the first SYN.
    pub const FIRST_STEP: Duration = Duration::from_millis(2);
    /// Retries come at least this often.
    pub const MAX_STEP: Duration = Duration::from_millis(32);
    /// A SYN the guest has neither answered nor refused gets this long
    /// before a fresh one replaces it (unless the guest says it listens).
    pub const UNANSWERED_STEP: Duration = Duration::from_millis(10);
    /// How long after [`Hold::hurry`] unanswered SYNs are replaced in the
    /// short steps.
    pub const HURRY_WINDOW: Duration = Duration::from_millis(20);

    /// A connection whose first SYN went to the guest at `now`.
    pub fn new(now: Instant) -> Hold {
        Hold {
            since: now,
            next: now + Hold::FIRST_STEP,
            step: Hold::FIRST_STEP,
            retries: 0,
            last: now,
            fast_until: now,
        }
    }

    /// What to do at `now`, for a connection held at most `timeout`;
    /// `refused` if the guest answered the last SYN with a reset (else it
    /// is unanswered).
    pub fn poll(&mut self, now: Instant, timeout: Duration, refused: bool) -> HoldAction {
        if now.duration_since(self.since) >= timeout {
            return HoldAction::GiveUp;
        }
        let fast = refused || now < self.fast_until;
        let due = if fast { self.next } else { self.next.max(self.last + Hold::UNANSWERED_STEP) };
        if now < due {
            return HoldAction::Wait;
        }
        self.retries += 1;
        self.last = now;
        self.next = now + self.step;
        self.step = (self.step * 2).min(Hold::MAX_STEP);
        HoldAction::Retry
    }

    /// The guest can answer now (it listens, or was just given its
    /// address): retry at the next poll, and for [`Hold::HURRY_WINDOW`] in
    /// the short steps even while SYNs go unanswered (the guest may apply
    /// its address or open its listener a little after the event that
    /// told the tender).
    pub fn hurry(&mut self, now: Instant) {
        self.next = now;
        self.step = Hold::FIRST_STEP;
        self.fast_until = now + Hold::HURRY_WINDOW;
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
    fn an_unanswered_syn_is_replaced_only_after_its_own_step_or_when_the_guest_listens() {
        let t0 = Instant::now();
        let timeout = 2000 * MS;
        let mut h = Hold::new(t0);
        // Unanswered: nothing before 10 ms, though the refusal steps would
        // have retried at 2 ms.
        for ms in 1..10 {
            assert_eq!(h.poll(t0 + ms * MS, timeout, false), HoldAction::Wait, "at {ms} ms");
        }
        assert_eq!(h.poll(t0 + 10 * MS, timeout, false), HoldAction::Retry);
        assert_eq!(h.poll(t0 + 15 * MS, timeout, false), HoldAction::Wait);
        // A refusal of that SYN goes back to the short steps.
        let mut h2 = h;
        assert_eq!(h2.poll(t0 + 11 * MS, timeout, true), HoldAction::Wait);
        assert_eq!(h2.poll(t0 + 12 * MS, timeout, true), HoldAction::Retry);
        // The guest listens: the unanswered SYN is replaced at once, then
        // in the short steps for the hurry window.
        h.hurry(t0 + 16 * MS);
        assert_eq!(h.poll(t0 + 16 * MS, timeout, false), HoldAction::Retry);
        assert_eq!(h.poll(t0 + 17 * MS, timeout, false), HoldAction::Wait);
        assert_eq!(h.poll(t0 + 18 * MS, timeout, false), HoldAction::Retry);
        // After the window, unanswered SYNs get their 10 ms again.
        assert_eq!(h.poll(t0 + 40 * MS, timeout, false), HoldAction::Retry);
        assert_eq!(h.poll(t0 + 45 * MS, timeout, false), HoldAction::Wait);
        assert_eq!(h.poll(t0 + 50 * MS, timeout, false), HoldAction::Retry);
    }

    #[test]
    fn retries_start_within_milliseconds_and_double_up_to_the_cap() {
        let t0 = Instant::now();
        let mut h = Hold::new(t0);
        let timeout = 2000 * MS;
        assert_eq!(h.poll(t0, timeout, true), HoldAction::Wait);
        assert_eq!(h.poll(t0 + MS, timeout, true), HoldAction::Wait);
        // Step through time a millisecond at a time and note each retry.
        let mut at = Vec::new();
        for ms in 0..300u32 {
            if h.poll(t0 + ms * MS, timeout, true) == HoldAction::Retry {
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
            last = h.poll(t0 + ms * MS, timeout, true);
            assert_ne!(last, HoldAction::GiveUp, "gave up at {ms} ms");
        }
        assert_ne!(last, HoldAction::GiveUp);
        assert_eq!(h.poll(t0 + timeout, timeout, true), HoldAction::GiveUp);
        assert_eq!(h.poll(t0 + 10 * timeout, timeout, true), HoldAction::GiveUp, "and stays given up");
        assert!(h.deadline(timeout) <= t0 + timeout);
    }

    #[test]
    fn a_zero_timeout_never_holds() {
        let t0 = Instant::now();
        assert_eq!(Hold::new(t0).poll(t0, Duration::ZERO, true), HoldAction::GiveUp);
    }

    #[test]
    fn hurry_retries_at_once_then_in_short_steps() {
        let t0 = Instant::now();
        let mut h = Hold::new(t0);
        let timeout = 2000 * MS;
        // Let the steps grow to the cap.
        for ms in 0..500u32 {
            h.poll(t0 + ms * MS, timeout, true);
        }
        let now = t0 + 500 * MS;
        assert_eq!(h.poll(now, timeout, true), HoldAction::Wait);
        h.hurry(now);
        assert_eq!(h.deadline(timeout), now);
        assert_eq!(h.poll(now, timeout, true), HoldAction::Retry);
        assert_eq!(h.poll(now + MS, timeout, true), HoldAction::Wait);
        assert_eq!(h.poll(now + 2 * MS, timeout, true), HoldAction::Retry, "back to the first step");
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
