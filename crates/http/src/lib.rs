//! HTTP/1.1 for Skiff services.
//!
//! - [`request`] and [`response`]: the head parser, the framing rules and
//!   the chunked decoder, and the response writer. They work on byte slices
//!   and do no I/O, so they are tested on bytes alone.
//! - [`Server`]: the request loop over any async byte stream (a Skiff TCP
//!   stream, or a TLS stream on one): keep-alive, pipelined requests
//!   answered in order, `Content-Length` and chunked bodies, HEAD,
//!   `Expect: 100-continue`, limits on sizes and on time, and the right
//!   status for every request it refuses (400, 405, 408, 411, 413, 414,
//!   431, 501, 505). `serve_tcp` and `serve_tls` (feature `tls`) run the
//!   accept loops.
//! - [`Router`]: method and path to an async handler.
//! - [`StaticFiles`]: files baked into the image with `skiff-kv`, with
//!   ETags, 304s, byte ranges and precompressed gzip.
//! - [`HttpsRedirect`]: plain HTTP answered with redirects to HTTPS on a
//!   configured host name (never the one a client made up).
//! - [`client`]: requests to other servers, over HTTP or HTTPS.
//!
//! ```ignore
//! use skiff::http::{Method, Request, Response, Router, Server, ServerConfig, Status};
//!
//! let hello = |_req: Request| async { Response::text(Status::OK, "hello\n") };
//! let router = Router::new().route(Method::Get, "/hello", hello);
//! let server = Rc::new(Server::new(router, ServerConfig::default()));
//! server.serve_tcp(env.spawner(), skiff::net::TcpListener::bind(&stack, 80)?).await?;
//! ```
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod client;
pub mod date;
pub mod files;
pub mod headers;
pub mod redirect;
pub mod request;
pub mod response;
pub mod router;
pub mod server;
pub mod status;

pub use files::StaticFiles;
pub use headers::Headers;
pub use redirect::{HostNameError, HttpsRedirect};
pub use request::{Limits, Method, Request, RequestError, RequestHead, Version};
pub use response::{Body, Response};
pub use router::Router;
pub use server::{ConnectionEnd, Handler, LogBudget, LogLimit, LogVerdict, Server, ServerConfig, ServerStats};
pub use status::Status;

/// The ALPN protocols an HTTP/1.x server over TLS offers, most preferred
/// first: a client that offers only `http/1.0` (`curl -0`) is served too.
pub const ALPN: &[&[u8]] = &[b"http/1.1", b"http/1.0"];
