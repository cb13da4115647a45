//! Parsing what `iptables-save` prints: the tables, their chains and rules,
//! as far as telling ours from everyone else's needs.

use super::CHAIN_PREFIX;

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
    pub(super) fn targets_ours(&self) -> bool {
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
pub(super) fn tokenize(spec: &str) -> Result<Vec<String>, &'static str> {
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
