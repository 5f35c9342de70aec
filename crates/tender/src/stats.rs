//! `--stats`: VM exits by kind and where boot time went.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

/// Host-side time points of one run.
#[derive(Clone, Copy, Debug)]
pub struct Timeline {
    /// `run` was called.
    pub start: Instant,
    /// KVM opened, VM and vCPU created.
    pub vm_created: Option<Instant>,
    /// Image, boot info and page tables written to guest memory.
    pub loaded: Option<Instant>,
    /// vCPU registers set.
    pub vcpu_ready: Option<Instant>,
    /// The guest ended.
    pub ended: Option<Instant>,
}

/// Guest TSC readings.
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestClock {
    /// Frequency.
    pub hz: u64,
    /// Just before the first `KVM_RUN` (read by the tender).
    pub at_first_run: Option<u64>,
    /// First ring-3 instruction (written by the guest).
    pub ring3_entry: u64,
    /// The service's `main` started (written by the guest).
    pub main: u64,
    /// The guest ended (read by the tender).
    pub at_end: Option<u64>,
}

impl Default for Timeline {
    /// Starts now.
    fn default() -> Self {
        Timeline { start: Instant::now(), vm_created: None, loaded: None, vcpu_ready: None, ended: None }
    }
}

/// Counters of one run.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Exits by kind.
    pub exits: BTreeMap<&'static str, u64>,
    /// Console bytes relayed.
    pub console_bytes: u64,
    /// Disk requests served.
    pub disk_requests: u64,
    /// Time points.
    pub timeline: Timeline,
    /// Guest clock readings.
    pub guest: GuestClock,
    /// CPU features the tender enabled.
    pub cpu: Option<crate::kvm::CpuFeatures>,
    /// Guest memory backed by the host at the end.
    pub guest_resident: Option<u64>,
    /// Guest memory size.
    pub guest_mem: u64,
    /// The tender's peak resident set (VmHWM) when the guest ended.
    pub tender_peak_rss: Option<u64>,
    /// What the network I/O thread moved.
    pub net: NetStats,
    /// Process mode: the guest ran as this process (an "exit" is then a
    /// call into the tender).
    pub process: bool,
    /// Time the vCPU thread spent asleep in `Poll` (the guest idle).
    pub halted: Duration,
    /// How often it went to sleep there.
    pub sleeps: u64,
    /// The guest's spins on its receive rings before a `Poll`: those that
    /// found a frame, and those that ran out and made the call.
    pub guest_spins: Option<(u64, u64)>,
}

/// What the network I/O thread moved.
#[derive(Clone, Debug, Default)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx: u64,
    /// Frames sent for the guest.
    pub tx: u64,
    /// The writes to host ends that carried them (fewer than frames when
    /// TCP segments were merged).
    pub tx_writes: u64,
    /// Frames dropped: too long from the host, or a full host queue.
    pub dropped: u64,
    /// Each user network's counters.
    pub user_nets: Vec<(String, skiff_usernet::Stats)>,
    /// Passes of the I/O thread's loop that moved something.
    pub busy_passes: u64,
    /// Passes that found nothing to do (spinning before a sleep).
    pub idle_passes: u64,
    /// Times it slept (each ended by a wake-up: a frame, the guest's
    /// doorbell, a socket, or a timer).
    pub sleeps: u64,
    /// Of the frames sent, those the vCPU thread sent itself when the
    /// guest rang while the I/O thread slept.
    pub sent_by_vcpu: u64,
}

/// `/proc/self/status`, opened before the seccomp lockdown (which forbids
/// opening files) and read with `pread` at the end.
pub struct ProcStatus(Option<std::fs::File>);

impl ProcStatus {
    /// Opens it; a missing `/proc` only means no peak-RSS figure.
    pub fn open() -> ProcStatus {
        ProcStatus(std::fs::File::open("/proc/self/status").ok())
    }

    /// Not opened: no peak-RSS figure is wanted.
    pub fn skipped() -> ProcStatus {
        ProcStatus(None)
    }

    /// The descriptor, for the seccomp filter.
    pub fn fd(&self) -> Option<i32> {
        use std::os::fd::AsRawFd;
        self.0.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// This process's peak resident set in bytes (`VmHWM`).
    pub fn peak_rss(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 8192];
        let n = self.0.as_ref()?.read_at(&mut buf, 0).ok()?;
        let status = std::str::from_utf8(&buf[..n]).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

impl Stats {
    /// Counts one exit of `kind`.
    pub fn exit(&mut self, kind: &'static str) {
        *self.exits.entry(kind).or_insert(0) += 1;
    }

    /// Total exits.
    pub fn total_exits(&self) -> u64 {
        self.exits.values().sum()
    }

    fn guest_span(&self, from: Option<u64>, to: Option<u64>) -> Option<Duration> {
        let (from, to) = (from?, to?);
        if self.guest.hz == 0 || from == 0 || to < from {
            return None;
        }
        Some(Duration::from_nanos(((to - from) as u128 * 1_000_000_000 / self.guest.hz as u128) as u64))
    }

    /// The human-readable report.
    pub fn report(&self) -> String {
        fn ms(d: Option<Duration>) -> String {
            d.map(|d| format!("{:9.3} ms", d.as_secs_f64() * 1e3)).unwrap_or_else(|| "        n/a".into())
        }
        let t = &self.timeline;
        let span = |a: Option<Instant>, b: Option<Instant>| Some(b?.duration_since(a?));
        let g = &self.guest;
        let nz = |v: u64| (v != 0).then_some(v);
        let boot = [
            (
                if self.process { "read image, map guest memory" } else { "open KVM, create VM and vCPU" },
                span(Some(t.start), t.vm_created),
            ),
            (if self.process { "load image" } else { "load image, page tables" }, span(t.vm_created, t.loaded)),
            (
                if self.process { "threads, TSC, protections" } else { "set up vCPU, start threads" },
                span(t.loaded, t.vcpu_ready),
            ),
            ("first instruction -> ring 3", self.guest_span(g.at_first_run, nz(g.ring3_entry))),
            ("ring 3 -> main", self.guest_span(nz(g.ring3_entry), nz(g.main))),
            ("main -> guest end", self.guest_span(nz(g.main), g.at_end)),
            ("tender start -> guest end", span(Some(t.start), t.ended)),
        ];
        let mut s = String::from("skiff-tender stats\n");
        for (i, (what, time)) in boot.into_iter().enumerate() {
            let _ = writeln!(s, "  {}  {what:<30}{}", if i == 0 { "boot" } else { "    " }, ms(time));
        }
        let run = span(t.vcpu_ready, t.ended).unwrap_or_default();
        let total = self.total_exits();
        let _ = write!(s, "  exits {total} in {:.3} ms", run.as_secs_f64() * 1e3);
        if run.as_secs_f64() > 0.0 {
            let _ = write!(s, " ({:.0}/s)", total as f64 / run.as_secs_f64());
        }
        let kinds: Vec<String> = self.exits.iter().map(|(k, v)| format!("{k} {v}")).collect();
        if !kinds.is_empty() {
            let _ = write!(s, ": {}", kinds.join(", "));
        }
        if run.as_secs_f64() > 0.0 {
            let _ = write!(
                s,
                "\n  vcpu  asleep in poll {:.3} ms ({:.1}% of the run) over {} sleeps",
                self.halted.as_secs_f64() * 1e3,
                100.0 * self.halted.as_secs_f64() / run.as_secs_f64(),
                self.sleeps
            );
        }
        if let Some((found, missed)) = self.guest_spins {
            let _ = write!(s, "\n  guest ring spins: {found} found a frame, {missed} ran out and polled");
        }
        let _ = write!(s, "\n  console {} bytes", self.console_bytes);
        if self.disk_requests > 0 {
            let _ = write!(s, "\n  disk requests {}", self.disk_requests);
        }
        let net = &self.net;
        let frames = net.rx + net.tx;
        if frames > 0 || net.dropped > 0 {
            let _ = write!(
                s,
                "\n  net   {} frames received, {} sent in {} writes, {} dropped; {:.3} exits per frame",
                net.rx,
                net.tx,
                net.tx_writes,
                net.dropped,
                total as f64 / frames.max(1) as f64
            );
            let _ = write!(
                s,
                "\n  io    {} passes moved frames, {} found nothing; {} sleeps (wake-ups); {} frames sent by the \
                 vCPU thread on the guest's doorbell",
                net.busy_passes, net.idle_passes, net.sleeps, net.sent_by_vcpu
            );
        }
        for (nic, u) in &net.user_nets {
            let _ = write!(
                s,
                "\n  user  NIC {nic:?}: {} published and {} outbound connections, {} refused, at most {} at once, \
                 limit reached {} times, {} held until the guest listened ({} past the hold), {} slow closes, \
                 {} datagrams, {} DNS queries, {} frames dropped",
                u.published_connections,
                u.outbound_connections,
                u.refused_connections,
                u.peak_connections,
                u.limit_reached,
                u.held_connections,
                u.hold_timeouts,
                u.slow_closes,
                u.datagrams,
                u.dns_queries,
                u.dropped_frames
            );
        }
        if let Some(r) = self.guest_resident {
            let _ = write!(s, "\n  memory {} KiB of {} MiB guest memory touched", r / 1024, self.guest_mem >> 20);
            if let Some(peak) = self.tender_peak_rss {
                let _ = write!(
                    s,
                    "; tender peak RSS {} KiB, {} KiB beyond the guest's",
                    peak / 1024,
                    peak.saturating_sub(r) / 1024
                );
            }
        }
        if let Some(c) = self.cpu {
            let on = |b: bool| if b { "on" } else { "off" };
            let _ = write!(s, "\n  cpu   SMEP {}, SMAP {}, XCR0 ", on(c.smep), on(c.smap));
            let _ = match c.xcr0 {
                Some(x) => write!(s, "{x:#x}"),
                None => write!(s, "not set (no XSAVE)"),
            };
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lists_exits_and_guest_spans() {
        let mut s = Stats::default();
        s.exit("poll");
        s.exit("exit");
        s.exit("poll");
        s.guest = GuestClock {
            hz: 1_000_000_000,
            at_first_run: Some(1_000),
            ring3_entry: 2_000,
            main: 3_000,
            at_end: Some(10_003_000),
        };
        let r = s.report();
        assert!(r.contains("exits 3"), "{r}");
        assert!(r.contains("exit 1, poll 2"), "{r}");
        assert!(r.contains("ring 3 -> main                    0.001 ms"), "{r}");
        assert!(r.contains("main -> guest end                10.000 ms"), "{r}");
        s.timeline.vcpu_ready = Some(s.timeline.start);
        s.timeline.ended = Some(s.timeline.start + Duration::from_millis(100));
        s.halted = Duration::from_millis(25);
        s.sleeps = 7;
        s.guest_spins = Some((5, 2));
        s.net = NetStats { rx: 3, tx: 4, busy_passes: 9, idle_passes: 11, sleeps: 6, ..Default::default() };
        let r = s.report();
        assert!(r.contains("asleep in poll 25.000 ms (25.0% of the run) over 7 sleeps"), "{r}");
        assert!(r.contains("guest ring spins: 5 found a frame, 2 ran out and polled"), "{r}");
        assert!(r.contains("9 passes moved frames, 11 found nothing; 6 sleeps (wake-ups)"), "{r}");
    }
}
