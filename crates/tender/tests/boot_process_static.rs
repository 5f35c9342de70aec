//! The tests of `boot.rs`, every one of them, with the guests run in
//! process mode (`--sandbox process`) by the statically linked release
//! tender (`scripts/build-tender`, musl): the same test code, selected by
//! this binary's name (`common::sandbox`, `common::tender`).

#[path = "boot.rs"]
mod boot;
