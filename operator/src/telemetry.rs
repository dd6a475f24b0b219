//! Logs (tracing, JSON in the cluster) and metrics (OpenTelemetry, exported
//! for Prometheus on `/metrics`).

use opentelemetry::KeyValue;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use opentelemetry::metrics::{Counter, Gauge, Histogram, MeterProvider as _, ObservableGauge};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, Registry, TextEncoder};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::error::OperatorError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Keeps the optional OTLP trace export running; dropping it flushes what
/// is buffered.
#[must_use = "dropping the guard stops trace export"]
#[derive(Default)]
pub struct TracingGuard {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global tracing subscriber. `RUST_LOG` filters (default
/// `info`). With the `otlp` feature and an OTLP endpoint in the
/// environment, spans are also exported as traces.
pub fn init_logging(format: LogFormat) -> TracingGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube=warn,hyper=warn"));
    #[allow(unused_mut)]
    let mut guard = TracingGuard::default();
    #[cfg(feature = "otlp")]
    let traces = match crate::otlp::traces_endpoint(|k| std::env::var(k).ok()) {
        None => None,
        Some(endpoint) => match crate::otlp::tracer_provider(&endpoint) {
            Ok(provider) => {
                let layer = crate::otlp::layer(&provider);
                guard.provider = Some(provider);
                Some(layer)
            }
            Err(e) => {
                eprintln!("OTLP traces disabled: {e}");
                None
            }
        },
    };
    #[cfg(not(feature = "otlp"))]
    let traces: Option<tracing_subscriber::layer::Identity> = None;
    let registry = tracing_subscriber::registry().with(filter).with(traces);
    match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            )
            .init(),
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer()).init(),
    }
    guard
}

/// Every instrument the operator records. Labels never carry image names
/// (unbounded cardinality); they carry the policy or restore and a result.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    _provider: SdkMeterProvider,
    pub reconciles: Counter<u64>,
    pub reconcile_errors: Counter<u64>,
    /// `lifeboat_images` and `lifeboat_backup_last_success_timestamp`.
    pub policies: PolicyGauges,
    _policy_gauges: (ObservableGauge<u64>, ObservableGauge<f64>),
    pub backup_runs: Counter<u64>,
    pub bytes_copied: Counter<u64>,
    pub copy_duration: Histogram<f64>,
    pub retention_deleted: Counter<u64>,
    pub retention_failures: Counter<u64>,
    pub restores: Counter<u64>,
    pub restore_duration: Histogram<f64>,
    pub copy_queue_depth: Gauge<u64>,
    pub copies_cancelled: Counter<u64>,
    /// Admission reviews answered, by mode and verdict.
    pub admissions: Counter<u64>,
    pub admission_duration: Histogram<f64>,
    /// Requests the operator sent to the Kubernetes API, by verb and
    /// resource (`api_requests::ApiRequestCountLayer`).
    pub api_requests: Counter<u64>,
}

impl Metrics {
    pub fn new() -> Result<Self, OperatorError> {
        let registry = Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .build()
            .map_err(|e| OperatorError::Telemetry(e.to_string()))?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let meter = provider.meter("lifeboat");
        let policies = PolicyGauges::default();
        let duration_buckets = vec![
            0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
        ];
        Ok(Metrics {
            registry,
            reconciles: meter
                .u64_counter("lifeboat_reconciles")
                .with_description("Reconciliations by kind")
                .build(),
            reconcile_errors: meter
                .u64_counter("lifeboat_reconcile_errors")
                .with_description("Failed reconciliations by kind and error reason")
                .build(),
            _policy_gauges: policies.gauges(&meter),
            policies,
            backup_runs: meter
                .u64_counter("lifeboat_backup_runs")
                .with_description("Backup runs by policy and result")
                .build(),
            bytes_copied: meter
                .u64_counter("lifeboat_copied")
                .with_unit("By")
                .with_description("Bytes copied into backup targets")
                .build(),
            copy_duration: meter
                .f64_histogram("lifeboat_image_copy_duration")
                .with_unit("s")
                .with_boundaries(duration_buckets.clone())
                .with_description("Time to copy one image to one target")
                .build(),
            retention_deleted: meter
                .u64_counter("lifeboat_retention_deleted")
                .with_description("Digests retention deleted from backup targets, by policy")
                .build(),
            retention_failures: meter
                .u64_counter("lifeboat_retention_failures")
                .with_description(
                    "Retention steps (listing, reading, deleting) that failed, by policy",
                )
                .build(),
            copy_queue_depth: meter
                .u64_gauge("lifeboat_copy_queue_depth")
                .with_description(
                    "Image copies queued and running, by route (source registry -> target registry) and state",
                )
                .build(),
            copies_cancelled: meter
                .u64_counter("lifeboat_copies_cancelled")
                .with_description("Image copies cancelled at their overall deadline, by route")
                .build(),
            restores: meter
                .u64_counter("lifeboat_restores")
                .with_description("Finished ImageRestores by result")
                .build(),
            restore_duration: meter
                .f64_histogram("lifeboat_restore_duration")
                .with_unit("s")
                .with_boundaries(duration_buckets)
                .with_description("Time from an ImageRestore's start to its completion")
                .build(),
            admissions: meter
                .u64_counter("lifeboat_admissions")
                .with_description(
                    "Admission reviews answered, by mode (Warn, Ensure, Enforce, none) and verdict (allowed, warned, waited, denied, invalid)",
                )
                .build(),
            admission_duration: meter
                .f64_histogram("lifeboat_admission_duration")
                .with_unit("s")
                .with_boundaries(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .with_description("Time to answer one admission review, by mode")
                .build(),
            api_requests: meter
                .u64_counter("lifeboat_kube_api_requests")
                .with_description(
                    "Requests sent to the Kubernetes API server, by HTTP verb and resource (watches included, once each)",
                )
                .build(),
            _provider: provider,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Result<Vec<u8>, OperatorError> {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .map_err(|e| OperatorError::Telemetry(e.to_string()))?;
        Ok(buffer)
    }
}

/// What the per-policy gauges report, per policy.
#[derive(Clone, Debug, Default)]
struct PolicyGaugeValues {
    /// Images by state (`protected`, `pending`, ...).
    images: Vec<(&'static str, u64)>,
    /// Unix time of the last successful run.
    last_success: Option<f64>,
}

/// The per-policy gauges' values, read by observable gauges at each
/// scrape. A synchronous gauge would report the last value of every label
/// set for as long as the process lives, so a deleted policy would keep
/// its images "missing" and its last success aging into a stale-backup
/// alert; here its series go with its entry ([`PolicyGauges::retain`]).
#[derive(Clone, Default)]
pub struct PolicyGauges {
    values: Arc<Mutex<BTreeMap<(String, String), PolicyGaugeValues>>>,
    /// Whether a policy (namespace, name) still exists, asked at each
    /// scrape so a deleted one's series go at once, not at the next
    /// reconcile (there may be none).
    exists: Arc<std::sync::OnceLock<PolicyExists>>,
}

type PolicyExists = Box<dyn Fn(&str, &str) -> bool + Send + Sync>;

impl PolicyGauges {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<(String, String), PolicyGaugeValues>) -> T,
    ) -> T {
        f(&mut self.values.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A policy's images by state.
    pub fn set_images(&self, namespace: &str, name: &str, images: Vec<(&'static str, u64)>) {
        self.with(|values| {
            values
                .entry((namespace.to_owned(), name.to_owned()))
                .or_default()
                .images = images;
        });
    }

    /// A policy's last successful run (Unix seconds).
    pub fn set_last_success(&self, namespace: &str, name: &str, unix_seconds: f64) {
        self.with(|values| {
            values
                .entry((namespace.to_owned(), name.to_owned()))
                .or_default()
                .last_success = Some(unix_seconds);
        });
    }

    /// From now on, reports only policies `exists` says exist (set once,
    /// by the controller with its cache of policies).
    pub fn report_only_existing(
        &self,
        exists: impl Fn(&str, &str) -> bool + Send + Sync + 'static,
    ) {
        let _ = self.exists.set(Box::new(exists));
    }

    /// The values to report now.
    fn current(&self) -> Vec<((String, String), PolicyGaugeValues)> {
        let exists = self.exists.get();
        self.with(|values| {
            values
                .iter()
                .filter(|((namespace, name), _)| exists.is_none_or(|e| e(namespace, name)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    /// Keeps only the policies `live` says exist (namespace, name).
    pub fn retain(&self, live: impl Fn(&str, &str) -> bool) {
        self.with(|values| values.retain(|(namespace, name), _| live(namespace, name)));
    }

    fn gauges(
        &self,
        meter: &opentelemetry::metrics::Meter,
    ) -> (ObservableGauge<u64>, ObservableGauge<f64>) {
        let images = self.clone();
        let last_success = self.clone();
        (
            meter
                .u64_observable_gauge("lifeboat_images")
                .with_description(
                    "Images a policy selects, by state (protected, pending, failed, missing, unreachable)",
                )
                .with_callback(move |observer| {
                    for ((namespace, name), value) in images.current() {
                        let labels = object_labels("ImageBackupPolicy", &namespace, &name);
                        for (state, count) in value.images {
                            let mut attributes = labels.to_vec();
                            attributes.push(KeyValue::new("state", state));
                            observer.observe(count, &attributes);
                        }
                    }
                })
                .build(),
            meter
                .f64_observable_gauge("lifeboat_backup_last_success_timestamp")
                .with_unit("s")
                .with_description("Unix time of each policy's last successful backup run")
                .with_callback(move |observer| {
                    for ((namespace, name), value) in last_success.current() {
                        if let Some(at) = value.last_success {
                            observer.observe(at, &object_labels("ImageBackupPolicy", &namespace, &name));
                        }
                    }
                })
                .build(),
        )
    }
}

/// Labels identifying one custom resource.
pub fn object_labels(kind: &'static str, namespace: &str, name: &str) -> [KeyValue; 3] {
    [
        KeyValue::new("kind", kind),
        KeyValue::new("namespace", namespace.to_owned()),
        KeyValue::new("name", name.to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_metrics_appear_in_the_exposition() {
        let metrics = Metrics::new().unwrap();
        metrics
            .reconciles
            .add(3, &[KeyValue::new("kind", "ImageBackupPolicy")]);
        metrics
            .bytes_copied
            .add(1024, &object_labels("ImageBackupPolicy", "prod", "web"));
        let text = String::from_utf8(metrics.encode().unwrap()).unwrap();
        let reconciles = text
            .lines()
            .find(|l| l.starts_with("lifeboat_reconciles_total{"))
            .unwrap_or_default();
        assert!(
            reconciles.contains("kind=\"ImageBackupPolicy\"") && reconciles.ends_with(" 3"),
            "{text}"
        );
        assert!(text.contains("lifeboat_copied_bytes_total{"), "{text}");
        assert!(text.contains("name=\"web\""), "{text}");
    }

    #[test]
    fn a_forgotten_policy_s_gauges_disappear() {
        let metrics = Metrics::new().unwrap();
        metrics
            .policies
            .set_images("prod", "web", vec![("missing", 2), ("unreachable", 1)]);
        metrics
            .policies
            .set_images("prod", "api", vec![("missing", 0)]);
        metrics
            .policies
            .set_last_success("prod", "web", 1_800_000_000.0);
        let text = String::from_utf8(metrics.encode().unwrap()).unwrap();
        let web_series = |text: &str| {
            text.lines()
                .filter(|l| !l.starts_with('#') && l.contains("name=\"web\""))
                .count()
        };
        assert_eq!(web_series(&text), 3, "{text}");
        assert!(
            text.lines().any(|l| l.starts_with("lifeboat_images{")
                && l.contains("state=\"unreachable\"")
                && l.ends_with(" 1")),
            "{text}"
        );
        // Deleted: gone from the next scrape, before any reconcile forgets it.
        metrics
            .policies
            .report_only_existing(|_, name| name != "web");
        let text = String::from_utf8(metrics.encode().unwrap()).unwrap();
        assert_eq!(
            web_series(&text),
            0,
            "deleted policy still exported:\n{text}"
        );
        assert!(text.contains("name=\"api\""), "{text}");
        metrics.policies.retain(|_, name| name != "web");
        assert_eq!(metrics.policies.current().len(), 1, "memory stays bounded");
    }
}
