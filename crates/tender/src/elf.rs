//! Reading a Skiff image: an ELF64 x86-64 executable.
//!
//! The file is untrusted input. Every offset, size and count is checked
//! against the file and against the others before use, with checked
//! arithmetic; anything odd is an [`ElfError`] naming what is wrong. What
//! comes out, an [`Image`], is safe to load: segments sorted, inside the
//! file, page-disjoint, above [`layout::IMAGE_MIN`], and the entry point in
//! an executable supervisor segment.

use skiff_abi::manifest::{DESC_SIZE, NOTE_NAMESZ, NOTE_TYPE, device_name};
use skiff_abi::{ABI_VERSION, DEVICE_NAME_MAX, DeviceKind, MAX_DEVICES, layout, pflags, pvh};

/// Largest image file the tender reads.
pub const MAX_FILE_SIZE: u64 = 128 << 20;
/// Most program headers accepted.
pub const MAX_PHDRS: u16 = 64;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
const PT_TLS: u32 = 7;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;
const PAGE: u64 = layout::PAGE_SIZE;

/// What is wrong with an image file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// The file is shorter than an ELF header or does not start with one.
    #[error("not an ELF file")]
    NotElf,
    /// The file is larger than [`MAX_FILE_SIZE`].
    #[error("image is {size} bytes; the limit is {MAX_FILE_SIZE}")]
    TooLarge {
        /// File size.
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
    #[error("malformed note at offset {offset:#x}: {problem}")]
    BadNote {
        /// File offset of the note.
        offset: u64,
        /// What is wrong.
        problem: &'static str,
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
    /// A short description of the permissions, like `r-x sup`.
    pub fn describe(&self) -> String {
        format!(
            "{}{}{}{}{}",
            if self.flags & PF_R != 0 { 'r' } else { '-' },
            if self.writable() { 'w' } else { '-' },
            if self.executable() { 'x' } else { '-' },
            if self.supervisor() { " supervisor" } else { " user" },
            if self.stack() { " stack" } else { "" },
        )
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

/// A function symbol, for naming the code at a faulting address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// Start address.
    pub addr: u64,
    /// Size in bytes (zero for assembly labels).
    pub size: u64,
    /// Demangled name.
    pub name: String,
}

/// A validated image.
#[derive(Clone, Debug)]
pub struct Image {
    /// The file's bytes.
    pub data: Vec<u8>,
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
    /// Function symbols sorted by address (empty for a stripped image).
    pub symbols: Vec<Symbol>,
}

fn bytes<'a>(data: &'a [u8], offset: u64, len: u64, what: &'static str) -> Result<&'a [u8], ElfError> {
    let file_size = data.len() as u64;
    let end = offset.checked_add(len).filter(|&e| e <= file_size);
    match end {
        Some(end) => Ok(&data[offset as usize..end as usize]),
        None => Err(ElfError::Truncated { what, offset, len, file_size }),
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Image {
    /// Parses and validates an image. `abi_check` false skips the ABI
    /// version comparison (for `skiff inspect`, which reports it instead).
    pub fn parse(data: Vec<u8>, abi_check: bool) -> Result<Image, ElfError> {
        let file_size = data.len() as u64;
        if file_size > MAX_FILE_SIZE {
            return Err(ElfError::TooLarge { size: file_size });
        }
        if data.len() < 64 || &data[..4] != b"\x7fELF" {
            return Err(ElfError::NotElf);
        }
        let h = &data[..64];
        if h[4] != 2 {
            return Err(ElfError::WrongKind("not 64-bit"));
        }
        if h[5] != 1 {
            return Err(ElfError::WrongKind("not little-endian"));
        }
        if h[6] != 1 || u32_at(h, 20) != 1 {
            return Err(ElfError::BadHeader("unknown ELF version"));
        }
        if u16_at(h, 16) != 2 {
            return Err(ElfError::WrongKind("not an executable (ET_EXEC)"));
        }
        if u16_at(h, 18) != 62 {
            return Err(ElfError::WrongKind("not x86-64"));
        }
        let entry = u64_at(h, 24);
        let phoff = u64_at(h, 32);
        let phentsize = u16_at(h, 54);
        let phnum = u16_at(h, 56);
        if phnum == 0 {
            return Err(ElfError::NoSegments);
        }
        if phentsize != 56 {
            return Err(ElfError::BadHeader("program header size is not 56"));
        }
        if phnum > MAX_PHDRS {
            return Err(ElfError::BadHeader("too many program headers"));
        }
        let phdrs = bytes(&data, phoff, u64::from(phnum) * 56, "program header table")?;

        let mut segments = Vec::new();
        let mut notes = Vec::new();
        for index in 0..phnum as usize {
            let p = &phdrs[index * 56..(index + 1) * 56];
            let p_type = u32_at(p, 0);
            let flags = u32_at(p, 4);
            let offset = u64_at(p, 8);
            let vaddr = u64_at(p, 16);
            let paddr = u64_at(p, 24);
            let filesz = u64_at(p, 32);
            let memsz = u64_at(p, 40);
            match p_type {
                PT_LOAD => {
                    let bad = |problem| ElfError::BadSegment { index, vaddr, problem };
                    if memsz == 0 {
                        continue;
                    }
                    if filesz > memsz {
                        return Err(bad("file size exceeds memory size"));
                    }
                    if vaddr != paddr {
                        return Err(bad("virtual and physical addresses differ"));
                    }
                    if vaddr < layout::IMAGE_MIN {
                        return Err(bad("below 1 MiB, where the tender keeps the boot area"));
                    }
                    match vaddr.checked_add(memsz) {
                        Some(end) if end <= layout::MEM_MAX => {}
                        _ => return Err(bad("extends beyond the largest guest memory")),
                    }
                    bytes(&data, offset, filesz, "segment contents")?;
                    if flags & PF_W != 0 && flags & PF_X != 0 {
                        return Err(bad("writable and executable (W^X)"));
                    }
                    if flags & pflags::STACK != 0 && (flags & PF_W == 0 || filesz != 0) {
                        return Err(bad("the stack segment must be writable and have no file bytes"));
                    }
                    segments.push(Segment { vaddr, memsz, offset, filesz, flags });
                }
                PT_NOTE => {
                    notes.push((offset, filesz));
                }
                PT_DYNAMIC => {
                    return Err(ElfError::Unsupported { index, what: "dynamic-linking" });
                }
                PT_INTERP => {
                    return Err(ElfError::Unsupported { index, what: "interpreter" });
                }
                PT_TLS => {
                    return Err(ElfError::Unsupported { index, what: "thread-local storage" });
                }
                _ => {}
            }
        }
        if segments.is_empty() {
            return Err(ElfError::NoSegments);
        }
        segments.sort_by_key(|s| s.vaddr);
        for pair in segments.windows(2) {
            if pair[0].page_end() > pair[1].page_start() {
                return Err(ElfError::Overlap { a: pair[0].vaddr, b: pair[1].vaddr });
            }
        }
        let entry_ok =
            segments.iter().any(|s| s.executable() && s.supervisor() && entry >= s.vaddr && entry < s.vaddr + s.memsz);
        if !entry_ok {
            return Err(ElfError::BadEntry(entry));
        }
        let stacks: Vec<&Segment> = segments.iter().filter(|s| s.stack()).collect();
        match stacks.as_slice() {
            [stack] => {
                let guard = stack.page_start() - PAGE;
                if segments.iter().any(|s| s.page_start() <= guard && guard < s.page_end()) {
                    return Err(ElfError::BadStack(
                        "the page below the stack segment must be left unmapped as a guard",
                    ));
                }
            }
            [] => {
                return Err(ElfError::BadStack("the image has no ring-3 stack segment (is it a Skiff image?)"));
            }
            _ => {
                return Err(ElfError::BadStack("the image has more than one stack segment"));
            }
        }

        let mut manifest = None;
        let mut pvh_entry = None;
        for (offset, len) in notes {
            parse_notes(&data, offset, len, &mut manifest, &mut pvh_entry)?;
        }
        let (abi_version, devices) = manifest.ok_or(ElfError::NoManifest)?;
        if abi_check && abi_version != ABI_VERSION {
            return Err(ElfError::AbiMismatch { image: abi_version, tender: ABI_VERSION });
        }
        let symbols = parse_symbols(&data).unwrap_or_default();
        Ok(Image { data, entry, segments, abi_version, devices, pvh_entry, symbols })
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

    /// The segment containing `addr`.
    pub fn segment_at(&self, addr: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| s.page_start() <= addr && addr < s.page_end())
    }

    /// Names the code at `addr`, like `hello::main+0x1c`.
    pub fn symbolize(&self, addr: u64) -> Option<String> {
        let i = self.symbols.partition_point(|s| s.addr <= addr);
        let sym = self.symbols.get(i.checked_sub(1)?)?;
        if sym.size != 0 && addr >= sym.addr + sym.size {
            return None;
        }
        Some(format!("{}+{:#x}", sym.name, addr - sym.addr))
    }
}

type Manifest = (u32, Vec<DeclaredDevice>);

fn parse_notes(
    data: &[u8],
    offset: u64,
    len: u64,
    manifest: &mut Option<Manifest>,
    pvh_entry: &mut Option<u64>,
) -> Result<(), ElfError> {
    let notes = bytes(data, offset, len, "note segment")?;
    let mut at = 0usize;
    while at < notes.len() {
        let note_offset = offset + at as u64;
        let bad = |problem| ElfError::BadNote { offset: note_offset, problem };
        if notes.len() - at < 12 {
            return Err(bad("header runs past the segment"));
        }
        let namesz = u32_at(notes, at) as usize;
        let descsz = u32_at(notes, at + 4) as usize;
        let note_type = u32_at(notes, at + 8);
        let name_start = at + 12;
        let desc_start = name_start.checked_add(namesz.next_multiple_of(4)).ok_or(bad("name size overflows"))?;
        let next = desc_start.checked_add(descsz.next_multiple_of(4)).ok_or(bad("descriptor size overflows"))?;
        if desc_start.checked_add(descsz).is_none_or(|e| e > notes.len()) || name_start + namesz > notes.len() {
            return Err(bad("name or descriptor runs past the segment"));
        }
        let name = &notes[name_start..name_start + namesz];
        let desc = &notes[desc_start..desc_start + descsz];
        if namesz == NOTE_NAMESZ as usize && name == b"Skiff\0" && note_type == NOTE_TYPE {
            if manifest.is_some() {
                return Err(ElfError::BadManifest("the image has two manifests".into()));
            }
            *manifest = Some(parse_manifest(desc)?);
        } else if name == pvh::NOTE_NAME && note_type == pvh::NOTE_TYPE_PHYS32_ENTRY {
            *pvh_entry = match descsz {
                4 => Some(u64::from(u32_at(desc, 0))),
                8 => Some(u64_at(desc, 0)),
                _ => return Err(bad("PVH entry note has an odd size")),
            };
        }
        at = next;
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

/// Reads `.symtab` for function names. Any inconsistency just means no
/// symbols: names are a convenience for fault reports, never needed to run.
fn parse_symbols(data: &[u8]) -> Option<Vec<Symbol>> {
    let shoff = u64_at(data, 40);
    let shentsize = u16_at(data, 58);
    let shnum = u16_at(data, 60);
    if shoff == 0 || shentsize != 64 {
        return None;
    }
    let shdrs = bytes(data, shoff, u64::from(shnum) * 64, "section headers").ok()?;
    for i in 0..shnum as usize {
        let sh = &shdrs[i * 64..(i + 1) * 64];
        if u32_at(sh, 4) != 2 {
            continue; // not SHT_SYMTAB
        }
        let link = u32_at(sh, 40) as usize;
        let symtab = bytes(data, u64_at(sh, 24), u64_at(sh, 32), "symbol table").ok()?;
        let strsh = shdrs.get(link * 64..(link + 1) * 64)?;
        let strtab = bytes(data, u64_at(strsh, 24), u64_at(strsh, 32), "string table").ok()?;
        let mut symbols = Vec::new();
        for entry in symtab.chunks_exact(24) {
            let st_type = entry[4] & 0xf;
            let shndx = u16_at(entry, 6);
            let value = u64_at(entry, 8);
            // Functions, and untyped labels defined in a section (assembly).
            if !(st_type == 2 || (st_type == 0 && shndx != 0)) || value == 0 {
                continue;
            }
            let name_off = u32_at(entry, 0) as usize;
            let raw = strtab.get(name_off..)?;
            let end = raw.iter().position(|&b| b == 0)?;
            let raw = std::str::from_utf8(&raw[..end]).ok()?;
            if raw.is_empty() || raw.starts_with(".L") {
                continue;
            }
            let name = format!("{:#}", rustc_demangle::demangle(raw));
            symbols.push(Symbol { addr: value, size: u64_at(entry, 16), name });
        }
        symbols.sort_by_key(|s| s.addr);
        return Some(symbols);
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal valid image: a supervisor text segment with the
    /// entry, a user data segment, a stack with a guard page, and a
    /// manifest note.
    pub(crate) struct Builder {
        pub segments: Vec<(u32, u64, u64, Vec<u8>, u32)>, // type, vaddr, memsz, bytes, flags
        pub entry: u64,
        pub manifest_version: u32,
        pub devices: Vec<(u32, &'static str)>,
        pub with_manifest: bool,
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
            out
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
    fn random_mutations_never_panic() {
        // A deterministic xorshift: flip bytes of a good image and check
        // that parsing returns (Ok or Err) instead of panicking.
        let good = Builder::new().build();
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
            let _ = Image::parse(d, true);
        }
    }
}
