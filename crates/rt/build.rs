//! Puts the guest linker script and empty stand-ins for the C libraries on
//! the linker's search path.
//!
//! rustc passes `-lc -lm -lrt -lpthread` when a dependency asks for them
//! (the `libc` crate does); the empty archives found first make sure no
//! glibc code can ever fill an undefined symbol in a guest: a missing
//! symbol is a link error instead.

use std::path::PathBuf;
use std::{env, fs};

const EMPTY_ARCHIVE: &[u8] = b"!<arch>\n";
const STAND_INS: &[&str] =
    &["libc.a", "libm.a", "librt.a", "libpthread.a", "libdl.a", "libutil.a", "libgcc_s.a", "libgcc.a", "libgcc_eh.a"];

fn main() {
    println!("cargo:rerun-if-env-changed=CARGO_CFG_SKIFF_GUEST");
    // Host builds (unit tests, clippy) link against the real C library.
    if env::var_os("CARGO_CFG_SKIFF_GUEST").is_none() {
        return;
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let script = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("link").join("skiff.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    fs::copy(&script, out.join("skiff.ld")).expect("copy the linker script to OUT_DIR");
    for name in STAND_INS {
        fs::write(out.join(name), EMPTY_ARCHIVE).expect("write an empty archive to OUT_DIR");
    }
    println!("cargo:rustc-link-search=native={}", out.display());
}
