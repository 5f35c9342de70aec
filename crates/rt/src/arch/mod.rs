//! x86_64 specifics: the ring-0 supervisor, the PVH entry, and the few
//! instructions ring-3 code needs (the hypercall, `rdtsc`), and the process
//! entry.
//!
//! This is the only module of Skiff with assembly in it.

pub mod cpu;
pub mod process;
pub mod pvh;
pub mod supervisor;
