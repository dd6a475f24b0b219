//! Schema pieces the derive cannot express by itself: bounded versions of
//! Kubernetes types (upstream's generated schemas leave lists and strings
//! unbounded, which both breaks "every list and string is bounded" and makes
//! the API server's CEL cost estimates explode), list-type markers, and the
//! CEL rules with their messages.

use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

/// Longest Kubernetes object name (DNS subdomain).
pub const MAX_NAME_LENGTH: u32 = 253;
/// Longest label value and DNS label (namespace names, target names).
pub const MAX_LABEL_LENGTH: u32 = 63;
/// Longest label key (`prefix/name`).
pub const MAX_LABEL_KEY_LENGTH: u32 = 317;
/// Longest image reference we store (see `reference::REFERENCE_MAX_LENGTH`).
pub const MAX_REFERENCE_LENGTH: u32 = crate::reference::REFERENCE_MAX_LENGTH as u32;
/// Longest digest: `sha512:` plus 128 hex digits, with room to spare.
pub const MAX_DIGEST_LENGTH: u32 = 160;
/// Longest free-text message in status entries.
pub const MAX_SHORT_MESSAGE_LENGTH: u32 = crate::conditions::MAX_SHORT_MESSAGE_LENGTH as u32;

/// A CEL validation rule and the message users see when it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CelRule {
    pub rule: &'static str,
    pub message: &'static str,
    /// Where the API server points the error, relative to the schema node
    /// carrying the rule (e.g. `.excludedNamespaces`).
    pub field_path: Option<&'static str>,
}

impl CelRule {
    fn to_json(self) -> Value {
        let mut rule = json!({ "rule": self.rule, "message": self.message });
        if let (Some(path), Some(map)) = (self.field_path, rule.as_object_mut()) {
            map.insert("fieldPath".into(), Value::String(path.to_owned()));
        }
        rule
    }
}

/// The `x-kubernetes-validations` value for a list of rules.
pub fn validations(rules: &[CelRule]) -> Value {
    Value::Array(rules.iter().map(|r| r.to_json()).collect())
}

/// Every CEL rule in both CRDs, for tests and documentation.
pub fn all_cel_rules() -> Vec<CelRule> {
    let mut rules = Vec::new();
    rules.extend_from_slice(crate::backup_policy::CEL_RULES);
    rules.extend_from_slice(crate::restore::CEL_RULES);
    rules
}

/// `conditions`: the upstream `metav1.Condition` schema with its
/// kubebuilder bounds, as a map list keyed by `type`.
pub fn conditions(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Standard conditions, keyed by type. Ready is always present once reconciled; Reconciling and Stalled only while true.",
        "type": "array",
        "maxItems": crate::conditions::MAX_CONDITIONS,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {
                    "description": "Condition type in CamelCase.",
                    "type": "string",
                    "maxLength": 316,
                    "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
                },
                "status": {
                    "type": "string",
                    "enum": ["True", "False", "Unknown"]
                },
                "observedGeneration": {
                    "description": "The .metadata.generation this condition was set for.",
                    "type": "integer",
                    "format": "int64",
                    "minimum": 0
                },
                "lastTransitionTime": {
                    "description": "When the status last changed.",
                    "type": "string",
                    "format": "date-time"
                },
                "reason": {
                    "description": "One CamelCase word saying why.",
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 1024,
                    "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
                },
                "message": {
                    "description": "Details for people.",
                    "type": "string",
                    "maxLength": crate::conditions::MAX_MESSAGE_LENGTH
                }
            }
        }
    })
}

/// A `metav1.LabelSelector` with bounded maps and lists.
pub fn label_selector(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "A label selector: matchLabels and matchExpressions are ANDed; an empty selector matches everything.",
        "type": "object",
        "x-kubernetes-map-type": "atomic",
        "properties": {
            "matchLabels": {
                "type": "object",
                "maxProperties": 32,
                "additionalProperties": { "type": "string", "maxLength": MAX_LABEL_LENGTH }
            },
            "matchExpressions": {
                "type": "array",
                "maxItems": 32,
                "x-kubernetes-list-type": "atomic",
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": { "type": "string", "maxLength": MAX_LABEL_KEY_LENGTH },
                        "operator": { "type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"] },
                        "values": {
                            "type": "array",
                            "maxItems": 64,
                            "x-kubernetes-list-type": "atomic",
                            "items": { "type": "string", "maxLength": MAX_LABEL_LENGTH }
                        }
                    }
                }
            }
        }
    })
}

/// A node selector: labels a node must carry.
pub fn node_selector(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Labels a node must have to be used for node exports.",
        "type": "object",
        "maxProperties": 32,
        "additionalProperties": { "type": "string", "maxLength": MAX_LABEL_LENGTH }
    })
}

/// `[]corev1.Toleration` with bounds.
pub fn tolerations(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Tolerations for the export Jobs' pods, so tainted nodes can be used.",
        "type": "array",
        "maxItems": 32,
        "x-kubernetes-list-type": "atomic",
        "items": {
            "type": "object",
            "properties": {
                "key": { "type": "string", "maxLength": MAX_LABEL_KEY_LENGTH },
                "operator": { "type": "string", "enum": ["Exists", "Equal"] },
                "value": { "type": "string", "maxLength": MAX_LABEL_LENGTH },
                "effect": { "type": "string", "enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"] },
                "tolerationSeconds": { "type": "integer", "format": "int64" }
            }
        }
    })
}
