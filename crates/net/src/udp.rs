//! Async UDP sockets.

use crate::stack::Stack;
use alloc::vec;
use core::future::poll_fn;
use core::net::SocketAddr;
use core::task::Poll;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp;
use smoltcp::wire::IpEndpoint;

/// A UDP operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpError {
    /// The port is taken (or is 0).
    AddressInUse(u16),
    /// The datagram is larger than the socket's buffer.
    TooLarge(usize),
    /// The destination cannot be reached from this interface.
    Unaddressable,
}

impl core::fmt::Display for UdpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            UdpError::AddressInUse(p) => write!(f, "UDP port {p} is already in use"),
            UdpError::TooLarge(n) => write!(f, "a datagram of {n} bytes does not fit the socket's buffer"),
            UdpError::Unaddressable => f.write_str("address unreachable from this interface"),
        }
    }
}

impl core::error::Error for UdpError {}

/// Datagrams buffered per direction by default.
const DATAGRAMS: usize = 64;
/// Payload bytes buffered per direction by default.
const PAYLOAD: usize = 64 * 1024;

/// A UDP socket's buffers. A burst of datagrams larger than the receive
/// buffer, arriving before the socket's task runs, loses the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpOptions {
    /// Datagrams buffered per direction (64 by default).
    pub datagrams: usize,
    /// Payload bytes buffered per direction (64 KiB by default; at least
    /// 64 KiB, the largest datagram).
    pub payload: usize,
}

impl Default for UdpOptions {
    fn default() -> Self {
        UdpOptions { datagrams: DATAGRAMS, payload: PAYLOAD }
    }
}

/// A bound UDP socket.
pub struct UdpSocket {
    stack: Stack,
    handle: SocketHandle,
    port: u16,
    /// The send buffer's size: no datagram can be larger.
    max_payload: usize,
}

impl UdpSocket {
    /// Binds to `port` on every address.
    pub fn bind(stack: &Stack, port: u16) -> Result<UdpSocket, UdpError> {
        UdpSocket::bind_with(stack, port, UdpOptions::default())
    }

    /// Binds to `port` on every address with `options`' buffers.
    pub fn bind_with(stack: &Stack, port: u16, options: UdpOptions) -> Result<UdpSocket, UdpError> {
        let datagrams = options.datagrams.max(1);
        let payload = options.payload.max(PAYLOAD);
        let mut inner = stack.inner.borrow_mut();
        let mut s = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; datagrams], vec![0u8; payload]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; datagrams], vec![0u8; payload]),
        );
        let taken = inner.sockets.iter().any(|(_, sock)| match sock {
            smoltcp::socket::Socket::Udp(u) => u.endpoint().port == port,
            _ => false,
        });
        if port == 0 || taken || s.bind(port).is_err() {
            return Err(UdpError::AddressInUse(port));
        }
        let handle = inner.sockets.add(s);
        Ok(UdpSocket { stack: stack.clone(), handle, port, max_payload: payload })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends `buf` to `to`, waiting for buffer room.
    pub async fn send_to(&self, buf: &[u8], to: SocketAddr) -> Result<(), UdpError> {
        if buf.len() > self.max_payload {
            return Err(UdpError::TooLarge(buf.len()));
        }
        poll_fn(|cx| {
            let mut inner = self.stack.inner.borrow_mut();
            let s = inner.sockets.get_mut::<udp::Socket>(self.handle);
            match s.send_slice(buf, IpEndpoint::from(to)) {
                Ok(()) => {
                    inner.kick();
                    Poll::Ready(Ok(()))
                }
                Err(udp::SendError::BufferFull) => {
                    s.register_send_waker(cx.waker());
                    Poll::Pending
                }
                Err(udp::SendError::Unaddressable) => Poll::Ready(Err(UdpError::Unaddressable)),
            }
        })
        .await
    }

    /// Receives a datagram into `buf` (truncating what does not fit);
    /// returns its length and sender.
    pub async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), UdpError> {
        poll_fn(|cx| {
            let mut inner = self.stack.inner.borrow_mut();
            let s = inner.sockets.get_mut::<udp::Socket>(self.handle);
            match s.recv_slice(buf) {
                Ok((n, meta)) => Poll::Ready(Ok((n, SocketAddr::from(meta.endpoint)))),
                Err(udp::RecvError::Truncated) => {
                    // Skip the oversized datagram rather than stall the socket.
                    let _ = s.recv();
                    Poll::Ready(Ok((buf.len(), SocketAddr::from(([0, 0, 0, 0], 0)))))
                }
                Err(udp::RecvError::Exhausted) => {
                    s.register_recv_waker(cx.waker());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        let mut inner = self.stack.inner.borrow_mut();
        inner.sockets.remove(self.handle);
    }
}
