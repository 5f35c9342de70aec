//! `skiff new NAME`: a service crate that builds and runs as it is.

use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct NewArgs {
    /// The service's name (a Rust package name: letters, digits, '-', '_').
    name: String,
    /// Where to create it (default: ./NAME).
    #[arg(long)]
    path: Option<PathBuf>,
    /// The `skiff` crate to depend on (default: the one this `skiff` was
    /// built from).
    #[arg(long)]
    skiff_path: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum NewError {
    #[error("{0:?} is not a valid service name: use ASCII letters, digits, '-' and '_', starting with a letter")]
    BadName(String),
    #[error("{0} already exists; choose another name or --path")]
    Exists(PathBuf),
    #[error("cannot find the skiff crate at {0}; pass --skiff-path to the crates/skiff directory of Skiff")]
    NoSkiff(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 64
}

fn default_skiff_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("skiff")
}

fn cargo_toml(name: &str, skiff: &Path) -> String {
    let skiff = skiff.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
skiff = {{ path = "{skiff}" }}

# A service is built by `skiff build`, which adds the guest flags.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"

[profile.dev]
panic = "abort"

# A service is its own workspace.
[workspace]
"#
    )
}

fn main_rs(name: &str) -> String {
    format!(
        r#"//! {name}: a Skiff service.
//!
//! Build it with `skiff build`, run it with `skiff run -- ARGS`.
#![no_std]
#![no_main]

use skiff::prelude::*;
use skiff::time::sleep;

#[skiff::main]
async fn main(env: skiff::Env) -> Result<(), String> {{
    info!("{name} is up; arguments: {{:?}}", env.args());
    let started = Instant::now();
    sleep(Duration::from_millis(1)).await;
    info!("slept {{}} us; bye", started.elapsed().as_micros());
    Ok(())
}}
"#
    )
}

fn write(path: &Path, contents: &str) -> Result<(), NewError> {
    std::fs::write(path, contents).map_err(|source| NewError::Write { path: path.to_owned(), source })
}

pub fn create(a: &NewArgs) -> Result<(), NewError> {
    if !valid_name(&a.name) {
        return Err(NewError::BadName(a.name.clone()));
    }
    let dir = a.path.clone().unwrap_or_else(|| PathBuf::from(&a.name));
    if dir.exists() {
        return Err(NewError::Exists(dir));
    }
    let skiff = a.skiff_path.clone().unwrap_or_else(default_skiff_path);
    if !skiff.join("Cargo.toml").is_file() {
        return Err(NewError::NoSkiff(skiff));
    }
    let skiff = skiff.canonicalize().map_err(|source| NewError::Write { path: skiff.clone(), source })?;
    let src = dir.join("src");
    std::fs::create_dir_all(&src).map_err(|source| NewError::Write { path: src.clone(), source })?;
    write(&dir.join("Cargo.toml"), &cargo_toml(&a.name, &skiff))?;
    write(&src.join("main.rs"), &main_rs(&a.name))?;
    write(&dir.join(".gitignore"), "/target\n")?;
    println!("created service `{}` in {}", a.name, dir.display());
    println!("  build it:  skiff build {}", dir.display());
    println!("  run it:    skiff run {} -- hello", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_cargo_rules() {
        assert!(valid_name("echo"));
        assert!(valid_name("my-service_2"));
        assert!(!valid_name("2fast"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("../x"));
    }

    #[test]
    fn the_manifest_points_at_skiff_and_aborts_on_panic() {
        let t = cargo_toml("svc", Path::new("/opt/skiff/crates/skiff"));
        assert!(t.contains("name = \"svc\""));
        assert!(t.contains("skiff = { path = \"/opt/skiff/crates/skiff\" }"));
        assert!(t.contains("panic = \"abort\""));
        assert!(t.contains("[workspace]"));
        assert!(main_rs("svc").contains("#[skiff::main]"));
    }
}
