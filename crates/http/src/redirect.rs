//! Redirects from plain HTTP to HTTPS on a host name the service knows.
//!
//! The `Host` a client sends is not to be trusted: echoed into a
//! `Location`, it sends the client (or a cache in between) wherever the
//! request said. [`HttpsRedirect`] only ever points at one of its
//! configured names: the client's `Host` when it is one of them (case
//! aside, port dropped), the canonical name (the first) otherwise,
//! including when there is no `Host` at all (HTTP/1.0). The server's own
//! address never appears unless it is configured as a name.

use crate::request::{Method, Request};
use crate::response::Response;
use crate::server::Handler;
use crate::status::Status;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// A host name that cannot be put into a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostNameError {
    /// No names were given.
    Empty,
    /// This name is not a DNS name, an IPv4 address or a bracketed IPv6
    /// address.
    Invalid(String),
}

impl fmt::Display for HostNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostNameError::Empty => f.write_str("no host name given for redirects"),
            HostNameError::Invalid(name) => {
                write!(f, "{name:?} is not a host name (letters, digits, '-' and '.', or an IPv6 address in brackets)")
            }
        }
    }
}

impl core::error::Error for HostNameError {}

/// Whether `name` may stand as the host of a URL: a DNS name or IPv4
/// address (letters, digits, `-`, `.`; labels of 1 to 63 bytes) or an IPv6
/// address in brackets.
fn valid_host(name: &str) -> bool {
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return !inner.is_empty()
            && inner.len() <= 45
            && inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            && inner.contains(':');
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `example.org:8080` -> `example.org`; `[::1]:8080` -> `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    host.split(':').next().unwrap_or(host)
}

/// Answers every GET and HEAD with `301 Moved Permanently` to the same
/// path on `https://NAME[:PORT]`, where NAME is one of the configured
/// names; other methods get 405.
#[derive(Clone, Debug)]
pub struct HttpsRedirect {
    names: Vec<String>,
    port: u16,
}

impl HttpsRedirect {
    /// Redirects to `names` (the first is the canonical one) on HTTPS
    /// port `port` (left out of the URL when 443).
    pub fn new<S: AsRef<str>>(names: &[S], port: u16) -> Result<HttpsRedirect, HostNameError> {
        if names.is_empty() {
            return Err(HostNameError::Empty);
        }
        let mut list = Vec::with_capacity(names.len());
        for name in names {
            let name = name.as_ref();
            if !valid_host(name) {
                return Err(HostNameError::Invalid(name.to_string()));
            }
            list.push(name.to_ascii_lowercase());
        }
        Ok(HttpsRedirect { names: list, port })
    }

    /// The canonical name.
    pub fn canonical(&self) -> &str {
        &self.names[0]
    }

    /// The name a request with this `Host` field is sent to: the one it
    /// names if configured, the canonical one otherwise.
    pub fn host_for(&self, host: Option<&str>) -> &str {
        let asked = host.map(|h| strip_port(h.trim()));
        let asked = asked.map(|h| h.strip_suffix('.').unwrap_or(h));
        asked
            .and_then(|h| self.names.iter().find(|n| n.strip_suffix('.').unwrap_or(n).eq_ignore_ascii_case(h)))
            .unwrap_or(&self.names[0])
    }

    /// The URL a request for `target` with this `Host` field is sent to.
    pub fn location(&self, host: Option<&str>, target: &str) -> String {
        let host = self.host_for(host);
        // Only origin-form targets are kept (the parser has checked their
        // bytes); anything else goes to the root.
        let target = if target.starts_with('/') { target } else { "/" };
        if self.port == 443 {
            alloc::format!("https://{host}{target}")
        } else {
            alloc::format!("https://{host}:{}{target}", self.port)
        }
    }
}

impl Handler for HttpsRedirect {
    async fn handle(&self, req: Request) -> Response {
        if req.method() != Method::Get && req.method() != Method::Head {
            return Response::error(Status::METHOD_NOT_ALLOWED).header("allow", &b"GET, HEAD"[..]);
        }
        let host = req.header("host");
        Response::redirect(Status::MOVED_PERMANENTLY, &self.location(host, &req.head.target))
    }
}
