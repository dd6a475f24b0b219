//! The check both sources end with: an image counts as restored only once
//! its destination serves the digest.

use lifeboat_api::conditions::reasons;
use lifeboat_api::restore::{ImageRestoreState, RestoredImage};
use registry_transfer::{ContentSource as _, Transfer, TransferError};

use super::facts::Facts;
use super::status::fail;

/// Counts an image as restored only once its destination serves the digest
/// (a manifest GET, digest checked).
pub(super) async fn verify_into(
    facts: &Facts<'_>,
    transfer: &Transfer,
    image: &mut RestoredImage,
    digest: &str,
    whole: bool,
) {
    let destination = match facts.reference(image).and_then(|r| facts.destination(&r)) {
        Ok(d) => d,
        Err(message) => {
            fail(image, reasons::VERIFICATION_FAILED, message);
            return;
        }
    };
    let pinned = format!("{}@{digest}", destination.name());
    match verify(transfer, &pinned).await {
        Ok(()) => {
            image.state = ImageRestoreState::Restored;
            image.restored_digest = Some(digest.to_owned());
            image.restored_reference = Some(pinned.clone());
            image.digest_preserved = Some(
                whole
                    && image
                        .requested_digest
                        .as_deref()
                        .is_none_or(|d| d == digest),
            );
            image.reason = None;
            image.message = Some(format!("{pinned} is pullable"));
        }
        Err(e) => fail(
            image,
            reasons::VERIFICATION_FAILED,
            format!("{pinned} was reported pushed but cannot be pulled: {e}"),
        ),
    }
}

pub(super) async fn verify(transfer: &Transfer, pinned: &str) -> Result<(), TransferError> {
    let reference = registry_transfer::reference::parse_image(pinned)?;
    transfer.registry_source(&reference)?.resolve().await?;
    Ok(())
}
