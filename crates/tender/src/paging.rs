//! The guest's memory map and page tables, built on the host.
//!
//! Guest ring-0 code is emulated one instruction at a time on PVM, so the
//! guest never builds page tables itself under the tender: this module
//! computes the final, fine-grained tables before the first instruction.
//!
//! Guest-physical layout (identity mapped):
//!
//! | range | contents | mapping |
//! | --- | --- | --- |
//! | page 0 | nothing | unmapped |
//! | `BOOT_INFO` | [`skiff_abi::BootInfo`] | user, read-only |
//! | `ARGS` | the command line | user, read-only |
//! | `SHARED` | [`skiff_abi::SharedArea`] | user, read-write, no-execute |
//! | `BOOT_GDT` | the GDT the vCPU starts with | supervisor, read-only, no-execute |
//! | `TABLES` | these page tables | supervisor, read-write, no-execute |
//! | image segments | per `p_flags` | W^X; supervisor segments without the user bit |
//! | guard page below the stack | nothing | unmapped |
//! | image end .. memory end | heap | user, read-write, no-execute |
//!
//! 4 KiB pages where permissions change, 2 MiB pages for the rest.

use crate::elf::Image;
use skiff_abi::{ARGS_MAX, SharedArea, layout};

/// Page size.
pub const PAGE: u64 = layout::PAGE_SIZE;
const LARGE: u64 = 2 << 20;

/// Where the boot info goes.
pub const BOOT_INFO: u64 = 0x1000;
/// Where the command line goes.
pub const ARGS: u64 = 0x2000;
/// Where the shared area goes.
pub const SHARED: u64 = ARGS + ARGS_MAX as u64;
/// Bytes of the shared area, page-rounded.
pub const SHARED_LEN: u64 = (std::mem::size_of::<SharedArea>() as u64).div_ceil(PAGE) * PAGE;
/// The GDT the vCPU starts with (the supervisor loads its own at once).
pub const BOOT_GDT: u64 = 0xf000;
/// The boot GDT: null, 64-bit kernel code (0x08), kernel data (0x10).
pub const BOOT_GDT_ENTRIES: [u64; 3] = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff];
/// The page-table arena.
pub const TABLES: u64 = 0x1_0000;
/// One past the page-table arena.
pub const TABLES_END: u64 = layout::IMAGE_MIN;

const _: () = assert!(SHARED + SHARED_LEN <= BOOT_GDT && BOOT_GDT + PAGE <= TABLES);

/// Where the boot info, the command line and the shared area go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootArea {
    /// The boot info.
    pub boot_info: u64,
    /// The command line.
    pub args: u64,
    /// The shared area.
    pub shared: u64,
}

impl BootArea {
    /// Under KVM: the low pages ([`BOOT_INFO`], [`ARGS`], [`SHARED`]).
    pub const KVM: BootArea = BootArea { boot_info: BOOT_INFO, args: ARGS, shared: SHARED };
    /// In process mode: just below the image, where KVM's page tables go.
    /// Guest addresses are the tender's own there, and Linux refuses to
    /// map below `vm.mmap_min_addr` (65536 on most distributions), so the
    /// low pages cannot be used; the runtime learns every address from the
    /// boot info (its own from `rdi`).
    pub const PROCESS: BootArea =
        BootArea { boot_info: PROCESS_LOW, args: PROCESS_LOW + PAGE, shared: PROCESS_LOW + PAGE + ARGS_MAX as u64 };

    /// One past the shared area.
    pub const fn end(&self) -> u64 {
        self.shared + SHARED_LEN
    }
}

/// The lowest guest address in process mode, the process boot area's start.
pub const PROCESS_LOW: u64 = 0xf_0000;
const _: () = assert!(BootArea::PROCESS.end() <= layout::IMAGE_MIN);
const _: () = assert!(std::mem::size_of::<skiff_abi::BootInfo>() as u64 <= ARGS - BOOT_INFO);

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const NX: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Permissions of a mapped range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perm {
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// Reachable from ring 3.
    pub user: bool,
}

impl Perm {
    /// Like `r-x user` or `rw- supervisor`.
    pub fn describe(self) -> String {
        let flag = |on, c| if on { c } else { '-' };
        let ring = if self.user { "user" } else { "supervisor" };
        format!("r{}{} {ring}", flag(self.write, 'w'), flag(self.exec, 'x'))
    }

    fn bits(self) -> u64 {
        P | if self.write { RW } else { 0 } | if self.user { US } else { 0 } | if self.exec { 0 } else { NX }
    }
}

/// A page-aligned range to map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Its permissions.
    pub perm: Perm,
    /// What it is, for messages and `skiff inspect`.
    pub what: &'static str,
    /// Shared with the tender's I/O thread (the NIC rings): the service
    /// may use it, but never as a hypercall argument.
    pub device: bool,
}

/// Page-table construction failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PagingError {
    /// The arena below the image cannot hold the tables.
    #[error("the page tables do not fit below the image ({0} tables needed)")]
    ArenaFull(usize),
    /// Two regions map the same page.
    #[error("{what} maps {addr:#x}, which is already mapped")]
    Overlap {
        /// The region being mapped.
        what: &'static str,
        /// The page.
        addr: u64,
    },
    /// A region is not page-aligned.
    #[error("{0} is not page-aligned")]
    Unaligned(&'static str),
    /// Guest memory is too small for the image.
    #[error("the image needs {need:#x} bytes of memory plus a heap, but the guest has {have:#x}")]
    MemoryTooSmall {
        /// Bytes the image occupies.
        need: u64,
        /// Guest memory.
        have: u64,
    },
}

/// The regions of a guest with `mem_size` bytes running `image`, in address
/// order, with the heap range. `rings` is the NIC ring area at the top of
/// memory, if any; the heap ends below it.
pub fn regions(
    image: &Image,
    mem_size: u64,
    rings: Option<(u64, u64)>,
) -> Result<(Vec<Region>, (u64, u64)), PagingError> {
    regions_in(image, mem_size, rings, false)
}

/// The regions of a guest run in process mode: [`BootArea::PROCESS`], and
/// no boot GDT, page tables or supervisor segments (nothing runs in ring
/// 0); otherwise as [`regions`].
pub fn process_regions(
    image: &Image,
    mem_size: u64,
    rings: Option<(u64, u64)>,
) -> Result<(Vec<Region>, (u64, u64)), PagingError> {
    regions_in(image, mem_size, rings, true)
}

fn regions_in(
    image: &Image,
    mem_size: u64,
    rings: Option<(u64, u64)>,
    process: bool,
) -> Result<(Vec<Region>, (u64, u64)), PagingError> {
    let ro = Perm { write: false, exec: false, user: true };
    let rw = Perm { write: true, exec: false, user: true };
    let region = |start, end, perm, what| Region { start, end, perm, what, device: false };
    let area = if process { BootArea::PROCESS } else { BootArea::KVM };
    let mut out = vec![
        region(area.boot_info, area.args, ro, "boot info"),
        region(area.args, area.shared, ro, "command line"),
        region(area.shared, area.end(), rw, "shared area"),
    ];
    if !process {
        out.push(region(BOOT_GDT, BOOT_GDT + PAGE, Perm { write: false, exec: false, user: false }, "boot GDT"));
        out.push(region(TABLES, TABLES_END, Perm { write: true, exec: false, user: false }, "page tables"));
    }
    for s in &image.segments {
        if process && s.supervisor() {
            continue;
        }
        let what = match (s.supervisor(), s.executable(), s.writable()) {
            _ if s.stack() => "ring-3 stack",
            (true, true, _) => "code of the supervisor",
            (true, false, _) => "data of the supervisor",
            (false, true, _) => "code of the image",
            (false, false, true) => "data of the image",
            (false, false, false) => "read-only data of the image",
        };
        let perm = Perm { write: s.writable(), exec: s.executable(), user: !s.supervisor() };
        out.push(region(s.page_start(), s.page_end(), perm, what));
    }
    let heap_start = image.end();
    let heap_end = rings.map_or(mem_size, |(start, _)| start);
    // At least one page of heap: the allocator needs room for its metadata.
    if heap_start + PAGE > heap_end {
        return Err(PagingError::MemoryTooSmall { need: heap_start + (mem_size - heap_end), have: mem_size });
    }
    out.push(region(heap_start, heap_end, rw, "heap"));
    if let Some((start, end)) = rings {
        out.push(Region { start, end, perm: rw, what: "NIC rings", device: true });
    }
    Ok((out, (heap_start, heap_end)))
}

/// Page tables ready to copy into guest memory at [`TABLES`].
pub struct PageTables {
    tables: Vec<[u64; 512]>,
}

impl PageTables {
    /// The top-level table's guest address (the value for CR3).
    pub fn root(&self) -> u64 {
        TABLES
    }

    /// Tables in arena order; table `i` goes at `TABLES + i * PAGE`.
    pub fn tables(&self) -> &[[u64; 512]] {
        &self.tables
    }

    /// Builds tables mapping every region.
    pub fn build(regions: &[Region]) -> Result<PageTables, PagingError> {
        let mut pt = PageTables { tables: vec![[0; 512]] };
        for r in regions {
            if r.start % PAGE != 0 || r.end % PAGE != 0 {
                return Err(PagingError::Unaligned(r.what));
            }
            let mut addr = r.start;
            while addr < r.end {
                if addr % LARGE == 0 && r.end - addr >= LARGE {
                    pt.map(addr, r, true)?;
                    addr += LARGE;
                } else {
                    pt.map(addr, r, false)?;
                    addr += PAGE;
                }
            }
        }
        let max = ((TABLES_END - TABLES) / PAGE) as usize;
        if pt.tables.len() > max {
            return Err(PagingError::ArenaFull(pt.tables.len()));
        }
        Ok(pt)
    }

    /// Index of the child table behind `entry` of table `t`, creating it.
    fn child(&mut self, t: usize, entry: usize, r: &Region, addr: u64) -> Result<usize, PagingError> {
        let e = self.tables[t][entry];
        if e & P != 0 {
            if e & PS != 0 {
                return Err(PagingError::Overlap { what: r.what, addr });
            }
            return Ok((((e & ADDR_MASK) - TABLES) / PAGE) as usize);
        }
        self.tables.push([0; 512]);
        let i = self.tables.len() - 1;
        self.tables[t][entry] = (TABLES + i as u64 * PAGE) | P | RW | US;
        Ok(i)
    }

    fn map(&mut self, addr: u64, r: &Region, large: bool) -> Result<(), PagingError> {
        let idx = |level: u32| ((addr >> (12 + 9 * level)) & 0x1ff) as usize;
        let pdpt = self.child(0, idx(3), r, addr)?;
        let pd = self.child(pdpt, idx(2), r, addr)?;
        if large {
            if self.tables[pd][idx(1)] & P != 0 {
                return Err(PagingError::Overlap { what: r.what, addr });
            }
            self.tables[pd][idx(1)] = addr | r.perm.bits() | PS;
            return Ok(());
        }
        let pt = self.child(pd, idx(1), r, addr)?;
        if self.tables[pt][idx(0)] & P != 0 {
            return Err(PagingError::Overlap { what: r.what, addr });
        }
        self.tables[pt][idx(0)] = addr | r.perm.bits();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::Builder;

    impl PageTables {
        /// The test oracle: walks the tables like the MMU, giving the
        /// permissions of `addr`, or `None` if it is not mapped.
        fn lookup(&self, addr: u64) -> Option<Perm> {
            let mut t = 0usize;
            for level in (0..4).rev() {
                let e = self.tables[t][((addr >> (12 + 9 * level)) & 0x1ff) as usize];
                if e & P == 0 {
                    return None;
                }
                if level == 0 || (level == 1 && e & PS != 0) {
                    return Some(Perm { write: e & RW != 0, exec: e & NX == 0, user: e & US != 0 });
                }
                t = (((e & ADDR_MASK) - TABLES) / PAGE) as usize;
            }
            None
        }
    }

    fn image() -> Image {
        Image::parse(Builder::new().build(), true).unwrap()
    }

    #[test]
    fn the_map_is_w_xor_x_with_supervisor_pages_hidden() {
        let img = image();
        let (regions, heap) = regions(&img, 64 << 20, None).unwrap();
        let pt = PageTables::build(&regions).unwrap();
        let user_ro = Some(Perm { write: false, exec: false, user: true });
        assert_eq!(pt.lookup(0), None, "page 0 is unmapped");
        assert_eq!(pt.lookup(0xfff), None);
        assert_eq!(pt.lookup(BOOT_INFO), user_ro);
        assert_eq!(pt.lookup(ARGS + 10), user_ro);
        assert_eq!(pt.lookup(SHARED), Some(Perm { write: true, exec: false, user: true }));
        assert_eq!(pt.lookup(TABLES), Some(Perm { write: true, exec: false, user: false }));
        assert_eq!(pt.lookup(BOOT_GDT), Some(Perm { write: false, exec: false, user: false }));
        assert_eq!(pt.lookup(SHARED + SHARED_LEN), None, "the gap after the shared area is unmapped");
        assert_eq!(pt.lookup(0x10_0000), Some(Perm { write: false, exec: true, user: false }));
        assert_eq!(pt.lookup(0x10_1000), Some(Perm { write: true, exec: false, user: true }));
        assert_eq!(pt.lookup(0x10_3000), None, "guard page below the stack");
        assert_eq!(pt.lookup(0x10_4000), Some(Perm { write: true, exec: false, user: true }));
        assert_eq!(heap, (0x10_8000, 64 << 20));
        assert_eq!(pt.lookup(0x10_8000), Some(Perm { write: true, exec: false, user: true }));
        assert_eq!(pt.lookup((64 << 20) - 1), Some(Perm { write: true, exec: false, user: true }));
        assert_eq!(pt.lookup(64 << 20), None, "nothing beyond memory");
        for r in &regions {
            for addr in (r.start..r.end).step_by(PAGE as usize) {
                let p = pt.lookup(addr).unwrap();
                assert!(!(p.write && p.exec), "{addr:#x} is W+X");
            }
        }
    }

    #[test]
    fn rings_sit_above_the_heap() {
        let img = image();
        let mem = 64 << 20;
        let rings = (mem - 0x20_2000, mem);
        let (regions, heap) = regions(&img, mem, Some(rings)).unwrap();
        assert_eq!(heap, (0x10_8000, rings.0));
        let last = regions.last().unwrap();
        assert!(last.device && last.start == rings.0 && last.end == mem);
        let pt = PageTables::build(&regions).unwrap();
        assert_eq!(pt.lookup(rings.0), Some(Perm { write: true, exec: false, user: true }));
    }

    #[test]
    fn large_pages_keep_the_table_count_small() {
        let img = image();
        let (regions, _) = regions(&img, 3 << 30, None).unwrap();
        let pt = PageTables::build(&regions).unwrap();
        // PML4, PDPT, 3 PDs, one PT for the low 2 MiB.
        assert_eq!(pt.tables().len(), 6);
        assert!(pt.lookup((3 << 30) - 1).is_some());
    }

    #[test]
    fn overlaps_and_small_memory_are_refused() {
        let perm = Perm { write: true, exec: false, user: true };
        let r = [
            Region { start: 0x1000, end: 0x3000, perm, what: "a", device: false },
            Region { start: 0x2000, end: 0x4000, perm, what: "b", device: false },
        ];
        assert_eq!(PageTables::build(&r).err(), Some(PagingError::Overlap { what: "b", addr: 0x2000 }));
        let img = image();
        assert!(matches!(regions(&img, 0x10_8000, None), Err(PagingError::MemoryTooSmall { .. })));
    }
}
