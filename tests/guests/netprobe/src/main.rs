//! The network boot tests' client guest. After the network options
//! (`--dhcp`, `--ipv4`, ...), one scenario:
//!
//! - `resolve NAME`: look NAME up through the configured DNS servers;
//! - `connect HOST PORT MESSAGE`: resolve HOST, connect, send MESSAGE, shut
//!   down the sending half, and log everything the server sends back;
//! - `wait SECONDS`: keep the stack up (DHCP renewals) for a while;
//! - `flood SECONDS`: serve TCP echo on port 7 while sending a stream of
//!   garbage frames (random bytes, some shaped like TCP SYNs to random
//!   addresses) for SECONDS, then exit;
//! - `oversize-frame`: queue a 2000-byte frame on the NIC's transmit ring
//!   behind the driver's back and ring the doorbell, which must end the
//!   guest;
//! - `hold-nic SECONDS` (alone, without network options): take the NIC,
//!   never read it, and sleep; what arrives must not cost the host CPU;
//! - `bulk`: serve bulk transfers for the benchmarks: TCP port 9 reads
//!   everything it is sent and answers with the byte count (8 bytes, little
//!   endian) when the sender closes; port 19 reads an 8-byte length and
//!   sends that many bytes; `bulk BYTES` gives its connections send and
//!   receive buffers of BYTES instead of the stack's defaults.
#![no_std]
#![no_main]

use core::net::SocketAddr;
use skiff::net::{NetConfig, Stack, TcpListener, TcpOptions, TcpStream};
use skiff::prelude::*;
use skiff::time::{sleep, timeout};

#[skiff::main(net = "service", outbound)]
async fn main(env: skiff::Env) -> Result<(), skiff::Error> {
    if let [cmd, seconds] = env.args() {
        if cmd == "hold-nic" {
            let _nic = env.take_net("service")?;
            info!("netprobe: holding the NIC without reading it");
            sleep(Duration::from_secs(seconds.parse()?)).await;
            info!("netprobe: done holding");
            return Ok(());
        }
    }
    let (config, rest) = NetConfig::from_args(env.args())?;
    let flooding = rest.first().is_some_and(|s| s == "flood");
    let nic = env.take_net("service")?;
    let nic: Box<dyn skiff::NetDevice> =
        if flooding { Box::new(Flooding { inner: nic, rng: 0x5eed, sent: 0 }) } else { nic };
    let stack = Stack::new(nic, config, &env.spawner());
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
        ["send-and-return", host, port, bytes] => {
            // Writes and returns at once: the runtime must still deliver
            // the data and the close.
            let ip = *stack.resolve(host).await?.first().ok_or("no address")?;
            let port: u16 = port.parse()?;
            let bytes: usize = bytes.parse()?;
            let mut stream = TcpStream::connect(&stack, SocketAddr::new(ip, port)).await?;
            let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
            stream.write_all(&data).await?;
            info!("netprobe: wrote {bytes} bytes, returning");
        }
        ["flood", secs] => {
            let secs: u64 = secs.parse()?;
            let listener = TcpListener::bind(&stack, 7)?;
            let spawner = env.spawner();
            env.spawn(async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    spawner.spawn(async move {
                        let mut buf = vec![0u8; 8192];
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        s.shutdown();
                    });
                }
            });
            // Datagrams to the gateway make the stack poll (and the
            // flooding NIC send garbage) every millisecond.
            let poke = skiff::net::UdpSocket::bind(&stack, 9999)?;
            let gateway = SocketAddr::from(([10, 0, 2, 2], 9));
            let start = Instant::now();
            info!("netprobe: flooding for {secs} s, echo on port 7");
            while start.elapsed() < Duration::from_secs(secs) {
                let _ = poke.send_to(b"poke", gateway).await;
                sleep(Duration::from_millis(1)).await;
            }
            info!("netprobe: flood over");
        }
        ["oversize-frame"] => {
            queue_oversized_frame();
            sleep(Duration::from_secs(5)).await;
            error!("netprobe: the tender accepted an oversized frame");
        }
        ["bulk", buffer @ ..] => {
            if let [bytes] = buffer {
                let bytes: usize = bytes.parse()?;
                stack.set_tcp_defaults(TcpOptions { rx_buffer: bytes, tx_buffer: bytes, ..stack.tcp_defaults() });
            }
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

unsafe extern "C" {
    /// The boot info's address, as the runtime's entry received it (it
    /// moves in process mode).
    static skiff_boot_info: u64;
}

/// Queues a frame of 2000 bytes (over the MTU) on NIC 0's transmit ring
/// and rings the doorbell (`NetNotify`). The layouts are skiff-abi's: the
/// boot info (its address from the runtime's entry) holds the NIC's ring
/// base and slot count (device 0's data at offset 144: ring at +8, slots
/// at +16); the transmit ring follows
/// the receive ring; a ring is a 4 KiB header (producer index at 0) and
/// 2 KiB slots (length at 0).
fn queue_oversized_frame() {
    use core::sync::atomic::{AtomicU32, Ordering};
    // SAFETY: a plain read of the runtime's word, written once at entry.
    let boot_info = unsafe { core::ptr::read_volatile(&raw const skiff_boot_info) } as usize;
    let device0_data = boot_info + 144;
    // SAFETY: the boot info is mapped readable for ring 3 for the guest's
    // life; these are two aligned words of device 0's data.
    let (rx, slots) = unsafe {
        (((device0_data + 8) as *const u64).read_volatile(), ((device0_data + 16) as *const u32).read_volatile())
    };
    let tx = (rx + 4096 + u64::from(slots) * 2048) as usize;
    // SAFETY: the transmit ring is mapped writable for ring 3; the producer
    // index is its header's first word, shared atomically with the tender.
    let producer = unsafe { AtomicU32::from_ptr(tx as *mut u32) };
    let p = producer.load(Ordering::Relaxed);
    let slot = tx + 4096 + (p % slots) as usize * 2048;
    // SAFETY: the slot's length word is inside the mapped ring; the slot
    // is the driver's to fill until the producer index moves past it.
    unsafe { (slot as *mut u32).write_volatile(2000) };
    producer.store(p.wrapping_add(1), Ordering::Release);
    let args: [u32; 2] = [0, 0]; // NetNotifyArgs: device 0, reserved.
    // SAFETY: NetNotify (call 5) reads its argument and returns.
    unsafe { skiff::__private::raw_hypercall(5, args.as_ptr() as u32) };
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

/// A NIC that sends garbage frames alongside the stack's own.
struct Flooding {
    inner: Box<dyn skiff::NetDevice>,
    rng: u64,
    sent: u64,
}

impl Flooding {
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

impl skiff::NetDevice for Flooding {
    fn mac(&self) -> [u8; 6] {
        self.inner.mac()
    }
    fn mtu(&self) -> usize {
        self.inner.mtu()
    }
    fn rx_pending(&mut self) -> bool {
        self.inner.rx_pending()
    }
    fn recv(&mut self, f: &mut dyn FnMut(&[u8])) -> bool {
        self.inner.recv(f)
    }
    fn tx_room(&mut self) -> bool {
        self.inner.tx_room()
    }
    fn send(&mut self, len: usize, f: &mut dyn FnMut(&mut [u8])) -> bool {
        self.inner.send(len, f)
    }
    fn flush(&mut self) {
        for _ in 0..32 {
            let kind = self.next() % 4;
            let len = [14usize, 60, 400, 1514][(self.next() % 4) as usize];
            let mut seed = self.next();
            let mac = self.inner.mac();
            self.inner.send(len, &mut |buf| {
                for b in buf.iter_mut() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    *b = seed as u8;
                }
                if kind == 0 && buf.len() >= 54 {
                    // A TCP SYN from the guest to a random port of the
                    // gateway (the host's loopback: nothing leaves the host).
                    buf[0..6].copy_from_slice(&[0x52, 0x55, 10, 0, 2, 2]);
                    buf[6..12].copy_from_slice(&mac);
                    buf[12..14].copy_from_slice(&[0x08, 0x00]);
                    buf[14] = 0x45;
                    buf[16..18].copy_from_slice(&40u16.to_be_bytes());
                    buf[23] = 6;
                    buf[26..30].copy_from_slice(&[10, 0, 2, 15]);
                    buf[30..34].copy_from_slice(&[10, 0, 2, 2]);
                    buf[46] = 0x50;
                    buf[47] = 0x02;
                } else if buf.len() >= 14 {
                    // Random bytes, but never an IP packet that could be
                    // relayed to a random address outside.
                    buf[12..14].copy_from_slice(if kind == 1 { &[0x08, 0x06] } else { &[0x88, 0xb5] });
                }
            });
            self.sent += 1;
        }
        self.inner.flush();
    }
    fn poll_rx(&mut self, cx: &mut core::task::Context<'_>) -> core::task::Poll<()> {
        self.inner.poll_rx(cx)
    }
}
