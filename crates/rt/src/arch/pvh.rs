//! The PVH entry: how standard hypervisors (QEMU `-kernel`, Firecracker,
//! Cloud Hypervisor) start the same image that the tender starts.
//!
//! Every image carries Xen's `XEN_ELFNOTE_PHYS32_ENTRY` note pointing at
//! `skiff_pvh_start`, which is entered in 32-bit protected mode with paging
//! off and `ebx` holding the PVH start-info address. The trampoline builds a
//! temporary identity map of the first GiB (2 MiB pages), enables long mode
//! and SSE, loads the supervisor's GDT and jumps to 64-bit code.
//!
//! Under the tender, none of this runs. Without the tender there are no
//! hypercalls: the virtio platform backend, which lets the runtime continue
//! from here, is not part of this build, so the 64-bit side says so on the
//! first serial port, asks QEMU's `isa-debug-exit` device (port 0xf4) to end
//! the VM, and halts.

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
    mov esi, ebx
    /* PD: 512 entries of 2 MiB, present, writable, user, large. */
    mov edi, offset skiff_pvh_pd
    mov eax, 0x87
    mov ecx, 512
3:
    mov dword ptr [edi], eax
    mov dword ptr [edi + 4], 0
    add eax, 0x200000
    add edi, 8
    dec ecx
    jnz 3b
    mov eax, offset skiff_pvh_pd
    or eax, 7
    mov dword ptr [skiff_pvh_pdpt], eax
    mov eax, offset skiff_pvh_pdpt
    or eax, 7
    mov dword ptr [skiff_pvh_pml4], eax
    mov eax, offset skiff_pvh_pml4
    mov cr3, eax
    /* CR4: PAE, OSFXSR, OSXMMEXCPT. */
    mov eax, cr4
    or eax, 0x620
    mov cr4, eax
    /* EFER: LME, NXE. */
    mov ecx, 0xc0000080
    rdmsr
    or eax, 0x900
    wrmsr
    /* CR0: PE, MP, PG; clear EM. */
    mov eax, cr0
    and eax, 0xfffffffb
    or eax, 0x80000003
    mov cr0, eax
    lgdt [skiff_gdt_ptr]
    push 0x08
    mov eax, offset skiff_pvh_long
    push eax
    retf

    .code64
skiff_pvh_long:
    mov ax, 0x10
    mov ss, ax
    mov ds, ax
    mov es, ax
    lea rsi, [rip + skiff_pvh_message]
    mov dx, 0x3f8
4:
    lodsb
    test al, al
    jz 5f
    out dx, al
    jmp 4b
5:
    mov dx, 0xf4
    mov al, 0x7f
    out dx, al
6:
    hlt
    jmp 6b

    .section .skiff.sup.data, "aw"
skiff_pvh_message:
    .ascii "skiff: this image was started through its PVH entry; the runtime in this build\n"
    .ascii "skiff: only runs under skiff-tender (the virtio platform is not part of it).\n"
    .byte 0

    .section .skiff.sup.bss, "aw", @nobits
    .balign 4096
skiff_pvh_pml4:
    .skip 4096
skiff_pvh_pdpt:
    .skip 4096
skiff_pvh_pd:
    .skip 4096
"#
);
