//! Turning a CPU exception reported by the guest's supervisor into a
//! message a developer can act on.

use crate::elf::Image;
use crate::paging;
use skiff_abi::FaultFrame;

/// Mnemonic and name of an exception vector.
pub fn vector_name(vector: u64) -> (&'static str, &'static str) {
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

fn page_fault_access(error: u64) -> String {
    let what = if error & (1 << 4) != 0 {
        "instruction fetch from"
    } else if error & (1 << 1) != 0 {
        "write to"
    } else {
        "read of"
    };
    let why = if error & 1 != 0 { "a page whose protection forbids it" } else { "an unmapped page" };
    let mut s = format!("{what} {why}");
    if error & (1 << 3) != 0 {
        s.push_str(" (reserved bit set in a page-table entry)");
    }
    s
}

/// What the faulting address is, in terms of the guest's memory map.
fn classify(addr: u64, image: &Image, mem_size: u64) -> String {
    let stack = image.stack();
    if addr < paging::PAGE {
        return "page 0, never mapped: a null pointer".into();
    }
    if addr >= stack.page_start() - paging::PAGE && addr < stack.page_start() {
        return "the guard page below the ring-3 stack: stack overflow".into();
    }
    if addr >= mem_size {
        return format!("beyond guest memory ({} MiB)", mem_size >> 20);
    }
    if (paging::TABLES..paging::TABLES_END).contains(&addr) {
        return "the page tables, reachable only from ring 0".into();
    }
    if (paging::BOOT_INFO..paging::SHARED).contains(&addr) {
        return "the boot info, read-only".into();
    }
    if let Some(seg) = image.segment_at(addr) {
        let what = if seg.supervisor() {
            "supervisor"
        } else if seg.stack() {
            "stack"
        } else {
            "image"
        };
        return format!("the {what} segment at {:#x} ({})", seg.vaddr, seg.describe());
    }
    if addr >= image.end() {
        return "the heap".into();
    }
    "an unmapped hole in the image".into()
}

/// A multi-line report of `frame`.
pub fn describe(frame: &FaultFrame, image: &Image, mem_size: u64) -> String {
    let (mnemonic, name) = vector_name(frame.vector);
    let ring = frame.cs & 3;
    let place = if ring == 3 { "in ring 3 (the service)" } else { "in ring 0 (the supervisor: a Skiff bug)" };
    let mut s = format!("guest CPU exception {place}: {name} ({mnemonic}, vector {})\n", frame.vector);
    let sym = image.symbolize(frame.rip).map(|n| format!(" in {n}")).unwrap_or_default();
    s.push_str(&format!("  rip {:#x}{sym}\n", frame.rip));
    match frame.vector {
        14 => s.push_str(&format!(
            "  address {:#x}: {}, in {}\n",
            frame.cr2,
            page_fault_access(frame.error_code),
            classify(frame.cr2, image, mem_size)
        )),
        13 if ring == 3 => s.push_str(
            "  a privileged instruction, an I/O port the service may not use, or a \
             non-canonical address\n",
        ),
        0 => s.push_str("  integer division by zero or quotient overflow\n"),
        6 => s.push_str("  an undefined instruction (or a deliberate trap such as ud2)\n"),
        _ => {}
    }
    s.push_str(&format!(
        "  error code {:#x}, rsp {:#x}, rflags {:#x}, cs {:#x}, ss {:#x}",
        frame.error_code, frame.rsp, frame.rflags, frame.cs, frame.ss
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::Builder;

    fn frame(vector: u64, error_code: u64, cr2: u64) -> FaultFrame {
        FaultFrame { cr2, vector, error_code, rip: 0x10_0004, cs: 0x23, rflags: 0x202, rsp: 0x10_7f00, ss: 0x1b }
    }

    #[test]
    fn page_faults_name_the_access_and_the_region() {
        let img = Image::parse(Builder::new().build(), true).unwrap();
        let mem = 64 << 20;
        let null = describe(&frame(14, 0x4, 0), &img, mem);
        assert!(null.contains("page fault (#PF, vector 14)"), "{null}");
        assert!(null.contains("read of an unmapped page"), "{null}");
        assert!(null.contains("null pointer"), "{null}");
        let overflow = describe(&frame(14, 0x6, 0x10_3ff8), &img, mem);
        assert!(overflow.contains("write to an unmapped page"));
        assert!(overflow.contains("stack overflow"));
        let text = describe(&frame(14, 0x7, 0x10_0010), &img, mem);
        assert!(text.contains("write to a page whose protection forbids it"));
        assert!(text.contains("supervisor segment"));
        let fetch = describe(&frame(14, 0x15, 0x10_1000), &img, mem);
        assert!(fetch.contains("instruction fetch"), "{fetch}");
        let tables = describe(&frame(14, 0x7, paging::TABLES), &img, mem);
        assert!(tables.contains("page tables"));
    }

    #[test]
    fn other_vectors_are_named() {
        let img = Image::parse(Builder::new().build(), true).unwrap();
        assert!(describe(&frame(0, 0, 0), &img, 1 << 26).contains("divide error (#DE"));
        assert!(describe(&frame(13, 0, 0), &img, 1 << 26).contains("privileged instruction"));
        let mut f = frame(6, 0, 0);
        f.cs = 0x08;
        assert!(describe(&f, &img, 1 << 26).contains("ring 0"));
    }
}
