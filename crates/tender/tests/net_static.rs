//! The tests of `net.rs`, every one of them, run by the statically
//! linked release tender (`scripts/build-tender`, musl) instead of the
//! tender cargo built for the tests: the same test code, selected by this
//! binary's name (`common::tender`).

#[path = "net.rs"]
mod net;
