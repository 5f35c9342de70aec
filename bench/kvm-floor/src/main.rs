//! The KVM floor: the least a monitor must do to run a guest. Opens
//! /dev/kvm, creates a VM with `MEM` bytes of anonymous memory and one
//! vCPU, runs one instruction that exits (`out`), and tears everything
//! down. `boot` times hello's whole process against this one, built the
//! same way (release, static with musl: `scripts/build-tender`).
//!
//! `kvm-floor [MEM_MIB]` (default 64, the tender's default `--mem`);
//! exit status 0 when the guest's `out` reached us.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

/// Where the one instruction sits (guest physical, real mode).
const CODE: u64 = 0x1000;
/// The port the instruction writes.
const PORT: u16 = 0x10;

fn main() {
    let mib: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(64);
    match run(mib << 20) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("kvm-floor: {e}");
            std::process::exit(1);
        }
    }
}

fn run(size: u64) -> Result<(), String> {
    let kvm = Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(format!("mmap of {size} bytes: {}", std::io::Error::last_os_error()));
    }
    let code = [0xe6, PORT as u8, 0xf4]; // out PORT, al; hlt
    // SAFETY: CODE + 3 lies inside the mapping just made.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), (mem as *mut u8).add(CODE as usize), code.len()) };
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: size,
        userspace_addr: mem as u64,
        flags: 0,
    };
    // SAFETY: the region is our mapping, which outlives the VM (both end
    // with the process).
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    let mut sregs = vcpu.get_sregs().map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(|e| format!("KVM_SET_REGS: {e}"))?;
    match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
        VcpuExit::IoOut(PORT, _) => Ok(()),
        other => Err(format!("the guest exited with {other:?}, not its out to port {PORT:#x}")),
    }
}
