//! From an inventory and the policy's targets to copy tasks. Pure.

use lifeboat_api::ImageReference;
use lifeboat_api::backup_policy::{Referrers, ReferrersCopy};
use lifeboat_api::template::{TemplateContext, target_reference};
use lifeboat_api::validation::ValidTarget;
use registry_transfer::ReferrersPolicy;

use super::discovery::Inventory;

/// One image to copy to one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyTask {
    pub image_key: String,
    pub source: ImageReference,
    pub target_name: String,
    /// Target registry host, repository, and the source's tag and digest.
    pub destination: ImageReference,
    /// `os/arch[/variant]` to keep from an index; empty keeps all.
    pub platforms: Vec<String>,
    /// Which signatures, SBOMs and attestations come along.
    pub referrers: ReferrersPolicy,
}

/// An image that cannot be mapped into a target (the template renders an
/// invalid repository for it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingError {
    pub image_key: String,
    pub target_name: String,
    pub message: String,
}

/// A target with what the plan needs from its spec.
#[derive(Clone, Debug)]
pub struct PlanTarget {
    pub valid: ValidTarget,
    pub platforms: Vec<String>,
    /// The policy's `referrers` (the same for every target).
    pub referrers: ReferrersPolicy,
}

/// The engine's referrers policy for a policy's `spec.referrers`: all of
/// them when unset.
pub fn referrers_policy(spec: Option<&Referrers>) -> ReferrersPolicy {
    match spec {
        None => ReferrersPolicy::All,
        Some(referrers) => match referrers.copy.unwrap_or_default() {
            ReferrersCopy::All => ReferrersPolicy::All,
            ReferrersCopy::None => ReferrersPolicy::None,
            ReferrersCopy::ArtifactTypes => {
                ReferrersPolicy::ArtifactTypes(referrers.artifact_types.clone().unwrap_or_default())
            }
        },
    }
}

/// Every (image, target) pair, in inventory then target order.
pub fn copy_tasks(
    inventory: &Inventory,
    targets: &[PlanTarget],
    context: TemplateContext<'_>,
) -> (Vec<CopyTask>, Vec<MappingError>) {
    let mut tasks = Vec::new();
    let mut errors = Vec::new();
    for (key, image) in &inventory.images {
        for target in targets {
            match target_reference(
                &target.valid.registry,
                &target.valid.repository_template,
                &image.reference,
                context,
            ) {
                Ok(destination) => tasks.push(CopyTask {
                    image_key: key.clone(),
                    source: image.reference.clone(),
                    target_name: target.valid.name.clone(),
                    destination,
                    platforms: target.platforms.clone(),
                    referrers: target.referrers.clone(),
                }),
                Err(e) => errors.push(MappingError {
                    image_key: key.clone(),
                    target_name: target.valid.name.clone(),
                    message: e.to_string(),
                }),
            }
        }
    }
    (tasks, errors)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use lifeboat_api::template::TargetRegistry;

    use super::super::discovery::{ImageUse, image_key};
    use super::*;

    fn inventory(refs: &[&str]) -> Inventory {
        let mut inventory = Inventory::default();
        for r in refs {
            let reference = ImageReference::parse(r).unwrap();
            inventory.images.insert(
                image_key(&reference),
                ImageUse {
                    reference,
                    workloads: BTreeSet::new(),
                    nodes: BTreeSet::new(),
                    pull_failures: BTreeSet::new(),
                    pull_secrets: BTreeSet::new(),
                },
            );
        }
        inventory
    }

    fn target(name: &str, registry: &str, template: &str) -> PlanTarget {
        PlanTarget {
            valid: ValidTarget {
                name: name.into(),
                registry: TargetRegistry::parse(registry).unwrap(),
                repository_template: template.into(),
            },
            platforms: vec![],
            referrers: ReferrersPolicy::All,
        }
    }

    #[test]
    fn referrers_are_all_unless_the_policy_says_otherwise() {
        assert_eq!(referrers_policy(None), ReferrersPolicy::All);
        let spec = |copy, types: Option<Vec<&str>>| Referrers {
            copy: Some(copy),
            artifact_types: types.map(|t| t.into_iter().map(String::from).collect()),
        };
        assert_eq!(
            referrers_policy(Some(&spec(ReferrersCopy::None, None))),
            ReferrersPolicy::None
        );
        assert_eq!(
            referrers_policy(Some(&spec(ReferrersCopy::All, None))),
            ReferrersPolicy::All
        );
        assert_eq!(
            referrers_policy(Some(&spec(
                ReferrersCopy::ArtifactTypes,
                Some(vec!["application/spdx+json"])
            ))),
            ReferrersPolicy::ArtifactTypes(vec!["application/spdx+json".into()])
        );
    }

    const CONTEXT: TemplateContext<'static> = TemplateContext {
        policy_namespace: "shop",
        policy_name: "prod",
    };

    #[test]
    fn every_image_goes_to_every_target_keeping_tag_and_digest() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let inv = inventory(&[
            &format!("127.0.0.1:5001/demo/web:1.0@{digest}"),
            "127.0.0.1:5001/demo/api:2.3",
        ]);
        let targets = [
            target("one", "backup:5002", "{repository}"),
            target("two", "other.example/mirror", "{policyNamespace}/{name}"),
        ];
        let (tasks, errors) = copy_tasks(&inv, &targets, CONTEXT);
        assert!(errors.is_empty(), "{errors:?}");
        let rendered: Vec<String> = tasks.iter().map(|t| t.destination.to_string()).collect();
        assert_eq!(
            rendered,
            vec![
                "backup:5002/demo/api:2.3".to_owned(),
                "other.example/mirror/shop/api:2.3".to_owned(),
                format!("backup:5002/demo/web:1.0@{digest}"),
                format!("other.example/mirror/shop/web:1.0@{digest}"),
            ]
        );
        assert_eq!(tasks[0].target_name, "one");
        assert_eq!(tasks[1].target_name, "two");
        assert_eq!(
            (
                tasks[3].destination.registry.as_str(),
                tasks[3].destination.repository.as_str()
            ),
            ("other.example", "mirror/shop/web")
        );
    }

    #[test]
    fn no_targets_means_no_tasks() {
        let inv = inventory(&["nginx"]);
        let (tasks, errors) = copy_tasks(&inv, &[], CONTEXT);
        assert!(tasks.is_empty() && errors.is_empty());
    }
}
