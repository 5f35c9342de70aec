//! The errors of every driver, and the device types.

/// A virtio device type (VIRTIO 1.2, 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceType {
    /// Network card (1).
    Net,
    /// Block device (2).
    Block,
    /// Console (3).
    Console,
    /// Entropy source (4).
    Entropy,
    /// Any other id, reported as it is.
    Other(u32),
}

impl DeviceType {
    /// The type with device id `id`.
    pub fn from_id(id: u32) -> DeviceType {
        match id {
            1 => DeviceType::Net,
            2 => DeviceType::Block,
            3 => DeviceType::Console,
            4 => DeviceType::Entropy,
            other => DeviceType::Other(other),
        }
    }

    /// The device id.
    pub fn id(self) -> u32 {
        match self {
            DeviceType::Net => 1,
            DeviceType::Block => 2,
            DeviceType::Console => 3,
            DeviceType::Entropy => 4,
            DeviceType::Other(id) => id,
        }
    }
}

impl core::fmt::Display for DeviceType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DeviceType::Net => f.write_str("net"),
            DeviceType::Block => f.write_str("block"),
            DeviceType::Console => f.write_str("console"),
            DeviceType::Entropy => f.write_str("entropy"),
            DeviceType::Other(id) => write!(f, "unknown (device id {id})"),
        }
    }
}

/// What went wrong with a virtio device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The MMIO window holds no virtio device.
    #[error("no virtio-mmio device here: magic value {0:#010x}, expected 0x74726976 (\"virt\")")]
    BadMagic(u32),
    /// A virtio-mmio version this driver does not speak.
    #[error("virtio-mmio version {0} is not supported (only 1, legacy, and 2)")]
    UnsupportedVersion(u32),
    /// An empty virtio-mmio slot (device id 0).
    #[error("empty virtio-mmio slot (device id 0)")]
    NoDevice,
    /// A driver was given another kind of device.
    #[error("expected a virtio {expected} device, found a {found} device")]
    WrongDevice {
        /// The kind the driver drives.
        expected: DeviceType,
        /// The kind the device says it is.
        found: DeviceType,
    },
    /// The device does not offer a feature the driver needs.
    #[error("the virtio {device} device lacks required feature bits {missing:#x}")]
    MissingFeatures {
        /// The device.
        device: DeviceType,
        /// The required bits it does not offer.
        missing: u64,
    },
    /// The device did not keep `FEATURES_OK` set after negotiation.
    #[error("the virtio {device} device refused the features {features:#x} (FEATURES_OK not kept)")]
    FeaturesRejected {
        /// The device.
        device: DeviceType,
        /// The features the driver accepted.
        features: u64,
    },
    /// The device did not finish a reset.
    #[error("the virtio device did not finish its reset")]
    ResetTimeout,
    /// The queue the driver needs does not exist.
    #[error("virtqueue {queue} is not available (the device reports size 0)")]
    QueueSizeZero {
        /// The queue index.
        queue: u16,
    },
    /// A split virtqueue's size must be a power of two.
    #[error("virtqueue {queue}: the device reports size {size}, not a power of two")]
    QueueSizeNotPowerOfTwo {
        /// The queue index.
        queue: u16,
        /// The size reported.
        size: u16,
    },
    /// The device's used index moved further than the queue holds.
    #[error("virtqueue {queue}: the used index jumped from {last} to {now}, more than the queue size {size}")]
    UsedIndexJump {
        /// The queue index.
        queue: u16,
        /// The last used index the driver had seen.
        last: u16,
        /// The used index the device wrote.
        now: u16,
        /// The queue size.
        size: u16,
    },
    /// A used entry names a descriptor outside the table.
    #[error("virtqueue {queue}: a used entry names descriptor {id}, outside the queue of {size}")]
    UsedIdOutOfRange {
        /// The queue index.
        queue: u16,
        /// The id the device wrote.
        id: u32,
        /// The queue size.
        size: u16,
    },
    /// A used entry names a descriptor that is not the head of a chain the
    /// device holds.
    #[error("virtqueue {queue}: a used entry names descriptor {id}, which the device was not given")]
    UsedIdNotInFlight {
        /// The queue index.
        queue: u16,
        /// The id the device wrote.
        id: u16,
    },
    /// A used entry claims more bytes written than the chain could take.
    #[error("virtqueue {queue}: a used entry claims {len} bytes written into {capacity} writable bytes")]
    UsedLengthTooLong {
        /// The queue index.
        queue: u16,
        /// The length the device wrote.
        len: u32,
        /// The writable bytes of the chain.
        capacity: u32,
    },
    /// A legacy queue's memory lies above what a 32-bit page frame number
    /// reaches (16 TiB).
    #[error("virtqueue {queue}: legacy virtio-mmio cannot reach queue memory at {addr:#x}")]
    QueueAddressTooHigh {
        /// The queue index.
        queue: u16,
        /// The descriptor table's address.
        addr: u64,
    },
    /// No free descriptors for the chain.
    #[error("virtqueue {queue} is full")]
    QueueFull {
        /// The queue index.
        queue: u16,
    },
    /// A chain of no buffers, or one longer than the queue.
    #[error("a chain of {0} buffers cannot be added to a virtqueue")]
    BadChain(usize),
    /// A synchronous request got no answer.
    #[error("the virtio {0} device did not answer a request")]
    NoResponse(DeviceType),
    /// DMA memory could not be allocated.
    #[error("out of memory for {0} bytes of virtio DMA memory")]
    NoMemory(usize),
    /// A received frame shorter than the virtio-net header.
    #[error("virtio-net: the device returned {len} bytes, shorter than the {header}-byte header")]
    ShortFrame {
        /// The length the device wrote.
        len: u32,
        /// The header length.
        header: usize,
    },
    /// A frame longer than a transmit buffer.
    #[error("virtio-net: a frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLong {
        /// The frame length.
        len: usize,
        /// The longest frame.
        max: usize,
    },
    /// A write to a read-only block device.
    #[error("virtio-blk: the device is read-only")]
    ReadOnly,
    /// A block request beyond the device's end.
    #[error("virtio-blk: sectors {sector}..{end} are beyond the device's {capacity} sectors")]
    OutOfRange {
        /// The first sector.
        sector: u64,
        /// One past the last sector.
        end: u64,
        /// The capacity in 512-byte sectors.
        capacity: u64,
    },
    /// A block buffer that is not whole sectors.
    #[error("virtio-blk: a buffer of {0} bytes is not a multiple of 512")]
    NotWholeSectors(usize),
    /// The device failed a block request.
    #[error("virtio-blk: the device reported an I/O error")]
    IoError,
    /// The device does not support a block request.
    #[error("virtio-blk: the device does not support the request")]
    Unsupported,
    /// A status byte that is none of the defined ones.
    #[error("virtio-blk: the device answered with status {0}, which is not defined")]
    BadStatus(u8),
    /// The request completed with fewer bytes than it needs.
    #[error("virtio {device}: a request completed with {len} bytes written, expected {expected}")]
    ShortCompletion {
        /// The device.
        device: DeviceType,
        /// The length the device wrote.
        len: u32,
        /// The length expected.
        expected: u32,
    },
    /// Not a virtio PCI function.
    #[error("not a virtio PCI function (vendor {vendor:#06x}, device {device:#06x})")]
    NotVirtioPci {
        /// The PCI vendor id.
        vendor: u16,
        /// The PCI device id.
        device: u16,
    },
    /// A modern virtio PCI function lacks a capability.
    #[error("virtio-pci: the {0} capability is missing")]
    MissingCapability(&'static str),
    /// A malformed capability list.
    #[error("virtio-pci: malformed capability at config offset {0:#x}")]
    BadCapability(u8),
    /// A capability points at a BAR that is not usable memory.
    #[error("virtio-pci: BAR {0} is not an assigned memory BAR")]
    BadBar(u8),
    /// A queue's notify address lies outside the notify window.
    #[error("virtio-pci: queue {queue}'s notify offset {offset:#x} lies outside the notify window")]
    NotifyOutOfRange {
        /// The queue index.
        queue: u16,
        /// The offset in the window.
        offset: u32,
    },
    /// A `virtio_mmio.device=` command-line entry that does not parse.
    #[error("malformed virtio_mmio.device entry {0:?} (expected SIZE@BASE:IRQ)")]
    BadCmdline(alloc::string::String),
}
