//! What joining the container's `eth0` to the TAP device needs besides
//! netlink ([`skiff_oci::network::Links`]): the persistent TAP device the
//! tender reads, in the container's network namespace (the one `ioctl`
//! pair netlink cannot do: the kernel makes no TAP device through
//! rtnetlink), and packet sockets to watch `eth0`'s frames and pass some on
//! to the guest while the redirect is set up.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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

/// Makes the TAP device `name` (or takes the one a run before left), makes
/// it persistent (it goes with the network namespace) and returns the
/// descriptor attached to it, which the tender takes over. While it is
/// held the device has a carrier, so the frames redirected to it from
/// `eth0` before the guest runs wait in its queue: a TAP device nobody
/// holds has none, and `tc`'s redirect drops what it would send there (the
/// kernel logs "tc mirred to Houston: device skiff0 is down"), which costs
/// a client whose SYN it was a second.
fn attach_persistent(name: &str) -> std::io::Result<OwnedFd> {
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
    Ok(tun.into())
}

/// `PACKET_OUTGOING`: a frame this host sent.
const PACKET_OUTGOING: u8 = 4;

/// The container's links, for [`skiff_oci::network::connect`].
#[derive(Default)]
pub struct HostLinks {
    /// The packet socket of the watch, while it lasts.
    watch: Option<OwnedFd>,
}

/// A packet socket (`AF_PACKET`, raw) that receives nothing until bound.
fn packet_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) takes integers; a new descriptor (or -1) comes back.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor just made and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A `sockaddr_ll` for interface `index` and protocol `protocol` (network
/// byte order).
fn link_address(index: u32, protocol: u16) -> std::io::Result<libc::sockaddr_ll> {
    let index = i32::try_from(index).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: sockaddr_ll is plain integers and bytes; all zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = index;
    Ok(addr)
}

const LINK_ADDRESS_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;

impl skiff_oci::network::Links for HostLinks {
    fn make_tap(&mut self, name: &str) -> std::io::Result<OwnedFd> {
        attach_persistent(name)
    }

    fn watch(&mut self, index: u32) -> std::io::Result<()> {
        let socket = packet_socket()?;
        // Bound to the interface and every protocol: from here on it
        // keeps a copy of each frame the interface receives or sends (the
        // copy is taken before the interface's ingress qdisc sees the frame).
        let addr = link_address(index, (libc::ETH_P_ALL as u16).to_be())?;
        // SAFETY: `addr` is a valid sockaddr_ll of the length given, alive
        // for the call; `socket` is an open packet socket.
        let rc =
            unsafe { libc::bind(socket.as_raw_fd(), (&raw const addr).cast::<libc::sockaddr>(), LINK_ADDRESS_LEN) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.watch = Some(socket);
        Ok(())
    }

    fn watched(&mut self) -> std::io::Result<Vec<(bool, Vec<u8>)>> {
        let Some(socket) = self.watch.take() else { return Ok(Vec::new()) };
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: as in `link_address`.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = LINK_ADDRESS_LEN;
            // SAFETY: `buf` is writable for `buf.len()` bytes and `from` for
            // `len`, both alive for the call; `socket` is an open descriptor.
            let n = unsafe {
                libc::recvfrom(
                    socket.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&raw mut from).cast::<libc::sockaddr>(),
                    &mut len,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                return match e.kind() {
                    std::io::ErrorKind::WouldBlock => Ok(frames),
                    std::io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            frames.push((from.sll_pkttype == PACKET_OUTGOING, buf[..n as usize].to_vec()));
        }
    }

    fn send(&mut self, index: u32, frame: &[u8]) -> std::io::Result<()> {
        if frame.len() < 14 {
            return Err(std::io::ErrorKind::InvalidInput.into());
        }
        let socket = packet_socket()?;
        let addr = link_address(index, u16::from_ne_bytes([frame[12], frame[13]]))?;
        // SAFETY: `frame` is readable for its length and `addr` is a valid
        // sockaddr_ll of the length given, both alive for the call.
        let n = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast::<libc::sockaddr>(),
                LINK_ADDRESS_LEN,
            )
        };
        if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }
}
