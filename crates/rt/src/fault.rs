//! The report of a CPU exception where no tender prints one (the PVH
//! entry): the same text as the tender's report, from the same kind of
//! memory map, except that the function at `rip` is not named (the symbol
//! table is not loaded into the guest).

use core::fmt::{self, Write};
use skiff_abi::{FaultFrame, vector_name};

/// A mapped range of the guest, as the page tables map it.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    /// First byte (page-aligned).
    pub start: u64,
    /// One past the last byte (page-aligned).
    pub end: u64,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// Reachable from ring 3.
    pub user: bool,
    /// What it is, in the tender's words ("code of the image").
    pub what: &'static str,
}

/// The guest's memory map, for classifying a faulting address.
pub struct MemoryMap<'a> {
    /// The mapped regions, in address order.
    pub regions: &'a [Region],
    /// The guard page below the ring-3 stack.
    pub guard: u64,
    /// Bytes of guest memory.
    pub mem_size: u64,
}

const PAGE: u64 = 4096;
const IMAGE_MIN: u64 = skiff_abi::layout::IMAGE_MIN;

fn page_fault_access(out: &mut impl Write, error: u64) -> fmt::Result {
    let what = if error & (1 << 4) != 0 {
        "instruction fetch from"
    } else if error & (1 << 1) != 0 {
        "write to"
    } else {
        "read of"
    };
    let why = if error & 1 != 0 { "a page whose protection forbids it" } else { "an unmapped page" };
    write!(out, "{what} {why}")?;
    if error & (1 << 3) != 0 {
        out.write_str(" (reserved bit set in a page-table entry)")?;
    }
    Ok(())
}

fn classify(out: &mut impl Write, addr: u64, map: &MemoryMap<'_>) -> fmt::Result {
    if addr < PAGE {
        return out.write_str("page 0, never mapped: a null pointer");
    }
    if (map.guard..map.guard + PAGE).contains(&addr) {
        return out.write_str("the guard page below the ring-3 stack: stack overflow");
    }
    if addr >= map.mem_size {
        return write!(out, "beyond guest memory ({} MiB)", map.mem_size >> 20);
    }
    if let Some(r) = map.regions.iter().find(|r| (r.start..r.end).contains(&addr)) {
        write!(out, "the {}", r.what)?;
        let read_only = !r.write && !r.what.contains("read-only");
        match (read_only, !r.user) {
            (true, true) => out.write_str(", read-only and reachable only from ring 0")?,
            (true, false) => out.write_str(", read-only")?,
            (false, true) => out.write_str(", reachable only from ring 0")?,
            (false, false) => {}
        }
        let flag = |on, c| if on { c } else { '-' };
        let ring = if r.user { "user" } else { "supervisor" };
        return write!(out, " (r{}{} {ring} at {:#x}..{:#x})", flag(r.write, 'w'), flag(r.exec, 'x'), r.start, r.end);
    }
    if addr < IMAGE_MIN {
        out.write_str("an unmapped page of the boot area below the image")
    } else {
        out.write_str("an unmapped gap between the image's segments")
    }
}

/// Writes a multi-line report of `frame` (no trailing newline).
pub fn describe(out: &mut impl Write, frame: &FaultFrame, map: &MemoryMap<'_>) -> fmt::Result {
    let (mnemonic, name) = vector_name(frame.vector);
    let ring = frame.cs & 3;
    let place = if ring == 3 { "in ring 3 (the service)" } else { "in ring 0 (the supervisor: a Skiff bug)" };
    writeln!(out, "guest CPU exception {place}: {name} ({mnemonic}, vector {})", frame.vector)?;
    writeln!(out, "  rip {:#x}", frame.rip)?;
    match frame.vector {
        14 => {
            write!(out, "  address {:#x}: ", frame.cr2)?;
            page_fault_access(out, frame.error_code)?;
            out.write_str(", in ")?;
            classify(out, frame.cr2, map)?;
            out.write_str("\n")?;
        }
        13 if ring == 3 => out.write_str(
            "  a privileged instruction, an I/O port the service may not use, or a non-canonical address\n",
        )?,
        0 => out.write_str("  integer division by zero or quotient overflow\n")?,
        6 => out.write_str("  an undefined instruction (or a deliberate trap such as ud2)\n")?,
        _ => {}
    }
    write!(
        out,
        "  error code {:#x}, rsp {:#x}, rflags {:#x}, cs {:#x}, ss {:#x}",
        frame.error_code, frame.rsp, frame.rflags, frame.cs, frame.ss
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    const MAP: MemoryMap<'static> = MemoryMap {
        regions: &[
            Region {
                start: 0x10_0000,
                end: 0x10_1000,
                write: false,
                exec: true,
                user: false,
                what: "code of the supervisor",
            },
            Region {
                start: 0x10_3000,
                end: 0x10_5000,
                write: false,
                exec: true,
                user: true,
                what: "code of the image",
            },
            Region {
                start: 0x10_5000,
                end: 0x10_6000,
                write: false,
                exec: false,
                user: true,
                what: "read-only data of the image",
            },
        ],
        guard: 0x10_7000,
        mem_size: 64 << 20,
    };

    fn report(vector: u64, error_code: u64, cr2: u64) -> String {
        let frame =
            FaultFrame { cr2, vector, error_code, rip: 0x10_3004, cs: 0x23, rflags: 0x202, rsp: 0x10_7f00, ss: 0x1b };
        let mut s = String::new();
        describe(&mut s, &frame, &MAP).unwrap();
        s
    }

    #[test]
    fn page_faults_name_the_access_and_the_place() {
        let s = report(14, 4, 0);
        assert!(s.starts_with("guest CPU exception in ring 3 (the service): page fault (#PF, vector 14)\n"), "{s}");
        assert!(s.contains("address 0x0: read of an unmapped page, in page 0, never mapped: a null pointer"), "{s}");
        let s = report(14, 7, 0x10_3010);
        assert!(
            s.contains("write to a page whose protection forbids it, in the code of the image, read-only (r-x user at 0x103000..0x105000)"),
            "{s}"
        );
        let s = report(14, 5, 0x10_0010);
        assert!(s.contains("the code of the supervisor, read-only and reachable only from ring 0"), "{s}");
        assert!(report(14, 6, 0x10_7008).contains("stack overflow"));
        assert!(report(14, 4, 1 << 30).contains("beyond guest memory (64 MiB)"));
        assert!(report(14, 4, 0x10_2000).contains("an unmapped gap between the image's segments"));
        assert!(report(14, 4, 0x5000).contains("an unmapped page of the boot area below the image"));
    }

    #[test]
    fn other_vectors_get_their_name_and_hint() {
        let s = report(0, 0, 0);
        assert!(s.contains("divide error (#DE, vector 0)") && s.contains("integer division by zero"), "{s}");
        assert!(report(6, 0, 0).contains("deliberate trap such as ud2"));
        assert!(report(13, 0, 0).contains("an I/O port the service may not use"));
        assert!(report(8, 0, 0).ends_with("error code 0x0, rsp 0x107f00, rflags 0x202, cs 0x23, ss 0x1b"));
    }
}
