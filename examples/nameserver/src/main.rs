//! The name server without a disk: updates live in memory, and a restart
//! serves the zones as built (see `src/lib.rs`; `examples/nameserver-disk`
//! keeps them on a disk).
#![no_std]
#![no_main]

#[skiff::main(net = "service")]
async fn main(env: skiff::Env) -> Result<(), skiff::Error> {
    nameserver::run(env).await
}
