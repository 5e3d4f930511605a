//! Who the client is, behind an ingress: the TCP peer, unless the peer is a trusted proxy
//! (`PAYBRIDGE_GATEWAY_TRUSTED_PROXIES`), in which case the right-most address of
//! `X-Forwarded-For` (or, without it, of `Forwarded`'s `for=`) that is not itself a trusted
//! proxy. Everything left of that address was written by the client and proves nothing; a peer
//! that is not trusted may write any header it likes, so its headers are never read.
//!
//! The rate limit keys on this address and the access log shows it.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::FORWARDED;
use ipnet::IpNet;

/// The client address of a request, as worked out from its peer and headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ClientIp(pub IpAddr);

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// From CIDRs (`10.0.0.0/8`, `fd00::/8`) or single addresses; an IPv4-mapped IPv6 peer
    /// matches its IPv4 net.
    pub fn new(nets: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies { nets }
    }

    /// Parses `PAYBRIDGE_GATEWAY_TRUSTED_PROXIES`: CIDRs or addresses, separated by commas or
    /// spaces; empty trusts nobody.
    pub fn parse(text: &str) -> Result<TrustedProxies, String> {
        let nets = text
            .split([',', ' ', '\t', '\n'])
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| format!("`{item}` is neither a CIDR (10.0.0.0/8) nor an address"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedProxies { nets })
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client address of a request from `peer` with `headers`.
    pub(super) fn client_of(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let hops = forwarded_for(headers);
        // From the nearest hop back: the first one not a trusted proxy is the client. A hop that
        // cannot be read (a `unknown` or obfuscated `for=`, garbage) ends the walk: the last
        // trusted proxy before it is all that is known.
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = hop else {
                return client;
            };
            let ip = ip.to_canonical();
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        // Every hop was a trusted proxy: the furthest one is the closest thing to the client.
        client
    }
}

/// The addresses a request passed through, furthest first: every `X-Forwarded-For` header's
/// items in order or, without any, every `Forwarded` header's `for=` parameters. `None` for an
/// item that is not an address.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let xff: Vec<Option<IpAddr>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| {
            let text = value.to_str().ok();
            match text {
                Some(text) => text.split(',').map(|item| address(item.trim())).collect(),
                None => vec![None],
            }
        })
        .collect();
    if !xff.is_empty() {
        return xff;
    }
    headers
        .get_all(FORWARDED)
        .iter()
        .flat_map(|value| {
            let Ok(text) = value.to_str() else {
                return vec![None];
            };
            // Elements are separated by commas, pairs by semicolons (RFC 7239); a quoted value
            // holds neither in practice for `for=` (an address, bracketed for IPv6).
            text.split(',')
                .filter_map(|element| {
                    element.split(';').find_map(|pair| {
                        let (name, value) = pair.trim().split_once('=')?;
                        name.trim()
                            .eq_ignore_ascii_case("for")
                            .then(|| address(value.trim().trim_matches('"')))
                    })
                })
                .collect()
        })
        .collect()
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:4711`.
fn address(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    text.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let spoofed = headers(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("forwarded", "for=198.51.100.8"),
        ]);
        assert_eq!(
            trusted.client_of(ip("203.0.113.5"), &spoofed),
            ip("203.0.113.5")
        );
        let nobody = TrustedProxies::default();
        assert_eq!(nobody.client_of(ip("10.0.0.1"), &spoofed), ip("10.0.0.1"));
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_hop_is_the_client() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.168.1.1").unwrap();
        // The client wrote a fake first hop; the ingress appended what it saw; an inner proxy
        // appended the ingress.
        let forwarded = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(
            trusted.client_of(ip("10.2.2.2"), &forwarded),
            ip("198.51.100.7")
        );
        // Several headers are one list, in order.
        let split = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "198.51.100.9:4711, 192.168.1.1"),
        ]);
        assert_eq!(
            trusted.client_of(ip("10.2.2.2"), &split),
            ip("198.51.100.9")
        );
        // Only trusted hops: the furthest.
        let inside = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(trusted.client_of(ip("10.2.2.2"), &inside), ip("10.9.9.9"));
        // No header: the proxy itself.
        assert_eq!(
            trusted.client_of(ip("10.2.2.2"), &HeaderMap::new()),
            ip("10.2.2.2")
        );
        // An unreadable hop ends the walk at the last trusted proxy.
        let garbage = headers(&[("x-forwarded-for", "198.51.100.7, nonsense, 10.1.1.1")]);
        assert_eq!(trusted.client_of(ip("10.2.2.2"), &garbage), ip("10.1.1.1"));
    }

    #[test]
    fn forwarded_is_read_when_there_is_no_x_forwarded_for() {
        let trusted = TrustedProxies::parse("10.0.0.0/8 fd00::/8").unwrap();
        let forwarded = headers(&[(
            "forwarded",
            "for=1.2.3.4, For=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.0.0.3;by=10.0.0.9",
        )]);
        assert_eq!(
            trusted.client_of(ip("fd00::1"), &forwarded),
            ip("2001:db8:cafe::17")
        );
        let hidden = headers(&[("forwarded", "for=_hidden, for=10.0.0.3")]);
        assert_eq!(trusted.client_of(ip("10.0.0.4"), &hidden), ip("10.0.0.3"));
    }

    #[test]
    fn an_ipv4_mapped_peer_matches_its_ipv4_net() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let forwarded = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(
            trusted.client_of(ip("::ffff:10.0.0.1"), &forwarded),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn bad_entries_are_refused_with_their_text() {
        let error = TrustedProxies::parse("10.0.0.0/8,10.0.0.0/33").unwrap_err();
        assert!(error.contains("10.0.0.0/33"), "{error}");
        assert!(TrustedProxies::parse("").unwrap().is_empty());
    }
}
