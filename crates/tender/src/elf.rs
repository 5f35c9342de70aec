//! Reading a Skiff image: an ELF64 x86-64 executable.
//!
//! The file is untrusted input. The `object` crate's ELF reader bounds
//! every read against the file; on top of it this module checks what a
//! Skiff image must be, and anything odd is an [`ElfError`] naming what is
//! wrong. What comes out, an [`Image`], is safe to load: segments sorted,
//! inside the file, page-disjoint, above [`layout::IMAGE_MIN`], and the
//! entry point in an executable supervisor segment.
//!
//! The symbol table is not read when the image is loaded: it is looked at
//! in place when a name is needed (a fault report names one function), and
//! every name is demangled into at most [`NAME_MAX`] bytes, so an image
//! cannot make loading or naming take unbounded time or memory.

use object::LittleEndian as LE;
use object::elf::{self, FileHeader64};
use object::read::elf::{FileHeader, Note, ProgramHeader, SectionHeader, Sym};
use skiff_abi::manifest::{DESC_SIZE, NOTE_TYPE, device_name};
use skiff_abi::{ABI_VERSION, DEVICE_NAME_MAX, DeviceKind, MAX_DEVICES, layout, pflags, pvh};
use std::fmt::Write as _;

/// Largest image file the tender reads.
pub const MAX_FILE_SIZE: u64 = 128 << 20;
/// Most program headers accepted.
pub const MAX_PHDRS: u16 = 64;
/// Longest demangled name shown, in bytes; longer ones end in `...`.
pub const NAME_MAX: usize = 256;
/// Most bytes of a raw symbol name read.
pub const RAW_NAME_MAX: usize = 4 * NAME_MAX;

const PF_X: u32 = elf::PF_X.0;
const PF_W: u32 = elf::PF_W.0;
const PAGE: u64 = layout::PAGE_SIZE;

/// What is wrong with an image file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// The file is shorter than an ELF header or does not start with one.
    #[error("not an ELF file")]
    NotElf,
    /// The file is larger than [`MAX_FILE_SIZE`].
    #[error("the image is larger than the limit of {MAX_FILE_SIZE} bytes")]
    TooLarge {
        /// Bytes read (reading stops past the limit).
        size: u64,
    },
    /// Not a 64-bit little-endian x86-64 executable.
    #[error("not a 64-bit little-endian x86-64 executable ({0})")]
    WrongKind(&'static str),
    /// A header field is out of range.
    #[error("bad ELF header: {0}")]
    BadHeader(&'static str),
    /// A structure extends past the end of the file.
    #[error("{what} at offset {offset:#x} (+{len:#x}) runs past the end of the file ({file_size:#x} bytes)")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// The file's size.
        file_size: u64,
    },
    /// The image needs a dynamic loader or thread-local storage.
    #[error("segment {index}: {what} segments are not supported (a Skiff image is static)")]
    Unsupported {
        /// Program header index.
        index: usize,
        /// Kind of segment.
        what: &'static str,
    },
    /// A loadable segment is malformed.
    #[error("segment {index} at {vaddr:#x}: {problem}")]
    BadSegment {
        /// Program header index.
        index: usize,
        /// Its virtual address.
        vaddr: u64,
        /// What is wrong.
        problem: &'static str,
    },
    /// Two segments share a page.
    #[error("segments at {a:#x} and {b:#x} overlap or share a page")]
    Overlap {
        /// First segment's address.
        a: u64,
        /// Second segment's address.
        b: u64,
    },
    /// There is nothing to load.
    #[error("the image has no loadable segment")]
    NoSegments,
    /// The entry point is not where it may be.
    #[error("entry point {0:#x} is not inside an executable supervisor segment")]
    BadEntry(u64),
    /// A note is malformed.
    #[error("malformed note in the note segment at offset {offset:#x}: {problem}")]
    BadNote {
        /// File offset of the note segment.
        offset: u64,
        /// What is wrong.
        problem: String,
    },
    /// No Skiff manifest note.
    #[error("not a Skiff image: it has no Skiff manifest note (build it with `skiff build`)")]
    NoManifest,
    /// The manifest is malformed.
    #[error("bad manifest: {0}")]
    BadManifest(String),
    /// Built for another ABI.
    #[error(
        "the image was built for Skiff ABI version {image}, but this tender speaks version {tender}; \
         rebuild the image with this Skiff (`skiff build`) or run it with a matching tender"
    )]
    AbiMismatch {
        /// The image's version.
        image: u32,
        /// The tender's version.
        tender: u32,
    },
    /// There is no ring-3 stack segment with a guard page.
    #[error("{0}")]
    BadStack(&'static str),
}

/// One loadable segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest address (identity mapped, so also the physical address).
    pub vaddr: u64,
    /// Bytes in memory.
    pub memsz: u64,
    /// Offset of the file bytes.
    pub offset: u64,
    /// Bytes in the file (the rest of `memsz` is zero).
    pub filesz: u64,
    /// ELF `p_flags`, including Skiff's own bits.
    pub flags: u32,
}

impl Segment {
    /// Readable.
    pub fn readable(&self) -> bool {
        self.flags & elf::PF_R.0 != 0
    }
    /// Writable.
    pub fn writable(&self) -> bool {
        self.flags & PF_W != 0
    }
    /// Executable.
    pub fn executable(&self) -> bool {
        self.flags & PF_X != 0
    }
    /// Mapped for ring 0 only.
    pub fn supervisor(&self) -> bool {
        self.flags & pflags::SUPERVISOR != 0
    }
    /// The ring-3 stack.
    pub fn stack(&self) -> bool {
        self.flags & pflags::STACK != 0
    }
    /// First page address.
    pub fn page_start(&self) -> u64 {
        self.vaddr & !(PAGE - 1)
    }
    /// One past the last page.
    pub fn page_end(&self) -> u64 {
        (self.vaddr + self.memsz).div_ceil(PAGE) * PAGE
    }
}

/// A device the image declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredDevice {
    /// Its kind.
    pub kind: DeviceKind,
    /// Its name.
    pub name: String,
    /// The service connects out through it.
    pub outbound: bool,
}

/// An entry of the image's symbol table, read in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Symbol<'a> {
    /// Its value: the address of a defined symbol.
    pub addr: u64,
    /// Size in bytes (zero for assembly labels).
    pub size: u64,
    /// Undefined: the image expects someone else to provide it.
    pub undefined: bool,
    /// A function, or an untyped label defined in a section (assembly).
    pub code: bool,
    /// The string table from the name's offset on (empty if out of range).
    name_tail: &'a [u8],
}

impl<'a> Symbol<'a> {
    /// The raw (mangled) name, up to its NUL and at most [`RAW_NAME_MAX`]
    /// bytes: a name is never scanned further, whatever its length.
    pub fn raw_name(&self) -> &'a [u8] {
        let tail = &self.name_tail[..self.name_tail.len().min(RAW_NAME_MAX)];
        tail.split(|&b| b == 0).next().unwrap_or_default()
    }

    /// The name is exactly `name` (reads at most its length and one byte).
    pub fn is_named(&self, name: &[u8]) -> bool {
        self.name_tail.strip_prefix(name).is_some_and(|rest| rest.first() == Some(&0))
    }

    /// The name is not empty (reads one byte).
    pub fn has_name(&self) -> bool {
        self.name_tail.first().is_some_and(|&b| b != 0)
    }

    /// The demangled name, at most [`NAME_MAX`] bytes.
    pub fn name(&self) -> String {
        demangle(self.raw_name())
    }

    /// A named function or label a report may use: not a local `.L` label.
    fn names_code(&self) -> bool {
        self.code && self.addr != 0 && self.has_name() && !self.name_tail.starts_with(b".L")
    }
}

/// Demangles a Rust symbol name into at most [`NAME_MAX`] bytes: the
/// demangler stops at the first byte over the limit, so the work is
/// bounded whatever the name (back-references can make a short mangled
/// name stand for megabytes).
pub fn demangle(raw: &[u8]) -> String {
    struct Bounded(String);
    impl std::fmt::Write for Bounded {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let room = NAME_MAX - self.0.len();
            if s.len() <= room {
                self.0.push_str(s);
                return Ok(());
            }
            let cut = (0..=room).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
            self.0.push_str(&s[..cut]);
            Err(std::fmt::Error)
        }
    }
    let raw = String::from_utf8_lossy(&raw[..raw.len().min(RAW_NAME_MAX)]);
    let mut out = Bounded(String::new());
    if write!(out, "{:#}", rustc_demangle::demangle(&raw)).is_err() {
        out.0.push_str("...");
    }
    out.0
}

/// An image file's bytes: mapped from the file, or read into memory.
pub enum ImageBytes {
    /// Read (a pipe, a device, a test's bytes).
    Owned(Vec<u8>),
    /// Mapped read-only from a regular file.
    Mapped(crate::mapped::MappedFile),
}

impl std::ops::Deref for ImageBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ImageBytes::Owned(v) => v,
            ImageBytes::Mapped(m) => m,
        }
    }
}

/// A copy is read into memory.
impl Clone for ImageBytes {
    fn clone(&self) -> ImageBytes {
        ImageBytes::Owned(self.to_vec())
    }
}

impl std::fmt::Debug for ImageBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if matches!(self, ImageBytes::Mapped(_)) { "mapped" } else { "read" };
        write!(f, "{} bytes, {how}", self.len())
    }
}

impl From<Vec<u8>> for ImageBytes {
    fn from(v: Vec<u8>) -> ImageBytes {
        ImageBytes::Owned(v)
    }
}

/// A validated image.
#[derive(Clone, Debug)]
pub struct Image {
    /// The file's bytes.
    pub data: ImageBytes,
    /// The 64-bit entry point (`e_entry`).
    pub entry: u64,
    /// Loadable segments, sorted by address, page-disjoint.
    pub segments: Vec<Segment>,
    /// ABI version from the manifest.
    pub abi_version: u32,
    /// Declared devices.
    pub devices: Vec<DeclaredDevice>,
    /// The PVH entry, if the image has the note.
    pub pvh_entry: Option<u64>,
    /// The process-mode entry ([`skiff_abi::process`]), if the image has
    /// the note; checked to lie in the image's ring-3 code.
    pub process_entry: Option<u64>,
    /// The state a vCPU starts in ring 3 with ([`skiff_abi::ring3`]), if
    /// the image has the note; checked against the image's segments.
    pub ring3_entry: Option<skiff_abi::ring3::Entry>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl Image {
    /// Parses and validates an image. `abi_check` false skips the ABI
    /// version comparison (for `skiff inspect`, which reports it instead).
    pub fn parse(data: impl Into<ImageBytes>, abi_check: bool) -> Result<Image, ElfError> {
        let data = data.into();
        let file_size = data.len() as u64;
        if file_size > MAX_FILE_SIZE {
            return Err(ElfError::TooLarge { size: file_size });
        }
        // The identification bytes first, for a precise message; then
        // `object` reads the header.
        let ident = data.get(..16).filter(|i| i[..4] == elf::ELFMAG).ok_or(ElfError::NotElf)?;
        if ident[4] != elf::ELFCLASS64.0 {
            return Err(ElfError::WrongKind("not 64-bit"));
        }
        if ident[5] != elf::ELFDATA2LSB.0 {
            return Err(ElfError::WrongKind("not little-endian"));
        }
        let header = FileHeader64::<LE>::parse(&*data).map_err(|_| ElfError::NotElf)?;
        if ident[6] != elf::EV_CURRENT.0 || header.e_version(LE) != u32::from(elf::EV_CURRENT.0) {
            return Err(ElfError::BadHeader("unknown ELF version"));
        }
        if header.e_type(LE) != elf::ET_EXEC {
            return Err(ElfError::WrongKind("not an executable (ET_EXEC)"));
        }
        if header.e_machine(LE) != elf::EM_X86_64 {
            return Err(ElfError::WrongKind("not x86-64"));
        }
        let phnum = header.e_phnum(LE);
        if phnum == 0 || header.e_phoff(LE) == 0 {
            return Err(ElfError::NoSegments);
        }
        if header.e_phentsize(LE) != 56 {
            return Err(ElfError::BadHeader("program header size is not 56"));
        }
        if phnum > MAX_PHDRS {
            return Err(ElfError::BadHeader("too many program headers"));
        }
        let truncated = |what, offset, len| ElfError::Truncated { what, offset, len, file_size };
        let phdrs = header
            .program_headers(LE, &*data)
            .map_err(|_| truncated("program header table", header.e_phoff(LE), u64::from(phnum) * 56))?;

        let mut segments = Vec::new();
        let (mut manifest, mut pvh_entry, mut process_entry) = (None, None, None);
        let mut ring3_entry = None;
        for (index, p) in phdrs.iter().enumerate() {
            let (offset, filesz, vaddr, memsz) = (p.p_offset(LE), p.p_filesz(LE), p.p_vaddr(LE), p.p_memsz(LE));
            let flags = p.p_flags(LE).0;
            let what = match p.p_type(LE) {
                elf::PT_LOAD => {
                    let bad = |problem| ElfError::BadSegment { index, vaddr, problem };
                    if memsz == 0 {
                        continue;
                    }
                    if filesz > memsz {
                        return Err(bad("file size exceeds memory size"));
                    }
                    if vaddr != p.p_paddr(LE) {
                        return Err(bad("virtual and physical addresses differ"));
                    }
                    if vaddr < layout::IMAGE_MIN {
                        return Err(bad("below 1 MiB, where the tender keeps the boot area"));
                    }
                    if vaddr.checked_add(memsz).is_none_or(|end| end > layout::MEM_MAX) {
                        return Err(bad("extends beyond the largest guest memory"));
                    }
                    p.data(LE, &*data).map_err(|()| truncated("segment contents", offset, filesz))?;
                    if flags & PF_W != 0 && flags & PF_X != 0 {
                        return Err(bad("writable and executable (W^X)"));
                    }
                    if flags & pflags::STACK != 0 && (flags & PF_W == 0 || filesz != 0) {
                        return Err(bad("the stack segment must be writable and have no file bytes"));
                    }
                    segments.push(Segment { vaddr, memsz, offset, filesz, flags });
                    continue;
                }
                elf::PT_NOTE => {
                    p.data(LE, &*data).map_err(|()| truncated("note segment", offset, filesz))?;
                    let bad = |e: object::Error| ElfError::BadNote { offset, problem: e.to_string() };
                    let Some(mut notes) = p.notes(LE, &*data).map_err(bad)? else { continue };
                    while let Some(note) = notes.next().map_err(bad)? {
                        let entries =
                            Entries { pvh: &mut pvh_entry, process: &mut process_entry, ring3: &mut ring3_entry };
                        read_note(&note, offset, &mut manifest, entries)?;
                    }
                    continue;
                }
                elf::PT_DYNAMIC => "dynamic-linking",
                elf::PT_INTERP => "interpreter",
                elf::PT_TLS => "thread-local storage",
                _ => continue,
            };
            return Err(ElfError::Unsupported { index, what });
        }
        if segments.is_empty() {
            return Err(ElfError::NoSegments);
        }
        segments.sort_by_key(|s| s.vaddr);
        if let Some(pair) = segments.windows(2).find(|pair| pair[0].page_end() > pair[1].page_start()) {
            return Err(ElfError::Overlap { a: pair[0].vaddr, b: pair[1].vaddr });
        }
        let entry = header.e_entry(LE);
        let in_code = |s: &Segment| s.executable() && s.supervisor() && (s.vaddr..s.vaddr + s.memsz).contains(&entry);
        if !segments.iter().any(in_code) {
            return Err(ElfError::BadEntry(entry));
        }
        let mut stacks = segments.iter().filter(|s| s.stack());
        match (stacks.next(), stacks.next()) {
            (None, _) => {
                return Err(ElfError::BadStack("the image has no ring-3 stack segment (is it a Skiff image?)"));
            }
            (Some(_), Some(_)) => return Err(ElfError::BadStack("the image has more than one stack segment")),
            (Some(stack), None) => {
                let guard = stack.page_start() - PAGE;
                if segments.iter().any(|s| s.page_start() <= guard && guard < s.page_end()) {
                    return Err(ElfError::BadStack(
                        "the page below the stack segment must be left unmapped as a guard",
                    ));
                }
            }
        }
        let user_code = |e: &u64| {
            segments.iter().any(|s| s.executable() && !s.supervisor() && (s.vaddr..s.vaddr + s.memsz).contains(e))
        };
        if let Some(e) = process_entry.filter(|e| !user_code(e)) {
            return Err(ElfError::BadNote {
                offset: 0,
                problem: format!("the process entry {e:#x} is not in the image's ring-3 code"),
            });
        }
        if let Some(r) = &ring3_entry {
            check_ring3_entry(r, &segments, user_code(&r.entry)).map_err(|problem| ElfError::BadNote {
                offset: 0,
                problem: format!("the ring-3 entry note: {problem}"),
            })?;
        }
        let (abi_version, devices) = manifest.ok_or(ElfError::NoManifest)?;
        if abi_check && abi_version != ABI_VERSION {
            return Err(ElfError::AbiMismatch { image: abi_version, tender: ABI_VERSION });
        }
        Ok(Image { data, entry, segments, abi_version, devices, pvh_entry, process_entry, ring3_entry })
    }

    /// One past the last byte of the highest segment, page aligned.
    pub fn end(&self) -> u64 {
        self.segments.iter().map(Segment::page_end).max().unwrap_or(layout::IMAGE_MIN)
    }

    /// The file bytes of a segment (validated at parse time).
    pub fn segment_bytes(&self, s: &Segment) -> &[u8] {
        &self.data[s.offset as usize..(s.offset + s.filesz) as usize]
    }

    /// The ring-3 stack segment (there is exactly one).
    pub fn stack(&self) -> &Segment {
        self.segments.iter().find(|s| s.stack()).expect("validated: one stack segment")
    }

    /// The entries of the symbol table (`.symtab`), read in place and in
    /// file order; none for a stripped image or a malformed table (names
    /// are a convenience for reports, never needed to run).
    pub fn symbols(&self) -> impl Iterator<Item = Symbol<'_>> {
        let data = &*self.data;
        let table = || {
            let sections = FileHeader64::<LE>::parse(data).ok()?.sections(LE, data).ok()?;
            let table = sections.symbols(LE, data, elf::SHT_SYMTAB).ok()?;
            let strings = sections.section(table.string_section()).ok()?.data(LE, data).ok()?;
            Some((table, strings))
        };
        table().into_iter().flat_map(|(table, strings)| {
            table.iter().skip(1).map(|s| {
                let (kind, section) = (s.st_type(), s.st_shndx(LE));
                Symbol {
                    addr: s.st_value(LE),
                    size: s.st_size(LE),
                    undefined: s.is_undefined(LE),
                    code: kind == elf::STT_FUNC || (kind == elf::STT_NOTYPE && section != elf::SHN_UNDEF),
                    name_tail: strings.get(s.st_name(LE) as usize..).unwrap_or_default(),
                }
            })
        })
    }

    /// The function or label at `addr`: the code symbol with the highest
    /// address at or below it (the last such in the table on a tie), unless
    /// its size says `addr` is past its end. One pass over the table.
    pub fn function_at(&self, addr: u64) -> Option<Symbol<'_>> {
        let best = self
            .symbols()
            .filter(|s| s.names_code() && s.addr <= addr)
            .reduce(|a, b| if b.addr >= a.addr { b } else { a })?;
        (best.size == 0 || addr - best.addr < best.size).then_some(best)
    }

    /// Names the code at `addr`, like `hello::main+0x1c`.
    pub fn symbolize(&self, addr: u64) -> Option<String> {
        self.function_at(addr).map(|s| format!("{}+{:#x}", s.name(), addr - s.addr))
    }

    /// The named code symbols sorted by address, for naming many addresses
    /// (a profile's) with one pass over the table. Names are demangled
    /// only when asked for.
    pub fn code_symbols(&self) -> CodeSymbols<'_> {
        let mut table: Vec<Symbol<'_>> = self.symbols().filter(Symbol::names_code).collect();
        // Stable: among symbols at one address the last in the table wins,
        // as in `function_at`.
        table.sort_by_key(|s| s.addr);
        CodeSymbols(table)
    }
}

/// An image's code symbols in address order ([`Image::code_symbols`]).
pub struct CodeSymbols<'a>(Vec<Symbol<'a>>);

impl<'a> CodeSymbols<'a> {
    /// The same answer as [`Image::function_at`], by binary search.
    pub fn function_at(&self, addr: u64) -> Option<&Symbol<'a>> {
        let i = self.0.partition_point(|s| s.addr <= addr);
        let best = self.0.get(i.checked_sub(1)?)?;
        (best.size == 0 || addr - best.addr < best.size).then_some(best)
    }
}

type Manifest = (u32, Vec<DeclaredDevice>);

/// The entries notes may name.
struct Entries<'a> {
    pvh: &'a mut Option<u64>,
    process: &'a mut Option<u64>,
    ring3: &'a mut Option<skiff_abi::ring3::Entry>,
}

/// Checks the ring-3 start state against the segments: the entry in ring-3
/// code (`in_user_code`), the stack top in the stack segment, the tables
/// inside the supervisor's segments with sizes the CPU accepts, and
/// selectors of the right privilege inside the GDT.
fn check_ring3_entry(r: &skiff_abi::ring3::Entry, segments: &[Segment], in_user_code: bool) -> Result<(), String> {
    if !in_user_code {
        return Err(format!("the entry {:#x} is not in the image's ring-3 code", r.entry));
    }
    let stack = segments.iter().find(|s| s.stack()).ok_or("no stack segment")?;
    let in_stack = stack.vaddr < r.stack_top && r.stack_top <= stack.vaddr + stack.memsz;
    if !in_stack || !r.stack_top.is_multiple_of(16) {
        return Err(format!("the stack top {:#x} is not a 16-byte boundary in the stack segment", r.stack_top));
    }
    let in_supervisor = |base: u64, limit: u64| {
        limit <= 0xffff
            && segments.iter().any(|s| s.supervisor() && s.vaddr <= base && base + limit < s.vaddr + s.memsz)
    };
    let tables = [("GDT", r.gdt_base, r.gdt_limit, 8), ("IDT", r.idt_base, r.idt_limit, 16)];
    for (what, base, limit, entry) in tables {
        if !in_supervisor(base, limit) || !(limit + 1).is_multiple_of(entry) {
            return Err(format!("the {what} at {base:#x} (limit {limit:#x}) is not whole entries in the supervisor"));
        }
    }
    if !in_supervisor(r.tss_base, r.tss_limit) || r.tss_limit < 103 {
        return Err(format!("the TSS at {:#x} (limit {:#x}) is not in the supervisor", r.tss_base, r.tss_limit));
    }
    let in_gdt = |selector: u16, size: u64| u64::from(selector & !7) + size - 1 <= r.gdt_limit && selector & !7 != 0;
    let (cs, ss, tss) = (r.user_cs(), r.user_ss(), r.tss());
    if cs & 3 != 3 || ss & 3 != 3 || tss & 7 != 0 || !in_gdt(cs, 8) || !in_gdt(ss, 8) || !in_gdt(tss, 16) {
        return Err(format!(
            "selectors {cs:#x}, {ss:#x}, {tss:#x} are not ring 3's code and stack and a TSS in the GDT"
        ));
    }
    Ok(())
}

/// Takes in one note of the note segment at `offset`: the manifest, the
/// PVH entry, the process entry or the ring-3 entry; other notes are
/// ignored.
fn read_note(
    note: &Note<'_, FileHeader64<LE>>,
    offset: u64,
    manifest: &mut Option<Manifest>,
    entries: Entries<'_>,
) -> Result<(), ElfError> {
    let Entries { pvh: pvh_entry, process: process_entry, ring3 } = entries;
    let (name, note_type, desc) = (note.name_bytes(), note.n_type(LE).0, note.desc());
    if name == b"Skiff\0" && note_type == NOTE_TYPE {
        if manifest.is_some() {
            return Err(ElfError::BadManifest("the image has two manifests".into()));
        }
        *manifest = Some(parse_manifest(desc)?);
    } else if name == b"Skiff\0" && note_type == skiff_abi::process::NOTE_TYPE_ENTRY {
        let Ok(bytes) = <[u8; 8]>::try_from(desc) else {
            return Err(ElfError::BadNote { offset, problem: "the process entry note is not 8 bytes".into() });
        };
        *process_entry = Some(u64::from_le_bytes(bytes));
    } else if name == b"Skiff\0" && note_type == skiff_abi::ring3::NOTE_TYPE_ENTRY {
        let Some(entry) = skiff_abi::ring3::Entry::decode(desc) else {
            return Err(ElfError::BadNote { offset, problem: "the ring-3 entry note has the wrong size".into() });
        };
        *ring3 = Some(entry);
    } else if name == pvh::NOTE_NAME && note_type == pvh::NOTE_TYPE_PHYS32_ENTRY {
        *pvh_entry = Some(match *desc {
            [a, b, c, d] => u64::from(u32::from_le_bytes([a, b, c, d])),
            [a, b, c, d, e, f, g, h] => u64::from_le_bytes([a, b, c, d, e, f, g, h]),
            _ => return Err(ElfError::BadNote { offset, problem: "PVH entry note has an odd size".into() }),
        });
    }
    Ok(())
}

fn parse_manifest(desc: &[u8]) -> Result<Manifest, ElfError> {
    if desc.len() != DESC_SIZE {
        // An older or newer ABI may have another layout: report the version
        // if it can be read, so the message says what to do.
        if desc.len() >= 4 && u32_at(desc, 0) != ABI_VERSION {
            return Err(ElfError::AbiMismatch { image: u32_at(desc, 0), tender: ABI_VERSION });
        }
        return Err(ElfError::BadManifest(format!("descriptor is {} bytes, expected {DESC_SIZE}", desc.len())));
    }
    let version = u32_at(desc, 0);
    let count = u32_at(desc, 4) as usize;
    if count > MAX_DEVICES {
        return Err(ElfError::BadManifest(format!("{count} devices declared; at most {MAX_DEVICES}")));
    }
    let mut devices = Vec::with_capacity(count);
    for i in 0..count {
        let at = 8 + i * (8 + DEVICE_NAME_MAX);
        let raw_kind = u32_at(desc, at);
        let flags = u32_at(desc, at + 4);
        let kind = DeviceKind::from_raw(raw_kind)
            .ok_or_else(|| ElfError::BadManifest(format!("device {i} has unknown kind {raw_kind}")))?;
        let mut name_bytes = [0u8; DEVICE_NAME_MAX];
        name_bytes.copy_from_slice(&desc[at + 8..at + 8 + DEVICE_NAME_MAX]);
        let name = device_name(&name_bytes)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ElfError::BadManifest(format!("device {i} has an empty or non-UTF-8 name")))?
            .to_string();
        if devices.iter().any(|d: &DeclaredDevice| d.name == name) {
            return Err(ElfError::BadManifest(format!("device name {name:?} is declared twice")));
        }
        devices.push(DeclaredDevice { kind, name, outbound: flags & skiff_abi::manifest::FLAG_OUTBOUND != 0 });
    }
    Ok((version, devices))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use skiff_abi::manifest::NOTE_NAMESZ;

    const PT_LOAD: u32 = 1;
    const PT_DYNAMIC: u32 = 2;
    const PT_NOTE: u32 = 4;
    const PF_R: u32 = 4;

    /// Builds a minimal valid image: a supervisor text segment with the
    /// entry, a user data segment, a stack with a guard page, and a
    /// manifest note.
    pub(crate) struct Builder {
        pub segments: Vec<(u32, u64, u64, Vec<u8>, u32)>, // type, vaddr, memsz, bytes, flags
        pub entry: u64,
        pub manifest_version: u32,
        pub devices: Vec<(u32, &'static str)>,
        pub with_manifest: bool,
        /// Symbol table entries: value, size, `st_info`, `st_shndx`, name.
        pub symbols: Vec<(u64, u64, u8, u16, &'static str)>,
        /// Bytes appended to the note segment.
        pub extra_notes: Vec<u8>,
    }

    impl Builder {
        pub(crate) fn new() -> Builder {
            Builder {
                segments: vec![
                    (PT_LOAD, 0x10_0000, 0x1000, vec![0xf4; 16], PF_R | PF_X | pflags::SUPERVISOR),
                    (PT_LOAD, 0x10_1000, 0x2000, vec![1, 2, 3], PF_R | PF_W),
                    (PT_LOAD, 0x10_4000, 0x4000, vec![], PF_R | PF_W | pflags::STACK),
                ],
                entry: 0x10_0000,
                manifest_version: ABI_VERSION,
                devices: vec![],
                with_manifest: true,
                symbols: vec![],
                extra_notes: vec![],
            }
        }

        pub(crate) fn build(&self) -> Vec<u8> {
            let mut note = Vec::new();
            if self.with_manifest {
                note.extend_from_slice(&NOTE_NAMESZ.to_le_bytes());
                note.extend_from_slice(&(DESC_SIZE as u32).to_le_bytes());
                note.extend_from_slice(&NOTE_TYPE.to_le_bytes());
                note.extend_from_slice(b"Skiff\0\0\0");
                note.extend_from_slice(&self.manifest_version.to_le_bytes());
                note.extend_from_slice(&(self.devices.len() as u32).to_le_bytes());
                for i in 0..MAX_DEVICES {
                    let (kind, name) = self.devices.get(i).copied().unwrap_or((0, ""));
                    note.extend_from_slice(&kind.to_le_bytes());
                    note.extend_from_slice(&0u32.to_le_bytes());
                    let mut n = [0u8; DEVICE_NAME_MAX];
                    n[..name.len()].copy_from_slice(name.as_bytes());
                    note.extend_from_slice(&n);
                }
            }
            note.extend_from_slice(&self.extra_notes);
            let phnum = self.segments.len() + 1;
            let mut out = vec![0u8; 64 + 56 * phnum];
            let place = |out: &mut Vec<u8>, bytes: &[u8]| {
                while !out.len().is_multiple_of(16) {
                    out.push(0);
                }
                let at = out.len() as u64;
                out.extend_from_slice(bytes);
                at
            };
            let mut phdrs = Vec::new();
            for (t, vaddr, memsz, bytes, flags) in &self.segments {
                let off = place(&mut out, bytes);
                phdrs.push((*t, *flags, off, *vaddr, bytes.len() as u64, *memsz));
            }
            let note_off = place(&mut out, &note);
            phdrs.push((PT_NOTE, PF_R, note_off, 0, note.len() as u64, note.len() as u64));
            out[..4].copy_from_slice(b"\x7fELF");
            out[4] = 2;
            out[5] = 1;
            out[6] = 1;
            out[16..18].copy_from_slice(&2u16.to_le_bytes());
            out[18..20].copy_from_slice(&62u16.to_le_bytes());
            out[20..24].copy_from_slice(&1u32.to_le_bytes());
            out[24..32].copy_from_slice(&self.entry.to_le_bytes());
            out[32..40].copy_from_slice(&64u64.to_le_bytes());
            out[54..56].copy_from_slice(&56u16.to_le_bytes());
            out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
            for (i, (t, flags, off, vaddr, filesz, memsz)) in phdrs.into_iter().enumerate() {
                let p = 64 + 56 * i;
                out[p..p + 4].copy_from_slice(&t.to_le_bytes());
                out[p + 4..p + 8].copy_from_slice(&flags.to_le_bytes());
                out[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
                out[p + 16..p + 24].copy_from_slice(&vaddr.to_le_bytes());
                out[p + 24..p + 32].copy_from_slice(&vaddr.to_le_bytes());
                out[p + 32..p + 40].copy_from_slice(&filesz.to_le_bytes());
                out[p + 40..p + 48].copy_from_slice(&memsz.to_le_bytes());
            }
            if !self.symbols.is_empty() {
                self.append_symbols(&mut out);
            }
            out
        }

        /// Appends `.symtab`, `.strtab`, `.shstrtab` and section headers.
        fn append_symbols(&self, out: &mut Vec<u8>) {
            let mut strtab = vec![0u8];
            let mut symtab = vec![0u8; 24];
            for (value, size, info, shndx, name) in &self.symbols {
                symtab.extend_from_slice(&(strtab.len() as u32).to_le_bytes());
                symtab.extend_from_slice(&[*info, 0]);
                symtab.extend_from_slice(&shndx.to_le_bytes());
                symtab.extend_from_slice(&value.to_le_bytes());
                symtab.extend_from_slice(&size.to_le_bytes());
                strtab.extend_from_slice(name.as_bytes());
                strtab.push(0);
            }
            let names = b"\0.symtab\0.strtab\0.shstrtab\0";
            let mut shdrs = vec![0u8; 64];
            for (name, kind, bytes, link, entsize) in
                [(1u32, 2u32, &symtab[..], 2u32, 24u64), (9, 3, &strtab[..], 0, 0), (17, 3, &names[..], 0, 0)]
            {
                let at = out.len() as u64;
                out.extend_from_slice(bytes);
                let mut sh = [0u8; 64];
                sh[..4].copy_from_slice(&name.to_le_bytes());
                sh[4..8].copy_from_slice(&kind.to_le_bytes());
                sh[24..32].copy_from_slice(&at.to_le_bytes());
                sh[32..40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
                sh[40..44].copy_from_slice(&link.to_le_bytes());
                sh[56..64].copy_from_slice(&entsize.to_le_bytes());
                shdrs.extend_from_slice(&sh);
            }
            let shoff = out.len() as u64;
            out.extend_from_slice(&shdrs);
            out[40..48].copy_from_slice(&shoff.to_le_bytes());
            out[58..64].copy_from_slice(&[64, 0, 4, 0, 3, 0]);
        }
    }

    fn parse(b: &Builder) -> Result<Image, ElfError> {
        Image::parse(b.build(), true)
    }

    #[test]
    fn a_minimal_image_parses() {
        let mut b = Builder::new();
        b.devices = vec![(1, "service")];
        let img = parse(&b).unwrap();
        assert_eq!(img.segments.len(), 3);
        assert_eq!(img.entry, 0x10_0000);
        assert_eq!(
            img.devices,
            vec![DeclaredDevice { kind: DeviceKind::Net, name: "service".into(), outbound: false }]
        );
        assert_eq!(img.end(), 0x10_8000);
        assert_eq!(img.segment_bytes(&img.segments[1]), &[1, 2, 3]);
        assert_eq!(img.stack().vaddr, 0x10_4000);
    }

    #[test]
    fn garbage_and_truncation_are_rejected() {
        assert_eq!(Image::parse(vec![], true).unwrap_err(), ElfError::NotElf);
        assert_eq!(Image::parse(b"\x7fELF".to_vec(), true).unwrap_err(), ElfError::NotElf);
        assert_eq!(Image::parse(vec![0x42; 200], true).unwrap_err(), ElfError::NotElf);
        let full = Builder::new().build();
        for cut in [64, 100, 64 + 56 * 4 - 1] {
            let err = Image::parse(full[..cut].to_vec(), true).unwrap_err();
            assert!(matches!(err, ElfError::Truncated { .. }), "cut at {cut}: {err}");
        }
    }

    #[test]
    fn header_fields_are_checked() {
        let good = Builder::new().build();
        let cases: Vec<(usize, &[u8], &str)> = vec![
            (4, &[1], "64-bit"),
            (5, &[2], "little-endian"),
            (16, &[3, 0], "executable"),
            (18, &[3, 0], "x86-64"),
            (54, &[32, 0], "program header size"),
            (56, &[200, 0], "too many"),
        ];
        for (at, patch, expect) in cases {
            let mut d = good.clone();
            d[at..at + patch.len()].copy_from_slice(patch);
            let err = Image::parse(d, true).unwrap_err().to_string();
            assert!(err.contains(expect), "patch at {at}: {err}");
        }
        let mut d = good.clone();
        d[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(Image::parse(d, true).unwrap_err(), ElfError::Truncated { .. }));
    }

    #[test]
    fn segment_offsets_and_sizes_are_never_trusted() {
        let good = Builder::new().build();
        // Segment 1's p_offset / p_filesz / p_memsz / p_vaddr.
        let ph = 64 + 56;
        let patches: Vec<(usize, u64, &str)> = vec![
            (ph + 8, u64::MAX - 1, "past the end"),
            (ph + 32, 1 << 40, "file size exceeds"),
            (ph + 40, u64::MAX, "beyond the largest"),
            (ph + 16, 0x1000, "physical addresses differ"),
        ];
        for (at, value, expect) in patches {
            let mut d = good.clone();
            d[at..at + 8].copy_from_slice(&value.to_le_bytes());
            let err = Image::parse(d, true).unwrap_err().to_string();
            assert!(err.contains(expect), "patch at {at}: {err}");
        }
    }

    #[test]
    fn overlapping_low_wx_and_dynamic_segments_are_rejected() {
        let mut b = Builder::new();
        b.segments[1].1 = 0x10_0800;
        assert!(matches!(parse(&b).unwrap_err(), ElfError::Overlap { .. }));

        let mut b = Builder::new();
        b.segments[1].1 = 0x8_0000;
        assert!(parse(&b).unwrap_err().to_string().contains("below 1 MiB"));

        let mut b = Builder::new();
        b.segments[1].4 = PF_R | PF_W | PF_X;
        assert!(parse(&b).unwrap_err().to_string().contains("W^X"));

        let mut b = Builder::new();
        b.segments.push((PT_DYNAMIC, 0, 0, vec![], 0));
        assert!(matches!(parse(&b).unwrap_err(), ElfError::Unsupported { .. }));
    }

    #[test]
    fn entry_must_be_in_supervisor_code() {
        let mut b = Builder::new();
        b.entry = 0x10_1000;
        assert_eq!(parse(&b).unwrap_err(), ElfError::BadEntry(0x10_1000));
        let mut b = Builder::new();
        b.segments[0].4 = PF_R | PF_X;
        assert!(matches!(parse(&b).unwrap_err(), ElfError::BadEntry(_)));
    }

    #[test]
    fn the_stack_needs_a_guard_page() {
        let mut b = Builder::new();
        b.segments[2].1 = 0x10_3000;
        assert!(matches!(parse(&b).unwrap_err(), ElfError::BadStack(_)));
        let mut b = Builder::new();
        b.segments.pop();
        assert!(matches!(parse(&b).unwrap_err(), ElfError::BadStack(_)));
    }

    /// One ELF note's bytes.
    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        for v in [name.len() as u32, desc.len() as u32, kind] {
            n.extend_from_slice(&v.to_le_bytes());
        }
        for part in [name, desc] {
            n.extend_from_slice(part);
            n.resize(n.len().next_multiple_of(4), 0);
        }
        n
    }

    #[test]
    fn the_ring3_entry_note_is_checked_against_the_segments() {
        use skiff_abi::ring3::{Entry, NOTE_TYPE_ENTRY};
        let mut b = Builder::new();
        b.segments.push((PT_LOAD, 0x10_9000, 0x1000, vec![0xc3; 4], PF_R | PF_X));
        let good = Entry {
            entry: 0x10_9000,
            stack_top: 0x10_8000,
            gdt_base: 0x10_0100,
            gdt_limit: 0x47,
            idt_base: 0x10_0200,
            idt_limit: 0x1ff,
            tss_base: 0x10_0800,
            tss_limit: 0x10d,
            selectors: 0x23 | 0x1b << 16 | 0x28 << 32,
        };
        b.extra_notes = note(b"Skiff\0", NOTE_TYPE_ENTRY, &good.encode());
        assert_eq!(parse(&b).unwrap().ring3_entry, Some(good));
        let bad = [
            ("an entry in the supervisor", Entry { entry: 0x10_0000, ..good }),
            ("a stack top outside the stack", Entry { stack_top: 0x10_9000, ..good }),
            ("a stack top off 16 bytes", Entry { stack_top: 0x10_7ff8, ..good }),
            ("a GDT in user data", Entry { gdt_base: 0x10_1000, ..good }),
            ("a GDT of part entries", Entry { gdt_limit: 0x43, ..good }),
            ("an IDT past the supervisor", Entry { idt_base: 0x10_0f00, ..good }),
            ("a TSS too short", Entry { tss_limit: 50, ..good }),
            ("a ring-0 code selector", Entry { selectors: 0x20 | 0x1b << 16 | 0x28 << 32, ..good }),
            ("a TSS selector past the GDT", Entry { selectors: 0x23 | 0x1b << 16 | 0x40 << 32, ..good }),
            ("a null stack selector", Entry { selectors: 0x23 | 0x3 << 16 | 0x28 << 32, ..good }),
        ];
        for (what, entry) in bad {
            b.extra_notes = note(b"Skiff\0", NOTE_TYPE_ENTRY, &entry.encode());
            let e = parse(&b).unwrap_err().to_string();
            assert!(e.contains("the ring-3 entry note"), "{what}: {e}");
        }
        b.extra_notes = note(b"Skiff\0", NOTE_TYPE_ENTRY, &[0; 64]);
        assert!(parse(&b).unwrap_err().to_string().contains("the ring-3 entry note has the wrong size"));
    }

    #[test]
    fn notes_are_checked() {
        let mut b = Builder::new();
        b.extra_notes = note(b"Xen\0", pvh::NOTE_TYPE_PHYS32_ENTRY, &0x10_0040u32.to_le_bytes());
        assert_eq!(parse(&b).unwrap().pvh_entry, Some(0x10_0040));
        b.extra_notes = note(b"Xen\0", pvh::NOTE_TYPE_PHYS32_ENTRY, &[1, 2, 3]);
        assert!(parse(&b).unwrap_err().to_string().contains("PVH entry note has an odd size"));
        b.extra_notes = note(b"Other\0", 7, &[9; 12]);
        assert!(parse(&b).is_ok(), "other notes are ignored");
        b.extra_notes = note(b"Skiff\0", NOTE_TYPE, &vec![0; DESC_SIZE]);
        b.extra_notes[20..24].copy_from_slice(&ABI_VERSION.to_le_bytes());
        assert!(parse(&b).unwrap_err().to_string().contains("two manifests"));
        b.extra_notes = vec![200, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        assert!(matches!(parse(&b).unwrap_err(), ElfError::BadNote { .. }), "a name past the segment");
        b.extra_notes = vec![4, 0, 0];
        assert!(matches!(parse(&b).unwrap_err(), ElfError::BadNote { .. }), "a header past the segment");
    }

    #[test]
    fn manifest_is_required_and_versioned() {
        let mut b = Builder::new();
        b.with_manifest = false;
        assert_eq!(parse(&b).unwrap_err(), ElfError::NoManifest);
        let mut b = Builder::new();
        b.manifest_version = ABI_VERSION + 1;
        assert_eq!(parse(&b).unwrap_err(), ElfError::AbiMismatch { image: ABI_VERSION + 1, tender: ABI_VERSION });
        assert!(Image::parse(b.build(), false).is_ok());
        let mut b = Builder::new();
        b.devices = vec![(1, "a"), (1, "a")];
        assert!(parse(&b).unwrap_err().to_string().contains("twice"));
        let mut b = Builder::new();
        b.devices = vec![(9, "x")];
        assert!(parse(&b).unwrap_err().to_string().contains("unknown kind"));
    }

    #[test]
    fn symbols_are_read_in_place_and_named_on_demand() {
        let mut b = Builder::new();
        b.symbols = vec![
            (0x10_0000, 0x10, 0x12, 1, "_ZN5hello4main17h0123456789abcdefE"),
            (0x10_0100, 0, 0x10, 1, "skiff_label"),
            (0x10_0200, 0x10, 0x02, 1, ".Lhidden"),
            (0x10_0300, 0x10, 0x11, 1, "some_data"),
            (0, 0, 0x12, 0, "needed_elsewhere"),
        ];
        let img = parse(&b).unwrap();
        assert_eq!(img.symbols().count(), 5);
        assert_eq!(img.symbolize(0x10_0008).as_deref(), Some("hello::main+0x8"));
        assert_eq!(img.symbolize(0x10_0010), None, "past the end of a sized function");
        assert_eq!(img.symbolize(0x10_0150).as_deref(), Some("skiff_label+0x50"));
        // Local labels and data objects are not functions.
        assert_eq!(img.symbolize(0x10_0350).as_deref(), Some("skiff_label+0x250"));
        let sorted = img.code_symbols();
        for addr in [0x10_0000, 0x10_0008, 0x10_0010, 0x10_0150, 0x10_0350, 0, u64::MAX] {
            assert_eq!(sorted.function_at(addr), img.function_at(addr).as_ref(), "{addr:#x}");
        }
        let undefined: Vec<String> = img.symbols().filter(|s| s.undefined).map(|s| s.name()).collect();
        assert_eq!(undefined, ["needed_elsewhere"]);
        // A broken table means no names, never a refused image.
        let mut d = b.build();
        let shoff = u64::from_le_bytes(d[40..48].try_into().unwrap()) as usize;
        d[shoff + 64 + 40..shoff + 64 + 44].copy_from_slice(&99u32.to_le_bytes());
        let img = Image::parse(d, true).unwrap();
        assert_eq!(img.symbols().count(), 0);
        assert_eq!(img.symbolize(0x10_0008), None);
    }

    #[test]
    fn demangling_is_bounded_in_output_and_time() {
        // 44 bytes whose back-references expand to about a megabyte.
        let bomb = b"_RYFG_FGyyEvRYFF_EvRYFFEvERLB_B_B_ERLRjB_B_B_";
        let start = std::time::Instant::now();
        for _ in 0..1000 {
            let name = demangle(bomb);
            assert!(name.len() <= NAME_MAX + 3 && name.ends_with("..."), "{name}");
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(1), "took {:?}", start.elapsed());
        let long = "x".repeat(1 << 20);
        assert_eq!(demangle(long.as_bytes()).len(), NAME_MAX + 3);
        assert_eq!(demangle("é".repeat(200).as_bytes()).len(), NAME_MAX + 3);
    }

    #[test]
    fn random_mutations_never_panic() {
        // A deterministic xorshift: flip bytes of a good image (with a
        // symbol table) and check that parsing returns (Ok or Err) and
        // naming returns, instead of panicking.
        let mut b = Builder::new();
        b.symbols =
            vec![(0x10_0000, 0x10, 0x12, 1, "_ZN5hello4main17h0123456789abcdefE"), (0x10_0100, 0, 0x10, 1, "x")];
        let good = b.build();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut d = good.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x as usize) % d.len();
                d[at] = (x >> 32) as u8;
            }
            if let Ok(img) = Image::parse(d, true) {
                let _ = (img.symbolize(0x10_0008), img.symbolize(u64::MAX), img.symbols().count());
            }
        }
    }
}
