//! The split virtqueue (VIRTIO 1.2, 2.7): a descriptor table the driver
//! fills, an available ring the driver produces into and a used ring the
//! device produces into, in one page-aligned DMA allocation.
//!
//! The driver never reads back what the device could change except the used
//! ring, and checks every used entry: its id must name the head of a chain
//! in flight, its length must fit the chain's writable bytes, and the used
//! index must not run further ahead than the queue holds. The chains' links
//! live in a private copy, so a device scribbling on the descriptor table
//! cannot corrupt the free list. The first violation is returned as an
//! [`Error`] and the queue stays broken (every later call returns it).

use crate::Error;
use crate::dma::DmaBuf;
use crate::transport::{QueueAddrs, Transport};
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
/// The device asks not to be notified (used ring flags).
pub const USED_F_NO_NOTIFY: u16 = 1;
/// The driver asks not to be interrupted (available ring flags).
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// One buffer of a chain (device addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    /// Device address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// The device writes it (else it reads it).
    pub writable: bool,
}

/// A chain the device has finished with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// The chain's head descriptor (what [`SplitQueue::add`] returned).
    pub head: u16,
    /// Bytes the device wrote into the chain's writable buffers.
    pub len: u32,
}

/// Byte offsets of a queue's parts in its allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The descriptor table (16 bytes per entry).
    pub desc: usize,
    /// The available ring: flags, idx, ring, used_event.
    pub avail: usize,
    /// The used ring: flags, idx, ring of (id, len), avail_event.
    pub used: usize,
    /// Bytes in all.
    pub total: usize,
}

impl Layout {
    /// The layout of a queue of `size` entries: modern (parts packed at
    /// their alignment) or legacy (used ring on the next page boundary).
    pub fn new(size: u16, legacy: bool) -> Layout {
        let n = usize::from(size);
        let avail = 16 * n;
        let avail_end = avail + 6 + 2 * n;
        let used_len = 6 + 8 * n;
        if legacy {
            let used = avail_end.next_multiple_of(4096);
            Layout { desc: 0, avail, used, total: used + used_len.next_multiple_of(4096) }
        } else {
            let used = avail_end.next_multiple_of(4);
            Layout { desc: 0, avail, used, total: used + used_len }
        }
    }
}

#[derive(Clone, Copy)]
struct Chain {
    count: u16,
    writable: u32,
}

/// A split virtqueue.
pub struct SplitQueue {
    index: u16,
    size: u16,
    mem: DmaBuf,
    layout: Layout,
    free_head: u16,
    num_free: u16,
    /// The free list and chain links, the driver's own copy.
    next: Vec<u16>,
    in_flight: Vec<Option<Chain>>,
    avail_idx: u16,
    /// The available index at the last notification.
    notified_idx: u16,
    last_used: u16,
    event_idx: bool,
    /// The driver wants interrupts for returned chains.
    interrupts: bool,
    broken: Option<Error>,
}

impl SplitQueue {
    /// Sets up queue `index` with at most `max_size` entries (a power of
    /// two); `event_idx` if `RING_EVENT_IDX` was negotiated.
    pub fn new<T: Transport + ?Sized>(
        transport: &mut T,
        index: u16,
        max_size: u16,
        event_idx: bool,
    ) -> Result<SplitQueue, Error> {
        let offered = transport.max_queue_size(index);
        if offered == 0 {
            return Err(Error::QueueSizeZero { queue: index });
        }
        if !offered.is_power_of_two() {
            return Err(Error::QueueSizeNotPowerOfTwo { queue: index, size: offered });
        }
        let size = offered.min(max_size.max(1).next_power_of_two().min(32768));
        let layout = Layout::new(size, !transport.modern());
        let mem = DmaBuf::zeroed(layout.total)?;
        let addrs =
            QueueAddrs { desc: mem.addr(layout.desc), avail: mem.addr(layout.avail), used: mem.addr(layout.used) };
        transport.setup_queue(index, size, addrs)?;
        let next = (1..=size).map(|i| i % size).collect();
        Ok(SplitQueue {
            index,
            size,
            mem,
            layout,
            free_head: 0,
            num_free: size,
            next,
            in_flight: vec![None; usize::from(size)],
            avail_idx: 0,
            notified_idx: 0,
            last_used: 0,
            event_idx,
            interrupts: true,
            broken: None,
        })
    }

    /// The queue index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// The error that broke the queue, if one did.
    pub fn broken(&self) -> Option<&Error> {
        self.broken.as_ref()
    }

    fn check(&self) -> Result<(), Error> {
        self.broken.clone().map_or(Ok(()), Err)
    }

    fn fail(&mut self, e: Error) -> Error {
        self.broken = Some(e.clone());
        e
    }

    /// Adds a chain of buffers and makes it available (the device is told
    /// at the next [`kick`](Self::kick)). Returns its head descriptor.
    pub fn add(&mut self, bufs: &[Buf]) -> Result<u16, Error> {
        self.check()?;
        if bufs.is_empty() || bufs.len() > usize::from(self.size) {
            return Err(Error::BadChain(bufs.len()));
        }
        if bufs.len() > usize::from(self.num_free) {
            return Err(Error::QueueFull { queue: self.index });
        }
        let head = self.free_head;
        let mut i = head;
        let mut writable = 0u32;
        for (k, b) in bufs.iter().enumerate() {
            let last = k + 1 == bufs.len();
            let d = self.layout.desc + 16 * usize::from(i);
            let mut flags = if last { 0 } else { DESC_F_NEXT };
            if b.writable {
                flags |= DESC_F_WRITE;
                writable = writable.saturating_add(b.len);
            }
            self.mem.write_u64(d, b.addr);
            self.mem.write_u32(d + 8, b.len);
            self.mem.write_u16(d + 12, flags);
            self.mem.write_u16(d + 14, if last { 0 } else { self.next[usize::from(i)] });
            if !last {
                i = self.next[usize::from(i)];
            }
        }
        self.free_head = self.next[usize::from(i)];
        self.num_free -= bufs.len() as u16;
        self.in_flight[usize::from(head)] = Some(Chain { count: bufs.len() as u16, writable });
        let slot = self.layout.avail + 4 + 2 * usize::from(self.avail_idx % self.size);
        self.mem.write_u16(slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The descriptors and ring slot before the index that publishes them.
        fence(Ordering::Release);
        self.mem.write_u16(self.layout.avail + 2, self.avail_idx);
        Ok(head)
    }

    /// Whether the device wants to hear of the chains added since the last
    /// notification (`VIRTQ_USED_F_NO_NOTIFY`, or its `avail_event` with
    /// `RING_EVENT_IDX`); counts them as told.
    pub fn should_notify(&mut self) -> bool {
        let old = self.notified_idx;
        let new = self.avail_idx;
        if old == new {
            return false;
        }
        self.notified_idx = new;
        // The published index before the device's suppression word.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let event = self.mem.read_u16(self.layout.used + 4 + 8 * usize::from(self.size));
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.mem.read_u16(self.layout.used) & USED_F_NO_NOTIFY == 0
        }
    }

    /// Notifies the device if [`should_notify`](Self::should_notify) says
    /// so; returns whether it did.
    pub fn kick<T: Transport + ?Sized>(&mut self, transport: &mut T) -> bool {
        let notify = self.should_notify();
        if notify {
            transport.notify(self.index);
        }
        notify
    }

    /// Asks the device not to interrupt (or to interrupt again) when it
    /// returns chains.
    pub fn set_interrupts(&mut self, enabled: bool) {
        self.interrupts = enabled;
        if self.event_idx {
            // Interrupt at the next used entry, or (disabled) only after a
            // full wrap of the index.
            let at = if enabled { self.last_used } else { self.last_used.wrapping_sub(1) };
            self.mem.write_u16(self.layout.avail + 4 + 2 * usize::from(self.size), at);
        } else {
            self.mem.write_u16(self.layout.avail, if enabled { 0 } else { AVAIL_F_NO_INTERRUPT });
        }
        fence(Ordering::SeqCst);
    }

    fn used_idx(&mut self) -> Result<u16, Error> {
        self.check()?;
        let now = self.mem.read_u16(self.layout.used + 2);
        // The entries before the index that published them.
        fence(Ordering::Acquire);
        if now.wrapping_sub(self.last_used) > self.size {
            let e = Error::UsedIndexJump { queue: self.index, last: self.last_used, now, size: self.size };
            return Err(self.fail(e));
        }
        Ok(now)
    }

    /// Whether the device has returned a chain not yet taken.
    pub fn has_used(&mut self) -> Result<bool, Error> {
        Ok(self.used_idx()? != self.last_used)
    }

    /// Takes the oldest chain the device has returned, after checking it.
    pub fn pop_used(&mut self) -> Result<Option<Used>, Error> {
        if self.used_idx()? == self.last_used {
            return Ok(None);
        }
        let entry = self.layout.used + 4 + 8 * usize::from(self.last_used % self.size);
        let id = self.mem.read_u32(entry);
        let len = self.mem.read_u32(entry + 4);
        if id >= u32::from(self.size) {
            return Err(self.fail(Error::UsedIdOutOfRange { queue: self.index, id, size: self.size }));
        }
        let head = id as u16;
        let Some(chain) = self.in_flight[usize::from(head)] else {
            return Err(self.fail(Error::UsedIdNotInFlight { queue: self.index, id: head }));
        };
        if len > chain.writable {
            let e = Error::UsedLengthTooLong { queue: self.index, len, capacity: chain.writable };
            return Err(self.fail(e));
        }
        self.in_flight[usize::from(head)] = None;
        let mut last = head;
        for _ in 1..chain.count {
            last = self.next[usize::from(last)];
        }
        self.next[usize::from(last)] = self.free_head;
        self.free_head = head;
        self.num_free += chain.count;
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx && self.interrupts {
            self.mem.write_u16(self.layout.avail + 4 + 2 * usize::from(self.size), self.last_used);
        }
        Ok(Some(Used { head, len }))
    }

    /// Polls for the chain `head` (the only one in flight) at most `spins`
    /// times; a synchronous request's wait.
    pub(crate) fn wait(&mut self, head: u16, spins: u32, device: crate::DeviceType) -> Result<Used, Error> {
        self.wait_while(head, &mut |polls| polls < u64::from(spins), device)
    }

    /// Polls for the chain `head` (the only one in flight) while `patience`
    /// (given the number of empty polls so far) says to go on.
    pub(crate) fn wait_while(
        &mut self,
        head: u16,
        patience: &mut dyn FnMut(u64) -> bool,
        device: crate::DeviceType,
    ) -> Result<Used, Error> {
        let mut polls = 0u64;
        while patience(polls) {
            if let Some(used) = self.pop_used()? {
                debug_assert_eq!(used.head, head);
                return Ok(used);
            }
            polls += 1;
            core::hint::spin_loop();
        }
        // The chain stays with the device: give up on the queue rather than
        // mistake its late answer for the next request's.
        Err(self.fail(Error::NoResponse(device)))
    }
}
