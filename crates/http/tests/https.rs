//! The server over TLS, in memory (both ends on Skiff's executor with a
//! manual clock), and the parts of an HTTPS site around it: a slow head
//! gets its 408 through TLS, clients that offer only `http/1.0` are
//! served, HSTS goes out over TLS only, redirects to HTTPS name only
//! configured hosts, and failed-handshake logging is bounded.

use embedded_io_async::{Read, Write};
use skiff_http::{
    ConnectionEnd, HostNameError, HttpsRedirect, LogBudget, LogLimit, LogVerdict, Request, RequestError, Response,
    Server, ServerConfig, Status,
};
use skiff_rt::time::Instant;
use skiff_testio::{End, pipe, run};
use skiff_tls::rustls::pki_types::ServerName;
use skiff_tls::{ClientOptions, ClientTlsStream, ServerOptions, TlsAcceptor, TlsConnector};
use std::rc::Rc;
use std::time::Duration;

const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

struct Pki {
    cert: String,
    key: String,
}

fn pki() -> Pki {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    Pki { cert: ck.cert.pem(), key: ck.signing_key.serialize_pem() }
}

fn acceptor(pki: &Pki) -> TlsAcceptor {
    let config =
        ServerOptions::default().alpn(skiff_http::ALPN).build(pki.cert.as_bytes(), pki.key.as_bytes()).unwrap();
    TlsAcceptor::new(config).unwrap()
}

fn connector(pki: &Pki, alpn: &[&[u8]]) -> TlsConnector {
    let roots = ClientOptions::roots_from_pem(pki.cert.as_bytes()).unwrap();
    TlsConnector::new(ClientOptions::default().alpn(alpn).build(roots).unwrap()).unwrap()
}

async fn hello(req: Request) -> Response {
    Response::text(Status::OK, format!("hello over {}\n", req.head.version.as_str()))
}

/// Serves one HTTPS connection (handshake, then HTTP) with `config`; the
/// client offers `alpn` and `client` drives it. What the client returned,
/// the ALPN protocol it got, and how the connection ended.
fn https<T: 'static>(
    config: ServerConfig,
    alpn: &'static [&'static [u8]],
    client: impl AsyncFnOnce(ClientTlsStream<End>) -> T + 'static,
) -> (T, Option<Vec<u8>>, ConnectionEnd) {
    let pki = pki();
    let (a, c) = (acceptor(&pki), connector(&pki, alpn));
    run(async move |spawner| {
        let (client_end, server_end) = pipe();
        let server = Rc::new(Server::new(hello, config));
        let task = spawner.spawn(async move {
            let mut tls = a.accept(server_end).await.expect("server handshake");
            let end = server.serve_secure_connection(&mut tls).await;
            let _ = tls.close().await;
            end
        });
        let tls = c.connect(ServerName::try_from("localhost").unwrap(), client_end).await.expect("client handshake");
        let alpn = tls.state().alpn_protocol().map(<[u8]>::to_vec);
        let out = client(tls).await;
        (out, alpn, task.await)
    })
}

/// Everything the server sends until it closes.
async fn read_all<R: Read>(stream: &mut R) -> String
where
    R::Error: std::fmt::Debug,
{
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the answer failed: {e:?} (after {:?})", String::from_utf8_lossy(&all)),
        }
    }
    String::from_utf8(all).unwrap()
}

fn config() -> ServerConfig {
    ServerConfig { header_timeout: HEADER_TIMEOUT, ..ServerConfig::default() }
}

#[test]
fn a_slow_head_over_tls_gets_408_like_plain_http() {
    let (answer, _, end) = https(config(), &[b"http/1.1"], async |mut tls| {
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ").await.unwrap();
        let started = Instant::now();
        let answer = read_all(&mut tls).await;
        (answer, started.elapsed())
    });
    let (answer, elapsed) = answer;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert_eq!(elapsed, HEADER_TIMEOUT, "the HTTP header timeout answers, not a TLS one");
    assert_eq!(end, ConnectionEnd::Refused(RequestError::Timeout));
}

#[test]
fn a_client_offering_only_http10_is_served() {
    let (answer, alpn, end) = https(config(), &[b"http/1.0"], async |mut tls| {
        tls.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        read_all(&mut tls).await
    });
    assert_eq!(alpn.as_deref(), Some(&b"http/1.0"[..]));
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
    assert!(answer.ends_with("hello over HTTP/1.0\n"), "{answer:?}");
    assert_eq!(end, ConnectionEnd::Done);
    // And http/1.1 stays the first choice.
    let (_, alpn, _) = https(config(), &[b"http/1.0", b"http/1.1"], async |mut tls| {
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
        read_all(&mut tls).await
    });
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
}

#[test]
fn hsts_goes_out_over_tls_only_and_only_when_configured() {
    let year = Duration::from_secs(31_536_000);
    let with_hsts = ServerConfig { hsts: Some(year), ..config() };
    // Answers and refusals alike.
    for (request, status) in [
        (&b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"[..], "200"),
        (&b"BREW / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..], "501"),
    ] {
        let (answer, _, _) = https(with_hsts, &[b"http/1.1"], async |mut tls| {
            tls.write_all(request).await.unwrap();
            read_all(&mut tls).await
        });
        assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{answer:?}");
        assert!(answer.contains("\r\nstrict-transport-security: max-age=31536000\r\n"), "{answer:?}");
    }
    // Off by default.
    let (answer, _, _) = https(config(), &[b"http/1.1"], async |mut tls| {
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
        read_all(&mut tls).await
    });
    assert!(!answer.to_lowercase().contains("strict-transport-security"), "{answer:?}");
    // Never over plain HTTP, even when configured.
    let answer = run(async move |spawner| {
        let (mut client_end, mut server_end) = pipe();
        let server = Rc::new(Server::new(hello, with_hsts));
        let task = spawner.spawn(async move { server.serve_connection(&mut server_end).await });
        client_end.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let answer = read_all(&mut client_end).await;
        task.await;
        answer
    });
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert!(!answer.to_lowercase().contains("strict-transport-security"), "{answer:?}");
}

#[test]
fn redirects_name_only_configured_hosts() {
    let r = HttpsRedirect::new(&["localhost", "www.example.com"], 8443).unwrap();
    let cases = [
        // A configured name is kept (port dropped, case folded).
        (Some("localhost:8080"), "/docs/?x=1", "https://localhost:8443/docs/?x=1"),
        (Some("WWW.Example.com"), "/", "https://www.example.com:8443/"),
        (Some("www.example.com."), "/a", "https://www.example.com:8443/a"),
        // Anything else goes to the canonical name.
        (Some("example.org"), "/docs/", "https://localhost:8443/docs/"),
        (Some("evil.example.com:80"), "/x", "https://localhost:8443/x"),
        (Some("localhost.evil.org"), "/x", "https://localhost:8443/x"),
        (Some("10.0.2.15"), "/", "https://localhost:8443/"),
        (Some(""), "/", "https://localhost:8443/"),
        (Some("[::1]:80"), "/", "https://localhost:8443/"),
        // No Host (HTTP/1.0): the canonical name, never an address.
        (None, "/", "https://localhost:8443/"),
        // Only origin-form targets are kept.
        (Some("localhost"), "http://evil.org/x", "https://localhost:8443/"),
        (Some("localhost"), "*", "https://localhost:8443/"),
    ];
    for (host, target, expected) in cases {
        assert_eq!(r.location(host, target), expected, "Host {host:?}, target {target:?}");
    }
    let default_port = HttpsRedirect::new(&["example.com", "[::1]", "10.0.0.2"], 443).unwrap();
    assert_eq!(default_port.location(Some("[::1]:8080"), "/a"), "https://[::1]/a");
    assert_eq!(default_port.location(Some("10.0.0.2"), "/a"), "https://10.0.0.2/a");
    assert_eq!(default_port.location(Some("10.0.0.3"), "/a"), "https://example.com/a");

    // Names that cannot be put into a URL are refused up front.
    assert_eq!(HttpsRedirect::new::<&str>(&[], 443).unwrap_err(), HostNameError::Empty);
    for bad in ["", "a b", "evil.org/x", "user@host", "host:80", "-a.b", "a..b", "[zz]", "ex\u{e4}mple.org"] {
        assert_eq!(
            HttpsRedirect::new(&[bad], 443).unwrap_err(),
            HostNameError::Invalid(bad.to_string()),
            "{bad:?} was taken as a host name"
        );
    }
}

#[test]
fn the_redirect_handler_answers_get_and_head_with_301_and_refuses_others() {
    let r = HttpsRedirect::new(&["localhost"], 443).unwrap();
    let answers = run(async move |spawner| {
        let mut out = Vec::new();
        for request in [
            &b"GET /a?b HTTP/1.1\r\nHost: example.org\r\nConnection: close\r\n\r\n"[..],
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            &b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"[..],
        ] {
            let (mut client_end, mut server_end) = pipe();
            let server = Rc::new(Server::new(r.clone(), config()));
            let task = spawner.spawn(async move { server.serve_connection(&mut server_end).await });
            client_end.write_all(request).await.unwrap();
            let answer = read_all(&mut client_end).await;
            task.await;
            out.push(answer);
        }
        out
    });
    assert!(answers[0].starts_with("HTTP/1.1 301 "), "{}", answers[0]);
    assert!(answers[0].contains("\r\nlocation: https://localhost/a?b\r\n"), "{}", answers[0]);
    assert!(answers[1].starts_with("HTTP/1.1 301 "), "{}", answers[1]);
    assert!(answers[1].contains("\r\nlocation: https://localhost/\r\n"), "{}", answers[1]);
    assert!(answers[2].starts_with("HTTP/1.1 405 "), "{}", answers[2]);
    assert!(answers[2].contains("\r\nallow: GET, HEAD\r\n"), "{}", answers[2]);
}

#[test]
fn failed_handshake_logs_are_bounded_per_interval_and_summarised() {
    let limit = LogLimit { lines: 3, interval: Duration::from_secs(60) };
    let mut budget = LogBudget::new(limit);
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut verdicts = Vec::new();
    for i in 0..100 {
        assert_eq!(budget.roll(at(i / 10)), None, "nothing to summarise within the interval");
        verdicts.push(budget.event(at(i / 10)));
    }
    assert_eq!(&verdicts[..3], [LogVerdict::Log, LogVerdict::Log, LogVerdict::LogLast]);
    assert!(verdicts[3..].iter().all(|v| *v == LogVerdict::Count), "{verdicts:?}");
    // Once the interval is over: one summary of the 97 not logged, and a
    // fresh budget.
    assert_eq!(budget.roll(at(59)), None);
    assert_eq!(budget.roll(at(60)), Some(97));
    assert_eq!(budget.roll(at(61)), None, "the summary is given once");
    assert_eq!(budget.event(at(61)), LogVerdict::Log);
    // A quiet interval: nothing to summarise.
    assert_eq!(budget.roll(at(200)), None);
    // At most lines + 1 log lines per interval, whatever the load: 10,000
    // failures over 10 minutes.
    let mut budget = LogBudget::new(limit);
    let mut lines = 0;
    for i in 0..10_000u64 {
        let now = t0 + Duration::from_millis(i * 60);
        lines += u32::from(budget.roll(now).is_some());
        lines += u32::from(budget.event(now) != LogVerdict::Count);
    }
    assert!(lines <= 10 * (limit.lines + 1) + 1, "{lines} lines");
    assert!(lines >= 10 * limit.lines, "{lines} lines");
}
