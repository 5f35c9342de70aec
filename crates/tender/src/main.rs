//! `skiff-tender IMAGE [-- ARGS...]`: boots a Skiff image under KVM.
//!
//! Exits with the guest's status; see `skiff_abi::exit` for the statuses
//! the tender itself uses (101 panic, 102 CPU exception, 103 out of
//! memory, 104 abort, 110 bad hypercall, 111 timeout, 112 VM failure,
//! 125 the guest could not be started, 2 bad command line).

use clap::Parser;
use skiff_tender::Config;
use skiff_tender::options::{parse_duration, parse_level, parse_size};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Boots a Skiff unikernel image under KVM and serves its hypercalls.
#[derive(Parser, Debug)]
#[command(name = "skiff-tender", version, about, after_help = "Arguments after `--` are passed to the guest.")]
struct Cli {
    /// The image to boot (built by `skiff build`).
    image: PathBuf,
    /// Guest memory, e.g. 64M or 1G (a plain number means MiB).
    #[arg(long, value_parser = parse_size, default_value = "64M")]
    mem: u64,
    /// End the guest after this long, e.g. 500ms, 10s, 2m (exit status 111).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Print VM exits by kind and a boot-time breakdown on stderr at the end.
    #[arg(long)]
    stats: bool,
    /// The guest's console log level: off, error, warn, info, debug, trace.
    #[arg(long, value_parser = parse_level, default_value = "info")]
    log: u32,
    /// Arguments for the guest.
    #[arg(last = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = Config { image: cli.image, mem: cli.mem, timeout: cli.timeout, log_level: cli.log, args: cli.args };
    let mut stdout = std::io::stdout().lock();
    match skiff_tender::run(&config, &mut stdout) {
        Ok(report) => {
            if let Some(message) = report.outcome.message() {
                eprintln!("skiff-tender: {message}");
            }
            if cli.stats {
                eprintln!("{}", report.stats.report());
            }
            ExitCode::from(report.outcome.status())
        }
        Err(e) => {
            eprintln!("skiff-tender: {e}");
            ExitCode::from(skiff_abi::exit::TENDER_ERROR)
        }
    }
}
