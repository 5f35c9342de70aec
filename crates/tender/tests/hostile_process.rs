//! The tests of `hostile.rs`, every one of them, with the guests run in
//! process mode (`--sandbox process`): the same test code, selected by
//! this binary's name (`common::sandbox`).

#[path = "hostile.rs"]
mod hostile;
