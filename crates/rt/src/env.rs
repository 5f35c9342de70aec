//! What the runtime lends the service: its command line, a spawner, and
//! its devices.

use crate::block::BlockDevice;
use crate::device::{DeviceError, NetDevice};
use crate::executor::{JoinHandle, Spawner};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::future::Future;

/// Lends a NIC by name (the platform's device table behind it).
pub type NetOpener = Box<dyn Fn(&str) -> Result<Box<dyn NetDevice>, DeviceError>>;

/// Lends a disk by name (the platform's device table behind it).
pub type BlockOpener = Box<dyn Fn(&str) -> Result<Box<dyn BlockDevice>, DeviceError>>;

/// The service's environment, passed to its `main`.
pub struct Env {
    args: Vec<String>,
    spawner: Spawner,
    net: Option<NetOpener>,
    block: Option<BlockOpener>,
}

impl Env {
    /// Builds an environment without devices (the boot path adds them).
    pub fn new(args: Vec<String>, spawner: Spawner) -> Env {
        Env { args, spawner, net: None, block: None }
    }

    /// Adds the platform's NICs.
    pub fn with_net(mut self, opener: NetOpener) -> Env {
        self.net = Some(opener);
        self
    }

    /// Takes the NIC the image declared as `name` (`#[skiff::main(net =
    /// "name")]`). Each NIC can be taken once.
    pub fn take_net(&self, name: &str) -> Result<Box<dyn NetDevice>, DeviceError> {
        match &self.net {
            Some(open) => open(name),
            None => Err(DeviceError::NoSuchDevice { name: String::from(name), available: Vec::new() }),
        }
    }

    /// Adds the platform's disks.
    pub fn with_block(mut self, opener: BlockOpener) -> Env {
        self.block = Some(opener);
        self
    }

    /// Takes the disk the image declared as `name` (`#[skiff::main(block =
    /// "name")]`). Each disk can be taken once.
    pub fn take_block(&self, name: &str) -> Result<Box<dyn BlockDevice>, DeviceError> {
        match &self.block {
            Some(open) => open(name),
            None => Err(DeviceError::NoSuchDevice { name: String::from(name), available: Vec::new() }),
        }
    }

    /// The arguments given to the tender after `--` (no program name).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// A spawner for the guest's executor.
    pub fn spawner(&self) -> Spawner {
        self.spawner.clone()
    }

    /// Resolves once the guest is asked to stop (`SIGTERM` from `podman
    /// stop` or systemd, `SIGINT` from Ctrl-C, sent to the tender). A
    /// service that awaits it ends itself within the tender's grace period
    /// (`--stop-grace`, 5 s by default), e.g. after finishing the requests
    /// in flight; one that never asks is ended by the runtime with status 0
    /// once its queued network work has settled. See
    /// [`Spawner::stopping`].
    pub fn stopping(&self) -> crate::executor::Stopping {
        self.spawner.stopping()
    }

    /// Starts a task; shorthand for `env.spawner().spawn(future)`.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        self.spawner.spawn(future)
    }
}

/// Why the boot info's command line could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgsError {
    /// Fewer NUL-terminated strings than the announced count.
    Truncated {
        /// Strings announced.
        expected: u32,
        /// Strings found.
        found: u32,
    },
    /// An argument is not UTF-8.
    NotUtf8 {
        /// Index of the argument.
        index: u32,
    },
    /// A hypervisor's command line (PVH) is not UTF-8.
    LineNotUtf8,
    /// A hypervisor's command line has a quote that is never closed.
    UnclosedQuote,
}

impl core::fmt::Display for ArgsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ArgsError::Truncated { expected, found } => {
                write!(f, "command line holds {found} arguments, {expected} announced")
            }
            ArgsError::NotUtf8 { index } => write!(f, "argument {index} is not UTF-8"),
            ArgsError::LineNotUtf8 => write!(f, "the command line is not UTF-8"),
            ArgsError::UnclosedQuote => write!(f, "the command line has a quote that is never closed"),
        }
    }
}

/// Decodes `argc` NUL-terminated UTF-8 strings from `bytes`.
/// Splits the command line a hypervisor passes through the PVH start info
/// (QEMU's `-append`) into arguments, with a POSIX shell's quoting rules
/// (`'a b'`, `"a b"`, `a\ b`). The `virtio_mmio.device=` entries QEMU adds
/// for its devices are not the service's and are left out.
pub fn split_command_line(line: &[u8]) -> Result<Vec<String>, ArgsError> {
    let line = core::str::from_utf8(line).map_err(|_| ArgsError::LineNotUtf8)?;
    let words = shlex::split(line).ok_or(ArgsError::UnclosedQuote)?;
    Ok(words.into_iter().filter(|w| !w.starts_with("virtio_mmio.device=")).collect())
}

/// Decodes the tender's command line: `argc` NUL-terminated strings.
pub fn parse_args(bytes: &[u8], argc: u32) -> Result<Vec<String>, ArgsError> {
    let mut args = Vec::with_capacity(argc as usize);
    let mut rest = bytes;
    for index in 0..argc {
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return Err(ArgsError::Truncated { expected: argc, found: index });
        };
        let s = core::str::from_utf8(&rest[..end]).map_err(|_| ArgsError::NotUtf8 { index })?;
        args.push(String::from(s));
        rest = &rest[end + 1..];
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_a_hypervisor_command_line_like_a_shell() {
        let args = split_command_line(b" exit  7 'a b' \"c d\" e\\ f virtio_mmio.device=512@0xfeb00e00:12").unwrap();
        assert_eq!(args, ["exit", "7", "a b", "c d", "e f"]);
        assert_eq!(split_command_line(b"").unwrap(), Vec::<String>::new());
        assert_eq!(split_command_line(b"a 'b"), Err(ArgsError::UnclosedQuote));
        assert_eq!(split_command_line(b"a \xff"), Err(ArgsError::LineNotUtf8));
    }

    #[test]
    fn parses_nul_separated_arguments() {
        let args = parse_args(b"a b\0\0c\0", 3).unwrap();
        assert_eq!(args, ["a b", "", "c"]);
        assert_eq!(parse_args(b"", 0).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn rejects_truncated_and_non_utf8() {
        assert_eq!(parse_args(b"a\0b", 2), Err(ArgsError::Truncated { expected: 2, found: 1 }));
        assert_eq!(parse_args(b"\xff\0", 1), Err(ArgsError::NotUtf8 { index: 0 }));
    }
}
