//! The DHCP server: one lease, the guest's, with the gateway as router and
//! the forwarder as name server.

use crate::config::{DNS, GATEWAY, GUEST};
use smoltcp::wire::{DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr};
use std::net::Ipv4Addr;

/// Lease time handed out, in seconds.
pub const LEASE_SECONDS: u32 = 24 * 3600;

/// Whether `reply` (from [`answer`]) hands the guest its lease.
pub fn is_ack(reply: &[u8]) -> bool {
    let Ok(packet) = DhcpPacket::new_checked(reply) else { return false };
    DhcpRepr::parse(&packet).is_ok_and(|r| r.message_type == DhcpMessageType::Ack)
}

/// The reply to a client message, encoded, or `None` to stay silent.
pub fn answer(request: &[u8]) -> Option<Vec<u8>> {
    let packet = DhcpPacket::new_checked(request).ok()?;
    let req = DhcpRepr::parse(&packet).ok()?;
    let message_type = match req.message_type {
        DhcpMessageType::Discover => DhcpMessageType::Offer,
        DhcpMessageType::Request => {
            // Renewals name the address in ciaddr; a first request in the
            // requested-address option.
            let wanted = req.requested_ip.unwrap_or(req.client_ip);
            let ours = req.server_identifier.is_none_or(|s| s == GATEWAY);
            if !ours {
                return None;
            }
            if wanted == GUEST { DhcpMessageType::Ack } else { DhcpMessageType::Nak }
        }
        _ => return None,
    };
    let dns = DNS.octets();
    let options = [DhcpOption { kind: 6, data: &dns }];
    let nak = message_type == DhcpMessageType::Nak;
    let reply = DhcpRepr {
        message_type,
        transaction_id: req.transaction_id,
        secs: 0,
        client_hardware_address: req.client_hardware_address,
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: if nak { Ipv4Addr::UNSPECIFIED } else { GUEST },
        server_ip: GATEWAY,
        router: (!nak).then_some(GATEWAY),
        subnet_mask: (!nak).then_some(Ipv4Addr::new(255, 255, 255, 0)),
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: req.broadcast,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(GATEWAY),
        parameter_request_list: None,
        dns_servers: None,
        max_size: None,
        lease_duration: (!nak).then_some(LEASE_SECONDS),
        renew_duration: None,
        rebind_duration: None,
        additional_options: if nak { &[] } else { &options },
    };
    let mut out = vec![0u8; reply.buffer_len()];
    let mut p = DhcpPacket::new_unchecked(&mut out[..]);
    reply.emit(&mut p).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::EthernetAddress;

    fn client(message_type: DhcpMessageType, requested: Option<Ipv4Addr>) -> Vec<u8> {
        let r = DhcpRepr {
            message_type,
            transaction_id: 0x1234,
            secs: 0,
            client_hardware_address: EthernetAddress([2, 0, 0, 0, 0, 1]),
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: Ipv4Addr::UNSPECIFIED,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip: requested,
            client_identifier: None,
            server_identifier: None,
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        let mut out = vec![0u8; r.buffer_len()];
        r.emit(&mut DhcpPacket::new_unchecked(&mut out[..])).unwrap();
        out
    }

    fn parse(bytes: &[u8]) -> (DhcpMessageType, Ipv4Addr, Option<Ipv4Addr>, Vec<Ipv4Addr>) {
        let p = DhcpPacket::new_checked(bytes).unwrap();
        let r = DhcpRepr::parse(&p).unwrap();
        let dns = r.dns_servers.map(|d| d.to_vec()).unwrap_or_default();
        (r.message_type, r.your_ip, r.router, dns)
    }

    #[test]
    fn discover_then_request_gets_the_guest_address() {
        let offer = answer(&client(DhcpMessageType::Discover, None)).unwrap();
        assert_eq!(parse(&offer), (DhcpMessageType::Offer, GUEST, Some(GATEWAY), vec![DNS]));
        let ack = answer(&client(DhcpMessageType::Request, Some(GUEST))).unwrap();
        assert_eq!(parse(&ack).0, DhcpMessageType::Ack);
        let nak = answer(&client(DhcpMessageType::Request, Some(Ipv4Addr::new(10, 0, 2, 99)))).unwrap();
        assert_eq!(parse(&nak).0, DhcpMessageType::Nak);
        // Only the acknowledgement hands the lease over.
        assert!(is_ack(&ack));
        assert!(!is_ack(&offer) && !is_ack(&nak) && !is_ack(&[0x42; 300]));
    }

    #[test]
    fn garbage_is_ignored() {
        assert!(answer(&[]).is_none());
        assert!(answer(&[0x42; 300]).is_none());
        assert!(answer(&client(DhcpMessageType::Release, None)).is_none());
    }
}
