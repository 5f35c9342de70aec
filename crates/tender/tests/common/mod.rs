//! What the boot test binaries share: the repository root, and guest
//! images built once per binary into the shared guest target directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The repository root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// The image of the guest crate at `dir` (relative to the repository),
/// built (release, checked) the first time it is asked for.
pub fn guest(dir: &'static str) -> &'static Path {
    static BUILT: Mutex<BTreeMap<&str, &'static Path>> = Mutex::new(BTreeMap::new());
    // Held across the build: a second test asking for the same guest waits
    // for the first build instead of starting its own.
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(image) = built.get(dir) {
        return image;
    }
    let mut opts = skiff_build::BuildOptions::new(workspace().join(dir));
    opts.target_dir = Some(workspace().join("target/guest"));
    opts.quiet = true;
    let image = match skiff_build::build(&opts) {
        Ok(b) => Box::leak(b.image.into_boxed_path()),
        Err(e) => panic!("building {dir} failed: {e}"),
    };
    built.insert(dir, image);
    image
}
