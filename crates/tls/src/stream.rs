//! [`TlsStream`]: rustls's unbuffered engine driven over an async byte
//! stream.
//!
//! The engine owns no buffers. This side keeps three: `incoming` (TLS bytes
//! received and not yet consumed; it grows to one whole record at most and
//! is freed when empty), `outgoing` (records to send; sent before anything
//! else waits) and `plain` (decrypted application data not yet read). One
//! [`TlsStream::step`] runs the engine until it needs something, and the
//! async methods do the I/O it asks for. Nothing here blocks or spawns:
//! every wait is a read or write on the transport, so timeouts are the
//! caller's (`skiff::time::timeout`) and a handshake has its own.

use crate::TlsError;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;
use embedded_io_async::{ErrorType, Read, Write};
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus};
use rustls::{ClientConfig, CommonState, ServerConfig};

/// The largest TLS record on the wire: 2^14 bytes of plaintext plus the
/// most expansion TLS 1.2 allows, plus the header.
const MAX_RECORD: usize = 16 * 1024 + 2048 + 5;
/// Read at most this much at a time from the transport. The buffer is
/// allocated while the read waits, so an idle connection holds this much:
/// kept small, as records arrive in pieces anyway.
const READ_CHUNK: usize = 2 * 1024;
/// Plaintext encrypted per transport write (four full records).
const WRITE_CHUNK: usize = 4 * crate::MAX_FRAGMENT;
/// Per-record overhead allowance when sizing the outgoing buffer.
const RECORD_OVERHEAD: usize = 5 + 8 + 16 + 256;

/// A rustls unbuffered connection: the server or the client side.
pub trait Engine {
    /// The side's connection data.
    type Data;
    /// Runs the engine over the received bytes.
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
    /// The negotiated parameters.
    fn state(&self) -> &CommonState;
}

impl Engine for UnbufferedServerConnection {
    type Data = rustls::server::ServerConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn state(&self) -> &CommonState {
        self
    }
}

impl Engine for UnbufferedClientConnection {
    type Data = rustls::client::ClientConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn state(&self) -> &CommonState {
        self
    }
}

/// What the engine needs next.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Call again: something changed (a record encoded, plaintext stashed).
    Again,
    /// Send `outgoing` before anything else.
    Transmit,
    /// More bytes from the peer are needed.
    NeedInput,
    /// Application data may be written (handshake far enough along); the
    /// number of plaintext bytes encrypted, if a write was asked for.
    Writable(usize),
    /// Both sides sent close_notify.
    Closed,
}

/// Received bytes being read into: on drop, the buffer keeps only `keep`
/// bytes (what was there before, plus what the read delivered).
struct PendingRead<'a> {
    buf: &'a mut Vec<u8>,
    keep: usize,
}

impl Drop for PendingRead<'_> {
    fn drop(&mut self) {
        self.buf.truncate(self.keep);
    }
}

/// A TLS connection over the byte stream `S`.
pub struct TlsStream<S, C> {
    io: S,
    conn: C,
    incoming: Vec<u8>,
    outgoing: Vec<u8>,
    plain: Vec<u8>,
    plain_pos: usize,
    peer_closed: bool,
    close_sent: bool,
    io_eof: bool,
}

/// A server-side TLS stream.
pub type ServerTlsStream<S> = TlsStream<S, UnbufferedServerConnection>;
/// A client-side TLS stream.
pub type ClientTlsStream<S> = TlsStream<S, UnbufferedClientConnection>;

fn io_error<E: embedded_io_async::Error>(e: E) -> TlsError {
    TlsError::Io(e.kind())
}

impl<S: Read + Write, C: Engine> TlsStream<S, C> {
    fn new(io: S, conn: C) -> Self {
        TlsStream {
            io,
            conn,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            plain: Vec::new(),
            plain_pos: 0,
            peer_closed: false,
            close_sent: false,
            io_eof: false,
        }
    }

    /// The negotiated parameters: protocol version, cipher suite, ALPN
    /// protocol, whether the session was resumed.
    pub fn state(&self) -> &CommonState {
        self.conn.state()
    }

    /// The transport.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The transport, mutably (writing to it directly corrupts the TLS
    /// stream).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Runs the engine once over what has arrived. With `data`, encrypts
    /// as much of it as one transport write carries once the engine allows
    /// application data; with `close`, queues close_notify instead.
    fn step(&mut self, data: Option<&[u8]>, close: bool) -> Result<Step, TlsError> {
        let status = self.conn.process(&mut self.incoming);
        let mut discard = status.discard;
        let step = match status.state {
            Err(e) => Err(TlsError::Protocol(e)),
            Ok(ConnectionState::ReadTraffic(mut records)) => {
                let mut result = Ok(Step::Again);
                while let Some(record) = records.next_record() {
                    match record {
                        Ok(r) => {
                            discard += r.discard;
                            if self.plain_pos == self.plain.len() {
                                self.plain.clear();
                                self.plain_pos = 0;
                            }
                            self.plain.extend_from_slice(r.payload);
                        }
                        Err(e) => {
                            result = Err(TlsError::Protocol(e));
                            break;
                        }
                    }
                }
                result
            }
            Ok(ConnectionState::ReadEarlyData(_)) => {
                // The configurations this crate builds never accept early
                // data, so the engine cannot offer it.
                Err(TlsError::Protocol(rustls::Error::General("unexpected early data".into())))
            }
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                let mut room = 4096;
                loop {
                    let start = self.outgoing.len();
                    self.outgoing.resize(start + room, 0);
                    match encode.encode(&mut self.outgoing[start..]) {
                        Ok(n) => {
                            self.outgoing.truncate(start + n);
                            break Ok(Step::Again);
                        }
                        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                            self.outgoing.truncate(start);
                            room = required_size;
                        }
                        Err(EncodeError::AlreadyEncoded) => {
                            self.outgoing.truncate(start);
                            break Ok(Step::Again);
                        }
                    }
                }
            }
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                // The records stay in `outgoing` until they are sent, which
                // happens before anything waits for the peer.
                transmit.done();
                Ok(Step::Transmit)
            }
            Ok(ConnectionState::BlockedHandshake) => Ok(Step::NeedInput),
            Ok(ConnectionState::PeerClosed) => {
                self.peer_closed = true;
                Ok(Step::Again)
            }
            Ok(ConnectionState::Closed) => {
                self.peer_closed = true;
                Ok(Step::Closed)
            }
            Ok(ConnectionState::WriteTraffic(mut writer)) => {
                if close {
                    let start = self.outgoing.len();
                    self.outgoing.resize(start + 64, 0);
                    match writer.queue_close_notify(&mut self.outgoing[start..]) {
                        Ok(n) => {
                            self.outgoing.truncate(start + n);
                            self.close_sent = true;
                            Ok(Step::Writable(0))
                        }
                        Err(_) => {
                            self.outgoing.truncate(start);
                            Err(TlsError::Closed)
                        }
                    }
                } else if let Some(data) = data {
                    let data = &data[..data.len().min(WRITE_CHUNK)];
                    let records = data.len().div_ceil(crate::MAX_FRAGMENT).max(1);
                    let start = self.outgoing.len();
                    self.outgoing.resize(start + data.len() + records * RECORD_OVERHEAD, 0);
                    match writer.encrypt(data, &mut self.outgoing[start..]) {
                        Ok(n) => {
                            self.outgoing.truncate(start + n);
                            Ok(Step::Writable(data.len()))
                        }
                        Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                            self.outgoing.resize(start + required_size, 0);
                            match writer.encrypt(data, &mut self.outgoing[start..]) {
                                Ok(n) => {
                                    self.outgoing.truncate(start + n);
                                    Ok(Step::Writable(data.len()))
                                }
                                Err(_) => {
                                    self.outgoing.truncate(start);
                                    Err(TlsError::Closed)
                                }
                            }
                        }
                        Err(EncryptError::EncryptExhausted) => {
                            self.outgoing.truncate(start);
                            Err(TlsError::Closed)
                        }
                    }
                } else {
                    Ok(Step::Writable(0))
                }
            }
            // A state this crate does not know (the enum is non-exhaustive):
            // going round again would spin, so end the connection.
            Ok(_) => Err(TlsError::Protocol(rustls::Error::General("unsupported engine state".into()))),
        };
        self.incoming.drain(..discard);
        if self.incoming.is_empty() && self.incoming.capacity() > 0 {
            // Idle connections keep no receive buffer: with hundreds of
            // them open, that is most of their memory.
            self.incoming = Vec::new();
        }
        step
    }

    /// Sends everything in `outgoing`.
    async fn transmit(&mut self) -> Result<(), TlsError> {
        if self.outgoing.is_empty() {
            return Ok(());
        }
        // Sent bytes leave `outgoing` as each write completes, so a caller
        // that gives up on a write (a timeout) and writes again later
        // neither repeats nor loses a byte.
        while !self.outgoing.is_empty() {
            match self.io.write(&self.outgoing).await {
                Ok(0) => return Err(TlsError::Io(embedded_io_async::ErrorKind::WriteZero)),
                Ok(n) => {
                    self.outgoing.drain(..n);
                }
                Err(e) => return Err(io_error(e)),
            }
        }
        // Nothing is kept between writes (see `step` for `incoming`).
        self.outgoing = Vec::new();
        Ok(())
    }

    /// Reads more TLS bytes from the transport; false at its end.
    async fn receive(&mut self) -> Result<bool, TlsError> {
        // Whatever the engine produced goes out before waiting for the
        // peer, which may be waiting for it.
        self.transmit().await?;
        if self.io_eof {
            return Ok(false);
        }
        let start = self.incoming.len();
        if start >= MAX_RECORD {
            // The engine refuses oversized records before this; a full
            // buffer means it cannot make progress.
            return Err(TlsError::Protocol(rustls::Error::InvalidMessage(rustls::InvalidMessage::MessageTooLarge)));
        }
        let room = READ_CHUNK.min(MAX_RECORD - start);
        // The room is zero-filled while the read waits. If the caller gives
        // up on the read (a timeout drops this future), the guard takes the
        // room away again: the engine must never see it as received bytes.
        let mut pending = PendingRead { buf: &mut self.incoming, keep: start };
        pending.buf.resize(start + room, 0);
        let n = self.io.read(&mut pending.buf[start..]).await.map_err(io_error)?;
        pending.keep = start + n;
        drop(pending);
        if n == 0 {
            self.io_eof = true;
        }
        Ok(n > 0)
    }

    /// Runs the handshake to its end.
    async fn handshake(&mut self) -> Result<(), TlsError> {
        loop {
            match self.step(None, false)? {
                Step::Again => {}
                Step::Transmit => self.transmit().await?,
                Step::Writable(_) if !self.conn.state().is_handshaking() => {
                    return self.transmit().await;
                }
                Step::NeedInput | Step::Writable(_) => {
                    if !self.receive().await? {
                        return Err(TlsError::UnexpectedEof);
                    }
                }
                Step::Closed => return Err(TlsError::UnexpectedEof),
            }
        }
    }

    /// After a protocol error the engine has queued an alert for the peer;
    /// send it (best effort) so the peer learns why. Each call gives out one
    /// queued record; once the queue is empty the engine would parse the
    /// bad input again, so this stops at the alert. In TLS 1.3 a handshake
    /// can fail after the ServerHello is queued (ALPN is chosen in the
    /// encrypted extensions): the alert is then encrypted, the peer reads
    /// it only after that ServerHello, and so every record up to the alert
    /// goes out, in order. The alert is the last record queued: a plaintext
    /// alert, or the first encrypted record (what came before the failing
    /// message was already sent).
    async fn send_alert(&mut self) {
        // A few records at most (ServerHello, ChangeCipherSpec, alert); the
        // bound only guards against an engine that never stops.
        for _ in 0..8 {
            let status = self.conn.process(&mut self.incoming);
            let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state else { break };
            let start = self.outgoing.len();
            let mut room = 512;
            let encoded = loop {
                self.outgoing.resize(start + room, 0);
                match encode.encode(&mut self.outgoing[start..]) {
                    Ok(n) => {
                        self.outgoing.truncate(start + n);
                        break n > 0;
                    }
                    Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size }))
                        if room < required_size =>
                    {
                        room = required_size;
                    }
                    Err(_) => {
                        self.outgoing.truncate(start);
                        break false;
                    }
                }
            };
            const ALERT: u8 = 0x15;
            const ENCRYPTED: u8 = 0x17;
            if !encoded || matches!(self.outgoing[start], ALERT | ENCRYPTED) {
                break;
            }
        }
        let _ = self.transmit().await;
    }

    async fn handshake_within(&mut self, limit: Option<Duration>) -> Result<(), TlsError> {
        let result = match limit {
            Some(limit) => match skiff_rt::executor::timeout(limit, self.handshake()).await {
                Ok(r) => r,
                Err(_) => Err(TlsError::HandshakeTimeout),
            },
            None => self.handshake().await,
        };
        if let Err(TlsError::Protocol(_)) = &result {
            self.send_alert().await;
        }
        result
    }

    /// Sends close_notify (once) and everything still queued. The transport
    /// stays open; drop or shut it down afterwards.
    pub async fn close(&mut self) -> Result<(), TlsError> {
        if !self.close_sent {
            loop {
                match self.step(None, true)? {
                    Step::Writable(_) | Step::Closed => break,
                    Step::Again => {}
                    Step::Transmit => self.transmit().await?,
                    Step::NeedInput => {
                        if !self.receive().await? {
                            break;
                        }
                    }
                }
            }
        }
        self.transmit().await
    }

    /// Whether the peer sent close_notify (or closed the transport).
    pub fn peer_closed(&self) -> bool {
        self.peer_closed || self.io_eof
    }

    /// Reads decrypted application data; 0 at the end of the stream. A
    /// transport that ends without close_notify also reads as the end (the
    /// protocol above must tell a truncated message, as HTTP does with
    /// `Content-Length`).
    pub async fn read_plain(&mut self, buf: &mut [u8]) -> Result<usize, TlsError> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.plain_pos < self.plain.len() {
                let n = buf.len().min(self.plain.len() - self.plain_pos);
                buf[..n].copy_from_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
                self.plain_pos += n;
                if self.plain_pos == self.plain.len() {
                    self.plain = Vec::new();
                    self.plain_pos = 0;
                }
                return Ok(n);
            }
            if self.peer_closed {
                return Ok(0);
            }
            match self.step(None, false)? {
                Step::Again => {}
                Step::Transmit => self.transmit().await?,
                Step::NeedInput | Step::Writable(_) => {
                    // The engine has taken every whole record; what is left
                    // in `incoming` at the transport's end is a fragment.
                    if !self.receive().await? {
                        return Ok(0);
                    }
                }
                Step::Closed => return Ok(0),
            }
        }
    }

    /// Encrypts and sends some of `data`; returns how much.
    pub async fn write_plain(&mut self, data: &[u8]) -> Result<usize, TlsError> {
        if data.is_empty() {
            return Ok(0);
        }
        if self.close_sent {
            return Err(TlsError::Closed);
        }
        loop {
            match self.step(Some(data), false)? {
                Step::Writable(n) if n > 0 => {
                    self.transmit().await?;
                    return Ok(n);
                }
                Step::Again | Step::Writable(_) => {}
                Step::Transmit => self.transmit().await?,
                Step::NeedInput => {
                    if !self.receive().await? {
                        return Err(TlsError::UnexpectedEof);
                    }
                }
                Step::Closed => return Err(TlsError::Closed),
            }
        }
    }
}

impl<S, C> ErrorType for TlsStream<S, C> {
    type Error = TlsError;
}

impl<S: Read + Write, C: Engine> Read for TlsStream<S, C> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, TlsError> {
        self.read_plain(buf).await
    }
}

impl<S: Read + Write, C: Engine> Write for TlsStream<S, C> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, TlsError> {
        self.write_plain(buf).await
    }

    async fn flush(&mut self) -> Result<(), TlsError> {
        self.transmit().await?;
        self.io.flush().await.map_err(io_error)
    }
}

/// Accepts TLS connections with one server configuration.
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
    handshake_timeout: Option<Duration>,
}

impl TlsAcceptor {
    /// The default handshake limit: a client that has not finished by then
    /// is dropped.
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

    /// An acceptor; fails without a hardware entropy source.
    pub fn new(config: impl Into<Arc<ServerConfig>>) -> Result<TlsAcceptor, TlsError> {
        crate::random::check()?;
        Ok(TlsAcceptor { config: config.into(), handshake_timeout: Some(Self::HANDSHAKE_TIMEOUT) })
    }

    /// Changes the handshake limit (`None`: no limit).
    pub fn with_handshake_timeout(mut self, limit: Option<Duration>) -> TlsAcceptor {
        self.handshake_timeout = limit;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// Runs the server side of a handshake over `io`. On failure the peer
    /// gets an alert where TLS has one, and the error says why.
    pub async fn accept<S: Read + Write>(&self, io: S) -> Result<ServerTlsStream<S>, TlsError> {
        let conn = UnbufferedServerConnection::new(self.config.clone()).map_err(TlsError::Config)?;
        let mut stream = TlsStream::new(io, conn);
        stream.handshake_within(self.handshake_timeout).await?;
        Ok(stream)
    }
}

/// Opens TLS connections with one client configuration.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    handshake_timeout: Option<Duration>,
}

impl TlsConnector {
    /// A connector; fails without a hardware entropy source.
    pub fn new(config: impl Into<Arc<ClientConfig>>) -> Result<TlsConnector, TlsError> {
        crate::random::check()?;
        Ok(TlsConnector { config: config.into(), handshake_timeout: Some(TlsAcceptor::HANDSHAKE_TIMEOUT) })
    }

    /// Changes the handshake limit (`None`: no limit).
    pub fn with_handshake_timeout(mut self, limit: Option<Duration>) -> TlsConnector {
        self.handshake_timeout = limit;
        self
    }

    /// Runs the client side of a handshake with the server `name` over `io`
    /// and checks its certificate.
    pub async fn connect<S: Read + Write>(
        &self,
        name: ServerName<'static>,
        io: S,
    ) -> Result<ClientTlsStream<S>, TlsError> {
        let conn = UnbufferedClientConnection::new(self.config.clone(), name).map_err(TlsError::Config)?;
        let mut stream = TlsStream::new(io, conn);
        stream.handshake_within(self.handshake_timeout).await?;
        Ok(stream)
    }
}
