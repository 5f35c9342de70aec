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
//! A service reaches it as `skiff::tls` (the `tls` feature of `skiff`):
//!
//! ```ignore
//! use skiff::io::Write as _;
//! use skiff::tls::{ServerOptions, TlsAcceptor};
//!
//! // The chain and key in PEM: `&str` (`include_str!`) or bytes.
//! let config = ServerOptions::default().alpn(&[b"http/1.1"]).build(CERT_PEM, KEY_PEM)?;
//! let acceptor = TlsAcceptor::new(config)?;
//! let listener = skiff::net::TcpListener::bind(&stack, 443)?;
//! let (tcp, _peer) = listener.accept().await?;
//! let mut tls = acceptor.accept(tcp).await?; // the handshake
//! tls.write_all(b"hello").await?; // skiff::io::Write (embedded-io-async)
//! tls.close().await?;
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
