//! Proves the rules work: this process listens on the proxy port, connects
//! to an outside address, and checks that the connection arrives at the
//! listener with that address as its original destination.
//!
//! Blocking std sockets and socket timeouts: it runs once, in an init
//! container, and takes milliseconds when the rules are right.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::{
    Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream,
};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::socket::{SockaddrIn, SockaddrIn6, getsockopt, sockopt};

use crate::{Settings, SettingsError};

/// TEST-NET-1 (RFC 5737): routable by a default route, never a real host, so
/// only redirection can answer it.
pub const DEFAULT_ADDRESS: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 80));
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to validate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidateSettings {
    /// Where to connect; redirection must catch it.
    pub address: SocketAddr,
    /// How long the whole check may take.
    pub timeout: Duration,
}

impl Default for ValidateSettings {
    fn default() -> Self {
        ValidateSettings {
            address: DEFAULT_ADDRESS,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// What a successful validation saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validated {
    pub original_destination: SocketAddr,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(
        "this process runs as uid {uid}, the proxy uid: its connections are exempt from redirection by design, \
         so they cannot show that redirection works; validate as another user"
    )]
    ExemptUid { uid: u32 },
    #[error(
        "this process runs as gid {gid}, the proxy gid: its connections are exempt from redirection by design, \
         so they cannot show that redirection works; validate as another group"
    )]
    ExemptGid { gid: u32 },
    #[error(
        "cannot listen on port {port}: it is already in use; validation needs the proxy port free (is the proxy already running?)"
    )]
    PortInUse { port: u16 },
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: io::Error,
    },
    #[error(
        "no route to {address}: the pod has no default route; pass --validate-address with an address it has a route to"
    )]
    NoRoute { address: SocketAddr },
    #[error(
        "the connection to {address} was refused: it did not reach port {port} (it was redirected to another \
         port where nothing listens, or not redirected and refused); check that divert init ran in this pod \
         with --proxy-port {port}, and the rules (iptables-save -t nat)"
    )]
    Refused { address: SocketAddr, port: u16 },
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: SocketAddr,
        source: io::Error,
    },
    #[error(
        "outbound connections are not redirected to port {port} ({evidence}); \
         check that divert init ran in this pod and the rules (iptables-save -t nat)"
    )]
    NotRedirected {
        port: u16,
        /// What showed it, e.g. "the connection to 192.0.2.1:80 timed out".
        evidence: String,
    },
    #[error(
        "cannot read the original destination (SO_ORIGINAL_DST) of the redirected connection: {0}"
    )]
    OriginalDst(nix::Error),
    #[error(
        "a connection to {expected} reached port {port} with original destination {got}: \
         something other than divert's rules redirects it"
    )]
    WrongOriginalDst {
        expected: SocketAddr,
        got: SocketAddr,
        port: u16,
    },
    #[error("the redirected connection did not carry the token back and forth ({0})")]
    Echo(String),
}

/// Refuses a validate address the rules deliberately do not redirect, so the
/// check could only fail (or, for the proxy port, pass by accident).
pub fn check_address(settings: &Settings, v: &ValidateSettings) -> Result<(), SettingsError> {
    let address = v.address;
    let ip = address.ip();
    let bad = |message: String| {
        Err(SettingsError {
            flag: "--validate-address",
            message,
        })
    };
    if address.port() == 0 {
        return bad(format!("{address} has port 0"));
    }
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return bad(format!(
            "{address} is not an outside address; loopback traffic is never redirected"
        ));
    }
    if address.port() == settings.proxy_port {
        return bad(format!(
            "{address} uses the proxy port {}: a direct connection could not be told from a redirected one",
            settings.proxy_port
        ));
    }
    if ip.is_ipv6() && !settings.ipv6 {
        return bad(format!(
            "{address} is IPv6, but --no-ipv6 leaves IPv6 unredirected"
        ));
    }
    if let Some(range) = settings
        .skip_outbound_ports
        .iter()
        .find(|r| r.contains(address.port()))
    {
        return bad(format!(
            "port {} of {address} is skipped by --skip-outbound-ports ({range})",
            address.port()
        ));
    }
    if let Some(cidr) = settings.skip_outbound_cidrs.iter().find(|c| c.contains(ip)) {
        return bad(format!(
            "{address} is in {cidr}, skipped by --skip-outbound-cidrs"
        ));
    }
    if !settings.include_outbound_cidrs.is_empty()
        && !settings
            .include_outbound_cidrs
            .iter()
            .any(|c| c.contains(ip))
    {
        return bad(format!(
            "{address} is in none of --include-outbound-cidrs, so it is not redirected"
        ));
    }
    Ok(())
}

/// Runs the check. Call [`check_address`] first.
pub fn validate(settings: &Settings, v: &ValidateSettings) -> Result<Validated, ValidateError> {
    let started = Instant::now();
    let deadline = started + v.timeout;
    let port = settings.proxy_port;
    let uid = nix::unistd::geteuid().as_raw();
    if uid == settings.proxy_uid {
        return Err(ValidateError::ExemptUid { uid });
    }
    let gid = nix::unistd::getegid().as_raw();
    if settings.proxy_gid == Some(gid) {
        return Err(ValidateError::ExemptGid { gid });
    }

    // Only the family of the address: an IPv6 wildcard listener would also
    // take IPv4 and collide with an IPv4 one.
    let listen_on = match v.address {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
    };
    let listener = TcpListener::bind(listen_on).map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => ValidateError::PortInUse { port },
        _ => ValidateError::Listen {
            address: listen_on,
            source,
        },
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ValidateError::Listen {
            address: listen_on,
            source,
        })?;

    let mut client = TcpStream::connect_timeout(&v.address, v.timeout).map_err(|source| {
        match source.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ValidateError::NotRedirected {
                port,
                evidence: format!(
                    "the connection to {} timed out after {:?}",
                    v.address, v.timeout
                ),
            },
            // Routing failed before any packet existed: nothing to redirect.
            io::ErrorKind::NetworkUnreachable => ValidateError::NoRoute { address: v.address },
            // The packet left the pod and found no host (no ARP answer, or
            // an ICMP host unreachable): a redirected one never leaves.
            io::ErrorKind::HostUnreachable => ValidateError::NotRedirected {
                port,
                evidence: format!(
                    "the connection to {} left the pod and found no host",
                    v.address
                ),
            },
            io::ErrorKind::ConnectionRefused => ValidateError::Refused {
                address: v.address,
                port,
            },
            _ => ValidateError::Connect {
                address: v.address,
                source,
            },
        }
    })?;
    let echo_error = |what: &str, e: io::Error| ValidateError::Echo(format!("{what}: {e}"));
    let client_address = client
        .local_addr()
        .map_err(|e| echo_error("client address", e))?;

    let mut server = accept_from(&listener, client_address, deadline).ok_or_else(|| {
        ValidateError::NotRedirected {
            port,
            evidence: format!(
                "something answered the connection to {}, but not on port {port}",
                v.address
            ),
        }
    })?;
    let got = original_destination(&server, v.address).map_err(ValidateError::OriginalDst)?;
    if got.ip() != v.address.ip() || got.port() != v.address.port() {
        return Err(ValidateError::WrongOriginalDst {
            expected: v.address,
            got,
            port,
        });
    }

    let token = token();
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    for stream in [&client, &server] {
        stream
            .set_read_timeout(Some(remaining))
            .map_err(|e| echo_error("socket timeout", e))?;
        stream
            .set_write_timeout(Some(remaining))
            .map_err(|e| echo_error("socket timeout", e))?;
    }
    server
        .set_nonblocking(false)
        .map_err(|e| echo_error("socket mode", e))?;
    client
        .write_all(&token)
        .map_err(|e| echo_error("send", e))?;
    let mut received = [0u8; 16];
    server
        .read_exact(&mut received)
        .map_err(|e| echo_error("receive at the listener", e))?;
    server
        .write_all(&received)
        .map_err(|e| echo_error("echo", e))?;
    let mut echoed = [0u8; 16];
    client
        .read_exact(&mut echoed)
        .map_err(|e| echo_error("receive the echo", e))?;
    if echoed != token {
        return Err(ValidateError::Echo(
            "the echo differs from the token sent".into(),
        ));
    }
    Ok(Validated {
        original_destination: got,
        elapsed: started.elapsed(),
    })
}

/// Waits until `deadline` for the connection from `peer`; others (some stray
/// client of the port) are closed and ignored.
fn accept_from(listener: &TcpListener, peer: SocketAddr, deadline: Instant) -> Option<TcpStream> {
    loop {
        match listener.accept() {
            Ok((stream, from)) if from == peer => return Some(stream),
            Ok(_) => {}
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                if Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return None,
        }
    }
}

/// The destination the connection had before REDIRECT rewrote it.
fn original_destination(stream: &TcpStream, dialed: SocketAddr) -> nix::Result<SocketAddr> {
    Ok(match dialed {
        SocketAddr::V4(_) => {
            let sin = getsockopt(stream, sockopt::OriginalDst)?;
            SocketAddr::V4(SocketAddrV4::from(SockaddrIn::from(sin)))
        }
        SocketAddr::V6(_) => {
            let sin6 = getsockopt(stream, sockopt::Ip6tOriginalDst)?;
            SocketAddr::V6(SocketAddrV6::from(SockaddrIn6::from(sin6)))
        }
    })
}

/// 16 unpredictable bytes: std's per-process random hash keys, mixed with the
/// pid and the time. Not cryptographic; it only has to be unguessable by
/// accident.
fn token() -> [u8; 16] {
    let mut token = [0u8; 16];
    for (i, half) in token.chunks_mut(8).enumerate() {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_usize(i);
        if let Ok(t) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
            hasher.write_u128(t.as_nanos());
        }
        half.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    token
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cidr::parse_cidr_list;
    use crate::ports::parse_port_list;

    fn with(address: &str) -> ValidateSettings {
        ValidateSettings {
            address: address.parse().unwrap_or(DEFAULT_ADDRESS),
            ..ValidateSettings::default()
        }
    }

    fn refused(settings: &Settings, address: &str) -> String {
        match check_address(settings, &with(address)) {
            Ok(()) => panic!("{address} accepted"),
            Err(e) => {
                assert_eq!(e.flag, "--validate-address");
                e.message
            }
        }
    }

    #[test]
    fn default_address_is_fine_by_default() {
        assert!(check_address(&Settings::default(), &ValidateSettings::default()).is_ok());
        assert!(check_address(&Settings::default(), &with("[2001:db8::1]:80")).is_ok());
    }

    #[test]
    fn refuses_addresses_the_rules_do_not_redirect() {
        let s = Settings {
            skip_outbound_ports: parse_port_list("22,8000-8100").unwrap_or_default(),
            skip_outbound_cidrs: parse_cidr_list("192.0.2.0/28,2001:db8::/32").unwrap_or_default(),
            ..Settings::default()
        };
        assert!(refused(&s, "192.0.2.1:80").contains("192.0.2.0/28"));
        assert!(refused(&s, "198.51.100.1:8080").contains("--skip-outbound-ports (8000:8100)"));
        assert!(refused(&s, "[2001:db8::1]:80").contains("--skip-outbound-cidrs"));
        assert!(refused(&s, "127.0.0.1:80").contains("loopback"));
        assert!(refused(&s, "198.51.100.1:4140").contains("proxy port"));
        assert!(refused(&s, "198.51.100.1:0").contains("port 0"));
        assert!(check_address(&s, &with("198.51.100.1:80")).is_ok());

        let include = Settings {
            include_outbound_cidrs: parse_cidr_list("10.96.0.0/12").unwrap_or_default(),
            ..Settings::default()
        };
        assert!(refused(&include, "192.0.2.1:80").contains("--include-outbound-cidrs"));
        assert!(check_address(&include, &with("10.96.0.10:80")).is_ok());

        let no_v6 = Settings {
            ipv6: false,
            ..Settings::default()
        };
        assert!(refused(&no_v6, "[2001:db8::1]:80").contains("--no-ipv6"));
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(token(), token());
    }
}
