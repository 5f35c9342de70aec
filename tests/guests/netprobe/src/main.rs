//! The network boot tests' client guest. After the network options
//! (`--dhcp`, `--ipv4`, ...), one scenario:
//!
//! - `resolve NAME`: look NAME up through the configured DNS servers;
//! - `connect HOST PORT MESSAGE`: resolve HOST, connect, send MESSAGE, shut
//!   down the sending half, and log everything the server sends back;
//! - `wait SECONDS`: keep the stack up (DHCP renewals) for a while;
//! - `oversize-frame`: hand the tender a 2000-byte frame with `NetWrite`
//!   (run with `--net-rings off`), which must end the guest;
//! - `bulk`: serve bulk transfers for the benchmarks: TCP port 9 reads
//!   everything it is sent and answers with the byte count (8 bytes, little
//!   endian) when the sender closes; port 19 reads an 8-byte length and
//!   sends that many bytes.
#![no_std]
#![no_main]

use core::net::SocketAddr;
use skiff::net::{NetConfig, Stack, TcpListener, TcpStream};
use skiff::prelude::*;
use skiff::time::{sleep, timeout};

#[skiff::main(net = "service", outbound)]
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
        ["oversize-frame"] => {
            let frame = [0u8; 2000];
            // A NetFrame: address, length, capacity.
            let desc: [u64; 2] = [frame.as_ptr() as u64, 2000];
            // NetIoArgs: device 0, one frame, the list, done, reserved.
            let args: [u64; 3] = [1 << 32, desc.as_ptr() as u64, 0];
            // SAFETY: a deliberately bad hypercall; the tender ends the guest.
            unsafe { core::arch::asm!("out dx, eax", in("dx") 0x505u16, in("eax") args.as_ptr() as u32) };
            error!("netprobe: the tender accepted an oversized frame");
        }
        ["bulk"] => {
            let sink = TcpListener::bind(&stack, 9)?;
            let source = TcpListener::bind(&stack, 19)?;
            let spawner = env.spawner();
            env.spawn(async move {
                while let Ok((s, _)) = source.accept().await {
                    spawner.spawn(async move {
                        let _ = serve_source(s).await;
                    });
                }
            });
            info!("netprobe: bulk on ports 9 (sink) and 19 (source)");
            loop {
                let (s, _) = sink.accept().await?;
                env.spawn(async move {
                    let _ = serve_sink(s).await;
                });
            }
        }
        ["wait", secs] => {
            sleep(Duration::from_secs(secs.parse()?)).await;
            info!("netprobe: waited {secs} s, address {:?}", stack.ipv4_addr());
        }
        other => return Err(format!("unknown scenario {other:?}").into()),
    }
    Ok(())
}

async fn serve_sink(mut s: TcpStream) -> Result<(), skiff::net::TcpError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    s.write_all(&total.to_le_bytes()).await?;
    s.flush().await?;
    s.shutdown();
    Ok(())
}

async fn serve_source(mut s: TcpStream) -> Result<(), skiff::net::TcpError> {
    let mut len = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        let n = s.read(&mut len[got..]).await?;
        if n == 0 {
            return Ok(());
        }
        got += n;
    }
    let mut left = u64::from_le_bytes(len);
    let chunk = vec![0x5au8; 64 * 1024];
    while left > 0 {
        let n = (chunk.len() as u64).min(left) as usize;
        s.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    s.flush().await?;
    s.shutdown();
    Ok(())
}
