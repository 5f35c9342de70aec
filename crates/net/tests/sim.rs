//! A seeded network simulation, the smoltcp way: two complete stacks on the
//! host, joined by a simulated Ethernet link that loses, duplicates, delays
//! and reorders frames deterministically (per seed), driven by the Skiff
//! executor on a manual clock. The socket layer must deliver every byte in
//! order regardless.

use skiff_net::{NetConfig, Stack, TcpListener, TcpStream, UdpSocket};
use skiff_rt::NetDevice;
use skiff_rt::executor::{Executor, Platform, sleep_until};
use skiff_rt::time::{Instant, advance_manual_clock};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// What the link does to frames.
#[derive(Clone, Copy)]
struct Impairments {
    loss: f64,
    duplicate: f64,
    latency: Duration,
    /// Share of frames held back by `hold_back`, which puts them behind
    /// frames sent after them.
    reorder: f64,
    hold_back: Duration,
}

struct Link {
    rng: u64,
    imp: Impairments,
    /// Frames on the wire towards side 0 and side 1: (arrival, frame).
    wire: [Vec<(Instant, Vec<u8>)>; 2],
    inbox: [VecDeque<Vec<u8>>; 2],
    nic_waker: [Option<Waker>; 2],
    link_waker: Option<Waker>,
    sent: u64,
    lost: u64,
}

impl Link {
    fn random(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn transmit(&mut self, to: usize, frame: Vec<u8>) {
        self.sent += 1;
        if self.random() < self.imp.loss {
            self.lost += 1;
            return;
        }
        let copies = if self.random() < self.imp.duplicate { 2 } else { 1 };
        for _ in 0..copies {
            let extra = if self.random() < self.imp.reorder { self.imp.hold_back } else { Duration::ZERO };
            let at = Instant::now() + self.imp.latency + extra;
            self.wire[to].push((at, frame.clone()));
        }
        if let Some(w) = self.link_waker.take() {
            w.wake();
        }
    }

    /// Moves frames that have arrived into the inboxes; returns the next
    /// arrival time.
    fn deliver(&mut self) -> Option<Instant> {
        let now = Instant::now();
        for side in 0..2 {
            let mut arrived: Vec<(Instant, Vec<u8>)> = Vec::new();
            self.wire[side].retain(|(at, f)| {
                if *at <= now {
                    arrived.push((*at, f.clone()));
                    false
                } else {
                    true
                }
            });
            arrived.sort_by_key(|(at, _)| *at);
            if !arrived.is_empty() {
                self.inbox[side].extend(arrived.into_iter().map(|(_, f)| f));
                if let Some(w) = self.nic_waker[side].take() {
                    w.wake();
                }
            }
        }
        self.wire.iter().flatten().map(|(at, _)| *at).min()
    }
}

struct SimNic {
    side: usize,
    link: Rc<RefCell<Link>>,
    mac: [u8; 6],
}

impl NetDevice for SimNic {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }
    fn mtu(&self) -> usize {
        1500
    }
    fn rx_pending(&mut self) -> bool {
        !self.link.borrow().inbox[self.side].is_empty()
    }
    fn recv(&mut self, f: &mut dyn FnMut(&[u8])) -> bool {
        let frame = self.link.borrow_mut().inbox[self.side].pop_front();
        match frame {
            Some(frame) => {
                f(&frame);
                true
            }
            None => false,
        }
    }
    fn tx_room(&mut self) -> bool {
        true
    }
    fn send(&mut self, len: usize, f: &mut dyn FnMut(&mut [u8])) -> bool {
        let mut frame = vec![0u8; len];
        f(&mut frame);
        self.link.borrow_mut().transmit(1 - self.side, frame);
        true
    }
    fn flush(&mut self) {}
    fn poll_rx(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut link = self.link.borrow_mut();
        if link.inbox[self.side].is_empty() {
            link.nic_waker[self.side] = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

/// Carries frames across the link as their arrival times come.
async fn run_link(link: Rc<RefCell<Link>>) {
    loop {
        let next = link.borrow_mut().deliver();
        match next {
            Some(at) => sleep_until(at).await,
            None => {
                std::future::poll_fn(|cx| {
                    let mut l = link.borrow_mut();
                    if l.wire.iter().all(Vec::is_empty) {
                        l.link_waker = Some(cx.waker().clone());
                        Poll::Pending
                    } else {
                        Poll::Ready(())
                    }
                })
                .await
            }
        }
    }
}

/// Idle time passes instantly: the clock jumps to the next deadline.
struct SimulatedTime;

impl Platform for SimulatedTime {
    fn poll(&mut self, timeout: Option<Duration>, _interest: u64) -> u64 {
        advance_manual_clock(timeout.expect("the simulation always has a timer pending"));
        0
    }
    fn has_devices(&self) -> bool {
        false
    }
}

fn config(addr: &str) -> NetConfig {
    let args: Vec<String> = vec!["--ipv4".into(), format!("{addr}/24")];
    NetConfig::from_args(&args).unwrap().0
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs a TCP echo over the simulated link; returns (bytes echoed, frames
/// sent, frames lost, simulated time).
fn tcp_echo_over(seed: u64, imp: Impairments, total: usize) -> (usize, u64, u64, Duration) {
    let link = Rc::new(RefCell::new(Link {
        rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        imp,
        wire: [Vec::new(), Vec::new()],
        inbox: [VecDeque::new(), VecDeque::new()],
        nic_waker: [None, None],
        link_waker: None,
        sent: 0,
        lost: 0,
    }));
    let mut ex = Executor::new();
    let spawner = ex.spawner();
    let started = Instant::now();
    let l = link.clone();
    let echoed = ex
        .run(
            async move {
                spawner.spawn(run_link(l.clone()));
                let a = Stack::new(
                    Box::new(SimNic { side: 0, link: l.clone(), mac: [2, 0, 0, 0, 0, 1] }),
                    config("10.0.0.1"),
                    &spawner,
                );
                let b = Stack::new(
                    Box::new(SimNic { side: 1, link: l.clone(), mac: [2, 0, 0, 0, 0, 2] }),
                    config("10.0.0.2"),
                    &spawner,
                );
                let listener = TcpListener::bind(&a, 7).unwrap();
                spawner.spawn(async move {
                    let (mut s, _) = listener.accept().await.unwrap();
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let n = s.read(&mut buf).await.unwrap();
                        if n == 0 {
                            break;
                        }
                        s.write_all(&buf[..n]).await.unwrap();
                    }
                    s.flush().await.unwrap();
                    s.shutdown();
                });
                let data = pattern(seed, total);
                let server = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 7));
                let stream = TcpStream::connect(&b, server).await.expect("connect over the lossy link");
                let (mut rd, mut wr) = stream.into_split();
                let to_send = data.clone();
                let writer = spawner.spawn(async move {
                    for chunk in to_send.chunks(3000) {
                        wr.write_all(chunk).await.unwrap();
                    }
                    wr.flush().await.unwrap();
                    drop(wr);
                });
                let mut back = Vec::new();
                let mut buf = vec![0u8; 8192];
                loop {
                    let n = rd.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    back.extend_from_slice(&buf[..n]);
                }
                writer.await;
                assert!(back == data, "seed {seed}: {} bytes back of {}, or changed", back.len(), data.len());
                back.len()
            },
            &mut SimulatedTime,
        )
        .unwrap();
    let l = link.borrow();
    (echoed, l.sent, l.lost, Instant::now() - started)
}

#[test]
fn tcp_over_a_clean_link() {
    let clean = Impairments {
        loss: 0.0,
        duplicate: 0.0,
        latency: Duration::from_micros(50),
        reorder: 0.0,
        hold_back: Duration::ZERO,
    };
    let (n, sent, lost, _) = tcp_echo_over(1, clean, 1 << 20);
    assert_eq!(n, 1 << 20);
    assert!(sent > 1000);
    assert_eq!(lost, 0);
}

/// A connection with the default buffers keeps a link with a 2 ms round
/// trip busy: its window (receive buffer) and the data it keeps in flight
/// (send buffer) must cover a bulk transfer's bandwidth-delay product, or
/// every window's worth waits a round trip. 4 MiB each way take 64 round
/// trips with 64 KiB buffers (about 130 ms), 16 with 256 KiB.
#[test]
fn default_buffers_fill_a_link_with_latency() {
    let far = Impairments {
        loss: 0.0,
        duplicate: 0.0,
        latency: Duration::from_millis(1),
        reorder: 0.0,
        hold_back: Duration::ZERO,
    };
    let (n, _, _, took) = tcp_echo_over(3, far, 4 << 20);
    assert_eq!(n, 4 << 20);
    assert!(took < Duration::from_millis(60), "4 MiB echoed in {took:?} of simulated time over a 2 ms round trip");
}

#[test]
fn tcp_survives_loss_duplication_and_reordering_for_many_seeds() {
    // The netem settings of the boot test: 3% loss, 5% reordered, 1%
    // duplicated.
    let rough = Impairments {
        loss: 0.03,
        duplicate: 0.01,
        latency: Duration::from_millis(1),
        reorder: 0.05,
        hold_back: Duration::from_millis(2),
    };
    for seed in 1..=8 {
        let (n, sent, lost, took) = tcp_echo_over(seed, rough, 256 * 1024);
        assert_eq!(n, 256 * 1024);
        assert!(lost > 0, "seed {seed}: the link should have lost something ({sent} frames)");
        eprintln!("seed {seed}: {sent} frames, {lost} lost, {took:?} simulated");
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let rough = Impairments {
        loss: 0.05,
        duplicate: 0.02,
        latency: Duration::from_millis(1),
        reorder: 0.1,
        hold_back: Duration::from_millis(3),
    };
    let a = tcp_echo_over(42, rough, 64 * 1024);
    let b = tcp_echo_over(42, rough, 64 * 1024);
    assert_eq!((a.1, a.2), (b.1, b.2), "frames sent and lost differ between identical runs");
}

#[test]
fn udp_datagrams_cross_the_link() {
    let clean = Impairments {
        loss: 0.0,
        duplicate: 0.0,
        latency: Duration::from_micros(100),
        reorder: 0.0,
        hold_back: Duration::ZERO,
    };
    let link = Rc::new(RefCell::new(Link {
        rng: 7,
        imp: clean,
        wire: [Vec::new(), Vec::new()],
        inbox: [VecDeque::new(), VecDeque::new()],
        nic_waker: [None, None],
        link_waker: None,
        sent: 0,
        lost: 0,
    }));
    let mut ex = Executor::new();
    let spawner = ex.spawner();
    let got = ex
        .run(
            async move {
                spawner.spawn(run_link(link.clone()));
                let a = Stack::new(
                    Box::new(SimNic { side: 0, link: link.clone(), mac: [2, 0, 0, 0, 0, 1] }),
                    config("10.0.0.1"),
                    &spawner,
                );
                let b = Stack::new(
                    Box::new(SimNic { side: 1, link: link.clone(), mac: [2, 0, 0, 0, 0, 2] }),
                    config("10.0.0.2"),
                    &spawner,
                );
                let server = UdpSocket::bind(&a, 7).unwrap();
                let client = UdpSocket::bind(&b, 5000).unwrap();
                spawner.spawn(async move {
                    let mut buf = [0u8; 2048];
                    loop {
                        let (n, from) = server.recv_from(&mut buf).await.unwrap();
                        server.send_to(&buf[..n], from).await.unwrap();
                    }
                });
                let mut got = Vec::new();
                for i in 0..20u32 {
                    let msg = format!("datagram {i}");
                    client.send_to(msg.as_bytes(), SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 7))).await.unwrap();
                    let mut buf = [0u8; 64];
                    let (n, from) = client.recv_from(&mut buf).await.unwrap();
                    assert_eq!(from, SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 7)));
                    got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
                got
            },
            &mut SimulatedTime,
        )
        .unwrap();
    assert_eq!(got.len(), 20);
    assert_eq!(got[19], "datagram 19");
}
