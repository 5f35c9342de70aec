//! Async TCP: [`TcpListener`], [`TcpStream`] and its halves.
//!
//! Reads and writes move bytes between the caller and the socket's buffers
//! and wake the stack's driver, which does the actual sending. A write waits
//! while the send buffer is full (backpressure); a read waits while the
//! receive buffer is empty, and returns 0 at the end of the stream.

use crate::stack::{ListenerState, Stack, TcpOptions, now};
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::future::poll_fn;
use core::net::SocketAddr;
use core::task::{Context, Poll};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpEndpoint;

/// A TCP operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpError {
    /// The peer refused the connection (or nobody answered before the
    /// connection timeout).
    ConnectionRefused,
    /// The connection timed out.
    TimedOut,
    /// The connection is closed for sending (shut down, or reset).
    Closed,
    /// The connection was reset by the peer or aborted because the peer
    /// stopped acknowledging, before the end of the stream.
    ConnectionReset,
    /// The address cannot be reached from this interface (no address or
    /// route for it).
    Unaddressable,
    /// The port is already listened on.
    AddressInUse(u16),
}

impl core::fmt::Display for TcpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TcpError::ConnectionRefused => f.write_str("connection refused"),
            TcpError::TimedOut => f.write_str("connection timed out"),
            TcpError::Closed => f.write_str("connection closed"),
            TcpError::ConnectionReset => f.write_str("connection reset before the end of the stream"),
            TcpError::Unaddressable => f.write_str("address unreachable from this interface"),
            TcpError::AddressInUse(p) => write!(f, "TCP port {p} is already in use"),
        }
    }
}

impl core::error::Error for TcpError {}

/// How a listener queues connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenOptions {
    /// Sockets kept listening at any time (how many SYNs one burst of
    /// frames can answer).
    pub backlog: usize,
    /// Most connections in handshake or waiting for `accept`; beyond it new
    /// connection attempts are refused, which bounds the memory a SYN flood
    /// can take.
    pub max_queued: usize,
    /// Options of accepted connections.
    pub tcp: TcpOptions,
}

/// Most buffer memory the default backlog keeps in idle listening sockets.
const BACKLOG_MEMORY: usize = 1 << 20;

impl ListenOptions {
    /// The defaults with the stack's TCP options: a backlog of 16 listening
    /// sockets, fewer when their buffers would hold more than 1 MiB (at
    /// least 2; a socket taken by a SYN is replaced before the next frame,
    /// so a burst of connections still finds listeners), and at most 256
    /// connections queued.
    pub fn with_tcp(tcp: TcpOptions) -> ListenOptions {
        let per_socket = (tcp.rx_buffer + tcp.tx_buffer).max(1);
        ListenOptions { backlog: (BACKLOG_MEMORY / per_socket).clamp(2, 16), max_queued: 256, tcp }
    }
}

/// Accepts TCP connections on a port.
pub struct TcpListener {
    stack: Stack,
    id: usize,
    port: u16,
}

impl TcpListener {
    /// Listens on `port` (all addresses) with the stack's defaults.
    pub fn bind(stack: &Stack, port: u16) -> Result<TcpListener, TcpError> {
        let options = ListenOptions::with_tcp(stack.tcp_defaults());
        TcpListener::bind_with(stack, port, options)
    }

    /// Listens on `port` with `options`.
    pub fn bind_with(stack: &Stack, port: u16, options: ListenOptions) -> Result<TcpListener, TcpError> {
        let mut inner = stack.inner.borrow_mut();
        if port == 0 || inner.listeners.iter().flatten().any(|l| l.port == port) {
            return Err(TcpError::AddressInUse(port));
        }
        let state = ListenerState {
            port,
            options: options.tcp,
            backlog: options.backlog.max(1),
            max_queued: options.max_queued.max(options.backlog.max(1)),
            listening: Vec::new(),
            handshaking: Vec::new(),
            ready: VecDeque::new(),
            waker: None,
        };
        let id = match inner.listeners.iter().position(Option::is_none) {
            Some(i) => {
                inner.listeners[i] = Some(state);
                i
            }
            None => {
                inner.listeners.push(Some(state));
                inner.listeners.len() - 1
            }
        };
        // Listen at once, and say so (the tender learns the service is
        // ready and hands over connections it held).
        crate::stack::refill(&mut inner);
        inner.device.listening(port);
        inner.kick();
        drop(inner);
        Ok(TcpListener { stack: stack.clone(), id, port })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for the next connection.
    pub async fn accept(&self) -> Result<(TcpStream, SocketAddr), TcpError> {
        poll_fn(|cx| {
            let mut inner = self.stack.inner.borrow_mut();
            let inner = &mut *inner;
            let Some(l) = inner.listeners[self.id].as_mut() else { return Poll::Ready(Err(TcpError::Closed)) };
            while let Some(h) = l.ready.pop_front() {
                let remote = inner.sockets.get::<tcp::Socket>(h).remote_endpoint();
                match remote {
                    Some(ep) => {
                        let stream = TcpStream { stack: self.stack.clone(), handle: h, eof: Default::default() };
                        return Poll::Ready(Ok((stream, SocketAddr::from(ep))));
                    }
                    // Reset before it was accepted.
                    None => {
                        inner.sockets.remove(h);
                    }
                }
            }
            l.waker = Some(cx.waker().clone());
            // Accepting made room in the queue: let the driver listen more.
            inner.kick();
            Poll::Pending
        })
        .await
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        let mut inner = self.stack.inner.borrow_mut();
        if let Some(l) = inner.listeners[self.id].take() {
            for h in l.listening.into_iter().chain(l.handshaking).chain(l.ready) {
                inner.sockets.get_mut::<tcp::Socket>(h).abort();
                let deadline = now();
                inner.closing.push((h, deadline));
            }
        }
        inner.kick();
    }
}

/// A TCP connection.
pub struct TcpStream {
    stack: Stack,
    handle: SocketHandle,
    /// The end of the stream was seen: later reads return 0 even after the
    /// socket's state is forgotten (TIME-WAIT expiry).
    eof: core::cell::Cell<bool>,
}

impl TcpStream {
    /// Connects to `remote` with the stack's default options.
    pub async fn connect(stack: &Stack, remote: SocketAddr) -> Result<TcpStream, TcpError> {
        TcpStream::connect_with(stack, remote, stack.tcp_defaults()).await
    }

    /// Connects to `remote` with `options`.
    pub async fn connect_with(stack: &Stack, remote: SocketAddr, options: TcpOptions) -> Result<TcpStream, TcpError> {
        let handle = {
            let mut inner = stack.inner.borrow_mut();
            let handle = inner.new_tcp_socket(&options);
            let port = inner.ephemeral_port();
            let inner = &mut *inner;
            let cx = inner.iface.context();
            let result = inner.sockets.get_mut::<tcp::Socket>(handle).connect(cx, IpEndpoint::from(remote), port);
            if result.is_err() {
                inner.sockets.remove(handle);
                return Err(TcpError::Unaddressable);
            }
            inner.kick();
            handle
        };
        // Owned from here on, so an early return or a dropped future
        // releases the socket.
        let stream = TcpStream { stack: stack.clone(), handle, eof: Default::default() };
        let started = skiff_rt::time::Instant::now();
        poll_fn(|cx| {
            stream.with(|s| match s.state() {
                tcp::State::SynSent | tcp::State::SynReceived => {
                    s.register_send_waker(cx.waker());
                    Poll::Pending
                }
                tcp::State::Closed => {
                    let timed_out = options.timeout.is_some_and(|t| started.elapsed() >= t);
                    Poll::Ready(Err(if timed_out { TcpError::TimedOut } else { TcpError::ConnectionRefused }))
                }
                _ => Poll::Ready(Ok(())),
            })
        })
        .await?;
        Ok(stream)
    }

    fn with<R>(&self, f: impl FnOnce(&mut tcp::Socket<'static>) -> R) -> R {
        f(self.stack.inner.borrow_mut().sockets.get_mut::<tcp::Socket>(self.handle))
    }

    fn kick(&self) {
        self.stack.inner.borrow_mut().kick();
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.with(|s| s.remote_endpoint().map(SocketAddr::from))
    }

    /// This end's address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.with(|s| s.local_endpoint().map(SocketAddr::from))
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<Result<usize, TcpError>> {
        let r = self.with(|s| {
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            if s.can_recv() {
                return Poll::Ready(Ok(s.recv_slice(buf).unwrap_or(0)));
            }
            // No data: an empty read tells a clean end of stream (the peer's
            // FIN) from a reset or an abort.
            match s.recv_slice(&mut []) {
                Err(tcp::RecvError::Finished) => {
                    self.eof.set(true);
                    Poll::Ready(Ok(0))
                }
                Err(tcp::RecvError::InvalidState) if self.eof.get() => Poll::Ready(Ok(0)),
                Err(tcp::RecvError::InvalidState) => Poll::Ready(Err(TcpError::ConnectionReset)),
                Ok(_) => {
                    s.register_recv_waker(cx.waker());
                    Poll::Pending
                }
            }
        });
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            // The window opened: the driver may want to tell the peer.
            self.kick();
        }
        r
    }

    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<Result<usize, TcpError>> {
        let r = self.with(|s| {
            if !s.may_send() {
                return Poll::Ready(Err(TcpError::Closed));
            }
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            if s.can_send() {
                return Poll::Ready(Ok(s.send_slice(buf).unwrap_or(0)));
            }
            s.register_send_waker(cx.waker());
            Poll::Pending
        });
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.kick();
        }
        r
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<Result<(), TcpError>> {
        self.with(|s| {
            if s.send_queue() == 0 {
                return Poll::Ready(Ok(()));
            }
            if !s.may_send() && !matches!(s.state(), tcp::State::FinWait1 | tcp::State::Closing | tcp::State::LastAck) {
                return Poll::Ready(Err(TcpError::Closed));
            }
            s.register_send_waker(cx.waker());
            Poll::Pending
        })
    }

    /// Reads into `buf`; returns how many bytes, 0 at the end of the
    /// stream.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, TcpError> {
        poll_fn(|cx| self.poll_read(cx, buf)).await
    }

    /// Writes some of `buf` (waiting for room); returns how many bytes.
    pub async fn write(&mut self, buf: &[u8]) -> Result<usize, TcpError> {
        poll_fn(|cx| self.poll_write(cx, buf)).await
    }

    /// Writes all of `buf`.
    pub async fn write_all(&mut self, mut buf: &[u8]) -> Result<(), TcpError> {
        while !buf.is_empty() {
            let n = self.write(buf).await?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Waits until everything written has been acknowledged by the peer.
    pub async fn flush(&mut self) -> Result<(), TcpError> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Closes the sending half (sends FIN after the queued data). Reading
    /// goes on until the peer closes its half.
    pub fn shutdown(&mut self) {
        self.with(|s| s.close());
        self.kick();
    }

    /// Closes the sending half and waits until the peer has acknowledged
    /// everything, the close included (or the connection is gone). Use it
    /// before a guest ends, so the peer sees a clean close rather than
    /// silence; bound it with `skiff::time::timeout`.
    pub async fn close(&mut self) {
        self.shutdown();
        poll_fn(|cx| {
            self.with(|s| match s.state() {
                tcp::State::FinWait2 | tcp::State::TimeWait | tcp::State::Closed | tcp::State::Closing => {
                    Poll::Ready(())
                }
                _ => {
                    s.register_send_waker(cx.waker());
                    s.register_recv_waker(cx.waker());
                    Poll::Pending
                }
            })
        })
        .await
    }

    /// Borrowed halves, to read and write from two futures at once.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        (ReadHalf { stream: self }, WriteHalf { stream: self })
    }

    /// Owned halves, to read and write from two tasks. Dropping the write
    /// half shuts down sending; the connection closes when both are gone.
    pub fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        let shared = Rc::new(self);
        (OwnedReadHalf { stream: shared.clone() }, OwnedWriteHalf { stream: shared })
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        let handle = self.handle;
        let mut inner = self.stack.inner.borrow_mut();
        let s = inner.sockets.get_mut::<tcp::Socket>(handle);
        s.close();
        // Nobody reads any more, so nothing is gained by delaying ACKs; and
        // the socket is dropped as soon as it reaches TIME-WAIT, so the ACK
        // of the peer's FIN must leave in the same poll, or the peer waits
        // in LAST-ACK for a retransmission timeout and then gets a reset.
        s.set_ack_delay(None);
        // Finish the close in the background for at most 30 s.
        let deadline = now() + smoltcp::time::Duration::from_secs(30);
        inner.closing.push((handle, deadline));
        inner.kick();
    }
}

/// The reading half of a borrowed split.
pub struct ReadHalf<'a> {
    stream: &'a TcpStream,
}

/// The writing half of a borrowed split.
pub struct WriteHalf<'a> {
    stream: &'a TcpStream,
}

/// The reading half of an owned split.
pub struct OwnedReadHalf {
    stream: Rc<TcpStream>,
}

/// The writing half of an owned split.
pub struct OwnedWriteHalf {
    stream: Rc<TcpStream>,
}

macro_rules! read_half {
    ($t:ty) => {
        impl $t {
            /// Reads into `buf`; 0 at the end of the stream.
            pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, TcpError> {
                poll_fn(|cx| self.stream.poll_read(cx, buf)).await
            }
        }
    };
}

macro_rules! write_half {
    ($t:ty) => {
        impl $t {
            /// Writes some of `buf`; returns how many bytes.
            pub async fn write(&mut self, buf: &[u8]) -> Result<usize, TcpError> {
                poll_fn(|cx| self.stream.poll_write(cx, buf)).await
            }

            /// Writes all of `buf`.
            pub async fn write_all(&mut self, mut buf: &[u8]) -> Result<(), TcpError> {
                while !buf.is_empty() {
                    let n = self.write(buf).await?;
                    buf = &buf[n..];
                }
                Ok(())
            }

            /// Waits until everything written has been acknowledged.
            pub async fn flush(&mut self) -> Result<(), TcpError> {
                poll_fn(|cx| self.stream.poll_flush(cx)).await
            }

            /// Closes the sending half.
            pub fn shutdown(&mut self) {
                self.stream.with(|s| s.close());
                self.stream.kick();
            }
        }
    };
}

read_half!(ReadHalf<'_>);
read_half!(OwnedReadHalf);
write_half!(WriteHalf<'_>);
write_half!(OwnedWriteHalf);

impl Drop for OwnedWriteHalf {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl embedded_io_async::Error for TcpError {
    fn kind(&self) -> embedded_io_async::ErrorKind {
        use embedded_io_async::ErrorKind;
        match self {
            TcpError::ConnectionRefused => ErrorKind::ConnectionRefused,
            TcpError::TimedOut => ErrorKind::TimedOut,
            TcpError::Closed => ErrorKind::NotConnected,
            TcpError::ConnectionReset => ErrorKind::ConnectionReset,
            TcpError::Unaddressable => ErrorKind::AddrNotAvailable,
            TcpError::AddressInUse(_) => ErrorKind::AddrInUse,
        }
    }
}

impl embedded_io_async::ErrorType for TcpStream {
    type Error = TcpError;
}

/// The byte-stream traits that TLS and HTTP are written against.
impl embedded_io_async::Read for TcpStream {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, TcpError> {
        TcpStream::read(self, buf).await
    }
}

impl embedded_io_async::Write for TcpStream {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, TcpError> {
        TcpStream::write(self, buf).await
    }

    /// Data written is already queued for sending: the trait's flush has
    /// nothing to wait for. ([`TcpStream::flush`] waits for the peer's
    /// acknowledgement, which would cost a delayed ACK per response.)
    async fn flush(&mut self) -> Result<(), TcpError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_backlog_holds_at_most_a_mebibyte_of_buffers() {
        let backlog =
            |rx, tx| ListenOptions::with_tcp(TcpOptions { rx_buffer: rx, tx_buffer: tx, ..Default::default() });
        assert_eq!(backlog(4 << 10, 16 << 10).backlog, 16, "small buffers keep the full backlog");
        assert_eq!(backlog(64 << 10, 64 << 10).backlog, 8);
        assert_eq!(ListenOptions::with_tcp(TcpOptions::default()).backlog, 2);
        assert_eq!(backlog(4 << 20, 4 << 20).backlog, 2, "never fewer than two");
        assert_eq!(backlog(0, 0).backlog, 16);
    }
}
