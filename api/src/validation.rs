//! The checks the CRD schema and CEL rules cannot make (schedules parse,
//! time zones exist, patterns compile, references parse, templates render),
//! plus the CEL rules again, so an object admitted under an older CRD is
//! still caught. The operator marks an object `Stalled` with
//! [`Error::reason`] and the error's text when these fail.
//!
//! Each function returns the first problem, with the field path, and on
//! success the parsed forms the operator needs anyway.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use chrono_tz::Tz;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

use crate::backup_policy::{
    BackupTarget, CaBundle, ImageBackupPolicy, ImageBackupPolicySpec, ReferrersCopy,
    WorkloadSelector,
};
use crate::error::{Error, Result};
use crate::patterns::ImageMatcher;
use crate::reference::ImageReference;
use crate::restore::{ImageRestore, ImageRestoreSpec, NodeDestination, RestoreSourceType};
use crate::schedule::{Schedule, parse_time_zone};
use crate::template::{TargetRegistry, check_template};

/// A policy spec that passed validation, in parsed form.
#[derive(Debug, Clone)]
pub struct ValidPolicy {
    pub schedule: Option<Schedule>,
    pub time_zone: Tz,
    pub images: ImageMatcher,
    /// Each target's parsed registry, in `spec.targets` order.
    pub targets: Vec<ValidTarget>,
}

/// A target that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidTarget {
    pub name: String,
    pub registry: TargetRegistry,
    pub repository_template: String,
}

/// A restore spec that passed validation, in parsed form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRestore {
    /// Parsed `spec.images` (empty for a policy restore).
    pub images: Vec<ImageReference>,
    /// Parsed `spec.destination.registry`, if overridden.
    pub destination: Option<TargetRegistry>,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidSpec {
        message: message.into(),
    }
}

fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// The `spec` part of a CRD's schema, computed once.
fn spec_schema(crd: fn() -> CustomResourceDefinition) -> Value {
    crd()
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .map(|schema| schema["properties"]["spec"].clone())
        .unwrap_or(Value::Null)
}

fn policy_spec_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| spec_schema(ImageBackupPolicy::crd))
}

fn restore_spec_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| spec_schema(ImageRestore::crd))
}

/// Checks a value against the structural bounds of the generated schema
/// (lengths, item counts, ranges, enums, required fields, set and map
/// uniqueness): what the API server enforces besides patterns and CEL,
/// which the functions below check by hand.
pub(crate) fn check_schema_bounds(value: &Value, schema: &Value, path: &str) -> Result<()> {
    if value.is_null() || !schema.is_object() {
        return Ok(());
    }
    if let (Some(allowed), Some(text)) = (schema["enum"].as_array(), value.as_str())
        && !allowed.iter().any(|a| a.as_str() == Some(text))
    {
        let names: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
        return Err(invalid(format!(
            "unsupported value {text:?}; supported values: {}",
            names.join(", ")
        ))
        .at(path));
    }
    match value {
        Value::String(text) => {
            let length = text.chars().count();
            if let Some(max) = schema["maxLength"].as_u64()
                && length as u64 > max
            {
                return Err(invalid(format!(
                    "is {length} characters long; at most {max} are allowed"
                ))
                .at(path));
            }
            if let Some(min) = schema["minLength"].as_u64()
                && (length as u64) < min
            {
                return Err(invalid(format!("must be at least {min} characters long")).at(path));
            }
        }
        Value::Number(number) => {
            if let (Some(n), Some(min)) = (number.as_f64(), schema["minimum"].as_f64())
                && n < min
            {
                return Err(invalid(format!("must be at least {min}")).at(path));
            }
            if let (Some(n), Some(max)) = (number.as_f64(), schema["maximum"].as_f64())
                && n > max
            {
                return Err(invalid(format!("must be at most {max}")).at(path));
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                return Err(invalid(format!(
                    "has {} items; at most {max} are allowed",
                    items.len()
                ))
                .at(path));
            }
            if let Some(min) = schema["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                return Err(invalid(format!("must have at least {min} item(s)")).at(path));
            }
            let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                .as_array()
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let identity = |item: &Value| match schema["x-kubernetes-list-type"].as_str() {
                Some("set") => Some(item.to_string()),
                Some("map") => Some(
                    keys.iter()
                        .map(|k| item[*k].to_string())
                        .collect::<Vec<_>>()
                        .join("\0"),
                ),
                _ => None,
            };
            let mut seen = BTreeSet::new();
            for (index, item) in items.iter().enumerate() {
                if let Some(id) = identity(item)
                    && !seen.insert(id)
                {
                    return Err(
                        invalid("duplicates an earlier entry").at(format!("{path}[{index}]"))
                    );
                }
                check_schema_bounds(item, &schema["items"], &format!("{path}[{index}]"))?;
            }
        }
        Value::Object(map) => {
            if let Some(max) = schema["maxProperties"].as_u64()
                && map.len() as u64 > max
            {
                return Err(invalid(format!(
                    "has {} entries; at most {max} are allowed",
                    map.len()
                ))
                .at(path));
            }
            for required in schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if map.get(required).is_none_or(Value::is_null) {
                    return Err(invalid("is required").at(format!("{path}.{required}")));
                }
            }
            for (key, item) in map {
                let field_schema = match schema["properties"].get(key) {
                    Some(s) => s,
                    None => &schema["additionalProperties"],
                };
                check_schema_bounds(item, field_schema, &format!("{path}.{key}"))?;
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
    Ok(())
}

fn check_spec_bounds<T: serde::Serialize>(spec: &T, schema: &Value) -> Result<()> {
    let value =
        serde_json::to_value(spec).map_err(|e| invalid(format!("cannot be serialised: {e}")))?;
    check_schema_bounds(&value, schema, "spec")
}

/// Validates an ImageBackupPolicy spec.
pub fn validate_policy_spec(spec: &ImageBackupPolicySpec) -> Result<ValidPolicy> {
    check_spec_bounds(spec, policy_spec_schema())?;
    let images = match &spec.selector {
        Some(selector) => validate_selector(selector).map_err(|e| e.at("spec.selector"))?,
        None => ImageMatcher::default(),
    };

    let targets = validate_targets(&spec.targets)?;

    let schedule = spec
        .schedule
        .as_deref()
        .map(Schedule::parse)
        .transpose()
        .map_err(|e| e.at("spec.schedule"))?;
    let time_zone =
        parse_time_zone(spec.time_zone.as_deref()).map_err(|e| e.at("spec.timeZone"))?;

    if let Some(retention) = &spec.retention
        && retention.keep_last.is_none()
        && retention.max_age_days.is_none()
    {
        return Err(invalid(
            "set keepLast, maxAgeDays or both; leave retention out to keep every backup",
        )
        .at("spec.retention"));
    }
    if let Some(referrers) = &spec.referrers {
        let listing = referrers.copy == Some(ReferrersCopy::ArtifactTypes);
        if listing != referrers.artifact_types.is_some() {
            return Err(
                invalid("artifactTypes must be set exactly when copy is ArtifactTypes")
                    .at("spec.referrers.artifactTypes"),
            );
        }
        for (i, kind) in referrers.artifact_types.iter().flatten().enumerate() {
            if kind.is_empty() || kind.len() > 255 {
                return Err(invalid("an artifact type is 1 to 255 characters")
                    .at(format!("spec.referrers.artifactTypes[{i}]")));
            }
        }
    }

    Ok(ValidPolicy {
        schedule,
        time_zone,
        images,
        targets,
    })
}

fn validate_selector(selector: &WorkloadSelector) -> Result<ImageMatcher> {
    let included = selector.included_namespaces.as_deref().unwrap_or_default();
    let excluded = selector.excluded_namespaces.as_deref().unwrap_or_default();
    for (index, namespace) in included.iter().enumerate() {
        if namespace != "*" && !is_dns_label(namespace) {
            return Err(invalid(format!(
                "{namespace:?} is not a namespace name (lowercase letters, digits and '-', at most 63) or *"
            ))
            .at(format!("includedNamespaces[{index}]")));
        }
    }
    for (index, namespace) in excluded.iter().enumerate() {
        if !is_dns_label(namespace) {
            return Err(invalid(format!("{namespace:?} is not a namespace name"))
                .at(format!("excludedNamespaces[{index}]")));
        }
        if included.contains(namespace) {
            return Err(invalid(format!(
                "namespace {namespace:?} is both included and excluded"
            ))
            .at(format!("excludedNamespaces[{index}]")));
        }
    }
    ImageMatcher::compile(selector.images.as_ref()).map_err(|e| e.at("images"))
}

fn validate_ca_bundle(bundle: &CaBundle) -> Result<()> {
    match (&bundle.config_map_key_ref, &bundle.secret_key_ref) {
        (Some(_), None) | (None, Some(_)) => Ok(()),
        _ => Err(invalid(
            "set exactly one of configMapKeyRef or secretKeyRef",
        )),
    }
}

fn validate_targets(targets: &[BackupTarget]) -> Result<Vec<ValidTarget>> {
    let mut valid = Vec::with_capacity(targets.len());
    for (index, target) in targets.iter().enumerate() {
        let field = |name: &str| format!("spec.targets[{index}].{name}");
        if !is_dns_label(&target.name) {
            return Err(invalid(format!(
                "{:?} is not a DNS label (lowercase letters, digits and '-', at most 63)",
                target.name
            ))
            .at(field("name")));
        }
        let registry =
            TargetRegistry::parse(&target.registry).map_err(|e| e.at(field("registry")))?;
        let template = target.effective_repository_template().to_owned();
        check_template(&template).map_err(|e| e.at(field("repositoryTemplate")))?;
        if let Some(bundle) = &target.ca_bundle {
            validate_ca_bundle(bundle).map_err(|e| e.at(field("caBundle")))?;
            if target.is_insecure() {
                return Err(invalid(
                    "insecure and caBundle are mutually exclusive: a CA bundle is only used when TLS certificates are verified",
                )
                .at(format!("spec.targets[{index}]")));
            }
        }
        for (p, platform) in target.platforms.iter().flatten().enumerate() {
            if !is_platform(platform) {
                return Err(invalid(format!(
                    "{platform:?} is not os/architecture[/variant], e.g. linux/amd64 or linux/arm64/v8"
                ))
                .at(format!("spec.targets[{index}].platforms[{p}]")));
            }
        }
        valid.push(ValidTarget {
            name: target.name.clone(),
            registry,
            repository_template: template,
        });
    }
    Ok(valid)
}

fn is_platform(platform: &str) -> bool {
    let parts: Vec<&str> = platform.split('/').collect();
    let word = |s: &str, underscore: bool| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || (underscore && b == b'_'))
    };
    matches!(parts.len(), 2 | 3)
        && word(parts[0], false)
        && word(parts[1], true)
        && parts.get(2).is_none_or(|v| word(v, false))
}

/// Validates an ImageRestore spec.
pub fn validate_restore_spec(spec: &ImageRestoreSpec) -> Result<ValidRestore> {
    check_spec_bounds(spec, restore_spec_schema())?;
    let images = match (&spec.images, &spec.policy_ref) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(invalid(
                "set exactly one of images (restore these images) or policyRef (restore every image that policy reports missing)",
            )
            .at("spec"));
        }
        (Some(images), None) => {
            let mut parsed = Vec::with_capacity(images.len());
            let mut seen = BTreeSet::new();
            for (index, image) in images.iter().enumerate() {
                let reference = ImageReference::parse(image)
                    .map_err(|e| Error::from(e).at(format!("spec.images[{index}]")))?;
                if !seen.insert(reference.to_string()) {
                    return Err(invalid(format!(
                        "{image:?} is the same image as an earlier entry"
                    ))
                    .at(format!("spec.images[{index}]")));
                }
                parsed.push(reference);
            }
            parsed
        }
        (None, Some(_)) => Vec::new(),
    };

    if let Some(source) = &spec.source {
        if source.backup.is_some() && source.type_ == RestoreSourceType::NodeCache {
            return Err(
                invalid("can only be set when source.type is Auto or BackupRegistry")
                    .at("spec.source.backup"),
            );
        }
        if source.node_cache.is_some() && source.type_ == RestoreSourceType::BackupRegistry {
            return Err(
                invalid("can only be set when source.type is Auto or NodeCache")
                    .at("spec.source.nodeCache"),
            );
        }
        if source.order.is_some() && source.type_ != RestoreSourceType::Auto {
            return Err(invalid("can only be set when source.type is Auto").at("spec.source.order"));
        }
    }

    if let Some(nodes) = spec.destination.as_ref().and_then(|d| d.nodes.as_ref()) {
        validate_node_destination(spec, nodes)?;
    }
    let destination = match &spec.destination {
        None => None,
        Some(destination) => {
            if let Some(bundle) = &destination.ca_bundle {
                validate_ca_bundle(bundle).map_err(|e| e.at("spec.destination.caBundle"))?;
                if destination.is_insecure() {
                    return Err(invalid("insecure and caBundle are mutually exclusive")
                        .at("spec.destination"));
                }
            }
            match &destination.registry {
                Some(registry) => {
                    let parsed = TargetRegistry::parse(registry)
                        .map_err(|e| e.at("spec.destination.registry"))?;
                    check_template(destination.effective_repository_template())
                        .map_err(|e| e.at("spec.destination.repositoryTemplate"))?;
                    Some(parsed)
                }
                None => {
                    if destination.repository_template.is_some() {
                        return Err(invalid(
                            "needs destination.registry: without a registry, images go back to their original repositories",
                        )
                        .at("spec.destination.repositoryTemplate"));
                    }
                    None
                }
            }
        }
    };

    Ok(ValidRestore {
        images,
        destination,
    })
}

/// `destination.nodes`: exactly one way to name nodes, and no registry
/// field beside it (the CEL rules, for objects the server did not check).
fn validate_node_destination(spec: &ImageRestoreSpec, nodes: &NodeDestination) -> Result<()> {
    let ways = usize::from(nodes.names.is_some())
        + usize::from(nodes.selector.is_some())
        + usize::from(nodes.wants_failing_pods());
    if ways != 1 {
        return Err(
            invalid("set exactly one of names, selector or failingPods: true")
                .at("spec.destination.nodes"),
        );
    }
    if let Some(destination) = &spec.destination
        && (destination.registry.is_some()
            || destination.secret_ref.is_some()
            || destination.ca_bundle.is_some()
            || destination.insecure.is_some())
    {
        return Err(invalid(
            "destination.nodes writes images into nodes' containerd; registry, secretRef, caBundle and insecure are for a registry destination",
        )
        .at("spec.destination.nodes"));
    }
    if let Some(selector) = &nodes.selector
        && selector.labels.is_empty()
    {
        return Err(
            invalid("needs at least one label").at("spec.destination.nodes.selector.labels")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup_policy::{
        ImagePatterns, KeyRef, LocalObjectRef, RestorePolicy, Retention, SourceCredentials,
    };
    use crate::restore::{
        BackupSource, NodeCacheSource, RestoreDestination, RestoreSource, RestoreSourceKind,
    };

    fn target(name: &str) -> BackupTarget {
        BackupTarget {
            name: name.into(),
            registry: "backup.example.com:5000/lifeboat".into(),
            ..Default::default()
        }
    }

    fn policy() -> ImageBackupPolicySpec {
        ImageBackupPolicySpec {
            targets: vec![target("primary")],
            continuous: true,
            ..Default::default()
        }
    }

    #[track_caller]
    fn policy_error(spec: &ImageBackupPolicySpec, field: &str, reason: &str, text: &str) {
        match validate_policy_spec(spec) {
            Ok(_) => panic!("expected an error at {field}"),
            Err(e) => {
                let message = e.to_string();
                assert!(message.starts_with(&format!("{field}: ")), "{message}");
                assert!(message.contains(text), "{message} should mention {text:?}");
                assert_eq!(e.reason(), reason, "{message}");
            }
        }
    }

    #[test]
    fn minimal_policy_is_valid_with_defaults() {
        let valid = validate_policy_spec(&policy()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(valid.time_zone, Tz::UTC);
        assert!(valid.schedule.is_none());
        assert_eq!(valid.targets.len(), 1);
        assert_eq!(
            valid.targets[0].repository_template,
            "{registry}/{repository}"
        );
        assert_eq!(valid.targets[0].registry.host, "backup.example.com:5000");
    }

    #[test]
    fn schedule_and_time_zone() {
        let mut spec = policy();
        spec.schedule = Some("0 3 * * 1-5".into());
        spec.time_zone = Some("Europe/Berlin".into());
        let valid = validate_policy_spec(&spec).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(valid.time_zone, chrono_tz::Europe::Berlin);
        assert!(valid.schedule.is_some());

        spec.schedule = Some("0 3 * *".into());
        policy_error(&spec, "spec.schedule", "InvalidSchedule", "has 4 fields");
        spec.schedule = Some("TZ=UTC 0 3 * * *".into());
        policy_error(&spec, "spec.schedule", "InvalidSchedule", "spec.timeZone");
        spec.schedule = Some("0 3 * * *".into());
        spec.time_zone = Some("Mars/Olympus_Mons".into());
        policy_error(
            &spec,
            "spec.timeZone",
            "InvalidTimeZone",
            "not a known IANA time zone",
        );
    }

    #[test]
    fn selector_rules() {
        let mut spec = policy();
        spec.selector = Some(WorkloadSelector {
            included_namespaces: Some(vec!["shop".into(), "*".into()]),
            excluded_namespaces: Some(vec!["kube-system".into()]),
            ..Default::default()
        });
        validate_policy_spec(&spec).unwrap_or_else(|e| panic!("{e}"));

        spec.selector = Some(WorkloadSelector {
            included_namespaces: Some(vec!["shop".into(), "payments".into()]),
            excluded_namespaces: Some(vec!["payments".into()]),
            ..Default::default()
        });
        policy_error(
            &spec,
            "spec.selector.excludedNamespaces[0]",
            "InvalidSpec",
            "both included and excluded",
        );

        spec.selector = Some(WorkloadSelector {
            included_namespaces: Some(vec!["Shop".into()]),
            ..Default::default()
        });
        policy_error(
            &spec,
            "spec.selector.includedNamespaces[0]",
            "InvalidSpec",
            "not a namespace name",
        );

        spec.selector = Some(WorkloadSelector {
            workload_kinds: Some(vec![]),
            ..Default::default()
        });
        policy_error(
            &spec,
            "spec.selector.workloadKinds",
            "InvalidSpec",
            "at least 1 item",
        );

        spec.selector = Some(WorkloadSelector {
            images: Some(ImagePatterns {
                include: Some(vec!["ghcr.io/[".into()]),
                exclude: None,
            }),
            ..Default::default()
        });
        policy_error(
            &spec,
            "spec.selector.images.include[0]",
            "InvalidImagePattern",
            "ghcr.io/[",
        );
    }

    #[test]
    fn target_rules() {
        let mut spec = policy();
        spec.targets = vec![];
        policy_error(&spec, "spec.targets", "InvalidSpec", "at least 1 item");
        spec.targets = (0..5).map(|i| target(&format!("t{i}"))).collect();
        policy_error(
            &spec,
            "spec.targets",
            "InvalidSpec",
            "at most 4 are allowed",
        );
        spec.targets = vec![target("a"), target("a")];
        policy_error(
            &spec,
            "spec.targets[1]",
            "InvalidSpec",
            "duplicates an earlier entry",
        );
        spec.targets = vec![target("Primary")];
        policy_error(
            &spec,
            "spec.targets[0].name",
            "InvalidSpec",
            "not a DNS label",
        );

        let mut t = target("primary");
        t.registry = "https://backup.example.com".into();
        spec.targets = vec![t];
        policy_error(
            &spec,
            "spec.targets[0].registry",
            "InvalidImageReference",
            "without a scheme",
        );

        let mut t = target("primary");
        t.repository_template = Some("{registry}".into());
        spec.targets = vec![t];
        policy_error(
            &spec,
            "spec.targets[0].repositoryTemplate",
            "InvalidRepositoryTemplate",
            "{repository} or {name}",
        );

        let key = KeyRef {
            name: "ca".into(),
            key: "ca.crt".into(),
        };
        let mut t = target("primary");
        t.ca_bundle = Some(CaBundle {
            config_map_key_ref: Some(key.clone()),
            secret_key_ref: Some(key.clone()),
        });
        spec.targets = vec![t];
        policy_error(
            &spec,
            "spec.targets[0].caBundle",
            "InvalidSpec",
            "exactly one",
        );

        let mut t = target("primary");
        t.ca_bundle = Some(CaBundle {
            config_map_key_ref: Some(key),
            secret_key_ref: None,
        });
        t.insecure = Some(true);
        spec.targets = vec![t.clone()];
        policy_error(
            &spec,
            "spec.targets[0]",
            "InvalidSpec",
            "mutually exclusive",
        );
        t.insecure = Some(false);
        spec.targets = vec![t];
        validate_policy_spec(&spec).unwrap_or_else(|e| panic!("{e}"));

        let mut t = target("primary");
        t.platforms = Some(vec![
            "linux/amd64".into(),
            "linux/arm64/v8".into(),
            "windows".into(),
        ]);
        spec.targets = vec![t];
        policy_error(
            &spec,
            "spec.targets[0].platforms[2]",
            "InvalidSpec",
            "os/architecture",
        );
    }

    #[test]
    fn other_policy_rules() {
        let mut spec = policy();
        spec.starting_deadline_seconds = Some(-1);
        policy_error(
            &spec,
            "spec.startingDeadlineSeconds",
            "InvalidSpec",
            "must be at least 0",
        );

        let mut spec = policy();
        spec.retention = Some(Retention::default());
        policy_error(
            &spec,
            "spec.retention",
            "InvalidSpec",
            "keepLast, maxAgeDays or both",
        );
        let mut referrers_spec = policy();
        referrers_spec.referrers = Some(crate::backup_policy::Referrers {
            copy: Some(ReferrersCopy::ArtifactTypes),
            artifact_types: None,
        });
        policy_error(
            &referrers_spec,
            "spec.referrers.artifactTypes",
            "InvalidSpec",
            "exactly when copy is ArtifactTypes",
        );
        referrers_spec.referrers = Some(crate::backup_policy::Referrers {
            copy: Some(ReferrersCopy::None),
            artifact_types: Some(vec!["application/spdx+json".into()]),
        });
        policy_error(
            &referrers_spec,
            "spec.referrers.artifactTypes",
            "InvalidSpec",
            "exactly when copy is ArtifactTypes",
        );
        referrers_spec.referrers = Some(crate::backup_policy::Referrers {
            copy: Some(ReferrersCopy::ArtifactTypes),
            artifact_types: Some(vec!["application/spdx+json".into()]),
        });
        assert!(validate_policy_spec(&referrers_spec).is_ok());

        spec.retention = Some(Retention {
            keep_last: Some(0),
            max_age_days: None,
        });
        policy_error(
            &spec,
            "spec.retention.keepLast",
            "InvalidSpec",
            "must be at least 1",
        );
        spec.retention = Some(Retention {
            keep_last: None,
            max_age_days: Some(-3),
        });
        policy_error(
            &spec,
            "spec.retention.maxAgeDays",
            "InvalidSpec",
            "must be at least 1",
        );

        let mut spec = policy();
        spec.source_credentials = Some(SourceCredentials {
            use_workload_pull_secrets: Some(true),
            secret_refs: Some(vec![LocalObjectRef::new("a"), LocalObjectRef::new("a")]),
        });
        policy_error(
            &spec,
            "spec.sourceCredentials.secretRefs[1]",
            "InvalidSpec",
            "duplicates an earlier entry",
        );

        let mut spec = policy();
        spec.restore = Some(RestorePolicy {
            source_order: Some(vec![
                RestoreSourceKind::NodeCache,
                RestoreSourceKind::NodeCache,
            ]),
            ..Default::default()
        });
        policy_error(
            &spec,
            "spec.restore.sourceOrder[1]",
            "InvalidSpec",
            "duplicates an earlier entry",
        );
    }

    #[test]
    fn defaults_of_optional_fields() {
        let spec = policy();
        assert!(!spec.restores_automatically());
        let selector = spec.effective_selector();
        assert_eq!(selector.effective_workload_kinds().len(), 7);
        assert_eq!(
            RestorePolicy::default().effective_source_order(),
            [
                RestoreSourceKind::BackupRegistry,
                RestoreSourceKind::NodeCache
            ]
        );
        assert!(!target("x").is_insecure());
        assert!(!SourceCredentials::default().uses_workload_pull_secrets());
        assert_eq!(
            ImageRestoreSpec::default().effective_source().kinds(),
            [
                RestoreSourceKind::BackupRegistry,
                RestoreSourceKind::NodeCache
            ]
        );
        assert_eq!(
            RestoreSourceType::NodeCache.kinds(Some(&[RestoreSourceKind::BackupRegistry])),
            [RestoreSourceKind::NodeCache]
        );
    }

    fn restore_of(images: &[&str]) -> ImageRestoreSpec {
        ImageRestoreSpec {
            images: Some(images.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    #[track_caller]
    fn restore_error(spec: &ImageRestoreSpec, field: &str, reason: &str, text: &str) {
        match validate_restore_spec(spec) {
            Ok(_) => panic!("expected an error at {field}"),
            Err(e) => {
                let message = e.to_string();
                assert!(message.starts_with(&format!("{field}: ")), "{message}");
                assert!(message.contains(text), "{message} should mention {text:?}");
                assert_eq!(e.reason(), reason, "{message}");
            }
        }
    }

    #[test]
    fn node_destinations_name_nodes_one_way_and_no_registry() {
        use crate::restore::NodeLabelSelector;
        let with = |nodes: NodeDestination| {
            let mut spec = restore_of(&["r.io/a:1"]);
            spec.destination = Some(RestoreDestination {
                nodes: Some(nodes),
                ..Default::default()
            });
            spec
        };
        let by_name = with(NodeDestination {
            names: Some(vec!["node-1".into()]),
            ..Default::default()
        });
        assert!(validate_restore_spec(&by_name).is_ok());
        let failing = with(NodeDestination {
            failing_pods: Some(true),
            ..Default::default()
        });
        assert!(validate_restore_spec(&failing).is_ok());
        let field = "spec.destination.nodes";
        restore_error(
            &with(NodeDestination::default()),
            field,
            "InvalidSpec",
            "exactly one of",
        );
        restore_error(
            &with(NodeDestination {
                failing_pods: Some(false),
                ..Default::default()
            }),
            field,
            "InvalidSpec",
            "exactly one of",
        );
        restore_error(
            &with(NodeDestination {
                names: Some(vec!["node-1".into()]),
                selector: Some(NodeLabelSelector {
                    labels: [("zone".to_owned(), "a".to_owned())].into(),
                }),
                ..Default::default()
            }),
            field,
            "InvalidSpec",
            "exactly one of",
        );
        restore_error(
            &with(NodeDestination {
                selector: Some(NodeLabelSelector::default()),
                ..Default::default()
            }),
            "spec.destination.nodes.selector.labels",
            "InvalidSpec",
            "at least one label",
        );
        let mut to_registry_too = failing.clone();
        if let Some(d) = to_registry_too.destination.as_mut() {
            d.registry = Some("backup.example".into());
        }
        restore_error(&to_registry_too, field, "InvalidSpec", "containerd");
    }

    #[test]
    fn restore_images_or_policy() {
        let valid = validate_restore_spec(&restore_of(&["nginx:1.27", "ghcr.io/o/a:v1"]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(valid.images[0].to_string(), "docker.io/library/nginx:1.27");

        restore_error(
            &ImageRestoreSpec::default(),
            "spec",
            "InvalidSpec",
            "exactly one of images",
        );
        let mut both = restore_of(&["nginx"]);
        both.policy_ref = Some(LocalObjectRef::new("p"));
        restore_error(&both, "spec", "InvalidSpec", "exactly one of images");
        restore_error(
            &restore_of(&[]),
            "spec.images",
            "InvalidSpec",
            "at least 1 item",
        );
        restore_error(
            &restore_of(&["nginx", "Nginx"]),
            "spec.images[1]",
            "InvalidImageReference",
            "lowercase",
        );
        restore_error(
            &restore_of(&["nginx", "docker.io/library/nginx:latest"]),
            "spec.images[1]",
            "InvalidSpec",
            "same image",
        );

        let by_policy = ImageRestoreSpec {
            policy_ref: Some(LocalObjectRef::new("prod-images")),
            ..Default::default()
        };
        assert!(validate_restore_spec(&by_policy).is_ok_and(|v| v.images.is_empty()));
    }

    #[test]
    fn restore_source_is_discriminated() {
        let mut spec = restore_of(&["nginx"]);
        spec.source = Some(RestoreSource {
            type_: RestoreSourceType::NodeCache,
            backup: Some(BackupSource::default()),
            ..Default::default()
        });
        restore_error(
            &spec,
            "spec.source.backup",
            "InvalidSpec",
            "Auto or BackupRegistry",
        );
        spec.source = Some(RestoreSource {
            type_: RestoreSourceType::BackupRegistry,
            node_cache: Some(NodeCacheSource::default()),
            ..Default::default()
        });
        restore_error(
            &spec,
            "spec.source.nodeCache",
            "InvalidSpec",
            "Auto or NodeCache",
        );
        spec.source = Some(RestoreSource {
            type_: RestoreSourceType::NodeCache,
            order: Some(vec![RestoreSourceKind::NodeCache]),
            ..Default::default()
        });
        restore_error(
            &spec,
            "spec.source.order",
            "InvalidSpec",
            "only be set when source.type is Auto",
        );
        spec.source = Some(RestoreSource {
            type_: RestoreSourceType::Auto,
            order: Some(vec![
                RestoreSourceKind::NodeCache,
                RestoreSourceKind::BackupRegistry,
            ]),
            backup: Some(BackupSource::default()),
            node_cache: Some(NodeCacheSource::default()),
        });
        validate_restore_spec(&spec).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            spec.effective_source().kinds(),
            [
                RestoreSourceKind::NodeCache,
                RestoreSourceKind::BackupRegistry
            ]
        );
    }

    #[test]
    fn restore_destination_and_deadline() {
        let mut spec = restore_of(&["nginx"]);
        spec.destination = Some(RestoreDestination {
            repository_template: Some("{repository}".into()),
            ..Default::default()
        });
        restore_error(
            &spec,
            "spec.destination.repositoryTemplate",
            "InvalidSpec",
            "needs destination.registry",
        );
        spec.destination = Some(RestoreDestination {
            registry: Some("registry.example.com/restored".into()),
            ..Default::default()
        });
        let valid = validate_restore_spec(&spec).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            valid.destination.map(|d| d.prefix),
            Some(Some("restored".to_owned()))
        );
        spec.destination = Some(RestoreDestination {
            registry: Some("registry.example.com".into()),
            insecure: Some(true),
            ca_bundle: Some(CaBundle {
                secret_key_ref: Some(KeyRef {
                    name: "ca".into(),
                    key: "ca.crt".into(),
                }),
                config_map_key_ref: None,
            }),
            ..Default::default()
        });
        restore_error(
            &spec,
            "spec.destination",
            "InvalidSpec",
            "mutually exclusive",
        );
        spec.destination = Some(RestoreDestination {
            registry: Some("not a host".into()),
            ..Default::default()
        });
        restore_error(
            &spec,
            "spec.destination.registry",
            "InvalidImageReference",
            "not a valid host",
        );

        let mut spec = restore_of(&["nginx"]);
        spec.active_deadline_seconds = Some(0);
        restore_error(
            &spec,
            "spec.activeDeadlineSeconds",
            "InvalidSpec",
            "must be at least 1",
        );
    }
}
