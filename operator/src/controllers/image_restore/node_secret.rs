//! The one Secret a restore into nodes mounts into its Jobs, in the
//! operator's namespace: the backup targets' pull credentials and CA
//! bundles (for imports from a backup) and the one-time token of its peer
//! sessions (for node-to-node imports). Named like the export Jobs'
//! credentials copy, so the restore's cleanup deletes it the same way.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use lifeboat_api::ImageBackupPolicy;

use super::RestoreController;
use super::facts::Facts;
use super::node_jobs::{
    ImportFrom, ImportSecretData, NodeJobMeta, TOKEN_KEY, import_secret, new_token,
};
use super::planning::BackupCandidate;
use crate::controllers::object_names;
use crate::error::OperatorError;
use crate::registry_access::{ca_bundle, get_secret};

/// Creates (or brings up to date) the restore's import Secret; returns its
/// name and how imports from the backup reach it (credentials, CA bundles,
/// plain HTTP as the admin allows).
pub(super) async fn ensure(
    controller: &RestoreController,
    facts: &Facts<'_>,
    candidates: &[(BackupCandidate, ImageBackupPolicy)],
    used_targets: &BTreeSet<String>,
) -> Result<(String, ImportFrom), OperatorError> {
    let client = &controller.context.client;
    let config = &controller.context.config;
    let tenant_secrets: Api<Secret> = Api::namespaced(client.clone(), &facts.namespace);
    let mut docker_configs = Vec::new();
    let mut read_secrets = BTreeSet::new();
    let mut ca_registries = Vec::new();
    let mut ca_bundles = Vec::new();
    let mut plain_http = Vec::new();
    let mut fingerprint = String::new();
    for (candidate, policy) in candidates
        .iter()
        .filter(|(c, _)| used_targets.contains(&c.target))
    {
        let Some(target) = policy
            .spec
            .targets
            .iter()
            .find(|t| t.name == candidate.target)
        else {
            continue;
        };
        // Every target's credentials, merged into one file below.
        if let Some(secret_ref) = &target.secret_ref
            && !read_secrets.contains(&secret_ref.name)
            && let Some(secret) =
                get_secret(&tenant_secrets, &facts.namespace, &secret_ref.name).await?
        {
            read_secrets.insert(secret_ref.name.clone());
            docker_configs.extend(
                secret
                    .data
                    .and_then(|mut d| d.remove(".dockerconfigjson"))
                    .map(|b| b.0),
            );
        }
        let host = candidate.registry.host.clone();
        if let Some(bundle) = &target.ca_bundle
            && !ca_registries.contains(&host)
        {
            let pem = ca_bundle(client, &facts.namespace, bundle, &mut fingerprint).await?;
            ca_registries.push(host.clone());
            ca_bundles.push(pem);
        }
        let allowed = crate::tenancy::plain_http(
            facts.namespace == config.namespace,
            &host,
            &config.plain_http_registries,
        )
        .is_ok();
        if target.is_insecure() && allowed {
            plain_http.push(host);
        }
    }
    let docker_config = merge_docker_configs(&docker_configs);
    let from = ImportFrom::Registry {
        ca_registries,
        docker_config: docker_config.is_some(),
        plain_http,
    };

    let namespace = &config.namespace;
    let name = object_names::credentials_secret_name(&facts.name, &facts.uid);
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let existing = api.get_opt(&name).await?;
    let data = ImportSecretData {
        docker_config,
        ca_bundles,
        token: Some(existing_token(existing.as_ref()).unwrap_or_else(new_token)),
    };
    let meta = NodeJobMeta {
        name: name.clone(),
        node: String::new(),
        restore_namespace: facts.namespace.clone(),
        restore_name: facts.name.clone(),
        restore_uid: facts.uid.clone(),
        tolerations: Vec::new(),
        active_deadline_seconds: 0,
        owner: facts.owner(namespace),
    };
    let mut secret = import_secret(&meta, namespace, &name, data);
    match existing {
        None => match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        },
        Some(old) if old.data != secret.data => {
            secret.metadata.resource_version = old.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &secret).await?;
        }
        Some(_) => {}
    }
    Ok((name, from))
}

/// The token a Secret already holds: a second reconcile keeps the one a
/// running serve expects.
fn existing_token(secret: Option<&Secret>) -> Option<String> {
    let bytes = secret?.data.as_ref()?.get(TOKEN_KEY)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .filter(|t| !t.is_empty())
}

/// One `.dockerconfigjson` holding the `auths` of all of `configs` (the
/// import Job reads one file): each registry's entry from the first config
/// that names it. `None` when none holds any.
pub(crate) fn merge_docker_configs(configs: &[Vec<u8>]) -> Option<Vec<u8>> {
    if let [only] = configs {
        return Some(only.clone());
    }
    let mut auths = serde_json::Map::new();
    for config in configs {
        let Ok(serde_json::Value::Object(mut parsed)) = serde_json::from_slice(config) else {
            continue;
        };
        if let Some(serde_json::Value::Object(entries)) = parsed.remove("auths") {
            for (registry, entry) in entries {
                auths.entry(registry).or_insert(entry);
            }
        }
    }
    if auths.is_empty() {
        return None;
    }
    serde_json::to_vec(&serde_json::json!({ "auths": auths })).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_targets_credentials_are_merged_first_one_wins_per_registry() {
        let a =
            br#"{"auths": {"backup-a.io": {"auth": "YTph"}, "shared.io": {"auth": "Zmlyc3Q="}}}"#;
        let b =
            br#"{"auths": {"backup-b.io": {"auth": "Yjpi"}, "shared.io": {"auth": "c2Vjb25k"}}}"#;
        let merged = merge_docker_configs(&[a.to_vec(), b.to_vec(), b"not json".to_vec()]).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&merged).unwrap();
        let auths = parsed["auths"].as_object().unwrap();
        assert_eq!(auths.len(), 3);
        assert_eq!(auths["backup-a.io"]["auth"], "YTph");
        assert_eq!(auths["backup-b.io"]["auth"], "Yjpi");
        assert_eq!(auths["shared.io"]["auth"], "Zmlyc3Q=");
        assert_eq!(
            merge_docker_configs(&[a.to_vec()]).unwrap(),
            a.to_vec(),
            "one is kept as is"
        );
        assert_eq!(merge_docker_configs(&[]), None);
    }
}
