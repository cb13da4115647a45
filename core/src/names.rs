//! Names as Kubernetes writes them. Namespaces, Services and port names are
//! RFC 1123 labels; this is the one check of them that every crate uses.

/// A name that is not an RFC 1123 label; its message says what one is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a valid name: use 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
)]
pub struct InvalidName(pub String);

/// Checks that `s` is an RFC 1123 label (RFC 1123 §2.1, as Kubernetes
/// restricts it: lowercase, at most 63 characters).
pub fn check_dns_label(s: &str) -> Result<(), InvalidName> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(InvalidName(s.to_owned()))
    }
}

/// [`check_dns_label`] as a flag's value parser: the name, owned.
pub fn parse_dns_label(s: &str) -> Result<String, InvalidName> {
    check_dns_label(s).map(|()| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_lowercase_alphanumerics_and_inner_dashes_up_to_63() {
        for good in ["a", "staging", "alice-2", "0", &"x".repeat(63)] {
            assert_eq!(check_dns_label(good), Ok(()), "{good}");
        }
        for bad in ["", "-a", "a-", "Alice", "a.b", "a_b", "ä", &"x".repeat(64)] {
            assert_eq!(
                check_dns_label(bad),
                Err(InvalidName(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(parse_dns_label("alice"), Ok("alice".to_owned()));
        assert!(parse_dns_label("Alice").is_err());
        assert!(
            InvalidName("A".into())
                .to_string()
                .contains("1-63 lowercase letters")
        );
    }
}
