#![no_std]
#![no_main]

use skiff::prelude::*;
use skiff::time::sleep;

#[skiff::main]
async fn main(env: skiff::Env) -> Result<(), String> {
    let name = env.args().first().cloned().unwrap_or_else(|| "world".into());
    info!("hello, {name}");
    let ticker = env.spawn(async {
        for i in 0..3 {
            sleep(Duration::from_millis(100)).await;
            info!("tick {i}");
        }
    });
    ticker.await;
    Ok(())
}
