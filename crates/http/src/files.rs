//! Serving files baked into the image ([`skiff_kv::Store`]): GET and HEAD,
//! directory indexes, conditional requests (`If-None-Match`,
//! `If-Modified-Since`: 304), single byte ranges (206, 416), and the gzip
//! variant for clients that accept it. Bodies are sent straight from the
//! image, without a copy.

use crate::date::{HttpDate, parse as parse_date};
use crate::request::{Method, Request};
use crate::response::{Body, Response};
use crate::server::Handler;
use crate::status::Status;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::future::Future;
use skiff_kv::{Entry, Lookup, Store};

/// A handler that serves a store.
#[derive(Clone, Copy)]
pub struct StaticFiles {
    store: Store<'static>,
    not_found: Option<&'static str>,
    cache_control: Option<&'static str>,
}

impl StaticFiles {
    /// Serves `store`; a missing file gets `/404.html` from the store as
    /// its body when the store has one.
    pub fn new(store: Store<'static>) -> StaticFiles {
        StaticFiles { store, not_found: Some("/404.html"), cache_control: None }
    }

    /// The store's page for 404 responses (`None`: plain text).
    pub fn not_found_page(mut self, path: Option<&'static str>) -> StaticFiles {
        self.not_found = path;
        self
    }

    /// A `Cache-Control` value for every file (e.g. `max-age=300`).
    pub fn cache_control(mut self, value: &'static str) -> StaticFiles {
        self.cache_control = Some(value);
        self
    }

    /// The store.
    pub fn store(&self) -> Store<'static> {
        self.store
    }

    /// Answers one request (synchronously: everything is in memory).
    pub fn respond(&self, req: &Request) -> Response {
        let method = req.method();
        if method != Method::Get && method != Method::Head {
            return Response::error(Status::METHOD_NOT_ALLOWED).header("allow", &b"GET, HEAD"[..]);
        }
        let Some(path) = percent_decode(req.path()) else {
            return Response::error(Status::BAD_REQUEST);
        };
        match self.store.resolve(&path) {
            Lookup::Found(entry) => self.serve(req, entry, Status::OK),
            Lookup::RedirectToDir => {
                let mut location = String::from(req.path());
                location.push('/');
                if let Some(q) = req.query() {
                    location.push('?');
                    location.push_str(q);
                }
                Response::redirect(Status::MOVED_PERMANENTLY, &location)
            }
            Lookup::NotFound => match self.not_found.and_then(|p| self.store.get(p)) {
                Some(page) => {
                    let mut r = Response::new(Status::NOT_FOUND).body(Body::Static(page.body));
                    r.headers.set("content-type", page.content_type.as_bytes());
                    r
                }
                None => Response::error(Status::NOT_FOUND),
            },
        }
    }

    fn serve(&self, req: &Request, entry: Entry<'static>, status: Status) -> Response {
        let headers = &req.head.headers;
        let range = headers.get_str("range");
        // Ranges are served from the identity body only.
        let gzip = range.is_none() && headers.get_str("accept-encoding").is_some_and(accepts_gzip);
        let rep = entry.representation(gzip);
        let mut r = Response::new(status);
        r.headers.append("content-type", entry.content_type.as_bytes());
        r.headers.append("etag", rep.etag.as_bytes());
        r.headers.append("last-modified", HttpDate::from_unix(entry.modified).as_str().as_bytes().to_vec());
        r.headers.append("accept-ranges", &b"bytes"[..]);
        if entry.gzip.is_some() {
            r.headers.append("vary", &b"accept-encoding"[..]);
        }
        if let Some(cc) = self.cache_control {
            r.headers.append("cache-control", cc.as_bytes());
        }
        // Conditional requests: If-None-Match wins over If-Modified-Since.
        if let Some(inm) = headers.get_str("if-none-match") {
            if etag_matches(inm, rep.etag) {
                return not_modified(r);
            }
        } else if let Some(ims) = headers.get_str("if-modified-since").and_then(parse_date)
            && entry.modified <= ims
        {
            return not_modified(r);
        }
        if rep.gzip {
            r.headers.append("content-encoding", &b"gzip"[..]);
        }
        let len = rep.body.len() as u64;
        if let Some(range) = range {
            // If-Range: the range applies only to the representation the
            // client already has.
            let applies = headers.get_str("if-range").is_none_or(|v| v == rep.etag);
            if applies {
                match parse_range(range, len) {
                    RangeSpec::One(start, end) => {
                        r.status = Status::PARTIAL_CONTENT;
                        r.headers.append("content-range", format!("bytes {start}-{end}/{len}").into_bytes());
                        r.body = Body::Static(&rep.body[start as usize..=end as usize]);
                        return r;
                    }
                    RangeSpec::Unsatisfiable => {
                        let mut e = Response::error(Status::RANGE_NOT_SATISFIABLE);
                        e.headers.append("content-range", format!("bytes */{len}").into_bytes());
                        return e;
                    }
                    RangeSpec::Ignore => {}
                }
            }
        }
        r.body = Body::Static(rep.body);
        r
    }
}

fn not_modified(mut r: Response) -> Response {
    r.status = Status::NOT_MODIFIED;
    r.headers.remove("content-type");
    r.headers.remove("accept-ranges");
    r
}

impl Handler for StaticFiles {
    fn handle(&self, request: Request) -> impl Future<Output = Response> {
        let response = self.respond(&request);
        async move { response }
    }
}

/// Percent-decodes a path; `None` for bad escapes or a result that is not
/// UTF-8.
pub fn percent_decode(path: &str) -> Option<String> {
    if !path.contains('%') {
        return Some(String::from(path));
    }
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether an `Accept-Encoding` value allows gzip.
pub fn accepts_gzip(value: &str) -> bool {
    let mut star = None;
    for item in value.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
            .next()
            .map_or(Some(true), |q| qvalue_positive(q.trim()));
        let Some(positive) = q else { continue };
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            return positive;
        }
        if coding == "*" {
            star = Some(positive);
        }
    }
    star.unwrap_or(false)
}

/// Whether a qvalue (`0`, `0.5`, `1.000`: RFC 9110 section 12.4.2) is
/// above zero; `None` when it is malformed.
fn qvalue_positive(q: &str) -> Option<bool> {
    let (int, frac) = q.split_once('.').unwrap_or((q, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !matches!(int, "0" | "1") || frac.len() > 3 || !digits(frac) {
        return None;
    }
    Some(int == "1" || frac.bytes().any(|b| b != b'0'))
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison).
pub fn etag_matches(header: &str, etag: &str) -> bool {
    let header = header.trim();
    if header == "*" {
        return true;
    }
    let bare = |t: &str| -> String {
        let t = t.trim();
        String::from(t.strip_prefix("W/").unwrap_or(t))
    };
    let want = bare(etag);
    header.split(',').any(|t| bare(t) == want)
}

/// A `Range` header's meaning for a body of `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// One satisfiable range, inclusive.
    One(u64, u64),
    /// No range can be served (416).
    Unsatisfiable,
    /// Not a single byte range this server serves partially (several
    /// ranges, another unit, bad syntax): send the whole body.
    Ignore,
}

/// Interprets a `Range` header (RFC 9110 section 14.1.2) for one range.
pub fn parse_range(value: &str, len: u64) -> RangeSpec {
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return RangeSpec::Ignore };
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return RangeSpec::Ignore };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match num(last) {
            Some(0) => RangeSpec::Unsatisfiable,
            Some(n) if len == 0 => {
                let _ = n;
                RangeSpec::Unsatisfiable
            }
            Some(n) => RangeSpec::One(len.saturating_sub(n), len - 1),
            None => RangeSpec::Ignore,
        },
        // bytes=A-: from A to the end.
        (false, true) => match num(first) {
            Some(a) if a < len => RangeSpec::One(a, len - 1),
            Some(_) => RangeSpec::Unsatisfiable,
            None => RangeSpec::Ignore,
        },
        // bytes=A-B.
        (false, false) => match (num(first), num(last)) {
            (Some(a), Some(b)) if a > b => RangeSpec::Ignore,
            (Some(a), Some(b)) if a < len => RangeSpec::One(a, b.min(len - 1)),
            (Some(_), Some(_)) => RangeSpec::Unsatisfiable,
            _ => RangeSpec::Ignore,
        },
        (true, true) => RangeSpec::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeSpec::{Ignore, One, Unsatisfiable};
        let cases = [
            ("bytes=0-9", One(0, 9)),
            ("bytes=0-", One(0, 99)),
            ("bytes=90-200", One(90, 99)),
            ("bytes=99-99", One(99, 99)),
            ("bytes=-10", One(90, 99)),
            ("bytes=-100", One(0, 99)),
            ("bytes=-1000", One(0, 99)),
            (" bytes= 5 - 6 ", One(5, 6)),
            ("bytes=100-", Unsatisfiable),
            ("bytes=100-200", Unsatisfiable),
            ("bytes=-0", Unsatisfiable),
            ("bytes=6-5", Ignore),
            ("bytes=0-1,3-4", Ignore),
            ("bytes=-", Ignore),
            ("bytes=1", Ignore),
            ("bytes=a-b", Ignore),
            ("bytes=+1-2", Ignore),
            ("bytes=99999999999999999999999-", Ignore),
            ("items=0-1", Ignore),
            ("", Ignore),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_range(value, 100), expected, "{value:?}");
        }
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
    }

    #[test]
    fn gzip_acceptance() {
        for yes in ["gzip", "GZIP", "x-gzip", "br, gzip;q=0.1", "gzip; q=1.0", "*", "br;q=1, *;q=0.5", "*;q=0, gzip"] {
            assert!(accepts_gzip(yes), "{yes:?}");
        }
        for no in ["", "identity", "br, deflate", "gzip;q=0", "gzip;Q=0.000", "*;q=0", "gzip;q=0, *", "gzipped"] {
            assert!(!accepts_gzip(no), "{no:?}");
        }
    }

    #[test]
    fn etags() {
        assert!(etag_matches("\"abc\"", "\"abc\""));
        assert!(etag_matches("W/\"abc\"", "\"abc\""));
        assert!(etag_matches(" \"x\", W/\"abc\" ", "\"abc\""));
        assert!(etag_matches("*", "\"abc\""));
        assert!(!etag_matches("\"abd\"", "\"abc\""));
        assert!(!etag_matches("abc", "\"abc\""));
        assert!(!etag_matches("", "\"abc\""));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("/plain").as_deref(), Some("/plain"));
        assert_eq!(percent_decode("/a%20b%2Fc").as_deref(), Some("/a b/c"));
        assert_eq!(percent_decode("/%c3%a9t%C3%A9").as_deref(), Some("/été"));
        assert_eq!(percent_decode("/100%25").as_deref(), Some("/100%"));
        for bad in ["/%", "/%2", "/%zz", "/%g0", "/%ff", "/%c3", "/%%41"] {
            assert_eq!(percent_decode(bad), None, "{bad:?}");
        }
    }
}
