//! An authoritative name server: the zones under `zones/` (compiled into
//! the image by build.rs) answered on UDP and TCP port 53. The service is
//! [`run`]; `src/main.rs` is the image without a disk (updates live in
//! memory), `examples/nameserver-disk` the image that keeps updated zones
//! on a disk.
//!
//! ```text
//! skiff run examples/nameserver --net service=user --publish 5353:53/udp --publish 5353:53/tcp -- \
//!     [--port 53] [--rate-limit N [--slip N] [--ipv4-prefix N] [--ipv6-prefix N]]
//!     [--max-udp-payload N] [--minimal-responses]
//!     [--tcp-idle-timeout SECS] [--tcp-max-connections N]
//!     [--tsig-key NAME:hmac-sha256:BASE64]... [--allow-transfer RULE]... [--allow-update RULE]...
//!     [--notify [ZONE=]ADDR[:PORT][,key=NAME]]... [--secondary ZONE=PRIMARY[:PORT][,key=NAME]]...
//!     [--ipv4 ADDR/PREFIX --gateway ADDR | --dhcp]
//! ```
#![no_std]

extern crate alloc;

use base64::Engine;
use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
#[cfg(feature = "disk")]
use skiff::block::Disk;
#[cfg(feature = "disk")]
use skiff::dns::journal::Journal;
use skiff::dns::secondary::Secondary;
use skiff::dns::serve::{NameServer, NotifyTarget, ServeConfig};
use skiff::dns::tsig::Key;
use skiff::dns::{AclRule, Catalog, Config, RateLimit, Server};
use skiff::net::{NetConfig, Stack, TcpListener, UdpOptions, UdpSocket};
use skiff::prelude::*;

/// The zones, compiled by build.rs.
static ZONES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/zones.dns"));

/// Serves the zones on the network device `service` until asked to stop;
/// updates live in memory.
pub async fn run(env: skiff::Env) -> Result<(), skiff::Error> {
    serve(
        env,
        #[cfg(feature = "disk")]
        None,
    )
    .await
}

/// [`run`], keeping every zone an UPDATE changes (or a primary transfers)
/// on `disk` before the UPDATE is answered, and serving the kept zones
/// again at boot (feature `disk`).
#[cfg(feature = "disk")]
pub async fn run_with_disk(env: skiff::Env, disk: Disk) -> Result<(), skiff::Error> {
    serve(env, Some(disk)).await
}

async fn serve(env: skiff::Env, #[cfg(feature = "disk")] disk: Option<Disk>) -> Result<(), skiff::Error> {
    let (net, rest) = NetConfig::from_args(env.args())?;
    let options = Options::parse(&rest)?;
    let catalog = Catalog::new(ZONES)?;
    for zone in catalog.zones() {
        info!("zone {} ({} names)", zone.apex, zone.nodes.len());
    }
    #[cfg_attr(not(feature = "disk"), expect(unused_mut, reason = "only a journal changes it"))]
    let mut server = Server::new(catalog, options.dns.clone());
    #[cfg(feature = "disk")]
    let journal = match disk {
        Some(disk) => {
            let (journal, created) = Journal::open(disk).await.map_err(|e| format!("disk zones: {e}"))?;
            if created {
                info!("disk zones: a new zone store");
            }
            let secondaries = options.dns.secondaries.clone();
            let accept = |z: &skiff::dns::domain::base::Name<[u8]>| secondaries.iter().any(|s| s.zone.for_slice() == z);
            for r in journal.restore(&mut server, accept).await.map_err(|e| format!("disk zones: {e}"))? {
                if r.is_problem() { warn!("{r}") } else { info!("{r}") }
            }
            Some(journal)
        }
        None => None,
    };
    let stack = Stack::new(env.take_net("service")?, net, &env.spawner());
    // Room for a burst of queries (dnsperf keeps hundreds in flight)
    // while the stack takes frames in before the socket's task runs.
    let buffers = UdpOptions { datagrams: 1024, payload: 256 * 1024 };
    let udp = UdpSocket::bind_with(&stack, options.port, buffers)?;
    let listener = TcpListener::bind(&stack, options.port)?;
    #[cfg(feature = "disk")]
    let (kept, ns) = match journal {
        Some(journal) => (true, NameServer::with_journal(server, options.serve, journal)),
        None => (false, NameServer::new(server, options.serve)),
    };
    #[cfg(not(feature = "disk"))]
    let (kept, ns) = (false, NameServer::new(server, options.serve));
    ns.notify_to(env.spawner(), options.notify.clone());
    for secondary in &options.dns.secondaries {
        match &secondary.key {
            Some(k) => info!("zone {} is a secondary of {} (TSIG key {k})", secondary.zone, secondary.primary),
            None => info!("zone {} is a secondary of {}", secondary.zone, secondary.primary),
        }
        env.spawn(ns.clone().serve_secondary(stack.clone(), secondary.clone()));
    }
    for t in &options.notify {
        let signed = t.key.as_ref().map(|k| format!(" (TSIG key {k})")).unwrap_or_default();
        match &t.zone {
            Some(z) => info!("NOTIFY for {z} goes to {}{signed}", t.addr),
            None => info!("NOTIFY for every zone goes to {}{signed}", t.addr),
        }
    }
    let addr = stack.wait_ipv4().await;
    let limit = match &options.dns.rate_limit {
        Some(r) => format!("rate limit {}/s per client prefix, slip {}", r.responses_per_second, r.slip),
        None => "no rate limit".into(),
    };
    info!("serving UDP and TCP on {addr}:{} ({limit})", options.port);
    for key in &options.dns.keys {
        info!("TSIG key {} (hmac-sha256)", key.name());
    }
    let rules = |rules: &[AclRule]| -> String {
        if rules.is_empty() {
            return "nobody".into();
        }
        rules.iter().map(rule_text).collect::<Vec<_>>().join(", ")
    };
    info!(
        "transfers allowed to {}; updates allowed to {}",
        rules(&options.dns.allow_transfer),
        rules(&options.dns.allow_update)
    );
    if kept {
        info!("updates are kept on the disk zones before they are answered");
    } else if !options.dns.allow_update.is_empty() {
        info!("updates are kept in memory: a restart serves the zones as built");
    }
    let udp_side = ns.clone();
    env.spawn(async move {
        // Only a failing socket ends it: the service ends with it, loudly.
        if let Err(e) = udp_side.serve_udp(udp).await {
            error!("{e}");
            skiff::exit(1);
        }
    });
    let tcp_side = ns.clone();
    let spawner = env.spawner();
    env.spawn(async move {
        if let Err(e) = tcp_side.serve_tcp(spawner, listener).await {
            error!("{e}");
            skiff::exit(1);
        }
    });
    env.stopping().await;
    #[cfg(feature = "disk")]
    if let Err(e) = ns.sync().await {
        error!("disk zones: {e}");
    }
    let s = ns.stats();
    info!(
        "stopping: answered {} of {} UDP queries and {} TCP queries on {} connections ({} turned away, {} closed \
         for idleness or bad framing)",
        s.udp_answers, s.udp_queries, s.tcp_queries, s.tcp_connections, s.tcp_turned_away, s.tcp_dropped
    );
    Ok(())
}

/// The command line beyond the network's.
struct Options {
    port: u16,
    notify: Vec<NotifyTarget>,
    dns: Config,
    serve: ServeConfig,
}

/// A bad command line.
#[derive(Debug)]
enum ArgError {
    Missing(&'static str),
    Bad { flag: &'static str, value: String, want: &'static str },
    Unknown(String),
    Key(String),
}

impl core::fmt::Display for ArgError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ArgError::Missing(flag) => write!(f, "{flag} needs a value"),
            ArgError::Bad { flag, value, want } => write!(f, "{flag} {value:?}: not {want}"),
            ArgError::Unknown(a) => write!(
                f,
                "unknown argument {a:?} (nameserver takes --port, --rate-limit, --slip, --ipv4-prefix, \
                 --ipv6-prefix, --max-udp-payload, --minimal-responses, --tcp-idle-timeout, --tcp-max-connections, \
                 --tsig-key, --allow-transfer, --allow-update, --notify, --secondary)"
            ),
            ArgError::Key(why) => write!(f, "--tsig-key: {why}"),
        }
    }
}

impl core::error::Error for ArgError {}

impl Options {
    fn parse(args: &[String]) -> Result<Options, ArgError> {
        let mut o = Options { port: 53, notify: Vec::new(), dns: Config::default(), serve: ServeConfig::default() };
        let mut rate = RateLimit::default();
        let mut limited = false;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |flag: &'static str| it.next().ok_or(ArgError::Missing(flag));
            match a.as_str() {
                "--port" => o.port = number(value("--port")?, "--port", 1, 65_535, "a port")?,
                "--rate-limit" => {
                    let v = value("--rate-limit")?;
                    rate.responses_per_second = number(v, "--rate-limit", 0, 1_000_000, "answers per second")?;
                    limited = rate.responses_per_second > 0;
                }
                "--slip" => rate.slip = number(value("--slip")?, "--slip", 0, 100, "a count from 0 to 100")?,
                "--ipv4-prefix" => {
                    rate.ipv4_prefix = number(value("--ipv4-prefix")?, "--ipv4-prefix", 0, 32, "a prefix length")?
                }
                "--ipv6-prefix" => {
                    rate.ipv6_prefix = number(value("--ipv6-prefix")?, "--ipv6-prefix", 0, 128, "a prefix length")?
                }
                "--max-udp-payload" => {
                    let v = value("--max-udp-payload")?;
                    o.dns.max_udp_payload = number(v, "--max-udp-payload", 512, 65_535, "a size from 512")?;
                }
                "--minimal-responses" => o.dns.minimal_responses = true,
                "--tcp-idle-timeout" => {
                    let v = value("--tcp-idle-timeout")?;
                    let secs: u64 = number(v, "--tcp-idle-timeout", 1, 3600, "seconds from 1 to 3600")?;
                    o.serve.tcp_idle_timeout = Duration::from_secs(secs);
                }
                "--tcp-max-connections" => {
                    let v = value("--tcp-max-connections")?;
                    o.serve.tcp_max_connections = number(v, "--tcp-max-connections", 1, 10_000, "a count")?;
                }
                "--tsig-key" => o.dns.keys.push(parse_key(value("--tsig-key")?)?),
                "--allow-transfer" => {
                    o.dns.allow_transfer.push(parse_rule(value("--allow-transfer")?, "--allow-transfer")?)
                }
                "--notify" => o.notify.push(parse_notify(value("--notify")?)?),
                "--secondary" => o.dns.secondaries.push(parse_secondary(value("--secondary")?)?),
                "--allow-update" => o.dns.allow_update.push(parse_rule(value("--allow-update")?, "--allow-update")?),
                other => return Err(ArgError::Unknown(other.into())),
            }
        }
        if limited {
            o.dns.rate_limit = Some(rate);
        }
        // A rule naming a key that was not given could never match.
        let known =
            |k: &skiff::dns::domain::base::Name<Vec<u8>>| o.dns.keys.iter().any(|key| key.name() == k.for_slice());
        for rule in o.dns.allow_transfer.iter().chain(&o.dns.allow_update) {
            if let Some(k) = &rule.key
                && !known(k)
            {
                return Err(ArgError::Key(format!("no key {k} for the access rule (give it with --tsig-key)")));
            }
        }
        let keyed = o
            .notify
            .iter()
            .map(|t| (&t.key, "--notify"))
            .chain(o.dns.secondaries.iter().map(|s| (&s.key, "--secondary")));
        for (key, flag) in keyed {
            if let Some(k) = key
                && !known(k)
            {
                return Err(ArgError::Key(format!("no key {k} for {flag} (give it with --tsig-key)")));
            }
        }
        Ok(o)
    }
}

/// `value` as a number in `min..=max`.
fn number<T>(value: &str, flag: &'static str, min: u64, max: u64, want: &'static str) -> Result<T, ArgError>
where
    T: TryFrom<u64>,
{
    let bad = || ArgError::Bad { flag, value: value.into(), want };
    let n: u64 = value.parse().map_err(|_| bad())?;
    if !(min..=max).contains(&n) {
        return Err(bad());
    }
    T::try_from(n).map_err(|_| bad())
}

/// `NAME:hmac-sha256:BASE64`.
fn parse_key(text: &str) -> Result<Key, ArgError> {
    let mut parts = text.splitn(3, ':');
    let (Some(name), Some(algorithm), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ArgError::Key(format!("{text:?} is not NAME:hmac-sha256:BASE64")));
    };
    if !algorithm.eq_ignore_ascii_case("hmac-sha256") {
        return Err(ArgError::Key(format!("algorithm {algorithm:?}: only hmac-sha256 is supported")));
    }
    let secret = base64::engine::general_purpose::STANDARD
        .decode(secret)
        .map_err(|e| ArgError::Key(format!("secret of {name:?} is not base64: {e}")))?;
    Key::new(name, secret).map_err(|e| ArgError::Key(e.to_string()))
}

/// `ADDR[:PORT]` (an IPv6 address with a port in brackets), port 53 by
/// default.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().or_else(|| text.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

fn parse_zone(text: &str) -> Option<skiff::dns::domain::base::Name<Vec<u8>>> {
    let text = if text.ends_with('.') { text.to_string() } else { format!("{text}.") };
    skiff::dns::domain::base::Name::from_chars(text.chars()).ok()
}

/// `TEXT[,key=NAME]`: the text and the key's name.
fn with_key(text: &str) -> Option<(&str, Option<skiff::dns::domain::base::Name<Vec<u8>>>)> {
    match text.split_once(',') {
        Some((rest, key)) => Some((rest, Some(parse_zone(key.strip_prefix("key=")?)?))),
        None => Some((text, None)),
    }
}

/// `[ZONE=]ADDR[:PORT][,key=NAME]`.
fn parse_notify(text: &str) -> Result<NotifyTarget, ArgError> {
    let bad = || ArgError::Bad { flag: "--notify", value: text.into(), want: "[ZONE=]ADDR[:PORT][,key=NAME]" };
    let (target, key) = with_key(text).ok_or_else(bad)?;
    let (zone, addr) = match target.split_once('=') {
        Some((z, a)) => (Some(parse_zone(z).ok_or_else(bad)?), a),
        None => (None, target),
    };
    Ok(NotifyTarget { zone, addr: parse_addr(addr).ok_or_else(bad)?, key })
}

/// `ZONE=PRIMARY[:PORT][,key=NAME]`.
fn parse_secondary(text: &str) -> Result<Secondary, ArgError> {
    let bad = || ArgError::Bad { flag: "--secondary", value: text.into(), want: "ZONE=PRIMARY[:PORT][,key=NAME]" };
    let (target, key) = with_key(text).ok_or_else(bad)?;
    let (zone, primary) = target.split_once('=').ok_or_else(bad)?;
    Ok(Secondary { zone: parse_zone(zone).ok_or_else(bad)?, primary: parse_addr(primary).ok_or_else(bad)?, key })
}

fn parse_rule(text: &str, flag: &'static str) -> Result<AclRule, ArgError> {
    AclRule::parse(text).map_err(|_| ArgError::Bad {
        flag,
        value: text.into(),
        want: "any, ADDR[/PREFIX], key:NAME or ADDR[/PREFIX]+key:NAME",
    })
}

fn rule_text(rule: &AclRule) -> String {
    let mut parts = Vec::new();
    if let Some((addr, prefix)) = rule.network {
        parts.push(format!("{addr}/{prefix}"));
    }
    if let Some(k) = &rule.key {
        parts.push(format!("key {k}"));
    }
    if parts.is_empty() { "anyone".into() } else { parts.join(" with ") }
}
