//! The admission verdict: a pure function over what the operator already
//! knows (which policies select the object, what their last reconciles
//! learned about each image) and, in Enforce mode only, one answer from the
//! image's source registry. The handler gathers those facts and answers;
//! everything said to the user is decided here.

use std::collections::BTreeSet;

use lifeboat_api::ImageReference;
use lifeboat_api::backup_policy::AdmissionMode;

/// What one policy's last reconcile knew about one image it selects.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageFacts {
    /// The image as its workloads name it, with the digest it runs when known.
    pub reference: ImageReference,
    /// Targets verified to hold it.
    pub verified_targets: Vec<String>,
    /// Its source registry said it is gone.
    pub missing: bool,
    /// Its source registry did not answer, and why (`RegistryUnavailable`, ...).
    pub outage: Option<String>,
    /// Nodes that hold it.
    pub nodes: Vec<String>,
    /// Namespaces whose workloads use it: only a request from one of these
    /// hears about it (a tenant must not learn another namespace's images,
    /// nor their state, through warnings).
    pub namespaces: BTreeSet<String>,
}

/// A policy that selects the admitted object and one of its images.
#[derive(Clone, Debug)]
pub struct Covering<'a> {
    /// `namespace/name`.
    pub policy: String,
    pub mode: AdmissionMode,
    pub target_names: &'a [String],
    /// Everything the policy's last reconcile knew (filtered here).
    pub facts: &'a [ImageFacts],
}

/// What the image's source registry said when asked (Enforce mode only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceAnswer {
    Present,
    Absent,
    /// It did not say (unreachable, refused, too slow): never a denial.
    Unknown(String),
}

/// One container image of the admitted object.
#[derive(Clone, Debug)]
pub struct ImageQuestion<'a> {
    /// As the object names it.
    pub image: String,
    pub reference: ImageReference,
    pub covering: Vec<Covering<'a>>,
    pub source: Option<SourceAnswer>,
}

/// What to answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The strictest mode of the policies that cover any image; `None`
    /// when no policy covers any (a metric label).
    pub mode: Option<AdmissionMode>,
    pub warnings: Vec<String>,
    /// Deny with this message (Enforce mode).
    pub denial: Option<String>,
    /// Images an Ensure-mode pod waits for (their backup is not verified yet).
    pub wait_for: Vec<String>,
    /// Images whose source registry must be asked before Enforce can decide.
    pub ask_source: Vec<String>,
}

impl Verdict {
    /// The metric label of the outcome.
    pub fn label(&self, waited: bool) -> &'static str {
        if self.denial.is_some() {
            "denied"
        } else if waited {
            "waited"
        } else if self.warnings.is_empty() {
            "allowed"
        } else {
            "warned"
        }
    }
}

/// How the question is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asked<'a> {
    /// The namespace of the admitted object.
    pub namespace: &'a str,
    /// A Pod (Ensure waits for pods only: a workload's pods are what run).
    pub is_pod: bool,
    /// The Ensure wait ran out, after this many seconds.
    pub waited_out: Option<u64>,
}

/// Whether two references name the same image: same repository and the
/// same digest when the question pins one, else the same tag.
pub fn same_image(known: &ImageReference, asked: &ImageReference) -> bool {
    if known.name() != asked.name() {
        return false;
    }
    match (&asked.digest, &known.digest) {
        (Some(asked), Some(known)) => asked == known,
        (Some(_), None) => false,
        (None, _) => {
            known.tag.as_deref().unwrap_or("latest") == asked.tag.as_deref().unwrap_or("latest")
        }
    }
}

/// Where one image stands, over the facts the asking namespace may see.
#[derive(Debug, Default)]
struct Standing {
    /// Policies that hold it in every one of their targets.
    protected_by: Vec<String>,
    /// Policies that do not yet (pending, failing, never seen).
    unprotected_by: Vec<String>,
    /// `target (policy ns/name)`.
    backups: BTreeSet<String>,
    missing: bool,
    outage: Option<String>,
    nodes: BTreeSet<String>,
    mode: AdmissionMode,
}

fn standing(question: &ImageQuestion<'_>, namespace: &str) -> Standing {
    let mut standing = Standing::default();
    for covering in &question.covering {
        standing.mode = standing.mode.max(covering.mode);
        let visible: Vec<&ImageFacts> = covering
            .facts
            .iter()
            .filter(|f| f.namespaces.contains(namespace))
            .filter(|f| same_image(&f.reference, &question.reference))
            .collect();
        let mut verified: BTreeSet<&str> = BTreeSet::new();
        for facts in &visible {
            verified.extend(facts.verified_targets.iter().map(String::as_str));
            standing.missing |= facts.missing;
            if standing.outage.is_none() {
                standing.outage.clone_from(&facts.outage);
            }
            standing.nodes.extend(facts.nodes.iter().cloned());
        }
        for target in &verified {
            standing
                .backups
                .insert(format!("{target} (policy {})", covering.policy));
        }
        let everywhere = !covering.target_names.is_empty()
            && covering
                .target_names
                .iter()
                .all(|t| verified.contains(t.as_str()));
        if everywhere {
            standing.protected_by.push(covering.policy.clone());
        } else {
            standing.unprotected_by.push(covering.policy.clone());
        }
    }
    standing
}

fn list(items: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    items
        .into_iter()
        .map(|i| i.as_ref().to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a restore could come from, as one phrase.
fn restore_sources(standing: &Standing) -> String {
    match (standing.backups.is_empty(), standing.nodes.is_empty()) {
        (false, _) => format!("the backup in {}", list(&standing.backups)),
        (true, false) => format!("node {}", list(&standing.nodes)),
        (true, true) => "nowhere Lifeboat knows of".to_owned(),
    }
}

/// The verdict on one admitted object.
pub fn verdict(asked: Asked<'_>, questions: &[ImageQuestion<'_>]) -> Verdict {
    let mut verdict = Verdict::default();
    for question in questions {
        let image = &question.image;
        if question.covering.is_empty() {
            verdict.warnings.push(format!(
                "lifeboat: image {image} is not protected: no ImageBackupPolicy selects it in namespace {}, so no backup of it will be made",
                asked.namespace
            ));
            continue;
        }
        let standing = standing(question, asked.namespace);
        verdict.mode = verdict.mode.max(Some(standing.mode));
        if standing.missing {
            verdict.warnings.push(format!(
                "lifeboat: image {image} is gone from its source registry; a restore can come from {} (kubectl lifeboat restore --missing)",
                restore_sources(&standing)
            ));
        } else if let Some(reason) = &standing.outage {
            verdict.warnings.push(format!(
                "lifeboat: the source registry of image {image} does not answer ({reason}); pods that must pull it can be served from {}",
                restore_sources(&standing)
            ));
        }
        let held_somewhere = !standing.backups.is_empty() || !standing.nodes.is_empty();
        if standing.mode == AdmissionMode::Enforce && !held_somewhere {
            let source = if standing.missing {
                Some(&SourceAnswer::Absent)
            } else {
                question.source.as_ref()
            };
            match source {
                None => verdict.ask_source.push(image.clone()),
                Some(SourceAnswer::Absent) => {
                    verdict.denial.get_or_insert_with(|| {
                        format!(
                            "lifeboat: image {image} exists nowhere: its source registry does not have it, no backup of {} holds it and no node has it, so the pod could never start. Push the image (or correct the reference) and apply again; {} in Enforce mode denies such images",
                            list(&standing.unprotected_by),
                            list(&standing.unprotected_by),
                        )
                    });
                }
                Some(SourceAnswer::Unknown(reason)) => verdict.warnings.push(format!(
                    "lifeboat: could not ask the source registry whether image {image} exists ({reason}); admitted"
                )),
                Some(SourceAnswer::Present) => {}
            }
        }
        if standing.protected_by.is_empty() && !standing.missing {
            let waits = asked.is_pod && standing.mode >= AdmissionMode::Ensure;
            match (waits, asked.waited_out) {
                (true, None) => verdict.wait_for.push(image.clone()),
                (true, Some(seconds)) => verdict.warnings.push(format!(
                    "lifeboat: waited {seconds} s for the backup of image {image} by {}; admitted without it (the copy goes on)",
                    list(&standing.unprotected_by)
                )),
                (false, _) => verdict.warnings.push(format!(
                    "lifeboat: image {image} is not backed up yet by {}; it is copied once a pod runs it",
                    list(&standing.unprotected_by)
                )),
            }
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn reference(text: &str) -> ImageReference {
        ImageReference::parse(text).unwrap()
    }

    fn facts(text: &str, namespace: &str) -> ImageFacts {
        ImageFacts {
            reference: reference(text),
            verified_targets: vec![],
            missing: false,
            outage: None,
            nodes: vec![],
            namespaces: [namespace.to_owned()].into(),
        }
    }

    fn question<'a>(image: &str, covering: Vec<Covering<'a>>) -> ImageQuestion<'a> {
        ImageQuestion {
            image: image.into(),
            reference: reference(image),
            covering,
            source: None,
        }
    }

    fn covering<'a>(
        mode: AdmissionMode,
        targets: &'a [String],
        facts: &'a [ImageFacts],
    ) -> Covering<'a> {
        Covering {
            policy: "shop/web".into(),
            mode,
            target_names: targets,
            facts,
        }
    }

    fn asked(is_pod: bool) -> Asked<'static> {
        Asked {
            namespace: "shop",
            is_pod,
            waited_out: None,
        }
    }

    #[test]
    fn an_uncovered_image_is_admitted_with_a_warning_naming_it() {
        let verdict = verdict(asked(false), &[question("reg.local/web:1", vec![])]);
        assert_eq!(verdict.mode, None);
        assert_eq!(verdict.warnings.len(), 1);
        assert!(
            verdict.warnings[0].contains("reg.local/web:1 is not protected"),
            "{:?}",
            verdict.warnings
        );
        assert!(verdict.denial.is_none());
        assert_eq!(verdict.label(false), "warned");
    }

    #[test]
    fn a_protected_image_is_admitted_silently() {
        let targets = vec!["backup".to_owned()];
        let mut known = facts(&format!("reg.local/web:1@{DIGEST}"), "shop");
        known.verified_targets = vec!["backup".into()];
        let known = [known];
        let verdict = verdict(
            asked(true),
            &[question(
                "reg.local/web:1",
                vec![covering(AdmissionMode::Ensure, &targets, &known)],
            )],
        );
        assert_eq!(
            verdict,
            Verdict {
                mode: Some(AdmissionMode::Ensure),
                ..Verdict::default()
            }
        );
        assert_eq!(verdict.label(false), "allowed");
    }

    #[test]
    fn a_missing_source_names_the_backup_to_restore_from() {
        let targets = vec!["backup".to_owned()];
        let mut known = facts(&format!("reg.local/web:1@{DIGEST}"), "shop");
        known.verified_targets = vec!["backup".into()];
        known.missing = true;
        let known = [known];
        let verdict = verdict(
            asked(false),
            &[question(
                "reg.local/web:1",
                vec![covering(AdmissionMode::Warn, &targets, &known)],
            )],
        );
        assert_eq!(verdict.warnings.len(), 1, "{:?}", verdict.warnings);
        assert!(
            verdict.warnings[0].contains("gone from its source registry")
                && verdict.warnings[0].contains("backup (policy shop/web)"),
            "{:?}",
            verdict.warnings
        );
    }

    #[test]
    fn an_unreachable_source_names_the_nodes_when_no_backup_holds_it() {
        let targets = vec!["backup".to_owned()];
        let mut known = facts("reg.local/web:1", "shop");
        known.outage = Some("RegistryUnavailable".into());
        known.nodes = vec!["node-a".into()];
        let known = [known];
        let verdict = verdict(
            asked(false),
            &[question(
                "reg.local/web:1",
                vec![covering(AdmissionMode::Warn, &targets, &known)],
            )],
        );
        assert!(
            verdict.warnings[0].contains("RegistryUnavailable")
                && verdict.warnings[0].contains("node node-a"),
            "{:?}",
            verdict.warnings
        );
        assert!(verdict.warnings[1].contains("not backed up yet by shop/web"));
    }

    #[test]
    fn ensure_makes_pods_wait_and_workloads_only_warn() {
        let targets = vec!["backup".to_owned()];
        let questions = [question(
            "reg.local/new:1",
            vec![covering(AdmissionMode::Ensure, &targets, &[])],
        )];
        let pod = verdict(asked(true), &questions);
        assert_eq!(pod.wait_for, ["reg.local/new:1"]);
        assert!(pod.warnings.is_empty());
        let workload = verdict(asked(false), &questions);
        assert!(workload.wait_for.is_empty());
        assert_eq!(workload.warnings.len(), 1);
        let waited = verdict(
            Asked {
                waited_out: Some(8),
                ..asked(true)
            },
            &questions,
        );
        assert!(waited.wait_for.is_empty());
        assert!(waited.warnings[0].contains("waited 8 s"), "{waited:?}");
        assert_eq!(waited.label(true), "waited");
        // Warn mode never waits.
        let warn = [question(
            "reg.local/new:1",
            vec![covering(AdmissionMode::Warn, &targets, &[])],
        )];
        assert!(verdict(asked(true), &warn).wait_for.is_empty());
    }

    #[test]
    fn enforce_asks_the_source_then_denies_an_image_that_exists_nowhere() {
        let targets = vec!["backup".to_owned()];
        let mut q = question(
            "reg.local/nowhere:1",
            vec![covering(AdmissionMode::Enforce, &targets, &[])],
        );
        let first = verdict(asked(true), std::slice::from_ref(&q));
        assert_eq!(first.ask_source, ["reg.local/nowhere:1"]);
        assert!(first.denial.is_none());

        q.source = Some(SourceAnswer::Absent);
        let denied = verdict(asked(true), std::slice::from_ref(&q));
        let message = denied.denial.clone().unwrap();
        assert!(
            message.contains("reg.local/nowhere:1 exists nowhere") && message.contains("Push"),
            "{message}"
        );
        assert_eq!(denied.label(false), "denied");

        q.source = Some(SourceAnswer::Present);
        assert!(
            verdict(asked(true), std::slice::from_ref(&q))
                .denial
                .is_none()
        );
        q.source = Some(SourceAnswer::Unknown("RegistryUnavailable".into()));
        let unknown = verdict(asked(true), std::slice::from_ref(&q));
        assert!(unknown.denial.is_none(), "an unknown source never denies");
        assert!(unknown.warnings[0].contains("could not ask"));
    }

    #[test]
    fn enforce_admits_an_image_gone_from_its_source_that_a_backup_holds() {
        let targets = vec!["backup".to_owned()];
        let mut known = facts(&format!("reg.local/web:1@{DIGEST}"), "shop");
        known.verified_targets = vec!["backup".into()];
        known.missing = true;
        let known = [known];
        let verdict = verdict(
            asked(true),
            &[question(
                "reg.local/web:1",
                vec![covering(AdmissionMode::Enforce, &targets, &known)],
            )],
        );
        assert!(verdict.denial.is_none());
        assert!(verdict.ask_source.is_empty());
    }

    /// The boundary of docs/security.md: a cluster policy selects two
    /// tenants' namespaces. What it learned about an image `other` runs
    /// (gone from its source, backed up in `backup`) must not reach a
    /// request from `shop` naming the same image: `shop` hears only that it
    /// is not backed up for it, never that `other` uses it, nor its state.
    #[test]
    fn a_request_never_hears_about_another_namespaces_image() {
        let targets = vec!["backup".to_owned()];
        let mut theirs = facts(&format!("reg.local/secret-app:1@{DIGEST}"), "other");
        theirs.verified_targets = vec!["backup".into()];
        theirs.missing = true;
        theirs.nodes = vec!["node-a".into()];
        let known = [theirs];
        let verdict = verdict(
            asked(false),
            &[question(
                "reg.local/secret-app:1",
                vec![covering(AdmissionMode::Enforce, &targets, &known)],
            )],
        );
        let said = format!("{verdict:?}");
        assert!(!said.contains("gone"), "{said}");
        assert!(!said.contains("node-a"), "{said}");
        assert!(!said.contains("backup (policy"), "{said}");
        // Enforce still asks the source itself rather than trusting facts it
        // may not use.
        assert_eq!(verdict.ask_source, ["reg.local/secret-app:1"]);
    }

    #[test]
    fn images_match_by_digest_when_pinned_else_by_tag() {
        let known = reference(&format!("reg.local/web:1@{DIGEST}"));
        assert!(same_image(&known, &reference("reg.local/web:1")));
        assert!(!same_image(&known, &reference("reg.local/web:2")));
        assert!(!same_image(&known, &reference("reg.local/api:1")));
        assert!(same_image(
            &known,
            &reference(&format!("reg.local/web@{DIGEST}"))
        ));
        assert!(!same_image(
            &reference("reg.local/web:1"),
            &reference(&format!("reg.local/web@{DIGEST}"))
        ));
        assert!(same_image(
            &reference("reg.local/web"),
            &reference("reg.local/web:latest")
        ));
    }
}
