//! The tender's command-line options, shared by `skiff-tender` and `skiff
//! run`, and the parsers of their values: memory sizes, durations, counts.

/// An option value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// Not a size.
    #[error("{0:?} is not a memory size (examples: 64M, 512M, 1G; a plain number means MiB)")]
    Size(String),
    /// Not a duration.
    #[error("{0:?} is not a duration (examples: 500ms, 10s, 2m; a plain number means seconds)")]
    Duration(String),
    /// A count outside its range.
    #[error("{value:?} is not a whole number from {min} to {max}")]
    Count {
        /// What was given.
        value: String,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
    /// A buffer size outside its range.
    #[error("{value:?} is not a buffer size from {}K to {}M (examples: 16K, 64K, 1M)", .min >> 10, .max >> 20)]
    Buffer {
        /// What was given.
        value: String,
        /// The smallest allowed, in bytes.
        min: u64,
        /// The largest allowed, in bytes.
        max: u64,
    },
}

/// A parser of a whole number from `min` to `max`, for clap.
fn count<T: TryFrom<u64>>(min: u64, max: u64) -> impl Fn(&str) -> Result<T, OptionError> + Clone {
    move |s: &str| {
        let n = s.trim().parse::<u64>().ok().filter(|n| (min..=max).contains(n));
        n.and_then(|n| T::try_from(n).ok()).ok_or_else(|| OptionError::Count { value: s.to_string(), min, max })
    }
}

/// Parses a per-connection buffer size: a memory size (a plain number
/// means KiB here) within the user network's range.
fn parse_tcp_buffer(s: &str) -> Result<usize, OptionError> {
    let range = skiff_usernet::config::TCP_BUFFER_RANGE;
    let (min, max) = (*range.start() as u64, *range.end() as u64);
    let t = s.trim();
    let bytes = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        parse_size(&format!("{t}K"))
    } else {
        parse_size(t)
    };
    match bytes {
        Ok(n) if (min..=max).contains(&n) => Ok(n as usize),
        _ => Err(OptionError::Buffer { value: s.to_string(), min, max }),
    }
}

/// Parses `64M`, `1G`, `65536K`, `2097152B` or `64` (MiB) into bytes.
pub fn parse_size(s: &str) -> Result<u64, OptionError> {
    let err = || OptionError::Size(s.to_string());
    let t = s.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&t[..i], t[i..].to_ascii_uppercase()),
        None => (t, String::from("M")),
    };
    let n: u64 = digits.parse().map_err(|_| err())?;
    let shift = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" if unit == "B" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return Err(err()),
    };
    n.checked_mul(1 << shift).ok_or_else(err)
}

/// Parses `500ms`, `10s`, `2m`, `1.5s` or `10` (seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, OptionError> {
    let err = || OptionError::Duration(s.to_string());
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| err())?;
    if !v.is_finite() || v < 0.0 {
        return Err(err());
    }
    std::time::Duration::try_from_secs_f64(v * scale).map_err(|_| err())
}

/// The guest's console log level (the boot info holds its number, 0 to 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// Errors only.
    Error,
    /// Warnings and errors.
    #[value(alias = "warning")]
    Warn,
    /// The default.
    Info,
    /// More detail.
    Debug,
    /// Everything.
    Trace,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64"), Ok(64 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12T").is_err());
        assert!(parse_size("99999999999999999G").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("inf").is_err());
    }

    #[test]
    fn network_limits() {
        let connections = count::<usize>(1, 16384);
        assert_eq!(connections("16"), Ok(16));
        assert_eq!(connections(" 256 "), Ok(256));
        let err = connections("0").unwrap_err().to_string();
        assert_eq!(err, "\"0\" is not a whole number from 1 to 16384");
        assert!(connections("16385").is_err());
        assert!(connections("-1").is_err());
        assert!(connections("lots").is_err());
        assert!(connections("").is_err());
        let backlog = count::<u32>(1, 65535);
        assert_eq!(backlog("128"), Ok(128));
        assert!(backlog("65536").is_err());
        assert_eq!(parse_tcp_buffer("64K"), Ok(64 << 10));
        assert_eq!(parse_tcp_buffer("16"), Ok(16 << 10));
        assert_eq!(parse_tcp_buffer("1M"), Ok(1 << 20));
        let err = parse_tcp_buffer("1K").unwrap_err().to_string();
        assert_eq!(err, "\"1K\" is not a buffer size from 4K to 16M (examples: 16K, 64K, 1M)");
        assert!(parse_tcp_buffer("1G").is_err());
        assert!(parse_tcp_buffer("big").is_err());
    }

    #[test]
    fn levels() {
        use clap::ValueEnum;
        assert_eq!(LogLevel::from_str("INFO", true), Ok(LogLevel::Info));
        assert_eq!(LogLevel::from_str("warning", true), Ok(LogLevel::Warn));
        assert_eq!(LogLevel::Off as u32, 0);
        assert_eq!(LogLevel::Trace as u32, 5);
        assert!(LogLevel::from_str("loud", true).is_err());
    }
}

/// How the guest is isolated from the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Sandbox {
    /// A KVM virtual machine (needs /dev/kvm).
    #[default]
    Kvm,
    /// A process of the tender's, locked down by seccomp: no /dev/kvm
    /// needed, weaker isolation (see docs/threat-model.md).
    Process,
}

/// The tender's run-time options, shared by `skiff-tender` and `skiff run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunOptions {
    /// How to isolate the guest: `kvm`, a virtual machine, or `process`, a
    /// seccomp-sandboxed process of the tender's (no /dev/kvm needed; the
    /// same image file).
    #[arg(long, value_enum, default_value = "kvm")]
    pub sandbox: Sandbox,
    /// Guest memory, e.g. 64M or 1G (a plain number means MiB).
    #[arg(long, value_parser = parse_size, default_value = "64M")]
    pub mem: u64,
    /// End the guest after this long, e.g. 500ms, 10s, 2m (exit status 111).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// After SIGTERM or SIGINT, how long the guest has to end by itself
    /// before the tender ends it (exit status 114); a second signal ends
    /// it at once.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub stop_grace: std::time::Duration,
    /// Print VM exits by kind, frame counts and a boot-time breakdown on
    /// stderr at the end.
    #[arg(long)]
    pub stats: bool,
    /// Sample the guest's call stacks while it runs and write them to FILE
    /// at the end: folded stacks (`outer;inner count` lines, for
    /// flamegraph tools), or a flame graph when FILE ends in `.svg`.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<std::path::PathBuf>,
    /// Samples a second with --profile.
    #[arg(long, value_name = "N", default_value_t = crate::profile::DEFAULT_HZ, requires = "profile",
          value_parser = count::<u32>(1, crate::profile::MAX_HZ as u64))]
    pub profile_hz: u32,
    /// The guest's console log level.
    #[arg(long, value_enum, ignore_case = true, default_value = "info")]
    pub log: LogLevel,
    /// Connect the image's NIC NAME to the existing TAP device TAP, or to a
    /// user network inside the tender with NAME=user (no root, see
    /// --publish); repeatable, e.g. --net service=tap0.
    #[arg(long = "net", value_name = "NAME=TAP|user", value_parser = crate::net::parse_nic)]
    pub net: Vec<crate::net::NicSpec>,
    /// The MAC address of NIC NAME (default: generated from its name, the
    /// same every run).
    #[arg(long = "net-mac", value_name = "NAME=MAC", value_parser = crate::net::parse_mac_spec)]
    pub net_mac: Vec<(String, [u8; 6])>,
    /// Relay host address HOSTADDR:HOSTPORT (default address 127.0.0.1) to
    /// the guest's GUESTPORT on the user network (repeatable); port 0 picks
    /// a free one.
    #[arg(long, value_name = "[HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp]")]
    pub publish: Vec<skiff_usernet::Publish>,
    /// On the user network, relay the guest's own connections out (`all`)
    /// or not (`none`); by default, only if the image declares it
    /// (`#[skiff::main(net = ..., outbound)]`).
    #[arg(long, value_enum, value_name = "all|none")]
    pub net_outbound: Option<crate::net::Outbound>,
    /// How long the tender's I/O thread keeps polling the rings after its
    /// last frame before it sleeps.
    #[arg(long, value_parser = parse_duration, default_value = "50us")]
    pub net_spin: std::time::Duration,
    /// How long the guest keeps polling its rings before it sleeps (an exit
    /// costs more than a short spin; see BENCHMARKS.md).
    #[arg(long, value_parser = parse_duration, default_value = "50us")]
    pub guest_spin: std::time::Duration,
    /// On the user network, TCP connections relayed at once (published and
    /// outbound); beyond it published ports stop accepting (connections
    /// wait in the backlog) and outbound connections are refused.
    #[arg(long, value_parser = count::<usize>(1, skiff_usernet::config::MAX_TCP_CONNECTIONS as u64), default_value = "256", value_name = "N")]
    pub net_max_connections: usize,
    /// On the user network, host connections each published TCP port holds
    /// waiting while every relay is taken (its listen backlog).
    #[arg(long, value_parser = count::<u32>(1, 65535), default_value = "128", value_name = "N")]
    pub net_backlog: u32,
    /// On the user network, UDP flows at once (a host peer of a published
    /// port, or a guest flow out); the least recently used makes way.
    #[arg(long, value_parser = count::<usize>(1, skiff_usernet::config::MAX_UDP_FLOWS as u64), default_value = "256", value_name = "N")]
    pub net_max_udp_flows: usize,
    /// On the user network, the buffer per direction of each relayed TCP
    /// connection, e.g. 16K or 1M (a plain number means KiB).
    #[arg(long, value_parser = parse_tcp_buffer, default_value = "64K", value_name = "SIZE")]
    pub net_tcp_buffer: usize,
    /// On the user network, how long a connection that reaches a published
    /// port before the guest listens is held (its SYN resent to the guest
    /// every few milliseconds) before it is reset; 0 resets it at once.
    #[arg(long, value_parser = parse_duration, default_value = "2s", value_name = "DURATION")]
    pub net_hold: std::time::Duration,
    /// Write PATH (atomically, by a rename) once the service listens: one
    /// line `listening NIC PORT` per port, and `published HOSTADDR PORT`
    /// per published address relayed to it. An old PATH is removed at
    /// start.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<std::path::PathBuf>,
    /// Attach FILE as the image's disk NAME (repeatable): `ro` read-only,
    /// `size=64M` creates a missing FILE of that size, `sector=4096` for
    /// 4 KiB sectors (default 512); e.g. --disk data=state.img,size=64M.
    #[arg(long = "disk", value_name = "NAME=FILE[,ro][,size=SIZE][,sector=512|4096]", value_parser = crate::disk::parse_disk)]
    pub disk: Vec<crate::disk::DiskSpec>,
}

impl RunOptions {
    /// The run configuration for `image` with guest arguments `args`.
    pub fn config(&self, image: std::path::PathBuf, args: Vec<String>) -> crate::Config {
        crate::Config {
            image,
            sandbox: self.sandbox,
            console_fd: None,
            mem: self.mem,
            timeout: self.timeout,
            stop_grace: self.stop_grace,
            log_level: self.log as u32,
            args,
            net: crate::net::NetOptions {
                nics: self.net.clone(),
                macs: self.net_mac.clone(),
                publish: self.publish.clone(),
                outbound: self.net_outbound.unwrap_or(crate::net::Outbound::AsDeclared),
                io_spin: self.net_spin,
                guest_spin: self.guest_spin,
                limits: skiff_usernet::Limits {
                    tcp_connections: self.net_max_connections,
                    backlog: self.net_backlog,
                    udp_flows: self.net_max_udp_flows,
                    tcp_buffer: self.net_tcp_buffer,
                    hold: self.net_hold,
                    ..Default::default()
                },
                ready_file: self.ready_file.clone(),
                ..Default::default()
            },
            disks: self.disk.clone(),
            stats: self.stats,
            profile: self.profile.clone().map(|path| crate::profile::ProfileOptions { path, hz: self.profile_hz }),
        }
    }
}

/// The `--help` epilogue: how arguments reach the guest, and the exit
/// statuses.
pub fn after_help() -> String {
    let mut text = String::from("Arguments after `--` are passed to the guest.\n\nExit status:\n");
    for (lo, hi, what) in skiff_abi::exit::TABLE {
        let range = if lo == hi { format!("{lo}") } else { format!("{lo}-{hi}") };
        text.push_str(&format!("  {range:>6}  {what}\n"));
    }
    text
}

/// Prints a command-line error (or the help or version asked for) and
/// returns the status: [`skiff_abi::exit::USAGE`] for an error, 0 for help
/// and version. Clap's own status for errors (2) is a service's status.
pub fn usage_error(e: &clap::Error) -> std::process::ExitCode {
    let _ = e.print();
    if e.use_stderr() { std::process::ExitCode::from(skiff_abi::exit::USAGE) } else { std::process::ExitCode::SUCCESS }
}
