//! The gateway's Ethernet port: two bounded frame queues that smoltcp reads
//! and writes, and the tender fills from and drains to the guest's rings.

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use std::collections::VecDeque;

/// Frames between the guest and the gateway's stack.
pub struct FrameQueues {
    /// From the guest, waiting for the stack.
    pub from_guest: VecDeque<Vec<u8>>,
    /// From the stack, waiting for room in the guest's receive ring.
    pub to_guest: VecDeque<Vec<u8>>,
    /// Most frames each queue holds; beyond it frames are dropped.
    pub limit: usize,
    /// Frames dropped because a queue was full.
    pub dropped: u64,
}

impl FrameQueues {
    /// Empty queues holding at most `limit` frames each.
    pub fn new(limit: usize) -> FrameQueues {
        FrameQueues { from_guest: VecDeque::new(), to_guest: VecDeque::new(), limit, dropped: 0 }
    }
}

/// Receives one frame from the guest.
pub struct RxToken(Vec<u8>);

/// Sends one frame to the guest.
pub struct TxToken<'a>(&'a mut FrameQueues);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        if self.0.to_guest.len() < self.0.limit {
            self.0.to_guest.push_back(frame);
        } else {
            self.0.dropped += 1;
        }
        r
    }
}

impl phy::Device for FrameQueues {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.from_guest.pop_front()?;
        Some((RxToken(frame), TxToken(self)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        (self.to_guest.len() < self.limit).then_some(TxToken(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}
