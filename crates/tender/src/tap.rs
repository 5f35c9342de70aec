//! Host TAP devices: the other end of a guest NIC.
//!
//! The tender attaches to an existing TAP device by name (it never creates
//! one: that needs privileges the tender should not have, and a device the
//! user did not set up would not be connected to anything), or takes over
//! a descriptor its caller attached ([`Tap::adopt`]: skiff-oci attaches
//! when it connects the container's network, so frames that come before
//! the tender runs wait on the device instead of being dropped). Frames are read
//! and written whole, one per system call, without a packet-information
//! header (`IFF_NO_PI`) but with a virtio-net header (`IFF_VNET_HDR`), so
//! that a run of TCP segments can leave as one write ([`crate::gso`]). The
//! device is told to send the tender no offloaded frames (`TUNSETOFFLOAD`
//! 0): what it reads is checksummed, one frame per read, as on the wire. A
//! descriptor adopted without `IFF_VNET_HDR` is used without headers. The
//! descriptor is non-blocking; readiness comes from epoll.
//!
//! The only `unsafe` here is the `if_nametoindex`, `TUNSETIFF`,
//! `TUNGETIFF`, `TUNSETOFFLOAD`, `writev` and `fcntl` calls and the `ppoll`
//! call of [`wait_readable`].

use crate::gso::VNET_HDR_LEN;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::Ioctl = 0x4004_54ca;
/// `TUNSETOFFLOAD`: `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::Ioctl = 0x4004_54d0;
/// `TUNGETIFF`: `_IOR('T', 210, unsigned int)`.
// (The C library's request type is `int` on musl: the kernel reads the
// low 32 bits either way.)
const TUNGETIFF: libc::Ioctl = 0x8004_54d2_u32 as libc::Ioctl;
/// The virtio-net header of a frame sent as it is.
const PLAIN: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// A TAP device could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is not a valid interface name.
    #[error("{0:?} is not a valid network interface name (1 to 15 characters, no '/', ':' or spaces)")]
    BadName(String),
    /// No such interface.
    #[error(
        "TAP device {0} does not exist; create it first, for example: \
         `ip tuntap add {0} mode tap && ip link set {0} up`"
    )]
    Missing(String),
    /// The interface exists but is not a TAP device.
    #[error("{0} is not a TAP device")]
    NotTap(String),
    /// `/dev/net/tun` cannot be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    Tun(io::Error),
    /// Not allowed to attach.
    #[error(
        "not allowed to attach to TAP device {0}: it belongs to another user or group; \
         create it with `ip tuntap add {0} mode tap user $USER`, or run as root"
    )]
    Permission(String),
    /// Another process holds it.
    #[error("TAP device {0} is in use by another process")]
    Busy(String),
    /// Any other failure.
    #[error("cannot attach to TAP device {name}: {source}")]
    Attach {
        /// The device.
        name: String,
        /// Why.
        source: io::Error,
    },
}

/// An attached TAP device.
pub struct Tap {
    file: File,
    /// Frames carry a virtio-net header (`IFF_VNET_HDR`).
    vnet: bool,
}

/// `struct ifreq` as `TUNSETIFF` reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    pad: [u8; 22],
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() < 16 && !name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
}

impl Tap {
    /// Attaches to the existing TAP device `name`.
    pub fn attach(name: &str) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::BadName(name.to_string()));
        }
        // Attaching to a name that does not exist would create a new,
        // unconnected device: check first, in this thread's network
        // namespace. (A non-TAP device is refused by TUNSETIFF itself.)
        let c_name = std::ffi::CString::new(name).map_err(|_| TapError::BadName(name.to_string()))?;
        // SAFETY: `c_name` is a valid NUL-terminated string for the call.
        if unsafe { libc::if_nametoindex(c_name.as_ptr()) } == 0 {
            return Err(TapError::Missing(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Tun)?;
        let mut req = IfReq { name: [0; 16], flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads a `struct ifreq` (name and flags, 40 bytes
        // on x86-64, which `IfReq` matches) from the pointer for the duration
        // of the call; `file` is an open /dev/net/tun descriptor.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission(name.to_string()),
                Some(libc::EBUSY) => TapError::Busy(name.to_string()),
                Some(libc::EINVAL) => TapError::NotTap(name.to_string()),
                _ => TapError::Attach { name: name.to_string(), source: err },
            });
        }
        // No offloaded frames toward the tender: the guest takes frames as
        // they are on the wire.
        let tap = Tap { file, vnet: true };
        tap.set_tcp_offload(false).map_err(|source| TapError::Attach { name: name.to_string(), source })?;
        Ok(tap)
    }

    /// Takes over the TAP device `name` that the caller has attached:
    /// `fd` is a `/dev/net/tun` descriptor after `TUNSETIFF`, which stays
    /// the caller's (the tender uses a duplicate, made non-blocking).
    /// Frames that reached the device since it was attached are queued on
    /// it and read first; a device nobody holds has no carrier and drops
    /// what is sent to it.
    pub fn adopt(name: &str, fd: &OwnedFd) -> Result<Tap, TapError> {
        let attach = |source| TapError::Attach { name: name.to_string(), source };
        let file = File::from(fd.try_clone().map_err(attach)?);
        // SAFETY: F_GETFL and F_SETFL take and return integers and touch no
        // memory of ours; `file` is an open descriptor.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(attach(io::Error::last_os_error()));
        }
        let mut req = IfReq { name: [0; 16], flags: 0, pad: [0; 22] };
        // SAFETY: TUNGETIFF writes a `struct ifreq` (40 bytes on x86-64,
        // which `IfReq` matches) to the pointer during the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNGETIFF, &mut req as *mut IfReq) } < 0 {
            return Err(attach(io::Error::last_os_error()));
        }
        Ok(Tap { file, vnet: req.flags & IFF_VNET_HDR != 0 })
    }

    /// A second descriptor of the same device (`dup`, close-on-exec), for
    /// another thread to send on.
    pub fn try_clone(&self) -> io::Result<Tap> {
        Ok(Tap { file: self.file.try_clone()?, vnet: self.vnet })
    }

    /// Lets the kernel send this device TCP segments of up to 64 KiB with
    /// their checksums left to the reader (`TUNSETOFFLOAD` with
    /// `TUN_F_CSUM|TUN_F_TSO4|TUN_F_TSO6`), as a VMM with a virtio-net
    /// guest that takes them does; `false` turns it off again (the
    /// tender's own devices: its guests take frames as on the wire). Only
    /// on a device with virtio-net headers.
    pub fn set_tcp_offload(&self, on: bool) -> io::Result<()> {
        const TUN_F_CSUM: libc::c_ulong = 0x01;
        const TUN_F_TSO4: libc::c_ulong = 0x02;
        const TUN_F_TSO6: libc::c_ulong = 0x04;
        let flags = if on { TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 } else { 0 };
        // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no
        // memory of ours.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD, flags) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether frames carry a virtio-net header, so that merged TCP
    /// segments can be written ([`Tap::send_with_header`]).
    pub fn vnet(&self) -> bool {
        self.vnet
    }

    /// The descriptor, for epoll.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Reads one frame into `buf`; `Ok(None)` when none is pending. The
    /// frame is the returned range of `buf` (after the virtio-net header,
    /// which says nothing the tender needs: no offloads were asked for).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<std::ops::Range<usize>>> {
        let skip = if self.vnet { VNET_HDR_LEN } else { 0 };
        match (&self.file).read(buf) {
            Ok(n) => Ok(Some(skip.min(n)..n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes one frame as it is. `Ok(false)` when the host's queue is full
    /// and the frame was dropped, as a NIC would.
    pub fn send(&self, frame: &[u8]) -> io::Result<bool> {
        if !self.vnet {
            return sent((&self.file).write(frame));
        }
        let iov = [
            libc::iovec { iov_base: PLAIN.as_ptr() as *mut libc::c_void, iov_len: PLAIN.len() },
            libc::iovec { iov_base: frame.as_ptr() as *mut libc::c_void, iov_len: frame.len() },
        ];
        // SAFETY: both iovecs point at live buffers of the given lengths,
        // which writev only reads.
        let rc = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), 2) };
        sent(if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc as usize) })
    }

    /// Writes `bytes`, a virtio-net header and its frame, as one
    /// ([`crate::gso::Coalescer::take`], or what another device with
    /// headers read); only on a device with headers.
    pub fn send_with_header(&self, bytes: &[u8]) -> io::Result<bool> {
        debug_assert!(self.vnet);
        sent((&self.file).write(bytes))
    }
}

/// A write's outcome as [`Tap::send`] reports it.
fn sent(rc: io::Result<usize>) -> io::Result<bool> {
    match rc {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        // The interface is down or has no carrier: the frame is lost, like
        // on a cable nobody plugged in.
        Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits until one of `fds` is readable or `timeout` passes (`None`:
/// forever). Returns a bit per descriptor that is readable (at most 64).
/// An interrupting signal returns early with whatever is ready.
pub fn wait_readable(fds: &[RawFd], timeout: Option<std::time::Duration>) -> io::Result<u64> {
    let fds: Vec<(RawFd, bool)> = fds.iter().map(|&fd| (fd, false)).collect();
    wait(&fds, timeout)
}

/// Waits until one of `fds` is ready or `timeout` passes (`None`: forever):
/// readable, or writable for those paired with `true`. Returns a bit per
/// descriptor that is ready (the first 64).
pub fn wait(fds: &[(RawFd, bool)], timeout: Option<std::time::Duration>) -> io::Result<u64> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, write)| libc::pollfd { fd, events: if write { libc::POLLOUT } else { libc::POLLIN }, revents: 0 })
        .collect();
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as _,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs that
    // ppoll may write `revents` into; `ts_ptr` is null or points at `ts`,
    // alive for the call; a null signal mask leaves the mask unchanged.
    let rc = unsafe { libc::ppoll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ts_ptr, std::ptr::null()) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(pfds.iter().enumerate().take(64).fold(0, |m, (i, p)| if p.revents != 0 { m | 1 << i } else { m }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(valid_name("tap0"));
        assert!(valid_name("skiff-tap-12345"));
        assert!(!valid_name(""));
        assert!(!valid_name("a-name-that-is-too-long"));
        assert!(!valid_name("../x"));
        assert!(matches!(Tap::attach("no such"), Err(TapError::BadName(_))));
        assert!(matches!(Tap::attach("skiffnotthere0"), Err(TapError::Missing(_))));
    }
}
