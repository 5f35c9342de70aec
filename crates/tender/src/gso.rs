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
//! [`Coalescer`] merges only what the host's receive offload would merge
//! (its GRO rules): IPv4 without options or fragments, the same addresses,
//! ports, TOS, TTL, acknowledgement, window and TCP options, consecutive
//! sequence numbers, flags ACK with PSH at most on the last, every segment
//! but the last exactly as long as the first, which is at least 536 bytes
//! (so a guest cannot have the host cut one write into thousands of tiny
//! segments). Anything else (IPv6, ARP, SYN/FIN/RST, a retransmission)
//! leaves as it came, with an empty header. The guest's own checksums are
//! kept on single frames; a merged frame carries a recomputed IPv4 header
//! checksum and the TCP pseudo-header sum with `NEEDS_CSUM`, as a NIC with
//! checksum offload receives it.
//!
//! Nothing is read from guest memory here: frames are already copies.

/// Bytes of `struct virtio_net_hdr` (the size a TAP device expects unless
/// told otherwise with `TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 10;

const ETH: usize = 14;
const IP: usize = 20;
/// The largest IPv4 packet, and so the largest merged segment.
const IP_MAX: usize = 65535;
/// The shortest first segment a run starts with (the default MSS of RFC
/// 879): a guest cannot have the host cut one write into thousands of tiny
/// segments.
const MIN_MSS: usize = 536;
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

/// Builds TAP writes: each a virtio-net header and a frame, either a frame
/// as the guest sent it or a run of one connection's TCP segments merged.
/// Up to [`RUNS`] connections are merged at once, since a server's
/// segments for several connections come interleaved (the stack sends a
/// segment per connection in turn); a connection's own frames keep their
/// order.
pub struct Coalescer {
    runs: Vec<Run>,
    /// The run the last refused frame waits for, to be written first.
    blocker: Option<usize>,
    /// Runs started so far (the newest run makes room for a new one).
    started: u64,
}

/// Connections merged at once.
pub const RUNS: usize = 16;

impl Default for Coalescer {
    fn default() -> Coalescer {
        Coalescer::new()
    }
}

impl Coalescer {
    /// An empty coalescer (its buffers are allocated as connections come
    /// and touched only as they fill).
    pub fn new() -> Coalescer {
        Coalescer { runs: Vec::new(), blocker: None, started: 0 }
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.runs.iter().all(|r| r.len == 0)
    }

    /// Takes `frame` if it can: when it continues its connection's run, or
    /// starts one; a frame that merges with nothing only when the
    /// coalescer is empty. `false`: write the run [`Coalescer::take`]
    /// gives next and offer the frame again (an empty coalescer takes any
    /// frame).
    pub fn offer(&mut self, frame: &[u8]) -> bool {
        self.blocker = None;
        let Some(s) = segment(frame) else {
            // After everything held: it may be of a connection held here.
            if let Some(i) = self.runs.iter().position(|r| r.len > 0) {
                self.blocker = Some(i);
                return false;
            }
            if self.runs.is_empty() {
                self.runs.push(Run::new());
            }
            self.started += 1;
            self.runs[0].start(frame, None, self.started);
            return true;
        };
        if let Some(i) = self.runs.iter().position(|r| r.len > 0 && r.same_connection(frame)) {
            if self.runs[i].append(frame, &s) {
                return true;
            }
            self.blocker = Some(i);
            return false;
        }
        let free = match self.runs.iter().position(|r| r.len == 0) {
            Some(i) => i,
            None if self.runs.len() < RUNS => {
                self.runs.push(Run::new());
                self.runs.len() - 1
            }
            None => {
                // The newest run makes room: with more connections sending
                // in turn than there are runs, the others still merge
                // (the oldest would be the next one needed each time).
                self.blocker = self.runs.iter().enumerate().max_by_key(|(_, r)| r.started).map(|(i, _)| i);
                return false;
            }
        };
        self.started += 1;
        self.runs[free].start(frame, Some(&s), self.started);
        true
    }

    /// One write's bytes (the header and the frame) and the number of the
    /// guest's frames it carries, taken out of the coalescer: the run a
    /// refused frame waits for, else any; `None` when it is empty.
    pub fn take(&mut self) -> Option<(&[u8], u32)> {
        let i = match self.blocker.take() {
            Some(i) if self.runs[i].len > 0 => i,
            _ => self.runs.iter().position(|r| r.len > 0)?,
        };
        Some(self.runs[i].take())
    }
}

/// One connection's run of segments, or one frame as it came.
struct Run {
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
    /// When it was started, in runs started by its coalescer.
    started: u64,
}

impl Run {
    fn new() -> Run {
        Run {
            buf: vec![0u8; VNET_HDR_LEN + ETH + IP_MAX].into_boxed_slice(),
            len: 0,
            segments: 0,
            mss: 0,
            next_seq: 0,
            open: false,
            started: 0,
        }
    }

    fn frame(&self) -> &[u8] {
        &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.len]
    }

    /// Starts with `frame`, which is the TCP segment `s`, or which cannot
    /// be merged (`None`).
    fn start(&mut self, frame: &[u8], s: Option<&Segment>, started: u64) {
        self.started = started;
        self.buf[VNET_HDR_LEN..VNET_HDR_LEN + frame.len()].copy_from_slice(frame);
        self.len = frame.len();
        self.segments = 1;
        match s {
            Some(s) => {
                self.mss = s.payload;
                self.next_seq = s.seq.wrapping_add(s.payload as u32);
                self.open = s.flags & TCP_PSH == 0 && s.payload >= MIN_MSS;
            }
            None => self.open = false,
        }
    }

    /// Whether `frame` (a TCP/IPv4 segment) belongs to this run's
    /// connection: the same Ethernet header, addresses and ports.
    fn same_connection(&self, frame: &[u8]) -> bool {
        let first = self.frame();
        let tcp = ETH + IP;
        first.len() >= tcp + 4
            && frame[..ETH] == first[..ETH]
            && frame[ETH + 12..ETH + 20] == first[ETH + 12..ETH + 20]
            && frame[tcp..tcp + 4] == first[tcp..tcp + 4]
    }

    /// Appends the segment `frame` (of this run's connection) if it
    /// continues the run.
    fn append(&mut self, frame: &[u8], s: &Segment) -> bool {
        if !self.open {
            return false;
        }
        let first = self.frame();
        let tcp = ETH + IP;
        // The TCP header lengths are equal when byte 12 is: the first frame
        // holds at least as many bytes as this one's headers.
        let same = first[ETH + 1] == frame[ETH + 1] // TOS
            && first[ETH + 6] == frame[ETH + 6] // DF
            && first[ETH + 8..ETH + 10] == frame[ETH + 8..ETH + 10] // TTL, protocol
            // Acknowledgement, header length, window, options.
            && first[tcp + 8..tcp + 13] == frame[tcp + 8..tcp + 13]
            && first[tcp + 14..tcp + 16] == frame[tcp + 14..tcp + 16]
            && first[tcp + 20..s.headers] == frame[tcp + 20..s.headers];
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

    /// The bytes to write, with the header filled in; empties the run.
    fn take(&mut self) -> (&[u8], u32) {
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
        (&self.buf[..VNET_HDR_LEN + len], segments)
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
        frame_to(40000, seq, flags, payload, options)
    }

    /// The same, to another client port.
    fn frame_to(port: u16, seq: u32, flags: u8, payload: &[u8], options: &[u8]) -> Vec<u8> {
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
        f[t + 2..t + 4].copy_from_slice(&port.to_be_bytes());
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
            while !c.offer(f) {
                let (bytes, n) = c.take().expect("a refused frame waits for a run");
                out.push((bytes.to_vec(), n));
            }
        }
        while let Some((bytes, n)) = c.take() {
            out.push((bytes.to_vec(), n));
        }
        assert!(c.is_empty());
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
            ("tiny segments", vec![frame(1, TCP_ACK, &p[..100], &[]), frame(101, TCP_ACK, &p[..100], &[])]),
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
    fn interleaved_connections_merge_each_in_order() {
        let p = [0x33u8; 1000];
        // Three connections' segments in turn, as a server's stack sends
        // them; then more connections than runs.
        let mut frames = Vec::new();
        for i in 0..4u32 {
            for port in 1..=3 {
                frames.push(frame_to(port, i * 1000, TCP_ACK, &p, &[]));
            }
        }
        let out = offer_all(&mut Coalescer::new(), &frames);
        assert_eq!(out.len(), 3);
        for (n, (bytes, segments)) in out.iter().enumerate() {
            assert_eq!(*segments, 4);
            let f = &bytes[VNET_HDR_LEN..];
            assert_eq!(u16::from_be_bytes([f[ETH + IP + 2], f[ETH + IP + 3]]), n as u16 + 1);
            assert_eq!(f.len(), ETH + IP + 20 + 4000);
        }
        let many: Vec<Vec<u8>> = (0..4u32)
            .flat_map(|i| (1..=RUNS as u16 + 4).map(move |port| frame_to(port, i * 1000, TCP_ACK, &[1; 1000], &[])))
            .collect();
        let out = offer_all(&mut Coalescer::new(), &many);
        assert_eq!(out.iter().map(|(_, n)| n).sum::<u32>(), many.len() as u32, "nothing lost");
        assert!(out.len() < many.len(), "still merged");
        for port in 1..=RUNS as u16 + 4 {
            let seqs: Vec<u32> = out
                .iter()
                .map(|(b, _)| &b[VNET_HDR_LEN..])
                .filter(|f| f[ETH + IP + 2..ETH + IP + 4] == port.to_be_bytes())
                .map(|f| u32::from_be_bytes(f[ETH + IP + 4..ETH + IP + 8].try_into().unwrap()))
                .collect();
            assert!(seqs.is_sorted() && seqs[0] == 0, "port {port}: {seqs:?}");
        }
        // A frame that merges with nothing (a FIN) after a connection's
        // segments leaves after them.
        let fin = frame_to(1, 2000, TCP_ACK | 1, &[], &[]);
        let out = offer_all(
            &mut Coalescer::new(),
            &[frame_to(1, 0, TCP_ACK, &p, &[]), frame_to(1, 1000, TCP_ACK, &p, &[]), fin.clone()],
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].0[VNET_HDR_LEN..], fin[..]);
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
