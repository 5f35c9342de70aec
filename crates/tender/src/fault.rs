//! Turning a CPU exception reported by the guest's supervisor into a
//! message a developer can act on.

use crate::elf::Image;
use crate::paging::{self, Region};
use skiff_abi::{FaultFrame, layout};

pub use skiff_abi::vector_name;

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

/// What the faulting address is, from the guest's memory map: the region
/// that holds it and its protection, or why nothing is mapped there.
fn classify(addr: u64, image: &Image, regions: &[Region], mem_size: u64) -> String {
    let guard = image.stack().page_start() - paging::PAGE;
    if addr < paging::PAGE {
        return "page 0, never mapped: a null pointer".into();
    }
    if (guard..guard + paging::PAGE).contains(&addr) {
        return "the guard page below the ring-3 stack: stack overflow".into();
    }
    if addr >= mem_size {
        return format!("beyond guest memory ({} MiB)", mem_size >> 20);
    }
    if let Some(r) = regions.iter().find(|r| (r.start..r.end).contains(&addr)) {
        let mut limits = Vec::new();
        if !r.perm.write && !r.what.contains("read-only") {
            limits.push("read-only");
        }
        if !r.perm.user {
            limits.push("reachable only from ring 0");
        }
        let protection = if limits.is_empty() { String::new() } else { format!(", {}", limits.join(" and ")) };
        return format!("the {}{protection} ({} at {:#x}..{:#x})", r.what, r.perm.describe(), r.start, r.end);
    }
    if addr < layout::IMAGE_MIN {
        "an unmapped page of the boot area below the image".into()
    } else {
        "an unmapped gap between the image's segments".into()
    }
}

/// A multi-line report of `frame`; `regions` is the guest's memory map.
pub fn describe(frame: &FaultFrame, image: &Image, regions: &[Region], mem_size: u64) -> String {
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
            classify(frame.cr2, image, regions, mem_size)
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
        let mut b = Builder::new();
        // Read-only data above the stack, with a hole below it.
        b.segments.push((1, 0x10_a000, 0x1000, vec![7; 8], 4));
        let img = Image::parse(b.build(), true).unwrap();
        let mem = 64 << 20;
        let (regions, _) = paging::regions(&img, mem, None).unwrap();
        let report = |error, addr| describe(&frame(14, error, addr), &img, &regions, mem);
        let null = report(0x4, 0);
        assert!(null.contains("page fault (#PF, vector 14)"), "{null}");
        assert!(null.contains("read of an unmapped page"), "{null}");
        assert!(null.contains("null pointer"), "{null}");
        let overflow = report(0x6, 0x10_3ff8);
        assert!(overflow.contains("write to an unmapped page"));
        assert!(overflow.contains("stack overflow"));
        let text = report(0x7, 0x10_0010);
        assert!(text.contains("write to a page whose protection forbids it"));
        assert!(
            text.contains("the code of the supervisor, read-only and reachable only from ring 0 (r-x supervisor"),
            "{text}"
        );
        let fetch = report(0x15, 0x10_1000);
        assert!(fetch.contains("instruction fetch"), "{fetch}");
        assert!(fetch.contains("the data of the image (rw- user at 0x101000..0x103000)"), "{fetch}");
        let tables = report(0x7, paging::TABLES);
        assert!(tables.contains("the page tables, reachable only from ring 0"), "{tables}");
        // Mapped but protected pages are named, never called a hole.
        let cases = [
            (paging::BOOT_GDT, "the boot GDT, read-only and reachable only from ring 0 (r-- supervisor"),
            (paging::SHARED + 8, "the shared area (rw- user at 0x4000"),
            (paging::BOOT_INFO, "the boot info, read-only (r-- user"),
            (paging::ARGS, "the command line, read-only"),
            (0x10_a010, "the read-only data of the image (r-- user at 0x10a000..0x10b000)"),
            (0x10_b000, "the heap (rw- user"),
        ];
        for (addr, needle) in cases {
            let r = report(0x7, addr);
            assert!(r.contains(needle), "{addr:#x}: {r}");
            assert!(!r.contains("unmapped"), "{addr:#x}: {r}");
        }
        assert!(report(0x6, 0x10_8000).contains("an unmapped gap between the image's segments"));
        assert!(report(0x6, paging::SHARED + paging::SHARED_LEN).contains("boot area below the image"));
        assert!(report(0x6, mem).contains("beyond guest memory (64 MiB)"));
    }

    #[test]
    fn other_vectors_are_named() {
        let img = Image::parse(Builder::new().build(), true).unwrap();
        let (regions, _) = paging::regions(&img, 1 << 26, None).unwrap();
        let report = |f: &FaultFrame| describe(f, &img, &regions, 1 << 26);
        assert!(report(&frame(0, 0, 0)).contains("divide error (#DE"));
        assert!(report(&frame(13, 0, 0)).contains("privileged instruction"));
        let mut f = frame(6, 0, 0);
        f.cs = 0x08;
        assert!(report(&f).contains("ring 0"));
    }
}
