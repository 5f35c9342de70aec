//! Requests: the head parser (on byte slices, no I/O), the framing rules
//! that decide how long the body is, and the chunked-body decoder.

use crate::headers::Headers;
use crate::status::Status;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// Request methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// OPTIONS
    Options,
    /// PATCH
    Patch,
    /// TRACE
    Trace,
    /// CONNECT
    Connect,
}

impl Method {
    /// The method for a token, if it is one this server knows.
    pub fn from_token(token: &str) -> Option<Method> {
        Some(match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            "TRACE" => Method::Trace,
            "CONNECT" => Method::Connect,
            _ => return None,
        })
    }

    /// The method's token.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Patch => "PATCH",
            Method::Trace => "TRACE",
            Method::Connect => "CONNECT",
        }
    }

    /// Methods whose requests carry a body, so that a request without a
    /// length is refused (411).
    fn expects_body(self) -> bool {
        matches!(self, Method::Post | Method::Put | Method::Patch)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// HTTP versions this server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1
    Http11,
}

impl Version {
    /// As on the status line.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// How long a message body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLength {
    /// No body.
    None,
    /// Exactly this many bytes (`Content-Length`).
    Exact(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Limits on what a request may be. Anything beyond them is refused with
/// the status HTTP names for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line (method, target, version): 414 beyond.
    pub request_line: usize,
    /// Longest head (request line and all headers): 431 beyond.
    pub head: usize,
    /// Most header fields: 431 beyond.
    pub headers: usize,
    /// Largest body: 413 beyond.
    pub body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { request_line: 8 * 1024, head: 16 * 1024, headers: 64, body: 1024 * 1024 }
    }
}

/// Why a request was refused. Each maps to one status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// Malformed syntax or contradictory framing (400).
    BadRequest(&'static str),
    /// A body without a length where one is required (411).
    LengthRequired,
    /// The body is larger than the limit (413).
    PayloadTooLarge,
    /// The request line is longer than the limit (414).
    UriTooLong,
    /// The head is larger than the limit, or has too many fields (431).
    HeadersTooLarge,
    /// An unknown method or transfer coding (501).
    NotImplemented(String),
    /// Not HTTP/1.x (505).
    VersionNotSupported,
    /// The head or body did not arrive in time (408).
    Timeout,
}

impl RequestError {
    /// The status to answer with.
    pub fn status(&self) -> Status {
        match self {
            RequestError::BadRequest(_) => Status::BAD_REQUEST,
            RequestError::LengthRequired => Status::LENGTH_REQUIRED,
            RequestError::PayloadTooLarge => Status::PAYLOAD_TOO_LARGE,
            RequestError::UriTooLong => Status::URI_TOO_LONG,
            RequestError::HeadersTooLarge => Status::HEADERS_TOO_LARGE,
            RequestError::NotImplemented(_) => Status::NOT_IMPLEMENTED,
            RequestError::VersionNotSupported => Status::VERSION_NOT_SUPPORTED,
            RequestError::Timeout => Status::REQUEST_TIMEOUT,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::BadRequest(why) => write!(f, "bad request: {why}"),
            RequestError::LengthRequired => f.write_str("a body without Content-Length"),
            RequestError::PayloadTooLarge => f.write_str("body over the size limit"),
            RequestError::UriTooLong => f.write_str("request line over the size limit"),
            RequestError::HeadersTooLarge => f.write_str("headers over the size limit"),
            RequestError::NotImplemented(what) => write!(f, "not implemented: {what}"),
            RequestError::VersionNotSupported => f.write_str("HTTP version not supported"),
            RequestError::Timeout => f.write_str("the request did not arrive in time"),
        }
    }
}

impl core::error::Error for RequestError {}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// The request target as sent (path and query, or an absolute URI).
    pub target: String,
    /// The version.
    pub version: Version,
    /// The header fields, in order.
    pub headers: Headers,
    /// How the body is framed.
    pub body: BodyLength,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// The client sent `Expect: 100-continue` (over HTTP/1.1) and waits
    /// for it.
    pub expect_continue: bool,
}

impl RequestHead {
    /// The path: the target up to `?`, without the scheme and authority
    /// of an absolute URI.
    pub fn path(&self) -> &str {
        let t = self.target.as_str();
        let t = match t.find("://") {
            Some(i) if !t.starts_with('/') => t[i + 3..].find('/').map_or("/", |j| &t[i + 3 + j..]),
            _ => t,
        };
        t.split(['?', '#']).next().unwrap_or("/")
    }

    /// The query string after `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q.split('#').next().unwrap_or(""))
    }
}

/// The result of parsing the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole head, which took this many bytes.
    Complete(RequestHead, usize),
    /// The head is not complete yet: read more (the buffer is within the
    /// limits).
    Partial,
}

/// Parses a request head at the start of `buf`. Leading empty lines (which
/// RFC 9112 tells servers to ignore) are skipped.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Parsed, RequestError> {
    let mut skip = 0;
    while buf[skip..].starts_with(b"\r\n") {
        skip += 2;
    }
    if buf.len() > skip && buf[skip] == b'\n' {
        skip += 1;
    }
    // Empty lines are kept until a head completes: they count toward the
    // head's limit.
    if skip > limits.head {
        return Err(RequestError::HeadersTooLarge);
    }
    let input = &buf[skip..];
    // The request line must end within its limit.
    let line_end = input.iter().position(|&b| b == b'\n');
    match line_end {
        Some(end) if end > limits.request_line => return Err(RequestError::UriTooLong),
        None if input.len() > limits.request_line => return Err(RequestError::UriTooLong),
        None => return Ok(Parsed::Partial),
        Some(_) => {}
    }
    let mut fields = alloc::vec![httparse::EMPTY_HEADER; limits.headers];
    let mut req = httparse::Request::new(&mut fields);
    let status = match req.parse(input) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::HeadersTooLarge),
        Err(httparse::Error::Version) => return Err(version_error(input)),
        Err(httparse::Error::Token) if method_token_ok(input) => {
            return Err(RequestError::BadRequest("malformed request line or header name"));
        }
        Err(httparse::Error::Token) => return Err(RequestError::BadRequest("malformed method")),
        Err(httparse::Error::HeaderName) => return Err(RequestError::BadRequest("malformed header name")),
        Err(httparse::Error::HeaderValue) => return Err(RequestError::BadRequest("malformed header value")),
        Err(httparse::Error::NewLine) => return Err(RequestError::BadRequest("malformed line ending")),
        Err(_) => return Err(RequestError::BadRequest("malformed request")),
    };
    let used = match status {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => {
            if input.len() > limits.head {
                return Err(RequestError::HeadersTooLarge);
            }
            return Ok(Parsed::Partial);
        }
    };
    if used > limits.head {
        return Err(RequestError::HeadersTooLarge);
    }
    let token = req.method.unwrap_or("");
    let method = Method::from_token(token).ok_or_else(|| RequestError::NotImplemented(token.to_string()))?;
    let target = req.path.unwrap_or("");
    if target.is_empty() {
        return Err(RequestError::BadRequest("empty request target"));
    }
    if !(target.starts_with('/') || target == "*" || target.contains("://") || method == Method::Connect) {
        return Err(RequestError::BadRequest("request target is not a path"));
    }
    let version = match req.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(RequestError::VersionNotSupported),
    };
    let headers = Headers::from_fields(req.headers.iter().map(|h| (h.name, h.value)));
    let body = body_length(&headers, method, limits)?;
    if version == Version::Http11 && headers.get_all("host").count() != 1 {
        return Err(RequestError::BadRequest("HTTP/1.1 needs exactly one Host header"));
    }
    // Every Connection field counts: two fields are one list.
    let has = |token: &str| {
        headers
            .get_all("connection")
            .filter_map(|v| core::str::from_utf8(v).ok())
            .any(|v| crate::headers::lists_token(v, token))
    };
    let keep_alive = match version {
        Version::Http11 => !has("close"),
        Version::Http10 => has("keep-alive"),
    };
    // HTTP/1.0 clients do not know 1xx responses (RFC 9110 section 10.1.1).
    let expect_continue =
        version == Version::Http11 && headers.get_str("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
    Ok(Parsed::Complete(
        RequestHead { method, target: target.to_string(), version, headers, body, keep_alive, expect_continue },
        skip + used,
    ))
}

/// Whether the line starts like a request line with a known method (so a
/// token error is elsewhere).
fn method_token_ok(input: &[u8]) -> bool {
    input.split(|&b| b == b' ').next().and_then(|m| core::str::from_utf8(m).ok()).is_some_and(|m| {
        !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    })
}

/// A version error is 505 when the line names a version of HTTP that is
/// not 1.x, and 400 when it is not a version at all.
fn version_error(input: &[u8]) -> RequestError {
    let line = input.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or(&[]);
    match version.strip_prefix(b"HTTP/") {
        Some(v) if !v.is_empty() && v.iter().all(|b| b.is_ascii_digit() || *b == b'.') && !v.starts_with(b"1.") => {
            RequestError::VersionNotSupported
        }
        _ => RequestError::BadRequest("malformed HTTP version"),
    }
}

/// Decides the body's framing (RFC 9112 section 6).
fn body_length(headers: &Headers, method: Method, limits: &Limits) -> Result<BodyLength, RequestError> {
    let te: Vec<&[u8]> = headers.get_all("transfer-encoding").collect();
    let cl: Vec<&[u8]> = headers.get_all("content-length").collect();
    if !te.is_empty() {
        if !cl.is_empty() {
            // Both: a classic request-smuggling shape. Refuse it.
            return Err(RequestError::BadRequest("both Transfer-Encoding and Content-Length"));
        }
        let codings: Vec<&[u8]> =
            te.iter().flat_map(|v| v.split(|&b| b == b',')).map(trim).filter(|c| !c.is_empty()).collect();
        let is_chunked = |c: &[u8]| c.eq_ignore_ascii_case(b"chunked");
        let chunked = codings.iter().filter(|c| is_chunked(c)).count();
        let unknown = codings.iter().find(|c| !is_chunked(c));
        // RFC 9112 section 6: chunked must come last and only once (400);
        // codings this server does not know get 501.
        return match (codings.last(), unknown) {
            (None, _) => Err(RequestError::BadRequest("empty Transfer-Encoding")),
            (Some(last), _) if chunked > 1 || (chunked == 1 && !is_chunked(last)) => {
                Err(RequestError::BadRequest("chunked must be the last transfer coding, once"))
            }
            (Some(_), Some(c)) => {
                Err(RequestError::NotImplemented(alloc::format!("transfer coding {}", String::from_utf8_lossy(c))))
            }
            (Some(_), None) => Ok(BodyLength::Chunked),
        };
    }
    let mut length: Option<u64> = None;
    for value in cl {
        // A list of identical values is allowed; anything else is not.
        for part in value.split(|&b| b == b',').map(trim) {
            let n = parse_decimal(part).ok_or(RequestError::BadRequest("malformed Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(RequestError::BadRequest("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    match length {
        Some(n) if n > limits.body as u64 => Err(RequestError::PayloadTooLarge),
        Some(0) => Ok(BodyLength::None),
        Some(n) => Ok(BodyLength::Exact(n)),
        None if method.expects_body() => Err(RequestError::LengthRequired),
        None => Ok(BodyLength::None),
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !matches!(c, b' ' | b'\t')).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !matches!(c, b' ' | b'\t')).map_or(start, |e| e + 1);
    &b[start..end]
}

fn parse_decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    b.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// Decodes a chunked body incrementally, within a size limit.
#[derive(Clone, Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Bytes of the current size line, or of the trailer section, so far.
    line: usize,
    size: u64,
    total: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits of a chunk size.
    #[default]
    Size,
    /// After the size: an extension up to the end of the line.
    Extension,
    /// Expecting the LF after CR on the size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// CR after chunk data.
    DataCr,
    /// LF after chunk data.
    DataLf,
    /// Start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// LF of the final empty line.
    EndLf,
    /// The body is complete.
    Done,
}

/// Longest chunk-size line, and longest trailer section, accepted.
const CHUNK_LINE_MAX: usize = 4096;

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> ChunkedDecoder {
        ChunkedDecoder::default()
    }

    /// Whether the last chunk and trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from `input`, appending data to `out`; returns how many
    /// input bytes were used. Stops at the end of the body.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<usize, RequestError> {
        let bad = RequestError::BadRequest("malformed chunked body");
        let mut i = 0;
        while i < input.len() && self.state != ChunkState::Done {
            let b = input[i];
            match self.state {
                ChunkState::Size => {
                    let digit = match b {
                        b'0'..=b'9' => Some(b - b'0'),
                        b'a'..=b'f' => Some(b - b'a' + 10),
                        b'A'..=b'F' => Some(b - b'A' + 10),
                        _ => None,
                    };
                    match digit {
                        Some(d) => {
                            self.line += 1;
                            if self.line > 16 {
                                return Err(RequestError::PayloadTooLarge);
                            }
                            self.size = self.size * 16 + u64::from(d);
                        }
                        None if self.line == 0 => return Err(bad),
                        None if b == b'\r' => self.state = ChunkState::SizeLf,
                        None if b == b';' || b == b' ' || b == b'\t' => self.state = ChunkState::Extension,
                        None => return Err(bad),
                    }
                    i += 1;
                }
                ChunkState::Extension => {
                    self.line += 1;
                    if self.line > CHUNK_LINE_MAX {
                        return Err(bad);
                    }
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b'\n' {
                        return Err(bad);
                    }
                    i += 1;
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(bad);
                    }
                    i += 1;
                    self.line = 0;
                    if self.size == 0 {
                        self.state = ChunkState::TrailerStart;
                    } else {
                        self.total = self.total.saturating_add(self.size);
                        if self.total > limit as u64 {
                            return Err(RequestError::PayloadTooLarge);
                        }
                        self.state = ChunkState::Data;
                    }
                }
                ChunkState::Data => {
                    let n = (input.len() - i).min(self.size as usize);
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(bad);
                    }
                    i += 1;
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(bad);
                    }
                    i += 1;
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => {
                    i += 1;
                    if b == b'\r' {
                        self.state = ChunkState::EndLf;
                    } else {
                        self.line += 1;
                        self.state = ChunkState::Trailer;
                    }
                }
                ChunkState::Trailer => {
                    self.line += 1;
                    if self.line > CHUNK_LINE_MAX {
                        return Err(RequestError::HeadersTooLarge);
                    }
                    i += 1;
                    if b == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(bad);
                    }
                    i += 1;
                    self.state = ChunkState::Done;
                }
                ChunkState::Done => break,
            }
        }
        Ok(i)
    }
}

/// A whole request: head and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The head.
    pub head: RequestHead,
    /// The body (empty when there is none).
    pub body: Vec<u8>,
}

impl Request {
    /// The method.
    pub fn method(&self) -> Method {
        self.head.method
    }

    /// The path (the target up to `?`).
    pub fn path(&self) -> &str {
        self.head.path()
    }

    /// The query string, if any.
    pub fn query(&self) -> Option<&str> {
        self.head.query()
    }

    /// The first value of a header, if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.headers.get_str(name)
    }
}
