//! Registry side of a reconcile: credentials from Secrets, the copy of one
//! task, and existence checks by digest.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use lifeboat_api::ImageBackupPolicySpec;
use lifeboat_api::backup_policy::LocalObjectRef;
use lifeboat_api::template::TargetRegistry;
use registry_transfer::{
    CopyReport, CopyRequest, Platform, RegistrySettings, RepositoryRef, TransferError,
    deterministic_tag,
};

use super::discovery::SecretId;
use super::plan::CopyTask;
use crate::error::OperatorError;
use crate::registry_access::{ca_bundle, docker_config};

/// Registry settings for one policy, and a fingerprint of what they were
/// built from (Secret and ConfigMap resource versions), so the engine is
/// rebuilt only when a credential changes.
pub struct PolicySettings {
    pub settings: RegistrySettings,
    pub fingerprint: String,
    /// Pull secrets that could not be read (skipped, not fatal).
    pub skipped_pull_secrets: Vec<String>,
}

/// Reads every credential a policy uses. All references are looked up in
/// the policy's own namespace; workload pull secrets in the workloads'
/// namespaces (which a tenant policy's scope limits to its own).
pub async fn policy_settings(
    client: &Client,
    namespace: &str,
    spec: &ImageBackupPolicySpec,
    pull_secrets: &BTreeSet<SecretId>,
    plain_http_registries: &[String],
    trusted_token_realms: &[(String, String)],
    operator_namespace: bool,
) -> Result<PolicySettings, OperatorError> {
    let mut fingerprint = String::new();
    let local: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut settings = RegistrySettings::new();
    let mut skipped_pull_secrets = Vec::new();

    // Lowest precedence first: later credentials win for the same registry.
    if let Some(source) = &spec.source_credentials {
        if source.uses_workload_pull_secrets() {
            for (secret_namespace, name) in pull_secrets {
                let api: Api<Secret> = Api::namespaced(client.clone(), secret_namespace);
                match docker_config(&api, secret_namespace, name, &mut fingerprint).await {
                    Ok(config) => settings = settings.with_docker_config(config),
                    Err(OperatorError::Kube(e)) => return Err(OperatorError::Kube(e)),
                    Err(e) => skipped_pull_secrets.push(e.to_string()),
                }
            }
        }
        for LocalObjectRef { name } in source.secret_refs.iter().flatten() {
            let config = docker_config(&local, namespace, name, &mut fingerprint).await?;
            settings = settings.with_docker_config(config);
        }
    }
    for target in &spec.targets {
        let registry =
            TargetRegistry::parse(&target.registry).map_err(|e| OperatorError::InvalidSpec {
                reason: e.reason(),
                message: e.to_string(),
            })?;
        if let Some(LocalObjectRef { name }) = &target.secret_ref {
            let config = docker_config(&local, namespace, name, &mut fingerprint).await?;
            settings = settings.with_docker_config(config);
        }
        if let Some(bundle) = &target.ca_bundle {
            let pem = ca_bundle(client, namespace, bundle, &mut fingerprint).await?;
            settings = settings.with_ca_bundle(&registry.host, pem);
        }
        if target.is_insecure() {
            // A tenant's `insecure: true` counts only for hosts the admin listed.
            crate::tenancy::plain_http(operator_namespace, &registry.host, plain_http_registries)
                .map_err(|refusal| OperatorError::InvalidSpec {
                reason: refusal.reason,
                message: refusal.message,
            })?;
            settings = settings.allow_plain_http(&registry.host);
            fingerprint.push_str(&format!("plain/{};", registry.host));
        }
    }
    for registry in plain_http_registries {
        settings = settings.allow_plain_http(registry);
    }
    // Set by the admin only (a tenant cannot widen where credentials go).
    for (registry, realm) in trusted_token_realms {
        settings = settings.trust_token_realm(registry, realm);
    }
    Ok(PolicySettings {
        settings,
        fingerprint,
        skipped_pull_secrets,
    })
}

/// What copying one task gave.
#[derive(Debug, Clone)]
pub struct CopyOutcome {
    /// Digest now held by the target.
    pub digest: String,
    pub bytes: u64,
    pub up_to_date: bool,
    /// Referrers (signatures, SBOMs, attestations) the target holds with
    /// the image, as the policy chose them.
    pub referrers: u32,
    /// For a task known by tag alone: the source image pinned to the
    /// digest its tag pointed at when it was copied (`None` for a task
    /// pinned to a digest).
    pub resolved: Option<lifeboat_api::ImageReference>,
}

/// What one queued copy ends with.
pub type CopyResult = Result<CopyOutcome, TransferError>;

/// Copies one image into one target: digest-exact under Lifeboat's
/// deterministic tag (never conflicts, never left untagged for a garbage
/// collector) with the source's tag moved onto it so people find it, in
/// one copy (the tag is one more manifest PUT). An image known by tag
/// alone (its pods have not said which digest they run yet) is copied the
/// same way, the engine resolving its tag: its backup gets Lifeboat's tag
/// too, and counts for the digest its pods report once they run.
pub async fn copy_task(
    transfer: &registry_transfer::Transfer,
    task: &CopyTask,
) -> Result<CopyOutcome, TransferError> {
    let platforms = task
        .platforms
        .iter()
        .map(|p| Platform::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    let target = RepositoryRef::new(
        task.destination.registry.clone(),
        task.destination.repository.clone(),
    );
    let request = CopyRequest::new(target)
        .with_platforms(platforms)
        .with_referrers(task.referrers.clone());
    let report: CopyReport = match task.source.pinned() {
        Some(pinned) => {
            let lifeboat_tag = pinned
                .digest
                .as_ref()
                .map(deterministic_tag)
                .unwrap_or_default();
            let mut request = request.with_tag(lifeboat_tag);
            if let Some(tag) = &task.source.tag {
                request = request.also_tagging(tag.clone());
            }
            transfer.copy_image(&pinned, &request).await?
        }
        // Known by tag alone (none at all means `latest`).
        None => {
            let tag = task
                .source
                .tag
                .clone()
                .unwrap_or_else(|| lifeboat_api::reference::DEFAULT_TAG.to_owned());
            if task.platforms.is_empty() {
                // No tag in the request: the engine resolves the tag inside
                // the copy (its deadline and typed errors apply, and a
                // registry that answers by tag but not by digest is read as
                // it answers), names the copy with Lifeboat's tag for that
                // digest and moves the source's tag there.
                let source = transfer.registry_source(&task.source)?;
                transfer.copy(&source, &request.also_tagging(tag)).await?
            } else {
                // Dropping platforms gives the copy a digest of its own:
                // kept under the source's tag alone.
                let request = request.with_tag(tag).allowing_tag_move(true);
                transfer.copy_image(&task.source, &request).await?
            }
        }
    };
    let resolved = (task.source.digest.is_none() && task.platforms.is_empty())
        .then(|| task.source.with_digest(report.source_digest.clone()));
    Ok(CopyOutcome {
        digest: report.digest.to_string(),
        bytes: report.bytes_copied,
        up_to_date: report.up_to_date,
        referrers: u32::try_from(report.referrers.len()).unwrap_or(u32::MAX),
        resolved,
    })
}

/// How a copy's result counts for its route's learned limit
/// (`copy_queue::adaptive`): the registry pushing back (it kept answering
/// 429 or 5xx after the engine's retries, went away, was too slow, or the
/// copy ran past its deadline) narrows the route; other failures say
/// nothing about load.
pub fn verdict(result: &CopyResult) -> crate::copy_queue::Verdict {
    use crate::copy_queue::Verdict;
    match result {
        Ok(_) => Verdict::Copied,
        Err(
            TransferError::RateLimited { .. }
            | TransferError::RegistryUnavailable { .. }
            | TransferError::Interrupted { .. }
            | TransferError::TooSlow { .. }
            | TransferError::CopyDeadlineExceeded { .. }
            | TransferError::SourceUnavailable {
                transient: true, ..
            },
        ) => Verdict::PushedBack,
        Err(_) => Verdict::Neither,
    }
}

/// Longest `status.plan.wouldCopy` entry (the CRD's bound).
const MAX_PLAN_ENTRY_CHARS: usize = 1300;

/// A dry run's line for a copy: `source -> destination`, and the
/// referrers that would come along (their artifact types), or why they
/// could not be listed. Pure; cut to the CRD's bound.
pub fn describe_copy(
    task: &CopyTask,
    referrers: &Result<Vec<registry_transfer::ReferrerCopy>, TransferError>,
) -> String {
    let mut line = format!("{} -> {}", task.source, task.destination);
    match referrers {
        Ok(found) if found.is_empty() => {}
        Ok(found) => {
            let kinds: Vec<&str> = found
                .iter()
                .map(|r| r.artifact_type.as_deref().unwrap_or("unknown type"))
                .collect();
            line.push_str(&format!(
                " with {} referrer{}: {}",
                found.len(),
                if found.len() == 1 { "" } else { "s" },
                kinds.join(", ")
            ));
        }
        Err(e) => line.push_str(&format!(" (referrers not listed: {})", e.reason())),
    }
    if line.chars().count() > MAX_PLAN_ENTRY_CHARS {
        line = line.chars().take(MAX_PLAN_ENTRY_CHARS - 3).collect();
        line.push_str("...");
    }
    line
}

/// How long one existence check may take. The copy engine's own timeouts
/// and retries suit moving bytes; a registry that accepts connections and
/// never answers would hold a reconcile for minutes on a question that is
/// only worth asking again later.
const HOLDS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Whether a registry holds this exact manifest: one HEAD by digest (never
/// a pull on Docker Hub's rate limit). `false` for a reference without a
/// digest; an error when the registry could not say (unreachable, denied,
/// no answer within [`HOLDS_TIMEOUT`]).
pub async fn holds(
    transfer: &registry_transfer::Transfer,
    reference: &lifeboat_api::ImageReference,
) -> Result<bool, TransferError> {
    holds_within(transfer, reference, HOLDS_TIMEOUT).await
}

async fn holds_within(
    transfer: &registry_transfer::Transfer,
    reference: &lifeboat_api::ImageReference,
    limit: std::time::Duration,
) -> Result<bool, TransferError> {
    let Some(pinned) = reference.pinned() else {
        return Ok(false);
    };
    match tokio::time::timeout(limit, transfer.manifest_digest(&pinned)).await {
        Ok(answer) => Ok(answer?.is_some()),
        Err(_) => Err(TransferError::RegistryUnavailable {
            registry: pinned.registry.clone(),
            detail: format!("no answer within {} ms", limit.as_millis()),
        }),
    }
}

/// Where a finished [`copy_task`] leaves its image for Lifeboat: the
/// target repository under Lifeboat's deterministic tag for the task's
/// digest. `None` for a by-tag task (no digest to name it by). Pure.
pub fn lifeboat_tagged(task: &CopyTask) -> Option<lifeboat_api::ImageReference> {
    let digest = task.source.digest.as_ref()?;
    Some(lifeboat_api::ImageReference {
        registry: task.destination.registry.clone(),
        repository: task.destination.repository.clone(),
        tag: Some(deterministic_tag(digest)),
        digest: None,
    })
}

/// Whether a target holds a task's image the way [`copy_task`] leaves it:
/// Lifeboat's tag ([`lifeboat_tagged`]) at the task's digest. The manifest
/// being there by digest is not enough: a copy by tag (made before the
/// pods said which digest they run) or by hand leaves it without that tag,
/// and retention and restores find backups by it. (The source's tag is
/// not asked: two digests in use under one tag cannot both hold it.)
/// `false` for a by-tag task; an error when the registry could not say
/// (as [`holds`]).
pub async fn holds_as_copied(
    transfer: &registry_transfer::Transfer,
    task: &CopyTask,
) -> Result<bool, TransferError> {
    let Some(tagged) = lifeboat_tagged(task) else {
        return Ok(false);
    };
    let answer = tokio::time::timeout(HOLDS_TIMEOUT, transfer.manifest_digest(&tagged))
        .await
        .map_err(|_| TransferError::RegistryUnavailable {
            registry: tagged.registry.clone(),
            detail: format!("no answer within {} ms", HOLDS_TIMEOUT.as_millis()),
        })??;
    Ok(answer.is_some() && answer.as_ref() == task.source.digest.as_ref())
}

/// Groups items by registry so checks can be rate-limited per registry.
pub fn by_registry<T>(items: Vec<(String, T)>) -> BTreeMap<String, Vec<T>> {
    let mut groups: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for (registry, item) in items {
        groups.entry(registry).or_default().push(item);
    }
    groups
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use registry_transfer::{RegistrySettings, Transfer, TransferConfig};

    use super::*;

    #[test]
    fn a_dry_run_line_names_the_referrers_that_would_come_along() {
        let source = lifeboat_api::ImageReference::parse("reg.local/web:1").unwrap();
        let task = CopyTask {
            image_key: "k".into(),
            destination: source.clone(),
            source,
            target_name: "backup".into(),
            platforms: vec![],
            referrers: registry_transfer::ReferrersPolicy::All,
        };
        let digest =
            registry_transfer::Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        let referrer = |kind: &str| registry_transfer::ReferrerCopy {
            digest: digest.clone(),
            subject: digest.clone(),
            artifact_type: Some(kind.into()),
            scheme: registry_transfer::ReferrerScheme::Subject,
            depth: 1,
            already_there: false,
        };
        assert_eq!(
            describe_copy(&task, &Ok(vec![])),
            "reg.local/web:1 -> reg.local/web:1"
        );
        assert_eq!(
            describe_copy(&task, &Ok(vec![referrer("a/sig"), referrer("a/sbom")])),
            "reg.local/web:1 -> reg.local/web:1 with 2 referrers: a/sig, a/sbom"
        );
        let failed = Err(TransferError::TooManyReferrers {
            subject: digest.clone(),
            detail: "x".into(),
        });
        assert!(
            describe_copy(&task, &failed).ends_with("(referrers not listed: TooManyReferrers)")
        );
        let many = vec![referrer(&"t".repeat(200)); 10];
        let long = describe_copy(&task, &Ok(many));
        assert_eq!(long.chars().count(), MAX_PLAN_ENTRY_CHARS);
        assert!(long.ends_with("..."));
    }

    fn crypto_provider() {
        // As in main: one provider for the process (a second install is refused, fine here).
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    /// A registry that accepts connections and never says a word must not
    /// hold a reconcile for the copy engine's minutes of read timeouts and
    /// retries.
    #[tokio::test]
    async fn a_registry_that_never_answers_is_unavailable_within_the_limit() {
        crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let registry = listener.local_addr().unwrap().to_string();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((connection, _)) = listener.accept().await {
                held.push(connection);
            }
        });
        let transfer = Transfer::new(
            TransferConfig::default(),
            RegistrySettings::new().allow_plain_http(&registry),
        );
        let reference = lifeboat_api::ImageReference::parse(&format!(
            "{registry}/demo/web@sha256:{}",
            "a".repeat(64)
        ))
        .unwrap();

        let started = Instant::now();
        let answer = holds_within(&transfer, &reference, Duration::from_millis(300)).await;
        assert!(
            matches!(answer, Err(TransferError::RegistryUnavailable { .. })),
            "{answer:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        silent.abort();
    }

    /// The admin's trusted realms reach the policy's engine, for their own
    /// registry only; a spec has no way to add one.
    #[tokio::test]
    async fn trusted_token_realms_come_from_the_operator_config_only() {
        crypto_provider();
        let (client, server) = crate::controllers::test_api::scripted(vec![]);
        let spec: ImageBackupPolicySpec = serde_json::from_value(serde_json::json!({
            "targets": [{"name": "backup", "registry": "backup.example"}],
        }))
        .unwrap();
        let realms = [(
            "registry.gitlab.com".to_owned(),
            "https://gitlab.com".to_owned(),
        )];
        let settings = policy_settings(
            &client,
            "shop",
            &spec,
            &BTreeSet::new(),
            &[],
            &realms,
            false,
        )
        .await
        .unwrap();
        let shown = format!("{:?}", settings.settings);
        assert!(shown.contains("registry.gitlab.com"), "{shown}");
        assert!(shown.contains("gitlab.com"), "{shown}");
        let none = policy_settings(&client, "shop", &spec, &BTreeSet::new(), &[], &[], false)
            .await
            .unwrap();
        assert!(!format!("{:?}", none.settings).contains("gitlab"));
        assert!(server.finish().await.is_empty(), "no API request");
    }

    fn pinned_task(reference: &str) -> CopyTask {
        let source = lifeboat_api::ImageReference::parse(reference).unwrap();
        let mut destination = source.clone();
        destination.registry = "backup.local".into();
        destination.repository = format!("mirror/{}", source.repository);
        CopyTask {
            image_key: "k".into(),
            source,
            destination,
            target_name: "backup".into(),
            platforms: vec![],
            referrers: registry_transfer::ReferrersPolicy::All,
        }
    }

    #[test]
    fn a_copy_leaves_its_image_under_lifeboat_s_tag() {
        let hex = "b".repeat(64);
        let shown =
            |reference: &str| lifeboat_tagged(&pinned_task(reference)).map(|r| r.to_string());
        let want = Some(format!("backup.local/mirror/web:lifeboat-sha256-{hex}"));
        assert_eq!(shown(&format!("reg.local/web:1@sha256:{hex}")), want);
        assert_eq!(shown(&format!("reg.local/web@sha256:{hex}")), want);
        assert_eq!(shown("reg.local/web:1"), None);
    }

    /// A registry answering manifest HEADs from `tags` (reference -> digest)
    /// and 404 for anything else.
    async fn manifest_heads(tags: Vec<(String, String)>) -> (String, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            while let Ok((mut connection, _)) = listener.accept().await {
                let tags = tags.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match connection.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buffer[..end]).to_string();
                        buffer.drain(..end + 4);
                        let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                        let found = tags.iter().find(|(reference, _)| {
                            path.ends_with(&format!("/manifests/{reference}"))
                        });
                        let answer = match found {
                            Some((_, digest)) => format!(
                                "HTTP/1.1 200 OK\r\nDocker-Content-Digest: {digest}\r\n\
                                 Content-Type: application/vnd.oci.image.manifest.v1+json\r\n\
                                 Content-Length: 100\r\n\r\n"
                            ),
                            None => {
                                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned()
                            }
                        };
                        if connection.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (address, server)
    }

    /// The dry run's "already there" is the copy's result (its tags), not
    /// the manifest by digest: one copied by tag before its digest was
    /// known has no Lifeboat tag, and must still be copied.
    #[tokio::test]
    async fn held_by_digest_alone_is_not_held_as_copied() {
        crypto_provider();
        let hex = "c".repeat(64);
        let digest = format!("sha256:{hex}");
        let task_at = |registry: &str| {
            let mut task = pinned_task(&format!("reg.local/web:1@{digest}"));
            task.destination.registry = registry.to_owned();
            task
        };
        let by_tag_only = vec![
            ("1".to_owned(), digest.clone()),
            (digest.clone(), digest.clone()),
        ];
        let (registry, server) = manifest_heads(by_tag_only).await;
        let transfer = Transfer::new(
            TransferConfig::default(),
            RegistrySettings::new().allow_plain_http(&registry),
        );
        let task = task_at(&registry);
        assert!(
            holds(&transfer, &task.destination).await.unwrap(),
            "there by digest"
        );
        assert!(!holds_as_copied(&transfer, &task).await.unwrap());
        server.abort();

        let copied = vec![
            ("1".to_owned(), digest.clone()),
            (format!("lifeboat-sha256-{hex}"), digest.clone()),
        ];
        let (registry, server) = manifest_heads(copied).await;
        let transfer = Transfer::new(
            TransferConfig::default(),
            RegistrySettings::new().allow_plain_http(&registry),
        );
        assert!(
            holds_as_copied(&transfer, &task_at(&registry))
                .await
                .unwrap()
        );
        server.abort();

        // Lifeboat's tag at another digest (pushed by hand): not this copy.
        let elsewhere = vec![
            ("1".to_owned(), digest.clone()),
            (
                format!("lifeboat-sha256-{hex}"),
                format!("sha256:{}", "d".repeat(64)),
            ),
        ];
        let (registry, server) = manifest_heads(elsewhere).await;
        let transfer = Transfer::new(
            TransferConfig::default(),
            RegistrySettings::new().allow_plain_http(&registry),
        );
        assert!(
            !holds_as_copied(&transfer, &task_at(&registry))
                .await
                .unwrap()
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_reference_without_a_digest_is_not_asked_for() {
        crypto_provider();
        let transfer = Transfer::new(TransferConfig::default(), RegistrySettings::new());
        let by_tag = lifeboat_api::ImageReference::parse("127.0.0.1:1/demo/web:1.0").unwrap();
        assert!(!holds(&transfer, &by_tag).await.unwrap());
    }
}
