//! Connections that reach a published port before the guest listens: held
//! and handed over within milliseconds of the guest listening, or reset
//! after the hold.

mod common;

use common::{GuestServer, World};
use skiff_usernet::Limits;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Echoes on the guest's connections; returns when `done`.
fn echo(server: &mut GuestServer, w: &mut World) {
    use smoltcp::socket::tcp;
    server.refill(w);
    for (h, _, _) in &server.conns {
        let s = w.sockets.get_mut::<tcp::Socket>(*h);
        let mut buf = [0u8; 1024];
        if s.can_recv() && s.can_send() {
            let n = s.recv_slice(&mut buf).unwrap();
            s.send_slice(&buf[..n]).unwrap();
        }
    }
}

/// The client connects before the guest has its address, the guest gets it
/// 20 ms later and listens 40 ms later: the echo comes back within
/// milliseconds of the listener, not after a second (the gateway's ARP
/// silence and SYN retransmission timeout).
#[test]
fn a_connection_before_the_guest_listens_is_held_and_served_within_milliseconds() {
    let (mut w, bound) = World::new(vec!["0:7".parse().unwrap()], false);
    let addr = bound[0].host;
    let start = Instant::now();
    let client = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"early").unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"early");
        Instant::now()
    });
    let mut server: Option<GuestServer> = None;
    let mut addressed = false;
    let mut listened_at = None;
    let done = w.run_until(Duration::from_secs(5), |w| {
        let t = start.elapsed();
        if !addressed && t >= Duration::from_millis(20) {
            w.static_address();
            addressed = true;
        }
        if server.is_none() && t >= Duration::from_millis(40) {
            server = Some(GuestServer::new(w, 7));
            listened_at = Some(Instant::now());
            w.net.guest_listens();
        }
        if let Some(s) = &mut server {
            echo(s, w);
        }
        client.is_finished()
    });
    assert!(done, "the client got no echo: {:?}", w.net.stats());
    let answered = client.join().unwrap();
    let after = answered.duration_since(listened_at.unwrap());
    eprintln!("echo {:.1} ms after the guest listened", after.as_secs_f64() * 1e3);
    assert!(after < Duration::from_millis(100), "{after:?} after the guest listened");
    let stats = w.net.stats();
    assert_eq!(stats.held_connections, 1, "{stats:?}");
    assert_eq!(stats.hold_timeouts, 0, "{stats:?}");
}

/// Without the tender's word that the guest listens, the retries alone
/// find the listener within their step (at most 32 ms).
#[test]
fn retries_alone_find_a_late_listener() {
    let (mut w, bound) = World::new(vec!["0:7".parse().unwrap()], false);
    w.static_address();
    let addr = bound[0].host;
    let client = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).map(|_| Instant::now())
    });
    let start = Instant::now();
    let mut server: Option<GuestServer> = None;
    let mut listened_at = None;
    let done = w.run_until(Duration::from_secs(5), |w| {
        if server.is_none() && start.elapsed() >= Duration::from_millis(300) {
            server = Some(GuestServer::new(w, 7));
            listened_at = Some(Instant::now());
        }
        if let Some(s) = &mut server {
            echo(s, w);
        }
        client.is_finished()
    });
    assert!(done);
    let after = client.join().unwrap().expect("echo").duration_since(listened_at.unwrap());
    assert!(after < Duration::from_millis(100), "{after:?} after the guest listened");
    assert!(w.net.stats().held_connections >= 1);
}

/// A guest that never listens: the host connection is reset after the
/// hold, not held for ever, and not before.
#[test]
fn a_guest_that_never_listens_gets_the_host_side_reset_after_the_hold() {
    let hold = Duration::from_millis(300);
    let (mut w, bound) = World::with_limits(vec!["0:7".parse().unwrap()], false, Limits { hold, ..Limits::default() });
    w.static_address();
    let addr = bound[0].host;
    let start = Instant::now();
    let client = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        let r = c.read(&mut b);
        (r.map_err(|e| e.kind()), Instant::now())
    });
    let done = w.run_until(Duration::from_secs(5), |_| client.is_finished());
    assert!(done, "held for ever");
    let (result, at) = client.join().unwrap();
    let after = at.duration_since(start);
    assert_eq!(result, Err(ErrorKind::ConnectionReset), "after {after:?}");
    assert!(after >= hold && after < hold + Duration::from_millis(300), "reset after {after:?}");
    let stats = w.net.stats();
    assert_eq!((stats.held_connections, stats.hold_timeouts, stats.open_connections), (1, 1, 0), "{stats:?}");
}

/// A hold of zero keeps the old behaviour: the guest's reset reaches the
/// host client without a hold (here after one SYN retransmission: the
/// simulated guest drops its first reset while it asks for the gateway's
/// MAC).
#[test]
fn with_no_hold_a_refused_connection_is_reset_at_once() {
    let (mut w, bound) =
        World::with_limits(vec!["0:7".parse().unwrap()], false, Limits { hold: Duration::ZERO, ..Limits::default() });
    w.static_address();
    let addr = bound[0].host;
    let client = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let start = Instant::now();
        let mut b = [0u8; 1];
        (c.read(&mut b).map_err(|e| e.kind()), start.elapsed())
    });
    assert!(w.run_until(Duration::from_secs(5), |_| client.is_finished()));
    let (result, took) = client.join().unwrap();
    assert_eq!(result, Err(ErrorKind::ConnectionReset));
    assert!(took < Duration::from_millis(1500), "{took:?}");
    let stats = w.net.stats();
    assert_eq!((stats.held_connections, stats.hold_timeouts), (0, 0), "{stats:?}");
}

/// More early connections than relays: the held ones keep their slots, the
/// rest wait in the backlog, and all are served once the guest listens.
#[test]
fn held_connections_stay_within_the_connection_limit() {
    let limits = Limits { tcp_connections: 4, backlog: 32, ..Limits::default() };
    let (mut w, bound) = World::with_limits(vec!["0:7".parse().unwrap()], false, limits);
    w.static_address();
    let addr = bound[0].host;
    let clients: Vec<_> = (0..12u8)
        .map(|i| {
            std::thread::spawn(move || -> Result<(), String> {
                let mut c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                c.write_all(&[i]).map_err(|e| e.to_string())?;
                let mut b = [0u8; 1];
                c.read_exact(&mut b).map_err(|e| e.to_string())?;
                if b[0] == i { Ok(()) } else { Err(format!("{} back for {i}", b[0])) }
            })
        })
        .collect();
    let start = Instant::now();
    let mut server: Option<GuestServer> = None;
    let mut peak_held = 0;
    let done = w.run_until(Duration::from_secs(10), |w| {
        peak_held = peak_held.max(w.net.held());
        if server.is_none() && start.elapsed() >= Duration::from_millis(200) {
            server = Some(GuestServer::new(w, 7));
            w.net.guest_listens();
        }
        if let Some(s) = &mut server {
            echo(s, w);
            s.conns.retain(|(h, _, _)| {
                let s = w.sockets.get_mut::<smoltcp::socket::tcp::Socket>(*h);
                if s.state() == smoltcp::socket::tcp::State::CloseWait {
                    s.close();
                }
                true
            });
        }
        clients.iter().all(|c| c.is_finished())
    });
    assert!(done, "clients hung: {:?}", w.net.stats());
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let stats = w.net.stats();
    assert_eq!(peak_held, 4, "held connections are relays: {stats:?}");
    assert!(stats.peak_connections <= 4, "{stats:?}");
}

/// Three times more early connections than relays, to a guest that never
/// listens: the relays hold four, the listen backlog the rest, and every
/// one is reset after its hold, none held for ever. (Beyond the backlog
/// the host kernel would leave clients to its own retransmission timers,
/// as with any server whose accept queue is full.)
#[test]
fn early_connections_beyond_the_limits_to_a_guest_that_never_listens_all_end() {
    let hold = Duration::from_millis(300);
    let limits = Limits { tcp_connections: 4, backlog: 8, hold, ..Limits::default() };
    let (mut w, bound) = World::with_limits(vec!["0:7".parse().unwrap()], false, limits);
    w.static_address();
    let addr = bound[0].host;
    let clients: Vec<_> = (0..12)
        .map(|_| {
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).and_then(|mut c| {
                    c.set_read_timeout(Some(Duration::from_secs(10)))?;
                    let mut b = [0u8; 1];
                    c.read(&mut b)
                });
                (r.map_err(|e| e.kind()), t.elapsed())
            })
        })
        .collect();
    let done = w.run_until(Duration::from_secs(15), |_| clients.iter().all(|c| c.is_finished()));
    let stats = w.net.stats();
    assert!(done, "{stats:?}");
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    for (r, t) in &results {
        assert_eq!(*r, Err(ErrorKind::ConnectionReset), "after {t:?}: {results:?} {stats:?}");
        assert!(*t >= hold, "{t:?}");
    }
    let last = results.iter().map(|(_, t)| *t).max().unwrap();
    assert!(last < Duration::from_secs(3), "three rounds of holds took {last:?}");
    assert!(stats.peak_connections <= 4, "{stats:?}");
    assert_eq!(stats.hold_timeouts, 12, "{stats:?}");
}
