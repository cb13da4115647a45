//! The counters as Prometheus text, per scrape ([`Collector`]): only series
//! that ever moved are written, so a target namespace appears once it has
//! had a request.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{
    CONNECTION_CLASSES, ConnectionStats, KEY_REJECTIONS, Metrics, STATUS_CLASSES, TargetStats,
    UpstreamFailure,
};
use crate::limits::Timeout;
use crate::protocol::Protocol;
use crate::reason::{Decision, Reason};
use crate::semantics::cookie;

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Vec<(&'static str, String)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Vec<(&'static str, String)>, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn label(v: &str) -> String {
    v.to_owned()
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut targets: Vec<Arc<TargetStats>> = self
            .targets
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        targets.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        targets.push(self.passthrough.clone());
        targets.push(self.other.clone());

        // Only series that ever moved are written: a target namespace
        // appears once it has had a request.
        let mut requests = Vec::new();
        let mut responses = Vec::new();
        for t in &targets {
            for (p, per_reason) in t.requests.iter().enumerate() {
                for (r, n) in per_reason.iter().enumerate() {
                    let n = n.load(Ordering::Relaxed);
                    if n > 0 {
                        let reason = Reason::ALL[r];
                        requests.push((
                            vec![
                                ("protocol", label(Protocol::ALL[p].as_str())),
                                ("decision", label(Decision::of(reason).as_str())),
                                ("reason", label(reason.as_str())),
                                ("target_namespace", label(&t.namespace)),
                            ],
                            n,
                        ));
                    }
                }
            }
            for (p, per_decision) in t.responses.iter().enumerate() {
                for (d, per_class) in per_decision.iter().enumerate() {
                    for (c, n) in per_class.iter().enumerate() {
                        let n = n.load(Ordering::Relaxed);
                        if n > 0 {
                            responses.push((
                                vec![
                                    ("protocol", label(Protocol::ALL[p].as_str())),
                                    ("decision", label(Decision::ALL[d].as_str())),
                                    ("target_namespace", label(&t.namespace)),
                                    ("status_class", label(STATUS_CLASSES[c])),
                                ],
                                n,
                            ));
                        }
                    }
                }
            }
        }
        counter(
            &mut encoder,
            "requests",
            "HTTP requests and gRPC calls routed, by the rule's decision and reason",
            requests,
        )?;
        counter(
            &mut encoder,
            "responses",
            "Responses sent to clients (the proxy's own errors included), by status class",
            responses,
        )?;

        {
            let mut latency = encoder.encode_descriptor(
                "response_latency_seconds",
                "Time from a request's arrival to its response head",
                None,
                MetricType::Histogram,
            )?;
            for (p, per_decision) in self.latency.iter().enumerate() {
                for (d, h) in per_decision.iter().enumerate() {
                    let (sum, count, buckets) = h.snapshot();
                    if count == 0 {
                        continue;
                    }
                    let labels = [
                        ("protocol", Protocol::ALL[p].as_str()),
                        ("decision", Decision::ALL[d].as_str()),
                    ];
                    latency
                        .encode_family(&labels)?
                        .encode_histogram::<[(&str, &str); 0]>(sum, count, &buckets, None)?;
                }
            }
        }

        let per_protocol = |f: fn(&ConnectionStats) -> u64| {
            CONNECTION_CLASSES
                .iter()
                .zip(&self.connections)
                .map(move |(p, c)| (vec![("protocol", label(p.connection_label()))], f(c)))
                .filter(|(_, n)| *n > 0)
                .collect::<Vec<_>>()
        };
        counter(
            &mut encoder,
            "tcp_connections",
            "Client connections accepted, by the protocol they spoke",
            per_protocol(|c| c.opened.load(Ordering::Relaxed)),
        )?;
        gauge(
            &mut encoder,
            "tcp_open_connections",
            "Client connections open now",
            CONNECTION_CLASSES
                .iter()
                .zip(&self.connections)
                .map(|(p, c)| {
                    (
                        vec![("protocol", label(p.connection_label()))],
                        i64::try_from(c.open()).unwrap_or(i64::MAX),
                    )
                }),
        )?;
        counter(
            &mut encoder,
            "tcp_read_bytes",
            "Bytes read from clients",
            per_protocol(|c| c.read_bytes.load(Ordering::Relaxed)),
        )?;
        counter(
            &mut encoder,
            "tcp_written_bytes",
            "Bytes written to clients",
            per_protocol(|c| c.written_bytes.load(Ordering::Relaxed)),
        )?;

        let failures = |connect: bool| {
            UpstreamFailure::ALL
                .iter()
                .filter(move |f| f.is_connect() == connect)
                .map(|f| {
                    (
                        vec![("reason", label(f.as_str()))],
                        self.upstream_failures[*f as usize].load(Ordering::Relaxed),
                    )
                })
                .collect::<Vec<_>>()
        };
        counter(
            &mut encoder,
            "upstream_connect_errors",
            "Upstream connections that could not be made, by why",
            failures(true),
        )?;
        counter(
            &mut encoder,
            "upstream_request_errors",
            "Requests that failed upstream after routing (the client got the proxy's error), by why",
            failures(false),
        )?;
        counter(
            &mut encoder,
            "baggage_rejected",
            "Requests whose divert key was not used, by why (the request went on as if it had none)",
            KEY_REJECTIONS.iter().map(|r| {
                (
                    vec![("reason", label(r.as_str()))],
                    self.key_rejections[r.index()].load(Ordering::Relaxed),
                )
            }),
        )?;
        counter(
            &mut encoder,
            "timeouts",
            "Waits that ran out, by which (see `divert-proxy proxy --help` for each limit)",
            Timeout::ALL.iter().map(|t| {
                (
                    vec![("timeout", label(t.as_str()))],
                    self.timeouts[*t as usize].load(Ordering::Relaxed),
                )
            }),
        )?;
        counter(
            &mut encoder,
            "request_heads_too_large",
            "HTTP/1 requests refused with 431: the head was past --max-request-head",
            [(Vec::new(), self.heads_too_large.load(Ordering::Relaxed))],
        )?;
        counter(
            &mut encoder,
            "http2_reset_floods",
            "HTTP/2 connections closed (GOAWAY) for resetting far more streams than they waited for",
            [(Vec::new(), self.reset_floods.load(Ordering::Relaxed))],
        )?;
        counter(
            &mut encoder,
            "tap_dropped_events",
            "Tap events lost because a watcher's buffer was full",
            [(Vec::new(), self.tap_dropped.load(Ordering::Relaxed))],
        )?;
        counter(
            &mut encoder,
            "key_cookie",
            "Key cookies and ?divert= parameters, by what became of them",
            cookie::Outcome::ALL
                .iter()
                .zip(&self.key_cookies)
                .map(|(o, n)| {
                    (
                        vec![("result", label(o.as_str()))],
                        n.load(Ordering::Relaxed),
                    )
                })
                .filter(|(_, n)| *n > 0),
        )?;
        Ok(())
    }
}
