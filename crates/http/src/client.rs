//! An HTTP/1.1 client, enough for a service to call an API: one request and
//! its response over any async byte stream ([`send`]), and [`fetch`] /
//! [`get`], which resolve the host, connect (with TLS for `https://`) and
//! send.

use crate::headers::Headers;
use crate::request::{ChunkedDecoder, Method, RequestError, Version};
use crate::status::Status;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;
use embedded_io_async::{ErrorKind, Read, Write};

/// A request to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRequest {
    /// The method.
    pub method: Method,
    /// The `Host` header value.
    pub host: String,
    /// The target: path and query.
    pub target: String,
    /// Extra header fields.
    pub headers: Headers,
    /// The body (sent with `Content-Length`).
    pub body: Vec<u8>,
}

impl ClientRequest {
    /// A request without a body.
    pub fn new(method: Method, host: &str, target: &str) -> ClientRequest {
        ClientRequest {
            method,
            host: host.to_string(),
            target: target.to_string(),
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> ClientRequest {
        self.headers.append(name, value.into());
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> ClientRequest {
        self.body = body.into();
        self
    }

    /// The request's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\nhost: {}\r\n", self.method, self.target, self.host).into_bytes();
        let mut has_agent = false;
        for (name, value) in self.headers.iter() {
            if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("host") {
                continue;
            }
            if value.iter().any(|&b| b == b'\r' || b == b'\n') {
                continue;
            }
            has_agent |= name.eq_ignore_ascii_case("user-agent");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if !has_agent {
            out.extend_from_slice(b"user-agent: skiff\r\n");
        }
        if !self.body.is_empty() || matches!(self.method, Method::Post | Method::Put | Method::Patch) {
            out.extend_from_slice(format!("content-length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// A response received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientResponse {
    /// The status.
    pub status: Status,
    /// The version the server spoke.
    pub version: Version,
    /// Header fields.
    pub headers: Headers,
    /// The body.
    pub body: Vec<u8>,
}

impl ClientResponse {
    /// The first value of a header, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get_str(name)
    }

    /// The body as text, if it is UTF-8.
    pub fn text(&self) -> Option<&str> {
        core::str::from_utf8(&self.body).ok()
    }
}

/// Limits on what the client accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Largest response head.
    pub head: usize,
    /// Largest response body.
    pub body: usize,
    /// How long the whole exchange may take.
    pub timeout: Duration,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits { head: 64 * 1024, body: 16 * 1024 * 1024, timeout: Duration::from_secs(30) }
    }
}

/// A request failed.
#[derive(Debug)]
pub enum ClientError {
    /// The URL is not `http://` or `https://` with a host, or the
    /// request's target or host holds a space or a control character.
    BadUrl(&'static str),
    /// The host name did not resolve.
    Dns(skiff_net::DnsError),
    /// The connection could not be made.
    Connect(skiff_net::TcpError),
    /// TLS failed (or `https://` without the `tls` feature or a connector).
    #[cfg(feature = "tls")]
    Tls(skiff_tls::TlsError),
    /// `https://` needs a TLS connector.
    TlsUnavailable,
    /// The transport failed.
    Io(ErrorKind),
    /// The server's response is not valid HTTP/1.x.
    BadResponse(&'static str),
    /// The response is larger than the limits.
    TooLarge,
    /// The exchange took longer than the limit.
    Timeout,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::BadUrl(why) => write!(f, "bad URL: {why}"),
            ClientError::Dns(e) => write!(f, "cannot resolve the host: {e}"),
            ClientError::Connect(e) => write!(f, "cannot connect: {e}"),
            #[cfg(feature = "tls")]
            ClientError::Tls(e) => write!(f, "TLS: {e}"),
            ClientError::TlsUnavailable => f.write_str("https:// needs a TLS connector"),
            ClientError::Io(kind) => write!(f, "transport error: {kind:?}"),
            ClientError::BadResponse(why) => write!(f, "bad response: {why}"),
            ClientError::TooLarge => f.write_str("response over the size limit"),
            ClientError::Timeout => f.write_str("the server did not answer in time"),
        }
    }
}

impl core::error::Error for ClientError {}

fn io<E: embedded_io_async::Error>(e: E) -> ClientError {
    ClientError::Io(e.kind())
}

async fn fill<S: Read>(io_: &mut S, buf: &mut Vec<u8>) -> Result<bool, ClientError> {
    let start = buf.len();
    buf.resize(start + 8192, 0);
    match io_.read(&mut buf[start..]).await {
        Ok(n) => {
            buf.truncate(start + n);
            Ok(n > 0)
        }
        Err(e) => {
            buf.truncate(start);
            Err(io(e))
        }
    }
}

/// Sends `request` over `io` and reads the response.
pub async fn send<S: Read + Write>(
    io_: &mut S,
    request: &ClientRequest,
    limits: &ClientLimits,
) -> Result<ClientResponse, ClientError> {
    match skiff_rt::executor::timeout(limits.timeout, exchange(io_, request, limits)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout),
    }
}

async fn exchange<S: Read + Write>(
    io_: &mut S,
    request: &ClientRequest,
    limits: &ClientLimits,
) -> Result<ClientResponse, ClientError> {
    // A space or line break in the target or host would rewrite the
    // request line and add fields of its own.
    let unsafe_text = |s: &str| s.bytes().any(|b| b <= b' ' || b == 0x7f);
    if unsafe_text(&request.target) || unsafe_text(&request.host) {
        return Err(ClientError::BadUrl("a space or control character in the target or host"));
    }
    io_.write_all(&request.encode()).await.map_err(io)?;
    io_.flush().await.map_err(io)?;
    let mut buf = Vec::new();
    loop {
        let (status, version, headers, used) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 100];
            let mut resp = httparse::Response::new(&mut fields);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(used)) => {
                    let status = Status(resp.code.unwrap_or(0));
                    let version = if resp.version == Some(0) { Version::Http10 } else { Version::Http11 };
                    let headers = Headers::from_fields(resp.headers.iter().map(|h| (h.name, h.value)));
                    break (status, version, headers, used);
                }
                Ok(httparse::Status::Partial) => {
                    if buf.len() > limits.head {
                        return Err(ClientError::TooLarge);
                    }
                    if !fill(io_, &mut buf).await? {
                        return Err(ClientError::BadResponse("connection closed before the response head"));
                    }
                }
                Err(_) => return Err(ClientError::BadResponse("malformed response head")),
            }
        };
        buf.drain(..used);
        if (100..200).contains(&status.0) {
            // An interim response (100 Continue): the real one follows.
            continue;
        }
        let body = read_body(io_, request.method, status, &headers, &mut buf, limits).await?;
        return Ok(ClientResponse { status, version, headers, body });
    }
}

async fn read_body<S: Read>(
    io_: &mut S,
    method: Method,
    status: Status,
    headers: &Headers,
    buf: &mut Vec<u8>,
    limits: &ClientLimits,
) -> Result<Vec<u8>, ClientError> {
    if method == Method::Head || status.has_no_body() {
        return Ok(Vec::new());
    }
    let chunked = headers.get_str("transfer-encoding").is_some_and(|te| crate::headers::lists_token(te, "chunked"));
    if chunked {
        let mut decoder = ChunkedDecoder::new();
        let mut body = Vec::new();
        loop {
            let used = decoder.decode(buf, &mut body, limits.body).map_err(|e| match e {
                RequestError::PayloadTooLarge => ClientError::TooLarge,
                _ => ClientError::BadResponse("malformed chunked body"),
            })?;
            buf.drain(..used);
            if decoder.is_done() {
                return Ok(body);
            }
            if !fill(io_, buf).await? {
                return Err(ClientError::BadResponse("chunked body cut short"));
            }
        }
    }
    if let Some(length) = headers.get_str("content-length") {
        let n: usize = length.parse().map_err(|_| ClientError::BadResponse("malformed Content-Length"))?;
        if n > limits.body {
            return Err(ClientError::TooLarge);
        }
        while buf.len() < n {
            if !fill(io_, buf).await? {
                return Err(ClientError::BadResponse("body shorter than its Content-Length"));
            }
        }
        return Ok(buf.drain(..n).collect());
    }
    // Neither: the body runs to the end of the connection (some of it may
    // have come with the head).
    loop {
        if buf.len() > limits.body {
            return Err(ClientError::TooLarge);
        }
        if !fill(io_, buf).await? {
            return Ok(core::mem::take(buf));
        }
    }
}

/// The parts of an `http://` or `https://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `https://`.
    pub tls: bool,
    /// The host (a name or an address; IPv6 without brackets).
    pub host: String,
    /// The port (default 80 or 443).
    pub port: u16,
    /// Path and query (at least `/`).
    pub target: String,
}

impl Url {
    /// Parses a URL.
    pub fn parse(url: &str) -> Result<Url, ClientError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(ClientError::BadUrl("only http:// and https:// are supported"));
        };
        let (authority, target) = match rest.find(['/', '?', '#']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let target = target.split('#').next().unwrap_or("/").to_string();
        if authority.contains('@') {
            return Err(ClientError::BadUrl("user information in URLs is not supported"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, rest) = v6.split_once(']').ok_or(ClientError::BadUrl("unclosed IPv6 address"))?;
            let port = match rest.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| ClientError::BadUrl("bad port"))?,
                None if rest.is_empty() => default_port,
                None => return Err(ClientError::BadUrl("junk after the IPv6 address")),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| ClientError::BadUrl("bad port"))?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(ClientError::BadUrl("no host"));
        }
        Ok(Url { tls, host, port, target })
    }

    /// The `Host` header value.
    pub fn host_header(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if self.port == default { host } else { format!("{host}:{}", self.port) }
    }
}

/// What a fetch may use for `https://` URLs.
#[cfg(feature = "tls")]
pub type Connector<'a> = Option<&'a skiff_tls::TlsConnector>;
/// What a fetch may use for `https://` URLs (none without the `tls`
/// feature).
#[cfg(not(feature = "tls"))]
pub type Connector<'a> = Option<&'a core::convert::Infallible>;

/// Sends `request` to the server in `url` (resolving its name, with TLS
/// for `https://`) and reads the response; the connection is closed after.
pub async fn fetch(
    stack: &skiff_net::Stack,
    url: &str,
    mut request: ClientRequest,
    tls: Connector<'_>,
    limits: &ClientLimits,
) -> Result<ClientResponse, ClientError> {
    let url = Url::parse(url)?;
    request.host = url.host_header();
    request.target = url.target.clone();
    request.headers.set("connection", &b"close"[..]);
    let addrs = stack.resolve(&url.host).await.map_err(ClientError::Dns)?;
    let addr = addrs.first().copied().ok_or(ClientError::BadUrl("the host has no address"))?;
    let mut tcp = skiff_net::TcpStream::connect(stack, core::net::SocketAddr::new(addr, url.port))
        .await
        .map_err(ClientError::Connect)?;
    // A clean close (bounded), so the server is not left waiting on a
    // connection whose guest may end right after.
    let linger = Duration::from_secs(1);
    if !url.tls {
        let r = send(&mut tcp, &request, limits).await;
        let _ = skiff_rt::executor::timeout(linger, tcp.close()).await;
        return r;
    }
    #[cfg(feature = "tls")]
    {
        let connector = tls.ok_or(ClientError::TlsUnavailable)?;
        let name = rustls_name(&url.host)?;
        let mut stream = connector.connect(name, tcp).await.map_err(ClientError::Tls)?;
        let r = send(&mut stream, &request, limits).await;
        let _ = skiff_rt::executor::timeout(linger, async {
            let _ = stream.close().await;
            stream.get_mut().close().await;
        })
        .await;
        r
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = tls;
        Err(ClientError::TlsUnavailable)
    }
}

#[cfg(feature = "tls")]
fn rustls_name(host: &str) -> Result<skiff_tls::rustls::pki_types::ServerName<'static>, ClientError> {
    skiff_tls::rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| ClientError::BadUrl("the host is not a valid server name"))
}

/// GETs `url`.
pub async fn get(stack: &skiff_net::Stack, url: &str, tls: Connector<'_>) -> Result<ClientResponse, ClientError> {
    fetch(stack, url, ClientRequest::new(Method::Get, "", "/"), tls, &ClientLimits::default()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = Url::parse("https://example.org/a/b?c=d#frag").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port, u.target.as_str()), (true, "example.org", 443, "/a/b?c=d"));
        let u = Url::parse("http://10.0.2.2:8080").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port, u.target.as_str()), (false, "10.0.2.2", 8080, "/"));
        assert_eq!(u.host_header(), "10.0.2.2:8080");
        let u = Url::parse("http://[fe80::1]:81/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("fe80::1", 81));
        assert_eq!(u.host_header(), "[fe80::1]:81");
        let u = Url::parse("http://h?q").unwrap();
        assert_eq!(u.target, "/?q");
        let u = Url::parse("http://h#top").unwrap();
        assert_eq!((u.host.as_str(), u.target.as_str()), ("h", "/"));
        let u = Url::parse("https://h:8443?a#b").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.target.as_str()), ("h", 8443, "/?a"));
        assert_eq!(u.host_header(), "h:8443");
        let u = Url::parse("https://[::1]/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 443));
        assert_eq!(u.host_header(), "[::1]");
        let u = Url::parse("http://h:443/").unwrap();
        assert_eq!(u.host_header(), "h:443");
        for bad in [
            "ftp://x/",
            "http://",
            "http://u@h/",
            "http://h:99999/",
            "http://[::1/",
            "http://[::1]x/",
            "http://:80/",
            "http://#x",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_encode() {
        let r = ClientRequest::new(Method::Post, "api.example", "/v1/x").header("x-a", "1").body("hi");
        let text = String::from_utf8(r.encode()).unwrap();
        assert_eq!(
            text,
            "POST /v1/x HTTP/1.1\r\nhost: api.example\r\nx-a: 1\r\nuser-agent: skiff\r\ncontent-length: 2\r\n\r\nhi"
        );
    }
}
