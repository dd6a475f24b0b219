//! The `import` command: writes images into this node's containerd, pulled
//! by digest from a registry (the backup) or from a peer node's `serve`,
//! so that pods start without the registry they name.
//!
//! What containerd and its CRI plugin need, and why each step is here:
//! - every blob is written under a lease: containerd's garbage collector
//!   deletes content no image or lease references, and a half-imported
//!   image is referenced by nothing until its image record exists;
//! - manifests and indexes carry the `containerd.io/gc.ref.content.*`
//!   labels that tie their children to them, as a pull sets them: without
//!   them the collector deletes the layers once the lease is gone;
//! - the image records are the names the kubelet asks CRI for: the pod's
//!   reference as written, its `repo@digest` form and CRI's image ID (the
//!   config digest), labelled as CRI labels what it pulled. The CRI plugin
//!   learns of them from containerd's image events; it unpacks the layers
//!   into its snapshotter when it creates the first container.
//!
//! The facts (what the source serves) are fetched, what to write and what
//! to record is decided by pure functions below, then written.

use std::collections::HashMap;

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use lifeboat_node_protocol::ImportImage;
use registry_transfer::{
    ContentSource, Credentials, Descriptor, Digest, ImageReference, RegistrySource, Secret,
    Transfer, TransferConfig, TransferError,
};
use sha2::{Digest as _, Sha256};

use crate::cli::Options;
use crate::containerd::Containerd;
use crate::error::Error;
use crate::oci::{self, DocumentKind, ImageIndex, ImageManifest, Platform, RawDescriptor};
use crate::registry;
use crate::report::{ImageResult, Report, Status};

/// How long an import's lease outlives a killed importer: long enough for
/// a 100 GiB image, short enough that what it left behind goes.
const LEASE_TTL_HOURS: i64 = 2;

/// The label CRI puts on the image records it pulls.
pub const CRI_IMAGE_LABEL: &str = "io.cri-containerd.image";
pub const CRI_IMAGE_MANAGED: &str = "managed";

/// The user name a peer session's Basic credentials carry (the token is
/// the password).
pub const PEER_USER: &str = "lifeboat";

/// Imports every requested image; one result each. With `--from-tunnel`,
/// the peer is the plugin, reached through the rendezvous.
pub async fn run(containerd: &Containerd, options: &Options) -> Report {
    let Some(port) = options.from_tunnel else {
        return run_from(containerd, options).await;
    };
    let rendezvous = match crate::rendezvous::open(port).await {
        Ok(rendezvous) => rendezvous,
        Err(error) => return crate::report::run_failed(&error),
    };
    let through = Options {
        from_peer: Some(rendezvous.peer.to_string()),
        ..options.clone()
    };
    let report = run_from(containerd, &through).await;
    drop(rendezvous);
    report
}

async fn run_from(containerd: &Containerd, options: &Options) -> Report {
    let transfer = match engine(options) {
        Ok(transfer) => transfer,
        Err(error) => return crate::report::run_failed(&error),
    };
    if let Some(peer) = &options.from_peer
        && let Err(error) = wait_for_peer(peer, PEER_PATIENCE).await
    {
        return crate::report::run_failed(&error);
    }
    let node = Platform::current();
    let mut results = Vec::with_capacity(options.import_images.len());
    for image in &options.import_images {
        let from = pull_reference(image, options.from_peer.as_deref());
        let source_name = match &options.from_peer {
            Some(peer) => format!("peer:{peer}"),
            None => from
                .as_ref()
                .map_or_else(|_| String::new(), ToString::to_string),
        };
        let outcome = match from {
            Ok(from) => {
                let everything_the_peer_holds = options.from_peer.is_some();
                import_one(
                    containerd,
                    &transfer,
                    image,
                    &from,
                    &node,
                    everything_the_peer_holds,
                    options.parallel_blobs,
                )
                .await
            }
            Err(error) => Err(error),
        };
        let result = match outcome {
            Ok(mut result) => {
                result.source = Some(source_name);
                result
            }
            Err(error) => {
                tracing::error!(image = %image, reason = error.reason(), %error, "import failed");
                ImageResult {
                    source: Some(source_name),
                    ..crate::report::failed(&image.name.clone().into(), None, &error)
                }
            }
        };
        results.push(result);
    }
    if let (Some(peer), Some(path)) = (&options.from_peer, &options.token_file) {
        // Ends the session whatever the outcome: the peer's Job finishes
        // now instead of waiting out its time, and the token dies with it.
        if let Err(error) = end_session(peer, path).await {
            tracing::warn!(peer, %error, "could not end the peer session; it times out by itself");
        }
    }
    Report::new(results)
}

/// `POST /lifeboat/done` to the peer, with the session's credentials.
async fn end_session(peer: &str, token_file: &std::path::Path) -> Result<(), Error> {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let token = read_token(token_file)?;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{PEER_USER}:{token}"));
    let io = |source| Error::Io {
        context: "cannot end the session with",
        path: peer.into(),
        source,
    };
    let mut stream = tokio::net::TcpStream::connect(peer).await.map_err(io)?;
    let request = format!(
        "POST /lifeboat/done HTTP/1.1\r\nHost: {peer}\r\nAuthorization: Basic {credentials}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.map_err(io)?;
    if answer.starts_with(b"HTTP/1.1 204") {
        Ok(())
    } else {
        Err(Error::Pull {
            what: format!("peer:{peer}"),
            message: format!(
                "ending the session: {}",
                String::from_utf8_lossy(answer.split(|b| *b == b'\r').next().unwrap_or_default())
            ),
        })
    }
}

/// How long an importer waits for its peer's `serve` to listen: the two
/// Jobs start together, so the importer usually starts first.
const PEER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits until the peer accepts a TCP connection, trying every 50 ms: the
/// engine's retries back off for seconds, far longer than a pod start.
async fn wait_for_peer(peer: &str, patience: std::time::Duration) -> Result<(), Error> {
    let started = tokio::time::Instant::now();
    loop {
        match tokio::net::TcpStream::connect(peer).await {
            Ok(_) => {
                tracing::info!(
                    peer,
                    waited_ms = started.elapsed().as_millis(),
                    "peer is listening"
                );
                return Ok(());
            }
            Err(error) if started.elapsed() >= patience => {
                return Err(Error::Pull {
                    what: format!("peer:{peer}"),
                    message: format!("not listening after {} s: {error}", patience.as_secs()),
                });
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

/// The copy engine with the operator's credentials and CA bundles, plus the
/// peer's session credentials (plain HTTP to the peer pod: the token only
/// opens this one session, and every blob is verified by digest here).
fn engine(options: &Options) -> Result<Transfer, Error> {
    let mut settings = registry::settings(options)?;
    if let Some(peer) = &options.from_peer {
        settings = settings.allow_plain_http(peer);
    }
    // Through the tunnel there is no token: the rendezvous is on loopback.
    if let (Some(peer), Some(path)) = (&options.from_peer, &options.token_file) {
        let token = read_token(path)?;
        settings = settings.with_credentials(
            peer,
            Credentials::Basic {
                username: PEER_USER.to_owned(),
                password: Secret::new(token),
            },
        );
    }
    let parallel = options.parallel_blobs.max(1);
    let config = TransferConfig {
        max_concurrent_requests: parallel,
        max_concurrent_per_registry: parallel,
        ..TransferConfig::default()
    };
    Ok(Transfer::new(config, settings))
}

/// A mounted token file, without the trailing newline editors add.
pub fn read_token(path: &std::path::Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        context: "cannot read the token file",
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim().to_owned();
    if token.len() < 16 {
        return Err(Error::Usage(format!(
            "{}: a session token has at least 16 characters",
            path.display()
        )));
    }
    Ok(token)
}

/// Where to pull an image from: its `FROM`, or the same repository on the
/// peer; always by the digest to import.
pub fn pull_reference(image: &ImportImage, peer: Option<&str>) -> Result<ImageReference, Error> {
    let digest = image
        .digest()
        .cloned()
        .ok_or_else(|| Error::Usage(format!("{image}: no digest to import")))?;
    let from = match (peer, &image.from) {
        (Some(peer), _) => ImageReference {
            registry: peer.to_owned(),
            repository: image.name.repository.clone(),
            tag: None,
            digest: None,
        },
        (None, Some(from)) => from.clone(),
        (None, None) => {
            return Err(Error::Usage(format!("{image}: nowhere to pull it from")));
        }
    };
    Ok(ImageReference {
        tag: None,
        ..from.with_digest(digest)
    })
}

/// A manifest or index as fetched and verified.
#[derive(Clone, Debug)]
struct Document {
    descriptor: Descriptor,
    bytes: Bytes,
}

async fn import_one(
    containerd: &Containerd,
    transfer: &Transfer,
    image: &ImportImage,
    from: &ImageReference,
    node: &Platform,
    everything_the_peer_holds: bool,
    parallel: usize,
) -> Result<ImageResult, Error> {
    let source = transfer.registry_source(from).map_err(pull_error(from))?;
    let requested = from
        .digest
        .clone()
        .ok_or_else(|| Error::Usage(format!("{from}: no digest")))?;
    let lease_id = format!("lifeboat-import-{:016x}", rand::random::<u64>());
    let leased = containerd
        .with_new_lease(&lease_id, chrono::Duration::hours(LEASE_TTL_HOURS))
        .await?;
    let outcome = async {
        let root = fetch_document(&source, &requested, None).await?;
        let names = names_to_record(&image.name, &requested, &root.descriptor.digest)?;
        let (manifests, index, config) =
            fetch_manifests(&source, &root, node, everything_the_peer_holds).await?;
        let mut bytes = write_blobs(&leased, &source, &manifests, parallel).await?;
        for (document, manifest) in &manifests {
            bytes += write_document(&leased, document, manifest_gc_labels(manifest)).await?;
        }
        if let Some(index) = &index {
            let children: Vec<&Descriptor> = manifests.iter().map(|(d, _)| &d.descriptor).collect();
            bytes += write_document(&leased, index, index_gc_labels(&children)).await?;
        }
        let mut recorded = Vec::new();
        for name in names.records(config.as_ref()) {
            let labels =
                HashMap::from([(CRI_IMAGE_LABEL.to_owned(), CRI_IMAGE_MANAGED.to_owned())]);
            leased.put_image(&name, &root.descriptor, labels).await?;
            recorded.push(name);
        }
        Ok::<_, Error>((names, recorded, bytes))
    }
    .await;
    // The image records now hold everything; what only the lease held (a
    // failed import's pieces) becomes garbage.
    if let Err(error) = leased.release_lease().await {
        tracing::warn!(%error, lease = %lease_id, "could not release lease; it expires by itself");
    }
    let (names, recorded, bytes) = outcome?;
    tracing::info!(image = %image, digest = %names.digest, bytes, names = ?recorded, "imported");
    Ok(ImageResult {
        status: names.status,
        target: Some(recorded.join(",")),
        digest: Some(names.digest.clone()),
        original_digest: (names.status == Status::Rebuilt).then(|| requested.clone()),
        bytes,
        ..ImageResult::new(image.name.clone().into())
    })
}

fn pull_error(from: &ImageReference) -> impl Fn(TransferError) -> Error + '_ {
    move |error| Error::Pull {
        what: from.to_string(),
        message: format!("{}: {error}", error.reason()),
    }
}

/// Fetches a manifest or index and checks its bytes hash to `digest`.
async fn fetch_document(
    source: &RegistrySource,
    digest: &Digest,
    declared_media_type: Option<&str>,
) -> Result<Document, Error> {
    let (bytes, media_type) = source
        .fetch_manifest(digest)
        .await
        .map_err(pull_error(source.image()))?;
    let received = Digest::sha256(&Sha256::digest(&bytes).into());
    if &received != digest {
        return Err(Error::DigestMismatch {
            requested: digest.to_string(),
            received: received.to_string(),
        });
    }
    let media_type = oci::sniff_media_type(&bytes)
        .or_else(|| declared_media_type.map(str::to_owned))
        .unwrap_or(media_type);
    Ok(Document {
        descriptor: Descriptor {
            media_type,
            digest: received,
            size: bytes.len() as u64,
        },
        bytes,
    })
}

type Manifests = Vec<(Document, ImageManifest)>;

/// The image's manifests to import: the root itself, or the index's
/// children this node runs (from a registry: its own platform, as a pull
/// takes it; from a peer: every child the peer holds, so this node ends
/// up holding exactly what the peer holds). Also returns the index, if
/// any, and the config digest of the manifest this node runs (CRI's image
/// ID).
async fn fetch_manifests(
    source: &RegistrySource,
    root: &Document,
    node: &Platform,
    everything_the_peer_holds: bool,
) -> Result<(Manifests, Option<Document>, Option<String>), Error> {
    let kind =
        oci::document_kind(&root.descriptor.media_type).ok_or_else(|| Error::InvalidManifest {
            digest: root.descriptor.digest.to_string(),
            reason: format!("not an image ({})", root.descriptor.media_type),
        })?;
    if kind == DocumentKind::Manifest {
        let manifest: ImageManifest = oci::parse(&root.descriptor.digest, &root.bytes)?;
        let config = manifest.config.digest.clone();
        return Ok((vec![(root.clone(), manifest)], None, Some(config)));
    }
    let index: ImageIndex = oci::parse(&root.descriptor.digest, &root.bytes)?;
    let mut wanted = Vec::new();
    for child in children_to_import(&index, node, everything_the_peer_holds) {
        let descriptor = child.to_descriptor(&root.descriptor.digest)?;
        if everything_the_peer_holds
            && !source
                .has_blob(&descriptor)
                .await
                .map_err(pull_error(source.image()))?
        {
            continue;
        }
        wanted.push((child.clone(), descriptor));
    }
    let mut manifests = Vec::with_capacity(wanted.len());
    for (child, descriptor) in wanted {
        let document = fetch_document(source, &descriptor.digest, Some(&child.media_type)).await?;
        let manifest: ImageManifest = oci::parse(&descriptor.digest, &document.bytes)?;
        manifests.push((document, manifest));
    }
    let runs_here = index
        .manifests
        .iter()
        .filter(|child| matches_platform(child, node))
        .find_map(|child| {
            manifests
                .iter()
                .find(|(d, _)| d.descriptor.digest.as_str() == child.digest)
        })
        .map(|(_, manifest)| manifest.config.digest.clone());
    if runs_here.is_none() {
        return Err(Error::ImageNotFound(format!(
            "{}: no {} manifest from the source",
            root.descriptor.digest,
            node.label()
        )));
    }
    Ok((manifests, Some(root.clone()), runs_here))
}

fn matches_platform(child: &RawDescriptor, node: &Platform) -> bool {
    child
        .platform
        .as_ref()
        .is_some_and(|p| p.os == node.os && p.architecture == node.architecture)
}

/// Which of an index's children to import: from a peer every image
/// manifest (the peer says which it holds), from a registry the node's
/// own platform.
pub fn children_to_import<'a>(
    index: &'a ImageIndex,
    node: &Platform,
    everything_the_peer_holds: bool,
) -> Vec<&'a RawDescriptor> {
    let manifests = index
        .manifests
        .iter()
        .filter(|c| oci::document_kind(&c.media_type) == Some(DocumentKind::Manifest));
    if everything_the_peer_holds {
        return manifests.collect();
    }
    let candidates: Vec<(RawDescriptor, bool)> = manifests.map(|c| (c.clone(), true)).collect();
    let Some(chosen) = oci::pick_platform_child(&candidates, node) else {
        return Vec::new();
    };
    index
        .manifests
        .iter()
        .filter(|c| c.digest == chosen.digest)
        .take(1)
        .collect()
}

/// Layers and configs not yet in containerd, written `parallel` at a time.
async fn write_blobs(
    leased: &Containerd,
    source: &RegistrySource,
    manifests: &Manifests,
    parallel: usize,
) -> Result<u64, Error> {
    let mut blobs: Vec<Descriptor> = Vec::new();
    for (document, manifest) in manifests {
        for raw in std::iter::once(&manifest.config).chain(&manifest.layers) {
            let descriptor = raw.to_descriptor(&document.descriptor.digest)?;
            if !blobs.iter().any(|b| b.digest == descriptor.digest) {
                blobs.push(descriptor);
            }
        }
    }
    let written: Vec<u64> = futures::stream::iter(blobs)
        .map(|blob| async move {
            if leased.has(blob.digest.as_str()).await? {
                return Ok::<u64, Error>(0);
            }
            let stream = source
                .open_blob(&blob)
                .await
                .map_err(pull_error(source.image()))?;
            leased.write_blob(&blob, stream, HashMap::new()).await
        })
        .buffer_unordered(parallel.max(1))
        .try_collect()
        .await?;
    Ok(written.iter().sum())
}

/// Writes a manifest or index with its GC labels, or labels the copy
/// containerd already holds (a pull may have left it unlabelled).
async fn write_document(
    leased: &Containerd,
    document: &Document,
    labels: HashMap<String, String>,
) -> Result<u64, Error> {
    let digest = document.descriptor.digest.as_str();
    if leased.has(digest).await? {
        leased.set_content_labels(digest, labels).await?;
        return Ok(0);
    }
    let chunk: Result<Bytes, std::convert::Infallible> = Ok(document.bytes.clone());
    leased
        .write_blob(&document.descriptor, futures::stream::iter([chunk]), labels)
        .await
}

/// The labels that make a manifest keep its config and layers alive.
pub fn manifest_gc_labels(manifest: &ImageManifest) -> HashMap<String, String> {
    let mut labels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_owned(),
        manifest.config.digest.clone(),
    )]);
    for (i, layer) in manifest.layers.iter().enumerate() {
        labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            layer.digest.clone(),
        );
    }
    labels
}

/// The labels that make an index keep the manifests this node holds alive.
pub fn index_gc_labels(children: &[&Descriptor]) -> HashMap<String, String> {
    children
        .iter()
        .enumerate()
        .map(|(i, child)| {
            (
                format!("containerd.io/gc.ref.content.m.{i}"),
                child.digest.to_string(),
            )
        })
        .collect()
}

/// The image records an import writes, and what the report says of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The pod's reference without a digest, when it has a tag.
    pub tagged: Option<String>,
    /// `repo@digest`, with the digest actually imported.
    pub pinned: String,
    pub digest: Digest,
    pub status: Status,
}

impl Names {
    /// Every name to record: the tag, the digest form and CRI's image ID.
    pub fn records(&self, config: Option<&String>) -> Vec<String> {
        let mut names: Vec<String> = self.tagged.iter().cloned().collect();
        names.push(self.pinned.clone());
        if let Some(config) = config {
            names.push(config.clone());
        }
        names
    }
}

/// Decides under which names imported content may be recorded.
///
/// Digest-exact content (`imported == requested`) gets the pod's
/// reference, its tag and its digest form. Content with another digest
/// (a peer that could only offer an image rebuilt from discarded layers)
/// is never recorded under the requested digest: a pod that pins the
/// original digest asked for those exact bytes, so it is refused; a pod
/// that names only a tag gets the rebuilt image under the tag and its own
/// digest, reported as `Rebuilt` with the original digest beside it.
pub fn names_to_record(
    name: &ImageReference,
    requested: &Digest,
    imported: &Digest,
) -> Result<Names, Error> {
    let tagged = name.tag.as_ref().map(|_| {
        ImageReference {
            digest: None,
            ..name.clone()
        }
        .to_string()
    });
    let pinned = ImageReference {
        tag: None,
        ..name.with_digest(imported.clone())
    }
    .to_string();
    if imported == requested {
        return Ok(Names {
            tagged,
            pinned,
            digest: imported.clone(),
            status: Status::Imported,
        });
    }
    if name.digest.is_some() || tagged.is_none() {
        return Err(Error::DigestMismatch {
            requested: requested.to_string(),
            received: imported.to_string(),
        });
    }
    Ok(Names {
        tagged,
        pinned,
        digest: imported.clone(),
        status: Status::Rebuilt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn reference(text: &str) -> ImageReference {
        ImageReference::parse(text).unwrap()
    }

    #[test]
    fn exact_imports_are_recorded_under_the_tag_and_the_digest() {
        let names = names_to_record(
            &reference("127.0.0.1:5001/demo/web:1.0"),
            &digest('a'),
            &digest('a'),
        )
        .unwrap();
        assert_eq!(names.status, Status::Imported);
        let config = format!("sha256:{}", "c".repeat(64));
        assert_eq!(
            names.records(Some(&config)),
            vec![
                "127.0.0.1:5001/demo/web:1.0".to_owned(),
                format!("127.0.0.1:5001/demo/web@{}", digest('a')),
                config,
            ]
        );
        // A pod reference with tag and digest: the tag without the digest.
        let both = names_to_record(
            &reference(&format!("r.io/x:2@{}", digest('a'))),
            &digest('a'),
            &digest('a'),
        )
        .unwrap();
        assert_eq!(both.tagged.as_deref(), Some("r.io/x:2"));
    }

    #[test]
    fn rebuilt_content_never_takes_the_original_digest() {
        // A pod pinned to the original digest: refused, nothing recorded.
        let pinned = reference(&format!("r.io/x@{}", digest('a')));
        let refused = names_to_record(&pinned, &digest('a'), &digest('b'));
        assert!(
            matches!(&refused, Err(Error::DigestMismatch { requested, received })
                if *requested == digest('a').to_string() && *received == digest('b').to_string()),
            "{refused:?}"
        );
        assert_eq!(
            refused.unwrap_err().reason(),
            lifeboat_node_protocol::reasons::DIGEST_MISMATCH
        );
        // Tag and original digest: still refused.
        let both = reference(&format!("r.io/x:1@{}", digest('a')));
        assert!(names_to_record(&both, &digest('a'), &digest('b')).is_err());
        // A tag alone: the rebuilt image under the tag and its own digest,
        // reported as rebuilt.
        let names = names_to_record(&reference("r.io/x:1"), &digest('a'), &digest('b')).unwrap();
        assert_eq!(names.status, Status::Rebuilt);
        assert_eq!(names.digest, digest('b'));
        let records = names.records(None);
        assert!(
            records.iter().all(|n| !n.contains(digest('a').encoded())),
            "{records:?}"
        );
        assert!(records.contains(&format!("r.io/x@{}", digest('b'))));
    }

    #[test]
    fn pulls_go_by_digest_to_the_source_or_the_peer() {
        let image = ImportImage::parse(&format!(
            "127.0.0.1:5001/demo/web:1.0=127.0.0.1:5002/backup/demo/web:1.0@{}",
            digest('a')
        ))
        .unwrap();
        assert_eq!(
            pull_reference(&image, None).unwrap().to_string(),
            format!("127.0.0.1:5002/backup/demo/web@{}", digest('a'))
        );
        let pod =
            ImportImage::parse(&format!("127.0.0.1:5001/demo/web:1.0@{}", digest('a'))).unwrap();
        assert_eq!(
            pull_reference(&pod, Some("10.244.1.7:7070"))
                .unwrap()
                .to_string(),
            format!("10.244.1.7:7070/demo/web@{}", digest('a'))
        );
        assert!(pull_reference(&pod, None).is_err());
    }

    fn child(arch: &str, c: char) -> RawDescriptor {
        RawDescriptor {
            media_type: oci::OCI_MANIFEST.into(),
            digest: digest(c).to_string(),
            size: 100,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: None,
            }),
        }
    }

    #[test]
    fn a_registry_import_takes_the_node_platform_a_peer_import_what_the_peer_has() {
        let index = ImageIndex {
            media_type: Some(oci::OCI_INDEX.into()),
            manifests: vec![
                child("arm64", 'a'),
                child("amd64", 'b'),
                RawDescriptor {
                    media_type: oci::OCI_INDEX.into(),
                    ..child("amd64", 'c')
                },
            ],
        };
        let node = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        let from_registry: Vec<&str> = children_to_import(&index, &node, false)
            .iter()
            .map(|c| c.digest.as_str())
            .collect();
        assert_eq!(from_registry, vec![digest('b').as_str()]);
        let from_peer = children_to_import(&index, &node, true);
        assert_eq!(from_peer.len(), 2, "nested indexes are not image manifests");
    }

    #[test]
    fn gc_labels_reference_every_child() {
        let manifest: ImageManifest = serde_json::from_value(serde_json::json!({
            "config": {"mediaType": "c", "digest": digest('c').to_string(), "size": 1},
            "layers": [
                {"mediaType": "l", "digest": digest('1').to_string(), "size": 1},
                {"mediaType": "l", "digest": digest('2').to_string(), "size": 1}
            ]
        }))
        .unwrap();
        let labels = manifest_gc_labels(&manifest);
        assert_eq!(labels.len(), 3);
        assert_eq!(
            labels["containerd.io/gc.ref.content.l.1"],
            digest('2').to_string()
        );
        assert_eq!(
            labels["containerd.io/gc.ref.content.config"],
            digest('c').to_string()
        );
        let a = Descriptor {
            media_type: "m".into(),
            digest: digest('a'),
            size: 1,
        };
        let index = index_gc_labels(&[&a]);
        assert_eq!(
            index.get("containerd.io/gc.ref.content.m.0"),
            Some(&digest('a').to_string())
        );
    }
}
