//! Which way a connection goes through a pod's proxy: sent by the pod
//! (outbound) or coming into it (inbound). One vocabulary for the iptables
//! rules that redirect each, the proxy's listeners and routing, and what
//! they report.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The pod's own connections, to other services: routed by the rule's
    /// steps 1–6.
    Outbound,
    /// Connections to the pod, from anywhere: delivered to the app, or to
    /// the key's copy of the pod's service (step 7).
    Inbound,
}

impl Direction {
    /// Both, in the order they are programmed and reported.
    pub const ALL: [Direction; 2] = [Direction::Outbound, Direction::Inbound];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
