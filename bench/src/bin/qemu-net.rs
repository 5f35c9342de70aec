//! Network under QEMU (issue 9): the same image files under the tender and
//! under QEMU microvm, each on a TAP device in the same set-up, in one run:
//!
//! ```text
//! tender: [client ns] tap0 10.0.0.1 ==TAP== skiff-tender (I/O thread, rings) -- guest 10.0.0.2
//! QEMU:   [client ns] tap0 10.0.0.1 ==TAP== QEMU microvm (virtio-net, virtio-mmio) -- guest 10.0.0.2
//! ```
//!
//! Each guest gets a fresh namespace with `tap0` in it; its monitor runs in
//! that namespace and the clients too. The tender is the static release
//! build (`scripts/build-tender`); QEMU is started by `skiff run IMAGE
//! --vmm qemu --net service=tap0`, so its command line is the one `skiff`
//! writes (read back from `/proc` and printed). Both get the same memory.
//!
//! Measured, with the ratio QEMU / tender: a ping flood (`ping -f`) and TCP
//! bulk transfers in and out of `tests/guests/netprobe`; HTTPS keep-alive
//! requests for a 1 KiB file from `examples/static-website` with wrk at 16
//! and 256 connections; the host CPU each ping and request cost the monitor
//! process; the monitor's resident memory after each load (`VmHWM` and
//! `VmRSS` from `/proc/PID/status`).
//!
//! `cargo run --release -p skiff-bench --bin qemu-net [-- PINGS]` (root,
//! KVM, ping, wrk, qemu-system-x86_64). `SKIFF_BENCH_QUICK=1` makes every
//! case short, for trying changes. Ctrl-C or SIGTERM ends the guests and
//! deletes the namespaces; a panic does the same through the destructors.

use skiff_bench::{
    Linking, Resident, bulk_in, bulk_out, children, client_ns, cpu_seconds, guest, load_average, ping_flood,
    release_skiff, release_tender, resident, start_logged, tear_down_on_signal, workspace, wrk, wrk_args,
};
use skiff_testnet::{Guard, NetNs, require_kvm, require_program, require_root, wait_for};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

const GUEST: &str = "10.0.0.2";
/// Guest memory under both monitors.
const MEM: &str = "64M";
/// Each guest's limit: the run never leaves one behind for long.
const TIMEOUT: &str = "300s";

/// Which monitor runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vmm {
    Tender,
    Qemu,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Tender => "tender",
            Vmm::Qemu => "QEMU",
        }
    }
}

/// The programs under test.
struct Tools {
    tender: PathBuf,
    skiff: PathBuf,
}

/// A guest up on its TAP device.
struct Running {
    ns: NetNs,
    guard: Guard,
    /// The monitor process: the tender, or the QEMU that `skiff` started.
    monitor: u32,
    /// The commands that started it, as run in the client namespace.
    commands: Vec<String>,
}

/// `args` as a shell would take them back, with paths in the workspace
/// shortened to relative ones.
fn display(args: &[OsString]) -> String {
    let root = format!("{}/", workspace().display());
    args.iter().map(|a| quote(&a.to_string_lossy().replace(&root, ""))).collect::<Vec<_>>().join(" ")
}

/// `arg` quoted for a POSIX shell when it needs it.
fn quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_string()
    } else {
        shlex::try_quote(arg).map_or_else(|_| arg.to_string(), |q| q.into_owned())
    }
}

/// A process's command line from `/proc/PID/cmdline`.
fn command_line(pid: u32) -> Vec<OsString> {
    use std::os::unix::ffi::OsStringExt;
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    bytes.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| OsString::from_vec(a.to_vec())).collect()
}

/// Boots `image` with `guest_args` under `vmm` on `tap0` of a fresh client
/// namespace, and waits for `ready` in its log.
fn start(tools: &Tools, vmm: Vmm, image: &Path, guest_args: &[&str], ready: &str) -> Running {
    let ns = client_ns();
    let mut args: Vec<OsString> = Vec::new();
    match vmm {
        Vmm::Tender => {
            args.push(tools.tender.clone().into());
            args.extend(["--net", "service=tap0", "--mem", MEM, "--timeout", TIMEOUT].map(OsString::from));
            args.push(image.into());
        }
        Vmm::Qemu => {
            args.push(tools.skiff.clone().into());
            args.push("run".into());
            args.push(image.into());
            args.extend(
                ["--vmm", "qemu", "--net", "service=tap0", "--mem", MEM, "--timeout", TIMEOUT].map(OsString::from),
            );
        }
    }
    args.push("--".into());
    args.extend(["--ipv4", "10.0.0.2/24"].map(OsString::from));
    args.extend(guest_args.iter().map(OsString::from));
    let mut cmd = ns.command(&args[0]);
    cmd.args(&args[1..]);
    let tag = format!("qemu-net-{}-{}", vmm.name(), ns.name());
    let (guard, _log, _) = start_logged(cmd, &tag, ready);
    // `ip netns exec` execs the program: the child is the tender or skiff.
    let pid = guard.0.id();
    let mut commands = vec![display(&args)];
    let monitor = match vmm {
        Vmm::Tender => pid,
        Vmm::Qemu => {
            let qemu = children(pid)
                .into_iter()
                .find(|c| std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.starts_with("qemu")))
                .unwrap_or_else(|| panic!("skiff run --vmm qemu (pid {pid}) has no QEMU child"));
            commands.push(display(&command_line(qemu)));
            qemu
        }
    };
    Running { ns, guard, monitor, commands }
}

impl Running {
    /// The monitor's resident memory now; panics if it has ended.
    fn resident(&self) -> Resident {
        resident(self.monitor).unwrap_or_else(|| panic!("the monitor (pid {}) has ended", self.monitor))
    }

    /// Whether the guest still runs.
    fn alive(&mut self) -> bool {
        self.guard.0.try_wait().ok().flatten().is_none()
    }

    /// Stops the guest and waits until its monitor is gone (QEMU ends with
    /// its `skiff`), so its TAP device is free.
    fn stop(self) {
        let monitor = self.monitor;
        drop(self.guard);
        let _ = wait_for(Duration::from_secs(5), || (!Path::new(&format!("/proc/{monitor}")).exists()).then_some(()));
        drop(self.ns);
    }
}

/// Both monitors, in the order of the samples below.
const VMMS: [Vmm; 2] = [Vmm::Tender, Vmm::Qemu];

/// HTTPS keep-alive cases: connections.
const CONNECTIONS: [u32; 2] = [16, 256];

/// How much each case does.
struct Plan {
    /// Rounds; in each, every case runs under both monitors, one after the
    /// other (the first to go alternates).
    rounds: usize,
    pings: u32,
    bulk_bytes: u64,
    wrk_secs: u32,
}

/// The indices of `VMMS` in the order round `round` runs them.
fn order(round: usize) -> [usize; 2] {
    if round.is_multiple_of(2) { [0, 1] } else { [1, 0] }
}

/// One measure's samples under each monitor (indexed as `VMMS`).
#[derive(Clone, Debug, Default)]
struct Samples([Vec<f64>; 2]);

impl Samples {
    fn median(&self, i: usize) -> f64 {
        median(&self.0[i])
    }

    fn range(&self, i: usize) -> (f64, f64) {
        let v = &self.0[i];
        (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(f64::NEG_INFINITY, f64::max))
    }

    /// QEMU's median over the tender's.
    fn ratio(&self) -> f64 {
        self.median(1) / self.median(0)
    }
}

/// The median of `v` (the mean of the middle two for an even count).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Everything measured.
#[derive(Default)]
struct Results {
    pings: Samples,
    rtt_us: Samples,
    cpu_per_ping_us: Samples,
    tcp_in: Samples,
    tcp_out: Samples,
    rps: [Samples; 2],
    p50_us: [Samples; 2],
    p99_us: [Samples; 2],
    cpu_per_request_us: [Samples; 2],
    https_errors: u64,
    net_memory: [Resident; 2],
    https_memory: [Resident; 2],
    commands: Vec<String>,
    /// The host's load averages (`/proc/loadavg`) before and after.
    load: [String; 2],
}

/// Ping flood and TCP both ways, netprobe under both monitors at once
/// (each in its own namespace; the one not measured idles).
fn network(tools: &Tools, image: &Path, plan: &Plan, r: &mut Results) {
    eprintln!("qemu-net: netprobe under the tender and QEMU: ping flood, TCP in and out, {} rounds", plan.rounds);
    let mut guests = VMMS.map(|vmm| start(tools, vmm, image, &["bulk"], "netprobe: bulk on ports"));
    for round in 0..plan.rounds {
        for i in order(round) {
            let g = &guests[i];
            let cpu = cpu_seconds(g.monitor);
            let (rate, rtt) = ping_flood(&g.ns, GUEST, plan.pings);
            r.cpu_per_ping_us.0[i].push((cpu_seconds(g.monitor) - cpu) / f64::from(plan.pings) * 1e6);
            r.pings.0[i].push(rate);
            r.rtt_us.0[i].push(rtt);
        }
        for i in order(round) {
            r.tcp_in.0[i].push(bulk_in(&guests[i].ns, &format!("{GUEST}:9"), plan.bulk_bytes));
        }
        for i in order(round) {
            r.tcp_out.0[i].push(bulk_out(&guests[i].ns, &format!("{GUEST}:19"), plan.bulk_bytes));
        }
        let last = |s: &Samples, i: usize| s.0[i].last().copied().unwrap_or(f64::NAN);
        eprintln!(
            "  round {}: pings/s {:.0} / {:.0}, TCP in {:.0} / {:.0} MiB/s, out {:.0} / {:.0} MiB/s (tender / QEMU)",
            round + 1,
            last(&r.pings, 0),
            last(&r.pings, 1),
            last(&r.tcp_in, 0),
            last(&r.tcp_in, 1),
            last(&r.tcp_out, 0),
            last(&r.tcp_out, 1)
        );
    }
    for (i, g) in guests.iter_mut().enumerate() {
        r.net_memory[i] = g.resident();
        assert!(g.alive(), "netprobe under the {} ended during the load", VMMS[i].name());
    }
    for mut g in guests {
        r.commands.append(&mut g.commands);
        g.stop();
    }
}

/// HTTPS keep-alive requests for 1 KiB, static-website under both
/// monitors at once.
fn https(tools: &Tools, image: &Path, plan: &Plan, r: &mut Results) {
    eprintln!("qemu-net: static-website under the tender and QEMU: HTTPS 1 KiB, {} rounds", plan.rounds);
    let mut guests = VMMS.map(|vmm| start(tools, vmm, image, &[], "static-website:"));
    for round in 0..plan.rounds {
        for (c, conns) in CONNECTIONS.into_iter().enumerate() {
            for i in order(round) {
                let g = &guests[i];
                let cpu = cpu_seconds(g.monitor);
                let w = wrk(&g.ns, &format!("https://{GUEST}/bench/1k.html"), conns, plan.wrk_secs, false);
                let requests = w.rps * f64::from(plan.wrk_secs);
                r.cpu_per_request_us[c].0[i].push((cpu_seconds(g.monitor) - cpu) / requests.max(1.0) * 1e6);
                r.rps[c].0[i].push(w.rps);
                r.p50_us[c].0[i].push(w.p50_us);
                r.p99_us[c].0[i].push(w.p99_us);
                r.https_errors += w.errors;
                eprintln!(
                    "  round {}, {} connections, {}: {:.0} requests/s, {} errors",
                    round + 1,
                    conns,
                    VMMS[i].name(),
                    w.rps,
                    w.errors
                );
            }
        }
    }
    for (i, g) in guests.iter_mut().enumerate() {
        r.https_memory[i] = g.resident();
        assert!(g.alive(), "static-website under the {} ended during the load", VMMS[i].name());
    }
    for mut g in guests {
        r.commands.append(&mut g.commands);
        g.stop();
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1 << 20))
}

/// A median with the range of the samples, when there are several.
fn cell(s: &Samples, i: usize, digits: usize, unit: &str) -> String {
    let m = s.median(i);
    if s.0[i].len() < 2 {
        return format!("{m:.digits$}{unit}");
    }
    let (lo, hi) = s.range(i);
    format!("{m:.digits$}{unit} ({lo:.digits$}..{hi:.digits$})")
}

fn print(plan: &Plan, r: &Results) {
    println!(
        "## Network under QEMU: the same images under the tender and QEMU microvm on TAP, median of {} rounds \
         (range)",
        plan.rounds
    );
    println!();
    println!("| measure | tender | QEMU | QEMU / tender |");
    println!("| --- | ---: | ---: | ---: |");
    let row = |what: &str, s: &Samples, digits: usize, unit: &str| {
        println!("| {what} | {} | {} | {:.2} |", cell(s, 0, digits, unit), cell(s, 1, digits, unit), s.ratio());
    };
    row(&format!("ping flood, pings/s ({} pings)", plan.pings), &r.pings, 0, "");
    row("ping average RTT", &r.rtt_us, 0, " us");
    row("monitor CPU per ping", &r.cpu_per_ping_us, 1, " us");
    let mb = plan.bulk_bytes >> 20;
    row(&format!("TCP into the guest, MiB/s ({mb} MiB)"), &r.tcp_in, 0, "");
    row(&format!("TCP out of the guest, MiB/s ({mb} MiB)"), &r.tcp_out, 0, "");
    for (c, conns) in CONNECTIONS.iter().enumerate() {
        row(&format!("HTTPS 1 KiB, {conns} connections, requests/s"), &r.rps[c], 0, "");
        row(&format!("HTTPS 1 KiB, {conns} connections, p50 latency"), &r.p50_us[c], 0, " us");
        row(&format!("HTTPS 1 KiB, {conns} connections, p99 latency"), &r.p99_us[c], 0, " us");
        row(&format!("monitor CPU per request, {conns} connections"), &r.cpu_per_request_us[c], 1, " us");
    }
    let mem = |what: &str, m: &[Resident; 2]| {
        let (a, b) = (m[0], m[1]);
        println!("| {what}, MiB peak (VmHWM) | {} | {} | {:.2} |", mib(a.hwm), mib(b.hwm), b.hwm as f64 / a.hwm as f64);
        println!("| {what}, MiB now (VmRSS) | {} | {} | {:.2} |", mib(a.rss), mib(b.rss), b.rss as f64 / a.rss as f64);
    };
    mem("monitor memory after ping and TCP (netprobe)", &r.net_memory);
    mem("monitor memory after HTTPS (static-website)", &r.https_memory);
    println!();
    println!(
        "wrk: {} s per case, keep-alive, 1 thread for 16 connections and 2 for 256; errors in all: {}. \
         Guest memory {MEM} under both. \"Monitor\": the tender process, or the QEMU process. {}",
        plan.wrk_secs,
        r.https_errors,
        skiff_bench::load_report(&r.load[0], &r.load[1])
    );
    println!();
    println!("Commands, each run in a fresh namespace whose tap0 is 10.0.0.1/24 (`ip netns exec NS ...`):");
    println!();
    for c in &r.commands {
        println!("    {c}");
    }
    let url = format!("https://{GUEST}/bench/1k.html");
    println!("    ping -f -q -c {} -W 1 {GUEST}", plan.pings);
    for conns in CONNECTIONS {
        let args: Vec<OsString> = wrk_args(&url, conns, plan.wrk_secs, false).into_iter().map(OsString::from).collect();
        println!("    wrk {}", display(&args));
    }
}

fn main() {
    tear_down_on_signal();
    require_root();
    require_kvm();
    require_program("ping", "iputils-ping");
    require_program("wrk", "wrk");
    require_program("qemu-system-x86_64", "qemu-system-x86");
    let quick = std::env::var_os("SKIFF_BENCH_QUICK").is_some();
    let pings: u32 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(if quick { 2000 } else { 20_000 });
    let plan = Plan {
        rounds: if quick { 1 } else { 3 },
        pings,
        bulk_bytes: if quick { 32 << 20 } else { 256 << 20 },
        wrk_secs: if quick { 1 } else { 3 },
    };
    let tools = Tools { tender: release_tender(Linking::Static), skiff: release_skiff() };
    let netprobe = guest("tests/guests/netprobe");
    let website = guest("examples/static-website");

    let mut results = Results::default();
    results.load[0] = load_average();
    network(&tools, &netprobe, &plan, &mut results);
    https(&tools, &website, &plan, &mut results);
    results.load[1] = load_average();
    print(&plan, &results);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_shown_as_a_shell_takes_them() {
        let args: Vec<OsString> = ["qemu", "-netdev", "tap,id=nic0,ifname=tap0", "-append", "--ipv4 10.0.0.2/24 it's"]
            .iter()
            .map(OsString::from)
            .collect();
        let line = display(&args);
        assert_eq!(line, r#"qemu -netdev tap,id=nic0,ifname=tap0 -append "--ipv4 10.0.0.2/24 it's""#);
        assert_eq!(shlex::split(&line).unwrap(), args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let s = Samples([vec![10.0, 30.0, 20.0], vec![5.0, 15.0, 10.0]]);
        assert_eq!((s.ratio(), s.range(1)), (0.5, (5.0, 15.0)));
        assert_eq!(cell(&s, 0, 0, " us"), "20 us (10..30)");
        assert_eq!(order(0), [0, 1]);
        assert_eq!(order(1), [1, 0]);
        let inside = workspace().join("target/guest/netprobe");
        assert_eq!(display(&[inside.into()]), "target/guest/netprobe");
        assert_eq!(quote(""), "''");
    }
}
