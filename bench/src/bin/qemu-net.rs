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
    Linking, Resident, Wrk, bulk_in, bulk_out, children, client_ns, cpu_seconds, guest, ping_flood, release_skiff,
    release_tender, resident, start_logged, tear_down_on_signal, workspace, wrk, wrk_args,
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

/// The figures of one guest under one monitor.
#[derive(Clone, Debug, Default)]
struct Figures {
    pings_per_s: f64,
    rtt_us: f64,
    cpu_per_ping_us: f64,
    tcp_in: f64,
    tcp_out: f64,
    net_memory: Resident,
    https: Vec<Wrk>,
    cpu_per_request_us: Vec<f64>,
    https_memory: Resident,
    commands: Vec<String>,
}

/// HTTPS keep-alive cases: connections.
const CONNECTIONS: [u32; 2] = [16, 256];

struct Plan {
    pings: u32,
    bulk_bytes: u64,
    wrk_secs: u32,
}

fn network(tools: &Tools, vmm: Vmm, image: &Path, plan: &Plan, f: &mut Figures) {
    eprintln!("qemu-net: netprobe under the {}: ping flood, TCP in and out", vmm.name());
    let mut g = start(tools, vmm, image, &["bulk"], "netprobe: bulk on ports");
    let cpu = cpu_seconds(g.monitor);
    (f.pings_per_s, f.rtt_us) = ping_flood(&g.ns, GUEST, plan.pings);
    f.cpu_per_ping_us = (cpu_seconds(g.monitor) - cpu) / f64::from(plan.pings) * 1e6;
    f.tcp_in = bulk_in(&g.ns, &format!("{GUEST}:9"), plan.bulk_bytes);
    f.tcp_out = bulk_out(&g.ns, &format!("{GUEST}:19"), plan.bulk_bytes);
    f.net_memory = g.resident();
    assert!(g.alive(), "netprobe under the {} ended during the load", vmm.name());
    f.commands.append(&mut g.commands);
    g.stop();
}

fn https(tools: &Tools, vmm: Vmm, image: &Path, plan: &Plan, f: &mut Figures) {
    eprintln!("qemu-net: static-website under the {}: HTTPS 1 KiB", vmm.name());
    let mut g = start(tools, vmm, image, &[], "static-website:");
    for conns in CONNECTIONS {
        let cpu = cpu_seconds(g.monitor);
        let w = wrk(&g.ns, &format!("https://{GUEST}/bench/1k.html"), conns, plan.wrk_secs, false);
        let requests = w.rps * f64::from(plan.wrk_secs);
        f.cpu_per_request_us.push((cpu_seconds(g.monitor) - cpu) / requests.max(1.0) * 1e6);
        eprintln!("  {conns} connections: {:.0} requests/s, {} errors", w.rps, w.errors);
        f.https.push(w);
    }
    f.https_memory = g.resident();
    assert!(g.alive(), "static-website under the {} ended during the load", vmm.name());
    f.commands.append(&mut g.commands);
    g.stop();
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1 << 20))
}

fn print(plan: &Plan, t: &Figures, q: &Figures) {
    println!("## Network under QEMU: the same images under the tender and QEMU microvm, TAP, one run");
    println!();
    println!("| measure | tender | QEMU | QEMU / tender |");
    println!("| --- | ---: | ---: | ---: |");
    let row = |what: &str, unit: &str, a: f64, b: f64, digits: usize| {
        println!("| {what} | {a:.digits$}{unit} | {b:.digits$}{unit} | {:.2} |", b / a);
    };
    row(&format!("ping flood, pings/s ({} pings)", plan.pings), "", t.pings_per_s, q.pings_per_s, 0);
    row("ping average RTT", " us", t.rtt_us, q.rtt_us, 0);
    row("monitor CPU per ping", " us", t.cpu_per_ping_us, q.cpu_per_ping_us, 1);
    let mb = plan.bulk_bytes >> 20;
    row(&format!("TCP into the guest, MiB/s ({mb} MiB)"), "", t.tcp_in, q.tcp_in, 0);
    row(&format!("TCP out of the guest, MiB/s ({mb} MiB)"), "", t.tcp_out, q.tcp_out, 0);
    for (i, conns) in CONNECTIONS.iter().enumerate() {
        row(&format!("HTTPS 1 KiB, {conns} connections, requests/s"), "", t.https[i].rps, q.https[i].rps, 0);
        let p = |w: &Wrk| format!("{:.0} / {:.0} us", w.p50_us, w.p99_us);
        println!(
            "| HTTPS 1 KiB, {conns} connections, p50 / p99 | {} | {} | {:.2} |",
            p(&t.https[i]),
            p(&q.https[i]),
            q.https[i].p50_us / t.https[i].p50_us
        );
        row(
            &format!("monitor CPU per request, {conns} connections"),
            " us",
            t.cpu_per_request_us[i],
            q.cpu_per_request_us[i],
            1,
        );
    }
    let mem = |what: &str, a: Resident, b: Resident| {
        println!("| {what}, MiB peak (VmHWM) | {} | {} | {:.2} |", mib(a.hwm), mib(b.hwm), b.hwm as f64 / a.hwm as f64);
        println!("| {what}, MiB now (VmRSS) | {} | {} | {:.2} |", mib(a.rss), mib(b.rss), b.rss as f64 / a.rss as f64);
    };
    mem("monitor memory after ping and TCP (netprobe)", t.net_memory, q.net_memory);
    mem("monitor memory after HTTPS (static-website)", t.https_memory, q.https_memory);
    let errors: u64 = t.https.iter().chain(&q.https).map(|w| w.errors).sum();
    println!();
    println!(
        "wrk: {} s per case, keep-alive, 1 thread for 16 connections and 2 for 256; errors in all: {errors}. \
         Guest memory {MEM} under both.",
        plan.wrk_secs
    );
    println!();
    println!("Commands, each run in a fresh namespace whose tap0 is 10.0.0.1/24 (`ip netns exec NS ...`):");
    println!();
    for c in t.commands.iter().chain(&q.commands) {
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
    let plan =
        Plan { pings, bulk_bytes: if quick { 32 << 20 } else { 256 << 20 }, wrk_secs: if quick { 2 } else { 5 } };
    let tools = Tools { tender: release_tender(Linking::Static), skiff: release_skiff() };
    let netprobe = guest("tests/guests/netprobe");
    let website = guest("examples/static-website");

    let (mut t, mut q) = (Figures::default(), Figures::default());
    network(&tools, Vmm::Tender, &netprobe, &plan, &mut t);
    network(&tools, Vmm::Qemu, &netprobe, &plan, &mut q);
    https(&tools, Vmm::Tender, &website, &plan, &mut t);
    https(&tools, Vmm::Qemu, &website, &plan, &mut q);
    print(&plan, &t, &q);
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
        let inside = workspace().join("target/guest/netprobe");
        assert_eq!(display(&[inside.into()]), "target/guest/netprobe");
        assert_eq!(quote(""), "''");
    }
}
