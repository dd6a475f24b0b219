//! Image archives (tar files) read and written as streams.

pub mod read;
pub mod write;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use bytes::Bytes;
    use registry_transfer::manifest::sha256_digest;
    use registry_transfer::{BlobStream, ContentSource, Descriptor, Digest};

    use super::read::{Archive, ArchiveSource, blob_path};
    use super::write::{Format, host_platform, write_archive};

    /// An image held in memory; `lie` serves other bytes for one blob.
    struct Memory {
        root: Descriptor,
        content: HashMap<Digest, Bytes>,
        lie: Option<Digest>,
    }

    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

    fn descriptor(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: sha256_digest(bytes),
            size: bytes.len() as u64,
        }
    }

    fn image(layer_size: usize) -> Memory {
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec();
        // Two chunks' worth and a ragged end: streaming and tar padding both exercised.
        let layer: Vec<u8> = (0..layer_size).map(|i| (i % 251) as u8).collect();
        let config_d = descriptor("application/vnd.oci.image.config.v1+json", &config);
        let layer_d = descriptor("application/vnd.oci.image.layer.v1.tar", &layer);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config_d.media_type, "digest": config_d.digest.to_string(), "size": config_d.size},
            "layers": [{"mediaType": layer_d.media_type, "digest": layer_d.digest.to_string(), "size": layer_d.size}],
        }))
        .unwrap();
        let root = descriptor(OCI_MANIFEST, &manifest);
        let content = [
            (root.digest.clone(), Bytes::from(manifest)),
            (config_d.digest, Bytes::from(config)),
            (layer_d.digest, Bytes::from(layer)),
        ]
        .into_iter()
        .collect();
        Memory {
            root,
            content,
            lie: None,
        }
    }

    impl ContentSource for Memory {
        type Error = std::io::Error;
        async fn resolve(&self) -> std::io::Result<Descriptor> {
            Ok(self.root.clone())
        }
        async fn fetch_manifest(&self, digest: &Digest) -> std::io::Result<(Bytes, String)> {
            let bytes = self
                .content
                .get(digest)
                .cloned()
                .ok_or(std::io::ErrorKind::NotFound)?;
            Ok((bytes, OCI_MANIFEST.into()))
        }
        async fn open_blob(
            &self,
            descriptor: &Descriptor,
        ) -> std::io::Result<BlobStream<std::io::Error>> {
            let mut bytes = self
                .content
                .get(&descriptor.digest)
                .cloned()
                .ok_or(std::io::ErrorKind::NotFound)?
                .to_vec();
            if self.lie.as_ref() == Some(&descriptor.digest) {
                bytes[0] ^= 0xff;
            }
            let chunks: Vec<std::io::Result<Bytes>> = bytes
                .chunks(100_000)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            Ok(Box::pin(futures::stream::iter(chunks)))
        }
        async fn has_blob(&self, descriptor: &Descriptor) -> std::io::Result<bool> {
            Ok(self.content.contains_key(&descriptor.digest))
        }
    }

    async fn read_all(source: &ArchiveSource, descriptor: &Descriptor) -> Vec<u8> {
        use futures::StreamExt as _;
        let mut stream = source.open_blob(descriptor).await.unwrap();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn an_archive_written_reads_back_byte_for_byte() {
        let dir = std::env::temp_dir().join(format!("klb-archive-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("image.tar");
        let source = image(700_001);
        for format in [Format::Oci, Format::DockerArchive] {
            let written = write_archive(
                &source,
                &path,
                format,
                &host_platform(),
                Some("1.0"),
                Some("r/x:1.0"),
                &crate::progress::Progress::default(),
            )
            .await
            .unwrap();
            assert_eq!(written.digest, source.root.digest);
            assert_eq!((written.manifests, written.blobs), (1, 2));
            let archive = Arc::new(Archive::open(&path).unwrap());
            let images = archive.images().unwrap();
            assert_eq!(images.len(), 1);
            assert_eq!(images[0].descriptor, source.root);
            assert_eq!(images[0].ref_name.as_deref(), Some("1.0"));
            assert_eq!(
                archive.entry("manifest.json").is_some(),
                format == Format::DockerArchive
            );
            let read = ArchiveSource::new(archive.clone(), images[0].descriptor.clone());
            let (manifest, media_type) = read.fetch_manifest(&source.root.digest).await.unwrap();
            assert_eq!(
                (manifest.clone(), media_type.as_str()),
                (source.content[&source.root.digest].clone(), OCI_MANIFEST)
            );
            for (digest, bytes) in &source.content {
                let d = Descriptor {
                    media_type: String::new(),
                    digest: digest.clone(),
                    size: bytes.len() as u64,
                };
                assert_eq!(
                    read_all(&read, &d).await,
                    bytes.to_vec(),
                    "{}",
                    blob_path(digest)
                );
            }
            // Resuming an upload reads from the middle of a blob.
            let (layer, bytes) = source.content.iter().max_by_key(|(_, b)| b.len()).unwrap();
            let d = Descriptor {
                media_type: String::new(),
                digest: layer.clone(),
                size: bytes.len() as u64,
            };
            let mut tail = Vec::new();
            let mut stream = read.open_blob_at(&d, 123_457).await.unwrap();
            while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
                tail.extend_from_slice(&chunk.unwrap());
            }
            assert_eq!(tail, bytes[123_457..].to_vec());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_blob_that_does_not_match_its_digest_leaves_no_file() {
        let dir = std::env::temp_dir().join(format!("klb-archive-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("image.tar");
        let mut source = image(5000);
        let layer = source
            .content
            .iter()
            .max_by_key(|(_, b)| b.len())
            .unwrap()
            .0
            .clone();
        source.lie = Some(layer.clone());
        let progress = crate::progress::Progress::default();
        let error = write_archive(
            &source,
            &path,
            Format::Oci,
            &host_platform(),
            None,
            None,
            &progress,
        )
        .await
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains(&format!("blob {layer} arrived with digest")),
            "{error:#}"
        );
        assert!(
            std::fs::read_dir(&dir).unwrap().next().is_none(),
            "a partial file was left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod verify_tests {
    use std::sync::Arc;

    use super::read::{Archive, ArchiveSource, check_image};

    /// A tar with an OCI layout whose one layer is `layer`, while its
    /// manifest names the digest of `named`.
    fn archive(dir: &std::path::Path, layer: &[u8], named: &[u8]) -> std::path::PathBuf {
        use registry_transfer::manifest::sha256_digest;
        let config = b"{}".to_vec();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(&config).to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256_digest(named).to_string(), "size": named.len()}],
        }))
        .unwrap();
        let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256_digest(&manifest).to_string(), "size": manifest.len()}]}))
        .unwrap();
        let path = dir.join("a.tar");
        let mut tar = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let files: [(String, &[u8]); 5] = [
            ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json".into(), &index),
            (
                format!(
                    "blobs/{}",
                    sha256_digest(&manifest).to_string().replace(':', "/")
                ),
                &manifest,
            ),
            (
                format!(
                    "blobs/{}",
                    sha256_digest(&config).to_string().replace(':', "/")
                ),
                &config,
            ),
            (
                format!(
                    "blobs/{}",
                    sha256_digest(named).to_string().replace(':', "/")
                ),
                layer,
            ),
        ];
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, bytes).unwrap();
        }
        tar.finish().unwrap();
        path
    }

    /// `check_image` of an archive whose last `cut` bytes are gone.
    async fn check(layer: &[u8], named: &[u8], cut: u64) -> anyhow::Result<u64> {
        let dir = std::env::temp_dir().join(format!(
            "klb-check-{}-{}-{cut}",
            std::process::id(),
            layer.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = archive(&dir, layer, named);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(file.metadata().unwrap().len() - cut).unwrap();
        let archive = Arc::new(Archive::open(&path).unwrap());
        let root = archive.images().unwrap().remove(0).descriptor;
        let result = check_image(&ArchiveSource::new(archive, root)).await;
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    #[tokio::test]
    async fn a_whole_archive_passes_a_short_or_truncated_one_is_refused() {
        let layer = vec![7u8; 300_000];
        assert_eq!(check(&layer, &layer, 0).await.unwrap(), 300_002);
        // The manifest names 300,000 bytes; the archive holds fewer.
        let error = check(&layer[..299_000], &layer, 0).await.unwrap_err();
        assert!(
            error.to_string().contains("the archive is damaged"),
            "{error:#}"
        );
        // The tar ends inside the layer (its padding and end blocks gone too).
        let error = check(&layer, &layer, 3000).await.unwrap_err();
        assert!(error.to_string().contains("past the end"), "{error:#}");
    }

    #[tokio::test]
    async fn a_flipped_byte_is_left_to_the_copy_which_hashes_every_blob() {
        // Sizes all right: the check passes, and the bytes the copy reads
        // (and hashes before it commits anything) are not the named ones.
        use futures::StreamExt as _;
        use registry_transfer::ContentSource as _;
        let layer = vec![7u8; 300_000];
        let mut flipped = layer.clone();
        flipped[150_000] ^= 0xff;
        assert_eq!(check(&flipped, &layer, 0).await.unwrap(), 300_002);
        let dir = std::env::temp_dir().join(format!("klb-flipped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let archive = Arc::new(Archive::open(&archive(&dir, &flipped, &layer)).unwrap());
        let root = archive.images().unwrap().remove(0).descriptor;
        let source = ArchiveSource::new(archive, root);
        let descriptor = registry_transfer::Descriptor {
            media_type: String::new(),
            digest: registry_transfer::manifest::sha256_digest(&layer),
            size: layer.len() as u64,
        };
        let mut read = Vec::new();
        let mut stream = source.open_blob(&descriptor).await.unwrap();
        while let Some(chunk) = stream.next().await {
            read.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(read, flipped);
        assert_ne!(
            registry_transfer::manifest::sha256_digest(&read),
            descriptor.digest
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
