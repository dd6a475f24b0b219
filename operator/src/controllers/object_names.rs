//! Names of the objects Lifeboat creates: deterministic, so a restarted
//! operator computes the same name and finds the object instead of creating
//! another, and within Kubernetes' 63-character limit. Both controllers use
//! them (a policy names its automatic restore; a restore names its Jobs).

use std::collections::BTreeSet;

use sha2::{Digest as _, Sha256};

fn short_hash(parts: &[&str], length: usize) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    let mut text = hex::encode(hasher.finalize());
    text.truncate(length);
    text
}

/// A name prefix from an object name: lowercase alphanumerics and `-`,
/// at most `max` characters, no trailing `-`.
fn name_part(name: &str, max: usize) -> String {
    let mut part: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    while part.ends_with('-') {
        part.pop();
    }
    part
}

/// The export Job of one restore on one node for a batch of images:
/// deterministic (a restarted operator computes the same name and finds
/// the Job instead of creating another), at most 63 characters.
pub fn export_job_name(
    restore_name: &str,
    restore_uid: &str,
    node: &str,
    images: &[String],
) -> String {
    let mut sorted: Vec<&str> = images.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut parts = vec![restore_uid, node];
    parts.extend(sorted);
    format!(
        "lifeboat-restore-{}-{}",
        name_part(restore_name, 30),
        short_hash(&parts, 12)
    )
    .replace("--", "-")
}

/// A Job of a restore into nodes (`kind`: import or serve) on one node;
/// `parts` say what else tells it apart (its source, its peer).
pub fn node_job_name(
    kind: &str,
    restore_name: &str,
    restore_uid: &str,
    node: &str,
    parts: &[&str],
) -> String {
    let mut all = vec![kind, restore_uid, node];
    all.extend(parts);
    format!(
        "lifeboat-{kind}-{}-{}",
        name_part(restore_name, 30),
        short_hash(&all, 12)
    )
    .replace("--", "-")
}

/// The inventory Job asking one node about a set of images.
pub fn inventory_job_name(node: &str, images: &[String]) -> String {
    let mut sorted: Vec<&str> = images.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut parts = vec![node];
    parts.extend(sorted);
    format!(
        "lifeboat-inventory-{}-{}",
        name_part(node, 28),
        short_hash(&parts, 12)
    )
    .replace("--", "-")
}

/// The Secret in the operator's namespace holding a restore's push
/// credentials for its export Jobs.
pub fn credentials_secret_name(restore_name: &str, restore_uid: &str) -> String {
    format!(
        "lifeboat-restore-{}-{}-registry",
        name_part(restore_name, 25),
        short_hash(&[restore_uid], 8)
    )
    .replace("--", "-")
}

/// The ImageRestore a policy's automatic restore creates for a set of
/// missing digests: the same set always gives the same name, so a policy
/// never creates a second restore for the same loss.
pub fn automatic_restore_name(policy_name: &str, missing: &BTreeSet<String>) -> String {
    let parts: Vec<&str> = missing.iter().map(String::as_str).collect();
    format!(
        "{}-restore-{}",
        name_part(policy_name, 40),
        short_hash(&parts, 10)
    )
    .replace("--", "-")
}

/// The ImageRestore a policy creates during an outage for the pods that
/// fail to pull its unreachable images (`keys`: the digests and the pods).
pub fn outage_restore_name(policy_name: &str, keys: &BTreeSet<String>) -> String {
    let parts: Vec<&str> = keys.iter().map(String::as_str).collect();
    format!(
        "{}-import-{}",
        name_part(policy_name, 40),
        short_hash(&parts, 10)
    )
    .replace("--", "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_deterministic_bounded_and_distinct() {
        let images = vec!["r/a@sha256:1".to_owned(), "r/b@sha256:2".to_owned()];
        let reversed: Vec<String> = images.iter().rev().cloned().collect();
        let long = "x".repeat(253);
        let a = export_job_name(&long, "uid-1", "node-1", &images);
        assert!(a.len() <= 63, "{a}");
        assert_eq!(a, export_job_name(&long, "uid-1", "node-1", &reversed));
        assert_ne!(a, export_job_name(&long, "uid-1", "node-2", &images));
        assert_ne!(a, export_job_name(&long, "uid-2", "node-1", &images));
        assert_ne!(a, export_job_name(&long, "uid-1", "node-1", &images[..1]));
        for name in [
            a,
            export_job_name("Restore.With.Dots-", "u", "n", &[]),
            inventory_job_name(&long, &images),
            credentials_secret_name(&long, "uid"),
            automatic_restore_name(&long, &BTreeSet::new()),
        ] {
            assert!(name.len() <= 63, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
            assert!(!name.contains("--"), "{name}");
        }
    }

    #[test]
    fn the_automatic_restore_name_follows_the_missing_set() {
        let one: BTreeSet<String> = ["sha256:a".to_owned()].into();
        let two: BTreeSet<String> = ["sha256:a".to_owned(), "sha256:b".to_owned()].into();
        assert_eq!(
            automatic_restore_name("web", &one),
            automatic_restore_name("web", &one.clone())
        );
        assert_ne!(
            automatic_restore_name("web", &one),
            automatic_restore_name("web", &two)
        );
        assert!(automatic_restore_name("web", &one).starts_with("web-restore-"));
    }
}
