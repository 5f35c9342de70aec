//! Skiff's network stack: [smoltcp] driven by the Skiff executor, with a
//! DHCPv4 client, a DNS client, IPv4 and IPv6 (static or SLAAC), ICMP echo
//! replies, and async TCP and UDP sockets.
//!
//! Layers, bottom up:
//! - [`device`]: smoltcp's `phy::Device` over the runtime's
//!   [`NetDevice`](skiff_rt::NetDevice) (the tender's shared-memory rings,
//!   or a simulated link in tests), frames handed over in place;
//! - [`stack`]: the [`Stack`] value (interface, sockets, DHCP, DNS) and the
//!   task that drives it the smoltcp way: `Interface::poll` with the current
//!   time, then sleep until a frame, a socket operation or `poll_delay`;
//! - [`tcp`], [`udp`], [`dns`]: the async sockets a service uses;
//! - [`config`]: addresses from the guest's command line.
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//!
//! use skiff::net::{NetConfig, Stack, TcpListener};
//!
//! #[skiff::main(net = "service")]
//! async fn main(env: skiff::Env) -> Result<(), skiff::Error> {
//!     let (config, _rest) = NetConfig::from_args(env.args())?;
//!     let stack = Stack::new(env.take_net("service")?, config, &env.spawner());
//!     let listener = TcpListener::bind(&stack, 7)?;
//!     loop {
//!         let (mut stream, _peer) = listener.accept().await?;
//!         env.spawn(async move {
//!             let mut buf = [0u8; 1024];
//!             while let Ok(n @ 1..) = stream.read(&mut buf).await {
//!                 if stream.write_all(&buf[..n]).await.is_err() {
//!                     break;
//!                 }
//!             }
//!         });
//!     }
//! }
//! ```
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod config;
pub mod device;
pub mod dns;
pub mod stack;
pub mod tcp;
pub mod udp;

pub use config::{ConfigError, Ipv4Config, Ipv6Config, NetConfig};
pub use dns::DnsError;
pub use stack::{Stack, StackStats, TcpOptions};
pub use tcp::{ListenOptions, OwnedReadHalf, OwnedWriteHalf, ReadHalf, TcpError, TcpListener, TcpStream, WriteHalf};
pub use udp::{UdpError, UdpOptions, UdpSocket};
