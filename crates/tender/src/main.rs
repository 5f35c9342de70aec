//! `skiff-tender IMAGE [-- ARGS...]`: boots a Skiff image under KVM.
//!
//! Exits with the guest's status; `skiff_abi::exit::TABLE` (printed by
//! `--help`) lists the statuses the runtime and the tender give, which
//! never meet the service's own range 0..=99.

#![forbid(unsafe_code)]

/// The static build's allocator (`scripts/build-tender` links against
/// musl). musl's own malloc maps and unmaps a small region for nearly
/// every allocation the set-up makes and frees: about 65 `mmap`/`munmap`
/// calls before the guest's first instruction, 0.15-0.2 ms of hello's
/// 2.2 ms start, where dlmalloc keeps what it maps. Dynamically linked
/// builds use glibc's malloc (see `sys::use_one_malloc_arena`).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

use clap::Parser;
use skiff_tender::options::RunOptions;
use std::path::PathBuf;
use std::process::ExitCode;

/// Boots a Skiff unikernel image under KVM and serves its hypercalls.
#[derive(Parser, Debug)]
#[command(name = "skiff-tender", version, about, after_help = skiff_tender::options::after_help())]
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
    // Before anything can start a thread (see the function).
    skiff_tender::sys::use_one_malloc_arena();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return skiff_tender::options::usage_error(&e),
    };
    let mut config = cli.options.config(cli.image, cli.args);
    let mut stdout = match skiff_tender::console::Stdout::new() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skiff-tender: cannot use standard output: {e}");
            return ExitCode::from(skiff_abi::exit::TENDER_ERROR);
        }
    };
    config.console_fd = Some(stdout.fd());
    match skiff_tender::run(&config, &mut stdout) {
        Ok(mut report) => {
            report.leave_to_exit();
            if let Some(message) = report.outcome.message() {
                eprintln!("skiff-tender: {message}");
            }
            if cli.options.stats {
                eprintln!("{}", report.stats.report());
            }
            if let Some(line) = skiff_tender::profile::summary(&report) {
                eprintln!("skiff-tender: {line}");
            }
            ExitCode::from(report.outcome.status())
        }
        Err(e) => {
            eprintln!("skiff-tender: {e}");
            ExitCode::from(skiff_abi::exit::TENDER_ERROR)
        }
    }
}
