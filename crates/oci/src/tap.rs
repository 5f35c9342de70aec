//! Making the persistent TAP device the tender attaches to, in the
//! container's network namespace: the one `ioctl` pair netlink cannot do
//! (the kernel makes no TAP device through rtnetlink).

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETPERSIST`: `_IOW('T', 203, int)`.
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

/// `struct ifreq` as `TUNSETIFF` reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    pad: [u8; 22],
}

/// Makes the TAP device `name` (or takes the one a run before left) and
/// makes it persistent, so it outlives this descriptor: the tender attaches
/// to it by name, and it goes with the network namespace.
pub fn make_persistent(name: &str) -> std::io::Result<()> {
    if name.is_empty() || name.len() > 15 {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    let tun = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open("/dev/net/tun")?;
    let mut req = IfReq { name: [0; 16], flags: IFF_TAP | IFF_NO_PI, pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads (and may write back the name into) a `struct
    // ifreq` of 40 bytes, which `IfReq` is, valid for the whole call; `tun`
    // is an open /dev/net/tun descriptor.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: TUNSETPERSIST takes an integer argument and touches no memory
    // of ours.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
