//! The blob layout, shared by the reader and the builder.
//!
//! Integers are little-endian and read byte by byte, so a blob needs no
//! alignment. Offsets are from the start of the blob; a blob is at most
//! `u32::MAX` bytes.
//!
//! ```text
//! header, HEADER_LEN bytes
//!    0  magic         8 bytes   MAGIC
//!    8  version       u32       VERSION
//!   12  entry count   u32       N
//!   16  blob length   u32       the whole blob, header included
//! entry table, N records of ENTRY_LEN bytes, in strictly ascending byte
//! order of their paths; each field but the last is a (u32 offset, u32
//! length) pair naming a range of the data area
//!    0  path          UTF-8, starts with '/'
//!    8  body
//!   16  gzip          the body gzipped; (0, 0) when there is none
//!   24  content type  printable ASCII
//!   32  etag          printable ASCII in double quotes
//!   40  gzip etag     as etag; (0, 0) exactly when gzip is (0, 0)
//!   48  modified      u64, seconds since the UNIX epoch
//! data area, from the end of the table to the end of the blob: the bytes
//! the ranges name (ranges may share bytes, e.g. one content type string)
//! ```

/// The first eight bytes of every blob.
pub const MAGIC: [u8; 8] = *b"SKIFF-KV";

/// The layout version this crate writes and reads.
pub const VERSION: u32 = 1;

/// Bytes in the header.
pub const HEADER_LEN: usize = 20;

/// Bytes in one entry record.
pub const ENTRY_LEN: usize = 56;

/// Offset of the entry count in the header.
pub(crate) const COUNT_AT: usize = 12;

/// Offset of the version in the header.
pub(crate) const VERSION_AT: usize = 8;

/// Offset of the blob length in the header.
pub(crate) const LENGTH_AT: usize = 16;

/// Offset of the path range within an entry record.
pub(crate) const PATH_AT: usize = 0;
/// Offset of the body range within an entry record.
pub(crate) const BODY_AT: usize = 8;
/// Offset of the gzip range within an entry record.
pub(crate) const GZIP_AT: usize = 16;
/// Offset of the content type range within an entry record.
pub(crate) const CONTENT_TYPE_AT: usize = 24;
/// Offset of the ETag range within an entry record.
pub(crate) const ETAG_AT: usize = 32;
/// Offset of the gzip ETag range within an entry record.
pub(crate) const GZIP_ETAG_AT: usize = 40;
/// Offset of the modification time within an entry record.
pub(crate) const MODIFIED_AT: usize = 48;
