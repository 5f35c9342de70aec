#![no_std]
#![no_main]

use skiff::http::{Body, Method, Request, Response, Router, Server, ServerConfig, Status};
use skiff::net::{NetConfig, Stack, TcpListener};
use skiff::prelude::*;
use skiff::tls::{ServerOptions, TlsAcceptor};

// A self-signed certificate for localhost, made by build.rs.
const CERT_PEM: &str = include_str!(concat!(env!("OUT_DIR"), "/cert.pem"));
const KEY_PEM: &str = include_str!(concat!(env!("OUT_DIR"), "/key.pem"));

#[skiff::main(net = "service")]
async fn main(env: skiff::Env) -> Result<(), skiff::Error> {
    // --ipv4 ADDR/PREFIX, --gateway, --dhcp (the default), --ipv6, ...
    let (config, rest) = NetConfig::from_args(env.args())?;
    if let Some(arg) = rest.first() {
        return Err(format!("unknown argument {arg:?}").into());
    }
    let stack = Stack::new(env.take_net("service")?, config, &env.spawner());

    let hello = |_req: Request| async { Response::text(Status::OK, "hello\n") };
    let echo = |req: Request| async move { Response::new(Status::OK).body(Body::Bytes(req.body)) };
    let router = Router::new().route(Method::Get, "/hello", hello).route(Method::Post, "/echo", echo);
    let tls = ServerOptions::default().alpn(skiff::http::ALPN).build(CERT_PEM, KEY_PEM)?;
    let server = Rc::new(Server::new(router, ServerConfig::default()));
    let listener = TcpListener::bind(&stack, 443)?;
    info!("HTTPS on {}:443: GET /hello, POST /echo", stack.wait_ipv4().await);
    server.serve_tls(env.spawner(), listener, TlsAcceptor::new(tls)?).await?;
    Ok(())
}
