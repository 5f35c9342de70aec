//! The `log` facade's backend: lines with the time since boot and the
//! level, written to the console ring.
//!
//! ```text
//! [    0.010291] INFO  hello: slept 10.04 ms
//! ```
//!
//! The `log` crate needs a `&'static` logger, so [`LOGGER`] is one of the
//! runtime's three statics. It holds the console ring once the boot path
//! has [`Logger::install`]ed it; before that, lines are dropped.

use crate::console::Console;
use crate::time::Instant;
use core::fmt::Write;
use spinning_top::Spinlock;

/// A logger writing to a [`Console`].
pub struct Logger {
    ring: Spinlock<Option<Console>>,
}

/// The logger the guest installs with `log::set_logger`.
pub static LOGGER: Logger = Logger::new();

impl Logger {
    /// A logger with no console yet.
    pub const fn new() -> Logger {
        Logger { ring: Spinlock::new(None) }
    }

    /// Gives the logger its console.
    pub fn install(&self, console: Console) {
        *self.ring.lock() = Some(console);
    }

    /// Writes raw bytes, ignoring levels (panic messages, fault notes).
    /// Re-entrant calls (a `Display` impl that logs while a line is being
    /// written) are dropped rather than deadlocking.
    pub fn write_raw(&self, bytes: &[u8]) {
        if let Some(mut guard) = self.ring.try_lock()
            && let Some(console) = guard.as_mut()
        {
            console.write(bytes);
        }
    }

    /// Asks the console consumer to drain now.
    pub fn flush_console(&self) {
        if let Some(mut guard) = self.ring.try_lock()
            && let Some(console) = guard.as_mut()
        {
            console.flush();
        }
    }
}

impl Default for Logger {
    fn default() -> Self {
        Logger::new()
    }
}

/// Writes one formatted log line.
pub fn format_line(
    out: &mut impl Write,
    at: Instant,
    level: log::Level,
    target: &str,
    args: core::fmt::Arguments<'_>,
) -> core::fmt::Result {
    let nanos = at.as_nanos();
    let secs = nanos / 1_000_000_000;
    let micros = (nanos % 1_000_000_000) / 1_000;
    writeln!(out, "[{secs:5}.{micros:06}] {level:<5} {target}: {args}")
}

/// Libraries that log at `warn` about what a remote peer did (rustls:
/// "illegal SNI extension", a client's unsupported extension) would let
/// any client fill the console; their warnings count as `debug` and show
/// with `--log debug`. What the service itself should know (a failed
/// handshake) it logs itself.
const PEER_CHATTER: &[&str] = &["rustls"];

/// The level a record is shown at.
fn effective_level(metadata: &log::Metadata<'_>) -> log::Level {
    let level = metadata.level();
    if level == log::Level::Warn && PEER_CHATTER.iter().any(|t| metadata.target().starts_with(t)) {
        return log::Level::Debug;
    }
    level
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        effective_level(metadata) <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if let Some(mut guard) = self.ring.try_lock()
            && let Some(console) = guard.as_mut()
        {
            let _ = format_line(console, Instant::now(), record.level(), record.target(), *record.args());
        }
    }

    fn flush(&self) {
        self.flush_console()
    }
}

/// Maps the boot info's numeric level (0 off .. 5 trace) to a filter.
pub fn level_filter(raw: u32) -> log::LevelFilter {
    match raw {
        0 => log::LevelFilter::Off,
        1 => log::LevelFilter::Error,
        2 => log::LevelFilter::Warn,
        3 => log::LevelFilter::Info,
        4 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::tests::{DRAINED, drain, new_area};
    use log::Log;
    use std::string::String;

    #[test]
    fn line_format_has_time_level_and_target() {
        let mut s = String::new();
        format_line(
            &mut s,
            Instant::from_nanos(12_345_678_901),
            log::Level::Info,
            "hello",
            format_args!("slept {} ms", 10),
        )
        .unwrap();
        assert_eq!(s, "[   12.345678] INFO  hello: slept 10 ms\n");
    }

    #[test]
    fn logger_writes_into_the_ring() {
        let area = new_area();
        let logger = Logger::new();
        // SAFETY: the area is leaked and used only by this thread.
        logger.install(Console::Ring(unsafe { crate::console::ConsoleRing::new(area, drain) }));
        log::set_max_level(log::LevelFilter::Info);
        logger.log(&log::Record::builder().level(log::Level::Warn).target("t").args(format_args!("careful")).build());
        logger.write_raw(b"raw\n");
        drain();
        let text = String::from_utf8(DRAINED.with(|d| d.borrow().clone())).unwrap();
        assert!(text.ends_with("WARN  t: careful\nraw\n"), "{text:?}");
    }

    #[test]
    fn peer_chatter_from_libraries_needs_debug() {
        let record = |target| log::Metadata::builder().level(log::Level::Warn).target(target).build();
        assert_eq!(effective_level(&record("rustls::msgs::handshake")), log::Level::Debug);
        assert_eq!(effective_level(&record("skiff_http::server")), log::Level::Warn);
        let error = log::Metadata::builder().level(log::Level::Error).target("rustls").build();
        assert_eq!(effective_level(&error), log::Level::Error);
    }

    #[test]
    fn level_filter_maps_all_values() {
        assert_eq!(level_filter(0), log::LevelFilter::Off);
        assert_eq!(level_filter(3), log::LevelFilter::Info);
        assert_eq!(level_filter(9), log::LevelFilter::Trace);
    }
}
