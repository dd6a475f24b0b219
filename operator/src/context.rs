//! What every reconcile needs: API clients, configuration, metrics, and the
//! identity events are reported under.

use kube::Client;
use kube::runtime::events::Reporter;

use crate::config::OperatorConfig;
use crate::telemetry::Metrics;

/// The field manager for every server-side apply the operator makes: status
/// writes and owned objects alike, so ownership of fields stays with one name.
pub const FIELD_MANAGER: &str = "lifeboat-operator";

pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub metrics: Metrics,
    pub reporter: Reporter,
    /// What the admission webhook reads (filled by the backup controller).
    pub admission: std::sync::Arc<crate::admission::Board>,
}

impl Context {
    pub fn new(client: Client, config: OperatorConfig, metrics: Metrics) -> Self {
        crate::registry_access::set_credentials_grant(
            &config.credentials_reader_role,
            &config.namespace,
            &config.service_account,
        );
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: Some(config.identity.clone()),
        };
        Context {
            client,
            config,
            metrics,
            reporter,
            admission: std::sync::Arc::default(),
        }
    }
}
