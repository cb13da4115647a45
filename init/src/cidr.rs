//! IPv4 and IPv6 CIDR blocks as the flags take them: `10.0.0.0/8`,
//! `2001:db8::/32`, or a bare address meaning that one host.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::Family;

/// Why a flag value is not a CIDR or a list of them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("prefix /{prefix} is longer than {bits} bits")]
    PrefixTooLong { prefix: u8, bits: u8 },
    #[error("{input:?} is not a CIDR: {addr:?} is not an IPv4 or IPv6 address")]
    NotAnAddress { input: String, addr: String },
    #[error("{input:?} is not a CIDR: /{prefix} is not a prefix length")]
    NotAPrefix { input: String, prefix: String },
    #[error("{input:?} is not a CIDR: {reason}")]
    Invalid {
        input: String,
        #[source]
        reason: Box<CidrError>,
    },
    #[error("{list:?} has an empty entry; separate CIDRs with single commas")]
    EmptyEntry { list: String },
}

/// A network: an address with its host bits cleared, and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network of `addr/prefix`. Host bits are cleared, as iptables itself
    /// does (`10.1.2.3/8` is `10.0.0.0/8`), so what we print is what
    /// `iptables-save` prints back.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let network = match addr {
            IpAddr::V4(a) => {
                if prefix > 32 {
                    return Err(CidrError::PrefixTooLong { prefix, bits: 32 });
                }
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(prefix)))
            }
            IpAddr::V6(a) => {
                if prefix > 128 {
                    return Err(CidrError::PrefixTooLong { prefix, bits: 128 });
                }
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(prefix)))
            }
        };
        Ok(Cidr { network, prefix })
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn family(&self) -> Family {
        match self.network {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Whether `ip` lies in this network (never across families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask_v4(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask_v6(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::NotAnAddress {
            input: s.to_owned(),
            addr: addr.to_owned(),
        })?;
        let not_a_prefix = |p: &str| CidrError::NotAPrefix {
            input: s.to_owned(),
            prefix: p.to_owned(),
        };
        let prefix = match prefix {
            None => match addr {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            },
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| not_a_prefix(p))?
            }
            Some(p) => return Err(not_a_prefix(p)),
        };
        Cidr::new(addr, prefix).map_err(|e| CidrError::Invalid {
            input: s.to_owned(),
            reason: Box::new(e),
        })
    }
}

/// Prints the form iptables-save prints: `10.0.0.0/8`, `2001:db8::/32`,
/// `10.1.2.3/32`.
impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A comma-separated list of CIDRs, e.g. `10.0.0.0/8,fd00::/8`. An empty
/// string is an empty list (an environment variable set to nothing).
pub fn parse_cidr_list(s: &str) -> Result<Vec<Cidr>, CidrError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let mut cidrs = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(CidrError::EmptyEntry { list: s.to_owned() });
        }
        let cidr: Cidr = item.parse()?;
        if !cidrs.contains(&cidr) {
            cidrs.push(cidr);
        }
    }
    Ok(cidrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        match s.parse() {
            Ok(c) => c,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn parses_and_prints_like_iptables_save() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("2001:db8:0:0::1/32").to_string(), "2001:db8::/32");
        assert_eq!(cidr("::1").to_string(), "::1/128");
        assert_eq!(cidr("::/0").to_string(), "::/0");
        assert_eq!(cidr("fd00::/8").family(), Family::V6);
        assert_eq!(cidr("192.168.0.0/16").family(), Family::V4);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/+8",
            "10.0.0.0/ 8",
            "10.0.0.0/8/8",
            "example.com",
            "10.0.0.0/0008",
            "fe80::1%eth0",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn contains() {
        let net = cidr("10.0.0.0/8");
        assert!(
            net.contains(
                "10.255.0.1"
                    .parse()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            )
        );
        assert!(!net.contains(IpAddr::V4(Ipv4Addr::new(11, 0, 0, 1))));
        assert!(!net.contains(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
        assert!(cidr("0.0.0.0/0").contains(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
        assert!(
            cidr("2001:db8::/32")
                .contains(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1)))
        );
        assert!(cidr("::/0").contains(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert!(cidr("192.0.2.1").contains(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
        assert!(!cidr("192.0.2.1").contains(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))));
    }

    #[test]
    fn lists() {
        assert_eq!(parse_cidr_list(""), Ok(vec![]));
        assert_eq!(parse_cidr_list("  "), Ok(vec![]));
        assert_eq!(
            parse_cidr_list("10.0.0.0/8, fd00::/8,10.0.0.0/8"),
            Ok(vec![cidr("10.0.0.0/8"), cidr("fd00::/8")])
        );
        assert!(parse_cidr_list("10.0.0.0/8,,fd00::/8").is_err());
        assert!(parse_cidr_list("10.0.0.0/8,").is_err());
        let err = parse_cidr_list("10.0.0.0/40").unwrap_err().to_string();
        assert!(err.contains("10.0.0.0/40") && err.contains("32"), "{err}");
    }
}
