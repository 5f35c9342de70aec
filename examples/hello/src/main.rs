//! Hello, Skiff: logs a line, sleeps 10 ms on the timer, reports how long
//! the sleep took and the command line it was given, and exits 0.
//!
//! `skiff run examples/hello -- any arguments`
//!
//! An optional `--sleep-ms N` argument changes the sleep (0 skips it).
#![no_std]
#![no_main]

use skiff::prelude::*;
use skiff::time::{Instant, sleep};

#[skiff::main]
async fn main(env: skiff::Env) -> Result<(), String> {
    info!("Hello from Skiff!");
    let args = env.args();
    let millis = match args.iter().position(|a| a == "--sleep-ms") {
        Some(i) => {
            let value = args.get(i + 1).ok_or("--sleep-ms needs a value")?;
            value.parse::<u64>().map_err(|e| format!("--sleep-ms {value:?}: {e}"))?
        }
        None => 10,
    };
    if millis > 0 {
        let start = Instant::now();
        sleep(Duration::from_millis(millis)).await;
        let slept = start.elapsed();
        info!("slept {}.{:03} ms (asked for {millis} ms)", slept.as_micros() / 1000, slept.as_micros() % 1000);
    }
    info!("command line: {args:?}");
    Ok(())
}
