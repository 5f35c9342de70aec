//! Disks on virtio-blk (`skiff_rt::vdisk`) over the simulated device of
//! the virtio driver's tests: sector sizes, the checks, and the device's
//! answers as `BlockError`s.

#[path = "../../virtio/tests/common/mod.rs"]
mod common;

use common::{Kind, Sim, V1, mmio};
use skiff_abi::blk::op;
use skiff_rt::block::{BlockDevice, BlockError};
use skiff_rt::vdisk::VirtioDisk;
use skiff_virtio::blk::{F_BLK_SIZE, F_DISCARD, F_RO, VirtioBlk};

/// A device of `sectors` 512-byte sectors, sector i filled with i.
fn sim(features: u64, sectors: u64, blk_size: u32) -> common::Shared {
    let sim = Sim::new(2, 2, Kind::Blk, V1 | features, &[16]);
    {
        let mut s = sim.borrow_mut();
        s.config[..8].copy_from_slice(&sectors.to_le_bytes());
        s.config[20..24].copy_from_slice(&blk_size.to_le_bytes());
        s.config[36..40].copy_from_slice(&1024u32.to_le_bytes());
        s.disk = (0..sectors as usize * 512).map(|i| (i / 512) as u8).collect();
    }
    sim
}

fn disk(sim: &common::Shared) -> VirtioDisk<skiff_virtio::transport::mmio::MmioTransport<common::MmioRegs>> {
    VirtioDisk::new("data".into(), VirtioBlk::new(mmio(sim)).unwrap()).unwrap()
}

#[test]
fn four_kib_sectors_count_in_their_own_units() {
    let sim = sim(F_BLK_SIZE | F_DISCARD, 64, 4096);
    let d = disk(&sim);
    assert_eq!((d.sector_size(), d.capacity(), d.read_only()), (4096, 8, false));
    let mut buf = vec![0u8; 4096];
    d.read(2, &mut buf).unwrap();
    assert_eq!(buf[0], 16, "disk sector 2 is device sectors 16..24");
    d.write(7, &[0xab; 4096]).unwrap();
    assert!(sim.borrow().disk[56 * 512..].iter().all(|&b| b == 0xab));
    d.discard(7, 1).unwrap();
    assert_eq!(sim.borrow().discards, [(56, 8)]);
    assert_eq!(d.read(0, &mut [0u8; 512]), Err(BlockError::Misaligned { len: 512, sector_size: 4096 }));
    assert_eq!(d.read(8, &mut buf), Err(BlockError::OutOfRange { start: 8, end: 9, capacity: 8 }));
    assert!(matches!(d.write(u64::MAX, &buf), Err(BlockError::OutOfRange { .. })));
    assert_eq!(sim.borrow().notifies[0], 3, "refused requests never reached the device");
}

#[test]
fn unsupported_block_sizes_are_refused() {
    let sim = sim(F_BLK_SIZE, 64, 1024);
    assert_eq!(VirtioDisk::new("data".into(), VirtioBlk::new(mmio(&sim)).unwrap()).err(), Some(1024));
}

#[test]
fn device_answers_become_the_block_apis_errors_and_the_disk_keeps_serving() {
    let sim = sim(0, 16, 512);
    let d = disk(&sim);
    assert_eq!(d.discard(0, 1), Err(BlockError::Unsupported), "no DISCARD offered");
    sim.borrow_mut().blk_status = Some(1);
    assert_eq!(d.read(0, &mut [0u8; 512]), Err(BlockError::Io { errno: 5 }));
    sim.borrow_mut().blk_status = None;
    let mut buf = [0u8; 512];
    d.read(3, &mut buf).unwrap();
    assert_eq!(buf, [3u8; 512], "an I/O error does not end the disk");

    // A device that breaks the protocol: loud, then gone for good.
    sim.borrow_mut().blk_claim_len = Some(1);
    assert_eq!(d.read(3, &mut buf), Err(BlockError::Gone));
    sim.borrow_mut().blk_claim_len = None;
    assert_eq!(d.read(3, &mut buf), Err(BlockError::Gone));
}

#[test]
fn a_read_only_device_refuses_writes_here_and_at_the_device() {
    let sim = sim(F_RO | F_DISCARD, 16, 512);
    let d = disk(&sim);
    assert!(d.read_only());
    assert_eq!(d.write(0, &[1u8; 512]), Err(BlockError::ReadOnly));
    assert_eq!(d.discard(0, 1), Err(BlockError::ReadOnly));
    assert_eq!(sim.borrow().notifies[0], 0, "nothing reached the device");
    // Past the driver's checks, the device's I/O error on a read-only disk
    // is the read-only error (QEMU answers such writes with IOERR).
    sim.borrow_mut().blk_status = Some(1);
    assert_eq!(d.submit_unchecked(op::WRITE, 0, 1, 0), Err(BlockError::ReadOnly));
    assert_eq!(sim.borrow().notifies[0], 1, "the write reached the device");
}
