//! What can go wrong.

use core::fmt;
use embedded_io_async::ErrorKind;

/// A TLS operation failed.
#[derive(Debug)]
pub enum TlsError {
    /// There is no hardware entropy source, so no keys can be made.
    NoEntropy(skiff_rt::random::RandomError),
    /// A PEM file could not be parsed.
    Pem(rustls::pki_types::pem::Error),
    /// The PEM data holds no certificate.
    NoCertificate,
    /// The PEM data holds no private key.
    NoPrivateKey,
    /// rustls refused the configuration (for example a key that does not
    /// match the certificate, or an unsupported key type).
    Config(rustls::Error),
    /// The TLS protocol failed: a bad record, a failed handshake, an alert
    /// from the peer.
    Protocol(rustls::Error),
    /// The peer closed the transport in the middle of the handshake.
    UnexpectedEof,
    /// The handshake took longer than the configured limit.
    HandshakeTimeout,
    /// The connection is closed for writing (close_notify sent).
    Closed,
    /// The transport failed.
    Io(ErrorKind),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::NoEntropy(e) => write!(f, "TLS cannot start: {e}"),
            TlsError::Pem(e) => write!(f, "bad PEM data: {e:?}"),
            TlsError::NoCertificate => f.write_str("the PEM data holds no certificate"),
            TlsError::NoPrivateKey => f.write_str("the PEM data holds no private key"),
            TlsError::Config(e) => write!(f, "TLS configuration refused: {e}"),
            TlsError::Protocol(e) => write!(f, "{e}"),
            TlsError::UnexpectedEof => f.write_str("the peer closed the connection during the handshake"),
            TlsError::HandshakeTimeout => f.write_str("the handshake timed out"),
            TlsError::Closed => f.write_str("the TLS connection is closed"),
            TlsError::Io(kind) => write!(f, "transport error: {kind:?}"),
        }
    }
}

impl core::error::Error for TlsError {}

impl embedded_io_async::Error for TlsError {
    fn kind(&self) -> ErrorKind {
        match self {
            TlsError::Io(kind) => *kind,
            TlsError::UnexpectedEof | TlsError::Closed => ErrorKind::BrokenPipe,
            TlsError::HandshakeTimeout => ErrorKind::TimedOut,
            TlsError::Protocol(_) => ErrorKind::InvalidData,
            _ => ErrorKind::Other,
        }
    }
}
