//! The engine with a non-registry `ContentSource` (what node-exporter does
//! with containerd), and the bearer token flow against a small fake registry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use registry_transfer::{
    BlobStream, ContentSource, CopyRequest, Credentials, Descriptor, Digest, RegistrySettings,
    RepositoryRef, RetryPolicy, Secret, SourceErrorKind, Transfer, TransferConfig,
};
use support::images::{Blob, Manifest, OCI_MANIFEST, RegistryHttp, image_manifest, random_bytes};
use support::registry::TestRegistry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[derive(Debug, thiserror::Error)]
enum MemoryError {
    #[error("{0} is not in memory")]
    Missing(String),
}

/// Content held in memory, served in odd-sized pieces.
struct MemorySource {
    top: Descriptor,
    manifests: HashMap<String, (Bytes, String)>,
    blobs: HashMap<String, Bytes>,
    announce_digest: bool,
}

impl MemorySource {
    fn new(manifest: &Manifest, announce_digest: bool) -> MemorySource {
        let digest = Digest::parse(&manifest.digest).unwrap();
        let mut manifests = HashMap::new();
        manifests.insert(
            manifest.digest.clone(),
            (
                Bytes::from(manifest.bytes.clone()),
                manifest.media_type.clone(),
            ),
        );
        let blobs = manifest
            .blobs
            .iter()
            .map(|b| (b.digest.clone(), Bytes::from(b.data.as_ref().clone())))
            .collect();
        MemorySource {
            top: Descriptor {
                media_type: manifest.media_type.clone(),
                digest,
                size: manifest.bytes.len() as u64,
            },
            manifests,
            blobs,
            announce_digest,
        }
    }
}

impl ContentSource for MemorySource {
    type Error = MemoryError;

    async fn resolve(&self) -> Result<Descriptor, MemoryError> {
        Ok(self.top.clone())
    }

    async fn fetch_manifest(&self, digest: &Digest) -> Result<(Bytes, String), MemoryError> {
        self.manifests
            .get(digest.as_str())
            .cloned()
            .ok_or_else(|| MemoryError::Missing(digest.to_string()))
    }

    async fn open_blob(
        &self,
        descriptor: &Descriptor,
    ) -> Result<BlobStream<MemoryError>, MemoryError> {
        let data = self
            .blobs
            .get(descriptor.digest.as_str())
            .cloned()
            .ok_or_else(|| MemoryError::Missing(descriptor.digest.to_string()))?;
        // 7 kB pieces: never aligned with the engine's chunking.
        let pieces: Vec<Result<Bytes, MemoryError>> = (0..data.len())
            .step_by(7000)
            .map(|start| Ok(data.slice(start..(start + 7000).min(data.len()))))
            .collect();
        Ok(Box::pin(futures::stream::iter(pieces)))
    }

    async fn has_blob(&self, descriptor: &Descriptor) -> Result<bool, MemoryError> {
        Ok(self.blobs.contains_key(descriptor.digest.as_str()))
    }

    fn known_digest(&self) -> Option<Digest> {
        self.announce_digest.then(|| self.top.digest.clone())
    }

    fn classify_error(error: &MemoryError) -> SourceErrorKind {
        match error {
            MemoryError::Missing(_) => SourceErrorKind::NotFound,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_from_a_custom_content_source() {
    let dst = TestRegistry::start_plain();
    let dst_http = RegistryHttp::new(&dst);
    let image = image_manifest(
        &[Blob::random_layer(900_000), Blob::random_layer(3000)],
        OCI_MANIFEST,
        ("linux", "arm64"),
    );
    registry_transfer::install_crypto_provider();
    let config = TransferConfig {
        chunk_size: 256 << 10,
        buffered_blob_max: 64 << 10,
        ..TransferConfig::default()
    };
    let transfer = Transfer::new(config, RegistrySettings::new().allow_plain_http(&dst.host));
    let target = RepositoryRef::new(&dst.host, "node/app");

    let report = transfer
        .copy(
            &MemorySource::new(&image, false),
            &CopyRequest::new(target.clone()).with_tag("v1"),
        )
        .await
        .expect("copy from memory");
    assert_eq!(report.digest.as_str(), image.digest);
    assert_eq!(report.blobs_copied, 3);
    dst_http.assert_holds("node/app", "v1", &image).await;
    // Four PATCHes of at most 256 KiB for the 900 kB layer.
    tokio::time::sleep(Duration::from_millis(300)).await; // access log lines land after answers
    assert_eq!(dst.count_requests(&["\"PATCH "]), 4);

    let warm = transfer
        .copy(
            &MemorySource::new(&image, true),
            &CopyRequest::new(target.clone()).with_tag("v1"),
        )
        .await
        .expect("warm copy from memory");
    assert!(warm.up_to_date);
    assert_eq!(warm.requests, 1);

    // This engine would mount what it already copied; a fresh one has to
    // read the source, which lacks a blob.
    let fresh = Transfer::new(
        TransferConfig::default(),
        RegistrySettings::new().allow_plain_http(&dst.host),
    );
    let mut incomplete = MemorySource::new(&image, false);
    incomplete.blobs.remove(&image.blobs[1].digest);
    let error = fresh
        .copy(
            &incomplete,
            &CopyRequest::new(RepositoryRef::new(&dst.host, "node/other")).with_tag("v1"),
        )
        .await
        .expect_err("missing blob");
    assert_eq!(error.reason(), "SourceNotFound");
}

/// A registry that only speaks the bearer token flow: every /v2/ request
/// needs `Bearer <token>`, tokens come from /token with basic credentials.
struct FakeTokenRegistry {
    host: String,
    token_requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeTokenRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fake_token_registry(manifest: Arc<Manifest>) -> FakeTokenRegistry {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let token_requests = Arc::new(Mutex::new(Vec::new()));
    let (realm_host, requests) = (host.clone(), token_requests.clone());
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (manifest, realm_host, requests) =
                (manifest.clone(), realm_host.clone(), requests.clone());
            tokio::spawn(async move {
                // Keep-alive: serve requests until the client closes.
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let request_line = head.lines().next().unwrap_or_default().to_owned();
                    let authorization = head
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("authorization: ")
                                .or_else(|| l.strip_prefix("Authorization: "))
                        })
                        .unwrap_or_default()
                        .to_owned();
                    let response = if request_line.contains("/token?") {
                        requests
                            .lock()
                            .unwrap()
                            .push(format!("{request_line} {authorization}"));
                        let expected =
                            base64::engine::general_purpose::STANDARD.encode("robot:t0ken-pass");
                        if authorization == format!("Basic {expected}") {
                            let body = r#"{"token":"fake-token-1","expires_in":300}"#;
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            )
                        } else {
                            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_owned()
                        }
                    } else if authorization != "Bearer fake-token-1" {
                        format!(
                            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://{realm_host}/token\",service=\"fake-registry\",scope=\"repository:app:pull\"\r\nContent-Length: 0\r\n\r\n"
                        )
                    } else if request_line.contains("/v2/app/manifests/") {
                        let body = if request_line.starts_with("HEAD ") {
                            String::new()
                        } else {
                            String::from_utf8_lossy(&manifest.bytes).into_owned()
                        };
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nDocker-Content-Digest: {}\r\nContent-Length: {}\r\n\r\n{body}",
                            manifest.media_type,
                            manifest.digest,
                            manifest.bytes.len()
                        )
                    } else {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned()
                    };
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    FakeTokenRegistry {
        host,
        token_requests,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_flow_learns_the_challenge_and_caches_tokens() {
    let manifest = Arc::new(image_manifest(
        &[Blob::new(random_bytes(10), "application/octet-stream")],
        OCI_MANIFEST,
        ("linux", "amd64"),
    ));
    let registry = fake_token_registry(manifest.clone()).await;
    registry_transfer::install_crypto_provider();
    let quick = TransferConfig {
        retry: RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(10),
            ..RetryPolicy::default()
        },
        ..TransferConfig::default()
    };
    let settings = |password: &str| {
        RegistrySettings::new()
            .allow_plain_http(&registry.host)
            .with_credentials(
                &registry.host,
                Credentials::Basic {
                    username: "robot".into(),
                    password: Secret::new(password),
                },
            )
    };
    let transfer = Transfer::new(quick.clone(), settings("t0ken-pass"));
    let image =
        registry_transfer::reference::parse_image(&format!("{}/app:v1", registry.host)).unwrap();
    let source = transfer.registry_source(&image).unwrap();
    let resolved = source
        .resolve()
        .await
        .expect("resolve through the token flow");
    assert_eq!(resolved.digest.as_str(), manifest.digest);
    let (bytes, _) = source
        .fetch_manifest(&resolved.digest)
        .await
        .expect("fetch by digest");
    assert_eq!(bytes.as_ref(), manifest.bytes.as_slice());
    let again = transfer.registry_source(&image).unwrap();
    again.resolve().await.expect("second resolve");

    let tokens = registry.token_requests.lock().unwrap().clone();
    assert_eq!(
        tokens.len(),
        1,
        "one token for the scope, then cached: {tokens:?}"
    );
    assert!(tokens[0].contains("service=fake-registry"), "{}", tokens[0]);
    assert!(
        tokens[0].contains("scope=repository%3Aapp%3Apull"),
        "{}",
        tokens[0]
    );
    // 401 (learn the challenge), token, retried GET; the fetch by digest
    // reuses what resolve got; the second resolve uses the cached token.
    assert_eq!(transfer.requests_made(), 4);

    let wrong = Transfer::new(quick, settings("nope"));
    let error = wrong
        .registry_source(&image)
        .unwrap()
        .resolve()
        .await
        .expect_err("wrong password");
    assert_eq!(error.reason(), "Unauthorized");
    assert!(!format!("{error:?} {wrong:?}").contains("nope"));
}
