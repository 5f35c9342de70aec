//! The NIC driver for the tender's NICs: frames through the shared-memory
//! rings ([`skiff_abi::ring`]) the tender sets up for every NIC.
//!
//! The one network hypercall (`NetNotify`, the doorbell) comes through
//! [`NicCalls`], so the driver is tested on the host against a fake tender.

use crate::device::NetDevice;
use crate::executor::wake_on_device;
use core::sync::atomic::{AtomicU32, Ordering, fence};
use core::task::{Context, Poll};
use skiff_abi::{NET_FRAME_MAX, NetInfo, ring};

/// The network hypercall the driver makes.
pub trait NicCalls {
    /// `NetNotify`: wakes the tender's I/O thread.
    fn net_notify(&self, device: u32);
}

/// One ring in guest memory, as the tender described it at boot.
#[derive(Clone, Copy)]
pub struct RingView {
    base: usize,
    slots: u32,
}

impl RingView {
    /// # Safety
    /// `base` must be a ring of `slots` slots (a power of two), mapped
    /// writable for as long as the view is used, whose other side follows
    /// the ring protocol.
    pub const unsafe fn new(base: u64, slots: u32) -> RingView {
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

    fn producer_waiting(&self) -> &AtomicU32 {
        self.word(ring::PRODUCER_WAITING)
    }

    fn slot(&self, i: u32) -> usize {
        self.base + (ring::HEADER_SIZE + u64::from(i % self.slots) * ring::SLOT_SIZE) as usize
    }

    /// Consumer side: whether a frame is waiting.
    pub fn has_frames(&self) -> bool {
        self.producer().load(Ordering::Acquire) != self.consumer().load(Ordering::Relaxed)
    }
}

/// A NIC lent to the service.
pub struct Nic<C: NicCalls> {
    index: u32,
    info: NetInfo,
    rx: RingView,
    tx: RingView,
    /// Frames were sent since the last flush.
    queued: bool,
    /// Frames written to transmit slots but not yet published: a burst is
    /// published together (at most [`PUBLISH_BATCH`] or half the ring at a
    /// time, when the ring is full, and at the flush), so that the tender
    /// finds a run of a connection's segments and sends it in one write
    /// (TCP segmentation offload on its side) instead of racing the guest
    /// frame by frame.
    held: u32,
    /// Frames were received since the last flush.
    taken: bool,
    calls: C,
}

impl<C: NicCalls> Nic<C> {
    /// # Safety
    /// The rings `info` describes must be the ones the tender set up for
    /// device `index` (see [`RingView::new`]).
    pub unsafe fn new(index: u32, info: NetInfo, calls: C) -> Nic<C> {
        let bytes = ring::ring_bytes(info.slots);
        // SAFETY: the caller vouches for the rings' addresses.
        let (rx, tx) = unsafe { (RingView::new(info.ring, info.slots), RingView::new(info.ring + bytes, info.slots)) };
        Nic { index, info, rx, tx, queued: false, held: 0, taken: false, calls }
    }

    /// Hands the frames written since the last publication to the tender.
    fn publish(&mut self) {
        if self.held > 0 {
            let p = self.tx.producer().load(Ordering::Relaxed);
            self.tx.producer().store(p.wrapping_add(self.held), Ordering::Release);
            self.held = 0;
        }
    }
}

/// The most transmit frames held back before they are published: as many
/// full-sized segments as fit one 64 KiB offloaded write on the tender's
/// side ((65535 - 40) / 1460), which leaves while the guest goes on
/// building the next ones. (16 gave bulk transfers out of the guest
/// 0.56-0.67 of a Linux baseline with segmentation offload, 44 gave
/// 0.62-0.92, in runs of `--bin net -- bulk`.)
pub const PUBLISH_BATCH: u32 = 44;

impl<C: NicCalls> NetDevice for Nic<C> {
    fn mac(&self) -> [u8; 6] {
        self.info.mac
    }

    fn mtu(&self) -> usize {
        usize::from(self.info.mtu)
    }

    fn rx_pending(&mut self) -> bool {
        self.rx.has_frames()
    }

    fn recv(&mut self, f: &mut dyn FnMut(&[u8])) -> bool {
        if !self.rx_pending() {
            return false;
        }
        let c = self.rx.consumer().load(Ordering::Relaxed);
        let slot = self.rx.slot(c);
        // SAFETY: the slot belongs to us until we advance the consumer index
        // (the tender published it with release ordering, which `has_frames`
        // acquired); its length word and up to NET_FRAME_MAX data bytes lie
        // inside the slot.
        let frame = unsafe {
            let len = ((slot + ring::SLOT_LEN as usize) as *const u32).read_volatile();
            let len = len.min(NET_FRAME_MAX) as usize;
            core::slice::from_raw_parts((slot + ring::SLOT_DATA as usize) as *const u8, len)
        };
        f(frame);
        self.rx.consumer().store(c.wrapping_add(1), Ordering::Release);
        self.taken = true;
        true
    }

    fn tx_room(&mut self) -> bool {
        let p = self.tx.producer().load(Ordering::Relaxed).wrapping_add(self.held);
        let room = p.wrapping_sub(self.tx.consumer().load(Ordering::Acquire)) < self.tx.slots;
        if !room {
            // Full with frames held back: hand them over, or a sender
            // waiting for room would wait forever.
            self.publish();
        }
        room
    }

    fn send(&mut self, len: usize, f: &mut dyn FnMut(&mut [u8])) -> bool {
        if len > NET_FRAME_MAX as usize || !self.tx_room() {
            return false;
        }
        let p = self.tx.producer().load(Ordering::Relaxed).wrapping_add(self.held);
        let slot = self.tx.slot(p);
        // SAFETY: `tx_room` saw the tender release this slot; it is ours
        // until we publish it; the length word and `len` bytes (at most
        // NET_FRAME_MAX) lie inside the slot.
        unsafe {
            ((slot + ring::SLOT_LEN as usize) as *mut u32).write_volatile(len as u32);
            f(core::slice::from_raw_parts_mut((slot + ring::SLOT_DATA as usize) as *mut u8, len));
        }
        self.held += 1;
        if self.held >= PUBLISH_BATCH.min(self.tx.slots / 2) {
            self.publish();
        }
        self.queued = true;
        true
    }

    fn flush(&mut self) {
        self.publish();
        let sent = core::mem::take(&mut self.queued);
        let took = core::mem::take(&mut self.taken);
        if !sent && !took {
            return;
        }
        // Pairs with the I/O thread's fence between setting a flag and its
        // last look at the ring.
        fence(Ordering::SeqCst);
        let tender_asleep = sent && self.tx.sleeping().load(Ordering::SeqCst) != 0;
        let tender_waits_for_room = took && self.rx.producer_waiting().swap(0, Ordering::SeqCst) != 0;
        if tender_asleep || tender_waits_for_room {
            self.calls.net_notify(self.index);
        }
    }

    fn listening(&mut self, port: u16) {
        let count = self.tx.word(ring::LISTENING);
        let n = count.load(Ordering::Relaxed);
        if n < ring::LISTEN_PORTS_MAX {
            let at = self.tx.base + (ring::LISTEN_PORTS + 2 * u64::from(n)) as usize;
            // SAFETY: the port slots lie in the transmit ring's header page
            // (see `RingView::new`), 2-byte aligned, written only by us; the
            // tender reads them after the count's release store below.
            unsafe { (at as *mut u16).write_volatile(port) };
        }
        count.store(n.wrapping_add(1), Ordering::Release);
        // As after sending frames: wake the I/O thread if it sleeps.
        fence(Ordering::SeqCst);
        if self.tx.sleeping().load(Ordering::SeqCst) != 0 {
            self.calls.net_notify(self.index);
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

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;
    use std::vec::Vec;

    /// A fake tender: counts doorbells.
    #[derive(Default)]
    struct FakeTender {
        notifies: Cell<u32>,
    }

    impl NicCalls for &FakeTender {
        fn net_notify(&self, _device: u32) {
            self.notifies.set(self.notifies.get() + 1);
        }
    }

    fn frame(i: u8, len: usize) -> Vec<u8> {
        (0..len).map(|j| i.wrapping_add(j as u8)).collect()
    }

    fn recv_all(nic: &mut dyn NetDevice) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        while nic.recv(&mut |f| got.push(f.to_vec())) {}
        got
    }

    /// A tender-side view of the same rings, for the test.
    struct Other {
        base: usize,
        slots: u32,
    }

    impl Other {
        fn word(&self, ring: usize, off: u64) -> &AtomicU32 {
            let bytes = ring::ring_bytes(self.slots) as usize;
            // SAFETY: inside the test's buffer, aligned, atomically accessed.
            unsafe { AtomicU32::from_ptr((self.base + ring * bytes + off as usize) as *mut u32) }
        }
        fn slot(&self, ring: usize, i: u32) -> usize {
            self.base
                + ring * ring::ring_bytes(self.slots) as usize
                + (ring::HEADER_SIZE + u64::from(i % self.slots) * ring::SLOT_SIZE) as usize
        }
        fn push_rx(&self, data: &[u8]) -> bool {
            let p = self.word(0, ring::PRODUCER).load(Ordering::Relaxed);
            if p.wrapping_sub(self.word(0, ring::CONSUMER).load(Ordering::Acquire)) >= self.slots {
                return false;
            }
            let s = self.slot(0, p);
            // SAFETY: the slot is inside the buffer and ours until published.
            unsafe {
                ((s + ring::SLOT_LEN as usize) as *mut u32).write(data.len() as u32);
                core::ptr::copy_nonoverlapping(data.as_ptr(), (s + ring::SLOT_DATA as usize) as *mut u8, data.len());
            }
            self.word(0, ring::PRODUCER).store(p + 1, Ordering::Release);
            true
        }
        fn pop_tx(&self) -> Option<Vec<u8>> {
            let c = self.word(1, ring::CONSUMER).load(Ordering::Relaxed);
            if c == self.word(1, ring::PRODUCER).load(Ordering::Acquire) {
                return None;
            }
            let s = self.slot(1, c);
            // SAFETY: published by the driver, inside the buffer.
            let v = unsafe {
                let len = ((s + ring::SLOT_LEN as usize) as *const u32).read() as usize;
                core::slice::from_raw_parts((s + ring::SLOT_DATA as usize) as *const u8, len).to_vec()
            };
            self.word(1, ring::CONSUMER).store(c + 1, Ordering::Release);
            Some(v)
        }
    }

    /// Memory for a receive and a transmit ring of `slots` slots, the
    /// tender's view of them, and the NIC description pointing at them.
    fn two_rings(slots: u32) -> (Vec<u64>, Other, NetInfo) {
        let bytes = 2 * ring::ring_bytes(slots) as usize;
        let mut memory = std::vec![0u64; bytes / 8];
        let base = memory.as_mut_ptr() as usize;
        let info = NetInfo { mac: [2, 0, 0, 0, 0, 1], mtu: 1500, ring: base as u64, slots, spin_micros: 0 };
        (memory, Other { base, slots }, info)
    }

    #[test]
    fn rings_carry_frames_both_ways_and_ring_the_doorbell_only_when_asked() {
        let slots = 8;
        let (memory, other, info) = two_rings(slots);
        let tender = FakeTender::default();
        // SAFETY: `memory` holds both rings and outlives `nic`.
        let mut nic = unsafe { Nic::new(0, info, &tender) };
        for round in 0..5u8 {
            for i in 0..slots as u8 {
                assert!(other.push_rx(&frame(round * 10 + i, 60 + i as usize)));
            }
            assert!(!other.push_rx(&frame(0, 60)), "the receive ring is full");
            let got = recv_all(&mut nic);
            assert_eq!(got.len(), slots as usize);
            assert_eq!(got[3], frame(round * 10 + 3, 63));
            for i in 0..slots as u8 {
                assert!(nic.send(70, &mut |b| b.copy_from_slice(&frame(i, 70))));
            }
            assert!(!nic.tx_room(), "the transmit ring is full");
            nic.flush();
            assert_eq!(tender.notifies.get(), 0, "the I/O thread is awake: no doorbell");
            for i in 0..slots as u8 {
                assert_eq!(other.pop_tx(), Some(frame(i, 70)));
            }
        }
        assert!(!nic.send(1515, &mut |_| {}), "over the MTU");
        other.word(1, ring::CONSUMER_SLEEPING).store(1, Ordering::SeqCst);
        assert!(nic.send(60, &mut |b| b.fill(1)));
        nic.flush();
        nic.flush();
        assert_eq!(tender.notifies.get(), 1, "one doorbell for the queued frames, none for an empty flush");
        drop(memory);
    }

    #[test]
    fn a_burst_is_published_together_at_most_a_batch_at_a_time() {
        let slots = 128;
        let (memory, other, info) = two_rings(slots);
        let tender = FakeTender::default();
        // SAFETY: `memory` holds both rings and outlives `nic`.
        let mut nic = unsafe { Nic::new(0, info, &tender) };
        for i in 0..PUBLISH_BATCH as u8 - 1 {
            assert!(nic.send(70, &mut |b| b.copy_from_slice(&frame(i, 70))));
        }
        assert_eq!(other.pop_tx(), None, "held until the burst ends");
        assert!(nic.send(70, &mut |b| b.copy_from_slice(&frame(99, 70))));
        let batch: Vec<Vec<u8>> = core::iter::from_fn(|| other.pop_tx()).collect();
        assert_eq!(batch.len(), PUBLISH_BATCH as usize, "a full batch is published at once");
        assert_eq!(batch[PUBLISH_BATCH as usize - 1], frame(99, 70));
        assert!(nic.send(70, &mut |b| b.copy_from_slice(&frame(7, 70))));
        assert_eq!(other.pop_tx(), None);
        nic.flush();
        assert_eq!(other.pop_tx(), Some(frame(7, 70)), "the flush publishes the rest");
        // Held frames count against the room in the ring, and a full ring
        // hands them over: a sender waiting for room is not stuck.
        for i in 0..slots {
            assert!(nic.send(60, &mut |b| b.fill(i as u8)));
        }
        assert!(!nic.tx_room());
        assert_eq!(core::iter::from_fn(|| other.pop_tx()).count(), slots as usize);
        assert!(nic.tx_room());
        drop(memory);
    }

    #[test]
    fn listeners_are_counted_in_the_transmit_header_with_their_ports() {
        let slots = 8;
        let (memory, other, info) = two_rings(slots);
        let tender = FakeTender::default();
        // SAFETY: `memory` holds both rings and outlives `nic`.
        let mut nic = unsafe { Nic::new(0, info, &tender) };
        nic.listening(443);
        assert_eq!(tender.notifies.get(), 0, "the I/O thread is awake: no doorbell");
        other.word(1, ring::CONSUMER_SLEEPING).store(1, Ordering::SeqCst);
        for port in 1..=10 {
            nic.listening(8000 + port);
        }
        assert_eq!(tender.notifies.get(), 10, "a sleeping I/O thread is woken for each");
        assert_eq!(other.word(1, ring::LISTENING).load(Ordering::Acquire), 11);
        assert_eq!(other.word(0, ring::LISTENING).load(Ordering::Acquire), 0, "the receive ring's header is untouched");
        let port = |i: u64| {
            // SAFETY: inside the test's buffer, aligned.
            unsafe {
                ((other.base + ring::ring_bytes(slots) as usize + (ring::LISTEN_PORTS + 2 * i) as usize) as *const u16)
                    .read()
            }
        };
        let ports: Vec<u16> = (0..u64::from(ring::LISTEN_PORTS_MAX)).map(port).collect();
        assert_eq!(ports, [443, 8001, 8002, 8003, 8004, 8005, 8006, 8007]);
        drop(memory);
    }
}
