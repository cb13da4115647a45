//! The bottom of the crate graph: what both binaries (`divert`, the
//! controller and CLI; `divert-proxy`, the sidecar) and several libraries
//! share, so that none of them depends on another for it. Small and cheap on
//! purpose: the sidecar links all of it.

#![forbid(unsafe_code)]

pub mod accept;
#[cfg(feature = "admin")]
pub mod admin;
#[cfg(feature = "cli")]
pub mod cli;
pub mod direction;
pub mod duration;
pub mod error;
#[cfg(feature = "admin")]
pub mod idle;
pub mod logging;
pub mod names;
pub mod percent;
pub mod process;
pub mod task;
