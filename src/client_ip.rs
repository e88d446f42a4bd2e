//! The client's IP: the socket peer, or what a trusted proxy says in `X-Forwarded-For`.
//!
//! Only a peer inside `trusted_proxies` may speak for the client. Its chain is read from
//! the right, skipping further trusted hops, so the first untrusted address is the one a
//! client cannot forge (anything to its left was written by the client itself).

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::HeaderValue;
use ipnet::IpNet;

pub const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

#[derive(Debug, Clone, Default)]
pub struct ClientIpResolver {
    trusted: Vec<IpNet>,
}

impl ClientIpResolver {
    pub fn new(trusted: Vec<IpNet>) -> Self {
        ClientIpResolver { trusted }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Whether `peer` is a trusted proxy, whose `X-Forwarded-Proto` and `-Host` say
    /// what the client used (`forward::upstream_headers`).
    pub fn trusts(&self, peer: SocketAddr) -> bool {
        self.is_trusted(peer.ip().to_canonical())
    }

    /// The client IP used for rate limiting and logs.
    pub fn resolve(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        self.walk(peer.ip().to_canonical(), &forwarded_hops(headers))
            .1
    }

    /// The `X-Forwarded-For` value to send upstream: the believed chain (the client and
    /// the trusted proxies after it, as they wrote them) plus the peer. What a client
    /// wrote to the left of its own address is dropped: a backend reading the leftmost
    /// hop got an address hookgate itself did not believe.
    pub fn forwarded_for(&self, peer: SocketAddr, headers: &HeaderMap) -> HeaderValue {
        let peer_ip = peer.ip().to_canonical();
        let hops = forwarded_hops(headers);
        let (believed, _) = self.walk(peer_ip, &hops);
        let mut value = Vec::with_capacity(16);
        for hop in &hops[hops.len() - believed..] {
            value.extend_from_slice(hop);
            value.extend_from_slice(b", ");
        }
        push_ip(&mut value, peer_ip);
        HeaderValue::from_bytes(&value).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    }

    /// Reads `hops` from the right while the peer and each hop are trusted proxies:
    /// how many hops are believed, and the client, the first untrusted one (or, where a
    /// hop does not parse, the last good one).
    fn walk(&self, peer: IpAddr, hops: &[&[u8]]) -> (usize, IpAddr) {
        let mut client = peer;
        let mut believed = 0;
        if !self.is_trusted(peer) {
            return (believed, client);
        }
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                break;
            };
            client = ip;
            believed += 1;
            if !self.is_trusted(ip) {
                break;
            }
        }
        (believed, client)
    }
}

/// One hop: an address, or an address and port (`203.0.113.9:4711`,
/// `[2001:db8::1]:443`), as Azure's Application Gateway writes them: read as a bare
/// address only, such a hop ended the walk and the proxy itself became the client.
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(hop).ok()?;
    let ip = match text.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => text.parse::<SocketAddr>().ok()?.ip(),
    };
    Some(ip.to_canonical())
}

/// Writes an address without the formatting machinery: this runs once per request.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Every hop of every `X-Forwarded-For` header, in order, trimmed. Bytes, not text: a
/// line holding a byte a client wrote outside ASCII still ends in the hops the proxies
/// appended (dropping the whole line made the trusted proxy itself the client).
fn forwarded_hops(headers: &HeaderMap) -> Vec<&[u8]> {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|hop| !hop.is_empty())
        .collect()
}

/// The key a client is rate-limited under: its address, or its /64 for IPv6, because
/// one IPv6 host usually controls a whole /64. An IPv4 client translated into the
/// NAT64 well-known prefix (`64:ff9b::/96`, RFC 6052) is keyed by its IPv4 address:
/// by the /64, every IPv4 sender behind the translator shared one rate bucket, one
/// connection cap and one penalty box record.
pub fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => {
            IpAddr::V4((u128::from(v6) as u32).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 4000)
    }

    fn resolver(trusted: &[&str]) -> ClientIpResolver {
        ClientIpResolver::new(trusted.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn a_client_byte_outside_ascii_does_not_hide_the_hop_the_proxy_appended() {
        let r = resolver(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"\x80, 203.0.113.9").unwrap(),
        );
        assert_eq!(r.resolve(peer("10.0.0.5"), &h).to_string(), "203.0.113.9");
        assert_eq!(
            r.forwarded_for(peer("10.0.0.5"), &h).as_bytes(),
            b"203.0.113.9, 10.0.0.5"
        );
        // Read from the right, the client's junk is where the walk would end anyway.
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"198.51.100.1, \xff, 10.0.0.7").unwrap(),
        );
        assert_eq!(r.resolve(peer("10.0.0.5"), &h).to_string(), "10.0.0.7");
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let r = resolver(&["10.0.0.0/8"]);
        let ip = r.resolve(peer("203.0.113.7"), &headers(&["1.2.3.4"]));
        assert_eq!(ip.to_string(), "203.0.113.7");
    }

    #[test]
    fn a_trusted_peer_is_believed_and_the_rightmost_untrusted_hop_wins() {
        let r = resolver(&["10.0.0.0/8"]);
        let ip = r.resolve(
            peer("10.0.0.2"),
            &headers(&["6.6.6.6, 198.51.100.9, 10.0.0.1"]),
        );
        assert_eq!(ip.to_string(), "198.51.100.9");
    }

    #[test]
    fn several_headers_form_one_chain() {
        let r = resolver(&["10.0.0.0/8"]);
        let ip = r.resolve(peer("10.0.0.2"), &headers(&["198.51.100.9", "10.0.0.1"]));
        assert_eq!(ip.to_string(), "198.51.100.9");
    }

    #[test]
    fn a_trusted_peer_without_header_is_the_client() {
        let r = resolver(&["10.0.0.0/8"]);
        assert_eq!(
            r.resolve(peer("10.0.0.2"), &HeaderMap::new()).to_string(),
            "10.0.0.2"
        );
    }

    #[test]
    fn garbage_in_the_chain_stops_the_walk() {
        let r = resolver(&["10.0.0.0/8"]);
        let ip = r.resolve(peer("10.0.0.2"), &headers(&["1.1.1.1, garbage, 10.0.0.1"]));
        assert_eq!(ip.to_string(), "10.0.0.1");
    }

    #[test]
    fn ipv4_mapped_peers_are_plain_ipv4() {
        let r = resolver(&[]);
        let ip = r.resolve(peer("::ffff:192.0.2.1"), &HeaderMap::new());
        assert_eq!(ip.to_string(), "192.0.2.1");
    }

    #[test]
    fn forwarded_for_appends_the_peer_only_to_a_believed_chain() {
        let r = resolver(&["10.0.0.0/8"]);
        let h = headers(&["198.51.100.9"]);
        assert_eq!(
            r.forwarded_for(peer("10.0.0.2"), &h),
            "198.51.100.9, 10.0.0.2"
        );
        assert_eq!(r.forwarded_for(peer("203.0.113.7"), &h), "203.0.113.7");
    }

    /// The hops a client wrote left of its own address were passed on: a backend
    /// reading the leftmost saw an address hookgate did not believe.
    #[test]
    fn forwarded_for_passes_on_only_the_believed_hops() {
        let r = resolver(&["10.0.0.0/8"]);
        let h = headers(&["6.6.6.6, 203.0.113.9", "10.0.0.1"]);
        assert_eq!(r.resolve(peer("10.0.0.2"), &h).to_string(), "203.0.113.9");
        assert_eq!(
            r.forwarded_for(peer("10.0.0.2"), &h),
            "203.0.113.9, 10.0.0.1, 10.0.0.2"
        );
        // A chain of trusted proxies only, the last good one standing as the client.
        let h = headers(&["garbage, 10.0.0.1"]);
        assert_eq!(r.forwarded_for(peer("10.0.0.2"), &h), "10.0.0.1, 10.0.0.2");
    }

    /// Azure's Application Gateway writes `address:port`: read as a bare address only,
    /// the hop ended the walk and the proxy itself was every client.
    #[test]
    fn hops_with_a_port_name_their_address() {
        let r = resolver(&["10.0.0.0/8"]);
        for (hop, client) in [
            ("203.0.113.9:4711", "203.0.113.9"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[::ffff:192.0.2.1]:80", "192.0.2.1"),
        ] {
            let h = headers(&[hop]);
            assert_eq!(r.resolve(peer("10.0.0.2"), &h).to_string(), client, "{hop}");
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "2001:db8::1",
        ] {
            let mut out = Vec::new();
            push_ip(&mut out, text.parse().unwrap());
            assert_eq!(out, text.as_bytes());
        }
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let a = rate_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = rate_key("2001:db8:1:2:bbbb::2".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "2001:db8:1:2::");
        assert_eq!(
            rate_key("192.0.2.1".parse().unwrap()).to_string(),
            "192.0.2.1"
        );
        // NAT64: each translated IPv4 client keeps its own key.
        let a = rate_key("64:ff9b::c000:201".parse().unwrap());
        let b = rate_key("64:ff9b::c000:202".parse().unwrap());
        assert_eq!(a.to_string(), "192.0.2.1");
        assert_ne!(a, b);
    }
}
