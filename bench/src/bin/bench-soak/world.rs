//! The soak's world: three pods on one bridge, as network namespaces. The
//! client pod has the init container's iptables rules and the proxy in
//! transparent mode, so every connection the driver makes from it (the
//! driver's runtime runs inside that namespace) is intercepted as an app's
//! would be; staging and alice run the upstreams. The services' cluster
//! addresses are not on the bridge: only the proxy can take a connection to
//! one anywhere.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use divert_tests::netns::{Lan, Pod, run_ok};

/// The web service's cluster address: HTTP/1.1, h2c and upgrades.
pub const WEB: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)), 80);
/// The catalog service's cluster address: gRPC.
pub const CATALOG: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 20)), 9090);
/// The database's cluster address, on a port the proxy passes through
/// opaquely (PostgreSQL's, one of its default opaque ports).
pub const DB: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 30)), 5432);

/// Services in the table besides the soak's own, renamed at every change so
/// that each swap builds and frees a table of some size.
const FILLER_SERVICES: u32 = 500;

pub struct World {
    _lan: Lan,
    pub client: Pod,
    pub staging: Pod,
    pub alice: Pod,
}

impl World {
    /// Makes the pods and programs the client pod's interception with
    /// `divert-proxy init` (`sidecar` is that binary).
    pub fn new(sidecar: &Path) -> World {
        assert!(
            divert_proxy::detect::DEFAULT_OPAQUE_PORTS.contains(&DB.port()),
            "the database port must be one the proxy passes through opaquely"
        );
        let mut lan = Lan::new();
        let client = lan.pod("soak-client");
        let staging = lan.pod("soak-staging");
        let alice = lan.pod("soak-alice");
        run_ok(client.ns.command(sidecar).arg("init"));
        World {
            _lan: lan,
            client,
            staging,
            alice,
        }
    }
}

/// Where every copy runs, and whether alice's web copy is in the table:
/// what the registry says at one moment.
#[derive(Debug, Clone)]
pub struct Layout {
    pub alice_web: bool,
    pub web_staging: SocketAddr,
    pub web_alice: SocketAddr,
    pub catalog_staging: SocketAddr,
    pub catalog_alice: SocketAddr,
    pub db_staging: SocketAddr,
    /// Names this layout's filler services.
    pub generation: u64,
}

impl Layout {
    /// The registry file for this layout.
    pub fn yaml(&self) -> String {
        let mut y = String::from(
            "namespaces:\n  - { name: staging }\n  - { name: alice, sharedNamespace: staging }\nservices:\n",
        );
        let mut service = |name: &str, ns: &str, cluster: SocketAddr, endpoint: SocketAddr| {
            let _ = writeln!(
                y,
                "  - {{ name: {name}, namespace: {ns}, addresses: ['{}'], ports: [{{ name: p, port: {} }}], endpoints: ['{endpoint}'] }}",
                cluster.ip(),
                cluster.port()
            );
        };
        service("web", "staging", WEB, self.web_staging);
        if self.alice_web {
            service("web", "alice", alice_address(WEB), self.web_alice);
        }
        service("catalog", "staging", CATALOG, self.catalog_staging);
        service(
            "catalog",
            "alice",
            alice_address(CATALOG),
            self.catalog_alice,
        );
        service("db", "staging", DB, self.db_staging);
        for i in 0..FILLER_SERVICES {
            let ip = Ipv4Addr::new(10, 97, (i / 250) as u8, (i % 250) as u8 + 1);
            let endpoint = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 1)), 80);
            service(
                &format!("filler-{}-{i}", self.generation),
                "staging",
                SocketAddr::new(IpAddr::V4(ip), 80),
                endpoint,
            );
        }
        y
    }
}

/// A divert copy's own cluster address: staging's, in 10.96.1.0/24.
fn alice_address(shared: SocketAddr) -> SocketAddr {
    let IpAddr::V4(ip) = shared.ip() else {
        return shared;
    };
    let [a, b, _, d] = ip.octets();
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, 1, d)), shared.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(alice_web: bool) -> Layout {
        let at = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 244, 0, 3)), port);
        Layout {
            alice_web,
            web_staging: at(1),
            web_alice: at(2),
            catalog_staging: at(3),
            catalog_alice: at(4),
            db_staging: at(5),
            generation: 7,
        }
    }

    #[test]
    fn a_layout_is_a_registry_the_proxy_takes() {
        for alice_web in [true, false] {
            let yaml = layout(alice_web).yaml();
            let spec = divert_proxy::registry::parse(&yaml).expect("the registry parses");
            let table =
                divert_proxy::table::Table::build(&spec, 1, None).expect("the table builds");
            let route = table.route(WEB, Some("alice"), None).to_string();
            let expected = if alice_web {
                "web.alice:80"
            } else {
                "web.staging:80"
            };
            assert_eq!(route, expected);
            assert_eq!(
                table.service_count(),
                FILLER_SERVICES as usize + 4 + usize::from(alice_web)
            );
        }
    }
}
