//! What the user network's host tests share: a guest simulated with its
//! own smoltcp stack, exchanging frames with the gateway in memory, and a
//! guest server with a pool of listening sockets.

#![allow(dead_code)]

use skiff_usernet::config::{GATEWAY, GUEST};
use skiff_usernet::{Config, Limits, Publish, UserNet};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The guest's end of the wire.
#[derive(Default)]
pub struct Wire {
    pub to_gateway: VecDeque<Vec<u8>>,
    pub to_guest: VecDeque<Vec<u8>>,
}

pub struct GuestRx(Vec<u8>);
pub struct GuestTx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for GuestRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl TxToken for GuestTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}
impl Device for Wire {
    type RxToken<'a> = GuestRx;
    type TxToken<'a> = GuestTx<'a>;
    fn receive(&mut self, _: SmolInstant) -> Option<(GuestRx, GuestTx<'_>)> {
        let f = self.to_guest.pop_front()?;
        Some((GuestRx(f), GuestTx(&mut self.to_gateway)))
    }
    fn transmit(&mut self, _: SmolInstant) -> Option<GuestTx<'_>> {
        Some(GuestTx(&mut self.to_gateway))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

pub const GUEST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x15];

pub struct World {
    pub start: Instant,
    pub net: UserNet,
    pub wire: Wire,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
}

impl World {
    pub fn new(publish: Vec<Publish>, outbound: bool) -> (World, Vec<Publish>) {
        World::with_limits(publish, outbound, Limits::default())
    }

    pub fn with_limits(publish: Vec<Publish>, outbound: bool, limits: Limits) -> (World, Vec<Publish>) {
        let (net, bound) =
            UserNet::new(Config { guest_mac: GUEST_MAC, publish, outbound, upstream_dns: None, limits }).unwrap();
        let mut wire = Wire::default();
        let iface = Interface::new(
            IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC))),
            &mut wire,
            SmolInstant::from_micros(0),
        );
        (World { start: Instant::now(), net, wire, iface, sockets: SocketSet::new(vec![]) }, bound)
    }

    pub fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.start.elapsed().as_micros() as i64)
    }

    /// One round: the guest's stack, the wire both ways, the gateway.
    pub fn step(&mut self) {
        let now = self.now();
        self.iface.poll(now, &mut self.wire, &mut self.sockets);
        while let Some(f) = self.wire.to_gateway.pop_front() {
            self.net.receive_frame(&f);
        }
        self.net.poll();
        while let Some(f) = self.net.take_frame() {
            self.wire.to_guest.push_back(f);
        }
    }

    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut World) -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            self.step();
            if done(self) {
                return true;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        false
    }

    pub fn static_address(&mut self) {
        self.iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(GUEST), 24));
        });
        let _ = self.iface.routes_mut().add_default_ipv4_route(GATEWAY);
    }
}

/// A guest server on one port: a pool of listening sockets, refilled as
/// connections arrive (as the guest's network stack does), and the
/// connections being served.
pub struct GuestServer {
    pub port: u16,
    pub listening: Vec<SocketHandle>,
    pub conns: Vec<(SocketHandle, Instant, Vec<u8>)>,
    pub served: usize,
}

impl GuestServer {
    pub fn new(w: &mut World, port: u16) -> GuestServer {
        let mut g = GuestServer { port, listening: Vec::new(), conns: Vec::new(), served: 0 };
        g.refill(w);
        g
    }

    pub fn refill(&mut self, w: &mut World) {
        let mut i = 0;
        while i < self.listening.len() {
            let h = self.listening[i];
            if w.sockets.get::<tcp::Socket>(h).state() == tcp::State::Listen {
                i += 1;
            } else {
                self.listening.swap_remove(i);
                self.conns.push((h, Instant::now(), Vec::new()));
            }
        }
        while self.listening.len() < 8 {
            let mut s =
                tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 16384]), tcp::SocketBuffer::new(vec![0; 16384]));
            s.listen(self.port).unwrap();
            self.listening.push(w.sockets.add(s));
        }
    }
}
