//! The compiled zone format: what the zone compiler
//! ([`build`](crate::build), on the host) writes and [`Catalog`] loads in the
//! guest.
//!
//! ```text
//! magic     8 bytes  b"SKIFFDNS"
//! version   u16      1
//! zones     u16      number of zones
//! per zone:
//!   records u32      number of records
//!   length  u32      bytes of records that follow
//!   records          DNS wire format (RFC 1035 section 4.1.3), names
//!                    uncompressed, class IN; the first is the zone's SOA
//!                    and its owner is the zone's apex
//! ```
//!
//! All integers are big-endian, as in DNS messages. The records are the
//! zone file's, in its order; the loader groups them. Nothing in the blob is
//! trusted: [`Catalog::new`](crate::Catalog::new) checks every name, length
//! and rdata once at start-up and says what is wrong.

/// The first bytes of a compiled zone blob.
pub const MAGIC: &[u8; 8] = b"SKIFFDNS";
/// The format version this crate reads and writes.
pub const VERSION: u16 = 1;
/// The size of the blob header: magic, version, zone count.
pub const HEADER_LEN: usize = 12;
