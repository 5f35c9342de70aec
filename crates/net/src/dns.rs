//! Resolving names through the configured DNS servers.

use crate::stack::Stack;
use alloc::vec::Vec;
use core::future::poll_fn;
use core::net::IpAddr;
use core::task::Poll;
use smoltcp::socket::dns;
use smoltcp::wire::DnsQueryType;

/// A name could not be resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsError {
    /// No DNS server is configured (none given with `--dns`, none from DHCP).
    NoServers,
    /// The name is not a valid DNS name.
    InvalidName,
    /// Too many queries at once.
    TooManyQueries,
    /// The servers did not answer, or answered that the name does not exist.
    Failed,
}

impl core::fmt::Display for DnsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DnsError::NoServers => f.write_str("no DNS server is configured"),
            DnsError::InvalidName => f.write_str("not a valid DNS name"),
            DnsError::TooManyQueries => f.write_str("too many DNS queries at once"),
            DnsError::Failed => f.write_str("the name could not be resolved"),
        }
    }
}

impl core::error::Error for DnsError {}

impl Stack {
    /// Resolves `name` to its IPv4 addresses, or failing that its IPv6
    /// addresses. An address literal resolves to itself.
    pub async fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(addr) = name.parse::<IpAddr>() {
            return Ok(alloc::vec![addr]);
        }
        match self.query(name, DnsQueryType::A).await {
            Ok(v) if !v.is_empty() => Ok(v),
            Err(e @ (DnsError::NoServers | DnsError::InvalidName)) => Err(e),
            _ => self.query(name, DnsQueryType::Aaaa).await,
        }
    }

    async fn query(&self, name: &str, kind: DnsQueryType) -> Result<Vec<IpAddr>, DnsError> {
        let handle = {
            let mut inner = self.inner.borrow_mut();
            let inner = &mut *inner;
            if inner.dns_servers.is_empty() {
                return Err(DnsError::NoServers);
            }
            let cx = inner.iface.context();
            let socket = inner.sockets.get_mut::<dns::Socket>(inner.dns);
            let h = socket.start_query(cx, name, kind).map_err(|e| match e {
                dns::StartQueryError::NoFreeSlot => DnsError::TooManyQueries,
                dns::StartQueryError::InvalidName | dns::StartQueryError::NameTooLong => DnsError::InvalidName,
            })?;
            inner.kick();
            h
        };
        poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            let dns_handle = inner.dns;
            let socket = inner.sockets.get_mut::<dns::Socket>(dns_handle);
            match socket.get_query_result(handle) {
                Ok(addrs) => Poll::Ready(Ok(addrs.iter().map(|a| IpAddr::from(*a)).collect())),
                Err(dns::GetQueryResultError::Pending) => {
                    socket.register_query_waker(handle, cx.waker());
                    Poll::Pending
                }
                Err(dns::GetQueryResultError::Failed) => Poll::Ready(Err(DnsError::Failed)),
            }
        })
        .await
    }
}
