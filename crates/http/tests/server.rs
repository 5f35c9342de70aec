//! The server over an in-memory connection, on Skiff's executor with a
//! manual clock (timeouts fire at once, in virtual time): keep-alive,
//! pipelining, bodies, refusals, timeouts, a router, static files from a
//! baked store, and the client against all of it.

mod common;

use embedded_io_async::{Read, Write};
use skiff_http::client::{self, ClientError, ClientLimits, ClientRequest};
use skiff_http::date::HttpDate;
use skiff_http::{
    Body, ConnectionEnd, Handler, Method, Request, RequestError, Response, Router, Server, ServerConfig, ServerStats,
    StaticFiles, Status, Version,
};
use skiff_kv::Store;
use skiff_kv::build::BakeOptions;
use skiff_rt::executor::{sleep, timeout};
use skiff_rt::time::Instant;
use skiff_testio::{End, pipe, run};
use std::io::Read as _;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Duration;

// The client side of a test connection.

/// A response as the test client read it.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a text body")
    }
}

struct Client {
    io: End,
    buf: Vec<u8>,
}

impl Client {
    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.io.write_all(bytes.as_ref()).await.expect("the server reads");
    }

    /// Reads more; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let n = self.io.read(&mut chunk).await.expect("read");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Reads one response to a request with `method`.
    async fn reply_to(&mut self, method: Method) -> Reply {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(self.fill().await, "the connection ended before a response: {:?}", lossy(&self.buf));
        };
        let head = String::from_utf8(self.buf.drain(..end).collect()).expect("a text head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        assert!(status_line.starts_with("HTTP/1.1 "), "{head:?}");
        let status = status_line[9..12].parse().expect("a status code");
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap_or_else(|| panic!("a header line: {l:?}"));
                (n.to_string(), v.to_string())
            })
            .collect();
        let mut reply = Reply { status, head, headers, body: Vec::new() };
        let no_body = method == Method::Head || status < 200 || status == 204 || status == 304;
        if !no_body {
            let length = reply.header("content-length").unwrap_or_else(|| panic!("no length: {}", reply.head));
            let length: usize = length.parse().expect("a numeric length");
            while self.buf.len() < length {
                assert!(self.fill().await, "the body was cut short");
            }
            reply.body = self.buf.drain(..length).collect();
        }
        reply
    }

    async fn reply(&mut self) -> Reply {
        self.reply_to(Method::Get).await
    }

    /// Everything until the server closes the connection.
    async fn rest(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    /// Asserts the server closes the connection without sending more.
    async fn closed(&mut self) {
        let rest = self.rest().await;
        assert!(rest.is_empty(), "more after the response: {:?}", lossy(&rest));
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(400)]).into_owned()
}

const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const BODY_TIMEOUT: Duration = Duration::from_secs(3);
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(7);

fn config() -> ServerConfig {
    ServerConfig {
        limits: common::limits(),
        header_timeout: HEADER_TIMEOUT,
        body_timeout: BODY_TIMEOUT,
        idle_timeout: IDLE_TIMEOUT,
        write_timeout: WRITE_TIMEOUT,
        max_connections: 4,
        max_handshakes: 4,
        ..ServerConfig::default()
    }
}

/// Serves one connection with `handler`; `client` drives the other end.
/// Returns what the client returned, how the connection ended, and the
/// server's counters.
fn serve<H: Handler + 'static, T: 'static>(
    handler: H,
    client: impl AsyncFnOnce(Client) -> T + 'static,
) -> (T, ConnectionEnd, ServerStats) {
    run(async move |spawner| {
        let (client_end, mut server_end) = pipe();
        let server = Rc::new(Server::new(handler, config()));
        let s = server.clone();
        let task = spawner.spawn(async move { s.serve_connection(&mut server_end).await });
        let out = client(Client { io: client_end, buf: Vec::new() }).await;
        let end = task.await;
        (out, end, server.stats())
    })
}

fn get(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n")
}

fn post(path: &str, body: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

/// A large body: bigger than the pipe holds.
fn big() -> Vec<u8> {
    (0..300 * 1024).map(|i| (i * 7 + i / 1000) as u8).collect()
}

async fn echo(req: Request) -> Response {
    Response::new(Status::OK)
        .header("x-method", req.method().as_str().as_bytes().to_vec())
        .header("x-path", req.path().as_bytes().to_vec())
        .body(Body::Bytes(req.body))
}

fn router() -> Router {
    Router::new()
        .route(Method::Get, "/hello", |_req| async { Response::text(Status::OK, "hello\n") })
        .route(Method::Post, "/echo", echo)
        .route(Method::Put, "/echo", echo)
        .route(Method::Get, "/big", |_req| async { Response::new(Status::OK).body(Body::Bytes(big())) })
        .route(Method::Get, "/bye", |_req| async {
            Response::text(Status::OK, "bye\n").header("connection", &b"close"[..])
        })
        .route(Method::Get, "/files/*", echo)
}

// Connections.

#[test]
fn keep_alive_serves_several_requests() {
    let ((), end, stats) = serve(router(), async |mut c| {
        for _ in 0..3 {
            c.send(get("/hello", "")).await;
            let r = c.reply().await;
            assert_eq!((r.status, r.text()), (200, "hello\n"));
            assert_eq!(r.header("connection"), None);
            assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
            assert_eq!(r.header("server"), Some("skiff"));
            let date = r.header("date").expect("a date");
            assert!(skiff_http::date::parse(date).is_some(), "{date}");
        }
    });
    assert_eq!(end, ConnectionEnd::Done);
    assert_eq!((stats.requests, stats.refused), (3, 0));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let ((), end, stats) = serve(router(), async |mut c| {
        let mut all = post("/echo", "one");
        all += &get("/hello", "");
        all += "PUT /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nth\r\n3\r\nree\r\n0\r\n\r\n";
        all += "\r\n";
        all += &get("/bye", "");
        c.send(all).await;
        let r = c.reply().await;
        assert_eq!((r.status, r.text(), r.header("x-method")), (200, "one", Some("POST")));
        let r = c.reply().await;
        assert_eq!((r.status, r.text()), (200, "hello\n"));
        let r = c.reply().await;
        assert_eq!((r.status, r.text(), r.header("x-method")), (200, "three", Some("PUT")));
        let r = c.reply().await;
        assert_eq!((r.status, r.text(), r.header("connection")), (200, "bye\n", Some("close")));
        c.closed().await;
    });
    assert_eq!(end, ConnectionEnd::Done);
    assert_eq!(stats.requests, 4);
}

#[test]
fn connection_close_closes() {
    let ((), end, _) = serve(router(), async |mut c| {
        c.send(get("/hello", "Connection: close\r\n")).await;
        let r = c.reply().await;
        assert_eq!((r.status, r.header("connection")), (200, Some("close")));
        c.closed().await;
    });
    assert_eq!(end, ConnectionEnd::Done);
}

#[test]
fn a_handler_can_close_the_connection() {
    let ((), end, _) = serve(router(), async |mut c| {
        c.send(get("/bye", "")).await;
        let r = c.reply().await;
        assert_eq!((r.status, r.header("connection")), (200, Some("close")));
        assert_eq!(r.head.matches("connection").count(), 1, "{}", r.head);
        c.closed().await;
    });
    assert_eq!(end, ConnectionEnd::Done);
}

#[test]
fn http10_closes_unless_asked_to_keep_alive() {
    let ((), end, _) = serve(router(), async |mut c| {
        c.send("GET /hello HTTP/1.0\r\n\r\n").await;
        let r = c.reply().await;
        assert_eq!((r.status, r.header("connection")), (200, Some("close")));
        c.closed().await;
    });
    assert_eq!(end, ConnectionEnd::Done);

    let ((), end, stats) = serve(router(), async |mut c| {
        for _ in 0..2 {
            c.send("GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await;
            let r = c.reply().await;
            assert_eq!((r.status, r.header("connection")), (200, Some("keep-alive")));
        }
        c.send("GET /hello HTTP/1.0\r\n\r\n").await;
        assert_eq!(c.reply().await.header("connection"), Some("close"));
        c.closed().await;
    });
    assert_eq!((end, stats.requests), (ConnectionEnd::Done, 3));
}

#[test]
fn head_has_the_length_but_no_body() {
    let ((), _, _) = serve(router(), async |mut c| {
        c.send("HEAD /hello HTTP/1.1\r\nHost: test\r\n\r\n").await;
        let r = c.reply_to(Method::Head).await;
        assert_eq!((r.status, r.header("content-length")), (200, Some("6")));
        c.send("HEAD /big HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").await;
        let r = c.reply_to(Method::Head).await;
        assert_eq!(r.header("content-length"), Some(big().len().to_string().as_str()));
        c.closed().await;
    });
}

#[test]
fn bodies_reach_the_handler() {
    let ((), _, stats) = serve(router(), async |mut c| {
        c.send(post("/echo", "hello")).await;
        assert_eq!(c.reply().await.text(), "hello");
        // A body in pieces.
        c.send("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 11\r\n\r\nhel").await;
        sleep(Duration::from_millis(100)).await;
        c.send("lo ").await;
        c.send("world").await;
        assert_eq!(c.reply().await.text(), "hello world");
        // Chunked, with extensions and trailers, in pieces.
        c.send("POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhel").await;
        c.send("lo\r\n6\r\n wo").await;
        c.send("rld\r\n0\r\nX-Trailer: 1\r\n\r\n").await;
        let r = c.reply().await;
        assert_eq!((r.status, r.text(), r.header("x-method")), (200, "hello world", Some("POST")));
        // A body of exactly the limit.
        let full = "x".repeat(common::limits().body);
        c.send(post("/echo", &full)).await;
        assert_eq!(c.reply().await.body.len(), full.len());
        // An empty body.
        c.send("PUT /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n").await;
        let r = c.reply().await;
        assert_eq!((r.status, r.body.len(), r.header("x-method")), (200, 0, Some("PUT")));
    });
    assert_eq!(stats.requests, 5);
}

#[test]
fn expect_100_continue_gets_the_interim_response() {
    let ((), _, _) = serve(router(), async |mut c| {
        c.send("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n").await;
        let interim = c.reply().await;
        assert_eq!(interim.status, 100);
        assert_eq!(interim.head, "HTTP/1.1 100 Continue\r\n\r\n");
        c.send("hello").await;
        let r = c.reply().await;
        assert_eq!((r.status, r.text()), (200, "hello"));
        // The body came with the head: no interim response.
        c.send("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi").await;
        let r = c.reply().await;
        assert_eq!((r.status, r.text()), (200, "hi"));
        // No body: no interim response either.
        c.send(get("/hello", "Expect: 100-continue\r\n")).await;
        assert_eq!(c.reply().await.status, 200);
    });
}

#[test]
fn http10_clients_get_no_interim_response() {
    let ((), _, _) = serve(router(), async |mut c| {
        c.send("POST /echo HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n").await;
        sleep(Duration::from_secs(1)).await;
        c.send("hello").await;
        let r = c.reply().await;
        assert_eq!((r.status, r.text()), (200, "hello"));
        c.closed().await;
    });
}

#[test]
fn expect_100_continue_is_not_sent_for_a_refused_body() {
    let ((), end, _) = serve(router(), async |mut c| {
        c.send("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 99999\r\nExpect: 100-continue\r\n\r\n").await;
        let r = c.reply().await;
        assert_eq!(r.status, 413);
        c.closed().await;
    });
    assert_eq!(end, ConnectionEnd::Refused(RequestError::PayloadTooLarge));
}

#[test]
fn the_router_answers_405_with_allow_and_404() {
    let ((), end, stats) = serve(router(), async |mut c| {
        c.send(post("/hello", "")).await;
        let r = c.reply().await;
        assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
        c.send("DELETE /echo HTTP/1.1\r\nHost: test\r\n\r\n").await;
        let r = c.reply().await;
        assert_eq!((r.status, r.header("allow")), (405, Some("POST, PUT")));
        c.send(get("/nowhere", "")).await;
        assert_eq!(c.reply().await.status, 404);
        // Prefix routes, and the connection is still fine.
        c.send(get("/files/a/b?c", "")).await;
        let r = c.reply().await;
        assert_eq!((r.status, r.header("x-path")), (200, Some("/files/a/b")));
        c.send(get("/files", "")).await;
        assert_eq!(c.reply().await.status, 200);
        c.send(get("/filesystem", "")).await;
        assert_eq!(c.reply().await.status, 404);
        c.send(get("/hello?next=http://test/files/x", "")).await;
        assert_eq!(c.reply().await.text(), "hello\n", "a URL in the query picks the route");
        // HEAD is answered by the GET route.
        c.send("HEAD /hello HTTP/1.1\r\nHost: test\r\n\r\n").await;
        let r = c.reply_to(Method::Head).await;
        assert_eq!((r.status, r.header("content-length")), (200, Some("6")));
    });
    assert_eq!(end, ConnectionEnd::Done);
    assert_eq!((stats.requests, stats.refused), (8, 0));
}

#[test]
fn a_big_response_reaches_a_reading_client() {
    let ((), _, _) = serve(router(), async |mut c| {
        c.send(get("/big", "")).await;
        let r = c.reply().await;
        assert!(r.body == big(), "the body differs");
        c.send(get("/hello", "")).await;
        assert_eq!(c.reply().await.text(), "hello\n");
    });
}

// Refusals.

#[test]
fn every_malformed_request_gets_its_status_and_the_connection_closes() {
    let mut wrong = Vec::new();
    for case in common::malformed() {
        let bytes = case.bytes.clone();
        let (reply, end, stats) = serve(router(), async move |mut c| {
            c.send(&bytes).await;
            let r = c.reply().await;
            let rest = c.rest().await;
            (r, rest)
        });
        let (r, rest) = reply;
        let ok = r.status == case.status
            && r.header("connection") == Some("close")
            && rest.is_empty()
            && matches!(&end, ConnectionEnd::Refused(e) if e.status().0 == case.status)
            && stats.refused == 1
            && stats.requests == 0;
        if !ok {
            wrong.push(format!(
                "{}: expected {}, got {} ({end:?}, then {:?})",
                case.name,
                case.status,
                r.status,
                lossy(&rest)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_refusal_follows_the_responses_before_it() {
    let ((), end, stats) = serve(router(), async |mut c| {
        let mut all = get("/hello", "");
        all += "GET / HTTP/2.0\r\nHost: test\r\n\r\n";
        all += &get("/hello", "");
        c.send(all).await;
        assert_eq!(c.reply().await.status, 200);
        assert_eq!(c.reply().await.status, 505);
        c.closed().await;
    });
    assert_eq!(end, ConnectionEnd::Refused(RequestError::VersionNotSupported));
    assert_eq!((stats.requests, stats.refused), (1, 1));
}

#[test]
fn a_head_cut_short_is_a_bad_request() {
    let ((), end, _) = serve(router(), async |mut c| {
        c.send("GET /hello HTTP/1.1\r\nHost: te").await;
        c.io.shutdown_write();
        assert_eq!(c.reply().await.status, 400);
        c.closed().await;
    });
    assert!(matches!(end, ConnectionEnd::Refused(RequestError::BadRequest(_))), "{end:?}");

    let ((), end, _) = serve(router(), async |mut c| {
        c.send(post("/echo", "hello").replace("hello", "he")).await;
        c.io.shutdown_write();
        assert_eq!(c.reply().await.status, 400);
        c.closed().await;
    });
    assert!(matches!(end, ConnectionEnd::Refused(RequestError::BadRequest(_))), "{end:?}");
}

#[test]
fn a_client_that_closes_between_requests_ends_quietly() {
    let ((), end, _) = serve(router(), async |mut c| {
        c.send(get("/hello", "")).await;
        c.reply().await;
        c.send("\r\n").await;
        c.io.shutdown_write();
        c.closed().await;
    });
    assert_eq!(end, ConnectionEnd::Done);
}

#[test]
fn endless_empty_lines_are_refused() {
    let ((), end, _) = serve(router(), async |mut c| {
        let lines = "\r\n".repeat(1000);
        for _ in 0..4 {
            if c.io.write_all(lines.as_bytes()).await.is_err() {
                break;
            }
        }
        assert_eq!(c.reply().await.status, 431);
        c.closed().await;
    });
    assert_eq!(end, ConnectionEnd::Refused(RequestError::HeadersTooLarge));
}

// Time limits.

#[test]
fn a_head_that_drips_in_gets_408_after_the_header_timeout() {
    let (elapsed, end, _) = serve(router(), async |mut c| {
        let mut drip = b"GET /hello HTTP/1.1\r\nHost: test\r\nX-Slow: ".to_vec();
        drip.extend(b"y".repeat(1000));
        let started = Instant::now();
        // A byte every 300 ms, until the server answers.
        let mut answered = false;
        for byte in drip {
            c.send([byte]).await;
            let mut one = [0u8; 1];
            if let Ok(n) = timeout(Duration::from_millis(300), c.io.read(&mut one)).await {
                c.buf.extend_from_slice(&one[..n.expect("read")]);
                answered = true;
                break;
            }
        }
        assert!(answered, "the server never answered");
        let r = c.reply().await;
        let elapsed = started.elapsed();
        assert_eq!(r.status, 408);
        c.closed().await;
        elapsed
    });
    assert_eq!(end, ConnectionEnd::Refused(RequestError::Timeout));
    assert_eq!(elapsed, HEADER_TIMEOUT, "the deadline runs from the first byte, more bytes do not extend it");
}

#[test]
fn an_unfinished_head_gets_408() {
    let (elapsed, end, _) = serve(router(), async |mut c| {
        let started = Instant::now();
        c.send("\r\nGET /hello HT").await;
        let r = c.reply().await;
        assert_eq!(r.status, 408);
        c.closed().await;
        started.elapsed()
    });
    assert_eq!(end, ConnectionEnd::Refused(RequestError::Timeout));
    assert_eq!(elapsed, HEADER_TIMEOUT);
}

#[test]
fn an_idle_connection_is_closed_silently() {
    // After a request.
    let (elapsed, end, _) = serve(router(), async |mut c| {
        c.send(get("/hello", "")).await;
        c.reply().await;
        let idle_from = Instant::now();
        c.closed().await;
        idle_from.elapsed()
    });
    assert_eq!((end, elapsed), (ConnectionEnd::Done, IDLE_TIMEOUT));
    // Before any request, and with only empty lines.
    for opening in ["", "\r\n\r\n"] {
        let (elapsed, end, stats) = serve(router(), async move |mut c| {
            let started = Instant::now();
            c.send(opening).await;
            c.closed().await;
            started.elapsed()
        });
        assert_eq!((end, elapsed), (ConnectionEnd::Done, IDLE_TIMEOUT), "{opening:?}");
        assert_eq!(stats.refused, 0);
    }
}

#[test]
fn a_body_that_never_arrives_gets_408() {
    for request in [
        "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabc",
        "POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    ] {
        let (elapsed, end, stats) = serve(router(), async move |mut c| {
            c.send(request).await;
            let started = Instant::now();
            let mut r = c.reply().await;
            if r.status == 100 {
                r = c.reply().await;
            }
            assert_eq!(r.status, 408);
            c.closed().await;
            started.elapsed()
        });
        assert_eq!(end, ConnectionEnd::Refused(RequestError::Timeout), "{request:?}");
        assert_eq!(elapsed, BODY_TIMEOUT, "{request:?}");
        assert_eq!(stats.requests, 0);
    }
}

#[test]
fn a_body_that_drips_in_gets_408_after_the_body_timeout() {
    let (elapsed, end, _) = serve(router(), async |mut c| {
        c.send("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n").await;
        let started = Instant::now();
        for _ in 0..100 {
            let mut one = [0u8; 1];
            if let Ok(n) = timeout(Duration::from_millis(500), c.io.read(&mut one)).await {
                c.buf.extend_from_slice(&one[..n.expect("read")]);
                break;
            }
            c.send("x").await;
        }
        assert_eq!(c.reply().await.status, 408);
        started.elapsed()
    });
    assert_eq!(end, ConnectionEnd::Refused(RequestError::Timeout));
    assert_eq!(elapsed, BODY_TIMEOUT);
}

#[test]
fn a_client_that_does_not_read_is_dropped() {
    let (end, elapsed) = run(async |spawner| {
        let (mut client, mut server_end) = pipe();
        let server = Rc::new(Server::new(router(), config()));
        let task = spawner.spawn(async move { server.serve_connection(&mut server_end).await });
        client.write_all(get("/big", "").as_bytes()).await.unwrap();
        let started = Instant::now();
        // The client keeps the connection open and never reads.
        let end = task.await;
        let elapsed = started.elapsed();
        drop(client);
        (end, elapsed)
    });
    assert_eq!(end, ConnectionEnd::Transport);
    assert_eq!(elapsed, WRITE_TIMEOUT);
}

#[test]
fn a_client_that_goes_away_mid_response_ends_the_connection() {
    let ((), end, _) = serve(router(), async |mut c| {
        c.send(get("/big", "")).await;
        assert!(c.fill().await);
    });
    assert_eq!(end, ConnectionEnd::Transport);
}

// Static files.

const MODIFIED: u64 = 1_700_000_000;

fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn big_text() -> Vec<u8> {
    (0..2000)
        .map(|i| format!("line {i}: the quick brown fox jumps over the lazy dog\n"))
        .collect::<String>()
        .into_bytes()
}

/// A store baked from a small site, once per test process.
fn store() -> Store<'static> {
    static STORE: OnceLock<Store<'static>> = OnceLock::new();
    *STORE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("skiff-http-site-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files: [(&str, Vec<u8>); 6] = [
            ("index.html", b"<!doctype html><h1>home</h1>".to_vec()),
            ("404.html", b"<h1>not here</h1>".to_vec()),
            ("docs/index.html", b"<h1>docs</h1>".to_vec()),
            ("big.txt", big_text()),
            ("data.bin", noise(1000)),
            ("a b.txt", b"spaced".to_vec()),
        ];
        for (name, body) in &files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("create the site");
            std::fs::write(path, body).expect("write the site");
        }
        let (blob, _) = skiff_kv::build::bake_with(&dir, &BakeOptions::with_mtime_clamp(MODIFIED)).expect("bake");
        let _ = std::fs::remove_dir_all(&dir);
        Store::new(Box::leak(blob.into_boxed_slice())).expect("a valid store")
    })
}

fn files() -> StaticFiles {
    StaticFiles::new(store())
}

/// One request to the static files, on a fresh connection.
fn fetch(request: String) -> Reply {
    let method = if request.starts_with("HEAD ") { Method::Head } else { Method::Get };
    let (reply, _, _) = serve(files(), async move |mut c| {
        c.send(request).await;
        c.reply_to(method).await
    });
    reply
}

#[test]
fn files_are_served_with_their_metadata() {
    let r = fetch(get("/", ""));
    assert_eq!((r.status, r.text()), (200, "<!doctype html><h1>home</h1>"));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("etag"), Some(store().get("/index.html").unwrap().etag));
    assert_eq!(r.header("last-modified"), Some(HttpDate::from_unix(MODIFIED).as_str()));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("cache-control"), None);
    let r = fetch(get("/docs/", ""));
    assert_eq!((r.status, r.text()), (200, "<h1>docs</h1>"));
    let r = fetch(get("/data.bin", ""));
    assert_eq!((r.status, r.header("content-type")), (200, Some("application/octet-stream")));
    assert!(r.body == noise(1000));
    let r = fetch(get("/a%20b.txt", ""));
    assert_eq!((r.status, r.text()), (200, "spaced"));
    let r = fetch(get("http://test/docs/index.html?x", ""));
    assert_eq!((r.status, r.text()), (200, "<h1>docs</h1>"));
}

#[test]
fn head_of_a_file_has_its_length_only() {
    let (rest, _, _) = serve(files(), async |mut c| {
        c.send("HEAD /data.bin HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").await;
        let r = c.reply_to(Method::Head).await;
        assert_eq!((r.status, r.header("content-length")), (200, Some("1000")));
        assert!(r.header("etag").is_some());
        c.rest().await
    });
    assert!(rest.is_empty(), "a HEAD response had a body");
}

#[test]
fn cache_control_is_added_when_configured() {
    let (r, _, _) = serve(files().cache_control("max-age=300"), async |mut c| {
        c.send(get("/", "")).await;
        c.reply().await
    });
    assert_eq!(r.header("cache-control"), Some("max-age=300"));
}

#[test]
fn static_files_refuse_other_methods() {
    let ((), end, _) = serve(files(), async |mut c| {
        c.send(post("/", "")).await;
        let r = c.reply().await;
        assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
        c.send("DELETE /index.html HTTP/1.1\r\nHost: test\r\n\r\n").await;
        assert_eq!(c.reply().await.status, 405);
        c.send(get("/", "")).await;
        assert_eq!(c.reply().await.status, 200, "a 405 keeps the connection");
    });
    assert_eq!(end, ConnectionEnd::Done);
}

#[test]
fn missing_files_get_the_stores_404_page() {
    for path in ["/nothing", "/docs/nothing", "/docs/../index.html", "/%2e%2e/index.html", "/index.html/", "/big.txt/x"]
    {
        let r = fetch(get(path, ""));
        assert_eq!((r.status, r.text()), (404, "<h1>not here</h1>"), "{path}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    }
    let (r, _, _) = serve(files().not_found_page(None), async |mut c| {
        c.send(get("/nothing", "")).await;
        c.reply().await
    });
    assert_eq!((r.status, r.text()), (404, "404 Not Found\n"));
    assert_eq!(fetch(get("/%zz", "")).status, 400);
    assert_eq!(fetch(get("/%ff", "")).status, 400);
}

#[test]
fn a_directory_without_its_slash_is_redirected() {
    let r = fetch(get("/docs", ""));
    assert_eq!((r.status, r.header("location")), (301, Some("/docs/")));
    let r = fetch(get("/docs?a=1&b", ""));
    assert_eq!((r.status, r.header("location")), (301, Some("/docs/?a=1&b")));
    let r = fetch(get("/do%63s", ""));
    assert_eq!((r.status, r.header("location")), (301, Some("/do%63s/")));
}

#[test]
fn etags_make_304s() {
    let etag = store().get("/index.html").unwrap().etag;
    let weak = format!("W/{etag}");
    let listed = format!("\"other\", {etag}");
    for inm in [etag.to_string(), weak, listed, "*".to_string()] {
        let (rest, _, _) = serve(files(), async move |mut c| {
            c.send(get("/", &format!("If-None-Match: {inm}\r\nConnection: close\r\n"))).await;
            let r = c.reply().await;
            assert_eq!(r.status, 304, "{inm}");
            assert_eq!(r.header("etag"), Some(etag));
            assert!(r.header("last-modified").is_some());
            assert_eq!(r.header("content-length"), None);
            assert_eq!(r.header("content-type"), None);
            c.rest().await
        });
        assert!(rest.is_empty(), "a 304 had a body");
    }
    let r = fetch(get("/", "If-None-Match: \"other\"\r\n"));
    assert_eq!(r.status, 200);
    // If-None-Match wins over If-Modified-Since.
    let date = HttpDate::from_unix(MODIFIED);
    let r = fetch(get("/", &format!("If-None-Match: \"other\"\r\nIf-Modified-Since: {}\r\n", date.as_str())));
    assert_eq!(r.status, 200);
}

#[test]
fn if_modified_since_makes_304s() {
    for (secs, status) in [(MODIFIED, 304), (MODIFIED + 1, 304), (MODIFIED - 1, 200), (0, 200)] {
        let r = fetch(get("/", &format!("If-Modified-Since: {}\r\n", HttpDate::from_unix(secs).as_str())));
        assert_eq!(r.status, status, "{secs}");
    }
    let r = fetch(get("/", "If-Modified-Since: yesterday\r\n"));
    assert_eq!(r.status, 200, "a date that does not parse is ignored");
}

#[test]
fn ranges_make_206s() {
    let data = noise(1000);
    let cases: [(&str, usize, usize); 6] = [
        ("bytes=0-9", 0, 9),
        ("bytes=10-", 10, 999),
        ("bytes=-5", 995, 999),
        ("bytes=-5000", 0, 999),
        ("bytes=990-5000", 990, 999),
        ("bytes=999-999", 999, 999),
    ];
    for (range, start, end) in cases {
        let r = fetch(get("/data.bin", &format!("Range: {range}\r\n")));
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.header("content-range"), Some(format!("bytes {start}-{end}/1000").as_str()), "{range}");
        assert_eq!(r.header("content-length"), Some((end - start + 1).to_string().as_str()));
        assert!(r.body == data[start..=end], "{range}");
    }
}

#[test]
fn unsatisfiable_ranges_make_416s() {
    for range in ["bytes=1000-", "bytes=5000-6000", "bytes=-0"] {
        let r = fetch(get("/data.bin", &format!("Range: {range}\r\n")));
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(r.header("content-range"), Some("bytes */1000"), "{range}");
    }
}

#[test]
fn ranges_not_served_partially_get_the_whole_file() {
    for range in ["bytes=0-1,5-6", "bytes=5-1", "items=0-1", "bytes=a-b", "bytes=-"] {
        let r = fetch(get("/data.bin", &format!("Range: {range}\r\n")));
        assert_eq!((r.status, r.body.len()), (200, 1000), "{range}");
        assert_eq!(r.header("content-range"), None);
    }
    // If-Range: only for the representation the client has.
    let etag = store().get("/data.bin").unwrap().etag;
    let r = fetch(get("/data.bin", &format!("Range: bytes=0-1\r\nIf-Range: {etag}\r\n")));
    assert_eq!((r.status, r.body.len()), (206, 2));
    let r = fetch(get("/data.bin", "Range: bytes=0-1\r\nIf-Range: \"old\"\r\n"));
    assert_eq!((r.status, r.body.len()), (200, 1000));
}

fn gunzip(gz: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut out).expect("a gzip body");
    out
}

#[test]
fn gzip_goes_to_clients_that_accept_it() {
    let entry = store().get("/big.txt").unwrap();
    let gz_etag = entry.gzip_etag.expect("big.txt has a gzip variant");
    for accept in ["gzip", "deflate, gzip;q=0.5", "br, GZIP", "x-gzip", "*"] {
        let r = fetch(get("/big.txt", &format!("Accept-Encoding: {accept}\r\n")));
        assert_eq!(r.status, 200, "{accept}");
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{accept}");
        assert_eq!(r.header("vary"), Some("accept-encoding"));
        assert_eq!(r.header("etag"), Some(gz_etag));
        assert!(r.body.len() < big_text().len());
        assert!(gunzip(&r.body) == big_text(), "{accept}");
    }
    for accept in ["gzip;q=0", "identity", "br, deflate", "*;q=0", "gzip;q=0, *"] {
        let r = fetch(get("/big.txt", &format!("Accept-Encoding: {accept}\r\n")));
        assert_eq!(r.header("content-encoding"), None, "{accept}");
        assert_eq!(r.header("vary"), Some("accept-encoding"), "{accept}");
        assert_eq!(r.header("etag"), Some(entry.etag));
        assert!(r.body == big_text(), "{accept}");
    }
    // No variant: no Vary either.
    let r = fetch(get("/data.bin", "Accept-Encoding: gzip\r\n"));
    assert_eq!((r.header("content-encoding"), r.header("vary")), (None, None));
    // HEAD: the variant's length.
    let r = fetch("HEAD /big.txt HTTP/1.1\r\nHost: test\r\nAccept-Encoding: gzip\r\n\r\n".into());
    assert_eq!(r.header("content-length"), Some(entry.gzip.unwrap().len().to_string().as_str()));
    // A conditional request on the variant's ETag.
    let r = fetch(get("/big.txt", &format!("Accept-Encoding: gzip\r\nIf-None-Match: {gz_etag}\r\n")));
    assert_eq!((r.status, r.header("vary")), (304, Some("accept-encoding")));
    // Ranges come from the identity body.
    let r = fetch(get("/big.txt", "Accept-Encoding: gzip\r\nRange: bytes=0-3\r\n"));
    assert_eq!((r.status, r.text(), r.header("content-encoding")), (206, "line", None));
}

#[test]
fn static_files_behind_a_router() {
    let router =
        Router::new().route(Method::Get, "/api", |_req| async { Response::text(Status::OK, "api") }).fallback(files());
    let ((), _, _) = serve(router, async |mut c| {
        c.send(get("/api", "")).await;
        assert_eq!(c.reply().await.text(), "api");
        c.send(get("/docs/", "")).await;
        assert_eq!(c.reply().await.text(), "<h1>docs</h1>");
        c.send(get("/nope", "")).await;
        assert_eq!(c.reply().await.status, 404);
    });
}

// The client, against the server and against scripted servers.

#[test]
fn the_client_talks_to_the_server() {
    let ((), _, stats) = serve(router(), async |c| {
        let mut io = c.io;
        let limits = ClientLimits::default();
        let r = client::send(&mut io, &ClientRequest::new(Method::Get, "test", "/hello"), &limits).await.unwrap();
        assert_eq!((r.status, r.version, r.text()), (Status::OK, Version::Http11, Some("hello\n")));
        let req = ClientRequest::new(Method::Post, "test", "/echo").body("ping");
        let r = client::send(&mut io, &req, &limits).await.unwrap();
        assert_eq!((r.status, r.text(), r.header("x-method")), (Status::OK, Some("ping"), Some("POST")));
        let r = client::send(&mut io, &ClientRequest::new(Method::Head, "test", "/big"), &limits).await.unwrap();
        assert_eq!((r.status, r.body.len()), (Status::OK, 0));
        let r = client::send(&mut io, &ClientRequest::new(Method::Get, "test", "/big"), &limits).await.unwrap();
        assert!(r.body == big());
        // A target or host that would rewrite the request is not sent.
        for (host, target) in
            [("test", "/x HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /"), ("test\r\nX: 1", "/"), ("test", "/a b")]
        {
            let r = client::send(&mut io, &ClientRequest::new(Method::Get, host, target), &limits).await;
            assert!(matches!(r, Err(ClientError::BadUrl(_))), "{target:?}: {r:?}");
        }
        let req = ClientRequest::new(Method::Get, "test", "/hello").header("connection", "close");
        let r = client::send(&mut io, &req, &limits).await.unwrap();
        assert_eq!(r.header("connection"), Some("close"));
    });
    assert_eq!(stats.requests, 5);
}

/// Runs the client against a server that reads a request head and
/// answers `script`, then closes (or, with `hold`, keeps the connection).
fn scripted(script: &'static [u8], hold: bool, limits: ClientLimits) -> Result<client::ClientResponse, ClientError> {
    run(async move |spawner| {
        let (mut io, mut server) = pipe();
        let _task = spawner.spawn(async move {
            let mut got = Vec::new();
            let mut chunk = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = server.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return;
                }
                got.extend_from_slice(&chunk[..n]);
            }
            server.write_all(script).await.unwrap();
            if hold {
                sleep(Duration::from_secs(3600)).await;
            }
        });
        client::send(&mut io, &ClientRequest::new(Method::Get, "test", "/"), &limits).await
    })
}

#[test]
fn the_client_reads_every_kind_of_response() {
    let limits = ClientLimits::default();
    let r = scripted(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", true, limits);
    assert_eq!(r.unwrap().text(), Some("hello"));
    let r = scripted(b"HTTP/1.0 200 OK\r\n\r\nuntil the end", false, limits).unwrap();
    assert_eq!((r.version, r.text()), (Version::Http10, Some("until the end")));
    let r = scripted(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", true, limits);
    assert_eq!(r.map(|r| (r.status, r.body)).unwrap(), (Status::CREATED, b"ok".to_vec()));
    let r = scripted(b"HTTP/1.1 204 No Content\r\n\r\n", true, limits).unwrap();
    assert_eq!((r.status, r.body.len()), (Status::NO_CONTENT, 0));
}

#[test]
fn the_client_refuses_bad_responses() {
    let limits = ClientLimits::default();
    let bad = |script: &'static [u8], hold: bool, limits: ClientLimits| scripted(script, hold, limits).unwrap_err();
    assert!(matches!(bad(b"SMTP ready\r\n\r\n", false, limits), ClientError::BadResponse(_)));
    assert!(matches!(bad(b"HTTP/1.1 200 OK\r\nContent-Len", false, limits), ClientError::BadResponse(_)));
    assert!(matches!(
        bad(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", false, limits),
        ClientError::BadResponse(_)
    ));
    assert!(matches!(bad(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", true, limits), ClientError::BadResponse(_)));
    assert!(matches!(
        bad(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", true, limits),
        ClientError::BadResponse(_)
    ));
    let small = ClientLimits { head: 64, body: 4, timeout: Duration::from_secs(5) };
    assert!(matches!(bad(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", true, small), ClientError::TooLarge));
    assert!(matches!(
        bad(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", true, small),
        ClientError::TooLarge
    ));
    assert!(matches!(bad(b"HTTP/1.1 200 OK\r\n\r\nhello", false, small), ClientError::TooLarge));
    let long_head: &'static [u8] =
        Box::leak(format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(200)).into_bytes().into_boxed_slice());
    assert!(matches!(bad(long_head, true, small), ClientError::TooLarge));
    // A server that never finishes its answer.
    assert!(matches!(bad(b"HTTP/1.1 200 OK\r\n", true, small), ClientError::Timeout));
}
