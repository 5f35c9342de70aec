//! x86_64 specifics: the ring-0 supervisor, the PVH entry, and the few
//! instructions ring-3 code needs (hypercall `out`, `rdtsc`).
//!
//! This is the only module of Skiff with assembly in it.

pub mod cpu;
pub mod pvh;
pub mod supervisor;
