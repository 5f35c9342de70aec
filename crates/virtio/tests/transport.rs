//! The virtio-mmio and virtio-pci transports and feature negotiation.

mod common;

use common::{Kind, MmioRegs, PciWindow, Sim, V1, mmio};
use skiff_virtio::features::RING_EVENT_IDX;
use skiff_virtio::net::{F_MAC, VirtioNet};
use skiff_virtio::regs::Mmio;
use skiff_virtio::rng::VirtioRng;
use skiff_virtio::transport::mmio::{CmdlineDevice, MmioTransport, cmdline_devices};
use skiff_virtio::transport::pci::{
    Bar, NO_VECTOR, PciConfig, PciTransport, Window, assign_bar, cf8_address, ecam_offset, enable_msix, memory_bars,
    place_bar, probe, write_msix_entry,
};
use skiff_virtio::transport::{Transport, negotiate};
use skiff_virtio::{DeviceType, Error};

/// A register file with a wrong magic, version or an empty slot.
struct Header {
    magic: u32,
    version: u32,
    id: u32,
}

impl Mmio for Header {
    fn read8(&mut self, _: usize) -> u8 {
        0
    }
    fn read16(&mut self, _: usize) -> u16 {
        0
    }
    fn read32(&mut self, offset: usize) -> u32 {
        match offset {
            0 => self.magic,
            4 => self.version,
            8 => self.id,
            _ => 0,
        }
    }
    fn write8(&mut self, _: usize, _: u8) {}
    fn write16(&mut self, _: usize, _: u16) {}
    fn write32(&mut self, _: usize, _: u32) {}
}

#[test]
fn mmio_header_is_checked() {
    let e = MmioTransport::new(Header { magic: 0xffff_ffff, version: 2, id: 1 }).err().unwrap();
    assert_eq!(e, Error::BadMagic(0xffff_ffff));
    assert!(e.to_string().contains("expected 0x74726976"), "{e}");
    let e = MmioTransport::new(Header { magic: 0x7472_6976, version: 3, id: 1 }).err().unwrap();
    assert_eq!(e, Error::UnsupportedVersion(3));
    let e = MmioTransport::new(Header { magic: 0x7472_6976, version: 1, id: 0 }).err().unwrap();
    assert_eq!(e, Error::NoDevice);
    // An unknown device is reported as what it is.
    let t = MmioTransport::new(Header { magic: 0x7472_6976, version: 2, id: 77 }).unwrap();
    assert_eq!(t.device_type(), DeviceType::Other(77));
    assert_eq!(t.device_type().to_string(), "unknown (device id 77)");
}

#[test]
fn negotiation_accepts_only_offered_wanted_features() {
    let sim = Sim::new(2, 4, Kind::Manual, V1 | RING_EVENT_IDX | (1 << 40) | 1, &[8]);
    let mut t = mmio(&sim);
    let accepted = negotiate(&mut t, DeviceType::Entropy, 0, RING_EVENT_IDX | (1 << 3)).unwrap();
    assert_eq!(accepted, V1 | RING_EVENT_IDX);
    assert_eq!(sim.borrow().driver_features, V1 | RING_EVENT_IDX);
    assert_eq!(sim.borrow().status, 1 | 2 | 8);
}

#[test]
fn modern_device_without_version_1_is_refused_legacy_is_not() {
    let sim = Sim::new(2, 4, Kind::Manual, 0, &[8]);
    let e = VirtioRng::new(mmio(&sim)).err().unwrap();
    assert_eq!(e, Error::MissingFeatures { device: DeviceType::Entropy, missing: V1 });
    assert_eq!(e.to_string(), "the virtio entropy device lacks required feature bits 0x100000000");
    assert_eq!(sim.borrow().status, 128);

    let sim = Sim::new(1, 4, Kind::Rng, 0, &[8]);
    let mut rng = VirtioRng::new(mmio(&sim)).unwrap();
    let mut out = [0u8; 4];
    rng.fill(&mut out).unwrap();
    assert_eq!(out, [0, 1, 2, 3]);
    assert_eq!(sim.borrow().status, 1 | 2 | 4, "a legacy device has no FEATURES_OK step");
}

#[test]
fn features_the_device_refuses_are_an_error() {
    let sim = Sim::new(2, 1, Kind::Net, V1 | F_MAC, &[256, 256]);
    sim.borrow_mut().reject_features = true;
    let e = VirtioNet::new(mmio(&sim)).err().unwrap();
    assert_eq!(e, Error::FeaturesRejected { device: DeviceType::Net, features: V1 | F_MAC });
    assert!(e.to_string().contains("FEATURES_OK not kept"), "{e}");
    assert_eq!(sim.borrow().status, 128);
}

#[test]
fn mmio_devices_from_the_command_line() {
    let line = "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 x virtio_mmio.device=4K@0xd0000000:5 -- a b";
    let found: Vec<_> = cmdline_devices(line).collect();
    assert_eq!(
        found,
        vec![
            Ok(CmdlineDevice { size: 512, base: 0xfeb0_0e00, irq: 12 }),
            Ok(CmdlineDevice { size: 4096, base: 0xd000_0000, irq: 5 }),
        ]
    );
    let bad: Vec<_> = cmdline_devices("virtio_mmio.device=512@0xzz:1 virtio_mmio.device=512").collect();
    assert_eq!(bad[0], Err(Error::BadCmdline("512@0xzz:1".into())));
    assert!(bad[1].as_ref().unwrap_err().to_string().contains("expected SIZE@BASE:IRQ"));
}

/// A PCI function's configuration space.
struct Config([u8; 256]);

impl PciConfig for Config {
    fn read32(&mut self, offset: u8) -> u32 {
        let o = usize::from(offset);
        u32::from_le_bytes(self.0[o..o + 4].try_into().unwrap())
    }
    fn write32(&mut self, offset: u8, value: u32) {
        let o = usize::from(offset);
        self.0[o..o + 4].copy_from_slice(&value.to_le_bytes());
    }
}

const BAR_BASE: u64 = 0x1_fe00_0000;

/// QEMU's modern virtio-net-pci: an MSI-X capability among four virtio
/// ones in a 64-bit BAR 4.
fn virtio_net_config() -> Config {
    let mut c = Config([0; 256]);
    c.write32(0x00, 0x1041_1af4);
    c.write32(0x04, 1 << 20);
    c.write32(0x20, 0xfe00_000c);
    c.write32(0x24, 1);
    c.write32(0x34, 0x40);
    // (offset, next, type, offset in BAR, length)
    let caps = [(0x40, 0x54, 1, 0x0000, 0x38), (0x54, 0x68, 3, 0x1000, 0x1000), (0x68, 0x7c, 4, 0x2000, 0x1000)];
    for (at, next, kind, off, len) in caps {
        c.write32(at, 0x09 | (next << 8) | (16 << 16) | (kind << 24));
        c.write32(at + 4, 4);
        c.write32(at + 8, off);
        c.write32(at + 12, len);
    }
    // MSI-X (id 0x11), then the notify capability with its multiplier.
    c.write32(0x7c, 0x11 | (0x90 << 8));
    c.write32(0x90, 0x09 | (20 << 16) | (2 << 24));
    c.write32(0x94, 4);
    c.write32(0x98, 0x3000);
    c.write32(0x9c, 0x1000);
    c.write32(0xa0, 4);
    c
}

#[test]
fn pci_capabilities_are_found() {
    let mut c = virtio_net_config();
    let layout = probe(&mut c).unwrap();
    assert_eq!(layout.device, DeviceType::Net);
    let w = |offset: u32, length: u32| Window { bar: 4, offset, length, addr: BAR_BASE + u64::from(offset) };
    assert_eq!(layout.common, w(0, 0x38));
    assert_eq!(layout.isr, w(0x1000, 0x1000));
    assert_eq!(layout.device_config, Some(w(0x2000, 0x1000)));
    assert_eq!((layout.notify, layout.notify_multiplier), (w(0x3000, 0x1000), 4));
    assert_eq!(c.read32(4) & 0b110, 0b110, "memory decoding and bus mastering are on");
    assert_eq!(c.read32(4) >> 16, 0, "no status bit is written back (a 1 would clear it)");
}

#[test]
fn pci_malformed_functions_are_errors() {
    let mut c = virtio_net_config();
    c.write32(0, 0x1000_8086);
    assert_eq!(probe(&mut c), Err(Error::NotVirtioPci { vendor: 0x8086, device: 0x1000 }));

    // A capability list that loops ends, and the missing notify is named.
    let mut c = virtio_net_config();
    c.write32(0x7c, 0x11 | (0x7c << 8));
    let e = probe(&mut c).unwrap_err();
    assert_eq!(e, Error::MissingCapability("notification"));
    assert_eq!(e.to_string(), "virtio-pci: the notification capability is missing");

    let mut c = virtio_net_config();
    c.write32(0x54, 0x09 | (0x68 << 8) | (8 << 16) | (3 << 24));
    assert_eq!(probe(&mut c), Err(Error::BadCapability(0x54)));

    let mut c = virtio_net_config();
    c.write32(0x20, 0xc001);
    assert_eq!(probe(&mut c), Err(Error::BadBar(4)));

    let mut c = virtio_net_config();
    c.write32(0x34, 0x10);
    assert_eq!(probe(&mut c), Err(Error::BadCapability(0x10)));

    // A transitional device names its type in the subsystem id.
    let mut c = virtio_net_config();
    c.write32(0, 0x1005_1af4);
    c.write32(0x2c, (4 << 16) | 0x1af4);
    assert_eq!(probe(&mut c).unwrap().device, DeviceType::Entropy);
}

#[test]
fn pci_config_addresses() {
    assert_eq!(cf8_address(0, 3, 0, 0x10), 0x8000_1810);
    assert_eq!(cf8_address(1, 31, 7, 0xff), 0x8001_fffc);
    assert_eq!(ecam_offset(1, 2, 3), (1 << 20) | (2 << 15) | (3 << 12));
}

#[test]
fn net_over_pci_sends_and_receives() {
    let mut c = virtio_net_config();
    let layout = probe(&mut c).unwrap();
    let sim = Sim::new(2, 1, Kind::Net, V1 | F_MAC | RING_EVENT_IDX, &[256, 256]);
    sim.borrow_mut().config[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
    let t = PciTransport::new(
        &layout,
        PciWindow::Common(sim.clone()),
        PciWindow::Notify(sim.clone(), layout.notify_multiplier),
        PciWindow::Isr(sim.clone()),
        Some(PciWindow::Device(sim.clone())),
    );
    let mut net = VirtioNet::new(t).unwrap();
    assert_eq!(net.mac(), [2, 0, 0, 0, 0, 9]);
    for i in 0..10u8 {
        assert!(net.send(100, &mut |b| b.fill(i)).unwrap());
    }
    net.flush().unwrap();
    assert_eq!(sim.borrow().notifies[1], 1);
    assert_eq!(sim.borrow().tx_frames, (0..10u8).map(|i| vec![i; 100]).collect::<Vec<_>>());
    assert!(sim.borrow_mut().deliver(&[7; 64]));
    let mut got = Vec::new();
    assert!(net.recv(&mut |f| got.extend_from_slice(f)).unwrap());
    assert_eq!(got, vec![7; 64]);
    assert_eq!(net.transport().ack_interrupt(), 1, "reading the ISR acknowledges");
    assert_eq!(net.transport().ack_interrupt(), 0);
}

#[test]
fn pci_notify_offset_outside_the_window_is_an_error() {
    let mut c = virtio_net_config();
    c.write32(0x9c, 2);
    let layout = probe(&mut c).unwrap();
    let sim = Sim::new(2, 1, Kind::Net, V1 | F_MAC, &[256, 256]);
    let t = PciTransport::new(
        &layout,
        PciWindow::Common(sim.clone()),
        PciWindow::Notify(sim.clone(), 4),
        PciWindow::Isr(sim.clone()),
        None,
    );
    // Queue 0 notifies at 0 (fits), queue 1 at 4 (outside 2 bytes).
    assert_eq!(VirtioNet::new(t).err(), Some(Error::NotifyOutOfRange { queue: 1, offset: 4 }));
    let _ = MmioRegs(sim);
}

/// A configuration space whose BARs decode only their size's bits, as
/// hardware does, so sizing by writing all ones works.
struct SizedConfig {
    bytes: Config,
    /// Size of each BAR register's BAR (0: unimplemented); a 64-bit BAR's
    /// upper register holds 0 and takes the upper half of the mask.
    sizes: [u64; 6],
}

impl PciConfig for SizedConfig {
    fn read32(&mut self, offset: u8) -> u32 {
        self.bytes.read32(offset)
    }
    fn write32(&mut self, offset: u8, value: u32) {
        match offset {
            0x10..=0x27 => {
                let i = usize::from(offset - 0x10) / 4;
                let flags = self.bytes.read32(offset) & 0xf;
                let upper_half = i > 0 && self.sizes[i] == 0 && self.sizes[i - 1] != 0 && {
                    let below = self.bytes.read32(offset - 4);
                    below & 1 == 0 && (below >> 1) & 3 == 2
                };
                let value = if upper_half {
                    (value as u64 & (!(self.sizes[i - 1] - 1) >> 32)) as u32
                } else if self.sizes[i] == 0 {
                    0
                } else {
                    (value & !(self.sizes[i] as u32).wrapping_sub(1) & !0xf) | flags
                };
                self.bytes.write32(offset, value);
            }
            _ => self.bytes.write32(offset, value),
        }
    }
}

#[test]
fn pci_bars_are_sized_and_unassigned_ones_placed_in_the_window() {
    let mut c = SizedConfig { bytes: virtio_net_config(), sizes: [0x20, 0x1000, 0, 0, 0x4000, 0] };
    // BAR 0 I/O, BAR 1 32-bit memory unassigned, BAR 4/5 64-bit at BAR_BASE.
    c.bytes.write32(0x10, 0xc001);
    c.bytes.write32(0x14, 0);
    c.bytes.write32(0x04, 0b111 | (1 << 20));
    let bars = memory_bars(&mut c);
    assert_eq!(
        bars,
        vec![
            Bar { index: 1, base: 0, size: 0x1000, wide: false },
            Bar { index: 4, base: BAR_BASE, size: 0x4000, wide: true },
        ]
    );
    assert_eq!(c.read32(0x10), 0xc001, "the I/O BAR is untouched");
    assert_eq!(c.read32(0x20), 0xfe00_000c, "addresses are restored after sizing");
    assert_eq!(c.read32(0x04) & 0xffff, 0b111, "decoding is back on");
    // A bridge (header type 1) has two BAR registers; 0x18 on are its bus
    // numbers, never written.
    let mut bridge = SizedConfig { bytes: Config([0; 256]), sizes: [0x1000, 0, 0x1000, 0, 0, 0] };
    bridge.bytes.write32(0x0c, 1 << 16);
    bridge.bytes.write32(0x18, 0x0002_0100);
    assert_eq!(memory_bars(&mut bridge), vec![Bar { index: 0, base: 0, size: 0x1000, wide: false }]);
    assert_eq!(bridge.read32(0x18), 0x0002_0100);

    // The window's top is taken by another function: the BAR goes below it.
    let window = 0xfea0_0000..0xfec0_0000;
    let used = [0xfebf_8000..0xfec0_0000, 0xfebf_0000..0xfebf_4000];
    let at = place_bar(window.clone(), 0x1000, &used).unwrap();
    assert_eq!(at, 0xfebf_7000);
    assign_bar(&mut c, &bars[0], at);
    assert_eq!(c.read32(0x14), 0xfebf_7000);
    assert_eq!(place_bar(window.clone(), 0x4000, &used), Some(0xfebf_4000));
    assert_eq!(place_bar(window.clone(), 0x8000, &used), Some(0xfebe_8000));
    assert_eq!(place_bar(0xfebf_8000..0xfec0_0000, 0x8000, &used), None, "no room");
    assert_eq!(place_bar(window, 0x3000, &[]), None, "not a power of two");
}

#[test]
fn pci_msix_is_found_enabled_and_queues_get_their_vector() {
    let mut c = virtio_net_config();
    // MSI-X with 3 entries, its table at offset 0x800 of BAR 1.
    c.write32(0x14, 0xfebc_0000);
    c.write32(0x7c, 0x11 | (0x90 << 8) | (2 << 16));
    c.write32(0x80, 0x800 | 1);
    let layout = probe(&mut c).unwrap();
    let msix = layout.msix.expect("an MSI-X capability");
    assert_eq!((msix.cap, msix.entries), (0x7c, 3));
    assert_eq!(msix.table, Window { bar: 1, offset: 0x800, length: 48, addr: 0xfebc_0800 });
    enable_msix(&mut c, &msix);
    assert_eq!(c.read32(0x7c) >> 30, 0b10, "MSI-X on, function not masked");
    assert_ne!(c.read32(0x04) & (1 << 10), 0, "INTx off");

    let mut table = MmioRegsArray([0; 48]);
    write_msix_entry(&mut table, 0, 0xfee0_0000, 32);
    assert_eq!(&table.0[..4], &[0xfee0_0000, 0, 32, 0]);

    // The device takes vector 0 for both queues.
    let sim = Sim::new(2, 1, Kind::Net, V1 | F_MAC, &[256, 256]);
    sim.borrow_mut().msix_vectors = 1;
    let mut t = PciTransport::new(
        &layout,
        PciWindow::Common(sim.clone()),
        PciWindow::Notify(sim.clone(), layout.notify_multiplier),
        PciWindow::Isr(sim.clone()),
        Some(PciWindow::Device(sim.clone())),
    );
    t.set_queue_vector(0);
    let mut net = VirtioNet::new(t).unwrap();
    assert_eq!(net.transport().vector_refused(), None);
    assert!(sim.borrow().queues.iter().all(|q| q.msix_vector == 0));

    // A device out of vectors reads back NO_VECTOR: reported, not fatal.
    let sim = Sim::new(2, 1, Kind::Net, V1 | F_MAC, &[256, 256]);
    let mut t = PciTransport::new(
        &layout,
        PciWindow::Common(sim.clone()),
        PciWindow::Notify(sim.clone(), layout.notify_multiplier),
        PciWindow::Isr(sim.clone()),
        Some(PciWindow::Device(sim.clone())),
    );
    t.set_queue_vector(0);
    let mut net = VirtioNet::new(t).unwrap();
    assert_eq!(net.transport().vector_refused(), Some(0));
    assert!(sim.borrow().queues.iter().all(|q| q.msix_vector == NO_VECTOR));

    // A table in a BAR that is not memory leaves the device without MSI-X.
    let mut c = virtio_net_config();
    c.write32(0x7c, 0x11 | (0x90 << 8));
    c.write32(0x80, 0);
    c.write32(0x10, 0xc001);
    assert_eq!(probe(&mut c).unwrap().msix, None);
}

/// A plain array of 32-bit registers.
struct MmioRegsArray([u32; 48]);

impl Mmio for MmioRegsArray {
    fn read8(&mut self, _: usize) -> u8 {
        unreachable!()
    }
    fn read16(&mut self, _: usize) -> u16 {
        unreachable!()
    }
    fn read32(&mut self, offset: usize) -> u32 {
        self.0[offset / 4]
    }
    fn write8(&mut self, _: usize, _: u8) {
        unreachable!()
    }
    fn write16(&mut self, _: usize, _: u16) {
        unreachable!()
    }
    fn write32(&mut self, offset: usize, value: u32) {
        self.0[offset / 4] = value;
    }
}

#[test]
fn pci_windows_outside_the_mapped_range_are_named() {
    let mut c = virtio_net_config();
    c.write32(0x20, 0xfeb0_000c);
    c.write32(0x24, 0);
    let layout = probe(&mut c).unwrap();
    assert_eq!(layout.outside(0xfea0_0000..0xfec0_0000), None);
    // The notification window (0x3000..0x4000 in BAR 4) ends past the range.
    let (what, w) = layout.outside(0xfea0_0000..0xfeb0_3800).unwrap();
    assert_eq!((what, w.addr, w.bar), ("notification", 0xfeb0_3000, 4));
    // A BAR above 4 GiB: the first window is already outside.
    let layout = probe(&mut virtio_net_config()).unwrap();
    assert_eq!(layout.outside(0xfea0_0000..0xfec0_0000).map(|(what, _)| what), Some("common configuration"));
}
