//! The ring-0 supervisor: everything in a Skiff guest that runs in ring 0.
//!
//! It is hand-written assembly and nothing else, for two reasons. On the
//! PVM flavour of KVM, guest ring-0 code is emulated one instruction at a
//! time (about a microsecond each) by an emulator that does not know many
//! SSE instructions, so ring 0 must be short and SSE-free; and a tiny ring 0
//! is a tiny trusted base. A test disassembles the supervisor's segment and
//! fails on any SSE/AVX register.
//!
//! What it does:
//! - `_start` (the ELF entry, used by the tender): loads the GDT, TSS and
//!   IDT and `iretq`s to `skiff_user_entry` in ring 3 with the boot info in
//!   `rdi`. Eleven instructions.
//! - trap stubs, 16 bytes per vector at the fixed address 0x100000: push a
//!   dummy error code when the CPU pushes none, push the vector, and report
//!   the frame (plus `cr2`) on the fault port. The tender prints the report
//!   and ends the guest.
//! - `skiff_pvh_start`: the 32-bit PVH entry for standard hypervisors; see
//!   [`super::pvh`].
//!
//! The GDT, TSS (with the I/O permission bitmap that opens the hypercall
//! ports to ring 3) and IDT are assembled from constants: the stubs and the
//! TSS live at fixed addresses that the linker script asserts, so no
//! descriptor is computed at boot.

use skiff_abi::{FAULT_PORT, HYPERCALL_PORT_BASE, HYPERCALL_PORT_COUNT};

/// Address of the first trap stub (fixed by the linker script).
pub const TRAP_STUBS: u64 = 0x10_0000;
/// Address of the TSS (fixed by the linker script).
pub const TSS_ADDR: u64 = 0x10_2000;

/// Kernel code selector.
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data selector.
pub const KERNEL_DS: u16 = 0x10;
/// User data selector (RPL 3).
pub const USER_DS: u16 = 0x18 | 3;
/// User code selector (RPL 3).
pub const USER_CS: u16 = 0x20 | 3;
/// TSS selector.
pub const TSS_SEL: u16 = 0x28;

const TSS_BASE_SIZE: u64 = 104;
/// First byte of the I/O bitmap that opens ports, and how many open bytes:
/// every hypercall port plus the three ports above the last one (a 32-bit
/// `out` checks the bits of four consecutive ports).
const IOPB_OPEN_FIRST: u64 = HYPERCALL_PORT_BASE as u64 / 8;
const IOPB_OPEN_BYTES: u64 = (HYPERCALL_PORT_COUNT as u64 + 3).div_ceil(8);
/// The bitmap ends with one all-ones byte, as the architecture requires.
const IOPB_SIZE: u64 = IOPB_OPEN_FIRST + IOPB_OPEN_BYTES + 1;
const TSS_LIMIT: u64 = TSS_BASE_SIZE + IOPB_SIZE - 1;

const _: () = {
    assert!(HYPERCALL_PORT_BASE.is_multiple_of(8));
    // The fault port must stay closed to ring 3.
    assert!((FAULT_PORT as u64) < IOPB_OPEN_FIRST * 8);
};

/// 64-bit available TSS descriptor, low and high quadwords.
const fn tss_descriptor(base: u64, limit: u64) -> (u64, u64) {
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    (low, base >> 32)
}

const TSS_DESC: (u64, u64) = tss_descriptor(TSS_ADDR, TSS_LIMIT);

/// TSS selector of the PVH entry (standard hypervisors).
pub const PVH_TSS_SEL: u16 = 0x38;
/// Offset of the PVH entry's TSS from the tender's, in the same section.
const PVH_TSS_OFFSET: u64 = (TSS_LIMIT + 1).next_multiple_of(16);
/// Address of the PVH entry's TSS.
pub const PVH_TSS_ADDR: u64 = TSS_ADDR + PVH_TSS_OFFSET;
/// Under the PVH entry ring 3 drives the platform's ports itself. The
/// bitmap opens these (first port, count), and nothing else: no hypercall
/// port.
const PVH_PORTS: [(u16, u16); 9] = [
    (0x40, 1),  // PIT channel 0, for calibrating the TSC
    (0x43, 1),  // PIT command
    (0x64, 1),  // i8042 command: a reset pulse ends a Firecracker VM
    (0x70, 2),  // CMOS RTC index and data: the wall clock without kvmclock
    (0xf4, 4),  // QEMU's isa-debug-exit
    (0x3c0, 1), // Cloud Hypervisor's ACPI shutdown register
    (0x3f8, 8), // COM1
    (0x604, 2), // PM1a control of QEMU's pc and q35 ACPI (power-off)
    // PCI configuration address and data (a 32-bit access to 0xcf8 needs
    // the bits of 0xcf8..0xcfb, so the chipset's reset register at 0xcf9
    // comes with it; QEMU's -no-reboot makes a reset an exit)
    (0xcf8, 8),
];
/// How many bytes of the bitmap open a port.
const PVH_OPEN: usize = 8;
/// The bitmap bytes that open ports, sorted: (byte index, bits; a clear
/// bit opens its port).
const PVH_IOPB: [(u64, u8); PVH_OPEN] = pvh_iopb();
const fn pvh_iopb() -> [(u64, u8); PVH_OPEN] {
    let mut out = [(0u64, 0xffu8); PVH_OPEN];
    let mut n = 0;
    let mut i = 0;
    while i < PVH_PORTS.len() {
        let (first, count) = PVH_PORTS[i];
        let mut port = first;
        while port < first + count {
            let byte = (port / 8) as u64;
            if n == 0 || out[n - 1].0 != byte {
                assert!(n < PVH_OPEN, "PVH_OPEN is too small for PVH_PORTS");
                assert!(n == 0 || out[n - 1].0 < byte, "PVH_PORTS must be sorted");
                out[n] = (byte, 0xff);
                n += 1;
            }
            out[n - 1].1 &= !(1u8 << (port % 8));
            port += 1;
        }
        i += 1;
    }
    assert!(n == PVH_OPEN, "PVH_OPEN is too large for PVH_PORTS");
    out
}
const PVH_IOPB_SIZE: u64 = PVH_IOPB[PVH_OPEN - 1].0 + 2;
const PVH_TSS_LIMIT: u64 = TSS_BASE_SIZE + PVH_IOPB_SIZE - 1;
const PVH_TSS_DESC: (u64, u64) = tss_descriptor(PVH_TSS_ADDR, PVH_TSS_LIMIT);
const _: () = assert!(TIMER_VECTOR == 32 && SPURIOUS_VECTOR == 33);

/// The local APIC timer's vector (PVH entry only: the tender's IDT limit
/// ends below it).
pub const TIMER_VECTOR: u8 = 32;
/// The local APIC's spurious-interrupt vector (PVH entry only).
pub const SPURIOUS_VECTOR: u8 = 33;

core::arch::global_asm!(
    r#"

    /* ---- trap stubs: fixed address, 16 bytes each ---- */
    .section .skiff.sup.traps, "ax"
    .code64
    .globl skiff_trap_stubs
    .balign 16
skiff_trap_stubs:
    .macro skiff_stub_noerr n
        .balign 16
        push 0
        push \n
        jmp skiff_trap_common
    .endm
    .macro skiff_stub_err n
        .balign 16
        push \n
        jmp skiff_trap_common
    .endm
    skiff_stub_noerr 0
    skiff_stub_noerr 1
    skiff_stub_noerr 2
    skiff_stub_noerr 3
    skiff_stub_noerr 4
    skiff_stub_noerr 5
    skiff_stub_noerr 6
    skiff_stub_noerr 7
    skiff_stub_err 8
    skiff_stub_noerr 9
    skiff_stub_err 10
    skiff_stub_err 11
    skiff_stub_err 12
    skiff_stub_err 13
    skiff_stub_err 14
    skiff_stub_noerr 15
    skiff_stub_noerr 16
    skiff_stub_err 17
    skiff_stub_noerr 18
    skiff_stub_noerr 19
    skiff_stub_noerr 20
    skiff_stub_err 21
    skiff_stub_noerr 22
    skiff_stub_noerr 23
    skiff_stub_noerr 24
    skiff_stub_noerr 25
    skiff_stub_noerr 26
    skiff_stub_noerr 27
    skiff_stub_noerr 28
    skiff_stub_err 29
    skiff_stub_err 30
    skiff_stub_noerr 31

    .section .skiff.sup.text, "ax"
    .code64
    /* Frame on the ring-0 stack: vector, error code, rip, cs, rflags, rsp,
       ss. Add cr2 and hand the frame's address to the tender, which reports
       the exception and ends the guest: this never returns. */
skiff_trap_common:
    cmp byte ptr [rip + skiff_sup_platform], 0
    jne skiff_trap_pvh
    mov rax, cr2
    push rax
    mov eax, esp
    mov dx, {fault_port}
    out dx, eax
2:
    hlt
    jmp 2b

    /* Under the PVH entry there is no tender to report to: the frame goes
       to ring 3 in registers (rdi = cr2, rsi = vector, rdx = error code,
       rcx = rip, r8 = cs, r9 = rflags, r10 = rsp, r11 = ss), on a stack of
       its own, where the runtime prints the report and exits through
       isa-debug-exit. A second exception (the report itself failed) ends
       the VM at once with the exception status. */
skiff_trap_pvh:
    /* Two supervisor calls: a `hlt` in ring 3 raises #GP, and at one of
       two fixed instructions it means "sleep until the TSC deadline in
       edx:eax" (skiff_pvh_idle_hlt) or "halt for good"
       (skiff_pvh_halt_hlt). Anywhere else it is an exception. */
    cmp qword ptr [rsp], 13
    jne 5f
    test byte ptr [rsp + 24], 3
    jz 5f
    cmp qword ptr [rsp + 16], offset skiff_pvh_idle_hlt
    je skiff_sup_idle
    cmp qword ptr [rsp + 16], offset skiff_pvh_halt_hlt
    je skiff_sup_halt
5:
    mov rax, cr2
    push rax
    cmp byte ptr [rip + skiff_sup_faulted], 0
    jne 3f
    mov byte ptr [rip + skiff_sup_faulted], 1
    mov rdi, [rsp]
    mov rsi, [rsp + 8]
    mov rdx, [rsp + 16]
    mov rcx, [rsp + 24]
    mov r8, [rsp + 32]
    mov r9, [rsp + 40]
    mov r10, [rsp + 48]
    mov r11, [rsp + 56]
    push {user_ds}
    lea rax, [rip + skiff_fault_stack_top]
    push rax
    push 2
    push {user_cs}
    lea rax, [rip + skiff_pvh_fault_entry]
    push rax
    iretq
3:
    mov al, {cpu_exception}
    out {debug_exit_port}, al
skiff_sup_halt:
    cli
4:
    hlt
    jmp 4b

    /* The idle call: arm the TSC-deadline timer with edx:eax (ring 3's),
       halt until an interrupt, disarm, and return past ring 3's `hlt`.
       Interrupts are enabled only here: ring 3 runs with IF clear. */
skiff_sup_idle:
    mov ecx, 0x6e0
    wrmsr
    sti
    hlt
    cli
    xor eax, eax
    xor edx, edx
    wrmsr
    add qword ptr [rsp + 16], 1
    add rsp, 16
    iretq

    /* The timer's interrupt: acknowledge it (x2APIC EOI) and go back to
       the idle gate. */
skiff_sup_timer:
    push rax
    push rcx
    push rdx
    mov ecx, 0x80b
    xor eax, eax
    xor edx, edx
    wrmsr
    pop rdx
    pop rcx
    pop rax
skiff_sup_spurious:
    iretq

    /* The state `_start` leaves, for a tender that sets it directly
       (skiff_abi::ring3): the vCPU then starts at skiff_user_entry. */
    .pushsection .note.skiff.ring3, "a", @note
    .balign 4
    .long 6                  /* namesz: "Skiff\0" */
    .long 72                 /* descsz: skiff_abi::ring3::Entry */
    .long {ring3_note_type}
    .asciz "Skiff"
    .balign 4
    .quad skiff_user_entry
    .quad skiff_stack_top
    .quad skiff_gdt
    .quad skiff_gdt_end - skiff_gdt - 1
    .quad skiff_idt
    .quad skiff_idt_end - skiff_idt - 1
    .quad skiff_tss
    .quad {tss_limit}
    .quad {user_cs} | ({user_ds} << 16) | ({tss_sel} << 32)
    .balign 4
    .popsection

    /* hvt entry: 64-bit, ring 0, paging on, rdi = boot info. */
    .globl _start
_start:
    lea rsp, [rip + skiff_sup_stack_top]
    lgdt [rip + skiff_gdt_ptr]
    mov ax, {kernel_ds}
    mov ss, ax
    mov ax, {tss_sel}
    ltr ax
    lidt [rip + skiff_idt_ptr]
    push {user_ds}
    lea rax, [rip + skiff_stack_top]
    push rax
    push 2
    push {user_cs}
    lea rax, [rip + skiff_user_entry]
    push rax
    iretq

    /* ---- supervisor data: TSS at a fixed address ---- */
    .section .skiff.sup.tss, "aw"
    .balign 16
    .globl skiff_tss
skiff_tss:
    .long 0
    .quad skiff_sup_stack_top     /* rsp0 */
    .quad 0, 0                    /* rsp1, rsp2 */
    .quad 0                       /* reserved */
    .quad 0, 0, 0, 0, 0, 0, 0     /* ist1..ist7 */
    .quad 0                       /* reserved */
    .short 0                      /* reserved */
    .short {tss_base_size}        /* I/O map base */
    .fill {iopb_open_first}, 1, 0xff
    .fill {iopb_open_bytes}, 1, 0x00
    .byte 0xff

    /* The PVH entry's TSS: the same ring-0 stack, another I/O bitmap. */
    .org skiff_tss + {pvh_tss_offset}
    .globl skiff_pvh_tss
skiff_pvh_tss:
    .long 0
    .quad skiff_sup_stack_top     /* rsp0 */
    .quad 0, 0, 0
    .quad 0, 0, 0, 0, 0, 0, 0
    .quad 0
    .short 0
    .short {tss_base_size}
    .fill {pvh_open0}, 1, 0xff
    .byte {pvh_bits0}
    .fill {pvh_open1} - {pvh_open0} - 1, 1, 0xff
    .byte {pvh_bits1}
    .fill {pvh_open2} - {pvh_open1} - 1, 1, 0xff
    .byte {pvh_bits2}
    .fill {pvh_open3} - {pvh_open2} - 1, 1, 0xff
    .byte {pvh_bits3}
    .fill {pvh_open4} - {pvh_open3} - 1, 1, 0xff
    .byte {pvh_bits4}
    .fill {pvh_open5} - {pvh_open4} - 1, 1, 0xff
    .byte {pvh_bits5}
    .fill {pvh_open6} - {pvh_open5} - 1, 1, 0xff
    .byte {pvh_bits6}
    .fill {pvh_open7} - {pvh_open6} - 1, 1, 0xff
    .byte {pvh_bits7}
    .byte 0xff

    .section .skiff.sup.data, "aw"
    /* 1 once the PVH entry ran: exceptions go to ring 3, not to a tender. */
    .globl skiff_sup_platform
skiff_sup_platform:
    .byte 0
skiff_sup_faulted:
    .byte 0
    .balign 16
skiff_gdt:
    .quad 0
    .quad 0x00af9a000000ffff      /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff      /* 0x10 kernel data */
    .quad 0x00cff2000000ffff      /* 0x18 user data, DPL 3 */
    .quad 0x00affa000000ffff      /* 0x20 user code, 64-bit, DPL 3 */
    .quad {tss_desc_low}          /* 0x28 TSS */
    .quad {tss_desc_high}
    .quad {pvh_tss_desc_low}      /* 0x38 PVH TSS */
    .quad {pvh_tss_desc_high}
skiff_gdt_end:

    .balign 16
skiff_idt:
    .macro skiff_gate n
        .short ({trap_stubs} + 16 * \n) & 0xffff
        .short {kernel_cs}
        .byte 0
        .byte 0x8e
        .short (({trap_stubs} + 16 * \n) >> 16) & 0xffff
        .long 0
        .long 0
    .endm
    skiff_gate 0
    skiff_gate 1
    skiff_gate 2
    skiff_gate 3
    skiff_gate 4
    skiff_gate 5
    skiff_gate 6
    skiff_gate 7
    skiff_gate 8
    skiff_gate 9
    skiff_gate 10
    skiff_gate 11
    skiff_gate 12
    skiff_gate 13
    skiff_gate 14
    skiff_gate 15
    skiff_gate 16
    skiff_gate 17
    skiff_gate 18
    skiff_gate 19
    skiff_gate 20
    skiff_gate 21
    skiff_gate 22
    skiff_gate 23
    skiff_gate 24
    skiff_gate 25
    skiff_gate 26
    skiff_gate 27
    skiff_gate 28
    skiff_gate 29
    skiff_gate 30
    skiff_gate 31
skiff_idt_end:
    /* Vectors 32 and 33, inside the PVH entry's IDT limit only: the APIC
       timer and the APIC's spurious vector. */
    .macro skiff_sup_gate handler, type
        .short \handler - 0x100000
        .short {kernel_cs}
        .byte 0
        .byte \type
        .short 0x10
        .long 0
        .long 0
    .endm
    skiff_sup_gate skiff_sup_timer, 0x8e
    skiff_sup_gate skiff_sup_spurious, 0x8e
skiff_pvh_idt_end:

    .balign 8
    .short 0, 0, 0
    .globl skiff_gdt_ptr
skiff_gdt_ptr:
    .short skiff_gdt_end - skiff_gdt - 1
    .quad skiff_gdt
    .short 0, 0, 0
skiff_idt_ptr:
    .short skiff_idt_end - skiff_idt - 1
    .quad skiff_idt
    .short 0, 0, 0
    .globl skiff_pvh_idt_ptr
skiff_pvh_idt_ptr:
    .short skiff_pvh_idt_end - skiff_idt - 1
    .quad skiff_idt

    /* Ring-0 stack for exceptions taken in ring 3. */
    .section .skiff.sup.bss, "aw", @nobits
    .balign 4096
    .globl skiff_sup_stack_top
skiff_sup_stack_bottom:
    .skip 4096
skiff_sup_stack_top:

    /* Ring-3 stack for the PVH fault report (the service's own stack may
       be the reason for the fault). */
    .section .bss.skiff_fault_stack, "aw", @nobits
    .balign 16
    .skip 16384
skiff_fault_stack_top:

    /* ---- ring 3 ---- */
    .section .text.skiff_user_entry, "ax"
    .globl skiff_user_entry
skiff_user_entry:
    mov [rip + skiff_boot_info], rdi
    xor ebp, ebp
    call skiff_rt_user_main
    ud2
"#,
    fault_port = const FAULT_PORT,
    ring3_note_type = const skiff_abi::ring3::NOTE_TYPE_ENTRY,
    tss_limit = const TSS_LIMIT,
    kernel_ds = const KERNEL_DS,
    kernel_cs = const KERNEL_CS,
    user_ds = const USER_DS,
    user_cs = const USER_CS,
    tss_sel = const TSS_SEL,
    tss_base_size = const TSS_BASE_SIZE,
    iopb_open_first = const IOPB_OPEN_FIRST,
    iopb_open_bytes = const IOPB_OPEN_BYTES,
    tss_desc_low = const TSS_DESC.0,
    tss_desc_high = const TSS_DESC.1,
    pvh_tss_offset = const PVH_TSS_OFFSET,
    pvh_tss_desc_low = const PVH_TSS_DESC.0,
    pvh_tss_desc_high = const PVH_TSS_DESC.1,
    pvh_open0 = const PVH_IOPB[0].0,
    pvh_bits0 = const PVH_IOPB[0].1,
    pvh_open1 = const PVH_IOPB[1].0,
    pvh_bits1 = const PVH_IOPB[1].1,
    pvh_open2 = const PVH_IOPB[2].0,
    pvh_bits2 = const PVH_IOPB[2].1,
    pvh_open3 = const PVH_IOPB[3].0,
    pvh_bits3 = const PVH_IOPB[3].1,
    pvh_open4 = const PVH_IOPB[4].0,
    pvh_bits4 = const PVH_IOPB[4].1,
    pvh_open5 = const PVH_IOPB[5].0,
    pvh_bits5 = const PVH_IOPB[5].1,
    pvh_open6 = const PVH_IOPB[6].0,
    pvh_bits6 = const PVH_IOPB[6].1,
    pvh_open7 = const PVH_IOPB[7].0,
    pvh_bits7 = const PVH_IOPB[7].1,
    cpu_exception = const skiff_abi::exit::CPU_EXCEPTION,
    debug_exit_port = const super::pvh::DEBUG_EXIT_PORT,
    trap_stubs = const TRAP_STUBS,
);
