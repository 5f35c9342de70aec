//! The boot tests of `boot.rs`, every one of them, with the guests run in
//! process mode (`--sandbox process`): the same test code, selected by
//! this binary's name (`common::sandbox`).

#[path = "boot.rs"]
mod boot;
