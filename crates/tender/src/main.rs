//! `skiff-tender IMAGE [-- ARGS...]`: boots a Skiff image under KVM.
//!
//! Exits with the guest's status; see `skiff_abi::exit` for the statuses
//! the tender itself uses (101 panic, 102 CPU exception, 103 out of
//! memory, 104 abort, 110 bad hypercall, 111 timeout, 112 VM failure,
//! 125 the guest could not be started, 2 bad command line).

use clap::Parser;
use skiff_tender::options::RunOptions;
use std::path::PathBuf;
use std::process::ExitCode;

/// Boots a Skiff unikernel image under KVM and serves its hypercalls.
#[derive(Parser, Debug)]
#[command(name = "skiff-tender", version, about, after_help = "Arguments after `--` are passed to the guest.")]
struct Cli {
    /// The image to boot (built by `skiff build`).
    image: PathBuf,
    #[command(flatten)]
    options: RunOptions,
    /// Arguments for the guest.
    #[arg(last = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.options.config(cli.image, cli.args);
    let mut stdout = std::io::stdout().lock();
    match skiff_tender::run(&config, &mut stdout) {
        Ok(report) => {
            if let Some(message) = report.outcome.message() {
                eprintln!("skiff-tender: {message}");
            }
            if cli.options.stats {
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
