//! The virtio platform: the runtime under a standard hypervisor (QEMU
//! microvm, Firecracker, Cloud Hypervisor), entered through the PVH entry
//! ([`crate::arch::pvh`]) instead of the tender's.
//!
//! The ring-0 trampoline has built the page tables, loaded the GDT, the
//! PVH TSS and the IDT, and dropped to ring 3 in [`skiff_rt_pvh_main`] with
//! the PVH start info's address and the memory size. Everything here runs
//! in ring 3:
//!
//! - console: the 16550 UART on COM1, behind a [`SerialBuffer`] that goes
//!   out when full, when the guest idles, exits, panics or faults;
//! - exit: the status written to QEMU's `isa-debug-exit` port (0xf4); QEMU
//!   then exits with `(status << 1) | 1`. Without that device the guest
//!   prints the status and powers off (see [`end`]);
//! - clock: the TSC, its frequency and the wall clock from kvmclock (the
//!   trampoline registers its structures); without kvmclock the frequency
//!   comes from CPUID (the hypervisor leaf 0x40000010, else leaf 0x15) or
//!   is measured against the PIT's channel 0, and the wall clock comes
//!   from the CMOS real-time clock (the UNIX epoch without one);
//! - idle: waits for the next timer deadline on the TSC or a NIC's
//!   interrupt (see [`Virtio::poll`]);
//! - entropy: virtio-rng seeds the pool when the CPU has no RDSEED or
//!   RDRAND (or always, with `skiff.entropy=virtio-rng`);
//! - devices ([`devices`]): virtio-mmio windows from the command line
//!   (`virtio_mmio.device=`) or microvm's fixed slots; a virtio-net device
//!   for each NIC the manifest declares, lent through [`Env::take_net`],
//!   its interrupt routed through the I/O APIC so a frame ends the idle.
//!   A declared NIC without a device is refused at boot, status 104;
//!   a virtio-blk device for each disk it declares (matched by serial
//!   number, else in order; [`crate::vdisk`]), lent through
//!   [`Env::take_block`], polled. A declared disk without a device is
//!   refused at boot the same way.

use crate::arch::cpu::{inb, outb, outw, rdtsc};
use crate::arch::pvh::DEBUG_EXIT_PORT;
use crate::console::{Console, SerialBuffer};
use crate::env::{Env, split_command_line};
use crate::executor::Executor;
use crate::fault::{MemoryMap, Region};
use crate::logger::LOGGER;
use crate::time::{Calibration, TscScale};
use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::time::Duration;
use skiff_abi::{ARGS_MAX, AbortReason, DeviceKind, FaultFrame, exit as status, manifest};

mod devices;
mod pci;

/// COM1's base port.
const COM1: u16 = 0x3f8;
/// Line status register: transmit holding register (and FIFO) empty.
const LSR_THRE: u8 = 0x20;
/// The 16550's transmit FIFO.
const FIFO_SIZE: usize = 16;

unsafe extern "C" {
    static skiff_sup_text_end: u8;
    static skiff_sup_data_end: u8;
    static skiff_text_start: u8;
    static skiff_text_end: u8;
    static skiff_rodata_start: u8;
    static skiff_rodata_end: u8;
    static skiff_data_start: u8;
    static skiff_data_end: u8;
    static skiff_stack_bottom: u8;
    static skiff_stack_top: u8;
    static skiff_pvh_tables: u8;
    static skiff_pvh_tables_end: u8;
    static skiff_pvh_small_pages_end: u8;
    static skiff_pvh_large_start: u8;
    static skiff_manifest_note: u8;
    static skiff_manifest_note_end: u8;
}

fn addr(symbol: &u8) -> u64 {
    symbol as *const u8 as u64
}

fn serial_init() {
    outb(COM1 + 1, 0x00); // no interrupts
    outb(COM1 + 3, 0x03); // 8 bits, no parity, one stop bit
    outb(COM1 + 2, 0x07); // FIFOs on and cleared
}

/// Sends `bytes` on COM1: up to a FIFO's worth each time the transmitter
/// is empty, so nothing is dropped when the host reads slowly. A port
/// that never reports empty (no UART) is given up on after a while rather
/// than hanging the guest.
fn serial_send(bytes: &[u8]) {
    for chunk in bytes.chunks(FIFO_SIZE) {
        let mut tries = 0u32;
        while inb(COM1 + 5) & LSR_THRE == 0 && tries < 1_000_000 {
            tries += 1;
            core::hint::spin_loop();
        }
        for &b in chunk {
            outb(COM1, b);
        }
    }
}

unsafe extern "C" {
    /// The supervisor's idle call (`arch::pvh`): sleeps until the TSC
    /// reaches `high:low` or an interrupt comes.
    fn skiff_pvh_idle(low: u32, high: u32);
    /// The supervisor's halt call: stops the vCPU for good.
    fn skiff_pvh_halt() -> !;
}

/// Halts the vCPU for good.
fn halt() -> ! {
    // SAFETY: the supervisor's halt call takes no argument and never
    // returns.
    unsafe { skiff_pvh_halt() }
}

/// Ends the guest with `code` through `isa-debug-exit`, after the console.
/// Without that device the status goes to the console and the guest
/// powers off the ways other VMMs offer, then halts.
fn end(code: u8) -> ! {
    LOGGER.flush_console();
    outb(DEBUG_EXIT_PORT, code);
    let mut line = LineBuf::new();
    let _ = writeln!(
        line,
        "skiff: exit status {code} (this VM has no isa-debug-exit device at port {DEBUG_EXIT_PORT:#x} to pass it \
         on: QEMU -device isa-debug-exit,iobase=0xf4,iosize=4); powering off"
    );
    serial_send(line.as_bytes());
    // S5 through PM1a control on QEMU's pc and q35 (their `_S5` sleep type
    // is 0; SLP_EN is bit 13).
    outw(ACPI_PM1A_CONTROL, 1 << 13);
    // Cloud Hypervisor's ACPI shutdown register: sleep type 5, SLP_EN.
    outb(CH_SHUTDOWN_PORT, (5 << 2) | (1 << 5));
    // An i8042 reset pulse, how Firecracker's guests end.
    outb(I8042_COMMAND, 0xfe);
    serial_send(b"skiff: the VM did not power off; halting\n");
    halt()
}

/// PM1a control block of QEMU's pc and q35 ACPI (as their firmware sets
/// it up).
const ACPI_PM1A_CONTROL: u16 = 0x604;
/// Cloud Hypervisor's ACPI shutdown device.
const CH_SHUTDOWN_PORT: u16 = 0x3c0;
/// The i8042 keyboard controller's command port.
const I8042_COMMAND: u16 = 0x64;

/// Ends the guest with the service's `status` (`0..=99`).
pub fn exit(status: u8) -> ! {
    end(status)
}

/// Ends the guest for `reason`: the same line the tender prints, on the
/// serial port, and the reason's status.
pub fn abort(reason: AbortReason, message: &str) -> ! {
    LOGGER.flush_console();
    serial_send(b"skiff: guest aborted (");
    serial_send(reason.describe().as_bytes());
    serial_send(b"): ");
    serial_send(message.as_bytes());
    serial_send(b"\n");
    end(reason.status())
}

/// A fixed buffer for lines written where the heap may be unusable.
struct LineBuf {
    bytes: [u8; 2048],
    len: usize,
}

impl LineBuf {
    const fn new() -> LineBuf {
        LineBuf { bytes: [0; 2048], len: 0 }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// The memory map the trampoline built, from the linker's symbols.
fn regions() -> [Region; 7] {
    let page_up = |a: u64| a.next_multiple_of(4096);
    let r =
        |start: u64, end: u64, write, exec, user, what| Region { start, end: page_up(end), write, exec, user, what };
    // SAFETY: these are linker symbols whose addresses are used, never
    // their contents.
    unsafe {
        [
            r(0x10_0000, addr(&skiff_sup_text_end), false, true, false, "code of the supervisor"),
            r(0x10_2000, addr(&skiff_sup_data_end), true, false, false, "data of the supervisor"),
            r(addr(&skiff_text_start), addr(&skiff_text_end), false, true, true, "code of the image"),
            r(addr(&skiff_rodata_start), addr(&skiff_rodata_end), false, false, true, "read-only data of the image"),
            r(addr(&skiff_data_start), addr(&skiff_data_end), true, false, true, "data of the image"),
            r(addr(&skiff_stack_bottom), addr(&skiff_stack_top), true, false, true, "ring-3 stack"),
            r(addr(&skiff_pvh_tables), addr(&skiff_pvh_tables_end), true, false, false, "page tables"),
        ]
    }
}

/// Where the supervisor sends a CPU exception under the PVH entry (on a
/// stack of its own): the report on the serial port, status 102.
#[unsafe(no_mangle)]
extern "C" fn skiff_rt_pvh_fault(frame: *const FaultFrame) -> ! {
    // SAFETY: `skiff_pvh_fault_entry` pushed a whole FaultFrame and passes
    // its address.
    let frame = unsafe { frame.read() };
    LOGGER.flush_console();
    let regions = regions();
    // SAFETY: a linker symbol's address.
    let guard = unsafe { addr(&skiff_stack_bottom) } - 4096;
    let map = MemoryMap { regions: &regions, guard, mem_size: MEM_SIZE.load(core::sync::atomic::Ordering::Relaxed) };
    let mut line = LineBuf::new();
    let _ = line.write_str("skiff: ");
    let _ = crate::fault::describe(&mut line, &frame, &map);
    let _ = line.write_str("\n");
    serial_send(line.as_bytes());
    end(status::CPU_EXCEPTION)
}

/// The memory size, for fault reports (written once at boot).
static MEM_SIZE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Memory the hypervisor writes: kvmclock's time info
/// (`pvclock_vcpu_time_info`, 32 bytes) and wall clock
/// (`pvclock_wall_clock`, 12 bytes). The trampoline hands their addresses
/// to KVM; both stay zero elsewhere.
#[repr(C, align(64))]
pub struct KvmClockArea(core::cell::UnsafeCell<[u32; 8]>);

// SAFETY: written only by the hypervisor, read with volatile loads by the
// one vCPU.
unsafe impl Sync for KvmClockArea {}

#[unsafe(export_name = "skiff_kvmclock")]
static KVMCLOCK: KvmClockArea = KvmClockArea(core::cell::UnsafeCell::new([0; 8]));
#[unsafe(export_name = "skiff_kvm_wall_clock")]
static KVM_WALL_CLOCK: KvmClockArea = KvmClockArea(core::cell::UnsafeCell::new([0; 8]));

/// Reads a kvmclock structure consistently: its first word is a version
/// the hypervisor makes odd while it writes.
fn read_versioned(area: &KvmClockArea) -> Option<[u32; 8]> {
    let ptr = area.0.get().cast::<u32>();
    for _ in 0..1000 {
        // SAFETY: the area is 32 aligned bytes of this image; the
        // hypervisor writes it, so every read is volatile.
        let read = |i: usize| unsafe { ptr.add(i).read_volatile() };
        let version = read(0);
        if version == 0 {
            return None;
        }
        if version & 1 == 1 {
            continue;
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        let words = core::array::from_fn(read);
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        if read(0) == version {
            return Some(words);
        }
    }
    None
}

/// The TSC frequency and the wall clock (ns since the epoch, and the TSC
/// value it belongs to) from kvmclock, if the hypervisor keeps one.
fn kvmclock() -> Option<(u64, u64, u64)> {
    let time = read_versioned(&KVMCLOCK)?;
    let tsc_timestamp = u64::from(time[2]) | u64::from(time[3]) << 32;
    let system_time = u64::from(time[4]) | u64::from(time[5]) << 32;
    let mul = u128::from(time[6]);
    let shift = (time[7] & 0xff) as u8 as i8;
    if mul == 0 || !(-31..=31).contains(&shift) {
        return None;
    }
    // ns = ((ticks << shift) * mul) >> 32, so Hz = 1e9 * 2^32 / (mul << shift).
    let scaled = 1_000_000_000u128 << 32;
    let hz = if shift >= 0 { scaled / (mul << shift) } else { (scaled << -shift) / mul };
    let wall =
        read_versioned(&KVM_WALL_CLOCK).map_or(0, |w| u64::from(w[1]) * 1_000_000_000 + u64::from(w[2]) + system_time);
    Some((u64::try_from(hz).ok()?, wall, tsc_timestamp))
}

/// The wall clock from the CMOS real-time clock (whole seconds: two equal
/// reads outside an update), or `None` without one.
fn cmos_wall_nanos() -> Option<u64> {
    const INDEX: u16 = 0x70;
    const DATA: u16 = 0x71;
    // Bit 7 of the index keeps NMIs masked, as firmware leaves it.
    let read = |reg: u8| {
        outb(INDEX, 0x80 | reg);
        inb(DATA)
    };
    let updating = || read(0x0a) & 0x80 != 0;
    let snapshot = || crate::time::RtcRegisters {
        seconds: read(0x00),
        minutes: read(0x02),
        hours: read(0x04),
        day: read(0x07),
        month: read(0x08),
        year: read(0x09),
        century: read(0x32),
        status_b: read(0x0b),
    };
    // An absent clock reads all ones and never stops "updating": bounded.
    let mut last = None;
    for _ in 0..1000 {
        if updating() {
            continue;
        }
        let now = snapshot();
        if last == Some(now) {
            return now.unix_seconds().map(|s| s * 1_000_000_000);
        }
        last = Some(now);
    }
    None
}

/// The TSC frequency and where it came from.
fn tsc_hz() -> Option<(u64, &'static str)> {
    use core::arch::x86_64::__cpuid;
    let hypervisor = __cpuid(1).ecx & (1 << 31) != 0;
    if hypervisor && __cpuid(0x4000_0000).eax >= 0x4000_0010 {
        let khz = u64::from(__cpuid(0x4000_0010).eax);
        if khz != 0 {
            return Some((khz * 1000, "CPUID leaf 0x40000010"));
        }
    }
    if __cpuid(0).eax >= 0x15 {
        let leaf = __cpuid(0x15);
        if leaf.eax != 0 && leaf.ebx != 0 && leaf.ecx != 0 {
            return Some((u64::from(leaf.ecx) * u64::from(leaf.ebx) / u64::from(leaf.eax), "CPUID leaf 0x15"));
        }
    }
    pit_calibrate().map(|hz| (hz, "the PIT"))
}

/// Measures the TSC against 10 ms of the PIT's channel 0 (1.193182 MHz),
/// reading its count back (microvm has no port 0x61 to gate channel 2;
/// interrupts are off in ring 3, so channel 0's IRQ 0 goes nowhere).
fn pit_calibrate() -> Option<u64> {
    const PIT_HZ: u64 = 1_193_182;
    const TICKS: u16 = (PIT_HZ / 100) as u16;
    let count = || {
        outb(0x43, 0x00); // latch channel 0
        let low = inb(0x40);
        let high = inb(0x40);
        u16::from_le_bytes([low, high])
    };
    outb(0x43, 0x30); // channel 0, low then high byte, mode 0
    outb(0x40, 0xff);
    outb(0x40, 0xff);
    let first = count();
    let start = rdtsc();
    loop {
        let elapsed = first.wrapping_sub(count());
        if (TICKS..0x8000).contains(&elapsed) {
            return Some((rdtsc() - start) * PIT_HZ / u64::from(elapsed));
        }
        // About 10 s even at 100 GHz: the counter does not run (no PIT).
        if rdtsc() - start > 1 << 40 {
            return None;
        }
    }
}

/// `hvm_start_info`, the part the runtime reads.
#[repr(C)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// Low memory, where the trampoline maps the start info and command line.
const LOW_END: u64 = 0x10_0000;

/// The command line the start info points at (mapped read-only by the
/// trampoline: three pages from its first), up to its NUL.
fn command_line(info: &StartInfo) -> &'static [u8] {
    let at = info.cmdline_paddr;
    if !(4096..LOW_END).contains(&at) {
        return &[];
    }
    let mapped_end = (at & !0xfff) + 3 * 4096;
    let len = (mapped_end.min(LOW_END) - at).min(ARGS_MAX as u64) as usize;
    // SAFETY: [at, at + len) lies in the pages the trampoline mapped
    // read-only for ring 3, which nothing writes while the guest runs.
    let bytes = unsafe { core::slice::from_raw_parts(at as *const u8, len) };
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(len);
    &bytes[..end]
}

/// The NICs and the disks the image's manifest declares, by name; a
/// device of another kind is an error naming it.
fn declared_devices() -> Result<(Vec<String>, Vec<String>), String> {
    // SAFETY: linker symbols around the manifest note.
    let (start, end) = unsafe { (addr(&skiff_manifest_note), addr(&skiff_manifest_note_end)) };
    if end - start < core::mem::size_of::<manifest::ManifestNote>() as u64 {
        return Ok((Vec::new(), Vec::new()));
    }
    // SAFETY: the note section holds one ManifestNote (4-byte aligned, in
    // the read-only data), emitted by `#[skiff::main]`.
    let note = unsafe { &*(start as *const manifest::ManifestNote) };
    let count = (note.desc.device_count as usize).min(note.desc.devices.len());
    let (mut nics, mut disks) = (Vec::new(), Vec::new());
    for d in &note.desc.devices[..count] {
        let name = manifest::device_name(&d.name).unwrap_or("?");
        match DeviceKind::from_raw(d.kind) {
            Some(DeviceKind::Net) => nics.push(String::from(name)),
            Some(DeviceKind::Block) => disks.push(String::from(name)),
            kind => {
                let kind = kind.map_or("device", DeviceKind::name);
                return Err(format!(
                    "this image declares the {kind} device \"{name}\"; virtio-{kind} is not yet supported under a \
                     standard hypervisor: run it under skiff-tender"
                ));
            }
        }
    }
    Ok((nics, disks))
}

/// How long a disk request waits for its virtio-blk device before the disk
/// counts as gone (a host flush can take seconds; the tender waits as long
/// as the host takes).
const DISK_PATIENCE: Duration = Duration::from_secs(60);

fn fail(message: &str) -> ! {
    abort(AbortReason::Other, message)
}

/// The first Rust code under the PVH entry, in ring 3.
#[unsafe(no_mangle)]
extern "C" fn skiff_rt_pvh_main(start_info: u64, mem_size: u64, tsc_ring0: u64, can_sleep: u64) -> ! {
    let tsc_entry = rdtsc();
    crate::platform::enter_virtio();
    MEM_SIZE.store(mem_size, core::sync::atomic::Ordering::Relaxed);
    serial_init();
    LOGGER.install(Console::Serial(SerialBuffer::new(serial_send)));
    // `set_logger` fails only if a logger is already set: this runs once.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);

    if !(4096..LOW_END).contains(&start_info) {
        fail("the PVH start info is not in low memory, where this runtime reads it");
    }
    // SAFETY: the trampoline checked the magic and mapped the start info's
    // pages read-only for ring 3.
    let info = unsafe { &*(start_info as *const StartInfo) };

    let (tsc_hz, source, wall_nanos, tsc_at_wall) = match kvmclock() {
        Some((hz, wall, tsc)) => (hz, "kvmclock", wall, tsc),
        None => match tsc_hz() {
            Some((hz, source)) => {
                let (wall, tsc) = cmos_wall_nanos().map_or((0, tsc_entry), |w| (w, rdtsc()));
                (hz, source, wall, tsc)
            }
            None => fail(
                "the TSC frequency is unknown: no kvmclock, no CPUID leaf gives it, and there is no PIT to \
                 measure it against",
            ),
        },
    };
    let Some(scale) = TscScale::new(tsc_hz) else {
        fail("the TSC frequency is out of range");
    };
    crate::time::install(&Calibration { tsc_at_boot: tsc_entry, scale, wall_nanos, tsc_at_wall });

    // The heap the trampoline mapped for ring 3: 2 MiB pages from the
    // first 2 MiB boundary past the image to the last whole one, or, when
    // memory ends before that, 4 KiB pages from the image to its end (as
    // far as the page tables reach).
    // SAFETY: linker symbols' addresses.
    let (image_end, large_start, small_end) =
        unsafe { (addr(&skiff_pvh_tables_end), addr(&skiff_pvh_large_start), addr(&skiff_pvh_small_pages_end)) };
    let large_end = mem_size & !0x1f_ffff;
    let (heap_start, heap_end) =
        if large_end > large_start { (large_start, large_end) } else { (image_end, mem_size.min(small_end)) };
    // SAFETY: [heap_start, heap_end) is mapped writable for ring 3 and
    // nothing else uses it.
    if !unsafe { crate::heap::init(heap_start as usize, heap_end as usize) } {
        abort(AbortReason::OutOfMemory, "the heap is too small to start; give the VM more memory (-m)");
    }

    let line = command_line(info);
    let (declared, disks) = declared_devices().unwrap_or_else(|e| fail(&e));
    let mut args = match split_command_line(line) {
        Ok(args) => args,
        Err(e) => fail(&format!("bad command line from the hypervisor: {e}")),
    };
    // `skiff.log=LEVEL` stands for the tender's `--log LEVEL`;
    // `skiff.entropy=virtio-rng` seeds the entropy pool from virtio-rng
    // even when the CPU has RDSEED or RDRAND.
    let mut bad_level = None;
    let mut entropy = None;
    args.retain(|a| {
        if let Some(source) = a.strip_prefix("skiff.entropy=") {
            entropy = Some(String::from(source));
            return false;
        }
        match a.strip_prefix("skiff.log=") {
            Some(level) => {
                match level.parse::<log::LevelFilter>() {
                    Ok(filter) => log::set_max_level(filter),
                    Err(_) => bad_level = Some(String::from(level)),
                }
                false
            }
            None => true,
        }
    });
    if let Some(level) = bad_level {
        fail(&format!("skiff.log={level}: not a log level (off, error, warn, info, debug, trace)"));
    }
    let prefer_rng = match entropy.as_deref() {
        None | Some("cpu") => false,
        Some("virtio-rng") => true,
        Some(other) => fail(&format!("skiff.entropy={other}: not an entropy source (cpu, virtio-rng)")),
    };
    let tsc_probe = rdtsc();
    // The line is UTF-8: `split_command_line` checked it.
    let patience_ticks =
        u64::try_from(DISK_PATIENCE.as_nanos() * u128::from(tsc_hz) / 1_000_000_000).unwrap_or(u64::MAX);
    let patience = || -> skiff_virtio::blk::Patience {
        let mut start = 0;
        Box::new(move |polls| {
            let now = rdtsc();
            if polls == 0 {
                start = now;
            }
            now.wrapping_sub(start) < patience_ticks
        })
    };
    let cmdline = core::str::from_utf8(line).unwrap_or("");
    let mut devices = match devices::Devices::probe(cmdline, &declared, &disks, &patience) {
        Ok(devices) => devices,
        Err(e) => fail(&e),
    };
    match devices.take_rng() {
        Some(rng) => crate::random::install_device(rng, prefer_rng),
        None if prefer_rng => fail(
            "skiff.entropy=virtio-rng, but the VM has no virtio-rng device (QEMU: -device virtio-rng-device, or virtio-rng-pci on q35)",
        ),
        None => {}
    }
    let devices = Rc::new(devices);
    let tsc_probed = rdtsc();
    let ring0_micros = scale.ticks_to_nanos(tsc_entry - tsc_ring0) / 1000;
    let ring3_micros = scale.ticks_to_nanos(rdtsc() - tsc_entry) / 1000;
    let probe_micros = scale.ticks_to_nanos(tsc_probed - tsc_probe) / 1000;
    log::debug!(
        "PVH entry: {} MiB of memory ({} KiB of heap), TSC at {} kHz from {source}; boot: {ring0_micros} us \
         in ring 0, {ring3_micros} us in ring 3 before main ({probe_micros} us of it finding devices)",
        mem_size >> 20,
        (heap_end - heap_start) >> 10,
        tsc_hz / 1000
    );

    let executor = Executor::new();
    let lender = devices.clone();
    let disk_lender = devices.clone();
    let env = Env::new(args, executor.spawner())
        .with_net(Box::new(move |name| lender.take_net(name)))
        .with_block(Box::new(move |name| disk_lender.take_block(name)));
    let mut platform = Virtio { tsc_hz, can_sleep: can_sleep != 0, devices };
    match crate::start::run_main(executor, env, &mut platform) {
        Ok(status) => exit(status.code()),
        Err(e) => abort(AbortReason::Deadlock, &format!("{e}")),
    }
}

/// The executor's view of this platform.
struct Virtio {
    tsc_hz: u64,
    /// The supervisor's idle call can sleep on the APIC's TSC-deadline
    /// timer; otherwise the guest waits on the TSC in ring 3.
    can_sleep: bool,
    devices: Rc<devices::Devices>,
}

/// How often an idle guest looks at a NIC whose interrupt could not be
/// routed, while a task waits on it.
const UNROUTED_WAKE: Duration = Duration::from_millis(1);

/// How long an idle guest with a NIC to wait on watches its receive queues
/// before it sleeps: the tender's default `--guest-spin`. Under load the
/// next frame usually comes sooner, and catching it here saves the idle
/// call, the device's interrupt and the acknowledgement (each a VM exit,
/// the last two to QEMU's own process).
const GUEST_SPIN: Duration = Duration::from_micros(50);

/// Waits shorter than this spin on the TSC: the idle call costs a few
/// dozen emulated ring-0 instructions.
const SPIN_BELOW: Duration = Duration::from_micros(200);

/// Sleeps in the supervisor's idle call until the TSC reaches `deadline`
/// or an interrupt comes.
fn idle_until(deadline: u64) {
    // SAFETY: the supervisor's idle call touches no ring-3 memory and
    // returns like a C function.
    unsafe { skiff_pvh_idle(deadline as u32, (deadline >> 32) as u32) }
}

impl crate::executor::Platform for Virtio {
    /// Idles until a NIC in `interest` has a frame or `timeout` passes.
    /// Frames already in a receive queue end it at once, and for
    /// [`GUEST_SPIN`] the guest watches the queues before it sleeps (both
    /// without a VM exit). Then the console goes out and the guest sleeps
    /// in the supervisor's idle call until the deadline or a device
    /// interrupt (or waits on the TSC where that cannot sleep, and for
    /// short waits). Before each sleep the NICs ask for an interrupt at
    /// their next frame and have theirs acknowledged, then their queues are
    /// looked at again, so a frame that lands after the look raises the
    /// line anew and ends the sleep; a wake looks at the queues first and
    /// acknowledges nothing when a frame is there. Out of this call the
    /// NICs raise no interrupts: the executor looks at their queues between
    /// rounds of tasks.
    fn poll(&mut self, timeout: Option<Duration>, interest: u64) -> u64 {
        let start = rdtsc();
        let ticks =
            |d: Duration| u64::try_from(d.as_nanos() * u128::from(self.tsc_hz) / 1_000_000_000).unwrap_or(u64::MAX);
        let deadline = timeout.map_or(u64::MAX, |t| start.saturating_add(ticks(t)));
        if interest != 0 {
            let until = start.saturating_add(ticks(GUEST_SPIN)).min(deadline);
            loop {
                let ready = self.devices.ready_now() & interest;
                if ready != 0 {
                    return ready;
                }
                if rdtsc() >= until {
                    break;
                }
                core::hint::spin_loop();
            }
        }
        LOGGER.flush_console();
        let sleep = self.can_sleep && timeout.is_none_or(|t| t >= SPIN_BELOW);
        let look_every = self.devices.needs_polling(interest).then(|| ticks(UNROUTED_WAKE));
        let ready = loop {
            let ready = self.devices.arm_and_ready(interest);
            if ready != 0 {
                break ready;
            }
            let now = rdtsc();
            if now >= deadline {
                break 0;
            }
            if sleep {
                idle_until(look_every.map_or(deadline, |t| deadline.min(now.saturating_add(t))));
                let ready = self.devices.ready_now() & interest;
                if ready != 0 {
                    break ready;
                }
            } else {
                core::hint::spin_loop();
            }
        };
        self.devices.disarm();
        ready
    }

    fn has_devices(&self) -> bool {
        self.devices.any()
    }

    fn ready_now(&mut self) -> u64 {
        self.devices.ready_now()
    }
}
