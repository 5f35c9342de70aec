//! Guest disks: files attached to the block devices an image declares
//! (`#[skiff::main(block = "disk")]`, `--disk disk=FILE[,ro]`), and the
//! serving of their request rings ([`skiff_abi::blk`]).
//!
//! A disk is a host file opened before lockdown. Its capacity is the
//! file's size in whole sectors (512 bytes, or 4096 with `sector=4096`);
//! `size=64M` creates a missing file of that size. The guest queues
//! requests in its ring and rings `BlockNotify`; the vCPU thread serves
//! every queued request before the call returns (one exit per batch):
//! reads and writes with `pread`/`pwrite` at the request's offset, flushes
//! with `fdatasync` (the data is durable when the request completes), and
//! discards by punching a hole (`fallocate`). The seccomp allow-list has
//! these four calls on the disks' descriptors only.
//!
//! Every request is checked before it is served: a known operation, a
//! sector range inside the disk that does not wrap, a buffer inside the
//! service's memory. A request that fails the checks is a bad hypercall
//! and ends the guest. A write to a read-only disk, and a host I/O error
//! (a full file system, a file truncated under the guest), is the
//! request's status: the guest sees an error and goes on.

use crate::guest_memory::{GuestAddr, GuestMemory, MemoryError};
use skiff_abi::{BlockInfo, DeviceKind, blk, ring};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// One `--disk NAME=FILE[,ro][,size=N][,sector=512|4096]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// The disk's name in the image's manifest.
    pub name: String,
    /// The host file.
    pub path: PathBuf,
    /// Attach read-only.
    pub read_only: bool,
    /// Create the file with this many bytes if it does not exist.
    pub create_size: Option<u64>,
    /// Bytes per sector.
    pub sector_size: u32,
}

/// A disk option or attachment is wrong.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// `--disk` is malformed.
    #[error("--disk {0:?}: expected NAME=FILE[,ro][,size=SIZE][,sector=512|4096], e.g. --disk data=state.img,size=64M")]
    BadSpec(String),
    /// The same disk is attached twice.
    #[error("disk {0:?} is given twice")]
    Duplicate(String),
    /// The image declares a disk nobody attached.
    #[error("the image needs a disk named {0:?}: attach a file with --disk {0}=FILE (add ,size=64M to create it)")]
    Missing(String),
    /// A disk is attached that the image does not declare.
    #[error("--disk {name}=...: the image declares no disk of that name{}", declared_list(.declared))]
    Undeclared {
        /// The given name.
        name: String,
        /// The disks the image declares.
        declared: Vec<String>,
    },
    /// The file could not be opened or created.
    #[error("disk {name:?}: cannot open {path}: {source}")]
    Open {
        /// The disk.
        name: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds less than one sector.
    #[error("disk {name:?}: {path} holds {len} bytes, less than one {sector_size}-byte sector")]
    TooSmall {
        /// The disk.
        name: String,
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The sector size.
        sector_size: u32,
    },
}

fn declared_list(declared: &[String]) -> String {
    if declared.is_empty() {
        " (it has no disks: a service declares one with #[skiff::main(block = \"disk\")] and is rebuilt)".into()
    } else {
        format!(" (it has: {})", declared.join(", "))
    }
}

/// Parses a size: bytes, or with a suffix K, M, G (powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1 << shift).filter(|&n| n > 0)
}

/// Parses `NAME=FILE[,ro][,size=SIZE][,sector=512|4096]`.
pub fn parse_disk(s: &str) -> Result<DiskSpec, DiskError> {
    let bad = || DiskError::BadSpec(s.to_string());
    let (name, rest) = s.split_once('=').filter(|(n, _)| !n.is_empty()).ok_or_else(bad)?;
    let mut parts = rest.split(',');
    let path = parts.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
    let mut spec = DiskSpec {
        name: name.to_string(),
        path: PathBuf::from(path),
        read_only: false,
        create_size: None,
        sector_size: 512,
    };
    for part in parts {
        match part.split_once('=') {
            None if part == "ro" => spec.read_only = true,
            Some(("size", v)) => spec.create_size = Some(parse_size(v).ok_or_else(bad)?),
            Some(("sector", v)) => {
                spec.sector_size = v.parse().ok().filter(|n| blk::SECTOR_SIZES.contains(n)).ok_or_else(bad)?;
            }
            _ => return Err(bad()),
        }
    }
    Ok(spec)
}

/// An attached disk.
#[derive(Debug)]
pub struct Disk {
    /// The disk's name in the manifest.
    pub name: String,
    /// The host file.
    pub file: File,
    /// What the guest is told.
    pub info: BlockInfo,
}

impl Disk {
    /// The descriptor the seccomp allow-list pins.
    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}

/// Bytes of guest memory the request rings of `count` disks need.
pub fn ring_bytes(count: usize) -> u64 {
    count as u64 * blk::ring_bytes(blk::DEFAULT_SLOTS)
}

/// The disks the image declares, in manifest order.
pub fn declared(devices: &[crate::elf::DeclaredDevice]) -> Vec<String> {
    devices.iter().filter(|d| d.kind == DeviceKind::Block).map(|d| d.name.clone()).collect()
}

/// Matches `specs` to the image's declared disks (in manifest order),
/// opens (or creates) their files and lays their rings out from
/// `ring_base` up.
pub fn attach(
    devices: &[crate::elf::DeclaredDevice],
    specs: &[DiskSpec],
    ring_base: u64,
) -> Result<Vec<Disk>, DiskError> {
    let declared = declared(devices);
    for (i, spec) in specs.iter().enumerate() {
        if specs[..i].iter().any(|s| s.name == spec.name) {
            return Err(DiskError::Duplicate(spec.name.clone()));
        }
        if !declared.contains(&spec.name) {
            return Err(DiskError::Undeclared { name: spec.name.clone(), declared });
        }
    }
    let mut disks = Vec::new();
    for name in &declared {
        let spec = specs.iter().find(|s| &s.name == name).ok_or_else(|| DiskError::Missing(name.clone()))?;
        let open_err = |source| DiskError::Open { name: name.clone(), path: spec.path.clone(), source };
        if let Some(size) = spec.create_size
            && !spec.path.exists()
        {
            let f = OpenOptions::new().write(true).create_new(true).open(&spec.path).map_err(open_err)?;
            f.set_len(size).map_err(open_err)?;
        }
        let file = OpenOptions::new().read(true).write(!spec.read_only).open(&spec.path).map_err(open_err)?;
        let len = file.metadata().map_err(open_err)?.len();
        let capacity = len / u64::from(spec.sector_size);
        if capacity == 0 {
            return Err(DiskError::TooSmall {
                name: name.clone(),
                path: spec.path.clone(),
                len,
                sector_size: spec.sector_size,
            });
        }
        let info = BlockInfo {
            capacity,
            sector_size: spec.sector_size,
            flags: if spec.read_only { blk::FLAG_READ_ONLY } else { 0 },
            ring: ring_base + disks.len() as u64 * blk::ring_bytes(blk::DEFAULT_SLOTS),
            slots: blk::DEFAULT_SLOTS,
        };
        disks.push(Disk { name: name.clone(), file, info });
    }
    Ok(disks)
}

/// A request the guest may not make; ends the guest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The ring's indices are inconsistent.
    #[error(
        "disk {disk:?}: request ring indices are inconsistent (producer {producer}, consumer {consumer}, {slots} slots)"
    )]
    Corrupt {
        /// The disk.
        disk: String,
        /// Guest-written producer index.
        producer: u32,
        /// Tender-written consumer index.
        consumer: u32,
        /// Ring size.
        slots: u32,
    },
    /// An unknown operation.
    #[error("disk {disk:?}: request {index}: unknown operation {op}")]
    UnknownOp {
        /// The disk.
        disk: String,
        /// The request's index.
        index: u32,
        /// The operation.
        op: u32,
    },
    /// Sectors past the end of the disk, or a range that wraps.
    #[error("disk {disk:?}: request {index}: sectors {sector}+{count} are outside the disk ({capacity} sectors)")]
    OutOfRange {
        /// The disk.
        disk: String,
        /// The request's index.
        index: u32,
        /// First sector.
        sector: u64,
        /// Sectors.
        count: u32,
        /// The disk's size.
        capacity: u64,
    },
    /// A flush with a range or buffer, or a discard with a buffer.
    #[error("disk {disk:?}: request {index}: {what} must be zero")]
    NonZero {
        /// The disk.
        disk: String,
        /// The request's index.
        index: u32,
        /// The field.
        what: &'static str,
    },
    /// A buffer outside the service's memory.
    #[error("disk {disk:?}: request {index}: buffer of {len} bytes at {addr:#x} is not {} memory of the service", if *.write { "writable" } else { "readable" })]
    Buffer {
        /// The disk.
        disk: String,
        /// The request's index.
        index: u32,
        /// Its address.
        addr: u64,
        /// Its length.
        len: u64,
        /// Whether the tender would write it.
        write: bool,
    },
    /// The ring is outside guest memory (a tender bug).
    #[error("disk {disk:?}: {source}")]
    Memory {
        /// The disk.
        disk: String,
        /// Why.
        source: MemoryError,
    },
}

/// Bytes moved per host call: requests larger than this are served in
/// pieces through one bounce buffer.
const CHUNK: usize = 1 << 20;

/// Serves every request queued on `disk`'s ring. `user` checks that a
/// buffer is the service's own memory (writable if the flag is set).
/// Returns how many requests were served.
pub fn serve(
    disk: &Disk,
    mem: &GuestMemory,
    user: &dyn Fn(u64, u64, bool) -> bool,
    bounce: &mut Vec<u8>,
) -> Result<u32, RequestError> {
    let name = || disk.name.clone();
    let mem_err = |source| RequestError::Memory { disk: disk.name.clone(), source };
    let base = disk.info.ring;
    let slots = disk.info.slots;
    let producer: &AtomicU32 = mem.atomic_u32(GuestAddr(base + ring::PRODUCER)).map_err(mem_err)?;
    let consumer: &AtomicU32 = mem.atomic_u32(GuestAddr(base + ring::CONSUMER)).map_err(mem_err)?;
    let mut served = 0;
    loop {
        let p = producer.load(Ordering::Acquire);
        let c = consumer.load(Ordering::Relaxed);
        let pending = p.wrapping_sub(c);
        if pending == 0 {
            return Ok(served);
        }
        if pending > slots {
            return Err(RequestError::Corrupt { disk: name(), producer: p, consumer: c, slots });
        }
        let slot = base + ring::HEADER_SIZE + u64::from(c % slots) * blk::SLOT_SIZE;
        let req: blk::Request = mem.read_obj(GuestAddr(slot)).map_err(mem_err)?;
        let (status, errno) = serve_one(disk, mem, user, bounce, c, &req)?;
        mem.write_obj(GuestAddr(slot + blk::STATUS_OFFSET), &status).map_err(mem_err)?;
        mem.write_obj(GuestAddr(slot + blk::ERRNO_OFFSET), &errno).map_err(mem_err)?;
        consumer.store(c.wrapping_add(1), Ordering::Release);
        served += 1;
    }
}

fn serve_one(
    disk: &Disk,
    mem: &GuestMemory,
    user: &dyn Fn(u64, u64, bool) -> bool,
    bounce: &mut Vec<u8>,
    index: u32,
    req: &blk::Request,
) -> Result<(u32, u32), RequestError> {
    let name = || disk.name.clone();
    let info = &disk.info;
    let ss = u64::from(info.sector_size);
    let in_range = req.sector.checked_add(u64::from(req.count)).is_some_and(|end| end <= info.capacity);
    let out_of_range = || RequestError::OutOfRange {
        disk: name(),
        index,
        sector: req.sector,
        count: req.count,
        capacity: info.capacity,
    };
    let io = |r: std::io::Result<()>| match r {
        Ok(()) => (blk::status::OK, 0),
        Err(e) => (blk::status::IO_ERROR, e.raw_os_error().unwrap_or(libc::EIO) as u32),
    };
    match req.op {
        blk::op::READ | blk::op::WRITE => {
            if !in_range {
                return Err(out_of_range());
            }
            let read = req.op == blk::op::READ;
            let len = u64::from(req.count) * ss;
            if !user(req.buf, len, read) {
                return Err(RequestError::Buffer { disk: name(), index, addr: req.buf, len, write: read });
            }
            if !read && info.read_only() {
                return Ok((blk::status::READ_ONLY, 0));
            }
            let mem_err = |source| RequestError::Memory { disk: name(), source };
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(CHUNK as u64) as usize;
                bounce.resize(n, 0);
                let at = req.sector * ss + done;
                let buf = &mut bounce[..n];
                if read {
                    if let Err(e) = disk.file.read_exact_at(buf, at) {
                        // A file cut short under the guest (a short read,
                        // no errno) is EIO.
                        return Ok(io(Err(e)));
                    }
                    mem.write(GuestAddr(req.buf + done), buf).map_err(mem_err)?;
                } else {
                    mem.read(GuestAddr(req.buf + done), buf).map_err(mem_err)?;
                    if let Err(e) = disk.file.write_all_at(buf, at) {
                        return Ok(io(Err(e)));
                    }
                }
                done += n as u64;
            }
            Ok((blk::status::OK, 0))
        }
        blk::op::FLUSH => {
            if req.sector != 0 || req.count != 0 || req.buf != 0 {
                return Err(RequestError::NonZero { disk: name(), index, what: "a flush's sector, count and buffer" });
            }
            if info.read_only() {
                return Ok((blk::status::OK, 0));
            }
            Ok(io(disk.file.sync_data()))
        }
        blk::op::DISCARD => {
            if !in_range {
                return Err(out_of_range());
            }
            if req.buf != 0 {
                return Err(RequestError::NonZero { disk: name(), index, what: "a discard's buffer" });
            }
            if info.read_only() {
                return Ok((blk::status::READ_ONLY, 0));
            }
            match punch_hole(&disk.file, req.sector * ss, u64::from(req.count) * ss) {
                Ok(()) => Ok((blk::status::OK, 0)),
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok((blk::status::UNSUPPORTED, 0)),
                Err(e) => Ok(io(Err(e))),
            }
        }
        op => Err(RequestError::UnknownOp { disk: name(), index, op }),
    }
}

/// Deallocates `len` bytes at `offset` of `file`, keeping its size: they
/// read as zeros afterwards.
fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: fallocate only reads its integer arguments; the descriptor is
    // owned by `file` and open for the duration of the call.
    let r = unsafe {
        libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len)
    };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::DeclaredDevice;

    #[test]
    fn specs_parse() {
        let s = parse_disk("data=/tmp/x.img,ro,size=64M,sector=4096").unwrap();
        assert_eq!(s.name, "data");
        assert_eq!(s.path, PathBuf::from("/tmp/x.img"));
        assert!(s.read_only);
        assert_eq!(s.create_size, Some(64 << 20));
        assert_eq!(s.sector_size, 4096);
        assert_eq!(parse_disk("d=f").unwrap().sector_size, 512);
        for bad in ["d", "=f", "d=", "d=f,rw", "d=f,sector=1024", "d=f,size=0", "d=f,size=12Q"] {
            assert!(parse_disk(bad).is_err(), "{bad}");
        }
    }

    fn declared() -> Vec<DeclaredDevice> {
        vec![
            DeclaredDevice { kind: DeviceKind::Net, name: "service".into(), outbound: false },
            DeclaredDevice { kind: DeviceKind::Block, name: "disk".into(), outbound: false },
        ]
    }

    #[test]
    fn attachments_must_match_the_manifest() {
        let dir = std::env::temp_dir().join(format!("skiff-disk-attach-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.img");
        let spec = |s: &str| parse_disk(&format!("{s}={},size=1M", path.display())).unwrap();
        assert!(matches!(attach(&declared(), &[], 0), Err(DiskError::Missing(n)) if n == "disk"));
        let err = attach(&declared(), &[spec("other")], 0).unwrap_err().to_string();
        assert!(err.contains("declares no disk of that name (it has: disk)"), "{err}");
        assert!(matches!(attach(&declared(), &[spec("disk"), spec("disk")], 0), Err(DiskError::Duplicate(_))));
        let disks = attach(&declared(), &[spec("disk")], 0x10_0000).unwrap();
        assert_eq!(disks[0].info.capacity, 2048);
        assert_eq!(disks[0].info.ring, 0x10_0000);
        std::fs::write(&path, [0u8; 100]).unwrap();
        let err = attach(&declared(), &[spec("disk")], 0).unwrap_err().to_string();
        assert!(err.contains("less than one 512-byte sector"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
