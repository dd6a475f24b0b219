//! Restoring from a backup: find a backup target that holds the exact
//! digest, copy it back to the destination (under its tag when that is
//! free or already right), and verify it there.

use lifeboat_api::ImageReference;
use lifeboat_api::conditions::reasons;
use lifeboat_api::restore::{ImageSourceRef, RestoreSourceKind, RestoredImage};
use registry_transfer::{
    CopyRequest, ReferrersPolicy, RepositoryRef, Transfer, TransferError, deterministic_tag,
};

use super::facts::Facts;
use super::planning::{BackupCandidate, backup_references};
use super::status::fail;
use super::verify::verify_into;

pub(super) enum BackupOutcome {
    /// Restored or failed (the image's state says which); bytes copied.
    Done(u64),
    /// No backup holds it: why.
    NotThere(String),
}

pub(super) async fn from_backup(
    facts: &Facts<'_>,
    transfer: &Transfer,
    candidates: &[BackupCandidate],
    image: &mut RestoredImage,
) -> BackupOutcome {
    let Ok(reference) = facts.reference(image) else {
        return BackupOutcome::NotThere("invalid reference".to_owned());
    };
    if reference.digest.is_none() {
        return BackupOutcome::NotThere(
            "no digest is known, so no backup can be matched exactly".to_owned(),
        );
    }
    if candidates.is_empty() {
        return BackupOutcome::NotThere("no backup policy with targets to look in".to_owned());
    }
    let mut looked = Vec::new();
    for (target, backup) in backup_references(&reference, candidates, &facts.namespace) {
        let Some(pinned) = backup.pinned() else {
            continue;
        };
        let held = transfer.manifest_digest(&pinned).await;
        match held {
            Ok(Some(_)) => {}
            Ok(None) => {
                looked.push(format!("not in backup target {target}"));
                continue;
            }
            Err(e) => {
                looked.push(format!("backup target {target} could not be asked: {e}"));
                continue;
            }
        }
        image.source = Some(ImageSourceRef {
            kind: RestoreSourceKind::BackupRegistry,
            name: target.clone(),
        });
        let destination = match facts.destination(&reference) {
            Ok(d) => d,
            Err(message) => {
                fail(image, reasons::INVALID_REPOSITORY_TEMPLATE, message);
                return BackupOutcome::Done(0);
            }
        };
        return match copy_back(transfer, &pinned, &destination).await {
            Ok((copied, referrers)) => {
                image.referrers = Some(i32::try_from(referrers).unwrap_or(i32::MAX));
                let digest = reference
                    .digest
                    .as_ref()
                    .map(|d| d.as_str().to_owned())
                    .unwrap_or_default();
                verify_into(facts, transfer, image, &digest, true).await;
                BackupOutcome::Done(copied)
            }
            Err(e) => {
                fail(
                    image,
                    reasons::PUSH_FAILED,
                    format!("copy from backup target {target} to {destination} failed: {e}"),
                );
                BackupOutcome::Done(0)
            }
        };
    }
    BackupOutcome::NotThere(looked.join(", "))
}

/// Copies a backup back: digest-exact, under the original tag when that
/// tag is free or already right, else under Lifeboat's deterministic tag
/// (a tag someone moved since is left alone). Every signature, SBOM and
/// attestation the backup holds for it comes along (the policy chose
/// which at backup time). Returns the bytes and referrers copied.
pub(super) async fn copy_back(
    transfer: &Transfer,
    backup: &ImageReference,
    destination: &ImageReference,
) -> Result<(u64, usize), TransferError> {
    let source = backup;
    let target = RepositoryRef::of(destination);
    let digest_tag = source
        .digest
        .as_ref()
        .map(deterministic_tag)
        .unwrap_or_default();
    let tag = destination.tag.clone().unwrap_or(digest_tag.clone());
    let request = CopyRequest::new(target.clone())
        .with_tag(tag)
        .with_referrers(ReferrersPolicy::All);
    match transfer.copy_image(source, &request).await {
        Ok(report) => Ok((report.bytes_copied, report.referrers.len())),
        Err(TransferError::TagConflict { .. }) => {
            let request = CopyRequest::new(target)
                .with_tag(digest_tag)
                .with_referrers(ReferrersPolicy::All);
            let report = transfer.copy_image(source, &request).await?;
            Ok((report.bytes_copied, report.referrers.len()))
        }
        Err(e) => Err(e),
    }
}
