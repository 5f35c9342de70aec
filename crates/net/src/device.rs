//! Glue between a [`NetDevice`] and smoltcp's `phy::Device`.
//!
//! A transmit token lets smoltcp build its frame straight into the
//! device's slot (the shared-memory ring). A received frame is copied once,
//! onto the stack, because smoltcp sends its answers (ARP replies, TCP
//! acknowledgements) from inside the receive token's callback: both tokens
//! reach the device through a `RefCell`, which may be borrowed by one at a
//! time.

use core::cell::{Cell, RefCell};
use skiff_rt::NetDevice;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Largest frame handled (an MTU of 1500 plus the Ethernet header, and
/// room for a VLAN tag).
const MAX_FRAME: usize = 1536;

/// A `phy::Device` over a borrowed [`NetDevice`].
pub struct Adapter<'d> {
    dev: RefCell<&'d mut dyn NetDevice>,
    rx_frames: Cell<u64>,
    tx_frames: Cell<u64>,
}

impl<'d> Adapter<'d> {
    /// Wraps `dev`.
    pub fn new(dev: &'d mut dyn NetDevice) -> Adapter<'d> {
        Adapter { dev: RefCell::new(dev), rx_frames: Cell::new(0), tx_frames: Cell::new(0) }
    }

    /// Frames received and sent through this adapter.
    pub fn frames(&self) -> (u64, u64) {
        (self.rx_frames.get(), self.tx_frames.get())
    }
}

/// Receives one frame when consumed.
pub struct RxToken<'a, 'd> {
    adapter: &'a Adapter<'d>,
}

/// Sends one frame when consumed.
pub struct TxToken<'a, 'd> {
    adapter: &'a Adapter<'d>,
}

impl phy::RxToken for RxToken<'_, '_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        // smoltcp answers a frame (ARP, TCP ACKs) from inside this call, so
        // the device must not stay borrowed while `f` runs: the frame is
        // copied out of its slot first.
        let mut frame = [0u8; MAX_FRAME];
        let mut len = 0;
        let got = self.adapter.dev.borrow_mut().recv(&mut |bytes| {
            len = bytes.len().min(MAX_FRAME);
            frame[..len].copy_from_slice(&bytes[..len]);
        });
        if got {
            self.adapter.rx_frames.set(self.adapter.rx_frames.get() + 1);
        }
        // If a device lost the frame `receive` promised, smoltcp gets an
        // empty frame, which it ignores.
        f(&frame[..len])
    }
}

impl phy::TxToken for TxToken<'_, '_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut f = Some(f);
        let mut out = None;
        let sent = self.adapter.dev.borrow_mut().send(len, &mut |buf| {
            if let Some(f) = f.take() {
                out = Some(f(buf));
            }
        });
        match (sent, out) {
            (true, Some(r)) => {
                self.adapter.tx_frames.set(self.adapter.tx_frames.get() + 1);
                r
            }
            // No room after all: build the frame into scratch space and
            // drop it, as a NIC with a full queue would.
            _ => {
                let mut scratch = alloc::vec![0u8; len];
                (f.take().expect("the frame builder runs at most once"))(&mut scratch)
            }
        }
    }
}

impl<'d> phy::Device for Adapter<'d> {
    type RxToken<'a>
        = RxToken<'a, 'd>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, 'd>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if !self.dev.get_mut().rx_pending() {
            return None;
        }
        Some((RxToken { adapter: self }, TxToken { adapter: self }))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if !self.dev.get_mut().tx_room() {
            return None;
        }
        Some(TxToken { adapter: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.dev.borrow().mtu() + 14;
        caps.max_burst_size = Some(64);
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::VecDeque;
    use alloc::vec::Vec;
    use core::task::{Context, Poll};
    use smoltcp::phy::{Device, RxToken as _, TxToken as _};

    /// A NIC whose frames are plain queues.
    #[derive(Default)]
    struct QueueNic {
        rx: VecDeque<Vec<u8>>,
        tx: Vec<Vec<u8>>,
        room: usize,
    }

    impl NetDevice for QueueNic {
        fn mac(&self) -> [u8; 6] {
            [2, 0, 0, 0, 0, 1]
        }
        fn mtu(&self) -> usize {
            1500
        }
        fn rx_pending(&mut self) -> bool {
            !self.rx.is_empty()
        }
        fn recv(&mut self, f: &mut dyn FnMut(&[u8])) -> bool {
            match self.rx.pop_front() {
                Some(frame) => {
                    f(&frame);
                    true
                }
                None => false,
            }
        }
        fn tx_room(&mut self) -> bool {
            self.tx.len() < self.room
        }
        fn send(&mut self, len: usize, f: &mut dyn FnMut(&mut [u8])) -> bool {
            if !self.tx_room() {
                return false;
            }
            let mut frame = alloc::vec![0; len];
            f(&mut frame);
            self.tx.push(frame);
            true
        }
        fn flush(&mut self) {}
        fn poll_rx(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
            if self.rx.is_empty() { Poll::Pending } else { Poll::Ready(()) }
        }
    }

    #[test]
    fn tokens_move_frames_in_place_and_count_them() {
        let mut nic = QueueNic { room: 2, ..Default::default() };
        nic.rx.push_back(alloc::vec![1, 2, 3]);
        let mut a = Adapter::new(&mut nic);
        let now = Instant::from_millis(0);
        let (rx, tx) = a.receive(now).expect("a frame is pending");
        assert_eq!(rx.consume(|f| f.to_vec()), [1, 2, 3]);
        tx.consume(4, |buf| buf.copy_from_slice(&[9, 9, 9, 9]));
        assert!(a.receive(now).is_none());
        a.transmit(now).unwrap().consume(2, |buf| buf.fill(7));
        assert!(a.transmit(now).is_none(), "room for two frames only");
        assert_eq!(a.frames(), (1, 2));
        assert_eq!(a.capabilities().max_transmission_unit, 1514);
        assert_eq!(nic.tx, [alloc::vec![9, 9, 9, 9], alloc::vec![7, 7]]);
    }
}
