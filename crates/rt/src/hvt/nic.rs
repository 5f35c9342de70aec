//! The hvt NIC driver: frames through shared-memory rings, or through the
//! `NetRead`/`NetWrite` hypercalls when the tender runs without rings.

use super::{net_notify, net_read, net_write};
use crate::device::NetDevice;
use crate::executor::wake_on_device;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;
use core::sync::atomic::{AtomicU32, Ordering, fence};
use core::task::{Context, Poll};
use skiff_abi::{NET_BATCH_MAX, NET_FRAME_MAX, NetFrame, NetInfo, ring};

/// One ring in guest memory, as the tender described it at boot.
#[derive(Clone, Copy)]
pub(crate) struct RingView {
    base: usize,
    slots: u32,
}

impl RingView {
    /// # Safety
    /// `base` must be a ring of `slots` slots that the tender mapped
    /// writable for ring 3 for the life of the guest.
    pub(crate) const unsafe fn new(base: u64, slots: u32) -> RingView {
        RingView { base: base as usize, slots }
    }

    fn word(&self, offset: u64) -> &AtomicU32 {
        // SAFETY: the header's index words are inside the mapped ring (see
        // `new`), 4-byte aligned, and accessed atomically by both sides.
        unsafe { AtomicU32::from_ptr((self.base + offset as usize) as *mut u32) }
    }

    fn producer(&self) -> &AtomicU32 {
        self.word(ring::PRODUCER)
    }

    fn consumer(&self) -> &AtomicU32 {
        self.word(ring::CONSUMER)
    }

    fn sleeping(&self) -> &AtomicU32 {
        self.word(ring::CONSUMER_SLEEPING)
    }

    fn slot(&self, i: u32) -> usize {
        self.base + (ring::HEADER_SIZE + u64::from(i % self.slots) * ring::SLOT_SIZE) as usize
    }

    /// Consumer side: whether a frame is waiting.
    pub(crate) fn has_frames(&self) -> bool {
        self.producer().load(Ordering::Acquire) != self.consumer().load(Ordering::Relaxed)
    }
}

enum Transport {
    Rings { rx: RingView, tx: RingView, queued: bool },
    Hypercalls(Box<Batches>),
}

use alloc::boxed::Box;

/// Frame buffers for the hypercall transport.
struct Batches {
    rx: Vec<u8>,
    rx_lens: Vec<u32>,
    rx_next: usize,
    rx_count: usize,
    rx_more: bool,
    tx: Vec<u8>,
    tx_lens: Vec<u32>,
    tx_count: usize,
    frames: Vec<NetFrame>,
}

const STRIDE: usize = 1536;
const BATCH: usize = NET_BATCH_MAX as usize;

/// A NIC lent to the service.
pub struct Nic {
    index: u32,
    info: NetInfo,
    transport: Transport,
    /// Set by the platform when `Poll` reported this NIC ready (hypercall
    /// transport only).
    hint: Rc<Cell<bool>>,
}

impl Nic {
    /// # Safety
    /// With rings (`info.ring != 0`), the rings must be the ones the tender
    /// set up for device `index`.
    pub(crate) unsafe fn new(index: u32, info: NetInfo, hint: Rc<Cell<bool>>) -> Nic {
        let transport = if info.ring != 0 {
            let bytes = ring::ring_bytes(info.slots);
            // SAFETY: the caller vouches for the rings' addresses.
            let (rx, tx) =
                unsafe { (RingView::new(info.ring, info.slots), RingView::new(info.ring + bytes, info.slots)) };
            Transport::Rings { rx, tx, queued: false }
        } else {
            Transport::Hypercalls(Box::new(Batches {
                rx: vec![0; BATCH * STRIDE],
                rx_lens: vec![0; BATCH],
                rx_next: 0,
                rx_count: 0,
                rx_more: true,
                tx: vec![0; BATCH * STRIDE],
                tx_lens: vec![0; BATCH],
                tx_count: 0,
                frames: vec![NetFrame::default(); BATCH],
            }))
        };
        Nic { index, info, transport, hint }
    }
}

impl Batches {
    fn fill(&mut self, device: u32) {
        for (i, f) in self.frames.iter_mut().enumerate() {
            *f = NetFrame { addr: self.rx[i * STRIDE..].as_ptr() as u64, len: 0, cap: STRIDE as u32 };
        }
        let n = net_read(device, &mut self.frames) as usize;
        for i in 0..n {
            self.rx_lens[i] = self.frames[i].len.min(STRIDE as u32);
        }
        self.rx_count = n;
        self.rx_next = 0;
        self.rx_more = n == BATCH;
    }

    fn flush(&mut self, device: u32) {
        if self.tx_count == 0 {
            return;
        }
        for i in 0..self.tx_count {
            self.frames[i] = NetFrame { addr: self.tx[i * STRIDE..].as_ptr() as u64, len: self.tx_lens[i], cap: 0 };
        }
        net_write(device, &self.frames[..self.tx_count]);
        self.tx_count = 0;
    }
}

impl NetDevice for Nic {
    fn mac(&self) -> [u8; 6] {
        self.info.mac
    }

    fn mtu(&self) -> usize {
        usize::from(self.info.mtu)
    }

    fn rx_pending(&mut self) -> bool {
        match &mut self.transport {
            Transport::Rings { rx, .. } => rx.has_frames(),
            Transport::Hypercalls(b) => {
                if b.rx_next < b.rx_count {
                    return true;
                }
                if self.hint.replace(false) || b.rx_more {
                    b.fill(self.index);
                }
                b.rx_next < b.rx_count
            }
        }
    }

    fn recv(&mut self, f: &mut dyn FnMut(&[u8])) -> bool {
        if !self.rx_pending() {
            return false;
        }
        match &mut self.transport {
            Transport::Rings { rx, .. } => {
                let c = rx.consumer().load(Ordering::Relaxed);
                let slot = rx.slot(c);
                // SAFETY: the slot belongs to us until we advance the
                // consumer index (the tender published it with release
                // ordering, which `has_frames` acquired); its length word
                // and up to NET_FRAME_MAX data bytes lie inside the slot.
                let frame = unsafe {
                    let len = ((slot + ring::SLOT_LEN as usize) as *const u32).read_volatile();
                    let len = len.min(NET_FRAME_MAX) as usize;
                    core::slice::from_raw_parts((slot + ring::SLOT_DATA as usize) as *const u8, len)
                };
                f(frame);
                rx.consumer().store(c.wrapping_add(1), Ordering::Release);
            }
            Transport::Hypercalls(b) => {
                let i = b.rx_next;
                f(&b.rx[i * STRIDE..i * STRIDE + b.rx_lens[i] as usize]);
                b.rx_next += 1;
            }
        }
        true
    }

    fn tx_room(&mut self) -> bool {
        match &mut self.transport {
            Transport::Rings { tx, .. } => {
                let p = tx.producer().load(Ordering::Relaxed);
                p.wrapping_sub(tx.consumer().load(Ordering::Acquire)) < tx.slots
            }
            Transport::Hypercalls(_) => true,
        }
    }

    fn send(&mut self, len: usize, f: &mut dyn FnMut(&mut [u8])) -> bool {
        if len > NET_FRAME_MAX as usize || !self.tx_room() {
            return false;
        }
        let index = self.index;
        match &mut self.transport {
            Transport::Rings { tx, queued, .. } => {
                let p = tx.producer().load(Ordering::Relaxed);
                let slot = tx.slot(p);
                // SAFETY: `tx_room` saw the tender release this slot; it is
                // ours until we publish it; the length word and `len` bytes
                // (at most NET_FRAME_MAX) lie inside the slot.
                unsafe {
                    ((slot + ring::SLOT_LEN as usize) as *mut u32).write_volatile(len as u32);
                    f(core::slice::from_raw_parts_mut((slot + ring::SLOT_DATA as usize) as *mut u8, len));
                }
                tx.producer().store(p.wrapping_add(1), Ordering::Release);
                *queued = true;
            }
            Transport::Hypercalls(b) => {
                if b.tx_count == BATCH {
                    b.flush(index);
                }
                let i = b.tx_count;
                f(&mut b.tx[i * STRIDE..i * STRIDE + len]);
                b.tx_lens[i] = len as u32;
                b.tx_count += 1;
            }
        }
        true
    }

    fn flush(&mut self) {
        let index = self.index;
        match &mut self.transport {
            Transport::Rings { tx, queued, .. } => {
                if core::mem::take(queued) {
                    // Pairs with the I/O thread's fence between setting its
                    // sleeping flag and its last look at the ring.
                    fence(Ordering::SeqCst);
                    if tx.sleeping().load(Ordering::SeqCst) != 0 {
                        net_notify(index);
                    }
                }
            }
            Transport::Hypercalls(b) => b.flush(index),
        }
    }

    fn poll_rx(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.rx_pending() {
            return Poll::Ready(());
        }
        wake_on_device(cx.waker(), self.index as usize);
        // A frame may have landed between the check and the registration.
        if self.rx_pending() { Poll::Ready(()) } else { Poll::Pending }
    }
}
