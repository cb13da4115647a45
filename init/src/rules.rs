//! The nat rules, as text: parsing what `iptables-save` prints and rendering
//! the `iptables-restore --noflush` input that programs or removes ours.
//! Nothing here runs a command, so all of it is tested on fixtures.
//!
//! Rules are rendered exactly as `iptables-save` prints them back (`-d`/`-o`/`-p`
//! first, then the matches in order, the comment quoted), so a saved rule
//! can be compared with ours as a string.

use std::fmt;

use crate::{Family, Settings, ports};

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

// ---------------------------------------------------------------------------
// Parsing iptables-save output

/// What `iptables-save` printed: each table with its chains and rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub tables: Vec<Table>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub chains: Vec<Chain>,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// `ACCEPT`/`DROP` for built-in chains, `-` for user-defined ones.
    pub policy: String,
}

impl Chain {
    pub fn is_builtin(&self) -> bool {
        self.policy != "-"
    }
}

/// One `-A` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    /// Everything after `-A <chain> `, verbatim, so it can be fed back to
    /// `-D <chain>` and compared with a rule we render.
    pub spec: String,
    /// The `-j`/`-g` target, if any.
    pub target: Option<String>,
}

impl Rule {
    fn targets_ours(&self) -> bool {
        self.target.as_deref().is_some_and(is_ours)
    }
}

/// Whether a chain name is in our namespace.
pub fn is_ours(chain: &str) -> bool {
    chain.starts_with(CHAIN_PREFIX)
}

impl Ruleset {
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Whether anything beyond empty built-in chains is present: a rule or a
    /// user-defined chain, in any table.
    pub fn has_content(&self) -> bool {
        self.tables
            .iter()
            .any(|t| !t.rules.is_empty() || t.chains.iter().any(|c| !c.is_builtin()))
    }
}

impl Table {
    /// The nat table as it is before anything was added to it.
    pub fn empty_nat() -> Table {
        Table {
            name: "nat".into(),
            chains: ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]
                .into_iter()
                .map(|name| Chain {
                    name: name.into(),
                    policy: "ACCEPT".into(),
                })
                .collect(),
            rules: Vec::new(),
        }
    }
}

/// A line of `iptables-save` output we do not understand. We refuse to go on
/// rather than guess, since the result decides what we delete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line_no}: {reason}: {line:?}")]
pub struct SaveParseError {
    pub line_no: usize,
    pub line: String,
    pub reason: &'static str,
}

/// Parses `iptables-save` (or `ip6tables-save`) output.
pub fn parse_save(text: &str) -> Result<Ruleset, SaveParseError> {
    let mut ruleset = Ruleset::default();
    let mut current: Option<Table> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        let error = |reason| SaveParseError {
            line_no: index + 1,
            line: line.to_string(),
            reason,
        };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            if current.is_some() {
                return Err(error("a table starts before the previous one's COMMIT"));
            }
            current = Some(Table {
                name: name.to_string(),
                ..Table::default()
            });
            continue;
        }
        let Some(table) = current.as_mut() else {
            return Err(error("expected a table (`*nat`) or a comment"));
        };
        if line == "COMMIT" {
            ruleset.tables.extend(current.take());
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut words = decl.split_whitespace();
            match (words.next(), words.next()) {
                (Some(name), Some(policy)) => table.chains.push(Chain {
                    name: name.to_string(),
                    policy: policy.to_string(),
                }),
                _ => return Err(error("a chain declaration without a policy")),
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
            let words = tokenize(spec).map_err(error)?;
            let target = words
                .iter()
                .position(|w| matches!(w.as_str(), "-j" | "--jump" | "-g" | "--goto"))
                .and_then(|i| words.get(i + 1))
                .cloned();
            table.rules.push(Rule {
                chain: chain.to_string(),
                spec: spec.to_string(),
                target,
            });
        } else {
            return Err(error("not a chain, a rule or COMMIT"));
        }
    }
    if let Some(table) = current {
        return Err(SaveParseError {
            line_no: text.lines().count(),
            line: format!("*{}", table.name),
            reason: "the table has no COMMIT",
        });
    }
    Ok(ruleset)
}

/// Splits a rule into words the way iptables-restore does: whitespace
/// separates, double quotes group, a backslash escapes the next character
/// inside quotes.
fn tokenize(spec: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut chars = spec.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(words);
        }
        let mut word = String::new();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            match c {
                '"' => quoted = !quoted,
                '\\' if quoted => word.extend(chars.next()),
                c if c.is_whitespace() && !quoted => break,
                c => word.push(c),
            }
        }
        if quoted {
            return Err("an unterminated quote");
        }
        words.push(word);
    }
}

// ---------------------------------------------------------------------------
// Rendering our rules

/// A rule of ours: ip header matches and extension matches as iptables-save
/// prints them, then our comment, then the target.
#[derive(Clone, Debug, PartialEq, Eq)]
struct OurRule {
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
fn save_quote(s: &str) -> String {
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
fn hook_jump(direction: Direction) -> OurRule {
    OurRule::new(
        direction.hook(),
        "-p tcp",
        direction.why(),
        direction.entry_chain(),
    )
}

/// The rules of our chains for one direction and family, in order.
fn direction_rules(settings: &Settings, family: Family, direction: Direction) -> Vec<OurRule> {
    match direction {
        Direction::Outbound => outbound_rules(settings, family),
    }
}

fn outbound_rules(settings: &Settings, family: Family) -> Vec<OurRule> {
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
    for dports in ports::multiport_chunks(&settings.skip_outbound_ports) {
        rules.push(OurRule::new(
            chain,
            format!("-p tcp -m multiport --dports {dports}"),
            "skip outbound ports",
            "RETURN",
        ));
    }
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
fn declared_chains() -> Vec<&'static str> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cidr::parse_cidr_list;
    use crate::ports::parse_port_list;

    /// Real `iptables-legacy-save` output after `divert-proxy init --proxy-gid 2103
    /// --skip-outbound-ports 22 --skip-outbound-cidrs 10.0.0.0/8`, with a
    /// foreign nat rule and a foreign filter table present.
    const LEGACY_PROGRAMMED: &str = include_str!("../testdata/legacy-programmed.txt");
    /// Real `iptables-nft-save` output: our jump twice and once in an older
    /// form, beside foreign rules and a foreign chain.
    const NFT_DUPLICATED: &str = include_str!("../testdata/nft-duplicated.txt");
    /// Real `ip6tables-nft-save -t nat` output with our rules.
    const NFT6_PROGRAMMED: &str = include_str!("../testdata/nft6-programmed.txt");
    /// Real `iptables-nft-save -t nat` output of a fresh network namespace.
    const NFT_FRESH: &str = include_str!("../testdata/nft-fresh.txt");

    fn settings() -> Settings {
        Settings::default()
    }

    fn nat(text: &str) -> Table {
        match parse_save(text) {
            Ok(rs) => rs.table("nat").cloned().unwrap_or_else(Table::empty_nat),
            Err(e) => panic!("fixture does not parse: {e}"),
        }
    }

    #[test]
    fn renders_defaults_v4() {
        let input = program_input(&settings(), Family::V4, &Table::empty_nat());
        assert_eq!(
            input,
            r#"*nat
:DIVERT_OUTPUT - [0:0]
:DIVERT_REDIRECT - [0:0]
-A DIVERT_OUTPUT -m owner --uid-owner 2102 -m comment --comment "divert: proxy uid" -j RETURN
-A DIVERT_OUTPUT -o lo -m comment --comment "divert: loopback" -j RETURN
-A DIVERT_OUTPUT -p tcp -m comment --comment "divert: redirect outbound" -j DIVERT_REDIRECT
-A DIVERT_REDIRECT -p tcp -m comment --comment "divert: to the proxy" -j REDIRECT --to-ports 4140
-A OUTPUT -p tcp -m comment --comment "divert: outbound" -j DIVERT_OUTPUT
COMMIT
"#
        );
    }

    #[test]
    fn renders_gid_ports_and_cidrs_per_family() {
        let s = Settings {
            proxy_port: 15001,
            proxy_uid: 1337,
            proxy_gid: Some(1338),
            skip_outbound_ports: parse_port_list("22,6000-6010").unwrap_or_default(),
            skip_outbound_cidrs: parse_cidr_list("10.0.0.0/8,fd00::/8,169.254.169.254")
                .unwrap_or_default(),
            ..Settings::default()
        };
        let v4 = program_input(&s, Family::V4, &Table::empty_nat());
        assert_eq!(
            v4,
            r#"*nat
:DIVERT_OUTPUT - [0:0]
:DIVERT_REDIRECT - [0:0]
-A DIVERT_OUTPUT -m owner --uid-owner 1337 -m comment --comment "divert: proxy uid" -j RETURN
-A DIVERT_OUTPUT -m owner --gid-owner 1338 -m comment --comment "divert: proxy gid" -j RETURN
-A DIVERT_OUTPUT -o lo -m comment --comment "divert: loopback" -j RETURN
-A DIVERT_OUTPUT -p tcp -m multiport --dports 22,6000:6010 -m comment --comment "divert: skip outbound ports" -j RETURN
-A DIVERT_OUTPUT -d 10.0.0.0/8 -m comment --comment "divert: skip outbound cidr" -j RETURN
-A DIVERT_OUTPUT -d 169.254.169.254/32 -m comment --comment "divert: skip outbound cidr" -j RETURN
-A DIVERT_OUTPUT -p tcp -m comment --comment "divert: redirect outbound" -j DIVERT_REDIRECT
-A DIVERT_REDIRECT -p tcp -m comment --comment "divert: to the proxy" -j REDIRECT --to-ports 15001
-A OUTPUT -p tcp -m comment --comment "divert: outbound" -j DIVERT_OUTPUT
COMMIT
"#
        );
        let v6 = program_input(&s, Family::V6, &Table::empty_nat());
        assert!(
            v6.contains("-A DIVERT_OUTPUT -d fd00::/8 -m comment"),
            "{v6}"
        );
        assert!(!v6.contains("10.0.0.0"), "{v6}");
        assert!(v6.contains("--dports 22,6000:6010"), "{v6}");
    }

    #[test]
    fn splits_skip_ports_over_fifteen_entries() {
        let s = Settings {
            skip_outbound_ports: parse_port_list("1,2,3,4,5,6,7,8,9,10,11,12,13,14,15-16,17")
                .unwrap_or_default(),
            ..Settings::default()
        };
        let input = program_input(&s, Family::V4, &Table::empty_nat());
        let port_rules: Vec<&str> = input.lines().filter(|l| l.contains("multiport")).collect();
        assert_eq!(port_rules.len(), 2, "{input}");
        // 14 ports leave one entry free; the range needs two.
        assert!(
            port_rules[0].contains("--dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14 "),
            "{input}"
        );
        assert!(port_rules[1].contains("--dports 15:16,17 "), "{input}");
    }

    #[test]
    fn include_cidrs_limit_redirection_per_family() {
        let s = Settings {
            include_outbound_cidrs: parse_cidr_list("10.96.0.0/12,10.244.0.0/16")
                .unwrap_or_default(),
            skip_outbound_cidrs: parse_cidr_list("10.96.0.1").unwrap_or_default(),
            ..Settings::default()
        };
        let v4 = program_input(&s, Family::V4, &Table::empty_nat());
        let tail: Vec<&str> = v4
            .lines()
            .filter(|l| l.starts_with("-A DIVERT_OUTPUT -d"))
            .collect();
        assert_eq!(
            tail,
            [
                r#"-A DIVERT_OUTPUT -d 10.96.0.1/32 -m comment --comment "divert: skip outbound cidr" -j RETURN"#,
                r#"-A DIVERT_OUTPUT -d 10.96.0.0/12 -m comment --comment "divert: include outbound cidr" -j DIVERT_REDIRECT"#,
                r#"-A DIVERT_OUTPUT -d 10.244.0.0/16 -m comment --comment "divert: include outbound cidr" -j DIVERT_REDIRECT"#,
            ]
        );
        assert!(
            !v4.contains("redirect outbound"),
            "no catch-all with an include list: {v4}"
        );
        // IPv6 has no include CIDR: its chains exist but redirect nothing.
        let v6 = program_input(&s, Family::V6, &Table::empty_nat());
        assert!(!v6.contains("-j DIVERT_REDIRECT"), "{v6}");
        assert!(v6.contains("-A OUTPUT -p tcp"), "{v6}");
    }

    #[test]
    fn our_rendering_is_what_iptables_save_prints() {
        // The fixture was produced by programming these settings for real.
        let s = Settings {
            proxy_gid: Some(2103),
            skip_outbound_ports: parse_port_list("22").unwrap_or_default(),
            skip_outbound_cidrs: parse_cidr_list("10.0.0.0/8").unwrap_or_default(),
            ..Settings::default()
        };
        let rendered = program_input(&s, Family::V4, &Table::empty_nat());
        let ours = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with("-A") && l.contains("divert:"))
                .map(String::from)
                .collect()
        };
        let mut want = ours(&rendered);
        let mut got = ours(LEGACY_PROGRAMMED);
        want.sort();
        got.sort();
        assert_eq!(got, want);
        let v6 = program_input(&Settings::default(), Family::V6, &Table::empty_nat());
        let (mut want, mut got) = (ours(&v6), ours(NFT6_PROGRAMMED));
        want.sort();
        got.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn parses_real_save_output() {
        let rs = match parse_save(LEGACY_PROGRAMMED) {
            Ok(rs) => rs,
            Err(e) => panic!("{e}"),
        };
        let names: Vec<&str> = rs.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["filter", "nat"]);
        let nat = nat(LEGACY_PROGRAMMED);
        let user: Vec<&str> = nat
            .chains
            .iter()
            .filter(|c| !c.is_builtin())
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(user, ["DIVERT_OUTPUT", "DIVERT_REDIRECT"]);
        let jump = nat
            .rules
            .iter()
            .find(|r| r.chain == "OUTPUT" && r.targets_ours());
        assert_eq!(
            jump.map(|r| r.spec.as_str()),
            Some(r#"-p tcp -m comment --comment "divert: outbound" -j DIVERT_OUTPUT"#)
        );
        let redirect = nat.rules.iter().find(|r| r.chain == REDIRECT_CHAIN);
        assert_eq!(redirect.and_then(|r| r.target.as_deref()), Some("REDIRECT"));
        assert!(rs.has_content());

        let fresh = match parse_save(NFT_FRESH) {
            Ok(rs) => rs,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(fresh.table("nat"), Some(&Table::empty_nat()));
        assert!(!fresh.has_content());
        assert_eq!(parse_save(""), Ok(Ruleset::default()));
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for bad in [
            "-A OUTPUT -j RETURN\n",
            "*nat\n-A OUTPUT -j RETURN\n",
            "*nat\n-A OUTPUT -m comment --comment \"open\n",
            "*nat\n:OUTPUT\nCOMMIT\n",
            "*nat\niptables: something odd\nCOMMIT\n",
        ] {
            assert!(parse_save(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tokenizes_quotes_and_escapes() {
        assert_eq!(
            tokenize(r#"-m comment --comment "a \"-j\" b" -j X"#),
            Ok(vec!["-m", "comment", "--comment", r#"a "-j" b"#, "-j", "X"]
                .into_iter()
                .map(String::from)
                .collect())
        );
        // A `-j` inside a comment is not the target.
        let rs = parse_save(
            "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -m comment --comment \"-j DIVERT_OUTPUT\" -j RETURN\nCOMMIT\n",
        );
        let target = rs.ok().and_then(|rs| rs.tables[0].rules[0].target.clone());
        assert_eq!(target.as_deref(), Some("RETURN"));
    }

    #[test]
    fn quotes_like_iptables_save() {
        assert_eq!(save_quote("divert"), "divert");
        assert_eq!(save_quote("divert: outbound"), "\"divert: outbound\"");
        assert_eq!(save_quote("it's \"x\""), r#""it\'s \"x\"""#);
    }

    #[test]
    fn jump_present_once_is_kept() {
        let nat = nat(LEGACY_PROGRAMMED);
        assert_eq!(plan_jump(&nat, Direction::Outbound), JumpPlan::default());
        let input = program_input(&settings(), Family::V4, &nat);
        assert!(!input.contains("-A OUTPUT"), "{input}");
        assert!(!input.contains("-D "), "{input}");
    }

    #[test]
    fn duplicated_or_other_jumps_are_replaced_by_one() {
        let nat = nat(NFT_DUPLICATED);
        let plan = plan_jump(&nat, Direction::Outbound);
        assert_eq!(
            plan.delete,
            [
                r#"-p tcp -m comment --comment "divert: outbound" -j DIVERT_OUTPUT"#,
                r#"-p tcp -m comment --comment "divert: outbound" -j DIVERT_OUTPUT"#,
                "-j DIVERT_OUTPUT",
            ]
        );
        assert!(plan.add);
        let input = program_input(&settings(), Family::V4, &nat);
        assert_eq!(input.matches("-D OUTPUT").count(), 3, "{input}");
        assert_eq!(input.matches("-A OUTPUT").count(), 1, "{input}");
        // Foreign OUTPUT rules are left alone.
        assert!(!input.contains("udp"), "{input}");
    }

    #[test]
    fn jump_in_another_form_alone_is_replaced() {
        let nat = nat(
            "*nat\n:OUTPUT ACCEPT [0:0]\n:DIVERT_OUTPUT - [0:0]\n-A OUTPUT -j DIVERT_OUTPUT\nCOMMIT\n",
        );
        let plan = plan_jump(&nat, Direction::Outbound);
        assert_eq!(
            plan,
            JumpPlan {
                delete: vec!["-j DIVERT_OUTPUT".into()],
                add: true
            }
        );
    }

    #[test]
    fn cleanup_removes_ours_only() {
        let nat = nat(NFT_DUPLICATED);
        assert_eq!(
            cleanup_input(&nat).as_deref(),
            Some(
                r#"*nat
-D OUTPUT -p tcp -m comment --comment "divert: outbound" -j DIVERT_OUTPUT
-D OUTPUT -p tcp -m comment --comment "divert: outbound" -j DIVERT_OUTPUT
-D OUTPUT -j DIVERT_OUTPUT
-D FOREIGN -p tcp -j DIVERT_REDIRECT
-F DIVERT_OUTPUT
-F DIVERT_REDIRECT
-X DIVERT_OUTPUT
-X DIVERT_REDIRECT
COMMIT
"#
            )
        );
        assert_eq!(cleanup_input(&Table::empty_nat()), None);
        assert_eq!(cleanup_input(&self::nat(NFT_FRESH)), None);
        let foreign_only = self::nat(
            "*nat\n:OUTPUT ACCEPT [0:0]\n:MINE - [0:0]\n-A OUTPUT -p udp -j MINE\nCOMMIT\n",
        );
        assert_eq!(cleanup_input(&foreign_only), None);
    }
}
