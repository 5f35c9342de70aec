//! The DNS forwarder: queries to 10.0.2.3 go to the host's name server with
//! a fresh id, and answers come back with the guest's id. With outbound
//! traffic off, every query is answered `REFUSED` at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a forwarded query waits for its answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A query waiting for the upstream answer.
pub struct Pending {
    /// The guest's source port.
    pub guest_port: u16,
    /// The guest's query id.
    pub guest_id: u16,
    /// When it was sent.
    pub sent: Instant,
}

/// Forwarding state.
#[derive(Default)]
pub struct Forwarder {
    /// Our id -> the guest's query.
    pub pending: BTreeMap<u16, Pending>,
    next_id: u16,
}

impl Forwarder {
    /// Registers a query; returns the id to send upstream, or `None` when
    /// `limit` queries are already in flight.
    pub fn forward(&mut self, guest_port: u16, guest_id: u16, limit: usize, now: Instant) -> Option<u16> {
        self.pending.retain(|_, p| now.duration_since(p.sent) < QUERY_TIMEOUT);
        if self.pending.len() >= limit {
            return None;
        }
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if !self.pending.contains_key(&self.next_id) {
                break;
            }
        }
        self.pending.insert(self.next_id, Pending { guest_port, guest_id, sent: now });
        Some(self.next_id)
    }
}

/// The id of a DNS message.
pub fn id(msg: &[u8]) -> Option<u16> {
    (msg.len() >= 12).then(|| u16::from_be_bytes([msg[0], msg[1]]))
}

/// Rewrites a message's id.
pub fn set_id(msg: &mut [u8], id: u16) {
    msg[..2].copy_from_slice(&id.to_be_bytes());
}

/// The `REFUSED` answer to a query (the query with QR set, RCODE 5, and no
/// answer sections), or `None` if it is not a query.
pub fn refused(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let mut answer = query.to_vec();
    answer[2] = 0x80 | (query[2] & 0x79); // QR, keep opcode and RD
    answer[3] = 0x80 | 5; // RA, REFUSED
    answer[6..12].fill(0); // no answer, authority or additional records
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_mapped_and_bounded() {
        let mut f = Forwarder::default();
        let now = Instant::now();
        let a = f.forward(5000, 7, 2, now).unwrap();
        let b = f.forward(5001, 7, 2, now).unwrap();
        assert_ne!(a, b);
        assert!(f.forward(5002, 8, 2, now).is_none(), "limit reached");
        assert!(f.forward(5002, 8, 2, now + QUERY_TIMEOUT).is_some(), "old queries expire");
    }

    #[test]
    fn refusals_echo_the_question() {
        let q = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'f', b'o', b'o', 0, 0, 1, 0, 1];
        let r = refused(&q).unwrap();
        assert_eq!(id(&r), Some(0xabcd));
        assert_eq!(r[3] & 0x0f, 5);
        assert_eq!(r[2] & 0x80, 0x80);
        assert_eq!(&r[12..], &q[12..]);
        assert!(refused(&r).is_none(), "an answer is not a query");
        assert!(refused(&[1, 2]).is_none());
    }
}
