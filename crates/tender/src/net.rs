//! Guest NICs: attaching the NICs an image declares to their host ends.
//!
//! A NIC's host end is a TAP device (`--net NAME=tap0`) or the tender's
//! user-mode network (`--net NAME=user`, [`skiff_usernet`]), which needs no
//! TAP device and no privileges. Each NIC gets a receive and a transmit
//! ring in guest memory ([`skiff_abi::ring`]), served by one tender I/O
//! thread ([`crate::netio`]), which owns the host ends: a busy guest sends
//! and receives with no VM exit; it exits only to sleep (`Poll`) or to
//! wake the I/O thread after it fell asleep (`NetNotify`).

use crate::guest_memory::GuestMemory;
use crate::rings::{Direction, Ring, RingError};
use crate::tap::{Tap, TapError};
use skiff_abi::{DeviceKind, NET_MTU, NetInfo, ring};
use skiff_usernet::UserNet;
use smoltcp::wire::EthernetAddress;
use std::time::Duration;

/// One `--net NAME=TAP` (or `NAME=user`) attachment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicSpec {
    /// The NIC's name in the image's manifest.
    pub name: String,
    /// The host TAP device, or `user` for user-mode networking.
    pub tap: String,
}

impl NicSpec {
    /// Whether this NIC goes to the user-mode network.
    pub fn is_user(&self) -> bool {
        self.tap == "user"
    }
}

/// Whether outbound traffic is relayed on the user network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Outbound {
    /// As the image declares (`#[skiff::main(net = ..., outbound)]`).
    #[value(skip)]
    AsDeclared,
    /// Always.
    All,
    /// Never.
    None,
}

/// How the network is set up.
#[derive(Clone, Debug)]
pub struct NetOptions {
    /// Attachments.
    pub nics: Vec<NicSpec>,
    /// MAC addresses given with `--net-mac`.
    pub macs: Vec<(String, [u8; 6])>,
    /// Host ports relayed to the guest on the user network.
    pub publish: Vec<skiff_usernet::Publish>,
    /// Outbound traffic on the user network.
    pub outbound: Outbound,
    /// Slots per ring.
    pub slots: u32,
    /// How long the I/O thread keeps polling after its last frame before
    /// it sleeps.
    pub io_spin: Duration,
    /// How long the guest keeps polling its rings before it sleeps.
    pub guest_spin: Duration,
    /// Bounds of the user network.
    pub limits: skiff_usernet::Limits,
    /// MTUs below [`NET_MTU`] for NICs whose host network carries less (a
    /// container's network, e.g. an overlay's 1450); the guest is told
    /// the NIC's MTU. Others, and larger values, get [`NET_MTU`].
    pub mtus: Vec<(String, u16)>,
    /// `--ready-file`: written when the guest first listens.
    pub ready_file: Option<std::path::PathBuf>,
    /// TAP devices the caller has already attached, by NIC name: taken
    /// over ([`Tap::adopt`]) instead of attaching [`NicSpec::tap`] by name.
    pub attached: Vec<(String, std::sync::Arc<std::os::fd::OwnedFd>)>,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            nics: Vec::new(),
            macs: Vec::new(),
            publish: Vec::new(),
            outbound: Outbound::AsDeclared,
            slots: ring::DEFAULT_SLOTS,
            io_spin: Duration::from_micros(50),
            guest_spin: Duration::from_micros(50),
            limits: skiff_usernet::Limits::default(),
            mtus: Vec::new(),
            ready_file: None,
            attached: Vec::new(),
        }
    }
}

/// A network option or attachment is wrong.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `--net` is not `NAME=TAP`.
    #[error("--net {0:?}: expected NAME=TAPDEVICE, e.g. --net service=tap0")]
    BadSpec(String),
    /// `--net-mac` is not `NAME=MAC`.
    #[error("--net-mac {0:?}: expected NAME=MAC, e.g. --net-mac service=02:00:00:00:00:01")]
    BadMac(String),
    /// The same NIC is attached twice.
    #[error("NIC {0:?} is given twice")]
    Duplicate(String),
    /// The image declares a NIC nobody attached.
    #[error(
        "the image needs a network interface named {0:?}: attach a TAP device with --net {0}=TAPDEVICE, \
         or the user network with --net {0}=user"
    )]
    Missing(String),
    /// A NIC is attached that the image does not declare.
    #[error("--net {name}=...: the image declares no NIC of that name{}", declared_list(.declared))]
    Undeclared {
        /// The given name.
        name: String,
        /// What the image declares.
        declared: Vec<String>,
    },
    /// A `--net-mac` for a NIC that is not attached.
    #[error("--net-mac {0}=...: no --net {0}=... to go with it")]
    MacWithoutNic(String),
    /// The image declares a device kind this tender cannot attach.
    #[error("the image declares a {kind} device named {name:?}, which this tender cannot attach")]
    Unsupported {
        /// The kind.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A TAP device could not be attached.
    #[error("NIC {nic:?}: {source}")]
    Tap {
        /// The NIC.
        nic: String,
        /// Why.
        source: TapError,
    },
    /// `--publish` without a user-network NIC.
    #[error("--publish needs a NIC on the user network{}", publish_hint(.0))]
    PublishWithoutUser(
        /// The NICs the image declares.
        Vec<String>,
    ),
    /// The `--ready-file` could not be prepared.
    #[error(transparent)]
    ReadyFile(#[from] crate::ready::ReadyFileError),
    /// The user network could not be set up.
    #[error("NIC {nic:?}: {source}")]
    User {
        /// The NIC.
        nic: String,
        /// Why.
        source: skiff_usernet::UserNetError,
    },
}

/// How a service gets a NIC, for messages about an image without one.
const DECLARE_HINT: &str = "a service declares one with #[skiff::main(net = \"service\")] and is rebuilt";

fn declared_list(declared: &[String]) -> String {
    if declared.is_empty() {
        format!(" (it has no NICs: {DECLARE_HINT})")
    } else {
        format!(" (it has: {})", declared.join(", "))
    }
}

fn publish_hint(declared: &[String]) -> String {
    match declared.first() {
        None => format!(", but the image has no NIC: {DECLARE_HINT}"),
        Some(name) => format!(": --net {name}=user (the image declares: {})", declared.join(", ")),
    }
}

/// Parses `NAME=TAP` (or `NAME=user`).
pub fn parse_nic(s: &str) -> Result<NicSpec, NetError> {
    match s.split_once('=') {
        Some((n, t)) if !n.is_empty() && !t.is_empty() => Ok(NicSpec { name: n.to_string(), tap: t.to_string() }),
        _ => Err(NetError::BadSpec(s.to_string())),
    }
}

/// Parses `NAME=aa:bb:cc:dd:ee:ff`: a unicast MAC.
pub fn parse_mac_spec(s: &str) -> Result<(String, [u8; 6]), NetError> {
    let bad = || NetError::BadMac(s.to_string());
    let (name, mac) = s.split_once('=').filter(|(name, _)| !name.is_empty()).ok_or_else(bad)?;
    let mac = mac.parse::<EthernetAddress>().ok().filter(EthernetAddress::is_unicast).ok_or_else(bad)?;
    Ok((name.to_string(), mac.0))
}

/// The MAC a NIC gets when none is given: locally administered, unicast,
/// and the same for the same NIC name every time.
pub fn generated_mac(name: &str) -> [u8; 6] {
    // FNV-1a over the name.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_le_bytes();
    [0x02, 0x5f, b[0], b[1], b[2], b[3]]
}

/// The host end of a NIC, owned by the I/O thread.
pub enum Host {
    /// A TAP device.
    Tap(Tap),
    /// The user-mode network.
    User(Box<UserNet>),
}

/// A NIC's two rings, with its name for messages.
#[derive(Clone, Debug)]
pub struct NicRings {
    /// The NIC's name in the manifest.
    pub nic: String,
    /// The receive ring (the tender produces).
    pub rx: Ring,
    /// The transmit ring (the guest produces).
    pub tx: Ring,
}

/// An attached NIC.
pub struct Nic {
    /// Its rings and name.
    pub rings: NicRings,
    /// Its MAC.
    pub mac: [u8; 6],
    /// The host side.
    pub host: Host,
    /// On the user network, whether it relays the guest's own connections
    /// out.
    pub outbound: bool,
    /// Its MTU.
    pub mtu: u16,
}

impl Nic {
    /// What the guest is told about this NIC.
    pub fn info(&self, guest_spin: Duration) -> NetInfo {
        let (rx, tx) = (self.rings.rx, self.rings.tx);
        NetInfo {
            mac: self.mac,
            mtu: self.mtu,
            ring: rx.base(),
            slots: ((tx.base() - rx.base() - ring::HEADER_SIZE) / ring::SLOT_SIZE) as u32,
            spin_micros: guest_spin.as_micros().min(u128::from(u32::MAX)) as u32,
        }
    }

    /// Whether its host end is the user network.
    pub fn is_user(&self) -> bool {
        matches!(self.host, Host::User(_))
    }
}

/// Bytes of guest memory the rings of `count` NICs need.
pub fn ring_bytes(count: usize, options: &NetOptions) -> u64 {
    count as u64 * 2 * ring::ring_bytes(options.slots)
}

/// Matches the attachments to the image's declared devices (in manifest
/// order), attaches the TAP devices and sets up the user networks (the
/// first takes the published ports). The rings are laid out from
/// `ring_base` up.
pub fn attach(
    declared: &[crate::elf::DeclaredDevice],
    options: &NetOptions,
    ring_base: u64,
) -> Result<Vec<Nic>, NetError> {
    let macs = &options.macs;
    if !options.publish.is_empty() && !options.nics.iter().any(NicSpec::is_user) {
        return Err(NetError::PublishWithoutUser(
            declared.iter().filter(|d| d.kind == DeviceKind::Net).map(|d| d.name.clone()).collect(),
        ));
    }
    for (i, spec) in options.nics.iter().enumerate() {
        if options.nics[..i].iter().any(|s| s.name == spec.name) {
            return Err(NetError::Duplicate(spec.name.clone()));
        }
        if !declared.iter().any(|d| d.kind == DeviceKind::Net && d.name == spec.name) {
            return Err(NetError::Undeclared {
                name: spec.name.clone(),
                declared: declared.iter().filter(|d| d.kind == DeviceKind::Net).map(|d| d.name.clone()).collect(),
            });
        }
    }
    for (name, _) in macs {
        if !options.nics.iter().any(|s| &s.name == name) {
            return Err(NetError::MacWithoutNic(name.clone()));
        }
    }
    let mut nics = Vec::new();
    let mut publish = options.publish.clone();
    let ring_len = ring::ring_bytes(options.slots);
    for d in declared.iter().filter(|d| d.kind != DeviceKind::Block) {
        if d.kind != DeviceKind::Net {
            return Err(NetError::Unsupported { kind: d.kind.name(), name: d.name.clone() });
        }
        let spec = options.nics.iter().find(|s| s.name == d.name).ok_or_else(|| NetError::Missing(d.name.clone()))?;
        let mac = macs.iter().find(|(n, _)| n == &d.name).map_or_else(|| generated_mac(&d.name), |(_, m)| *m);
        let outbound = match options.outbound {
            Outbound::AsDeclared => d.outbound,
            Outbound::All => true,
            Outbound::None => false,
        };
        let host = if spec.is_user() {
            let publish = std::mem::take(&mut publish);
            Host::User(Box::new(user_network(&d.name, mac, publish, outbound, options.limits)?))
        } else {
            let tap = match options.attached.iter().find(|(n, _)| n == &d.name) {
                Some((_, fd)) => Tap::adopt(&spec.tap, fd),
                None => Tap::attach(&spec.tap),
            };
            Host::Tap(tap.map_err(|source| NetError::Tap { nic: d.name.clone(), source })?)
        };
        let rx = ring_base + nics.len() as u64 * 2 * ring_len;
        let rings = NicRings {
            nic: d.name.clone(),
            rx: Ring::new(rx, options.slots, Direction::Receive),
            tx: Ring::new(rx + ring_len, options.slots, Direction::Transmit),
        };
        let mtu = options.mtus.iter().find(|(n, _)| n == &d.name).map_or(NET_MTU as u16, |(_, m)| *m);
        let mtu = mtu.min(NET_MTU as u16);
        nics.push(Nic { rings, mac, host, outbound: outbound && spec.is_user(), mtu });
    }
    Ok(nics)
}

/// Sets up the user network of NIC `name`, and says on stderr how the
/// guest is reached.
fn user_network(
    name: &str,
    mac: [u8; 6],
    publish: Vec<skiff_usernet::Publish>,
    outbound: bool,
    limits: skiff_usernet::Limits,
) -> Result<UserNet, NetError> {
    let config = skiff_usernet::Config {
        guest_mac: mac,
        publish,
        outbound,
        upstream_dns: if outbound { skiff_usernet::config::host_dns() } else { None },
        limits,
    };
    let (user, bound) = UserNet::new(config).map_err(|source| NetError::User { nic: name.to_string(), source })?;
    eprintln!(
        "skiff-tender: NIC {name:?} is on the user network: guest {} by DHCP, gateway {} (the host's loopback), \
         outbound traffic {}",
        skiff_usernet::config::GUEST,
        skiff_usernet::config::GATEWAY,
        if outbound { "relayed" } else { "off" }
    );
    for p in &bound {
        eprintln!("skiff-tender: {}/{} -> guest port {}", p.host, p.proto, p.guest_port);
    }
    Ok(user)
}

/// The host end of a NIC failed, or the guest broke a ring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The host refused a write for another reason than a full queue.
    #[error("the TAP device failed: {0}")]
    Host(String),
    /// A ring is broken.
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// A [`FrameError`] with the NIC it belongs to; ends the guest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("NIC {nic:?}: {source}")]
pub struct NicError {
    /// The NIC's name.
    pub nic: String,
    /// What is wrong.
    pub source: FrameError,
}

impl NicRings {
    /// A broken ring of this NIC.
    pub fn error(&self, e: impl Into<RingError>) -> NicError {
        NicError { nic: self.nic.clone(), source: FrameError::Ring(e.into()) }
    }

    fn pending(&self, ring: Ring, mem: &GuestMemory) -> Result<u32, NicError> {
        ring.pending(mem).map_err(|e| self.error(e))
    }
}

/// Receive ring readiness: bit `i` set when NIC `i` has frames waiting.
pub fn rx_ready(nics: &[NicRings], mem: &GuestMemory) -> Result<u64, NicError> {
    let mut mask = 0;
    for (i, nic) in nics.iter().enumerate() {
        if nic.pending(nic.rx, mem)? > 0 {
            mask |= 1 << i;
        }
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::DeclaredDevice;

    #[test]
    fn specs_and_macs_parse() {
        assert_eq!(parse_nic("service=tap0").unwrap(), NicSpec { name: "service".into(), tap: "tap0".into() });
        assert!(parse_nic("service").is_err());
        assert!(parse_nic("=tap0").is_err());
        assert_eq!(parse_mac_spec("s=02:00:00:0a:0b:ff").unwrap(), ("s".into(), [2, 0, 0, 10, 11, 255]));
        assert!(parse_mac_spec("s=01:00:00:00:00:00").is_err(), "multicast");
        assert!(parse_mac_spec("s=02:00:00:00:00").is_err());
        assert!(parse_mac_spec("s=02:00:00:00:00:zz").is_err());
        assert!(parse_mac_spec("=02:00:00:00:00:01").is_err());
        assert!(parse_mac_spec("s=02:00:00:00:00:01:02").is_err());
    }

    #[test]
    fn generated_macs_are_stable_local_unicast_and_differ_by_name() {
        let a = generated_mac("service");
        assert_eq!(a, generated_mac("service"));
        assert_ne!(a, generated_mac("admin"));
        assert_eq!(a[0] & 0b11, 0b10, "locally administered, unicast");
    }

    #[test]
    fn a_nics_mtu_can_be_lowered_but_not_raised() {
        let declared = vec![DeclaredDevice { kind: DeviceKind::Net, name: "service".into(), outbound: false }];
        let mut opts =
            NetOptions { nics: vec![NicSpec { name: "service".into(), tap: "user".into() }], ..NetOptions::default() };
        let mtu = |opts: &NetOptions| attach(&declared, opts, 0x100_0000).unwrap()[0].info(Duration::ZERO).mtu;
        assert_eq!(mtu(&opts), NET_MTU as u16);
        opts.mtus = vec![("service".into(), 1400)];
        assert_eq!(mtu(&opts), 1400);
        opts.mtus = vec![("service".into(), 9000)];
        assert_eq!(mtu(&opts), NET_MTU as u16);
    }

    #[test]
    fn attachments_must_match_the_manifest() {
        let declared = vec![DeclaredDevice { kind: DeviceKind::Net, name: "service".into(), outbound: false }];
        let mut opts = NetOptions::default();
        assert!(matches!(attach(&declared, &opts, 0), Err(NetError::Missing(n)) if n == "service"));
        opts.nics = vec![NicSpec { name: "other".into(), tap: "tap0".into() }];
        let err = attach(&declared, &opts, 0).err().unwrap().to_string();
        assert!(err.contains("declares no NIC of that name (it has: service)"), "{err}");
        opts.nics = vec![
            NicSpec { name: "service".into(), tap: "tapnotthere0".into() },
            NicSpec { name: "service".into(), tap: "tap1".into() },
        ];
        assert!(matches!(attach(&declared, &opts, 0), Err(NetError::Duplicate(_))));
        opts.nics.pop();
        opts.macs = vec![("x".into(), [2, 0, 0, 0, 0, 1])];
        assert!(matches!(attach(&declared, &opts, 0), Err(NetError::MacWithoutNic(_))));
        opts.macs.clear();
        let err = attach(&declared, &opts, 0).err().unwrap().to_string();
        assert!(err.contains("tapnotthere0 does not exist"), "{err}");
    }
}
