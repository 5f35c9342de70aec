//! The zone compiler (cargo feature `build`): reads RFC 1035 master files
//! with domain's zone file scanner and writes the compiled blob
//! ([`blob`](crate::blob)) that [`Catalog`](crate::Catalog) loads. It runs
//! on the host, in a service's build script or a tool, and uses `std`.
//!
//! Master files may use `$ORIGIN`, `$TTL`, relative names, `@`, blank
//! owners (the previous one), parentheses, comments, quoted strings and
//! escapes (`\.`, `\DDD`). `$INCLUDE` is refused: a zone is one file.
//! Every error names the file and the line.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::string::{String, ToString};
use std::vec::Vec;

use domain::base::iana::{Class, Rtype};
use domain::base::name::{Name, ToName};
use domain::base::record::Record;
use domain::zonefile::inplace::{Entry, Zonefile};

use crate::blob;

/// A zone that cannot be compiled, and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompileError {
    /// The zone file could not be read, or the blob written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The origin given for a zone is not a domain name.
    #[error("{path}: the origin {origin:?} is not a domain name")]
    BadOrigin {
        /// The zone file.
        path: PathBuf,
        /// The origin as given.
        origin: String,
    },
    /// The zone file does not parse.
    #[error("{path}:{line}: {message}")]
    Syntax {
        /// The zone file.
        path: PathBuf,
        /// The line where the entry that does not parse starts.
        line: usize,
        /// What is wrong, from the scanner.
        message: String,
    },
    /// `$INCLUDE` is not supported.
    #[error("{path}:{line}: $INCLUDE is not supported: put the zone in one file")]
    Include {
        /// The zone file.
        path: PathBuf,
        /// The line of the directive.
        line: usize,
    },
    /// A record's owner is outside the zone.
    #[error("{path}:{line}: {owner} is outside the zone {origin}")]
    OutOfZone {
        /// The zone file.
        path: PathBuf,
        /// The line of the record.
        line: usize,
        /// The record's owner.
        owner: String,
        /// The zone's origin.
        origin: String,
    },
    /// A record is not of class IN.
    #[error("{path}:{line}: class {class} is not served (only IN)")]
    Class {
        /// The zone file.
        path: PathBuf,
        /// The line of the record.
        line: usize,
        /// The class.
        class: String,
    },
    /// An SOA record somewhere other than the apex, or a second one.
    #[error("{path}:{line}: {what}")]
    Soa {
        /// The zone file.
        path: PathBuf,
        /// The line of the record.
        line: usize,
        /// What is wrong with it.
        what: &'static str,
    },
    /// The zone has no SOA record at its apex.
    #[error("{path}: the zone {origin} has no SOA record at its apex")]
    NoSoa {
        /// The zone file.
        path: PathBuf,
        /// The zone's origin.
        origin: String,
    },
    /// A CNAME shares its owner with other data (RFC 1034 section 3.6.2).
    #[error("{path}:{line}: {owner} has a CNAME and other data")]
    CnameAndOther {
        /// The zone file.
        path: PathBuf,
        /// The line of the later record.
        line: usize,
        /// The owner.
        owner: String,
    },
    /// Two zones with the same origin.
    #[error("{path}: a second zone for {origin}")]
    DuplicateZone {
        /// The second zone file.
        path: PathBuf,
        /// The origin.
        origin: String,
    },
    /// More zones, or more records in a zone, than the blob format holds.
    #[error("{path}: too large to compile (at most 65,535 zones of 4 GiB each)")]
    TooLarge {
        /// The zone file.
        path: PathBuf,
    },
}

/// One zone to compile: its origin and its master file.
#[derive(Debug, Clone)]
pub struct ZoneFile {
    /// The origin (apex), e.g. `example.com.`; the file may change it
    /// with `$ORIGIN` for later names, but the zone stays this one.
    pub origin: String,
    /// The file, named in errors.
    pub path: PathBuf,
}

impl ZoneFile {
    /// The zone `origin` from the file at `path`.
    pub fn new(origin: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        ZoneFile { origin: origin.into(), path: path.into() }
    }
}

/// Compiles zone files into one blob.
pub fn compile_files(zones: &[ZoneFile]) -> Result<Vec<u8>, CompileError> {
    let mut texts = Vec::new();
    for z in zones {
        let text =
            std::fs::read_to_string(&z.path).map_err(|source| CompileError::Io { path: z.path.clone(), source })?;
        texts.push((z.clone(), text));
    }
    let refs: Vec<(&ZoneFile, &str)> = texts.iter().map(|(z, t)| (z, t.as_str())).collect();
    compile(&refs)
}

/// Compiles zones given as text (each with the file name its errors name).
pub fn compile(zones: &[(&ZoneFile, &str)]) -> Result<Vec<u8>, CompileError> {
    let mut out = Vec::new();
    out.extend_from_slice(blob::MAGIC);
    out.extend_from_slice(&blob::VERSION.to_be_bytes());
    let count = u16::try_from(zones.len())
        .map_err(|_| CompileError::TooLarge { path: zones.last().map(|z| z.0.path.clone()).unwrap_or_default() })?;
    out.extend_from_slice(&count.to_be_bytes());
    let mut origins = BTreeSet::new();
    for (zone, text) in zones {
        let (origin, records) = compile_zone(zone, text)?;
        if !origins.insert(origin.clone()) {
            return Err(CompileError::DuplicateZone { path: zone.path.clone(), origin: origin.to_string() });
        }
        let too_large = || CompileError::TooLarge { path: zone.path.clone() };
        let n = u32::try_from(records.len()).map_err(|_| too_large())?;
        let body: Vec<u8> = records.concat();
        let len = u32::try_from(body.len()).map_err(|_| too_large())?;
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&body);
    }
    Ok(out)
}

/// The starting line (1-based) of every record entry of a master file,
/// in order, directives left out: the scanner hands out records without
/// positions, so the k-th record it returns starts on the k-th line here.
/// Entries span lines inside parentheses; quotes, escapes and comments are
/// followed so that their parentheses and semicolons do not count.
fn record_lines(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let (mut line, mut depth, mut quoted, mut escaped, mut comment) = (1, 0usize, false, false, false);
    // Whether the current line has started an entry, and whether that entry
    // is a directive.
    let mut in_entry = false;
    for c in text.chars() {
        if c == '\n' {
            line += 1;
            comment = false;
            escaped = false;
            if depth == 0 && !quoted {
                in_entry = false;
            }
            continue;
        }
        if comment {
            continue;
        }
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => comment = true,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.saturating_sub(1),
            _ => {}
        }
        if !in_entry && !comment && !c.is_whitespace() {
            in_entry = true;
            if c != '$' {
                out.push(line);
            }
        }
    }
    out
}

/// The line of the first `$INCLUDE` directive, if the text has one.
fn include_line(text: &str) -> Option<usize> {
    text.lines().position(|l| l.len() >= 8 && l[..8].eq_ignore_ascii_case("$include")).map(|i| i + 1)
}

/// A zone's origin and its records in wire format, SOA first.
type Compiled = (Name<Vec<u8>>, Vec<Vec<u8>>);

/// One zone, compiled.
fn compile_zone(zone: &ZoneFile, text: &str) -> Result<Compiled, CompileError> {
    let path = || zone.path.clone();
    if let Some(line) = include_line(text) {
        return Err(CompileError::Include { path: path(), line });
    }
    let mut origin_text = zone.origin.clone();
    if !origin_text.ends_with('.') {
        origin_text.push('.');
    }
    let origin: Name<Vec<u8>> =
        origin_text.parse().map_err(|_| CompileError::BadOrigin { path: path(), origin: zone.origin.clone() })?;
    let mut scanner = Zonefile::from(text);
    scanner.set_origin(origin.to_name::<bytes::Bytes>());
    scanner.set_default_class(Class::IN);
    let mut soa: Option<Vec<u8>> = None;
    let mut records: Vec<Vec<u8>> = Vec::new();
    // Per owner: whether it has a CNAME, other data (not DNSSEC), and the
    // records already seen (duplicates are dropped).
    let mut owners: std::collections::BTreeMap<Name<Vec<u8>>, (bool, bool)> = Default::default();
    let mut seen: BTreeSet<Vec<u8>> = BTreeSet::new();
    let lines = record_lines(text);
    let line_of = |k: usize| lines.get(k).or(lines.last()).copied().unwrap_or(1);
    let mut k = 0;
    loop {
        let entry = match scanner.next_entry() {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            Err(e) => {
                // The scanner's position is where it stopped, often past the
                // line's end: name the line where the entry starts.
                let message = e.to_string();
                let message = message.splitn(3, ':').nth(2).map_or(message.as_str(), str::trim).to_string();
                return Err(CompileError::Syntax { path: path(), line: line_of(k), message });
            }
        };
        let line = line_of(k);
        k += 1;
        let record = match entry {
            Entry::Record(r) => r,
            Entry::Include { .. } => return Err(CompileError::Include { path: path(), line }),
        };
        let owner: Name<Vec<u8>> = record.owner().to_name();
        if !owner.ends_with(&origin) {
            return Err(CompileError::OutOfZone {
                path: path(),
                line,
                owner: owner.to_string(),
                origin: origin.to_string(),
            });
        }
        if record.class() != Class::IN {
            return Err(CompileError::Class { path: path(), line, class: record.class().to_string() });
        }
        let rtype = record.rtype();
        let wire = to_wire(&record);
        if rtype == Rtype::SOA {
            if owner != origin {
                return Err(CompileError::Soa { path: path(), line, what: "an SOA record below the apex" });
            }
            if soa.is_some() {
                return Err(CompileError::Soa { path: path(), line, what: "a second SOA record" });
            }
            soa = Some(wire);
            continue;
        }
        let dnssec = matches!(rtype, Rtype::RRSIG | Rtype::NSEC | Rtype::NSEC3);
        let entry = owners.entry(owner.clone()).or_default();
        if rtype == Rtype::CNAME {
            entry.0 = true;
        } else if !dnssec {
            entry.1 = true;
        }
        if entry.0 && entry.1 {
            return Err(CompileError::CnameAndOther { path: path(), line, owner: owner.to_string() });
        }
        // Compare duplicates without the TTL (bytes past the owner, type
        // and class: RFC 2181 section 5).
        let mut key = wire.clone();
        let ttl_at = owner.len() + 4;
        key[ttl_at..ttl_at + 4].fill(0);
        if seen.insert(key) {
            records.push(wire);
        }
    }
    let soa = soa.ok_or_else(|| CompileError::NoSoa { path: path(), origin: origin.to_string() })?;
    records.insert(0, soa);
    Ok((origin, records))
}

/// A scanned record in uncompressed wire format.
fn to_wire<N: ToName, D>(record: &Record<N, D>) -> Vec<u8>
where
    D: domain::base::rdata::ComposeRecordData + domain::base::rdata::RecordData,
{
    let mut out = Vec::new();
    // Composing into a plain Vec never compresses and never fails.
    record.compose(&mut out).expect("composing into a Vec cannot fail");
    // The owner must be absolute and lowercase-preserving: already so.
    out
}

/// For a service's build script: compiles `zones` (paths relative to the
/// crate) into `$OUT_DIR/<out_name>` and tells cargo to run again when a
/// zone file changes. The service loads it with
/// `Catalog::new(include_bytes!(concat!(env!("OUT_DIR"), "/<out_name>")))`.
pub fn compile_for_build_script(zones: &[ZoneFile], out_name: &str) -> Result<PathBuf, CompileError> {
    for z in zones {
        std::println!("cargo:rerun-if-changed={}", z.path.display());
    }
    let blob = compile_files(zones)?;
    let dir = std::env::var_os("OUT_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let out = dir.join(out_name);
    std::fs::write(&out, &blob).map_err(|source| CompileError::Io { path: out.clone(), source })?;
    Ok(out)
}
