//! Building rustls configurations for Skiff: the crypto provider, the
//! clock, locks, certificates from PEM, and the options services set.

use crate::TlsError;
use crate::random::PoolRandom;
use crate::ticketer::Ticketer;
#[cfg(skiff_guest)]
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
#[cfg(skiff_guest)]
use core::fmt;
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::crypto::CryptoProvider;
#[cfg(skiff_guest)]
use rustls::lock::{Lock, MakeMutex, MutexGuard, Poisoned};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::ServerSessionMemoryCache;
use rustls::time_provider::TimeProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

/// The cipher suites, most preferred first: AES-128-GCM with SHA-256,
/// then AES-256-GCM with SHA-384, then ChaCha20-Poly1305, for TLS 1.3 and
/// for TLS 1.2 (ECDSA certificates, then RSA). Every suite is AEAD with
/// forward secrecy, and the key exchanges (X25519, P-256) give 128-bit
/// security whichever cipher follows, so the order is by cost: it is
/// Mozilla's recommended server order, and SHA-256 runs on the CPU's SHA
/// extensions where *ring* has no such path for SHA-384 (AMD CPUs): the
/// key schedule and transcript hashing of a full handshake cost less.
static CIPHER_SUITES: [rustls::SupportedCipherSuite; 9] = {
    use rustls::crypto::ring::cipher_suite as s;
    [
        s::TLS13_AES_128_GCM_SHA256,
        s::TLS13_AES_256_GCM_SHA384,
        s::TLS13_CHACHA20_POLY1305_SHA256,
        s::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        s::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        s::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        s::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        s::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        s::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
};

/// The *ring* provider with Skiff's entropy pool as its random source and
/// the cipher suites in `CIPHER_SUITES`'s order.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: CIPHER_SUITES.to_vec(),
        secure_random: &PoolRandom,
        ..rustls::crypto::ring::default_provider()
    })
}

/// Certificate validity is checked against the guest's wall clock (the
/// tender's clock at boot, advanced by the TSC).
#[derive(Debug)]
pub struct SkiffClock;

impl TimeProvider for SkiffClock {
    fn current_time(&self) -> Option<UnixTime> {
        let nanos = skiff_rt::time::wall_clock_nanos();
        Some(UnixTime::since_unix_epoch(core::time::Duration::from_nanos(nanos)))
    }
}

/// rustls's lock for caches without `std`: a spin lock, which on one core
/// with a cooperative executor is never contended. (Host builds have
/// rustls with `std`, whose caches use std's mutex.)
#[cfg(skiff_guest)]
#[derive(Debug)]
pub struct SpinLock;

#[cfg(skiff_guest)]
struct SpinMutex<T>(spinning_top::Spinlock<T>);

#[cfg(skiff_guest)]
impl<T> fmt::Debug for SpinMutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpinMutex")
    }
}

#[cfg(skiff_guest)]
impl<T: Send> Lock<T> for SpinMutex<T> {
    fn lock(&self) -> Result<MutexGuard<'_, T>, Poisoned> {
        Ok(Box::new(self.0.lock()))
    }
}

#[cfg(skiff_guest)]
impl MakeMutex for SpinLock {
    fn make_mutex<T>(value: T) -> Arc<dyn Lock<T>>
    where
        T: Send + 'static,
    {
        Arc::new(SpinMutex(spinning_top::Spinlock::new(value)))
    }
}

/// Which protocol versions to speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Versions {
    /// TLS 1.3 and 1.2 (the default).
    #[default]
    Both,
    /// TLS 1.2 only.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl Versions {
    fn list(self) -> &'static [&'static SupportedProtocolVersion] {
        static BOTH: [&SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];
        static V12: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
        static V13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            Versions::Both => &BOTH,
            Versions::Tls12 => &V12,
            Versions::Tls13 => &V13,
        }
    }
}

/// Every certificate in PEM data, in order (leaf first for a chain).
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(TlsError::Pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in PEM data.
pub fn private_key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(TlsError::NoPrivateKey),
        Err(e) => Err(TlsError::Pem(e)),
    }
}

/// How a server speaks TLS.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// ALPN protocols, most preferred first (e.g. `http/1.1`).
    pub alpn: Vec<Vec<u8>>,
    /// Protocol versions.
    pub versions: Versions,
    /// Sessions remembered for resumption by session ID (TLS 1.2) or
    /// stateful tickets; 0 turns the cache off.
    pub session_cache: usize,
    /// Issue encrypted session tickets (keys rotate every 6 hours).
    pub tickets: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions { alpn: Vec::new(), versions: Versions::Both, session_cache: 256, tickets: true }
    }
}

impl ServerOptions {
    /// Sets the ALPN protocols.
    pub fn alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Sets the protocol versions.
    pub fn versions(mut self, versions: Versions) -> Self {
        self.versions = versions;
        self
    }

    /// Turns resumption (session cache and tickets) on or off.
    pub fn resumption(mut self, on: bool) -> Self {
        self.session_cache = if on { 256 } else { 0 };
        self.tickets = on;
        self
    }

    /// A server configuration for the certificate chain (leaf first) and
    /// private key in PEM form (`&str`, `String` or bytes).
    pub fn build(&self, chain_pem: impl AsRef<[u8]>, key_pem: impl AsRef<[u8]>) -> Result<ServerConfig, TlsError> {
        self.build_der(certificates_from_pem(chain_pem.as_ref())?, private_key_from_pem(key_pem.as_ref())?)
    }

    /// A server configuration for a chain and key already decoded.
    pub fn build_der(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<ServerConfig, TlsError> {
        let mut config = ServerConfig::builder_with_details(provider(), Arc::new(SkiffClock))
            .with_protocol_versions(self.versions.list())
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(TlsError::Config)?;
        config.alpn_protocols = self.alpn.clone();
        // The server's order of cipher suites wins over the client's (see
        // `CIPHER_SUITES`: AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305).
        config.ignore_client_order = true;
        if self.session_cache > 0 {
            #[cfg(skiff_guest)]
            let cache = ServerSessionMemoryCache::new::<SpinLock>(self.session_cache);
            #[cfg(not(skiff_guest))]
            let cache = ServerSessionMemoryCache::new(self.session_cache);
            config.session_storage = cache;
        }
        if self.tickets {
            config.ticketer = Arc::new(Ticketer::new()?);
        }
        Ok(config)
    }
}

/// How a client speaks TLS.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// ALPN protocols to offer.
    pub alpn: Vec<Vec<u8>>,
    /// Protocol versions.
    pub versions: Versions,
    /// Server names whose sessions are remembered for resumption; 0 turns
    /// resumption off.
    pub session_cache: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions { alpn: Vec::new(), versions: Versions::Both, session_cache: 32 }
    }
}

impl ClientOptions {
    /// Sets the ALPN protocols.
    pub fn alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Sets the protocol versions.
    pub fn versions(mut self, versions: Versions) -> Self {
        self.versions = versions;
        self
    }

    /// A client configuration that trusts `roots`.
    pub fn build(&self, roots: RootCertStore) -> Result<ClientConfig, TlsError> {
        let mut config = ClientConfig::builder_with_details(provider(), Arc::new(SkiffClock))
            .with_protocol_versions(self.versions.list())
            .map_err(TlsError::Config)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = self.alpn.clone();
        config.resumption = if self.session_cache > 0 {
            #[cfg(skiff_guest)]
            let cache = ClientSessionMemoryCache::new::<SpinLock>(self.session_cache);
            #[cfg(not(skiff_guest))]
            let cache = ClientSessionMemoryCache::new(self.session_cache);
            Resumption::store(Arc::new(cache))
        } else {
            Resumption::disabled()
        };
        Ok(config)
    }

    /// Trust anchors from PEM certificates (for a private CA or a
    /// self-signed server).
    pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in certificates_from_pem(pem)? {
            roots.add(cert).map_err(TlsError::Config)?;
        }
        Ok(roots)
    }

    /// Mozilla's root certificates (feature `webpki-roots`).
    #[cfg(feature = "webpki-roots")]
    pub fn mozilla_roots() -> RootCertStore {
        RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }
    }
}
