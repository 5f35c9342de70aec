//! virtio-rng: entropy from the host, one writable buffer per request.

use crate::dma::DmaBuf;
use crate::queue::{Buf, SplitQueue};
use crate::transport::{Transport, finish_init, negotiate, reset};
use crate::{DEFAULT_SPIN_LIMIT, DeviceType, Error};

/// Bytes asked for per request.
const REQUEST: usize = 256;
/// Empty answers in a row before the device counts as not answering.
const EMPTY_LIMIT: u32 = 64;

/// A virtio-rng device.
pub struct VirtioRng<T: Transport> {
    transport: T,
    queue: SplitQueue,
    buf: DmaBuf,
    spins: u32,
}

impl<T: Transport> VirtioRng<T> {
    /// Negotiates and sets up the request queue.
    pub fn new(mut transport: T) -> Result<VirtioRng<T>, Error> {
        negotiate(&mut transport, DeviceType::Entropy, 0, 0)?;
        let queue = SplitQueue::new(&mut transport, 0, 8, false)?;
        let buf = DmaBuf::zeroed(REQUEST)?;
        finish_init(&mut transport);
        Ok(VirtioRng { transport, queue, buf, spins: DEFAULT_SPIN_LIMIT })
    }

    /// How many polls a request waits for its answer.
    pub fn set_spin_limit(&mut self, spins: u32) {
        self.spins = spins;
    }

    /// Fills `out` with bytes from the device.
    pub fn fill(&mut self, out: &mut [u8]) -> Result<(), Error> {
        let mut done = 0;
        let mut empty = 0u32;
        while done < out.len() {
            let want = (out.len() - done).min(REQUEST);
            let head = self.queue.add(&[Buf { addr: self.buf.addr(0), len: want as u32, writable: true }])?;
            self.queue.kick(&mut self.transport);
            let used = self.queue.wait(head, self.spins, DeviceType::Entropy)?;
            // `pop_used` checked the length against `want`.
            let got = used.len as usize;
            if got == 0 {
                empty += 1;
                if empty >= EMPTY_LIMIT {
                    return Err(Error::NoResponse(DeviceType::Entropy));
                }
                continue;
            }
            empty = 0;
            out[done..done + got].copy_from_slice(self.buf.bytes(0, got));
            done += got;
        }
        Ok(())
    }
}

impl<T: Transport> Drop for VirtioRng<T> {
    /// Resets the device, so it stops using the queues and buffers before
    /// their memory is freed.
    fn drop(&mut self) {
        let _ = reset(&mut self.transport);
    }
}
