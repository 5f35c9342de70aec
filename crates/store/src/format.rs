//! The on-disk format: superblocks, pages and how nodes are laid out in
//! them. `docs/storage.md` describes the same thing in prose; the constants
//! here are the truth.
//!
//! Every integer is little-endian. Every page is [`PAGE_SIZE`] bytes and
//! starts with a [`PageHeader`]. A page's checksum (XXH3-64 of all its
//! bytes) is stored in the pointer to it, in its parent (or the
//! superblock), so a tree verifies from the superblock down and a lost or
//! torn write is caught where it is read, like a Merkle tree.

use alloc::vec;
use alloc::vec::Vec;

/// Bytes per page: the unit of allocation, caching and checksumming.
pub const PAGE_SIZE: usize = 4096;
/// Identifies a superblock.
pub const MAGIC: [u8; 8] = *b"SKIFFKV\0";
/// The format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The smallest store, in pages (two superblocks and room to work).
pub const MIN_PAGES: u64 = 64;
/// Pages 0 and 1 are the superblocks; the tree uses the rest.
pub const FIRST_DATA_PAGE: u64 = 2;
/// The longest key, in bytes.
pub const MAX_KEY: usize = 1024;
/// Values longer than this live in value pages outside the leaf.
pub const MAX_INLINE_VALUE: usize = 512;
/// The longest value, in bytes.
pub const MAX_VALUE: usize = 16 << 20;
/// Bytes of a page header.
pub const HEADER: usize = 24;
/// Bytes of a pointer to a page.
pub const PTR: usize = 24;
/// Room for node contents in a page.
pub const CAPACITY: usize = PAGE_SIZE - HEADER;
/// Value bytes per value data page.
pub const DATA_PER_PAGE: usize = PAGE_SIZE - HEADER;
/// Data page pointers per value index page (after its `next` pointer).
pub const PTRS_PER_INDEX: usize = (PAGE_SIZE - HEADER - PTR) / PTR;

/// What a page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Sorted keys with their values (or pointers to value pages).
    Leaf = 1,
    /// Sorted separator keys between child pointers.
    Branch = 2,
    /// Pointers to the data pages of one long value, and to the next index.
    ValueIndex = 3,
    /// A piece of one long value.
    ValueData = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Leaf,
            2 => Kind::Branch,
            3 => Kind::ValueIndex,
            4 => Kind::ValueData,
            _ => return None,
        })
    }
}

/// The checksum of a page or superblock.
pub fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// A pointer to a page: where it is, the commit generation that wrote it,
/// and the checksum its bytes must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ptr {
    pub page: u64,
    pub generation: u64,
    pub sum: u64,
}

impl Ptr {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.page.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.sum.to_le_bytes());
    }

    fn get(r: &mut Reader<'_>) -> Result<Ptr, FormatError> {
        Ok(Ptr { page: r.u64()?, generation: r.u64()?, sum: r.u64()? })
    }
}

/// Why a page's bytes are not a valid page (after its checksum matched:
/// a bug or a forged page, never a crash).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("page ends early")]
    Truncated,
    #[error("unknown page kind {0}")]
    Kind(u8),
    #[error("a page of kind {found:?} where a {expected:?} page belongs")]
    WrongKind { expected: &'static str, found: Kind },
    #[error("a key of {0} bytes (longest allowed: {MAX_KEY})")]
    KeyTooLong(usize),
    #[error("an entry's value kind {0} is unknown")]
    ValueKind(u8),
    #[error("a branch with no child")]
    EmptyBranch,
    #[error("a data page claims {0} bytes")]
    DataLength(usize),
    #[error("a value of {0} bytes (longest allowed: {MAX_VALUE})")]
    ValueLength(u64),
}

/// The header every page starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub kind: Kind,
    /// Entries (leaf), children (branch), pointers (index) or bytes (data).
    pub count: u16,
    /// The page's own number: a write that landed elsewhere is caught.
    pub page: u64,
    /// The commit generation that wrote the page.
    pub generation: u64,
}

impl PageHeader {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.push(0);
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.page.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
    }

    /// Reads a header from the start of a page.
    pub fn parse(bytes: &[u8]) -> Result<PageHeader, FormatError> {
        let mut r = Reader { bytes, at: 0 };
        let kind = r.u8()?;
        let kind = Kind::from_u8(kind).ok_or(FormatError::Kind(kind))?;
        r.u8()?;
        let count = r.u16()?;
        r.take(4)?;
        Ok(PageHeader { kind, count, page: r.u64()?, generation: r.u64()? })
    }
}

/// Where a value is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// In the leaf.
    Inline(Vec<u8>),
    /// In value pages: `len` bytes, starting at the index page `first`.
    Pages { len: u64, first: Ptr },
}

impl Value {
    /// Bytes the value takes in a leaf entry.
    pub fn encoded_len(&self) -> usize {
        match self {
            Value::Inline(v) => v.len(),
            Value::Pages { .. } => PTR,
        }
    }

    /// The value's length.
    pub fn len(&self) -> u64 {
        match self {
            Value::Inline(v) => v.len() as u64,
            Value::Pages { len, .. } => *len,
        }
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tree node, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// Entries in strictly increasing key order.
    Leaf(Vec<(Vec<u8>, Value)>),
    /// `children.len() == keys.len() + 1`; child `i` holds the keys `k`
    /// with `keys[i-1] <= k < keys[i]`.
    Branch { keys: Vec<Vec<u8>>, children: Vec<Ptr> },
}

/// Bytes of one leaf entry.
pub fn leaf_entry_len(key: &[u8], value: &Value) -> usize {
    7 + key.len() + value.encoded_len()
}

/// Bytes of one branch separator with the child after it.
pub fn branch_entry_len(key: &[u8]) -> usize {
    2 + key.len() + PTR
}

impl Node {
    /// Bytes of the node's contents (without the header).
    pub fn encoded_len(&self) -> usize {
        match self {
            Node::Leaf(entries) => entries.iter().map(|(k, v)| leaf_entry_len(k, v)).sum(),
            Node::Branch { keys, .. } => PTR + keys.iter().map(|k| branch_entry_len(k)).sum::<usize>(),
        }
    }

    /// Entries or children.
    pub fn count(&self) -> usize {
        match self {
            Node::Leaf(entries) => entries.len(),
            Node::Branch { children, .. } => children.len(),
        }
    }

    /// The node as a page (its encoded length must fit [`CAPACITY`]).
    pub fn encode(&self, page: u64, generation: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(PAGE_SIZE);
        match self {
            Node::Leaf(entries) => {
                PageHeader { kind: Kind::Leaf, count: entries.len() as u16, page, generation }.put(&mut out);
                for (k, v) in entries {
                    out.extend_from_slice(&(k.len() as u16).to_le_bytes());
                    match v {
                        Value::Inline(bytes) => {
                            out.push(0);
                            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                            out.extend_from_slice(k);
                            out.extend_from_slice(bytes);
                        }
                        Value::Pages { len, first } => {
                            out.push(1);
                            out.extend_from_slice(&(*len as u32).to_le_bytes());
                            out.extend_from_slice(k);
                            first.put(&mut out);
                        }
                    }
                }
            }
            Node::Branch { keys, children } => {
                PageHeader { kind: Kind::Branch, count: children.len() as u16, page, generation }.put(&mut out);
                children[0].put(&mut out);
                for (k, c) in keys.iter().zip(&children[1..]) {
                    out.extend_from_slice(&(k.len() as u16).to_le_bytes());
                    out.extend_from_slice(k);
                    c.put(&mut out);
                }
            }
        }
        debug_assert!(out.len() <= PAGE_SIZE, "node of {} bytes", out.len());
        out.resize(PAGE_SIZE, 0);
        out
    }

    /// Decodes a leaf or branch page.
    pub fn decode(bytes: &[u8]) -> Result<(PageHeader, Node), FormatError> {
        let header = PageHeader::parse(bytes)?;
        let mut r = Reader { bytes, at: HEADER };
        let node = match header.kind {
            Kind::Leaf => {
                let mut entries = Vec::with_capacity(header.count as usize);
                for _ in 0..header.count {
                    let klen = r.u16()? as usize;
                    let vkind = r.u8()?;
                    let vlen = r.u32()?;
                    if klen > MAX_KEY {
                        return Err(FormatError::KeyTooLong(klen));
                    }
                    let key = r.take(klen)?.to_vec();
                    let value = match vkind {
                        0 => Value::Inline(r.take(vlen as usize)?.to_vec()),
                        1 => Value::Pages { len: u64::from(vlen), first: Ptr::get(&mut r)? },
                        k => return Err(FormatError::ValueKind(k)),
                    };
                    entries.push((key, value));
                }
                Node::Leaf(entries)
            }
            Kind::Branch => {
                if header.count == 0 {
                    return Err(FormatError::EmptyBranch);
                }
                let mut children = Vec::with_capacity(header.count as usize);
                let mut keys = Vec::with_capacity(header.count as usize - 1);
                children.push(Ptr::get(&mut r)?);
                for _ in 1..header.count {
                    let klen = r.u16()? as usize;
                    if klen > MAX_KEY {
                        return Err(FormatError::KeyTooLong(klen));
                    }
                    keys.push(r.take(klen)?.to_vec());
                    children.push(Ptr::get(&mut r)?);
                }
                Node::Branch { keys, children }
            }
            found => return Err(FormatError::WrongKind { expected: "leaf or branch", found }),
        };
        Ok((header, node))
    }
}

/// A value index page: the next index page (page 0: none) and data pages.
pub fn encode_index(page: u64, generation: u64, next: Option<Ptr>, data: &[Ptr]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PAGE_SIZE);
    PageHeader { kind: Kind::ValueIndex, count: data.len() as u16, page, generation }.put(&mut out);
    next.unwrap_or_default().put(&mut out);
    for p in data {
        p.put(&mut out);
    }
    out.resize(PAGE_SIZE, 0);
    out
}

/// Decodes a value index page: its next index page and its data pages.
pub fn decode_index(bytes: &[u8]) -> Result<(PageHeader, Option<Ptr>, Vec<Ptr>), FormatError> {
    let header = PageHeader::parse(bytes)?;
    if header.kind != Kind::ValueIndex {
        return Err(FormatError::WrongKind { expected: "value index", found: header.kind });
    }
    let mut r = Reader { bytes, at: HEADER };
    let next = Ptr::get(&mut r)?;
    let data = (0..header.count).map(|_| Ptr::get(&mut r)).collect::<Result<Vec<_>, _>>()?;
    Ok((header, (next.page != 0).then_some(next), data))
}

/// A value data page holding `data` (at most [`DATA_PER_PAGE`] bytes).
pub fn encode_data(page: u64, generation: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PAGE_SIZE);
    PageHeader { kind: Kind::ValueData, count: data.len() as u16, page, generation }.put(&mut out);
    out.extend_from_slice(data);
    out.resize(PAGE_SIZE, 0);
    out
}

/// The bytes of a value data page.
pub fn decode_data(bytes: &[u8]) -> Result<(PageHeader, &[u8]), FormatError> {
    let header = PageHeader::parse(bytes)?;
    if header.kind != Kind::ValueData {
        return Err(FormatError::WrongKind { expected: "value data", found: header.kind });
    }
    let n = header.count as usize;
    if n > DATA_PER_PAGE {
        return Err(FormatError::DataLength(n));
    }
    Ok((header, &bytes[HEADER..HEADER + n]))
}

/// One of the two superblocks (pages 0 and 1): the root of one commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    pub version: u32,
    pub sector_size: u32,
    /// Pages in the store, the superblocks included.
    pub pages: u64,
    /// The commit generation; the valid superblock with the higher one wins.
    pub generation: u64,
    /// The tree's root (`None`: the store is empty).
    pub root: Option<Ptr>,
    /// Keys in the tree.
    pub keys: u64,
    /// Pages the tree and its values use.
    pub used: u64,
    /// [`SUPER_CONFIRMED`] and future flags.
    pub flags: u32,
}

/// Superblock flag: the commit's pages were durable (a flush had returned
/// after they were written) before this superblock was written, so its
/// tree is whole whenever the superblock is, and a bad page below it is
/// damage, never a crash. Set by a two-phase commit, by the confirmation
/// of a one-flush commit (the same superblock written again, into the
/// other slot, once the commit is durable) and by `create`.
pub const SUPER_CONFIRMED: u32 = 1;

/// Bytes of a superblock before its checksum.
const SUPER_LEN: usize = 8 + 4 * 4 + 8 * 2 + PTR + 8 * 2;
/// Where the superblock's second copy starts in its page.
pub const SUPER_COPY: usize = 512;

/// Why the bytes at a superblock's place are not a superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SuperError {
    #[error("no Skiff store magic")]
    Magic,
    #[error("its checksum does not match (torn or damaged)")]
    Checksum,
    #[error("format version {0}, this code reads {FORMAT_VERSION}")]
    Version(u32),
    #[error("page size {0}, this code uses {PAGE_SIZE}")]
    PageSize(u32),
}

impl Superblock {
    /// The superblock as a page.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PAGE_SIZE);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        out.extend_from_slice(&self.sector_size.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.pages.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        self.root.unwrap_or_default().put(&mut out);
        out.extend_from_slice(&self.keys.to_le_bytes());
        out.extend_from_slice(&self.used.to_le_bytes());
        debug_assert_eq!(out.len(), SUPER_LEN);
        let sum = checksum(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        // A second copy one 512-byte sector on: a bit flipped in one copy
        // does not take the commit away.
        out.resize(SUPER_COPY, 0);
        out.extend_from_within(..SUPER_LEN + 8);
        out.resize(PAGE_SIZE, 0);
        out
    }

    /// Whether the superblock is [`SUPER_CONFIRMED`].
    pub fn confirmed(&self) -> bool {
        self.flags & SUPER_CONFIRMED != 0
    }

    /// Which of two valid superblocks wins: the higher generation, then a
    /// confirmed one.
    pub fn rank(&self) -> (u64, bool) {
        (self.generation, self.confirmed())
    }

    /// Reads a superblock page: the valid copy that ranks higher
    /// ([`rank`](Self::rank)).
    pub fn decode(bytes: &[u8]) -> Result<Superblock, SuperError> {
        let first = Superblock::decode_copy(bytes);
        let second = Superblock::decode_copy(bytes.get(SUPER_COPY..).unwrap_or_default());
        match (first, second) {
            (Ok(a), Ok(b)) => Ok(if b.rank() > a.rank() { b } else { a }),
            (Ok(a), Err(_)) => Ok(a),
            (Err(_), Ok(b)) => Ok(b),
            (Err(e), Err(_)) => Err(e),
        }
    }

    fn decode_copy(bytes: &[u8]) -> Result<Superblock, SuperError> {
        if bytes.len() < SUPER_LEN + 8 || bytes[..8] != MAGIC {
            return Err(SuperError::Magic);
        }
        let stored = u64::from_le_bytes(bytes[SUPER_LEN..SUPER_LEN + 8].try_into().expect("8 bytes"));
        if checksum(&bytes[..SUPER_LEN]) != stored {
            return Err(SuperError::Checksum);
        }
        let mut r = Reader { bytes: &bytes[..SUPER_LEN], at: 8 };
        let err = |_| SuperError::Checksum;
        let version = r.u32().map_err(err)?;
        if version != FORMAT_VERSION {
            return Err(SuperError::Version(version));
        }
        let page_size = r.u32().map_err(err)?;
        if page_size as usize != PAGE_SIZE {
            return Err(SuperError::PageSize(page_size));
        }
        let sector_size = r.u32().map_err(err)?;
        let flags = r.u32().map_err(err)?;
        let pages = r.u64().map_err(err)?;
        let generation = r.u64().map_err(err)?;
        let root = Ptr::get(&mut r).map_err(err)?;
        let keys = r.u64().map_err(err)?;
        let used = r.u64().map_err(err)?;
        Ok(Superblock {
            version,
            sector_size,
            pages,
            generation,
            root: (root.page != 0).then_some(root),
            keys,
            used,
            flags,
        })
    }
}

/// A zeroed page.
pub fn zero_page() -> Vec<u8> {
    vec![0; PAGE_SIZE]
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or(FormatError::Truncated)?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_round_trip() {
        let leaf = Node::Leaf(vec![
            (b"a".to_vec(), Value::Inline(b"1".to_vec())),
            (b"b".to_vec(), Value::Pages { len: 5000, first: Ptr { page: 9, generation: 3, sum: 7 } }),
        ]);
        let bytes = leaf.encode(5, 2);
        let (h, back) = Node::decode(&bytes).unwrap();
        assert_eq!((h.page, h.generation, h.kind), (5, 2, Kind::Leaf));
        assert_eq!(back, leaf);
        let branch = Node::Branch {
            keys: vec![b"m".to_vec()],
            children: vec![Ptr::default(), Ptr { page: 3, generation: 1, sum: 2 }],
        };
        assert_eq!(Node::decode(&branch.encode(6, 1)).unwrap().1, branch);
    }

    #[test]
    fn a_damaged_superblock_is_refused() {
        let sb = Superblock {
            version: FORMAT_VERSION,
            sector_size: 512,
            pages: 64,
            generation: 7,
            root: None,
            keys: 0,
            used: 0,
            flags: SUPER_CONFIRMED,
        };
        let mut bytes = sb.encode();
        assert_eq!(Superblock::decode(&bytes), Ok(sb));
        bytes[40] ^= 1;
        assert_eq!(Superblock::decode(&bytes), Ok(sb), "the second copy stands in");
        bytes[SUPER_COPY + 40] ^= 1;
        assert_eq!(Superblock::decode(&bytes), Err(SuperError::Checksum));
        assert_eq!(Superblock::decode(&zero_page()), Err(SuperError::Magic));
    }
}
