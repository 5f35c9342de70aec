//! Zones in memory: the records of a compiled blob, grouped by owner name
//! (in canonical order, RFC 4034 section 6.1) and type, borrowed from the
//! blob without copying any name or rdata.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use hashbrown::HashTable;

use domain::base::ParsedName;
use domain::base::iana::{Class, Rtype};
use domain::base::name::Name;
use domain::base::name::{ToLabelIter, ToName};
use domain::base::rdata::ParseRecordData;
use domain::dep::octseq::Parser;
use domain::rdata::ZoneRecordData;

use crate::blob;

/// A compiled zone blob that cannot be served, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The blob does not start with [`blob::MAGIC`].
    #[error("not a compiled zone blob (bad magic)")]
    BadMagic,
    /// The blob was written by another version of the compiler.
    #[error("compiled zone blob version {0}, this server reads version {v}", v = blob::VERSION)]
    Version(u16),
    /// The blob ends in the middle of something.
    #[error("compiled zone blob truncated in zone {zone}")]
    Truncated {
        /// The index of the zone.
        zone: usize,
    },
    /// A record of a zone does not parse.
    #[error("zone {zone}, record {record}: malformed record")]
    BadRecord {
        /// The index of the zone.
        zone: usize,
        /// The index of the record in the zone.
        record: usize,
    },
    /// A zone does not start with its SOA record.
    #[error("zone {zone}: the first record is not an SOA")]
    NoSoa {
        /// The index of the zone.
        zone: usize,
    },
    /// A record's owner is outside its zone.
    #[error("zone {zone}, record {record}: owner outside the zone")]
    OutOfZone {
        /// The index of the zone.
        zone: usize,
        /// The index of the record in the zone.
        record: usize,
    },
    /// A record is not of class IN.
    #[error("zone {zone}, record {record}: class is not IN")]
    Class {
        /// The index of the zone.
        zone: usize,
        /// The index of the record in the zone.
        record: usize,
    },
    /// Two zones have the same apex.
    #[error("zone {zone}: a second zone with the same apex")]
    DuplicateZone {
        /// The index of the second zone.
        zone: usize,
    },
    /// Bytes follow the last zone.
    #[error("compiled zone blob has trailing bytes")]
    TrailingBytes,
}

/// One resource record: its TTL and its rdata in wire format (names
/// uncompressed).
#[derive(Debug, Clone, Copy)]
pub struct Rr<'a> {
    /// The TTL in seconds.
    pub ttl: u32,
    /// The record data.
    pub rdata: &'a [u8],
}

/// The records of one owner name and type, and the RRSIGs that cover them.
#[derive(Debug, Clone)]
pub struct Rrset<'a> {
    /// The type.
    pub rtype: Rtype,
    /// The records.
    pub rrs: Vec<Rr<'a>>,
    /// The RRSIG records whose type covered is `rtype`.
    pub sigs: Vec<Rr<'a>>,
}

/// Everything at one owner name.
#[derive(Debug, Clone, Default)]
pub struct Node<'a> {
    /// The RRsets, in the order their types first appear in the zone file.
    pub rrsets: Vec<Rrset<'a>>,
    /// Whether the name is at or below a zone cut (delegation) other than
    /// the apex: its address records are glue, not authoritative data.
    pub below_cut: bool,
}

impl<'a> Node<'a> {
    /// The RRset of type `rtype`, if the name has one.
    pub fn get(&self, rtype: Rtype) -> Option<&Rrset<'a>> {
        self.rrsets.iter().find(|s| s.rtype == rtype)
    }

    fn get_or_insert(&mut self, rtype: Rtype) -> &mut Rrset<'a> {
        let i = match self.rrsets.iter().position(|s| s.rtype == rtype) {
            Some(i) => i,
            None => {
                // Most names have one RRset: no room for four (a zone of
                // 100,000 names would pay megabytes for it).
                if self.rrsets.capacity() == 0 {
                    self.rrsets.reserve_exact(1);
                }
                self.rrsets.push(Rrset { rtype, rrs: Vec::new(), sigs: Vec::new() });
                self.rrsets.len() - 1
            }
        };
        &mut self.rrsets[i]
    }
}

/// A zone's owner names with their data: in canonical order (RFC 4034
/// section 6.1) for the searches that need the order (empty non-terminals,
/// NSEC), and by hash for exact names, the lookups every answer makes
/// (several per query: the name, its zone's apex, glue for NS and MX
/// targets). Comparing names in canonical order walks their labels from
/// the end, so a search of an ordered map costs far more than hashing the
/// name once.
#[derive(Clone, Default)]
pub struct Nodes<'a> {
    /// The names in canonical order.
    sorted: Vec<(&'a Name<[u8]>, Node<'a>)>,
    /// Positions in `sorted`, by [`name_hash`].
    index: HashTable<u32>,
}

/// The hash of a name, case-insensitive as names compare: its wire form
/// with ASCII letters folded (length octets are at most 63, below 'A', so
/// folding the whole form is safe).
fn name_hash(name: &Name<[u8]>) -> u64 {
    use core::hash::{BuildHasher, Hasher};
    let mut h = foldhash::fast::FixedState::default().build_hasher();
    let bytes = name.as_slice();
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h.write_u64(u64::from_le_bytes(w.map(|b| b.to_ascii_lowercase())));
    }
    for b in chunks.remainder() {
        h.write_u8(b.to_ascii_lowercase());
    }
    h.finish()
}

impl<'a> Nodes<'a> {
    fn from_sorted(sorted: Vec<(&'a Name<[u8]>, Node<'a>)>) -> Nodes<'a> {
        let mut index = HashTable::with_capacity(sorted.len());
        for (i, (name, _)) in sorted.iter().enumerate() {
            let at = u32::try_from(i).expect("a zone has fewer than 2^32 names");
            index.insert_unique(name_hash(name), at, |&j| name_hash(sorted[j as usize].0));
        }
        Nodes { sorted, index }
    }

    fn position(&self, name: &Name<[u8]>) -> Option<usize> {
        let wire = name.as_slice();
        self.index
            .find(name_hash(name), |&i| self.sorted[i as usize].0.as_slice().eq_ignore_ascii_case(wire))
            .map(|&i| i as usize)
    }

    /// The data at `name`.
    pub fn get(&self, name: &Name<[u8]>) -> Option<&Node<'a>> {
        self.position(name).map(|i| &self.sorted[i].1)
    }

    /// The zone's spelling of `name` and its data.
    pub fn get_key_value(&self, name: &Name<[u8]>) -> Option<(&&'a Name<[u8]>, &Node<'a>)> {
        self.position(name).map(|i| (&self.sorted[i].0, &self.sorted[i].1))
    }

    /// Whether the zone has data at `name`.
    pub fn contains_key(&self, name: &Name<[u8]>) -> bool {
        self.position(name).is_some()
    }

    /// Every name with its data, in canonical order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&&'a Name<[u8]>, &Node<'a>)> + '_ {
        self.sorted.iter().map(|(n, node)| (n, node))
    }

    /// The names, in canonical order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &&'a Name<[u8]>> + '_ {
        self.sorted.iter().map(|(n, _)| n)
    }

    /// How many names there are.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The names before `name` (and `name` itself when `inclusive`), in
    /// canonical order.
    pub fn before(
        &self,
        name: &Name<[u8]>,
        inclusive: bool,
    ) -> impl DoubleEndedIterator<Item = (&&'a Name<[u8]>, &Node<'a>)> + '_ {
        let end = self.sorted.partition_point(|(n, _)| if inclusive { **n <= *name } else { **n < *name });
        self.sorted[..end].iter().map(|(n, node)| (n, node))
    }

    /// The names after `name`, in canonical order.
    pub fn after(&self, name: &Name<[u8]>) -> impl Iterator<Item = (&&'a Name<[u8]>, &Node<'a>)> + '_ {
        let start = self.sorted.partition_point(|(n, _)| **n <= *name);
        self.sorted[start..].iter().map(|(n, node)| (n, node))
    }
}

impl<'a> From<BTreeMap<&'a Name<[u8]>, Node<'a>>> for Nodes<'a> {
    fn from(map: BTreeMap<&'a Name<[u8]>, Node<'a>>) -> Nodes<'a> {
        Nodes::from_sorted(map.into_iter().collect())
    }
}

impl core::fmt::Debug for Nodes<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_map().entries(self.sorted.iter().map(|(n, node)| (n, node))).finish()
    }
}

/// The NSEC3 parameters of a zone and its NSEC3 records by hash.
#[derive(Debug, Clone)]
pub struct Nsec3Chain<'a> {
    /// The hash iterations (NSEC3PARAM).
    pub iterations: u16,
    /// The salt (NSEC3PARAM).
    pub salt: &'a [u8],
    /// Owner names of NSEC3 records by their decoded hash, in hash order.
    pub by_hash: BTreeMap<Vec<u8>, &'a Name<[u8]>>,
    /// The NSEC3 records (with their signatures) by owner name.
    pub nodes: Nodes<'a>,
}

/// One authoritative zone.
#[derive(Debug, Clone)]
pub struct Zone<'a> {
    /// The apex (origin).
    pub apex: &'a Name<[u8]>,
    /// Every owner name with its data, in canonical order.
    pub nodes: Nodes<'a>,
    /// The NSEC3 chain, when the zone has an NSEC3PARAM at its apex.
    pub nsec3: Option<Nsec3Chain<'a>>,
}

impl<'a> Zone<'a> {
    /// The data at `name`, if the zone has any there.
    pub fn node(&self, name: &Name<[u8]>) -> Option<&Node<'a>> {
        self.nodes.get(name)
    }

    /// The apex's node (it always exists: it holds the SOA).
    pub fn apex_node(&self) -> &Node<'a> {
        self.nodes.get(self.apex).expect("a loaded zone has its SOA at the apex")
    }

    /// Whether `name` exists as an empty non-terminal: no data of its own,
    /// but names below it.
    pub fn is_empty_non_terminal(&self, name: &Name<[u8]>) -> bool {
        // In canonical order a name's descendants come right after it.
        match self.nodes.after(name).next() {
            Some((next, _)) => next.ends_with(name),
            None => false,
        }
    }

    /// The greatest owner name at or before `name` in canonical order that
    /// has an NSEC record: the NSEC that matches or covers `name`.
    pub fn nsec_for(&self, name: &Name<[u8]>) -> Option<(&'a Name<[u8]>, &Rrset<'a>)> {
        let found = self.nodes.before(name, true).rev().find_map(|(o, n)| n.get(Rtype::NSEC).map(|s| (*o, s)));
        // Before the first NSEC owner the chain wraps around to the last.
        found.or_else(|| self.nodes.iter().rev().find_map(|(o, n)| n.get(Rtype::NSEC).map(|s| (*o, s))))
    }
}

/// The zones a server answers for: compiled ones, borrowed from their
/// blob, and ones that own their records (changed by an update, or
/// received by a zone transfer).
#[derive(Debug, Default)]
pub struct Catalog<'a> {
    zones: BTreeMap<Name<Vec<u8>>, Slot<'a>>,
}

#[derive(Debug)]
enum Slot<'a> {
    Compiled(Zone<'a>),
    Owned(OwnedZone),
}

impl Slot<'_> {
    fn zone(&self) -> &Zone<'_> {
        match self {
            Slot::Compiled(z) => z,
            Slot::Owned(o) => o.borrow_dependent(),
        }
    }
}

self_cell::self_cell!(
    /// A zone that owns its records, in the blob's record format.
    pub struct OwnedZone {
        owner: Vec<u8>,
        #[covariant]
        dependent: Zone,
    }
    impl {Debug}
);

impl OwnedZone {
    /// A zone of `records`; the first must be the SOA, whose owner is the
    /// apex. Checked as a compiled zone is.
    pub fn from_records(records: &[Record]) -> Result<OwnedZone, LoadError> {
        let mut body = Vec::new();
        for r in records {
            r.encode(&mut body);
        }
        let count = records.len();
        OwnedZone::try_new(body, |b| load_zone(0, count, b))
    }

    /// The zone.
    pub fn zone(&self) -> &Zone<'_> {
        self.borrow_dependent()
    }
}

impl<'a> Catalog<'a> {
    /// Loads a compiled zone blob (see [`blob`]), checking all of it.
    pub fn new(blob: &'a [u8]) -> Result<Self, LoadError> {
        if blob.len() < blob::HEADER_LEN || &blob[..8] != blob::MAGIC {
            return Err(LoadError::BadMagic);
        }
        let version = u16::from_be_bytes([blob[8], blob[9]]);
        if version != blob::VERSION {
            return Err(LoadError::Version(version));
        }
        let count = usize::from(u16::from_be_bytes([blob[10], blob[11]]));
        let mut rest = &blob[blob::HEADER_LEN..];
        let mut zones = BTreeMap::new();
        for z in 0..count {
            if rest.len() < 8 {
                return Err(LoadError::Truncated { zone: z });
            }
            let records = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
            let body = rest.get(8..8usize.saturating_add(len)).ok_or(LoadError::Truncated { zone: z })?;
            rest = &rest[8 + len..];
            let zone = load_zone(z, records, body)?;
            if zones.insert(zone.apex.to_name::<Vec<u8>>(), Slot::Compiled(zone)).is_some() {
                return Err(LoadError::DuplicateZone { zone: z });
            }
        }
        if !rest.is_empty() {
            return Err(LoadError::TrailingBytes);
        }
        Ok(Catalog { zones })
    }

    /// The zone that `name` is in: the one whose apex is the longest suffix
    /// of `name`.
    pub fn find(&self, name: &Name<[u8]>) -> Option<&Zone<'_>> {
        if self.zones.is_empty() {
            return None;
        }
        (0..name.label_count())
            .filter_map(|k| crate::server::skip_labels(name, k))
            .find_map(|suffix| self.zones.get(suffix.for_slice()))
            .map(Slot::zone)
    }

    /// The zone whose apex is `apex`.
    pub fn zone(&self, apex: &Name<[u8]>) -> Option<&Zone<'_>> {
        self.zones.get(apex).map(Slot::zone)
    }

    /// The zones, by apex in canonical order.
    pub fn zones(&self) -> impl Iterator<Item = &Zone<'_>> {
        self.zones.values().map(Slot::zone)
    }

    /// Takes the zone at `apex` out; whether there was one.
    pub fn remove(&mut self, apex: &Name<[u8]>) -> bool {
        self.zones.remove(apex).is_some()
    }

    /// Puts `zone` in place of the zone with the same apex (or adds it).
    pub fn replace(&mut self, zone: OwnedZone) {
        let apex = zone.zone().apex.to_name::<Vec<u8>>();
        self.zones.insert(apex, Slot::Owned(zone));
    }
}

/// One record of a zone, owned: what updates change, transfers carry and
/// the journal keeps. Class IN; names in `rdata` uncompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The owner name.
    pub owner: Name<Vec<u8>>,
    /// The type.
    pub rtype: Rtype,
    /// The TTL in seconds.
    pub ttl: u32,
    /// The record data in wire format.
    pub rdata: Vec<u8>,
}

impl Record {
    /// Appends the record in the blob's format (DNS wire format, class IN).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.owner.as_slice());
        out.extend_from_slice(&self.rtype.to_int().to_be_bytes());
        out.extend_from_slice(&Class::IN.to_int().to_be_bytes());
        out.extend_from_slice(&self.ttl.to_be_bytes());
        out.extend_from_slice(&(self.rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.rdata);
    }

    /// Reads records written by [`Record::encode`] (a zone journal).
    pub fn decode_all(mut bytes: &[u8]) -> Option<Vec<Record>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let mut pos = 0;
            let raw = parse_record(bytes, &mut pos)?;
            if raw.class != Class::IN {
                return None;
            }
            out.push(Record {
                owner: raw.owner.to_name::<Vec<u8>>(),
                rtype: raw.rtype,
                ttl: raw.ttl,
                rdata: raw.rdata.to_vec(),
            });
            bytes = &bytes[pos..];
        }
        Some(out)
    }
}

/// The serial of an SOA's rdata (the fifth field from the end).
pub fn soa_serial(rdata: &[u8]) -> Option<u32> {
    let at = rdata.len().checked_sub(20)?;
    Some(u32::from_be_bytes(rdata[at..at + 4].try_into().ok()?))
}

impl Zone<'_> {
    /// The SOA record's rdata.
    pub fn soa(&self) -> &[u8] {
        self.apex_node().get(Rtype::SOA).and_then(|s| s.rrs.first()).map_or(&[], |rr| rr.rdata)
    }

    /// The SOA serial.
    pub fn serial(&self) -> u32 {
        soa_serial(self.soa()).unwrap_or(0)
    }

    /// Every record of the zone, the SOA first (as a zone transfer sends
    /// them), signatures and NSEC3 records included.
    pub fn records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        let own = |owner: &Name<[u8]>, rtype: Rtype, rr: &Rr<'_>| Record {
            owner: owner.to_name::<Vec<u8>>(),
            rtype,
            ttl: rr.ttl,
            rdata: rr.rdata.to_vec(),
        };
        if let Some(soa) = self.apex_node().get(Rtype::SOA) {
            out.extend(soa.rrs.iter().map(|rr| own(self.apex, Rtype::SOA, rr)));
        }
        let nsec3 = self.nsec3.iter().flat_map(|c| c.nodes.iter());
        for (owner, node) in self.nodes.iter().chain(nsec3) {
            for set in &node.rrsets {
                if !(set.rtype == Rtype::SOA && *owner == self.apex) {
                    out.extend(set.rrs.iter().map(|rr| own(owner, set.rtype, rr)));
                }
                out.extend(set.sigs.iter().map(|rr| own(owner, Rtype::RRSIG, rr)));
            }
        }
        out
    }
}

/// One record as it lies in the blob.
struct RawRecord<'a> {
    owner: &'a Name<[u8]>,
    rtype: Rtype,
    class: Class,
    ttl: u32,
    rdata: &'a [u8],
}

fn parse_record<'a>(body: &'a [u8], pos: &mut usize) -> Option<RawRecord<'a>> {
    let start = *pos;
    let mut at = start;
    // An uncompressed name: labels up to the root label.
    loop {
        let len = usize::from(*body.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        at += len;
    }
    let owner = Name::from_slice(body.get(start..at)?).ok()?;
    let fixed = body.get(at..at + 10)?;
    let rtype = Rtype::from_int(u16::from_be_bytes([fixed[0], fixed[1]]));
    let class = Class::from_int(u16::from_be_bytes([fixed[2], fixed[3]]));
    let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
    let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    let rdata = body.get(at + 10..at + 10 + rdlen)?;
    *pos = at + 10 + rdlen;
    Some(RawRecord { owner, rtype, class, ttl, rdata })
}

/// Whether `rdata` parses as a record of `rtype` with uncompressed names
/// and nothing left over.
fn rdata_ok(rtype: Rtype, rdata: &[u8]) -> bool {
    let mut p = Parser::from_ref(rdata);
    match ZoneRecordData::parse_rdata(rtype, &mut p) {
        Ok(Some(data)) => p.remaining() == 0 && !has_compressed_name(&data),
        _ => false,
    }
}

fn has_compressed_name(data: &ZoneRecordData<&[u8], ParsedName<&[u8]>>) -> bool {
    use ZoneRecordData as Z;
    let names: [Option<&ParsedName<&[u8]>>; 2] = match data {
        Z::Ns(d) => [Some(d.nsdname()), None],
        Z::Cname(d) => [Some(d.cname()), None],
        Z::Ptr(d) => [Some(d.ptrdname()), None],
        Z::Mx(d) => [Some(d.exchange()), None],
        Z::Soa(d) => [Some(d.mname()), Some(d.rname())],
        Z::Srv(d) => [Some(d.target()), None],
        Z::Dname(d) => [Some(d.dname()), None],
        _ => [None, None],
    };
    names.into_iter().flatten().any(|n| n.is_compressed())
}

/// A record while a zone loads: owner, type, the type an RRSIG covers,
/// TTL and rdata.
type Loaded<'a> = (&'a Name<[u8]>, Rtype, Option<Rtype>, Rr<'a>);

fn load_zone<'a>(z: usize, count: usize, body: &'a [u8]) -> Result<Zone<'a>, LoadError> {
    let mut pos = 0;
    // The records first, then sorted by owner and grouped: one vector at a
    // time, each freed whole, where an ordered map would leave the heap
    // full of holes of a node's size (a zone of 100,000 names would need
    // megabytes more to start).
    // A record takes at least 11 bytes (root name, type, class, TTL,
    // length): a corrupt count cannot ask for more room than the body
    // could fill.
    let room = count.min(body.len() / 11);
    let mut records: Vec<Loaded<'a>> = Vec::with_capacity(room);
    let mut apex: Option<&'a Name<[u8]>> = None;
    for r in 0..count {
        let rec = parse_record(body, &mut pos).ok_or(LoadError::BadRecord { zone: z, record: r })?;
        if rec.class != Class::IN {
            return Err(LoadError::Class { zone: z, record: r });
        }
        if !rdata_ok(rec.rtype, rec.rdata) {
            return Err(LoadError::BadRecord { zone: z, record: r });
        }
        let origin = match apex {
            Some(a) => a,
            None if rec.rtype == Rtype::SOA => {
                apex = Some(rec.owner);
                rec.owner
            }
            None => return Err(LoadError::NoSoa { zone: z }),
        };
        if !rec.owner.ends_with(origin) {
            return Err(LoadError::OutOfZone { zone: z, record: r });
        }
        let rr = Rr { ttl: rec.ttl, rdata: rec.rdata };
        let covered = if rec.rtype == Rtype::RRSIG {
            if rec.rdata.len() < 2 {
                return Err(LoadError::BadRecord { zone: z, record: r });
            }
            Some(Rtype::from_int(u16::from_be_bytes([rec.rdata[0], rec.rdata[1]])))
        } else {
            None
        };
        records.push((rec.owner, rec.rtype, covered, rr));
    }
    if pos != body.len() {
        return Err(LoadError::BadRecord { zone: z, record: count });
    }
    let apex = apex.ok_or(LoadError::NoSoa { zone: z })?;
    // Stable: records of one owner keep the file's order (the first
    // spelling of a name is the zone's, RRsets in the order their types
    // first appear).
    records.sort_by(|a, b| a.0.cmp(b.0));
    let owners = records.iter().zip(records.iter().skip(1)).filter(|(a, b)| a.0 != b.0).count() + 1;
    let mut nodes: Vec<(&'a Name<[u8]>, Node<'a>)> = Vec::with_capacity(owners);
    // RRSIGs join the RRset they cover, after the records; one whose RRset
    // is missing is kept under its own owner so that an explicit RRSIG
    // query still finds it.
    for pass_sigs in [false, true] {
        let mut at = 0;
        for (owner, rtype, covered, rr) in &records {
            while nodes.get(at).is_some_and(|(n, _)| *n != *owner) {
                at += 1;
            }
            if at == nodes.len() {
                nodes.push((owner, Node::default()));
            }
            let node = &mut nodes[at].1;
            match (pass_sigs, covered) {
                (false, None) => push_one(&mut node.get_or_insert(*rtype).rrs, *rr),
                (true, Some(c)) => push_one(&mut node.get_or_insert(*c).sigs, *rr),
                _ => {}
            }
        }
    }
    drop(records);
    nodes.iter_mut().for_each(|(_, n)| n.rrsets.retain(|s| !s.rrs.is_empty() || !s.sigs.is_empty()));
    // Mark the names at and below delegations.
    let cuts: Vec<&'a Name<[u8]>> =
        nodes.iter().filter(|(n, node)| *n != apex && node.get(Rtype::NS).is_some()).map(|(n, _)| *n).collect();
    if !cuts.is_empty() {
        for (name, node) in nodes.iter_mut() {
            node.below_cut = cuts.iter().any(|c| name.ends_with(*c));
        }
    }
    // NSEC3 owner names are not names of the zone (RFC 5155 section
    // 7.2.8): they live apart, reached only through the hash chain.
    let hashed = |n: &Node<'_>| !n.rrsets.is_empty() && n.rrsets.iter().all(|s| s.rtype == Rtype::NSEC3);
    let (nsec3_nodes, nodes): (Vec<_>, Vec<_>) = nodes.into_iter().partition(|(_, n)| hashed(n));
    let nodes = Nodes::from_sorted(nodes);
    let nsec3 = nsec3_chain(apex, &nodes, Nodes::from_sorted(nsec3_nodes));
    Ok(Zone { apex, nodes, nsec3 })
}

/// Appends `rr`, growing from one record (most RRsets hold one), not four.
fn push_one<'a>(rrs: &mut Vec<Rr<'a>>, rr: Rr<'a>) {
    if rrs.capacity() == 0 {
        rrs.reserve_exact(1);
    }
    rrs.push(rr);
}

fn nsec3_chain<'a>(apex: &'a Name<[u8]>, nodes: &Nodes<'a>, nsec3_nodes: Nodes<'a>) -> Option<Nsec3Chain<'a>> {
    let param = nodes.get(apex)?.get(Rtype::NSEC3PARAM)?.rrs.first()?;
    // Algorithm (1), flags (1), iterations (2), salt length (1), salt.
    let d = param.rdata;
    if d.len() < 5 || d.len() < 5 + usize::from(d[4]) {
        return None;
    }
    let iterations = u16::from_be_bytes([d[2], d[3]]);
    let salt = &d[5..5 + usize::from(d[4])];
    let mut by_hash = BTreeMap::new();
    for (name, node) in nsec3_nodes.iter() {
        if node.get(Rtype::NSEC3).is_none() {
            continue;
        }
        let Some(label) = name.iter_labels().next() else { continue };
        if let Some(hash) = crate::nsec3::base32hex_decode(label.as_slice()) {
            by_hash.insert(hash, *name);
        }
    }
    Some(Nsec3Chain { iterations, salt, by_hash, nodes: nsec3_nodes })
}

/// The owner name `*.<name>`.
pub fn wildcard_of(name: &Name<[u8]>) -> Option<Name<Vec<u8>>> {
    let mut v = Vec::with_capacity(name.len() + 2);
    v.extend_from_slice(b"\x01*");
    v.extend_from_slice(name.as_slice());
    Name::from_octets(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use core::ops::Bound;

    fn name(text: &str) -> Name<Vec<u8>> {
        Name::from_chars(text.chars()).unwrap()
    }

    /// Names of a zone: mixed case, bytes above ASCII, an escaped dot, a
    /// wildcard, deep and shallow.
    fn names() -> Vec<Name<Vec<u8>>> {
        let mut v: Vec<_> =
            ["example.", "WWW.example.", "a.b.c.example.", "*.wild.example.", "x\\.y.example.", "\\200.example."]
                .iter()
                .map(|t| name(t))
                .collect();
        v.extend((0..300).map(|i| name(&format!("h{i}.Sub{}.example.", i % 7))));
        v
    }

    #[test]
    fn exact_lookups_ignore_case_and_give_the_zone_spelling() {
        let owned = names();
        let map: BTreeMap<&Name<[u8]>, Node<'_>> = owned.iter().map(|n| (n.for_slice(), Node::default())).collect();
        let nodes = Nodes::from(map);
        assert_eq!(nodes.len(), owned.len());
        for n in &owned {
            let upper = Name::from_octets(n.as_slice().to_ascii_uppercase()).unwrap();
            let (spelled, _) = nodes.get_key_value(upper.for_slice()).expect("found in another case");
            assert_eq!(spelled.as_slice(), n.as_slice(), "the zone's spelling comes back");
            assert!(nodes.contains_key(n.for_slice()));
        }
        // Different names, equal only if case folding went past letters
        // ('[' is not '{') or ignored the label boundaries.
        for missing in ["[.example.", "www.example.com.", "www.", "wwwexample.", "h300.sub0.example.", "x.y.example."] {
            assert!(nodes.get(name(missing).for_slice()).is_none(), "{missing} is not in the zone");
        }
        assert!(nodes.get(name("{.example.").for_slice()).is_none());
    }

    #[test]
    fn ordered_searches_match_canonical_order() {
        let owned = names();
        let map: BTreeMap<&Name<[u8]>, Node<'_>> = owned.iter().map(|n| (n.for_slice(), Node::default())).collect();
        let nodes = Nodes::from(map.clone());
        assert!(nodes.keys().map(|n| n.as_slice()).eq(map.keys().map(|n| n.as_slice())));
        let probes =
            owned.iter().cloned().chain(["a.example.", "zzz.example.", "c.example.", "B.C.example.", "com."].map(name));
        for p in probes {
            let p = p.for_slice();
            let after = map.range::<Name<[u8]>, _>((Bound::Excluded(p), Bound::Unbounded)).map(|(n, _)| n.as_slice());
            assert!(nodes.after(p).map(|(n, _)| n.as_slice()).eq(after), "after {p}");
            let upto = map.range::<Name<[u8]>, _>((Bound::Unbounded, Bound::Included(p))).map(|(n, _)| n.as_slice());
            assert!(nodes.before(p, true).map(|(n, _)| n.as_slice()).eq(upto), "up to {p}");
            let before = map.range::<Name<[u8]>, _>((Bound::Unbounded, Bound::Excluded(p))).map(|(n, _)| n.as_slice());
            assert!(nodes.before(p, false).map(|(n, _)| n.as_slice()).eq(before), "before {p}");
        }
    }
}
