//! Host test support for Skiff's async protocol crates (TLS, HTTP).
//!
//! - [`pipe`]: two connected ends of an in-memory byte stream with a
//!   bounded buffer each way, implementing the `embedded-io-async` traits
//!   that Skiff's TCP streams implement; dropping an end closes both
//!   directions, [`End::shutdown_write`] only its sending one.
//! - [`run`]: runs a future on Skiff's own executor whose idle step jumps
//!   the manual clock to the next timer, so timeouts happen at once in
//!   virtual time. Skiff's timers only work on Skiff's executor.
#![forbid(unsafe_code)]

use embedded_io_async::{ErrorKind, ErrorType, Read, Write};
use skiff_rt::Spawner;
use skiff_rt::executor::{Executor, Platform};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

/// Bytes buffered in each direction before a writer waits.
pub const PIPE_BUFFER: usize = 64 * 1024;

/// One direction of a pipe.
#[derive(Default)]
struct Half {
    bytes: VecDeque<u8>,
    closed: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

/// One end of an in-memory byte pipe.
pub struct End {
    rx: Rc<RefCell<Half>>,
    tx: Rc<RefCell<Half>>,
}

/// Two connected ends.
pub fn pipe() -> (End, End) {
    let a = Rc::new(RefCell::new(Half::default()));
    let b = Rc::new(RefCell::new(Half::default()));
    (End { rx: a.clone(), tx: b.clone() }, End { rx: b, tx: a })
}

fn close(half: &RefCell<Half>) {
    let mut h = half.borrow_mut();
    h.closed = true;
    if let Some(w) = h.reader.take() {
        w.wake();
    }
    if let Some(w) = h.writer.take() {
        w.wake();
    }
}

impl End {
    /// Closes the sending direction only (a TCP half-close): the other end
    /// reads the end of the stream, and can still write back.
    pub fn shutdown_write(&self) {
        close(&self.tx);
    }
}

impl Drop for End {
    fn drop(&mut self) {
        close(&self.tx);
        close(&self.rx);
    }
}

impl ErrorType for End {
    type Error = ErrorKind;
}

impl Read for End {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        poll_fn(|cx| {
            let mut h = self.rx.borrow_mut();
            if !h.bytes.is_empty() {
                let n = buf.len().min(h.bytes.len());
                for (d, s) in buf.iter_mut().zip(h.bytes.drain(..n)) {
                    *d = s;
                }
                if let Some(w) = h.writer.take() {
                    w.wake();
                }
                return Poll::Ready(Ok(n));
            }
            if h.closed {
                return Poll::Ready(Ok(0));
            }
            h.reader = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl Write for End {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        poll_fn(|cx| {
            let mut h = self.tx.borrow_mut();
            if h.closed {
                return Poll::Ready(Err(ErrorKind::BrokenPipe));
            }
            let room = PIPE_BUFFER - h.bytes.len();
            if room == 0 {
                h.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = room.min(buf.len());
            h.bytes.extend(&buf[..n]);
            if let Some(w) = h.reader.take() {
                w.wake();
            }
            Poll::Ready(Ok(n))
        })
        .await
    }
}

/// The executor's platform in tests: idle time passes at once on the
/// manual clock.
pub struct ManualClock;

impl Platform for ManualClock {
    fn poll(&mut self, timeout: Option<Duration>, _interest: u64) -> u64 {
        if let Some(t) = timeout {
            skiff_rt::time::advance_manual_clock(t);
        }
        0
    }
    fn has_devices(&self) -> bool {
        false
    }
}

/// Runs `f` (given a spawner for more tasks) on Skiff's executor with the
/// manual clock, and returns its value.
///
/// # Panics
/// If the executor stops without finishing `f` (every task waits and no
/// timer is set: a deadlock in the test).
pub fn run<T: 'static>(f: impl AsyncFnOnce(Spawner) -> T + 'static) -> T {
    let mut ex = Executor::new();
    let spawner = ex.spawner();
    ex.run(async move { f(spawner).await }, &mut ManualClock).expect("the executor finished")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_flow_both_ways_and_ends_close() {
        let got = run(async |spawner: Spawner| {
            let (mut a, mut b) = pipe();
            let echo = spawner.spawn(async move {
                let mut buf = [0u8; 100];
                let mut all = Vec::new();
                loop {
                    let n = b.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    all.extend_from_slice(&buf[..n]);
                    b.write_all(&buf[..n]).await.unwrap();
                }
                all
            });
            let data = vec![7u8; 3 * PIPE_BUFFER];
            let mut back = Vec::new();
            for chunk in data.chunks(1000) {
                a.write_all(chunk).await.unwrap();
                let want = back.len() + chunk.len();
                let mut buf = [0u8; 1000];
                while back.len() < want {
                    let n = a.read(&mut buf).await.unwrap();
                    back.extend_from_slice(&buf[..n]);
                }
            }
            a.shutdown_write();
            let sent = echo.await;
            (sent.len(), back.len())
        });
        assert_eq!(got, (3 * PIPE_BUFFER, 3 * PIPE_BUFFER));
    }
}
