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
    /// The MSI-X capability, if the function has one.
    pub msix: Option<Msix>,
}

impl PciLayout {
    /// The first window the driver uses (common, notify, ISR, device
    /// configuration, MSI-X table) that does not lie wholly inside
    /// `mapped`, with its name: a device the platform cannot reach there.
    pub fn outside(&self, mapped: core::ops::Range<u64>) -> Option<(&'static str, Window)> {
        let windows = [
            ("common configuration", Some(self.common)),
            ("notification", Some(self.notify)),
            ("ISR status", Some(self.isr)),
            ("device configuration", self.device_config),
            ("MSI-X table", self.msix.map(|m| m.table)),
        ];
        windows.into_iter().filter_map(|(what, w)| w.map(|w| (what, w))).find(|(_, w)| {
            let inside = w.length > 0
                && w.addr >= mapped.start
                && w.addr.checked_add(u64::from(w.length)).is_some_and(|end| end <= mapped.end);
            !inside
        })
    }
}

/// A function's MSI-X capability (PCI 3.0, 6.8.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msix {
    /// The capability's offset in configuration space.
    pub cap: u8,
    /// How many table entries (vectors) the function has.
    pub entries: u16,
    /// The table: 16 bytes per entry (address low, high, data, control).
    pub table: Window,
}

/// The MSI-X vector number that means "no interrupt" (VIRTIO 1.2, 4.1.5.1.2).
pub const NO_VECTOR: u16 = 0xffff;

/// One memory BAR of a function, as [`memory_bars`] sized it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// The BAR's index (0..6; a 64-bit BAR takes this one and the next).
    pub index: u8,
    /// Its address (0: not assigned).
    pub base: u64,
    /// Its size in bytes (a power of two).
    pub size: u64,
    /// A 64-bit BAR.
    pub wide: bool,
}

const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;
const CAP_VENDOR: u8 = 0x09;
const CAP_MSIX: u8 = 0x11;
const COMMAND_MEMORY: u32 = 1 << 1;
const COMMAND_INTX_DISABLE: u32 = 1 << 10;
const MSIX_ENABLE: u32 = 1 << 31;
const MSIX_FUNCTION_MASK: u32 = 1 << 30;
const STATUS_CAP_LIST: u32 = 1 << 20;

/// The kind of virtio device a function is, from its vendor and device
/// ids (a transitional device, 0x1000..0x103f, names it in its subsystem
/// id); an error for a function that is no virtio device.
pub fn identify<C: PciConfig + ?Sized>(cfg: &mut C) -> Result<DeviceType, Error> {
    let id = cfg.read32(0);
    let (vendor, device_id) = (id as u16, (id >> 16) as u16);
    match (vendor, device_id) {
        (VIRTIO_VENDOR, 0x1040..=0x107f) => Ok(DeviceType::from_id(u32::from(device_id - 0x1040))),
        (VIRTIO_VENDOR, 0x1000..=0x103f) => Ok(DeviceType::from_id(cfg.read32(0x2c) >> 16)),
        _ => Err(Error::NotVirtioPci { vendor, device: device_id }),
    }
}

/// Reads a virtio function's identity and capability list, and the BARs
/// its windows lie in; also turns on memory decoding and bus mastering.
pub fn probe<C: PciConfig + ?Sized>(cfg: &mut C) -> Result<PciLayout, Error> {
    let device = identify(cfg)?;
    let command_status = cfg.read32(0x04);
    if command_status & STATUS_CAP_LIST == 0 {
        return Err(Error::MissingCapability("common configuration"));
    }
    let (mut common, mut notify, mut isr, mut device_config) = (None, None, None, None);
    let mut msix = None;
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
        if cap_id == CAP_MSIX && msix.is_none() {
            if at > 0xf4 {
                return Err(Error::BadCapability(at));
            }
            let entries = ((head >> 16) & 0x7ff) as u16 + 1;
            let table = cfg.read32(at + 4);
            let (bar, offset) = ((table & 7) as u8, table & !7);
            if bar >= 6 {
                return Err(Error::BadCapability(at));
            }
            msix = Some((at, entries, Window { bar, offset, length: u32::from(entries) * 16, addr: 0 }));
        }
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
        // An MSI-X table in no usable BAR leaves the device polled.
        msix: msix.and_then(|(cap, entries, table)| place(table).ok().map(|table| Msix { cap, entries, table })),
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

/// Every memory BAR of a function with its size, found by the usual
/// sizing (all ones written, the read-back masked, the address restored),
/// with memory decoding off meanwhile so the function answers at no
/// half-written address. I/O BARs and unimplemented ones are left out; a
/// bridge has two BAR registers (the rest of its header is bus numbers
/// and windows), other header types none this reads.
pub fn memory_bars<C: PciConfig + ?Sized>(cfg: &mut C) -> Vec<Bar> {
    let count = match (cfg.read32(0x0c) >> 16) & 0x7f {
        0 => 6,
        1 => 2,
        _ => return Vec::new(),
    };
    let command = cfg.read32(0x04) & 0xffff;
    cfg.write32(0x04, command & !COMMAND_MEMORY);
    let mut bars = Vec::new();
    let mut index = 0u8;
    while index < count {
        let reg = 0x10 + 4 * index;
        let low = cfg.read32(reg);
        if low & 1 != 0 {
            index += 1;
            continue;
        }
        let wide = (low >> 1) & 3 == 2 && index + 1 < count;
        cfg.write32(reg, u32::MAX);
        let mut mask = u64::from(cfg.read32(reg) & !0xf);
        cfg.write32(reg, low);
        let mut base = u64::from(low & !0xf);
        if wide {
            let high = cfg.read32(reg + 4);
            cfg.write32(reg + 4, u32::MAX);
            mask |= u64::from(cfg.read32(reg + 4)) << 32;
            cfg.write32(reg + 4, high);
            base |= u64::from(high) << 32;
        } else {
            mask |= 0xffff_ffff_0000_0000;
        }
        let size = (!mask).wrapping_add(1);
        if mask & 0xffff_fff0 != 0 && size.is_power_of_two() {
            bars.push(Bar { index, base, size, wide });
        }
        index += if wide { 2 } else { 1 };
    }
    cfg.write32(0x04, command);
    bars
}

/// Moves `bar` to `base` (aligned to its size; below 4 GiB unless the BAR
/// is 64-bit), with memory decoding off while the address changes.
pub fn assign_bar<C: PciConfig + ?Sized>(cfg: &mut C, bar: &Bar, base: u64) {
    let command = cfg.read32(0x04) & 0xffff;
    cfg.write32(0x04, command & !COMMAND_MEMORY);
    let reg = 0x10 + 4 * bar.index;
    let flags = cfg.read32(reg) & 0xf;
    cfg.write32(reg, base as u32 & !0xf | flags);
    if bar.wide {
        cfg.write32(reg + 4, (base >> 32) as u32);
    }
    cfg.write32(0x04, command);
}

/// The highest address in `window` where `size` bytes (a power of two,
/// aligned to it) overlap none of `used`; `None` if there is no room.
pub fn place_bar(window: core::ops::Range<u64>, size: u64, used: &[core::ops::Range<u64>]) -> Option<u64> {
    if !size.is_power_of_two() || window.end < size {
        return None;
    }
    let mut at = (window.end - size) & !(size - 1);
    // Each step down passes at least one used range's start, so the loop
    // ends within `used.len() + 1` steps.
    for _ in 0..=used.len() {
        if at < window.start {
            return None;
        }
        match used.iter().filter(|u| u.start < at + size && at < u.end).map(|u| u.start).min() {
            None => return Some(at),
            Some(start) => at = start.checked_sub(size)? & !(size - 1),
        }
    }
    None
}

/// Turns MSI-X on for the function (its vectors still masked per entry
/// until the table says otherwise) and its legacy INTx line off.
pub fn enable_msix<C: PciConfig + ?Sized>(cfg: &mut C, msix: &Msix) {
    let control = cfg.read32(msix.cap);
    cfg.write32(msix.cap, (control | MSIX_ENABLE) & !MSIX_FUNCTION_MASK);
    disable_intx(cfg);
}

/// Turns the function's legacy INTx line off (the command register's
/// interrupt disable bit), for a device that is polled.
pub fn disable_intx<C: PciConfig + ?Sized>(cfg: &mut C) {
    let command = cfg.read32(0x04) & 0xffff;
    cfg.write32(0x04, command | COMMAND_INTX_DISABLE);
}

/// Writes MSI-X table entry `entry` of a mapped table: the message
/// `address` and `data`, unmasked.
pub fn write_msix_entry<R: Mmio>(table: &mut R, entry: u16, address: u64, data: u32) {
    let at = usize::from(entry) * 16;
    table.write32(at + 12, 1);
    table.write32(at, address as u32);
    table.write32(at + 4, (address >> 32) as u32);
    table.write32(at + 8, data);
    table.write32(at + 12, 0);
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
const QUEUE_MSIX_VECTOR: usize = 0x1a;
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
    /// The MSI-X vector queues signal, if any.
    queue_vector: u16,
    /// A queue the device would not give the vector.
    vector_refused: Option<u16>,
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
            queue_vector: NO_VECTOR,
            vector_refused: None,
        }
    }

    /// Queues set up from now on signal MSI-X vector `vector` (which the
    /// platform has pointed at an interrupt and enabled with
    /// [`enable_msix`]).
    pub fn set_queue_vector(&mut self, vector: u16) {
        self.queue_vector = vector;
    }

    /// The first queue whose MSI-X vector the device refused (it read back
    /// [`NO_VECTOR`]: the device is out of interrupt resources), if any.
    pub fn vector_refused(&self) -> Option<u16> {
        self.vector_refused
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
        if self.queue_vector != NO_VECTOR {
            self.common.write16(QUEUE_MSIX_VECTOR, self.queue_vector);
            if self.common.read16(QUEUE_MSIX_VECTOR) != self.queue_vector && self.vector_refused.is_none() {
                self.vector_refused = Some(queue);
            }
        }
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
