//! The user network against a guest simulated with its own smoltcp stack,
//! exchanging frames in memory, with real host sockets on 127.0.0.1.

use skiff_usernet::config::{GATEWAY, GUEST};
use skiff_usernet::{Config, Limits, Publish, UserNet};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The guest's end of the wire.
#[derive(Default)]
struct Wire {
    to_gateway: VecDeque<Vec<u8>>,
    to_guest: VecDeque<Vec<u8>>,
}

struct GuestRx(Vec<u8>);
struct GuestTx<'a>(&'a mut VecDeque<Vec<u8>>);

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

const GUEST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x15];

struct World {
    start: Instant,
    net: UserNet,
    wire: Wire,
    iface: Interface,
    sockets: SocketSet<'static>,
}

impl World {
    fn new(publish: Vec<Publish>, outbound: bool) -> (World, Vec<Publish>) {
        let (net, bound) = UserNet::new(Config {
            guest_mac: GUEST_MAC,
            publish,
            outbound,
            upstream_dns: None,
            limits: Limits::default(),
        })
        .unwrap();
        let mut wire = Wire::default();
        let iface = Interface::new(
            IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC))),
            &mut wire,
            SmolInstant::from_micros(0),
        );
        (World { start: Instant::now(), net, wire, iface, sockets: SocketSet::new(vec![]) }, bound)
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.start.elapsed().as_micros() as i64)
    }

    /// One round: the guest's stack, the wire both ways, the gateway.
    fn step(&mut self) {
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

    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut World) -> bool) -> bool {
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

    fn static_address(&mut self) {
        self.iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(GUEST), 24));
        });
        let _ = self.iface.routes_mut().add_default_ipv4_route(GATEWAY);
    }
}

#[test]
fn the_guest_gets_its_lease_from_the_gateway() {
    let (mut w, _) = World::new(vec![], false);
    let h = w.sockets.add(dhcpv4::Socket::new());
    let got = w.run_until(Duration::from_secs(5), |w| match w.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
        Some(dhcpv4::Event::Configured(c)) => {
            assert_eq!(c.address.address(), GUEST);
            assert_eq!(c.router, Some(GATEWAY));
            true
        }
        _ => false,
    });
    assert!(got, "no DHCP lease");
}

#[test]
fn a_published_port_relays_both_ways_with_half_close() {
    let (mut w, bound) = World::new(vec!["0:7".parse().unwrap()], false);
    w.static_address();
    let mut server = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 65536]), tcp::SocketBuffer::new(vec![0; 65536]));
    server.listen(7).unwrap();
    let h = w.sockets.add(server);
    let addr = bound[0].host;
    let client = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        c.write_all(&data).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        assert!(back == data, "{} bytes back", back.len());
    });
    // The guest echoes, and closes after the client's FIN.
    let mut pending: Vec<u8> = Vec::new();
    let mut closed = false;
    let ok = w.run_until(Duration::from_secs(20), |w| {
        let s = w.sockets.get_mut::<tcp::Socket>(h);
        if std::env::var_os("RELAY_DEBUG").is_some() {
            eprintln!("guest state {} recv_q {} pending {}", s.state(), s.recv_queue(), pending.len());
        }
        if s.can_recv() {
            s.recv(|b| {
                pending.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        if !pending.is_empty() && s.can_send() {
            let n = s.send_slice(&pending).unwrap();
            pending.drain(..n);
        }
        if s.state() == tcp::State::CloseWait && s.recv_queue() == 0 && pending.is_empty() && !closed {
            s.close();
            closed = true;
        }
        client.is_finished()
    });
    assert!(ok, "the relay stalled");
    client.join().unwrap();
}

/// The guest connects to the gateway's address, which is the host's
/// loopback, and reads what a server there sends. Returns what arrived and
/// whether the guest's connection ended in a reset.
fn connect_out(outbound: bool) -> (Vec<u8>, bool) {
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let serving = std::thread::spawn(move || {
        server.set_nonblocking(true).unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if let Ok((mut c, _)) = server.accept() {
                c.set_nonblocking(false).unwrap();
                c.write_all(b"greetings from the host").unwrap();
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    });
    let (mut w, _) = World::new(vec![], outbound);
    w.static_address();
    let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 4096]), tcp::SocketBuffer::new(vec![0; 4096]));
    let cx = w.iface.context();
    s.connect(cx, (IpAddress::Ipv4(GATEWAY), port), 40000).unwrap();
    let h = w.sockets.add(s);
    let mut got = Vec::new();
    let mut reset = false;
    w.run_until(Duration::from_secs(3), |w| {
        let s = w.sockets.get_mut::<tcp::Socket>(h);
        if s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        if s.state() == tcp::State::Closed {
            reset = true;
            return true;
        }
        got.len() >= 23
    });
    let accepted = serving.join().unwrap();
    assert_eq!(accepted, outbound, "the host server saw a connection only with outbound on");
    (got, reset)
}

#[test]
fn outbound_connections_reach_the_host_through_the_gateway() {
    let (got, _) = connect_out(true);
    assert_eq!(got, b"greetings from the host");
}

#[test]
fn with_outbound_off_the_guest_is_refused() {
    let (got, reset) = connect_out(false);
    assert!(got.is_empty());
    assert!(reset, "the guest's connection should be refused with a reset");
}
