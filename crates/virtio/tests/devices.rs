//! The net, entropy and block drivers against simulated devices.

mod common;

use common::{Kind, Sim, V1, mmio};
use skiff_virtio::blk::{F_BLK_SIZE, F_DISCARD, F_FLUSH, F_RO, F_SIZE_MAX, VirtioBlk};
use skiff_virtio::features::RING_EVENT_IDX;
use skiff_virtio::net::{F_MAC, F_MTU, VirtioNet};
use skiff_virtio::rng::VirtioRng;
use skiff_virtio::{DeviceType, Error};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn net_sim(version: u32, extra: u64) -> common::Shared {
    let features = F_MAC | extra | if version == 2 { V1 } else { 0 };
    let sim = Sim::new(version, 1, Kind::Net, features, &[256, 256]);
    sim.borrow_mut().config[..6].copy_from_slice(&MAC);
    sim
}

fn frame(i: usize) -> Vec<u8> {
    let len = 60 + (i * 97) % 1455;
    (0..len).map(|j| (i * 31 + j) as u8).collect()
}

fn recv_all<T: skiff_virtio::transport::Transport>(net: &mut VirtioNet<T>) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while net.recv(&mut |f| got.push(f.to_vec())).unwrap() {}
    got
}

#[test]
fn net_frames_are_byte_identical_many_per_notification() {
    for (version, extra) in [(1, 0), (2, 0), (2, RING_EVENT_IDX)] {
        let sim = net_sim(version, extra);
        let mut net = VirtioNet::new(mmio(&sim)).unwrap();
        assert_eq!(net.mac(), MAC);
        assert_eq!(net.mtu(), 1500);
        assert_eq!(sim.borrow().status, 1 | 2 | 4 | if version == 2 { 8 } else { 0 });
        let rx_notifies = sim.borrow().notifies[0];

        // 100 frames out, one notification.
        let frames: Vec<Vec<u8>> = (0..100).map(frame).collect();
        for f in &frames {
            assert!(net.tx_room().unwrap());
            assert!(net.send(f.len(), &mut |buf| buf.copy_from_slice(f)).unwrap());
        }
        assert!(sim.borrow().tx_frames.is_empty(), "nothing goes before the flush");
        net.flush().unwrap();
        assert_eq!(sim.borrow().notifies[1], 1, "version {version}: one notification for 100 frames");
        assert_eq!(sim.borrow().tx_frames, frames, "version {version}");

        // 100 frames in, read in place, buffers posted again with one notification.
        let incoming: Vec<Vec<u8>> = (100..200).map(frame).collect();
        assert!(!net.rx_pending().unwrap());
        for f in &incoming {
            assert!(sim.borrow_mut().deliver(f));
        }
        assert!(net.rx_pending().unwrap());
        assert_eq!(recv_all(&mut net), incoming, "version {version}");
        net.flush().unwrap();
        // With the event index the device, still holding buffers, asked for
        // no notification.
        let expected = if extra == 0 { rx_notifies + 1 } else { rx_notifies };
        assert_eq!(sim.borrow().notifies[0], expected, "version {version}, features {extra:#x}");
        // Every buffer is posted again: the device can take a full ring's worth.
        for i in 0..128 {
            assert!(sim.borrow_mut().deliver(&frame(i)), "buffer {i} was not posted again");
        }
        assert!(!sim.borrow_mut().deliver(&frame(0)), "more buffers than posted");
        assert_eq!(recv_all(&mut net), (0..128).map(frame).collect::<Vec<_>>());
        // Out of buffers, the device hears of the new ones in every mode.
        net.flush().unwrap();
        assert_eq!(sim.borrow().notifies[0], expected + 1, "version {version}, features {extra:#x}");
    }
}

/// Sent frames raise no interrupt (their buffers are taken back at the next
/// send), and received ones only while the driver asks: each interrupt is
/// work for the hypervisor (under QEMU a KVM_IRQ_LINE call per raise and
/// per acknowledgement).
#[test]
fn net_interrupts_only_for_frames_received_while_asked_for() {
    for (version, extra) in [(1, 0), (2, 0), (2, RING_EVENT_IDX)] {
        let sim = net_sim(version, extra);
        let mut net = VirtioNet::new(mmio(&sim)).unwrap();
        let what = format!("version {version}, features {extra:#x}");
        for round in 0..3 {
            for i in 0..50 {
                let f = frame(round * 50 + i);
                assert!(net.send(f.len(), &mut |buf| buf.copy_from_slice(&f)).unwrap());
            }
            net.flush().unwrap();
        }
        assert_eq!(sim.borrow().tx_frames.len(), 150);
        assert!(net.tx_room().unwrap());
        assert_eq!(sim.borrow().interrupts[1], 0, "{what}: sent frames raised interrupts");

        // Asked for by default; off, nothing; on again, the next frame.
        assert!(sim.borrow_mut().deliver(&frame(0)));
        assert_eq!(sim.borrow().interrupts[0], 1, "{what}");
        assert_eq!(recv_all(&mut net).len(), 1);
        net.set_rx_interrupts(false);
        for i in 0..20 {
            assert!(sim.borrow_mut().deliver(&frame(i)));
            if i % 3 == 0 {
                recv_all(&mut net);
            }
        }
        recv_all(&mut net);
        assert_eq!(sim.borrow().interrupts[0], 1, "{what}: interrupts while switched off");
        net.set_rx_interrupts(true);
        assert!(sim.borrow_mut().deliver(&frame(1)));
        assert_eq!(sim.borrow().interrupts[0], 2, "{what}");
    }
}

#[test]
fn net_sends_thousands_of_frames_through_a_small_ring() {
    let sim = net_sim(2, 0);
    sim.borrow_mut().queues[1].num_max = 16;
    let mut net = VirtioNet::new(mmio(&sim)).unwrap();
    let frames: Vec<Vec<u8>> = (0..3000).map(frame).collect();
    for f in &frames {
        if !net.tx_room().unwrap() {
            net.flush().unwrap();
        }
        assert!(net.send(f.len(), &mut |buf| buf.copy_from_slice(f)).unwrap());
    }
    net.flush().unwrap();
    assert_eq!(sim.borrow().tx_frames, frames);
    // Eight frames (two descriptors each) per notification.
    assert_eq!(sim.borrow().notifies[1], 3000 / 8);
}

#[test]
fn net_full_ring_refuses_and_long_frames_are_errors() {
    let sim = net_sim(2, 0);
    sim.borrow_mut().queues[1].num_max = 4;
    let mut net = VirtioNet::new(mmio(&sim)).unwrap();
    assert!(net.send(60, &mut |b| b.fill(1)).unwrap());
    assert!(net.send(60, &mut |b| b.fill(2)).unwrap());
    assert!(!net.tx_room().unwrap());
    assert!(!net.send(60, &mut |b| b.fill(3)).unwrap(), "no room: not sent");
    net.flush().unwrap();
    assert!(net.tx_room().unwrap());
    assert_eq!(net.send(1515, &mut |_| {}), Err(Error::FrameTooLong { len: 1515, max: 1514 }));
    assert_eq!(sim.borrow().tx_frames, vec![vec![1; 60], vec![2; 60]]);
}

#[test]
fn net_mtu_from_the_device() {
    let sim = net_sim(2, F_MTU);
    sim.borrow_mut().config[10..12].copy_from_slice(&1400u16.to_le_bytes());
    let net = VirtioNet::new(mmio(&sim)).unwrap();
    assert_eq!((net.mtu(), net.max_frame()), (1400, 1414));
}

#[test]
fn net_misbehaving_device_is_an_error_not_a_frame() {
    // A used entry naming a descriptor that is not a posted buffer's head.
    let sim = net_sim(2, 0);
    let mut net = VirtioNet::new(mmio(&sim)).unwrap();
    sim.borrow_mut().push_used(0, 1, 20);
    let e = net.recv(&mut |_| panic!("a frame from a bad used entry")).unwrap_err();
    assert_eq!(e, Error::UsedIdNotInFlight { queue: 0, id: 1 });
    assert_eq!(net.flush(), Err(e.clone()), "the broken queue stays broken");

    // A frame shorter than the header.
    let sim = net_sim(2, 0);
    let mut net = VirtioNet::new(mmio(&sim)).unwrap();
    let (head, _) = sim.borrow_mut().pop_avail(0).unwrap();
    sim.borrow_mut().push_used(0, u32::from(head), 4);
    assert_eq!(net.recv(&mut |_| panic!("a short frame")), Err(Error::ShortFrame { len: 4, header: 12 }));
    // The buffer went back; the next frame is fine.
    assert!(sim.borrow_mut().deliver(&frame(7)));
    assert_eq!(recv_all(&mut net), vec![frame(7)]);
}

#[test]
fn net_refuses_a_device_without_mac_or_of_another_kind() {
    let sim = Sim::new(2, 1, Kind::Net, V1, &[256, 256]);
    let e = VirtioNet::new(mmio(&sim)).err().unwrap();
    assert_eq!(e, Error::MissingFeatures { device: DeviceType::Net, missing: F_MAC });
    assert!(e.to_string().contains("lacks required feature bits 0x20"), "{e}");
    assert_eq!(sim.borrow().status, 128, "the device is marked FAILED");

    let sim = Sim::new(2, 42, Kind::Manual, V1 | F_MAC, &[256, 256]);
    let e = VirtioNet::new(mmio(&sim)).err().unwrap();
    assert_eq!(e, Error::WrongDevice { expected: DeviceType::Net, found: DeviceType::Other(42) });
    assert_eq!(e.to_string(), "expected a virtio net device, found a unknown (device id 42) device");
}

#[test]
fn rng_fills_buffers_across_requests_and_index_wraps() {
    let sim = Sim::new(2, 4, Kind::Rng, V1, &[4]);
    let mut rng = VirtioRng::new(mmio(&sim)).unwrap();
    let mut out = vec![0u8; 1000];
    rng.fill(&mut out).unwrap();
    assert!(out.iter().enumerate().all(|(i, &b)| b == i as u8));

    // One byte per answer: 70 000 requests take the indices past 65535.
    sim.borrow_mut().rng_max = 1;
    let mut out = vec![0u8; 70_000];
    rng.fill(&mut out).unwrap();
    assert!(out.iter().enumerate().all(|(i, &b)| b == (1000 + i) as u8));
    assert_eq!(sim.borrow().queues[0].used_idx, (4 + 70_000u32 % 65_536) as u16);
}

#[test]
fn rng_device_that_never_answers_is_an_error() {
    let sim = Sim::new(1, 4, Kind::Manual, 0, &[8]);
    let mut rng = VirtioRng::new(mmio(&sim)).unwrap();
    rng.set_spin_limit(1000);
    let mut out = [0u8; 16];
    assert_eq!(rng.fill(&mut out), Err(Error::NoResponse(DeviceType::Entropy)));
    // A late answer is not taken for the next request's.
    let (head, _) = sim.borrow_mut().pop_avail(0).unwrap();
    sim.borrow_mut().push_used(0, u32::from(head), 16);
    assert_eq!(rng.fill(&mut out), Err(Error::NoResponse(DeviceType::Entropy)));
}

fn blk_sim(features: u64, sectors: u64) -> common::Shared {
    let sim = Sim::new(2, 2, Kind::Blk, V1 | features, &[16]);
    sim.borrow_mut().config[..8].copy_from_slice(&sectors.to_le_bytes());
    sim.borrow_mut().disk = (0..sectors as usize * 512).map(|i| (i / 512) as u8).collect();
    sim
}

#[test]
fn blk_reads_writes_and_flushes() {
    let sim = blk_sim(F_FLUSH, 1024);
    let mut blk = VirtioBlk::new(mmio(&sim)).unwrap();
    assert_eq!((blk.capacity(), blk.read_only()), (1024, false));

    let mut sector = vec![0u8; 512];
    blk.read(7, &mut sector).unwrap();
    assert_eq!(sector, vec![7u8; 512]);

    // 200 KiB: four requests of at most 64 KiB.
    let data: Vec<u8> = (0..400 * 512).map(|i| (i * 7 + i / 1000) as u8).collect();
    let before = sim.borrow().notifies[0];
    blk.write(100, &data).unwrap();
    assert_eq!(sim.borrow().notifies[0] - before, 4);
    assert_eq!(&sim.borrow().disk[100 * 512..500 * 512], &data[..]);
    let mut back = vec![0u8; data.len()];
    blk.read(100, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(sim.borrow().disk[99 * 512], 99, "the sector before is untouched");
    assert_eq!(sim.borrow().disk[500 * 512], 244, "the sector after is untouched");

    let before = sim.borrow().notifies[0];
    blk.flush().unwrap();
    assert_eq!(sim.borrow().notifies[0], before + 1, "a flush request reached the device");
}

#[test]
fn blk_read_only_device_refuses_writes() {
    let sim = blk_sim(F_RO, 16);
    let mut blk = VirtioBlk::new(mmio(&sim)).unwrap();
    assert!(blk.read_only());
    let e = blk.write(0, &[9u8; 512]).unwrap_err();
    assert_eq!(e, Error::ReadOnly);
    assert_eq!(e.to_string(), "virtio-blk: the device is read-only");
    assert_eq!(sim.borrow().disk[0], 0, "nothing was written");
    assert_eq!(sim.borrow().notifies[0], 0, "no request reached the device");
    let mut sector = [0u8; 512];
    blk.read(3, &mut sector).unwrap();
    assert_eq!(sector, [3u8; 512]);
    // No FLUSH feature: nothing to do.
    blk.flush().unwrap();
    assert_eq!(sim.borrow().notifies[0], 1);
}

#[test]
fn blk_bad_requests_and_device_errors() {
    let sim = blk_sim(0, 16);
    let mut blk = VirtioBlk::new(mmio(&sim)).unwrap();
    let mut buf = vec![0u8; 1024];
    assert_eq!(blk.read(15, &mut buf), Err(Error::OutOfRange { sector: 15, end: 17, capacity: 16 }));
    let e = blk.read(u64::MAX, &mut buf[..512]).unwrap_err();
    assert!(e.to_string().contains("beyond the device's 16 sectors"), "{e}");
    assert_eq!(blk.write(0, &buf[..100]), Err(Error::NotWholeSectors(100)));
    sim.borrow_mut().blk_status = Some(1);
    assert_eq!(blk.read(0, &mut buf), Err(Error::IoError));
    sim.borrow_mut().blk_status = Some(7);
    assert_eq!(blk.write(0, &buf), Err(Error::BadStatus(7)));
    sim.borrow_mut().blk_status = None;
    blk.read(2, &mut buf).unwrap();
    assert_eq!(&buf[..512], &[2u8; 512]);
}

#[test]
fn blk_serial_numbers_come_back_nul_padded_or_whole() {
    let sim = blk_sim(0, 16);
    let mut blk = VirtioBlk::new(mmio(&sim)).unwrap();
    // No serial (QEMU without serial=): empty.
    assert_eq!(blk.serial().unwrap().1, 0);
    sim.borrow_mut().blk_serial = b"data".to_vec();
    let (id, len) = blk.serial().unwrap();
    assert_eq!(&id[..len], b"data");
    // Exactly 20 bytes: no NUL, all of it.
    sim.borrow_mut().blk_serial = b"a-name-of-twenty-ch!".to_vec();
    let (id, len) = blk.serial().unwrap();
    assert_eq!(&id[..len], b"a-name-of-twenty-ch!");
    // A shorter serial after a longer one: no stale bytes.
    sim.borrow_mut().blk_serial = b"x".to_vec();
    let (id, len) = blk.serial().unwrap();
    assert_eq!((&id[..len], id[1..].iter().all(|&b| b == 0)), (&b"x"[..], true));
    // A device that does not answer GET_ID.
    sim.borrow_mut().blk_status = Some(2);
    assert_eq!(blk.serial(), Err(Error::Unsupported));
}

#[test]
fn blk_discards_in_segments_of_the_devices_maximum_and_only_if_offered() {
    let sim = blk_sim(F_DISCARD | F_BLK_SIZE, 1024);
    {
        let mut s = sim.borrow_mut();
        s.config[20..24].copy_from_slice(&4096u32.to_le_bytes());
        // 20 sectors, rounded down to whole 4 KiB blocks: 16.
        s.config[36..40].copy_from_slice(&20u32.to_le_bytes());
    }
    let mut blk = VirtioBlk::new(mmio(&sim)).unwrap();
    assert_eq!(blk.blk_size(), Some(4096));
    assert!(blk.can_discard());
    blk.discard(8, 40).unwrap();
    assert_eq!(sim.borrow().discards, [(8, 16), (24, 16), (40, 8)]);
    assert!(sim.borrow().disk[8 * 512..48 * 512].iter().all(|&b| b == 0));
    assert_eq!(sim.borrow().disk[48 * 512], 48, "the sector after is untouched");
    assert_eq!(blk.discard(1020, 8), Err(Error::OutOfRange { sector: 1020, end: 1028, capacity: 1024 }));

    // Not offered: unsupported, and nothing reaches the device.
    let sim = blk_sim(0, 16);
    let mut blk = VirtioBlk::new(mmio(&sim)).unwrap();
    assert_eq!((blk.blk_size(), blk.can_discard()), (None, false));
    assert_eq!(blk.discard(0, 1), Err(Error::Unsupported));
    assert_eq!(sim.borrow().notifies[0], 0);
    // Read-only: refused before the device.
    let sim = blk_sim(F_DISCARD | F_RO, 16);
    sim.borrow_mut().config[36..40].copy_from_slice(&8u32.to_le_bytes());
    let mut blk = VirtioBlk::new(mmio(&sim)).unwrap();
    assert_eq!(blk.discard(0, 1), Err(Error::ReadOnly));
}

#[test]
fn blk_requests_are_split_at_whole_logical_blocks() {
    // size_max of 6 KiB with 4 KiB blocks: 4 KiB per request.
    let sim = blk_sim(F_SIZE_MAX | F_BLK_SIZE, 64);
    {
        let mut s = sim.borrow_mut();
        s.config[8..12].copy_from_slice(&6144u32.to_le_bytes());
        s.config[20..24].copy_from_slice(&4096u32.to_le_bytes());
    }
    let mut blk = VirtioBlk::new(mmio(&sim)).unwrap();
    let data = vec![0x42u8; 12 * 1024];
    blk.write(8, &data).unwrap();
    assert_eq!(sim.borrow().notifies[0], 3);
    assert_eq!(&sim.borrow().disk[8 * 512..32 * 512], &data[..]);
}

#[test]
fn blk_patience_decides_how_long_a_request_waits() {
    let sim = Sim::new(2, 2, Kind::Manual, V1, &[16]);
    sim.borrow_mut().config[..8].copy_from_slice(&8u64.to_le_bytes());
    let mut blk = VirtioBlk::new(mmio(&sim)).unwrap();
    let asked = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let seen = asked.clone();
    blk.set_patience(Box::new(move |polls| {
        seen.set(polls);
        polls < 500
    }));
    assert_eq!(blk.flush(), Ok(()), "no FLUSH feature: nothing sent");
    assert_eq!(blk.read(0, &mut [0u8; 512]), Err(Error::NoResponse(DeviceType::Block)));
    assert_eq!(asked.get(), 500);
}

#[test]
fn blk_read_the_device_did_not_fill_is_an_error() {
    let sim = blk_sim(0, 16);
    let mut blk = VirtioBlk::new(mmio(&sim)).unwrap();
    // The device says OK but claims to have written only the status byte.
    sim.borrow_mut().blk_claim_len = Some(1);
    let mut buf = [0u8; 512];
    let e = blk.read(3, &mut buf).unwrap_err();
    assert_eq!(e, Error::ShortCompletion { device: DeviceType::Block, len: 1, expected: 513 });
    assert!(e.to_string().contains("1 bytes written, expected 513"), "{e}");
}

#[test]
fn dropping_a_driver_resets_its_device() {
    let sim = net_sim(2, 0);
    let net = VirtioNet::new(mmio(&sim)).unwrap();
    assert_eq!(sim.borrow().status & 4, 4);
    drop(net);
    assert_eq!(sim.borrow().status, 0, "the device still owns freed buffers");
    let sim = blk_sim(0, 8);
    drop(VirtioBlk::new(mmio(&sim)).unwrap());
    assert_eq!(sim.borrow().status, 0);
    let sim = Sim::new(2, 4, Kind::Rng, V1, &[4]);
    drop(VirtioRng::new(mmio(&sim)).unwrap());
    assert_eq!(sim.borrow().status, 0);
}
