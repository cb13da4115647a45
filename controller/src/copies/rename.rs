//! How a divert namespace's preview hosts are made from its shared
//! namespace's hosts.
//!
//! The default is Okteto's rule: every occurrence of the shared namespace's
//! name in a host becomes the divert namespace's name
//! (`frontend-staging.example.com` → `frontend-alice.example.com`). A divert
//! namespace whose hosts do not name the shared namespace (or that wants its
//! own domain) sets the [`HOST_TEMPLATE`] annotation instead, a host with
//! placeholders:
//!
//! | placeholder | value for `frontend.staging.example.com`, `alice` diverting from `staging` |
//! |---|---|
//! | `{host}` | `frontend.staging.example.com` |
//! | `{label}` | `frontend` (the host's first label) |
//! | `{domain}` | `staging.example.com` (the rest) |
//! | `{namespace}` | `alice` |
//! | `{shared}` | `staging` |
//!
//! A host that comes out the same as the shared one is not a preview host
//! (it would take the shared URL's traffic), nor is one that is not a valid
//! DNS name (RFC 1123; a leading `*.` wildcard label is kept as it is).

use divert_core::names::annotation::HOST_TEMPLATE;

/// Why a host could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenameError {
    #[error(
        "{HOST_TEMPLATE} {template:?}: unknown placeholder {{{name}}}; use {{host}}, {{label}}, \
         {{domain}}, {{namespace}} or {{shared}}"
    )]
    UnknownPlaceholder { template: String, name: String },
    #[error("{HOST_TEMPLATE} {template:?}: a '{{' without its '}}'")]
    Unclosed { template: String },
    #[error(
        "{HOST_TEMPLATE} {template:?} makes {host:?} from {from:?}, which is not a DNS name \
         (lowercase letters, digits, '-' and '.', labels of 1 to 63 characters)"
    )]
    NotAHost {
        template: String,
        from: String,
        host: String,
    },
}

/// The rule of one divert namespace.
#[derive(Debug, Clone, Copy)]
pub struct Rename<'a> {
    pub shared: &'a str,
    pub namespace: &'a str,
    /// The namespace's [`HOST_TEMPLATE`], if set.
    pub template: Option<&'a str>,
}

impl Rename<'_> {
    /// The preview host for `host` (a host of the shared namespace), or
    /// `None` when it comes out the same.
    pub fn host(&self, host: &str) -> Result<Option<String>, RenameError> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let made = match self.template {
            None => host.replace(self.shared, self.namespace),
            Some(template) => {
                let made = self.fill(template, &host)?;
                if !is_host(&made) {
                    return Err(RenameError::NotAHost {
                        template: template.to_owned(),
                        from: host,
                        host: made,
                    });
                }
                made
            }
        };
        Ok((made != host).then_some(made))
    }

    fn fill(&self, template: &str, host: &str) -> Result<String, RenameError> {
        let (label, domain) = host.split_once('.').unwrap_or((host, ""));
        let mut out = String::with_capacity(template.len() + host.len());
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let Some(close) = rest[open..].find('}') else {
                return Err(RenameError::Unclosed {
                    template: template.to_owned(),
                });
            };
            let name = &rest[open + 1..open + close];
            out.push_str(match name {
                "host" => host,
                "label" => label,
                "domain" => domain,
                "namespace" => self.namespace,
                "shared" => self.shared,
                _ => {
                    return Err(RenameError::UnknownPlaceholder {
                        template: template.to_owned(),
                        name: name.to_owned(),
                    });
                }
            });
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        Ok(out.to_ascii_lowercase())
    }
}

/// A DNS name by RFC 1123 (a leading `*.` allowed), at most 253 characters.
fn is_host(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rename(template: Option<&str>) -> Rename<'_> {
        Rename {
            shared: "staging",
            namespace: "alice",
            template,
        }
    }

    #[test]
    fn every_occurrence_of_the_shared_namespace_becomes_the_divert_namespace() {
        let r = rename(None);
        assert_eq!(
            r.host("frontend-staging-myapp.example.com").unwrap(),
            Some("frontend-alice-myapp.example.com".into())
        );
        assert_eq!(
            r.host("staging.staging.example.com.").unwrap(),
            Some("alice.alice.example.com".into())
        );
        assert_eq!(
            r.host("*.Staging.example.com").unwrap(),
            Some("*.alice.example.com".into())
        );
    }

    #[test]
    fn a_host_that_does_not_name_the_shared_namespace_has_no_preview() {
        assert_eq!(rename(None).host("movies.example.com").unwrap(), None);
        assert_eq!(
            rename(Some("{host}")).host("movies.example.com").unwrap(),
            None
        );
    }

    #[test]
    fn a_template_fills_each_placeholder() {
        let r = rename(Some("{label}-{namespace}.preview.{domain}"));
        assert_eq!(
            r.host("frontend.movies.example.com").unwrap(),
            Some("frontend-alice.preview.movies.example.com".into())
        );
        let r = rename(Some("{namespace}-of-{shared}.{host}"));
        assert_eq!(
            r.host("Movies.Example.com").unwrap(),
            Some("alice-of-staging.movies.example.com".into())
        );
    }

    #[test]
    fn a_bad_template_is_an_error_that_names_it() {
        let err = rename(Some("{name}.example.com"))
            .host("movies.example.com")
            .unwrap_err();
        assert!(matches!(&err, RenameError::UnknownPlaceholder { name, .. } if name == "name"));
        assert!(err.to_string().contains(HOST_TEMPLATE), "{err}");
        assert!(matches!(
            rename(Some("{label")).host("a.b").unwrap_err(),
            RenameError::Unclosed { .. }
        ));
        for template in [
            "{label}_x.example.com",
            "-{label}.example.com",
            "{label}..com",
        ] {
            assert!(
                matches!(
                    rename(Some(template)).host("a.b").unwrap_err(),
                    RenameError::NotAHost { .. }
                ),
                "{template}"
            );
        }
        let long = format!("{}.{{label}}", "a".repeat(64));
        assert!(rename(Some(&long)).host("a.b").is_err());
    }
}
