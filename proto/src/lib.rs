//! Divert's gRPC APIs.
//!
//! - `discovery::v1`: the routing table, streamed from the controller to every
//!   proxy (`Watch`), and the list of connected proxies for `divert check`.
//! - `tap::v1`: live routing decisions from a proxy, or from the controller
//!   merging many proxies (`divert tap`).
//! - `demo::v1`: the Movies demo's catalog service, used by `divert demo` and by
//!   the end-to-end tests to drive real gRPC calls through the proxy.

#![forbid(unsafe_code)]

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

pub mod tap {
    pub mod v1 {
        tonic::include_proto!("divert.tap.v1");
    }
}
