//! Responses and the writer that turns one into bytes (no I/O).

use crate::headers::Headers;
use crate::request::{Method, Version};
use crate::status::Status;
use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

/// A response body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Body {
    /// No body.
    #[default]
    Empty,
    /// Bytes that live as long as the image (content baked into it): sent
    /// without a copy.
    Static(&'static [u8]),
    /// Bytes made for this response.
    Bytes(Vec<u8>),
}

impl Body {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Body::Empty => &[],
            Body::Static(b) => b,
            Body::Bytes(b) => b,
        }
    }

    /// The length.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A response: status, headers, body. `Content-Length`, `Date`,
/// `Server` and `Connection` are added by the writer (a service's own
/// `Content-Length`, `Transfer-Encoding` and `Connection` are dropped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status.
    pub status: Status,
    /// Header fields.
    pub headers: Headers,
    /// The body.
    pub body: Body,
    /// For a response to HEAD, or a 304: the `Content-Length` the full
    /// response would have had, if known.
    pub length_hint: Option<u64>,
}

impl Response {
    /// An empty response with `status`.
    pub fn new(status: Status) -> Response {
        Response { status, headers: Headers::new(), body: Body::Empty, length_hint: None }
    }

    /// A `text/plain` response.
    pub fn text(status: Status, text: impl Into<String>) -> Response {
        Response::new(status)
            .header("content-type", &b"text/plain; charset=utf-8"[..])
            .body(Body::Bytes(text.into().into_bytes()))
    }

    /// A `text/html` response.
    pub fn html(status: Status, html: impl Into<String>) -> Response {
        Response::new(status)
            .header("content-type", &b"text/html; charset=utf-8"[..])
            .body(Body::Bytes(html.into().into_bytes()))
    }

    /// A redirect to `location`.
    pub fn redirect(status: Status, location: &str) -> Response {
        let mut r = Response::text(status, alloc::format!("see {location}\n"));
        r.headers.set("location", location.as_bytes().to_vec());
        r
    }

    /// The standard response for a status, with a one-line text body.
    pub fn error(status: Status) -> Response {
        Response::text(status, alloc::format!("{status}\n"))
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<Cow<'static, str>>, value: impl Into<Cow<'static, [u8]>>) -> Response {
        self.headers.append(name, value);
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: Body) -> Response {
        self.body = body;
        self
    }
}

/// What the writer needs to know about the exchange.
#[derive(Clone, Copy, Debug)]
pub struct WriteContext<'a> {
    /// The request's method (HEAD gets no body).
    pub method: Method,
    /// The request's version (the response uses the same major version;
    /// HTTP/1.0 clients get HTTP/1.1 responses as RFC 9110 allows, with
    /// explicit keep-alive).
    pub version: Version,
    /// Whether the connection stays open.
    pub keep_alive: bool,
    /// The `Date` value.
    pub date: &'a str,
}

/// Writes the status line and headers of `response` into `out`, and
/// returns whether the body is to be sent after them.
pub fn write_head(response: &Response, ctx: &WriteContext<'_>, out: &mut Vec<u8>) -> bool {
    let status = response.status;
    let mut line = String::new();
    let _ = write!(line, "HTTP/1.1 {} {}\r\n", status.0, status.reason());
    out.extend_from_slice(line.as_bytes());
    for (name, value) in response.headers.iter() {
        let framing = ["content-length", "transfer-encoding", "connection"];
        if framing.iter().any(|f| name.eq_ignore_ascii_case(f)) {
            continue;
        }
        // Never let a value end the header early.
        if value.iter().any(|&b| b == b'\r' || b == b'\n') || name.bytes().any(|b| b == b'\r' || b == b'\n') {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !response.headers.contains("date") && !ctx.date.is_empty() {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(ctx.date.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !response.headers.contains("server") {
        out.extend_from_slice(b"server: skiff\r\n");
    }
    let no_body = status.has_no_body();
    if !no_body || status == Status::NOT_MODIFIED {
        let length = match (&response.body, response.length_hint) {
            (Body::Empty, Some(hint)) if ctx.method == Method::Head || status == Status::NOT_MODIFIED => Some(hint),
            (body, _) if status != Status::NOT_MODIFIED => Some(body.len() as u64),
            _ => None,
        };
        if let Some(n) = length {
            let mut num = String::new();
            let _ = write!(num, "content-length: {n}\r\n");
            out.extend_from_slice(num.as_bytes());
        }
    }
    if !ctx.keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if ctx.version == Version::Http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    !no_body && ctx.method != Method::Head
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(method: Method, keep_alive: bool) -> WriteContext<'static> {
        WriteContext { method, version: Version::Http11, keep_alive, date: "Sun, 06 Nov 1994 08:49:37 GMT" }
    }

    fn head(r: &Response, c: &WriteContext<'_>) -> (String, bool) {
        let mut out = Vec::new();
        let body = write_head(r, c, &mut out);
        (String::from_utf8(out).unwrap(), body)
    }

    #[test]
    fn a_plain_response() {
        let r = Response::text(Status::OK, "hi");
        let (h, body) = head(&r, &ctx(Method::Get, true));
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             server: skiff\r\ncontent-length: 2\r\n\r\n"
        );
        assert!(body);
    }

    #[test]
    fn head_gets_the_length_but_no_body() {
        let mut r = Response::new(Status::OK);
        r.length_hint = Some(1234);
        let (h, body) = head(&r, &ctx(Method::Head, true));
        assert!(h.contains("content-length: 1234\r\n"), "{h}");
        assert!(!body);
        let (h, body) = head(&Response::text(Status::OK, "abc"), &ctx(Method::Head, true));
        assert!(h.contains("content-length: 3\r\n"), "{h}");
        assert!(!body);
    }

    #[test]
    fn no_content_and_not_modified_have_no_body() {
        let (h, body) = head(&Response::new(Status::NO_CONTENT), &ctx(Method::Get, true));
        assert!(!h.contains("content-length"), "{h}");
        assert!(!body);
        let (h, body) = head(&Response::new(Status::NOT_MODIFIED), &ctx(Method::Get, true));
        assert!(!h.contains("content-length"), "{h}");
        assert!(!body);
    }

    #[test]
    fn closing_and_http10_keep_alive_are_announced() {
        let (h, _) = head(&Response::new(Status::OK), &ctx(Method::Get, false));
        assert!(h.contains("connection: close\r\n"), "{h}");
        let c = WriteContext { version: Version::Http10, ..ctx(Method::Get, true) };
        let (h, _) = head(&Response::new(Status::OK), &c);
        assert!(h.contains("connection: keep-alive\r\n"), "{h}");
    }

    #[test]
    fn header_values_cannot_split_the_response() {
        let r = Response::new(Status::OK).header("x-evil", &b"a\r\nset-cookie: x"[..]).header("x-fine", &b"ok"[..]);
        let (h, _) = head(&r, &ctx(Method::Get, true));
        assert!(!h.contains("set-cookie"), "{h}");
        assert!(h.contains("x-fine: ok\r\n"), "{h}");
        // The service cannot set its own framing headers.
        let r = Response::text(Status::OK, "abc").header("content-length", &b"99"[..]);
        let (h, _) = head(&r, &ctx(Method::Get, true));
        assert!(h.contains("content-length: 3\r\n") && !h.contains("content-length: 99"), "{h}");
    }
}
