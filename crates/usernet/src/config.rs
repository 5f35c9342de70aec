//! The user network's addresses, published ports and limits.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The virtual LAN: `10.0.2.0/24`, as QEMU's user networking has it.
pub const NETWORK: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 0);
/// Prefix length of the LAN.
pub const PREFIX: u8 = 24;
/// The gateway; connections to it reach the host's loopback.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The DNS forwarder.
pub const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The address the DHCP server leases to the guest.
pub const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The gateway's MAC address.
pub const GATEWAY_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];

/// TCP or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A host address relayed to a guest port (`--publish`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish {
    /// Where the tender listens on the host (port 0: any free port).
    pub host: SocketAddr,
    /// The guest's port.
    pub guest_port: u16,
    /// TCP or UDP.
    pub proto: Proto,
}

/// A `--publish` value does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--publish {0:?}: expected [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp], e.g. 8007:7 or 127.0.0.1:5353:53/udp")]
pub struct PublishError(pub String);

impl std::str::FromStr for Publish {
    type Err = PublishError;

    /// Parses `[HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp]`; the host address
    /// defaults to 127.0.0.1 and the protocol to TCP.
    fn from_str(s: &str) -> Result<Publish, PublishError> {
        let bad = || PublishError(s.to_string());
        let (spec, proto) = match s.rsplit_once('/') {
            Some((spec, "tcp")) => (spec, Proto::Tcp),
            Some((spec, "udp")) => (spec, Proto::Udp),
            Some(_) => return Err(bad()),
            None => (s, Proto::Tcp),
        };
        let (host_part, guest) = spec.rsplit_once(':').ok_or_else(bad)?;
        let guest_port: u16 = guest.parse().map_err(|_| bad())?;
        if guest_port == 0 {
            return Err(bad());
        }
        let (addr, port) = match host_part.rsplit_once(':') {
            Some((addr, port)) => {
                let addr = addr.trim_start_matches('[').trim_end_matches(']');
                (addr.parse::<IpAddr>().map_err(|_| bad())?, port)
            }
            None => (IpAddr::V4(Ipv4Addr::LOCALHOST), host_part),
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        Ok(Publish { host: SocketAddr::new(addr, port), guest_port, proto })
    }
}

/// Bounds on what the user network may hold, so no guest and no host peer
/// can make the tender grow without limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// TCP connections relayed at once (published and outbound together).
    /// A relay's slot is freed as soon as both sides are done. Beyond the
    /// limit a published port stops accepting, so new host connections
    /// wait in its listen backlog; an outbound connection is refused (the
    /// guest gets a reset).
    pub tcp_connections: usize,
    /// The listen backlog of each published TCP port: host connections
    /// that wait while every relay is taken. When it is full too, the host
    /// kernel drops further SYNs and clients retry, as with any server.
    pub backlog: u32,
    /// Guest-side closes still finishing after the host side is done (the
    /// gateway's FIN waiting for the guest's acknowledgement). They hold no
    /// relay slot; beyond this many the oldest is reset.
    pub closing: usize,
    /// Buffer per direction per TCP connection, in bytes.
    pub tcp_buffer: usize,
    /// UDP flows (a host peer of a published port, or a guest flow out)
    /// at once; the least recently used is dropped for a new one.
    pub udp_flows: usize,
    /// Frames queued towards the guest while its receive ring is full.
    pub queued_frames: usize,
    /// DNS queries in flight.
    pub dns_queries: usize,
    /// How long a published connection that reaches the guest before it
    /// listens is held (its SYN resent in milliseconds) before the host
    /// side is reset. Zero resets it as soon as the guest refuses.
    pub hold: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tcp_connections: 256,
            backlog: 128,
            closing: 64,
            tcp_buffer: 64 * 1024,
            udp_flows: 256,
            queued_frames: 512,
            dns_queries: 256,
            hold: std::time::Duration::from_secs(2),
        }
    }
}

/// Most TCP relays at once: each published connection takes a gateway
/// port from the 28,232 ephemeral ones, and closing ones hold theirs too.
pub const MAX_TCP_CONNECTIONS: usize = 16384;
/// Most UDP flows at once.
pub const MAX_UDP_FLOWS: usize = 8192;
/// Smallest and largest TCP buffer per direction.
pub const TCP_BUFFER_RANGE: std::ops::RangeInclusive<usize> = 4096..=(16 << 20);

impl Limits {
    /// An upper bound on the memory these limits allow the network's
    /// buffers to take, in bytes: relays and closing connections with both
    /// buffers full, UDP flows with full datagram buffers, both frame
    /// queues full, and the DNS queries in flight.
    pub fn memory_bound(&self) -> usize {
        let tcp = (self.tcp_connections + self.closing) * (2 * self.tcp_buffer + TCP_SOCKET_OVERHEAD);
        // A UDP flow: a smoltcp socket with 16 datagrams each way (a
        // published port's peer) or a host socket per guest port (a flow
        // out, sharing one smoltcp socket per destination).
        let udp = self.udp_flows * (2 * UDP_BUFFER + UDP_SOCKET_OVERHEAD);
        let frames = 2 * self.queued_frames * FRAME_OVERHEAD;
        tcp + udp + frames + self.dns_queries * 600
    }
}

/// What a TCP socket and its relay take beside the two buffers (the
/// smoltcp socket, its assembler, the relay's record), rounded up.
const TCP_SOCKET_OVERHEAD: usize = 1024;
/// What a UDP flow takes beside its payload buffers (datagram metadata,
/// the flow's record), rounded up.
const UDP_SOCKET_OVERHEAD: usize = 2048;
/// A queued frame: up to 1,514 bytes and its vector, rounded up.
const FRAME_OVERHEAD: usize = 2048;

/// Payload bytes buffered per direction per UDP socket.
pub const UDP_BUFFER: usize = 16 * 1024;

/// How the user network behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The guest NIC's MAC.
    pub guest_mac: [u8; 6],
    /// Published ports.
    pub publish: Vec<Publish>,
    /// Relay the guest's own connections and datagrams to the outside
    /// (including DNS forwarding).
    pub outbound: bool,
    /// The DNS server queries are forwarded to (from the host's
    /// `/etc/resolv.conf` by default).
    pub upstream_dns: Option<SocketAddr>,
    /// Resource bounds.
    pub limits: Limits,
}

/// The host's first name server, from `/etc/resolv.conf`.
pub fn host_dns() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_specs_parse() {
        let p: Publish = "8007:7".parse().unwrap();
        assert_eq!(p, Publish { host: "127.0.0.1:8007".parse().unwrap(), guest_port: 7, proto: Proto::Tcp });
        let p: Publish = "0.0.0.0:5353:53/udp".parse().unwrap();
        assert_eq!(p, Publish { host: "0.0.0.0:5353".parse().unwrap(), guest_port: 53, proto: Proto::Udp });
        let p: Publish = "[::1]:8443:443/tcp".parse().unwrap();
        assert_eq!(p.host, "[::1]:8443".parse().unwrap());
        let p: Publish = "0:7".parse().unwrap();
        assert_eq!(p.host.port(), 0);
        for bad in ["7", "8007:0", "8007:7/sctp", "x:8007:7", "8007:99999", ""] {
            assert!(bad.parse::<Publish>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_memory_bound_is_documented() {
        // docs/architecture.md states "about 51 MiB".
        let mib = Limits::default().memory_bound() as f64 / f64::from(1 << 20);
        assert!((50.0..52.0).contains(&mib), "{mib} MiB");
    }
}
