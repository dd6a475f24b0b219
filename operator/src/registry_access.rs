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

/// The engine settings of every operator copy: 16 requests in flight, 8
/// per registry (measured in docs/benchmarks.md).
pub fn transfer_config() -> TransferConfig {
    TransferConfig {
        max_concurrent_requests: 16,
        max_concurrent_per_registry: 8,
        ..TransferConfig::default()
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
    let secret = secrets.get_opt(name).await?.ok_or_else(not_found)?;
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
        let map = api.get_opt(&key_ref.name).await?.ok_or_else(missing)?;
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
        let secret = api.get_opt(&key_ref.name).await?.ok_or_else(missing)?;
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
