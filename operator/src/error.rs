//! The operator's one error type. Every variant maps to a condition reason,
//! an event reason and a metric label, so a failure reads the same in
//! `kubectl describe`, in events and on dashboards.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum OperatorError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    #[error("{message}")]
    InvalidSpec {
        reason: &'static str,
        message: String,
    },

    #[error("secret {namespace}/{name} not found")]
    CredentialsNotFound { namespace: String, name: String },

    #[error("secret {namespace}/{name} is not usable: {message}")]
    CredentialsInvalid {
        namespace: String,
        name: String,
        message: String,
    },

    #[error(
        "the operator may not read {kind} {namespace}/{name}: let it with a RoleBinding in {namespace}: {grant}"
    )]
    CredentialsForbidden {
        kind: &'static str,
        namespace: String,
        name: String,
        /// The command that creates the RoleBinding.
        grant: String,
    },

    #[error("{kind} {namespace}/{name} has no key {key:?} with a CA bundle")]
    CaBundleNotFound {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },

    #[error(transparent)]
    Transfer(#[from] registry_transfer::TransferError),

    #[error("configuration: {0}")]
    Config(String),

    #[error("telemetry: {0}")]
    Telemetry(String),

    #[error("http server: {0}")]
    Http(String),

    /// The admission webhook's certificates or configuration could not be
    /// made or kept current.
    #[error("admission webhook: {0}")]
    Admission(String),

    #[error("serializing: {0}")]
    Serialization(#[from] serde_json::Error),

    /// A reconcile panicked; caught so that only its object backs off.
    #[error("reconcile panicked: {message}")]
    Panic { message: String },

    /// The object cannot be decoded by this operator version (version skew,
    /// or a value the schema allows but the operator's types do not).
    #[error("the operator cannot decode this {kind}: {message}")]
    InvalidObject { kind: &'static str, message: String },
}

impl OperatorError {
    /// CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            OperatorError::Kube(_) => "KubernetesApiError",
            OperatorError::InvalidSpec { reason, .. } => reason,
            OperatorError::CredentialsNotFound { .. } => "CredentialsNotFound",
            OperatorError::CredentialsInvalid { .. } => "CredentialsInvalid",
            OperatorError::CredentialsForbidden { .. } => "CredentialsForbidden",
            OperatorError::CaBundleNotFound { .. } => "CABundleNotFound",
            OperatorError::Transfer(e) => e.reason(),
            OperatorError::Config(_) => "ConfigurationError",
            OperatorError::Telemetry(_) => "TelemetryError",
            OperatorError::Http(_) => "HttpServerError",
            OperatorError::Admission(_) => "AdmissionWebhookError",
            OperatorError::Serialization(_) => "SerializationError",
            OperatorError::Panic { .. } => "Panic",
            OperatorError::InvalidObject { .. } => "InvalidObject",
        }
    }

    /// The same reason, as a low-cardinality metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            OperatorError::Kube(_) => "kubernetes_api",
            OperatorError::InvalidSpec { .. } => "invalid_spec",
            OperatorError::CredentialsNotFound { .. } => "credentials_not_found",
            OperatorError::CredentialsInvalid { .. } => "credentials_invalid",
            OperatorError::CredentialsForbidden { .. } => "credentials_forbidden",
            OperatorError::CaBundleNotFound { .. } => "ca_bundle_not_found",
            OperatorError::Transfer(e) => e.metric_label(),
            OperatorError::Config(_) => "configuration",
            OperatorError::Telemetry(_) => "telemetry",
            OperatorError::Http(_) => "http_server",
            OperatorError::Admission(_) => "admission_webhook",
            OperatorError::Serialization(_) => "serialization",
            OperatorError::Panic { .. } => "panic",
            OperatorError::InvalidObject { .. } => "invalid_object",
        }
    }

    /// Whether retrying without a change to the object can help. Invalid
    /// specs wait for the user to change them instead of hot-looping.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            OperatorError::InvalidSpec { .. } | OperatorError::InvalidObject { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry_transfer::TransferError;

    #[test]
    fn a_hostile_registry_reads_apart_from_an_outage() {
        let limit = OperatorError::Transfer(TransferError::ResponseTooLarge {
            registry: "evil.example".into(),
            what: "token response",
            limit: 262144,
        });
        assert_eq!(limit.reason(), "RegistryResponseTooLarge");
        assert_eq!(limit.metric_label(), "registry_limit");
        assert!(limit.to_string().contains("evil.example"));
        assert!(limit.to_string().contains("token response"));
        let refused = OperatorError::Transfer(TransferError::CredentialsRefused {
            registry: "evil.example".into(),
            destination: "token realm http://other:80 (plain HTTP)".into(),
        });
        assert_eq!(refused.reason(), "CredentialsRefused");
        assert_eq!(refused.metric_label(), "registry_credentials_refused");
        let outage = OperatorError::Transfer(TransferError::RegistryUnavailable {
            registry: "r".into(),
            detail: "503".into(),
        });
        assert_eq!(outage.metric_label(), "registry");
    }

    #[test]
    fn reasons_are_single_camel_case_words() {
        let errors = [
            OperatorError::InvalidSpec {
                reason: "InvalidSchedule",
                message: "x".into(),
            },
            OperatorError::CredentialsNotFound {
                namespace: "a".into(),
                name: "b".into(),
            },
            OperatorError::CredentialsInvalid {
                namespace: "a".into(),
                name: "b".into(),
                message: "m".into(),
            },
            OperatorError::CredentialsForbidden {
                kind: "Secret",
                namespace: "a".into(),
                name: "b".into(),
                grant: "kubectl create rolebinding".into(),
            },
            OperatorError::CaBundleNotFound {
                kind: "ConfigMap",
                namespace: "a".into(),
                name: "b".into(),
                key: "ca.crt".into(),
            },
            OperatorError::Config("x".into()),
            OperatorError::Telemetry("x".into()),
            OperatorError::Http("x".into()),
            OperatorError::Admission("x".into()),
            OperatorError::Panic {
                message: "x".into(),
            },
            OperatorError::InvalidObject {
                kind: "ImageRestore",
                message: "x".into(),
            },
            OperatorError::Transfer(TransferError::ResponseTooLarge {
                registry: "r".into(),
                what: "manifest",
                limit: 1,
            }),
            OperatorError::Transfer(TransferError::ImageTooComplex {
                registry: "r".into(),
                digest: "d".into(),
                detail: "x".into(),
            }),
            OperatorError::Transfer(TransferError::TooSlow {
                registry: "r".into(),
                detail: "x".into(),
            }),
            OperatorError::Transfer(TransferError::CredentialsRefused {
                registry: "r".into(),
                destination: "x".into(),
            }),
        ];
        for error in errors {
            let reason = error.reason();
            assert!(
                lifeboat_api::conditions::is_camel_case_reason(reason),
                "{reason}"
            );
            assert!(
                reason
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_uppercase()),
                "{reason}"
            );
            assert!(
                reason.chars().all(|c| c.is_ascii_alphanumeric()),
                "{reason}"
            );
            assert!(
                error
                    .metric_label()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
            );
        }
    }
}
