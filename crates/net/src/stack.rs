//! The stack: one smoltcp interface, its sockets, and the task that drives
//! them.
//!
//! The driver task is the smoltcp way of running a stack: call
//! `Interface::poll` with the current time, then sleep until the device has
//! a frame, a socket operation asks for another poll, or `poll_delay`
//! passes. Socket operations never do I/O themselves; they change socket
//! state and wake the driver.
//!
//! There is no global: a [`Stack`] is a value (cheap to clone) that the
//! service creates from the NIC the runtime lends it, and every socket holds
//! a clone.

use crate::config::{Ipv4Config, Ipv6Config, NetConfig};
use crate::device::Adapter;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::future::Future;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use core::time::Duration;
use log::{info, warn};
use skiff_rt::NetDevice;
use skiff_rt::executor::{Sleep, Spawner, sleep};
use smoltcp::iface::{Config, Interface, PollIngressSingleResult, SocketHandle, SocketSet};
use smoltcp::socket::{dhcpv4, dns, tcp};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Cidr, Ipv6Cidr};

/// Converts the runtime's clock to smoltcp's.
pub(crate) fn now() -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros((skiff_rt::time::Instant::now().as_nanos() / 1000) as i64)
}

/// Buffer sizes and behaviour of TCP connections.
///
/// The buffers are allocated whole when a socket is made, so they are what
/// a connection costs: the defaults (256 KiB each way) let one connection
/// move several hundred MiB/s over a path with a round trip of a few
/// hundred microseconds (a TAP device and a host under load), where 64 KiB
/// held bulk transfers to under half of Linux's rate; a service with many
/// connections picks smaller ones (the static website: 4 KiB and 16 KiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpOptions {
    /// Receive buffer in bytes: the largest window offered; above 64 KiB,
    /// window scaling is used.
    pub rx_buffer: usize,
    /// Send buffer in bytes: the most data in flight.
    pub tx_buffer: usize,
    /// Nagle's algorithm (coalescing small writes).
    pub nagle: bool,
    /// Give up on a connection whose peer acknowledges nothing for this
    /// long (also bounds connecting).
    pub timeout: Option<Duration>,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            rx_buffer: 256 * 1024,
            tx_buffer: 256 * 1024,
            nagle: false,
            timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// Counters, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Frames received from the device.
    pub rx_frames: u64,
    /// Frames sent to the device.
    pub tx_frames: u64,
    /// Driver iterations.
    pub polls: u64,
    /// TCP connections accepted.
    pub accepted: u64,
    /// Connection attempts refused because a listener's queue was full.
    pub backlog_full: u64,
}

/// A TCP listener's sockets.
pub(crate) struct ListenerState {
    pub port: u16,
    pub options: TcpOptions,
    pub backlog: usize,
    pub max_queued: usize,
    /// Sockets in `Listen` state.
    pub listening: Vec<SocketHandle>,
    /// Sockets past their SYN, not yet established.
    pub handshaking: Vec<SocketHandle>,
    /// Established, waiting for `accept`.
    pub ready: VecDeque<SocketHandle>,
    pub waker: Option<Waker>,
}

pub(crate) struct Inner {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub device: Box<dyn NetDevice>,
    pub dhcp: Option<SocketHandle>,
    pub dns: SocketHandle,
    pub static_dns: Vec<IpAddress>,
    /// The DNS servers in use (static ones, then DHCP's).
    pub dns_servers: Vec<IpAddress>,
    pub driver_waker: Option<Waker>,
    pub driver_kicked: bool,
    pub listeners: Vec<Option<ListenerState>>,
    /// Sockets whose owner dropped them, closing gracefully until the
    /// deadline.
    pub closing: Vec<(SocketHandle, smoltcp::time::Instant)>,
    pub config_waiters: Vec<Waker>,
    pub next_port: u16,
    pub tcp_defaults: TcpOptions,
    pub stats: StackStats,
}

impl Inner {
    /// Asks the driver for another poll (a socket changed).
    pub fn kick(&mut self) {
        self.driver_kicked = true;
        if let Some(w) = self.driver_waker.take() {
            w.wake();
        }
    }

    /// A fresh TCP socket with `options`' buffers.
    pub fn new_tcp_socket(&mut self, options: &TcpOptions) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; options.rx_buffer]),
            tcp::SocketBuffer::new(vec![0u8; options.tx_buffer]),
        );
        s.set_nagle_enabled(options.nagle);
        s.set_timeout(options.timeout.map(|d| smoltcp::time::Duration::from_micros(d.as_micros() as u64)));
        self.sockets.add(s)
    }

    /// An ephemeral port for an outgoing connection.
    pub fn ephemeral_port(&mut self) -> u16 {
        let p = self.next_port;
        self.next_port = if p == u16::MAX { 49152 } else { p + 1 };
        p
    }

    /// One driver iteration: frames in and out, then the bookkeeping that
    /// follows socket state changes. Returns when to poll again.
    fn poll(&mut self) -> Option<smoltcp::time::Duration> {
        let now = now();
        self.stats.polls += 1;
        let Inner { iface, sockets, device, listeners, stats, .. } = self;
        let mut adapter = Adapter::new(&mut **device);
        iface.poll_maintenance(now);
        loop {
            match iface.poll_ingress_single(now, &mut adapter, sockets) {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => {}
                // A SYN may have taken a listening socket: put another in
                // its place before the next frame, so a burst of connections
                // finds listeners.
                PollIngressSingleResult::SocketStateChanged => refill_listeners(listeners, sockets, stats),
            }
        }
        while iface.poll_egress(now, &mut adapter, sockets) == smoltcp::iface::PollResult::SocketStateChanged {}
        let (rx, tx) = adapter.frames();
        stats.rx_frames += rx;
        stats.tx_frames += tx;
        device.flush();
        refill_listeners(listeners, sockets, stats);
        self.dhcp_events();
        self.reap_closing(now);
        self.driver_kicked = false;
        self.iface.poll_delay(now, &self.sockets)
    }

    fn dhcp_events(&mut self) {
        let Some(h) = self.dhcp else { return };
        let event = self.sockets.get_mut::<dhcpv4::Socket>(h).poll();
        match event {
            None => {}
            Some(dhcpv4::Event::Configured(c)) => {
                let (address, router) = (c.address, c.router);
                let servers: Vec<IpAddress> = c.dns_servers.iter().map(|a| IpAddress::Ipv4(*a)).collect();
                info!(
                    "DHCP: leased {address} from {}{}{}",
                    c.server.address,
                    router.map(|r| alloc::format!(", router {r}")).unwrap_or_default(),
                    if servers.is_empty() { alloc::string::String::new() } else { alloc::format!(", DNS {servers:?}") }
                );
                self.iface.update_ip_addrs(|addrs| {
                    addrs.retain(|a| !matches!(a, IpCidr::Ipv4(_)));
                    let _ = addrs.push(IpCidr::Ipv4(address));
                });
                match router {
                    Some(r) => {
                        let _ = self.iface.routes_mut().add_default_ipv4_route(r);
                    }
                    None => {
                        self.iface.routes_mut().remove_default_ipv4_route();
                    }
                }
                let mut all = self.static_dns.clone();
                all.extend(servers);
                self.sockets.get_mut::<dns::Socket>(self.dns).update_servers(&all);
                self.dns_servers = all;
                for w in self.config_waiters.drain(..) {
                    w.wake();
                }
            }
            // The socket reports "deconfigured" when it starts, too: only a
            // lease we had is worth a warning.
            Some(dhcpv4::Event::Deconfigured) if self.iface.ipv4_addr().is_none() => {}
            Some(dhcpv4::Event::Deconfigured) => {
                warn!("DHCP: lease lost; no IPv4 address until a server answers");
                self.iface.update_ip_addrs(|addrs| addrs.retain(|a| !matches!(a, IpCidr::Ipv4(_))));
                self.iface.routes_mut().remove_default_ipv4_route();
            }
        }
    }

    /// Whether a TCP socket still has data the peer has not acknowledged,
    /// or a close it has not acknowledged.
    fn has_unsent(&self) -> bool {
        self.sockets.iter().any(|(_, socket)| match socket {
            smoltcp::socket::Socket::Tcp(s) => {
                s.send_queue() > 0
                    || matches!(s.state(), tcp::State::FinWait1 | tcp::State::Closing | tcp::State::LastAck)
            }
            _ => false,
        })
    }

    fn reap_closing(&mut self, now: smoltcp::time::Instant) {
        let sockets = &mut self.sockets;
        self.closing.retain(|&(h, deadline)| {
            let s = sockets.get_mut::<tcp::Socket>(h);
            let done = matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait);
            if !done && now < deadline {
                return true;
            }
            if !done {
                s.abort();
            }
            sockets.remove(h);
            false
        });
    }

    /// The first usable address of each family.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.iface.ipv4_addr()
    }
}

/// Puts listening sockets in place for every listener (a new one at once).
pub(crate) fn refill(inner: &mut Inner) {
    let Inner { listeners, sockets, stats, .. } = inner;
    refill_listeners(listeners, sockets, stats);
}

fn refill_listeners(listeners: &mut [Option<ListenerState>], sockets: &mut SocketSet<'static>, stats: &mut StackStats) {
    for l in listeners.iter_mut().flatten() {
        let mut changed = false;
        let mut i = 0;
        while i < l.listening.len() {
            let h = l.listening[i];
            if sockets.get::<tcp::Socket>(h).state() == tcp::State::Listen {
                i += 1;
            } else {
                l.listening.swap_remove(i);
                l.handshaking.push(h);
            }
        }
        let mut i = 0;
        while i < l.handshaking.len() {
            let h = l.handshaking[i];
            match sockets.get::<tcp::Socket>(h).state() {
                tcp::State::Listen | tcp::State::SynReceived => i += 1,
                // Reset during the handshake: recycle the socket.
                tcp::State::Closed => {
                    l.handshaking.swap_remove(i);
                    let s = sockets.get_mut::<tcp::Socket>(h);
                    if s.listen(l.port).is_ok() {
                        l.listening.push(h);
                    } else {
                        sockets.remove(h);
                    }
                }
                _ => {
                    l.handshaking.swap_remove(i);
                    l.ready.push_back(h);
                    stats.accepted += 1;
                    changed = true;
                }
            }
        }
        while l.listening.len() < l.backlog {
            if l.handshaking.len() + l.ready.len() >= l.max_queued {
                stats.backlog_full += 1;
                break;
            }
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0u8; l.options.rx_buffer]),
                tcp::SocketBuffer::new(vec![0u8; l.options.tx_buffer]),
            );
            s.set_nagle_enabled(l.options.nagle);
            s.set_timeout(l.options.timeout.map(|d| smoltcp::time::Duration::from_micros(d.as_micros() as u64)));
            if s.listen(l.port).is_err() {
                break;
            }
            l.listening.push(sockets.add(s));
        }
        if changed && let Some(w) = l.waker.take() {
            w.wake();
        }
    }
}

/// A network stack on one NIC. Clones share the stack.
#[derive(Clone)]
pub struct Stack {
    pub(crate) inner: Rc<RefCell<Inner>>,
}

impl Stack {
    /// Builds a stack on `device` configured by `config`, and starts its
    /// driver task on `spawner`.
    pub fn new(mut device: Box<dyn NetDevice>, config: NetConfig, spawner: &Spawner) -> Stack {
        let mac = EthernetAddress(device.mac());
        let mut iface_config = Config::new(HardwareAddress::Ethernet(mac));
        iface_config.random_seed = skiff_rt::entropy::seed();
        iface_config.slaac = config.ipv6 == Ipv6Config::Slaac;
        let mut iface = {
            let mut adapter = Adapter::new(&mut *device);
            Interface::new(iface_config, &mut adapter, now())
        };
        let link_local = Ipv6Cidr::from_link_prefix(
            &Ipv6Cidr::new(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 64),
            HardwareAddress::Ethernet(mac),
        );
        iface.update_ip_addrs(|addrs| {
            if let Some(ll) = link_local {
                let _ = addrs.push(IpCidr::Ipv6(ll));
            }
            if let Ipv4Config::Static { address, prefix, .. } = config.ipv4 {
                let _ = addrs.push(IpCidr::Ipv4(Ipv4Cidr::new(address, prefix)));
            }
            if let Ipv6Config::Static { address, prefix, .. } = config.ipv6 {
                let _ = addrs.push(IpCidr::Ipv6(Ipv6Cidr::new(address, prefix)));
            }
        });
        if let Ipv4Config::Static { gateway: Some(g), .. } = config.ipv4 {
            let _ = iface.routes_mut().add_default_ipv4_route(g);
        }
        if let Ipv6Config::Static { gateway: Some(g), .. } = config.ipv6 {
            let _ = iface.routes_mut().add_default_ipv6_route(g);
        }
        let mut sockets = SocketSet::new(Vec::new());
        let dhcp = match config.ipv4 {
            Ipv4Config::Dhcp { max_lease } => {
                let mut s = dhcpv4::Socket::new();
                s.set_max_lease_duration(max_lease.map(|d| smoltcp::time::Duration::from_secs(d.as_secs())));
                Some(sockets.add(s))
            }
            _ => None,
        };
        let static_dns: Vec<IpAddress> = config.dns.iter().map(|a| IpAddress::from(*a)).collect();
        let dns = sockets.add(dns::Socket::new(&static_dns, Vec::new()));
        info!(
            "net: MAC {mac}, {}{}",
            config.describe(),
            link_local.map(|l| alloc::format!(", link-local {}", l.address())).unwrap_or_default()
        );
        let inner = Rc::new(RefCell::new(Inner {
            iface,
            sockets,
            device,
            dhcp,
            dns,
            dns_servers: static_dns.clone(),
            static_dns,
            driver_waker: None,
            driver_kicked: true,
            listeners: Vec::new(),
            closing: Vec::new(),
            config_waiters: Vec::new(),
            next_port: 49152 + (skiff_rt::entropy::seed() % 16000) as u16,
            tcp_defaults: TcpOptions::default(),
            stats: StackStats::default(),
        }));
        spawner.spawn(drive(inner.clone()));
        // When main returns, data still queued and closes not yet
        // acknowledged get up to the runtime's settle time to go out.
        let weak = Rc::downgrade(&inner);
        spawner.before_exit(move || weak.upgrade().is_some_and(|i| i.try_borrow().is_ok_and(|i| i.has_unsent())));
        Stack { inner }
    }

    /// The IPv4 address, once there is one.
    pub fn ipv4_addr(&self) -> Option<Ipv4Addr> {
        self.inner.borrow().ipv4()
    }

    /// Every address of the interface.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.inner.borrow().iface.ip_addrs().iter().map(|c| IpAddr::from(c.address())).collect()
    }

    /// Waits until the interface has an IPv4 address (immediately with a
    /// static one; when DHCP has a lease otherwise). Returns it.
    pub async fn wait_ipv4(&self) -> Ipv4Addr {
        core::future::poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            match inner.ipv4() {
                Some(a) => Poll::Ready(a),
                None => {
                    inner.config_waiters.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Counters so far.
    pub fn stats(&self) -> StackStats {
        self.inner.borrow().stats
    }

    /// Changes the TCP options used by new connections and listeners.
    pub fn set_tcp_defaults(&self, options: TcpOptions) {
        self.inner.borrow_mut().tcp_defaults = options;
    }

    /// The TCP options new connections and listeners get.
    pub fn tcp_defaults(&self) -> TcpOptions {
        self.inner.borrow().tcp_defaults
    }
}

async fn drive(inner: Rc<RefCell<Inner>>) {
    loop {
        let delay = inner.borrow_mut().poll();
        let timer = delay.map(|d| sleep(Duration::from_micros(d.total_micros())));
        DriverWait { inner: &inner, timer }.await;
    }
}

/// Ready when the device has a frame, a socket kicked the driver, or the
/// timer smoltcp asked for is due.
struct DriverWait<'a> {
    inner: &'a Rc<RefCell<Inner>>,
    timer: Option<Sleep>,
}

impl Future for DriverWait<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut inner = self.inner.borrow_mut();
            if inner.driver_kicked {
                return Poll::Ready(());
            }
            if inner.device.poll_rx(cx).is_ready() {
                return Poll::Ready(());
            }
            inner.driver_waker = Some(cx.waker().clone());
        }
        match self.timer.as_mut().map(|t| Pin::new(t).poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(()),
            _ => Poll::Pending,
        }
    }
}
