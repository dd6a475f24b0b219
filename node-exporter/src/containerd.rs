//! A thin client for the parts of containerd's gRPC API node-exporter uses:
//! images, content, leases, snapshots and the diff service.

use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use containerd_client::services::v1::{
    CreateImageRequest, CreateRequest as CreateLeaseRequest, DeleteContentRequest, DeleteRequest,
    DiffRequest, GetImageRequest, Image, Info, InfoRequest, ListImagesRequest, ReadContentRequest,
    UpdateImageRequest, UpdateRequest as UpdateContentRequest, WriteAction, WriteContentRequest,
    content_client::ContentClient,
    diff_client::DiffClient,
    images_client::ImagesClient,
    leases_client::LeasesClient,
    snapshots::{
        RemoveSnapshotRequest, StatSnapshotRequest, ViewSnapshotRequest,
        snapshots_client::SnapshotsClient,
    },
};
use containerd_client::types::{Descriptor as ContainerdDescriptor, Mount};
use futures::{Stream, StreamExt};
use registry_transfer::{Descriptor, Digest};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::error::Error;

/// The namespace the CRI plugin (and so the kubelet) keeps images in.
pub const K8S_NAMESPACE: &str = "k8s.io";

/// containerd keeps a compressed layer's uncompressed digest (its diff ID)
/// in this label once it has been unpacked or produced by the differ.
pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

/// A connection to containerd scoped to one namespace and, while rebuilding,
/// to one lease that keeps new content and views from being collected.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
    lease: Option<String>,
    /// containerd's content store directory, when mounted (read-only):
    /// committed blobs are read from their files instead of streamed
    /// through `Content.Read` (see [`Containerd::with_content_store`]).
    content_store: Option<PathBuf>,
}

impl Containerd {
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Containerd, Error> {
        let channel =
            containerd_client::connect(socket)
                .await
                .map_err(|source| Error::Connect {
                    path: socket.to_path_buf(),
                    source,
                })?;
        Ok(Containerd {
            channel,
            namespace: namespace.to_owned(),
            lease: None,
            content_store: None,
        })
    }

    /// Reads committed blobs straight from containerd's content store
    /// directory (`<dir>/blobs/<algorithm>/<hex>`, the layout of its
    /// `io.containerd.content.v1.content` plugin) where it has them: a
    /// file read instead of containerd reading the file and sending it
    /// through gRPC (1.4 CPU s per GiB in containerd, plus the decoding
    /// here; docs/benchmarks.md). A blob without a file there (another
    /// layout, a store not mounted) still comes through `Content.Read`.
    /// The bytes are verified against the digest by the copy engine either
    /// way.
    pub fn with_content_store(mut self, dir: Option<PathBuf>) -> Containerd {
        self.content_store = dir;
        self
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        if let Ok(namespace) = self.namespace.parse() {
            metadata.insert("containerd-namespace", namespace);
        }
        if let Some(lease) = self.lease.as_ref().and_then(|l| l.parse().ok()) {
            metadata.insert("containerd-lease", lease);
        }
        request
    }

    pub async fn list_images(&self) -> Result<Vec<Image>, Error> {
        let response = ImagesClient::new(self.channel.clone())
            .list(self.request(ListImagesRequest { filters: vec![] }))
            .await
            .map_err(Error::containerd("Images.List"))?;
        Ok(response.into_inner().images)
    }

    pub async fn get_image(&self, name: &str) -> Result<Option<Image>, Error> {
        let request = self.request(GetImageRequest {
            name: name.to_owned(),
        });
        match ImagesClient::new(self.channel.clone()).get(request).await {
            Ok(response) => Ok(response.into_inner().image),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(Error::containerd("Images.Get")(status)),
        }
    }

    /// The content store's record of a blob, or `None` when it is absent.
    pub async fn info(&self, digest: &str) -> Result<Option<Info>, Error> {
        let request = self.request(InfoRequest {
            digest: digest.to_owned(),
        });
        match ContentClient::new(self.channel.clone()).info(request).await {
            Ok(response) => Ok(response.into_inner().info),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(Error::containerd("Content.Info")(status)),
        }
    }

    pub async fn has(&self, digest: &str) -> Result<bool, Error> {
        Ok(self.info(digest).await?.is_some())
    }

    /// Streams a blob in the chunks containerd sends (1 MiB in 1.6/1.7).
    pub async fn read_stream(
        &self,
        digest: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, Error>> + Send + 'static, Error> {
        self.read_stream_at(digest, 0).await
    }

    /// Streams a blob from byte `offset` on (to resume an upload).
    pub async fn read_stream_at(
        &self,
        digest: &str,
        offset: u64,
    ) -> Result<impl Stream<Item = Result<Bytes, Error>> + Send + 'static, Error> {
        if let Some(path) = self
            .content_store
            .as_deref()
            .and_then(|dir| content_file(dir, digest))
        {
            match std::fs::File::open(&path) {
                Ok(file) => {
                    tracing::info!(%digest, path = %path.display(), "reading the blob from containerd's content store file");
                    return Ok(read_file_stream(file, path, offset).left_stream());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Io {
                        context: "opening content file",
                        path,
                        source,
                    });
                }
            }
        }
        Ok(self.grpc_read_stream(digest, offset).await?.right_stream())
    }

    async fn grpc_read_stream(
        &self,
        digest: &str,
        offset: u64,
    ) -> Result<impl Stream<Item = Result<Bytes, Error>> + Send + 'static, Error> {
        let request = self.request(ReadContentRequest {
            digest: digest.to_owned(),
            offset: i64::try_from(offset).unwrap_or(i64::MAX),
            size: 0,
        });
        let digest_owned = digest.to_owned();
        let response = ContentClient::new(self.channel.clone())
            .read(request)
            .await
            .map_err(|status| missing_or(status, &digest_owned, "Content.Read"))?;
        let pieces = response.into_inner().flat_map(move |message| {
            let pieces: Vec<Result<Bytes, Error>> = match message {
                Ok(message) => split_into_pieces(&message.data),
                Err(status) => vec![Err(missing_or(status, &digest_owned, "Content.Read"))],
            };
            futures::stream::iter(pieces)
        });
        Ok(pieces)
    }

    /// Reads a small blob (manifest, index, config) whole; refuses anything
    /// over `max_bytes` so a wrong digest cannot blow up memory.
    pub async fn read_small(&self, digest: &str, max_bytes: u64) -> Result<Bytes, Error> {
        let info = self
            .info(digest)
            .await?
            .ok_or_else(|| Error::ContentMissing {
                digest: digest.to_owned(),
            })?;
        let size = u64::try_from(info.size).unwrap_or(0);
        if size > max_bytes {
            return Err(Error::InvalidManifest {
                digest: digest.to_owned(),
                reason: format!("{size} bytes is too large for a manifest or config"),
            });
        }
        let mut stream = std::pin::pin!(self.read_stream(digest).await?);
        let mut whole = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        while let Some(chunk) = stream.next().await {
            whole.extend_from_slice(&chunk?);
        }
        Ok(Bytes::from(whole))
    }

    pub async fn delete_content(&self, digest: &str) -> Result<(), Error> {
        ContentClient::new(self.channel.clone())
            .delete(self.request(DeleteContentRequest {
                digest: digest.to_owned(),
            }))
            .await
            .map_err(Error::containerd("Content.Delete"))?;
        Ok(())
    }

    /// Creates a lease that expires by itself after `ttl`, so content and
    /// snapshot views created under it vanish even if this process is killed
    /// before it can clean up. Returns a client that works under the lease.
    pub async fn with_new_lease(&self, id: &str, ttl: chrono::Duration) -> Result<Self, Error> {
        let expires = (chrono::Utc::now() + ttl).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let labels = HashMap::from([("containerd.io/gc.expire".to_owned(), expires)]);
        LeasesClient::new(self.channel.clone())
            .create(self.request(CreateLeaseRequest {
                id: id.to_owned(),
                labels,
            }))
            .await
            .map_err(Error::containerd("Leases.Create"))?;
        Ok(Containerd {
            lease: Some(id.to_owned()),
            ..self.clone()
        })
    }

    /// Releases this client's lease; what only it held becomes garbage.
    pub async fn release_lease(&self) -> Result<(), Error> {
        let Some(id) = &self.lease else {
            return Ok(());
        };
        let mut request = Request::new(DeleteRequest {
            id: id.clone(),
            sync: false,
        });
        if let Ok(namespace) = self.namespace.parse() {
            request
                .metadata_mut()
                .insert("containerd-namespace", namespace);
        }
        LeasesClient::new(self.channel.clone())
            .delete(request)
            .await
            .map_err(Error::containerd("Leases.Delete"))?;
        Ok(())
    }

    pub async fn snapshot_exists(&self, snapshotter: &str, key: &str) -> Result<bool, Error> {
        let request = self.request(StatSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key: key.to_owned(),
        });
        match SnapshotsClient::new(self.channel.clone())
            .stat(request)
            .await
        {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(Error::containerd("Snapshots.Stat")(status)),
        }
    }

    /// A read-only view of a committed snapshot, returned as the mounts the
    /// differ needs.
    pub async fn view(
        &self,
        snapshotter: &str,
        key: &str,
        parent: &str,
    ) -> Result<Vec<Mount>, Error> {
        let response = SnapshotsClient::new(self.channel.clone())
            .view(self.request(ViewSnapshotRequest {
                snapshotter: snapshotter.to_owned(),
                key: key.to_owned(),
                parent: parent.to_owned(),
                labels: HashMap::new(),
            }))
            .await
            .map_err(Error::containerd("Snapshots.View"))?;
        Ok(response.into_inner().mounts)
    }

    pub async fn remove_snapshot(&self, snapshotter: &str, key: &str) -> Result<(), Error> {
        SnapshotsClient::new(self.channel.clone())
            .remove(self.request(RemoveSnapshotRequest {
                snapshotter: snapshotter.to_owned(),
                key: key.to_owned(),
            }))
            .await
            .map_err(Error::containerd("Snapshots.Remove"))?;
        Ok(())
    }

    /// Asks the diff service for the layer that turns `lower` into `upper`,
    /// written into the content store as `media_type`.
    pub async fn diff(
        &self,
        lower: Vec<Mount>,
        upper: Vec<Mount>,
        media_type: &str,
        writer_ref: &str,
    ) -> Result<Descriptor, Error> {
        let response = DiffClient::new(self.channel.clone())
            .diff(self.request(DiffRequest {
                left: lower,
                right: upper,
                media_type: media_type.to_owned(),
                r#ref: writer_ref.to_owned(),
                labels: HashMap::new(),
                source_date_epoch: None,
            }))
            .await
            .map_err(Error::containerd("Diff.Diff"))?;
        let produced = response
            .into_inner()
            .diff
            .ok_or_else(|| Error::Containerd {
                operation: "Diff.Diff",
                status: tonic::Status::internal("no descriptor in response"),
            })?;
        let digest = Digest::parse(&produced.digest).map_err(|_| Error::Containerd {
            operation: "Diff.Diff",
            status: tonic::Status::internal(format!("bad digest {:?}", produced.digest)),
        })?;
        Ok(Descriptor {
            media_type: produced.media_type,
            digest,
            size: u64::try_from(produced.size).unwrap_or(0),
        })
    }
}

impl Containerd {
    /// Writes one blob into the content store from `chunks`, with `labels`
    /// set at commit. containerd checks the size and the digest before it
    /// commits: a blob whose bytes do not hash to `descriptor.digest` is
    /// never stored. Returns the bytes written (0 when containerd already
    /// held it). Use a leased client, so a half-written or just-written
    /// blob no image references yet is not collected.
    pub async fn write_blob<S, E>(
        &self,
        descriptor: &Descriptor,
        chunks: S,
        labels: HashMap<String, String>,
    ) -> Result<u64, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let total = i64::try_from(descriptor.size).map_err(|_| Error::InvalidManifest {
            digest: descriptor.digest.to_string(),
            reason: "size out of range".to_owned(),
        })?;
        // One writer ref per attempt: a ref still locked by a killed earlier
        // attempt would refuse this one.
        let writer_ref = format!(
            "lifeboat-import-{}-{:016x}",
            descriptor.digest.encoded(),
            rand::random::<u64>()
        );
        let expected = descriptor.digest.to_string();
        let (failure_tx, mut failure_rx) = tokio::sync::mpsc::channel::<String>(1);
        let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = written.clone();
        let head = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: writer_ref.clone(),
            total,
            expected: expected.clone(),
            ..WriteContentRequest::default()
        };
        // containerd takes the labels from the Commit message only.
        let commit_expected = expected.clone();
        let body = write_messages(
            chunks,
            writer_ref,
            total,
            commit_expected,
            labels,
            failure_tx,
            counter,
        );
        let messages = futures::stream::iter([head]).chain(body);
        let response = ContentClient::new(self.channel.clone())
            .write(self.request(messages))
            .await;
        let mut responses = match response {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::AlreadyExists => return Ok(0),
            Err(status) => return Err(Error::containerd("Content.Write")(status)),
        };
        let mut committed = false;
        loop {
            match responses.message().await {
                Ok(Some(message)) => {
                    if message.action == WriteAction::Commit as i32 {
                        committed = true;
                    }
                }
                Ok(None) => break,
                Err(status) if status.code() == Code::AlreadyExists => return Ok(0),
                Err(status) => return Err(Error::containerd("Content.Write")(status)),
            }
        }
        if let Ok(message) = failure_rx.try_recv() {
            return Err(Error::Pull {
                what: descriptor.digest.to_string(),
                message,
            });
        }
        if !committed {
            return Err(Error::Containerd {
                operation: "Content.Write",
                status: tonic::Status::aborted(format!("{expected} was not committed")),
            });
        }
        Ok(written.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Sets `labels` on stored content, leaving its other labels alone.
    pub async fn set_content_labels(
        &self,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), Error> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|key| format!("labels.{key}")).collect();
        ContentClient::new(self.channel.clone())
            .update(self.request(UpdateContentRequest {
                info: Some(Info {
                    digest: digest.to_owned(),
                    labels,
                    ..Info::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(Error::containerd("Content.Update"))?;
        Ok(())
    }

    /// Creates the image record `name` pointing at `target`, or points an
    /// existing one there (its labels replaced by `labels`).
    pub async fn put_image(
        &self,
        name: &str,
        target: &Descriptor,
        labels: HashMap<String, String>,
    ) -> Result<(), Error> {
        let image = Image {
            name: name.to_owned(),
            labels,
            target: Some(ContainerdDescriptor {
                media_type: target.media_type.clone(),
                digest: target.digest.to_string(),
                size: i64::try_from(target.size).unwrap_or(i64::MAX),
                annotations: HashMap::new(),
            }),
            created_at: None,
            updated_at: None,
        };
        let created = ImagesClient::new(self.channel.clone())
            .create(self.request(CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            }))
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::AlreadyExists => {
                ImagesClient::new(self.channel.clone())
                    .update(self.request(UpdateImageRequest {
                        image: Some(image),
                        update_mask: None,
                        source_date_epoch: None,
                    }))
                    .await
                    .map_err(Error::containerd("Images.Update"))?;
                Ok(())
            }
            Err(status) => Err(Error::containerd("Images.Create")(status)),
        }
    }
}

/// The source's stream as `Content.Write` messages at growing offsets, then
/// the Commit (which carries the labels: containerd takes them from it). A
/// source error ends the stream without a Commit, so nothing is committed;
/// the error goes to `failure` for the caller to report.
fn write_messages<S, E>(
    chunks: S,
    writer_ref: String,
    total: i64,
    commit_expected: String,
    labels: HashMap<String, String>,
    failure_tx: tokio::sync::mpsc::Sender<String>,
    counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> impl Stream<Item = WriteContentRequest> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    futures::stream::unfold(
        (Box::pin(chunks), 0i64, false),
        move |(mut chunks, offset, done)| {
            let labels = labels.clone();
            let commit_expected = commit_expected.clone();
            let failure_tx = failure_tx.clone();
            let counter = counter.clone();
            let writer_ref = writer_ref.clone();
            async move {
                if done {
                    return None;
                }
                match chunks.next().await {
                    Some(Ok(data)) => {
                        let length = i64::try_from(data.len()).unwrap_or(i64::MAX);
                        counter.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        let message = WriteContentRequest {
                            action: WriteAction::Write as i32,
                            r#ref: writer_ref,
                            offset,
                            data: data.to_vec(),
                            ..WriteContentRequest::default()
                        };
                        Some((message, (chunks, offset.saturating_add(length), false)))
                    }
                    Some(Err(error)) => {
                        let _ = failure_tx.try_send(error.to_string());
                        None
                    }
                    None => {
                        let message = WriteContentRequest {
                            action: WriteAction::Commit as i32,
                            r#ref: writer_ref,
                            offset,
                            total,
                            expected: commit_expected,
                            labels,
                            data: Vec::new(),
                        };
                        Some((message, (chunks, offset, true)))
                    }
                }
            }
        },
    )
}

/// Size of the pieces blobs are handed on in. containerd sends 1 MiB
/// messages; the engine queues a few pieces per upload, so copying them into
/// small pieces (and freeing each message at once) keeps memory per stream
/// at a few hundred KiB instead of several MiB. The copy costs ~0.1 s/GiB.
pub const STREAM_PIECE_BYTES: usize = 128 * 1024;

/// The file of a blob in a content store directory, if `digest` is a
/// valid digest (a known algorithm and its lowercase hex: nothing that
/// could name another path).
fn content_file(dir: &Path, digest: &str) -> Option<PathBuf> {
    let digest = Digest::parse(digest).ok()?;
    Some(
        dir.join("blobs")
            .join(digest.algorithm())
            .join(digest.encoded()),
    )
}

/// Pieces read from a content file on a blocking thread, a few ahead of
/// the upload (memory per stream: [`FILE_PIECES_AHEAD`] pieces).
fn read_file_stream(
    mut file: std::fs::File,
    path: PathBuf,
    offset: u64,
) -> impl Stream<Item = Result<Bytes, Error>> + Send + 'static {
    let (sender, receiver) = tokio::sync::mpsc::channel(FILE_PIECES_AHEAD);
    tokio::task::spawn_blocking(move || {
        let io_error = |source| Error::Io {
            context: "reading content file",
            path: path.clone(),
            source,
        };
        if offset > 0
            && let Err(e) = file.seek(SeekFrom::Start(offset))
        {
            let _ = sender.blocking_send(Err(io_error(e)));
            return;
        }
        loop {
            let mut piece = vec![0u8; STREAM_PIECE_BYTES];
            let read = match file.read(&mut piece) {
                Ok(0) => return,
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = sender.blocking_send(Err(io_error(e)));
                    return;
                }
            };
            piece.truncate(read);
            // The upload gave up: stop reading.
            if sender.blocking_send(Ok(Bytes::from(piece))).is_err() {
                return;
            }
        }
    });
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|piece| (piece, receiver))
    })
}

/// Pieces a content file is read ahead of its upload.
const FILE_PIECES_AHEAD: usize = 4;

fn split_into_pieces(data: &[u8]) -> Vec<Result<Bytes, Error>> {
    data.chunks(STREAM_PIECE_BYTES)
        .map(|piece| Ok(Bytes::copy_from_slice(piece)))
        .collect()
}

fn missing_or(status: tonic::Status, digest: &str, operation: &'static str) -> Error {
    if status.code() == Code::NotFound {
        Error::ContentMissing {
            digest: digest.to_owned(),
        }
    } else {
        Error::Containerd { operation, status }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_digests_name_a_content_file() {
        let dir = Path::new("/store");
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(
            content_file(dir, &format!("sha256:{hex}")),
            Some(PathBuf::from(format!("/store/blobs/sha256/{hex}")))
        );
        for hostile in [
            "sha256:../../etc/shadow",
            "sha256:",
            ":abc",
            "abc",
            "sha256:ABC",
            "../sha256:abc",
            "sha256:ab/cd",
            "sha 256:ab",
        ] {
            assert_eq!(content_file(dir, hostile), None, "{hostile}");
        }
    }

    #[tokio::test]
    async fn a_content_file_streams_in_pieces_from_an_offset() {
        let path = std::env::temp_dir().join(format!("ne-content-{}", std::process::id()));
        let data: Vec<u8> = (0..STREAM_PIECE_BYTES * 2 + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        for offset in [0, 5, STREAM_PIECE_BYTES + 1] {
            let file = std::fs::File::open(&path).unwrap();
            let pieces: Vec<Bytes> = read_file_stream(file, path.clone(), offset as u64)
                .map(|piece| piece.unwrap())
                .collect()
                .await;
            assert!(pieces.iter().all(|p| p.len() <= STREAM_PIECE_BYTES));
            assert_eq!(pieces.concat(), data[offset..], "offset {offset}");
        }
        std::fs::remove_file(&path).unwrap();
    }
}
