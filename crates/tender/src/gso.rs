//! Segmentation offload toward TAP devices: consecutive TCP segments the
//! guest queued for one connection leave in one `write`.
//!
//! A TAP device opened with `IFF_VNET_HDR` takes a virtio-net header in
//! front of each frame. With `gso_type` TCPv4 the frame may be a TCP
//! segment of up to 64 KiB, which the host kernel treats as the run of
//! `gso_size`-byte segments it stands for: delivered to a local socket it
//! is received whole, as the kernel's own receive offload would have
//! merged it; forwarded, the kernel cuts it up again. One system call and
//! one pass through the host's network stack then carry what took one per
//! frame (a bulk sender's 44 frames of 1,460 bytes), the cost that bounded
//! bulk transfers and large responses.
//!
//! [`Coalescer`] merges only what the receive offload of the host would
//! merge (RFC-conforming GRO rules): IPv4 without options or fragments,
//! the same addresses, ports, TOS, TTL, acknowledgement, window and TCP
//! options, consecutive sequence numbers, flags ACK with PSH at most on the
//! last, every segment but the last exactly as long as the first. Anything
//! else (IPv6, ARP, SYN/FIN/RST, a retransmission) leaves as it came, with
//! an empty header. The guest's own checksums are kept on single frames;
//! a merged frame carries a recomputed IPv4 header checksum and the TCP
//! pseudo-header sum with `NEEDS_CSUM`, as a NIC with checksum offload
//! receives it.
//!
//! Nothing is read from guest memory here: frames are already copies.

/// Bytes of `struct virtio_net_hdr` (the size a TAP device expects unless
/// told otherwise with `TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 10;

const ETH: usize = 14;
const IP: usize = 20;
/// The largest IPv4 packet, and so the largest merged segment.
const IP_MAX: usize = 65535;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;

/// The parts of a TCP/IPv4 frame that decide whether it merges.
struct Segment {
    /// Ethernet, IPv4 and TCP headers.
    headers: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

/// Parses `frame` as a TCP segment over IPv4 that could be part of a
/// merged frame: no IP options, not a fragment, the frame exactly as long
/// as the packet (no padding), a payload, and flags ACK or ACK|PSH.
fn segment(frame: &[u8]) -> Option<Segment> {
    if frame.len() < ETH + IP + 20 || frame[12..14] != [0x08, 0x00] || frame[ETH] != 0x45 || frame[ETH + 9] != 6 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([frame[ETH + 2], frame[ETH + 3]]));
    let fragment = u16::from_be_bytes([frame[ETH + 6], frame[ETH + 7]]) & 0x3fff;
    if frame.len() != ETH + total || fragment != 0 {
        return None;
    }
    let tcp = ETH + IP;
    let tcp_len = usize::from(frame[tcp + 12] >> 4) * 4;
    let flags = frame[tcp + 13];
    let urgent = frame[tcp + 18..tcp + 20] != [0, 0];
    if tcp_len < 20 || IP + tcp_len >= total || flags & !TCP_PSH != TCP_ACK || urgent {
        return None;
    }
    let seq = u32::from_be_bytes([frame[tcp + 4], frame[tcp + 5], frame[tcp + 6], frame[tcp + 7]]);
    Some(Segment { headers: tcp + tcp_len, seq, flags, payload: total - IP - tcp_len })
}

/// Builds the bytes of one TAP write: a virtio-net header and a frame,
/// either a frame as the guest sent it or several TCP segments merged.
pub struct Coalescer {
    /// The header, then the frame being built.
    buf: Box<[u8]>,
    /// Bytes of the frame in `buf` after the header; 0: empty.
    len: usize,
    /// Segments merged into it (1: a frame as it came).
    segments: u32,
    /// The first segment's payload length: every merged segment but the
    /// last has exactly this much.
    mss: usize,
    /// The sequence number the next segment must have.
    next_seq: u32,
    /// Whether another segment may still be added.
    open: bool,
}

impl Default for Coalescer {
    fn default() -> Coalescer {
        Coalescer::new()
    }
}

impl Coalescer {
    /// An empty coalescer (its 64 KiB buffer is touched only as it fills).
    pub fn new() -> Coalescer {
        Coalescer {
            buf: vec![0u8; VNET_HDR_LEN + ETH + IP_MAX].into_boxed_slice(),
            len: 0,
            segments: 0,
            mss: 0,
            next_seq: 0,
            open: false,
        }
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes `frame` if it can: always when empty, else when it continues
    /// the TCP segment being built. `false`: write what it holds
    /// ([`Coalescer::take`]) and offer the frame again.
    pub fn offer(&mut self, frame: &[u8]) -> bool {
        if self.len == 0 {
            self.buf[VNET_HDR_LEN..VNET_HDR_LEN + frame.len()].copy_from_slice(frame);
            self.len = frame.len();
            self.segments = 1;
            match segment(frame) {
                Some(s) => {
                    self.mss = s.payload;
                    self.next_seq = s.seq.wrapping_add(s.payload as u32);
                    self.open = s.flags & TCP_PSH == 0;
                }
                None => self.open = false,
            }
            return true;
        }
        if !self.open {
            return false;
        }
        let Some(s) = segment(frame) else { return false };
        let first = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.len];
        let tcp = ETH + IP;
        // (The TCP header lengths are equal when byte 12 is: the first
        // frame holds at least as many bytes as this one's headers.)
        let same = frame[..14] == first[..14]
            // TOS, DF, TTL, protocol and the addresses.
            && frame[ETH + 1] == first[ETH + 1]
            && frame[ETH + 6] == first[ETH + 6]
            && frame[ETH + 8..ETH + 10] == first[ETH + 8..ETH + 10]
            && frame[ETH + 12..ETH + 20] == first[ETH + 12..ETH + 20]
            // Ports, acknowledgement, header length, window, options.
            && frame[tcp..tcp + 4] == first[tcp..tcp + 4]
            && frame[tcp + 8..tcp + 13] == first[tcp + 8..tcp + 13]
            && frame[tcp + 14..tcp + 16] == first[tcp + 14..tcp + 16]
            && frame[tcp + 20..s.headers] == first[tcp + 20..s.headers];
        if !same || s.seq != self.next_seq || s.payload > self.mss || self.len + s.payload > ETH + IP_MAX {
            return false;
        }
        let at = VNET_HDR_LEN + self.len;
        self.buf[at..at + s.payload].copy_from_slice(&frame[s.headers..]);
        self.len += s.payload;
        self.segments += 1;
        self.next_seq = self.next_seq.wrapping_add(s.payload as u32);
        if s.flags & TCP_PSH != 0 {
            self.buf[VNET_HDR_LEN + tcp + 13] |= TCP_PSH;
        }
        self.open = s.flags & TCP_PSH == 0 && s.payload == self.mss;
        true
    }

    /// What to write (the header and the frame) and the number of the
    /// guest's frames it carries; empties the coalescer. `None` when empty.
    pub fn take(&mut self) -> Option<(&[u8], u32)> {
        if self.len == 0 {
            return None;
        }
        let (len, segments) = (self.len, self.segments);
        self.len = 0;
        self.open = false;
        let (hdr, frame) = self.buf.split_at_mut(VNET_HDR_LEN);
        hdr.fill(0);
        if segments > 1 {
            let frame = &mut frame[..len];
            let tcp = ETH + IP;
            let headers = tcp + usize::from(frame[tcp + 12] >> 4) * 4;
            let total = (len - ETH) as u16;
            frame[ETH + 2..ETH + 4].copy_from_slice(&total.to_be_bytes());
            frame[ETH + 10..ETH + 12].fill(0);
            let ip_sum = !fold(sum(&frame[ETH..ETH + IP]));
            frame[ETH + 10..ETH + 12].copy_from_slice(&ip_sum.to_be_bytes());
            // The pseudo-header sum, not complemented: the kernel adds the
            // segment and stores the complement (`CHECKSUM_PARTIAL`).
            let tcp_len = (len - tcp) as u32;
            let pseudo = fold(sum(&frame[ETH + 12..ETH + 20]) + 6 + tcp_len);
            frame[tcp + 16..tcp + 18].copy_from_slice(&pseudo.to_be_bytes());
            hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
            hdr[1] = VIRTIO_NET_HDR_GSO_TCPV4;
            hdr[2..4].copy_from_slice(&(headers as u16).to_le_bytes());
            hdr[4..6].copy_from_slice(&(self.mss as u16).to_le_bytes());
            hdr[6..8].copy_from_slice(&(tcp as u16).to_le_bytes());
            hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
        }
        Some((&self.buf[..VNET_HDR_LEN + len], segments))
    }
}

/// The ones'-complement sum of `bytes` as 16-bit big-endian words, not yet
/// folded.
fn sum(bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    let mut s: u32 = chunks.by_ref().map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    if let [last] = chunks.remainder() {
        s += u32::from(*last) << 8;
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP/IPv4 frame with checksums, as the guest sends it.
    fn frame(seq: u32, flags: u8, payload: &[u8], options: &[u8]) -> Vec<u8> {
        let tcp_len = 20 + options.len();
        let total = IP + tcp_len + payload.len();
        let mut f = vec![0u8; ETH + total];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[ETH..ETH + IP];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 1]);
        let c = !fold(sum(ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let t = ETH + IP;
        f[t..t + 2].copy_from_slice(&80u16.to_be_bytes());
        f[t + 2..t + 4].copy_from_slice(&40000u16.to_be_bytes());
        f[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        f[t + 8..t + 12].copy_from_slice(&7u32.to_be_bytes());
        f[t + 12] = (tcp_len as u8 / 4) << 4;
        f[t + 13] = flags;
        f[t + 14..t + 16].copy_from_slice(&1024u16.to_be_bytes());
        f[t + 20..t + tcp_len].copy_from_slice(options);
        f[t + tcp_len..].copy_from_slice(payload);
        let c = !fold(tcp_sum(&f));
        f[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// The TCP checksum's sum over the pseudo-header and the segment (with
    /// whatever the checksum field holds).
    fn tcp_sum(f: &[u8]) -> u32 {
        sum(&f[ETH + 12..ETH + 20]) + 6 + (f.len() - ETH - IP) as u32 + sum(&f[ETH + IP..])
    }

    fn offer_all(c: &mut Coalescer, frames: &[Vec<u8>]) -> Vec<(Vec<u8>, u32)> {
        let mut out = Vec::new();
        for f in frames {
            if !c.offer(f) {
                let (bytes, n) = c.take().unwrap();
                out.push((bytes.to_vec(), n));
                assert!(c.offer(f), "an empty coalescer takes any frame");
            }
        }
        if let Some((bytes, n)) = c.take() {
            out.push((bytes.to_vec(), n));
        }
        out
    }

    #[test]
    fn consecutive_segments_merge_into_one_offloaded_frame() {
        let opts = [1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3];
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let frames = vec![
            frame(1000, TCP_ACK, &data[..1400], &opts),
            frame(2400, TCP_ACK, &data[1400..2800], &opts),
            frame(3800, TCP_ACK | TCP_PSH, &data[2800..], &opts),
        ];
        let out = offer_all(&mut Coalescer::new(), &frames);
        assert_eq!(out.len(), 1);
        let (bytes, n) = &out[0];
        assert_eq!(*n, 3);
        let (hdr, f) = bytes.split_at(VNET_HDR_LEN);
        assert_eq!(hdr[0], VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(hdr[1], VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(u16::from_le_bytes([hdr[2], hdr[3]]) as usize, ETH + IP + 20 + opts.len());
        assert_eq!(u16::from_le_bytes([hdr[4], hdr[5]]), 1400);
        assert_eq!(u16::from_le_bytes([hdr[6], hdr[7]]) as usize, ETH + IP);
        assert_eq!(u16::from_le_bytes([hdr[8], hdr[9]]), 16);
        let headers = ETH + IP + 20 + opts.len();
        assert_eq!(&f[headers..], &data[..]);
        assert_eq!(u16::from_be_bytes([f[ETH + 2], f[ETH + 3]]) as usize, f.len() - ETH);
        assert_eq!(fold(sum(&f[ETH..ETH + IP])), 0xffff, "the IPv4 header checksum holds");
        assert_eq!(f[ETH + IP + 13], TCP_ACK | TCP_PSH, "the last segment's PSH is kept");
        // What the kernel does with NEEDS_CSUM: sum from csum_start (the
        // field holding the pseudo-header sum) and store the complement.
        // The result must be the checksum of the segment as one.
        let mut whole = f.to_vec();
        let c = !fold(sum(&whole[ETH + IP..]));
        whole[ETH + IP + 16..ETH + IP + 18].copy_from_slice(&c.to_be_bytes());
        assert_eq!(fold(tcp_sum(&whole)), 0xffff);
    }

    #[test]
    fn what_the_host_would_not_merge_leaves_as_it_came() {
        let p = [0x55u8; 1000];
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            ("a gap in the sequence", vec![frame(1, TCP_ACK, &p, &[]), frame(1002, TCP_ACK, &p, &[])]),
            ("a retransmission", vec![frame(1, TCP_ACK, &p, &[]), frame(1, TCP_ACK, &p, &[])]),
            ("a PSH ends the run", vec![frame(1, TCP_ACK | TCP_PSH, &p, &[]), frame(1001, TCP_ACK, &p, &[])]),
            ("a short segment ends the run", vec![frame(1, TCP_ACK, &p[..500], &[]), frame(501, TCP_ACK, &p, &[])]),
            ("a FIN", vec![frame(1, TCP_ACK, &p, &[]), frame(1001, TCP_ACK | 1, &p, &[])]),
            ("a bare ACK", vec![frame(1, TCP_ACK, &[], &[]), frame(1, TCP_ACK, &p, &[])]),
            ("other options", vec![frame(1, TCP_ACK, &p, &[1, 1, 1, 1]), frame(1001, TCP_ACK, &p, &[1, 1, 1, 0])]),
        ];
        for (what, frames) in cases {
            let out = offer_all(&mut Coalescer::new(), &frames);
            assert_eq!(out.len(), 2, "{what}");
            for ((bytes, n), f) in out.iter().zip(&frames) {
                assert_eq!(*n, 1, "{what}");
                assert_eq!(&bytes[..VNET_HDR_LEN], &[0; VNET_HDR_LEN], "{what}");
                assert_eq!(&bytes[VNET_HDR_LEN..], &f[..], "{what}: the frame is unchanged");
            }
        }
        // Not TCP/IPv4 at all: an ARP request, and a runt.
        let mut arp = vec![0xffu8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let out = offer_all(&mut Coalescer::new(), &[arp.clone(), arp.clone(), vec![1, 2, 3]]);
        assert_eq!(out.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [1, 1, 1]);
    }

    #[test]
    fn a_merged_frame_stays_within_an_ip_packet() {
        let p = vec![0xaau8; 1448];
        let frames: Vec<Vec<u8>> = (0..100u32).map(|i| frame(i * 1448, TCP_ACK, &p, &[])).collect();
        let out = offer_all(&mut Coalescer::new(), &frames);
        assert_eq!(out.iter().map(|(_, n)| n).sum::<u32>(), 100);
        assert_eq!(out[0].1, 45, "(65535 - 40) / 1448 segments fit one packet");
        for (bytes, _) in &out {
            assert!(bytes.len() - VNET_HDR_LEN - ETH <= IP_MAX);
        }
    }
}
