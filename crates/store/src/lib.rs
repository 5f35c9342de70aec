//! A crash-safe, transactional key-value store over a block device, for
//! Skiff services that keep state (`skiff::store`), and the same code on
//! the host for `skiff disk`.
//!
//! - [`device`]: the [`BlockDevice`] trait the store runs over (sectors of
//!   512 or 4096 bytes, read, write, flush, discard; async), and
//!   [`MemDevice`]. [`FileDevice`] (feature `std`) is a host file.
//!   [`fault::FaultDevice`] injects torn and lost writes and bit flips.
//! - [`Store`]: keys and values as bytes, get, put, delete, prefix scans in
//!   key order, atomic multi-key [`WriteTx`] transactions, [`Snapshot`]s
//!   that readers keep while writers commit, group commit.
//! - [`check()`]: walks every page and reports each problem.
//!
//! How it stays correct: a copy-on-write B+tree whose pointers carry the
//! checksum of the page they point to, and two superblocks written in turn.
//! A commit writes its pages and its superblock and flushes once
//! ([`CommitMode::OneFlush`], the default); it stays *unconfirmed* until
//! the next commit's superblock or a confirmation ([`Store::sync`]) shows
//! its pages durable, and only an unconfirmed newest commit whose pages do
//! not all read back is set aside at open (a crash during its flush: never
//! acknowledged). Damage under a confirmed commit is damage.
//! [`CommitMode::TwoPhase`] flushes the pages before a confirmed
//! superblock, at two flushes a commit. Writers that commit while a flush
//! runs share the next one. `docs/storage.md` has the format, its
//! invariants and the argument.
//!
//! Everything is `async` over the device; with a device that completes at
//! once (the host ones here), [`block_on`] runs a future to its end.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod alloc_map;
mod cache;
pub mod check;
pub mod device;
pub mod fault;
#[cfg(feature = "std")]
pub mod file;
pub mod format;
mod store;

pub use check::{CheckReport, Problem, ProblemKind, check};
pub use device::{BlockDevice, BlockError, MemDevice};
#[cfg(feature = "std")]
pub use file::FileDevice;
pub use store::{CommitMode, Damage, Info, Options, Scan, Snapshot, Store, StoreError, WriteTx};

use core::future::Future;
use core::pin::pin;
use core::task::{Context, Poll, Waker};

/// Runs `f` to its end by polling it until it is ready: for futures over
/// devices that complete at once (memory, host files), as tools and tests
/// use them. Never use it on a device that completes later: it would spin.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
}
