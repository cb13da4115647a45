//! The discovery-update applier: any message the controller could send
//! (any bytes that decode as a TableUpdate) becomes a patch that applies to
//! an empty table and to a full one without a panic, and the result routes.
#![no_main]

use divert_proto::discovery::v1::TableUpdate;
use divert_proxy::discovery::to_patch;
use divert_proxy::registry::parse;
use divert_proxy::table::Table;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const BASE: &str = "namespaces:\n  - name: staging\n  - { name: alice, sharedNamespace: staging }\nservices:\n  - { name: web, namespace: staging, addresses: [10.96.0.10], ports: [{ port: 80 }], endpoints: [\"10.1.0.1:8080\"] }\n  - { name: web, namespace: alice, addresses: [10.96.0.11], ports: [{ port: 80 }], endpoints: [\"10.1.0.2:8080\"] }\n";

fuzz_target!(|data: &[u8]| {
    let Ok(update) = TableUpdate::decode(data) else {
        return;
    };
    let patch = to_patch(&update);
    let Ok(spec) = parse(BASE) else {
        panic!("the base table parses");
    };
    let Ok(full) = Table::build(&spec, 1, None) else {
        panic!("the base table builds");
    };
    let empty = Table::build(&Default::default(), 1, None).unwrap_or_else(|_| panic!("empty"));
    for table in [empty, full] {
        let next = table.patch(&patch, 2);
        let dst = "10.96.0.10:80".parse().unwrap_or_else(|_| panic!("addr"));
        let _ = next.route(dst, Some("alice"), None).to_string();
        for s in &patch.services {
            for addr in &s.addresses {
                for port in &s.ports {
                    let dst = std::net::SocketAddr::new(*addr, port.port);
                    let _ = next.route(dst, Some("alice"), Some("staging")).to_string();
                    for endpoint in &port.endpoints {
                        let _ = next
                            .route_inbound(*endpoint, Some("alice"), None)
                            .to_string();
                    }
                }
            }
        }
    }
});
