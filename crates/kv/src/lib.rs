//! A read-only key-value store that is built from a directory when a service
//! is compiled and baked into its image: the files of a static website,
//! served by an HTTP server without any file system (Skiff's counterpart of
//! MirageOS's `crunch`).
//!
//! The crate has two halves that meet on one byte format ([`format`]):
//!
//! - the **reader**, always compiled: [`Store`] checks a blob once
//!   ([`Store::new`]) and then answers [`Store::get`] (binary search over the
//!   sorted paths), [`Store::resolve`] (URL paths, directory indexes and
//!   redirects) and [`Store::iter`]. It is `#![no_std]`, needs neither `std`
//!   nor `alloc`, never copies a body, and reads the blob byte-wise, so the
//!   blob can come straight from `include_bytes!`. A corrupt blob is an
//!   error ([`KvError`]), never a panic;
//! - the **builder**, behind the cargo feature `build` (std, `flate2`):
//!   `build::bake` walks a directory, guesses each file's content type,
//!   precompresses what compresses, derives ETags from a hash of the
//!   content, and writes the blob; `build::bake_for_build_script` does
//!   all of that from a service's `build.rs`.
//!
//! # Using it in a service
//!
//! The builder runs in the build script, the reader in the guest, so the
//! service depends on the crate twice: as a build-dependency with the
//! `build` feature and as a normal dependency without it. Build-dependency
//! features are never unified with the guest's (resolver 2 and later), so no
//! `std` reaches the image.
//!
//! ```toml
//! [dependencies]
//! skiff-kv = { path = "../skiff/crates/kv" }
//!
//! [build-dependencies]
//! skiff-kv = { path = "../skiff/crates/kv", features = ["build"] }
//! ```
//!
//! `build.rs` bakes the crate's `site/` directory into `$OUT_DIR/site.kv`
//! (and tells cargo to run again when a file in it changes; set
//! `SKIFF_KV_VERBOSE=1` to see a one-line summary):
//!
//! ```no_run
//! # #[cfg(feature = "build")]
//! fn main() -> Result<(), skiff_kv::build::BuildError> {
//!     skiff_kv::build::bake_for_build_script("site", "site.kv")?;
//!     Ok(())
//! }
//! # #[cfg(not(feature = "build"))]
//! # fn main() {}
//! ```
//!
//! The service (through `skiff::kv`, the `kv` feature of `skiff`) opens the
//! baked blob with [`include_store!`] and serves from it:
//!
//! ```ignore
//! use skiff::kv::{Lookup, Store};
//!
//! let site: Store<'static> = skiff::kv::include_store!("site.kv")?;
//! // The request target's path, percent-decoded, query removed.
//! let (path, accepts_gzip) = ("/index.html", true);
//! match site.resolve(path) {
//!     Lookup::Found(entry) => {
//!         let rep = entry.representation(accepts_gzip);
//!         // 200 with Content-Type: entry.content_type, ETag: rep.etag,
//!         // Last-Modified from entry.modified, Vary: Accept-Encoding, and
//!         // Content-Encoding: gzip when rep.gzip; body rep.body.
//!     }
//!     Lookup::RedirectToDir => { /* 301 to `path` + "/" */ }
//!     Lookup::NotFound => { /* 404 */ }
//! }
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "build")]
extern crate std;

#[cfg(feature = "build")]
pub mod build;
pub mod format;
mod store;

pub use store::{Entry, Field, Iter, KvError, Lookup, Representation, Store};

/// Opens a store that the build script baked into `$OUT_DIR/<name>`
/// (see `build::bake_for_build_script`), in the crate that invokes the
/// macro.
///
/// Expands to `Store::new(include_bytes!(...))`, so it evaluates to a
/// `Result<Store<'static>, KvError>`: the blob is embedded in the image and
/// checked when the expression runs.
#[macro_export]
macro_rules! include_store {
    ($name:literal) => {
        $crate::Store::new(::core::include_bytes!(::core::concat!(::core::env!("OUT_DIR"), "/", $name)))
    };
}
