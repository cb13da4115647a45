//! What the soak counts, on both sides of the proxy: every request the
//! clients got an answer to, by which copy answered it and which key it
//! carried, and every request the upstreams saw, counted the same way. At
//! the end the two ledgers must agree cell by cell: a request lost, sent
//! twice or answered by the wrong copy shows as a difference.
//!
//! The upstreams count rather than record, so that 30 minutes of traffic
//! cost the driver no memory.

use std::sync::atomic::{AtomicU64, Ordering};

use hyper::header::HeaderValue;

/// The keys the clients send, one vocabulary for both ledgers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// No baggage: the shared copy answers.
    None,
    /// `okteto-divert=alice`, a divert namespace of staging.
    Alice,
    /// `okteto-divert=bob`, a namespace that does not divert from staging:
    /// the shared copy answers.
    Bob,
}

impl Key {
    pub const ALL: [Key; 3] = [Key::None, Key::Alice, Key::Bob];

    /// The baggage header value that carries this key, if any.
    pub fn baggage(self) -> Option<&'static str> {
        match self {
            Key::None => None,
            Key::Alice => Some("okteto-divert=alice"),
            Key::Bob => Some("okteto-divert=bob"),
        }
    }

    /// The key a request's baggage header carries, as the clients send it.
    pub fn of(baggage: Option<&HeaderValue>) -> Key {
        Self::of_bytes(baggage.map(HeaderValue::as_bytes))
    }

    pub fn of_bytes(baggage: Option<&[u8]>) -> Key {
        match baggage {
            Some(b) if Some(b) == Key::Alice.baggage().map(str::as_bytes) => Key::Alice,
            Some(b) if Some(b) == Key::Bob.baggage().map(str::as_bytes) => Key::Bob,
            _ => Key::None,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Key::None => "no key",
            Key::Alice => "alice",
            Key::Bob => "bob",
        }
    }
}

/// Every upstream copy in the soak's world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceCopy {
    WebStaging,
    WebAlice,
    CatalogStaging,
    CatalogAlice,
    DbStaging,
}

impl ServiceCopy {
    pub const ALL: [ServiceCopy; 5] = [
        ServiceCopy::WebStaging,
        ServiceCopy::WebAlice,
        ServiceCopy::CatalogStaging,
        ServiceCopy::CatalogAlice,
        ServiceCopy::DbStaging,
    ];

    /// `service@namespace`, as the upstreams say it in `x-served-by`.
    pub fn name(self) -> &'static str {
        match self {
            ServiceCopy::WebStaging => "web@staging",
            ServiceCopy::WebAlice => "web@alice",
            ServiceCopy::CatalogStaging => "catalog@staging",
            ServiceCopy::CatalogAlice => "catalog@alice",
            ServiceCopy::DbStaging => "db@staging",
        }
    }

    pub fn from_name(name: &[u8]) -> Option<ServiceCopy> {
        ServiceCopy::ALL
            .into_iter()
            .find(|c| c.name().as_bytes() == name)
    }

    /// The namespace part of the name, as the gRPC upstream reports it.
    pub fn namespace(self) -> &'static str {
        match self {
            ServiceCopy::WebStaging | ServiceCopy::CatalogStaging | ServiceCopy::DbStaging => {
                "staging"
            }
            ServiceCopy::WebAlice | ServiceCopy::CatalogAlice => "alice",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Requests by copy and key.
#[derive(Debug, Default)]
pub struct Counts([[AtomicU64; 3]; 5]);

impl Counts {
    pub fn add(&self, copy: ServiceCopy, key: Key) {
        self.0[copy.index()][key.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, copy: ServiceCopy, key: Key) -> u64 {
        self.0[copy.index()][key.index()].load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        ServiceCopy::ALL
            .iter()
            .flat_map(|c| Key::ALL.iter().map(|k| self.get(*c, *k)))
            .sum()
    }
}

/// The cells where `answered` and `seen` differ, as lines for the report.
pub fn differences(answered: &Counts, seen: &Counts) -> Vec<String> {
    let mut out = Vec::new();
    for copy in ServiceCopy::ALL {
        for key in Key::ALL {
            let (a, s) = (answered.get(copy, key), seen.get(copy, key));
            if a != s {
                out.push(format!(
                    "{} with {}: clients got {a} answers, the upstream saw {s} requests",
                    copy.name(),
                    key.name()
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_read_back_from_the_header_it_is_sent_in() {
        for key in Key::ALL {
            let header = key.baggage().map(HeaderValue::from_static);
            assert_eq!(Key::of(header.as_ref()), key);
        }
        assert_eq!(Key::of_bytes(Some(b"okteto-divert=carol")), Key::None);
    }

    #[test]
    fn the_ledgers_differ_only_where_a_cell_differs() {
        let (a, s) = (Counts::default(), Counts::default());
        a.add(ServiceCopy::WebAlice, Key::Alice);
        s.add(ServiceCopy::WebAlice, Key::Alice);
        assert!(differences(&a, &s).is_empty());
        a.add(ServiceCopy::WebStaging, Key::Alice);
        let d = differences(&a, &s);
        assert_eq!(d.len(), 1);
        assert!(d[0].starts_with("web@staging with alice"), "{d:?}");
        assert_eq!(a.total(), 2);
    }
}
