//! The `divert` command's subcommands as library code, each with its tests
//! beside it: `main.rs` only parses the command line and calls one `main`.
//!
//! - [`check`]: is Divert installed and working in this cluster?
//! - [`install`]: the manifests the cluster needs, certificates included.
//! - [`tap`]: routing decisions, live, from one proxy or the controller;
//!   [`credentials`]: the Kubernetes credentials it presents to the controller.
//! - [`preview`]: each divert namespace's preview URLs and the services it runs.
//! - [`inject`]: the webhook's injection, applied to manifest files.
//! - [`manifest`]: the Okteto manifest's `deploy`, `destroy` and `divert`.
//! - [`workflow`]: `divert deploy` and `divert destroy`, over the manifest.
//! - [`ls`]: every divert namespace, its services, URLs, pods, age and TTL.
//! - [`controller`]: the controller's flags, over `divert_controller`.
//! - [`demo`]: the docs' Movies app on loopback, through the proxy.

#![forbid(unsafe_code)]

pub mod check;
pub mod controller;
pub mod credentials;
pub mod demo;
pub mod inject;
pub mod install;
pub mod ls;
pub mod manifest;
pub mod preview;
pub mod tap;
pub mod trace;
mod utc;
pub mod workflow;
