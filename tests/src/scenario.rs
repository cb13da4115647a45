//! What the end-to-end scenario (`tests/cluster.rs`) makes, for the code
//! that must know it without running it: a real cluster's back-end
//! (`backend`) refuses to start where these namespaces exist already and
//! deletes them afterwards, so the list is defined here, once, for both.
//!
//! The scenario's steps live in the test itself: they need the binaries
//! cargo builds for integration tests (`CARGO_BIN_EXE_*`), which this
//! library cannot name.

/// The namespaces the scenario creates and deletes. `tests/cluster-e2e.sh`
/// names them too, in its comment for users.
pub const NAMESPACES: [&str; 8] = [
    "divert", "staging", "alice", "bob", "carol", "dana", "plain", "ingress",
];
