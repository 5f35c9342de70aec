//! Virtio drivers for Skiff guests on standard hypervisors (QEMU, Firecracker,
//! Cloud Hypervisor): split virtqueues ([`queue`]), the virtio-mmio (legacy v1
//! and modern v2) and modern virtio-pci transports ([`transport`]), and the
//! net, block and entropy devices ([`net`], [`blk`], [`rng`]).
//!
//! `no_std` + `alloc`, no dependency on the boot path: the platform finds
//! the devices (command line, fixed MMIO slots, PCI config space), maps their
//! register windows, and hands each driver a [`transport::Transport`] built
//! on a [`regs::Mmio`] window. Register windows and DMA memory are the only
//! places with `unsafe` ([`regs::VolatileMmio`], [`dma::DmaBuf`]); host tests
//! supply a simulated device through the same traits.
//!
//! DMA memory comes from the global allocator, and a buffer's address is its
//! guest-physical address: Skiff guests are identity-mapped.
//!
//! Every value the device writes (used indices, ids, lengths, queue sizes,
//! feature bits) is checked; a device that breaks the protocol gets an
//! [`Error`] naming what it did, and a queue that saw one stays broken.

#![no_std]

extern crate alloc;

pub mod blk;
pub mod dma;
mod error;
pub mod net;
pub mod queue;
pub mod regs;
pub mod rng;
pub mod transport;

pub use error::{DeviceType, Error};

/// Device status bits (VIRTIO 1.2, 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest knows how to drive it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from.
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    /// The guest gave up on the device.
    pub const FAILED: u8 = 128;
}

/// Device-independent feature bits.
pub mod features {
    /// Buffers may be chained through an indirect descriptor table.
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// The `used_event` / `avail_event` notification thresholds.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// A VIRTIO 1.x (modern) device.
    pub const VERSION_1: u64 = 1 << 32;
}

/// How many times a synchronous request (block, entropy) polls the used
/// ring before it reports [`Error::NoResponse`]; a device that never answers
/// must not hang the guest.
pub const DEFAULT_SPIN_LIMIT: u32 = 1 << 26;
