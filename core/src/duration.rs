//! Durations on the command line: `250ms`, `1s`, `2m`, `8h`, `2d`.

use std::time::Duration;

/// Why a flag's value is not a duration; each says how to write one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration; write e.g. 250ms, 1s, 2m, 8h or 2d")]
    NotANumber(String),
    #[error("{0:?} has no unit; write e.g. 250ms, 1s, 2m, 8h or 2d")]
    Unit(String),
    #[error("must be more than zero")]
    Zero,
}

/// Parses `N` followed by `ms`, `s`, `m`, `h` or `d`; zero is refused
/// (every limit it sets must be able to fire).
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| DurationError::NotANumber(s.to_owned()))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => return Err(DurationError::Unit(s.to_owned())),
    };
    if d.is_zero() {
        return Err(DurationError::Zero);
    }
    Ok(d)
}

/// [`parse`] for a limit that `0` turns off: `0`, with a unit or without
/// one, is [`Duration::ZERO`] (off); anything else as [`parse`] reads it.
pub fn parse_or_off(s: &str) -> Result<Duration, DurationError> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    match parse(s) {
        Err(DurationError::Zero) => Ok(Duration::ZERO),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_to_days_parse_and_anything_else_is_refused() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("3"), Err(DurationError::Unit("3".into())));
        assert_eq!(parse("s"), Err(DurationError::NotANumber("s".into())));
        assert_eq!(parse("0s"), Err(DurationError::Zero));
        assert_eq!(parse("8h"), Ok(Duration::from_secs(8 * 3600)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(2 * 86_400)));
        assert!(parse("1w").is_err());
        assert!(parse("1h30m").is_err());
    }

    #[test]
    fn a_limit_that_zero_turns_off_takes_zero_with_or_without_a_unit() {
        assert_eq!(parse_or_off("0"), Ok(Duration::ZERO));
        assert_eq!(parse_or_off("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_or_off(" 0ms "), Ok(Duration::ZERO));
        assert_eq!(parse_or_off("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_or_off("3"), Err(DurationError::Unit("3".into())));
        assert!(parse_or_off("off").is_err());
    }
}
