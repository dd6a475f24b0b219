//! Reading an OCI archive (`oci-archive:` as skopeo writes it, or
//! `docker save` of Docker 25 and later, which holds the same layout): one
//! pass over the tar headers records where each file's bytes are, then
//! blobs are read from there as streams when the copy engine asks. Memory
//! stays flat in the archive's size; the engine (or a node's importer)
//! verifies every digest while it streams.

use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use registry_transfer::{BlobStream, ContentSource, Descriptor, Digest, SourceErrorKind};
use serde::Deserialize;

use crate::progress::Progress;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

/// Largest manifest or index read whole (as the registries' own limit).
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// Bytes read from the file at a time while a blob streams.
const CHUNK: usize = 256 * 1024;
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Where one file's bytes sit in the tar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub offset: u64,
    pub size: u64,
}

/// An archive file and the position of each of its files.
#[derive(Debug)]
pub struct Archive {
    path: PathBuf,
    /// The file's length when it was indexed.
    length: u64,
    entries: HashMap<String, Entry>,
}

/// One image the archive's `index.json` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedImage {
    pub descriptor: Descriptor,
    /// `org.opencontainers.image.ref.name`, if set.
    pub ref_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutIndex {
    manifests: Vec<LayoutDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutDescriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// The path inside the layout of a blob.
pub fn blob_path(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm(), digest.encoded())
}

fn normalize(path: &str) -> String {
    path.trim_start_matches("./").to_owned()
}

impl Archive {
    /// Indexes the archive: reads every tar header, no file contents.
    pub fn open(path: &Path) -> std::io::Result<Archive> {
        let file = std::fs::File::open(path)?;
        let length = file.metadata()?.len();
        let mut tar = tar::Archive::new(file);
        let mut entries = HashMap::new();
        for entry in tar.entries_with_seek()? {
            let entry = entry?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = normalize(&entry.path()?.to_string_lossy());
            entries.insert(
                name,
                Entry {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
            );
        }
        Ok(Archive {
            path: path.to_owned(),
            length,
            entries,
        })
    }

    pub fn entry(&self, name: &str) -> Option<Entry> {
        self.entries.get(name).copied()
    }

    /// A small file read whole (`index.json`, a manifest).
    pub fn read_small(&self, name: &str) -> std::io::Result<Vec<u8>> {
        let entry = self.entry(name).ok_or_else(|| not_found(name))?;
        if entry.size > MAX_MANIFEST_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{name} is {} bytes, more than a manifest may be",
                    entry.size
                ),
            ));
        }
        let mut file = std::fs::File::open(&self.path)?;
        file.seek(SeekFrom::Start(entry.offset))?;
        let mut bytes = Vec::new();
        file.take(entry.size).read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// The images `index.json` names: what an import can push.
    pub fn images(&self) -> std::io::Result<Vec<ArchivedImage>> {
        if self.entry("oci-layout").is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not an OCI archive (no oci-layout file); make one with skopeo copy ... oci-archive:FILE",
            ));
        }
        let index: LayoutIndex =
            serde_json::from_slice(&self.read_small("index.json")?).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("index.json: {e}"))
            })?;
        index
            .manifests
            .into_iter()
            .map(|m| {
                let digest = Digest::parse(&m.digest).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("index.json: {e}"))
                })?;
                Ok(ArchivedImage {
                    descriptor: Descriptor {
                        media_type: m.media_type,
                        digest,
                        size: m.size,
                    },
                    ref_name: m.annotations.get(REF_NAME).cloned(),
                })
            })
            .collect()
    }
}

fn not_found(name: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{name} is not in the archive"),
    )
}

/// Checks the image `root` names before anything leaves the machine:
/// every manifest read and hashed, every blob it names present in the
/// archive with the size its manifest gives, and inside the file (a
/// truncated archive is refused here, before any pod is made). Blob
/// bytes are not hashed here: the copy hashes each blob as it streams
/// and commits nothing whose digest differs (the registry checks again),
/// so a second full read of the archive would only add time.
/// Returns the number of blob bytes to send.
pub async fn check_image(source: &ArchiveSource) -> anyhow::Result<u64> {
    use anyhow::{Context as _, bail};
    use registry_transfer::manifest::{self, ManifestContent};

    let mut manifests = vec![source.root.digest.clone()];
    let mut blobs: Vec<Descriptor> = Vec::new();
    while let Some(digest) = manifests.pop() {
        let (bytes, media_type) = source
            .fetch_manifest(&digest)
            .await
            .with_context(|| format!("manifest {digest}"))?;
        manifest::verify(&bytes, &digest)?;
        match manifest::parse(&bytes, &media_type, &digest)? {
            ManifestContent::Index { children } => {
                // A sparse archive (one platform of an index) is fine: only
                // the children it holds are pushed.
                manifests.extend(
                    children
                        .into_iter()
                        .map(|c| c.descriptor.digest)
                        .filter(|d| source.archive.entry(&blob_path(d)).is_some()),
                );
            }
            ManifestContent::Image { blobs: more } => blobs.extend(more),
        }
    }
    let mut total: u64 = 0;
    for blob in blobs {
        let name = blob_path(&blob.digest);
        let Some(entry) = source.archive.entry(&name) else {
            bail!("the archive is incomplete: it has no {name}");
        };
        let end = entry.offset.saturating_add(entry.size);
        if entry.size != blob.size || end > source.archive.length {
            bail!(
                "the archive is damaged: blob {} has {} bytes{} (its manifest says {} bytes)",
                blob.digest,
                entry.size,
                if end > source.archive.length {
                    format!(", past the end of the {}-byte file", source.archive.length)
                } else {
                    String::new()
                },
                blob.size
            );
        }
        total = total.saturating_add(entry.size);
    }
    Ok(total)
}

/// One image of an archive, as the copy engine reads it.
pub struct ArchiveSource {
    archive: Arc<Archive>,
    root: Descriptor,
    /// Counts the blob bytes read, when set.
    progress: Option<Progress>,
}

impl ArchiveSource {
    pub fn new(archive: Arc<Archive>, root: Descriptor) -> ArchiveSource {
        ArchiveSource {
            archive,
            root,
            progress: None,
        }
    }

    pub fn with_progress(self, progress: Progress) -> ArchiveSource {
        ArchiveSource {
            progress: Some(progress),
            ..self
        }
    }

    async fn stream(
        &self,
        descriptor: &Descriptor,
        skip: u64,
    ) -> std::io::Result<BlobStream<std::io::Error>> {
        let name = blob_path(&descriptor.digest);
        let entry = self.archive.entry(&name).ok_or_else(|| not_found(&name))?;
        let mut file = tokio::fs::File::open(&self.archive.path).await?;
        let skip = skip.min(entry.size);
        file.seek(SeekFrom::Start(entry.offset.saturating_add(skip)))
            .await?;
        let remaining = entry.size - skip;
        let progress = self.progress.clone();
        let stream = futures::stream::try_unfold(
            (file, remaining, progress),
            |(mut file, remaining, progress)| async move {
                if remaining == 0 {
                    return Ok(None);
                }
                let want = usize::try_from(remaining).unwrap_or(CHUNK).min(CHUNK);
                let mut buffer = vec![0u8; want];
                file.read_exact(&mut buffer).await?;
                if let Some(progress) = &progress {
                    progress.add(want as u64);
                }
                Ok(Some((
                    Bytes::from(buffer),
                    (file, remaining - want as u64, progress),
                )))
            },
        );
        Ok(Box::pin(stream))
    }
}

impl ContentSource for ArchiveSource {
    type Error = std::io::Error;

    async fn resolve(&self) -> std::io::Result<Descriptor> {
        Ok(self.root.clone())
    }

    async fn fetch_manifest(&self, digest: &Digest) -> std::io::Result<(Bytes, String)> {
        let archive = self.archive.clone();
        let name = blob_path(digest);
        let bytes = tokio::task::spawn_blocking(move || archive.read_small(&name))
            .await
            .map_err(std::io::Error::other)??;
        let reported = if digest == &self.root.digest {
            self.root.media_type.clone()
        } else {
            String::new()
        };
        let media_type = registry_transfer::manifest::effective_media_type(&bytes, &reported);
        Ok((Bytes::from(bytes), media_type))
    }

    async fn open_blob(
        &self,
        descriptor: &Descriptor,
    ) -> std::io::Result<BlobStream<std::io::Error>> {
        self.stream(descriptor, 0).await
    }

    async fn open_blob_at(
        &self,
        descriptor: &Descriptor,
        offset: u64,
    ) -> std::io::Result<BlobStream<std::io::Error>> {
        self.stream(descriptor, offset).await
    }

    async fn has_blob(&self, descriptor: &Descriptor) -> std::io::Result<bool> {
        Ok(self.archive.entry(&blob_path(&descriptor.digest)).is_some())
    }

    fn known_digest(&self) -> Option<Digest> {
        Some(self.root.digest.clone())
    }

    fn classify_error(error: &std::io::Error) -> SourceErrorKind {
        if error.kind() == std::io::ErrorKind::NotFound {
            SourceErrorKind::NotFound
        } else {
            SourceErrorKind::Other
        }
    }
}
