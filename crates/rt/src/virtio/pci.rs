//! PCI for the virtio platform (QEMU q35, and any PC-like VM): configuration
//! space through the legacy ports 0xcf8/0xcfc (the PVH TSS opens them to
//! ring 3), the functions of bus 0 and of the buses behind its bridges, and
//! a virtio function brought up on the BARs the firmware assigned.
//!
//! The device windows must lie in the 2 MiB page the trampoline maps for
//! ring 3, uncached ([`VIRTIO_MMIO_PAGE`]): SeaBIOS allocates BARs from
//! the top of the 32-bit PCI hole down from the I/O APIC (0xfec00000), so
//! QEMU's virtio BARs land there. A BAR the firmware left unassigned is
//! placed in that page, below the BARs already there; one assigned
//! elsewhere is refused with a line saying so (a boot failure).

use crate::arch::cpu::{inl, outl};
use crate::arch::pvh::VIRTIO_MMIO_PAGE;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;
use skiff_virtio::regs::VolatileMmio;
use skiff_virtio::transport::pci::{
    self, Msix, PciConfig, PciLayout, PciTransport, Window, assign_bar, cf8_address, memory_bars, place_bar,
};
use skiff_virtio::{DeviceType, Error};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;
/// The device page: where every window must lie.
const PAGE: Range<u64> = VIRTIO_MMIO_PAGE..VIRTIO_MMIO_PAGE + (1 << 21);
/// Buses looked at, at most (a bridge loop ends here).
const MAX_BUSES: usize = 32;

/// A PCI function's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Function {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl core::fmt::Display for Function {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// A function's configuration space, through ports 0xcf8/0xcfc.
pub(super) struct PortConfig(pub Function);

impl PciConfig for PortConfig {
    fn read32(&mut self, offset: u8) -> u32 {
        let Function { bus, device, function } = self.0;
        outl(CONFIG_ADDRESS, cf8_address(bus, device, function, offset));
        inl(CONFIG_DATA)
    }

    fn write32(&mut self, offset: u8, value: u32) {
        let Function { bus, device, function } = self.0;
        outl(CONFIG_ADDRESS, cf8_address(bus, device, function, offset));
        outl(CONFIG_DATA, value);
    }
}

fn config(bus: u8, device: u8, function: u8) -> PortConfig {
    PortConfig(Function { bus, device, function })
}

/// Whether the VM has PCI configuration ports: a host bridge answers at
/// 00:00.0 (microvm has none; its reads return all ones). Two port
/// accesses.
pub(super) fn present() -> bool {
    config(0, 0, 0).read32(0) as u16 != 0xffff
}

/// Every function on bus 0 and on the buses behind its bridges (as the
/// firmware numbered them), with its virtio device type if it is one.
pub(super) fn functions() -> Vec<(Function, Option<DeviceType>)> {
    let mut found = Vec::new();
    let mut buses = Vec::from([0u8]);
    let mut next = 0;
    while next < buses.len() && next < MAX_BUSES {
        let bus = buses[next];
        next += 1;
        for device in 0..32 {
            if config(bus, device, 0).read32(0) as u16 == 0xffff {
                continue;
            }
            let header = config(bus, device, 0).read32(0x0c);
            let functions = if header & (0x80 << 16) != 0 { 8 } else { 1 };
            for function in 0..functions {
                let mut cfg = config(bus, device, function);
                if cfg.read32(0) as u16 == 0xffff {
                    continue;
                }
                let kind = cfg.read32(0x0c) >> 16 & 0x7f;
                if kind == 1 {
                    // A PCI-to-PCI bridge: its secondary bus.
                    let secondary = (cfg.read32(0x18) >> 8) as u8;
                    if secondary != 0 && !buses.contains(&secondary) {
                        buses.push(secondary);
                    }
                }
                let virtio = if kind == 0 { pci::identify(&mut cfg).ok() } else { None };
                found.push((Function { bus, device, function }, virtio));
            }
        }
    }
    found
}

/// A virtio function brought up: its transport on the mapped windows, and
/// its MSI-X table (entry 0 mapped) if it has one.
pub(super) struct Brought {
    pub transport: PciTransport<VolatileMmio>,
    pub msix: Option<(Msix, VolatileMmio)>,
}

/// Brings up the virtio function `f`: reads its capabilities and BARs
/// (placing unassigned BARs in the device page, among the BARs of `all`),
/// checks that every window lies in the device page, turns on memory
/// decoding and bus mastering, and maps the windows. An error is the
/// boot failure's line.
pub(super) fn bring_up(
    f: Function,
    kind: DeviceType,
    all: &[(Function, Option<DeviceType>)],
) -> Result<Brought, String> {
    let mut cfg = PortConfig(f);
    let layout = match pci::probe(&mut cfg) {
        Err(Error::BadBar(_)) if assign_unassigned(f, all)? => pci::probe(&mut cfg),
        other => other,
    }
    .map_err(|e| match e {
        Error::MissingCapability(_) => format!(
            "virtio {kind} device at PCI {f}: {e} (a legacy-only device? this runtime drives modern virtio-pci: \
             QEMU's disable-modern=off)"
        ),
        e => format!("virtio {kind} device at PCI {f}: {e}"),
    })?;
    if let Some((what, w)) = layout.outside(PAGE) {
        return Err(format!(
            "virtio {kind} device at PCI {f}: its {what} window ({} bytes at {:#x}, BAR {}) lies outside the \
             device page this runtime maps ({:#x}..{:#x})",
            w.length, w.addr, w.bar, PAGE.start, PAGE.end
        ));
    }
    let PciLayout { common, notify, isr, device_config, msix, .. } = layout;
    let window = |w: &Window| {
        // SAFETY: `outside` found the window inside the device page the
        // trampoline mapped uncached for ring 3; each window of each
        // function gets one value.
        unsafe { VolatileMmio::new(w.addr as usize, w.length as usize) }
    };
    let transport =
        PciTransport::new(&layout, window(&common), window(&notify), window(&isr), device_config.as_ref().map(window));
    let msix = msix.map(|m| {
        let entry0 = Window { length: 16, ..m.table };
        (m, window(&entry0))
    });
    Ok(Brought { transport, msix })
}

/// Places `f`'s unassigned memory BARs in the device page, below the BARs
/// of every function in `all`. Whether one was placed.
fn assign_unassigned(f: Function, all: &[(Function, Option<DeviceType>)]) -> Result<bool, String> {
    let mut used: Vec<Range<u64>> = Vec::new();
    for (other, _) in all {
        for bar in memory_bars(&mut PortConfig(*other)) {
            if bar.base != 0 {
                used.push(bar.base..bar.base.saturating_add(bar.size));
            }
        }
    }
    let mut cfg = PortConfig(f);
    let mut placed = false;
    for bar in memory_bars(&mut cfg).into_iter().filter(|b| b.base == 0) {
        let Some(at) = place_bar(PAGE, bar.size, &used) else {
            return Err(format!(
                "virtio-pci device at PCI {f}: BAR {} ({} bytes) is unassigned and there is no room for it in the \
                 device page this runtime maps ({:#x}..{:#x})",
                bar.index, bar.size, PAGE.start, PAGE.end
            ));
        };
        log::debug!("virtio-pci device at PCI {f}: BAR {} ({} bytes) placed at {at:#x}", bar.index, bar.size);
        assign_bar(&mut cfg, &bar, at);
        used.push(at..at + bar.size);
        placed = true;
    }
    Ok(placed)
}
