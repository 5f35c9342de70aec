//! What a service's `main` may return, and the exit status it becomes.

use alloc::boxed::Box;
use core::future::Future;
use core::pin::Pin;
use skiff_abi::exit;

/// The future a service's `main` becomes (built by `#[skiff::main]`).
pub type MainFuture = Pin<Box<dyn Future<Output = ExitStatus>>>;

/// Wraps a service's `main` future into the runtime's [`MainFuture`].
pub fn boxed_main<R: MainResult>(main: impl Future<Output = R> + 'static) -> MainFuture {
    Box::pin(async move { main.await.into_exit_status() })
}

/// An exit status chosen by the service: `0..=99` (higher values are the
/// runtime's and the tender's own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus(u8);

impl ExitStatus {
    /// Success.
    pub const SUCCESS: ExitStatus = ExitStatus(exit::SUCCESS);
    /// Generic failure.
    pub const FAILURE: ExitStatus = ExitStatus(exit::FAILURE);

    /// A status, or `None` above 99.
    pub const fn new(code: u8) -> Option<ExitStatus> {
        if code <= exit::SERVICE_MAX { Some(ExitStatus(code)) } else { None }
    }

    /// The numeric status.
    pub const fn code(self) -> u8 {
        self.0
    }
}

/// Types a service's `main` may return.
pub trait MainResult {
    /// The exit status; reports an error on the console first.
    fn into_exit_status(self) -> ExitStatus;
}

impl MainResult for () {
    fn into_exit_status(self) -> ExitStatus {
        ExitStatus::SUCCESS
    }
}

impl MainResult for ExitStatus {
    fn into_exit_status(self) -> ExitStatus {
        self
    }
}

impl<E: core::fmt::Display> MainResult for Result<(), E> {
    fn into_exit_status(self) -> ExitStatus {
        match self {
            Ok(()) => ExitStatus::SUCCESS,
            Err(e) => {
                log::error!("main failed: {e}");
                ExitStatus::FAILURE
            }
        }
    }
}

impl<E: core::fmt::Display> MainResult for Result<ExitStatus, E> {
    fn into_exit_status(self) -> ExitStatus {
        match self {
            Ok(s) => s,
            Err(e) => {
                log::error!("main failed: {e}");
                ExitStatus::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_map_to_statuses() {
        assert_eq!(().into_exit_status(), ExitStatus::SUCCESS);
        assert_eq!(Err::<(), _>("boom").into_exit_status().code(), 1);
        assert_eq!(Ok::<_, &str>(ExitStatus::new(7).unwrap()).into_exit_status().code(), 7);
        assert_eq!(ExitStatus::new(100), None);
    }
}
