//! The network boot tests' client guest. After the network options
//! (`--dhcp`, `--ipv4`, ...), one scenario:
//!
//! - `resolve NAME`: look NAME up through the configured DNS servers;
//! - `connect HOST PORT MESSAGE`: resolve HOST, connect, send MESSAGE, shut
//!   down the sending half, and log everything the server sends back;
//! - `wait SECONDS`: keep the stack up (DHCP renewals) for a while.
#![no_std]
#![no_main]

use core::net::SocketAddr;
use skiff::net::{NetConfig, Stack, TcpStream};
use skiff::prelude::*;
use skiff::time::{sleep, timeout};

#[skiff::main(net = "service")]
async fn main(env: skiff::Env) -> Result<(), skiff::Error> {
    let (config, rest) = NetConfig::from_args(env.args())?;
    let stack = Stack::new(env.take_net("service")?, config, &env.spawner());
    let addr = timeout(Duration::from_secs(20), stack.wait_ipv4()).await.map_err(|_| "no IPv4 address in 20 s")?;
    info!("netprobe: up at {addr}");
    match rest.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["resolve", name] => {
            let found = stack.resolve(name).await?;
            info!("netprobe: {name} resolves to {found:?}");
        }
        ["connect", host, port, message] => {
            let ip = *stack.resolve(host).await?.first().ok_or("no address")?;
            let port: u16 = port.parse()?;
            let mut stream = TcpStream::connect(&stack, SocketAddr::new(ip, port)).await?;
            info!("netprobe: connected to {ip}:{port}");
            stream.write_all(message.as_bytes()).await?;
            stream.shutdown();
            let mut reply = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                reply.extend_from_slice(&buf[..n]);
            }
            info!("netprobe: reply {:?}", String::from_utf8_lossy(&reply));
        }
        ["wait", secs] => {
            sleep(Duration::from_secs(secs.parse()?)).await;
            info!("netprobe: waited {secs} s, address {:?}", stack.ipv4_addr());
        }
        other => return Err(format!("unknown scenario {other:?}").into()),
    }
    Ok(())
}
