//! The nat rules, as text: parsing what `iptables-save` prints and rendering
//! the `iptables-restore --noflush` input that programs or removes ours.
//! Nothing here runs a command, so all of it is tested on fixtures.
//!
//! Rules are rendered exactly as `iptables-save` prints them back (`-d`/`-o`/`-p`
//! first, then the matches in order, the comment quoted), so a saved rule
//! can be compared with ours as a string.

mod render;
mod save;
#[cfg(test)]
mod tests;

pub use render::{JumpPlan, cleanup_input, plan_jump, program_input};
pub use save::{Chain, Rule, Ruleset, SaveParseError, Table, is_ours, parse_save};

/// Every chain of ours starts with this; nothing else in a nat table should.
pub const CHAIN_PREFIX: &str = "DIVERT_";
/// Entered from `OUTPUT` for every outbound TCP packet; decides what to skip.
pub const OUTPUT_CHAIN: &str = "DIVERT_OUTPUT";
/// Holds the single REDIRECT to the proxy port; jumped to by the chains above.
pub const REDIRECT_CHAIN: &str = "DIVERT_REDIRECT";
/// Entered from `PREROUTING` for every TCP connection coming into the pod;
/// skips the proxy's own ports and the skipped ones, redirects the rest to
/// the inbound port.
pub const INBOUND_CHAIN: &str = "DIVERT_INBOUND";

/// Which traffic a set of rules captures: what the pod sends
/// (`OUTPUT → DIVERT_OUTPUT → DIVERT_REDIRECT`) and what comes into it
/// (`PREROUTING → DIVERT_INBOUND`). Each has its hook, its chain and its
/// rules; programming declares every chain and plans each hook's jump, and
/// cleanup removes any `DIVERT_` chain and the jumps into it.
pub use divert_core::direction::Direction;

/// Where each direction's rules hang in the nat table.
pub trait Hooked {
    /// The built-in nat chain that jumps into ours.
    fn hook(self) -> &'static str;
    /// Our chain that the hook jumps to.
    fn entry_chain(self) -> &'static str;
}

impl Hooked for Direction {
    fn hook(self) -> &'static str {
        match self {
            Direction::Outbound => "OUTPUT",
            // Connections from other hosts and pods; the pod's own
            // connections to itself go through OUTPUT and loopback instead.
            Direction::Inbound => "PREROUTING",
        }
    }

    fn entry_chain(self) -> &'static str {
        match self {
            Direction::Outbound => OUTPUT_CHAIN,
            Direction::Inbound => INBOUND_CHAIN,
        }
    }
}

/// Every direction, in the order they are programmed.
pub const DIRECTIONS: [Direction; 2] = Direction::ALL;
