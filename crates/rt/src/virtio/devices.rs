//! The virtio platform's devices: microvm's virtio-mmio windows, found on
//! the command line or by probing the fixed slots, their interrupts routed
//! through the I/O APIC, and the NICs lent to the service.
//!
//! Every window lies in the 2 MiB page the PVH trampoline maps for ring 3
//! ([`VIRTIO_MMIO_PAGE`]), the I/O APICs in the next one ([`IOAPIC_PAGE`]).
//! A device's interrupt line is routed, edge-triggered, to the supervisor's
//! timer vector: its handler only acknowledges the local APIC, and any
//! interrupt ends the idle call's `hlt`, so a frame wakes an idle guest at
//! once. Ring 3 then reads and acknowledges the device's interrupt status
//! and looks at its used rings.

use crate::arch::pvh::{IOAPIC_PAGE, VIRTIO_MMIO_PAGE};
use crate::arch::supervisor::TIMER_VECTOR;
use crate::device::{DeviceError, NetDevice};
use crate::executor::wake_on_device;
use crate::random::{EntropyDevice, RandomError};
use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::task::{Context, Poll};
use skiff_virtio::net::VirtioNet;
use skiff_virtio::regs::VolatileMmio;
use skiff_virtio::rng::VirtioRng;
use skiff_virtio::transport::Transport;
use skiff_virtio::transport::mmio::{MmioTransport, cmdline_devices};
use skiff_virtio::{DeviceType, Error};

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

type Net = VirtioNet<MmioTransport<VolatileMmio>>;
type Rng = VirtioRng<MmioTransport<VolatileMmio>>;

/// A virtio-mmio window found at boot.
#[derive(Debug, Clone, Copy)]
struct Window {
    base: u64,
    size: u64,
    irq: u32,
}

/// The windows QEMU named on the command line (`virtio_mmio.device=`,
/// with `acpi=off`), else those found in microvm's fixed slots.
fn windows(cmdline: &str) -> Result<Vec<Window>, String> {
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
    if !found.is_empty() {
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

/// The devices of the virtio platform.
pub(super) struct Devices {
    nets: Vec<NetSlot>,
    /// The virtio-rng device, until the entropy pool takes it.
    rng: Option<Rng>,
}

impl Devices {
    /// Finds the devices, brings up a virtio-net device for each NIC in
    /// `declared` (in the order of the VM's devices: QEMU fills its slots
    /// from the top, so the first `-device` comes first) and a virtio-rng
    /// device if there is one. An error is a line for the boot failure.
    pub(super) fn probe(cmdline: &str, declared: &[String]) -> Result<Devices, String> {
        let mut windows = windows(cmdline)?;
        windows.sort_by_key(|w| core::cmp::Reverse(w.base));
        let mut nets = Vec::new();
        let mut rng = None;
        for w in windows {
            let t = match transport(w) {
                Ok(t) => t,
                Err(Error::NoDevice) => continue,
                Err(e) => return Err(format!("virtio-mmio device at {:#x}: {e}", w.base)),
            };
            match t.device_type() {
                DeviceType::Net if nets.len() < declared.len() => {
                    let name = declared[nets.len()].clone();
                    let net =
                        VirtioNet::new(t).map_err(|e| format!("virtio-net at {:#x} for \"{name}\": {e}", w.base))?;
                    let routed = match route_irq(w.irq) {
                        Ok(()) => true,
                        Err(e) => {
                            log::warn!("{e}: NIC \"{name}\" is polled every millisecond while a task waits on it");
                            false
                        }
                    };
                    log::debug!(
                        "virtio-net at {:#x} (interrupt {}) is NIC \"{name}\", MAC {:02x?}",
                        w.base,
                        w.irq,
                        net.mac()
                    );
                    nets.push(NetSlot { name, net: Rc::new(RefCell::new(net)), routed, taken: Cell::new(false) });
                }
                DeviceType::Entropy if rng.is_none() => match VirtioRng::new(t) {
                    Ok(r) => rng = Some(r),
                    Err(e) => log::warn!("virtio-rng at {:#x} is left unused: {e}", w.base),
                },
                other => log::debug!("virtio {other} device at {:#x} is left unused", w.base),
            }
        }
        if let Some(missing) = declared.get(nets.len()) {
            return Err(format!(
                "this image declares the net device \"{missing}\", but the VM has no virtio-net device left for \
                 it (QEMU: -netdev user,id=n0 -device virtio-net-device,netdev=n0)"
            ));
        }
        Ok(Devices { nets, rng })
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
