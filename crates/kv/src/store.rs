//! The reader: a checked view over a baked blob.

use crate::format::{
    BODY_AT, CONTENT_TYPE_AT, COUNT_AT, ENTRY_LEN, ETAG_AT, GZIP_AT, GZIP_ETAG_AT, HEADER_LEN, LENGTH_AT, MAGIC,
    MODIFIED_AT, PATH_AT, VERSION, VERSION_AT,
};
use core::cmp::Ordering;
use core::fmt;

/// A field of an entry record, named in a [`KvError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// The key.
    Path,
    /// The file's bytes.
    Body,
    /// The gzipped variant.
    Gzip,
    /// The `Content-Type` value.
    ContentType,
    /// The ETag of the body.
    Etag,
    /// The ETag of the gzipped variant.
    GzipEtag,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Path => "path",
            Field::Body => "body",
            Field::Gzip => "gzip variant",
            Field::ContentType => "content type",
            Field::Etag => "ETag",
            Field::GzipEtag => "gzip ETag",
        })
    }
}

/// The blob is not a store this reader can use: it is truncated, corrupt,
/// or of another format version. Entries are numbered from 0 in table
/// order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvError {
    /// The blob is shorter than the header.
    Truncated {
        /// The blob's length.
        len: usize,
    },
    /// The blob does not start with [`MAGIC`](crate::format::MAGIC).
    BadMagic,
    /// The blob has a format version this reader does not know.
    UnsupportedVersion(u32),
    /// The header's blob length is not the blob's length (a truncated or
    /// padded blob).
    LengthMismatch {
        /// The length the header gives.
        declared: u32,
        /// The blob's length.
        actual: usize,
    },
    /// The entry table does not fit in the blob.
    TableOutOfBounds {
        /// The entry count the header gives.
        count: u32,
    },
    /// A field of an entry names bytes outside the data area.
    OutOfBounds {
        /// The entry.
        entry: usize,
        /// The field.
        field: Field,
    },
    /// A text field of an entry is malformed: a path that is not UTF-8 or
    /// does not start with `/`, or a content type or ETag that is not
    /// printable ASCII (or, for an ETag, not in double quotes).
    BadText {
        /// The entry.
        entry: usize,
        /// The field.
        field: Field,
    },
    /// An entry's path does not sort strictly after the previous entry's.
    Unsorted {
        /// The entry.
        entry: usize,
    },
    /// An entry has a gzip variant without its ETag, or the other way round.
    GzipMismatch {
        /// The entry.
        entry: usize,
    },
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvError::Truncated { len } => write!(f, "store blob of {len} bytes is shorter than its header"),
            KvError::BadMagic => f.write_str("not a store blob (bad magic number)"),
            KvError::UnsupportedVersion(v) => {
                write!(f, "store blob has format version {v}, this reader knows version {VERSION}")
            }
            KvError::LengthMismatch { declared, actual } => {
                write!(f, "store blob is {actual} bytes but its header says {declared}")
            }
            KvError::TableOutOfBounds { count } => write!(f, "store blob is too short for its {count} entries"),
            KvError::OutOfBounds { entry, field } => write!(f, "store entry {entry}: {field} is out of bounds"),
            KvError::BadText { entry, field } => write!(f, "store entry {entry}: {field} is malformed"),
            KvError::Unsorted { entry } => write!(f, "store entry {entry}: paths are not in ascending order"),
            KvError::GzipMismatch { entry } => {
                write!(f, "store entry {entry}: gzip variant and gzip ETag must come together")
            }
        }
    }
}

impl core::error::Error for KvError {}

/// One file of the store. Every slice borrows the blob.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The key: the file's path below the baked directory, with a leading
    /// `/` and `/` between directories (`/css/site.css`).
    pub path: &'a str,
    /// The file's bytes.
    pub body: &'a [u8],
    /// The body gzipped, present only when that is meaningfully smaller.
    pub gzip: Option<&'a [u8]>,
    /// The `Content-Type` header value (`text/html; charset=utf-8`).
    pub content_type: &'a str,
    /// The body's strong ETag, quotes included (`"a1b2c3d4e5f60718"`).
    /// It changes whenever the content changes.
    pub etag: &'a str,
    /// The gzip variant's strong ETag, distinct from [`etag`](Self::etag);
    /// present exactly when [`gzip`](Self::gzip) is.
    pub gzip_etag: Option<&'a str>,
    /// The file's modification time in seconds since the UNIX epoch.
    pub modified: u64,
}

impl<'a> Entry<'a> {
    /// The representation to send: the gzip variant (with its ETag) when
    /// the client accepts gzip and there is one, the body otherwise.
    pub fn representation(&self, accepts_gzip: bool) -> Representation<'a> {
        match (accepts_gzip, self.gzip, self.gzip_etag) {
            (true, Some(body), Some(etag)) => Representation { body, etag, gzip: true },
            _ => Representation { body: self.body, etag: self.etag, gzip: false },
        }
    }
}

impl fmt::Debug for Entry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("path", &self.path)
            .field("body_len", &self.body.len())
            .field("gzip_len", &self.gzip.map(<[u8]>::len))
            .field("content_type", &self.content_type)
            .field("etag", &self.etag)
            .field("gzip_etag", &self.gzip_etag)
            .field("modified", &self.modified)
            .finish()
    }
}

/// The bytes to send for an [`Entry`], chosen by
/// [`Entry::representation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Representation<'a> {
    /// The response body.
    pub body: &'a [u8],
    /// The `ETag` header value for this body.
    pub etag: &'a str,
    /// Whether `body` is gzipped (send `Content-Encoding: gzip`).
    pub gzip: bool,
}

/// What a URL path names, from [`Store::resolve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The file to serve.
    Found(Entry<'a>),
    /// The path names a directory without its trailing slash: redirect the
    /// client to the path with `/` appended, so relative links in the
    /// directory's `index.html` resolve.
    RedirectToDir,
    /// Nothing to serve.
    NotFound,
}

/// A baked store: a checked view over the blob, entries decoded on demand.
#[derive(Clone, Copy)]
pub struct Store<'a> {
    blob: &'a [u8],
    count: usize,
    data_start: usize,
}

impl<'a> Store<'a> {
    /// Checks `blob` (header, and every entry's ranges, text and order) and
    /// returns a store over it. The blob needs no alignment.
    pub fn new(blob: &'a [u8]) -> Result<Self, KvError> {
        let truncated = KvError::Truncated { len: blob.len() };
        if blob.len() < HEADER_LEN {
            return Err(truncated);
        }
        if blob.get(..MAGIC.len()) != Some(&MAGIC[..]) {
            return Err(KvError::BadMagic);
        }
        let version = le_u32(blob, VERSION_AT).ok_or(truncated)?;
        if version != VERSION {
            return Err(KvError::UnsupportedVersion(version));
        }
        let declared = le_u32(blob, LENGTH_AT).ok_or(truncated)?;
        if usize::try_from(declared).ok() != Some(blob.len()) {
            return Err(KvError::LengthMismatch { declared, actual: blob.len() });
        }
        let count32 = le_u32(blob, COUNT_AT).ok_or(truncated)?;
        let table_oob = KvError::TableOutOfBounds { count: count32 };
        let count = usize::try_from(count32).map_err(|_| table_oob)?;
        let data_start = count
            .checked_mul(ENTRY_LEN)
            .and_then(|table| table.checked_add(HEADER_LEN))
            .filter(|&end| end <= blob.len())
            .ok_or(table_oob)?;
        let store = Store { blob, count, data_start };
        let mut previous: Option<&str> = None;
        for i in 0..count {
            let entry = store.decode(i)?;
            if previous.is_some_and(|p| p.as_bytes() >= entry.path.as_bytes()) {
                return Err(KvError::Unsorted { entry: i });
            }
            previous = Some(entry.path);
        }
        Ok(store)
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the store has no entries.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The entry whose path is exactly `path` (`/index.html`). Paths are
    /// compared byte for byte; no normalisation is done (see
    /// [`resolve`](Self::resolve) for URL paths).
    pub fn get(&self, path: &str) -> Option<Entry<'a>> {
        self.find(path, "")
    }

    /// Maps a URL path to what to serve:
    ///
    /// - `/` and `/dir/` serve `/index.html` and `/dir/index.html`;
    /// - `/file` serves `/file` when it exists;
    /// - `/dir`, when `/dir/index.html` exists, is [`Lookup::RedirectToDir`];
    /// - anything else is [`Lookup::NotFound`], and so is a path that does
    ///   not start with `/`, or has a `.` or `..` segment, a NUL or a
    ///   backslash.
    ///
    /// `url_path` is the path part of the request target, percent-decoded,
    /// without query or fragment.
    pub fn resolve(&self, url_path: &str) -> Lookup<'a> {
        if !is_servable(url_path) {
            return Lookup::NotFound;
        }
        let found = |entry: Option<Entry<'a>>| entry.map_or(Lookup::NotFound, Lookup::Found);
        if url_path.ends_with('/') {
            return found(self.find(url_path, "index.html"));
        }
        if let Some(entry) = self.get(url_path) {
            return Lookup::Found(entry);
        }
        if self.find(url_path, "/index.html").is_some() { Lookup::RedirectToDir } else { Lookup::NotFound }
    }

    /// The entries in ascending path order.
    pub fn iter(&self) -> Iter<'a> {
        Iter { store: *self, next: 0 }
    }

    /// Binary search for the entry whose path is `prefix` followed by
    /// `suffix`, without building the concatenation.
    fn find(&self, prefix: &str, suffix: &str) -> Option<Entry<'a>> {
        let wanted = || prefix.as_bytes().iter().chain(suffix.as_bytes());
        let (mut low, mut high) = (0, self.count);
        while low < high {
            let mid = low + (high - low) / 2;
            let key = self.record(mid).and_then(|record| self.range(record, PATH_AT))?;
            match key.iter().cmp(wanted()) {
                Ordering::Less => low = mid + 1,
                Ordering::Greater => high = mid,
                Ordering::Equal => return self.decode(mid).ok(),
            }
        }
        None
    }

    /// The record of entry `i`.
    fn record(&self, i: usize) -> Option<&'a [u8]> {
        let start = i.checked_mul(ENTRY_LEN)?.checked_add(HEADER_LEN)?;
        self.blob.get(start..start.checked_add(ENTRY_LEN)?)
    }

    /// The data-area bytes named by the (offset, length) pair at `at` in
    /// `record`.
    fn range(&self, record: &[u8], at: usize) -> Option<&'a [u8]> {
        let offset = usize::try_from(le_u32(record, at)?).ok()?;
        let len = usize::try_from(le_u32(record, at.checked_add(4)?)?).ok()?;
        if offset < self.data_start {
            return None;
        }
        self.blob.get(offset..offset.checked_add(len)?)
    }

    /// Like [`range`](Self::range), where the pair (0, 0) means "absent".
    fn optional_range(&self, record: &[u8], at: usize) -> Option<Option<&'a [u8]>> {
        let absent = le_u32(record, at)? == 0 && le_u32(record, at.checked_add(4)?)? == 0;
        if absent { Some(None) } else { self.range(record, at).map(Some) }
    }

    /// Decodes and checks entry `i`.
    fn decode(&self, i: usize) -> Result<Entry<'a>, KvError> {
        let out_of_bounds = |field| KvError::OutOfBounds { entry: i, field };
        let bad_text = |field| KvError::BadText { entry: i, field };
        let table_oob = KvError::TableOutOfBounds { count: u32::try_from(self.count).unwrap_or(u32::MAX) };
        let record = self.record(i).ok_or(table_oob)?;

        let path = self.range(record, PATH_AT).ok_or(out_of_bounds(Field::Path))?;
        let path = core::str::from_utf8(path).ok().filter(|p| p.starts_with('/')).ok_or(bad_text(Field::Path))?;
        let body = self.range(record, BODY_AT).ok_or(out_of_bounds(Field::Body))?;
        let gzip = self.optional_range(record, GZIP_AT).ok_or(out_of_bounds(Field::Gzip))?;
        let content_type = self.range(record, CONTENT_TYPE_AT).ok_or(out_of_bounds(Field::ContentType))?;
        let content_type = header_text(content_type).ok_or(bad_text(Field::ContentType))?;
        let etag = self.range(record, ETAG_AT).ok_or(out_of_bounds(Field::Etag))?;
        let etag = etag_text(etag).ok_or(bad_text(Field::Etag))?;
        let gzip_etag = self.optional_range(record, GZIP_ETAG_AT).ok_or(out_of_bounds(Field::GzipEtag))?;
        let gzip_etag = match gzip_etag {
            Some(bytes) => Some(etag_text(bytes).ok_or(bad_text(Field::GzipEtag))?),
            None => None,
        };
        if gzip.is_some() != gzip_etag.is_some() {
            return Err(KvError::GzipMismatch { entry: i });
        }
        let modified = le_u64(record, MODIFIED_AT).ok_or(table_oob)?;
        Ok(Entry { path, body, gzip, content_type, etag, gzip_etag, modified })
    }
}

impl fmt::Debug for Store<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("entries", &self.count).field("bytes", &self.blob.len()).finish()
    }
}

impl<'a> IntoIterator for &Store<'a> {
    type Item = Entry<'a>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The entries of a [`Store`] in ascending path order, from
/// [`Store::iter`].
#[derive(Clone, Debug)]
pub struct Iter<'a> {
    store: Store<'a>,
    next: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = Entry<'a>;

    fn next(&mut self) -> Option<Entry<'a>> {
        // Every entry was checked by `Store::new`, so `decode` succeeds;
        // were one to fail, it is skipped rather than ending the walk.
        while self.next < self.store.count {
            let i = self.next;
            self.next += 1;
            if let Ok(entry) = self.store.decode(i) {
                return Some(entry);
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.store.count - self.next))
    }
}

/// Whether `path` may be looked up: absolute, no NUL or backslash, no `.`
/// or `..` segment.
fn is_servable(path: &str) -> bool {
    path.starts_with('/') && !path.contains(['\0', '\\']) && !path.split('/').any(|s| s == "." || s == "..")
}

/// `bytes` as a header value: non-empty printable ASCII (space allowed).
fn header_text(bytes: &[u8]) -> Option<&str> {
    if bytes.is_empty() || !bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return None;
    }
    core::str::from_utf8(bytes).ok()
}

/// `bytes` as a strong ETag: `"`, printable ASCII other than `"` and
/// space, `"`.
fn etag_text(bytes: &[u8]) -> Option<&str> {
    let inner = bytes.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if !inner.iter().all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b)) {
        return None;
    }
    core::str::from_utf8(bytes).ok()
}

/// The little-endian `u32` at `at`.
fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let field = bytes.get(at..at.checked_add(4)?)?;
    <[u8; 4]>::try_from(field).ok().map(u32::from_le_bytes)
}

/// The little-endian `u64` at `at`.
fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let field = bytes.get(at..at.checked_add(8)?)?;
    <[u8; 8]>::try_from(field).ok().map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    extern crate alloc;

    use super::*;
    use alloc::vec::Vec;

    /// A test entry: path, body, gzip variant.
    type Spec<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

    /// A blob of `entries`, in the given order, written the way the
    /// builder lays it out.
    fn blob(entries: &[Spec<'_>]) -> Vec<u8> {
        let data_start = HEADER_LEN + entries.len() * ENTRY_LEN;
        let mut table = Vec::new();
        let mut data = Vec::new();
        let put = |data: &mut Vec<u8>, bytes: &[u8]| {
            let offset = (data_start + data.len()) as u32;
            data.extend_from_slice(bytes);
            [offset.to_le_bytes(), (bytes.len() as u32).to_le_bytes()].concat()
        };
        for (path, body, gzip) in entries {
            table.extend(put(&mut data, path.as_bytes()));
            table.extend(put(&mut data, body));
            match gzip {
                Some(gz) => table.extend(put(&mut data, gz)),
                None => table.extend([0; 8]),
            }
            table.extend(put(&mut data, b"text/plain"));
            table.extend(put(&mut data, b"\"0123456789abcdef\""));
            match gzip {
                Some(_) => table.extend(put(&mut data, b"\"0123456789abcdef-gz\"")),
                None => table.extend([0; 8]),
            }
            table.extend(1_700_000_000u64.to_le_bytes());
        }
        let mut out = Vec::from(MAGIC);
        out.extend(VERSION.to_le_bytes());
        out.extend((entries.len() as u32).to_le_bytes());
        out.extend(((data_start + data.len()) as u32).to_le_bytes());
        out.extend(table);
        out.extend(data);
        out
    }

    #[test]
    fn empty_store() {
        let bytes = blob(&[]);
        let store = Store::new(&bytes).expect("valid");
        assert!(store.is_empty());
        assert_eq!(store.get("/"), None);
        assert_eq!(store.resolve("/"), Lookup::NotFound);
        assert_eq!(store.iter().count(), 0);
    }

    #[test]
    fn lookups() {
        let bytes =
            blob(&[("/a.txt", b"a", None), ("/dir/index.html", b"<p>", Some(b"gz")), ("/index.html", b"<h1>", None)]);
        let store = Store::new(&bytes).expect("valid");
        assert_eq!(store.len(), 3);
        assert_eq!(store.get("/a.txt").map(|e| e.body), Some(&b"a"[..]));
        assert_eq!(store.get("/b.txt"), None);
        assert!(matches!(store.resolve("/"), Lookup::Found(e) if e.path == "/index.html"));
        assert!(matches!(store.resolve("/dir/"), Lookup::Found(e) if e.path == "/dir/index.html"));
        assert_eq!(store.resolve("/dir"), Lookup::RedirectToDir);
        assert_eq!(store.resolve("/di"), Lookup::NotFound);
        assert_eq!(store.resolve("/dir/../a.txt"), Lookup::NotFound);
        assert_eq!(store.resolve("/./a.txt"), Lookup::NotFound);
        assert_eq!(store.resolve("a.txt"), Lookup::NotFound);
        assert_eq!(store.resolve("/a.txt\0"), Lookup::NotFound);
        assert_eq!(store.resolve("\\a.txt"), Lookup::NotFound);
        let paths: Vec<&str> = store.iter().map(|e| e.path).collect();
        assert_eq!(paths, ["/a.txt", "/dir/index.html", "/index.html"]);

        let dir = store.get("/dir/index.html").expect("present");
        assert_eq!(
            dir.representation(true),
            Representation { body: b"gz", etag: "\"0123456789abcdef-gz\"", gzip: true }
        );
        assert_eq!(
            dir.representation(false),
            Representation { body: b"<p>", etag: "\"0123456789abcdef\"", gzip: false }
        );
        let a = store.get("/a.txt").expect("present");
        assert!(!a.representation(true).gzip);
    }

    #[test]
    fn header_errors() {
        let good = blob(&[("/a", b"x", None)]);
        assert_eq!(Store::new(&good[..5]).unwrap_err(), KvError::Truncated { len: 5 });
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert_eq!(Store::new(&bad).unwrap_err(), KvError::BadMagic);
        let mut bad = good.clone();
        bad[VERSION_AT] = 2;
        assert_eq!(Store::new(&bad).unwrap_err(), KvError::UnsupportedVersion(2));
        let mut padded = good.clone();
        padded.push(0);
        assert!(matches!(Store::new(&padded), Err(KvError::LengthMismatch { .. })));
        let mut bad = good.clone();
        bad[COUNT_AT..COUNT_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Store::new(&bad).unwrap_err(), KvError::TableOutOfBounds { count: u32::MAX });
    }

    #[test]
    fn entry_errors() {
        let unsorted = blob(&[("/b", b"", None), ("/a", b"", None)]);
        assert_eq!(Store::new(&unsorted).unwrap_err(), KvError::Unsorted { entry: 1 });
        let duplicate = blob(&[("/a", b"", None), ("/a", b"", None)]);
        assert_eq!(Store::new(&duplicate).unwrap_err(), KvError::Unsorted { entry: 1 });
        let relative = blob(&[("a", b"", None)]);
        assert_eq!(Store::new(&relative).unwrap_err(), KvError::BadText { entry: 0, field: Field::Path });

        let good = blob(&[("/a", b"x", None)]);
        let body_len = HEADER_LEN + BODY_AT + 4;
        let mut bad = good.clone();
        bad[body_len..body_len + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Store::new(&bad).unwrap_err(), KvError::OutOfBounds { entry: 0, field: Field::Body });
        let mut bad = good.clone();
        bad[HEADER_LEN + GZIP_AT] = 1;
        assert!(Store::new(&bad).is_err());
        // A range that points into the header or the table.
        let mut bad = good.clone();
        bad[HEADER_LEN + PATH_AT..HEADER_LEN + PATH_AT + 4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(Store::new(&bad).unwrap_err(), KvError::OutOfBounds { entry: 0, field: Field::Path });
    }
}
