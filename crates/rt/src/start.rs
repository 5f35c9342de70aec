//! Boot, ring-3 side: from the supervisor's `iretq` to the service's `main`.
//!
//! The supervisor enters [`skiff_rt_user_main`] on the ring-3 stack with
//! the boot info's address. This reads the TSC first (the boot instant),
//! checks the boot info, installs the clock calibration, the heap and the
//! logger, decodes the command line, and runs the service's `main` on the
//! executor. `main`'s result becomes the guest's exit status.

use crate::arch::cpu::rdtsc;
use crate::console::{Console, ConsoleRing};
use crate::env::{Env, parse_args};
use crate::executor::{Executor, Platform};
use crate::logger::{LOGGER, level_filter};
use crate::main_result::MainFuture;
use crate::time::{Calibration, TscScale};
use crate::{heap, hvt};
use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use core::ptr::NonNull;
use skiff_abi::{
    ABI_VERSION, AbortReason, BOOT_INFO_MAGIC, BootInfo, SHARED_TSC_MAIN, SHARED_TSC_RING3_ENTRY, SharedArea,
};

unsafe extern "Rust" {
    /// Defined by the `#[skiff::main]` attribute in the service crate. A
    /// link error naming this symbol means the service has no
    /// `#[skiff::main]` function.
    fn __skiff_service_main(env: Env) -> MainFuture;
}

fn fail(message: &str) -> ! {
    hvt::abort(AbortReason::Other, message)
}

fn record_tsc(shared: NonNull<SharedArea>, offset: usize, tsc: u64) {
    // SAFETY: `offset` is one of the 8-byte-aligned timestamp fields of the
    // shared area, which the tender mapped writable for ring 3; the tender
    // reads it only after the guest exits.
    unsafe { shared.as_ptr().cast::<u8>().add(offset).cast::<u64>().write_volatile(tsc) }
}

/// The first Rust code of a guest, called from `skiff_user_entry` in
/// ring 3.
#[unsafe(no_mangle)]
extern "C" fn skiff_rt_user_main(boot: *const BootInfo) -> ! {
    let tsc_entry = rdtsc();
    if boot.is_null() || !boot.is_aligned() {
        fail("no boot info: this image runs under skiff-tender");
    }
    // SAFETY: the tender passes the address of a BootInfo in a read-only
    // page mapped for ring 3 (checked non-null and aligned above); the magic
    // check below rejects anything else before any field is trusted.
    let boot: &'static BootInfo = unsafe { &*boot };
    if boot.magic != BOOT_INFO_MAGIC {
        fail("boot info has the wrong magic: this image runs under skiff-tender");
    }
    if boot.abi_version != ABI_VERSION {
        fail("the tender speaks another ABI version than this image");
    }
    let Some(shared) = NonNull::new(boot.shared as *mut SharedArea) else {
        fail("boot info has no shared area");
    };
    record_tsc(shared, SHARED_TSC_RING3_ENTRY, tsc_entry);

    let Some(scale) = TscScale::new(boot.tsc_hz) else {
        fail("the tender passed no TSC frequency");
    };
    let tsc_at_wall = if boot.tsc_at_wall != 0 { boot.tsc_at_wall } else { tsc_entry };
    crate::time::install(&Calibration { tsc_at_boot: tsc_entry, scale, wall_nanos: boot.wall_nanos, tsc_at_wall });

    // SAFETY: the tender maps [heap_start, heap_end) writable for ring 3
    // and nothing else lives there.
    if !unsafe { heap::init(boot.heap_start as usize, boot.heap_end as usize) } {
        hvt::abort(AbortReason::OutOfMemory, "the heap is too small to start; give the guest more --mem");
    }

    // SAFETY: the shared area stays mapped for the guest's life; the tender
    // only writes `console_tail`; the logger is the only producer.
    LOGGER.install(Console::Ring(unsafe { ConsoleRing::new(shared, hvt::console_flush) }));
    // `set_logger` fails only if a logger is already set, which cannot
    // happen: this function runs once.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level_filter(boot.log_level));

    // SAFETY: the tender wrote `args_len` bytes of arguments at `args`, in
    // the same read-only boot page range.
    let arg_bytes = unsafe { core::slice::from_raw_parts(boot.args as *const u8, boot.args_len as usize) };
    let args = match parse_args(arg_bytes, boot.argc) {
        Ok(args) => args,
        Err(e) => fail(&format!("bad command line from the tender: {e}")),
    };

    let devices = Rc::new(hvt::Devices::from_boot(boot, boot.tsc_hz));
    let executor = Executor::new();
    let lender = devices.clone();
    let disks = devices.clone();
    let env = Env::new(args, executor.spawner())
        .with_net(Box::new(move |name| lender.take_net(name)))
        .with_block(Box::new(move |name| disks.take_block(name)));
    record_tsc(shared, SHARED_TSC_MAIN, rdtsc());
    match run_main(executor, env, &mut hvt::Hvt::new(devices, shared)) {
        Ok(status) => hvt::exit(status.code()),
        Err(e) => hvt::abort(AbortReason::Deadlock, &format!("{e}")),
    }
}

/// Runs the service's `main` with `env` on `executor`, idling on
/// `platform`, and lets queued work settle after it returns. The same for
/// every platform.
pub(crate) fn run_main(
    mut executor: Executor,
    env: Env,
    platform: &mut impl Platform,
) -> Result<crate::ExitStatus, crate::executor::RunError> {
    // SAFETY: defined by `#[skiff::main]` with exactly this signature.
    let main = unsafe { __skiff_service_main(env) };
    // When main returns, let queued work finish (data and closes still in
    // the network stack) before the guest ends.
    let spawner = executor.spawner();
    let main = async move {
        let status = spawner.until_unwatched_stop(main).await.unwrap_or_else(|| {
            log::info!("asked to stop: ending (the service does not wait for Env::stopping)");
            crate::ExitStatus::SUCCESS
        });
        spawner.settle(crate::executor::EXIT_SETTLE).await;
        status
    };
    executor.run(main, platform)
}
