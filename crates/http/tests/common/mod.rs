//! Requests the server must refuse, shared by the parser tests (on bytes)
//! and the server tests (over a connection).

use skiff_http::Limits;

/// Small limits, so that the over-limit cases stay small.
pub fn limits() -> Limits {
    Limits { request_line: 256, head: 1024, headers: 16, body: 4096 }
}

/// A malformed request: what is wrong with it, its bytes (head and, for
/// body errors, the body), and the status it gets under [`limits`].
pub struct Malformed {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub status: u16,
}

fn case(name: &'static str, bytes: impl Into<Vec<u8>>, status: u16) -> Malformed {
    Malformed { name, bytes: bytes.into(), status }
}

/// A chunked POST with `body` as its (raw) body.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut r = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    r.extend_from_slice(body);
    r
}

/// Every way a request can be refused on its bytes alone.
pub fn malformed() -> Vec<Malformed> {
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(300));
    let long_target_cut = format!("GET /{}", "a".repeat(300));
    let many_headers: String = (0..17).map(|i| format!("X-{i}: v\r\n")).collect();
    let many_headers = format!("GET / HTTP/1.1\r\nHost: a\r\n{many_headers}\r\n");
    let big_header = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "v".repeat(1100));
    let big_header_cut = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}", "v".repeat(1100));
    let mut over_in_pieces = chunked(b"");
    for _ in 0..2 {
        over_in_pieces.extend_from_slice(b"800\r\n");
        over_in_pieces.extend_from_slice(&[b'x'; 0x800]);
        over_in_pieces.extend_from_slice(b"\r\n");
    }
    over_in_pieces.extend_from_slice(b"1\r\n");
    vec![
        // 400: the request line.
        case("no version", "GET /\r\n\r\n", 400),
        case("lowercase version", "GET / http/1.1\r\nHost: a\r\n\r\n", 400),
        case("version without digits", "GET / HTTP/x.y\r\nHost: a\r\n\r\n", 400),
        case("junk after the version", "GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", 400),
        case("two spaces after the method", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        case("space in the target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        case("target not a path", "GET index.html HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        case("bad character in the method", "G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        case("method only", "GET\r\n\r\n", 400),
        case("control character in the target", "GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        case("bare CR ends the request line", "GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
        // 400: header fields.
        case("space in a header name", "GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", 400),
        case("space before the colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        case("header without a colon", "GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400),
        case("empty header name", "GET / HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n", 400),
        case("obsolete line folding", "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
        case("control character in a value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400),
        case("NUL in a value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", 400),
        case("bare CR in a value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),
        case("missing Host on HTTP/1.1", "GET / HTTP/1.1\r\nX: y\r\n\r\n", 400),
        case("duplicate Host", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        case("duplicate Host, same value", "GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400),
        // 400: framing.
        case(
            "Transfer-Encoding and Content-Length",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            400,
        ),
        case(
            "conflicting Content-Length fields",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            400,
        ),
        case("conflicting Content-Length list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", 400),
        case("non-numeric Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n", 400),
        case("negative Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        case("signed Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400),
        case("hex Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400),
        case("empty Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400),
        case("Content-Length with a space inside", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 0\r\n\r\n", 400),
        case(
            "Content-Length beyond u64",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            400,
        ),
        case("empty Transfer-Encoding", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,\r\n\r\n", 400),
        // 400: chunked bodies.
        case("chunk size not hex", chunked(b"zz\r\nhello\r\n0\r\n\r\n"), 400),
        case("chunk size missing", chunked(b"\r\nhello\r\n0\r\n\r\n"), 400),
        case("chunk size with 0x", chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
        case("negative chunk size", chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400),
        case("extension without a size", chunked(b";x\r\nhello\r\n0\r\n\r\n"), 400),
        case("bare LF after the chunk size", chunked(b"5\nhello\r\n0\r\n\r\n"), 400),
        case("bare LF in an extension", chunked(b"5;a=b\nhello\r\n0\r\n\r\n"), 400),
        case("CR without LF after the size", chunked(b"5\rhello\r\n0\r\n\r\n"), 400),
        case("chunk longer than its size", chunked(b"3\r\nhello\r\n0\r\n\r\n"), 400),
        case("no CRLF after the data", chunked(b"5\r\nhello0\r\n\r\n"), 400),
        case("LF without CR after the data", chunked(b"5\r\nhello\n0\r\n\r\n"), 400),
        case("last chunk's CR without LF", chunked(b"0\r\n\rX"), 400),
        case(
            "extension over its limit",
            chunked(format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(5000)).as_bytes()),
            400,
        ),
        // 411.
        case("POST without a length", "POST /echo HTTP/1.1\r\nHost: a\r\n\r\n", 411),
        case("PUT without a length", "PUT /echo HTTP/1.1\r\nHost: a\r\n\r\n", 411),
        case("PATCH without a length", "PATCH /echo HTTP/1.1\r\nHost: a\r\n\r\n", 411),
        // 413.
        case("Content-Length over the limit", "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4097\r\n\r\n", 413),
        case("one chunk over the limit", chunked(b"1001\r\n"), 413),
        case("chunks over the limit together", over_in_pieces, 413),
        case("chunk size line overflows", chunked(b"10000000000000000\r\n"), 413),
        case("chunk size near u64::MAX", chunked(b"ffffffffffffffff\r\n"), 413),
        // 414.
        case("request line over the limit", long_target, 414),
        case("request line over the limit, unfinished", long_target_cut, 414),
        // 431.
        case("too many header fields", many_headers, 431),
        case("head over the limit", big_header, 431),
        case("head over the limit, unfinished", big_header_cut, 431),
        case("trailer line over its limit", chunked(format!("0\r\nX: {}\r\n\r\n", "t".repeat(5000)).as_bytes()), 431),
        // 501.
        case("unknown method", "BREW /pot HTTP/1.1\r\nHost: a\r\n\r\n", 501),
        case("lowercase method", "get / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
        case("gzip transfer coding", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        case("gzip then chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        case("chunked not last", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        case(
            "chunked twice",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        // 505.
        case("HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        case("HTTP/3.0", "GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505),
        case("HTTP/2", "GET / HTTP/2\r\nHost: a\r\n\r\n", 505),
        case("HTTP/0.9", "GET / HTTP/0.9\r\n\r\n", 505),
    ]
}
