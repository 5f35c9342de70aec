//! Skiff: write a network service as an ordinary Rust crate and run it as a
//! unikernel, a single small image that boots straight on a hypervisor.
//!
//! This facade is the only crate a service depends on. A service is a
//! `#![no_std]`, `#![no_main]` binary crate with one `async fn main` marked
//! [`main`]:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! use skiff::prelude::*;
//!
//! #[skiff::main]
//! async fn main(env: skiff::Env) {
//!     info!("hello from {:?}", env.args());
//!     skiff::time::sleep(Duration::from_millis(10)).await;
//! }
//! ```
//!
//! `skiff build` compiles it into an image and `skiff run` boots it under
//! the tender. With the `net` feature, [`net`] adds a network stack on the
//! NICs the image declares (`#[skiff::main(net = "service")]`). The runtime ([`skiff_rt`]) provides the heap (`alloc` works),
//! clocks ([`time`]), logging through the [`log`] facade, a cooperative
//! executor ([`task`]) and the panic handler.
#![cfg_attr(skiff_guest, no_std)]
#![forbid(unsafe_code)]

pub extern crate alloc;

pub use log;
pub use skiff_macros::main;
pub use skiff_rt::{DeviceError, Env, ExitStatus, MainResult, NetDevice};

/// The error type for a service's `main`: any error, boxed.
///
/// Every error type of Skiff's crates (`net::TcpError`, `net::ConfigError`,
/// [`DeviceError`], `tls::TlsError`, `kv::KvError`, ...) implements
/// [`core::error::Error`], and so does any error type made with `thiserror`;
/// `?` turns each into a `skiff::Error`, and a `String` or a `&str` too
/// (`return Err(format!("bad port {p}").into())`). When `main` returns an
/// `Err`, the runtime logs `main failed: ` and the error, and the guest
/// exits with status 1.
pub type Error = alloc::boxed::Box<dyn core::error::Error>;

/// The async byte-stream traits (`embedded-io-async`) that TCP and TLS
/// streams implement (feature `net`): `use skiff::io::Write as _` for
/// `write_all` on a TLS stream.
#[cfg(feature = "net")]
pub mod io {
    pub use embedded_io_async::{ErrorType, Read, Write};
}

/// Networking (feature `net`): the stack, TCP, UDP, DNS and DHCP.
#[cfg(feature = "net")]
pub use skiff_net as net;

/// TLS (feature `tls`): acceptors, connectors and streams over TCP.
#[cfg(feature = "tls")]
pub use skiff_tls as tls;

/// HTTP/1.1 (feature `http`): server, router, static files, client.
#[cfg(feature = "http")]
pub use skiff_http as http;

/// Files baked into the image (feature `kv`).
#[cfg(feature = "kv")]
pub use skiff_kv as kv;

/// An authoritative DNS server (feature `dns`): zones compiled at build
/// time, the sans-IO server and its UDP and TCP front ends
/// (`skiff::dns::serve`).
#[cfg(feature = "dns")]
pub use skiff_dns as dns;

/// Disks: the block devices the image declares (`#[skiff::main(block =
/// "disk")]`), attached by the tender (`--disk disk=FILE`).
///
/// [`block::Disk::take`] lends a disk as an async block device: read and
/// write many sectors, flush (durable when it returns), discard, its
/// capacity, sector size and whether it is read-only. With the `store`
/// feature it is a [`skiff_store::BlockDevice`], so a service opens a
/// crash-safe [`store::Store`] on it:
///
/// ```text
/// let disk = skiff::block::Disk::take(&env, "disk")?;
/// let store = skiff::store::Store::open(disk, Default::default()).await?;
/// ```
pub mod block {
    use alloc::boxed::Box;
    pub use skiff_rt::block::{BlockDevice, BlockError};

    /// A disk lent to the service.
    pub struct Disk {
        dev: Box<dyn BlockDevice>,
    }

    impl Disk {
        /// Takes the disk the image declared as `name`.
        pub fn take(env: &crate::Env, name: &str) -> Result<Disk, crate::DeviceError> {
            env.take_block(name).map(|dev| Disk { dev })
        }

        /// Bytes per sector: 512 or 4096.
        pub fn sector_size(&self) -> u32 {
            self.dev.sector_size()
        }

        /// Size in sectors.
        pub fn capacity(&self) -> u64 {
            self.dev.capacity()
        }

        /// Whether writes and discards are refused.
        pub fn read_only(&self) -> bool {
            self.dev.read_only()
        }

        /// Reads `buf.len() / sector_size` sectors from `sector` on.
        pub async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
            self.dev.read(sector, buf)
        }

        /// Reads many runs of sectors, each `(sector, buf)` as in
        /// [`read`](Self::read), queued together: one notification of the
        /// host per ring-full of requests instead of one per read. The
        /// first error, if any.
        pub async fn read_many(&self, reads: &mut [(u64, &mut [u8])]) -> Result<(), BlockError> {
            self.dev.read_many(reads)
        }

        /// Writes `buf.len() / sector_size` sectors from `sector` on;
        /// durable once a later [`flush`](Self::flush) returns.
        pub async fn write(&self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
            self.dev.write(sector, buf)
        }

        /// Makes every earlier write durable (the tender's `fdatasync`).
        pub async fn flush(&self) -> Result<(), BlockError> {
            self.dev.flush()
        }

        /// Tells the disk that `count` sectors from `sector` on are unused.
        pub async fn discard(&self, sector: u64, count: u64) -> Result<(), BlockError> {
            self.dev.discard(sector, count)
        }

        /// The driver underneath.
        pub fn device(&self) -> &dyn BlockDevice {
            &*self.dev
        }
    }

    #[cfg(feature = "store")]
    fn store_error(e: BlockError) -> skiff_store::BlockError {
        match e {
            BlockError::OutOfRange { start, end, capacity } => {
                skiff_store::BlockError::OutOfRange { start, end, capacity }
            }
            BlockError::Misaligned { len, sector_size } => skiff_store::BlockError::Misaligned { len, sector_size },
            BlockError::ReadOnly => skiff_store::BlockError::ReadOnly,
            BlockError::Io { errno } => skiff_store::BlockError::Io { errno },
            BlockError::Unsupported | BlockError::Gone => skiff_store::BlockError::Gone,
        }
    }

    #[cfg(feature = "store")]
    impl skiff_store::BlockDevice for Disk {
        fn sector_size(&self) -> u32 {
            self.dev.sector_size()
        }

        fn capacity(&self) -> u64 {
            self.dev.capacity()
        }

        fn read_only(&self) -> bool {
            self.dev.read_only()
        }

        async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), skiff_store::BlockError> {
            self.dev.read(sector, buf).map_err(store_error)
        }

        async fn read_many(&self, reads: &mut [(u64, &mut [u8])]) -> Result<(), skiff_store::BlockError> {
            self.dev.read_many(reads).map_err(store_error)
        }

        async fn write(&self, sector: u64, buf: &[u8]) -> Result<(), skiff_store::BlockError> {
            self.dev.write(sector, buf).map_err(store_error)
        }

        async fn flush(&self) -> Result<(), skiff_store::BlockError> {
            self.dev.flush().map_err(store_error)
        }

        async fn discard(&self, sector: u64, count: u64) -> Result<(), skiff_store::BlockError> {
            // A host that cannot punch holes loses nothing by keeping the
            // sectors: discard is advice.
            match self.dev.discard(sector, count) {
                Err(BlockError::Unsupported) => Ok(()),
                r => r.map_err(store_error),
            }
        }
    }
}

/// The crash-safe transactional key-value store (feature `store`), over a
/// [`block::Disk`].
#[cfg(feature = "store")]
pub use skiff_store as store;

/// Time: the monotonic clock, the wall clock, sleeping and timeouts.
pub mod time {
    pub use core::time::Duration;
    pub use skiff_rt::executor::{Elapsed, Sleep, Timeout, sleep, sleep_until, timeout};
    pub use skiff_rt::time::Instant;

    /// The wall clock, in nanoseconds since the UNIX epoch (UTC): the
    /// tender's clock at boot, advanced by the TSC.
    pub fn wall_clock_nanos() -> u64 {
        skiff_rt::time::wall_clock_nanos()
    }
}

/// The heap's size and use.
pub mod heap {
    /// Bytes of guest memory the heap was given at boot.
    pub fn size() -> usize {
        skiff_rt::heap_size()
    }
    /// Bytes allocated now.
    pub fn used() -> usize {
        skiff_rt::heap_used()
    }
    /// The most bytes allocated at once since boot.
    pub fn peak() -> usize {
        skiff_rt::heap_peak()
    }
}

/// Cryptographic randomness: the CPU's hardware source (RDSEED, or RDRAND)
/// seeding a ChaCha20 generator. There is no weaker fallback: on a CPU
/// without one, [`random::fill`] fails.
pub mod random {
    pub use skiff_rt::random::{HardwareSource, RandomError, fill, hardware_source, next_u64};
}

/// Tasks: spawning and yielding.
pub mod task {
    pub use skiff_rt::executor::{JoinHandle, Spawner, YieldNow, yield_now};
}

/// Ends the guest at once with `status` (`0..=99`); the tender exits with
/// it. Everything logged so far reaches the console.
///
/// # Panics
/// If `status` is above 99 (higher statuses belong to the runtime).
#[cfg(skiff_guest)]
pub fn exit(status: u8) -> ! {
    let Some(status) = ExitStatus::new(status) else {
        panic!("exit status {status} is reserved; services use 0..=99");
    };
    skiff_rt::exit(status.code())
}

/// What most services want in scope.
pub mod prelude {
    pub use crate::time::{Duration, Instant};
    pub use alloc::borrow::ToOwned;
    pub use alloc::boxed::Box;
    pub use alloc::format;
    pub use alloc::rc::Rc;
    pub use alloc::string::{String, ToString};
    pub use alloc::vec;
    pub use alloc::vec::Vec;
    pub use log::{debug, error, info, trace, warn};
}

#[doc(hidden)]
pub mod __private {
    pub use skiff_abi::DeviceKind;
    pub use skiff_abi::manifest::{FLAG_OUTBOUND, ManifestNote};
    /// A hypercall with any number and argument, made the way the runtime
    /// makes its own (an `out` under a VM, a call in process mode): for the
    /// tests of the tender's checks.
    #[cfg(skiff_guest)]
    pub use skiff_rt::arch::cpu::raw_hypercall;
    pub use skiff_rt::{MainFuture, boxed_main};
}
