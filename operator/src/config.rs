//! The operator's configuration, from its environment (set by the Helm chart).

use std::net::SocketAddr;

use crate::error::OperatorError;
use crate::telemetry::LogFormat;

pub use lifeboat_node_protocol::DEFAULT_CONTENT_STORE;

#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// The namespace the operator runs in: policies here may select any
    /// namespace; export Jobs and the leader lease live here.
    pub namespace: String,
    /// This replica's name in the leader lease.
    pub identity: String,
    pub http_addr: SocketAddr,
    pub log_format: LogFormat,
    pub leader_election: bool,
    /// Image of the node-exporter that export Jobs run.
    pub node_exporter_image: String,
    /// How often each protected image is checked in its source registry.
    pub source_check_interval: std::time::Duration,
    /// Registries spoken to over plain HTTP (a local development registry).
    pub plain_http_registries: Vec<String>,
    /// Image copies running at once over all policies.
    pub max_concurrent_copies: usize,
    /// Image copies running at once per route (source registry -> target
    /// registry): the ceiling of the route's learned limit; and each
    /// namespace's guaranteed share (see `copy_queue`).
    pub copies_per_route: usize,
    pub copies_per_namespace: usize,
    /// Every copy's overall deadline: this base plus the image's size at
    /// the minimum throughput.
    pub copy_deadline: registry_transfer::CopyDeadline,
    /// Token services on another host a registry's credentials may go to:
    /// (registry host, realm origin `https://host[:port]`).
    pub trusted_token_realms: Vec<(String, String)>,
    /// `imagePullPolicy` of the export Jobs.
    pub node_exporter_pull_policy: String,
    /// The containerd socket on the nodes; `{node}` stands for the node's
    /// name (a development cluster with one containerd per node).
    pub containerd_socket: String,
    /// containerd's content store directory on the nodes (`{node}`: the
    /// node's name), mounted read-only into node-exporter pods so blobs are
    /// read from their files; `None` (set empty) streams them through
    /// containerd's API instead.
    pub containerd_content_store: Option<String>,
    /// Tolerations of the export Jobs (JSON list in the environment).
    pub node_exporter_tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// Whether export Jobs use the node's network.
    pub node_exporter_host_network: bool,
    /// Pull secrets (in the operator's namespace) for the export Jobs.
    pub image_pull_secrets: Vec<String>,
    /// The operator's service account, named in `CredentialsForbidden`
    /// messages (the subject of the RoleBinding to create).
    pub service_account: String,
    /// The ClusterRole a tenant namespace binds to let the operator read
    /// its Secrets and ConfigMaps.
    pub credentials_reader_role: String,
    /// What tenants may choose for export Jobs (tolerations, node selector
    /// keys); the operator's namespace is not bound by it.
    pub tenant_node_access: crate::tenancy::NodeAccessAllowlist,
    /// Whether export Jobs may run on control-plane nodes.
    pub allow_control_plane_nodes: bool,
    /// The optional admission webhook; `None` when the chart did not turn
    /// it on (`admission.enabled`).
    pub admission: Option<AdmissionConfig>,
}

/// The admission webhook's settings (`LIFEBOAT_ADMISSION_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// The ValidatingWebhookConfiguration whose `caBundle` and
    /// `namespaceSelector` the operator keeps current.
    pub webhook_configuration: String,
    /// The Secret (in the operator's namespace) holding the serving
    /// certificate: `tls.crt`, `tls.key`, `ca.crt`.
    pub secret: String,
    /// The Service the API server calls: the certificate names
    /// `<service>.<namespace>.svc`.
    pub service: String,
    /// Set when the API server calls the webhook at this address instead
    /// of through the Service (`admission.endpoint: podIP`: the pod's IP,
    /// for API servers that cannot reach Service IPs); the operator keeps
    /// the configuration's `clientConfig.url` pointing at it.
    pub url_host: Option<String>,
    pub addr: SocketAddr,
    /// cert-manager issues the certificate and injects the `caBundle`; the
    /// operator only reads the Secret.
    pub cert_manager: bool,
    /// How long a certificate the operator issues is valid; it is renewed
    /// when a third of that remains.
    pub cert_validity: std::time::Duration,
    /// How long an Ensure-mode pod waits for its images' backups.
    pub ensure_wait: std::time::Duration,
}

impl AdmissionConfig {
    pub(crate) fn from_lookup(
        get: &impl Fn(&str) -> Option<String>,
        number: &impl Fn(&str, u64) -> Result<u64, OperatorError>,
    ) -> Result<Option<AdmissionConfig>, OperatorError> {
        let Some(webhook_configuration) =
            get("LIFEBOAT_ADMISSION_WEBHOOK").filter(|s| !s.trim().is_empty())
        else {
            return Ok(None);
        };
        let addr = get("LIFEBOAT_ADMISSION_ADDR")
            .unwrap_or_else(|| "0.0.0.0:9443".to_owned())
            .parse()
            .map_err(|e| OperatorError::Config(format!("LIFEBOAT_ADMISSION_ADDR: {e}")))?;
        let cert_manager = match get("LIFEBOAT_ADMISSION_CERT_MANAGER").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(OperatorError::Config(format!(
                    "LIFEBOAT_ADMISSION_CERT_MANAGER must be true or false, not {other:?}"
                )));
            }
        };
        Ok(Some(AdmissionConfig {
            secret: get("LIFEBOAT_ADMISSION_SECRET")
                .unwrap_or_else(|| format!("{webhook_configuration}-tls")),
            service: get("LIFEBOAT_ADMISSION_SERVICE")
                .unwrap_or_else(|| webhook_configuration.clone()),
            url_host: get("LIFEBOAT_ADMISSION_URL_HOST").filter(|s| !s.trim().is_empty()),
            webhook_configuration,
            addr,
            cert_manager,
            cert_validity: std::time::Duration::from_secs(number(
                "LIFEBOAT_ADMISSION_CERT_VALIDITY_SECONDS",
                365 * 24 * 3600,
            )?),
            ensure_wait: std::time::Duration::from_secs(number(
                "LIFEBOAT_ADMISSION_ENSURE_WAIT_SECONDS",
                8,
            )?),
        }))
    }
}

impl OperatorConfig {
    /// Reads `LIFEBOAT_*` variables (and `POD_NAMESPACE`/`POD_NAME` from the
    /// downward API) through `get`, so tests can pass a map.
    // One flat read per setting, in one list a reader scans for a variable;
    // splitting it would only scatter that list.
    #[allow(clippy::too_many_lines)]
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, OperatorError> {
        let namespace = get("POD_NAMESPACE")
            .or_else(|| get("LIFEBOAT_NAMESPACE"))
            .unwrap_or_else(|| "lifeboat-system".to_owned());
        let identity = get("POD_NAME")
            .or_else(|| get("HOSTNAME"))
            .unwrap_or_else(|| format!("lifeboat-operator-{}", std::process::id()));
        let http_addr = get("LIFEBOAT_HTTP_ADDR")
            .unwrap_or_else(|| "0.0.0.0:8080".to_owned())
            .parse()
            .map_err(|e| OperatorError::Config(format!("LIFEBOAT_HTTP_ADDR: {e}")))?;
        let in_cluster = get("KUBERNETES_SERVICE_HOST").is_some();
        let log_format = match get("LIFEBOAT_LOG_FORMAT").as_deref() {
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            None if in_cluster => LogFormat::Json,
            None => LogFormat::Text,
            Some(other) => {
                return Err(OperatorError::Config(format!(
                    "LIFEBOAT_LOG_FORMAT must be json or text, not {other:?}"
                )));
            }
        };
        let boolean = |name: &str, default: bool| -> Result<bool, OperatorError> {
            match get(name).as_deref() {
                None => Ok(default),
                Some("true") => Ok(true),
                Some("false") => Ok(false),
                Some(other) => Err(OperatorError::Config(format!(
                    "{name} must be true or false, not {other:?}"
                ))),
            }
        };
        // A comma-separated list; blanks and empty items are ignored.
        let list = |name: &str| -> Vec<String> {
            get(name)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let leader_election = boolean("LIFEBOAT_LEADER_ELECTION", true)?;
        let node_exporter_image = get("LIFEBOAT_NODE_EXPORTER_IMAGE")
            .unwrap_or_else(|| "lifeboat.local/node-exporter:dev".to_owned());
        let number = |name: &str, default: u64| -> Result<u64, OperatorError> {
            match get(name) {
                None => Ok(default),
                Some(text) => text.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    OperatorError::Config(format!(
                        "{name} must be a positive whole number, not {text:?}"
                    ))
                }),
            }
        };
        let source_check_interval =
            std::time::Duration::from_secs(number("LIFEBOAT_SOURCE_CHECK_INTERVAL_SECONDS", 300)?);
        let max_concurrent_copies =
            usize::try_from(number("LIFEBOAT_MAX_CONCURRENT_COPIES", 64)?).unwrap_or(64);
        let plain_http_registries = list("LIFEBOAT_PLAIN_HTTP_REGISTRIES");
        let copies_per_route =
            usize::try_from(number("LIFEBOAT_COPIES_PER_ROUTE", 16)?).unwrap_or(16);
        let copies_per_namespace =
            usize::try_from(number("LIFEBOAT_COPIES_PER_NAMESPACE", 4)?).unwrap_or(4);
        let copy_deadline = registry_transfer::CopyDeadline {
            base: std::time::Duration::from_secs(number(
                "LIFEBOAT_COPY_DEADLINE_BASE_SECONDS",
                60,
            )?),
            min_bytes_per_second: number("LIFEBOAT_COPY_MIN_BYTES_PER_SECOND", 1024 * 1024)?,
        };
        let trusted_token_realms = trusted_realms(&list("LIFEBOAT_TRUSTED_TOKEN_REALMS"))?;
        let node_exporter_pull_policy = match get("LIFEBOAT_NODE_EXPORTER_PULL_POLICY") {
            None => "IfNotPresent".to_owned(),
            Some(p) if ["Always", "IfNotPresent", "Never"].contains(&p.as_str()) => p,
            Some(other) => {
                return Err(OperatorError::Config(format!(
                    "LIFEBOAT_NODE_EXPORTER_PULL_POLICY must be Always, IfNotPresent or Never, not {other:?}"
                )));
            }
        };
        let containerd_socket = get("LIFEBOAT_CONTAINERD_SOCKET")
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| "/run/containerd/containerd.sock".to_owned());
        let containerd_content_store = match get("LIFEBOAT_CONTAINERD_CONTENT_STORE") {
            None => Some(DEFAULT_CONTENT_STORE.to_owned()),
            Some(path) if path.trim().is_empty() => None,
            Some(path) if path.starts_with('/') => Some(path),
            Some(other) => {
                return Err(OperatorError::Config(format!(
                    "LIFEBOAT_CONTAINERD_CONTENT_STORE must be an absolute path or empty, not {other:?}"
                )));
            }
        };
        let node_exporter_tolerations = match get("LIFEBOAT_NODE_EXPORTER_TOLERATIONS") {
            None => Vec::new(),
            Some(text) if text.trim().is_empty() || text.trim() == "null" => Vec::new(),
            Some(text) => serde_json::from_str(&text).map_err(|e| {
                OperatorError::Config(format!(
                    "LIFEBOAT_NODE_EXPORTER_TOLERATIONS must be a JSON list of tolerations: {e}"
                ))
            })?,
        };
        let node_exporter_host_network = boolean("LIFEBOAT_NODE_EXPORTER_HOST_NETWORK", false)?;
        let image_pull_secrets = list("LIFEBOAT_IMAGE_PULL_SECRETS");
        let service_account = get("LIFEBOAT_SERVICE_ACCOUNT")
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| "lifeboat-operator".to_owned());
        let credentials_reader_role = get("LIFEBOAT_CREDENTIALS_READER_ROLE")
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| "lifeboat-credentials-reader".to_owned());
        let tenant_tolerations = match get("LIFEBOAT_TENANT_TOLERATIONS") {
            None => Vec::new(),
            Some(text) if text.trim().is_empty() || text.trim() == "null" => Vec::new(),
            Some(text) => serde_json::from_str(&text).map_err(|e| {
                OperatorError::Config(format!(
                    "LIFEBOAT_TENANT_TOLERATIONS must be a JSON list of tolerations: {e}"
                ))
            })?,
        };
        // Unset: a tenant may pick nodes by name only (which widens nothing).
        let node_selector_keys = if get("LIFEBOAT_TENANT_NODE_SELECTOR_KEYS").is_some() {
            list("LIFEBOAT_TENANT_NODE_SELECTOR_KEYS")
        } else {
            vec!["kubernetes.io/hostname".to_owned()]
        };
        let allow_control_plane_nodes = boolean("LIFEBOAT_NODE_EXPORTER_CONTROL_PLANE", false)?;
        let admission = AdmissionConfig::from_lookup(&get, &number)?;
        Ok(OperatorConfig {
            admission,
            service_account,
            credentials_reader_role,
            tenant_node_access: crate::tenancy::NodeAccessAllowlist {
                tolerations: tenant_tolerations,
                node_selector_keys,
            },
            allow_control_plane_nodes,
            node_exporter_pull_policy,
            containerd_socket,
            containerd_content_store,
            node_exporter_tolerations,
            node_exporter_host_network,
            image_pull_secrets,
            source_check_interval,
            plain_http_registries,
            max_concurrent_copies,
            copies_per_route,
            copies_per_namespace,
            copy_deadline,
            trusted_token_realms,
            namespace,
            identity,
            http_addr,
            log_format,
            leader_election,
            node_exporter_image,
        })
    }
}

/// `registry=https://realm-host[:port]` items: the realm must be an
/// https URL (credentials never go to a token service in plain text).
fn trusted_realms(items: &[String]) -> Result<Vec<(String, String)>, OperatorError> {
    items
        .iter()
        .map(|item| {
            let bad = |why: &str| {
                OperatorError::Config(format!(
                    "LIFEBOAT_TRUSTED_TOKEN_REALMS: {item:?} {why} (want registry=https://realm-host)"
                ))
            };
            let (registry, realm) = item.split_once('=').ok_or_else(|| bad("has no ="))?;
            let (registry, realm) = (registry.trim(), realm.trim());
            let url = url::Url::parse(realm).map_err(|_| bad("names no URL"))?;
            if registry.is_empty() || url.scheme() != "https" || url.host_str().is_none() {
                return Err(bad("needs a registry and an https realm"));
            }
            Ok((registry.to_owned(), url.origin().ascii_serialization()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<OperatorConfig, OperatorError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        OperatorConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_outside_the_cluster() {
        let c = config(&[]).unwrap();
        assert_eq!(c.namespace, "lifeboat-system");
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.leader_election);
        assert_eq!(c.source_check_interval.as_secs(), 300);
        assert!(c.plain_http_registries.is_empty());
        assert_eq!(c.service_account, "lifeboat-operator");
        assert_eq!(c.credentials_reader_role, "lifeboat-credentials-reader");
        assert!(c.tenant_node_access.tolerations.is_empty());
        assert_eq!(
            c.tenant_node_access.node_selector_keys,
            ["kubernetes.io/hostname"]
        );
        assert!(!c.allow_control_plane_nodes);
        assert_eq!(c.admission, None);
    }

    #[test]
    fn the_admission_webhook_from_the_environment() {
        let c = config(&[
            ("LIFEBOAT_ADMISSION_WEBHOOK", "lifeboat-admission"),
            ("LIFEBOAT_ADMISSION_CERT_VALIDITY_SECONDS", "60"),
        ])
        .unwrap();
        let admission = c.admission.unwrap();
        assert_eq!(admission.secret, "lifeboat-admission-tls");
        assert_eq!(admission.service, "lifeboat-admission");
        assert_eq!(admission.addr.port(), 9443);
        assert_eq!(admission.cert_validity.as_secs(), 60);
        assert_eq!(admission.ensure_wait.as_secs(), 8);
        assert!(!admission.cert_manager);
        let error = config(&[
            ("LIFEBOAT_ADMISSION_WEBHOOK", "w"),
            ("LIFEBOAT_ADMISSION_CERT_MANAGER", "yes"),
        ])
        .unwrap_err()
        .to_string();
        assert!(error.contains("LIFEBOAT_ADMISSION_CERT_MANAGER"), "{error}");
    }

    #[test]
    fn tenant_allowlists_from_the_environment() {
        let c = config(&[
            (
                "LIFEBOAT_TENANT_TOLERATIONS",
                r#"[{"key":"dedicated","operator":"Exists"}]"#,
            ),
            ("LIFEBOAT_TENANT_NODE_SELECTOR_KEYS", ""),
            ("LIFEBOAT_NODE_EXPORTER_CONTROL_PLANE", "true"),
            ("LIFEBOAT_SERVICE_ACCOUNT", "op"),
        ])
        .unwrap();
        assert_eq!(
            c.tenant_node_access.tolerations[0].key.as_deref(),
            Some("dedicated")
        );
        assert!(c.tenant_node_access.node_selector_keys.is_empty());
        assert!(c.allow_control_plane_nodes);
        assert_eq!(c.service_account, "op");
        let error = config(&[("LIFEBOAT_TENANT_TOLERATIONS", "[1]")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("LIFEBOAT_TENANT_TOLERATIONS"), "{error}");
    }

    #[test]
    fn registry_settings_from_the_environment() {
        let c = config(&[
            ("LIFEBOAT_SOURCE_CHECK_INTERVAL_SECONDS", "15"),
            (
                "LIFEBOAT_PLAIN_HTTP_REGISTRIES",
                "127.0.0.1:5001, localhost:5000",
            ),
            ("LIFEBOAT_MAX_CONCURRENT_COPIES", "2"),
        ])
        .unwrap();
        assert_eq!(c.source_check_interval.as_secs(), 15);
        assert_eq!(
            c.plain_http_registries,
            ["127.0.0.1:5001", "localhost:5000"]
        );
        assert_eq!(c.max_concurrent_copies, 2);
        assert_eq!((c.copies_per_route, c.copies_per_namespace), (16, 4));
        assert_eq!(c.copy_deadline.base.as_secs(), 60);
        assert_eq!(c.copy_deadline.min_bytes_per_second, 1024 * 1024);
        assert!(c.trusted_token_realms.is_empty());
        let error = config(&[("LIFEBOAT_SOURCE_CHECK_INTERVAL_SECONDS", "0")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("LIFEBOAT_SOURCE_CHECK_INTERVAL_SECONDS"),
            "{error}"
        );
    }

    #[test]
    fn copy_queue_and_trusted_realms_from_the_environment() {
        let c = config(&[
            ("LIFEBOAT_COPIES_PER_ROUTE", "2"),
            ("LIFEBOAT_COPIES_PER_NAMESPACE", "3"),
            ("LIFEBOAT_COPY_DEADLINE_BASE_SECONDS", "20"),
            ("LIFEBOAT_COPY_MIN_BYTES_PER_SECOND", "1000"),
            (
                "LIFEBOAT_TRUSTED_TOKEN_REALMS",
                "registry.gitlab.com=https://gitlab.com/jwt/auth, reg.example:5000=https://auth.example:8443",
            ),
        ])
        .unwrap();
        assert_eq!((c.copies_per_route, c.copies_per_namespace), (2, 3));
        assert_eq!(c.copy_deadline.base.as_secs(), 20);
        assert_eq!(c.copy_deadline.min_bytes_per_second, 1000);
        assert_eq!(
            c.trusted_token_realms,
            [
                (
                    "registry.gitlab.com".to_owned(),
                    "https://gitlab.com".to_owned()
                ),
                (
                    "reg.example:5000".to_owned(),
                    "https://auth.example:8443".to_owned()
                ),
            ]
        );
        for bad in [
            "gitlab.com",
            "r=http://auth.example",
            "=https://a.example",
            "r=nope",
        ] {
            let error = config(&[("LIFEBOAT_TRUSTED_TOKEN_REALMS", bad)])
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("LIFEBOAT_TRUSTED_TOKEN_REALMS"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn export_job_settings_from_the_environment() {
        let c = config(&[]).unwrap();
        assert_eq!(c.containerd_socket, "/run/containerd/containerd.sock");
        assert_eq!(
            c.containerd_content_store.as_deref(),
            Some("/var/lib/containerd/io.containerd.content.v1.content")
        );
        assert_eq!(
            config(&[("LIFEBOAT_CONTAINERD_CONTENT_STORE", "")])
                .unwrap()
                .containerd_content_store,
            None
        );
        assert!(config(&[("LIFEBOAT_CONTAINERD_CONTENT_STORE", "relative/dir")]).is_err());
        assert!(c.node_exporter_tolerations.is_empty());
        assert!(!c.node_exporter_host_network);
        let c = config(&[
            (
                "LIFEBOAT_CONTAINERD_SOCKET",
                "/var/lib/lifeboat-cluster/nodes/{node}/containerd.sock",
            ),
            (
                "LIFEBOAT_NODE_EXPORTER_TOLERATIONS",
                r#"[{"operator":"Exists"}]"#,
            ),
            ("LIFEBOAT_NODE_EXPORTER_HOST_NETWORK", "true"),
            ("LIFEBOAT_NODE_EXPORTER_PULL_POLICY", "Never"),
            ("LIFEBOAT_IMAGE_PULL_SECRETS", "a, b"),
        ])
        .unwrap();
        assert!(c.containerd_socket.contains("{node}"));
        assert_eq!(c.node_exporter_tolerations.len(), 1);
        assert_eq!(
            c.node_exporter_tolerations[0].operator.as_deref(),
            Some("Exists")
        );
        assert!(c.node_exporter_host_network);
        assert_eq!(c.node_exporter_pull_policy, "Never");
        assert_eq!(c.image_pull_secrets, ["a", "b"]);
        let error = config(&[("LIFEBOAT_NODE_EXPORTER_TOLERATIONS", "{")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("LIFEBOAT_NODE_EXPORTER_TOLERATIONS"),
            "{error}"
        );
    }

    #[test]
    fn json_logs_in_the_cluster_and_downward_api_names() {
        let c = config(&[
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("POD_NAMESPACE", "ops"),
            ("POD_NAME", "op-1"),
        ])
        .unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.namespace, "ops");
        assert_eq!(c.identity, "op-1");
    }

    #[test]
    fn bad_values_are_rejected_with_the_variable_name() {
        let error = config(&[("LIFEBOAT_LEADER_ELECTION", "yes")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("LIFEBOAT_LEADER_ELECTION"), "{error}");
        let error = config(&[("LIFEBOAT_HTTP_ADDR", "nowhere")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("LIFEBOAT_HTTP_ADDR"), "{error}");
    }
}
