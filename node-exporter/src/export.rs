//! The `export` command: each requested image from containerd to a registry.

use lifeboat_node_protocol::{ExportImage, ImageSource};

use crate::cli::Options;
use crate::containerd::Containerd;
use crate::error::Error;
use crate::image::{self, ImageState, Plan};
use crate::oci::Platform;
use crate::push::{Pushed, Pusher};
use crate::rebuild;
use registry_transfer::ImageReference;

use crate::reference;
use crate::report::{self, ImageResult, Report, Status};
use crate::source::ContainerdSource;

/// How long content made while rebuilding survives if node-exporter dies
/// before it releases its lease.
const LEASE_TTL_HOURS: i64 = 2;

/// Exports every requested image, one after the other, and never stops at a
/// failed one: each gets its own result.
pub async fn run(containerd: &Containerd, options: &Options) -> Report {
    let pusher = match crate::registry::settings(options)
        .and_then(|settings| Pusher::new(settings, options.allow_tag_move, options.parallel_blobs))
    {
        Ok(pusher) => pusher,
        Err(error) => {
            tracing::error!(reason = error.reason(), %error, "cannot set up the registry client");
            return report::run_failed(&error);
        }
    };
    let mut results = Vec::with_capacity(options.images.len());
    for arg in &options.images {
        let result = match export_one(containerd, &pusher, arg, options).await {
            Ok(result) => result,
            Err((target, error)) => {
                tracing::error!(image = %arg.source, reason = error.reason(), %error, "export failed");
                report::failed(&arg.source, target, &error)
            }
        };
        if result.status != Status::Failed {
            tracing::info!(
                image = %result.image,
                status = ?result.status,
                target = result.target.as_deref().unwrap_or_default(),
                digest = result.digest.as_ref().map(|d| d.as_str()).unwrap_or_default(),
                original_digest = result.original_digest.as_ref().map(|d| d.as_str()).unwrap_or_default(),
                incomplete_index = result.incomplete_index.as_ref().map(|d| d.as_str()).unwrap_or_default(),
                bytes = result.bytes,
                "exported"
            );
        }
        results.push(result);
    }
    Report::new(results)
}

type Failure = (Option<String>, Error);

async fn export_one(
    containerd: &Containerd,
    pusher: &Pusher,
    arg: &ExportImage,
    options: &Options,
) -> Result<ImageResult, Failure> {
    let query = &arg.source;
    let located = image::locate(containerd, query)
        .await
        .map_err(|e| (None, e))?;
    let target = target_for(query, located.name.as_ref(), arg, options).map_err(|e| (None, e))?;
    let target_name = Some(target.to_string());
    let fail = |e: Error| (target_name.clone(), e);
    tracing::info!(
        image = %arg.source,
        found = %located.descriptor.digest,
        media_type = %located.descriptor.media_type,
        target = %target,
        "found image in containerd"
    );
    let state = image::inspect(containerd, &located.descriptor)
        .await
        .map_err(fail)?;
    let plan = image::decide(&state, &Platform::current()).map_err(fail)?;
    let mut result = ImageResult {
        target: target_name.clone(),
        ..ImageResult::new(arg.source.clone())
    };
    match plan {
        Plan::Exact { root } => {
            let source = ContainerdSource::new(containerd.clone(), root.clone());
            let pushed = push_verified(pusher, &source, &target)
                .await
                .map_err(fail)?;
            result.digest = Some(pushed.digest);
            result.target = Some(format!("{}:{}", target.name(), pushed.tag));
            result.bytes = pushed.bytes_uploaded;
        }
        Plan::PlatformOnly {
            index,
            manifest,
            platform,
        } => {
            tracing::warn!(
                index = %index.digest,
                manifest = %manifest.digest,
                platform = platform.as_deref().unwrap_or("unknown"),
                "the node holds only part of the index: pushing one platform's manifest, not the index"
            );
            let source = ContainerdSource::new(containerd.clone(), manifest);
            let pushed = push_verified(pusher, &source, &target)
                .await
                .map_err(fail)?;
            result.digest = Some(pushed.digest);
            result.target = Some(format!("{}:{}", target.name(), pushed.tag));
            result.bytes = pushed.bytes_uploaded;
            result.incomplete_index = Some(index.digest);
            result.platform = platform;
        }
        Plan::Rebuild {
            index,
            manifest,
            platform,
            missing_layers,
        } => {
            let content = manifest_content(&state, &manifest).map_err(fail)?;
            if !options.allow_rebuild {
                let digest = missing_layers
                    .first()
                    .and_then(|i| content.manifest.layers.get(*i))
                    .map(|layer| layer.digest.clone())
                    .unwrap_or_default();
                return Err(fail(Error::RebuildDenied { digest }));
            }
            let lease_id = format!("lifeboat-node-exporter-{}", random_suffix());
            let leased = containerd
                .with_new_lease(&lease_id, chrono::Duration::hours(LEASE_TTL_HOURS))
                .await
                .map_err(fail)?;
            let outcome = async {
                let rebuilt = rebuild::rebuild(
                    &leased,
                    &manifest,
                    content,
                    &missing_layers,
                    options.snapshotter.as_deref(),
                    &lease_id,
                )
                .await?;
                let mut source = ContainerdSource::new(leased.clone(), rebuilt.manifest.clone())
                    .with_document(&rebuilt.manifest, rebuilt.manifest_bytes.clone());
                if let Some((config, bytes)) = &rebuilt.config {
                    source = source.with_document(config, bytes.clone());
                }
                let pushed = push_verified(pusher, &source, &target).await?;
                Ok::<_, Error>((rebuilt, pushed))
            }
            .await;
            if let Err(error) = leased.release_lease().await {
                tracing::warn!(%error, lease = %lease_id, "could not release lease; it expires by itself");
            }
            let (rebuilt, pushed) = outcome.map_err(fail)?;
            tracing::warn!(
                original = %manifest.digest,
                rebuilt = %rebuilt.manifest.digest,
                layers = rebuilt.layers.len(),
                "pushed a REBUILT image: same files, different digest than the original"
            );
            result.status = Status::Rebuilt;
            result.digest = Some(pushed.digest);
            result.target = Some(format!("{}:{}", target.name(), pushed.tag));
            result.original_digest = Some(manifest.digest);
            result.incomplete_index = index.map(|i| i.digest);
            result.platform = platform;
            result.rebuilt_layers = rebuilt.layers.len();
            result.bytes = pushed.bytes_uploaded;
        }
    }
    Ok(result)
}

/// Pushes and checks the engine pushed what was asked: a digest-exact push
/// that came out under another digest would be a lie in the report.
async fn push_verified(
    pusher: &Pusher,
    source: &ContainerdSource,
    target: &ImageReference,
) -> Result<Pushed, Error> {
    let pushed = pusher.push(source, target).await?;
    if pushed.digest != source.root().digest {
        return Err(Error::Push {
            target: target.to_string(),
            engine_reason: None,
            message: format!(
                "pushed {} but expected {}",
                pushed.digest,
                source.root().digest
            ),
        });
    }
    tracing::info!(
        target = %target,
        tag = %pushed.tag,
        digest = %pushed.digest,
        blobs_copied = pushed.blobs_copied,
        blobs_skipped = pushed.blobs_skipped,
        bytes = pushed.bytes_uploaded,
        "pushed"
    );
    Ok(pushed)
}

/// The push target for an image: a bare digest has no repository of its
/// own, so it takes the name containerd knows it by, if any.
fn target_for(
    query: &ImageSource,
    found_name: Option<&ImageReference>,
    arg: &ExportImage,
    options: &Options,
) -> Result<ImageReference, Error> {
    let source_name = match (query, found_name) {
        (ImageSource::Reference(reference), _) => reference.clone(),
        (ImageSource::Digest(_), Some(name)) => ImageReference {
            // Name the repository only: a tag found on the node is not what
            // a digest request asked for.
            tag: None,
            digest: None,
            ..name.clone()
        },
        (ImageSource::Digest(digest), None) => match &arg.destination {
            Some(destination) => reference::destination_image(destination),
            None => {
                return Err(Error::InvalidReference {
                    reference: digest.to_string(),
                    reason: "containerd has no repository name for it; give --image DIGEST=DEST"
                        .to_owned(),
                });
            }
        },
    };
    reference::map_target(
        &source_name,
        arg.destination.as_ref(),
        options.target_registry.as_deref(),
    )
}

fn manifest_content<'a>(
    state: &'a ImageState,
    manifest: &registry_transfer::Descriptor,
) -> Result<&'a image::ManifestContent, Error> {
    state
        .manifest(&manifest.digest)
        .and_then(|m| m.content.as_ref())
        .ok_or_else(|| Error::ImageNotFound(manifest.digest.to_string()))
}

fn random_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}
