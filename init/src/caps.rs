//! The capabilities iptables needs, checked before anything runs so a
//! missing one is reported as such rather than as an obscure iptables error.

use crate::Error;

/// Programs netfilter (both backends).
const CAP_NET_ADMIN: u32 = 12;
/// Opens the raw socket legacy iptables talks to the kernel through.
const CAP_NET_RAW: u32 = 13;

const NEEDED: [(u32, &str); 2] = [(CAP_NET_ADMIN, "NET_ADMIN"), (CAP_NET_RAW, "NET_RAW")];

/// Why `/proc/<pid>/status` did not say the capabilities.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CapsError {
    #[error("it has no CapEff line")]
    NoCapEff,
    #[error("CapEff {0:?} is not hexadecimal")]
    NotHex(String),
}

/// The effective capability set from the text of `/proc/<pid>/status`.
pub fn parse_cap_eff(status: &str) -> Result<u64, CapsError> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or(CapsError::NoCapEff)?;
    u64::from_str_radix(line.trim(), 16).map_err(|_| CapsError::NotHex(line.trim().to_owned()))
}

/// The names of the needed capabilities absent from `cap_eff`.
pub fn missing(cap_eff: u64) -> Vec<&'static str> {
    NEEDED
        .iter()
        .filter(|(bit, _)| cap_eff & (1u64 << bit) == 0)
        .map(|&(_, name)| name)
        .collect()
}

/// Fails unless this process holds NET_ADMIN and NET_RAW.
pub fn require() -> Result<(), Error> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::Capabilities(format!("cannot read /proc/self/status: {e}")))?;
    let cap_eff = parse_cap_eff(&status).map_err(|e| {
        Error::Capabilities(format!(
            "cannot read capabilities from /proc/self/status: {e}"
        ))
    })?;
    let missing = missing(cap_eff);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingCapabilities { missing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_IN_CONTAINER: &str = "Name:\tdivert\nUmask:\t0022\nState:\tR (running)\nCapInh:\t0000000000000000\nCapPrm:\t00000000a80435fb\nCapEff:\t00000000a80435fb\nCapBnd:\t00000000a80435fb\nCapAmb:\t0000000000000000\n";

    #[test]
    fn parses_cap_eff() {
        assert_eq!(parse_cap_eff(ROOT_IN_CONTAINER), Ok(0xa80435fb));
        assert_eq!(
            parse_cap_eff("CapEff:\t000001fffeffffff\n"),
            Ok(0x1fffeffffff)
        );
        assert!(parse_cap_eff("CapPrm:\t0\n").is_err());
        assert!(parse_cap_eff("CapEff:\tzz\n").is_err());
    }

    #[test]
    fn names_what_is_missing() {
        // Docker's default set has NET_RAW but not NET_ADMIN.
        assert_eq!(missing(0xa80425fb), ["NET_ADMIN"]);
        assert_eq!(missing(0), ["NET_ADMIN", "NET_RAW"]);
        assert_eq!(missing(1 << 12), ["NET_RAW"]);
        assert!(missing(0x3000).is_empty());
        assert!(missing(0x1fffeffffff).is_empty());
    }
}
