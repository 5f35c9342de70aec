//! Building Skiff guests: a service crate in, a checked unikernel image out.
//!
//! The toolchain has only the `x86_64-unknown-linux-gnu` target; its
//! precompiled `core` and `alloc` work freestanding. [`build`] runs cargo
//! with an explicit `--target`, so the guest flags below reach only guest
//! code and never build scripts or proc macros, and with its own target
//! directory, so host builds keep their cache:
//!
//! - `--cfg skiff_guest`: turns on the guest-only parts of `skiff-rt`;
//! - `--cfg getrandom_backend="custom"`: getrandom 0.3 takes its bytes from
//!   `skiff_rt::random`, and `--config patch.crates-io.getrandom...` swaps
//!   getrandom 0.2 for a crate that forwards to it ([`getrandom_patch`]);
//! - `-C force-frame-pointers=yes`, for `skiff run --profile`;
//! - `-C relocation-model=static`, and link arguments `-nostartfiles
//!   -nostdlib -static -no-pie -T skiff.ld` (the linker script and empty C
//!   library stand-ins come from `skiff-rt`'s build script);
//! - `panic = "abort"` for every profile.
//!
//! Then every image is checked ([`check`]): the tender's image reader
//! accepts it, and it has no system call instruction, no undefined symbol
//! and no SIMD in the supervisor.
#![forbid(unsafe_code)]

pub mod check;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use check::{CheckError, CheckReport, check_image};

/// The only target guests are built for.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The flags a guest is compiled and linked with.
pub fn guest_rustflags() -> Vec<String> {
    let mut flags: Vec<String> = vec![
        "--cfg".into(),
        "skiff_guest".into(),
        "--cfg".into(),
        "getrandom_backend=\"custom\"".into(),
        "-C".into(),
        "relocation-model=static".into(),
        // Frame pointers in every function, so `--profile` can walk the
        // guest's call chain (see the README's "Profiling a service" for
        // what they cost).
        "-C".into(),
        "force-frame-pointers=yes".into(),
    ];
    for link_arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Tskiff.ld",
        "-Wl,--build-id=none",
        "-Wl,-z,max-page-size=4096",
        "-Wl,--orphan-handling=error",
    ] {
        flags.push("-C".into());
        flags.push(format!("link-arg={link_arg}"));
    }
    flags
}

/// The cargo `--config` value that replaces getrandom 0.2 with Skiff's
/// forwarding crate (`crates/getrandom02`): on the Linux target the real one
/// reaches the kernel through libc.
pub fn getrandom_patch() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../getrandom02");
    let dir = dir.canonicalize().unwrap_or(dir);
    // TOML basic string: escape backslashes and quotes.
    let path = dir.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
    format!("patch.crates-io.getrandom.path=\"{path}\"")
}

/// Debug or release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Profile {
    /// Optimised (the default).
    #[default]
    Release,
    /// Unoptimised, faster to build.
    Debug,
}

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The service crate's directory (with its `Cargo.toml`).
    pub crate_dir: PathBuf,
    /// The cargo target directory; default: cargo's own choice.
    pub target_dir: Option<PathBuf>,
    /// The profile.
    pub profile: Profile,
    /// The binary to build, when the crate has several.
    pub bin: Option<String>,
    /// Do not echo cargo's progress.
    pub quiet: bool,
}

impl BuildOptions {
    /// Release build of the crate in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions { crate_dir: dir.into(), target_dir: None, profile: Profile::Release, bin: None, quiet: false }
    }
}

/// A built and checked image.
#[derive(Clone, Debug)]
pub struct Built {
    /// Where the image is.
    pub image: PathBuf,
    /// What the checks saw.
    pub report: CheckReport,
}

/// The build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No `Cargo.toml` where the crate should be.
    #[error("{0} has no Cargo.toml: give the directory of a service crate (`skiff new NAME` makes one)")]
    NoManifest(PathBuf),
    /// Cargo could not be started.
    #[error("cannot run cargo: {0}")]
    Cargo(std::io::Error),
    /// Cargo failed.
    #[error("cargo build failed{hint}")]
    Compile {
        /// A suggestion drawn from cargo's output.
        hint: String,
    },
    /// Cargo built no binary.
    #[error("cargo built no binary for {0}: a service is a binary crate (src/main.rs)")]
    NoBinary(PathBuf),
    /// Cargo built several binaries.
    #[error("{0} has several binaries ({1}); choose one with --bin")]
    SeveralBinaries(PathBuf, String),
    /// The image failed its checks.
    #[error("{path}: {source}")]
    Check {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        source: CheckError,
    },
}

fn encoded_rustflags() -> String {
    // Keep flags the user set, then add ours.
    let mut flags: Vec<String> = match std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        Ok(s) if !s.is_empty() => s.split('\x1f').map(str::to_string).collect(),
        _ => std::env::var("RUSTFLAGS").map(|s| s.split_whitespace().map(str::to_string).collect()).unwrap_or_default(),
    };
    flags.extend(guest_rustflags());
    flags.join("\x1f")
}

/// Hints for common failures, from the tail of cargo's output.
fn hint_for(output: &str) -> String {
    if output.contains("__skiff_service_main") {
        return ": the service has no `#[skiff::main]` function".into();
    }
    if output.contains("undefined symbol") {
        return ": a dependency needs a C library or OS function a guest does not have; check that \
                every dependency is used without its `std` feature"
            .into();
    }
    if output.contains("can't find crate for `std`") || output.contains("duplicate lang item") {
        return ": a dependency needs `std`; turn off its default features (a guest is `#![no_std]`)".into();
    }
    String::new()
}

/// Builds the guest crate and checks the image.
pub fn build(opts: &BuildOptions) -> Result<Built, BuildError> {
    let manifest = opts.crate_dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(BuildError::NoManifest(opts.crate_dir.clone()));
    }
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["--target", GUEST_TARGET, "--message-format=json-render-diagnostics"])
        .args(["--config", "profile.release.panic=\"abort\"", "--config", "profile.dev.panic=\"abort\""])
        .arg("--config")
        .arg(getrandom_patch())
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", encoded_rustflags())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if opts.profile == Profile::Release {
        cmd.arg("--release");
    }
    if let Some(bin) = &opts.bin {
        cmd.args(["--bin", bin]);
    }
    if let Some(dir) = &opts.target_dir {
        cmd.arg("--target-dir").arg(dir);
    }
    if opts.quiet {
        cmd.arg("--quiet");
    }
    let mut child = cmd.spawn().map_err(BuildError::Cargo)?;

    // Echo cargo's progress as it comes, keeping the tail for hints.
    let stderr = child.stderr.take().expect("piped");
    let quiet = opts.quiet;
    let echo = std::thread::spawn(move || {
        let mut tail = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !quiet || line.contains("error") {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            tail.push_str(&line);
            tail.push('\n');
            if tail.len() > 64 * 1024 {
                tail.drain(..tail.len() - 32 * 1024);
            }
        }
        tail
    });

    let mut executables = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines().map_while(Result::ok) {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_bin = msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|v| v == "bin"));
        if let (true, Some(exe)) = (is_bin, msg["executable"].as_str()) {
            executables.push(PathBuf::from(exe));
        }
    }
    let status = child.wait().map_err(BuildError::Cargo)?;
    let tail = echo.join().unwrap_or_default();
    if !status.success() {
        return Err(BuildError::Compile { hint: hint_for(&tail) });
    }
    let image = match executables.as_slice() {
        [one] => one.clone(),
        [] => return Err(BuildError::NoBinary(opts.crate_dir.clone())),
        many => {
            let names: Vec<String> =
                many.iter().filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
            return Err(BuildError::SeveralBinaries(opts.crate_dir.clone(), names.join(", ")));
        }
    };
    let report = check_image(&image).map_err(|source| BuildError::Check { path: image.clone(), source })?;
    Ok(Built { image, report })
}

/// A one-line summary of a built image, for progress output.
pub fn summary(built: &Built) -> String {
    format!(
        "{}: {:.1} KiB ({:.1} KiB loadable), {} instructions checked: no system calls, no undefined \
         symbols, no SIMD in the supervisor",
        built.image.display(),
        built.report.file_size as f64 / 1024.0,
        built.report.loadable_bytes as f64 / 1024.0,
        built.report.instructions
    )
}

/// The guest crate directory that contains `path` (itself or an ancestor
/// with a `Cargo.toml`).
pub fn find_crate_dir(path: &Path) -> Option<PathBuf> {
    path.ancestors().find(|p| p.join("Cargo.toml").is_file()).map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_include_the_guest_cfg_and_linker_script() {
        let f = guest_rustflags();
        assert!(f.windows(2).any(|w| w[0] == "--cfg" && w[1] == "skiff_guest"));
        assert!(f.contains(&"link-arg=-Tskiff.ld".to_string()));
        assert!(f.contains(&"relocation-model=static".to_string()));
    }

    #[test]
    fn hints_name_the_likely_cause() {
        assert!(hint_for("undefined symbol: __skiff_service_main").contains("#[skiff::main]"));
        assert!(hint_for("rust-lld: error: undefined symbol: pthread_create").contains("C library"));
        assert_eq!(hint_for("something else"), "");
    }
}
