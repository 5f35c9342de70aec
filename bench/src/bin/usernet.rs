//! User networking benchmark: TCP throughput and connection rate to a
//! guest through `--publish` on 127.0.0.1, against the same client talking
//! to the same guest over a TAP device, in the same run.
//!
//! `cargo run --release -p skiff-bench --bin usernet` (root for the TAP
//! half, KVM).

use skiff_bench::{Linking, guest, release_tender, start_logged};
use skiff_testnet::{Guard, NetNs, require_kvm, require_root};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Where the client reaches the guest's ports, and what runs it.
struct Target {
    _guest: Guard,
    _ns: Option<NetNs>,
    ports: Vec<(u16, SocketAddr)>,
    log: std::path::PathBuf,
}

impl Target {
    fn addr(&self, guest_port: u16) -> SocketAddr {
        self.ports.iter().find(|(p, _)| *p == guest_port).expect("published port").1
    }

    /// Runs `f` where the client belongs: in the namespace for the TAP
    /// set-up, on the host for the user network.
    fn client<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        match &self._ns {
            Some(ns) => ns.run(f),
            None => f(),
        }
    }
}

fn user_target(tender: &Path, image: &Path, guest_ports: &[u16], guest_args: &[&str], ready: &str) -> Target {
    let mut cmd = Command::new(tender);
    cmd.args(["--net", "service=user", "--timeout", "120s"]);
    for p in guest_ports {
        cmd.args(["--publish", &format!("0:{p}")]);
    }
    cmd.arg(image).arg("--").args(guest_args);
    let tag = format!("usernet-{}-user-{}", std::process::id(), guest_ports[0]);
    let (guard, log, text) = start_logged(cmd, &tag, ready);
    let ports = guest_ports
        .iter()
        .map(|p| {
            let line = text.lines().find(|l| l.ends_with(&format!("/tcp -> guest port {p}"))).expect("published line");
            let addr = line.split_whitespace().nth(1).unwrap().trim_end_matches("/tcp").parse().unwrap();
            (*p, addr)
        })
        .collect();
    Target { _guest: guard, _ns: None, ports, log }
}

fn tap_target(tender: &Path, image: &Path, guest_ports: &[u16], guest_args: &[&str], ready: &str) -> Target {
    let ns = NetNs::new().expect("namespace");
    ns.add_tap("tap0", &["10.0.0.1/24"]).expect("tap");
    let mut cmd = ns.command(tender);
    cmd.args(["--net", "service=tap0", "--timeout", "120s"])
        .arg(image)
        .arg("--")
        .args(["--ipv4", "10.0.0.2/24"])
        .args(guest_args);
    let tag = format!("usernet-{}-tap-{}", std::process::id(), guest_ports[0]);
    let (guard, log, _) = start_logged(cmd, &tag, ready);
    let ports = guest_ports.iter().map(|p| (*p, format!("10.0.0.2:{p}").parse().unwrap())).collect();
    Target { _guest: guard, _ns: Some(ns), ports, log }
}

fn bulk_in(t: &Target, bytes: u64) -> f64 {
    let addr = t.addr(9);
    t.client(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let chunk = vec![0xa5u8; 256 * 1024];
        let start = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = (chunk.len() as u64).min(left) as usize;
            s.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut count = [0u8; 8];
        s.read_exact(&mut count).unwrap();
        assert_eq!(u64::from_le_bytes(count), bytes);
        bytes as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
    })
}

fn bulk_out(t: &Target, bytes: u64) -> f64 {
    let addr = t.addr(19);
    t.client(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let start = Instant::now();
        s.write_all(&bytes.to_le_bytes()).unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < bytes {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            got += n as u64;
        }
        bytes as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
    })
}

/// Connections per second: connect, one byte there and back, close; one
/// client after another for `secs`.
fn connection_rate(t: &Target, secs: u64) -> f64 {
    let addr = t.addr(7);
    t.client(move || {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(secs) {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            s.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            drop(s);
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
}

fn main() {
    require_root();
    require_kvm();
    let tender = release_tender(Linking::Static);
    let netprobe = guest("tests/guests/netprobe");
    let echo = guest("examples/echo");
    let bytes: u64 = 256 << 20;
    let rounds = 3;
    eprintln!("user networking benchmark: {rounds} rounds of each, alternating user network and TAP");

    let (mut u_in, mut u_out, mut t_in, mut t_out) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut u_conn, mut t_conn) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        eprintln!("  round {}", round + 1);
        let u = user_target(&tender, &netprobe, &[9, 19], &["bulk"], "netprobe: bulk on ports");
        u_in.push(bulk_in(&u, bytes));
        u_out.push(bulk_out(&u, bytes));
        drop(u);
        let t = tap_target(&tender, &netprobe, &[9, 19], &["bulk"], "netprobe: bulk on ports");
        t_in.push(bulk_in(&t, bytes));
        t_out.push(bulk_out(&t, bytes));
        drop(t);
        let u = user_target(&tender, &echo, &[7], &[], "echo: serving");
        u_conn.push(connection_rate(&u, 3));
        let _ = &u.log;
        drop(u);
        let t = tap_target(&tender, &echo, &[7], &[], "echo: serving");
        t_conn.push(connection_rate(&t, 3));
        drop(t);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ui, uo, ti, to) = (median(&mut u_in), median(&mut u_out), median(&mut t_in), median(&mut t_out));
    let (uc, tc) = (median(&mut u_conn), median(&mut t_conn));
    println!("## User networking: `--publish` against a TAP device (median of {rounds} rounds)");
    println!();
    println!("| measure | `--publish` on 127.0.0.1 | TAP device | publish / TAP |");
    println!("| --- | ---: | ---: | ---: |");
    println!("| TCP into the guest, {} MiB | {ui:.0} MiB/s | {ti:.0} MiB/s | {:.2} |", bytes >> 20, ui / ti);
    println!("| TCP out of the guest, {} MiB | {uo:.0} MiB/s | {to:.0} MiB/s | {:.2} |", bytes >> 20, uo / to);
    println!("| connections per second (connect, 1 byte each way, close) | {uc:.0} | {tc:.0} | {:.2} |", uc / tc);
    println!();
    println!("Target: within 20% of the TAP path (ratios of 0.80 or more).");
}
