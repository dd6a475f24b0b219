//! Writing an archive as a stream: tar headers are made here, each blob's
//! bytes go from the source to the file as they arrive, hashed on the way
//! and refused (the file is removed) if the digest or size is not the one
//! its manifest names. Memory stays flat in the archive's size.
//!
//! `oci` is an OCI image layout in a tar (skopeo's `oci-archive:`).
//! `docker-archive` is the same layout plus the `manifest.json` that
//! `docker load` reads, for one platform, as `docker save` writes it since
//! Docker 25.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures::StreamExt as _;
use registry_transfer::manifest::{self, ManifestContent};
use registry_transfer::{ContentSource, Descriptor, Digest, Platform};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt as _, BufWriter};

use super::read::{REF_NAME, blob_path};
use crate::progress::Progress;

const BLOCK: u64 = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// OCI image layout (skopeo's oci-archive).
    Oci,
    /// OCI layout plus manifest.json, for `docker load` (one platform).
    DockerArchive,
}

/// What was written.
#[derive(Debug)]
pub struct Written {
    pub digest: Digest,
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
}

/// The manifests of an image, read and verified, and the blobs they name.
struct Plan {
    root: Descriptor,
    manifests: Vec<(Digest, Bytes)>,
    blobs: Vec<Descriptor>,
    /// For docker-archive: the chosen platform's config and layers.
    docker_image: Option<Vec<Descriptor>>,
}

/// This machine's platform, as a docker-archive's default.
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    Platform {
        os: "linux".to_owned(),
        architecture: architecture.to_owned(),
        variant: None,
    }
}

async fn fetch_verified<S: ContentSource>(
    source: &S,
    digest: &Digest,
) -> anyhow::Result<(Bytes, String)> {
    let (bytes, media_type) = source
        .fetch_manifest(digest)
        .await
        .with_context(|| format!("reading manifest {digest}"))?;
    manifest::verify(&bytes, digest)?;
    Ok((bytes, media_type))
}

async fn plan<S: ContentSource>(
    source: &S,
    format: Format,
    platform: &Platform,
) -> anyhow::Result<Plan> {
    let root = source.resolve().await.context("resolving the image")?;
    let (bytes, media_type) = fetch_verified(source, &root.digest).await?;
    let content = manifest::parse(&bytes, &media_type, &root.digest)?;
    let mut plan = Plan {
        root: Descriptor {
            media_type: manifest::effective_media_type(&bytes, &media_type),
            ..root.clone()
        },
        manifests: vec![(root.digest.clone(), bytes)],
        blobs: Vec::new(),
        docker_image: None,
    };
    let children = match content {
        ManifestContent::Image { blobs } => {
            plan.docker_image = Some(blobs.clone());
            plan.blobs = blobs;
            return Ok(plan);
        }
        ManifestContent::Index { children } => children,
    };
    for child in children {
        let (bytes, media_type) = fetch_verified(source, &child.descriptor.digest).await?;
        let ManifestContent::Image { blobs } =
            manifest::parse(&bytes, &media_type, &child.descriptor.digest)?
        else {
            bail!("nested index {} is not supported", child.descriptor.digest);
        };
        let chosen =
            child.attests.is_none() && child.platform.as_ref().is_some_and(|p| platform.matches(p));
        if chosen && plan.docker_image.is_none() {
            plan.docker_image = Some(blobs.clone());
        }
        for blob in blobs {
            if !plan.blobs.iter().any(|b| b.digest == blob.digest) {
                plan.blobs.push(blob);
            }
        }
        plan.manifests.push((child.descriptor.digest, bytes));
    }
    if format == Format::DockerArchive && plan.docker_image.is_none() {
        bail!(
            "the image has no {}/{} manifest for docker-archive (give --platform)",
            platform.os,
            platform.architecture
        );
    }
    Ok(plan)
}

async fn header<W: AsyncWrite + Unpin>(out: &mut W, path: &str, size: u64) -> anyhow::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_path(path)?;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    out.write_all(header.as_bytes()).await?;
    Ok(())
}

async fn pad<W: AsyncWrite + Unpin>(out: &mut W, size: u64) -> anyhow::Result<()> {
    let used = size % BLOCK;
    if used != 0 {
        let zeros = [0u8; 512];
        let fill = usize::try_from(BLOCK - used)?;
        out.write_all(&zeros[..fill]).await?;
    }
    Ok(())
}

async fn small_file<W: AsyncWrite + Unpin>(
    out: &mut W,
    path: &str,
    bytes: &[u8],
) -> anyhow::Result<()> {
    header(out, path, bytes.len() as u64).await?;
    out.write_all(bytes).await?;
    pad(out, bytes.len() as u64).await
}

/// Streams one blob into the tar, verifying size and digest on the way.
async fn blob<S: ContentSource, W: AsyncWrite + Unpin>(
    source: &S,
    out: &mut W,
    descriptor: &Descriptor,
    progress: &Progress,
) -> anyhow::Result<()> {
    header(out, &blob_path(&descriptor.digest), descriptor.size).await?;
    let mut stream = source
        .open_blob(descriptor)
        .await
        .with_context(|| format!("opening blob {}", descriptor.digest))?;
    let mut hasher = Sha256::new();
    let mut written: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("reading blob {}", descriptor.digest))?;
        written = written.saturating_add(chunk.len() as u64);
        if written > descriptor.size {
            bail!(
                "blob {} is longer than the {} bytes its manifest says",
                descriptor.digest,
                descriptor.size
            );
        }
        hasher.update(&chunk);
        out.write_all(&chunk).await?;
        progress.add(chunk.len() as u64);
    }
    if written != descriptor.size {
        bail!(
            "blob {} ended after {written} of {} bytes",
            descriptor.digest,
            descriptor.size
        );
    }
    let actual = Digest::sha256(&hasher.finalize().into());
    if actual != descriptor.digest {
        bail!("blob {} arrived with digest {actual}", descriptor.digest);
    }
    pad(out, descriptor.size).await
}

fn index_json(root: &Descriptor, ref_name: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let mut entry = serde_json::json!({
        "mediaType": root.media_type,
        "digest": root.digest.to_string(),
        "size": root.size,
    });
    if let Some(name) = ref_name {
        entry["annotations"] = serde_json::json!({ REF_NAME: name });
    }
    Ok(serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry],
    }))?)
}

fn docker_manifest(image: &[Descriptor], repo_tag: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let (config, layers) = image
        .split_first()
        .context("an image manifest without a config")?;
    let layers: Vec<String> = layers.iter().map(|l| blob_path(&l.digest)).collect();
    Ok(serde_json::to_vec(&serde_json::json!([{
        "Config": blob_path(&config.digest),
        "RepoTags": repo_tag.into_iter().collect::<Vec<_>>(),
        "Layers": layers,
    }]))?)
}

/// Writes the image `source` resolves to into `path` (through a
/// `.partial` file renamed at the end, removed on failure).
pub async fn write_archive<S: ContentSource>(
    source: &S,
    path: &Path,
    format: Format,
    platform: &Platform,
    ref_name: Option<&str>,
    repo_tag: Option<&str>,
    progress: &Progress,
) -> anyhow::Result<Written> {
    let partial = PathBuf::from(format!("{}.partial", path.display()));
    let names = Names { ref_name, repo_tag };
    let result = write_to(source, &partial, format, platform, names, progress).await;
    match result {
        Ok(written) => {
            tokio::fs::rename(&partial, path)
                .await
                .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
            Ok(written)
        }
        Err(error) => {
            let _ = tokio::fs::remove_file(&partial).await;
            Err(error)
        }
    }
}

/// The names an archive gives its image: `index.json`'s ref name, and
/// docker-archive's `RepoTags`.
struct Names<'a> {
    ref_name: Option<&'a str>,
    repo_tag: Option<&'a str>,
}

async fn write_to<S: ContentSource>(
    source: &S,
    path: &Path,
    format: Format,
    platform: &Platform,
    names: Names<'_>,
    progress: &Progress,
) -> anyhow::Result<Written> {
    let Names { ref_name, repo_tag } = names;
    let plan = plan(source, format, platform).await?;
    progress.set_total(plan.blobs.iter().map(|b| b.size).sum());
    let file = tokio::fs::File::create(path)
        .await
        .with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1024 * 1024, file);
    small_file(&mut out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).await?;
    for (digest, bytes) in &plan.manifests {
        small_file(&mut out, &blob_path(digest), bytes).await?;
    }
    let mut bytes: u64 = 0;
    for descriptor in &plan.blobs {
        blob(source, &mut out, descriptor, progress).await?;
        bytes = bytes.saturating_add(descriptor.size);
    }
    small_file(&mut out, "index.json", &index_json(&plan.root, ref_name)?).await?;
    if format == Format::DockerArchive
        && let Some(image) = &plan.docker_image
    {
        small_file(
            &mut out,
            "manifest.json",
            &docker_manifest(image, repo_tag)?,
        )
        .await?;
    }
    // The end of a tar: two zero blocks.
    out.write_all(&[0u8; 1024]).await?;
    out.flush().await?;
    out.into_inner().sync_all().await?;
    Ok(Written {
        digest: plan.root.digest,
        manifests: plan.manifests.len(),
        blobs: plan.blobs.len(),
        bytes,
    })
}
