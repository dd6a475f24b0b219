//! Reading what the operator needs to reach registries, for both
//! controllers: docker configs and CA bundles from the Secrets and ConfigMaps
//! of an object's namespace, and the engine settings every copy uses.
//!
//! Each reader appends what it read (kind, namespace, name, resource version)
//! to a fingerprint, so a cached engine is rebuilt only when a credential
//! changes.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};
use lifeboat_api::backup_policy::CaBundle;
use registry_transfer::{DockerConfig, TransferConfig};

use crate::error::OperatorError;

/// Who the operator is and which ClusterRole lets it read a namespace's
/// credentials, for `CredentialsForbidden` messages. Set once at start
/// (`Context::new`) so every reader can name the exact RoleBinding to
/// create without each call site carrying the configuration.
static GRANT: std::sync::OnceLock<Grant> = std::sync::OnceLock::new();

struct Grant {
    role: String,
    service_account_namespace: String,
    service_account: String,
}

pub fn set_credentials_grant(role: &str, service_account_namespace: &str, service_account: &str) {
    let _ = GRANT.set(Grant {
        role: role.to_owned(),
        service_account_namespace: service_account_namespace.to_owned(),
        service_account: service_account.to_owned(),
    });
}

/// The command that lets the operator read `namespace`'s credentials.
pub fn grant_command(namespace: &str) -> String {
    let (role, sa_namespace, sa) = match GRANT.get() {
        Some(g) => (
            g.role.as_str(),
            g.service_account_namespace.as_str(),
            g.service_account.as_str(),
        ),
        None => (
            "lifeboat-credentials-reader",
            "lifeboat-system",
            "lifeboat-operator",
        ),
    };
    format!(
        "kubectl create rolebinding {role} --namespace {namespace} --clusterrole {role} --serviceaccount {sa_namespace}:{sa}"
    )
}

/// A read of a Secret or ConfigMap: 403 becomes `CredentialsForbidden`
/// (the namespace has not granted the operator), not an API failure.
fn read_error(
    kind: &'static str,
    namespace: &str,
    name: &str,
    error: kube::Error,
) -> OperatorError {
    match error {
        kube::Error::Api(response) if response.code == 403 => OperatorError::CredentialsForbidden {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            grant: grant_command(namespace),
        },
        other => OperatorError::Kube(other),
    }
}

/// Gets a Secret by name; `None` when it does not exist.
pub async fn get_secret(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
) -> Result<Option<Secret>, OperatorError> {
    secrets
        .get_opt(name)
        .await
        .map_err(|e| read_error("Secret", namespace, name, e))
}

/// The engine settings of every operator copy: the engine's own (64
/// requests in flight, 32 per registry, as `transfer-copy` runs). How
/// hard a registry is pushed is the copy queue's to decide (copies per
/// route, learned from how the registry answers); a narrower engine under
/// it only serialized requests the queue had let start (8 per registry
/// held 16 copies of small images to about half the CLI's rate:
/// docs/benchmarks.md, "Operator: backup throughput").
pub fn transfer_config() -> TransferConfig {
    TransferConfig::default()
}

/// [`transfer_config`] with every copy's overall deadline (base plus
/// size at the minimum throughput, from the operator's config).
pub fn copy_transfer_config(deadline: registry_transfer::CopyDeadline) -> TransferConfig {
    TransferConfig {
        copy_deadline: Some(deadline),
        ..transfer_config()
    }
}

const DOCKER_CONFIG_JSON: &str = ".dockerconfigjson";

pub async fn docker_config(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
    fingerprint: &mut String,
) -> Result<DockerConfig, OperatorError> {
    let not_found = || OperatorError::CredentialsNotFound {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    let secret = get_secret(secrets, namespace, name)
        .await?
        .ok_or_else(not_found)?;
    let invalid = |message: String| OperatorError::CredentialsInvalid {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        message,
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(DOCKER_CONFIG_JSON))
        .ok_or_else(|| {
            invalid(format!(
                "it has no {DOCKER_CONFIG_JSON} key (use type kubernetes.io/dockerconfigjson)"
            ))
        })?;
    let config = DockerConfig::parse(&bytes.0).map_err(|e| invalid(e.to_string()))?;
    fingerprint.push_str(&format!(
        "secret/{namespace}/{name}@{};",
        secret.metadata.resource_version.unwrap_or_default()
    ));
    Ok(config)
}

pub async fn ca_bundle(
    client: &Client,
    namespace: &str,
    bundle: &CaBundle,
    fingerprint: &mut String,
) -> Result<Vec<u8>, OperatorError> {
    if let Some(key_ref) = &bundle.config_map_key_ref {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let missing = || OperatorError::CaBundleNotFound {
            kind: "ConfigMap",
            namespace: namespace.to_owned(),
            name: key_ref.name.clone(),
            key: key_ref.key.clone(),
        };
        let map = api
            .get_opt(&key_ref.name)
            .await
            .map_err(|e| read_error("ConfigMap", namespace, &key_ref.name, e))?
            .ok_or_else(missing)?;
        let pem = map
            .data
            .as_ref()
            .and_then(|d| d.get(&key_ref.key))
            .ok_or_else(missing)?;
        fingerprint.push_str(&format!(
            "configmap/{namespace}/{}@{};",
            key_ref.name,
            map.metadata.resource_version.clone().unwrap_or_default()
        ));
        return Ok(pem.clone().into_bytes());
    }
    if let Some(key_ref) = &bundle.secret_key_ref {
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let missing = || OperatorError::CaBundleNotFound {
            kind: "Secret",
            namespace: namespace.to_owned(),
            name: key_ref.name.clone(),
            key: key_ref.key.clone(),
        };
        let secret = get_secret(&api, namespace, &key_ref.name)
            .await?
            .ok_or_else(missing)?;
        let pem = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&key_ref.key))
            .ok_or_else(missing)?;
        fingerprint.push_str(&format!(
            "secret/{namespace}/{}@{};",
            key_ref.name,
            secret.metadata.resource_version.clone().unwrap_or_default()
        ));
        return Ok(pem.0.clone());
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: "secrets \"x\" is forbidden".into(),
            reason: "Forbidden".into(),
            ..kube::core::Status::default()
        }))
    }

    #[test]
    fn forbidden_reads_name_the_role_binding_to_create() {
        let error = read_error("Secret", "team-a", "push", api_error(403));
        assert_eq!(error.reason(), "CredentialsForbidden");
        let message = error.to_string();
        assert!(message.contains("Secret team-a/push"), "{message}");
        assert!(
            message.contains("kubectl create rolebinding")
                && message.contains("--namespace team-a")
                && message.contains("--clusterrole ")
                && message.contains("--serviceaccount "),
            "{message}"
        );
        let other = read_error("Secret", "team-a", "push", api_error(500));
        assert_eq!(other.reason(), "KubernetesApiError");
    }
}
