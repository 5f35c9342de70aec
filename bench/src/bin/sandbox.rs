//! Process mode against KVM mode over the same TAP path, in one run: a
//! ping flood to the echo example, and 1 KiB HTTPS requests (keep-alive,
//! wrk, 16 connections) to examples/static-website. Each figure is the
//! median of three rounds, the two modes alternating.
//!
//! ```text
//! [client ns] ping / wrk -> tap0 10.0.0.1 ==TAP== skiff-tender [--sandbox process] -- guest 10.0.0.2
//! ```
//!
//! `cargo run --release -p skiff-bench --bin sandbox` (root, KVM, ping, wrk).

use skiff_bench::{Linking, client_ns, guest, load_average, median, release_tender, start_logged};
use skiff_testnet::{Guard, NetNs, require_kvm, require_program, require_root};
use std::path::Path;

const GUEST: &str = "10.0.0.2";

/// The two sandboxes: their name and the tender options that select them.
const MODES: [(&str, &[&str]); 2] = [("KVM", &[]), ("process", &["--sandbox", "process"])];

struct Skiff {
    ns: NetNs,
    _guest: Guard,
}

fn start(tender: &Path, image: &Path, mode: &[&str], guest_args: &[String], ready: &str) -> Skiff {
    let ns = client_ns();
    let mut cmd = ns.command(tender);
    cmd.args(mode)
        .args(["--net", "service=tap0", "--timeout", "120s"])
        .arg(image)
        .arg("--")
        .args(["--ipv4", "10.0.0.2/24"])
        .args(guest_args);
    let (guest, _, _) = start_logged(cmd, &format!("sandbox-{}", ns.name()), ready);
    Skiff { ns, _guest: guest }
}

/// Ping flood: pings per second.
fn ping_flood(ns: &NetNs, count: u32) -> f64 {
    let out =
        ns.command("ping").args(["-f", "-q", "-c", &count.to_string(), "-W", "1", GUEST]).output().expect("run ping");
    let text = String::from_utf8_lossy(&out.stdout);
    let received: f64 = text
        .split(" received")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0.0);
    let ms: f64 = text
        .split("time ")
        .nth(1)
        .and_then(|s| s.split("ms").next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(f64::NAN);
    assert!(received >= f64::from(count) * 0.99, "ping flood lost replies:\n{text}");
    received / (ms / 1000.0)
}

/// wrk against `url` with 16 keep-alive connections: requests per second
/// (zero if any request failed).
fn wrk(ns: &NetNs, url: &str, secs: u32) -> f64 {
    let w = skiff_bench::wrk(ns, url, 16, secs, false);
    if w.errors > 0 {
        eprintln!("    wrk: {} failures against {url}", w.errors);
        return 0.0;
    }
    w.rps
}

/// The rounds' figures, in order, and their spread (max / min).
fn by_round(v: &[f64]) -> String {
    let all: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
    let (lo, hi) = v.iter().fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    format!("{} (max/min {:.2})", all.join(", "), hi / lo.max(1.0))
}

fn main() {
    require_root();
    require_kvm();
    require_program("ping", "iputils-ping");
    require_program("wrk", "wrk");
    require_program("openssl", "openssl");
    let pings: u32 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let tender = release_tender(Linking::Static);
    let echo = guest("examples/echo");
    let website = guest("examples/static-website");
    let dir = std::env::temp_dir().join(format!("skiff-bench-sandbox-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = skiff_bench::make_cert(&dir, GUEST);
    let site_args: Vec<String> = vec![
        "--http".into(),
        "serve".into(),
        "--cert".into(),
        std::fs::read_to_string(&cert.cert).unwrap(),
        "--key".into(),
        std::fs::read_to_string(&cert.key).unwrap(),
    ];
    let rounds = 3;
    let secs = 5;
    let mut ping = [Vec::new(), Vec::new()];
    let mut https = [Vec::new(), Vec::new()];
    let load_before = load_average();
    eprintln!("sandbox benchmark: {rounds} rounds, KVM and process mode alternating; load average {load_before}");
    for round in 0..rounds {
        for (i, (name, mode)) in MODES.iter().enumerate() {
            let s = start(&tender, &echo, mode, &[], "echo: serving");
            ping[i].push(ping_flood(&s.ns, pings));
            drop(s);
            let s = start(&tender, &website, mode, &site_args, "static-website:");
            https[i].push(wrk(&s.ns, &format!("https://{GUEST}/bench/1k.html"), secs));
            eprintln!(
                "  round {} {name}: {:.0} pings/s, {:.0} HTTPS req/s",
                round + 1,
                ping[i][round],
                https[i][round]
            );
        }
    }
    let load_after = load_average();
    let spread = [ping.clone(), https.clone()];
    let [pk, pp] = ping.map(median);
    let [hk, hp] = https.map(median);
    println!("## Process mode against KVM mode over TAP (median of {rounds} rounds)");
    println!();
    println!("| measure | KVM | process | process / KVM |");
    println!("| --- | ---: | ---: | ---: |");
    println!("| ping flood (`ping -f -c {pings}`), pings/s | {pk:.0} | {pp:.0} | {:.2} |", pp / pk);
    println!("| HTTPS 1 KiB, keep-alive, 16 connections, req/s | {hk:.0} | {hp:.0} | {:.2} |", hp / hk);
    println!();
    for (what, [kvm, process]) in ["ping flood, pings/s", "HTTPS req/s"].iter().zip(spread) {
        println!("- {what} by round: KVM {}; process {}", by_round(&kvm), by_round(&process));
    }
    println!("- {}", skiff_bench::load_report(&load_before, &load_after));
    let _ = std::fs::remove_dir_all(&dir);
}
