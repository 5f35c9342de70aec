//! The virtio-mmio transport (VIRTIO 1.2, 4.2), version 2 (modern) and
//! version 1 (legacy: page-frame queue addresses, as QEMU's microvm offers
//! unless told otherwise).

use super::{QueueAddrs, Transport};
use crate::regs::Mmio;
use crate::{DeviceType, Error};
use alloc::string::ToString;

const MAGIC: usize = 0x000;
const VERSION: usize = 0x004;
const DEVICE_ID: usize = 0x008;
const DEVICE_FEATURES: usize = 0x010;
const DEVICE_FEATURES_SEL: usize = 0x014;
const DRIVER_FEATURES: usize = 0x020;
const DRIVER_FEATURES_SEL: usize = 0x024;
const GUEST_PAGE_SIZE: usize = 0x028;
const QUEUE_SEL: usize = 0x030;
const QUEUE_NUM_MAX: usize = 0x034;
const QUEUE_NUM: usize = 0x038;
const QUEUE_ALIGN: usize = 0x03c;
const QUEUE_PFN: usize = 0x040;
const QUEUE_READY: usize = 0x044;
const QUEUE_NOTIFY: usize = 0x050;
const INTERRUPT_STATUS: usize = 0x060;
const INTERRUPT_ACK: usize = 0x064;
const STATUS: usize = 0x070;
const QUEUE_DESC: usize = 0x080;
const QUEUE_DRIVER: usize = 0x090;
const QUEUE_DEVICE: usize = 0x0a0;
const CONFIG_GENERATION: usize = 0x0fc;
const CONFIG: usize = 0x100;

/// "virt", little-endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;

/// The page size a legacy device is told (queue addresses are page frames).
pub const LEGACY_PAGE_SIZE: u32 = 4096;

/// A virtio-mmio device.
pub struct MmioTransport<R: Mmio> {
    regs: R,
    version: u32,
    device: DeviceType,
}

impl<R: Mmio> MmioTransport<R> {
    /// Checks the magic value, version and device id of the window.
    pub fn new(mut regs: R) -> Result<MmioTransport<R>, Error> {
        let magic = regs.read32(MAGIC);
        if magic != MAGIC_VALUE {
            return Err(Error::BadMagic(magic));
        }
        let version = regs.read32(VERSION);
        if version != 1 && version != 2 {
            return Err(Error::UnsupportedVersion(version));
        }
        let id = regs.read32(DEVICE_ID);
        if id == 0 {
            return Err(Error::NoDevice);
        }
        if version == 1 {
            regs.write32(GUEST_PAGE_SIZE, LEGACY_PAGE_SIZE);
        }
        Ok(MmioTransport { regs, version, device: DeviceType::from_id(id) })
    }

    /// The transport version (1 legacy, 2 modern).
    pub fn version(&self) -> u32 {
        self.version
    }
}

impl<R: Mmio> Transport for MmioTransport<R> {
    fn device_type(&self) -> DeviceType {
        self.device
    }

    fn modern(&self) -> bool {
        self.version == 2
    }

    fn device_features(&mut self) -> u64 {
        self.regs.write32(DEVICE_FEATURES_SEL, 0);
        let low = self.regs.read32(DEVICE_FEATURES);
        self.regs.write32(DEVICE_FEATURES_SEL, 1);
        let high = self.regs.read32(DEVICE_FEATURES);
        u64::from(low) | (u64::from(high) << 32)
    }

    fn set_driver_features(&mut self, features: u64) {
        self.regs.write32(DRIVER_FEATURES_SEL, 0);
        self.regs.write32(DRIVER_FEATURES, features as u32);
        self.regs.write32(DRIVER_FEATURES_SEL, 1);
        self.regs.write32(DRIVER_FEATURES, (features >> 32) as u32);
    }

    fn status(&mut self) -> u8 {
        self.regs.read32(STATUS) as u8
    }

    fn set_status(&mut self, status: u8) {
        self.regs.write32(STATUS, u32::from(status));
    }

    fn max_queue_size(&mut self, queue: u16) -> u16 {
        self.regs.write32(QUEUE_SEL, u32::from(queue));
        // A size beyond 16 bits is no valid split-queue size either.
        u16::try_from(self.regs.read32(QUEUE_NUM_MAX)).unwrap_or(u16::MAX - 1)
    }

    fn setup_queue(&mut self, queue: u16, size: u16, addrs: QueueAddrs) -> Result<(), Error> {
        self.regs.write32(QUEUE_SEL, u32::from(queue));
        self.regs.write32(QUEUE_NUM, u32::from(size));
        if self.version == 1 {
            // A legacy queue is named by a 32-bit page frame number.
            let pfn = u32::try_from(addrs.desc / u64::from(LEGACY_PAGE_SIZE))
                .map_err(|_| Error::QueueAddressTooHigh { queue, addr: addrs.desc })?;
            self.regs.write32(QUEUE_ALIGN, LEGACY_PAGE_SIZE);
            self.regs.write32(QUEUE_PFN, pfn);
        } else {
            for (reg, addr) in [(QUEUE_DESC, addrs.desc), (QUEUE_DRIVER, addrs.avail), (QUEUE_DEVICE, addrs.used)] {
                self.regs.write32(reg, addr as u32);
                self.regs.write32(reg + 4, (addr >> 32) as u32);
            }
            self.regs.write32(QUEUE_READY, 1);
        }
        Ok(())
    }

    fn notify(&mut self, queue: u16) {
        self.regs.write32(QUEUE_NOTIFY, u32::from(queue));
    }

    fn ack_interrupt(&mut self) -> u8 {
        let isr = self.regs.read32(INTERRUPT_STATUS);
        if isr != 0 {
            self.regs.write32(INTERRUPT_ACK, isr);
        }
        isr as u8
    }

    fn config_generation(&mut self) -> u32 {
        if self.version == 1 { 0 } else { self.regs.read32(CONFIG_GENERATION) }
    }

    fn read_config8(&mut self, offset: usize) -> u8 {
        self.regs.read8(CONFIG + offset)
    }

    fn read_config16(&mut self, offset: usize) -> u16 {
        self.regs.read16(CONFIG + offset)
    }

    fn read_config32(&mut self, offset: usize) -> u32 {
        self.regs.read32(CONFIG + offset)
    }
}

/// A device QEMU names on the kernel command line
/// (`virtio_mmio.device=512@0xfeb00e00:12`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmdlineDevice {
    /// The window's size in bytes.
    pub size: u64,
    /// The window's guest-physical base.
    pub base: u64,
    /// The interrupt line.
    pub irq: u32,
}

/// Every `virtio_mmio.device=SIZE@BASE:IRQ` entry of a command line
/// (SIZE may end in K or M; numbers are decimal or 0x-hex).
pub fn cmdline_devices(cmdline: &str) -> impl Iterator<Item = Result<CmdlineDevice, Error>> + '_ {
    cmdline.split_ascii_whitespace().filter_map(|word| word.strip_prefix("virtio_mmio.device=")).map(parse_entry)
}

fn parse_entry(entry: &str) -> Result<CmdlineDevice, Error> {
    let bad = || Error::BadCmdline(entry.to_string());
    let (size, rest) = entry.split_once('@').ok_or_else(bad)?;
    let (base, irq) = rest.split_once(':').ok_or_else(bad)?;
    let (size, scale) = match size.as_bytes().last() {
        Some(b'K' | b'k') => (&size[..size.len() - 1], 1024),
        Some(b'M' | b'm') => (&size[..size.len() - 1], 1024 * 1024),
        _ => (size, 1),
    };
    let size = number(size).and_then(|s| s.checked_mul(scale)).ok_or_else(bad)?;
    let base = number(base).ok_or_else(bad)?;
    let irq = number(irq).and_then(|i| u32::try_from(i).ok()).ok_or_else(bad)?;
    Ok(CmdlineDevice { size, base, irq })
}

fn number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}
