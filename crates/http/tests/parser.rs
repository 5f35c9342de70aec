//! The request head parser, the framing rules, the chunked decoder and the
//! response writer, on byte slices: valid requests, every malformed case
//! with its status, every split point, and a seeded fuzz loop.

mod common;

use skiff_http::request::{BodyLength, ChunkedDecoder, Parsed, parse_head};
use skiff_http::response::{WriteContext, write_head};
use skiff_http::{Body, Limits, Method, RequestError, RequestHead, Response, Status, Version};

fn parse(bytes: &[u8]) -> Result<Parsed, RequestError> {
    parse_head(bytes, &Limits::default())
}

#[track_caller]
fn complete(bytes: &[u8]) -> (RequestHead, usize) {
    match parse(bytes) {
        Ok(Parsed::Complete(head, used)) => (head, used),
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
    }
}

#[track_caller]
fn refused(bytes: &[u8]) -> RequestError {
    match parse(bytes) {
        Err(e) => e,
        other => panic!("{:?} was not refused: {other:?}", String::from_utf8_lossy(bytes)),
    }
}

/// What the server would answer for `bytes` on its own: the head's error,
/// or the chunked body's.
fn refusal(bytes: &[u8], limits: &Limits) -> Result<(), RequestError> {
    match parse_head(bytes, limits)? {
        Parsed::Partial => Ok(()),
        Parsed::Complete(head, used) => {
            if head.body == BodyLength::Chunked {
                let mut out = Vec::new();
                ChunkedDecoder::new().decode(&bytes[used..], &mut out, limits.body)?;
            }
            Ok(())
        }
    }
}

// Valid requests.

#[test]
fn a_get_with_headers() {
    let req = b"GET /index.html?lang=en HTTP/1.1\r\nHost: example.org\r\nUser-Agent: test\r\n\
                Accept: */*\r\nX-Empty:\r\nX-Spaces:   padded value  \r\n\r\n";
    let (head, used) = complete(req);
    assert_eq!(used, req.len());
    assert_eq!(head.method, Method::Get);
    assert_eq!(head.version, Version::Http11);
    assert_eq!(head.target, "/index.html?lang=en");
    assert_eq!(head.path(), "/index.html");
    assert_eq!(head.query(), Some("lang=en"));
    assert_eq!(head.body, BodyLength::None);
    assert!(head.keep_alive);
    assert!(!head.expect_continue);
    assert_eq!(head.headers.len(), 5);
    assert_eq!(head.headers.get_str("HOST"), Some("example.org"));
    assert_eq!(head.headers.get_str("user-agent"), Some("test"));
    assert_eq!(head.headers.get("x-empty"), Some(&b""[..]));
    assert_eq!(head.headers.get_str("x-spaces"), Some("padded value"));
    let names: Vec<&str> = head.headers.iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["Host", "User-Agent", "Accept", "X-Empty", "X-Spaces"], "order and spelling are kept");
}

#[test]
fn every_known_method_parses() {
    for m in [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Options,
        Method::Patch,
        Method::Trace,
        Method::Connect,
    ] {
        let target = match m {
            Method::Connect => "example.org:443",
            Method::Options => "*",
            _ => "/",
        };
        let req = format!("{m} {target} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        let (head, _) = complete(req.as_bytes());
        assert_eq!(head.method, m);
        assert_eq!(head.target, target);
        assert_eq!(Method::from_token(m.as_str()), Some(m));
    }
}

#[test]
fn keep_alive_rules() {
    let cases: [(&str, bool); 10] = [
        ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", true),
        ("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false),
        ("GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\n\r\n", false),
        ("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n", false),
        ("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", false),
        ("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n", true),
        ("GET / HTTP/1.0\r\n\r\n", false),
        ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
        ("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
        ("GET / HTTP/1.0\r\nConnection: x, keep-alive\r\n\r\n", true),
    ];
    for (req, keep) in cases {
        assert_eq!(complete(req.as_bytes()).0.keep_alive, keep, "{req:?}");
    }
}

#[test]
fn http10_needs_no_host() {
    let (head, _) = complete(b"GET /x HTTP/1.0\r\n\r\n");
    assert_eq!(head.version, Version::Http10);
    assert!(head.headers.is_empty());
    // And may have one.
    assert!(complete(b"GET /x HTTP/1.0\r\nHost: a\r\n\r\n").0.headers.contains("host"));
}

#[test]
fn absolute_form_targets() {
    let (head, _) = complete(b"GET http://example.org:8080/a/b?x=1#frag HTTP/1.1\r\nHost: example.org\r\n\r\n");
    assert_eq!(head.path(), "/a/b");
    assert_eq!(head.query(), Some("x=1"));
    let (head, _) = complete(b"GET http://example.org HTTP/1.1\r\nHost: example.org\r\n\r\n");
    assert_eq!(head.path(), "/");
    assert_eq!(head.query(), None);
    let (head, _) = complete(b"GET https://example.org?q HTTP/1.1\r\nHost: example.org\r\n\r\n");
    assert_eq!(head.query(), Some("q"));
    let (head, _) = complete(b"GET /p? HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!((head.path(), head.query()), ("/p", Some("")));
    let (head, _) = complete(b"GET /p?a=1?b=2 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!((head.path(), head.query()), ("/p", Some("a=1?b=2")));
    let (head, _) = complete(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(head.path(), "*");
}

#[test]
fn a_url_in_the_query_is_not_the_path() {
    let (head, _) = complete(b"GET /login?next=https://example.org/account HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(head.path(), "/login");
    assert_eq!(head.query(), Some("next=https://example.org/account"));
    let (head, _) = complete(b"GET /go/http://x/y HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(head.path(), "/go/http://x/y");
}

#[test]
fn leading_empty_lines_are_skipped() {
    for prefix in ["\r\n", "\r\n\r\n", "\n", "\r\n\n", "\r\n\r\n\r\n\n\n"] {
        let req = format!("{prefix}GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let (head, used) = complete(req.as_bytes());
        assert_eq!(used, req.len(), "{prefix:?}");
        assert_eq!(head.target, "/");
    }
    // Only empty lines so far: wait for more.
    assert_eq!(parse(b"\r\n\r\n"), Ok(Parsed::Partial));
    assert_eq!(parse(b"\r"), Ok(Parsed::Partial));
    assert_eq!(parse(b""), Ok(Parsed::Partial));
}

#[test]
fn empty_lines_before_a_request_are_bounded() {
    // The server keeps what it has read until a head completes, so an
    // endless run of empty lines must be refused, not buffered.
    let limits = common::limits();
    let lines = "\r\n".repeat(limits.head / 2);
    assert_eq!(parse_head(lines.as_bytes(), &limits), Ok(Parsed::Partial));
    for line in ["\r\n", "\n"] {
        let lines = line.repeat(limits.head / line.len() + 2);
        assert_eq!(parse_head(lines.as_bytes(), &limits), Err(RequestError::HeadersTooLarge), "{line:?}");
    }
}

#[test]
fn bare_lf_line_endings_are_accepted_in_the_head() {
    // RFC 9112 section 2.2 lets a recipient accept a bare LF; httparse does.
    let req = b"GET / HTTP/1.1\nHost: a\nX: y\n\n";
    let (head, used) = complete(req);
    assert_eq!(used, req.len());
    assert_eq!(head.headers.get_str("x"), Some("y"));
}

#[test]
fn the_head_ends_where_the_body_starts() {
    let req = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n";
    let (head, used) = complete(req);
    assert_eq!(head.body, BodyLength::Exact(5));
    assert_eq!(&req[used..used + 5], b"hello");
}

#[test]
fn framing() {
    let cases: [(&str, BodyLength); 11] = [
        ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", BodyLength::None),
        ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n", BodyLength::Exact(3)),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", BodyLength::None),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n", BodyLength::Exact(7)),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", BodyLength::Exact(5)),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n", BodyLength::Exact(5)),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4096\r\n\r\n", BodyLength::Exact(4096)),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", BodyLength::Chunked),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n", BodyLength::Chunked),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked ,\r\n\r\n", BodyLength::Chunked),
        ("DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n", BodyLength::None),
    ];
    let limits = common::limits();
    for (req, body) in cases {
        match parse_head(req.as_bytes(), &limits) {
            Ok(Parsed::Complete(head, _)) => assert_eq!(head.body, body, "{req:?}"),
            other => panic!("{req:?}: {other:?}"),
        }
    }
}

#[test]
fn expect_continue() {
    let (head, _) = complete(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-Continue\r\n\r\n");
    assert!(head.expect_continue);
    let (head, _) = complete(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: something\r\n\r\n");
    assert!(!head.expect_continue);
    let (head, _) = complete(b"POST / HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
    assert!(!head.expect_continue, "HTTP/1.0 clients get no 1xx");
}

#[test]
fn every_prefix_of_a_valid_request_is_partial() {
    let requests: [&[u8]; 4] = [
        b"GET /index.html?x=1 HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        b"\r\nPOST /echo HTTP/1.0\r\nContent-Length: 5\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-Empty:\r\n\r\n",
    ];
    for req in requests {
        let (whole, used) = complete(req);
        assert_eq!(used, req.len());
        for cut in 0..req.len() {
            assert_eq!(parse(&req[..cut]), Ok(Parsed::Partial), "{:?} cut at {cut}", String::from_utf8_lossy(req));
        }
        // With more bytes behind it, the head is the same.
        let mut more = req.to_vec();
        more.extend_from_slice(b"hello\r\nGET / HTTP/1.1\r\n");
        assert_eq!(parse(&more), Ok(Parsed::Complete(whole, used)));
    }
}

// Malformed requests.

#[test]
fn every_malformed_request_gets_its_status() {
    let limits = common::limits();
    let mut wrong = Vec::new();
    for case in common::malformed() {
        match refusal(&case.bytes, &limits) {
            Err(e) if e.status().0 == case.status => {}
            other => wrong.push(format!("{}: expected {}, got {other:?}", case.name, case.status)),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_prefix_of_a_malformed_request_is_partial_or_refused_the_same_way() {
    let limits = common::limits();
    for case in common::malformed() {
        let head_end = match parse_head(&case.bytes, &limits) {
            Ok(Parsed::Complete(_, used)) => used,
            _ => case.bytes.len(),
        };
        for cut in 0..head_end {
            match parse_head(&case.bytes[..cut], &limits) {
                Ok(Parsed::Partial) => {}
                Err(e) if e.status().0 == case.status => {}
                other => panic!("{} cut at {cut}: {other:?}", case.name),
            }
        }
    }
}

#[test]
fn the_errors_name_their_status() {
    let cases = [
        (RequestError::BadRequest("x"), Status::BAD_REQUEST),
        (RequestError::LengthRequired, Status::LENGTH_REQUIRED),
        (RequestError::PayloadTooLarge, Status::PAYLOAD_TOO_LARGE),
        (RequestError::UriTooLong, Status::URI_TOO_LONG),
        (RequestError::HeadersTooLarge, Status::HEADERS_TOO_LARGE),
        (RequestError::NotImplemented("BREW".into()), Status::NOT_IMPLEMENTED),
        (RequestError::VersionNotSupported, Status::VERSION_NOT_SUPPORTED),
        (RequestError::Timeout, Status::REQUEST_TIMEOUT),
    ];
    let codes: Vec<u16> = cases.iter().map(|(e, _)| e.status().0).collect();
    assert_eq!(codes, [400, 411, 413, 414, 431, 501, 505, 408]);
    for (e, status) in cases {
        assert_eq!(e.status(), status);
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn specific_refusals() {
    assert_eq!(refused(b"BREW /pot HTTP/1.1\r\nHost: a\r\n\r\n"), RequestError::NotImplemented("BREW".into()));
    assert!(matches!(
        refused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
        RequestError::NotImplemented(what) if what.contains("gzip")
    ));
    assert_eq!(refused(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"), RequestError::VersionNotSupported);
    assert_eq!(refused(b"POST / HTTP/1.1\r\nHost: a\r\n\r\n"), RequestError::LengthRequired);
    // The method is refused before the missing Host is noticed.
    assert_eq!(refused(b"BREW / HTTP/1.1\r\n\r\n").status(), Status::NOT_IMPLEMENTED);
}

#[test]
fn limits_are_inclusive() {
    let limits = Limits { request_line: 32, head: 64, headers: 2, body: 10 };
    let parse = |s: &str| parse_head(s.as_bytes(), &limits);
    // A request line of 32 bytes with its CR passes; one more does not.
    let line = format!("GET /{} HTTP/1.0\r", "a".repeat(32 - 15));
    assert_eq!(line.len(), 32);
    assert!(matches!(parse(&format!("{line}\n\r\n")), Ok(Parsed::Complete(..))));
    let line = format!("GET /{} HTTP/1.0\r", "a".repeat(33 - 15));
    assert_eq!(parse(&format!("{line}\n\r\n")), Err(RequestError::UriTooLong));
    // Two fields pass, three do not.
    assert!(matches!(parse("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n"), Ok(Parsed::Complete(..))));
    assert_eq!(parse("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nY: 2\r\n\r\n"), Err(RequestError::HeadersTooLarge));
    // A head of exactly 64 bytes passes.
    let head = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "v".repeat(64 - 32));
    assert_eq!(head.len(), 64);
    assert!(matches!(parse(&head), Ok(Parsed::Complete(..))));
    let head = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "v".repeat(65 - 32));
    assert_eq!(parse(&head), Err(RequestError::HeadersTooLarge));
    // A body of exactly the limit passes.
    assert!(matches!(parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n"), Ok(Parsed::Complete(..))));
    assert_eq!(parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n"), Err(RequestError::PayloadTooLarge));
}

// The chunked decoder.

/// Decodes `body` in one call.
fn decode_all(body: &[u8], limit: usize) -> Result<(Vec<u8>, usize, bool), RequestError> {
    let mut d = ChunkedDecoder::new();
    let mut out = Vec::new();
    let used = d.decode(body, &mut out, limit)?;
    Ok((out, used, d.is_done()))
}

/// Decodes `body` in pieces cut at `cuts`, the way the server feeds it.
fn decode_split(body: &[u8], cuts: &[usize], limit: usize) -> Result<(Vec<u8>, usize, bool), RequestError> {
    let mut d = ChunkedDecoder::new();
    let mut out = Vec::new();
    let mut used = 0;
    let mut start = 0;
    for &end in cuts.iter().chain([&body.len()]) {
        if end < start || d.is_done() {
            continue;
        }
        let n = d.decode(&body[start..end], &mut out, limit)?;
        assert!(n <= end - start);
        if !d.is_done() {
            assert_eq!(n, end - start, "the decoder takes everything before the end of the body");
        }
        used += n;
        start = end;
    }
    Ok((out, used, d.is_done()))
}

#[test]
fn chunked_bodies_decode() {
    let cases: [(&[u8], &[u8]); 8] = [
        (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
        (b"0\r\n\r\n", b""),
        (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        (b"a\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        (b"1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n", b"abcdefghijklmnopqrstuvwxyz"),
        (b"1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0000\r\n\r\n", b"abcdefghijklmnopqrstuvwxyz"),
        (b"0000000000000003\r\nabc\r\n0\r\n\r\n", b"abc"),
        (b"3;name=value;flag\r\nabc\r\n2 ; x=\"quoted;\"\r\nde\r\n0;last\r\n\r\n", b"abcde"),
    ];
    for (body, expected) in cases {
        let (out, used, done) = decode_all(body, 1 << 20).unwrap_or_else(|e| panic!("{body:?}: {e}"));
        assert_eq!(out, expected, "{:?}", String::from_utf8_lossy(body));
        assert_eq!(used, body.len());
        assert!(done);
    }
}

#[test]
fn chunked_trailers_are_read_and_dropped() {
    let body = b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\nGET / HTTP/1.1\r\n";
    let (out, used, done) = decode_all(body, 100).unwrap();
    assert_eq!(out, b"hello");
    assert!(done);
    assert_eq!(&body[used..], b"GET / HTTP/1.1\r\n", "the decoder stops at the end of the body");
}

#[test]
fn chunked_decoding_split_at_every_byte() {
    let body: &[u8] = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\n";
    let (whole, used, done) = decode_all(body, 1000).unwrap();
    assert_eq!(whole, b"Wikipedia in\r\n\r\nchunks.");
    assert_eq!((used, done), (body.len(), true));
    for cut in 0..=body.len() {
        assert_eq!(decode_split(body, &[cut], 1000), Ok((whole.clone(), used, true)), "cut at {cut}");
    }
    for a in 0..body.len() {
        for b in a..body.len() {
            assert_eq!(decode_split(body, &[a, b], 1000), Ok((whole.clone(), used, true)), "cut at {a} and {b}");
        }
    }
    let every: Vec<usize> = (0..body.len()).collect();
    assert_eq!(decode_split(body, &every, 1000), Ok((whole, used, true)));
}

#[test]
fn an_unfinished_chunked_body_is_not_done() {
    let body = b"5\r\nhello\r\n0\r\n";
    let (out, used, done) = decode_all(body, 100).unwrap();
    assert_eq!((out.as_slice(), used, done), (&b"hello"[..], body.len(), false));
}

#[test]
fn chunked_size_limits() {
    let exact = b"4\r\nabcd\r\n6\r\nefghij\r\n0\r\n\r\n";
    assert!(decode_all(exact, 10).is_ok());
    assert_eq!(decode_all(exact, 9), Err(RequestError::PayloadTooLarge));
    // 16 hex digits fit; a 17th is refused before it can overflow.
    assert_eq!(decode_all(b"ffffffffffffffff\r\n", usize::MAX), decode_all(b"ffffffffffffffff\r\n", usize::MAX));
    assert_eq!(decode_all(b"10000000000000000\r\n", usize::MAX), Err(RequestError::PayloadTooLarge));
    assert_eq!(decode_all(b"fffffffffffffffffffffff", usize::MAX), Err(RequestError::PayloadTooLarge));
    // A long extension or trailer is refused.
    let ext = format!("1;{}\r\n", "e".repeat(5000));
    assert_eq!(decode_all(ext.as_bytes(), 100).map(|_| ()).unwrap_err().status(), Status::BAD_REQUEST);
    let trailer = format!("0\r\nX: {}", "t".repeat(5000));
    assert_eq!(decode_all(trailer.as_bytes(), 100).map(|_| ()).unwrap_err().status(), Status::HEADERS_TOO_LARGE);
}

#[test]
fn endless_trailers_are_refused() {
    // Each line is short, but the trailer section must still end somewhere.
    let mut body = b"0\r\n".to_vec();
    for _ in 0..10_000 {
        body.extend_from_slice(b"X-T: 0123456789\r\n");
    }
    assert_eq!(decode_all(&body, 100).map(|_| ()), Err(RequestError::HeadersTooLarge));
}

// The response writer.

const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

fn written(response: &Response, method: Method, version: Version, keep_alive: bool) -> (String, bool) {
    let mut out = Vec::new();
    let ctx = WriteContext { method, version, keep_alive, date: DATE };
    let body = write_head(response, &ctx, &mut out);
    (String::from_utf8(out).expect("the head is text"), body)
}

#[test]
fn the_writer_writes_a_complete_head() {
    let r = Response::text(Status::CREATED, "made").header("x-id", &b"7"[..]);
    let (head, body) = written(&r, Method::Post, Version::Http11, true);
    assert_eq!(
        head,
        format!(
            "HTTP/1.1 201 Created\r\ncontent-type: text/plain; charset=utf-8\r\nx-id: 7\r\ndate: {DATE}\r\n\
             server: skiff\r\ncontent-length: 4\r\n\r\n"
        )
    );
    assert!(body);
}

#[test]
fn the_writer_keeps_the_services_date_and_server() {
    let r = Response::new(Status::OK).header("Date", &b"yesterday"[..]).header("Server", &b"mine"[..]);
    let (head, _) = written(&r, Method::Get, Version::Http11, true);
    assert!(head.contains("Date: yesterday\r\n") && !head.contains(DATE), "{head}");
    assert!(head.contains("Server: mine\r\n") && !head.contains("skiff"), "{head}");
    let mut out = Vec::new();
    let ctx = WriteContext { method: Method::Get, version: Version::Http11, keep_alive: true, date: "" };
    write_head(&Response::new(Status::OK), &ctx, &mut out);
    assert!(!String::from_utf8(out).unwrap().contains("date:"), "an empty date is left out");
}

#[test]
fn the_writer_frames_bodies() {
    // HEAD: the length of the body it would have had, no body.
    let (head, body) = written(&Response::text(Status::OK, "12345"), Method::Head, Version::Http11, true);
    assert!(head.contains("content-length: 5\r\n") && !body, "{head}");
    let mut hinted = Response::new(Status::OK);
    hinted.length_hint = Some(99);
    let (head, _) = written(&hinted, Method::Head, Version::Http11, true);
    assert!(head.contains("content-length: 99\r\n"), "{head}");
    let (head, body) = written(&hinted, Method::Get, Version::Http11, true);
    assert!(head.contains("content-length: 0\r\n") && body, "a hint is not a GET body: {head}");
    // 304 with a hint: the length of the full response; without: none.
    let mut nm = Response::new(Status::NOT_MODIFIED).header("etag", &b"\"x\""[..]);
    let (head, body) = written(&nm, Method::Get, Version::Http11, true);
    assert!(!head.contains("content-length") && head.contains("etag: \"x\"\r\n") && !body, "{head}");
    nm.length_hint = Some(10);
    let (head, _) = written(&nm, Method::Get, Version::Http11, true);
    assert!(head.contains("content-length: 10\r\n"), "{head}");
    // 1xx and 204: no length, no body, whatever the service set.
    for status in [Status::NO_CONTENT, Status::CONTINUE] {
        let r = Response::text(status, "ignored");
        let (head, body) = written(&r, Method::Get, Version::Http11, true);
        assert!(!head.contains("content-length") && !body, "{head}");
    }
    // A static body.
    let r = Response::new(Status::OK).body(Body::Static(b"static"));
    let (head, body) = written(&r, Method::Get, Version::Http11, true);
    assert!(head.contains("content-length: 6\r\n") && body, "{head}");
}

#[test]
fn the_writer_owns_the_framing_headers() {
    let r = Response::text(Status::OK, "abc")
        .header("Content-Length", &b"1000"[..])
        .header("Transfer-Encoding", &b"chunked"[..])
        .header("Connection", &b"upgrade"[..]);
    let (head, _) = written(&r, Method::Get, Version::Http11, true);
    assert!(head.contains("content-length: 3\r\n"), "{head}");
    assert!(!head.contains("1000"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding"), "a body with both framings: {head}");
    assert!(!head.to_ascii_lowercase().contains("connection"), "{head}");
}

#[test]
fn the_writer_announces_the_connection() {
    let r = Response::new(Status::OK);
    let (head, _) = written(&r, Method::Get, Version::Http11, false);
    assert!(head.contains("connection: close\r\n"), "{head}");
    let (head, _) = written(&r, Method::Get, Version::Http10, true);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("connection: keep-alive\r\n"), "{head}");
    let (head, _) = written(&r, Method::Get, Version::Http10, false);
    assert!(head.contains("connection: close\r\n"), "{head}");
    let (head, _) = written(&r, Method::Get, Version::Http11, true);
    assert!(!head.contains("connection"), "{head}");
}

#[test]
fn the_writer_drops_fields_that_would_split_the_head() {
    let r = Response::new(Status::OK)
        .header("x-a", &b"ok\r\nset-cookie: a=b"[..])
        .header("x-b", &b"ok\nset-cookie: a=b"[..])
        .header("x-c\r\nset-cookie", &b"a=b"[..])
        .header("x-d", &b"fine"[..]);
    let (head, _) = written(&r, Method::Get, Version::Http11, true);
    assert!(!head.contains("set-cookie"), "{head}");
    assert!(head.contains("x-d: fine\r\n"), "{head}");
    assert_eq!(head.matches("\r\n\r\n").count(), 1);
    assert!(head.ends_with("\r\n\r\n"));
}

#[test]
fn unknown_statuses_still_have_a_reason() {
    let (head, _) = written(&Response::new(Status(299)), Method::Get, Version::Http11, true);
    assert!(head.starts_with("HTTP/1.1 299 Unknown\r\n"), "{head}");
    for code in [100, 200, 301, 304, 400, 404, 405, 408, 411, 413, 414, 416, 431, 500, 501, 503, 505] {
        assert_ne!(Status(code).reason(), "Unknown", "{code}");
    }
}

// A seeded fuzz loop: no input panics, and the parser and decoder agree
// with themselves however the input is cut.

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Bytes that matter to HTTP framing, for mutations.
const INTERESTING: &[u8] = b"\r\n :;,\t\0\x7f\xff0123456789abcdefABCDEF-+/?#%*\"";

fn mutate(rng: &mut XorShift, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(6) {
        let at = if v.is_empty() { 0 } else { rng.below(v.len() + 1) };
        match rng.below(6) {
            0 if at < v.len() => v[at] = rng.next() as u8,
            1 if at < v.len() => v[at] = *rng.pick(INTERESTING),
            2 => v.insert(at, *rng.pick(INTERESTING)),
            3 if at < v.len() => {
                v.remove(at);
            }
            4 => {
                let len = rng.below(v.len().min(40) + 1);
                let from = rng.below(v.len().saturating_sub(len) + 1);
                let piece = v[from..from + len].to_vec();
                v.splice(at..at, piece);
            }
            _ => v.truncate(at),
        }
    }
    v
}

#[test]
fn fuzz_the_head_parser() {
    let seeds: Vec<Vec<u8>> = [
        &b"GET /index.html?x=1 HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\n\r\n"[..],
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
        b"PUT /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
        b"\r\nGET http://h:1/p HTTP/1.1\nHost: h\n\n",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n",
    ]
    .iter()
    .map(|s| s.to_vec())
    .chain(common::malformed().into_iter().map(|c| c.bytes))
    .collect();
    let small = Limits { request_line: 40, head: 80, headers: 3, body: 16 };
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    for _ in 0..40_000 {
        let input = if rng.below(10) == 0 {
            (0..rng.below(120)).map(|_| rng.next() as u8).collect()
        } else {
            let seed = rng.pick(&seeds).clone();
            mutate(&mut rng, &seed)
        };
        for limits in [Limits::default(), common::limits(), small] {
            let whole = parse_head(&input, &limits);
            if let Ok(Parsed::Complete(head, used)) = &whole {
                assert!(*used > 0 && *used <= input.len());
                assert!(!head.target.is_empty());
                assert!(*used <= limits.head + 2 * input.iter().take_while(|&&b| b == b'\r' || b == b'\n').count());
                if let BodyLength::Exact(n) = head.body {
                    assert!(n as usize <= limits.body);
                }
            }
            // A prefix never disagrees with the whole. (Which error is
            // found first may depend on how much has arrived: a head over
            // the limit is 431 before a bad byte past the limit is seen.)
            let cut = rng.below(input.len() + 1);
            match (parse_head(&input[..cut], &limits), &whole) {
                (Ok(Parsed::Partial), _) | (Err(_), Err(_)) => {}
                (Ok(Parsed::Complete(h, n)), Ok(Parsed::Complete(wh, wn))) => assert_eq!((&h, n), (wh, *wn)),
                (prefix, whole) => {
                    let input = String::from_utf8_lossy(&input);
                    panic!("{input:?} cut at {cut}: {prefix:?}, but whole: {whole:?}")
                }
            }
        }
    }
}

#[test]
fn fuzz_the_chunked_decoder() {
    let seeds: [&[u8]; 4] = [
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\n",
        b"A\r\n0123456789\r\n0\r\n\r\n",
        b"0\r\n\r\n",
    ];
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..40_000 {
        let input = if rng.below(10) == 0 {
            (0..rng.below(64)).map(|_| *rng.pick(INTERESTING)).collect()
        } else {
            let seed = *rng.pick(&seeds);
            mutate(&mut rng, seed)
        };
        let limit = *rng.pick(&[0usize, 5, 11, 1 << 20]);
        let whole = decode_all(&input, limit);
        if let Ok((out, used, _)) = &whole {
            assert!(out.len() <= limit && *used <= input.len());
        }
        // Cut anywhere, the decoder comes to the same answer.
        let mut cuts: Vec<usize> = (0..rng.below(4)).map(|_| rng.below(input.len() + 1)).collect();
        cuts.sort_unstable();
        let split = decode_split(&input, &cuts, limit);
        match (&whole, &split) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{input:?} cut at {cuts:?}"),
            (Err(a), Err(b)) => assert_eq!(a.status(), b.status(), "{input:?} cut at {cuts:?}"),
            _ => panic!("{input:?} cut at {cuts:?}: {whole:?} and {split:?}"),
        }
    }
}
