//! The container's network: what the image's NIC is connected to.
//!
//! An image declares at most one NIC for a container ([`declared_nic`],
//! checked by `create` before anything starts). Inside the container's
//! network namespace, [`connect`] joins it to the interface the engine set
//! up there (podman's and CNI's `eth0`, with its address) the way urunc
//! does: a TAP device for the tender, and a `tc` ingress qdisc on each of
//! the two with one `mirred egress redirect` filter, so every frame
//! arriving on `eth0` leaves through the TAP device (to the guest) and
//! every frame the guest sends leaves through `eth0`. `eth0` keeps its
//! address and MAC but sees no frame: it is only a pipe. The guest takes
//! `eth0`'s MAC (so the neighbours' ARP caches stay right) and its
//! address, prefix, gateway and the DNS servers as its network options
//! (`--ipv4 A/P --gateway G --dns D`, read by `skiff::net::NetConfig`).
//!
//! No frame is lost while this is set up, so a client that connects from
//! the moment the engine's port forwarding exists gets its answer from the
//! guest as soon as it listens (else its kernel sends the SYN again only
//! after a second):
//!
//! - the TAP device is attached (its descriptor held, so it has a carrier)
//!   before any redirect to it exists, and the tender takes that
//!   descriptor over: frames that arrive while the container is created
//!   and started wait on the device until the guest reads them (a TAP
//!   device nobody holds drops them);
//! - the TAP device gets its ingress qdisc while it is down: grafting a
//!   qdisc on a device that is up drops what it sends meanwhile;
//! - `eth0`'s ingress qdisc must be grafted while it is up, and `eth0`'s
//!   own kernel answers (with a reset, as nothing listens there) until the
//!   redirect exists; answers sent while the qdisc is grafted are dropped.
//!   So the frames `eth0` receives meanwhile are watched through a packet
//!   socket, and the SYNs and ARP requests whose answer did not leave
//!   ([`unanswered`]) are sent on to the guest once the redirect exists.
//!
//! Everything goes through rtnetlink (`netlink-packet-route` over a
//! blocking `netlink-sys` socket); making the TAP device needs an `ioctl`,
//! which the caller does ([`connect`]'s `make_tap`).

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption, TcActionOption, TcActionType,
    TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key,
    TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use skiff_tender::elf::DeclaredDevice;
use skiff_tender::net::NicSpec;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;

/// The TAP device made in the container's network namespace.
pub const TAP_NAME: &str = "skiff0";
/// The smallest MTU the guest takes (IPv6's minimum).
pub const MIN_MTU: u32 = 1280;
/// At most this many DNS servers are passed on (as a C resolver reads).
pub const MAX_DNS: usize = 3;

/// The image's NIC cannot be connected.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// More than one NIC: a container has one network interface.
    #[error(
        "this image declares {} NICs ({}): a container connects one; build the service with one NIC \
         (#[skiff::main(net = \"service\")])",
        .0.len(), .0.join(", ")
    )]
    TooMany(Vec<String>),
    /// No interface in the namespace (`podman --network none`).
    #[error(
        "this image declares the NIC {0:?}, but the container's network namespace has no network interface to \
         connect it to (was it started with --network none?): give the container a network, e.g. podman's \
         default bridge"
    )]
    NoInterface(String),
    /// The container would share the runtime's (the host's) network
    /// namespace, whose interfaces are not the container's to take.
    #[error(
        "this image declares the NIC {0:?}, but the container shares the host's network namespace (--network \
         host?): skiff-oci joins a NIC only to a network namespace of the container's own"
    )]
    HostNamespace(String),
    /// The interface has no address the guest could take.
    #[error(
        "the container's interface {iface} has no IPv4 or global IPv6 address for the NIC {nic:?}: the engine's \
         network set-up did not give it one"
    )]
    NoAddress {
        /// The image's NIC.
        nic: String,
        /// The interface.
        iface: String,
    },
    /// The interface's MTU is too small for the guest's IPv6 (1280).
    #[error(
        "the container's interface {iface} has an MTU of {mtu}: the guest needs at least {MIN_MTU} \
         (IPv6's minimum); give the network a larger MTU"
    )]
    SmallMtu {
        /// The interface.
        iface: String,
        /// Its MTU.
        mtu: u32,
    },
    /// The interface has no Ethernet address.
    #[error("the container's interface {0} has no Ethernet address: only Ethernet interfaces can be connected")]
    NotEthernet(String),
    /// A netlink request failed.
    #[error("cannot {what}: {source}")]
    Netlink {
        /// What was asked.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The kernel sent something that is not netlink's answer.
    #[error("cannot {0}: the kernel's answer could not be read")]
    Answer(String),
    /// The TAP device could not be made.
    #[error("cannot make the TAP device {name} in the container's network namespace: {source}")]
    Tap {
        /// Its name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// The frames of the interface could not be watched or passed on while
    /// the redirect was set up.
    #[error("cannot {what} while {iface} is joined to {TAP_NAME}: {source}")]
    Watch {
        /// What was done.
        what: &'static str,
        /// The interface.
        iface: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The system calls [`connect`] needs besides netlink (the runtime's own,
/// with `unsafe`): the TAP device's `ioctl`s and packet sockets.
pub trait Links {
    /// Makes (or reuses) the persistent TAP device `name` and returns a
    /// descriptor attached to it.
    fn make_tap(&mut self, name: &str) -> std::io::Result<OwnedFd>;
    /// Starts keeping a copy of every frame interface `index` receives or
    /// sends.
    fn watch(&mut self, index: u32) -> std::io::Result<()>;
    /// The frames kept since [`Links::watch`], in order, each with whether
    /// this host sent it; ends the watch.
    fn watched(&mut self) -> std::io::Result<Vec<(bool, Vec<u8>)>>;
    /// Sends the Ethernet frame `frame` out of interface `index`.
    fn send(&mut self, index: u32, frame: &[u8]) -> std::io::Result<()>;
}

/// The NIC the image declares, if any; more than one is refused.
pub fn declared_nic(declared: &[DeclaredDevice]) -> Result<Option<String>, NetworkError> {
    let nics: Vec<String> =
        declared.iter().filter(|d| d.kind == skiff_abi::DeviceKind::Net).map(|d| d.name.clone()).collect();
    match nics.len() {
        0 => Ok(None),
        1 => Ok(nics.into_iter().next()),
        _ => Err(NetworkError::TooMany(nics)),
    }
}

/// Checks that the container's network namespace is its own: named in
/// config.json (`namespace`: `None` for none named, `Some(None)` for a new
/// one, `Some(Some(path))` for one to join) and not the one this process
/// is in.
pub fn check_namespace(nic: &str, namespace: Option<Option<&std::path::Path>>) -> Result<(), NetworkError> {
    use std::os::unix::fs::MetadataExt;
    let host = || NetworkError::HostNamespace(nic.to_string());
    match namespace {
        None => Err(host()),
        Some(None) => Ok(()),
        Some(Some(path)) => {
            let (Ok(theirs), Ok(ours)) = (std::fs::metadata(path), std::fs::metadata("/proc/self/ns/net")) else {
                // A namespace that cannot be looked at fails when joined.
                return Ok(());
            };
            if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) { Err(host()) } else { Ok(()) }
        }
    }
}

/// The name servers of a `resolv.conf`, without loopback ones (a resolver
/// on the host's or the container's loopback is not the guest's): at most
/// [`MAX_DNS`], in order.
pub fn dns_servers(resolv_conf: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in resolv_conf.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        // An IPv6 address may carry a zone (`fe80::1%eth0`): not usable.
        let Some(Ok(addr)) = words.next().map(str::parse::<IpAddr>) else { continue };
        if !addr.is_loopback() && !addr.is_unspecified() && !out.contains(&addr) && out.len() < MAX_DNS {
            out.push(addr);
        }
    }
    out
}

/// What the container's interface has, as read from its namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    /// Its name (`eth0`).
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Its MTU.
    pub mtu: u32,
    /// Its first IPv4 address and prefix.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    /// The IPv4 default gateway through it.
    pub gateway4: Option<Ipv4Addr>,
    /// Its first global IPv6 address and prefix.
    pub ipv6: Option<(Ipv6Addr, u8)>,
    /// The IPv6 default gateway through it.
    pub gateway6: Option<Ipv6Addr>,
}

impl Interface {
    /// The guest's network options (`skiff::net::NetConfig`'s) for this
    /// interface and the DNS servers `dns`.
    pub fn guest_args(&self, dns: &[IpAddr]) -> Vec<String> {
        let mut args = Vec::new();
        match self.ipv4 {
            Some((a, p)) => {
                args.extend(["--ipv4".to_string(), format!("{a}/{p}")]);
                if let Some(g) = self.gateway4 {
                    args.extend(["--gateway".to_string(), g.to_string()]);
                }
            }
            None => args.push("--no-ipv4".to_string()),
        }
        if let Some((a, p)) = self.ipv6 {
            args.extend(["--ipv6".to_string(), format!("{a}/{p}")]);
            if let Some(g) = self.gateway6 {
                args.extend(["--gateway6".to_string(), g.to_string()]);
            }
        }
        for d in dns {
            args.extend(["--dns".to_string(), d.to_string()]);
        }
        args
    }

    /// One line for logs: `eth0 10.88.0.5/16 via 10.88.0.1, MTU 1500`.
    pub fn describe(&self) -> String {
        let mut s = self.name.clone();
        if let Some((a, p)) = self.ipv4 {
            s += &format!(" {a}/{p}");
            if let Some(g) = self.gateway4 {
                s += &format!(" via {g}");
            }
        }
        if let Some((a, p)) = self.ipv6 {
            s += &format!(" {a}/{p}");
        }
        s + &format!(", MTU {}", self.mtu)
    }
}

/// A link of the namespace, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Its name.
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Whether it is a loopback device.
    pub loopback: bool,
}

/// The interface to connect among the namespace's links: `eth0` if there
/// is one, else the only one that is neither loopback nor the TAP device.
pub fn pick_interface(links: &[Link]) -> Option<&Link> {
    let candidates: Vec<&Link> = links.iter().filter(|l| !l.loopback && l.name != TAP_NAME).collect();
    candidates.iter().find(|l| l.name == "eth0").copied().or(match candidates.as_slice() {
        [only] => Some(*only),
        _ => None,
    })
}

/// The NIC connected: what the tender and the guest are given.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The tender's `--net` NICs.
    pub nics: Vec<NicSpec>,
    /// The tender's `--net-mac` MACs.
    pub macs: Vec<(String, [u8; 6])>,
    /// Options to put before the guest's own arguments.
    pub guest_args: Vec<String>,
    /// The DNS servers among them.
    pub dns: Vec<IpAddr>,
    /// The tender's NIC MTUs: the interface's, when below the guest's
    /// usual 1500 (frames the guest sends leave through `eth0` as they
    /// are, so a larger one would be dropped there).
    pub mtus: Vec<(String, u16)>,
    /// The interface it is joined to.
    pub interface: Interface,
    /// The descriptor attached to the TAP device, for the tender's
    /// `NetOptions::attached`.
    pub tap: std::sync::Arc<std::os::fd::OwnedFd>,
}

/// Connects the image's NIC `nic` to the interface of the network
/// namespace this process is in: `links` makes (or reuses) the persistent
/// TAP device and watches and sends frames; the rest is netlink. `dns` are
/// the servers the guest gets.
pub fn connect(nic: &str, dns: &[IpAddr], links: &mut dyn Links) -> Result<Connection, NetworkError> {
    let mut rtnl = Rtnl::open()?;
    let listed = rtnl.links()?;
    let list: Vec<Link> = listed.iter().map(|(l, _)| l.clone()).collect();
    let link = pick_interface(&list).ok_or_else(|| NetworkError::NoInterface(nic.to_string()))?.clone();
    let message = &listed.iter().find(|(l, _)| l.index == link.index).expect("listed").1;
    let mut iface = Interface { name: link.name.clone(), index: link.index, mtu: 1500, ..Default::default() };
    for a in &message.attributes {
        match a {
            LinkAttribute::Address(mac) if mac.len() == 6 => iface.mac.copy_from_slice(mac),
            LinkAttribute::Mtu(m) => iface.mtu = *m,
            _ => {}
        }
    }
    if iface.mac == [0; 6] {
        return Err(NetworkError::NotEthernet(iface.name));
    }
    if iface.mtu < MIN_MTU {
        return Err(NetworkError::SmallMtu { iface: iface.name, mtu: iface.mtu });
    }
    rtnl.addresses(&mut iface)?;
    if iface.ipv4.is_none() && iface.ipv6.is_none() {
        return Err(NetworkError::NoAddress { nic: nic.to_string(), iface: iface.name });
    }
    rtnl.gateways(&mut iface)?;
    // Attached first: a redirect to a device with a carrier queues the
    // frames for the guest instead of dropping them.
    let fd = links.make_tap(TAP_NAME).map_err(|source| NetworkError::Tap { name: TAP_NAME.to_string(), source })?;
    let tap = rtnl
        .links()?
        .into_iter()
        .find(|(l, _)| l.name == TAP_NAME)
        .map(|(l, _)| l.index)
        .ok_or_else(|| NetworkError::Tap { name: TAP_NAME.into(), source: std::io::ErrorKind::NotFound.into() })?;
    // The TAP device's side while it is down (no qdisc graft drops then),
    // then up: from here on it takes frames.
    rtnl.ingress_qdisc(tap, TAP_NAME)?;
    rtnl.redirect(tap, TAP_NAME, iface.index, &iface.name)?;
    rtnl.set_up(tap, iface.mtu)?;
    // eth0's qdisc: its kernel's answers sent meanwhile are dropped, so
    // what it received meanwhile is watched.
    let watch = |what, source| NetworkError::Watch { what, iface: iface.name.clone(), source };
    links.watch(iface.index).map_err(|e| watch("watch the frames of the interface", e))?;
    rtnl.ingress_qdisc(iface.index, &iface.name)?;
    let seen = links.watched().map_err(|e| watch("read the frames of the interface", e))?;
    rtnl.redirect(iface.index, &iface.name, tap, TAP_NAME)?;
    for frame in unanswered(&seen) {
        links.send(tap, &frame).map_err(|e| watch("pass a frame on to the guest", e))?;
    }
    Ok(Connection {
        nics: vec![NicSpec { name: nic.to_string(), tap: TAP_NAME.to_string() }],
        macs: vec![(nic.to_string(), iface.mac)],
        guest_args: iface.guest_args(dns),
        dns: dns.to_vec(),
        mtus: vec![(nic.to_string(), u16::try_from(iface.mtu).unwrap_or(u16::MAX))],
        interface: iface,
        tap: std::sync::Arc::new(fd),
    })
}

/// Among the frames an interface received and sent (`(sent, bytes)`, in
/// order), the TCP SYNs and ARP requests it received whose answer (a reset
/// or SYN-ACK, an ARP reply) was not sent: the answers dropped while its
/// qdisc was grafted. Only IPv4 is looked at. A SYN's checksums are filled
/// in: a frame from the host's own stack can come through a veth device
/// with its TCP checksum left to the hardware, which the guest would take
/// for a damaged segment.
pub fn unanswered(frames: &[(bool, Vec<u8>)]) -> Vec<Vec<u8>> {
    let answers: Vec<Question> = frames.iter().filter(|(sent, _)| *sent).filter_map(|(_, f)| answer(f)).collect();
    frames
        .iter()
        .filter(|(sent, _)| !*sent)
        .filter(|(_, f)| question(f).is_some_and(|q| !answers.contains(&q)))
        .map(|(_, f)| with_checksums(f))
        .collect()
}

/// `frame` with its IPv4 and TCP checksums computed, if it carries TCP.
fn with_checksums(frame: &[u8]) -> Vec<u8> {
    use smoltcp::wire::{EthernetFrame, IpAddress, IpProtocol, Ipv4Packet, TcpPacket};
    let mut out = frame.to_vec();
    let Ok(mut eth) = EthernetFrame::new_checked(&mut out[..]) else { return frame.to_vec() };
    let Ok(mut ip) = Ipv4Packet::new_checked(eth.payload_mut()) else { return frame.to_vec() };
    if ip.next_header() != IpProtocol::Tcp {
        return frame.to_vec();
    }
    ip.fill_checksum();
    let (src, dst) = (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()));
    let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) else { return frame.to_vec() };
    tcp.fill_checksum(&src, &dst);
    out
}

/// What a received frame asks, as its answer would name it.
#[derive(Debug, PartialEq, Eq)]
enum Question {
    /// A TCP SYN: from, to (address, port), and the sequence number its
    /// answer acknowledges.
    Syn { from: ([u8; 4], u16), to: ([u8; 4], u16), ack: u32 },
    /// An ARP request: who asks, for whom.
    Arp { from: [u8; 4], to: [u8; 4] },
}

/// An IPv4 TCP segment's source and destination addresses and the segment.
type Segment<'a> = ([u8; 4], [u8; 4], smoltcp::wire::TcpPacket<&'a [u8]>);

/// The TCP segment of an Ethernet frame carrying one over IPv4.
fn tcp(frame: &[u8]) -> Option<Segment<'_>> {
    use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket};
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let (src, dst) = (ip.src_addr().octets(), ip.dst_addr().octets());
    Some((src, dst, TcpPacket::new_checked(ip.payload()).ok()?))
}

/// The ARP packet of an Ethernet frame: operation, sender, target.
fn arp(frame: &[u8]) -> Option<(smoltcp::wire::ArpOperation, [u8; 4], [u8; 4])> {
    use smoltcp::wire::{ArpPacket, EthernetFrame, EthernetProtocol};
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    let p = ArpPacket::new_checked(eth.payload()).ok()?;
    let (from, to) = (p.source_protocol_addr().try_into().ok()?, p.target_protocol_addr().try_into().ok()?);
    Some((p.operation(), from, to))
}

fn question(frame: &[u8]) -> Option<Question> {
    if let Some((src, dst, t)) = tcp(frame) {
        return (t.syn() && !t.ack() && !t.rst()).then(|| Question::Syn {
            from: (src, t.src_port()),
            to: (dst, t.dst_port()),
            ack: (t.seq_number() + 1).0 as u32,
        });
    }
    let (op, from, to) = arp(frame)?;
    (op == smoltcp::wire::ArpOperation::Request).then_some(Question::Arp { from, to })
}

/// The question a sent frame answers.
fn answer(frame: &[u8]) -> Option<Question> {
    if let Some((src, dst, t)) = tcp(frame) {
        return ((t.rst() || t.syn()) && t.ack()).then(|| Question::Syn {
            from: (dst, t.dst_port()),
            to: (src, t.src_port()),
            ack: t.ack_number().0 as u32,
        });
    }
    let (op, from, to) = arp(frame)?;
    (op == smoltcp::wire::ArpOperation::Reply).then_some(Question::Arp { from: to, to: from })
}

/// `ETH_P_ALL` in network byte order, as tc's `protocol all`.
const PROTOCOL_ALL: u16 = (libc::ETH_P_ALL as u16).to_be();

/// A blocking rtnetlink socket.
struct Rtnl {
    socket: netlink_sys::Socket,
    seq: u32,
}

impl Rtnl {
    fn open() -> Result<Rtnl, NetworkError> {
        let err = |source| NetworkError::Netlink { what: "open a netlink socket".into(), source };
        let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE).map_err(err)?;
        socket.bind_auto().map_err(err)?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0)).map_err(err)?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Sends `message` and collects the answers up to the end of a dump
    /// or the acknowledgement.
    fn request(
        &mut self,
        what: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetworkError> {
        let io = |source| NetworkError::Netlink { what: what.to_string(), source };
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(message));
        req.finalize();
        let mut buf = vec![0; req.header.length as usize];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(io)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (bytes, _) = self.socket.recv_from_full().map_err(io)?;
            let mut at = 0;
            while at < bytes.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[at..])
                    .map_err(|_| NetworkError::Answer(what.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(NetworkError::Answer(what.to_string()));
                }
                at += len;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(io(e.to_io())),
                    NetlinkPayload::Error(_) if !dump => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    fn links(&mut self) -> Result<Vec<(Link, LinkMessage)>, NetworkError> {
        let answers = self.request(
            "list the network interfaces",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .map(|l| {
                let name = l
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                let link = Link { name, index: l.header.index, loopback: l.header.flags.contains(LinkFlags::Loopback) };
                (link, l)
            })
            .collect())
    }

    fn addresses(&mut self, iface: &mut Interface) -> Result<(), NetworkError> {
        let answers = self.request(
            &format!("list the addresses of {}", iface.name),
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        for m in answers {
            let RouteNetlinkMessage::NewAddress(a) = m else { continue };
            if a.header.index != iface.index {
                continue;
            }
            let addr = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            match addr {
                Some(IpAddr::V4(v4)) if iface.ipv4.is_none() => iface.ipv4 = Some((v4, a.header.prefix_len)),
                Some(IpAddr::V6(v6)) if iface.ipv6.is_none() && a.header.scope == AddressScope::Universe => {
                    iface.ipv6 = Some((v6, a.header.prefix_len))
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn gateways(&mut self, iface: &mut Interface) -> Result<(), NetworkError> {
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            let answers = self.request(
                &format!("list the routes of {}", iface.name),
                RouteNetlinkMessage::GetRoute(query),
                NLM_F_DUMP,
            )?;
            for m in answers {
                let RouteNetlinkMessage::NewRoute(r) = m else { continue };
                if r.header.destination_prefix_length != 0 || r.header.table != RouteHeader::RT_TABLE_MAIN {
                    continue;
                }
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                if oif.is_some_and(|i| i != iface.index) {
                    continue;
                }
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) if iface.gateway4.is_none() => {
                            iface.gateway4 = Some(*g)
                        }
                        RouteAttribute::Gateway(RouteAddress::Inet6(g)) if iface.gateway6.is_none() => {
                            iface.gateway6 = Some(*g)
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Brings link `index` up with MTU `mtu`.
    fn set_up(&mut self, index: u32, mtu: u32) -> Result<(), NetworkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.request(&format!("bring {TAP_NAME} up"), RouteNetlinkMessage::SetLink(m), NLM_F_ACK).map(drop)
    }

    /// Gives `from` a fresh ingress qdisc: an old one, with its filters,
    /// is removed first, so a container started again in the same
    /// namespace is joined anew.
    fn ingress_qdisc(&mut self, from: u32, from_name: &str) -> Result<(), NetworkError> {
        let mut qdisc = TcMessage::with_index(from as i32);
        qdisc.header.parent = TcHandle::INGRESS;
        qdisc.header.handle = TcHandle::from(0xffff_0000);
        qdisc.attributes.push(TcAttribute::Kind("ingress".to_string()));
        // Absent the first time (ENOENT or EINVAL, by kernel version).
        let _ = self.request(
            "remove an old ingress qdisc",
            RouteNetlinkMessage::DelQueueDiscipline(qdisc.clone()),
            NLM_F_ACK,
        );
        self.request(
            &format!("add an ingress qdisc to {from_name}"),
            RouteNetlinkMessage::NewQueueDiscipline(qdisc),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Sends every frame arriving on `from` (which has its ingress qdisc)
    /// out of `to`: a u32 filter matching all with a `mirred egress
    /// redirect` action.
    fn redirect(&mut self, from: u32, from_name: &str, to: u32, to_name: &str) -> Result<(), NetworkError> {
        let mut selector = TcU32Selector::default();
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.nkeys = 1;
        selector.keys = vec![TcU32Key::default()];
        let mut mirror = TcMirror::default();
        mirror.generic = TcActionGeneric::default();
        mirror.generic.action = TcActionType::Stolen;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = to;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(mirror))]),
        ];
        let mut filter = TcMessage::with_index(from as i32);
        filter.header.parent = TcHandle::from(0xffff_0000);
        filter.header.info = u32::from(TcHandle { major: 0, minor: PROTOCOL_ALL });
        filter.attributes.push(TcAttribute::Kind(TcFilterU32::KIND.to_string()));
        filter.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]));
        self.request(
            &format!("redirect {from_name}'s frames to {to_name}"),
            RouteNetlinkMessage::NewTrafficFilter(filter),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(name: &str) -> DeclaredDevice {
        DeclaredDevice { kind: skiff_abi::DeviceKind::Net, name: name.into(), outbound: false }
    }

    #[test]
    fn one_nic_at_most() {
        assert_eq!(declared_nic(&[]).unwrap(), None);
        assert_eq!(declared_nic(&[nic("service")]).unwrap(), Some("service".into()));
        let err = declared_nic(&[nic("service"), nic("admin")]).unwrap_err().to_string();
        assert!(err.contains("declares 2 NICs (service, admin): a container connects one"), "{err}");
    }

    #[test]
    fn the_hosts_network_namespace_is_refused() {
        let msg = |r: Result<(), NetworkError>| r.unwrap_err().to_string();
        assert!(msg(check_namespace("service", None)).contains("shares the host's network namespace"));
        let own = std::path::Path::new("/proc/self/ns/net");
        assert!(msg(check_namespace("service", Some(Some(own)))).contains("(--network host?)"));
        assert!(check_namespace("service", Some(None)).is_ok());
    }

    #[test]
    fn name_servers_come_from_resolv_conf_without_loopback_ones() {
        let text = "# podman\nsearch dns.podman\nnameserver 10.88.0.1\nnameserver 127.0.0.53\n\
                    nameserver  fd00::1 \nnameserver fe80::1%eth0\nnameserver bogus\noptions ndots:1\n\
                    nameserver 10.88.0.1\nnameserver 192.0.2.2\nnameserver 192.0.2.3\n";
        let want: Vec<IpAddr> =
            vec!["10.88.0.1".parse().unwrap(), "fd00::1".parse().unwrap(), "192.0.2.2".parse().unwrap()];
        assert_eq!(dns_servers(text), want);
        assert!(dns_servers("").is_empty());
        assert!(dns_servers("nameserver ::1\nnameserver 0.0.0.0\n").is_empty());
    }

    #[test]
    fn the_guest_gets_the_interfaces_addresses_as_its_options() {
        let mut i = Interface {
            name: "eth0".into(),
            mtu: 1500,
            ipv4: Some(("10.88.0.5".parse().unwrap(), 16)),
            gateway4: Some("10.88.0.1".parse().unwrap()),
            ..Default::default()
        };
        let dns = ["10.88.0.1".parse().unwrap()];
        assert_eq!(i.guest_args(&dns), ["--ipv4", "10.88.0.5/16", "--gateway", "10.88.0.1", "--dns", "10.88.0.1"]);
        assert_eq!(i.describe(), "eth0 10.88.0.5/16 via 10.88.0.1, MTU 1500");
        i.ipv4 = None;
        i.ipv6 = Some(("fd00::5".parse().unwrap(), 64));
        i.gateway6 = Some("fd00::1".parse().unwrap());
        assert_eq!(i.guest_args(&[]), ["--no-ipv4", "--ipv6", "fd00::5/64", "--gateway6", "fd00::1"]);
    }

    /// An Ethernet frame with an IPv4 TCP segment from 10.88.0.1:`sport`
    /// to 10.88.0.5:443 (or back, `reply`) with `flags`, `seq` and `ack`
    /// and a zero TCP checksum (left to the hardware).
    fn tcp_frame(reply: bool, sport: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
        let (a, b) = ([10, 88, 0, 1], [10, 88, 0, 5]);
        let (src, dst, ports) = if reply { (b, a, [443, sport]) } else { (a, b, [sport, 443]) };
        let mut f = vec![2, 0, 0, 0, 0, 5, 2, 0, 0, 0, 0, 1, 8, 0];
        f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&ports[0].to_be_bytes());
        f.extend_from_slice(&ports[1].to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&ack.to_be_bytes());
        f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }

    /// An ARP request from 10.88.0.1 for 10.88.0.5 (or its reply).
    fn arp_frame(reply: bool) -> Vec<u8> {
        let (a, b) = ([10, 88, 0, 1], [10, 88, 0, 5]);
        let mut f = vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 8, 6, 0, 1, 8, 0, 6, 4, 0];
        f.push(if reply { 2 } else { 1 });
        let (sender, target) = if reply { (b, a) } else { (a, b) };
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&sender);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target);
        f
    }

    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;

    #[test]
    fn syns_and_arp_requests_whose_answers_were_dropped_are_passed_on() {
        let frames = vec![
            (false, tcp_frame(false, 1000, SYN, 7, 0)),
            (true, tcp_frame(true, 1000, RST | ACK, 0, 8)),
            // Its reset was dropped while the qdisc was grafted.
            (false, tcp_frame(false, 1001, SYN, 90, 0)),
            // A reset for another sequence number answers another SYN.
            (false, tcp_frame(false, 1002, SYN, 500, 0)),
            (true, tcp_frame(true, 1002, RST | ACK, 0, 7)),
            (false, arp_frame(false)),
            (true, arp_frame(true)),
            (false, arp_frame(false)),
            // Not questions: an ACK, what this host sent, a short frame.
            (false, tcp_frame(false, 1003, ACK, 1, 1)),
            (true, tcp_frame(true, 1004, SYN, 1, 0)),
            (false, vec![0; 10]),
        ];
        let lost = unanswered(&frames);
        // The second ARP request has the first's reply: the same question.
        assert_eq!(lost.len(), 2, "{lost:?}");
        // The same frames but for their checksums.
        let (a, b) = (&frames[2].1, &frames[3].1);
        assert_eq!((&lost[0][..24], &lost[0][26..50]), (&a[..24], &a[26..50]));
        assert_eq!((&lost[1][..24], &lost[1][26..50]), (&b[..24], &b[26..50]));
        // The passed-on SYN carries its TCP checksum, which the guest checks.
        use smoltcp::wire::{EthernetFrame, IpAddress, Ipv4Packet, TcpPacket};
        let eth = EthernetFrame::new_checked(&lost[0][..]).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&IpAddress::Ipv4(ip.src_addr()), &IpAddress::Ipv4(ip.dst_addr())));
        assert_eq!((tcp.src_port(), tcp.seq_number().0), (1001, 90));
        // An ARP request nobody answered is passed on as it is.
        assert_eq!(unanswered(&[(false, arp_frame(false))]), vec![arp_frame(false)]);
        assert!(unanswered(&[]).is_empty());
    }

    #[test]
    fn eth0_is_picked_else_the_only_other_link() {
        let l = |name: &str, index, loopback| Link { name: name.into(), index, loopback };
        let links = [l("lo", 1, true), l("eth1", 2, false), l("eth0", 3, false), l(TAP_NAME, 4, false)];
        assert_eq!(pick_interface(&links).unwrap().index, 3);
        assert_eq!(pick_interface(&[l("lo", 1, true), l("net1", 5, false)]).unwrap().index, 5);
        assert_eq!(pick_interface(&[l("lo", 1, true), l(TAP_NAME, 4, false)]), None, "--network none");
        assert_eq!(pick_interface(&[l("a", 1, false), l("b", 2, false)]), None, "ambiguous");
    }
}
