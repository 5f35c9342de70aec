//! virtio-net: Ethernet frames through a receive and a transmit queue.
//!
//! Frames are handed over in place, as the runtime's `NetDevice` wants
//! them: [`VirtioNet::recv`] lends the received frame straight out of the
//! buffer the device wrote, [`VirtioNet::send`] lets the caller write the
//! frame straight into a transmit buffer. Receive buffers stay posted (each
//! goes back to the device once its frame is taken), and a burst of sends
//! or receives costs one notification, at [`VirtioNet::flush`], and none
//! when the device suppresses notifications.
//!
//! No offloads are negotiated: the network stack computes and checks every
//! checksum itself, and each 2 KiB buffer holds a whole frame, so neither
//! `GUEST_CSUM`/`CSUM` nor mergeable buffers would save work.

use crate::dma::DmaBuf;
use crate::queue::{Buf, SplitQueue};
use crate::transport::{Transport, finish_init, negotiate, reset};
use crate::{DeviceType, Error, features};
use alloc::vec;
use alloc::vec::Vec;

/// The device has a MAC address in its configuration.
pub const F_MAC: u64 = 1 << 5;
/// The device reports an MTU in its configuration.
pub const F_MTU: u64 = 1 << 3;

const RX: u16 = 0;
const TX: u16 = 1;
/// Bytes per buffer: header and a whole frame.
const BUF: usize = 2048;
/// Most entries per queue.
const QUEUE_MAX: u16 = 256;
/// The Ethernet header before the IP packet.
const ETH_HEADER: usize = 14;

/// A virtio-net device.
pub struct VirtioNet<T: Transport> {
    transport: T,
    rx: SplitQueue,
    tx: SplitQueue,
    mac: [u8; 6],
    mtu: usize,
    /// `virtio_net_hdr` bytes before each frame (12 modern, 10 legacy).
    header: usize,
    rx_bufs: DmaBuf,
    /// The receive buffer behind each descriptor head.
    rx_buf_of: Vec<u16>,
    tx_bufs: DmaBuf,
    tx_buf_of: Vec<u16>,
    tx_free: Vec<u16>,
    rx_posted: bool,
    tx_queued: bool,
}

impl<T: Transport> VirtioNet<T> {
    /// Negotiates (the device must offer `MAC`), sets up both queues and
    /// posts every receive buffer.
    pub fn new(mut transport: T) -> Result<VirtioNet<T>, Error> {
        let accepted = negotiate(&mut transport, DeviceType::Net, F_MAC, F_MTU | features::RING_EVENT_IDX)?;
        let event_idx = accepted & features::RING_EVENT_IDX != 0;
        let header = if transport.modern() { 12 } else { 10 };
        let mut mac = [0; 6];
        for (i, b) in mac.iter_mut().enumerate() {
            *b = transport.read_config8(i);
        }
        let largest = BUF - header - ETH_HEADER;
        let mtu = if accepted & F_MTU != 0 { usize::from(transport.read_config16(10)).min(largest) } else { 1500 };
        let rx = SplitQueue::new(&mut transport, RX, QUEUE_MAX, event_idx)?;
        let tx = SplitQueue::new(&mut transport, TX, QUEUE_MAX, event_idx)?;
        // Two descriptors per frame: header and frame apart, which legacy
        // devices without ANY_LAYOUT need.
        let rx_count = usize::from(rx.size() / 2);
        let tx_count = usize::from(tx.size() / 2).max(1);
        let mut net = VirtioNet {
            rx_bufs: DmaBuf::zeroed(rx_count.max(1) * BUF)?,
            rx_buf_of: vec![0; usize::from(rx.size())],
            tx_bufs: DmaBuf::zeroed(tx_count * BUF)?,
            tx_buf_of: vec![0; usize::from(tx.size())],
            tx_free: (0..tx_count as u16).rev().collect(),
            transport,
            rx,
            tx,
            mac,
            mtu,
            header,
            rx_posted: false,
            tx_queued: false,
        };
        for i in 0..rx_count as u16 {
            net.post_rx(i)?;
        }
        // Sent frames' buffers are taken back when the next frame is
        // queued: an interrupt for each would only cost the device work.
        net.tx.set_interrupts(false);
        finish_init(&mut net.transport);
        net.flush()?;
        Ok(net)
    }

    fn post_rx(&mut self, buf: u16) -> Result<(), Error> {
        let at = usize::from(buf) * BUF;
        let chain = [
            Buf { addr: self.rx_bufs.addr(at), len: self.header as u32, writable: true },
            Buf { addr: self.rx_bufs.addr(at + self.header), len: (BUF - self.header) as u32, writable: true },
        ];
        let head = self.rx.add(&chain)?;
        self.rx_buf_of[usize::from(head)] = buf;
        self.rx_posted = true;
        Ok(())
    }

    /// The MAC address from the device's configuration.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The MTU: the device's if it reports one, else 1500.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// The longest frame [`send`](Self::send) takes.
    pub fn max_frame(&self) -> usize {
        self.mtu + ETH_HEADER
    }

    /// The transport, for the platform's interrupt handling.
    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Whether a received frame is waiting.
    pub fn rx_pending(&mut self) -> Result<bool, Error> {
        self.rx.has_used()
    }

    /// Lends the oldest received frame to `f`, then posts its buffer again
    /// (the device hears of it at [`flush`](Self::flush)); `false` if none.
    pub fn recv(&mut self, f: &mut dyn FnMut(&[u8])) -> Result<bool, Error> {
        let Some(used) = self.rx.pop_used()? else {
            return Ok(false);
        };
        let buf = self.rx_buf_of[usize::from(used.head)];
        let len = used.len as usize;
        if len < self.header {
            self.post_rx(buf)?;
            return Err(Error::ShortFrame { len: used.len, header: self.header });
        }
        // `pop_used` checked `len` against the chain's writable bytes.
        f(self.rx_bufs.bytes(usize::from(buf) * BUF + self.header, len - self.header));
        self.post_rx(buf)?;
        Ok(true)
    }

    fn reclaim_tx(&mut self) -> Result<(), Error> {
        while let Some(used) = self.tx.pop_used()? {
            self.tx_free.push(self.tx_buf_of[usize::from(used.head)]);
        }
        Ok(())
    }

    /// Whether a frame can be queued now (takes back buffers the device
    /// has sent).
    pub fn tx_room(&mut self) -> Result<bool, Error> {
        self.reclaim_tx()?;
        Ok(!self.tx_free.is_empty() && self.tx.num_free() >= 2)
    }

    /// Queues a frame of `len` bytes that `f` writes in place; `false` if
    /// there is no room. The device hears of it at [`flush`](Self::flush).
    pub fn send(&mut self, len: usize, f: &mut dyn FnMut(&mut [u8])) -> Result<bool, Error> {
        if len > self.max_frame() {
            return Err(Error::FrameTooLong { len, max: self.max_frame() });
        }
        if !self.tx_room()? {
            return Ok(false);
        }
        let Some(buf) = self.tx_free.pop() else { return Ok(false) };
        let at = usize::from(buf) * BUF;
        // No offloads: an all-zero header.
        self.tx_bufs.bytes_mut(at, self.header).fill(0);
        f(self.tx_bufs.bytes_mut(at + self.header, len));
        let chain = [
            Buf { addr: self.tx_bufs.addr(at), len: self.header as u32, writable: false },
            Buf { addr: self.tx_bufs.addr(at + self.header), len: len as u32, writable: false },
        ];
        match self.tx.add(&chain) {
            Ok(head) => self.tx_buf_of[usize::from(head)] = buf,
            Err(e) => {
                self.tx_free.push(buf);
                return Err(e);
            }
        }
        self.tx_queued = true;
        Ok(true)
    }

    /// Tells the device of the frames queued and the receive buffers posted
    /// since the last flush (one notification per queue at most).
    pub fn flush(&mut self) -> Result<(), Error> {
        if core::mem::take(&mut self.tx_queued) {
            self.tx.kick(&mut self.transport);
        }
        if core::mem::take(&mut self.rx_posted) {
            self.rx.kick(&mut self.transport);
        }
        match self.rx.broken().or(self.tx.broken()) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Asks for (or stops) interrupts when frames arrive.
    pub fn set_rx_interrupts(&mut self, enabled: bool) {
        self.rx.set_interrupts(enabled);
    }
}

impl<T: Transport> Drop for VirtioNet<T> {
    /// Resets the device, so it stops using the queues and buffers before
    /// their memory is freed.
    fn drop(&mut self) {
        let _ = reset(&mut self.transport);
    }
}
