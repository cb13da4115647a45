//! Port lists as the flags take them (`22,80-90`) and as iptables' multiport
//! match wants them (`22,80:90`, at most 15 entries per rule).

use std::fmt;
use std::str::FromStr;

/// The most entries one `-m multiport --dports` accepts; a range counts as 2.
pub const MULTIPORT_MAX_ENTRIES: usize = 15;

/// Why a flag value is not a port, a range or a list of them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("port 0 is not a port")]
    Zero,
    #[error("range {first}-{last} is reversed; write {last}-{first}")]
    Reversed { first: u16, last: u16 },
    #[error("{input:?} is not a port or a range like 80-90")]
    NotAPort { input: String },
    #[error("{input} is not a port (1-65535)")]
    OutOfRange { input: String },
    #[error("{list:?} has an empty entry; separate ports with single commas")]
    EmptyEntry { list: String },
}

/// One port, or an inclusive range of ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    pub fn new(first: u16, last: u16) -> Result<PortRange, PortError> {
        if first == 0 || last == 0 {
            return Err(PortError::Zero);
        }
        if first > last {
            return Err(PortError::Reversed { first, last });
        }
        Ok(PortRange { first, last })
    }

    pub fn single(port: u16) -> Result<PortRange, PortError> {
        PortRange::new(port, port)
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// How many of multiport's 15 entries this takes.
    fn entries(&self) -> usize {
        if self.first == self.last { 1 } else { 2 }
    }
}

impl FromStr for PortRange {
    type Err = PortError;

    /// `80`, or a range `80-90` (`80:90`, iptables' own spelling, works too).
    fn from_str(s: &str) -> Result<PortRange, PortError> {
        let port = |p: &str| -> Result<u16, PortError> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(PortError::NotAPort {
                    input: s.to_owned(),
                });
            }
            p.parse::<u16>().map_err(|_| PortError::OutOfRange {
                input: p.to_owned(),
            })
        };
        match s.split_once(['-', ':']) {
            Some((first, last)) => PortRange::new(port(first)?, port(last)?),
            None => PortRange::single(port(s)?),
        }
    }
}

/// Prints multiport's spelling: `80` or `80:90`.
impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// A comma-separated list of ports and ranges, e.g. `22,80-90`. An empty
/// string is an empty list (an environment variable set to nothing).
pub fn parse_port_list(s: &str) -> Result<Vec<PortRange>, PortError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let mut ports = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(PortError::EmptyEntry { list: s.to_owned() });
        }
        let range: PortRange = item.parse()?;
        if !ports.contains(&range) {
            ports.push(range);
        }
    }
    Ok(ports)
}

/// The `--dports` arguments of as many multiport rules as `ports` needs, in
/// the given order, each within multiport's 15-entry limit.
pub fn multiport_chunks(ports: &[PortRange]) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut used = 0;
    for range in ports {
        if used + range.entries() > MULTIPORT_MAX_ENTRIES {
            chunks.push(current.join(","));
            current.clear();
            used = 0;
        }
        current.push(range.to_string());
        used += range.entries();
    }
    if !current.is_empty() {
        chunks.push(current.join(","));
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse_port_list(""), Ok(vec![]));
        let list = parse_port_list("22, 80-90,8080:8081,22").unwrap_or_default();
        let shown: Vec<String> = list.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown, ["22", "80:90", "8080:8081"]);
        assert_eq!(
            parse_port_list("7-7").map(|l| l[0].to_string()),
            Ok("7".into())
        );
    }

    #[test]
    fn rejects() {
        for (bad, why) in [
            ("0", "port 0"),
            ("0-10", "port 0"),
            ("90-80", "reversed"),
            ("65536", "not a port"),
            ("22,,80", "empty entry"),
            ("22,", "empty entry"),
            ("http", "not a port"),
            ("-5", "not a port"),
            ("1-2-3", "not a port"),
            ("+22", "not a port"),
        ] {
            match parse_port_list(bad) {
                Ok(l) => panic!("{bad:?} parsed as {l:?}"),
                Err(e) => assert!(e.to_string().contains(why), "{bad:?}: {e}"),
            }
        }
    }

    #[test]
    fn contains() {
        let r = PortRange::new(80, 90).unwrap_or(PortRange { first: 1, last: 1 });
        assert!(r.contains(80) && r.contains(85) && r.contains(90));
        assert!(!r.contains(79) && !r.contains(91));
    }

    #[test]
    fn chunks_at_fifteen_entries_counting_ranges_as_two() {
        let ports: Vec<PortRange> = (1..=20).filter_map(|p| PortRange::single(p).ok()).collect();
        assert_eq!(
            multiport_chunks(&ports),
            ["1,2,3,4,5,6,7,8,9,10,11,12,13,14,15", "16,17,18,19,20"]
        );
        // 7 ranges take 14 entries; the next range (2 more) starts a new rule,
        // and a single port after it fits beside it.
        let list = parse_port_list("1-2,3-4,5-6,7-8,9-10,11-12,13-14,15-16,17").unwrap_or_default();
        assert_eq!(
            multiport_chunks(&list),
            ["1:2,3:4,5:6,7:8,9:10,11:12,13:14", "15:16,17"]
        );
        // 7 ranges + 1 port is exactly 15.
        let list = parse_port_list("1-2,3-4,5-6,7-8,9-10,11-12,13-14,15").unwrap_or_default();
        assert_eq!(
            multiport_chunks(&list),
            ["1:2,3:4,5:6,7:8,9:10,11:12,13:14,15"]
        );
        assert!(multiport_chunks(&[]).is_empty());
    }
}
