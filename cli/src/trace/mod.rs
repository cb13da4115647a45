//! `divert trace`: the call tree of one key, from what every proxy saw.
//!
//! The tap's events for a key ([`crate::tap`], through the controller's
//! relay) are grouped into trees ([`tree`]) by the links the proxies
//! report, and shown as a tree of lines or as JSON ([`render`]): for each
//! request, which copy served it and why, its status and latency, and
//! where the key was lost (a call an app made without the key of the
//! request it was serving).

pub mod render;
pub mod tree;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use divert_core::names::parse_dns_label;
use divert_proto::tap::v1::{TapEvent, TapRequest};
use serde_json::Value;

use crate::tap::{TapError, TapSource};
use render::Style;
use tree::Node;

#[derive(Args, Debug)]
pub struct TraceArgs {
    #[command(flatten)]
    source: TapSource,

    /// The divert key whose call trees to show.
    #[arg(long, value_name = "KEY", value_parser = parse_dns_label)]
    key: String,

    /// Read the events from a file saved with `divert tap --key KEY
    /// --output json` (`-`: standard input) instead of watching.
    #[arg(long, value_name = "FILE", conflicts_with = "controller")]
    from: Option<PathBuf>,

    /// First the trees of the last DURATION that the proxies kept (each
    /// keeps its last few hundred requests with a key), then stop, unless
    /// --follow (5m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = divert_core::duration::parse)]
    since: Option<Duration>,

    /// With --since: go on watching live after the kept trees.
    #[arg(long, requires = "since")]
    follow: bool,

    /// Stop after this many trees.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,

    /// Watching: how long a tree waits, once its first request has
    /// answered, for the events other proxies report later (250ms, 2s). A
    /// part of a tree whose first request is not seen (its caller's proxy
    /// is one you may not tap) is printed after ten times this.
    #[arg(long, default_value = "1s", value_parser = divert_core::duration::parse, value_name = "DURATION")]
    settle: Duration,

    /// `text` for people (a tree), `json` for machines (one tree per line).
    #[arg(long, short = 'o', value_enum, default_value_t = crate::tap::Output::Text)]
    output: crate::tap::Output,

    /// Colour in text: on a terminal (`auto`), `always` or `never`.
    #[arg(long, value_enum, default_value_t = Colour::Auto)]
    colour: Colour,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    Auto,
    Always,
    Never,
}

/// Events kept while watching, waiting for their trees' roots; past it,
/// the oldest go.
const MAX_PENDING: usize = 100_000;

pub fn main(args: TraceArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("divert trace: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let colour = match args.colour {
        Colour::Always => true,
        Colour::Never => false,
        Colour::Auto => std::io::stdout().is_terminal(),
    };
    let mut out = Printer {
        out: std::io::stdout().lock(),
        key: args.key.clone(),
        style: Style { colour },
        json: args.output == crate::tap::Output::Json,
        printed: 0,
        limit: args.limit,
    };
    let result = match &args.from {
        Some(path) => from_file(path, &args.key, &mut out),
        None => runtime.block_on(async {
            tokio::select! {
                result = watch(&args, &mut out) => result,
                Ok(()) = tokio::signal::ctrl_c() => Ok(()),
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(TapError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("divert trace: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where the trees go, and how many may.
struct Printer<W> {
    out: W,
    key: String,
    style: Style,
    json: bool,
    printed: u64,
    limit: Option<u64>,
}

impl<W: Write> Printer<W> {
    /// Prints trees until the limit; whether more may come.
    fn print(&mut self, trees: &[Node]) -> Result<bool, TapError> {
        for tree in trees {
            if self.done() {
                break;
            }
            let one = std::slice::from_ref(tree);
            if self.json {
                writeln!(self.out, "{}", render::json(one)[0])?;
            } else {
                write!(self.out, "{}", render::text(one, &self.key, self.style))?;
            }
            self.printed += 1;
        }
        self.out.flush()?;
        Ok(!self.done())
    }

    fn done(&self) -> bool {
        self.limit.is_some_and(|l| self.printed >= l)
    }
}

/// The trees of a saved tap, of `key`'s events only.
fn from_file(
    path: &std::path::Path,
    key: &str,
    out: &mut Printer<impl Write>,
) -> Result<(), TapError> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(path)?))
    };
    let mut events = Vec::new();
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let event = event_from_json(&serde_json::from_str(&line)?);
        if event.key == key || event.dropped_key == key {
            events.push(event);
        }
    }
    out.print(&tree::build(events))?;
    Ok(())
}

/// Whether an event ends a tree: its request came from outside (a caller
/// without a sidecar) or from an app on its own, and its response head is
/// known, so its calls have answered.
fn is_root(e: &TapEvent) -> bool {
    e.parent_span_id == 0
}

/// Watches `key`'s events and prints each tree once its root has
/// answered and `settle` has passed. With `--since` and without
/// `--follow`, stops once the kept events have come (a quiet `settle`).
async fn watch(args: &TraceArgs, out: &mut Printer<impl Write>) -> Result<(), TapError> {
    let since_micros = args.since.map_or(0, |d| {
        std::time::SystemTime::now()
            .checked_sub(d)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(1, |t| {
                u64::try_from(t.as_micros()).unwrap_or(u64::MAX).max(1)
            })
    });
    let request = TapRequest {
        key: args.key.clone(),
        since_micros,
        ..TapRequest::default()
    };
    let history_only = args.since.is_some() && !args.follow;
    let (source, mut stream) = args.source.watch(request).await?;
    // Each event with when it came; a timer for the next look.
    let mut pending: Vec<TapEvent> = Vec::new();
    let mut came: std::collections::HashMap<u64, tokio::time::Instant> = Default::default();
    // An event kept and then seen live comes twice.
    let mut seen: std::collections::HashSet<(String, u64)> = Default::default();
    let mut last = tokio::time::Instant::now();
    let look = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(look);
    let mut waiting = false;
    if history_only {
        look.as_mut().reset(last + args.settle);
        waiting = true;
    }
    loop {
        tokio::select! {
            message = stream.message() => {
                let event = match message {
                    Ok(Some(e)) => e,
                    Ok(None) => {
                        // What is left is printed as it is.
                        out.print(&tree::build(std::mem::take(&mut pending)))?;
                        eprintln!("divert trace: {source} ended the stream");
                        return Ok(());
                    }
                    Err(status) => return Err(TapError::Stream { server: source, status }),
                };
                if seen.len() > 2 * MAX_PENDING {
                    // Forgetting only risks printing a twice-sent event twice.
                    seen.clear();
                }
                if event.span_id != 0
                    && !seen.insert((event.proxy_pod.clone(), event.span_id))
                {
                    continue;
                }
                last = tokio::time::Instant::now();
                came.insert(event.span_id, last);
                if !waiting {
                    look.as_mut().reset(tokio::time::Instant::now() + args.settle);
                    waiting = true;
                }
                pending.push(event);
                if pending.len() > MAX_PENDING {
                    pending.drain(..pending.len() - MAX_PENDING);
                }
            }
            () = &mut look, if waiting => {
                waiting = false;
                let now = tokio::time::Instant::now();
                if history_only && now.duration_since(last) >= args.settle {
                    // The kept events have all come: every tree, as it is.
                    out.print(&tree::build(std::mem::take(&mut pending)))?;
                    return Ok(());
                }
                let stale = |t: &Node| {
                    t.first()
                        .and_then(|e| came.get(&e.span_id))
                        .is_some_and(|at| now.duration_since(*at) >= args.settle * 10)
                };
                let (ready, rest) = complete(std::mem::take(&mut pending), stale);
                pending = rest;
                let kept: std::collections::HashSet<u64> =
                    pending.iter().map(|e| e.span_id).collect();
                came.retain(|span, _| kept.contains(span));
                if !out.print(&ready)? {
                    return Ok(());
                }
                if !pending.is_empty() || history_only {
                    look.as_mut().reset(now + args.settle);
                    waiting = true;
                }
            }
        }
    }
}

/// The trees whose root has answered (or that waited long enough for a
/// root they will not get: `stale`), and the events of the others.
fn complete(events: Vec<TapEvent>, stale: impl Fn(&Node) -> bool) -> (Vec<Node>, Vec<TapEvent>) {
    let (ready, waiting): (Vec<Node>, Vec<Node>) = tree::build(events)
        .into_iter()
        .partition(|t| t.first().is_some_and(is_root) || stale(t));
    let mut rest = Vec::new();
    for t in waiting {
        t.into_events(&mut rest);
    }
    (ready, rest)
}

/// An event from one line of `divert tap --output json` (the same names),
/// as the traces of tests and of `--from` files are kept. Missing fields
/// are empty.
pub fn event_from_json(v: &Value) -> TapEvent {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let n = |k: &str| v[k].as_u64().unwrap_or_default();
    TapEvent {
        unix_micros: n("unixMicros"),
        proxy_pod: s("proxyPod"),
        proxy_namespace: s("proxyNamespace"),
        protocol: s("protocol"),
        method: s("method"),
        authority: s("authority"),
        path: s("path"),
        key: s("key"),
        original_dst: s("originalDst"),
        target: s("target"),
        target_namespace: s("targetNamespace"),
        service: s("service"),
        endpoint: s("endpoint"),
        decision: s("decision"),
        reason: s("reason"),
        status: u32::try_from(n("status")).unwrap_or_default(),
        latency_micros: n("latencyMicros"),
        error: s("error"),
        dropped_before: n("droppedBefore"),
        baggage_rejected: s("baggageRejected"),
        direction: s("direction"),
        key_dropped: v["keyDropped"].as_bool().unwrap_or_default(),
        dropped_key: s("droppedKey"),
        dropped_during: s("droppedDuring"),
        span_id: n("spanId"),
        parent_span_id: n("parentSpanId"),
        trace_id: s("traceId"),
        trace_parent_id: s("traceParentId"),
    }
}

#[cfg(test)]
mod tests {
    use super::render::{Style, json, text};
    use super::*;

    /// The events of `cli/testdata/trace/NAME.jsonl`, one per line.
    fn events(name: &str) -> Vec<TapEvent> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/trace")
            .join(format!("{name}.jsonl"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| event_from_json(&serde_json::from_str(l).expect("JSON")))
            .collect()
    }

    /// Compares with `cli/testdata/trace/NAME.txt`; `DIVERT_BLESS=1`
    /// writes it instead.
    fn golden(name: &str, got: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/trace")
            .join(format!("{name}.txt"));
        if std::env::var("DIVERT_BLESS").is_ok_and(|v| v == "1") {
            std::fs::write(&path, got).expect("write the golden file");
            return;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (DIVERT_BLESS=1 writes it)", path.display()));
        assert_eq!(
            got, want,
            "{name}: the rendering changed (DIVERT_BLESS=1 writes it)"
        );
    }

    #[test]
    fn the_movies_chain_shows_where_api_lost_alices_key() {
        let trees = tree::build(events("movies-drop"));
        golden(
            "movies-drop",
            &text(&trees, "alice", Style { colour: false }),
        );
        let coloured = text(&trees, "alice", Style { colour: true });
        assert!(
            coloured.contains("\x1b[31m"),
            "the drop is red on a terminal"
        );
        let v = json(&trees);
        let api = &v[0]["children"][0];
        assert_eq!(api["service"], "api");
        assert_eq!(api["copy"], "staging");
        assert_eq!(api["keyDropped"], false);
        let catalog = &api["children"][0];
        assert_eq!(catalog["service"], "catalog");
        assert_eq!(catalog["keyDropped"], true);
        assert_eq!(catalog["reasons"], serde_json::json!(["no_key", "no_key"]));
    }

    #[test]
    fn calls_hang_under_the_request_they_were_made_for_in_the_order_they_started() {
        let trees = tree::build(events("movies-fanout"));
        golden(
            "movies-fanout",
            &text(&trees, "bob", Style { colour: false }),
        );
        assert_eq!(trees.len(), 1);
        let v = json(&trees);
        let children: Vec<&str> = v[0]["children"]
            .as_array()
            .expect("children")
            .iter()
            .map(|c| c["service"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(children, ["api", "rent"], "api's call started first");
        assert_eq!(v[0]["children"][1]["copy"], "bob");
    }

    #[test]
    fn a_saved_tap_of_the_key_prints_its_trees_up_to_the_limit() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/trace");
        let mut both = std::fs::read_to_string(path.join("movies-drop.jsonl")).unwrap();
        both.push_str(&std::fs::read_to_string(path.join("movies-fanout.jsonl")).unwrap());
        let dir = std::env::temp_dir().join(format!("divert-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tap.jsonl");
        std::fs::write(&file, both).unwrap();
        let printed = |key: &str, limit| {
            let mut out = Printer {
                out: Vec::new(),
                key: key.into(),
                style: Style { colour: false },
                json: false,
                printed: 0,
                limit,
            };
            from_file(&file, key, &mut out).unwrap();
            String::from_utf8(out.out).unwrap()
        };
        let alice = printed("alice", None);
        let want = std::fs::read_to_string(path.join("movies-drop.txt")).unwrap();
        assert_eq!(alice, want, "only alice's events, her drop included");
        assert_eq!(printed("bob", Some(1)).lines().count(), 5);
        assert_eq!(printed("carol", None), "");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_tree_is_ready_once_its_root_has_answered() {
        let mut all = events("movies-drop");
        // The root (the request from outside) answers last.
        let root = all.remove(0);
        let (ready, rest) = complete(all.clone(), |_| false);
        assert!(ready.is_empty(), "{ready:#?}");
        assert_eq!(rest.len(), all.len(), "every event waits for its root");
        // One that will never come (a proxy the viewer may not tap).
        let (ready, rest) = complete(all.clone(), |_| true);
        assert_eq!((ready.len(), rest.len()), (1, 0), "printed as it is");
        all.push(root);
        let (ready, rest) = complete(all, |_| false);
        assert_eq!((ready.len(), rest.len()), (1, 0));
        assert_eq!(ready[0].count(), 3);
    }

    #[test]
    fn an_event_reads_back_from_taps_json() {
        let e = TapEvent {
            unix_micros: 7,
            method: "GET".into(),
            key_dropped: true,
            span_id: 3,
            parent_span_id: 2,
            trace_id: "t".into(),
            ..TapEvent::default()
        };
        let line = crate::tap::format_json(&e).expect("JSON");
        let back = event_from_json(&serde_json::from_str(&line).expect("JSON"));
        assert_eq!(back, e);
    }
}
