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

/// Which traffic a set of rules captures.
///
/// Only outbound exists today: `OUTPUT → DIVERT_OUTPUT → DIVERT_REDIRECT`.
/// Inbound redirection is planned as another direction with the same shape,
/// `PREROUTING → DIVERT_INBOUND → REDIRECT --to-ports <inbound port>`: a new
/// variant here (its hook, chain and comment in the methods below), its rules
/// in `direction_rules` and an entry in [`DIRECTIONS`]. Programming then
/// declares its chain and plans its hook jump like outbound's, and cleanup
/// already removes any `DIVERT_` chain and the jumps into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Outbound,
}

impl Direction {
    /// The built-in nat chain that jumps into ours.
    pub fn hook(self) -> &'static str {
        match self {
            Direction::Outbound => "OUTPUT",
        }
    }

    /// Our chain that the hook jumps to.
    pub fn entry_chain(self) -> &'static str {
        match self {
            Direction::Outbound => OUTPUT_CHAIN,
        }
    }

    /// The comment on the hook's jump.
    fn why(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
        }
    }
}

/// The directions programmed today.
pub const DIRECTIONS: [Direction; 1] = [Direction::Outbound];
