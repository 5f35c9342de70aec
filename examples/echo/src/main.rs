//! Echo: every byte received on TCP port 7 goes back on the same
//! connection, and every UDP datagram to port 7 goes back to its sender.
//! Many connections at once, each its own task, with 64 KiB buffers each
//! way by default (smaller than the stack's 256 KiB, so 200 connections fit
//! the default 64 MiB of memory).
//!
//! ```text
//! skiff run examples/echo --net service=tap0 -- [--port 7] [--tcp-buffer 64K]
//!                                               [--ipv4 ADDR/PREFIX --gateway ADDR | --dhcp]
//! ```
#![no_std]
#![no_main]

use skiff::net::{NetConfig, Stack, TcpListener, TcpStream, UdpSocket};
use skiff::prelude::*;

#[skiff::main(net = "service")]
async fn main(env: skiff::Env) -> Result<(), skiff::Error> {
    let (config, rest) = NetConfig::from_args(env.args())?;
    let options = Options::parse(&rest)?;
    let stack = Stack::new(env.take_net("service")?, config, &env.spawner());
    let mut tcp = stack.tcp_defaults();
    tcp.rx_buffer = options.buffer;
    tcp.tx_buffer = options.buffer;
    stack.set_tcp_defaults(tcp);

    let listener = TcpListener::bind(&stack, options.port)?;
    let udp = UdpSocket::bind(&stack, options.port)?;
    env.spawn(udp_echo(udp));
    let addr = stack.wait_ipv4().await;
    info!("echo: serving TCP and UDP on {addr}:{} ({} KiB buffers)", options.port, options.buffer / 1024);

    let mut served: u64 = 0;
    loop {
        let (stream, peer) = listener.accept().await?;
        served += 1;
        debug!("echo: connection {served} from {peer}");
        env.spawn(tcp_echo(stream));
    }
}

async fn tcp_echo(mut stream: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    // The peer closed its half: finish sending, then close ours.
    let _ = stream.flush().await;
    stream.shutdown();
}

async fn udp_echo(socket: UdpSocket) {
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, peer)) => {
                let _ = socket.send_to(&buf[..n], peer).await;
            }
            Err(e) => warn!("echo: UDP receive failed: {e}"),
        }
    }
}

/// Per-connection receive and send buffers without `--tcp-buffer`.
const DEFAULT_BUFFER: usize = 64 * 1024;

struct Options {
    port: u16,
    buffer: usize,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options { port: 7, buffer: DEFAULT_BUFFER };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--port" => {
                    let v = it.next().ok_or("--port needs a value")?;
                    o.port = v.parse().map_err(|_| format!("--port {v:?}: not a port"))?;
                }
                "--tcp-buffer" => {
                    let v = it.next().ok_or("--tcp-buffer needs a value")?;
                    let (n, mult) = match v.strip_suffix(['K', 'k']) {
                        Some(n) => (n, 1024),
                        None => (v.as_str(), 1),
                    };
                    let n: usize = n.parse().map_err(|_| format!("--tcp-buffer {v:?}: not a size"))?;
                    o.buffer = (n * mult).clamp(1024, 4 << 20);
                }
                other => return Err(format!("unknown argument {other:?} (echo takes --port and --tcp-buffer)")),
            }
        }
        Ok(o)
    }
}
