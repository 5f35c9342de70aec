//! Host TAP devices: the other end of a guest NIC.
//!
//! The tender attaches to an existing TAP device by name (it never creates
//! one: that needs privileges the tender should not have, and a device the
//! user did not set up would not be connected to anything), or takes over
//! a descriptor its caller attached ([`Tap::adopt`]: skiff-oci attaches
//! when it connects the container's network, so frames that come before
//! the tender runs wait on the device instead of being dropped). Frames are read
//! and written whole, one per system call, without a packet-information
//! header (`IFF_NO_PI`). The descriptor is non-blocking; readiness comes
//! from epoll.
//!
//! The only `unsafe` here is the `if_nametoindex`, `TUNSETIFF` and
//! `fcntl` calls and the `ppoll` call of [`wait_readable`].

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

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
        let mut req = IfReq { name: [0; 16], flags: IFF_TAP | IFF_NO_PI, pad: [0; 22] };
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
        Ok(Tap { file })
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
        Ok(Tap { file })
    }

    /// A second descriptor of the same device (`dup`, close-on-exec), for
    /// another thread to send on.
    pub fn try_clone(&self) -> io::Result<Tap> {
        Ok(Tap { file: self.file.try_clone()? })
    }

    /// The descriptor, for epoll.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Reads one frame into `buf`; `Ok(None)` when none is pending.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match (&self.file).read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes one frame. `Ok(false)` when the host's queue is full and the
    /// frame was dropped, as a NIC would.
    pub fn send(&self, frame: &[u8]) -> io::Result<bool> {
        match (&self.file).write(frame) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            // The interface is down or has no carrier: the frame is lost,
            // like on a cable nobody plugged in.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(false),
            Err(e) => Err(e),
        }
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
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
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
