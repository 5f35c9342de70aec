//! The two ends of the frame rings, as written: the tender's `Ring` over
//! guest memory and the guest runtime's NIC driver over the same bytes.
//! Both sides are this repository's code, so this pins their agreement on
//! layout and protocol, with two threads running at once.

use skiff_abi::{NetInfo, ring};
use skiff_rt::NetDevice;
use skiff_rt::nic::{Nic, NicCalls};
use skiff_tender::guest_memory::GuestMemory;
use skiff_tender::rings::{Direction, Ring};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Doorbells are counted.
#[derive(Default)]
struct Calls(Arc<AtomicU32>);

impl NicCalls for Calls {
    fn net_notify(&self, _: u32) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn frame(i: u32) -> Vec<u8> {
    let len = 14 + (i as usize * 7) % 1500;
    (0..len).map(|j| (i as usize + j) as u8).collect()
}

#[test]
fn a_tender_thread_and_the_guest_driver_exchange_frames() {
    let slots = 16;
    let base = 0x10_0000u64;
    let mem = Arc::new(GuestMemory::new(4 << 20).unwrap());
    let rx = Ring::new(base, slots, Direction::Receive);
    let tx = Ring::new(base + ring::ring_bytes(slots), slots, Direction::Transmit);
    let count = 5000u32;

    // The tender's side on its own thread: produce `count` frames into the
    // receive ring and consume everything from the transmit ring.
    let m = mem.clone();
    let tender = std::thread::spawn(move || {
        let mut sent = 0;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 2048];
        while got.len() < count as usize {
            if sent < count && rx.push(&m, &frame(sent)).unwrap() {
                sent += 1;
            }
            if let Some(n) = tx.pop(&m, &mut buf).unwrap() {
                got.push(buf[..n].to_vec());
            }
        }
        got
    });

    let info = NetInfo { mac: [2, 0, 0, 0, 0, 9], mtu: 1500, ring: mem.host_base() + base, slots, spin_micros: 0 };
    let doorbells = Arc::new(AtomicU32::new(0));
    // SAFETY: both rings lie in `mem`, alive for the whole test, and the
    // other side follows the protocol.
    let mut nic = unsafe { Nic::new(0, info, Calls(doorbells.clone())) };
    let mut received = 0u32;
    while received < count {
        let mut frames = Vec::new();
        while nic.recv(&mut |f| frames.push(f.to_vec())) {}
        for f in frames {
            assert_eq!(f, frame(received), "frame {received} arrived changed");
            // Echo it back.
            while !nic.send(f.len(), &mut |buf| buf.copy_from_slice(&f)) {
                std::hint::spin_loop();
            }
            received += 1;
        }
        nic.flush();
    }
    let echoed = tender.join().unwrap();
    assert_eq!(echoed.len(), count as usize);
    for (i, f) in echoed.iter().enumerate() {
        assert_eq!(f, &frame(i as u32));
    }
    assert_eq!(doorbells.load(Ordering::Relaxed), 0, "the tender side never slept");
}
