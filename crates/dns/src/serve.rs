//! UDP and TCP front ends on Skiff's network stack (cargo feature `net`):
//! they carry bytes between sockets and the sans-IO [`Server`], and hold
//! no DNS logic of their own.
//!
//! - UDP ([`NameServer::serve_udp`]): one socket; each datagram is
//!   answered as it is read (an answer takes microseconds), so no client
//!   can hold the socket up and any number of queries are in flight.
//!   Rate limiting, when configured, applies here.
//! - TCP ([`NameServer::serve_tcp`]): one task per connection, any number
//!   of (pipelined) queries per connection, answered in order; a
//!   connection idle for [`ServeConfig::tcp_idle_timeout`] or not taking
//!   an answer within [`ServeConfig::tcp_write_timeout`] is closed, and
//!   beyond [`ServeConfig::tcp_max_connections`] new connections are
//!   closed at once. A slow TCP client only ever waits in its own task, so
//!   it never stalls the UDP side.
//!
//! ```ignore
//! let server = Server::new(Catalog::new(ZONES)?, Config::default());
//! let ns = NameServer::new(server, ServeConfig::default());
//! env.spawn(ns.clone().serve_udp(UdpSocket::bind(&stack, 53)?));
//! ns.serve_tcp(env.spawner(), TcpListener::bind(&stack, 53)?).await?;
//! ```

use alloc::rc::Rc;
use alloc::vec;
use core::cell::{Cell, RefCell};
use core::time::Duration;

use skiff_net::{TcpError, TcpListener, TcpStream, UdpError, UdpSocket};
use skiff_rt::Spawner;
use skiff_rt::executor::timeout;
use skiff_rt::time::Instant;

use core::net::IpAddr;

use crate::server::{Server, Transport};
#[cfg(feature = "store")]
use crate::journal::{Journal, JournalError};
#[cfg(feature = "store")]
use crate::zone::Record;
#[cfg(feature = "store")]
use alloc::boxed::Box;
#[cfg(feature = "store")]
use alloc::vec::Vec;
#[cfg(feature = "store")]
use core::{future::Future, pin::Pin};
use crate::tcp::{Deframer, frame};
use crate::xfr::{Peer, Reply};

/// How the front ends treat connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeConfig {
    /// A TCP connection with no query for this long is closed (RFC 7766
    /// section 6.2.3: seconds, not minutes). 10 s by default.
    pub tcp_idle_timeout: Duration,
    /// A TCP client that does not take an answer within this is dropped.
    /// 10 s by default.
    pub tcp_write_timeout: Duration,
    /// Most TCP connections served at once; further ones are closed as
    /// they arrive. 100 by default (NSD's `tcp-count`).
    pub tcp_max_connections: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_write_timeout: Duration::from_secs(10),
            tcp_max_connections: 100,
        }
    }
}

/// A front end stopped serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The UDP socket failed.
    #[error("DNS over UDP stopped: {0}")]
    Udp(UdpError),
    /// The TCP listener failed.
    #[error("DNS over TCP stopped: {0}")]
    Tcp(TcpError),
}

/// Counters of what the front ends did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeStats {
    /// Datagrams received on UDP.
    pub udp_queries: u64,
    /// UDP answers sent (truncated ones included).
    pub udp_answers: u64,
    /// Messages received over TCP.
    pub tcp_queries: u64,
    /// TCP connections accepted and served.
    pub tcp_connections: u64,
    /// TCP connections closed at once because of the connection limit.
    pub tcp_turned_away: u64,
    /// TCP connections closed for idleness, a slow reader, or framing
    /// that is not DNS.
    pub tcp_dropped: u64,
}

/// A [`Server`] behind UDP and TCP sockets. Cheap to share (`Rc`): one
/// value serves both transports.
pub struct NameServer {
    server: RefCell<Server<'static>>,
    /// Where changed zones are kept before an update is answered.
    #[cfg(feature = "store")]
    journal: Option<Box<dyn Keep>>,
    config: ServeConfig,
    started: Instant,
    active: Cell<usize>,
    stats: Cell<ServeStats>,
}

impl core::fmt::Debug for NameServer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NameServer").field("config", &self.config).field("stats", &self.stats.get()).finish()
    }
}

/// Releases a TCP connection slot when the connection's task ends.
struct Slot<'a>(&'a NameServer);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get() - 1);
    }
}

/// Why a TCP connection ended.
#[derive(Debug)]
enum End {
    /// The client closed its half, or the connection failed.
    Closed,
    /// Idle too long, too slow to read, or not DNS framing: counted.
    Dropped(&'static str),
}

impl NameServer {
    /// Front ends for `server`.
    pub fn new(server: Server<'static>, config: ServeConfig) -> Rc<NameServer> {
        Rc::new(Self::make(server, config))
    }

    /// Front ends for `server` that keep every zone an UPDATE changes in
    /// `journal`, durably, before the UPDATE is answered (feature
    /// `store`). Restore the journal's zones into `server` first
    /// ([`Journal::restore`]).
    #[cfg(feature = "store")]
    pub fn with_journal<D: skiff_store::BlockDevice + 'static>(
        server: Server<'static>,
        config: ServeConfig,
        journal: Journal<D>,
    ) -> Rc<NameServer> {
        let mut ns = Self::make(server, config);
        ns.journal = Some(Box::new(journal));
        Rc::new(ns)
    }

    fn make(server: Server<'static>, config: ServeConfig) -> NameServer {
        NameServer {
            server: RefCell::new(server),
            #[cfg(feature = "store")]
            journal: None,
            config,
            started: Instant::now(),
            active: Cell::new(0),
            stats: Cell::new(ServeStats::default()),
        }
    }

    /// What has been served so far.
    pub fn stats(&self) -> ServeStats {
        self.stats.get()
    }

    /// TCP connections open now.
    pub fn tcp_connections(&self) -> usize {
        self.active.get()
    }

    fn count(&self, f: impl FnOnce(&mut ServeStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// Answers every datagram on `socket`, forever; only a failing socket
    /// ends it. A datagram that is not a query gets no answer.
    pub async fn serve_udp(self: Rc<Self>, socket: UdpSocket) -> Result<(), ServeError> {
        // The largest datagram: a query never needs more, and a bigger one
        // is skipped by the socket.
        let mut buf = vec![0u8; 65_535];
        loop {
            let (n, peer) = socket.recv_from(&mut buf).await.map_err(ServeError::Udp)?;
            if peer.port() == 0 {
                // Cut short by the socket (larger than the buffer): drop it.
                continue;
            }
            self.count(|s| s.udp_queries += 1);
            let reply = self.serve_message(&buf[..n], Transport::Udp, peer.ip()).await;
            let Some(answer) = reply.messages.into_iter().next() else { continue };
            match socket.send_to(&answer, peer).await {
                Ok(()) => self.count(|s| s.udp_answers += 1),
                // One client's unreachable address stops nobody else.
                Err(UdpError::Unaddressable) => log::debug!("dns: cannot answer {peer}: unreachable"),
                Err(e) => return Err(ServeError::Udp(e)),
            }
        }
    }

    /// Accepts connections on `listener` forever, one task per connection
    /// on `spawner`; only a failing listener ends it.
    pub async fn serve_tcp(self: Rc<Self>, spawner: Spawner, listener: TcpListener) -> Result<(), ServeError> {
        loop {
            let (mut stream, peer) = listener.accept().await.map_err(ServeError::Tcp)?;
            if self.active.get() >= self.config.tcp_max_connections {
                self.count(|s| s.tcp_turned_away += 1);
                log::debug!("dns: TCP connection from {peer} closed: {} connections open", self.active.get());
                stream.shutdown();
                continue;
            }
            self.active.set(self.active.get() + 1);
            self.count(|s| s.tcp_connections += 1);
            let ns = self.clone();
            spawner.spawn(async move {
                let _slot = Slot(&ns);
                let end = ns.serve_connection(&mut stream, peer.ip()).await;
                if let End::Dropped(why) = end {
                    ns.count(|s| s.tcp_dropped += 1);
                    log::debug!("dns: TCP connection from {peer} closed: {why}");
                }
                stream.shutdown();
            });
        }
    }

    /// Answers one message and logs what it did (one line per transfer or
    /// update, refused or not). A zone an update changed is kept in the
    /// journal, when there is one, before the answer goes out.
    async fn serve_message(&self, message: &[u8], transport: Transport, client: IpAddr) -> Reply {
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let unix_time = skiff_rt::time::wall_clock_nanos() / 1_000_000_000;
        let peer = Peer { transport, addr: client, now_ms, unix_time };
        #[cfg(feature = "store")]
        let before = match &self.journal {
            Some(_) => self.server.borrow().update_zone_records(message),
            None => None,
        };
        let reply = self.server.borrow_mut().serve(message, &peer);
        match &reply.event {
            Some(e) if e.is_refusal() => log::warn!("dns: {e}"),
            Some(e) => log::info!("dns: {e}"),
            None => {}
        }
        #[cfg(feature = "store")]
        if let (Some(journal), Some(crate::Event::Updated { zone, .. })) = (&self.journal, &reply.event) {
            // Taken out of the server first: no borrow lives across the
            // write, so other connections keep being answered.
            let records = self.server.borrow().catalog().zone(zone.for_slice()).map(|z| z.records());
            if let Some(records) = records
                && let Err(e) = journal.keep(records).await
            {
                log::error!("dns: update of {zone} not kept on the disk ({e}): undone and answered SERVFAIL");
                let mut server = self.server.borrow_mut();
                if let Some(old) = before {
                    let _ = server.load_zone(&old);
                }
                return Reply { messages: server.servfail(message).into_iter().collect(), event: None };
            }
        }
        reply
    }

    async fn serve_connection(&self, stream: &mut TcpStream, client: IpAddr) -> End {
        let mut deframer = Deframer::new();
        let mut buf = vec![0u8; 4096];
        // Idle means no whole query: a client trickling bytes is idle too.
        let mut deadline = Instant::now() + self.config.tcp_idle_timeout;
        loop {
            // Answer every whole message already read, in order.
            loop {
                let message = match deframer.next_message() {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(_) => return End::Dropped("not DNS over TCP framing"),
                };
                self.count(|s| s.tcp_queries += 1);
                deadline = Instant::now() + self.config.tcp_idle_timeout;
                let reply = self.serve_message(message, Transport::Tcp, client).await;
                for answer in reply.messages {
                    let framed = frame(&answer);
                    match timeout(self.config.tcp_write_timeout, stream.write_all(&framed)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return End::Closed,
                        Err(_) => return End::Dropped("the client does not read its answers"),
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return End::Closed,
                Ok(Ok(n)) => deframer.push(&buf[..n]),
                Err(_) => return End::Dropped("idle"),
            }
        }
    }
}

/// A journal as the front ends use it (object safe: the device type is
/// hidden).
#[cfg(feature = "store")]
trait Keep {
    fn keep(&self, records: Vec<Record>) -> Pin<Box<dyn Future<Output = Result<(), JournalError>> + '_>>;
}

#[cfg(feature = "store")]
impl<D: skiff_store::BlockDevice> Keep for Journal<D> {
    fn keep(&self, records: Vec<Record>) -> Pin<Box<dyn Future<Output = Result<(), JournalError>> + '_>> {
        Box::pin(async move { Journal::keep(self, &records).await })
    }
}
