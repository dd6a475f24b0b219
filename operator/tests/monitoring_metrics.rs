//! The alerts (`helm/lifeboat/files/prometheus-rules.yaml`) and the Grafana
//! dashboard (`config/monitoring/grafana-dashboard.json`) name only metrics
//! and labels the operator really exports: every instrument is recorded
//! once through the operator's own `Metrics`, its Prometheus exposition is
//! parsed, and every `lifeboat_*` selector in those files is checked against
//! it. The dashboard must also show every exported metric.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use lifeboat_operator::telemetry::{Metrics, object_labels};
use opentelemetry::KeyValue;

fn repo_file(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Series name -> label names, from an exposition where every instrument
/// was recorded once.
fn exported_series() -> BTreeMap<String, BTreeSet<String>> {
    let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
    let policy = object_labels("ImageBackupPolicy", "shop", "web");
    let restore = object_labels("ImageRestore", "shop", "restore-web");
    let with = |labels: &[KeyValue; 3], key: &'static str, value: &'static str| {
        let mut all = labels.to_vec();
        all.push(KeyValue::new(key, value));
        all
    };
    metrics
        .reconciles
        .add(1, &[KeyValue::new("kind", "ImageBackupPolicy")]);
    metrics.reconcile_errors.add(
        1,
        &[
            KeyValue::new("kind", "ImageBackupPolicy"),
            KeyValue::new("reason", "kubernetes_api"),
        ],
    );
    metrics
        .policies
        .set_images("shop", "web", vec![("protected", 3)]);
    metrics
        .backup_runs
        .add(1, &with(&policy, "result", "Succeeded"));
    metrics.bytes_copied.add(1024, &policy);
    metrics.copy_duration.record(1.5, &policy);
    metrics.policies.set_last_success("shop", "web", 1.8e9);
    metrics.retention_deleted.add(2, &policy);
    metrics.retention_failures.add(1, &policy);
    // The restore controller records these (object labels and the result).
    metrics.restores.add(1, &with(&restore, "result", "Failed"));
    metrics.restore_duration.record(12.0, &restore);
    metrics.api_requests.add(
        1,
        &[
            KeyValue::new("verb", "GET"),
            KeyValue::new("resource", "nodes"),
        ],
    );

    let text = String::from_utf8(metrics.encode().unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, rest) = line.split_at(line.find(['{', ' ']).unwrap_or(line.len()));
        let labels = series.entry(name.to_owned()).or_default();
        if let Some(inner) = rest.strip_prefix('{').and_then(|r| r.split('}').next()) {
            for (key, _) in parse_matchers(inner) {
                labels.insert(key);
            }
        }
    }
    series
}

/// `a="x",b!~"y"` -> [(a, x), (b, y)]; commas inside quotes stay.
fn parse_matchers(inner: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let key_end = rest.find(['=', '!']).unwrap_or(rest.len());
        let key = rest[..key_end].trim().to_owned();
        let Some(open) = rest.find('"') else { break };
        let mut close = open + 1;
        let bytes = rest.as_bytes();
        while close < bytes.len() && (bytes[close] != b'"' || bytes[close - 1] == b'\\') {
            close += 1;
        }
        out.push((key, rest[open + 1..close.min(rest.len())].to_owned()));
        rest = rest[(close + 1).min(rest.len())..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    out
}

/// Every `lifeboat_*` selector in a PromQL text: (series name, label names).
fn selectors(promql: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let bytes = promql.as_bytes();
    let mut at = 0;
    while let Some(found) = promql[at..].find("lifeboat_") {
        let start = at + found;
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let mut end = start;
        while end < bytes.len() && word(bytes[end]) {
            end += 1;
        }
        at = end;
        if start > 0 && (word(bytes[start - 1]) || matches!(bytes[start - 1], b'.' | b'/')) {
            continue; // part of a longer word or a file name
        }
        let mut labels = Vec::new();
        if bytes.get(end) == Some(&b'{')
            && let Some(close) = promql[end..].find('}')
        {
            labels = parse_matchers(&promql[end + 1..end + close])
                .into_iter()
                .map(|(k, _)| k)
                .collect();
        }
        out.push((promql[start..end].to_owned(), labels));
    }
    out
}

fn check(source: &str, promql: &str, series: &BTreeMap<String, BTreeSet<String>>) -> usize {
    let found = selectors(promql);
    for (name, labels) in &found {
        let known = series
            .get(name)
            .unwrap_or_else(|| panic!("{source}: {name} is not exported; exported: {series:#?}"));
        for label in labels {
            assert!(
                known.contains(label),
                "{source}: {name} has no label {label:?} (it has {known:?})"
            );
        }
    }
    found.len()
}

fn dashboard_queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("expr" | "query" | "definition", serde_json::Value::String(q)) => {
                        out.push(q.clone())
                    }
                    _ => dashboard_queries(child, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| dashboard_queries(i, out)),
        _ => {}
    }
}

#[test]
fn the_exposition_has_the_names_the_docs_promise() {
    let series = exported_series();
    for name in [
        "lifeboat_reconciles_total",
        "lifeboat_reconcile_errors_total",
        "lifeboat_images",
        "lifeboat_backup_runs_total",
        "lifeboat_copied_bytes_total",
        "lifeboat_image_copy_duration_seconds_bucket",
        "lifeboat_backup_last_success_timestamp_seconds",
        "lifeboat_retention_deleted_total",
        "lifeboat_retention_failures_total",
        "lifeboat_restores_total",
        "lifeboat_restore_duration_seconds_count",
    ] {
        assert!(series.contains_key(name), "{name} missing: {series:#?}");
    }
    assert!(series["lifeboat_images"].contains("namespace"));
}

#[test]
fn alerts_use_only_exported_metrics() {
    let series = exported_series();
    let rules = repo_file("helm/lifeboat/files/prometheus-rules.yaml");
    let expressions: String = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let used = check("prometheus-rules.yaml", &expressions, &series);
    assert!(used >= 6, "only {used} lifeboat_* selectors in the rules");
}

#[test]
fn the_dashboard_uses_only_exported_metrics_and_shows_all_of_them() {
    let series = exported_series();
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("config/monitoring/grafana-dashboard.json"))
            .unwrap_or_else(|e| panic!("grafana-dashboard.json: {e}"));
    let mut queries = Vec::new();
    dashboard_queries(&dashboard["panels"], &mut queries);
    dashboard_queries(&dashboard["templating"], &mut queries);
    assert!(queries.len() > 10, "{queries:?}");
    let mut shown = BTreeSet::new();
    for query in &queries {
        check("grafana-dashboard.json", query, &series);
        for (name, _) in selectors(query) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name)
                .to_owned();
            shown.insert(family);
        }
    }
    for name in series.keys() {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            shown.contains(family),
            "the dashboard shows nothing of {family}"
        );
    }
}

#[test]
fn the_checker_catches_mistakes() {
    let series = exported_series();
    for bad in [
        "sum(lifeboat_image{state=\"missing\"})",
        "lifeboat_images{status=\"missing\"}",
        "rate(lifeboat_restores[5m])",
    ] {
        let caught = std::panic::catch_unwind(|| check("test", bad, &series));
        assert!(caught.is_err(), "{bad} was accepted");
    }
    assert_eq!(
        selectors("x(lifeboat_images{a=\"1,2\", b!~\"x\"}) / docs/lifeboat_x.md"),
        [(
            "lifeboat_images".to_owned(),
            vec!["a".to_owned(), "b".to_owned()]
        )]
    );
}
