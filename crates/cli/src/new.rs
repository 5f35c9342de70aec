//! `skiff new NAME [--template default|https]`: a service crate that
//! builds and runs as it is. The templates' sources are in
//! `crates/cli/templates/`: the default one is the README's first sample,
//! the `https` one its HTTPS API (the docs test checks both match).

use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct NewArgs {
    /// The service's name (a Rust package name: letters, digits, '-', '_').
    name: String,
    /// Where to create it (default: ./NAME).
    #[arg(long)]
    path: Option<PathBuf>,
    /// What the service does.
    #[arg(long, value_enum, default_value_t = Template::Default)]
    template: Template,
    /// The `skiff` crate to depend on (default: the one this `skiff` was
    /// built from).
    #[arg(long)]
    skiff_path: Option<PathBuf>,
}

/// The services `skiff new` can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Template {
    /// Greets its first argument and ticks three times (the README's first
    /// sample).
    Default,
    /// An HTTPS API (`GET /hello`, `POST /echo`) on port 443, with a
    /// self-signed certificate for localhost made by its build script.
    Https,
}

/// The default template's `src/main.rs`.
const DEFAULT_MAIN: &str = include_str!("../templates/default/main.rs");
/// The `https` template's `src/main.rs`.
const HTTPS_MAIN: &str = include_str!("../templates/https/main.rs");
/// The `https` template's `build.rs`.
const HTTPS_BUILD: &str = include_str!("../templates/https/build.rs");

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

/// The `https` template's build dependency: `build.rs` makes the
/// certificate.
const HTTPS_BUILD_DEPS: &str = r#"
# build.rs makes a self-signed certificate for localhost.
[build-dependencies]
rcgen = { version = "0.14", default-features = false, features = ["crypto", "ring", "pem"] }
"#;

/// The `https` template's profile: as `examples/static-website`'s.
const HTTPS_PROFILE: &str = r#"
# The TLS handshake code runs once per connection: optimise it for size, and
# keep speed for the record layer's crypto (ring) and the network path.
[profile.release.package.rustls]
opt-level = "s"
[profile.release.package.rustls-webpki]
opt-level = "s"
"#;

fn cargo_toml(name: &str, skiff: &Path, template: Template) -> String {
    let skiff = skiff.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
    let (features, build_deps, opt_level, profile) = match template {
        Template::Default => ("", "", "\"s\"", ""),
        Template::Https => (r#", features = ["net", "tls", "http"]"#, HTTPS_BUILD_DEPS, "3", HTTPS_PROFILE),
    };
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
skiff = {{ path = "{skiff}"{features} }}
{build_deps}
# A service is built by `skiff build`, which adds the guest flags.
[profile.release]
opt-level = {opt_level}
lto = true
codegen-units = 1
panic = "abort"

[profile.dev]
panic = "abort"
{profile}
# A service is its own workspace.
[workspace]
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
    write(&dir.join("Cargo.toml"), &cargo_toml(&a.name, &skiff, a.template))?;
    write(&dir.join(".gitignore"), "/target\n")?;
    let run = match a.template {
        Template::Default => {
            write(&src.join("main.rs"), DEFAULT_MAIN)?;
            "-- Ada"
        }
        Template::Https => {
            write(&src.join("main.rs"), HTTPS_MAIN)?;
            write(&dir.join("build.rs"), HTTPS_BUILD)?;
            "--publish 8443:443"
        }
    };
    println!("created service `{}` in {}", a.name, dir.display());
    println!("  build it:  skiff build {}", dir.display());
    println!("  run it:    skiff run {} {run}", dir.display());
    if a.template == Template::Https {
        println!("  try it:    curl -k https://localhost:8443/hello");
    }
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
        let t = cargo_toml("svc", Path::new("/opt/skiff/crates/skiff"), Template::Default);
        assert!(t.contains("name = \"svc\""));
        assert!(t.contains("skiff = { path = \"/opt/skiff/crates/skiff\" }"));
        assert!(t.contains("panic = \"abort\""));
        assert!(t.contains("[workspace]"));
        assert!(!t.contains("[build-dependencies]"));
        assert!(DEFAULT_MAIN.contains("#[skiff::main]"));
    }

    #[test]
    fn the_https_manifest_turns_on_tls_and_http_and_makes_a_certificate() {
        let t = cargo_toml("api", Path::new("/opt/skiff/crates/skiff"), Template::Https);
        assert!(
            t.contains(r#"skiff = { path = "/opt/skiff/crates/skiff", features = ["net", "tls", "http"] }"#),
            "{t}"
        );
        assert!(t.contains("[build-dependencies]\nrcgen"), "{t}");
        assert!(HTTPS_MAIN.contains("#[skiff::main(net = \"service\")]"));
        assert!(HTTPS_BUILD.contains("cert.pem") && HTTPS_MAIN.contains("cert.pem"));
    }
}
