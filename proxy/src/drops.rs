//! Dropped keys: a request came into the pod with a key, and the app then
//! called another service without it.
//!
//! Apps pass the key on themselves (the `baggage` header, which is also
//! gRPC's metadata of that name). When one does not, every hop after it
//! falls back to the shared copies, and the developer sees the shared
//! environment's behaviour without knowing why. The proxy sees both sides
//! of its pod, so it can tell: an outbound request to a service the table
//! knows, without a key, made while the app is serving requests with a key
//! and none without one, was made for a keyed request and lost the key.
//! When requests of both kinds are in flight the outbound one could belong
//! to either, and nothing is counted: a drop is never reported on a guess.
//!
//! A request is in flight from when it is routed to this pod's app until
//! the app's response head comes back (on the HTTP/1.1 fast path, until the
//! response has been sent on). Calls an app makes after it has answered
//! (fire and forget) find nothing in flight and are not counted. Calls it
//! makes on its own (a timer, a queue consumer) while a keyed request is in
//! flight are: the example shows which request they came beside.
//!
//! Cost: each request delivered to the app adds one to a counter and takes
//! it off again; each outbound request without a key reads two counters.
//! Which keyed requests are in flight (their key and span) is kept only
//! while someone looks ([`Looks`]), and their request lines only for a tap
//! watcher or debug logs for [`TARGET`]; a drop itself takes a lock, to
//! count it per service and destination.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
// Cold paths only: the examples' registry is kept while someone looks, and
// the counts are touched per drop (an app's bug) and per scrape.
#[allow(clippy::disallowed_types)]
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use divert_core::direction::Direction;

use crate::reason::Reason;
use crate::table::{Route, Table, Target};

/// The log target of the examples (at debug level).
pub const TARGET: &str = "divert::key_dropped";
/// At most one example per destination this often, in the log.
pub const EXAMPLE_EVERY: Duration = Duration::from_secs(60);
/// Distinct (service, destination) pairs counted; later ones share
/// [`OTHER`]. The table bounds them already; this bounds a table that
/// keeps changing.
pub const MAX_SERIES: usize = 1000;
/// The label of the pairs past [`MAX_SERIES`].
pub const OTHER: &str = "_other";
/// Keyed requests remembered for the examples; more in flight are counted
/// but not remembered.
const MAX_REMEMBERED: usize = 256;

/// The detector of one proxy.
#[derive(Debug)]
#[allow(clippy::disallowed_types)]
pub struct Drops {
    /// Requests in flight to this pod's app whose key counts.
    keyed: AtomicUsize,
    /// Requests in flight to this pod's app without a key that counts.
    unkeyed: AtomicUsize,
    /// The pod's IP: given, or learnt from the first keyed request's
    /// destination. It names the service this pod serves.
    own_ip: OnceLock<IpAddr>,
    next_id: AtomicU64,
    /// The keyed requests in flight, while someone looks.
    remembered: Mutex<Vec<Remembered>>,
    /// service → destination → its count.
    series: Mutex<HashMap<Box<str>, ByDestination>>,
}

/// One service's drops, by destination.
type ByDestination = HashMap<Box<str>, Series>;

#[derive(Debug)]
struct Remembered {
    id: u64,
    /// Its span while someone looks ([`crate::spans`]), else 0.
    span: u64,
    key: Box<str>,
    /// Its request line, for examples ("" when none are wanted).
    request: Box<str>,
}

/// How closely the detector looks at one request.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Looks {
    /// Pair calls with the keyed requests in flight, by span: someone taps,
    /// or the proxy keeps a history of keyed requests.
    pub pairs: bool,
    /// Keep request lines for the examples: someone taps.
    pub examples: bool,
}

#[derive(Debug, Clone, Copy)]
struct Series {
    count: u64,
    last: SystemTime,
    /// When the last example was logged.
    example: Option<Instant>,
}

/// One (service, destination) pair's count, as `/metrics` and
/// `Tap/KeyDrops` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropCount {
    /// The service this pod serves ("" when it serves none the table knows).
    pub service: String,
    /// `name.namespace` of the service called without the key.
    pub destination: String,
    pub count: u64,
    /// When the last one was seen.
    pub last: SystemTime,
}

/// What the detector noted for one request; the request path holds it
/// until the response head is known.
#[derive(Debug, Default)]
pub(crate) enum Noted<'a> {
    #[default]
    Nothing,
    /// A request served by this pod's app, in flight while this lives.
    Serving(#[expect(dead_code, reason = "held for its Drop")] Serving<'a>),
    /// An outbound request that lost the key.
    Dropped(Dropped),
    /// An outbound request with a key, while someone looks: the span of
    /// the one request with that key the app was serving (0: none, or
    /// more than one).
    Calling { parent: u64 },
}

impl Noted<'_> {
    /// The drop, if this request was one.
    pub(crate) fn dropped(&self) -> Option<&Dropped> {
        match self {
            Noted::Dropped(d) => Some(d),
            _ => None,
        }
    }

    /// The span of the request the app was serving when it made this one,
    /// where that is known (0 otherwise).
    pub(crate) fn parent(&self) -> u64 {
        match self {
            Noted::Dropped(d) => d.parent,
            Noted::Calling { parent } => *parent,
            _ => 0,
        }
    }
}

/// A request in flight to this pod's app.
#[derive(Debug)]
pub(crate) struct Serving<'a> {
    drops: &'a Drops,
    keyed: bool,
    /// Its place among the remembered, if it was remembered (0: not).
    id: u64,
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        let counter = if self.keyed {
            &self.drops.keyed
        } else {
            &self.drops.unkeyed
        };
        counter.fetch_sub(1, Ordering::SeqCst);
        if self.id != 0
            && let Ok(mut r) = self.drops.remembered.lock()
            && let Some(i) = r.iter().position(|r| r.id == self.id)
        {
            r.swap_remove(i);
        }
    }
}

/// An outbound request made without the key while keyed requests were in
/// flight. Its details are known only while someone looks.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// The key of the keyed requests in flight, when they all had one key.
    pub key: Option<Box<str>>,
    /// One of them ("GET api:8080/movies"), the longest in flight.
    pub during: Option<Box<str>>,
    /// The span of the keyed request in flight, when there is one only.
    pub parent: u64,
}

/// What one request is, for [`Drops::note`].
pub(crate) struct Request<'r, 't> {
    pub direction: Direction,
    /// Its key, if it had one (the own-namespace default is not a key).
    pub key: Option<&'r str>,
    pub route: &'r Route<'t>,
    pub dst: std::net::SocketAddr,
    /// Its span, while someone looks (0 otherwise).
    pub span: u64,
}

impl Drops {
    /// A detector for a pod at `own_ip`, when known.
    #[allow(clippy::disallowed_types)]
    pub fn new(own_ip: Option<IpAddr>) -> Drops {
        let ip = OnceLock::new();
        if let Some(addr) = own_ip {
            let _ = ip.set(addr);
        }
        Drops {
            keyed: AtomicUsize::new(0),
            unkeyed: AtomicUsize::new(0),
            own_ip: ip,
            next_id: AtomicU64::new(1),
            remembered: Mutex::default(),
            series: Mutex::default(),
        }
    }

    /// Notes one routed request. `line`: its request line, asked for only
    /// when an example needs it.
    pub(crate) fn note<'a>(
        &'a self,
        r: &Request<'_, '_>,
        table: &Table,
        own_ns: Option<&str>,
        looks: Looks,
        line: impl FnOnce() -> String,
    ) -> Noted<'a> {
        match (r.direction, &r.route.target) {
            (Direction::Inbound, Target::Passthrough(_)) => {
                Noted::Serving(self.serving(r, looks, line))
            }
            (Direction::Outbound, _) if looks.pairs && r.key.is_some() => Noted::Calling {
                parent: self.parent_with(r.key.unwrap_or_default()),
            },
            (Direction::Outbound, Target::Service { .. }) if r.key.is_none() => {
                // Both loads see every request whose effect (the app's
                // call) could be this one: it was counted before the app
                // got it.
                if self.keyed.load(Ordering::SeqCst) == 0 || self.unkeyed.load(Ordering::SeqCst) > 0
                {
                    return Noted::Nothing;
                }
                match table.by_dialed(r.dst) {
                    Some(dialed) => {
                        let destination =
                            format!("{}.{}", dialed.service.name, dialed.service.namespace);
                        Noted::Dropped(self.dropped(table, own_ns, &destination, looks, line))
                    }
                    None => Noted::Nothing,
                }
            }
            _ => Noted::Nothing,
        }
    }

    fn serving<'a>(
        &'a self,
        r: &Request<'_, '_>,
        looks: Looks,
        line: impl FnOnce() -> String,
    ) -> Serving<'a> {
        let keyed = r.key.is_some()
            && matches!(
                r.route.reason,
                Reason::ThisCopy | Reason::SharedFallback | Reason::Forwarded
            );
        let mut id = 0;
        if keyed {
            if self.own_ip.get().is_none() {
                let _ = self.own_ip.set(r.dst.ip());
            }
            let examples = looks.examples || debug_enabled();
            if (looks.pairs || examples)
                && let Ok(mut remembered) = self.remembered.lock()
                && remembered.len() < MAX_REMEMBERED
            {
                id = self.next_id.fetch_add(1, Ordering::Relaxed);
                remembered.push(Remembered {
                    id,
                    span: r.span,
                    key: r.key.unwrap_or_default().into(),
                    request: if examples { line().into() } else { "".into() },
                });
            }
            self.keyed.fetch_add(1, Ordering::SeqCst);
        } else {
            self.unkeyed.fetch_add(1, Ordering::SeqCst);
        }
        Serving {
            drops: self,
            keyed,
            id,
        }
    }

    fn dropped(
        &self,
        table: &Table,
        own_ns: Option<&str>,
        destination: &str,
        looks: Looks,
        line: impl FnOnce() -> String,
    ) -> Dropped {
        let service = self
            .own_ip
            .get()
            .and_then(|ip| table.service_at(*ip, own_ns))
            .unwrap_or("");
        let example_due = self.count(service, destination);
        let debug = debug_enabled();
        if !(looks.pairs || looks.examples || debug) {
            return Dropped::default();
        }
        let dropped = self.in_flight();
        if example_due && debug {
            tracing::debug!(
                target: TARGET,
                service,
                destination,
                key = dropped.key.as_deref().unwrap_or("-"),
                during = dropped.during.as_deref().unwrap_or("-"),
                request = %line(),
                "a request went out without the key, while requests with one were being served: the app did not pass it on"
            );
        }
        dropped
    }

    /// Counts one drop; whether an example is due.
    fn count(&self, service: &str, destination: &str) -> bool {
        let Ok(mut series) = self.series.lock() else {
            return false;
        };
        let total: usize = series.values().map(HashMap::len).sum();
        let full = total >= MAX_SERIES;
        let (service, destination) = match series.get(service) {
            Some(d) if d.contains_key(destination) => (service, destination),
            _ if full => (OTHER, OTHER),
            _ => (service, destination),
        };
        let entry = series
            .entry(service.into())
            .or_default()
            .entry(destination.into())
            .or_insert(Series {
                count: 0,
                last: SystemTime::now(),
                example: None,
            });
        entry.count += 1;
        entry.last = SystemTime::now();
        let now = Instant::now();
        let due = entry
            .example
            .is_none_or(|at| now.duration_since(at) >= EXAMPLE_EVERY);
        if due {
            entry.example = Some(now);
        }
        due
    }

    /// The key of the keyed requests in flight, if they share one, and the
    /// one in flight longest.
    fn in_flight(&self) -> Dropped {
        let Ok(remembered) = self.remembered.lock() else {
            return Dropped::default();
        };
        let oldest = remembered.iter().min_by_key(|r| r.id);
        let key = oldest
            .filter(|o| remembered.iter().all(|r| r.key == o.key))
            .map(|o| o.key.clone());
        Dropped {
            key,
            during: oldest
                .filter(|o| !o.request.is_empty())
                .map(|o| o.request.clone()),
            parent: match remembered.as_slice() {
                [only] => only.span,
                _ => 0,
            },
        }
    }

    /// The span of the one keyed request in flight with `key`; 0 when
    /// there is none or more than one.
    fn parent_with(&self, key: &str) -> u64 {
        if self.keyed.load(Ordering::SeqCst) == 0 {
            return 0;
        }
        let Ok(remembered) = self.remembered.lock() else {
            return 0;
        };
        let mut with = remembered.iter().filter(|r| &*r.key == key);
        match (with.next(), with.next()) {
            (Some(only), None) => only.span,
            _ => 0,
        }
    }

    /// Every pair counted so far, sorted.
    pub fn counts(&self) -> Vec<DropCount> {
        let Ok(series) = self.series.lock() else {
            return Vec::new();
        };
        let mut all: Vec<DropCount> = series
            .iter()
            .flat_map(|(service, d)| {
                d.iter().map(|(destination, s)| DropCount {
                    service: service.to_string(),
                    destination: destination.to_string(),
                    count: s.count,
                    last: s.last,
                })
            })
            .collect();
        all.sort_by(|a, b| (&a.service, &a.destination).cmp(&(&b.service, &b.destination)));
        all
    }
}

fn debug_enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::DEBUG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::TableSpec;

    /// api in staging (pod 10.1.0.1) calls catalog; alice runs her own api,
    /// bob and carol run neither.
    const APP: &str = r#"
namespaces:
  - name: staging
  - name: alice
    sharedNamespace: staging
  - name: bob
    sharedNamespace: staging
  - name: carol
    sharedNamespace: staging
services:
  - { name: api, namespace: staging, addresses: [10.0.0.1], ports: [{port: 8080}], endpoints: [10.1.0.1] }
  - { name: catalog, namespace: staging, addresses: [10.0.0.2], ports: [{port: 9090}], endpoints: [10.1.0.2] }
  - { name: api, namespace: alice, addresses: [10.0.1.1], ports: [{port: 8080}], endpoints: [10.2.0.1] }
"#;

    fn table() -> Table {
        let spec: TableSpec = serde_yaml_ng::from_str(APP).unwrap();
        Table::build(&spec, 1, None).unwrap()
    }

    /// A request into staging's api pod with `key`, routed by step 7.
    fn inbound<'d>(d: &'d Drops, t: &Table, key: Option<&str>, looked_at: bool) -> Noted<'d> {
        let dst = "10.1.0.1:8080".parse().unwrap();
        let route = t.route_inbound(dst, key, Some("staging"));
        let r = Request {
            direction: Direction::Inbound,
            key,
            route: &route,
            dst,
            span: 0,
        };
        d.note(&r, t, Some("staging"), looks(looked_at), || {
            format!("GET api:8080/{}", key.unwrap_or("-"))
        })
    }

    /// A call from the pod to catalog (or to an address the table does not
    /// know) with `key`.
    fn outbound(d: &Drops, t: &Table, to: &str, key: Option<&str>, looked_at: bool) -> bool {
        let dst = to.parse().unwrap();
        let route = t.route(dst, key, None);
        let r = Request {
            direction: Direction::Outbound,
            key,
            route: &route,
            dst,
            span: 0,
        };
        matches!(
            d.note(&r, t, Some("staging"), looks(looked_at), || {
                "GET catalog:9090/x".into()
            }),
            Noted::Dropped(_)
        )
    }

    /// Looked at as while someone watches the tap, or not at all.
    fn looks(tapped: bool) -> Looks {
        Looks {
            pairs: tapped,
            examples: tapped,
        }
    }

    const CATALOG: &str = "10.0.0.2:9090";

    fn counts(d: &Drops) -> Vec<(String, String, u64)> {
        d.counts()
            .into_iter()
            .map(|c| (c.service, c.destination, c.count))
            .collect()
    }

    #[test]
    fn a_call_without_the_key_while_only_keyed_requests_are_served_is_a_drop() {
        let (d, t) = (Drops::new(None), table());
        let bob = inbound(&d, &t, Some("bob"), false);
        assert!(outbound(&d, &t, CATALOG, None, false));
        assert!(outbound(&d, &t, CATALOG, None, false));
        assert_eq!(
            counts(&d),
            [("api".into(), "catalog.staging".into(), 2)],
            "the service is learnt from the keyed request's destination"
        );
        // Passing the key on is not a drop, nor is a call outside the table.
        assert!(!outbound(&d, &t, CATALOG, Some("bob"), false));
        assert!(!outbound(&d, &t, "192.0.2.1:443", None, false));
        drop(bob);
        // Nothing in flight: a call on the app's own account.
        assert!(!outbound(&d, &t, CATALOG, None, false));
        assert_eq!(counts(&d)[0].2, 2);
    }

    #[test]
    fn with_an_unkeyed_request_in_flight_too_nothing_is_counted() {
        let (d, t) = (Drops::new(None), table());
        let _bob = inbound(&d, &t, Some("bob"), false);
        let plain = inbound(&d, &t, None, false);
        assert!(!outbound(&d, &t, CATALOG, None, false), "ambiguous");
        // A key that does not count is no better than none.
        drop(plain);
        let _mallory = inbound(&d, &t, Some("mallory"), false);
        assert!(!outbound(&d, &t, CATALOG, None, false), "ambiguous");
        assert!(counts(&d).is_empty());
    }

    #[test]
    fn requests_passed_on_to_another_copy_are_not_the_apps() {
        let (d, t) = (Drops::new(None), table());
        // Alice runs api: step 7 sends her request on, the app never sees it.
        let dst = "10.1.0.1:8080".parse().unwrap();
        let route = t.route_inbound(dst, Some("alice"), Some("staging"));
        assert_eq!(route.reason, Reason::Diverted);
        let _passed = d.note(
            &Request {
                direction: Direction::Inbound,
                key: Some("alice"),
                route: &route,
                dst,
                span: 0,
            },
            &t,
            Some("staging"),
            Looks::default(),
            String::new,
        );
        assert!(!outbound(&d, &t, CATALOG, None, false));
    }

    #[test]
    fn while_looked_at_a_drop_names_the_key_and_the_request_it_came_beside() {
        let (d, t) = (Drops::new(None), table());
        // Not looked at when it came in: not remembered, only counted.
        let first = inbound(&d, &t, Some("bob"), false);
        let dropped = |d: &Drops| {
            let dst = CATALOG.parse().unwrap();
            let route = t.route(dst, None, None);
            let r = Request {
                direction: Direction::Outbound,
                key: None,
                route: &route,
                dst,
                span: 0,
            };
            match d.note(&r, &t, Some("staging"), looks(true), String::new) {
                Noted::Dropped(x) => x,
                other => panic!("not a drop: {other:?}"),
            }
        };
        assert_eq!(dropped(&d), Dropped::default());
        drop(first);
        let _a = inbound(&d, &t, Some("bob"), true);
        let _b = inbound(&d, &t, Some("bob"), true);
        assert_eq!(
            dropped(&d),
            Dropped {
                key: Some("bob".into()),
                during: Some("GET api:8080/bob".into()),
                parent: 0,
            }
        );
        // Two keys in flight: which one lost it is not known.
        let _c = inbound(&d, &t, Some("carol"), true);
        let x = dropped(&d);
        assert_eq!(x.key, None);
        assert_eq!(x.during.as_deref(), Some("GET api:8080/bob"));
    }

    #[test]
    fn while_looked_at_a_call_names_the_one_request_it_was_made_for() {
        let (d, t) = (Drops::new(None), table());
        let served = |span, key| {
            let dst = "10.1.0.1:8080".parse().unwrap();
            let route = t.route_inbound(dst, Some(key), Some("staging"));
            let r = Request {
                direction: Direction::Inbound,
                key: Some(key),
                route: &route,
                dst,
                span,
            };
            d.note(&r, &t, Some("staging"), looks(true), String::new)
        };
        let call = |key: Option<&str>| {
            let dst = CATALOG.parse().unwrap();
            let route = t.route(dst, key, None);
            let r = Request {
                direction: Direction::Outbound,
                key,
                route: &route,
                dst,
                span: 99,
            };
            d.note(&r, &t, Some("staging"), looks(true), String::new)
                .parent()
        };
        let bob = served(7, "bob");
        assert_eq!(call(Some("bob")), 7, "bob's call, made for bob's request");
        assert_eq!(call(None), 7, "a drop, under the one keyed request");
        assert_eq!(call(Some("carol")), 0, "no carol in flight");
        let carol = served(8, "carol");
        assert_eq!(call(Some("bob")), 7);
        assert_eq!(call(Some("carol")), 8);
        assert_eq!(call(None), 0, "a drop beside two: which one is not known");
        drop(carol);
        let _bob_again = served(9, "bob");
        assert_eq!(call(Some("bob")), 0, "two of bob's: which one is not known");
        drop(bob);
        assert_eq!(call(Some("bob")), 9);
    }

    #[test]
    fn the_remembered_requests_leave_with_their_responses() {
        let (d, t) = (Drops::new(None), table());
        let a = inbound(&d, &t, Some("bob"), true);
        let b = inbound(&d, &t, None, true);
        assert_eq!(d.remembered.lock().unwrap().len(), 1);
        drop((a, b));
        assert!(d.remembered.lock().unwrap().is_empty());
        assert_eq!(d.keyed.load(Ordering::SeqCst), 0);
        assert_eq!(d.unkeyed.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn for_a_history_alone_spans_are_paired_but_no_request_line_is_kept() {
        let (d, t) = (Drops::new(None), table());
        let pairs = Looks {
            pairs: true,
            examples: false,
        };
        let dst = "10.1.0.1:8080".parse().unwrap();
        let route = t.route_inbound(dst, Some("bob"), Some("staging"));
        let asked = std::cell::Cell::new(false);
        let _bob = d.note(
            &Request {
                direction: Direction::Inbound,
                key: Some("bob"),
                route: &route,
                dst,
                span: 7,
            },
            &t,
            Some("staging"),
            pairs,
            || {
                asked.set(true);
                "GET api:8080/".into()
            },
        );
        assert!(!asked.get(), "the request line is not built");
        let dst = CATALOG.parse().unwrap();
        let route = t.route(dst, None, None);
        let noted = d.note(
            &Request {
                direction: Direction::Outbound,
                key: None,
                route: &route,
                dst,
                span: 8,
            },
            &t,
            Some("staging"),
            pairs,
            String::new,
        );
        assert_eq!(
            noted.dropped(),
            Some(&Dropped {
                key: Some("bob".into()),
                during: None,
                parent: 7,
            })
        );
    }

    #[test]
    fn a_given_pod_ip_names_the_service_and_an_unknown_one_leaves_it_empty() {
        let t = table();
        // alice's api pod's IP, but its namespace is alice, not staging.
        let d = Drops::new(Some("10.2.0.1".parse().unwrap()));
        let _bob = inbound(&d, &t, Some("bob"), false);
        assert!(outbound(&d, &t, CATALOG, None, false));
        assert_eq!(counts(&d)[0].0, "");
        let d = Drops::new(Some("10.1.0.1".parse().unwrap()));
        let _bob = inbound(&d, &t, Some("bob"), false);
        assert!(outbound(&d, &t, CATALOG, None, false));
        assert_eq!(counts(&d)[0].0, "api");
    }

    #[test]
    fn pairs_past_the_cap_share_one_label() {
        let d = Drops::new(None);
        for i in 0..MAX_SERIES + 3 {
            d.count("api", &format!("svc{i}.staging"));
        }
        d.count("api", "svc0.staging");
        let all = d.counts();
        assert_eq!(all.len(), MAX_SERIES + 1);
        let other = all.iter().find(|c| c.service == OTHER).unwrap();
        assert_eq!(other.count, 3);
        assert_eq!(
            all.iter()
                .find(|c| c.destination == "svc0.staging")
                .unwrap()
                .count,
            2
        );
    }

    #[test]
    fn an_example_is_due_once_a_minute_per_pair() {
        let d = Drops::new(None);
        assert!(d.count("api", "catalog.staging"));
        assert!(!d.count("api", "catalog.staging"));
        assert!(d.count("api", "rent.staging"));
        if let Ok(mut s) = d.series.lock() {
            let e = s
                .get_mut("api")
                .unwrap()
                .get_mut("catalog.staging")
                .unwrap();
            e.example = Instant::now().checked_sub(EXAMPLE_EVERY);
        }
        assert!(d.count("api", "catalog.staging"));
    }
}
