//! The registry file loader: YAML text to a routing table. Any text gives a
//! table or an error naming a field, never a panic; a table routes, outbound
//! and inbound.
#![no_main]

use divert_proxy::registry::parse;
use divert_proxy::table::Table;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = parse(text) else {
        return;
    };
    if let Ok(table) = Table::build(&spec, 1, None) {
        for h in &spec.hosts {
            let _ = table.host_key(&h.host);
        }
        for service in &spec.services {
            for addr in &service.addresses {
                for port in &service.ports {
                    let dst = std::net::SocketAddr::new(*addr, port.port);
                    let _ = table.route(dst, Some("alice"), None).to_string();
                    let _ = table.route(dst, None, Some(&service.namespace)).to_string();
                    for endpoint in &port.endpoints {
                        let _ = table
                            .route_inbound(*endpoint, Some("alice"), Some(&service.namespace))
                            .to_string();
                    }
                }
            }
        }
    }
});
