//! Rendering our rules: the `iptables-restore --noflush` input that programs
//! them, or removes them, exactly as `iptables-save` prints them back.

use std::fmt;

use super::{
    DIRECTIONS, Direction, Hooked, INBOUND_CHAIN, OUTPUT_CHAIN, REDIRECT_CHAIN, Rule, Table,
    is_ours,
};
use crate::{Family, Settings, ports};

/// A rule of ours: ip header matches and extension matches as iptables-save
/// prints them, then our comment, then the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct OurRule {
    chain: &'static str,
    matches: String,
    why: String,
    target: String,
}

impl OurRule {
    fn new(
        chain: &'static str,
        matches: impl Into<String>,
        why: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        OurRule {
            chain,
            matches: matches.into(),
            why: why.into(),
            target: target.into(),
        }
    }

    /// Exactly the text after `-A <chain> ` that iptables-save prints.
    fn spec(&self) -> String {
        let comment = save_quote(&format!("divert: {}", self.why));
        let mut spec = String::new();
        if !self.matches.is_empty() {
            spec.push_str(&self.matches);
            spec.push(' ');
        }
        spec.push_str(&format!(
            "-m comment --comment {comment} -j {}",
            self.target
        ));
        spec
    }
}

impl fmt::Display for OurRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {} {}", self.chain, self.spec())
    }
}

/// Quotes a string as iptables-save does (libxtables `xtables_save_string`):
/// bare if it is only `[A-Za-z0-9_-]`, else in double quotes with `"`, `\`
/// and `'` escaped.
pub(super) fn save_quote(s: &str) -> String {
    let bare = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        return s.to_string();
    }
    let mut quoted = String::from("\"");
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '\'') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// The jump from the built-in hook into our chain, in its only accepted form.
pub(super) fn hook_jump(direction: Direction) -> OurRule {
    OurRule::new(
        direction.hook(),
        "-p tcp",
        direction.as_str(),
        direction.entry_chain(),
    )
}

/// The rules of our chains for one direction and family, in order.
pub(super) fn direction_rules(
    settings: &Settings,
    family: Family,
    direction: Direction,
) -> Vec<OurRule> {
    match direction {
        Direction::Outbound => outbound_rules(settings, family),
        Direction::Inbound => inbound_rules(settings),
    }
}

/// Connections coming into the pod go to the inbound port, except those to
/// the proxy's own ports (its listeners and admin server, which kubelet
/// probes) and to the skipped ports. The same in both families.
///
/// Only connections to the pod's own addresses count: a packet for another
/// address that is routed through the pod (any pod can route through a
/// neighbour) must not become a connection the proxy makes from the pod,
/// with the pod's address and the proxy's exemption from its own rules.
pub(super) fn inbound_rules(settings: &Settings) -> Vec<OurRule> {
    let chain = INBOUND_CHAIN;
    // Each is a port (`Settings::check`), so none is dropped here.
    let mut own = [
        settings.proxy_port,
        settings.inbound_port,
        settings.admin_port,
    ];
    own.sort_unstable();
    let own: Vec<ports::PortRange> = own
        .into_iter()
        .filter_map(|p| ports::PortRange::single(p).ok())
        .collect();
    let mut rules = vec![OurRule::new(
        chain,
        "-p tcp -m addrtype ! --dst-type LOCAL",
        "not to this pod",
        "RETURN",
    )];
    rules.extend(return_for_ports(chain, &own, "proxy ports"));
    rules.extend(return_for_ports(
        chain,
        &settings.skip_inbound_ports,
        "skip inbound ports",
    ));
    rules.push(OurRule::new(
        chain,
        "-p tcp",
        "to the inbound proxy",
        format!("REDIRECT --to-ports {}", settings.inbound_port),
    ));
    rules
}

/// `RETURN` for TCP to `ports`, in as few multiport rules as fit.
fn return_for_ports(
    chain: &'static str,
    ports: &[ports::PortRange],
    why: &'static str,
) -> impl Iterator<Item = OurRule> {
    ports::multiport_chunks(ports)
        .into_iter()
        .map(move |dports| {
            OurRule::new(
                chain,
                format!("-p tcp -m multiport --dports {dports}"),
                why,
                "RETURN",
            )
        })
}

pub(super) fn outbound_rules(settings: &Settings, family: Family) -> Vec<OurRule> {
    let chain = OUTPUT_CHAIN;
    let mut rules = vec![OurRule::new(
        chain,
        format!("-m owner --uid-owner {}", settings.proxy_uid),
        "proxy uid",
        "RETURN",
    )];
    if let Some(gid) = settings.proxy_gid {
        rules.push(OurRule::new(
            chain,
            format!("-m owner --gid-owner {gid}"),
            "proxy gid",
            "RETURN",
        ));
    }
    // Loopback also carries connections to the pod's own addresses.
    rules.push(OurRule::new(chain, "-o lo", "loopback", "RETURN"));
    rules.extend(return_for_ports(
        chain,
        &settings.skip_outbound_ports,
        "skip outbound ports",
    ));
    for cidr in settings
        .skip_outbound_cidrs
        .iter()
        .filter(|c| c.family() == family)
    {
        rules.push(OurRule::new(
            chain,
            format!("-d {cidr}"),
            "skip outbound cidr",
            "RETURN",
        ));
    }
    if settings.include_outbound_cidrs.is_empty() {
        rules.push(OurRule::new(
            chain,
            "-p tcp",
            "redirect outbound",
            REDIRECT_CHAIN,
        ));
    } else {
        // An include list limits redirection to what it names; a family it
        // names nothing of is not redirected at all.
        for cidr in settings
            .include_outbound_cidrs
            .iter()
            .filter(|c| c.family() == family)
        {
            rules.push(OurRule::new(
                chain,
                format!("-d {cidr}"),
                "include outbound cidr",
                REDIRECT_CHAIN,
            ));
        }
    }
    rules.push(OurRule::new(
        REDIRECT_CHAIN,
        "-p tcp",
        "to the proxy",
        format!("REDIRECT --to-ports {}", settings.proxy_port),
    ));
    rules
}

/// The chains we declare (and so create or flush) when programming.
pub(super) fn declared_chains() -> Vec<&'static str> {
    let mut chains: Vec<&'static str> = DIRECTIONS.iter().map(|d| d.entry_chain()).collect();
    chains.push(REDIRECT_CHAIN);
    chains
}

/// What to do about the hook's jumps into our chains.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JumpPlan {
    /// Saved specs of hook rules to delete (`-D <hook> <spec>`), in order.
    pub delete: Vec<String>,
    /// Whether the canonical jump must be appended.
    pub add: bool,
}

/// Keeps the hook's jump if it is there exactly once in canonical form;
/// otherwise deletes every hook rule that targets one of our chains and adds
/// the canonical jump. So a rerun changes nothing, and duplicates or older
/// forms converge to one.
pub fn plan_jump(nat: &Table, direction: Direction) -> JumpPlan {
    let canonical = hook_jump(direction).spec();
    let ours: Vec<&Rule> = nat
        .rules
        .iter()
        .filter(|r| r.chain == direction.hook() && r.targets_ours())
        .collect();
    match ours.as_slice() {
        [only] if only.spec == canonical => JumpPlan::default(),
        _ => JumpPlan {
            delete: ours.iter().map(|r| r.spec.clone()).collect(),
            add: true,
        },
    }
}

/// The `iptables-restore --noflush` input that programs our rules for one
/// family, given the family's current nat table.
///
/// Declaring our chains creates them or, if they exist, flushes them (that is
/// what a chain line means under `--noflush`), so our own rules are replaced
/// wholesale; only the hook's jump needs [`plan_jump`].
pub fn program_input(settings: &Settings, family: Family, nat: &Table) -> String {
    let mut out = String::from("*nat\n");
    for chain in declared_chains() {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    let plans: Vec<(Direction, JumpPlan)> =
        DIRECTIONS.iter().map(|&d| (d, plan_jump(nat, d))).collect();
    for (direction, plan) in &plans {
        for spec in &plan.delete {
            out.push_str(&format!("-D {} {spec}\n", direction.hook()));
        }
    }
    for &direction in &DIRECTIONS {
        for rule in direction_rules(settings, family, direction) {
            out.push_str(&format!("{rule}\n"));
        }
    }
    for (direction, plan) in &plans {
        if plan.add {
            out.push_str(&format!("{}\n", hook_jump(*direction)));
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// The `iptables-restore --noflush` input that removes everything of ours
/// from a nat table and nothing else, or `None` if nothing of ours is there.
///
/// Ours is every chain named `DIVERT_…` and every rule elsewhere that jumps
/// to one (normally only the built-in hooks do; a foreign chain's jump has
/// to go too, or our chain could not be deleted). Chains are flushed before
/// any is deleted, since they refer to each other.
pub fn cleanup_input(nat: &Table) -> Option<String> {
    let chains: Vec<&str> = nat
        .chains
        .iter()
        .filter(|c| !c.is_builtin() && is_ours(&c.name))
        .map(|c| c.name.as_str())
        .collect();
    let jumps: Vec<&Rule> = nat
        .rules
        .iter()
        .filter(|r| !is_ours(&r.chain) && r.targets_ours())
        .collect();
    if chains.is_empty() && jumps.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for rule in jumps {
        out.push_str(&format!("-D {} {}\n", rule.chain, rule.spec));
    }
    for chain in &chains {
        out.push_str(&format!("-F {chain}\n"));
    }
    for chain in &chains {
        out.push_str(&format!("-X {chain}\n"));
    }
    out.push_str("COMMIT\n");
    Some(out)
}
