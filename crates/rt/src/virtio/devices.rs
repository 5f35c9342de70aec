//! The virtio platform's devices: microvm's virtio-mmio windows, found on
//! the command line or by probing the fixed slots, their interrupts routed
//! through the I/O APIC; virtio-pci functions on a PC-like machine (q35),
//! found in PCI configuration space ([`super::pci`]), their interrupts
//! MSI-X messages; and the NICs and disks lent to the service.
//!
//! Disks are virtio-blk devices, polled (a request completes before its
//! call returns, as on the tender): their interrupts stay off. Each
//! declared disk gets the device whose serial number is its name, else the
//! next device without a serial ([`crate::vdisk::match_disks`]).
//!
//! Every window lies in the 2 MiB page the PVH trampoline maps for ring 3
//! ([`VIRTIO_MMIO_PAGE`]), the I/O APICs in the next one ([`IOAPIC_PAGE`]).
//! A virtio-mmio device's interrupt line is routed, edge-triggered, to the
//! supervisor's timer vector, and a virtio-pci NIC's queues signal an
//! MSI-X message with that vector: its handler only acknowledges the local
//! APIC, and any interrupt ends the idle call's `hlt`, so a frame wakes an
//! idle guest at once. Ring 3 then reads and acknowledges the device's
//! interrupt status and looks at its used rings.

use crate::arch::pvh::{IOAPIC_PAGE, VIRTIO_MMIO_PAGE};
use crate::arch::supervisor::TIMER_VECTOR;
use crate::block::BlockDevice;
use crate::device::{DeviceError, NetDevice};
use crate::executor::wake_on_device;
use crate::random::{EntropyDevice, RandomError};
use crate::vdisk::{VirtioDisk, match_disks};
use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::task::{Context, Poll};
use skiff_virtio::blk::{Patience, VirtioBlk};
use skiff_virtio::net::VirtioNet;
use skiff_virtio::regs::VolatileMmio;
use skiff_virtio::rng::VirtioRng;
use skiff_virtio::transport::mmio::{MmioTransport, cmdline_devices};
use skiff_virtio::transport::pci::{PciTransport, enable_msix, write_msix_entry};
use skiff_virtio::transport::{QueueAddrs, Transport};
use skiff_virtio::{DeviceType, Error};

use super::pci::{self, PortConfig};

/// microvm's first virtio-mmio slot.
const SLOT_BASE: u64 = 0xfeb0_0000;
/// Bytes per slot.
const SLOT_SIZE: u64 = 0x200;
/// Slots with ACPI (on the second I/O APIC, GSI 24 on); without ACPI
/// there are 8, on GSI 5 to 12.
const SLOTS: u64 = 24;
/// The first I/O APIC and its pins.
const IOAPIC0: u64 = IOAPIC_PAGE;
/// microvm's second I/O APIC (GSI 24 to 47), present with ACPI.
const IOAPIC1: u64 = IOAPIC_PAGE + 0x1_0000;
const IOAPIC_PINS: u32 = 24;

/// Where an x86 MSI goes: the local APIC's message address, destination
/// APIC 0 (bits 19:12).
const MSI_ADDRESS: u64 = 0xfee0_0000;

type Net = VirtioNet<AnyTransport>;
type Rng = VirtioRng<AnyTransport>;
type Blk = VirtioBlk<AnyTransport>;

/// A virtio-mmio or a virtio-pci device.
enum AnyTransport {
    Mmio(MmioTransport<VolatileMmio>),
    Pci(PciTransport<VolatileMmio>),
}

impl AnyTransport {
    fn get(&mut self) -> &mut dyn Transport {
        match self {
            AnyTransport::Mmio(t) => t,
            AnyTransport::Pci(t) => t,
        }
    }
}

impl Transport for AnyTransport {
    fn device_type(&self) -> DeviceType {
        match self {
            AnyTransport::Mmio(t) => t.device_type(),
            AnyTransport::Pci(t) => t.device_type(),
        }
    }
    fn modern(&self) -> bool {
        match self {
            AnyTransport::Mmio(t) => t.modern(),
            AnyTransport::Pci(t) => t.modern(),
        }
    }
    fn device_features(&mut self) -> u64 {
        self.get().device_features()
    }
    fn set_driver_features(&mut self, features: u64) {
        self.get().set_driver_features(features)
    }
    fn status(&mut self) -> u8 {
        self.get().status()
    }
    fn set_status(&mut self, status: u8) {
        self.get().set_status(status)
    }
    fn max_queue_size(&mut self, queue: u16) -> u16 {
        self.get().max_queue_size(queue)
    }
    fn setup_queue(&mut self, queue: u16, size: u16, addrs: QueueAddrs) -> Result<(), Error> {
        self.get().setup_queue(queue, size, addrs)
    }
    fn notify(&mut self, queue: u16) {
        self.get().notify(queue)
    }
    fn ack_interrupt(&mut self) -> u8 {
        self.get().ack_interrupt()
    }
    fn config_generation(&mut self) -> u32 {
        self.get().config_generation()
    }
    fn read_config8(&mut self, offset: usize) -> u8 {
        self.get().read_config8(offset)
    }
    fn read_config16(&mut self, offset: usize) -> u16 {
        self.get().read_config16(offset)
    }
    fn read_config32(&mut self, offset: usize) -> u32 {
        self.get().read_config32(offset)
    }
}

/// A virtio-mmio window found at boot.
#[derive(Debug, Clone, Copy)]
struct Window {
    base: u64,
    size: u64,
    irq: u32,
}

/// The windows QEMU named on the command line (`virtio_mmio.device=`,
/// with `acpi=off`), else those found in microvm's fixed slots (unless
/// `slots` is false: a PCI machine has none, and its BARs may lie there).
fn windows(cmdline: &str, slots: bool) -> Result<Vec<Window>, String> {
    let mut found = Vec::new();
    for entry in cmdline_devices(cmdline) {
        let d = entry.map_err(|e| format!("bad virtio-mmio device on the command line: {e}"))?;
        let in_page = d.base >= VIRTIO_MMIO_PAGE
            && d.size >= 0x100
            && d.base.checked_add(d.size).is_some_and(|end| end <= VIRTIO_MMIO_PAGE + (1 << 21));
        if !in_page {
            return Err(format!(
                "the virtio-mmio device at {:#x} ({} bytes) lies outside the page this runtime maps for \
                 devices ({VIRTIO_MMIO_PAGE:#x}, 2 MiB)",
                d.base, d.size
            ));
        }
        found.push(Window { base: d.base, size: d.size, irq: d.irq });
    }
    if !found.is_empty() || !slots {
        return Ok(found);
    }
    // With ACPI, microvm has 24 slots on the second I/O APIC; without it
    // 8 slots on GSI 5 to 12. A ninth slot that answers tells them apart.
    // QEMU fills the slots from the top, so the look stops at the first
    // empty one: each read is a VM exit (tens of microseconds).
    let (slots, irq_base) = if magic_at(SLOT_BASE + 8 * SLOT_SIZE) { (SLOTS, 24) } else { (8, 5) };
    for i in (0..slots).rev() {
        let base = SLOT_BASE + i * SLOT_SIZE;
        if !magic_at(base) || device_id_at(base) == 0 {
            break;
        }
        found.push(Window { base, size: SLOT_SIZE, irq: irq_base + i as u32 });
    }
    Ok(found)
}

fn read32(addr: u64) -> u32 {
    // SAFETY: `addr` is a 4-byte aligned address inside the device page the
    // trampoline mapped uncached for ring 3; a read of an empty slot
    // returns zero.
    unsafe { core::ptr::with_exposed_provenance::<u32>(addr as usize).read_volatile() }
}

fn write32(addr: u64, value: u32) {
    // SAFETY: as in `read32`, for the I/O APIC's registers.
    unsafe { core::ptr::with_exposed_provenance_mut::<u32>(addr as usize).write_volatile(value) }
}

fn magic_at(base: u64) -> bool {
    read32(base) == 0x7472_6976
}

fn device_id_at(base: u64) -> u32 {
    read32(base + 8)
}

/// Routes GSI `irq` to the supervisor's timer vector (fixed delivery,
/// edge-triggered, active high, to the boot CPU).
fn route_irq(irq: u32) -> Result<(), String> {
    let (ioapic, pin) = if irq < IOAPIC_PINS { (IOAPIC0, irq) } else { (IOAPIC1, irq - IOAPIC_PINS) };
    let reg = |index: u32| {
        write32(ioapic, index);
        read32(ioapic + 0x10)
    };
    let version = reg(1);
    let max_entry = version >> 16 & 0xff;
    if version == 0 || version == u32::MAX || pin > max_entry {
        return Err(format!("no I/O APIC pin for interrupt {irq} (I/O APIC at {ioapic:#x}, version {version:#x})"));
    }
    let entry = 0x10 + 2 * pin;
    write32(ioapic, entry + 1);
    write32(ioapic + 0x10, 0); // destination: APIC 0
    write32(ioapic, entry);
    write32(ioapic + 0x10, u32::from(TIMER_VECTOR)); // fixed, physical, high, edge, unmasked
    Ok(())
}

fn transport(w: Window) -> Result<MmioTransport<VolatileMmio>, Error> {
    // SAFETY: the window lies in the device page the trampoline mapped
    // uncached for ring 3 (checked in `windows`), and each window gets one
    // transport.
    MmioTransport::new(unsafe { VolatileMmio::new(w.base as usize, w.size as usize) })
}

/// A NIC the manifest declares, on a virtio-net device.
struct NetSlot {
    name: String,
    net: Rc<RefCell<Net>>,
    /// Device interrupts wake the idle guest (else it looks every
    /// [`super::UNROUTED_WAKE`]).
    routed: bool,
    taken: Cell<bool>,
}

/// A virtio-blk device found at boot, before the disks are matched.
struct FoundBlk {
    blk: Blk,
    /// Its serial number (empty without one).
    serial: Vec<u8>,
    /// Where it is, for messages.
    at: String,
}

/// A disk the manifest declares, on a virtio-blk device, until the
/// service takes it.
struct DiskSlot {
    name: String,
    disk: RefCell<Option<VirtioDisk<AnyTransport>>>,
}

/// The devices of the virtio platform.
pub(super) struct Devices {
    nets: Vec<NetSlot>,
    disks: Vec<DiskSlot>,
    /// virtio-blk devices found, until matched to the declared disks.
    blks: Vec<FoundBlk>,
    /// The virtio-rng device, until the entropy pool takes it.
    rng: Option<Rng>,
}

impl Devices {
    /// Finds the devices, brings up a virtio-net device for each NIC in
    /// `declared` (in the order of the VM's devices: QEMU fills microvm's
    /// slots from the top and gives PCI slots in order, so the first
    /// `-device` comes first), a virtio-blk device for each disk in
    /// `disks` (by serial number, else in that order; each request waits
    /// as long as `patience` says) and a virtio-rng device if there is
    /// one. An error is a line for the boot failure.
    pub(super) fn probe(
        cmdline: &str,
        declared: &[String],
        disks: &[String],
        patience: &dyn Fn() -> Patience,
    ) -> Result<Devices, String> {
        let on_pci = pci::present();
        let mut windows = windows(cmdline, !on_pci)?;
        windows.sort_by_key(|w| core::cmp::Reverse(w.base));
        let mut devices = Devices { nets: Vec::new(), disks: Vec::new(), blks: Vec::new(), rng: None };
        for w in windows {
            let t = match transport(w) {
                Ok(t) => t,
                Err(Error::NoDevice) => continue,
                Err(e) => return Err(format!("virtio-mmio device at {:#x}: {e}", w.base)),
            };
            let at = format!("{:#x}", w.base);
            match t.device_type() {
                DeviceType::Net if devices.nets.len() < declared.len() => {
                    let name = declared[devices.nets.len()].clone();
                    let net = VirtioNet::new(AnyTransport::Mmio(t))
                        .map_err(|e| format!("virtio-net at {at} for \"{name}\": {e}"))?;
                    let routed = match route_irq(w.irq) {
                        Ok(()) => true,
                        Err(e) => {
                            log::warn!("{e}: NIC \"{name}\" is polled every millisecond while a task waits on it");
                            false
                        }
                    };
                    devices.add_net(name, net, routed, &format!("{at} (interrupt {})", w.irq));
                }
                DeviceType::Entropy if devices.rng.is_none() => devices.add_rng(AnyTransport::Mmio(t), &at),
                DeviceType::Block if !disks.is_empty() => devices.add_blk(AnyTransport::Mmio(t), at, patience())?,
                other => log::debug!("virtio {other} device at {at} is left unused"),
            }
        }
        if on_pci {
            devices.probe_pci(declared, !disks.is_empty(), patience)?;
        }
        if let Some(missing) = declared.get(devices.nets.len()) {
            let device = if on_pci { "virtio-net-pci" } else { "virtio-net-device" };
            return Err(format!(
                "this image declares the net device \"{missing}\", but the VM has no virtio-net device left for \
                 it (QEMU: -netdev user,id=n0 -device {device},netdev=n0)"
            ));
        }
        devices.match_disks(disks, if on_pci { "virtio-blk-pci" } else { "virtio-blk-device" })?;
        Ok(devices)
    }

    /// Brings up a virtio-blk device (polled: its interrupts stay off)
    /// and reads its serial number.
    fn add_blk(&mut self, t: AnyTransport, at: String, patience: Patience) -> Result<(), String> {
        let mut blk = VirtioBlk::new(t).map_err(|e| format!("virtio-blk at {at}: {e}"))?;
        blk.set_patience(patience);
        let serial = match blk.serial() {
            Ok((id, len)) => id[..len].to_vec(),
            // A device without GET_ID has no serial.
            Err(Error::Unsupported) => Vec::new(),
            Err(e) => return Err(format!("virtio-blk at {at}: reading its serial number: {e}")),
        };
        self.blks.push(FoundBlk { blk, serial, at });
        Ok(())
    }

    /// Gives each disk in `declared` its device; a disk left without one
    /// is an error naming the QEMU `device` that would serve it.
    fn match_disks(&mut self, declared: &[String], device: &str) -> Result<(), String> {
        let serials: Vec<&[u8]> = self.blks.iter().map(|b| b.serial.as_slice()).collect();
        let chosen = match match_disks(declared, &serials) {
            Ok(chosen) => chosen,
            Err(missing) => {
                let others: Vec<String> = self
                    .blks
                    .iter()
                    .filter(|b| !b.serial.is_empty())
                    .map(|b| format!("{:?}", String::from_utf8_lossy(&b.serial)))
                    .collect();
                let others = if others.is_empty() {
                    String::new()
                } else {
                    format!("; its virtio-blk devices have the serial numbers {}", others.join(", "))
                };
                return Err(format!(
                    "this image declares the block device \"{missing}\", but the VM has no virtio-blk device for \
                     it (QEMU: -drive file=FILE,if=none,id=d0,format=raw -device {device},drive=d0,serial={missing}{others})"
                ));
            }
        };
        let mut blks: Vec<Option<FoundBlk>> = core::mem::take(&mut self.blks).into_iter().map(Some).collect();
        for (name, i) in declared.iter().zip(chosen) {
            let Some(found) = blks[i].take() else { continue };
            let FoundBlk { blk, serial, at } = found;
            let how = if serial.is_empty() { "in order" } else { "by serial" };
            let disk = VirtioDisk::new(name.clone(), blk).map_err(|size| {
                format!(
                    "virtio-blk at {at} for disk \"{name}\": its logical block size is {size} bytes; this runtime's \
                     disks have 512- or 4096-byte sectors"
                )
            })?;
            log::debug!(
                "virtio-blk at {at} is disk \"{name}\" ({how}): {} sectors of {} bytes{}",
                disk.capacity(),
                disk.sector_size(),
                if disk.read_only() { ", read-only" } else { "" }
            );
            self.disks.push(DiskSlot { name: name.clone(), disk: RefCell::new(Some(disk)) });
        }
        for b in blks.into_iter().flatten() {
            log::debug!("virtio-blk at {} (serial {:?}) is left unused", b.at, String::from_utf8_lossy(&b.serial));
        }
        Ok(())
    }

    /// Lends the disk called `name`.
    pub(super) fn take_block(&self, name: &str) -> Result<Box<dyn BlockDevice>, DeviceError> {
        let Some(slot) = self.disks.iter().find(|s| s.name == name) else {
            return Err(DeviceError::NoSuchDevice {
                name: String::from(name),
                available: self.disks.iter().map(|s| s.name.clone()).collect(),
            });
        };
        match slot.disk.borrow_mut().take() {
            Some(disk) => Ok(Box::new(disk)),
            None => Err(DeviceError::AlreadyTaken(String::from(name))),
        }
    }

    /// The virtio-pci functions: a virtio-net device for each NIC still
    /// to be found, its queues on an MSI-X vector that wakes the idle
    /// guest, and a virtio-rng device if there is none yet.
    fn probe_pci(&mut self, declared: &[String], blk: bool, patience: &dyn Fn() -> Patience) -> Result<(), String> {
        let all = pci::functions();
        for &(f, kind) in &all {
            let Some(kind) = kind else { continue };
            let wanted = match kind {
                DeviceType::Net => self.nets.len() < declared.len(),
                DeviceType::Entropy => self.rng.is_none(),
                DeviceType::Block => blk,
                _ => false,
            };
            if !wanted {
                log::debug!("virtio {kind} device at PCI {f} is left unused");
                continue;
            }
            let pci::Brought { mut transport, msix } = pci::bring_up(f, kind, &all)?;
            let at = format!("PCI {f}");
            if kind == DeviceType::Entropy {
                // Polled: its interrupt line stays off.
                skiff_virtio::transport::pci::disable_intx(&mut PortConfig(f));
                self.add_rng(AnyTransport::Pci(transport), &at);
                continue;
            }
            if kind == DeviceType::Block {
                // Polled too.
                skiff_virtio::transport::pci::disable_intx(&mut PortConfig(f));
                self.add_blk(AnyTransport::Pci(transport), at, patience())?;
                continue;
            }
            let name = declared[self.nets.len()].clone();
            let mut routed = match msix {
                Some((m, mut table)) => {
                    write_msix_entry(&mut table, 0, MSI_ADDRESS, u32::from(TIMER_VECTOR));
                    enable_msix(&mut PortConfig(f), &m);
                    transport.set_queue_vector(0);
                    true
                }
                None => {
                    skiff_virtio::transport::pci::disable_intx(&mut PortConfig(f));
                    log::warn!(
                        "virtio-net at {at} has no MSI-X capability: NIC \"{name}\" is polled every millisecond \
                         while a task waits on it"
                    );
                    false
                }
            };
            let mut net = VirtioNet::new(AnyTransport::Pci(transport))
                .map_err(|e| format!("virtio-net at {at} for \"{name}\": {e}"))?;
            if let AnyTransport::Pci(t) = net.transport()
                && let Some(queue) = t.vector_refused()
            {
                log::warn!(
                    "virtio-net at {at} refused an MSI-X vector for queue {queue}: NIC \"{name}\" is polled \
                     every millisecond while a task waits on it"
                );
                routed = false;
            }
            let how = if routed { "MSI-X" } else { "polled" };
            self.add_net(name, net, routed, &format!("{at} ({how})"));
        }
        Ok(())
    }

    fn add_net(&mut self, name: String, net: Net, routed: bool, at: &str) {
        log::debug!("virtio-net at {at} is NIC \"{name}\", MAC {:02x?}", net.mac());
        self.nets.push(NetSlot { name, net: Rc::new(RefCell::new(net)), routed, taken: Cell::new(false) });
    }

    fn add_rng(&mut self, t: AnyTransport, at: &str) {
        match VirtioRng::new(t) {
            Ok(r) => self.rng = Some(r),
            Err(e) => log::warn!("virtio-rng at {at} is left unused: {e}"),
        }
    }

    /// Whether there is any device that can wake a task.
    pub(super) fn any(&self) -> bool {
        !self.nets.is_empty()
    }

    /// Takes the virtio-rng device, if there is one, as an entropy source.
    pub(super) fn take_rng(&mut self) -> Option<Box<dyn EntropyDevice>> {
        self.rng.take().map(|rng| Box::new(RngSource(rng)) as Box<dyn EntropyDevice>)
    }

    /// Lends the NIC called `name`.
    pub(super) fn take_net(&self, name: &str) -> Result<Box<dyn NetDevice>, DeviceError> {
        let Some((index, slot)) = self.nets.iter().enumerate().find(|(_, s)| s.name == name) else {
            return Err(DeviceError::NoSuchDevice {
                name: String::from(name),
                available: self.nets.iter().map(|s| s.name.clone()).collect(),
            });
        };
        if slot.taken.replace(true) {
            return Err(DeviceError::AlreadyTaken(String::from(name)));
        }
        let (mac, mtu) = {
            let net = slot.net.borrow();
            (net.mac(), net.mtu())
        };
        Ok(Box::new(VirtioNic { index, name: slot.name.clone(), net: slot.net.clone(), mac, mtu, failed: false }))
    }

    /// NICs lent out whose receive queue holds a frame (no VM exit: the
    /// used rings are in guest memory).
    pub(super) fn ready_now(&self) -> u64 {
        self.nets.iter().enumerate().fold(0, |mask, (i, s)| {
            let pending = s.taken.get() && s.net.try_borrow_mut().is_ok_and(|mut n| n.rx_pending().unwrap_or(false));
            if pending { mask | 1 << i } else { mask }
        })
    }

    /// Before a sleep: asks the NICs in `interest` for an interrupt at
    /// their next frame, acknowledges their interrupts, then reports those
    /// with a frame waiting. Acknowledging first means a frame that lands
    /// after the look raises the line again and ends the next idle.
    pub(super) fn arm_and_ready(&self, interest: u64) -> u64 {
        let mut ready = 0;
        for (i, s) in self.nets.iter().enumerate() {
            if interest & 1 << i == 0 {
                continue;
            }
            if let Ok(mut net) = s.net.try_borrow_mut() {
                net.set_rx_interrupts(true);
                net.transport().ack_interrupt();
                // A broken queue never wakes anything: its NIC has said
                // why it stopped.
                if net.rx_pending().unwrap_or(false) {
                    ready |= 1 << i;
                }
            }
        }
        ready
    }

    /// After a sleep: the NICs raise no interrupts while the guest runs
    /// (each would cost the hypervisor work, and the executor looks at the
    /// receive queues between rounds of tasks anyway).
    pub(super) fn disarm(&self) {
        for s in &self.nets {
            if let Ok(mut net) = s.net.try_borrow_mut() {
                net.set_rx_interrupts(false);
            }
        }
    }

    /// Whether some NIC in `interest` has no routed interrupt, so the idle
    /// guest must look at it on its own.
    pub(super) fn needs_polling(&self, interest: u64) -> bool {
        self.nets.iter().enumerate().any(|(i, s)| interest & 1 << i != 0 && !s.routed)
    }
}

/// virtio-rng as the entropy pool's device.
struct RngSource(Rng);

impl EntropyDevice for RngSource {
    fn fill(&mut self, out: &mut [u8]) -> Result<(), RandomError> {
        self.0.fill(out).map_err(|e| {
            log::error!("virtio-rng failed: {e}");
            RandomError::DeviceFailed
        })
    }
}

/// The `NetDevice` over a virtio-net device. A driver error (the device
/// broke the virtqueue protocol) is logged once, loudly; the NIC then
/// reports no frames and no room.
struct VirtioNic {
    index: usize,
    name: String,
    net: Rc<RefCell<Net>>,
    mac: [u8; 6],
    mtu: usize,
    failed: bool,
}

impl VirtioNic {
    fn with<T>(&mut self, otherwise: T, f: impl FnOnce(&mut Net) -> Result<T, Error>) -> T {
        if self.failed {
            return otherwise;
        }
        let result = f(&mut self.net.borrow_mut());
        match result {
            Ok(v) => v,
            Err(e) => {
                self.failed = true;
                log::error!("NIC \"{}\" stops: its virtio-net device failed: {}", self.name, e);
                otherwise
            }
        }
    }
}

impl NetDevice for VirtioNic {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn mtu(&self) -> usize {
        self.mtu
    }

    fn rx_pending(&mut self) -> bool {
        self.with(false, |n| n.rx_pending())
    }

    fn recv(&mut self, f: &mut dyn FnMut(&[u8])) -> bool {
        self.with(false, |n| n.recv(f))
    }

    fn tx_room(&mut self) -> bool {
        self.with(false, |n| n.tx_room())
    }

    fn send(&mut self, len: usize, f: &mut dyn FnMut(&mut [u8])) -> bool {
        // A frame over the MTU is the caller's mistake, not the device's.
        if len > self.mtu + 14 {
            return false;
        }
        self.with(false, |n| n.send(len, f))
    }

    fn flush(&mut self) {
        self.with((), |n| n.flush());
    }

    fn poll_rx(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.rx_pending() {
            return Poll::Ready(());
        }
        wake_on_device(cx.waker(), self.index);
        // A frame may have landed between the check and the registration.
        if self.rx_pending() { Poll::Ready(()) } else { Poll::Pending }
    }
}
