//! Variable expansion in manifest values, as Okteto expands its manifest:
//! `$VAR`, `${VAR}`, `${VAR:-default}` (the default when `VAR` is unset or
//! empty), `${VAR-default}` (when unset), and `$$` for a literal `$`. An
//! unset variable expands to nothing; a `$` followed by anything else is
//! kept as it is.

/// Why a value could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: a '${{' without its '}}'")]
pub struct Unclosed(pub String);

/// `s` with every variable replaced by `lookup`'s value.
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, Unclosed> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = closing(body) else {
                return Err(Unclosed(s.to_owned()));
            };
            out.push_str(&braced(&body[..end], lookup)?);
            rest = &body[end + 1..];
        } else {
            let len = after
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            if len == 0 || after.as_bytes()[0].is_ascii_digit() {
                // Not a variable name ($1, $(…), a lone $): kept.
                out.push('$');
                rest = after;
            } else {
                out.push_str(&lookup(&after[..len]).unwrap_or_default());
                rest = &after[len..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The index of the `}` that closes a `${`, allowing nested `${…}` in a
/// default.
fn closing(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// `NAME`, `NAME:-default` or `NAME-default`.
fn braced(body: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, Unclosed> {
    let len = body
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    let (name, op) = body.split_at(len);
    let value = lookup(name);
    if let Some(default) = op.strip_prefix(":-") {
        return match value {
            Some(v) if !v.is_empty() => Ok(v),
            _ => expand(default, lookup),
        };
    }
    if let Some(default) = op.strip_prefix('-') {
        return match value {
            Some(v) => Ok(v),
            None => expand(default, lookup),
        };
    }
    Ok(value.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "NS" => Some("alice".into()),
            "EMPTY" => Some(String::new()),
            "IMAGE" => Some("registry/frontend:1".into()),
            _ => None,
        }
    }

    #[test]
    fn variables_expand_as_okteto_expands_its_manifest() {
        let cases = [
            ("${OKTETO_SHARED_NAMESPACE:-staging}", "staging"),
            ("${NS:-staging}", "alice"),
            ("${EMPTY:-staging}", "staging"),
            ("${EMPTY-staging}", ""),
            ("${UNSET-staging}", "staging"),
            ("--set image=${IMAGE}", "--set image=registry/frontend:1"),
            ("$NS-preview", "alice-preview"),
            ("$UNSET!", "!"),
            ("cost: $$5 and $", "cost: $5 and $"),
            ("${UNSET:-${NS}}", "alice"),
            ("$1 stays", "$1 stays"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &env).unwrap(), want, "{input}");
        }
        assert!(expand("${NS", &env).is_err());
    }
}
