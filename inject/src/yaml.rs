//! Writes YAML that every Kubernetes tool reads back as it was meant.
//!
//! `serde_yaml_ng` writes strings such as `yes`, `on` or `2025-05-02` without
//! quotes: right for YAML 1.2, but `kubectl` parses YAML 1.1, where the first
//! two are booleans. Here a string is written plain only when it cannot be
//! anything but a string in either version (it starts with a letter or `/`,
//! is not a YAML 1.1 keyword, and has no character YAML gives a meaning to);
//! otherwise it is double-quoted with JSON's escapes, which YAML shares.
//! Multi-line strings are literal blocks when that keeps them exact.
//! Block style throughout, with sequences under a key not indented, as
//! `kubectl` writes them. Tags are dropped (Kubernetes objects have none).

use std::fmt::Write as _;

use serde_yaml_ng::Value;

/// What this writer cannot write: what a Kubernetes object never holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamlError {
    #[error("a mapping key that is itself a collection")]
    CollectionKey,
    #[error("not a scalar")]
    NotAScalar,
}

/// One document, ending in a newline.
pub(crate) fn to_string(value: &Value) -> Result<String, YamlError> {
    let mut out = String::new();
    for line in block(value)? {
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// The lines of a node, not indented. A scalar or an empty collection is one
/// line, except a literal block: its header, then its lines indented by 2.
fn block(value: &Value) -> Result<Vec<String>, YamlError> {
    match untag(value) {
        Value::Mapping(map) if !map.is_empty() => {
            let mut lines = Vec::new();
            for (key, v) in map {
                let key = key_text(key)?;
                let v = untag(v);
                match v {
                    Value::Mapping(m) if !m.is_empty() => {
                        lines.push(format!("{key}:"));
                        lines.extend(block(v)?.into_iter().map(|l| indent(&l, 2)));
                    }
                    Value::Sequence(s) if !s.is_empty() => {
                        lines.push(format!("{key}:"));
                        lines.extend(block(v)?);
                    }
                    _ => {
                        // A literal block's lines are indented already.
                        let mut scalar = block(v)?.into_iter();
                        let first = scalar.next().unwrap_or_default();
                        lines.push(format!("{key}: {first}"));
                        lines.extend(scalar);
                    }
                }
            }
            Ok(lines)
        }
        Value::Sequence(seq) if !seq.is_empty() => {
            let mut lines = Vec::new();
            for item in seq {
                let nested = matches!(untag(item), Value::Mapping(m) if !m.is_empty())
                    || matches!(untag(item), Value::Sequence(s) if !s.is_empty());
                let mut item = block(item)?.into_iter();
                let first = item.next().unwrap_or_default();
                lines.push(format!("- {first}"));
                if nested {
                    lines.extend(item.map(|l| indent(&l, 2)));
                } else {
                    lines.extend(item);
                }
            }
            Ok(lines)
        }
        Value::Mapping(_) => Ok(vec!["{}".into()]),
        Value::Sequence(_) => Ok(vec!["[]".into()]),
        Value::String(s) => Ok(string(s)),
        scalar => Ok(vec![scalar_text(scalar)?]),
    }
}

fn untag(value: &Value) -> &Value {
    match value {
        Value::Tagged(tagged) => untag(&tagged.value),
        v => v,
    }
}

fn indent(line: &str, by: usize) -> String {
    if line.is_empty() {
        String::new()
    } else {
        format!("{:by$}{line}", "")
    }
}

fn key_text(key: &Value) -> Result<String, YamlError> {
    match untag(key) {
        Value::String(s) => Ok(quoted_unless_plain(s)),
        Value::Mapping(_) | Value::Sequence(_) => Err(YamlError::CollectionKey),
        scalar => scalar_text(scalar),
    }
}

fn scalar_text(value: &Value) -> Result<String, YamlError> {
    Ok(match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quoted_unless_plain(s),
        Value::Tagged(t) => return scalar_text(&t.value),
        Value::Mapping(_) | Value::Sequence(_) => return Err(YamlError::NotAScalar),
    })
}

fn string(s: &str) -> Vec<String> {
    match literal(s) {
        Some(lines) => lines,
        None => vec![quoted_unless_plain(s)],
    }
}

/// A literal block (`|` keeps the one final line break, `|-` has none),
/// when it says exactly `s`.
fn literal(s: &str) -> Option<Vec<String>> {
    if !s.contains('\n') {
        return None;
    }
    let (body, header) = match s.strip_suffix('\n') {
        Some(body) if !body.ends_with('\n') => (body, "|"),
        Some(_) => return None,
        None => (s, "|-"),
    };
    let printable = body
        .chars()
        .all(|c| c == '\n' || (!c.is_control() && c != '\u{feff}'));
    // A first line starting with a space would need an indentation
    // indicator; trailing spaces are easily lost by editors.
    if !printable || body.starts_with([' ', '\n']) || body.lines().any(|l| l.ends_with(' ')) {
        return None;
    }
    let mut lines = vec![header.to_owned()];
    lines.extend(body.split('\n').map(|l| indent(l, 2)));
    Some(lines)
}

fn quoted_unless_plain(s: &str) -> String {
    if plain_is_safe(s) {
        s.to_owned()
    } else {
        quote(s)
    }
}

/// JSON's escapes are YAML's too.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || c == '\u{feff}' || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether `s` written plain reads back as this string in YAML 1.1 and 1.2.
fn plain_is_safe(s: &str) -> bool {
    const KEYWORDS: [&str; 12] = [
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf", "~",
    ];
    let Some(first) = s.chars().next() else {
        return false;
    };
    if !(first.is_ascii_alphabetic() || first == '/' || first == '_') {
        return false;
    }
    if KEYWORDS.contains(&s.to_ascii_lowercase().as_str()) {
        return false;
    }
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./:@=+, ".contains(c))
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.ends_with([':', ' '])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(yaml: &str) -> String {
        let value: Value = serde_yaml_ng::from_str(yaml).unwrap();
        let text = to_string(&value).unwrap();
        let back: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(back, value, "{text}");
        text
    }

    #[test]
    fn quotes_what_yaml_1_1_would_read_otherwise() {
        for s in [
            "yes",
            "No",
            "ON",
            "off",
            "y",
            "N",
            "true",
            "null",
            "~",
            "",
            "0755",
            "1e3",
            "0x1F",
            "1_000",
            "2025-05-02",
            "2025-05-02T10:21:07Z",
            "10:30",
            "0.0.0.0:4191",
            "-x",
            "@a",
            "a: b",
            "a #b",
            "*x",
            "&x",
            "!x",
            "%x",
            "[x",
            "{x",
            "'x",
            "\"x",
            "x ",
            " x",
            ".5",
            "a\tb",
            "é",
            "a (b)",
        ] {
            let value = Value::String(s.into());
            let text = to_string(&value).unwrap();
            assert!(text.starts_with('"'), "{s:?} written as {text}");
            let back: Value = serde_yaml_ng::from_str(&text).unwrap();
            assert_eq!(back, value, "{text}");
        }
        for s in [
            "frontend",
            "ghcr.io/example/movies-api:1.4.2",
            "http://rent:8080",
            "/run",
            "metadata.namespace",
            "divert.dev/inject",
            "catalog:9090",
            "RuntimeDefault",
            "a=b",
        ] {
            assert_eq!(
                to_string(&Value::String(s.into())).unwrap(),
                format!("{s}\n")
            );
        }
    }

    #[test]
    fn writes_blocks_like_kubectl() {
        let text = round_trip(
            "a:\n  b: [1, 2.5, true, null]\n  c: {}\n  d: []\nlist:\n- x: 1\n  y:\n  - - nested\n    - two\n- plain\n",
        );
        assert_eq!(
            text,
            "a:\n  b:\n  - 1\n  - 2.5\n  - true\n  - null\n  c: {}\n  d: []\nlist:\n- x: 1\n  \"y\":\n  - - nested\n    - two\n- plain\n"
        );
    }

    #[test]
    fn multi_line_strings() {
        let text = round_trip("script: \"set -e\\necho hi\\n\"\nnone: \"a\\nb\"\n");
        assert_eq!(text, "script: |\n  set -e\n  echo hi\nnone: |-\n  a\n  b\n");
        round_trip("s: \"a\\n\\nb\\n\"\n");
        round_trip("s: \"two\\n\\n\"\n");
        round_trip("s: \" lead\\nx\"\n");
        round_trip("s: \"trail \\nx\"\n");
        round_trip("- \"a\\nb\"\n- k: \"c\\nd\\n\"\n");
        round_trip("\"key: with colon\": 1\n\"yes\": 2\n3: x\n");
    }
}
