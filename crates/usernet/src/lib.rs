//! User-mode networking for the Skiff tender: the guest's NIC plugs into a
//! small virtual LAN inside the tender process, so reaching a unikernel
//! needs no TAP device and no root, like QEMU's user networking or
//! `docker run -p`.
//!
//! ```text
//!   guest 10.0.2.15 ── frames ── [gateway 10.0.2.2 / DNS 10.0.2.3: smoltcp]
//!                                     │ published ports: host listeners relayed in
//!                                     │ outbound: guest connections relayed out
//!                                     └── host sockets
//! ```
//!
//! The gateway is a smoltcp interface (host-side, std) on a pair of frame
//! queues. It answers the guest's DHCP (one lease: 10.0.2.15, router
//! 10.0.2.2, name server 10.0.2.3), forwards DNS to the host's name server,
//! relays each connection accepted on a published host port to the guest
//! (`--publish 8007:7`), and, when outbound traffic is on, relays the
//! guest's own TCP connections and UDP datagrams through host sockets; the
//! gateway address itself stands for the host's loopback. Bytes move
//! between host sockets and smoltcp's socket buffers without another copy,
//! and only when the other side has room, so backpressure, half-close and
//! resets carry through.
//!
//! Nothing here trusts the guest: frames are parsed by smoltcp, and every
//! resource has a bound ([`Limits`]): connections, UDP flows, queued frames,
//! DNS queries. The tender drives it from its network I/O thread:
//! [`UserNet::receive_frame`] for frames from the guest,
//! [`UserNet::poll`] to move data, [`UserNet::take_frame`] for frames to
//! the guest, and [`UserNet::poll_fds`]/[`UserNet::poll_delay`] to know
//! what to wait for.

#![forbid(unsafe_code)]

pub mod config;
mod device;
mod dhcp;
mod dns;
pub mod hold;

pub use config::{Config, Limits, Proto, Publish, PublishError};
use config::{DNS, GATEWAY, GATEWAY_MAC, GUEST, NETWORK, PREFIX, UDP_BUFFER};
use device::FrameQueues;
use hold::{Hold, HoldAction};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, HardwareAddress,
    IpAddress, IpCidr, IpListenEndpoint, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket,
};
use socket2::{Domain, SockRef, Socket, Type};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// The user network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UserNetError {
    /// A published host port is taken (or not ours to bind).
    #[error("cannot listen on {addr}/{proto} for --publish: {source}{}", taken_hint(.source))]
    Bind {
        /// The host address.
        addr: SocketAddr,
        /// TCP or UDP.
        proto: Proto,
        /// Why.
        source: io::Error,
    },
    /// The same host port is published twice.
    #[error("{0} is published twice")]
    Duplicate(String),
    /// A host socket could not be created.
    #[error("cannot create a host socket: {0}")]
    Socket(io::Error),
}

fn taken_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::AddrInUse => " (another program uses that port; pick another host port)",
        io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges; pick a port above 1024)",
        _ => "",
    }
}

/// Counters, for `--stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// TCP connections relayed from published ports.
    pub published_connections: u64,
    /// TCP connections relayed out for the guest.
    pub outbound_connections: u64,
    /// Outbound connections refused because every relay was taken.
    pub refused_connections: u64,
    /// Relays open now.
    pub open_connections: u64,
    /// Most relays open at once.
    pub peak_connections: u64,
    /// Times a published port stopped accepting because every relay was
    /// taken (its new connections waited in the listen backlog).
    pub limit_reached: u64,
    /// Guest-side closes that took over a second to be acknowledged (the
    /// gateway had to retransmit its FIN), or never were.
    pub slow_closes: u64,
    /// UDP datagrams relayed (both ways).
    pub datagrams: u64,
    /// DNS queries answered (forwarded or refused).
    pub dns_queries: u64,
    /// Frames dropped because a queue was full.
    pub dropped_frames: u64,
    /// Published connections that reached the guest before it listened
    /// and were held (a fresh SYN sent at least once).
    pub held_connections: u64,
    /// Held connections the guest never accepted within `Limits::hold`
    /// (their host side was reset).
    pub hold_timeouts: u64,
}

enum HostConn {
    /// A non-blocking connect in progress.
    Connecting(Socket),
    Connected(TcpStream),
    /// Briefly, while a connecting socket becomes a stream.
    Moving,
}

struct Relay {
    sock: SocketHandle,
    host: HostConn,
    /// For published connections: the gateway's port towards the guest.
    local_port: Option<u16>,
    /// For outbound connections: (guest port, destination, port).
    key: Option<(u16, Ipv4Addr, u16)>,
    /// The host side sent its FIN (read returned 0).
    host_eof: bool,
    /// We closed the guest side (FIN after the queued data).
    fin_sent: bool,
    /// We shut down the host side's writing half (after the guest's FIN).
    host_shut: bool,
    /// The guest sent its FIN.
    guest_fin: bool,
    /// What is left to do.
    end: End,
    /// For a published connection the guest has not accepted yet: when to
    /// send it a fresh SYN, and when to give up.
    hold: Option<Hold>,
    /// For published connections: the guest's port.
    guest_port: u16,
}

/// How far a relay is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Bytes or closes still to move.
    Open,
    /// Both sides are done: the socket and the host connection go.
    Done,
    /// The host side is done and the guest has sent everything (its FIN
    /// included); only the gateway's FIN waits for the guest's
    /// acknowledgement. The host connection goes and the slot is free; the
    /// socket finishes its close among the closing ones.
    HostDone,
}

/// A gateway socket finishing its close after its relay ended.
struct Closing {
    sock: SocketHandle,
    local_port: Option<u16>,
    since: Instant,
}

/// A host peer of a published UDP port.
struct UdpIn {
    listener: usize,
    peer: SocketAddr,
    sock: SocketHandle,
    last: Instant,
}

/// The guest's datagrams to one outside destination.
struct UdpOut {
    dst: Ipv4Addr,
    port: u16,
    sock: SocketHandle,
    /// Guest source port -> host socket connected to the destination.
    hosts: BTreeMap<u16, (UdpSocket, Instant)>,
}

/// How long an idle UDP flow lives.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// How long a closing socket may wait for the guest's acknowledgements
/// before it is given up (reset).
const CLOSING_TIMEOUT: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(10);

/// A close acknowledged later than this needed a retransmission: the
/// gateway's retransmission timeout is at least a second.
const SLOW_CLOSE: Duration = Duration::from_secs(1);

/// The virtual LAN.
pub struct UserNet {
    config: Config,
    started: Instant,
    iface: Interface,
    sockets: SocketSet<'static>,
    frames: FrameQueues,
    dhcp: SocketHandle,
    dns: SocketHandle,
    forwarder: dns::Forwarder,
    upstream: Option<(UdpSocket, SocketAddr)>,
    tcp_listeners: Vec<(TcpListener, u16)>,
    udp_listeners: Vec<(UdpSocket, u16)>,
    relays: Vec<Relay>,
    /// Whether every relay was taken at the last poll.
    at_limit: bool,
    closing: std::collections::VecDeque<Closing>,
    udp_in: Vec<UdpIn>,
    udp_out: Vec<UdpOut>,
    next_port: u16,
    stats: Stats,
    /// Scratch space for one datagram.
    scratch: Vec<u8>,
}

fn tcp_socket(buffer: usize) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; buffer]), tcp::SocketBuffer::new(vec![0; buffer]));
    s.set_nagle_enabled(false);
    s.set_timeout(Some(smoltcp::time::Duration::from_secs(120)));
    s
}

fn udp_socket() -> udp::Socket<'static> {
    udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; UDP_BUFFER]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; UDP_BUFFER]),
    )
}

/// A non-blocking host listener with a bounded backlog.
fn tcp_listener(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

fn would_block(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

/// Makes the close of a host connection a reset rather than a FIN: the
/// stream is dropped right after (a shutdown first would send a FIN, and the
/// client would read a clean end of stream before the reset).
fn reset(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// An ARP reply from the guest's MAC for its address, to the gateway.
fn guest_arp_reply(guest_mac: [u8; 6]) -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(guest_mac),
        source_protocol_addr: GUEST,
        target_hardware_addr: EthernetAddress(GATEWAY_MAC),
        target_protocol_addr: GATEWAY,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(guest_mac),
        dst_addr: EthernetAddress(GATEWAY_MAC),
        ethertype: EthernetProtocol::Arp,
    };
    let mut frame = vec![0u8; eth.buffer_len() + arp.buffer_len()];
    let mut e = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.emit(&mut e);
    arp.emit(&mut ArpPacket::new_unchecked(e.payload_mut()));
    frame
}

/// Moves what can move for one relay and says how far it is.
fn serve_relay(r: &mut Relay, s: &mut tcp::Socket<'static>) -> End {
    // Finish a pending outbound connect.
    if let HostConn::Connecting(sock) = &r.host {
        match sock.take_error() {
            Ok(None) => match sock.peer_addr() {
                Ok(_) => {
                    if let HostConn::Connecting(sock) = std::mem::replace(&mut r.host, HostConn::Moving) {
                        r.host = HostConn::Connected(TcpStream::from(sock));
                    }
                }
                Err(_) => return End::Open, // still connecting
            },
            // The destination refused: reset the guest's connection.
            _ => {
                s.abort();
                return End::Done;
            }
        }
    }
    let HostConn::Connected(host) = &mut r.host else { return End::Open };
    let mut failed = false;
    // Host -> guest, as far as the guest's window allows.
    while !r.host_eof && s.can_send() {
        let res = s.send(|buf| match host.read(buf) {
            Ok(0) => (0, Some(true)),
            Ok(n) => (n, None),
            Err(e) if would_block(&e) => (0, Some(false)),
            // Reset by the host client.
            Err(_) => {
                failed = true;
                (0, Some(false))
            }
        });
        match res {
            Ok(Some(true)) => r.host_eof = true,
            Ok(Some(false)) | Err(_) => break,
            Ok(None) => {}
        }
    }
    // Guest -> host, as far as the host socket takes it.
    while !failed && s.can_recv() {
        let res = s.recv(|buf| match host.write(buf) {
            Ok(n) => (n, n > 0),
            Err(e) if would_block(&e) => (0, false),
            Err(_) => {
                failed = true;
                (0, false)
            }
        });
        if !matches!(res, Ok(true)) {
            break;
        }
    }
    if failed {
        s.abort();
        reset(host);
        return End::Done;
    }
    // Half-closes, each way once the data before them is through.
    if r.host_eof && !r.fin_sent && s.may_send() {
        s.close();
        r.fin_sent = true;
    }
    r.guest_fin |=
        matches!(s.state(), tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait);
    // The guest's FIN goes to the host once its data has.
    if r.guest_fin && s.recv_queue() == 0 && !r.host_shut {
        let _ = host.shutdown(std::net::Shutdown::Write);
        r.host_shut = true;
    }
    let host_done = r.host_eof && r.host_shut;
    match s.state() {
        // Both sides closed and every byte delivered.
        tcp::State::Closed | tcp::State::TimeWait if host_done => End::Done,
        // Guest data still on its way to the host.
        tcp::State::Closed | tcp::State::TimeWait if r.guest_fin && s.recv_queue() > 0 => End::Open,
        // Reset by the guest, timed out, never connected, or closed while
        // the host still had bytes to send: reset the host side too.
        tcp::State::Closed | tcp::State::TimeWait => {
            reset(host);
            End::Done
        }
        // Only the gateway's FIN is left to be acknowledged.
        tcp::State::LastAck | tcp::State::Closing if host_done => End::HostDone,
        _ => End::Open,
    }
}

impl UserNet {
    /// Sets up the LAN and binds every published host port. Returns it and
    /// the addresses actually bound (port 0 becomes a real port).
    pub fn new(config: Config) -> Result<(UserNet, Vec<Publish>), UserNetError> {
        let mut tcp_listeners = Vec::new();
        let mut udp_listeners = Vec::new();
        let mut bound = Vec::new();
        for (i, p) in config.publish.iter().enumerate() {
            if p.host.port() != 0 && config.publish[..i].iter().any(|q| q.host == p.host && q.proto == p.proto) {
                return Err(UserNetError::Duplicate(format!("{}/{}", p.host, p.proto)));
            }
            let bind_err = |source| UserNetError::Bind { addr: p.host, proto: p.proto, source };
            let actual = match p.proto {
                Proto::Tcp => {
                    let l = tcp_listener(p.host, config.limits.backlog).map_err(bind_err)?;
                    let a = l.local_addr().map_err(bind_err)?;
                    tcp_listeners.push((l, p.guest_port));
                    a
                }
                Proto::Udp => {
                    let u = UdpSocket::bind(p.host).map_err(bind_err)?;
                    u.set_nonblocking(true).map_err(bind_err)?;
                    let a = u.local_addr().map_err(bind_err)?;
                    udp_listeners.push((u, p.guest_port));
                    a
                }
            };
            bound.push(Publish { host: actual, ..*p });
        }
        let upstream = match (config.outbound, config.upstream_dns) {
            (true, Some(server)) => {
                let any: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
                let u = UdpSocket::bind(any).map_err(UserNetError::Socket)?;
                u.set_nonblocking(true).map_err(UserNetError::Socket)?;
                Some((u, server))
            }
            _ => None,
        };
        let mut frames = FrameQueues::new(config.limits.queued_frames);
        // The gateway knows the one guest's MAC: it leases it the address.
        // Told so at once, it sends its first SYN to a guest without an
        // answer to ARP yet (it has not leased its address) instead of
        // waiting a second to ask again.
        frames.from_guest.push_back(guest_arp_reply(config.guest_mac));
        let mut iface_config = smoltcp::iface::Config::new(HardwareAddress::Ethernet(EthernetAddress(GATEWAY_MAC)));
        // The seed picks TCP initial sequence numbers and ports on the guest's
        // link; only the guest sees them, so the clock is enough.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        iface_config.random_seed = u64::from(std::process::id()) ^ now.as_nanos() as u64;
        let started = Instant::now();
        let mut iface = Interface::new(iface_config, &mut frames, smoltcp::time::Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(GATEWAY), PREFIX));
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(DNS), PREFIX));
        });
        // Accept packets for any address (the destinations of outbound
        // traffic), routed through the gateway itself.
        iface.set_any_ip(true);
        let _ = iface.routes_mut().add_default_ipv4_route(GATEWAY);
        let mut sockets = SocketSet::new(Vec::new());
        let mut dhcp = udp_socket();
        let _ = dhcp.bind(67);
        let dhcp = sockets.add(dhcp);
        let mut dns = udp_socket();
        let _ = dns.bind(IpListenEndpoint { addr: Some(IpAddress::Ipv4(DNS)), port: 53 });
        let dns = sockets.add(dns);
        let net = UserNet {
            config,
            started,
            iface,
            sockets,
            frames,
            dhcp,
            dns,
            forwarder: dns::Forwarder::default(),
            upstream,
            tcp_listeners,
            udp_listeners,
            relays: Vec::new(),
            at_limit: false,
            closing: std::collections::VecDeque::new(),
            udp_in: Vec::new(),
            udp_out: Vec::new(),
            next_port: 32768,
            stats: Stats::default(),
            scratch: vec![0; 65536],
        };
        Ok((net, bound))
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        Stats { dropped_frames: self.frames.dropped, open_connections: self.relays.len() as u64, ..self.stats }
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.started.elapsed().as_micros() as i64)
    }

    /// A gateway port for a new flow towards the guest, not used by any
    /// live one (the range wraps after 28,232 flows).
    fn port(&mut self) -> u16 {
        for _ in 32768..=60999 {
            let p = self.next_port;
            self.next_port = if p >= 60999 { 32768 } else { p + 1 };
            let used = self.relays.iter().any(|r| r.local_port == Some(p))
                || self.closing.iter().any(|c| c.local_port == Some(p))
                || self.udp_in.iter().any(|f| self.sockets.get::<udp::Socket>(f.sock).endpoint().port == p);
            if !used {
                return p;
            }
        }
        self.next_port
    }

    /// A frame from the guest.
    pub fn receive_frame(&mut self, frame: &[u8]) {
        self.intercept(frame);
        if self.frames.from_guest.len() < self.frames.limit {
            self.frames.from_guest.push_back(frame.to_vec());
        } else {
            self.frames.dropped += 1;
        }
    }

    /// The next frame for the guest, if any.
    pub fn take_frame(&mut self) -> Option<Vec<u8>> {
        self.frames.to_guest.pop_front()
    }

    /// Sees the guest open a connection or send a datagram to the outside,
    /// before the gateway's stack does, and prepares the relay.
    fn intercept(&mut self, frame: &[u8]) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else { return };
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            return;
        }
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else { return };
        let dst = ip.dst_addr();
        let lan = IpCidr::new(IpAddress::Ipv4(NETWORK), PREFIX);
        let local = lan.contains_addr(&IpAddress::Ipv4(dst)) && dst != GATEWAY;
        if local || dst.is_broadcast() || dst.is_multicast() || ip.src_addr() != GUEST {
            return;
        }
        match ip.next_header() {
            IpProtocol::Tcp => {
                let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else { return };
                if tcp.syn() && !tcp.ack() {
                    self.open_outbound_tcp(tcp.src_port(), dst, tcp.dst_port());
                }
            }
            IpProtocol::Udp => {
                let Ok(udp) = UdpPacket::new_checked(ip.payload()) else { return };
                if dst == GATEWAY && self.udp_in.iter().any(|f| self.bound_port(f.sock) == udp.dst_port()) {
                    return; // a reply to a published port's peer
                }
                self.open_outbound_udp(udp.src_port(), dst, udp.dst_port());
            }
            _ => {}
        }
    }

    fn bound_port(&self, h: SocketHandle) -> u16 {
        self.sockets.get::<udp::Socket>(h).endpoint().port
    }

    /// Where the host side of an outbound flow goes: the gateway stands for
    /// the host's loopback.
    fn host_target(dst: Ipv4Addr, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(if dst == GATEWAY { Ipv4Addr::LOCALHOST } else { dst }), port)
    }

    fn open_outbound_tcp(&mut self, guest_port: u16, dst: Ipv4Addr, port: u16) {
        let key = (guest_port, dst, port);
        if !self.config.outbound || self.relays.iter().any(|r| r.key == Some(key)) {
            return;
        }
        if self.relays.len() >= self.config.limits.tcp_connections {
            self.stats.refused_connections += 1;
            return;
        }
        let target = Self::host_target(dst, port);
        let Ok(host) = Socket::new(Domain::for_address(target), Type::STREAM, None) else { return };
        if host.set_nonblocking(true).is_err() {
            return;
        }
        match host.connect(&target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) || would_block(&e) => {}
            // Unreachable right away: no listener, so the guest gets a reset.
            Err(_) => return,
        }
        let mut s = tcp_socket(self.config.limits.tcp_buffer);
        if s.listen(IpListenEndpoint { addr: Some(IpAddress::Ipv4(dst)), port }).is_err() {
            return;
        }
        let sock = self.sockets.add(s);
        self.stats.outbound_connections += 1;
        self.relays.push(Relay {
            sock,
            host: HostConn::Connecting(host),
            local_port: None,
            key: Some(key),
            host_eof: false,
            fin_sent: false,
            host_shut: false,
            guest_fin: false,
            end: End::Open,
            hold: None,
            guest_port: 0,
        });
        self.note_peak();
    }

    fn open_outbound_udp(&mut self, guest_port: u16, dst: Ipv4Addr, port: u16) {
        if !self.config.outbound {
            return;
        }
        let flows: usize = self.udp_in.len() + self.udp_out.iter().map(|o| o.hosts.len()).sum::<usize>();
        let idx = match self.udp_out.iter().position(|o| o.dst == dst && o.port == port) {
            Some(i) => i,
            None => {
                let mut s = udp_socket();
                if s.bind(IpListenEndpoint { addr: Some(IpAddress::Ipv4(dst)), port }).is_err() {
                    return;
                }
                let sock = self.sockets.add(s);
                self.udp_out.push(UdpOut { dst, port, sock, hosts: BTreeMap::new() });
                self.udp_out.len() - 1
            }
        };
        if self.udp_out[idx].hosts.contains_key(&guest_port) {
            return;
        }
        if flows >= self.config.limits.udp_flows {
            self.evict_udp_flow();
        }
        let target = Self::host_target(dst, port);
        let any: SocketAddr = "0.0.0.0:0".parse().expect("literal");
        let Ok(host) = UdpSocket::bind(any) else { return };
        if host.set_nonblocking(true).is_err() || host.connect(target).is_err() {
            return;
        }
        self.udp_out[idx].hosts.insert(guest_port, (host, Instant::now()));
    }

    /// Drops the least recently used UDP flow.
    fn evict_udp_flow(&mut self) {
        let oldest_in = self.udp_in.iter().enumerate().min_by_key(|(_, f)| f.last).map(|(i, f)| (f.last, i));
        let oldest_out = self
            .udp_out
            .iter()
            .enumerate()
            .flat_map(|(i, o)| o.hosts.iter().map(move |(p, (_, t))| (*t, i, *p)))
            .min_by_key(|(t, _, _)| *t);
        match (oldest_in, oldest_out) {
            (Some((t_in, i)), Some((t_out, _, _))) if t_in <= t_out => self.remove_udp_in(i),
            (Some((_, i)), None) => self.remove_udp_in(i),
            (_, Some((_, i, p))) => {
                self.udp_out[i].hosts.remove(&p);
            }
            (None, None) => {}
        }
    }

    fn remove_udp_in(&mut self, i: usize) {
        let f = self.udp_in.swap_remove(i);
        self.sockets.remove(f.sock);
    }

    /// Moves everything that can move: host connections and datagrams,
    /// frames through the gateway's stack, relays in both directions.
    pub fn poll(&mut self) {
        self.accept_published();
        self.receive_published_udp();
        let now = self.now();
        self.iface.poll(now, &mut self.frames, &mut self.sockets);
        self.serve_relays();
        self.serve_udp();
        self.serve_dhcp();
        self.serve_dns();
        self.iface.poll(now, &mut self.frames, &mut self.sockets);
        self.reap();
    }

    /// Accepts host connections on the published ports while relays are
    /// free. With every relay taken, new connections stay in the listen
    /// backlog until one frees: nothing is accepted only to be dropped.
    fn accept_published(&mut self) {
        for i in 0..self.tcp_listeners.len() {
            while self.relays.len() < self.config.limits.tcp_connections {
                let stream = match self.tcp_listeners[i].0.accept() {
                    Ok((c, _)) => c,
                    Err(_) => break,
                };
                if stream.set_nonblocking(true).is_err() {
                    reset(&stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let guest_port = self.tcp_listeners[i].1;
                let local_port = self.port();
                let mut s = tcp_socket(self.config.limits.tcp_buffer);
                let cx = self.iface.context();
                if s.connect(cx, (IpAddress::Ipv4(GUEST), guest_port), (IpAddress::Ipv4(GATEWAY), local_port)).is_err()
                {
                    reset(&stream);
                    continue;
                }
                let sock = self.sockets.add(s);
                self.stats.published_connections += 1;
                self.relays.push(Relay {
                    sock,
                    host: HostConn::Connected(stream),
                    local_port: Some(local_port),
                    key: None,
                    host_eof: false,
                    fin_sent: false,
                    host_shut: false,
                    guest_fin: false,
                    end: End::Open,
                    hold: Some(Hold::new(Instant::now())),
                    guest_port,
                });
                self.note_peak();
            }
        }
        let at_limit = self.relays.len() >= self.config.limits.tcp_connections;
        if at_limit && !self.at_limit && !self.tcp_listeners.is_empty() {
            self.stats.limit_reached += 1;
        }
        self.at_limit = at_limit;
    }

    fn note_peak(&mut self) {
        self.stats.peak_connections = self.stats.peak_connections.max(self.relays.len() as u64);
    }

    fn receive_published_udp(&mut self) {
        let mut buf = std::mem::take(&mut self.scratch);
        for i in 0..self.udp_listeners.len() {
            while let Ok((n, peer)) = self.udp_listeners[i].0.recv_from(&mut buf) {
                let guest_port = self.udp_listeners[i].1;
                let flow = match self.udp_in.iter().position(|f| f.listener == i && f.peer == peer) {
                    Some(f) => f,
                    None => {
                        if self.udp_in.len() + self.udp_out.iter().map(|o| o.hosts.len()).sum::<usize>()
                            >= self.config.limits.udp_flows
                        {
                            self.evict_udp_flow();
                        }
                        let mut s = udp_socket();
                        let port = self.port();
                        if s.bind(IpListenEndpoint { addr: Some(IpAddress::Ipv4(GATEWAY)), port }).is_err() {
                            continue;
                        }
                        let sock = self.sockets.add(s);
                        self.udp_in.push(UdpIn { listener: i, peer, sock, last: Instant::now() });
                        self.udp_in.len() - 1
                    }
                };
                let f = &mut self.udp_in[flow];
                f.last = Instant::now();
                let s = self.sockets.get_mut::<udp::Socket>(f.sock);
                if s.send_slice(&buf[..n], (IpAddress::Ipv4(GUEST), guest_port)).is_ok() {
                    self.stats.datagrams += 1;
                }
            }
        }
        self.scratch = buf;
    }

    fn serve_relays(&mut self) {
        let now = Instant::now();
        let timeout = self.config.limits.hold;
        let mut retry = Vec::new();
        for (i, r) in self.relays.iter_mut().enumerate() {
            let s = self.sockets.get_mut::<tcp::Socket>(r.sock);
            if let Some(hold) = &mut r.hold {
                // Not accepted yet: the SYN is unanswered or was refused.
                if matches!(s.state(), tcp::State::SynSent | tcp::State::Closed) {
                    match hold.poll(now, timeout, s.state() == tcp::State::Closed) {
                        HoldAction::Wait => continue,
                        HoldAction::Retry => {
                            if hold.retries() == 1 {
                                self.stats.held_connections += 1;
                            }
                            retry.push(i);
                            continue;
                        }
                        HoldAction::GiveUp if !timeout.is_zero() => {
                            // Held as long as allowed: the host side is
                            // reset, as a refused connection is.
                            self.stats.hold_timeouts += u64::from(hold.retries() > 0);
                            log::debug!(
                                "user network: guest port {} accepted no connection within {:?}",
                                r.guest_port,
                                hold.held(now)
                            );
                            s.abort();
                            if let HostConn::Connected(host) = &r.host {
                                reset(host);
                            }
                            r.hold = None;
                            r.end = End::Done;
                            continue;
                        }
                        // No hold (a zero timeout): TCP's own timers.
                        HoldAction::GiveUp => {}
                    }
                }
                r.hold = None;
            }
            r.end = serve_relay(r, s);
        }
        for i in retry {
            self.resend_syn(i);
        }
    }

    /// Starts a held relay's gateway socket again from a new local port,
    /// so a fresh SYN goes to the guest at the next poll. The socket (and
    /// its buffers: no second pair is allocated, so the memory bound
    /// holds) is reused; its old attempt goes silently: the guest either
    /// never saw that SYN or refused it.
    fn resend_syn(&mut self, i: usize) {
        let (handle, guest_port) = (self.relays[i].sock, self.relays[i].guest_port);
        let local_port = self.port();
        let guest = (IpAddress::Ipv4(GUEST), guest_port);
        let s = self.sockets.get_mut::<tcp::Socket>(handle);
        s.abort();
        if s.connect(self.iface.context(), guest, (IpAddress::Ipv4(GATEWAY), local_port)).is_err() {
            // Closed now: the relay ends at its next turn as a refused
            // connection does.
            return;
        }
        self.relays[i].local_port = Some(local_port);
    }

    /// The guest started listening (the tender saw its runtime say so):
    /// held connections try again at once rather than at their next step.
    pub fn guest_listens(&mut self) {
        self.hurry_held();
    }

    /// Held connections send their next SYN at once: the guest can now
    /// answer (it listens, or it has just been given its address, so the
    /// SYNs before went nowhere).
    fn hurry_held(&mut self) {
        let now = Instant::now();
        for hold in self.relays.iter_mut().filter_map(|r| r.hold.as_mut()) {
            hold.hurry(now);
        }
    }

    /// The published TCP ports: host address and guest port.
    pub fn published_tcp(&self) -> Vec<(SocketAddr, u16)> {
        self.tcp_listeners.iter().filter_map(|(l, port)| Some((l.local_addr().ok()?, *port))).collect()
    }

    /// Published connections waiting for the guest to accept them.
    pub fn held(&self) -> usize {
        self.relays.iter().filter(|r| r.hold.is_some()).count()
    }

    fn serve_udp(&mut self) {
        let mut buf = std::mem::take(&mut self.scratch);
        let now = Instant::now();
        // Guest -> host peers of published ports.
        for f in &mut self.udp_in {
            let s = self.sockets.get_mut::<udp::Socket>(f.sock);
            while let Ok((n, _)) = s.recv_slice(&mut buf) {
                if self.udp_listeners[f.listener].0.send_to(&buf[..n], f.peer).is_ok() {
                    self.stats.datagrams += 1;
                    f.last = now;
                }
            }
        }
        for o in &mut self.udp_out {
            let s = self.sockets.get_mut::<udp::Socket>(o.sock);
            // Guest -> outside.
            while let Ok((n, meta)) = s.recv_slice(&mut buf) {
                if let Some((host, last)) = o.hosts.get_mut(&meta.endpoint.port)
                    && host.send(&buf[..n]).is_ok()
                {
                    *last = now;
                    self.stats.datagrams += 1;
                }
            }
            // Outside -> guest.
            for (guest_port, (host, last)) in &mut o.hosts {
                while let Ok(n) = host.recv(&mut buf) {
                    if s.send_slice(&buf[..n], (IpAddress::Ipv4(GUEST), *guest_port)).is_ok() {
                        *last = now;
                        self.stats.datagrams += 1;
                    }
                }
            }
            o.hosts.retain(|_, (_, last)| now.duration_since(*last) < UDP_IDLE);
        }
        let expired: Vec<usize> =
            (0..self.udp_in.len()).rev().filter(|&i| now.duration_since(self.udp_in[i].last) >= UDP_IDLE).collect();
        for i in expired {
            self.remove_udp_in(i);
        }
        self.scratch = buf;
    }

    fn serve_dhcp(&mut self) {
        let mut buf = [0u8; 1500];
        let mut leased = false;
        let s = self.sockets.get_mut::<udp::Socket>(self.dhcp);
        while let Ok((n, _)) = s.recv_slice(&mut buf) {
            if let Some(reply) = dhcp::answer(&buf[..n]) {
                let meta = udp::UdpMetadata {
                    endpoint: (IpAddress::Ipv4(Ipv4Addr::BROADCAST), 68).into(),
                    local_address: Some(IpAddress::Ipv4(GATEWAY)),
                    meta: Default::default(),
                };
                leased |= s.send_slice(&reply, meta).is_ok() && dhcp::is_ack(&reply);
            }
        }
        // The acknowledgement goes out before the SYNs (its socket comes
        // first), so the guest has its address when they arrive.
        if leased {
            self.hurry_held();
        }
    }

    fn serve_dns(&mut self) {
        let mut buf = [0u8; 4096];
        let now = Instant::now();
        let limit = self.config.limits.dns_queries;
        let s = self.sockets.get_mut::<udp::Socket>(self.dns);
        while let Ok((n, meta)) = s.recv_slice(&mut buf) {
            let query = &mut buf[..n];
            let Some(guest_id) = dns::id(query) else { continue };
            self.stats.dns_queries += 1;
            let forwarded = match &self.upstream {
                Some((host, server)) => match self.forwarder.forward(meta.endpoint.port, guest_id, limit, now) {
                    Some(id) => {
                        dns::set_id(query, id);
                        host.send_to(query, *server).is_ok()
                    }
                    None => false,
                },
                None => false,
            };
            if !forwarded && let Some(mut answer) = dns::refused(query) {
                dns::set_id(&mut answer, guest_id);
                let _ = s.send_slice(&answer, meta.endpoint);
            }
        }
        if let Some((host, server)) = &self.upstream {
            while let Ok((n, from)) = host.recv_from(&mut buf) {
                if from != *server {
                    continue;
                }
                let answer = &mut buf[..n];
                let Some(id) = dns::id(answer) else { continue };
                let Some(p) = self.forwarder.pending.remove(&id) else { continue };
                dns::set_id(answer, p.guest_id);
                let _ = s.send_slice(answer, (IpAddress::Ipv4(GUEST), p.guest_port));
            }
        }
    }

    /// Frees the relays whose both sides are done, hands the closes still
    /// in flight to the closing sockets, and drops the closing sockets that
    /// are through.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.relays.len() {
            match self.relays[i].end {
                End::Open => i += 1,
                End::Done => {
                    let r = self.relays.swap_remove(i);
                    self.sockets.remove(r.sock);
                }
                End::HostDone => {
                    let r = self.relays.swap_remove(i);
                    if self.closing.len() >= self.config.limits.closing
                        && let Some(oldest) = self.closing.pop_front()
                    {
                        self.sockets.get_mut::<tcp::Socket>(oldest.sock).abort();
                        self.sockets.remove(oldest.sock);
                        self.stats.slow_closes += 1;
                    }
                    self.sockets.get_mut::<tcp::Socket>(r.sock).set_timeout(Some(CLOSING_TIMEOUT));
                    self.closing.push_back(Closing { sock: r.sock, local_port: r.local_port, since: Instant::now() });
                }
            }
        }
        let (sockets, stats) = (&mut self.sockets, &mut self.stats);
        self.closing.retain(|c| {
            // TIME-WAIT: the guest acknowledged our FIN and sent its own;
            // nothing is left that the socket could still deliver.
            let through =
                matches!(sockets.get::<tcp::Socket>(c.sock).state(), tcp::State::Closed | tcp::State::TimeWait);
            if through {
                if c.since.elapsed() >= SLOW_CLOSE {
                    stats.slow_closes += 1;
                }
                sockets.remove(c.sock);
            }
            !through
        });
    }

    /// Host descriptors to wait on, with whether to wait for writability.
    pub fn poll_fds(&self) -> Vec<(RawFd, bool)> {
        let mut fds: Vec<(RawFd, bool)> = Vec::new();
        // With every relay taken, listeners are left alone: their
        // connections wait in the backlog until a relay frees.
        if self.relays.len() < self.config.limits.tcp_connections {
            fds.extend(self.tcp_listeners.iter().map(|(l, _)| (l.as_raw_fd(), false)));
        }
        fds.extend(self.udp_listeners.iter().map(|(u, _)| (u.as_raw_fd(), false)));
        if let Some((u, _)) = &self.upstream {
            fds.push((u.as_raw_fd(), false));
        }
        for r in &self.relays {
            let s = self.sockets.get::<tcp::Socket>(r.sock);
            match &r.host {
                HostConn::Connecting(sock) => fds.push((sock.as_raw_fd(), true)),
                HostConn::Moving => {}
                HostConn::Connected(host) => {
                    // Read interest only when the guest's window has room;
                    // write interest only when guest data waits for the host.
                    if !r.host_eof && s.can_send() {
                        fds.push((host.as_raw_fd(), false));
                    }
                    if s.can_recv() {
                        fds.push((host.as_raw_fd(), true));
                    }
                }
            }
        }
        for o in &self.udp_out {
            fds.extend(o.hosts.values().map(|(h, _)| (h.as_raw_fd(), false)));
        }
        fds
    }

    /// When the gateway's stack needs polling again even if nothing
    /// arrives (retransmissions, timers).
    pub fn poll_delay(&mut self) -> Option<Duration> {
        let now = self.now();
        let stack = self.iface.poll_delay(now, &self.sockets).map(|d| Duration::from_micros(d.total_micros()));
        let timeout = self.config.limits.hold;
        let held = self.relays.iter().filter_map(|r| r.hold.as_ref()).map(|h| h.deadline(timeout)).min();
        let held = held.map(|at| at.saturating_duration_since(Instant::now()));
        match (stack, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether frames wait for the guest.
    pub fn has_frames(&self) -> bool {
        !self.frames.to_guest.is_empty()
    }
}
