//! Checks every image gets after it is linked.
//!
//! - No Linux system call: no `syscall`, `sysenter` or `int 0x80`
//!   instruction in any executable segment. A crate written for the Linux
//!   target can quietly reach the kernel; in a guest that would be a
//!   silent wrong path, so it fails the build.
//! - No undefined symbol: the link uses empty stand-ins for the C
//!   libraries, so an undefined *weak* symbol (which links as address 0)
//!   is the one way a missing function could slip through.
//! - No SSE, AVX or MMX instruction in the ring-0 supervisor: on PVM, ring
//!   0 is emulated and the emulator lacks many of them.
//! - The tender accepts the image: manifest, ABI version, segments.
//!
//! The image is read once, by the tender's own reader
//! ([`skiff_tender::elf::Image`]): the checks look at the segments and
//! symbols the tender would load. Instructions are found by decoding each
//! executable segment linearly (with iced-x86), so a byte pattern inside
//! another instruction's immediate is not a false alarm; the supervisor's
//! 32-bit PVH trampoline is decoded as 32-bit code. At most
//! [`MAX_FINDINGS`] problems are listed (with a count of the rest), and
//! names are demangled only for those, so a hostile image cannot make a
//! check take unbounded time or memory.

use iced_x86::{Code, CpuidFeature, Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter, Mnemonic};
use skiff_tender::elf::{ElfError, Image};
use std::path::Path;

/// Most problems listed; the rest are counted.
pub const MAX_FINDINGS: usize = 32;

/// A problem found in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A system call instruction.
    Syscall {
        /// Its address.
        addr: u64,
        /// The instruction as text.
        text: String,
        /// The function it is in, if known.
        function: Option<String>,
    },
    /// An undefined symbol.
    Undefined(String),
    /// An SSE/AVX/MMX instruction in supervisor code.
    SupervisorSimd {
        /// Its address.
        addr: u64,
        /// The instruction as text.
        text: String,
    },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Syscall { addr, text, function } => {
                write!(f, "system call instruction `{text}` at {addr:#x}")?;
                if let Some(func) = function {
                    write!(f, " in {func}")?;
                }
                write!(f, ": some dependency calls the Linux kernel, which a guest does not have")
            }
            Finding::Undefined(name) => write!(
                f,
                "undefined symbol `{name}`: a dependency expects a C library or OS function the guest does not provide"
            ),
            Finding::SupervisorSimd { addr, text } => {
                write!(f, "SSE/AVX/MMX instruction `{text}` at {addr:#x} in the ring-0 supervisor")
            }
        }
    }
}

/// An image could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The checks found problems.
    #[error(
        "the image failed its checks:\n{}{}",
        findings.iter().map(|f| format!("  - {f}")).collect::<Vec<_>>().join("\n"),
        if *more > 0 { format!("\n  - and {more} more") } else { String::new() }
    )]
    Findings {
        /// The first [`MAX_FINDINGS`] problems.
        findings: Vec<Finding>,
        /// How many more there are.
        more: u64,
    },
    /// The tender would refuse the image.
    #[error("{0}")]
    Refused(#[from] ElfError),
}

/// What the checks looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// File size in bytes.
    pub file_size: u64,
    /// Bytes in loadable segments' file contents.
    pub loadable_bytes: u64,
    /// Bytes of executable code decoded.
    pub code_bytes: u64,
    /// Instructions decoded.
    pub instructions: u64,
    /// Instructions decoded in the supervisor.
    pub supervisor_instructions: u64,
    /// Symbols checked.
    pub symbols: u64,
}

fn is_syscall(i: &Instruction) -> bool {
    matches!(i.mnemonic(), Mnemonic::Syscall | Mnemonic::Sysenter)
        || (i.code() == Code::Int_imm8 && i.immediate8() == 0x80)
}

fn is_simd(i: &Instruction) -> bool {
    let reg_simd = (0..i.op_count()).any(|n| {
        let r = i.op_register(n);
        r.is_xmm() || r.is_ymm() || r.is_zmm() || r.is_mm()
    });
    let feature_simd = i.cpuid_features().iter().any(|f| {
        matches!(
            f,
            CpuidFeature::SSE
                | CpuidFeature::SSE2
                | CpuidFeature::SSE3
                | CpuidFeature::SSSE3
                | CpuidFeature::SSE4_1
                | CpuidFeature::SSE4_2
                | CpuidFeature::SSE4A
                | CpuidFeature::AVX
                | CpuidFeature::AVX2
                | CpuidFeature::AVX512F
                | CpuidFeature::MMX
                | CpuidFeature::FXSR
                | CpuidFeature::XSAVE
        )
    });
    reg_simd || feature_simd
}

/// Decodes `code` (at `addr`) as `bitness`-bit code, calling `visit` for
/// each instruction.
pub fn decode(code: &[u8], addr: u64, bitness: u32, mut visit: impl FnMut(&Instruction)) -> u64 {
    let mut decoder = Decoder::with_ip(bitness, code, addr, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    let mut n = 0;
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        visit(&instr);
        n += 1;
    }
    n
}

fn format(i: &Instruction) -> String {
    let mut out = String::new();
    IntelFormatter::new().format(i, &mut out);
    out
}

/// Collects findings, listing at most [`MAX_FINDINGS`].
#[derive(Default)]
struct Findings {
    listed: Vec<Finding>,
    more: u64,
}

impl Findings {
    /// Adds the finding `make` builds, if there is room to list it.
    fn add(&mut self, make: impl FnOnce() -> Finding) {
        if self.listed.len() < MAX_FINDINGS {
            self.listed.push(make());
        } else {
            self.more += 1;
        }
    }
}

/// Reads an image's bytes with the tender's reader (without its ABI
/// version check) and runs the instruction and symbol checks.
pub fn check_bytes(data: &[u8]) -> Result<CheckReport, CheckError> {
    check(&Image::parse(data.to_vec(), false)?)
}

/// Runs the instruction and symbol checks on an image the tender's reader
/// accepted.
pub fn check(image: &Image) -> Result<CheckReport, CheckError> {
    let mut report = CheckReport { file_size: image.data.len() as u64, ..Default::default() };
    let mut findings = Findings::default();
    let (mut pvh_start, mut pvh_end) = (None, None);
    for sym in image.symbols() {
        report.symbols += 1;
        if sym.undefined && sym.has_name() {
            findings.add(|| Finding::Undefined(sym.name()));
        }
        if sym.is_named(b"skiff_pvh_start") {
            pvh_start = Some(sym.addr);
        } else if sym.is_named(b"skiff_pvh_long") {
            pvh_end = Some(sym.addr);
        }
    }
    let pvh_32bit = pvh_start.zip(pvh_end).filter(|(s, e)| s < e);

    for seg in &image.segments {
        let contents = image.segment_bytes(seg);
        report.loadable_bytes += contents.len() as u64;
        if !seg.executable() {
            continue;
        }
        let base = seg.vaddr;
        let supervisor = seg.supervisor();
        report.code_bytes += contents.len() as u64;
        // Split out the 32-bit trampoline, if it lies in this segment.
        let mut pieces = vec![(base, contents, 64u32)];
        if let Some((s, e)) = pvh_32bit
            && s >= base
            && e <= base + contents.len() as u64
        {
            let (a, b) = ((s - base) as usize, (e - base) as usize);
            pieces = vec![(base, &contents[..a], 64), (s, &contents[a..b], 32), (e, &contents[b..], 64)];
        }
        for (addr, code, bitness) in pieces {
            let n = decode(code, addr, bitness, |i| {
                if is_syscall(i) {
                    findings.add(|| Finding::Syscall {
                        addr: i.ip(),
                        text: format(i),
                        function: image.function_at(i.ip()).map(|s| s.name()),
                    });
                }
                if supervisor && is_simd(i) {
                    findings.add(|| Finding::SupervisorSimd { addr: i.ip(), text: format(i) });
                }
            });
            report.instructions += n;
            if supervisor {
                report.supervisor_instructions += n;
            }
        }
    }
    if findings.listed.is_empty() {
        Ok(report)
    } else {
        Err(CheckError::Findings { findings: findings.listed, more: findings.more })
    }
}

/// Checks an image file: the tender accepts it (ABI version included),
/// then instructions and symbols.
pub fn check_image(path: &Path) -> Result<CheckReport, CheckError> {
    let data = std::fs::read(path).map_err(|source| CheckError::Read { path: path.to_owned(), source })?;
    check(&Image::parse(data, true)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(code: &[u8], bitness: u32, supervisor: bool) -> Vec<String> {
        let mut out = Vec::new();
        decode(code, 0x1000, bitness, |i| {
            if is_syscall(i) {
                out.push(format!("syscall {}", format(i)));
            }
            if supervisor && is_simd(i) {
                out.push(format!("simd {}", format(i)));
            }
        });
        out
    }

    #[test]
    fn system_calls_are_found() {
        assert_eq!(findings(&[0x0f, 0x05], 64, false), ["syscall syscall"]);
        assert_eq!(findings(&[0x0f, 0x34], 64, false), ["syscall sysenter"]);
        assert_eq!(findings(&[0xcd, 0x80], 64, false), ["syscall int 80h"]);
        // `mov eax, 0x050f` contains the bytes 0f 05 in its immediate:
        // decoding instruction by instruction does not flag it.
        assert!(findings(&[0xb8, 0x0f, 0x05, 0x00, 0x00], 64, false).is_empty());
        assert!(findings(&[0xcd, 0x03], 64, false).is_empty());
    }

    #[test]
    fn simd_in_supervisor_code_is_found() {
        // movaps xmm0, xmm1
        assert_eq!(findings(&[0x0f, 0x28, 0xc1], 64, true), ["simd movaps xmm0,xmm1"]);
        // vpxor ymm0, ymm0, ymm0
        assert_eq!(findings(&[0xc5, 0xfd, 0xef, 0xc0], 64, true).len(), 1);
        // ldmxcsr [rax]
        assert_eq!(findings(&[0x0f, 0xae, 0x10], 64, true).len(), 1);
        // The same in user code is fine.
        assert!(findings(&[0x0f, 0x28, 0xc1], 64, false).is_empty());
        // Plain integer code is fine in the supervisor: push 0; out dx, eax; iretq.
        assert!(findings(&[0x6a, 0x00, 0xef, 0x48, 0xcf], 64, true).is_empty());
    }
}
