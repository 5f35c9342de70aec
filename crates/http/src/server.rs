//! The HTTP/1.1 server: one connection's request loop over any async byte
//! stream, and accept loops for Skiff TCP listeners (and TLS, with the
//! `tls` feature).
//!
//! Requests on a connection are answered in order, one at a time, so
//! pipelined requests get their responses in the order they came. Every
//! wait has a deadline: a keep-alive connection that stays idle is closed;
//! a head or body that does not arrive in time gets 408; a client that does
//! not read its response is dropped. Malformed or oversized requests get
//! the status HTTP names for them and the connection is closed; other
//! connections are not affected.

use crate::date::HttpDate;
use crate::request::{BodyLength, ChunkedDecoder, Limits, Parsed, Request, RequestError, RequestHead, parse_head};
use crate::response::{Response, WriteContext, write_head};
use crate::status::Status;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::Cell;
use core::future::Future;
use core::pin::Pin;
use core::time::Duration;
use embedded_io_async::{Read, Write};
use skiff_rt::executor::timeout;
use skiff_rt::time::Instant;

/// Something that answers requests.
pub trait Handler {
    /// Answers one request.
    fn handle(&self, request: Request) -> impl Future<Output = Response>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    fn handle(&self, request: Request) -> impl Future<Output = Response> {
        self(request)
    }
}

/// A boxed handler future, for handlers stored behind `dyn`.
pub type BoxFuture = Pin<alloc::boxed::Box<dyn Future<Output = Response>>>;

/// How the server treats connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Size limits on requests.
    pub limits: Limits,
    /// How long a request's head may take from its first byte: 408 after.
    pub header_timeout: Duration,
    /// How long a request's body may take after its head: 408 after.
    pub body_timeout: Duration,
    /// How long a keep-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// How long writing one response may take (a client that does not
    /// read is dropped).
    pub write_timeout: Duration,
    /// Connections served at once; beyond it new plain-HTTP connections get
    /// 503 and are closed (HTTPS ones are closed before the handshake).
    pub max_connections: usize,
    /// TLS handshakes in progress at once; more wait their turn. A
    /// handshake needs several times the memory of an established
    /// connection, so this bounds the peak when many clients arrive
    /// together.
    pub max_handshakes: usize,
    /// `Strict-Transport-Security: max-age=SECONDS` on every response over
    /// TLS (never over plain HTTP, where browsers ignore it); `None` sends
    /// none. Once a browser has seen it, it uses HTTPS for the host until
    /// the age runs out, so turn it on only where HTTPS will stay.
    pub hsts: Option<Duration>,
    /// How many failed TLS handshakes are logged one by one per interval;
    /// beyond that they are counted and the count is logged once the
    /// interval is over, so peers cannot fill the log.
    pub handshake_log: LogLimit,
}

/// At most `lines` log lines of one kind per `interval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimit {
    /// Lines logged one by one in an interval.
    pub lines: u32,
    /// The interval.
    pub interval: Duration,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit { lines: 10, interval: Duration::from_secs(60) }
    }
}

/// What to do with one event under a [`LogBudget`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogVerdict {
    /// Log it.
    Log,
    /// The budget just ran out: say that further events are counted.
    LogLast,
    /// Count it silently.
    Count,
}

/// Rate limit for a kind of log line that peers can cause: the first
/// [`LogLimit::lines`] events of each interval are logged, the rest
/// counted, and the count is handed back once the interval is over.
#[derive(Clone, Debug)]
pub struct LogBudget {
    limit: LogLimit,
    window_end: Option<Instant>,
    used: u32,
    counted: u64,
}

impl LogBudget {
    /// A fresh budget.
    pub fn new(limit: LogLimit) -> LogBudget {
        LogBudget { limit, window_end: None, used: 0, counted: 0 }
    }

    /// Closes the interval if it is over: the number of events it counted
    /// without logging, if any (log it as one line).
    pub fn roll(&mut self, now: Instant) -> Option<u64> {
        match self.window_end {
            Some(end) if now >= end => {
                self.window_end = None;
                self.used = 0;
                Some(core::mem::take(&mut self.counted)).filter(|&n| n > 0)
            }
            _ => None,
        }
    }

    /// Records one event at `now` (call [`LogBudget::roll`] first).
    pub fn event(&mut self, now: Instant) -> LogVerdict {
        if self.window_end.is_none() {
            self.window_end = Some(now + self.limit.interval);
        }
        if self.used < self.limit.lines {
            self.used += 1;
            if self.used == self.limit.lines { LogVerdict::LogLast } else { LogVerdict::Log }
        } else {
            self.counted += 1;
            LogVerdict::Count
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_handshakes: 32,
            hsts: None,
            handshake_log: LogLimit::default(),
        }
    }
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The client closed it, or asked to (`Connection: close`), or it was
    /// idle too long.
    Done,
    /// A request was refused with this error (and its status was sent).
    Refused(RequestError),
    /// The transport failed or the client stopped reading.
    Transport,
}

/// Counters over the server's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted.
    pub connections: u64,
    /// Requests answered.
    pub requests: u64,
    /// Requests refused with a 4xx/5xx before reaching the handler.
    pub refused: u64,
    /// Connections turned away because of `max_connections`.
    pub turned_away: u64,
    /// TLS handshakes that failed.
    pub failed_handshakes: u64,
}

/// An HTTP server: a handler and its configuration. Shared by the tasks of
/// its connections through an `Rc`.
pub struct Server<H> {
    handler: H,
    config: ServerConfig,
    date: Cell<(u64, HttpDate)>,
    active: Cell<usize>,
    stats: Cell<ServerStats>,
    #[cfg(feature = "tls")]
    handshakes: Gate,
    #[cfg(feature = "tls")]
    handshake_log: core::cell::RefCell<LogBudget>,
}

/// Admits at most a fixed number of holders at a time; the rest wait in
/// line.
#[cfg(feature = "tls")]
struct Gate {
    free: Cell<usize>,
    waiting: core::cell::RefCell<alloc::collections::VecDeque<core::task::Waker>>,
}

#[cfg(feature = "tls")]
impl Gate {
    fn new(n: usize) -> Gate {
        Gate { free: Cell::new(n.max(1)), waiting: Default::default() }
    }

    async fn enter(&self) -> GatePass<'_> {
        core::future::poll_fn(|cx| {
            if self.free.get() > 0 {
                self.free.set(self.free.get() - 1);
                core::task::Poll::Ready(())
            } else {
                self.waiting.borrow_mut().push_back(cx.waker().clone());
                core::task::Poll::Pending
            }
        })
        .await;
        GatePass { gate: self }
    }
}

/// A place in a [`Gate`]; given back when dropped.
#[cfg(feature = "tls")]
struct GatePass<'a> {
    gate: &'a Gate,
}

#[cfg(feature = "tls")]
impl Drop for GatePass<'_> {
    fn drop(&mut self) {
        self.gate.free.set(self.gate.free.get() + 1);
        if let Some(w) = self.gate.waiting.borrow_mut().pop_front() {
            w.wake();
        }
    }
}

enum ReadOutcome {
    Data,
    Eof,
    TimedOut,
    Failed,
}

/// Reads more bytes into `buf` until `deadline`. The room is allocated
/// while the read waits, so a connection waiting for its next request
/// holds little: 1 KiB for a new head (most fit), 8 KiB once one is under
/// way.
async fn read_more<S: Read>(io: &mut S, buf: &mut Vec<u8>, deadline: Instant) -> ReadOutcome {
    let start = buf.len();
    buf.resize(start + if start == 0 { 1024 } else { 8192 }, 0);
    let left = deadline.saturating_duration_since(Instant::now());
    let result = timeout(left, io.read(&mut buf[start..])).await;
    let n = match result {
        Ok(Ok(n)) => n,
        Ok(Err(_)) => {
            buf.truncate(start);
            return ReadOutcome::Failed;
        }
        Err(_) => {
            buf.truncate(start);
            return ReadOutcome::TimedOut;
        }
    };
    buf.truncate(start + n);
    if n == 0 { ReadOutcome::Eof } else { ReadOutcome::Data }
}

/// Responses up to this size go out in one write with their head.
const COALESCE: usize = 16 * 1024;

impl<H: Handler> Server<H> {
    /// A server for `handler`.
    pub fn new(handler: H, config: ServerConfig) -> Server<H> {
        Server {
            handler,
            config,
            date: Cell::new((u64::MAX, HttpDate::from_unix(0))),
            active: Cell::new(0),
            stats: Cell::new(ServerStats::default()),
            #[cfg(feature = "tls")]
            handshakes: Gate::new(config.max_handshakes),
            #[cfg(feature = "tls")]
            handshake_log: core::cell::RefCell::new(LogBudget::new(config.handshake_log)),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> ServerStats {
        self.stats.get()
    }

    fn count(&self, f: impl FnOnce(&mut ServerStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// Connections being served now.
    pub fn active_connections(&self) -> usize {
        self.active.get()
    }

    /// The `Date` header value, formatted once a second.
    fn date(&self) -> HttpDate {
        let secs = skiff_rt::time::wall_clock_nanos() / 1_000_000_000;
        let (cached, date) = self.date.get();
        if cached == secs {
            return date;
        }
        let date = HttpDate::from_unix(secs);
        self.date.set((secs, date));
        date
    }

    /// Writes a response; false if the transport failed or timed out.
    async fn respond<S: Write>(
        &self,
        io: &mut S,
        response: &Response,
        ctx: &WriteContext<'_>,
        out: &mut Vec<u8>,
    ) -> bool {
        out.clear();
        let send_body = write_head(response, ctx, out);
        let body = response.body.as_bytes();
        let write = async {
            if send_body && body.len() <= COALESCE {
                out.extend_from_slice(body);
                io.write_all(out).await?;
            } else {
                io.write_all(out).await?;
                if send_body {
                    io.write_all(body).await?;
                }
            }
            io.flush().await
        };
        matches!(timeout(self.config.write_timeout, write).await, Ok(Ok(())))
    }

    /// Writes a response after which the connection closes (no request to
    /// answer in kind: a refusal, or a server too busy to take one).
    async fn respond_and_close<S: Write>(&self, io: &mut S, response: &Response, out: &mut Vec<u8>) -> bool {
        let date = self.date();
        let ctx = WriteContext {
            method: crate::Method::Get,
            version: crate::Version::Http11,
            keep_alive: false,
            date: date.as_str(),
        };
        self.respond(io, response, &ctx, out).await
    }

    /// Sends the status for a refused request and closes.
    async fn refuse<S: Write>(
        &self,
        io: &mut S,
        error: RequestError,
        secure: bool,
        out: &mut Vec<u8>,
    ) -> ConnectionEnd {
        self.count(|s| s.refused += 1);
        log::debug!("http: refused: {error}");
        let mut response = Response::error(error.status());
        self.add_hsts(&mut response, secure);
        let _ = self.respond_and_close(io, &response, out).await;
        ConnectionEnd::Refused(error)
    }

    /// Adds `Strict-Transport-Security` on a secure connection, when
    /// configured and the handler has not set its own.
    fn add_hsts(&self, response: &mut Response, secure: bool) {
        if let (true, Some(age)) = (secure, self.config.hsts)
            && !response.headers.contains("strict-transport-security")
        {
            let value = alloc::format!("max-age={}", age.as_secs());
            response.headers.set("strict-transport-security", value.into_bytes());
        }
    }

    /// Serves requests on one connection until it ends. The caller closes
    /// the transport afterwards.
    pub async fn serve_connection<S: Read + Write>(&self, io: &mut S) -> ConnectionEnd {
        self.serve(io, false).await
    }

    /// Serves requests on a connection whose transport is secure (TLS), as
    /// [`Server::serve_connection`] does; responses carry
    /// `Strict-Transport-Security` when [`ServerConfig::hsts`] is set.
    pub async fn serve_secure_connection<S: Read + Write>(&self, io: &mut S) -> ConnectionEnd {
        self.serve(io, true).await
    }

    async fn serve<S: Read + Write>(&self, io: &mut S, secure: bool) -> ConnectionEnd {
        let limits = self.config.limits;
        let mut buf: Vec<u8> = Vec::new();
        let mut out: Vec<u8> = Vec::new();
        loop {
            // The head: from the bytes already here (pipelining), or read.
            let idle_deadline = Instant::now() + self.config.idle_timeout;
            let mut head_deadline: Option<Instant> = None;
            let (head, used) = loop {
                if !buf.is_empty() {
                    match parse_head(&buf, &limits) {
                        Ok(Parsed::Complete(head, used)) => break (head, used),
                        Ok(Parsed::Partial) => {}
                        Err(e) => return self.refuse(io, e, secure, &mut out).await,
                    }
                }
                let started = buf.iter().any(|b| !b.is_ascii_whitespace());
                if started && head_deadline.is_none() {
                    head_deadline = Some(Instant::now() + self.config.header_timeout);
                }
                let deadline = head_deadline.unwrap_or(idle_deadline);
                match read_more(io, &mut buf, deadline).await {
                    ReadOutcome::Data => {}
                    ReadOutcome::Eof | ReadOutcome::Failed if !started => return ConnectionEnd::Done,
                    ReadOutcome::Eof => {
                        return self
                            .refuse(io, RequestError::BadRequest("incomplete request head"), secure, &mut out)
                            .await;
                    }
                    ReadOutcome::Failed => return ConnectionEnd::Transport,
                    ReadOutcome::TimedOut if started => {
                        return self.refuse(io, RequestError::Timeout, secure, &mut out).await;
                    }
                    ReadOutcome::TimedOut => return ConnectionEnd::Done,
                }
            };
            buf.drain(..used);
            let body = match self.read_body(io, &head, &mut buf).await {
                Ok(body) => body,
                Err(Some(e)) => return self.refuse(io, e, secure, &mut out).await,
                Err(None) => return ConnectionEnd::Transport,
            };
            if buf.is_empty() {
                // An idle connection keeps no buffers.
                buf = Vec::new();
            }
            let (method, version, keep_alive) = (head.method, head.version, head.keep_alive);
            let mut response = self.handler.handle(Request { head, body }).await;
            self.add_hsts(&mut response, secure);
            self.count(|s| s.requests += 1);
            let keep_alive = keep_alive
                && !response.headers.get_str("connection").is_some_and(|c| crate::headers::lists_token(c, "close"));
            let date = self.date();
            let ctx = WriteContext { method, version, keep_alive, date: date.as_str() };
            if !self.respond(io, &response, &ctx, &mut out).await {
                return ConnectionEnd::Transport;
            }
            if out.capacity() > 4096 {
                out = Vec::new();
            }
            if !keep_alive {
                return ConnectionEnd::Done;
            }
        }
    }

    /// Reads the body `head` announces; `buf` holds bytes already read.
    /// `Err(None)`: the transport failed.
    async fn read_body<S: Read + Write>(
        &self,
        io: &mut S,
        head: &RequestHead,
        buf: &mut Vec<u8>,
    ) -> Result<Vec<u8>, Option<RequestError>> {
        if head.body == BodyLength::None {
            return Ok(Vec::new());
        }
        if head.expect_continue && buf.is_empty() {
            let sent = timeout(self.config.write_timeout, async {
                io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                io.flush().await
            })
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                return Err(None);
            }
        }
        let deadline = Instant::now() + self.config.body_timeout;
        let limit = self.config.limits.body;
        match head.body {
            BodyLength::None => Ok(Vec::new()),
            BodyLength::Exact(n) => {
                let n = n as usize;
                while buf.len() < n {
                    match read_more(io, buf, deadline).await {
                        ReadOutcome::Data => {}
                        ReadOutcome::TimedOut => return Err(Some(RequestError::Timeout)),
                        ReadOutcome::Eof => return Err(Some(RequestError::BadRequest("body shorter than its length"))),
                        ReadOutcome::Failed => return Err(None),
                    }
                }
                Ok(buf.drain(..n).collect())
            }
            BodyLength::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                let mut body = Vec::new();
                loop {
                    let used = decoder.decode(buf, &mut body, limit)?;
                    buf.drain(..used);
                    if decoder.is_done() {
                        return Ok(body);
                    }
                    match read_more(io, buf, deadline).await {
                        ReadOutcome::Data => {}
                        ReadOutcome::TimedOut => return Err(Some(RequestError::Timeout)),
                        ReadOutcome::Eof => return Err(Some(RequestError::BadRequest("chunked body cut short"))),
                        ReadOutcome::Failed => return Err(None),
                    }
                }
            }
        }
    }
}

impl<H: Handler + 'static> Server<H> {
    /// Takes a connection slot, or refuses with 503 when all are taken.
    fn admit(&self) -> Option<Slot<'_, H>> {
        self.count(|s| s.connections += 1);
        if self.active.get() >= self.config.max_connections {
            self.count(|s| s.turned_away += 1);
            return None;
        }
        self.active.set(self.active.get() + 1);
        Some(Slot { server: self })
    }

    /// Accepts plain-HTTP connections on `listener` forever, one task per
    /// connection.
    pub async fn serve_tcp(
        self: Rc<Self>,
        spawner: skiff_rt::Spawner,
        listener: skiff_net::TcpListener,
    ) -> Result<(), skiff_net::TcpError> {
        loop {
            let (mut stream, peer) = listener.accept().await?;
            let server = self.clone();
            spawner.spawn(async move {
                let Some(_slot) = server.admit() else {
                    let mut out = Vec::new();
                    let _ = server.refuse_busy(&mut stream, &mut out).await;
                    stream.shutdown();
                    return;
                };
                let end = server.serve_connection(&mut stream).await;
                log::debug!("http: {peer}: {end:?}");
                stream.shutdown();
            });
        }
    }

    async fn refuse_busy<S: Write>(&self, io: &mut S, out: &mut Vec<u8>) -> bool {
        let mut busy = Response::error(Status::SERVICE_UNAVAILABLE);
        busy.headers.set("retry-after", &b"1"[..]);
        self.respond_and_close(io, &busy, out).await
    }

    /// Accepts HTTPS connections on `listener` forever: a TLS handshake,
    /// then HTTP, one task per connection. Failed handshakes are logged
    /// with the peer and the reason.
    #[cfg(feature = "tls")]
    pub async fn serve_tls(
        self: Rc<Self>,
        spawner: skiff_rt::Spawner,
        listener: skiff_net::TcpListener,
        acceptor: skiff_tls::TlsAcceptor,
    ) -> Result<(), skiff_net::TcpError> {
        loop {
            let (stream, peer) = listener.accept().await?;
            // A quiet spell after a burst of failures still gets its count.
            self.log_unlogged_failures();
            let server = self.clone();
            let acceptor = acceptor.clone();
            spawner.spawn(async move {
                let Some(_slot) = server.admit() else {
                    let mut stream = stream;
                    stream.shutdown();
                    return;
                };
                let pass = server.handshakes.enter().await;
                let accepted = acceptor.accept(stream).await;
                drop(pass);
                let mut tls = match accepted {
                    Ok(tls) => tls,
                    Err(e) => {
                        server.count(|s| s.failed_handshakes += 1);
                        server.log_failed_handshake(peer, &e);
                        return;
                    }
                };
                let end = server.serve_secure_connection(&mut tls).await;
                log::debug!("https: {peer}: {end:?}");
                let _ = timeout(Duration::from_secs(1), tls.close()).await;
                tls.get_mut().shutdown();
            });
        }
    }
}

#[cfg(feature = "tls")]
impl<H> Server<H> {
    /// Logs a failed handshake within [`ServerConfig::handshake_log`].
    fn log_failed_handshake(&self, peer: impl core::fmt::Display, error: &skiff_tls::TlsError) {
        self.log_unlogged_failures();
        let verdict = self.handshake_log.borrow_mut().event(Instant::now());
        match verdict {
            LogVerdict::Log => log::warn!("https: TLS handshake with {peer} failed: {error}"),
            LogVerdict::LogLast => log::warn!(
                "https: TLS handshake with {peer} failed: {error} (further failures in the next {} s are counted, \
                 not logged)",
                self.config.handshake_log.interval.as_secs()
            ),
            LogVerdict::Count => {}
        }
    }

    /// Logs how many failed handshakes went unlogged, once their interval
    /// is over.
    fn log_unlogged_failures(&self) {
        let unlogged = self.handshake_log.borrow_mut().roll(Instant::now());
        if let Some(n) = unlogged {
            log::warn!(
                "https: {n} more TLS handshakes failed in {} s (not logged one by one)",
                self.config.handshake_log.interval.as_secs()
            );
        }
    }
}

/// A connection slot; freed when dropped.
struct Slot<'a, H> {
    server: &'a Server<H>,
}

impl<H> Drop for Slot<'_, H> {
    fn drop(&mut self) {
        self.server.active.set(self.server.active.get() - 1);
    }
}
