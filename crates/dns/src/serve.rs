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
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::time::Duration;

use skiff_net::{TcpError, TcpListener, TcpStream, UdpError, UdpSocket};
use skiff_rt::Spawner;
use skiff_rt::executor::timeout;
use skiff_rt::time::Instant;

use alloc::collections::BTreeMap;
use core::future::poll_fn;
use core::net::{IpAddr, SocketAddr};
use core::task::{Poll, Waker};

use domain::base::iana::{Rcode, Rtype};
use domain::base::name::{Name, ToName};
use skiff_net::Stack;

use crate::secondary::{self, AxfrReader, Request, Secondary, Timers, XfrError};
use crate::tsig::VerifyError;
use crate::update::serial_gt;

#[cfg(feature = "store")]
use crate::journal::{Journal, JournalError};
use crate::server::{Server, Transport};
use crate::tcp::{Deframer, frame};
use crate::xfr::{Peer, Reply};
#[cfg(feature = "store")]
use crate::zone::Record;
#[cfg(feature = "store")]
use alloc::boxed::Box;
#[cfg(feature = "store")]
use core::{future::Future, pin::Pin};

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
    /// The UDP socket, once [`NameServer::serve_udp`] runs: NOTIFY goes
    /// out from it and its acknowledgements come back to it.
    udp: RefCell<Option<Rc<UdpSocket>>>,
    /// Where NOTIFY goes when a zone changes, and the spawner for it.
    notify: RefCell<Option<(Spawner, Vec<NotifyTarget>)>>,
    /// NOTIFY sent and not yet answered, by message ID.
    acks: RefCell<BTreeMap<u16, Rc<Ack>>>,
    /// Secondary zones' refresh tasks, woken by a NOTIFY.
    refresh: RefCell<BTreeMap<Name<Vec<u8>>, Rc<Signal>>>,
    /// The next message ID of a request this server sends.
    next_id: Cell<u16>,
}

/// Where NOTIFY is sent (RFC 1996): a secondary's address, for one zone
/// or (`zone: None`) for every zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyTarget {
    /// The zone, or all of them.
    pub zone: Option<Name<Vec<u8>>>,
    /// The secondary (port 53 as a rule).
    pub addr: SocketAddr,
    /// The TSIG key (one of [`Config::keys`]) that signs the NOTIFY; its
    /// acknowledgement must carry the key's signature. `None`: unsigned.
    ///
    /// [`Config::keys`]: crate::Config::keys
    pub key: Option<Name<Vec<u8>>>,
}

/// A wake-up for one task: raised any number of times, taken once.
#[derive(Debug, Default)]
struct Signal {
    raised: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    fn raise(&self) {
        self.raised.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    async fn wait(&self) {
        poll_fn(|cx| {
            if self.raised.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// A NOTIFY waiting for its answer.
#[derive(Debug)]
struct Ack {
    to: SocketAddr,
    signal: Signal,
    rcode: Cell<Option<Rcode>>,
    /// The TSIG check of the answer, when the NOTIFY was signed.
    request: Request,
}

/// Why a secondary zone's refresh failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// The TCP connection to the primary failed.
    #[error("connection: {0}")]
    Tcp(TcpError),
    /// The primary did not answer in time.
    #[error("no answer within {0} s")]
    Timeout(u64),
    /// The primary closed the connection before the answer was whole.
    #[error("the primary closed the connection")]
    Closed,
    /// The answer is unusable.
    #[error("{0}")]
    Xfr(XfrError),
    /// The transferred zone cannot be served.
    #[error("the zone cannot be served: {0}")]
    Load(crate::LoadError),
    /// The secondary's key is not among the server's keys.
    #[error("no TSIG key {0} for the requests to the primary")]
    NoKey(Name<Vec<u8>>),
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
            udp: RefCell::new(None),
            notify: RefCell::new(None),
            acks: RefCell::new(BTreeMap::new()),
            refresh: RefCell::new(BTreeMap::new()),
            next_id: Cell::new((skiff_rt::time::wall_clock_nanos() >> 10) as u16),
        }
    }

    /// Sends NOTIFY to `targets` whenever a zone changes (an UPDATE, a
    /// secondary zone transferred anew), from the UDP socket, retried
    /// until acknowledged (5 tries, 2 s apart); tasks on `spawner`.
    pub fn notify_to(&self, spawner: Spawner, targets: Vec<NotifyTarget>) {
        *self.notify.borrow_mut() = Some((spawner, targets));
    }

    fn id(&self) -> u16 {
        // IDs of requests to primaries and secondaries: random when the
        // hardware gives randomness, else a counter from the wall clock.
        match skiff_rt::random::next_u64() {
            Ok(r) => r as u16,
            Err(_) => {
                let id = self.next_id.get().wrapping_add(1);
                self.next_id.set(id);
                id
            }
        }
    }

    /// Sends NOTIFY for `zone` to every target configured for it.
    fn send_notifies(self: &Rc<Self>, zone: &Name<Vec<u8>>) {
        let notify = self.notify.borrow();
        let Some((spawner, targets)) = notify.as_ref() else { return };
        for t in targets.iter().filter(|t| t.zone.as_ref().is_none_or(|z| z.name_eq(zone))) {
            let (ns, zone, target) = (self.clone(), zone.clone(), t.clone());
            spawner.spawn(async move { ns.notify_one(zone, target).await });
        }
    }

    async fn notify_one(self: Rc<Self>, zone: Name<Vec<u8>>, target: NotifyTarget) {
        const TRIES: u32 = 5;
        let addr = target.addr;
        for _ in 0..TRIES {
            let id = self.id();
            let (request, serial) = {
                let server = self.server.borrow();
                let Some(z) = server.catalog().zone(zone.for_slice()) else { return };
                let key = match &target.key {
                    Some(name) => match server.key(name.for_slice()) {
                        Some(k) => Some(k),
                        None => {
                            log::error!("dns: NOTIFY of {zone} to {addr} not sent: no TSIG key {name}");
                            return;
                        }
                    },
                    None => None,
                };
                (Request::signed(secondary::notify(id, z), key, unix_time()), z.serial())
            };
            let Some(socket) = self.udp.borrow().clone() else { return };
            let message = (request.message.clone(), serial);
            let ack = Rc::new(Ack { to: addr, signal: Signal::default(), rcode: Cell::new(None), request });
            self.acks.borrow_mut().insert(id, ack.clone());
            let sent = socket.send_to(&message.0, addr).await;
            let answered = sent.is_ok() && timeout(Duration::from_secs(2), ack.signal.wait()).await.is_ok();
            self.acks.borrow_mut().remove(&id);
            match ack.rcode.get() {
                Some(Rcode::NOERROR) if answered => {
                    log::info!("dns: NOTIFY of {zone} serial {} to {addr} acknowledged", message.1);
                    return;
                }
                Some(r) if answered => {
                    log::warn!("dns: NOTIFY of {zone} to {addr} answered {r}");
                    return;
                }
                _ => {}
            }
        }
        log::warn!("dns: NOTIFY of {zone} to {addr} not acknowledged after {TRIES} tries");
    }

    /// A datagram that answers a NOTIFY this server sent.
    fn notify_answered(&self, message: &[u8], from: SocketAddr) {
        let id = u16::from_be_bytes([message[0], message[1]]);
        let acks = self.acks.borrow();
        let Some(ack) = acks.get(&id).filter(|a| a.to.ip() == from.ip()) else { return };
        let rcode = match secondary::notify_acknowledged(message, id) {
            Ok(true) => Rcode::NOERROR,
            Ok(false) => return,
            Err(r) => r,
        };
        // A signed NOTIFY's acknowledgement must be signed with its key
        // (refusals of the signature come unsigned: they say why).
        if let Err(e) = ack.request.check_answer(message, unix_time()) {
            log::warn!("dns: answer from {from} to a NOTIFY ignored: {e}");
            if !matches!(e, XfrError::Tsig(VerifyError::Refused(_))) {
                return;
            }
        }
        ack.rcode.set(Some(rcode));
        ack.signal.raise();
    }

    /// Serves `zone` as a secondary of its primary, forever: loads it by
    /// AXFR over TCP through `stack` (the primary must be reachable: on the
    /// user network, outbound relaying on), then checks the primary's SOA
    /// serial every SOA refresh interval or when the primary sends NOTIFY,
    /// and transfers the zone again when the serial went up. A failed
    /// check is retried after the SOA retry interval (10 s before the
    /// first load); a zone not refreshed for the SOA expire interval is no
    /// longer served. Put `zone` in [`Config::secondaries`] too, so that
    /// NOTIFY from the primary is accepted.
    ///
    /// [`Config::secondaries`]: crate::Config::secondaries
    pub async fn serve_secondary(self: Rc<Self>, stack: Stack, zone: Secondary) {
        let signal = Rc::new(Signal::default());
        self.refresh.borrow_mut().insert(zone.zone.clone(), signal.clone());
        let apex = zone.zone.clone();
        // A zone already there (kept on a disk) counts as fresh at boot.
        let mut fresh = self.server.borrow().catalog().zone(apex.for_slice()).map(|_| Instant::now());
        // No connection out before the stack has its address (DHCP at
        // boot): a first try without one fails and waits the retry.
        if zone.primary.is_ipv4() {
            stack.wait_ipv4().await;
        }
        loop {
            let current = self.server.borrow().catalog().zone(apex.for_slice()).map(|z| z.serial());
            let result = self.refresh_once(&stack, &zone, current).await;
            let timers = self.server.borrow().catalog().zone(apex.for_slice()).and_then(Timers::of);
            let wait = match (&result, timers) {
                (Ok(Some(serial)), _) => {
                    log::info!("dns: zone {apex} serial {serial} transferred from {}", zone.primary);
                    fresh = Some(Instant::now());
                    self.send_notifies(&apex);
                    timers.map_or(3600, |t| t.refresh)
                }
                (Ok(None), _) => {
                    log::debug!("dns: zone {apex} is up to date with {}", zone.primary);
                    fresh = Some(Instant::now());
                    timers.map_or(3600, |t| t.refresh)
                }
                (Err(e), t) => {
                    log::warn!("dns: refresh of zone {apex} from {} failed: {e}", zone.primary);
                    if let (Some(at), Some(t)) = (fresh, t)
                        && at.elapsed() > Duration::from_secs(u64::from(t.expire))
                    {
                        self.server.borrow_mut().remove_zone(apex.for_slice());
                        log::error!(
                            "dns: zone {apex} expired: not refreshed from {} for {} s, no longer served",
                            zone.primary,
                            t.expire
                        );
                        fresh = None;
                    }
                    t.map_or(10, |t| t.retry)
                }
            };
            let wait = Duration::from_secs(u64::from(wait.max(1)));
            let _ = timeout(wait, signal.wait()).await;
        }
    }

    /// One check of the primary: `Ok(Some(serial))` when a newer zone was
    /// transferred, `Ok(None)` when ours is current.
    async fn refresh_once(
        &self,
        stack: &Stack,
        zone: &Secondary,
        current: Option<u32>,
    ) -> Result<Option<u32>, RefreshError> {
        const WAIT: u64 = 10;
        let limit = Duration::from_secs(WAIT);
        let apex = zone.zone.for_slice();
        let key = match &zone.key {
            Some(name) => Some(
                self.server.borrow().key(name.for_slice()).cloned().ok_or_else(|| RefreshError::NoKey(name.clone()))?,
            ),
            None => None,
        };
        let mut stream = timeout(limit, TcpStream::connect(stack, zone.primary))
            .await
            .map_err(|_| RefreshError::Timeout(WAIT))?
            .map_err(RefreshError::Tcp)?;
        let mut deframer = Deframer::new();
        let mut buf = vec![0u8; 16 * 1024];
        if let Some(current) = current {
            let id = self.id();
            let q = Request::signed(secondary::query(id, apex, Rtype::SOA), key.as_ref(), unix_time());
            stream.write_all(&frame(&q.message)).await.map_err(RefreshError::Tcp)?;
            let answer = read_message(&mut stream, &mut deframer, &mut buf, limit).await?;
            q.check_answer(&answer, unix_time()).map_err(RefreshError::Xfr)?;
            let serial = secondary::soa_answer_serial(&answer, id, apex).map_err(RefreshError::Xfr)?;
            if !serial_gt(serial, current) {
                stream.shutdown();
                return Ok(None);
            }
        }
        let id = self.id();
        let now = unix_time();
        let q = Request::signed(secondary::query(id, apex, Rtype::AXFR), key.as_ref(), now);
        stream.write_all(&frame(&q.message)).await.map_err(RefreshError::Tcp)?;
        let mut reader = AxfrReader::new(id, zone.zone.clone());
        if let Some(verifier) = q.verifier {
            reader = reader.with_tsig(verifier, now);
        }
        loop {
            let message = read_message(&mut stream, &mut deframer, &mut buf, limit).await?;
            if reader.push(&message).map_err(RefreshError::Xfr)? {
                break;
            }
        }
        stream.shutdown();
        let records = reader.into_records().unwrap_or_default();
        let serial = records.first().and_then(|r| crate::soa_serial(&r.rdata)).unwrap_or(0);
        self.server.borrow_mut().load_zone(&records).map_err(RefreshError::Load)?;
        #[cfg(feature = "store")]
        if let Some(journal) = &self.journal
            && let Err(e) = journal.keep(records).await
        {
            log::error!("dns: zone {} not kept on the disk: {e}", zone.zone);
        }
        Ok(Some(serial))
    }

    /// Confirms the journal's last commit (when there is a journal): for
    /// a service that stops or goes idle.
    #[cfg(feature = "store")]
    pub async fn sync(&self) -> Result<(), JournalError> {
        match &self.journal {
            Some(j) => j.sync().await,
            None => Ok(()),
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
        let socket = Rc::new(socket);
        *self.udp.borrow_mut() = Some(socket.clone());
        // The largest datagram: a query never needs more, and a bigger one
        // is skipped by the socket.
        let mut buf = vec![0u8; 65_535];
        loop {
            let (n, peer) = socket.recv_from(&mut buf).await.map_err(ServeError::Udp)?;
            if peer.port() == 0 {
                // Cut short by the socket (larger than the buffer): drop it.
                continue;
            }
            if secondary::is_notify_response(&buf[..n]) {
                self.notify_answered(&buf[..n], peer);
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
    async fn serve_message(self: &Rc<Self>, message: &[u8], transport: Transport, client: IpAddr) -> Reply {
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let peer = Peer { transport, addr: client, now_ms, unix_time: unix_time() };
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
        match &reply.event {
            Some(crate::Event::Updated { zone, .. }) => self.send_notifies(zone),
            Some(crate::Event::Notified { zone, .. }) => {
                if let Some(s) = self.refresh.borrow().get(zone) {
                    s.raise();
                }
            }
            _ => {}
        }
        reply
    }

    async fn serve_connection(self: &Rc<Self>, stream: &mut TcpStream, client: IpAddr) -> End {
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
    fn sync(&self) -> Pin<Box<dyn Future<Output = Result<(), JournalError>> + '_>>;
}

#[cfg(feature = "store")]
impl<D: skiff_store::BlockDevice> Keep for Journal<D> {
    fn keep(&self, records: Vec<Record>) -> Pin<Box<dyn Future<Output = Result<(), JournalError>> + '_>> {
        Box::pin(async move { Journal::keep(self, &records).await })
    }

    fn sync(&self) -> Pin<Box<dyn Future<Output = Result<(), JournalError>> + '_>> {
        Box::pin(Journal::sync(self))
    }
}

/// Seconds since the UNIX epoch, by the wall clock (TSIG).
fn unix_time() -> u64 {
    skiff_rt::time::wall_clock_nanos() / 1_000_000_000
}

/// The next whole message on `stream`, within `limit`.
async fn read_message(
    stream: &mut TcpStream,
    deframer: &mut Deframer,
    buf: &mut [u8],
    limit: Duration,
) -> Result<Vec<u8>, RefreshError> {
    let deadline = Instant::now() + limit;
    loop {
        match deframer.next_message() {
            Ok(Some(m)) => return Ok(m.to_vec()),
            Ok(None) => {}
            Err(_) => return Err(RefreshError::Xfr(XfrError::Malformed)),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, stream.read(buf)).await {
            Ok(Ok(0)) => return Err(RefreshError::Closed),
            Ok(Ok(n)) => deframer.push(&buf[..n]),
            Ok(Err(e)) => return Err(RefreshError::Tcp(e)),
            Err(_) => return Err(RefreshError::Timeout(limit.as_secs())),
        }
    }
}
