//! The server's CPU time per full TLS 1.3 handshake with *ring* (rustls,
//! as Skiff's TLS uses it), by the suite the server picks: rustls's first
//! choice (AES-256-GCM with SHA-384) against Skiff's (AES-128-GCM with
//! SHA-256), and by key exchange (X25519 against P-256). Client and server
//! run in memory on one thread; only the server's calls are timed, on the
//! thread's own CPU clock, so other load on the machine does not count.
//! The client offers OpenSSL's order (as wrk and curl do), ECDSA P-256
//! certificate, no resumption. *ring* here is built as the workspace's
//! release profile builds it (`opt-level = "s"`, its C code too); guest
//! images build it at `opt-level = 3`, where X25519 costs about what
//! P-256 does (its field arithmetic is partly C; P-256's is assembly).
//!
//! `cargo run --release -p skiff-bench --bin tls-handshake` (openssl).

use rustls::crypto::ring::{cipher_suite, default_provider, kx_group};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection, SupportedCipherSuite};
use std::sync::Arc;

/// This thread's CPU time, seconds.
fn thread_cpu() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid out-parameter for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// The client's check of the server: the signature over the handshake is
/// verified as usual; the certificate (self-signed by openssl, marked as a
/// CA, which webpki refuses as a server's) is taken as it is. The client's
/// work is not measured.
#[derive(Debug)]
struct SignatureOnly(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::client::danger::ServerCertVerifier for SignatureOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Server CPU seconds for one full handshake between `client` and `server`.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> f64 {
    let mut c = ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut spent = 0.0;
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    loop {
        to_server.clear();
        while c.wants_write() {
            c.write_tls(&mut to_server).unwrap();
        }
        let start = thread_cpu();
        let mut rd = &to_server[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets().expect("server");
        }
        to_client.clear();
        while s.wants_write() {
            s.write_tls(&mut to_client).unwrap();
        }
        spent += thread_cpu() - start;
        if to_server.is_empty() && to_client.is_empty() {
            break;
        }
        let mut rd = &to_client[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().expect("client");
        }
    }
    assert!(!c.is_handshaking() && !s.is_handshaking(), "the handshake did not finish");
    spent
}

fn main() {
    skiff_testnet::require_program("openssl", "openssl");
    let dir = std::env::temp_dir().join(format!("skiff-bench-tls-handshake-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = skiff_bench::make_cert(&dir, "127.0.0.1");
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&cert.cert).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(&cert.key).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let client = |groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>| {
        // OpenSSL's suite order: AES-256-GCM, ChaCha20, AES-128-GCM.
        let mut p = default_provider();
        p.kx_groups = groups;
        let verifier = Arc::new(SignatureOnly(p.signature_verification_algorithms));
        p.cipher_suites = vec![
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
        ];
        Arc::new(
            ClientConfig::builder_with_provider(Arc::new(p))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth(),
        )
    };
    let server = |first: SupportedCipherSuite| {
        let mut p = default_provider();
        p.cipher_suites.sort_by_key(|s| s.suite() != first.suite());
        let mut config = ServerConfig::builder_with_provider(Arc::new(p))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .unwrap();
        config.ignore_client_order = true;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Arc::new(config)
    };
    let x25519 = client(vec![kx_group::X25519]);
    let p256 = client(vec![kx_group::SECP256R1]);
    let aes256 = server(cipher_suite::TLS13_AES_256_GCM_SHA384);
    let aes128 = server(cipher_suite::TLS13_AES_128_GCM_SHA256);
    let cases = [
        ("AES-256-GCM-SHA384, X25519 (rustls's first suite)", &x25519, &aes256),
        ("AES-128-GCM-SHA256, X25519 (Skiff's first suite)", &x25519, &aes128),
        ("AES-128-GCM-SHA256, P-256", &p256, &aes128),
    ];
    const N: usize = 2000;
    // Three rounds, the cases interleaved; the median round is shown.
    let mut results = vec![Vec::new(); cases.len()];
    for _ in 0..3 {
        for (i, (_, c, s)) in cases.iter().enumerate() {
            let total: f64 = (0..N).map(|_| handshake(c, s)).sum();
            results[i].push(total / N as f64 * 1e6);
        }
    }
    println!("| server's suite and key exchange | server CPU per full handshake (median of 3 x {N}) | spread |");
    println!("| --- | ---: | ---: |");
    for ((name, _, _), r) in cases.iter().zip(results.iter_mut()) {
        r.sort_by(f64::total_cmp);
        println!("| {name} | {:.1} us | {:.1}-{:.1} us |", r[1], r[0], r[2]);
    }
    println!();
    println!("(ring built with the workspace's release profile, opt-level s; guests build it at opt-level 3)");
}
