//! Prometheus metrics, under kube-proxy's names where they mean the same, and flowgate's own.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry, TextEncoder};

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// kube-proxy's `sync_proxy_rules_duration_seconds`: how long a sync (compile + apply) takes.
    pub sync_duration: Histogram,
    /// kube-proxy's `network_programming_duration_seconds`: from the change that triggered an
    /// EndpointSlice update to the data plane holding it.
    pub network_programming: Histogram,
    /// kube-proxy's `sync_proxy_rules_last_timestamp_seconds`.
    pub last_sync: prometheus::Gauge,
    /// `flowgate_sync_failures_total`: syncs that failed to compile or apply.
    pub sync_failures: IntCounter,
    /// `flowgate_sync_entries`: data-plane entries the last sync wrote.
    pub sync_entries: IntGauge,
    /// `flowgate_source_events_total`: events received from sources.
    pub source_events: IntCounter,
    /// `flowgate_source_errors_total`: errors reported by sources (retried by them).
    pub source_errors: IntCounter,
    /// `flowgate_unprogrammed_objects{kind, object, problem}`: 1 for each object not programmed
    /// as written (`kind`: `conflict` for claims the compiler left out, `dataplane` for objects
    /// the kernel did not take); gone once it is.
    pub unprogrammed: prometheus::IntGaugeVec,
}

fn buckets() -> Vec<f64> {
    // kube-proxy uses exponential buckets from 1 ms; flowgate's syncs are faster, so start lower.
    prometheus::exponential_buckets(0.0001, 2.0, 20).unwrap_or_default()
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let sync_duration = Histogram::with_opts(
            HistogramOpts::new("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds")
                .buckets(buckets()),
        )?;
        let network_programming = Histogram::with_opts(
            HistogramOpts::new(
                "network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
            )
            .buckets(buckets()),
        )?;
        let last_sync = prometheus::Gauge::with_opts(Opts::new(
            "sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
        ))?;
        let sync_failures =
            IntCounter::with_opts(Opts::new("flowgate_sync_failures_total", "Syncs that failed to compile or apply"))?;
        let sync_entries =
            IntGauge::with_opts(Opts::new("flowgate_sync_entries", "Data-plane entries written by the last sync"))?;
        let source_events =
            IntCounter::with_opts(Opts::new("flowgate_source_events_total", "Events received from sources"))?;
        let source_errors =
            IntCounter::with_opts(Opts::new("flowgate_source_errors_total", "Errors reported by sources"))?;
        registry.register(Box::new(sync_duration.clone()))?;
        registry.register(Box::new(network_programming.clone()))?;
        registry.register(Box::new(last_sync.clone()))?;
        registry.register(Box::new(sync_failures.clone()))?;
        registry.register(Box::new(sync_entries.clone()))?;
        registry.register(Box::new(source_events.clone()))?;
        registry.register(Box::new(source_errors.clone()))?;
        let unprogrammed = prometheus::IntGaugeVec::new(
            Opts::new(
                "flowgate_unprogrammed_objects",
                "Objects not programmed as written (conflicting, refused, or not taken by the data plane)",
            ),
            &["kind", "object", "problem"],
        )?;
        registry.register(Box::new(unprogrammed.clone()))?;
        Ok(Metrics {
            registry,
            sync_duration,
            network_programming,
            last_sync,
            sync_failures,
            sync_entries,
            source_events,
            source_errors,
            unprogrammed,
        })
    }

    /// Replaces the objects of one kind that are not programmed (`(object, problem)` pairs).
    pub fn set_problems<'a>(&self, kind: &str, problems: impl Iterator<Item = (&'a str, &'a str)>) {
        // Drop the kind's old series, then add the current ones.
        for family in self.registry.gather() {
            if family.name() != "flowgate_unprogrammed_objects" {
                continue;
            }
            for m in family.get_metric() {
                let labels: Vec<(&str, &str)> = m.get_label().iter().map(|l| (l.name(), l.value())).collect();
                if labels.iter().any(|(n, v)| *n == "kind" && *v == kind) {
                    let get = |name: &str| labels.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).unwrap_or("");
                    let _ = self.unprogrammed.remove_label_values(&[kind, get("object"), get("problem")]);
                }
            }
        }
        // At most 1,000 series per kind: the label values come from tenants' objects.
        for (object, problem) in problems.take(1000) {
            self.unprogrammed.with_label_values(&[kind, object, problem]).set(1);
        }
    }

    /// The kernel data plane's counters (`Dataplane::counters`) in Prometheus' text format: packets
    /// by outcome; the flow tables' entries (`flow_entries_*`, as the last sweep counted them) as
    /// gauges; what happened to connections under pressure (`flows_*`) as counters.
    pub fn render_dataplane(counters: &[(String, u64)]) -> String {
        let mut packets = String::new();
        let mut entries = String::new();
        let mut flows = String::new();
        for (name, value) in counters {
            if let Some(table) = name.strip_prefix("flow_entries_") {
                entries.push_str(&format!("flowgate_flow_entries{{table=\"{table}\"}} {value}\n"));
            } else if let Some(event) = name.strip_prefix("flows_") {
                flows.push_str(&format!("flowgate_flows_total{{event=\"{event}\"}} {value}\n"));
            } else {
                packets.push_str(&format!("flowgate_dataplane_packets_total{{outcome=\"{name}\"}} {value}\n"));
            }
        }
        let mut text = String::new();
        for (name, kind, help, body) in [
            ("flowgate_dataplane_packets_total", "counter", "Packets seen by the kernel data plane, by outcome.", packets),
            (
                "flowgate_flow_entries",
                "gauge",
                "Entries of the kernel flow tables (established: never evicted for new connections; embryonic: LRU), at the last sweep.",
                entries,
            ),
            (
                "flowgate_flows_total",
                "counter",
                "Connections of the kernel flow tables: promoted to established, expired, evicted (an embryonic connection gave its port to a new one), refused promotion (established table full), rebound (given another source port: their reply key was taken).",
                flows,
            ),
        ] {
            if !body.is_empty() {
                text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{body}"));
            }
        }
        text
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataplane_counters_render_as_packets_flow_entries_and_flow_events() {
        let counters: Vec<(String, u64)> = [
            ("allowed", 7),
            ("dropped_nat_exhausted", 1),
            ("flows_evicted", 3),
            ("flow_entries_established", 20),
            ("flow_entries_embryonic", 5),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
        let text = Metrics::render_dataplane(&counters);
        for line in [
            "# TYPE flowgate_dataplane_packets_total counter",
            "flowgate_dataplane_packets_total{outcome=\"allowed\"} 7",
            "flowgate_dataplane_packets_total{outcome=\"dropped_nat_exhausted\"} 1",
            "# TYPE flowgate_flow_entries gauge",
            "flowgate_flow_entries{table=\"established\"} 20",
            "flowgate_flow_entries{table=\"embryonic\"} 5",
            "# TYPE flowgate_flows_total counter",
            "flowgate_flows_total{event=\"evicted\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
        assert!(Metrics::render_dataplane(&[]).is_empty());
    }
}
