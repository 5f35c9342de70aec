//! examples/nameserver with a disk named `zones`: every zone an UPDATE
//! changes is written to the store on it (durably, before the UPDATE is
//! answered) and served again after a restart. An empty or new file is
//! formatted at the first start.
//!
//! ```text
//! skiff run examples/nameserver-disk --disk zones=zones.img,size=16M --net service=user \
//!     --publish 5353:53/udp --publish 5353:53/tcp -- [the options of examples/nameserver]
//! ```
#![no_std]
#![no_main]

use skiff::block::Disk;

#[skiff::main(net = "service", block = "zones")]
async fn main(env: skiff::Env) -> Result<(), skiff::Error> {
    let disk = Disk::take(&env, "zones")?;
    nameserver::run_with_disk(env, disk).await
}
