//! How ring 3 reaches the tender, in both sandboxes: the hypercall's one
//! indirect call, and the entry of process mode.
//!
//! A hypercall is `call [skiff_hypercall_entry]` with the call number in
//! `edi` and the argument's address in `esi`. The word starts out holding
//! [`skiff_hypercall_out`]'s address, a stub that makes the call the VM way
//! (`out` to the call's port); the process entry (`skiff_process_entry`,
//! named by the image's process note, see [`skiff_abi::process`]) replaces
//! it with the tender's entry from the boot info before any Rust code runs.
//! So the mechanism is chosen once at start and a call has no branch.

use core::mem::offset_of;
use skiff_abi::{BootInfo, HYPERCALL_PORT_BASE};

core::arch::global_asm!(
    r#"
    .pushsection .note.skiff.process, "a", @note
    .balign 4
    .long 6                  /* namesz: "Skiff\0" */
    .long 8                  /* descsz: the entry's address */
    .long {note_type}
    .asciz "Skiff"
    .balign 4
    .quad skiff_process_entry
    .balign 4
    .popsection

    .pushsection .data.skiff_hypercall_entry, "aw"
    .balign 8
    .globl skiff_hypercall_entry
skiff_hypercall_entry:
    .quad skiff_hypercall_out
    /* The boot info's address, as both entries received it (for tests
       that look at the boot info themselves). */
    .globl skiff_boot_info
skiff_boot_info:
    .quad 0
    .popsection

    .pushsection .text.skiff_hypercall_out, "ax"
    .globl skiff_hypercall_out
skiff_hypercall_out:
    lea edx, [edi + {port_base}]
    mov eax, esi
    out dx, eax
    ret
    .popsection

    /* Process mode: the tender jumps here on the ring-3 stack with rdi =
       the boot info; no supervisor runs. */
    .pushsection .text.skiff_process_entry, "ax"
    .globl skiff_process_entry
skiff_process_entry:
    mov [rip + skiff_boot_info], rdi
    mov rax, [rdi + {hypercall_offset}]
    mov [rip + skiff_hypercall_entry], rax
    xor ebp, ebp
    call skiff_rt_user_main
    ud2
    .popsection
"#,
    note_type = const skiff_abi::process::NOTE_TYPE_ENTRY,
    port_base = const HYPERCALL_PORT_BASE,
    hypercall_offset = const offset_of!(BootInfo, hypercall),
);
