//! How a stack gets its addresses, from the guest's command line.
//!
//! ```text
//! --dhcp                         IPv4 from DHCP (the default)
//! --ipv4 10.0.0.2/24             static IPv4 address
//! --gateway 10.0.0.1             IPv4 default route (with --ipv4)
//! --ipv6 fd00::2/64              static IPv6 address
//! --gateway6 fd00::1             IPv6 default route
//! --slaac                        IPv6 address from router advertisements
//! --dns 10.0.0.1                 DNS server (repeatable; DHCP adds its own)
//! --dhcp-max-lease 60            cap the DHCP lease, seconds (renew at half)
//! --no-ipv4                      no IPv4 at all
//! ```
//!
//! Every interface also gets its IPv6 link-local address (from its MAC).
//! [`NetConfig::from_args`] takes these options out of the arguments and
//! leaves the rest to the service.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::time::Duration;

/// IPv4 configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ipv4Config {
    /// No IPv4.
    None,
    /// From a DHCP server.
    Dhcp {
        /// Cap on the lease the server grants (to renew sooner).
        max_lease: Option<Duration>,
    },
    /// Fixed.
    Static {
        /// The address.
        address: Ipv4Addr,
        /// Prefix length.
        prefix: u8,
        /// Default gateway.
        gateway: Option<Ipv4Addr>,
    },
}

/// IPv6 configuration beyond the link-local address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ipv6Config {
    /// Link-local only.
    LinkLocal,
    /// Stateless autoconfiguration from router advertisements.
    Slaac,
    /// Fixed.
    Static {
        /// The address.
        address: Ipv6Addr,
        /// Prefix length.
        prefix: u8,
        /// Default gateway.
        gateway: Option<Ipv6Addr>,
    },
}

/// A stack's address configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// IPv4.
    pub ipv4: Ipv4Config,
    /// IPv6.
    pub ipv6: Ipv6Config,
    /// DNS servers given on the command line.
    pub dns: Vec<IpAddr>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig { ipv4: Ipv4Config::Dhcp { max_lease: None }, ipv6: Ipv6Config::LinkLocal, dns: Vec::new() }
    }
}

/// A network option on the command line is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// An option needs a value.
    MissingValue(&'static str),
    /// A value does not parse.
    BadValue {
        /// The option.
        option: &'static str,
        /// The value.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// Options that exclude each other.
    Conflict(&'static str),
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::MissingValue(o) => write!(f, "{o} needs a value"),
            ConfigError::BadValue { option, value, expected } => write!(f, "{option} {value:?}: expected {expected}"),
            ConfigError::Conflict(what) => f.write_str(what),
        }
    }
}

impl core::error::Error for ConfigError {}

fn parse_cidr<A: core::str::FromStr>(
    option: &'static str,
    value: &str,
    max_prefix: u8,
    expected: &'static str,
) -> Result<(A, u8), ConfigError> {
    let bad = || ConfigError::BadValue { option, value: value.to_string(), expected };
    let (addr, prefix) = value.split_once('/').ok_or_else(bad)?;
    let addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix == 0 || prefix > max_prefix {
        return Err(bad());
    }
    Ok((addr, prefix))
}

fn parse_value<T: core::str::FromStr>(
    option: &'static str,
    value: &str,
    expected: &'static str,
) -> Result<T, ConfigError> {
    value.parse().map_err(|_| ConfigError::BadValue { option, value: value.to_string(), expected })
}

impl NetConfig {
    /// Takes the network options out of `args`; returns the configuration
    /// and the arguments left for the service.
    pub fn from_args(args: &[String]) -> Result<(NetConfig, Vec<String>), ConfigError> {
        let mut rest = Vec::new();
        let mut dhcp = false;
        let mut no_ipv4 = false;
        let mut max_lease = None;
        let mut ipv4 = None;
        let mut gateway = None;
        let mut ipv6 = None;
        let mut gateway6 = None;
        let mut slaac = false;
        let mut dns = Vec::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            let mut value = |option: &'static str| -> Result<String, ConfigError> {
                match &inline {
                    Some(v) => Ok(v.clone()),
                    None => it.next().cloned().ok_or(ConfigError::MissingValue(option)),
                }
            };
            match name {
                "--dhcp" => dhcp = true,
                "--no-ipv4" => no_ipv4 = true,
                "--slaac" => slaac = true,
                "--ipv4" => {
                    ipv4 = Some(parse_cidr::<Ipv4Addr>(
                        "--ipv4",
                        &value("--ipv4")?,
                        32,
                        "ADDRESS/PREFIX, e.g. 10.0.0.2/24",
                    )?)
                }
                "--gateway" => gateway = Some(parse_value("--gateway", &value("--gateway")?, "an IPv4 address")?),
                "--ipv6" => {
                    ipv6 = Some(parse_cidr::<Ipv6Addr>(
                        "--ipv6",
                        &value("--ipv6")?,
                        128,
                        "ADDRESS/PREFIX, e.g. fd00::2/64",
                    )?)
                }
                "--gateway6" => gateway6 = Some(parse_value("--gateway6", &value("--gateway6")?, "an IPv6 address")?),
                "--dns" => dns.push(parse_value::<IpAddr>("--dns", &value("--dns")?, "an IP address")?),
                "--dhcp-max-lease" => {
                    let secs: u64 = parse_value("--dhcp-max-lease", &value("--dhcp-max-lease")?, "seconds")?;
                    max_lease = Some(Duration::from_secs(secs.max(1)));
                }
                _ => rest.push(arg.clone()),
            }
        }
        let v4 = match (ipv4, dhcp, no_ipv4) {
            (Some(_), true, _) => return Err(ConfigError::Conflict("--ipv4 and --dhcp exclude each other")),
            (Some(_), _, true) | (None, true, true) => {
                return Err(ConfigError::Conflict("--no-ipv4 excludes --ipv4 and --dhcp"));
            }
            (Some((address, prefix)), false, false) => Ipv4Config::Static { address, prefix, gateway },
            (None, _, true) => Ipv4Config::None,
            (None, _, false) => {
                if gateway.is_some() {
                    return Err(ConfigError::Conflict("--gateway needs --ipv4 (DHCP provides its own)"));
                }
                Ipv4Config::Dhcp { max_lease }
            }
        };
        let v6 = match (ipv6, slaac) {
            (Some(_), true) => return Err(ConfigError::Conflict("--ipv6 and --slaac exclude each other")),
            (Some((address, prefix)), false) => Ipv6Config::Static { address, prefix, gateway: gateway6 },
            (None, true) => Ipv6Config::Slaac,
            (None, false) => {
                if gateway6.is_some() {
                    return Err(ConfigError::Conflict("--gateway6 needs --ipv6"));
                }
                Ipv6Config::LinkLocal
            }
        };
        Ok((NetConfig { ipv4: v4, ipv6: v6, dns }, rest))
    }

    /// A one-line description, for logs.
    pub fn describe(&self) -> String {
        let v4 = match &self.ipv4 {
            Ipv4Config::None => "no IPv4".to_string(),
            Ipv4Config::Dhcp { .. } => "IPv4 by DHCP".to_string(),
            Ipv4Config::Static { address, prefix, gateway } => match gateway {
                Some(g) => format!("IPv4 {address}/{prefix} via {g}"),
                None => format!("IPv4 {address}/{prefix}"),
            },
        };
        let v6 = match &self.ipv6 {
            Ipv6Config::LinkLocal => "IPv6 link-local".to_string(),
            Ipv6Config::Slaac => "IPv6 by SLAAC".to_string(),
            Ipv6Config::Static { address, prefix, .. } => format!("IPv6 {address}/{prefix}"),
        };
        format!("{v4}, {v6}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn dhcp_is_the_default_and_other_args_pass_through() {
        let (c, rest) = NetConfig::from_args(&args("--port 7 -v")).unwrap();
        assert_eq!(c, NetConfig::default());
        assert_eq!(rest, args("--port 7 -v"));
    }

    #[test]
    fn static_addresses_parse() {
        let (c, rest) = NetConfig::from_args(&args(
            "--ipv4 10.0.0.2/24 --gateway=10.0.0.1 --ipv6 fd00::2/64 --gateway6 fd00::1 --dns 10.0.0.1 x",
        ))
        .unwrap();
        assert_eq!(
            c.ipv4,
            Ipv4Config::Static {
                address: Ipv4Addr::new(10, 0, 0, 2),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 0, 1))
            }
        );
        assert_eq!(
            c.ipv6,
            Ipv6Config::Static {
                address: "fd00::2".parse().unwrap(),
                prefix: 64,
                gateway: Some("fd00::1".parse().unwrap())
            }
        );
        assert_eq!(c.dns, vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))]);
        assert_eq!(rest, args("x"));
        assert_eq!(c.describe(), "IPv4 10.0.0.2/24 via 10.0.0.1, IPv6 fd00::2/64");
    }

    #[test]
    fn slaac_and_lease_caps() {
        let (c, _) = NetConfig::from_args(&args("--slaac --dhcp --dhcp-max-lease 30")).unwrap();
        assert_eq!(c.ipv6, Ipv6Config::Slaac);
        assert_eq!(c.ipv4, Ipv4Config::Dhcp { max_lease: Some(Duration::from_secs(30)) });
    }

    #[test]
    fn mistakes_are_reported() {
        let e = |s| NetConfig::from_args(&args(s)).unwrap_err().to_string();
        assert!(e("--ipv4 10.0.0.2").contains("ADDRESS/PREFIX"));
        assert!(e("--ipv4 10.0.0.300/24").contains("--ipv4"));
        assert!(e("--ipv4 10.0.0.2/33").contains("--ipv4"));
        assert!(e("--gateway").contains("needs a value"));
        assert!(e("--ipv4 10.0.0.2/24 --dhcp").contains("exclude"));
        assert!(e("--gateway 10.0.0.1").contains("needs --ipv4"));
        assert!(e("--ipv6 fd00::1/64 --slaac").contains("exclude"));
        assert!(e("--dns nope").contains("an IP address"));
    }
}
