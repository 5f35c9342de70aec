//! The profiler tests of `profile.rs`, every one of them, with the guests
//! run in process mode (`--sandbox process`): the same test code, selected
//! by this binary's name (`common::sandbox`).

#[path = "profile.rs"]
mod profile;
