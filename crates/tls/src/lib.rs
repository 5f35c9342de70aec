//! TLS for Skiff services.
//!
//! rustls's protocol engine is sans-IO: its unbuffered API takes the bytes
//! that arrived and says what to do next (send these records, wait for
//! more, here is application data). This crate keeps that split. The engine
//! runs without `std`, on the *ring* crypto provider, with Skiff's clock for
//! certificate validity and Skiff's entropy pool for every random byte; and
//! [`TlsStream`] drives it over any async byte stream (Skiff's TCP streams,
//! or an in-memory pipe in tests) through the `embedded-io-async` traits.
//!
//! ```ignore
//! let config = skiff_tls::ServerOptions::default()
//!     .alpn(&[b"http/1.1"])
//!     .build(CERT_PEM, KEY_PEM)?;
//! let acceptor = skiff_tls::TlsAcceptor::new(config)?;
//! let (tcp, peer) = listener.accept().await?;
//! let mut tls = acceptor.accept(tcp).await?;      // handshake
//! tls.write_all(b"hello").await?;                   // embedded_io_async::Write
//! ```
//!
//! What it offers: TLS 1.2 and 1.3 (either can be forced), ALPN, session
//! resumption (a bounded session cache and rotating ticket keys on the
//! server, a session cache on the client), certificates and keys from PEM
//! (baked into the image or passed at boot), handshake timeouts, and
//! handshake failures reported with a reason while the caller goes on
//! serving. [`random::check`] refuses to start without a hardware entropy
//! source.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod config;
mod error;
pub mod random;
mod stream;
mod ticketer;

pub use config::{ClientOptions, ServerOptions, Versions, certificates_from_pem, private_key_from_pem, provider};
pub use error::TlsError;
pub use rustls;
pub use stream::{ClientTlsStream, Engine, ServerTlsStream, TlsAcceptor, TlsConnector, TlsStream};
pub use ticketer::Ticketer;

/// The most plaintext one record carries (2^14 bytes).
pub const MAX_FRAGMENT: usize = 16 * 1024;
