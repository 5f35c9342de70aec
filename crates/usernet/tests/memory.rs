//! The user network's memory bound (`Limits::memory_bound`) against what it
//! really allocates, counted by the test's global allocator, while host
//! peers and a guest that never reads push every limit: more connections
//! than relays, full buffers both ways, more UDP peers than flows, and a
//! guest that stops taking frames.

mod common;

use cap::Cap;
use common::{GuestServer, World};
use skiff_usernet::Limits;
use smoltcp::socket::tcp;
use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: Cap<std::alloc::System> = Cap::new(std::alloc::System, usize::MAX);

#[test]
fn filling_every_limit_stays_within_the_memory_bound() {
    let limits = Limits {
        tcp_connections: 8,
        backlog: 64,
        closing: 4,
        tcp_buffer: 32 * 1024,
        udp_flows: 8,
        queued_frames: 64,
        dns_queries: 16,
        hold: std::time::Duration::from_secs(2),
    };
    let publish = vec!["0:7".parse().unwrap(), "0:9/udp".parse().unwrap()];
    let (mut w, bound) = World::with_limits(publish, false, limits);
    w.static_address();
    // The guest's sockets are made before the count starts: the pool
    // covers every connection that can arrive.
    let mut server = GuestServer::new(&mut w, 7);
    let (tcp_addr, udp_addr) = (bound[0].host, bound[1].host);
    let chunk = vec![0x5au8; 16 * 1024];
    for _ in 0..5 {
        w.step();
    }
    let baseline = ALLOC.allocated();
    let clients: Vec<TcpStream> = (0..40)
        .map(|_| {
            let c = TcpStream::connect_timeout(&tcp_addr, Duration::from_secs(5)).expect("connect");
            c.set_nonblocking(true).unwrap();
            c
        })
        .collect();
    let peers: Vec<UdpSocket> = (0..20).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let mut peak = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        // Host peers send without ever reading.
        for mut c in &clients {
            let _ = c.write(&chunk);
        }
        for p in &peers {
            let _ = p.send_to(&chunk[..1200], udp_addr);
        }
        // The guest sends as much as it may and never reads.
        server.refill(&mut w);
        for (h, _, _) in &server.conns {
            let s = w.sockets.get_mut::<tcp::Socket>(*h);
            if s.can_send() {
                let _ = s.send_slice(&chunk);
            }
        }
        // For the second half, the guest stops taking frames: they queue.
        if start.elapsed() < Duration::from_secs(1) {
            w.step();
        } else {
            w.net.poll();
        }
        peak = peak.max(ALLOC.allocated().saturating_sub(baseline));
        std::thread::sleep(Duration::from_micros(500));
    }
    let stats = w.net.stats();
    let bound = limits.memory_bound();
    eprintln!("peak {peak} bytes of a {bound}-byte bound; {stats:?}");
    assert!(peak <= bound, "the user network took {peak} bytes, beyond its bound of {bound}");
    assert_eq!(stats.peak_connections, 8, "every relay was taken, and no more: {stats:?}");
    // The bound is not slack: the relays' buffers alone are most of it.
    let relays = limits.tcp_connections * 2 * limits.tcp_buffer;
    assert!(
        peak >= relays,
        "only {peak} bytes counted, less than the relays' buffers ({relays}): was the limit filled?"
    );
    assert!(stats.dropped_frames > 0, "the frame queue should have filled: {stats:?}");
}
