//! The disk tests of `disk.rs`, with the guests run in process mode
//! (`--sandbox process`).

#[path = "disk.rs"]
mod disk;
