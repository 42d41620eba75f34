//! The client address, taken from the peer or, only through trusted proxies, from
//! `Forwarded` / `X-Forwarded-For`.
//!
//! Why this default: with no trusted proxy configured, forwarding headers are ignored and the
//! peer address is the client. A client can write any `X-Forwarded-For` it likes, so the
//! header is believed only as far as it was appended by a proxy on the list, walking from the
//! right (the hop closest to us) and stopping at the first address that is not a trusted
//! proxy. The leftmost entry, which the client controls, is never trusted by position.
//!
//! Only the header the trusted proxies write is read ([`ForwardedHeader`]: `X-Forwarded-For`
//! by default, as nginx, HAProxy, Envoy and the cloud load balancers write it; `Forwarded`
//! for RFC 7239 proxies). The other header is ignored: a proxy passes a header it does not
//! write along untouched, so its every hop is the client's invention.
//!
//! ```
//! use std::net::IpAddr;
//! use tenancy_http::TrustedProxies;
//!
//! let proxies = TrustedProxies::parse(["10.0.0.0/8"])?;
//! let peer: IpAddr = "10.1.2.3".parse().unwrap();
//! let xff: &[&[u8]] = &[b"6.6.6.6, 203.0.113.9, 10.0.0.7"];
//! assert_eq!(proxies.client_addr(Some(peer), &[], xff), Some("203.0.113.9".parse().unwrap()));
//!
//! // From an untrusted peer the header is ignored.
//! let stranger: IpAddr = "198.51.100.1".parse().unwrap();
//! assert_eq!(proxies.client_addr(Some(stranger), &[], xff), Some(stranger));
//!
//! // A `Forwarded` header the client sent through an `X-Forwarded-For` proxy is ignored.
//! let forged: &[&[u8]] = &[b"for=6.6.6.6"];
//! assert_eq!(proxies.client_addr(Some(peer), forged, xff), Some("203.0.113.9".parse().unwrap()));
//! # Ok::<(), tenancy_http::Error>(())
//! ```

use std::net::{IpAddr, SocketAddr};

use crate::{Error, Result};

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `addr` or `addr/prefix` (IPv4 or IPv6).
    pub fn parse(s: &str) -> Result<Self> {
        let err = |reason| Error::InvalidProxy {
            entry: s.to_owned(),
            reason,
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| err("not an IP address"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| err("prefix length out of range"))?,
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The header the trusted proxies write the client's address into; the other one is never
/// read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (the default): what nginx, HAProxy, Envoy and the cloud load
    /// balancers append to.
    #[default]
    XForwardedFor,
    /// `Forwarded`, its `for=` parameters (RFC 7239).
    Forwarded,
}

/// The proxies whose forwarding header is believed, and which header that is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// No trusted proxy: the peer address is always the client (the default).
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses a list of addresses and CIDR networks; they write `X-Forwarded-For` unless
    /// [`TrustedProxies::with_header`] says otherwise.
    pub fn parse<I, S>(entries: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nets = entries
            .into_iter()
            .map(|e| IpNet::parse(e.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            nets,
            header: ForwardedHeader::default(),
        })
    }

    /// The header these proxies write.
    ///
    /// ```
    /// use std::net::IpAddr;
    /// use tenancy_http::{ForwardedHeader, TrustedProxies};
    ///
    /// let proxies = TrustedProxies::parse(["10.0.0.0/8"])?.with_header(ForwardedHeader::Forwarded);
    /// let peer: IpAddr = "10.0.0.2".parse().unwrap();
    /// let fwd: &[&[u8]] = &[b"for=203.0.113.9;proto=https"];
    /// let xff: &[&[u8]] = &[b"6.6.6.6"];
    /// assert_eq!(proxies.client_addr(Some(peer), fwd, xff), Some("203.0.113.9".parse().unwrap()));
    /// // `X-Forwarded-For` is now the one ignored.
    /// assert_eq!(proxies.client_addr(Some(peer), &[], xff), Some(peer));
    /// # Ok::<(), tenancy_http::Error>(())
    /// ```
    pub fn with_header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// The header these proxies write.
    pub fn header(&self) -> ForwardedHeader {
        self.header
    }

    /// The name of the header these proxies write, in lower case.
    pub fn header_name(&self) -> &'static str {
        match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        }
    }

    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The client address for a request from `peer` carrying these `Forwarded` and
    /// `X-Forwarded-For` header values (each in arrival order).
    ///
    /// Only the [header the proxies write](TrustedProxies::with_header) is read. Its hops are
    /// read from the right; the first one that is not a trusted proxy is the client. A hop
    /// that cannot be read (an obfuscated identifier, `unknown`, garbage) ends the walk at the
    /// last trusted hop, since nothing further left can be attributed. Without a peer there is
    /// no address.
    pub fn client_addr(
        &self,
        peer: Option<IpAddr>,
        forwarded: &[&[u8]],
        x_forwarded_for: &[&[u8]],
    ) -> Option<IpAddr> {
        let values = match self.header {
            ForwardedHeader::XForwardedFor => x_forwarded_for,
            ForwardedHeader::Forwarded => forwarded,
        };
        self.client_addr_from(peer, values)
    }

    /// [`TrustedProxies::client_addr`] given only the values of the header the proxies write
    /// ([`TrustedProxies::header_name`]), in arrival order.
    pub fn client_addr_from(&self, peer: Option<IpAddr>, values: &[&[u8]]) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let hops: Vec<Option<IpAddr>> = match self.header {
            ForwardedHeader::XForwardedFor => values
                .iter()
                .flat_map(|v| v.split(|b| *b == b','))
                .map(|h| std::str::from_utf8(h).ok().and_then(parse_hop))
                .collect(),
            ForwardedHeader::Forwarded => values.iter().flat_map(|v| forwarded_hops(v)).collect(),
        };
        let mut current = peer;
        for hop in hops.into_iter().rev() {
            match hop {
                Some(ip) => {
                    current = ip;
                    if !self.is_trusted(ip) {
                        return Some(ip);
                    }
                }
                None => return Some(current),
            }
        }
        Some(current)
    }
}

/// One hop: a bare address, an address with a port or an obfuscated port (`_abc`, RFC
/// 7239), or a bracketed IPv6 address with an optional port.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    if let Some(bracketed) = s.strip_prefix('[') {
        let inner = bracketed.split(']').next()?;
        return inner.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    // `192.0.2.7:_p1`: an IPv4 address with an obfuscated port.
    let (host, port) = s.split_once(':')?;
    let obfuscated = port.strip_prefix('_').is_some_and(|p| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    });
    obfuscated
        .then(|| host.parse::<std::net::Ipv4Addr>().ok())
        .flatten()
        .map(|ip| IpAddr::V4(ip).to_canonical())
}

/// The hop of each element of one `Forwarded` value (RFC 7239), left to right: the address
/// of its `for=` parameter, or `None` where it cannot be read (no `for=`, more than one, a
/// value that is no address). Commas and semicolons inside quoted strings separate nothing:
/// a proxy that copies a client's text into a quoted parameter (`host="x,for=6.6.6.6"`)
/// must not hand the client a hop of its own making. An unterminated quoted string makes
/// the rest of the value one unreadable element.
fn forwarded_hops(value: &[u8]) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    // The current element's `for=` values seen so far, and whether one was unreadable.
    let mut fors: Vec<Option<IpAddr>> = Vec::new();
    let mut pair: Vec<u8> = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    let finish_pair = |pair: &mut Vec<u8>, fors: &mut Vec<Option<IpAddr>>| {
        if let Some(eq) = pair.iter().position(|b| *b == b'=') {
            let (k, v) = (&pair[..eq], &pair[eq + 1..]);
            if k.trim_ascii().eq_ignore_ascii_case(b"for") {
                fors.push(std::str::from_utf8(v).ok().and_then(parse_hop));
            }
        }
        pair.clear();
    };
    for &b in value {
        if quoted {
            if escaped {
                escaped = false;
                pair.push(b);
            } else if b == b'\\' {
                escaped = true;
            } else {
                quoted = b != b'"';
                pair.push(b);
            }
            continue;
        }
        match b {
            b'"' => {
                quoted = true;
                pair.push(b);
            }
            b';' => finish_pair(&mut pair, &mut fors),
            b',' => {
                finish_pair(&mut pair, &mut fors);
                hops.push(one_for(&fors));
                fors.clear();
            }
            _ => pair.push(b),
        }
    }
    if quoted {
        hops.push(None);
        return hops;
    }
    finish_pair(&mut pair, &mut fors);
    hops.push(one_for(&fors));
    hops
}

/// The element's hop when it has exactly one readable `for=`.
fn one_for(fors: &[Option<IpAddr>]) -> Option<IpAddr> {
    match fors {
        [one] => *one,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks() {
        let n = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains(ip("10.255.0.1")));
        assert!(n.contains(ip("::ffff:10.0.0.1")));
        assert!(!n.contains(ip("11.0.0.1")));
        let all = IpNet::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("1.2.3.4")));
        let v6 = IpNet::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(!v6.contains(ip("2001:db9::5")));
        assert!(IpNet::parse("::1").unwrap().contains(ip("::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "host",
            "10.0.0.0/x",
            "1.2.3.4/-1",
        ] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn leftmost_entry_is_never_believed_by_position() {
        let p = TrustedProxies::parse(["10.0.0.0/8", "192.168.0.1"]).unwrap();
        let peer = Some(ip("10.0.0.1"));
        // The client forged "1.1.1.1"; the trusted proxy appended the real peer it saw.
        let xff: &[&[u8]] = &[b"1.1.1.1", b"203.0.113.5, 192.168.0.1"];
        assert_eq!(p.client_addr(peer, &[], xff), Some(ip("203.0.113.5")));
        // All hops trusted: the leftmost hop is the client.
        let xff: &[&[u8]] = &[b"10.9.9.9, 192.168.0.1"];
        assert_eq!(p.client_addr(peer, &[], xff), Some(ip("10.9.9.9")));
        // Garbage between: stop at the last trusted hop.
        let xff: &[&[u8]] = &[b"7.7.7.7, unknown, 10.2.2.2"];
        assert_eq!(p.client_addr(peer, &[], xff), Some(ip("10.2.2.2")));
        // No header: the peer.
        assert_eq!(p.client_addr(peer, &[], &[]), peer);
        assert_eq!(p.client_addr(None, &[], xff), None);
    }

    #[test]
    fn only_the_header_the_proxies_write_is_read() {
        let xff_proxies = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let fwd_proxies = xff_proxies.clone().with_header(ForwardedHeader::Forwarded);
        assert_eq!(xff_proxies.header(), ForwardedHeader::XForwardedFor);
        let peer = Some(ip("10.0.0.2"));
        let fwd: &[&[u8]] =
            &[b"for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.0.0.3:80"];
        let xff: &[&[u8]] = &[b"9.9.9.9"];
        assert_eq!(
            fwd_proxies.client_addr(peer, fwd, xff),
            Some(ip("2001:db8:cafe::17"))
        );
        // The client sent `Forwarded` through proxies that append `X-Forwarded-For`.
        assert_eq!(xff_proxies.client_addr(peer, fwd, xff), Some(ip("9.9.9.9")));
        // The client sent `X-Forwarded-For` through proxies that write `Forwarded` only.
        assert_eq!(fwd_proxies.client_addr(peer, &[], xff), peer);
        let no_for: &[&[u8]] = &[b"proto=https;by=10.0.0.3"];
        assert_eq!(fwd_proxies.client_addr(peer, no_for, xff), peer);
    }

    /// A trusted proxy that copies the client's `Host` into a quoted `host=` hands the
    /// client no hop: commas and semicolons inside quotes separate nothing, and an element
    /// with two `for=` is unreadable (the walk ends at the last trusted hop).
    #[test]
    fn quoted_forwarded_values_cannot_forge_a_hop() {
        let proxies = TrustedProxies::parse(["10.0.0.0/8"])
            .unwrap()
            .with_header(ForwardedHeader::Forwarded);
        let peer = Some(ip("10.0.0.2"));
        let client = Some(ip("203.0.113.9"));
        let cases: [(&[u8], Option<IpAddr>); 9] = [
            (b"for=203.0.113.9;host=\"x,for=6.6.6.6\"", client),
            (b"host=\"x;for=6.6.6.6\";for=203.0.113.9", client),
            (b"for=203.0.113.9;host=\"a\\\",for=6.6.6.6\"", client),
            (b"host=x;for=6.6.6.6;for=203.0.113.9", peer),
            (b"for=203.0.113.9;host=\"unterminated,for=6.6.6.6", peer),
            (b"for=\"192.0.2.7:_p1\"", Some(ip("192.0.2.7"))),
            (b"for=\"[2001:db8::1]:_p1\"", Some(ip("2001:db8::1"))),
            (b"for=\"192.0.2.7:_\"", peer),
            (b"for=_hidden, for=10.0.0.3", Some(ip("10.0.0.3"))),
        ];
        for (value, expected) in cases {
            assert_eq!(
                proxies.client_addr_from(peer, &[value]),
                expected,
                "{}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let p = TrustedProxies::none();
        let xff: &[&[u8]] = &[b"1.2.3.4"];
        assert_eq!(
            p.client_addr(Some(ip("203.0.113.1")), &[], xff),
            Some(ip("203.0.113.1"))
        );
    }
}
