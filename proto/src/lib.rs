//! Divert's gRPC APIs.
//!
//! - `discovery::v1`: the routing table, streamed from the controller to every
//!   proxy (`Watch`), and the list of connected proxies for `divert check`.
//! - `demo::v1`: the Movies demo's catalog service, used by `divert demo` and by
//!   the end-to-end tests to drive real gRPC calls through the proxy.

pub mod demo {
    pub mod v1 {
        tonic::include_proto!("divert.demo.v1");
    }
}

pub mod discovery {
    pub mod v1 {
        tonic::include_proto!("divert.discovery.v1");
    }
}
