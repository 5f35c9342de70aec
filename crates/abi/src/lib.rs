//! The contract between a Skiff guest and the tender that runs it.
//!
//! This crate is the whole interface, in the manner of a C header: constants,
//! `#[repr(C)]` argument structures and their documentation. It has no code
//! beyond `const` helpers and no dependencies, and both sides (the guest
//! runtime `skiff-rt` and the monitor `skiff-tender`) compile it, so the two
//! can never disagree on a layout.
//!
//! # Boot
//!
//! The tender loads the image's `PT_LOAD` segments at their physical
//! addresses (identity mapped, at or above [`layout::IMAGE_MIN`]), builds
//! the page tables, and enters the ELF entry point in 64-bit long mode,
//! ring 0, with `rdi` holding the guest-physical address of a [`BootInfo`].
//! The guest's supervisor then drops to ring 3, where everything else runs.
//!
//! # Hypercalls
//!
//! A hypercall is one `out dx, eax` instruction executed by the guest (from
//! ring 3; the ports are opened in the TSS I/O permission bitmap):
//! `dx` = [`HYPERCALL_PORT_BASE`] + the call number ([`Hypercall`]), `eax` =
//! the 32-bit guest-physical address of the call's argument structure
//! (calls without arguments ignore `eax`). In process mode ([`process`])
//! the same call is a plain call into the tender instead. The tender
//! validates every address and length against guest memory before touching
//! it; a call with
//! a bad argument ends the guest with [`exit::BAD_HYPERCALL`]. Results are
//! written back into the argument structure before the `out` instruction
//! completes.
//!
//! # Shared area
//!
//! One page range, described by [`BootInfo::shared`], is writable by both
//! sides: the console ring and the guest's boot timestamps ([`SharedArea`]).
//! The tender drains the console ring on every exit, so log output is never
//! lost, even when the guest dies from a CPU exception.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// Version of this contract. The tender refuses an image whose manifest
/// carries another version.
pub const ABI_VERSION: u32 = 5;

/// First I/O port of the hypercall range; call `n` is port `BASE + n`.
pub const HYPERCALL_PORT_BASE: u16 = 0x500;

/// Number of ports reserved for hypercalls, starting at
/// [`HYPERCALL_PORT_BASE`]. The guest opens exactly the ports of the calls
/// it knows in its TSS I/O bitmap.
pub const HYPERCALL_PORT_COUNT: u16 = 32;

/// Port on which the guest's ring-0 supervisor reports a CPU exception
/// taken in ring 3 (argument: address of a [`FaultFrame`]). This port is
/// never opened to ring 3, so a service cannot forge a fault report.
pub const FAULT_PORT: u16 = 0x4ff;

/// The hypercalls. The value is the offset from [`HYPERCALL_PORT_BASE`].
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// Read the wall clock. Argument: [`WalltimeArgs`]; the tender writes
    /// `nanos`. Never fails.
    Walltime = 0,
    /// Drain the console ring now. No argument. The tender also drains it on
    /// every other exit; the guest calls this only when the ring is full.
    /// Fails (ends the guest) if the ring's indices are inconsistent.
    ConsoleFlush = 1,
    /// Block until a device is ready or `timeout_nanos` have passed.
    /// Argument: [`PollArgs`]; the tender writes `ready`. A guest with no
    /// devices simply sleeps. Never fails.
    Poll = 2,
    /// End the guest with a status chosen by the service. Argument:
    /// [`ExitArgs`]. A status above [`exit::SERVICE_MAX`] is a bad argument.
    /// Does not return.
    Exit = 3,
    /// End the guest because the runtime cannot go on (panic, out of memory,
    /// deadlock). Argument: [`AbortArgs`], whose message the tender prints.
    /// Does not return.
    Abort = 4,
    /// Doorbell for the shared-memory rings: the guest queued frames on a
    /// NIC's transmit ring while the tender's I/O thread was asleep.
    /// Argument: [`NetNotifyArgs`]. Never fails for a valid device.
    NetNotify = 5,
    /// Doorbell for a disk's request ring ([`blk`]): the tender serves
    /// every request queued on it (reads, writes, flushes, discards) and
    /// completes them before the call returns, so a batch of requests
    /// costs one exit. Argument: [`BlockNotifyArgs`]. A device index that
    /// is no disk, or a request outside the disk or guest memory, is a bad
    /// argument; a host I/O error or a write to a read-only disk is a
    /// request's status ([`blk::status`]), not the end of the guest.
    BlockNotify = 6,
}

impl Hypercall {
    /// All calls, in number order.
    pub const ALL: [Hypercall; 7] = [
        Hypercall::Walltime,
        Hypercall::ConsoleFlush,
        Hypercall::Poll,
        Hypercall::Exit,
        Hypercall::Abort,
        Hypercall::NetNotify,
        Hypercall::BlockNotify,
    ];

    /// The call whose number is `nr`, if there is one.
    pub const fn from_number(nr: u16) -> Option<Hypercall> {
        match nr {
            0 => Some(Hypercall::Walltime),
            1 => Some(Hypercall::ConsoleFlush),
            2 => Some(Hypercall::Poll),
            3 => Some(Hypercall::Exit),
            4 => Some(Hypercall::Abort),
            5 => Some(Hypercall::NetNotify),
            6 => Some(Hypercall::BlockNotify),
            _ => None,
        }
    }

    /// The I/O port the guest writes to make this call.
    pub const fn port(self) -> u16 {
        HYPERCALL_PORT_BASE + self as u16
    }

    /// A short lower-case name, used in the tender's messages and statistics.
    pub const fn name(self) -> &'static str {
        match self {
            Hypercall::Walltime => "walltime",
            Hypercall::ConsoleFlush => "console-flush",
            Hypercall::Poll => "poll",
            Hypercall::Exit => "exit",
            Hypercall::Abort => "abort",
            Hypercall::NetNotify => "net-notify",
            Hypercall::BlockNotify => "block-notify",
        }
    }
}

/// Argument of [`Hypercall::Walltime`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalltimeArgs {
    /// Out: nanoseconds since the UNIX epoch (UTC).
    pub nanos: u64,
}

/// Argument of [`Hypercall::Poll`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollArgs {
    /// In: the longest time to block, in nanoseconds. Zero checks readiness
    /// without blocking; `u64::MAX` waits for a device only.
    pub timeout_nanos: u64,
    /// In: the devices the guest waits for, bit `i` for device `i` (in
    /// [`BootInfo::devices`] order); a device outside the set never ends
    /// the wait, whatever it holds. Out: the devices of the set that have
    /// something ready.
    pub ready: u64,
}

/// Argument of [`Hypercall::Exit`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitArgs {
    /// In: the exit status, `0..=`[`exit::SERVICE_MAX`]; the tender exits
    /// with it.
    pub status: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// Why the runtime aborted, in [`AbortArgs::reason`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortReason {
    /// The service or the runtime panicked. Status [`exit::PANIC`].
    Panic = 1,
    /// An allocation could not be satisfied. Status [`exit::OUT_OF_MEMORY`].
    OutOfMemory = 2,
    /// The executor has nothing to run and nothing that could wake it.
    /// Status [`exit::ABORT`].
    Deadlock = 3,
    /// Any other unrecoverable runtime condition. Status [`exit::ABORT`].
    Other = 4,
}

impl AbortReason {
    /// Decodes a raw reason; unknown values are a bad hypercall argument.
    pub const fn from_raw(raw: u32) -> Option<AbortReason> {
        match raw {
            1 => Some(AbortReason::Panic),
            2 => Some(AbortReason::OutOfMemory),
            3 => Some(AbortReason::Deadlock),
            4 => Some(AbortReason::Other),
            _ => None,
        }
    }

    /// The exit status the tender uses for this reason.
    pub const fn status(self) -> u8 {
        match self {
            AbortReason::Panic => exit::PANIC,
            AbortReason::OutOfMemory => exit::OUT_OF_MEMORY,
            AbortReason::Deadlock | AbortReason::Other => exit::ABORT,
        }
    }

    /// A short description for the tender's message.
    pub const fn describe(self) -> &'static str {
        match self {
            AbortReason::Panic => "panic",
            AbortReason::OutOfMemory => "out of memory",
            AbortReason::Deadlock => "deadlock",
            AbortReason::Other => "abort",
        }
    }
}

/// Argument of [`Hypercall::Abort`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AbortArgs {
    /// In: an [`AbortReason`] as `u32`.
    pub reason: u32,
    /// In: length of the UTF-8 message at `message`, at most
    /// [`ABORT_MESSAGE_MAX`] bytes; zero for none.
    pub message_len: u32,
    /// In: guest-physical address of the message.
    pub message: u64,
}

/// Longest message [`AbortArgs`] may carry.
pub const ABORT_MESSAGE_MAX: u32 = 4096;

/// Largest Ethernet frame (without FCS) at the MTU of 1500: 14-byte header
/// plus payload.
pub const NET_FRAME_MAX: u32 = 1514;

/// Smallest frame: an Ethernet header.
pub const NET_FRAME_MIN: u32 = 14;

/// The MTU every Skiff NIC has.
pub const NET_MTU: u32 = 1500;

/// Argument of [`Hypercall::NetNotify`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetNotifyArgs {
    /// In: index of the device.
    pub device: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// Argument of [`Hypercall::BlockNotify`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockNotifyArgs {
    /// In: index of the device (in [`BootInfo::devices`]); must be a disk.
    pub device: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// What [`DeviceInfo::data`] holds for a disk. Encoded little-endian:
/// bytes 0..8 capacity in sectors, 8..12 sector size, 12..16 flags
/// ([`blk::FLAG_READ_ONLY`]), 16..24 request ring base, 24..28 slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockInfo {
    /// Size of the disk in sectors.
    pub capacity: u64,
    /// Bytes per sector: 512 or 4096.
    pub sector_size: u32,
    /// [`blk::FLAG_READ_ONLY`].
    pub flags: u32,
    /// Guest-physical address of the request ring ([`blk`]).
    pub ring: u64,
    /// Slots of the ring (a power of two).
    pub slots: u32,
}

impl BlockInfo {
    /// Encodes into a [`DeviceInfo::data`] array.
    pub fn encode(&self) -> [u8; 32] {
        let mut d = [0u8; 32];
        d[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        d[8..12].copy_from_slice(&self.sector_size.to_le_bytes());
        d[12..16].copy_from_slice(&self.flags.to_le_bytes());
        d[16..24].copy_from_slice(&self.ring.to_le_bytes());
        d[24..28].copy_from_slice(&self.slots.to_le_bytes());
        d
    }

    /// Decodes from a [`DeviceInfo::data`] array.
    pub fn decode(d: &[u8; 32]) -> BlockInfo {
        let u64_at =
            |i: usize| u64::from_le_bytes([d[i], d[i + 1], d[i + 2], d[i + 3], d[i + 4], d[i + 5], d[i + 6], d[i + 7]]);
        let u32_at = |i: usize| u32::from_le_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
        BlockInfo {
            capacity: u64_at(0),
            sector_size: u32_at(8),
            flags: u32_at(12),
            ring: u64_at(16),
            slots: u32_at(24),
        }
    }

    /// Whether the disk refuses writes and discards.
    pub fn read_only(&self) -> bool {
        self.flags & blk::FLAG_READ_ONLY != 0
    }
}

/// A disk's request ring, shared by the guest (producer of requests) and
/// the tender (which completes them).
///
/// The ring has a header page (the producer index at [`ring::PRODUCER`],
/// the consumer index at [`ring::CONSUMER`], as in the frame rings) and
/// `slots` slots of [`blk::SLOT_SIZE`] bytes, each a [`blk::Request`]. The
/// guest fills slot `producer % slots`, stores `producer + 1` (release)
/// and rings [`Hypercall::BlockNotify`]. The tender serves the requests in
/// order, writes each one's `status` and stores `consumer + 1` (release)
/// after each; all are complete when the call returns. Requests move data
/// straight between the disk file and the guest buffers they name.
///
/// The tender checks every request: a known operation, a buffer of
/// `count * sector_size` bytes inside the service's own memory (writable
/// for reads), and `sector + count` inside the disk without wrapping.
/// A request that fails these ends the guest with [`exit::BAD_HYPERCALL`].
pub mod blk {
    /// Bytes per slot.
    pub const SLOT_SIZE: u64 = 32;
    /// Slots per ring the tender sets up.
    pub const DEFAULT_SLOTS: u32 = 128;
    /// [`super::BlockInfo::flags`]: the disk is read-only.
    pub const FLAG_READ_ONLY: u32 = 1;
    /// The sector sizes a disk can have.
    pub const SECTOR_SIZES: [u32; 2] = [512, 4096];

    /// Bytes of a ring with `slots` slots.
    pub const fn ring_bytes(slots: u32) -> u64 {
        super::ring::HEADER_SIZE + (slots as u64 * SLOT_SIZE).next_multiple_of(4096)
    }

    /// Request operations.
    pub mod op {
        /// Read `count` sectors from `sector` into the buffer.
        pub const READ: u32 = 1;
        /// Write `count` sectors from the buffer at `sector`.
        pub const WRITE: u32 = 2;
        /// Make every write completed before it durable (`fdatasync`).
        /// `sector`, `count` and `buf` are zero.
        pub const FLUSH: u32 = 3;
        /// `count` sectors from `sector` on are unused (the tender punches
        /// a hole); their contents are undefined afterwards. `buf` is zero.
        pub const DISCARD: u32 = 4;
    }

    /// A request's outcome, in [`Request::status`].
    pub mod status {
        /// Not served yet (the guest writes this when it queues).
        pub const PENDING: u32 = 0;
        /// Done.
        pub const OK: u32 = 1;
        /// A write or discard on a read-only disk.
        pub const READ_ONLY: u32 = 2;
        /// The host's I/O failed; [`super::Request::errno`] says how.
        pub const IO_ERROR: u32 = 3;
        /// Discard is not supported by the host file system.
        pub const UNSUPPORTED: u32 = 4;
    }

    /// One request, as it sits in a slot.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Request {
        /// In: an [`op`] value.
        pub op: u32,
        /// Out: a [`status`] value.
        pub status: u32,
        /// In: the first sector.
        pub sector: u64,
        /// In: sectors to move (at most `u32::MAX`).
        pub count: u32,
        /// Out: the host's `errno` for [`status::IO_ERROR`].
        pub errno: u32,
        /// In: guest address of the buffer (`count * sector_size` bytes).
        pub buf: u64,
    }

    /// Offset of [`Request::status`] in a slot.
    pub const STATUS_OFFSET: u64 = 4;
    /// Offset of [`Request::errno`] in a slot.
    pub const ERRNO_OFFSET: u64 = 20;

    const _: () = assert!(core::mem::size_of::<Request>() as u64 == SLOT_SIZE);
}

/// What the supervisor pushes for a CPU exception and passes (by address)
/// on [`FAULT_PORT`]. Field order is the stack order: `cr2` was pushed last.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultFrame {
    /// The faulting linear address (meaningful for a page fault).
    pub cr2: u64,
    /// The exception vector, `0..=31`.
    pub vector: u64,
    /// The error code the CPU pushed, or zero for vectors without one.
    pub error_code: u64,
    /// Instruction pointer of the faulting instruction.
    pub rip: u64,
    /// Code segment selector at the fault; its low two bits are the ring.
    pub cs: u64,
    /// Flags at the fault.
    pub rflags: u64,
    /// Stack pointer at the fault.
    pub rsp: u64,
    /// Stack segment selector at the fault.
    pub ss: u64,
}

/// Mnemonic and name of a CPU exception vector, for fault reports (the
/// tender's, and the runtime's own under the PVH entry).
pub const fn vector_name(vector: u64) -> (&'static str, &'static str) {
    match vector {
        0 => ("#DE", "divide error"),
        1 => ("#DB", "debug exception"),
        2 => ("NMI", "non-maskable interrupt"),
        3 => ("#BP", "breakpoint"),
        4 => ("#OF", "overflow"),
        5 => ("#BR", "bound range exceeded"),
        6 => ("#UD", "invalid opcode"),
        7 => ("#NM", "device not available"),
        8 => ("#DF", "double fault"),
        9 => ("#CSO", "coprocessor segment overrun"),
        10 => ("#TS", "invalid TSS"),
        11 => ("#NP", "segment not present"),
        12 => ("#SS", "stack-segment fault"),
        13 => ("#GP", "general protection fault"),
        14 => ("#PF", "page fault"),
        16 => ("#MF", "x87 floating-point exception"),
        17 => ("#AC", "alignment check"),
        18 => ("#MC", "machine check"),
        19 => ("#XM", "SIMD floating-point exception"),
        20 => ("#VE", "virtualization exception"),
        21 => ("#CP", "control protection exception"),
        _ => ("#??", "reserved exception"),
    }
}

/// Magic value of [`BootInfo::magic`]: "SKIFFBI1".
pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"SKIFFBI1");

/// Most devices an image may declare (and the tender may attach).
pub const MAX_DEVICES: usize = 8;

/// Longest device name, in bytes (names are NUL-padded).
pub const DEVICE_NAME_MAX: usize = 32;

/// Longest command line the tender passes, in bytes including separators.
pub const ARGS_MAX: usize = 8192;

/// Kinds of device in a manifest or boot info.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// A network interface (Ethernet frames).
    Net = 1,
    /// A block device.
    Block = 2,
}

impl DeviceKind {
    /// Decodes a raw kind.
    pub const fn from_raw(raw: u32) -> Option<DeviceKind> {
        match raw {
            1 => Some(DeviceKind::Net),
            2 => Some(DeviceKind::Block),
            _ => None,
        }
    }

    /// Lower-case name of the kind.
    pub const fn name(self) -> &'static str {
        match self {
            DeviceKind::Net => "net",
            DeviceKind::Block => "block",
        }
    }
}

/// What [`DeviceInfo::data`] holds for a NIC. Encoded little-endian:
/// bytes 0..6 MAC, 6..8 MTU, 8..16 ring base, 16..20 slots per ring,
/// 20..24 guest spin time in microseconds before an idle `Poll`. Frames
/// move only through the rings ([`ring`]); ABI 4 and earlier also had
/// `NetWrite`/`NetRead` hypercalls (calls 5 and 6), removed in ABI 5.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetInfo {
    /// The NIC's MAC address.
    pub mac: [u8; 6],
    /// The MTU.
    pub mtu: u16,
    /// Guest-physical address of the receive ring; the transmit ring
    /// follows it at `ring::ring_bytes(slots)`.
    pub ring: u64,
    /// Slots per ring (a power of two).
    pub slots: u32,
    /// How long the guest should poll its rings before sleeping in `Poll`.
    pub spin_micros: u32,
}

impl NetInfo {
    /// Encodes into a [`DeviceInfo::data`] array.
    pub fn encode(&self) -> [u8; 32] {
        let mut d = [0u8; 32];
        d[0..6].copy_from_slice(&self.mac);
        d[6..8].copy_from_slice(&self.mtu.to_le_bytes());
        d[8..16].copy_from_slice(&self.ring.to_le_bytes());
        d[16..20].copy_from_slice(&self.slots.to_le_bytes());
        d[20..24].copy_from_slice(&self.spin_micros.to_le_bytes());
        d
    }

    /// Decodes from a [`DeviceInfo::data`] array.
    pub fn decode(d: &[u8; 32]) -> NetInfo {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&d[0..6]);
        NetInfo {
            mac,
            mtu: u16::from_le_bytes([d[6], d[7]]),
            ring: u64::from_le_bytes([d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15]]),
            slots: u32::from_le_bytes([d[16], d[17], d[18], d[19]]),
            spin_micros: u32::from_le_bytes([d[20], d[21], d[22], d[23]]),
        }
    }
}

/// Shared-memory frame rings between the guest and the tender's I/O thread.
///
/// Each NIC with rings has two, back to back in guest memory: the receive
/// ring (the tender produces, the guest consumes) and the transmit ring
/// (the guest produces, the tender consumes). A ring is a header page and
/// `slots` slots of [`ring::SLOT_SIZE`] bytes. Indices count frames and
/// wrap at 2^32; slot `i % slots` holds frame `i`: a little-endian `u32`
/// length at [`ring::SLOT_LEN`] and the frame's bytes at
/// [`ring::SLOT_DATA`].
///
/// The producer writes a slot, then publishes it by storing `producer + 1`
/// (release); the consumer reads `producer` (acquire), reads the slot, then
/// stores `consumer + 1` (release). The producer never writes a slot the
/// consumer has not released (`producer - consumer < slots`).
///
/// Sleeping: before the tender's I/O thread sleeps it sets the transmit
/// ring's [`ring::CONSUMER_SLEEPING`] flag and checks the ring once more; a
/// guest that queues frames and then sees the flag set rings the doorbell
/// ([`Hypercall::NetNotify`]). The guest sleeps in [`Hypercall::Poll`],
/// which returns when its receive ring has frames.
pub mod ring {
    /// Bytes of the header page.
    pub const HEADER_SIZE: u64 = 4096;
    /// Offset of the producer index (`u32`) in the header.
    pub const PRODUCER: u64 = 0;
    /// Offset of the consumer index (`u32`), on its own cache line.
    pub const CONSUMER: u64 = 64;
    /// Offset of the consumer's "asleep, ring the doorbell" flag (`u32`).
    pub const CONSUMER_SLEEPING: u64 = 128;
    /// Offset of the producer's "full and waiting for room, ring the
    /// doorbell" flag (`u32`): the tender sets it on a receive ring it
    /// cannot fill further and then sleeps; the guest, after taking frames,
    /// clears it and rings (`NetNotify`). So a guest that stops reading
    /// costs the host nothing, and one that resumes is served at once.
    pub const PRODUCER_WAITING: u64 = 192;
    /// Offset, in the *transmit* ring's header, of the guest's count of
    /// TCP listeners started (`u32`, only ever incremented). The runtime
    /// writes the listener's port at [`LISTEN_PORTS`] (the first
    /// [`LISTEN_PORTS_MAX`] only), then increments the count with release
    /// ordering, then rings the doorbell if the consumer sleeps, as after
    /// sending frames. The tender reads it from its I/O thread to know the
    /// service is ready (`--ready-file`) and to hand held connections over
    /// at once; it never trusts it for anything else. Older runtimes leave
    /// it zero; older tenders ignore it.
    pub const LISTENING: u64 = 256;
    /// Offset, in the transmit ring's header, of the ports (`u16` each) of
    /// the first [`LISTEN_PORTS_MAX`] listeners, in the order they started.
    pub const LISTEN_PORTS: u64 = 320;
    /// Listener ports the header records.
    pub const LISTEN_PORTS_MAX: u32 = 8;
    /// Bytes per slot.
    pub const SLOT_SIZE: u64 = 2048;
    /// Offset of a slot's length field.
    pub const SLOT_LEN: u64 = 0;
    /// Offset of a slot's frame bytes.
    pub const SLOT_DATA: u64 = 8;
    /// Slots per ring the tender sets up by default.
    pub const DEFAULT_SLOTS: u32 = 256;

    /// Bytes of one ring with `slots` slots.
    pub const fn ring_bytes(slots: u32) -> u64 {
        HEADER_SIZE + slots as u64 * SLOT_SIZE
    }

    const _: () = assert!(SLOT_DATA + super::NET_FRAME_MAX as u64 <= SLOT_SIZE);
}

/// A device as the tender describes it to the guest at boot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// A [`DeviceKind`] as `u32`.
    pub kind: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The name from the manifest, NUL-padded.
    pub name: [u8; DEVICE_NAME_MAX],
    /// Kind-specific data (for a NIC: the MAC address in bytes 0..6).
    pub data: [u8; 32],
}

/// What the tender tells the guest at boot. Lives in a read-only page; its
/// address is in `rdi` at entry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// [`BOOT_INFO_MAGIC`].
    pub magic: u64,
    /// [`ABI_VERSION`] of the tender.
    pub abi_version: u32,
    /// Maximum log level for the console: 0 off, 1 error, 2 warn, 3 info,
    /// 4 debug, 5 trace.
    pub log_level: u32,
    /// Bytes of guest memory, from guest-physical address 0.
    pub mem_size: u64,
    /// First byte of the heap: page aligned, above the image and its stack.
    pub heap_start: u64,
    /// One past the last byte of the heap.
    pub heap_end: u64,
    /// TSC frequency in Hz.
    pub tsc_hz: u64,
    /// Wall clock (ns since the UNIX epoch) when the guest TSC read
    /// `tsc_at_wall`.
    pub wall_nanos: u64,
    /// Guest TSC value matching `wall_nanos`; zero if the tender could not
    /// read it, in which case the guest pairs `wall_nanos` with its first TSC
    /// reading.
    pub tsc_at_wall: u64,
    /// Guest-physical address of the [`SharedArea`].
    pub shared: u64,
    /// Guest-physical address of the command line: `argc` strings, each
    /// followed by a NUL byte, `args_len` bytes in all.
    pub args: u64,
    /// Number of arguments at `args`.
    pub argc: u32,
    /// Bytes at `args`, at most [`ARGS_MAX`].
    pub args_len: u32,
    /// Guest-physical address of the top-level page table (informational;
    /// the page is not reachable from ring 3).
    pub page_table_root: u64,
    /// Number of valid entries in `devices`.
    pub device_count: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The attached devices: the NICs in manifest order, then the disks
    /// in manifest order.
    pub devices: [DeviceInfo; MAX_DEVICES],
    /// Process mode only ([`process`]): the address of the tender's
    /// hypercall entry, an `extern "C" fn(nr: u64, arg: u64)` the runtime
    /// calls instead of executing `out` (`nr` a [`Hypercall`] number, `arg`
    /// the argument's address as for `out`). Zero under a VM. Older
    /// tenders leave it zero (the page is zeroed), so the field needs no new
    /// ABI version.
    pub hypercall: u64,
}

/// Size of the console ring's data area, a power of two.
pub const CONSOLE_RING_SIZE: usize = 16384;

/// Guest-writable area shared with the tender.
///
/// The console is a single-producer (guest) single-consumer (tender) byte
/// ring: the guest writes bytes at `console_head % CONSOLE_RING_SIZE` and
/// then advances `console_head`; the tender consumes from `console_tail` up
/// to `console_head` and advances `console_tail`. Both indices count bytes
/// and wrap at 2^32. `console_head - console_tail` greater than
/// [`CONSOLE_RING_SIZE`] is a broken ring and ends the guest.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SharedArea {
    /// Written by the guest: bytes produced.
    pub console_head: u32,
    /// Written by the tender: bytes consumed.
    pub console_tail: u32,
    /// Written by the guest: TSC when ring 3 was entered (for `--stats`).
    pub tsc_ring3_entry: u64,
    /// Written by the guest: TSC when the service's `main` started.
    pub tsc_main: u64,
    /// Written by the tender: non-zero once the guest is asked to stop (a
    /// `SIGTERM` or `SIGINT` reached the tender). The tender then wakes the
    /// guest from `Poll`; the runtime sees the flag whenever it wakes and
    /// resolves `Env::stopping`. Older images ignore it (it was reserved).
    pub stop_requested: u32,
    /// Reserved, zero.
    pub reserved0: u32,
    /// Written by the guest, for `--stats`: spins on the receive rings
    /// before a `Poll` that found a frame (no exit needed).
    pub spin_found: u64,
    /// Written by the guest: spins that ran out and made the `Poll` call.
    /// Older images leave both zero (they were reserved).
    pub spin_missed: u64,
    /// Reserved, zero.
    pub reserved: [u64; 2],
    /// The ring's bytes.
    pub console: [u8; CONSOLE_RING_SIZE],
}

/// Byte offset of [`SharedArea::console_head`].
pub const SHARED_CONSOLE_HEAD: usize = 0;
/// Byte offset of [`SharedArea::console_tail`].
pub const SHARED_CONSOLE_TAIL: usize = 4;
/// Byte offset of [`SharedArea::tsc_ring3_entry`].
pub const SHARED_TSC_RING3_ENTRY: usize = 8;
/// Byte offset of [`SharedArea::tsc_main`].
pub const SHARED_TSC_MAIN: usize = 16;
/// Byte offset of [`SharedArea::stop_requested`].
pub const SHARED_STOP_REQUESTED: usize = 24;
/// Byte offset of [`SharedArea::spin_found`].
pub const SHARED_SPIN_FOUND: usize = 32;
/// Byte offset of [`SharedArea::spin_missed`].
pub const SHARED_SPIN_MISSED: usize = 40;
/// Byte offset of [`SharedArea::console`].
pub const SHARED_CONSOLE_DATA: usize = 64;

/// Exit statuses. The tender (and `skiff run`) exits with the guest's
/// status, so these are also the process exit statuses. The ranges never
/// meet:
///
/// | status | who | meaning |
/// | --- | --- | --- |
/// | 0..=99 | the service | its own status (`0` success, `1` `main` returned an error) |
/// | 101..=104 | the runtime | panic, CPU exception, out of memory, other abort |
/// | 110..=114 | the tender, about the guest | bad hypercall, timeout, VM failure, stop grace expired |
/// | 120..=125 | the tender, about itself | blocked system call, bad command line, could not start |
///
/// 126 and up are left to shells (126, 127) and signal deaths (128 + n).
/// [`exit::TABLE`] lists every status with its meaning; `skiff-tender
/// --help` prints it.
pub mod exit {
    /// The service succeeded.
    pub const SUCCESS: u8 = 0;
    /// The service's `main` returned an error.
    pub const FAILURE: u8 = 1;
    /// Highest status a service may pass to [`super::Hypercall::Exit`].
    pub const SERVICE_MAX: u8 = 99;
    /// The guest panicked.
    pub const PANIC: u8 = 101;
    /// The guest took a CPU exception (fault report printed by the tender).
    pub const CPU_EXCEPTION: u8 = 102;
    /// The guest ran out of memory.
    pub const OUT_OF_MEMORY: u8 = 103;
    /// The runtime aborted for another reason (e.g. deadlock).
    pub const ABORT: u8 = 104;
    /// The guest made a hypercall with a bad argument, or used the tender
    /// interface wrongly; the tender ended it.
    pub const BAD_HYPERCALL: u8 = 110;
    /// `--timeout` expired.
    pub const TIMEOUT: u8 = 111;
    /// The virtual machine failed (triple fault, emulation failure,
    /// unexpected exit).
    pub const VM_FAILURE: u8 = 112;
    /// A stop signal (`SIGTERM`, `SIGINT`) came and the guest did not end
    /// within the grace period, or a second one came; the tender ended it.
    pub const STOPPED: u8 = 114;
    /// The tender made a system call its seccomp allow-list does not have
    /// (a tender bug, or a subverted tender); it ended at once.
    pub const BLOCKED_SYSCALL: u8 = 120;
    /// The command line of `skiff-tender` or `skiff` is wrong.
    pub const USAGE: u8 = 124;
    /// The tender could not start the guest (bad image, no KVM, bad option).
    pub const TENDER_ERROR: u8 = 125;

    /// Every status the tender or runtime gives, with its meaning; the
    /// service's own range first.
    pub const TABLE: &[(u8, u8, &str)] = &[
        (SUCCESS, SERVICE_MAX, "the service's own status (0 success, 1 main returned an error)"),
        (PANIC, PANIC, "the guest panicked"),
        (CPU_EXCEPTION, CPU_EXCEPTION, "the guest took a CPU exception"),
        (OUT_OF_MEMORY, OUT_OF_MEMORY, "the guest ran out of memory"),
        (ABORT, ABORT, "the runtime aborted (e.g. deadlock)"),
        (BAD_HYPERCALL, BAD_HYPERCALL, "the guest broke the hypercall contract"),
        (TIMEOUT, TIMEOUT, "--timeout expired"),
        (VM_FAILURE, VM_FAILURE, "the virtual machine failed"),
        (STOPPED, STOPPED, "stopped by a signal: the guest did not end within the grace period"),
        (BLOCKED_SYSCALL, BLOCKED_SYSCALL, "the tender made a system call its allow-list forbids"),
        (USAGE, USAGE, "bad command line"),
        (TENDER_ERROR, TENDER_ERROR, "the guest could not be started"),
    ];

    /// The meaning of a process exit status.
    pub fn describe(status: u8) -> &'static str {
        TABLE.iter().find(|(lo, hi, _)| (*lo..=*hi).contains(&status)).map_or(
            if status >= 128 { "killed by a signal (128 + its number)" } else { "not a status Skiff gives" },
            |(_, _, what)| what,
        )
    }
}

/// Custom ELF `p_flags` bits (in the `PF_MASKOS` range) that the linker
/// script sets on special segments.
pub mod pflags {
    /// The segment belongs to the ring-0 supervisor: mapped without the
    /// user bit, so ring 3 cannot reach it.
    pub const SUPERVISOR: u32 = 0x0010_0000;
    /// The segment is the ring-3 stack; the page below it is left unmapped
    /// as a guard, and faults there are reported as a stack overflow.
    pub const STACK: u32 = 0x0020_0000;
}

/// Guest-physical layout fixed by this contract.
pub mod layout {
    /// Lowest address an image segment may occupy; the tender keeps the
    /// memory below for the boot info, the shared area and page tables.
    pub const IMAGE_MIN: u64 = 0x10_0000;
    /// Page size used for protections.
    pub const PAGE_SIZE: u64 = 4096;
    /// Smallest guest memory the tender accepts.
    pub const MEM_MIN: u64 = 2 << 20;
    /// Largest guest memory the tender accepts (hypercall arguments are
    /// 32-bit addresses, and the top of the 4 GiB space is left alone).
    pub const MEM_MAX: u64 = 3 << 30;
}

/// The manifest: an ELF note every image carries, declaring its ABI version
/// and the devices it needs.
///
/// It is an ordinary note (`namesz`, `descsz`, `type`, name, descriptor) in
/// a `PT_NOTE` segment, with name [`manifest::NOTE_NAME`] and type
/// [`manifest::NOTE_TYPE`]; the descriptor is a [`manifest::Manifest`].
pub mod manifest {
    use super::{ABI_VERSION, DEVICE_NAME_MAX, DeviceKind, MAX_DEVICES};

    /// Note name, NUL-terminated and padded to 8 bytes.
    pub const NOTE_NAME: [u8; 8] = *b"Skiff\0\0\0";
    /// Length of the name including its NUL, as in the note header.
    pub const NOTE_NAMESZ: u32 = 6;
    /// Note type of the manifest.
    pub const NOTE_TYPE: u32 = 0x534b_0001;

    /// One declared device.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct ManifestDevice {
        /// A [`DeviceKind`] as `u32`.
        pub kind: u32,
        /// [`FLAG_OUTBOUND`] and future flags.
        pub flags: u32,
        /// The device's name, NUL-padded; unique within the manifest.
        pub name: [u8; DEVICE_NAME_MAX],
    }

    /// A NIC's service connects out (to APIs, name servers): on a user-mode
    /// network the tender relays its outbound traffic unless told not to.
    /// Without it, outbound traffic is off by default.
    pub const FLAG_OUTBOUND: u32 = 1;

    /// The manifest descriptor.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Manifest {
        /// [`ABI_VERSION`] the image was built for.
        pub abi_version: u32,
        /// Number of valid entries in `devices`.
        pub device_count: u32,
        /// The declared devices.
        pub devices: [ManifestDevice; MAX_DEVICES],
    }

    /// Size of the descriptor in bytes.
    pub const DESC_SIZE: usize = core::mem::size_of::<Manifest>();

    /// The complete note as it sits in the image.
    #[repr(C, align(4))]
    #[derive(Clone, Copy, Debug)]
    pub struct ManifestNote {
        /// [`NOTE_NAMESZ`].
        pub namesz: u32,
        /// [`DESC_SIZE`].
        pub descsz: u32,
        /// [`NOTE_TYPE`].
        pub note_type: u32,
        /// [`NOTE_NAME`].
        pub name: [u8; 8],
        /// The manifest.
        pub desc: Manifest,
    }

    const EMPTY_DEVICE: ManifestDevice = ManifestDevice { kind: 0, flags: 0, name: [0; DEVICE_NAME_MAX] };

    impl ManifestNote {
        /// Builds the note for a list of `(kind, name, flags)` devices at
        /// compile time. Fails compilation (const panic) on too many
        /// devices, an empty or too long name, or a duplicate name.
        pub const fn new(devices: &[(DeviceKind, &str, u32)]) -> ManifestNote {
            assert!(devices.len() <= MAX_DEVICES, "too many devices in the manifest");
            let mut out = [EMPTY_DEVICE; MAX_DEVICES];
            let mut i = 0;
            while i < devices.len() {
                let name = devices[i].1.as_bytes();
                assert!(!name.is_empty(), "device name is empty");
                assert!(name.len() < DEVICE_NAME_MAX, "device name is too long");
                let mut j = 0;
                while j < name.len() {
                    out[i].name[j] = name[j];
                    j += 1;
                }
                out[i].kind = devices[i].0 as u32;
                out[i].flags = devices[i].2;
                let mut k = 0;
                while k < i {
                    assert!(!name_eq(&out[k].name, &out[i].name), "duplicate device name");
                    k += 1;
                }
                i += 1;
            }
            ManifestNote {
                namesz: NOTE_NAMESZ,
                descsz: DESC_SIZE as u32,
                note_type: NOTE_TYPE,
                name: NOTE_NAME,
                desc: Manifest { abi_version: ABI_VERSION, device_count: devices.len() as u32, devices: out },
            }
        }
    }

    const fn name_eq(a: &[u8; DEVICE_NAME_MAX], b: &[u8; DEVICE_NAME_MAX]) -> bool {
        let mut i = 0;
        while i < DEVICE_NAME_MAX {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    /// The name of a device as text, up to its first NUL. `None` if it is
    /// not UTF-8.
    pub fn device_name(name: &[u8; DEVICE_NAME_MAX]) -> Option<&str> {
        let len = name.iter().position(|&b| b == 0).unwrap_or(DEVICE_NAME_MAX);
        core::str::from_utf8(&name[..len]).ok()
    }
}

/// Process mode: the same image run by `skiff-tender --sandbox process`
/// as a sandboxed Linux process, without a VM.
///
/// The tender maps the image's user segments at their link addresses in its
/// own address space (the supervisor's segments are not mapped), puts the
/// boot info, command line and shared area at addresses of its choosing
/// (the boot info says where), and jumps to the *process entry* on the
/// ring-3 stack with `rdi` holding the boot info's address. That entry,
/// which the image names in a note ([`process::NOTE_TYPE_ENTRY`], name
/// `Skiff`, an 8-byte address), stores [`BootInfo::hypercall`] where the
/// runtime's hypercalls look for their target and continues as the ring-3
/// entry does under a VM. A hypercall is then a plain call into the tender
/// (same numbers, same argument structures, same checks); everything else
/// (the shared area, the rings, the exit statuses) is unchanged.
pub mod process {
    /// Note type of the process entry note (name `Skiff`).
    pub const NOTE_TYPE_ENTRY: u32 = 0x534b_0002;
}

/// Xen's PVH entry note, which QEMU, Firecracker and Cloud Hypervisor read
/// to find the 32-bit entry point.
pub mod pvh {
    /// Note name.
    pub const NOTE_NAME: &[u8; 4] = b"Xen\0";
    /// `XEN_ELFNOTE_PHYS32_ENTRY`.
    pub const NOTE_TYPE_PHYS32_ENTRY: u32 = 18;
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn exit_statuses_do_not_collide() {
        // The table's ranges are sorted and disjoint, and every named
        // status is in it with its own entry.
        for w in exit::TABLE.windows(2) {
            assert!(w[0].1 < w[1].0, "{:?} overlaps {:?}", w[0], w[1]);
        }
        for (lo, hi, _) in exit::TABLE {
            assert!(lo <= hi);
            assert!(*hi < 126, "126 and up belong to shells and signals");
        }
        let named = [
            exit::PANIC,
            exit::CPU_EXCEPTION,
            exit::OUT_OF_MEMORY,
            exit::ABORT,
            exit::BAD_HYPERCALL,
            exit::TIMEOUT,
            exit::VM_FAILURE,
            exit::STOPPED,
            exit::BLOCKED_SYSCALL,
            exit::USAGE,
            exit::TENDER_ERROR,
        ];
        for s in named {
            assert!(s > exit::SERVICE_MAX, "{s} is in the service's range");
            assert!(exit::TABLE.iter().any(|(lo, hi, _)| lo == hi && *lo == s), "{s} is not in the table");
        }
        assert_eq!(exit::describe(2), exit::TABLE[0].2);
        assert_eq!(exit::describe(exit::USAGE), "bad command line");
        assert_eq!(exit::describe(143), "killed by a signal (128 + its number)");
        assert_eq!(exit::describe(100), "not a status Skiff gives");
    }

    #[test]
    fn argument_layouts_are_stable() {
        assert_eq!(size_of::<WalltimeArgs>(), 8);
        assert_eq!(size_of::<PollArgs>(), 16);
        assert_eq!(offset_of!(PollArgs, ready), 8);
        assert_eq!(size_of::<ExitArgs>(), 8);
        assert_eq!(size_of::<AbortArgs>(), 16);
        assert_eq!(offset_of!(AbortArgs, message), 8);
        assert_eq!(size_of::<FaultFrame>(), 64);
        assert_eq!(offset_of!(FaultFrame, vector), 8);
        assert_eq!(offset_of!(FaultFrame, rip), 24);
        assert_eq!(offset_of!(FaultFrame, ss), 56);
    }

    #[test]
    fn boot_info_has_no_padding() {
        // The tender copies it into guest memory as plain bytes.
        let fields = 8 + 4 + 4 + 8 * 8 + 4 + 4 + 8 + 4 + 4;
        assert_eq!(offset_of!(BootInfo, devices), fields);
        assert_eq!(size_of::<DeviceInfo>(), 4 + 4 + DEVICE_NAME_MAX + 32);
        assert_eq!(size_of::<BootInfo>(), fields + MAX_DEVICES * size_of::<DeviceInfo>() + 8);
    }

    #[test]
    fn boot_info_layout_is_stable() {
        assert_eq!(offset_of!(BootInfo, abi_version), 8);
        assert_eq!(offset_of!(BootInfo, mem_size), 16);
        assert_eq!(offset_of!(BootInfo, tsc_hz), 40);
        assert_eq!(offset_of!(BootInfo, shared), 64);
        assert_eq!(offset_of!(BootInfo, argc), 80);
        assert_eq!(offset_of!(BootInfo, page_table_root), 88);
        assert_eq!(offset_of!(BootInfo, devices), 104);
        assert_eq!(size_of::<DeviceInfo>(), 72);
        assert_eq!(offset_of!(BootInfo, hypercall), 104 + 72 * MAX_DEVICES);
        assert_eq!(size_of::<BootInfo>(), 112 + 72 * MAX_DEVICES);
        assert!(size_of::<BootInfo>() as u64 <= layout::PAGE_SIZE);
        assert_eq!(align_of::<BootInfo>(), 8);
    }

    #[test]
    fn shared_area_offsets_match_constants() {
        assert_eq!(offset_of!(SharedArea, console_head), SHARED_CONSOLE_HEAD);
        assert_eq!(offset_of!(SharedArea, console_tail), SHARED_CONSOLE_TAIL);
        assert_eq!(offset_of!(SharedArea, tsc_ring3_entry), SHARED_TSC_RING3_ENTRY);
        assert_eq!(offset_of!(SharedArea, tsc_main), SHARED_TSC_MAIN);
        assert_eq!(offset_of!(SharedArea, stop_requested), SHARED_STOP_REQUESTED);
        assert_eq!(offset_of!(SharedArea, spin_found), SHARED_SPIN_FOUND);
        assert_eq!(offset_of!(SharedArea, spin_missed), SHARED_SPIN_MISSED);
        assert_eq!(offset_of!(SharedArea, console), SHARED_CONSOLE_DATA);
        assert!(CONSOLE_RING_SIZE.is_power_of_two());
    }

    #[test]
    fn manifest_note_layout() {
        use manifest::*;
        assert_eq!(size_of::<ManifestDevice>(), 40);
        assert_eq!(DESC_SIZE, 8 + 40 * MAX_DEVICES);
        assert_eq!(offset_of!(ManifestNote, desc), 20);
        assert_eq!(size_of::<ManifestNote>() % 4, 0);
        let note = ManifestNote::new(&[(DeviceKind::Net, "service", FLAG_OUTBOUND), (DeviceKind::Block, "disk", 0)]);
        assert_eq!(note.desc.device_count, 2);
        assert_eq!(note.desc.abi_version, ABI_VERSION);
        assert_eq!(device_name(&note.desc.devices[0].name), Some("service"));
        assert_eq!(note.desc.devices[1].kind, DeviceKind::Block as u32);
        assert_eq!(note.desc.devices[0].flags, FLAG_OUTBOUND);
    }

    #[test]
    #[should_panic(expected = "duplicate device name")]
    fn manifest_rejects_duplicates() {
        let _ = manifest::ManifestNote::new(&[(DeviceKind::Net, "a", 0), (DeviceKind::Net, "a", 0)]);
    }

    #[test]
    fn hypercall_numbers_round_trip() {
        for call in Hypercall::ALL {
            assert_eq!(Hypercall::from_number(call as u16), Some(call));
            assert!(call.port() < HYPERCALL_PORT_BASE + HYPERCALL_PORT_COUNT);
            assert_ne!(call.port(), FAULT_PORT);
        }
        assert_eq!(Hypercall::from_number(HYPERCALL_PORT_COUNT), None);
    }

    #[test]
    fn net_layouts_and_info_round_trip() {
        assert_eq!(size_of::<NetNotifyArgs>(), 8);
        assert_eq!(size_of::<NetNotifyArgs>(), 8);
        let info = NetInfo { mac: [2, 0, 0, 1, 2, 3], mtu: 1500, ring: 0x3f0_0000, slots: 256, spin_micros: 20 };
        assert_eq!(NetInfo::decode(&info.encode()), info);
        assert_eq!(ring::ring_bytes(256), 4096 + 256 * 2048);
    }

    #[test]
    fn abort_reasons_map_to_distinct_statuses() {
        assert_eq!(AbortReason::from_raw(1), Some(AbortReason::Panic));
        assert_eq!(AbortReason::from_raw(0), None);
        assert_ne!(AbortReason::Panic.status(), AbortReason::OutOfMemory.status());
        const { assert!(exit::SERVICE_MAX < exit::PANIC) };
    }
}
