//! The PVH entry: how standard hypervisors (QEMU `-kernel`, Firecracker,
//! Cloud Hypervisor) start the same image that the tender starts.
//!
//! Every image carries Xen's `XEN_ELFNOTE_PHYS32_ENTRY` note pointing at
//! `skiff_pvh_start`, which is entered in 32-bit protected mode with paging
//! off and `ebx` holding the address of the PVH start info
//! (`hvm_start_info`: command line, memory map). The trampoline does in
//! ring 0 what the tender does on the host for its own entry, and no more:
//!
//! - reads the memory size from the start info's memory map (RAM below
//!   3 GiB);
//! - fills the page tables the linker reserved after the image
//!   (`.skiff.sup.tables`) with the same W^X map the tender builds: 4 KiB
//!   pages from a table of the image's segments (supervisor segments
//!   without the user bit, page 0 and the stack's guard page unmapped), the
//!   heap in 2 MiB pages from the first 2 MiB boundary past the image (the
//!   memory between, under 2 MiB, is left out unless memory ends there),
//!   and the pages
//!   of the start info, command line and memory map read-only for ring 3;
//! - maps the 2 MiB pages of microvm's virtio-mmio slots and of the I/O
//!   APICs for ring 3, uncached and NX (the drivers and the interrupt
//!   routing run in ring 3);
//! - turns on long mode, NX, write protection, SMEP and SMAP (when the CPU
//!   has them) and SSE for ring 3;
//! - loads the supervisor's GDT, the PVH TSS (whose I/O bitmap opens the
//!   platform ports the runtime drives to ring 3, `supervisor::PVH_PORTS`,
//!   and no hypercall port) and IDT, marks the platform for the trap stubs, and `iretq`s to
//!   `skiff_rt_pvh_main` in ring 3 with the start info's address, the
//!   memory size, the TSC at the first instruction (for the boot time) and
//!   whether the idle call can sleep: with x2APIC and the TSC-deadline
//!   timer (CPUID), the APIC is switched to x2APIC mode with its timer on
//!   the supervisor's timer vector and the legacy PICs are masked.
//!
//! Ring 0 is emulated one instruction at a time on PVM (a few microseconds
//! each on the development machines), so the loops are short: five
//! instructions per 4 KiB page of the image (its 1 MiB stack is most of
//! them) and five per 2 MiB page of the heap.
//!
//! A start info without the PVH magic, without a memory map, or with too
//! little memory for the image gets one line on COM1 and exit status 104
//! through `isa-debug-exit`.

/// QEMU's `isa-debug-exit` device port (`-device isa-debug-exit,iobase=0xf4,iosize=4`).
/// QEMU exits with `(value << 1) | 1` for a value written there.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;

/// Highest guest memory the PVH entry uses, as under the tender.
const MEM_MAX: u64 = skiff_abi::layout::MEM_MAX;

/// The 2 MiB page (mapped for ring 3, uncached) that holds QEMU microvm's
/// virtio-mmio slots, `0xfeb00000 + 0x200 * i`.
pub const VIRTIO_MMIO_PAGE: u64 = 0xfea0_0000;
/// The 2 MiB page (mapped for ring 3, uncached) that holds the I/O APICs
/// (`0xfec00000`, and microvm's second at `0xfec10000`).
pub const IOAPIC_PAGE: u64 = 0xfec0_0000;

const _: () = {
    // Both lie in the fourth GiB, which the last page directory maps, and
    // above any RAM the entry maps (below 3 GiB).
    assert!(VIRTIO_MMIO_PAGE >> 30 == 3 && IOAPIC_PAGE >> 30 == 3);
    assert!(VIRTIO_MMIO_PAGE.is_multiple_of(1 << 21) && IOAPIC_PAGE.is_multiple_of(1 << 21));
    assert!(VIRTIO_MMIO_PAGE + (1 << 21) == IOAPIC_PAGE);
};

use super::supervisor::{KERNEL_DS, PVH_TSS_SEL, USER_CS, USER_DS};

// Page-table entry bits.
const P: u32 = 1;
const RW: u32 = 2;
const US: u32 = 4;
const PS: u32 = 0x80;
const NX_HIGH: u32 = 0x8000_0000;
/// Write-through and cache-disable: uncached.
const PWT_PCD: u32 = 0x18;
/// A device window's 2 MiB page: user, writable, uncached.
const DEVICE_LARGE: u32 = P | RW | US | PS | PWT_PCD;

core::arch::global_asm!(
    r#"

    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4                  /* namesz: "Xen\0" */
    .long 4                  /* descsz */
    .long 18                 /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .long skiff_pvh_start
    .balign 4
    .popsection

    .section .skiff.sup.text, "ax"
    .code32
    .globl skiff_pvh_start
skiff_pvh_start:
    cli
    mov ebp, ebx
    rdtsc
    mov dword ptr [skiff_pvh_tsc], eax
    mov dword ptr [skiff_pvh_tsc + 4], edx
    mov esp, offset skiff_sup_stack_top
    /* CR4: PAE, OSFXSR, OSXMMEXCPT, and SMEP and SMAP when CPUID has them. */
    xor eax, eax
    cpuid
    xor esi, esi
    cmp eax, 7
    jb 1f
    mov eax, 7
    xor ecx, ecx
    cpuid
    mov eax, ebx
    and eax, 0x80
    shl eax, 13
    and ebx, 0x100000
    shl ebx, 1
    mov esi, eax
    or esi, ebx
1:
    mov eax, cr4
    or eax, 0x620
    or eax, esi
    mov cr4, eax

    /* kvmclock: on KVM with the new clock MSRs, have the hypervisor keep
       the TSC's scale and the wall clock in ring-3 memory (the runtime's
       clock reads them there; four instructions instead of measuring the
       TSC against the PIT). */
    mov eax, 0x40000000
    cpuid
    cmp ebx, 0x4b4d564b
    jne 13f
    mov eax, 0x40000001
    cpuid
    test eax, 0x8
    jz 13f
    mov ecx, 0x4b564d01
    mov eax, offset skiff_kvmclock
    or eax, 1
    xor edx, edx
    wrmsr
    mov ecx, 0x4b564d00
    mov eax, offset skiff_kvm_wall_clock
    wrmsr
13:
    /* The start info: magic, version 1 or later (it has a memory map). */
    mov esi, offset skiff_pvh_msg_magic
    cmp dword ptr [ebp], {magic}
    jne skiff_pvh_fail
    cmp dword ptr [ebp + 4], 1
    jb skiff_pvh_fail
    cmp dword ptr [ebp + 44], 0
    jne skiff_pvh_fail

    /* Memory size: the highest end of a RAM entry, at most MEM_MAX. */
    mov ebx, [ebp + 40]
    mov ecx, [ebp + 48]
    xor edi, edi
2:
    test ecx, ecx
    jz 5f
    cmp dword ptr [ebx + 16], 1
    jne 4f
    cmp dword ptr [ebx + 4], 0
    jne 4f
    mov eax, [ebx]
    cmp dword ptr [ebx + 12], 0
    jne 3f
    add eax, [ebx + 8]
    jc 3f
    cmp eax, {mem_max}
    jbe 6f
3:
    mov eax, {mem_max}
6:
    cmp eax, edi
    jbe 4f
    mov edi, eax
4:
    add ebx, 24
    dec ecx
    jmp 2b
5:
    mov esi, offset skiff_pvh_msg_memory
    mov eax, offset skiff_pvh_tables_end
    add eax, 0x1000
    cmp edi, eax
    jb skiff_pvh_fail
    mov dword ptr [skiff_pvh_mem_end], edi

    /* The image's segments in 4 KiB pages. */
    mov ebx, offset skiff_pvh_regions
7:
    mov eax, [ebx]
    mov ecx, [ebx + 4]
    mov esi, [ebx + 8]
    mov edx, [ebx + 12]
    call skiff_pvh_map
    add ebx, 16
    cmp ebx, offset skiff_pvh_regions_end
    jb 7b

    /* The heap: 2 MiB pages from the first 2 MiB boundary past the page
       tables to the end of memory, and page directory 0 links only the
       page tables below that boundary. Only when memory ends before it:
       4 KiB pages from the tables up to its end, all page tables linked.
       (Mapping the rest of the last 2 MiB in small pages would cost ring 0
       a few milliseconds.) */
    mov eax, offset skiff_pvh_large_start
    mov ecx, eax
    shr ecx, 21
    mov dword ptr [skiff_pvh_links], ecx
    mov ecx, dword ptr [skiff_pvh_mem_end]
    and ecx, 0xffe00000
    sub ecx, eax
    jbe 14f
    shr ecx, 21
    mov ebx, eax
    shr ebx, 18
    add ebx, offset skiff_pvh_tables + 0x2000
    or eax, {user_rw_large}
9:
    mov [ebx], eax
    mov dword ptr [ebx + 4], {nx_high}
    add eax, 0x200000
    add ebx, 8
    loop 9b
    jmp 10f
14:
    mov eax, offset skiff_pvh_small_pages_end
    shr eax, 21
    mov dword ptr [skiff_pvh_links], eax
    mov eax, offset skiff_pvh_tables_end
    mov ecx, dword ptr [skiff_pvh_mem_end]
    cmp ecx, offset skiff_pvh_small_pages_end
    jbe 15f
    mov ecx, offset skiff_pvh_small_pages_end
15:
    mov esi, {user_rw}
    mov edx, {nx_high}
    call skiff_pvh_map
10:
    /* The start info, command line and memory map, read-only for ring 3
       (only where they lie in low memory, as QEMU puts them). */
    mov eax, ebp
    mov ecx, 2
    call skiff_pvh_map_low
    cmp dword ptr [ebp + 28], 0
    jne 11f
    mov eax, [ebp + 24]
    mov ecx, 3
    call skiff_pvh_map_low
11:
    mov eax, [ebp + 40]
    mov ecx, 2
    call skiff_pvh_map_low

    /* Device windows for ring 3, uncached and not executable: the 2 MiB
       page holding microvm's virtio-mmio slots (0xfeb00000 + 0x200 * i)
       and the one holding the I/O APICs (0xfec00000, 0xfec10000). Four
       stores in the last page directory. */
    mov dword ptr [skiff_pvh_tables + 0x5000 + {virtio_pde}], {virtio_page}
    mov dword ptr [skiff_pvh_tables + 0x5000 + {virtio_pde} + 4], {nx_high}
    mov dword ptr [skiff_pvh_tables + 0x5000 + {ioapic_pde}], {ioapic_page}
    mov dword ptr [skiff_pvh_tables + 0x5000 + {ioapic_pde} + 4], {nx_high}

    /* Page directory 0 points at the page tables, the PDPT at the four
       page directories, the PML4 at the PDPT. */
    mov ecx, dword ptr [skiff_pvh_links]
    mov eax, offset skiff_pvh_tables + 0x6000 + {table_link}
    mov ebx, offset skiff_pvh_tables + 0x2000
12:
    mov [ebx], eax
    add eax, 0x1000
    add ebx, 8
    loop 12b
    mov ebx, offset skiff_pvh_tables + 0x1000
    mov dword ptr [ebx], offset skiff_pvh_tables + 0x2000 + {table_link}
    mov dword ptr [ebx + 8], offset skiff_pvh_tables + 0x3000 + {table_link}
    mov dword ptr [ebx + 16], offset skiff_pvh_tables + 0x4000 + {table_link}
    mov dword ptr [ebx + 24], offset skiff_pvh_tables + 0x5000 + {table_link}
    mov dword ptr [skiff_pvh_tables], offset skiff_pvh_tables + 0x1000 + {table_link}

    mov eax, offset skiff_pvh_tables
    mov cr3, eax
    /* EFER: LME, NXE. */
    mov ecx, 0xc0000080
    rdmsr
    or eax, 0x900
    wrmsr
    /* CR0: PE, MP, WP, PG; clear EM. */
    mov eax, cr0
    and eax, 0xfffffffb
    or eax, 0x80010003
    mov cr0, eax
    lgdt [skiff_gdt_ptr]
    push 0x08
    mov eax, offset skiff_pvh_long
    push eax
    retf

    /* Maps [eax, ecx) with 4 KiB pages: eax page-aligned, esi the entry's
       low flags, edx its high dword. Clobbers eax, ecx, edi. */
skiff_pvh_map:
    sub ecx, eax
    jbe 2f
    add ecx, 0xfff
    shr ecx, 12
    mov edi, eax
    shr edi, 9
    add edi, offset skiff_pvh_tables + 0x6000
    or eax, esi
1:
    mov [edi], eax
    mov [edi + 4], edx
    add eax, 0x1000
    add edi, 8
    loop 1b
2:
    ret

    /* Maps ecx pages from the page of eax read-only for ring 3, if that
       lies between page 1 and 1 MiB. */
skiff_pvh_map_low:
    and eax, 0xfffff000
    jz 1f
    cmp eax, 0x100000
    jae 1f
    shl ecx, 12
    add ecx, eax
    cmp ecx, 0x100000
    jbe 2f
    mov ecx, 0x100000
2:
    mov esi, {user_ro}
    mov edx, {nx_high}
    jmp skiff_pvh_map
1:
    ret

    /* One line on COM1 (esi), exit status 104, halt. */
skiff_pvh_fail:
    mov dx, 0x3f8
1:
    lodsb
    test al, al
    jz 2f
    out dx, al
    jmp 1b
2:
    mov dx, {debug_exit}
    mov al, {abort_status}
    out dx, al
3:
    hlt
    jmp 3b

    .code64
skiff_pvh_long:
    mov ax, {kernel_ds}
    mov ss, ax
    mov ds, ax
    mov es, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov ax, {pvh_tss_sel}
    ltr ax
    lidt [rip + skiff_pvh_idt_ptr]
    mov byte ptr [rip + skiff_sup_platform], 1
    /* With x2APIC and the TSC-deadline timer, the idle call can sleep:
       the APIC goes to x2APIC mode with the timer on its vector, the
       legacy PICs are masked, and ring 3 learns it in rcx. */
    xor r12d, r12d
    mov eax, 1
    cpuid
    and ecx, 0x1200000
    cmp ecx, 0x1200000
    jne 1f
    mov ecx, 0x1b
    rdmsr
    or eax, 0xc00
    wrmsr
    mov ecx, 0x80f
    mov eax, 0x100 + {spurious_vector}
    xor edx, edx
    wrmsr
    mov ecx, 0x832
    mov eax, 0x40000 + {timer_vector}
    wrmsr
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    mov r12d, 1
1:
    mov ecx, r12d
    mov esi, dword ptr [rip + skiff_pvh_mem_end]
    mov rdx, qword ptr [rip + skiff_pvh_tsc]
    mov edi, ebp
    push {user_ds}
    lea rax, [rip + skiff_stack_top]
    push rax
    push 2
    push {user_cs}
    lea rax, [rip + skiff_pvh_user_entry]
    push rax
    iretq

    .section .skiff.sup.data, "aw"
    .balign 16
    /* start, end, low flags, high flags of each segment of the image. */
skiff_pvh_regions:
    .long 0x100000, skiff_sup_text_end, {sup_rx}, 0
    .long 0x102000, skiff_sup_data_end, {sup_rw}, {nx_high}
    .long skiff_text_start, skiff_text_end, {user_rx}, 0
    .long skiff_rodata_start, skiff_rodata_end, {user_ro}, {nx_high}
    .long skiff_data_start, skiff_data_end, {user_rw}, {nx_high}
    .long skiff_stack_bottom, skiff_stack_top, {user_rw}, {nx_high}
skiff_pvh_regions_end:
skiff_pvh_mem_end:
    .long 0
skiff_pvh_links:
    .long 0
    .balign 8
skiff_pvh_tsc:
    .quad 0
skiff_pvh_msg_magic:
    .asciz "skiff: the PVH start info has no PVH magic or no memory map\n"
skiff_pvh_msg_memory:
    .asciz "skiff: guest memory is too small for this image and a heap\n"

    /* ---- ring 3 ---- */
    .section .text.skiff_pvh_user_entry, "ax"
    .globl skiff_pvh_user_entry
skiff_pvh_user_entry:
    xor ebp, ebp
    call skiff_rt_pvh_main
    ud2

    /* The supervisor hands an exception here (see skiff_trap_pvh): the
       frame goes onto this stack as a FaultFrame, cr2 at the lowest
       address. */
    .globl skiff_pvh_fault_entry
skiff_pvh_fault_entry:
    push r11
    push r10
    push r9
    push r8
    push rcx
    push rdx
    push rsi
    push rdi
    mov rdi, rsp
    call skiff_rt_pvh_fault
    ud2

    /* Supervisor calls (see skiff_trap_pvh): `hlt` at these two places. */
    .globl skiff_pvh_idle
skiff_pvh_idle:                  /* edi: deadline's low half, esi: high */
    mov eax, edi
    mov edx, esi
skiff_pvh_idle_hlt:
    hlt
    ret
    .globl skiff_pvh_halt
skiff_pvh_halt:
skiff_pvh_halt_hlt:
    hlt
    ud2
"#,
    magic = const START_INFO_MAGIC,
    mem_max = const MEM_MAX,
    user_rw = const P | RW | US,
    user_ro = const P | US,
    user_rx = const P | US,
    sup_rx = const P,
    sup_rw = const P | RW,
    user_rw_large = const P | RW | US | PS,
    table_link = const P | RW | US,
    nx_high = const NX_HIGH,
    debug_exit = const DEBUG_EXIT_PORT,
    abort_status = const skiff_abi::exit::ABORT,
    kernel_ds = const KERNEL_DS,
    pvh_tss_sel = const PVH_TSS_SEL,
    user_ds = const USER_DS,
    user_cs = const USER_CS,
    timer_vector = const super::supervisor::TIMER_VECTOR,
    virtio_pde = const (VIRTIO_MMIO_PAGE >> 21 & 511) * 8,
    virtio_page = const VIRTIO_MMIO_PAGE as u32 | DEVICE_LARGE,
    ioapic_pde = const (IOAPIC_PAGE >> 21 & 511) * 8,
    ioapic_page = const IOAPIC_PAGE as u32 | DEVICE_LARGE,
    spurious_vector = const super::supervisor::SPURIOUS_VECTOR,
);
