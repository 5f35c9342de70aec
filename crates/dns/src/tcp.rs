//! DNS over TCP framing (RFC 1035 section 4.2.2, RFC 7766): every message
//! is preceded by its length in two bytes, and a connection carries any
//! number of them, pipelined.

use alloc::vec::Vec;

/// A stream that cannot be DNS over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A length prefix of 0 or less than a DNS header: no message can be
    /// that short, so the stream is not DNS; close the connection.
    #[error("TCP frame of {0} bytes is shorter than a DNS header")]
    TooShort(usize),
}

/// Collects a TCP connection's bytes and hands out whole messages.
#[derive(Debug, Clone, Default)]
pub struct Deframer {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out.
    start: usize,
}

impl Deframer {
    /// An empty deframer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, if one has arrived. An error means the
    /// connection should be closed.
    pub fn next_message(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let rest = &self.buf[self.start..];
        if rest.len() < 2 {
            self.compact();
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        if len < 12 {
            return Err(FrameError::TooShort(len));
        }
        if rest.len() < 2 + len {
            self.compact();
            return Ok(None);
        }
        let at = self.start + 2;
        self.start = at + len;
        Ok(Some(&self.buf[at..at + len]))
    }

    /// Bytes held that are not yet a whole message.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// `message` with its two-byte length prefix, ready to write. Messages
/// are at most 65,535 bytes (the server's TCP answers are).
pub fn frame(message: &[u8]) -> Vec<u8> {
    let len = u16::try_from(message.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(message.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&message[..usize::from(len)]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u8, len: usize) -> Vec<u8> {
        let mut m = alloc::vec![n; len];
        m[0] = n;
        m
    }

    #[test]
    fn every_split_point_gives_the_same_messages() {
        let (a, b) = (msg(1, 12), msg(2, 300));
        let mut stream = frame(&a);
        stream.extend(frame(&b));
        for split in 0..=stream.len() {
            let mut d = Deframer::new();
            let mut got = Vec::new();
            for chunk in [&stream[..split], &stream[split..]] {
                d.push(chunk);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m.to_vec());
                }
            }
            assert_eq!(got, [a.clone(), b.clone()], "split at {split}");
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn byte_by_byte() {
        let stream: Vec<u8> = (0..5).flat_map(|i| frame(&msg(i, 20 + usize::from(i)))).collect();
        let mut d = Deframer::new();
        let mut n = 0;
        for byte in stream {
            d.push(&[byte]);
            while let Some(m) = d.next_message().unwrap() {
                assert_eq!(m.len(), 20 + n);
                n += 1;
            }
        }
        assert_eq!(n, 5);
    }

    #[test]
    fn short_frames_are_errors() {
        let mut d = Deframer::new();
        d.push(&[0, 0]);
        assert_eq!(d.next_message(), Err(FrameError::TooShort(0)));
        let mut d = Deframer::new();
        d.push(&[0, 5, 1, 2, 3, 4, 5]);
        assert_eq!(d.next_message(), Err(FrameError::TooShort(5)));
    }
}
