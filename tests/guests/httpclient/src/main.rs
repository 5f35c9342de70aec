//! Fetches one URL with Skiff's HTTP client and logs the status, the body's
//! length and a checksum, so a test can compare them with what its server
//! sent.
//!
//! ```text
//! httpclient [network options] URL [--ca PEM] [--post BODY]
//! ```
#![no_std]
#![no_main]

use skiff::http::Method;
use skiff::http::client::{ClientLimits, ClientRequest, fetch};
use skiff::net::{NetConfig, Stack};
use skiff::prelude::*;
use skiff::tls::{ClientOptions, TlsConnector};

#[skiff::main(net = "service")]
async fn main(env: skiff::Env) -> Result<(), skiff::Error> {
    let (config, rest) = NetConfig::from_args(env.args())?;
    let mut url = None;
    let mut ca = None;
    let mut post = None;
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ca" => ca = Some(it.next().ok_or("--ca needs PEM text")?.clone()),
            "--post" => post = Some(it.next().ok_or("--post needs a body")?.clone()),
            u if url.is_none() => url = Some(u.to_string()),
            other => return Err(format!("unexpected argument {other:?}").into()),
        }
    }
    let url = url.ok_or("give a URL")?;
    let stack = Stack::new(env.take_net("service")?, config, &env.spawner());
    stack.wait_ipv4().await;
    let connector = match ca {
        Some(pem) => {
            let roots = ClientOptions::roots_from_pem(pem.as_bytes())?;
            Some(TlsConnector::new(ClientOptions::default().alpn(&[b"http/1.1"]).build(roots)?)?)
        }
        None => None,
    };
    let request = match post {
        Some(body) => ClientRequest::new(Method::Post, "", "/").body(body.into_bytes()),
        None => ClientRequest::new(Method::Get, "", "/"),
    };
    let response = fetch(&stack, &url, request, connector.as_ref(), &ClientLimits::default()).await?;
    // FNV-1a, to compare bodies without printing them.
    let sum =
        response.body.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
    info!(
        "httpclient: {} {}, {} bytes, fnv {sum:016x}, content-type {:?}",
        response.status.0,
        response.status.reason(),
        response.body.len(),
        response.header("content-type").unwrap_or("")
    );
    Ok(())
}
