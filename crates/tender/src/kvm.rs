//! KVM: the virtual machine, its one vCPU, and the register state that
//! enters the guest directly in 64-bit long mode.
//!
//! One of the modules of the tender with `unsafe` code (with `process`,
//! `guest_memory`, `sys` and `tap`).

use crate::guest_memory::GuestMemory;
use crate::serve::VmFailure;
use kvm_bindings::{CpuId, Msrs, kvm_msr_entry, kvm_segment, kvm_userspace_memory_region, kvm_xcrs};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use std::io;

/// KVM could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// No `/dev/kvm`.
    #[error(
        "/dev/kvm does not exist: this machine offers no KVM. Run Skiff on a Linux host with \
         hardware virtualisation (or nested KVM) enabled and the kvm module loaded, or run the image \
         as a sandboxed process without a VM: --sandbox process"
    )]
    NoDevice,
    /// `/dev/kvm` exists but may not be opened.
    #[error(
        "permission denied opening /dev/kvm: add your user to the group owning it \
         (usually `sudo usermod -aG kvm $USER`, then log in again) or run as root; or run the image \
         as a sandboxed process without a VM: --sandbox process"
    )]
    Permission,
    /// Another error opening `/dev/kvm`.
    #[error("cannot open /dev/kvm: {0}")]
    Open(io::Error),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Ioctl {
        /// Which operation.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |e| KvmError::Ioctl { what, source: io::Error::from_raw_os_error(e.errno()) }
}

/// Why the vCPU stopped.
#[derive(Debug)]
pub enum Exit {
    /// `out` to `port`; `value` is the data if it was 4 bytes wide.
    IoOut {
        /// The port.
        port: u16,
        /// The 32-bit value, or `None` for another width.
        value: Option<u32>,
    },
    /// `in` from a port.
    IoIn(u16),
    /// The guest cannot go on (a triple fault, `hlt`, KVM's failure...).
    Failed(crate::serve::VmFailure),
    /// A signal interrupted the run.
    Interrupted,
    /// Process mode: the guest called the tender's hypercall entry with
    /// these registers (`edi`, `esi` for a well-behaved guest; all 64 bits
    /// are checked).
    Call {
        /// The call number.
        nr: u64,
        /// The argument's address.
        arg: u64,
    },
    /// Process mode: a CPU exception in the guest's code, as the kernel
    /// reported it (under KVM exceptions come as an `out` to the fault
    /// port).
    Fault(skiff_abi::FaultFrame),
}

/// Where a vCPU starts.
#[derive(Clone, Copy, Debug)]
pub enum Start {
    /// At the supervisor's entry, in ring 0.
    Ring0 {
        /// The entry (the image's `e_entry`).
        entry: u64,
    },
    /// In ring 3, as the supervisor's entry would leave it.
    Ring3(skiff_abi::ring3::Entry),
}

/// Features of the virtual CPU that the tender turned on.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuFeatures {
    /// Supervisor-mode execution prevention.
    pub smep: bool,
    /// Supervisor-mode access prevention.
    pub smap: bool,
    /// XCR0 value, if XSAVE-managed state (AVX) was enabled.
    pub xcr0: Option<u64>,
}

/// A VM with one vCPU.
pub struct Vm {
    _kvm: Kvm,
    _vm: VmFd,
    vcpu: VcpuFd,
    cpuid: CpuId,
}

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const CR4_OSXSAVE: u64 = 1 << 18;
const CR4_SMEP: u64 = 1 << 20;
const CR4_SMAP: u64 = 1 << 21;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
const MSR_IA32_TSC: u32 = 0x10;
const KVM_CPUID_FLAG_SIGNIFCANT_INDEX: u32 = 1;

/// The guest's CPUID table: only the leaves KVM consults to validate the
/// control registers, EFER and XCR0 the tender sets (feature flags for
/// NX, long mode, XSAVE, SMEP, SMAP, and the XSAVE state components),
/// copied from the host's own CPUID. Asking KVM for its full supported
/// table instead costs about 0.4 ms, a fifth of a boot. The guest's ring-3
/// code sees the host's CPUID anyway (CPUID is not filtered on PVM).
fn guest_cpuid() -> Result<CpuId, KvmError> {
    let leaf = |function: u32, index: u32, flags: u32| {
        let r = std::arch::x86_64::__cpuid_count(function, index);
        kvm_bindings::kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax: r.eax,
            ebx: r.ebx,
            ecx: r.ecx,
            edx: r.edx,
            padding: [0; 3],
        }
    };
    let max_basic = std::arch::x86_64::__cpuid(0).eax;
    let mut entries = vec![leaf(0, 0, 0), leaf(1, 0, 0)];
    if max_basic >= 7 {
        entries.push(leaf(7, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX));
    }
    if max_basic >= 0xd {
        for sub in 0..3 {
            entries.push(leaf(0xd, sub, KVM_CPUID_FLAG_SIGNIFCANT_INDEX));
        }
    }
    entries.push(leaf(0x8000_0000, 0, 0));
    entries.push(leaf(0x8000_0001, 0, 0));
    CpuId::from_entries(&entries)
        .map_err(|_| KvmError::Ioctl { what: "CPUID table", source: io::Error::from_raw_os_error(libc::E2BIG) })
}

impl Vm {
    /// The vCPU's file descriptor, for the seccomp allow-list (which lets
    /// `KVM_RUN` reach this descriptor alone).
    pub fn vcpu_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.vcpu.as_raw_fd()
    }

    /// Opens KVM, creates the VM with `mem` as its RAM at guest address 0,
    /// and creates the vCPU.
    pub fn new(mem: &GuestMemory) -> Result<Vm, KvmError> {
        let kvm = Kvm::new().map_err(|e| match e.errno() {
            libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::NoDevice,
            libc::EACCES | libc::EPERM => KvmError::Permission,
            errno => KvmError::Open(io::Error::from_raw_os_error(errno)),
        })?;
        let vm = kvm.create_vm().map_err(ioctl("VM creation"))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: mem.size(),
            userspace_addr: mem.host_base(),
        };
        // SAFETY: the region is the whole mapping owned by `mem`, which the
        // caller keeps alive for as long as the VM runs (the run loop holds
        // both); KVM only accesses it while the vCPU runs.
        unsafe { vm.set_user_memory_region(region) }.map_err(ioctl("memory registration"))?;
        let vcpu = vm.create_vcpu(0).map_err(ioctl("vCPU creation"))?;
        let cpuid = guest_cpuid()?;
        Ok(Vm { _kvm: kvm, _vm: vm, vcpu, cpuid })
    }

    fn cpuid_bit(&self, leaf: u32, subleaf: u32, reg: char, bit: u32) -> bool {
        self.cpuid.as_slice().iter().any(|e| {
            e.function == leaf
                && e.index == subleaf
                && (match reg {
                    'b' => e.ebx,
                    'c' => e.ecx,
                    _ => e.edx,
                }) & (1 << bit)
                    != 0
        })
    }

    /// Sets up the vCPU in 64-bit mode with paging on (`cr3` = page-table
    /// root), SSE enabled and `rdi` = `boot_info`, to start as `start`
    /// says: at the supervisor's entry in ring 0 with the boot GDT at `gdt`
    /// (kernel code at 0x08, data at 0x10), or straight in ring 3 with the
    /// image's own tables ([`skiff_abi::ring3`]).
    pub fn setup_long_mode(
        &mut self,
        start: Start,
        boot_info: u64,
        cr3: u64,
        gdt: (u64, u16),
    ) -> Result<CpuFeatures, KvmError> {
        self.vcpu.set_cpuid2(&self.cpuid).map_err(ioctl("CPUID setup"))?;
        let mut features =
            CpuFeatures { smep: self.cpuid_bit(7, 0, 'b', 7), smap: self.cpuid_bit(7, 0, 'b', 20), xcr0: None };
        let mut sregs = self.vcpu.get_sregs().map_err(ioctl("reading special registers"))?;
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x08,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        let data = kvm_segment { selector: 0x10, type_: 0x3, db: 1, l: 0, ..code };
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.gdt.base = gdt.0;
        sregs.gdt.limit = gdt.1;
        let (rip, rsp) = match start {
            Start::Ring0 { entry } => (entry, 0),
            Start::Ring3(r) => {
                // What the supervisor's `_start` leaves: its tables loaded,
                // ring 3's code and stack segments, the data segments null
                // (as `iretq` leaves them); interrupts off.
                sregs.cs = kvm_segment { selector: r.user_cs(), dpl: 3, ..code };
                sregs.ss = kvm_segment { selector: r.user_ss(), dpl: 3, ..data };
                let null = kvm_segment { selector: 0, present: 0, unusable: 1, ..data };
                (sregs.ds, sregs.es, sregs.fs, sregs.gs) = (null, null, null, null);
                sregs.gdt.base = r.gdt_base;
                sregs.gdt.limit = r.gdt_limit as u16;
                sregs.idt.base = r.idt_base;
                sregs.idt.limit = r.idt_limit as u16;
                // A busy 64-bit TSS, as `ltr` leaves it.
                sregs.tr = kvm_segment {
                    base: r.tss_base,
                    limit: r.tss_limit as u32,
                    selector: r.tss(),
                    type_: 0xb,
                    s: 0,
                    l: 0,
                    g: 0,
                    ..code
                };
                (r.entry, r.stack_top)
            }
        };
        sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
        sregs.cr3 = cr3;
        sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
        if features.smep {
            sregs.cr4 |= CR4_SMEP;
        }
        if features.smap {
            sregs.cr4 |= CR4_SMAP;
        }
        let xsave = self.cpuid_bit(1, 0, 'c', 26);
        if xsave {
            sregs.cr4 |= CR4_OSXSAVE;
        }
        sregs.efer = EFER_LME | EFER_LMA | EFER_NXE;
        self.vcpu.set_sregs(&sregs).map_err(ioctl("setting special registers"))?;
        if xsave {
            // x87 and SSE state always; AVX when the CPU has it. Ring-3 code
            // checks XCR0 (xgetbv) before using AVX.
            let xcr0 = if self.cpuid_bit(1, 0, 'c', 28) { 0b111 } else { 0b11 };
            let mut xcrs = kvm_xcrs { nr_xcrs: 1, ..Default::default() };
            xcrs.xcrs[0].xcr = 0;
            xcrs.xcrs[0].value = xcr0;
            if self.vcpu.set_xcrs(&xcrs).is_ok() {
                features.xcr0 = Some(xcr0);
            }
        }
        let regs = kvm_bindings::kvm_regs { rip, rsp, rdi: boot_info, rflags: 0x2, ..Default::default() };
        self.vcpu.set_regs(&regs).map_err(ioctl("setting registers"))?;
        Ok(features)
    }

    /// The guest's TSC frequency in Hz.
    pub fn tsc_hz(&self) -> Result<u64, KvmError> {
        let khz = self.vcpu.get_tsc_khz().map_err(ioctl("TSC frequency query"))?;
        Ok(u64::from(khz) * 1000)
    }

    /// The guest's current TSC value, if KVM lets us read it.
    pub fn guest_tsc(&self) -> Option<u64> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry { index: MSR_IA32_TSC, ..Default::default() }]).ok()?;
        match self.vcpu.get_msrs(&mut msrs) {
            Ok(1) => Some(msrs.as_slice()[0].data),
            _ => None,
        }
    }

    /// The guest's instruction and frame pointers (`rip`, `rbp`), for a
    /// profile's sample.
    pub fn ip_and_frame(&self) -> Option<(u64, u64)> {
        self.vcpu.get_regs().ok().map(|r| (r.rip, r.rbp))
    }

    /// Runs the vCPU until it exits.
    pub fn run(&mut self) -> Result<Exit, KvmError> {
        let exit = match self.vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                Exit::IoOut { port, value: <[u8; 4]>::try_from(data).ok().map(u32::from_le_bytes) }
            }
            Ok(VcpuExit::IoIn(port, _)) => Exit::IoIn(port),
            Ok(VcpuExit::MmioRead(addr, _)) => Exit::Failed(VmFailure::Unbacked { addr, write: false }),
            Ok(VcpuExit::MmioWrite(addr, _)) => Exit::Failed(VmFailure::Unbacked { addr, write: true }),
            Ok(VcpuExit::Hlt) => Exit::Failed(VmFailure::Halted),
            Ok(VcpuExit::Shutdown) => Exit::Failed(VmFailure::TripleFault),
            Ok(VcpuExit::FailEntry(reason, _)) => Exit::Failed(VmFailure::EntryFailed(reason)),
            Ok(VcpuExit::InternalError) => {
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so the
                // `internal` member of the union is the one KVM filled in.
                let suberror = unsafe { self.vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                Exit::Failed(VmFailure::Internal { suberror })
            }
            Ok(VcpuExit::Intr) => Exit::Interrupted,
            Ok(other) => Exit::Failed(VmFailure::UnexpectedExit(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
            Err(e) => return Err(ioctl("vCPU run")(e)),
        };
        Ok(exit)
    }
}
