//! An authoritative DNS server core: zones compiled at build time, and a
//! sans-IO server that turns one query message into one answer message
//! (or, where the RFCs say so, into nothing). The core does no I/O; the
//! UDP and TCP front ends on Skiff's network stack are in [`serve`]
//! (cargo feature `net`).
//!
//! - [`build`] (cargo feature `build`, std, host only): compiles RFC 1035
//!   master files into a blob, with errors that name the file and line.
//! - [`Catalog`]: loads a blob (checked once, borrowed, no copies).
//! - [`Server`]: [`Server::respond`] answers a query for UDP or TCP;
//!   [`Server::handle`] adds response-rate limiting ([`RateLimit`]).
//! - [`tcp`]: the two-byte length framing of DNS over TCP.
//! - `serve` (feature `net`): [`NameServer`](serve::NameServer) answers on
//!   a UDP socket and a TCP listener of `skiff-net`.
//!
//! Messages are parsed and built with NLnet Labs' `domain` crate. See
//! `docs/dns.md` for what is served and what is not.
//!
//! ```
//! # #[cfg(feature = "build")] {
//! use skiff_dns::{Catalog, Config, Server, Transport};
//! use skiff_dns::build::{compile, ZoneFile};
//!
//! let file = ZoneFile::new("example.", "example.zone");
//! let text = "$TTL 300\n@ SOA ns hostmaster 1 7200 3600 1209600 300\n@ NS ns\nns A 192.0.2.1\n";
//! let blob = compile(&[(&file, text)]).unwrap();
//! let server = Server::new(Catalog::new(&blob).unwrap(), Config::default());
//! // A query for ns.example. A, as a client sends it.
//! let query = b"\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x02ns\x07example\x00\x00\x01\x00\x01";
//! let answer = server.respond(query, Transport::Udp).unwrap();
//! assert_eq!(&answer[..2], b"\x12\x34");
//! # }
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod blob;
#[cfg(feature = "build")]
pub mod build;
#[cfg(feature = "store")]
pub mod journal;
mod nsec3;
mod rrl;
pub mod secondary;
#[cfg(feature = "net")]
pub mod serve;
mod server;
pub mod tcp;
pub mod tsig;
mod update;
pub mod xfr;
mod zone;

pub use domain;
pub use rrl::{RateLimit, RateLimiter, Verdict};
pub use server::{Config, Server, Transport};
pub use xfr::{AclRule, Event, Peer, Reply};
pub use zone::{Catalog, LoadError, Node, OwnedZone, Record, Rr, Rrset, Zone, soa_serial};
