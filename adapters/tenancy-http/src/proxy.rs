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
    /// Parses `addr` or `addr/prefix` (IPv4 or IPv6). The prefix length is decimal digits
    /// without a sign or a leading zero; the address must have no bits set past the prefix
    /// (`10.0.0.5/8` is refused: a typo there would trust a network other than the one
    /// meant). An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is its IPv4 network
    /// (`10.0.0.0/8`).
    ///
    /// ```
    /// use tenancy_http::IpNet;
    ///
    /// assert_eq!(IpNet::parse("::ffff:10.0.0.0/104")?, IpNet::parse("10.0.0.0/8")?);
    /// let typo = IpNet::parse("192.168.1.10/8").unwrap_err().to_string();
    /// assert!(typo.contains("192.0.0.0/8"), "{typo}");
    /// # Ok::<(), tenancy_http::Error>(())
    /// ```
    pub fn parse(s: &str) -> Result<Self> {
        let err = |reason: String| Error::InvalidProxy {
            entry: s.to_owned(),
            reason,
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.trim())),
            None => (s, None),
        };
        let written: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| err("not an IP address".into()))?;
        let written_max: u8 = if written.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => written_max,
            Some("") => return Err(err("the prefix length is missing after `/`".into())),
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|n| {
                    p.bytes().all(|b| b.is_ascii_digit())
                        && (p == "0" || !p.starts_with('0'))
                        && *n <= written_max
                })
                .ok_or_else(|| {
                    err(format!(
                        "the prefix length must be a whole number from 0 to {written_max}"
                    ))
                })?,
        };
        let addr = written.to_canonical();
        // `::ffff:a.b.c.d/p` is the IPv4 network `a.b.c.d/(p - 96)`.
        let prefix = match (written, addr) {
            (IpAddr::V6(_), IpAddr::V4(_)) => prefix.checked_sub(96).ok_or_else(|| {
                err("an IPv4-mapped network needs a prefix length of at least 96".into())
            })?,
            _ => prefix,
        };
        let net = Self { addr, prefix };
        let base = net.network();
        if base != addr {
            return Err(err(format!(
                "bits are set past the prefix length: the network is {base}/{prefix}"
            )));
        }
        Ok(net)
    }

    /// The address with every bit past the prefix length cleared.
    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & v4_mask(self.prefix)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & v6_mask(self.prefix)).into()),
        }
    }

    /// Whether `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(net) & v4_mask(self.prefix) == u32::from(ip) & v4_mask(self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(net) & v6_mask(self.prefix) == u128::from(ip) & v6_mask(self.prefix)
            }
            _ => false,
        }
    }
}

fn v4_mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn v6_mask(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
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
    /// last trusted hop, since nothing further left can be attributed; so does a chain of
    /// more than [`MAX_FORWARDED_HOPS`] trusted hops. A `Forwarded` line whose quoted string
    /// never closes gives no address: a client's open quote could otherwise swallow the hop a
    /// trusted proxy appended, and the client be taken for that proxy. Empty list elements
    /// are skipped. The hops are read only as far as the walk goes: a long header costs no
    /// more than the hops walked (`Forwarded`: one scan of each line the walk reaches, quoting
    /// being read left to right). Without a peer there is no address.
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
    ///
    /// ```
    /// use std::net::IpAddr;
    /// use tenancy_http::TrustedProxies;
    ///
    /// let proxies = TrustedProxies::parse(["10.0.0.0/8"])?;
    /// let peer: Option<IpAddr> = "10.0.0.2".parse().ok();
    /// // An empty element is skipped, not taken for an unreadable hop.
    /// let xff: &[&[u8]] = &[b"203.0.113.9,, 10.0.0.3"];
    /// assert_eq!(proxies.client_addr_from(peer, xff), "203.0.113.9".parse().ok());
    /// # Ok::<(), tenancy_http::Error>(())
    /// ```
    pub fn client_addr_from(&self, peer: Option<IpAddr>, values: &[&[u8]]) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        // Right to left: the last line first, each line's hops from its end.
        match self.header {
            ForwardedHeader::XForwardedFor => self.walk(
                peer,
                values
                    .iter()
                    .rev()
                    .flat_map(|v| v.rsplit(|b| *b == b','))
                    .filter(|h| !h.trim_ascii().is_empty())
                    .map(|h| Hop::from(std::str::from_utf8(h).ok().and_then(parse_hop))),
            ),
            ForwardedHeader::Forwarded => self.walk(
                peer,
                values
                    .iter()
                    .rev()
                    .flat_map(|v| forwarded_hops(v).into_iter().rev()),
            ),
        }
    }

    /// Walks `hops`, nearest first, from the trusted `peer`: the first hop that is not a
    /// trusted proxy; the last trusted one at an unreadable hop, at the end, or after
    /// [`MAX_FORWARDED_HOPS`]; no address at a malformed one.
    fn walk(&self, peer: IpAddr, hops: impl Iterator<Item = Hop>) -> Option<IpAddr> {
        let mut current = peer;
        for hop in hops.take(MAX_FORWARDED_HOPS) {
            match hop {
                Hop::Addr(ip) => {
                    current = ip;
                    if !self.is_trusted(ip) {
                        return Some(ip);
                    }
                }
                Hop::Unreadable => return Some(current),
                Hop::Malformed => return None,
            }
        }
        Some(current)
    }
}

/// One hop of a forwarding header, as [`TrustedProxies::client_addr`] walks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// An address.
    Addr(IpAddr),
    /// A hop that names no address (`unknown`, an obfuscated identifier, garbage): nothing
    /// further left can be attributed, and the walk ends at the last trusted hop.
    Unreadable,
    /// A `Forwarded` line whose quoted string never closes. Which part of it a trusted proxy
    /// wrote cannot be told: read from the left, a client's open quote
    /// (`for=1.1.1.1;host="x`) swallows the element the proxy appended after it
    /// (`, for=203.0.113.9`); read from the right, the text a proxy copied into an
    /// unterminated quote (`host="x, for=6.6.6.6`) would become a hop. The walk ends with no
    /// address rather than take the proxy's or a hop the client may have written.
    Malformed,
}

impl From<Option<IpAddr>> for Hop {
    fn from(ip: Option<IpAddr>) -> Self {
        ip.map_or(Self::Unreadable, Self::Addr)
    }
}

/// How many hops [`TrustedProxies::client_addr`] walks at most: more trusted proxies than
/// any real chain has. A longer chain of trusted hops ends the walk at the last one read.
pub const MAX_FORWARDED_HOPS: usize = 32;

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
/// value that is no address). Empty elements are skipped. Commas and semicolons inside
/// quoted strings separate nothing: a proxy that copies a client's text into a quoted
/// parameter (`host="x,for=6.6.6.6"`) must not hand the client a hop of its own making. An
/// unterminated quoted string makes the rest of the value one [`Hop::Malformed`] element.
fn forwarded_hops(value: &[u8]) -> Vec<Hop> {
    let mut hops = Vec::new();
    // The current element's `for=` values seen so far, and whether one was unreadable.
    let mut fors: Vec<Option<IpAddr>> = Vec::new();
    let mut pair: Vec<u8> = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    // Whether the current element has anything but whitespace (an empty one is skipped).
    let mut filled = false;
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
        if !quoted && b != b',' && !b.is_ascii_whitespace() {
            filled = true;
        }
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
                if filled {
                    hops.push(Hop::from(one_for(&fors)));
                }
                fors.clear();
                filled = false;
            }
            _ => pair.push(b),
        }
    }
    if quoted {
        hops.push(Hop::Malformed);
        return hops;
    }
    finish_pair(&mut pair, &mut fors);
    if filled {
        hops.push(Hop::from(one_for(&fors)));
    }
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
    /// with two `for=` is unreadable (the walk ends at the last trusted hop). A quoted string
    /// that never closes gives no address, never the proxy's: a client's open quote swallows
    /// the element a trusted proxy appends to the same line.
    #[test]
    fn quoted_forwarded_values_cannot_forge_a_hop() {
        let proxies = TrustedProxies::parse(["10.0.0.0/8"])
            .unwrap()
            .with_header(ForwardedHeader::Forwarded);
        let peer = Some(ip("10.0.0.2"));
        let client = Some(ip("203.0.113.9"));
        let cases: [(&[u8], Option<IpAddr>); 12] = [
            (b"for=203.0.113.9;host=\"x,for=6.6.6.6\"", client),
            (b"host=\"x;for=6.6.6.6\";for=203.0.113.9", client),
            (b"for=203.0.113.9;host=\"a\\\",for=6.6.6.6\"", client),
            (b"host=x;for=6.6.6.6;for=203.0.113.9", peer),
            (b"for=203.0.113.9;host=\"unterminated,for=6.6.6.6", None),
            (b"for=1.1.1.1;host=\"x, for=203.0.113.9", None),
            (b"\", for=203.0.113.9", None),
            (b"for=\"[2001:db8::1]:4711, for=10.0.0.3", None),
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

    /// A line of the proxy's own after a client's line whose quote never closes is read as
    /// usual: the malformed line is never reached.
    #[test]
    fn a_proxy_line_after_a_malformed_client_line_is_read() {
        let proxies = TrustedProxies::parse(["10.0.0.0/8"])
            .unwrap()
            .with_header(ForwardedHeader::Forwarded);
        let peer = Some(ip("10.0.0.2"));
        let lines: &[&[u8]] = &[b"for=1.1.1.1;host=\"x", b"for=203.0.113.9"];
        assert_eq!(
            proxies.client_addr_from(peer, lines),
            Some(ip("203.0.113.9"))
        );
    }

    /// A network is written as it is meant: no bits past the prefix (the error names the
    /// network those bits fall in), a prefix of plain digits, IPv4-mapped networks as their
    /// IPv4 network.
    #[test]
    fn network_entries_are_refused_unless_exact() {
        let reason = |s: &str| match IpNet::parse(s) {
            Err(Error::InvalidProxy { reason, .. }) => reason,
            other => panic!("{s}: {other:?}"),
        };
        assert!(reason("192.168.1.10/8").contains("192.0.0.0/8"));
        assert!(reason("10.0.0.5/8").contains("10.0.0.0/8"));
        assert!(reason("2001:db8::1/32").contains("2001:db8::/32"));
        assert!(reason("10.0.0.0/").contains("missing"));
        for bad in [
            "10.0.0.0/+8",
            "10.0.0.0/008",
            "10.0.0.0/ 8x",
            "::ffff:10.0.0.0/8",
        ] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
        assert!(reason("::ffff:10.0.0.0/95").contains("at least 96"));
        assert_eq!(
            IpNet::parse("::ffff:10.0.0.0/104").unwrap(),
            IpNet::parse("10.0.0.0/8").unwrap()
        );
        assert_eq!(
            IpNet::parse("::ffff:10.0.0.7").unwrap(),
            IpNet::parse("10.0.0.7/32").unwrap()
        );
        for good in [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.0.0.7/32",
            "::/0",
            "10.0.0.0/ 8",
        ] {
            assert!(IpNet::parse(good).is_ok(), "{good}");
        }
    }

    /// Empty list elements are skipped (`a,,b` is `a, b`), in both headers.
    #[test]
    fn empty_elements_are_skipped() {
        let xff = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let fwd = xff.clone().with_header(ForwardedHeader::Forwarded);
        let peer = Some(ip("10.0.0.2"));
        let client = Some(ip("203.0.113.9"));
        for value in [
            &b"203.0.113.9,,10.0.0.3"[..],
            b" , 203.0.113.9, ,10.0.0.3, ",
        ] {
            assert_eq!(xff.client_addr_from(peer, &[value]), client);
        }
        for value in [
            &b"for=203.0.113.9, , for=10.0.0.3"[..],
            b"for=203.0.113.9, ",
            b",for=203.0.113.9,,",
        ] {
            assert_eq!(fwd.client_addr_from(peer, &[value]), client);
        }
        // Not empty: an element without `for=` is still unreadable.
        assert_eq!(
            fwd.client_addr_from(peer, &[b"for=203.0.113.9, proto=https"]),
            peer
        );
    }

    /// The walk reads no more hops than it walks, and at most `MAX_FORWARDED_HOPS` trusted
    /// ones: a chain longer than that ends at the last trusted hop read.
    #[test]
    fn long_chains_end_after_the_hop_bound() {
        let p = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let peer = Some(ip("10.0.0.2"));
        let trusted: Vec<String> = (0..1000)
            .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
            .collect();
        let chain = format!("203.0.113.9, {}", trusted.join(", "));
        // The hops are read from the right: the 32nd of them is the last one walked.
        let nth = &trusted[trusted.len() - MAX_FORWARDED_HOPS];
        assert_eq!(p.client_addr_from(peer, &[chain.as_bytes()]), Some(ip(nth)));
        let short = format!(
            "203.0.113.9, {}",
            trusted[..MAX_FORWARDED_HOPS - 1].join(", ")
        );
        assert_eq!(
            p.client_addr_from(peer, &[short.as_bytes()]),
            Some(ip("203.0.113.9"))
        );
        // Hops left of the client are never read: a huge forged prefix changes nothing.
        let forged = format!("{}203.0.113.9, 10.0.0.3", "1.1.1.1,".repeat(100_000));
        assert_eq!(
            p.client_addr_from(peer, &[forged.as_bytes()]),
            Some(ip("203.0.113.9"))
        );
        let fwd = p.clone().with_header(ForwardedHeader::Forwarded);
        let chain = format!(
            "for=203.0.113.9, {}",
            trusted
                .iter()
                .map(|t| format!("for={t}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        assert_eq!(
            fwd.client_addr_from(peer, &[chain.as_bytes()]),
            Some(ip(nth))
        );
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
