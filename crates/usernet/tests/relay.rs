//! The user network against a guest simulated with its own smoltcp stack,
//! exchanging frames in memory, with real host sockets on 127.0.0.1.

mod common;

use common::{GuestServer, World};
use skiff_usernet::Limits;
use skiff_usernet::config::{GATEWAY, GUEST};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::wire::IpAddress;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

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

/// Host clients one after another, like `ab -c 1` without keep-alive:
/// send a request, read the response to the end of stream, then write a
/// last record (TLS's close_notify) after the server's FIN, and close.
/// Returns how many got the whole response.
fn sequential_clients(addr: std::net::SocketAddr, count: usize) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut ok = 0;
        for i in 0..count {
            let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else { continue };
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut back = Vec::new();
            let served = c.write_all(format!("request {i}\n").as_bytes()).is_ok()
                && c.read_to_end(&mut back).is_ok()
                && back == format!("response {i}\n").as_bytes();
            let _ = c.write_all(b"close_notify");
            ok += usize::from(served);
        }
        ok
    })
}

/// Runs `count` sequential clients against a guest that answers each
/// request and closes. With `ack_close`, the guest keeps each socket until
/// it is fully closed; without, it drops it as soon as it reaches TIME-WAIT,
/// before its delayed acknowledgement of the gateway's FIN goes out (so the
/// gateway's close is never acknowledged, only reset after a
/// retransmission).
fn churn(count: usize, ack_close: bool) -> (usize, skiff_usernet::Stats) {
    let limits = Limits { tcp_connections: 4, ..Limits::default() };
    let (mut w, bound) = World::with_limits(vec!["0:80".parse().unwrap()], false, limits);
    w.static_address();
    let mut server = GuestServer::new(&mut w, 80);
    let client = sequential_clients(bound[0].host, count);
    // A few milliseconds per client when relays are freed at once; a
    // second each when a relay waits for the guest's acknowledgement.
    let finished = w.run_until(Duration::from_secs(20), |w| {
        server.refill(w);
        server.conns.retain_mut(|(h, _, request)| {
            let s = w.sockets.get_mut::<tcp::Socket>(*h);
            if !ack_close {
                s.set_ack_delay(Some(smoltcp::time::Duration::from_millis(10)));
            } else {
                s.set_ack_delay(None);
            }
            if s.can_recv() {
                s.recv(|b| {
                    request.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            if let Some(line) = request.strip_prefix(b"request ")
                && line.ends_with(b"\n")
                && s.may_send()
            {
                let n = String::from_utf8_lossy(&line[..line.len() - 1]).to_string();
                s.send_slice(format!("response {n}\n").as_bytes()).unwrap();
                s.close();
                request.clear();
            }
            let gone = match s.state() {
                tcp::State::Closed => true,
                tcp::State::TimeWait => !ack_close,
                _ => false,
            };
            if gone {
                w.sockets.remove(*h);
            }
            !gone
        });
        client.is_finished()
    });
    assert!(finished, "the clients did not finish: {:?}", w.net.stats());
    let ok = client.join().unwrap();
    // Every relay is freed once both sides are done.
    let idle = w.run_until(Duration::from_secs(2), |w| w.net.stats().open_connections == 0);
    assert!(idle, "relays still held after the last client: {:?}", w.net.stats());
    (ok, w.net.stats())
}

#[test]
fn sequential_connections_never_run_out_of_relays() {
    let (ok, stats) = churn(400, true);
    assert_eq!(ok, 400, "{stats:?}");
    assert_eq!(stats.published_connections, 400);
    assert!(stats.peak_connections <= 2, "one client at a time needs one relay (and one closing): {stats:?}");
    assert_eq!(stats.slow_closes, 0, "every close was acknowledged at once: {stats:?}");
}

#[test]
fn a_close_the_guest_never_acknowledges_does_not_hold_a_relay() {
    // Each gateway FIN waits a retransmission timeout (a second) for an
    // acknowledgement that never comes; 400 clients take far less than
    // 400 s, so the four relays are free long before the closes finish.
    let (ok, stats) = churn(400, false);
    assert_eq!(ok, 400, "{stats:?}");
    assert!(stats.peak_connections <= 4, "{stats:?}");
    assert!(stats.slow_closes > 0, "the closes should have been slow: {stats:?}");
}

#[test]
fn beyond_the_limit_connections_wait_in_the_backlog_and_none_is_dropped() {
    let limits = Limits { tcp_connections: 4, backlog: 32, ..Limits::default() };
    let (mut w, bound) = World::with_limits(vec!["0:7".parse().unwrap()], false, limits);
    w.static_address();
    let mut server = GuestServer::new(&mut w, 7);
    let addr = bound[0].host;
    // Twenty clients at once against four relays; each one's bytes must
    // come back whole, with a clean end of stream.
    let clients: Vec<_> = (0..20usize)
        .map(|i| {
            std::thread::spawn(move || -> Result<(), String> {
                let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
                c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let data: Vec<u8> = (0..5000 + i * 7).map(|j| (j % 251) as u8).collect();
                c.write_all(&data).map_err(|e| format!("write: {e}"))?;
                c.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())?;
                let mut back = Vec::new();
                c.read_to_end(&mut back).map_err(|e| format!("read: {e}"))?;
                if back == data { Ok(()) } else { Err(format!("{} of {} bytes back", back.len(), data.len())) }
            })
        })
        .collect();
    // The guest echoes and holds each connection 100 ms, so connections
    // pile up beyond the limit.
    let finished = w.run_until(Duration::from_secs(60), |w| {
        server.refill(w);
        server.conns.retain_mut(|(h, since, pending)| {
            let s = w.sockets.get_mut::<tcp::Socket>(*h);
            if s.can_recv() {
                s.recv(|b| {
                    pending.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            if since.elapsed() > Duration::from_millis(100) && !pending.is_empty() && s.can_send() {
                let n = s.send_slice(pending).unwrap();
                pending.drain(..n);
            }
            if s.state() == tcp::State::CloseWait && s.recv_queue() == 0 && pending.is_empty() {
                s.close();
            }
            let gone = matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait);
            if gone {
                w.sockets.remove(*h);
                server.served += 1;
            }
            !gone
        });
        clients.iter().all(|c| c.is_finished())
    });
    assert!(finished, "some clients hung: {:?}", w.net.stats());
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let stats = w.net.stats();
    assert!(results.iter().all(Result::is_ok), "{results:?} {stats:?}");
    assert_eq!(stats.published_connections, 20);
    assert_eq!(stats.peak_connections, 4, "{stats:?}");
    assert!(stats.limit_reached >= 1, "{stats:?}");
}

#[test]
fn outbound_connections_beyond_the_limit_are_refused_at_once() {
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let limits = Limits { tcp_connections: 3, ..Limits::default() };
    let (mut w, _) = World::with_limits(vec![], true, limits);
    w.static_address();
    let handles: Vec<_> = (0..5u16)
        .map(|i| {
            let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 4096]), tcp::SocketBuffer::new(vec![0; 4096]));
            let cx = w.iface.context();
            s.connect(cx, (IpAddress::Ipv4(GATEWAY), port), 41000 + i).unwrap();
            w.sockets.add(s)
        })
        .collect();
    let start = Instant::now();
    let settled = w.run_until(Duration::from_secs(5), |w| {
        let states: Vec<_> = handles.iter().map(|h| w.sockets.get::<tcp::Socket>(*h).state()).collect();
        states.iter().all(|s| matches!(s, tcp::State::Established | tcp::State::Closed))
    });
    assert!(settled, "connections still pending");
    let states: Vec<_> = handles.iter().map(|h| w.sockets.get::<tcp::Socket>(*h).state()).collect();
    let refused = states.iter().filter(|s| **s == tcp::State::Closed).count();
    assert_eq!(refused, 2, "{states:?}");
    assert!(start.elapsed() < Duration::from_secs(1), "the refusals took {:?}", start.elapsed());
    assert_eq!(w.net.stats().refused_connections, 2);
    drop(server);
}
