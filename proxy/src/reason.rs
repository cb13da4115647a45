//! Why the routing rule chose a target ([`Reason`]), and what it did, coarsely
//! ([`Decision`]). One closed vocabulary for the metrics' labels, the
//! decision log, the tap and `/routes`.

use std::fmt;

/// Why the rule chose the target. Closed, so it can label metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The key's namespace runs the service.
    Diverted,
    /// No key; the proxy's own divert namespace runs the service.
    OwnNamespace,
    /// The key counts but its namespace does not run the service.
    SharedFallback,
    /// No usable key: sent where the client dialed.
    NoKey,
    /// The key names a namespace that did not opt in as a divert namespace.
    KeyNotOptedIn,
    /// The key names a divert namespace of another shared namespace.
    KeyOfOtherSharedNamespace,
    /// The destination is not in the table.
    UnknownDestination,
    /// Inbound: the key's namespace is this pod's own, so this is its copy.
    ThisCopy,
    /// Inbound: another pod's proxy sent the request to this copy.
    Forwarded,
}

impl Reason {
    /// Every reason, in the order of [`Reason::index`].
    pub const ALL: [Reason; 9] = [
        Reason::Diverted,
        Reason::OwnNamespace,
        Reason::SharedFallback,
        Reason::NoKey,
        Reason::KeyNotOptedIn,
        Reason::KeyOfOtherSharedNamespace,
        Reason::UnknownDestination,
        Reason::ThisCopy,
        Reason::Forwarded,
    ];
    /// How many there are: the length of per-reason counter arrays.
    pub const COUNT: usize = Reason::ALL.len();

    /// Its position in [`Reason::ALL`], for counter arrays.
    pub const fn index(self) -> usize {
        match self {
            Reason::Diverted => 0,
            Reason::OwnNamespace => 1,
            Reason::SharedFallback => 2,
            Reason::NoKey => 3,
            Reason::KeyNotOptedIn => 4,
            Reason::KeyOfOtherSharedNamespace => 5,
            Reason::UnknownDestination => 6,
            Reason::ThisCopy => 7,
            Reason::Forwarded => 8,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Diverted => "diverted",
            Reason::OwnNamespace => "own_namespace",
            Reason::SharedFallback => "shared_fallback",
            Reason::NoKey => "no_key",
            Reason::KeyNotOptedIn => "key_not_opted_in",
            Reason::KeyOfOtherSharedNamespace => "key_of_other_shared_namespace",
            Reason::UnknownDestination => "unknown_destination",
            Reason::ThisCopy => "this_copy",
            Reason::Forwarded => "forwarded",
        }
    }
}

impl Reason {
    /// What the reason means, for a person reading the routes view.
    pub fn explain(self) -> &'static str {
        match self {
            Reason::Diverted => {
                "the key names a divert namespace of the service's shared namespace, and that namespace runs the service"
            }
            Reason::OwnNamespace => {
                "no key; the proxy's own namespace is a divert namespace that runs the service, so it is used as the key"
            }
            Reason::SharedFallback => {
                "the key counts, but its namespace does not run the service (no copy, or none of its endpoints is ready): sent to the shared copy"
            }
            Reason::NoKey => "no usable key: sent where the client dialed",
            Reason::KeyNotOptedIn => {
                "the key names a namespace that did not opt in as a divert namespace: ignored, sent where the client dialed"
            }
            Reason::KeyOfOtherSharedNamespace => {
                "the key names a divert namespace of another shared namespace: ignored, sent where the client dialed"
            }
            Reason::UnknownDestination => {
                "the destination is not in the routing table: forwarded unchanged"
            }
            Reason::ThisCopy => {
                "inbound: the key names this pod's own namespace, so this pod is the key's copy: delivered here"
            }
            Reason::Forwarded => {
                "inbound: another pod's proxy sent the request to this copy: delivered here"
            }
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the routing rule did with a request, coarsely (the [`Reason`] says why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Sent to a divert namespace's copy of the service.
    Diverted = 0,
    /// Sent to a service of the table as dialed, or to its shared copy.
    Shared = 1,
    /// The destination is not in the table: forwarded unchanged.
    Passthrough = 2,
}

impl Decision {
    /// Every decision, in the order of their discriminants.
    pub const ALL: [Decision; 3] = [Decision::Diverted, Decision::Shared, Decision::Passthrough];
    /// How many there are: the length of per-decision counter arrays.
    pub const COUNT: usize = Decision::ALL.len();

    pub fn of(reason: Reason) -> Decision {
        match reason {
            Reason::Diverted | Reason::OwnNamespace => Decision::Diverted,
            Reason::SharedFallback
            | Reason::NoKey
            | Reason::KeyNotOptedIn
            | Reason::KeyOfOtherSharedNamespace
            | Reason::ThisCopy
            | Reason::Forwarded => Decision::Shared,
            Reason::UnknownDestination => Decision::Passthrough,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Diverted => "diverted",
            Decision::Shared => "shared",
            Decision::Passthrough => "passthrough",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_sits_at_its_index_and_has_a_decision() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
            assert!(!r.explain().is_empty());
        }
        assert_eq!(Decision::of(Reason::OwnNamespace), Decision::Diverted);
        assert_eq!(Decision::of(Reason::KeyNotOptedIn), Decision::Shared);
        assert_eq!(
            Decision::of(Reason::UnknownDestination),
            Decision::Passthrough
        );
        for (i, d) in Decision::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i);
        }
    }
}
