//! The hvt platform: the guest's side of the tender's hypercalls.
//!
//! Each call is one `out` from ring 3 (see [`skiff_abi`]); the argument
//! structure lives on the caller's stack, which is below 4 GiB like all
//! guest memory.

use crate::arch::cpu::{hypercall, rdtsc};
use crate::block::{BlockCalls, BlockDevice, Disk};
use crate::device::{DeviceError, NetDevice};
use crate::nic::{Nic, NicCalls, RingView};
use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;
use core::ptr::NonNull;
use core::time::Duration;
use skiff_abi::{
    ABORT_MESSAGE_MAX, AbortArgs, AbortReason, BlockInfo, BlockNotifyArgs, BootInfo, DeviceKind, ExitArgs, Hypercall,
    NetInfo, NetNotifyArgs, PollArgs, SHARED_SPIN_FOUND, SHARED_SPIN_MISSED, SHARED_STOP_REQUESTED, SharedArea,
    WalltimeArgs, manifest,
};

fn addr_of<T>(arg: &mut T) -> u32 {
    // Guest memory is at most 3 GiB (abi::layout::MEM_MAX), so every
    // address fits in 32 bits.
    arg as *mut T as usize as u32
}

/// Blocks until a device in `interest` is ready or `timeout` passes
/// (`None`: wait for a device only). Returns the ready set, one bit per
/// device.
pub fn poll(timeout: Option<Duration>, interest: u64) -> u64 {
    let timeout_nanos = match timeout {
        Some(t) => u64::try_from(t.as_nanos()).unwrap_or(u64::MAX - 1),
        None => u64::MAX,
    };
    let mut args = PollArgs { timeout_nanos, ready: interest };
    // SAFETY: `args` is a live PollArgs for the duration of the call.
    unsafe { hypercall(Hypercall::Poll, addr_of(&mut args)) };
    args.ready
}

/// The wall clock as the tender reads it now (ns since the UNIX epoch).
pub fn walltime() -> u64 {
    let mut args = WalltimeArgs::default();
    // SAFETY: `args` is a live WalltimeArgs for the duration of the call.
    unsafe { hypercall(Hypercall::Walltime, addr_of(&mut args)) };
    args.nanos
}

/// Asks the tender to drain the console ring.
pub fn console_flush() {
    // SAFETY: ConsoleFlush takes no argument.
    unsafe { hypercall(Hypercall::ConsoleFlush, 0) };
}

/// Ends the guest with `status` (`0..=99`).
pub fn exit(status: u8) -> ! {
    let mut args = ExitArgs { status: u32::from(status), reserved: 0 };
    // SAFETY: `args` is a live ExitArgs; the call does not return.
    unsafe { hypercall(Hypercall::Exit, addr_of(&mut args)) };
    halt_forever()
}

/// Ends the guest for `reason` with `message` (truncated to the ABI limit
/// on a character boundary).
pub fn abort(reason: AbortReason, message: &str) -> ! {
    let mut len = message.len().min(ABORT_MESSAGE_MAX as usize);
    while !message.is_char_boundary(len) {
        len -= 1;
    }
    let mut args = AbortArgs { reason: reason as u32, message_len: len as u32, message: message.as_ptr() as u64 };
    // SAFETY: `args` is live and points at `len` readable bytes of
    // `message`; the call does not return.
    unsafe { hypercall(Hypercall::Abort, addr_of(&mut args)) };
    halt_forever()
}

/// Reached only if the tender resumed a guest it should have ended: the
/// invalid-opcode fault makes the tender report it.
fn halt_forever() -> ! {
    crate::arch::cpu::trap()
}

/// Wakes the tender's I/O thread for a NIC's transmit ring (`NetNotify`).
pub fn net_notify(device: u32) {
    let mut args = NetNotifyArgs { device, reserved: 0 };
    // SAFETY: `args` is a live NetNotifyArgs for the call.
    unsafe { hypercall(Hypercall::NetNotify, addr_of(&mut args)) };
}

/// The network hypercall, for the NIC driver.
#[derive(Clone, Copy)]
pub struct HvtCalls;

impl NicCalls for HvtCalls {
    fn net_notify(&self, device: u32) {
        net_notify(device)
    }
}

/// Has the tender serve a disk's request ring (`BlockNotify`).
pub fn block_notify(device: u32) {
    let mut args = BlockNotifyArgs { device, reserved: 0 };
    // SAFETY: `args` is a live BlockNotifyArgs for the call.
    unsafe { hypercall(Hypercall::BlockNotify, addr_of(&mut args)) };
}

impl BlockCalls for HvtCalls {
    fn block_notify(&self, device: u32) {
        block_notify(device)
    }
}

/// A device the tender attached, as the boot info describes it.
struct Slot {
    name: String,
    kind: u32,
    net: NetInfo,
    /// The kind-specific data, as the boot info has it.
    data: [u8; 32],
    taken: Cell<bool>,
    /// A NIC's receive ring, checked without an exit.
    rx: Option<RingView>,
}

/// The devices of this guest, shared by the platform (readiness) and the
/// environment (lending them out).
pub struct Devices {
    slots: Vec<Slot>,
    spin_ticks: u64,
}

impl Devices {
    /// Reads the device list from the boot info.
    pub(crate) fn from_boot(boot: &BootInfo, tsc_hz: u64) -> Devices {
        let count = (boot.device_count as usize).min(boot.devices.len());
        let mut spin_micros = 0u64;
        let slots = boot.devices[..count]
            .iter()
            .map(|d| {
                let net = NetInfo::decode(&d.data);
                let is_net = d.kind == DeviceKind::Net as u32;
                // SAFETY: the tender set up these rings for this device and
                // mapped them for ring 3 for the guest's life.
                let rx = (is_net && net.ring != 0).then(|| unsafe { RingView::new(net.ring, net.slots) });
                if is_net {
                    spin_micros = spin_micros.max(u64::from(net.spin_micros));
                }
                Slot {
                    name: String::from(manifest::device_name(&d.name).unwrap_or("?")),
                    kind: d.kind,
                    net,
                    data: d.data,
                    taken: Cell::new(false),
                    rx,
                }
            })
            .collect();
        Devices { slots, spin_ticks: spin_micros * tsc_hz / 1_000_000 }
    }

    /// Lends the NIC called `name`.
    pub fn take_net(&self, name: &str) -> Result<Box<dyn NetDevice>, DeviceError> {
        let Some((index, slot)) = self.slots.iter().enumerate().find(|(_, s)| s.name == name) else {
            return Err(DeviceError::NoSuchDevice {
                name: String::from(name),
                available: self.slots.iter().map(|s| s.name.clone()).collect(),
            });
        };
        if slot.kind != DeviceKind::Net as u32 {
            return Err(DeviceError::WrongKind(String::from(name)));
        }
        if slot.taken.replace(true) {
            return Err(DeviceError::AlreadyTaken(String::from(name)));
        }
        // SAFETY: the rings in `slot.net` are the ones the tender set up for
        // device `index`.
        Ok(Box::new(unsafe { Nic::new(index as u32, slot.net, HvtCalls) }))
    }

    /// Lends the disk called `name`.
    pub fn take_block(&self, name: &str) -> Result<Box<dyn BlockDevice>, DeviceError> {
        let Some((index, slot)) = self.slots.iter().enumerate().find(|(_, s)| s.name == name) else {
            return Err(DeviceError::NoSuchDevice {
                name: String::from(name),
                available: self.slots.iter().map(|s| s.name.clone()).collect(),
            });
        };
        if slot.kind != DeviceKind::Block as u32 {
            return Err(DeviceError::WrongKind(String::from(name)));
        }
        if slot.taken.replace(true) {
            return Err(DeviceError::AlreadyTaken(String::from(name)));
        }
        let info = BlockInfo::decode(&slot.data);
        // SAFETY: the ring in `info` is the one the tender set up for
        // device `index`.
        Ok(Box::new(unsafe { Disk::new(index as u32, info, HvtCalls) }))
    }

    fn ready_now(&self) -> u64 {
        self.slots.iter().enumerate().fold(0, |mask, (i, s)| match &s.rx {
            Some(rx) if s.taken.get() && rx.has_frames() => mask | 1 << i,
            _ => mask,
        })
    }
}

/// The executor's view of this platform.
pub struct Hvt {
    devices: Rc<Devices>,
    shared: NonNull<SharedArea>,
}

impl Hvt {
    /// The platform for a guest with `devices` and the shared area
    /// `shared` (from the boot info; valid for the guest's life).
    pub(crate) fn new(devices: Rc<Devices>, shared: NonNull<SharedArea>) -> Hvt {
        Hvt { devices, shared }
    }
}

impl Hvt {
    /// Adds one to the shared area's counter at byte `offset` (for the
    /// tender's `--stats`).
    fn count(&self, offset: usize) {
        // SAFETY: the shared area is mapped for the guest's life (see
        // `new`); the counters are aligned u64s only the guest writes and
        // the tender reads at the end, so plain volatile accesses do.
        unsafe {
            let counter = self.shared.as_ptr().cast::<u8>().add(offset).cast::<u64>();
            counter.write_volatile(counter.read_volatile().wrapping_add(1));
        }
    }
}

impl crate::executor::Platform for Hvt {
    fn poll(&mut self, timeout: Option<Duration>, interest: u64) -> u64 {
        let ready = self.devices.ready_now() & interest;
        if ready != 0 {
            return ready;
        }
        // Spin on the rings a little before paying for an exit.
        if interest != 0 && self.devices.spin_ticks > 0 && timeout.is_none_or(|t| !t.is_zero()) {
            let until = rdtsc().saturating_add(self.devices.spin_ticks);
            while rdtsc() < until {
                let ready = self.devices.ready_now() & interest;
                if ready != 0 {
                    self.count(SHARED_SPIN_FOUND);
                    return ready;
                }
                core::hint::spin_loop();
            }
            self.count(SHARED_SPIN_MISSED);
        }
        poll(timeout, interest)
    }

    fn has_devices(&self) -> bool {
        self.devices.slots.iter().any(|s| s.taken.get() && s.rx.is_some())
    }

    fn ready_now(&mut self) -> u64 {
        self.devices.ready_now()
    }

    fn stop_requested(&mut self) -> bool {
        // SAFETY: the shared area is mapped for the guest's life (see
        // `new`); the field is an aligned u32 the tender writes, so it is
        // read with a volatile load.
        unsafe { self.shared.as_ptr().cast::<u8>().add(SHARED_STOP_REQUESTED).cast::<u32>().read_volatile() != 0 }
    }
}
