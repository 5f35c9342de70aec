//! Name server benchmark: examples/nameserver against NSD serving the same
//! zone files, behind identical TAP set-ups, in the same run (see `net.rs`
//! for the set-up):
//!
//! ```text
//! skiff:  [client ns] dnsperf -> tap0 10.0.0.1 ==TAP== skiff-tender -- nameserver 10.0.0.2
//! nsd:    [client ns] dnsperf -> tap0 10.0.0.1 ==TAP== forwarder ==TAP== tap1 10.0.0.2 [server ns] nsd
//! ```
//!
//! Measures queries per second with dnsperf (Debian `dnsperf`; 100
//! queries outstanding, a mix of answers, CNAME chains, NXDOMAIN, NODATA,
//! wildcards and referrals from the example's zones, the signed one too) and
//! the latency of one query at a time (p50, p99 of 5,000, a small UDP
//! client in the client namespace). NSD runs one server process with
//! response-rate limiting off, as the unikernel runs on one vCPU without
//! it. Three rounds, Skiff and NSD alternating; the ratio is taken within
//! each round.
//!
//! Then the image size, and the smallest `--mem` that serves a zone of
//! 100,000 records: the example built (`skiff build`, its own target
//! directory `target/guest-dns-bench`) with `NAMESERVER_ZONES` naming a
//! generated zone, booted with growing `--mem` until it starts and answers
//! 1,000 queries for random names of the zone.
//!
//! `cargo run --release -p skiff-bench --bin dns` (root, KVM, dnsperf, nsd).
//! `SKIFF_BENCH_QUICK=1`: one round of 2 s. `SKIFF_BENCH_ONLY=memory`:
//! only the sizes and the large zone. `SKIFF_BENCH_PROFILE=FILE`: only the
//! name server under dnsperf, with the tender's `--profile FILE --stats`
//! (printed when it stops). `SKIFF_BENCH_IMAGE=FILE`: that name server
//! image instead of building the example (to compare two builds).

use skiff_bench::{Linking, client_ns, guest, release_skiff, release_tender, start_linux, start_logged, workspace};
use skiff_testnet::{Guard, NetNs, Nsd, require_kvm, require_program, require_root, wait_for};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GUEST: &str = "10.0.0.2";

/// The query mix, dnsperf's format (name, type), sent without EDNS.
const QUERIES: &[&str] = &[
    "web.example.com A",
    "www.example.com A",
    "example.com MX",
    "example.com NS",
    "mail.example.com AAAA",
    "nope.example.com A",
    "web.example.com TXT",
    "anything.apps.example.com A",
    "host.lab.example.com A",
    "_sip._tcp.example.com SRV",
    "signed.example A",
    "missing.signed.example A",
];

/// One round: Skiff's dnsperf run and latency (p50, p99), then NSD's.
type Round = (Perf, (f64, f64), Perf, (f64, f64));

/// One dnsperf run.
#[derive(Clone, Copy, Debug)]
struct Perf {
    qps: f64,
    lost: u64,
    avg_us: f64,
}

fn dnsperf(ns: &NetNs, queries: &Path, secs: u32) -> Perf {
    let out = ns
        .command("dnsperf")
        .args(["-s", GUEST, "-p", "53", "-q", "100", "-l", &secs.to_string(), "-t", "2", "-d"])
        .arg(queries)
        .output()
        .expect("run dnsperf");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "dnsperf failed:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    let field = |name: &str| -> &str {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name:?} in dnsperf's output:\n{text}"))
    };
    let first = |s: &str| s.split_whitespace().next().unwrap_or("").to_string();
    Perf {
        qps: first(field("Queries per second:")).parse().expect("queries per second"),
        lost: first(field("Queries lost:")).parse().expect("queries lost"),
        avg_us: first(field("Average Latency (s):")).parse::<f64>().expect("latency") * 1e6,
    }
}

/// p50 and p99 of `count` queries sent one at a time (microseconds).
fn latency(ns: &NetNs, count: usize) -> (f64, f64) {
    let mut samples = ns.run(move || {
        let sock = UdpSocket::bind("10.0.0.1:0").expect("bind in the client namespace");
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 2048];
        let mut samples = Vec::with_capacity(count);
        for i in 0..count {
            let q = query(i as u16, QUERIES[i % QUERIES.len()]);
            let started = Instant::now();
            sock.send_to(&q, (GUEST, 53)).unwrap();
            loop {
                match sock.recv_from(&mut buf) {
                    Ok((n, _)) if n >= 2 && buf[..2] == q[..2] => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
        samples
    });
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], samples[samples.len() * 99 / 100])
}

/// A query message for "NAME TYPE" (types of the mix only).
fn query(id: u16, line: &str) -> Vec<u8> {
    let (name, rtype) = line.split_once(' ').unwrap();
    let qtype: u16 = match rtype {
        "A" => 1,
        "NS" => 2,
        "MX" => 15,
        "TXT" => 16,
        "AAAA" => 28,
        "SRV" => 33,
        other => panic!("type {other} is not in the mix"),
    };
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

fn zones() -> Vec<(String, PathBuf)> {
    let dir = workspace().join("examples/nameserver/zones");
    let mut zones: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let origin = p.file_name()?.to_str()?.strip_suffix(".zone")?.to_string();
            Some((origin, p))
        })
        .collect();
    zones.sort();
    zones
}

/// NSD in the server namespace on 10.0.0.2:53, one server process.
fn start_nsd(server: &NetNs, dir: &Path) -> Nsd {
    let d = dir.join("nsd");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let zones: String = zones()
        .iter()
        .map(|(origin, file)| format!("zone:\n  name: \"{origin}\"\n  zonefile: \"{}\"\n", file.display()))
        .collect();
    let listen = (GUEST.parse::<std::net::IpAddr>().unwrap(), 53).into();
    let nsd = Nsd::start(server.command("nsd"), &d, listen, "  verbosity: 1\n  ipv4-edns-size: 1232\n", &zones)
        .expect("start nsd");
    let up = wait_for(Duration::from_secs(10), || {
        server.run(|| {
            let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
            sock.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
            sock.send_to(&query(1, "web.example.com A"), (GUEST, 53)).ok()?;
            sock.recv_from(&mut [0u8; 512]).ok().map(|_| ())
        })
    });
    assert!(up.is_some(), "nsd did not start: {}", nsd.log());
    nsd
}

fn start_skiff(tender: &Path, image: &Path, extra: &[&std::ffi::OsStr]) -> (NetNs, Guard, PathBuf) {
    let ns = client_ns();
    let mut cmd = ns.command(tender);
    cmd.args(["--net", "service=tap0", "--mem", "64M", "--timeout", "600s"])
        .args(extra)
        .arg(image)
        .arg("--")
        .args(["--ipv4", "10.0.0.2/24"]);
    let (guest, log, _) = start_logged(cmd, &format!("dns-{}", ns.name()), "serving UDP and TCP on");
    (ns, guest, log)
}

/// Runs the name server with `--profile file --stats` under dnsperf for
/// `secs`, stops it as Ctrl-C would, and prints the rate and the tender's
/// statistics.
fn profile(tender: &Path, image: &Path, queries: &Path, secs: u32, file: &Path) {
    let file = std::path::absolute(file).expect("the profile's path");
    let (ns, mut guest, log) =
        start_skiff(tender, image, &["--stats".as_ref(), "--profile".as_ref(), file.as_os_str()]);
    let p = dnsperf(&ns, queries, secs);
    // SAFETY: kill(2) on the tender this process started and still owns.
    unsafe { libc::kill(guest.0.id() as libc::pid_t, libc::SIGINT) };
    let status = guest.0.wait().expect("wait for the tender");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let stats = text.lines().skip_while(|l| !l.contains("skiff-tender stats")).collect::<Vec<_>>().join("\n");
    println!("dnsperf: {:.0} q/s, {} lost, average {:.0} us; the tender ended with {status}", p.qps, p.lost, p.avg_us);
    println!("{stats}");
    println!("profile: {}", file.display());
}

/// Records in the large zone.
const LARGE: usize = 100_000;

/// Builds the example with a zone of [`LARGE`] records (`large.example`:
/// SOA, NS and `hN A` records) and returns the image.
fn large_zone_image(dir: &Path) -> PathBuf {
    let zones = dir.join("large-zones");
    std::fs::create_dir_all(&zones).unwrap();
    let mut text =
        String::from("$ORIGIN large.example.\n$TTL 3600\n@ SOA ns1 hostmaster 1 7200 3600 1209600 300\n@ NS ns1\n");
    for i in 0..LARGE - 2 {
        text += &format!("h{i} A 10.{}.{}.{}\n", i >> 16 & 255, i >> 8 & 255, i & 255);
    }
    std::fs::write(zones.join("large.example.zone"), text).unwrap();
    let out = Command::new(release_skiff())
        .args(["build", "--quiet", "--target-dir"])
        .arg(workspace().join("target/guest-dns-bench"))
        .arg(workspace().join("examples/nameserver"))
        .env("NAMESERVER_ZONES", &zones)
        .output()
        .expect("run skiff build");
    assert!(out.status.success(), "building the large zone failed:\n{}", String::from_utf8_lossy(&out.stderr));
    workspace().join("target/guest-dns-bench/x86_64-unknown-linux-gnu/release/nameserver")
}

/// Whether the image starts with `mem` and answers 1,000 queries for
/// random names of the large zone.
fn serves_large_zone(tender: &Path, image: &Path, mem: u32, dir: &Path) -> bool {
    let ns = client_ns();
    let log = dir.join(format!("large-{mem}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = ns.command(tender);
    cmd.args(["--net", "service=tap0", "--mem", &format!("{mem}M"), "--timeout", "120s"])
        .arg(image)
        .args(["--", "--ipv4", "10.0.0.2/24"])
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    skiff_tender::sys::unblock_stop_signals_on_exec(&mut cmd);
    let mut guest = Guard(cmd.spawn().expect("start the tender"));
    let up = wait_for(Duration::from_secs(60), || {
        if std::fs::read_to_string(&log).unwrap_or_default().contains("serving UDP and TCP on") {
            return Some(true);
        }
        guest.0.try_wait().ok().flatten().map(|_| false)
    });
    if up != Some(true) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        eprintln!("    --mem {mem}M: does not start: {}", text.lines().last().unwrap_or(""));
        return false;
    }
    let answered = ns.run(|| {
        let sock = UdpSocket::bind("10.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut buf = [0u8; 1024];
        (0..1000u16)
            .filter(|id| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let q = query(*id, &format!("h{}.large.example A", x as usize % (LARGE - 2)));
                sock.send_to(&q, (GUEST, 53)).unwrap();
                matches!(sock.recv_from(&mut buf), Ok((n, _)) if n > 12 && buf[..2] == q[..2] && buf[7] == 1)
            })
            .count()
    });
    let alive = guest.0.try_wait().ok().flatten().is_none();
    eprintln!("    --mem {mem}M: {answered} of 1000 answered, {}", if alive { "running" } else { "stopped" });
    answered == 1000 && alive
}

fn stripped_size(image: &Path) -> u64 {
    let stripped = std::env::temp_dir().join("skiff-bench-nameserver-stripped");
    let status = Command::new("objcopy").arg("--strip-all").arg(image).arg(&stripped).status().expect("objcopy");
    assert!(status.success());
    std::fs::metadata(&stripped).unwrap().len()
}

fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn main() {
    require_root();
    require_kvm();
    require_program("dnsperf", "dnsperf");
    require_program("nsd", "nsd");
    require_program("objcopy", "binutils");
    let tender = release_tender(Linking::Static);
    // SKIFF_BENCH_IMAGE=FILE: this name server image instead of building
    // examples/nameserver (to compare two builds).
    let image = match std::env::var_os("SKIFF_BENCH_IMAGE") {
        Some(file) => PathBuf::from(file),
        None => guest("examples/nameserver"),
    };
    let dir = std::env::temp_dir().join(format!("skiff-bench-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let queries = dir.join("queries.txt");
    std::fs::write(&queries, QUERIES.join("\n") + "\n").unwrap();
    // SKIFF_BENCH_QUICK=1: one short round, for trying changes.
    let quick = std::env::var_os("SKIFF_BENCH_QUICK").is_some();
    let secs = if quick { 2 } else { 5 };
    let rounds = if quick { 1 } else { 3 };
    let probes = if quick { 1000 } else { 5000 };
    eprintln!("dns benchmark: {rounds} rounds of {secs} s, Skiff and NSD alternating");

    // SKIFF_BENCH_PROFILE=FILE: only Skiff under dnsperf, profiled into
    // FILE (folded stacks, or a flame graph when it ends in .svg), with the
    // tender's --stats.
    if let Some(file) = std::env::var_os("SKIFF_BENCH_PROFILE") {
        profile(&tender, &image, &queries, secs, Path::new(&file));
        return;
    }
    // SKIFF_BENCH_ONLY=memory: only the image sizes and the large zone.
    let only_memory = std::env::var("SKIFF_BENCH_ONLY").is_ok_and(|v| v == "memory");
    let mut runs: Vec<Round> = Vec::new();
    for round in 0..if only_memory { 0 } else { rounds } {
        eprintln!("  round {}", round + 1);
        let (skiff, skiff_lat) = {
            let (ns, mut guest, log) = start_skiff(&tender, &image, &[]);
            let p = dnsperf(&ns, &queries, secs);
            let l = latency(&ns, probes);
            let alive = guest.0.try_wait().ok().flatten().is_none();
            assert!(alive, "the name server stopped:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            (p, l)
        };
        eprintln!(
            "    skiff: {:.0} q/s, {} lost, p50 {:.0} us, p99 {:.0} us",
            skiff.qps, skiff.lost, skiff_lat.0, skiff_lat.1
        );
        let (nsd, nsd_lat) = {
            let l = start_linux();
            let _n = start_nsd(&l.server, &dir);
            (dnsperf(&l.client, &queries, secs), latency(&l.client, probes))
        };
        eprintln!("    nsd:   {:.0} q/s, {} lost, p50 {:.0} us, p99 {:.0} us", nsd.qps, nsd.lost, nsd_lat.0, nsd_lat.1);
        runs.push((skiff, skiff_lat, nsd, nsd_lat));
    }
    let size = stripped_size(&image);
    eprintln!("  a zone of {LARGE} records");
    let large = large_zone_image(&dir);
    let large_size = stripped_size(&large);
    let smallest =
        [8, 12, 16, 24, 32, 48, 64, 96, 128].into_iter().find(|&m| serves_large_zone(&tender, &large, m, &dir));

    if only_memory {
        println!("image {size} bytes stripped, {large_size} with {LARGE} records; smallest --mem {smallest:?} MiB");
        return;
    }
    let col = |f: &dyn Fn(&Round) -> f64| spread(&runs.iter().map(f).collect::<Vec<_>>());
    let show = |(m, lo, hi): (f64, f64, f64), d: usize| format!("{m:.d$} ({lo:.d$}-{hi:.d$})");
    println!("## Name server: examples/nameserver against NSD (median of {rounds} runs of {secs} s, min-max)");
    println!();
    println!("| measure | Skiff | NSD | Skiff / NSD |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| dnsperf queries/s (100 outstanding) | {} | {} | {} |",
        show(col(&|r| r.0.qps), 0),
        show(col(&|r| r.2.qps), 0),
        show(col(&|r| r.0.qps / r.2.qps), 2)
    );
    println!(
        "| dnsperf average latency, us | {} | {} | {} |",
        show(col(&|r| r.0.avg_us), 0),
        show(col(&|r| r.2.avg_us), 0),
        show(col(&|r| r.0.avg_us / r.2.avg_us), 2)
    );
    println!(
        "| one query at a time, p50 us | {} | {} | {} |",
        show(col(&|r| r.1.0), 0),
        show(col(&|r| r.3.0), 0),
        show(col(&|r| r.1.0 / r.3.0), 2)
    );
    println!(
        "| one query at a time, p99 us | {} | {} | {} |",
        show(col(&|r| r.1.1), 0),
        show(col(&|r| r.3.1), 0),
        show(col(&|r| r.1.1 / r.3.1), 2)
    );
    println!(
        "| queries lost (dnsperf) | {} | {} | |",
        runs.iter().map(|r| r.0.lost.to_string()).collect::<Vec<_>>().join(", "),
        runs.iter().map(|r| r.2.lost.to_string()).collect::<Vec<_>>().join(", ")
    );
    println!();
    println!("| measure | value | target |");
    println!("| --- | ---: | ---: |");
    println!("| nameserver image, stripped | {:.0} KiB | at most 1024 KiB |", size as f64 / 1024.0);
    println!("| the same with a zone of {LARGE} records | {:.0} KiB | |", large_size as f64 / 1024.0);
    match smallest {
        Some(m) => println!("| smallest --mem serving {LARGE} records | {m} MiB | |"),
        None => println!("| smallest --mem serving {LARGE} records | over 128 MiB | |"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
