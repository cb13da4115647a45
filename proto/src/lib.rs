//! Divert's gRPC APIs.
//!
//! `demo::v1` is the Movies demo's catalog service, used by `divert demo` and by
//! the end-to-end tests to drive real gRPC calls through the proxy.

pub mod demo {
    pub mod v1 {
        tonic::include_proto!("divert.demo.v1");
    }
}
