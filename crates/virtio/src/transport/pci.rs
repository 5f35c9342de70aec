//! The modern virtio-pci transport (VIRTIO 1.2, 4.1): the capability list
//! in a function's configuration space names the windows (common, notify,
//! ISR, device configuration) inside its BARs.
//!
//! Configuration space is reached through [`PciConfig`], which the platform
//! implements with port I/O (0xCF8/0xCFC, [`cf8_address`]) or ECAM
//! ([`ecam_offset`]); it then maps each window [`probe`] reports and builds
//! a [`PciTransport`] on them.

use super::{QueueAddrs, Transport};
use crate::regs::Mmio;
use crate::{DeviceType, Error};
use alloc::vec::Vec;

/// Red Hat's PCI vendor id, which virtio devices use.
pub const VIRTIO_VENDOR: u16 = 0x1af4;

/// One PCI function's configuration space.
pub trait PciConfig {
    /// Reads the aligned dword at `offset` (0..256).
    fn read32(&mut self, offset: u8) -> u32;
    /// Writes the aligned dword at `offset`.
    fn write32(&mut self, offset: u8, value: u32);
}

/// The value to write to port 0xCF8 to reach `offset` of a function.
pub fn cf8_address(bus: u8, device: u8, function: u8, offset: u8) -> u32 {
    0x8000_0000
        | (u32::from(bus) << 16)
        | (u32::from(device & 0x1f) << 11)
        | (u32::from(function & 7) << 8)
        | u32::from(offset & 0xfc)
}

/// A function's offset in an ECAM window.
pub fn ecam_offset(bus: u8, device: u8, function: u8) -> usize {
    (usize::from(bus) << 20) | (usize::from(device & 0x1f) << 15) | (usize::from(function & 7) << 12)
}

/// A window inside a BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The BAR (0..6).
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u32,
    /// Length in bytes.
    pub length: u32,
    /// The guest-physical address (the BAR's base plus the offset).
    pub addr: u64,
}

/// What [`probe`] found in a virtio function's configuration space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciLayout {
    /// The device type.
    pub device: DeviceType,
    /// The common configuration window.
    pub common: Window,
    /// The notification window.
    pub notify: Window,
    /// Bytes between two queues' notify addresses per `queue_notify_off`.
    pub notify_multiplier: u32,
    /// The ISR status window.
    pub isr: Window,
    /// The device-specific configuration window, if any.
    pub device_config: Option<Window>,
}

const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;
const CAP_VENDOR: u8 = 0x09;
const STATUS_CAP_LIST: u32 = 1 << 20;

/// Reads a virtio function's identity and capability list, and the BARs
/// its windows lie in; also turns on memory decoding and bus mastering.
pub fn probe<C: PciConfig + ?Sized>(cfg: &mut C) -> Result<PciLayout, Error> {
    let id = cfg.read32(0);
    let (vendor, device_id) = (id as u16, (id >> 16) as u16);
    let device = match (vendor, device_id) {
        (VIRTIO_VENDOR, 0x1040..=0x107f) => DeviceType::from_id(u32::from(device_id - 0x1040)),
        // Transitional devices name their type in the subsystem id.
        (VIRTIO_VENDOR, 0x1000..=0x103f) => DeviceType::from_id(cfg.read32(0x2c) >> 16),
        _ => return Err(Error::NotVirtioPci { vendor, device: device_id }),
    };
    let command_status = cfg.read32(0x04);
    if command_status & STATUS_CAP_LIST == 0 {
        return Err(Error::MissingCapability("common configuration"));
    }
    let (mut common, mut notify, mut isr, mut device_config) = (None, None, None, None);
    let mut notify_multiplier = 0;
    let mut at = (cfg.read32(0x34) & 0xfc) as u8;
    // At most 48 capabilities fit after the header: a longer list loops.
    for _ in 0..48 {
        if at == 0 {
            break;
        }
        if at < 0x40 {
            return Err(Error::BadCapability(at));
        }
        let head = cfg.read32(at);
        let (cap_id, next, cap_len, cfg_type) =
            (head as u8, (head >> 8) as u8 & 0xfc, (head >> 16) as u8, (head >> 24) as u8);
        if cap_id == CAP_VENDOR && matches!(cfg_type, CFG_COMMON..=CFG_DEVICE) {
            if cap_len < 16 || (cfg_type == CFG_NOTIFY && cap_len < 20) || usize::from(at) + usize::from(cap_len) > 256
            {
                return Err(Error::BadCapability(at));
            }
            let bar = cfg.read32(at + 4) as u8;
            // Reserved BAR numbers are to be ignored (VIRTIO 1.2, 4.1.4).
            if bar < 6 {
                let window = Window { bar, offset: cfg.read32(at + 8), length: cfg.read32(at + 12), addr: 0 };
                let slot = match cfg_type {
                    CFG_COMMON => &mut common,
                    CFG_NOTIFY => &mut notify,
                    CFG_ISR => &mut isr,
                    _ => &mut device_config,
                };
                if slot.is_none() {
                    *slot = Some(window);
                    if cfg_type == CFG_NOTIFY {
                        notify_multiplier = cfg.read32(at + 16);
                    }
                }
            }
        }
        at = next;
    }
    let mut place = |w: Window| -> Result<Window, Error> {
        let base = bar_address(cfg, w.bar)?;
        Ok(Window { addr: base + u64::from(w.offset), ..w })
    };
    let layout = PciLayout {
        device,
        common: place(common.ok_or(Error::MissingCapability("common configuration"))?)?,
        notify: place(notify.ok_or(Error::MissingCapability("notification"))?)?,
        notify_multiplier,
        isr: place(isr.ok_or(Error::MissingCapability("ISR status"))?)?,
        device_config: device_config.map(&mut place).transpose()?,
    };
    // Memory space and bus master on; zeros to the status half, whose
    // bits clear when written with a 1.
    cfg.write32(0x04, (command_status & 0xffff) | 0b110);
    Ok(layout)
}

fn bar_address<C: PciConfig + ?Sized>(cfg: &mut C, bar: u8) -> Result<u64, Error> {
    let low = cfg.read32(0x10 + 4 * bar);
    if low & 1 != 0 {
        return Err(Error::BadBar(bar));
    }
    let addr = match (low >> 1) & 3 {
        0 => u64::from(low & !0xf),
        2 if bar < 5 => u64::from(low & !0xf) | (u64::from(cfg.read32(0x10 + 4 * (bar + 1))) << 32),
        _ => return Err(Error::BadBar(bar)),
    };
    if addr == 0 {
        return Err(Error::BadBar(bar));
    }
    Ok(addr)
}

// The common configuration structure (VIRTIO 1.2, 4.1.4.3).
const DEVICE_FEATURE_SELECT: usize = 0x00;
const DEVICE_FEATURE: usize = 0x04;
const DRIVER_FEATURE_SELECT: usize = 0x08;
const DRIVER_FEATURE: usize = 0x0c;
const DEVICE_STATUS: usize = 0x14;
const CONFIG_GENERATION: usize = 0x15;
const QUEUE_SELECT: usize = 0x16;
const QUEUE_SIZE: usize = 0x18;
const QUEUE_ENABLE: usize = 0x1c;
const QUEUE_NOTIFY_OFF: usize = 0x1e;
const QUEUE_DESC: usize = 0x20;
const QUEUE_DRIVER: usize = 0x28;
const QUEUE_DEVICE: usize = 0x30;

/// A modern virtio-pci device, on the windows [`probe`] found (mapped by
/// the platform).
pub struct PciTransport<R: Mmio> {
    device: DeviceType,
    common: R,
    notify: R,
    notify_len: u32,
    notify_multiplier: u32,
    isr: R,
    config: Option<R>,
    /// Each set-up queue's offset in the notify window.
    notify_at: Vec<Option<u32>>,
}

impl<R: Mmio> PciTransport<R> {
    /// A transport over the mapped windows of `layout`.
    pub fn new(layout: &PciLayout, common: R, notify: R, isr: R, config: Option<R>) -> PciTransport<R> {
        PciTransport {
            device: layout.device,
            common,
            notify,
            notify_len: layout.notify.length,
            notify_multiplier: layout.notify_multiplier,
            isr,
            config,
            notify_at: Vec::new(),
        }
    }
}

impl<R: Mmio> Transport for PciTransport<R> {
    fn device_type(&self) -> DeviceType {
        self.device
    }

    fn modern(&self) -> bool {
        true
    }

    fn device_features(&mut self) -> u64 {
        self.common.write32(DEVICE_FEATURE_SELECT, 0);
        let low = self.common.read32(DEVICE_FEATURE);
        self.common.write32(DEVICE_FEATURE_SELECT, 1);
        let high = self.common.read32(DEVICE_FEATURE);
        u64::from(low) | (u64::from(high) << 32)
    }

    fn set_driver_features(&mut self, features: u64) {
        self.common.write32(DRIVER_FEATURE_SELECT, 0);
        self.common.write32(DRIVER_FEATURE, features as u32);
        self.common.write32(DRIVER_FEATURE_SELECT, 1);
        self.common.write32(DRIVER_FEATURE, (features >> 32) as u32);
    }

    fn status(&mut self) -> u8 {
        self.common.read8(DEVICE_STATUS)
    }

    fn set_status(&mut self, status: u8) {
        self.common.write8(DEVICE_STATUS, status);
    }

    fn max_queue_size(&mut self, queue: u16) -> u16 {
        self.common.write16(QUEUE_SELECT, queue);
        self.common.read16(QUEUE_SIZE)
    }

    fn setup_queue(&mut self, queue: u16, size: u16, addrs: QueueAddrs) -> Result<(), Error> {
        self.common.write16(QUEUE_SELECT, queue);
        let offset = u32::from(self.common.read16(QUEUE_NOTIFY_OFF))
            .checked_mul(self.notify_multiplier)
            .filter(|o| o.checked_add(2).is_some_and(|end| end <= self.notify_len))
            .ok_or(Error::NotifyOutOfRange {
                queue,
                offset: u32::from(self.common.read16(QUEUE_NOTIFY_OFF)).saturating_mul(self.notify_multiplier),
            })?;
        self.common.write16(QUEUE_SIZE, size);
        for (reg, addr) in [(QUEUE_DESC, addrs.desc), (QUEUE_DRIVER, addrs.avail), (QUEUE_DEVICE, addrs.used)] {
            self.common.write32(reg, addr as u32);
            self.common.write32(reg + 4, (addr >> 32) as u32);
        }
        self.common.write16(QUEUE_ENABLE, 1);
        let i = usize::from(queue);
        if self.notify_at.len() <= i {
            self.notify_at.resize(i + 1, None);
        }
        self.notify_at[i] = Some(offset);
        Ok(())
    }

    fn notify(&mut self, queue: u16) {
        if let Some(Some(offset)) = self.notify_at.get(usize::from(queue)) {
            self.notify.write16(*offset as usize, queue);
        }
    }

    fn ack_interrupt(&mut self) -> u8 {
        // Reading the ISR status acknowledges it.
        self.isr.read8(0)
    }

    fn config_generation(&mut self) -> u32 {
        u32::from(self.common.read8(CONFIG_GENERATION))
    }

    fn read_config8(&mut self, offset: usize) -> u8 {
        self.config.as_mut().map_or(0, |c| c.read8(offset))
    }

    fn read_config16(&mut self, offset: usize) -> u16 {
        self.config.as_mut().map_or(0, |c| c.read16(offset))
    }

    fn read_config32(&mut self, offset: usize) -> u32 {
        self.config.as_mut().map_or(0, |c| c.read32(offset))
    }
}
