//! The split virtqueue against a simulated device: chains, wrap-around of
//! the 16-bit indices, notification suppression, and every malformed used
//! entry rejected with its own error.

mod common;

use common::{Kind, Sim, V1, mmio};
use skiff_virtio::Error;
use skiff_virtio::features::RING_EVENT_IDX;
use skiff_virtio::queue::{Buf, SplitQueue, USED_F_NO_NOTIFY, Used};

fn manual(version: u32, sizes: &[u32]) -> common::Shared {
    Sim::new(version, 4, Kind::Manual, V1 | RING_EVENT_IDX, sizes)
}

fn buf(addr: u64, len: u32, writable: bool) -> Buf {
    Buf { addr, len, writable }
}

#[test]
fn chains_reach_the_device_as_added_and_free_in_any_order() {
    for version in [1, 2] {
        let sim = manual(version, &[8]);
        let mut t = mmio(&sim);
        let mut q = SplitQueue::new(&mut t, 0, 8, false).unwrap();
        assert_eq!(q.size(), 8);
        let chain = [buf(0x1000, 10, false), buf(0x2000, 20, false), buf(0x3000, 30, true)];
        let head = q.add(&chain).unwrap();
        assert_eq!(q.num_free(), 5);
        let (seen, descs) = sim.borrow_mut().pop_avail(0).unwrap();
        assert_eq!(seen, head);
        assert_eq!(descs, vec![(0x1000, 10, false), (0x2000, 20, false), (0x3000, 30, true)]);
        assert_eq!(q.pop_used().unwrap(), None);
        sim.borrow_mut().push_used(0, u32::from(head), 30);
        assert_eq!(q.pop_used().unwrap(), Some(Used { head, len: 30 }));
        assert_eq!(q.num_free(), 8);

        // Four chains of two, returned out of order, then one chain of all eight.
        let heads: Vec<u16> = (0..4).map(|i| q.add(&[buf(i, 1, false), buf(i + 100, 1, true)]).unwrap()).collect();
        assert_eq!(q.add(&[buf(0, 1, false)]), Err(Error::QueueFull { queue: 0 }));
        for _ in 0..4 {
            sim.borrow_mut().pop_avail(0).unwrap();
        }
        for &i in &[2, 0, 3, 1] {
            sim.borrow_mut().push_used(0, u32::from(heads[i]), 1);
            assert_eq!(q.pop_used().unwrap(), Some(Used { head: heads[i], len: 1 }));
        }
        assert_eq!(q.num_free(), 8);
        let all: Vec<Buf> = (0..8).map(|i| buf(i * 16, 16, i % 2 == 0)).collect();
        let head = q.add(&all).unwrap();
        let (_, descs) = sim.borrow_mut().pop_avail(0).unwrap();
        assert_eq!(descs.len(), 8, "version {version}: the chain after out-of-order frees");
        assert!(descs.iter().zip(&all).all(|(d, b)| d.0 == b.addr && d.1 == b.len && d.2 == b.writable));
        sim.borrow_mut().push_used(0, u32::from(head), 64);
        assert_eq!(q.pop_used().unwrap(), Some(Used { head, len: 64 }));
        assert_eq!(q.add(&[]), Err(Error::BadChain(0)));
    }
}

#[test]
fn indices_wrap_past_65535() {
    let sim = manual(2, &[4]);
    let mut t = mmio(&sim);
    let mut q = SplitQueue::new(&mut t, 0, 4, false).unwrap();
    for i in 0..70_000u32 {
        // Keep two chains in flight so the rings hold more than one entry.
        let head = q.add(&[buf(u64::from(i), 8, true)]).unwrap();
        let (seen, descs) = sim.borrow_mut().pop_avail(0).unwrap();
        assert_eq!((seen, descs[0].0), (head, u64::from(i)));
        if i % 2 == 1 {
            sim.borrow_mut().push_used(0, u32::from(head) ^ 1, i % 9);
            sim.borrow_mut().push_used(0, u32::from(head), 8);
            let first = q.pop_used().unwrap().unwrap();
            assert_eq!(first.len, i % 9);
            assert_eq!(q.pop_used().unwrap(), Some(Used { head, len: 8 }));
        }
    }
    assert_eq!(q.pop_used().unwrap(), None);
    let s = sim.borrow();
    assert_eq!(s.queues[0].last_avail, (70_000u32 % 65_536) as u16);
    assert_eq!(s.queues[0].used_idx, (70_000u32 % 65_536) as u16);
}

#[test]
fn used_flag_suppresses_notifications() {
    let sim = manual(2, &[8]);
    let mut t = mmio(&sim);
    let mut q = SplitQueue::new(&mut t, 0, 8, false).unwrap();
    assert!(!q.kick(&mut t), "nothing new, no notification");
    q.add(&[buf(1, 1, true)]).unwrap();
    assert!(q.kick(&mut t));
    assert_eq!(sim.borrow().notifies[0], 1);
    sim.borrow_mut().set_used_flags(0, USED_F_NO_NOTIFY);
    q.add(&[buf(2, 1, true)]).unwrap();
    assert!(!q.kick(&mut t));
    sim.borrow_mut().set_used_flags(0, 0);
    for i in 0..3 {
        q.add(&[buf(i, 1, true)]).unwrap();
    }
    assert!(q.kick(&mut t), "three chains, one notification");
    assert_eq!(sim.borrow().notifies[0], 2);
    // The driver's side: no interrupts wanted.
    q.set_interrupts(false);
    assert_eq!(sim.borrow().avail_flags(0), 1);
    q.set_interrupts(true);
    assert_eq!(sim.borrow().avail_flags(0), 0);
}

#[test]
fn event_index_notifies_only_when_crossing_avail_event() {
    let sim = manual(2, &[8]);
    let mut t = mmio(&sim);
    let mut q = SplitQueue::new(&mut t, 0, 8, true).unwrap();
    // The device wants to hear once the driver makes entry 5 available
    // (index 5 -> 6).
    sim.borrow_mut().set_avail_event(0, 5);
    let mut notified = Vec::new();
    for i in 0..8u16 {
        q.add(&[buf(u64::from(i), 1, true)]).unwrap();
        if q.kick(&mut t) {
            notified.push(i);
        }
    }
    assert_eq!(notified, vec![5]);
    assert_eq!(sim.borrow().notifies[0], 1);
    // The driver publishes used_event as it takes entries.
    for _ in 0..3 {
        let (head, _) = sim.borrow_mut().pop_avail(0).unwrap();
        sim.borrow_mut().push_used(0, u32::from(head), 1);
    }
    for _ in 0..3 {
        q.pop_used().unwrap().unwrap();
    }
    assert_eq!(sim.borrow().used_event(0), 3);
}

#[test]
fn queue_of_size_zero_or_not_a_power_of_two_is_refused() {
    let sim = manual(2, &[0, 6]);
    let mut t = mmio(&sim);
    let e = SplitQueue::new(&mut t, 0, 8, false).err().unwrap();
    assert_eq!(e, Error::QueueSizeZero { queue: 0 });
    assert!(e.to_string().contains("size 0"), "{e}");
    let e = SplitQueue::new(&mut t, 1, 8, false).err().unwrap();
    assert_eq!(e, Error::QueueSizeNotPowerOfTwo { queue: 1, size: 6 });
    assert!(e.to_string().contains("not a power of two"), "{e}");
    // A queue the device does not have at all.
    assert_eq!(SplitQueue::new(&mut t, 7, 8, false).err(), Some(Error::QueueSizeZero { queue: 7 }));
}

/// A queue of 8 with one chain (head 0, 100 writable bytes) given to the device.
fn one_in_flight() -> (common::Shared, SplitQueue, u16) {
    let sim = manual(2, &[8]);
    let mut t = mmio(&sim);
    let mut q = SplitQueue::new(&mut t, 0, 8, false).unwrap();
    let head = q.add(&[buf(0x10, 4, false), buf(0x20, 100, true)]).unwrap();
    sim.borrow_mut().pop_avail(0).unwrap();
    (sim, q, head)
}

/// The error stays: the queue is broken for good.
fn assert_broken(q: &mut SplitQueue, e: &Error) {
    assert_eq!(q.pop_used().as_ref().err(), Some(e));
    assert_eq!(q.has_used().as_ref().err(), Some(e));
    assert_eq!(q.add(&[buf(0, 1, true)]).as_ref().err(), Some(e));
}

#[test]
fn used_id_out_of_range_is_an_error() {
    let (sim, mut q, _) = one_in_flight();
    sim.borrow_mut().push_used(0, 9, 0);
    let e = q.pop_used().unwrap_err();
    assert_eq!(e, Error::UsedIdOutOfRange { queue: 0, id: 9, size: 8 });
    assert!(e.to_string().contains("descriptor 9, outside the queue of 8"), "{e}");
    assert_broken(&mut q, &e);
}

#[test]
fn used_id_not_in_flight_is_an_error() {
    let (sim, mut q, head) = one_in_flight();
    sim.borrow_mut().push_used(0, 3, 0);
    let e = q.pop_used().unwrap_err();
    assert_eq!(e, Error::UsedIdNotInFlight { queue: 0, id: 3 });
    assert!(e.to_string().contains("was not given"), "{e}");
    assert_broken(&mut q, &e);

    // The same chain returned twice.
    let (sim, mut q, _) = one_in_flight();
    sim.borrow_mut().push_used(0, u32::from(head), 1);
    sim.borrow_mut().push_used(0, u32::from(head), 1);
    assert_eq!(q.pop_used().unwrap(), Some(Used { head, len: 1 }));
    assert_eq!(q.pop_used(), Err(Error::UsedIdNotInFlight { queue: 0, id: head }));
}

#[test]
fn used_length_beyond_the_buffer_is_an_error() {
    let (sim, mut q, head) = one_in_flight();
    sim.borrow_mut().push_used(0, u32::from(head), 101);
    let e = q.pop_used().unwrap_err();
    assert_eq!(e, Error::UsedLengthTooLong { queue: 0, len: 101, capacity: 100 });
    assert!(e.to_string().contains("101 bytes written into 100 writable bytes"), "{e}");
    assert_broken(&mut q, &e);

    // Exactly the writable bytes is fine.
    let (sim, mut q, head) = one_in_flight();
    sim.borrow_mut().push_used(0, u32::from(head), 100);
    assert_eq!(q.pop_used().unwrap(), Some(Used { head, len: 100 }));
}

#[test]
fn used_index_jumping_beyond_the_queue_is_an_error() {
    let (sim, mut q, _) = one_in_flight();
    sim.borrow_mut().set_used_idx(0, 9);
    let e = q.pop_used().unwrap_err();
    assert_eq!(e, Error::UsedIndexJump { queue: 0, last: 0, now: 9, size: 8 });
    assert!(e.to_string().contains("jumped from 0 to 9"), "{e}");
    assert_broken(&mut q, &e);

    // Backwards is a jump too (the index only grows).
    let (sim, mut q, _) = one_in_flight();
    sim.borrow_mut().set_used_idx(0, 0xffff);
    assert!(matches!(q.has_used(), Err(Error::UsedIndexJump { now: 0xffff, .. })));
}

#[test]
fn legacy_queue_memory_beyond_a_32_bit_page_number_is_refused() {
    // This thread's DMA buffers come from the host heap, far above 16 TiB.
    common::LOW.set(false);
    let sim = manual(1, &[8]);
    let mut t = mmio(&sim);
    let e = SplitQueue::new(&mut t, 0, 8, false).err().unwrap();
    assert!(matches!(e, Error::QueueAddressTooHigh { queue: 0, addr } if addr > u64::from(u32::MAX) << 12), "{e}");
    assert_eq!(sim.borrow().queues[0].pfn, 0, "a truncated page number reached the device");
    common::LOW.set(true);
}

#[test]
fn event_index_interrupts_off_stay_off_while_taking_entries() {
    let sim = manual(2, &[8]);
    let mut t = mmio(&sim);
    let mut q = SplitQueue::new(&mut t, 0, 8, true).unwrap();
    q.set_interrupts(false);
    let off = sim.borrow().used_event(0);
    assert_eq!(off, 0xffff, "interrupt only after a whole wrap of the used index");
    let head = q.add(&[buf(1, 1, true)]).unwrap();
    sim.borrow_mut().pop_avail(0).unwrap();
    sim.borrow_mut().push_used(0, u32::from(head), 1);
    q.pop_used().unwrap().unwrap();
    assert_eq!(sim.borrow().used_event(0), off, "taking an entry turned interrupts back on");
    q.set_interrupts(true);
    assert_eq!(sim.borrow().used_event(0), 1);
}
