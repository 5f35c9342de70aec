//! TLS between this crate's server and client, in memory: both run as
//! tasks on Skiff's executor (host build, manual clock) over a pipe.

use embedded_io_async::{Read, Write};
use rustls::pki_types::ServerName;
use rustls::{HandshakeKind, ProtocolVersion};
use skiff_testio::{pipe, run};
use skiff_tls::{ClientOptions, ServerOptions, TlsAcceptor, TlsConnector, TlsError, Versions};
use std::time::Duration;

struct Pki {
    cert_pem: String,
    key_pem: String,
}

fn pki(name: &str) -> Pki {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    Pki { cert_pem: ck.cert.pem(), key_pem: ck.signing_key.serialize_pem() }
}

fn acceptor(pki: &Pki, versions: Versions) -> TlsAcceptor {
    let config = ServerOptions::default()
        .versions(versions)
        .alpn(&[b"h2", b"http/1.1"])
        .build(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes())
        .unwrap();
    TlsAcceptor::new(config).unwrap()
}

fn connector(trusted: &Pki, versions: Versions) -> TlsConnector {
    let roots = ClientOptions::roots_from_pem(trusted.cert_pem.as_bytes()).unwrap();
    TlsConnector::new(ClientOptions::default().versions(versions).alpn(&[b"http/1.1"]).build(roots).unwrap()).unwrap()
}

fn name(s: &str) -> ServerName<'static> {
    ServerName::try_from(s.to_string()).unwrap()
}

/// Sends `n` bytes of a pattern from client to server and back (an echo),
/// and reports what each side negotiated.
async fn echo(
    spawner: &skiff_rt::Spawner,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    n: usize,
) -> (ProtocolVersion, Option<Vec<u8>>, HandshakeKind) {
    let (client_end, server_end) = pipe();
    let server = spawner.spawn(async move {
        let mut tls = acceptor.accept(server_end).await.expect("server handshake");
        let mut buf = vec![0u8; 8192];
        loop {
            let k = tls.read(&mut buf).await.unwrap();
            if k == 0 {
                break;
            }
            tls.write_all(&buf[..k]).await.unwrap();
        }
        tls.close().await.unwrap();
        tls.state().handshake_kind().unwrap()
    });
    let mut tls = connector.connect(name("localhost"), client_end).await.expect("client handshake");
    let version = tls.state().protocol_version().unwrap();
    let alpn = tls.state().alpn_protocol().map(<[u8]>::to_vec);
    let data: Vec<u8> = (0..n).map(|i| (i * 7 + i / 251) as u8).collect();
    let (mut sent, mut got) = (0, Vec::with_capacity(n));
    let mut buf = vec![0u8; 8192];
    // Interleave so neither pipe direction fills up.
    while got.len() < n {
        if sent < n {
            let end = (sent + 16 * 1024).min(n);
            tls.write_all(&data[sent..end]).await.unwrap();
            sent = end;
        }
        while got.len() < sent {
            let k = tls.read(&mut buf).await.unwrap();
            assert!(k > 0, "early end of stream after {} bytes", got.len());
            got.extend_from_slice(&buf[..k]);
        }
    }
    assert!(got == data, "echoed bytes differ");
    tls.close().await.unwrap();
    // The server's close_notify ends our stream.
    assert_eq!(tls.read(&mut buf).await.unwrap(), 0);
    let server_kind = server.await;
    let client_kind = tls.state().handshake_kind().unwrap();
    assert_eq!(client_kind, server_kind);
    (version, alpn, client_kind)
}

#[test]
fn tls13_and_tls12_handshakes_carry_data_both_ways() {
    let pki = pki("localhost");
    for (versions, expected) in
        [(Versions::Tls13, ProtocolVersion::TLSv1_3), (Versions::Tls12, ProtocolVersion::TLSv1_2)]
    {
        let (a, c) = (acceptor(&pki, Versions::Both), connector(&pki, versions));
        let (version, alpn, kind) = run(async move |s| echo(&s, a, c, 300 * 1024).await);
        assert_eq!(version, expected);
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]), "ALPN picks the protocol both speak");
        assert_eq!(kind, HandshakeKind::Full);
    }
}

#[test]
fn sessions_resume_with_tickets_and_session_ids() {
    let pki = pki("localhost");
    for versions in [Versions::Tls13, Versions::Tls12] {
        let (a, c) = (acceptor(&pki, Versions::Both), connector(&pki, versions));
        let kinds = run(async move |s| {
            let first = echo(&s, a.clone(), c.clone(), 10).await.2;
            let second = echo(&s, a, c, 10).await.2;
            (first, second)
        });
        assert_eq!(kinds, (HandshakeKind::Full, HandshakeKind::Resumed), "{versions:?}");
    }
}

#[test]
fn an_untrusted_certificate_fails_both_sides_and_the_server_serves_on() {
    let server_pki = pki("localhost");
    let other = pki("localhost");
    let a = acceptor(&server_pki, Versions::Both);
    let bad = connector(&other, Versions::Both);
    let good = connector(&server_pki, Versions::Both);
    run(async move |s| {
        let (client_end, server_end) = pipe();
        let a2 = a.clone();
        let server = s.spawn(async move { a2.accept(server_end).await.map(|_| ()) });
        let client = bad.connect(name("localhost"), client_end).await;
        assert!(
            matches!(client, Err(TlsError::Protocol(rustls::Error::InvalidCertificate(_)))),
            "the client accepted a certificate it does not trust"
        );
        drop(client);
        // The client's alert reaches the server, which reports it.
        let err = server.await.expect_err("the server saw the failure");
        assert!(err.to_string().contains("alert") || err.to_string().contains("closed"), "{err}");
        // And the same acceptor goes on serving.
        echo(&s, a, good, 1000).await;
    });
}

#[test]
fn the_wrong_server_name_is_refused() {
    let pki = pki("localhost");
    let (a, c) = (acceptor(&pki, Versions::Both), connector(&pki, Versions::Both));
    run(async move |s| {
        let (client_end, server_end) = pipe();
        let _server = s.spawn(async move { a.accept(server_end).await.map(|_| ()) });
        let r = c.connect(name("example.org"), client_end).await;
        assert!(matches!(r, Err(TlsError::Protocol(_))), "a certificate for localhost served example.org");
    });
}

#[test]
fn garbage_instead_of_a_client_hello_is_an_error_not_a_panic() {
    let pki = pki("localhost");
    let a = acceptor(&pki, Versions::Both);
    let inputs: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0x16, 0x03, 0x01, 0xff, 0xff],
        vec![0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0],
        (0..5000u32).map(|i| (i * 31 % 256) as u8).collect(),
        vec![],
    ];
    for input in inputs {
        let a = a.clone();
        let r = run(async move |_| {
            let (mut client_end, server_end) = pipe();
            client_end.write_all(&input).await.unwrap();
            drop(client_end);
            a.accept(server_end).await.map(|_| ())
        });
        assert!(
            matches!(r, Err(TlsError::Protocol(_) | TlsError::UnexpectedEof)),
            "{r:?} for {} bytes of garbage",
            r.as_ref().map_or(0, |_| 0)
        );
    }
}

#[test]
fn a_silent_client_times_out() {
    let pki = pki("localhost");
    let a = acceptor(&pki, Versions::Both).with_handshake_timeout(Some(Duration::from_secs(3)));
    let r = run(async move |_| {
        let (client_end, server_end) = pipe();
        let r = a.accept(server_end).await.map(|_| ());
        drop(client_end);
        r
    });
    assert!(matches!(r, Err(TlsError::HandshakeTimeout)), "{r:?}");
}

#[test]
fn bad_pem_is_reported() {
    let pki = pki("localhost");
    let opts = ServerOptions::default();
    assert!(matches!(opts.build(b"", pki.key_pem.as_bytes()), Err(TlsError::NoCertificate)));
    assert!(matches!(opts.build(pki.cert_pem.as_bytes(), b"nothing"), Err(TlsError::NoPrivateKey)));
    assert!(matches!(opts.build(pki.key_pem.as_bytes(), pki.key_pem.as_bytes()), Err(TlsError::NoCertificate)));
    // A key that does not match the certificate.
    let other = pki_other();
    assert!(matches!(opts.build(pki.cert_pem.as_bytes(), other.as_bytes()), Err(TlsError::Config(_))));
}

fn pki_other() -> String {
    pki("other").key_pem
}

/// A server that speaks only `http/1.1` and a client that offers only
/// `protocols`: the client's handshake fails with the server's alert.
fn alpn_mismatch(versions: Versions, protocols: &[&[u8]]) -> (Result<(), TlsError>, Result<(), TlsError>) {
    let pki = pki("localhost");
    let config =
        ServerOptions::default().alpn(&[b"http/1.1"]).build(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
    let a = TlsAcceptor::new(config).unwrap();
    let roots = ClientOptions::roots_from_pem(pki.cert_pem.as_bytes()).unwrap();
    let c =
        TlsConnector::new(ClientOptions::default().versions(versions).alpn(protocols).build(roots).unwrap()).unwrap();
    run(async move |s| {
        let (client_end, server_end) = pipe();
        let server = s.spawn(async move { a.accept(server_end).await.map(|_| ()) });
        let client = c.connect(name("localhost"), client_end).await.map(|_| ());
        (client, server.await)
    })
}

#[test]
fn an_alpn_mismatch_reaches_the_client_as_no_application_protocol_in_tls13_and_tls12() {
    for versions in [Versions::Tls13, Versions::Tls12] {
        let (client, server) = alpn_mismatch(versions, &[b"h2"]);
        assert!(
            matches!(server, Err(TlsError::Protocol(rustls::Error::NoApplicationProtocol))),
            "{versions:?}: server {server:?}"
        );
        assert!(
            matches!(
                client,
                Err(TlsError::Protocol(rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)))
            ),
            "{versions:?}: the client got {client:?}, not the server's no_application_protocol alert"
        );
    }
}

/// A time source for configurations built here with rustls directly.
#[derive(Debug)]
struct HostClock;

impl rustls::time_provider::TimeProvider for HostClock {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        Some(rustls::pki_types::UnixTime::since_unix_epoch(since))
    }
}

/// The suite a client with only `suites` (in that order of preference)
/// negotiates with the server over `versions`.
fn negotiated_suite(
    a: &TlsAcceptor,
    pki: &Pki,
    versions: Versions,
    suites: &[rustls::CipherSuite],
) -> rustls::CipherSuite {
    let mut provider = (*skiff_tls::provider()).clone();
    provider.cipher_suites.retain(|s| suites.contains(&s.suite()));
    provider.cipher_suites.sort_by_key(|s| suites.iter().position(|&c| c == s.suite()));
    assert_eq!(provider.cipher_suites.len(), suites.len());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(skiff_tls::certificates_from_pem(pki.cert_pem.as_bytes()).unwrap().remove(0)).unwrap();
    let version = if versions == Versions::Tls13 { &rustls::version::TLS13 } else { &rustls::version::TLS12 };
    let config =
        rustls::ClientConfig::builder_with_details(std::sync::Arc::new(provider), std::sync::Arc::new(HostClock))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let c = TlsConnector::new(config).unwrap();
    let a = a.clone();
    run(async move |s| {
        let (client_end, server_end) = pipe();
        let _server = s.spawn(async move { a.accept(server_end).await.map(|_| ()) });
        let tls = c.connect(name("localhost"), client_end).await.expect("handshake");
        tls.state().negotiated_cipher_suite().unwrap().suite()
    })
}

#[test]
fn the_server_picks_the_cipher_suite_in_its_own_order() {
    use rustls::CipherSuite as C;
    let pki = pki("localhost");
    let a = acceptor(&pki, Versions::Both);
    // Clients that prefer ChaCha20, or AES-256-GCM (OpenSSL's order, as
    // wrk and curl send it): the server's order (AES-128-GCM with SHA-256
    // first, the cheaper key schedule) wins.
    let tls13 = [
        [C::TLS13_CHACHA20_POLY1305_SHA256, C::TLS13_AES_256_GCM_SHA384, C::TLS13_AES_128_GCM_SHA256],
        [C::TLS13_AES_256_GCM_SHA384, C::TLS13_CHACHA20_POLY1305_SHA256, C::TLS13_AES_128_GCM_SHA256],
    ];
    for offer in tls13 {
        let suite = negotiated_suite(&a, &pki, Versions::Tls13, &offer);
        assert_eq!(suite, C::TLS13_AES_128_GCM_SHA256, "TLS 1.3, {offer:?}: the client's preference won");
    }
    let tls12 = [
        [
            C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ],
        [
            C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ],
    ];
    for offer in tls12 {
        let suite = negotiated_suite(&a, &pki, Versions::Tls12, &offer);
        assert_eq!(
            suite,
            C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            "TLS 1.2, {offer:?}: the client's preference won"
        );
    }
    // A client that offers only the AES-256 or only the ChaCha20 suite
    // still gets it.
    for (versions, only) in [
        (Versions::Tls13, C::TLS13_AES_256_GCM_SHA384),
        (Versions::Tls13, C::TLS13_CHACHA20_POLY1305_SHA256),
        (Versions::Tls12, C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        (Versions::Tls12, C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
    ] {
        assert_eq!(negotiated_suite(&a, &pki, versions, &[only]), only);
    }
}

#[test]
fn a_read_cut_short_by_a_timeout_leaves_the_stream_usable() {
    // An HTTP server waits for a request head with a deadline; when it
    // passes, it answers 408 on the same stream. The abandoned read must
    // not leave anything behind that corrupts what follows.
    let pki = pki("localhost");
    let a = acceptor(&pki, Versions::Both);
    for versions in [Versions::Tls13, Versions::Tls12] {
        let (a, c) = (a.clone(), connector(&pki, versions));
        let got = run(async move |s| {
            let (client_end, server_end) = pipe();
            let server = s.spawn(async move {
                let mut tls = a.accept(server_end).await.expect("server handshake");
                let mut head = Vec::new();
                let mut buf = [0u8; 64];
                // The first part arrives; then nothing until the deadline.
                while !head.ends_with(b"X-Slow: ") {
                    let n = tls.read(&mut buf).await.unwrap();
                    head.extend_from_slice(&buf[..n]);
                }
                let waited = skiff_rt::executor::timeout(Duration::from_secs(2), tls.read(&mut buf)).await;
                assert!(waited.is_err(), "the read was meant to time out");
                tls.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n").await.expect("write after the timeout");
                tls.close().await.expect("close_notify");
            });
            let mut tls = c.connect(name("localhost"), client_end).await.expect("client handshake");
            tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
            let mut answer = Vec::new();
            let mut buf = [0u8; 256];
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                    Err(e) => panic!("the client's read failed: {e}"),
                }
            }
            server.await;
            answer
        });
        assert_eq!(got, b"HTTP/1.1 408 Request Timeout\r\n\r\n", "{versions:?}");
    }
}
