//! Devices the runtime lends to the service.
//!
//! [`NetDevice`] is the interface between a NIC driver (the hvt rings or
//! hypercalls here, virtio later, a simulated link in tests) and a network
//! stack. Frames are handed over in place: the stack reads a received frame
//! straight out of the receive ring and writes a frame to send straight
//! into the transmit ring.

use alloc::string::String;
use alloc::vec::Vec;
use core::task::{Context, Poll};

/// A network interface carrying Ethernet frames.
pub trait NetDevice {
    /// The MAC address.
    fn mac(&self) -> [u8; 6];

    /// The MTU (bytes of IP packet per frame).
    fn mtu(&self) -> usize;

    /// Whether a received frame is waiting.
    fn rx_pending(&mut self) -> bool;

    /// Hands the oldest received frame to `f` and releases it; `false` if
    /// there was none.
    fn recv(&mut self, f: &mut dyn FnMut(&[u8])) -> bool;

    /// Whether a frame can be queued for sending now.
    fn tx_room(&mut self) -> bool;

    /// Queues a frame of `len` bytes, which `f` fills in; `false` if there
    /// is no room (the frame is not sent).
    fn send(&mut self, len: usize, f: &mut dyn FnMut(&mut [u8])) -> bool;

    /// Makes queued frames go now (rings the doorbell or makes the batch
    /// hypercall). Call after a burst of `send`s.
    fn flush(&mut self);

    /// `Ready` if a frame is waiting; otherwise arranges for the task to be
    /// woken when one arrives.
    fn poll_rx(&mut self, cx: &mut Context<'_>) -> Poll<()>;

    /// A TCP listener on `port` now listens on this NIC. The tender's
    /// rings carry it to the host (the service is ready); other devices
    /// ignore it.
    fn listening(&mut self, port: u16) {
        let _ = port;
    }
}

/// A device could not be lent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceError {
    /// No device of that name was attached.
    NoSuchDevice {
        /// The name asked for.
        name: String,
        /// The names there are.
        available: Vec<String>,
    },
    /// The device was already taken.
    AlreadyTaken(String),
    /// The device is of another kind.
    WrongKind(String),
}

impl core::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DeviceError::NoSuchDevice { name, available } if available.is_empty() => {
                write!(
                    f,
                    "no device named {name:?}: the guest has no devices (declare one with #[skiff::main(net = \"{name}\")])"
                )
            }
            DeviceError::NoSuchDevice { name, available } => {
                write!(f, "no device named {name:?} (the guest has: {})", available.join(", "))
            }
            DeviceError::AlreadyTaken(name) => write!(f, "device {name:?} is already in use"),
            DeviceError::WrongKind(name) => write!(f, "device {name:?} is of another kind"),
        }
    }
}

impl core::error::Error for DeviceError {}
