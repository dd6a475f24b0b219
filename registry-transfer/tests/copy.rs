//! The engine against real `docker-registry` processes on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use registry_transfer::{
    CopyRequest, DockerConfig, ImageReference, Platform, RegistrySettings, RepositoryRef,
    RetryPolicy, Transfer, TransferConfig, TransferError, deterministic_tag,
};
use support::images::{
    Blob, DOCKER_MANIFEST, Manifest, OCI_INDEX, OCI_MANIFEST, RegistryHttp, artifact_manifest,
    image_manifest, index_manifest, random_bytes,
};
use support::proxy::{BrokenProxy, Fault};
use support::registry::{RegistryOptions, TestRegistry};

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        max_retry_after: Duration::from_secs(5),
    }
}

fn test_config() -> TransferConfig {
    TransferConfig {
        retry: quick_retries(),
        ..TransferConfig::default()
    }
}

/// An engine allowed to speak plain HTTP to these hosts.
fn engine(config: TransferConfig, plain_hosts: &[&str]) -> Transfer {
    registry_transfer::install_crypto_provider();
    let settings = plain_hosts
        .iter()
        .fold(RegistrySettings::new(), |s, host| s.allow_plain_http(host));
    Transfer::new(config, settings)
}

fn image_ref(registry: &str, path: &str) -> ImageReference {
    registry_transfer::reference::parse_image(&format!("{registry}/{path}")).expect("image ref")
}

fn repo(registry: &str, path: &str) -> RepositoryRef {
    RepositoryRef::new(registry, path)
}

/// Registries write an access-log line as a request ends, which can be
/// just after the client has its answer.
async fn settle_logs() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// The hex part of a digest: upload URLs carry it percent-encoded.
fn hex_of(blob: &Blob) -> &str {
    blob.digest.trim_start_matches("sha256:")
}

fn docker_image(layers: &[Blob]) -> Manifest {
    image_manifest(layers, DOCKER_MANIFEST, ("linux", "amd64"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_copy_is_byte_exact_and_warm_copy_writes_nothing() {
    let src = TestRegistry::start_plain();
    let dst = TestRegistry::start_plain();
    let (src_http, dst_http) = (RegistryHttp::new(&src), RegistryHttp::new(&dst));
    let gzip = Blob::new(
        random_bytes(300_000),
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    );
    let zstd = Blob::new(
        random_bytes(200_000),
        "application/vnd.oci.image.layer.v1.tar+zstd",
    );
    let image = docker_image(&[gzip.clone(), zstd.clone()]);
    src_http.push("team/app", "v1", &image).await;

    let transfer = engine(test_config(), &[&src.host, &dst.host]);
    let request = CopyRequest::new(repo(&dst.host, "mirror/app"));
    let report = transfer
        .copy_image(&image_ref(&src.host, "team/app:v1"), &request)
        .await
        .expect("cold copy");
    assert_eq!(report.digest.as_str(), image.digest);
    assert_eq!(report.source_digest, report.digest);
    assert_eq!(report.tag, "v1");
    assert!(!report.up_to_date && !report.index_digest_changed);
    assert_eq!((report.manifests_copied, report.blobs_copied), (1, 3));
    assert_eq!((report.blobs_skipped, report.blobs_mounted), (0, 0));
    let blob_bytes: u64 = image.blobs.iter().map(|b| b.data.len() as u64).sum();
    assert_eq!(report.bytes_copied, blob_bytes);
    dst_http.assert_holds("mirror/app", "v1", &image).await;

    // Existence checks: one HEAD each.
    let target_image = image_ref(&dst.host, "mirror/app:v1");
    assert_eq!(
        transfer
            .manifest_digest(&target_image)
            .await
            .expect("HEAD")
            .map(|d| d.to_string()),
        Some(image.digest.clone())
    );
    assert_eq!(
        transfer
            .manifest_digest(&image_ref(&dst.host, "mirror/app:nope"))
            .await
            .expect("HEAD"),
        None
    );

    // Warm, by tag: one request to the source, one to the target, no writes.
    settle_logs().await;
    let writes_before = dst.count_requests(&["\"PUT "]) + dst.count_requests(&["\"POST "]);
    let requests_before = dst.total_requests() + src.total_requests();
    let warm = transfer
        .copy_image(&image_ref(&src.host, "team/app:v1"), &request)
        .await
        .expect("warm copy");
    assert!(warm.up_to_date);
    assert_eq!(
        (warm.blobs_copied, warm.manifests_copied, warm.bytes_copied),
        (0, 0, 0)
    );
    assert_eq!(warm.requests, 2);
    settle_logs().await;
    assert_eq!(
        dst.total_requests() + src.total_requests() - requests_before,
        2
    );

    // Warm with the digest known: exactly one request, to the target.
    let by_digest = image_ref(&src.host, &format!("team/app:v1@{}", image.digest));
    let warm = transfer
        .copy_image(&by_digest, &request)
        .await
        .expect("warm by digest");
    assert!(warm.up_to_date);
    assert_eq!(warm.requests, 1);
    settle_logs().await;
    let writes_after = dst.count_requests(&["\"PUT "]) + dst.count_requests(&["\"POST "]);
    assert_eq!(writes_before, writes_after, "a warm copy must not write");

    // A fresh engine (no cache) copying again to the same repository only
    // finds what is there.
    let fresh = engine(test_config(), &[&src.host, &dst.host]);
    let again = fresh
        .copy_image(&image_ref(&src.host, "team/app:v1"), &request)
        .await
        .expect("warm copy, fresh engine");
    assert!(again.up_to_date);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_blobs_are_skipped_or_mounted_never_resent() {
    let src = TestRegistry::start_plain();
    let dst = TestRegistry::start_plain();
    let (src_http, dst_http) = (RegistryHttp::new(&src), RegistryHttp::new(&dst));
    let base1 = Blob::random_layer(400_000);
    let base2 = Blob::random_layer(300_000);
    let a = image_manifest(
        &[base1.clone(), base2.clone(), Blob::random_layer(1000)],
        OCI_MANIFEST,
        ("linux", "amd64"),
    );
    let b = image_manifest(
        &[base1.clone(), base2.clone(), Blob::random_layer(2000)],
        OCI_MANIFEST,
        ("linux", "amd64"),
    );
    src_http.push("a", "1", &a).await;
    src_http.push("b", "1", &b).await;
    let transfer = engine(test_config(), &[&src.host, &dst.host]);

    let first = transfer
        .copy_image(
            &image_ref(&src.host, "a:1"),
            &CopyRequest::new(repo(&dst.host, "same")),
        )
        .await
        .expect("copy a");
    assert_eq!(first.blobs_copied, 4);
    // Same target repository: the shared layers are already there.
    let second = transfer
        .copy_image(
            &image_ref(&src.host, "b:1"),
            &CopyRequest::new(repo(&dst.host, "same")).with_tag("b"),
        )
        .await
        .expect("copy b");
    assert_eq!((second.blobs_copied, second.blobs_skipped), (2, 2));
    // Another repository in the same registry: mounted, not re-sent.
    let third = transfer
        .copy_image(
            &image_ref(&src.host, "b:1"),
            &CopyRequest::new(repo(&dst.host, "other")),
        )
        .await
        .expect("copy b elsewhere");
    assert_eq!((third.blobs_copied, third.blobs_mounted), (0, 4));
    assert_eq!(third.bytes_copied, 0);
    dst_http.assert_holds("other", "1", &b).await;
    settle_logs().await;
    assert_eq!(
        dst.count_requests(&["\"PUT ", hex_of(&base1)]),
        1,
        "base layer sent once"
    );

    // Now that this registry has mounted for us, a blob someone else put in
    // the target repository is found by one "mount from itself" request,
    // and new blobs get their upload session from that same request.
    let prefilled = Blob::random_layer(50_000);
    dst_http.push_blob("prefilled", &prefilled).await;
    let c = image_manifest(
        &[prefilled.clone(), Blob::random_layer(3000)],
        OCI_MANIFEST,
        ("linux", "amd64"),
    );
    src_http.push("c", "1", &c).await;
    let fourth = transfer
        .copy_image(
            &image_ref(&src.host, "c:1"),
            &CopyRequest::new(repo(&dst.host, "prefilled")),
        )
        .await
        .expect("copy c");
    assert_eq!((fourth.blobs_skipped, fourth.blobs_copied), (1, 2));
    settle_logs().await;
    assert_eq!(dst.count_requests(&["\"HEAD /v2/prefilled/blobs/"]), 0);
    assert_eq!(
        dst.count_requests(&["\"PUT ", hex_of(&prefilled)]),
        1,
        "only the direct push"
    );
    dst_http.assert_holds("prefilled", "1", &c).await;

    // Source and target in one registry: cross-repository mounts only.
    let within = transfer
        .copy_image(
            &image_ref(&src.host, "a:1"),
            &CopyRequest::new(repo(&src.host, "backup/a")),
        )
        .await
        .expect("copy within one registry");
    assert_eq!((within.blobs_mounted, within.bytes_copied), (4, 0));
    src_http.assert_holds("backup/a", "1", &a).await;
}

fn three_platform_index() -> (Manifest, Vec<Manifest>) {
    let children: Vec<Manifest> = [("linux", "amd64"), ("linux", "arm64"), ("linux", "s390x")]
        .iter()
        .map(|platform| image_manifest(&[Blob::random_layer(50_000)], OCI_MANIFEST, *platform))
        .collect();
    let index = index_manifest(
        &[
            (children[0].clone(), "linux", "amd64"),
            (children[1].clone(), "linux", "arm64"),
            (children[2].clone(), "linux", "s390x"),
        ],
        OCI_INDEX,
    );
    (index, children)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_index_is_copied_whole_or_filtered_with_new_digest() {
    let src = TestRegistry::start_plain();
    let dst = TestRegistry::start_plain();
    let (src_http, dst_http) = (RegistryHttp::new(&src), RegistryHttp::new(&dst));
    let (index, children) = three_platform_index();
    src_http.push("multi", "v1", &index).await;
    let transfer = engine(test_config(), &[&src.host, &dst.host]);

    let whole = transfer
        .copy_image(
            &image_ref(&src.host, "multi:v1"),
            &CopyRequest::new(repo(&dst.host, "whole")),
        )
        .await
        .expect("whole index");
    assert_eq!(whole.digest.as_str(), index.digest);
    assert!(!whole.index_digest_changed);
    assert_eq!((whole.manifests_copied, whole.blobs_copied), (4, 6));
    dst_http.assert_holds("whole", "v1", &index).await;

    let arm = Platform::parse("linux/arm64").expect("platform");
    let filtered = transfer
        .copy_image(
            &image_ref(&src.host, "multi:v1"),
            &CopyRequest::new(repo(&dst.host, "arm")).with_platforms(vec![arm.clone()]),
        )
        .await
        .expect("filtered index");
    assert!(filtered.index_digest_changed);
    assert_eq!(filtered.source_digest.as_str(), index.digest);
    assert_ne!(filtered.digest.as_str(), index.digest);
    assert_eq!(filtered.manifests_copied, 2);
    let (bytes, _) = dst_http
        .manifest("arm", "v1")
        .await
        .expect("filtered index pushed");
    assert_eq!(support::images::sha256(&bytes), filtered.digest.as_str());
    let document: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    let entries = document["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["digest"], children[1].digest.as_str());
    dst_http
        .assert_holds("arm", &children[1].digest, &children[1])
        .await;
    assert!(
        dst_http
            .manifest("arm", &children[0].digest)
            .await
            .is_none()
    );

    // Warm filtered copy: nothing written again.
    let again = transfer
        .copy_image(
            &image_ref(&src.host, "multi:v1"),
            &CopyRequest::new(repo(&dst.host, "arm")).with_platforms(vec![arm]),
        )
        .await
        .expect("warm filtered");
    assert!(again.up_to_date && again.index_digest_changed);

    // A Docker manifest list of Docker manifests, carried the same way.
    let docker_children: Vec<Manifest> = [("linux", "amd64"), ("linux", "arm")]
        .iter()
        .map(|platform| image_manifest(&[Blob::random_layer(20_000)], DOCKER_MANIFEST, *platform))
        .collect();
    let list = index_manifest(
        &[
            (docker_children[0].clone(), "linux", "amd64"),
            (docker_children[1].clone(), "linux", "arm"),
        ],
        support::images::DOCKER_LIST,
    );
    src_http.push("dockerlist", "v1", &list).await;
    let copied = transfer
        .copy_image(
            &image_ref(&src.host, "dockerlist:v1"),
            &CopyRequest::new(repo(&dst.host, "dockerlist")),
        )
        .await
        .expect("docker manifest list");
    assert_eq!(copied.digest.as_str(), list.digest);
    dst_http.assert_holds("dockerlist", "v1", &list).await;

    let none = transfer
        .copy_image(
            &image_ref(&src.host, "multi:v1"),
            &CopyRequest::new(repo(&dst.host, "none"))
                .with_platforms(vec![Platform::parse("windows/amd64").expect("platform")]),
        )
        .await
        .expect_err("no platform matches");
    assert_eq!(none.reason(), "NoMatchingPlatform");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_reference_gets_deterministic_tag_and_artifacts_copy_unchanged() {
    let src = TestRegistry::start_plain();
    let dst = TestRegistry::start_plain();
    let (src_http, dst_http) = (RegistryHttp::new(&src), RegistryHttp::new(&dst));
    let artifact = artifact_manifest(&Blob::new(
        random_bytes(10_000),
        "application/vnd.example.thing.payload",
    ));
    src_http.push("things", &artifact.digest, &artifact).await;
    let transfer = engine(test_config(), &[&src.host, &dst.host]);

    let source = image_ref(&src.host, &format!("things@{}", artifact.digest));
    let report = transfer
        .copy_image(&source, &CopyRequest::new(repo(&dst.host, "things")))
        .await
        .expect("digest copy");
    let expected_tag = format!(
        "lifeboat-sha256-{}",
        artifact.digest.trim_start_matches("sha256:")
    );
    assert_eq!(report.tag, expected_tag);
    assert_eq!(report.tag, deterministic_tag(&report.digest));
    dst_http
        .assert_holds("things", &expected_tag, &artifact)
        .await;
    dst_http
        .assert_holds("things", &artifact.digest, &artifact)
        .await;

    let again = transfer
        .copy_image(&source, &CopyRequest::new(repo(&dst.host, "things")))
        .await
        .expect("digest copy again");
    assert!(again.up_to_date);
    assert_eq!(again.requests, 1);

    let missing = transfer
        .copy_image(
            &image_ref(&src.host, "things:nope"),
            &CopyRequest::new(repo(&dst.host, "things")),
        )
        .await
        .expect_err("missing source");
    assert_eq!(missing.reason(), "SourceNotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_tag_is_refused_unless_allowed() {
    let src = TestRegistry::start_plain();
    let dst = TestRegistry::start_plain();
    let (src_http, dst_http) = (RegistryHttp::new(&src), RegistryHttp::new(&dst));
    let old = docker_image(&[Blob::random_layer(10_000)]);
    let new = docker_image(&[Blob::random_layer(10_000)]);
    src_http.push("app", "stable", &old).await;
    let transfer = engine(test_config(), &[&src.host, &dst.host]);
    let request = CopyRequest::new(repo(&dst.host, "app"));
    transfer
        .copy_image(&image_ref(&src.host, "app:stable"), &request)
        .await
        .expect("first copy");

    src_http.push("app", "stable", &new).await;
    let conflict = transfer
        .copy_image(&image_ref(&src.host, "app:stable"), &request)
        .await
        .expect_err("moved tag");
    assert_eq!(conflict.reason(), "TagConflict");
    assert!(
        matches!(conflict, TransferError::TagConflict { ref existing, .. } if existing == &old.digest)
    );
    dst_http.assert_holds("app", "stable", &old).await;

    let moved = transfer
        .copy_image(
            &image_ref(&src.host, "app:stable"),
            &request.clone().allowing_tag_move(true),
        )
        .await
        .expect("allowed move");
    assert_eq!(moved.digest.as_str(), new.digest);
    dst_http.assert_holds("app", "stable", &new).await;
}

/// A copy by digest under the deterministic tag that also points the
/// source's tag at it: both tags set in one copy (one extra PUT), the tag
/// moved back where it pointed elsewhere, and a warm copy that finds both
/// in place asks two HEADs and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_tag_is_set_and_moved_with_the_copy() {
    let src = TestRegistry::start_plain();
    let dst = TestRegistry::start_plain();
    let (src_http, dst_http) = (RegistryHttp::new(&src), RegistryHttp::new(&dst));
    let image = docker_image(&[Blob::random_layer(10_000)]);
    let other = docker_image(&[Blob::random_layer(10_000)]);
    src_http.push("app", "1.0", &image).await;
    let transfer = engine(test_config(), &[&src.host, &dst.host]);
    let source = image_ref(&src.host, &format!("app@{}", image.digest));
    let digest_tag = format!(
        "lifeboat-sha256-{}",
        image.digest.trim_start_matches("sha256:")
    );
    let request = CopyRequest::new(repo(&dst.host, "app"))
        .with_tag(digest_tag.clone())
        .also_tagging("1.0");

    let cold = transfer
        .copy_image(&source, &request)
        .await
        .expect("cold copy");
    assert!(!cold.up_to_date);
    assert_eq!(cold.tag, digest_tag);
    dst_http.assert_holds("app", &digest_tag, &image).await;
    dst_http.assert_holds("app", "1.0", &image).await;

    let warm = transfer
        .copy_image(&source, &request)
        .await
        .expect("warm copy");
    assert!(warm.up_to_date, "both tags in place: nothing written");
    assert_eq!(warm.requests, 2, "one HEAD per tag");

    // Someone pointed the tag at another image: the copy moves it back
    // (reading the manifest from the source) and says it wrote.
    dst_http.push("app", "1.0", &other).await;
    let moved = transfer
        .copy_image(&source, &request)
        .await
        .expect("tag moved back");
    assert!(!moved.up_to_date);
    dst_http.assert_holds("app", "1.0", &image).await;
    dst_http.assert_holds("app", &digest_tag, &image).await;

    let invalid = transfer
        .copy_image(&source, &request.clone().also_tagging("not a tag"))
        .await
        .expect_err("invalid second tag");
    assert_eq!(invalid.reason(), "InvalidReference");
}

/// Nothing of `image` beyond what is listed in `allowed` may be in `dst`.
async fn assert_nothing_committed(
    dst: &TestRegistry,
    repository: &str,
    image: &Manifest,
    layer: &Blob,
) {
    let dst_http = RegistryHttp::new(dst);
    assert!(!dst.blob_stored(&layer.digest), "corrupt blob data stored");
    assert!(!dst_http.blob_exists(repository, &layer.digest).await);
    assert!(dst_http.manifest(repository, "v1").await.is_none());
    assert!(dst_http.manifest(repository, &image.digest).await.is_none());
    // Sessions of sibling uploads cut short by the failure are deleted in
    // the background: give that a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    while dst.open_uploads(repository) != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        dst.open_uploads(repository),
        0,
        "upload sessions left behind in {repository}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_aborts_and_nothing_is_committed() {
    let src = TestRegistry::start_plain();
    let dst = TestRegistry::start_plain();
    let src_http = RegistryHttp::new(&src);
    let layer = Blob::random_layer(1_000_000);
    let image = docker_image(std::slice::from_ref(&layer));
    src_http.push("app", "v1", &image).await;

    // Verified in memory before one PUT, and streamed through PATCH chunks.
    for (label, buffered_blob_max) in [("buffered", 2 << 20), ("streamed", 64 << 10)] {
        let proxy = BrokenProxy::start(
            src.port,
            Fault::FlipByte {
                path: layer.digest.clone(),
                offset: 999_000,
            },
        )
        .await;
        let config = TransferConfig {
            chunk_size: 256 << 10,
            buffered_blob_max,
            ..test_config()
        };
        let transfer = engine(config, &[&proxy.host, &dst.host]);
        let target = format!("corrupt/{}", label.replace(' ', "-").to_lowercase());
        let error = transfer
            .copy_image(
                &image_ref(&proxy.host, "app:v1"),
                &CopyRequest::new(repo(&dst.host, &target)),
            )
            .await
            .expect_err(label);
        assert_eq!(error.reason(), "DigestMismatch", "{label}: {error}");
        assert!(!error.is_transient());
        let gets = proxy
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET ") && r.contains(&layer.digest))
            .count();
        assert_eq!(gets, 1, "{label}: a digest mismatch must not be retried");
        assert_nothing_committed(&dst, &target, &image, &layer).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_mid_blob_resumes_or_fails_cleanly() {
    let src = TestRegistry::start_plain();
    let dst = TestRegistry::start_plain();
    let (src_http, dst_http) = (RegistryHttp::new(&src), RegistryHttp::new(&dst));
    let layer = Blob::random_layer(1_000_000);
    let image = docker_image(std::slice::from_ref(&layer));
    src_http.push("app", "v1", &image).await;
    let streamed = TransferConfig {
        chunk_size: 256 << 10,
        buffered_blob_max: 64 << 10,
        ..test_config()
    };

    // Dropped once after 600 kB: the PATCH in flight ends cleanly there,
    // and the source is re-read from that offset with Range.
    let proxy = BrokenProxy::start(
        src.port,
        Fault::DropAfter {
            path: layer.digest.clone(),
            bytes: 600_000,
            times: 1,
        },
    )
    .await;
    let transfer = engine(streamed.clone(), &[&proxy.host, &dst.host]);
    let report = transfer
        .copy_image(
            &image_ref(&proxy.host, "app:v1"),
            &CopyRequest::new(repo(&dst.host, "resumed")),
        )
        .await
        .expect("copy after one drop");
    assert_eq!(proxy.faults_injected(), 1);
    dst_http.assert_holds("resumed", "v1", &image).await;
    let ranged = proxy
        .heads()
        .iter()
        .filter(|h| h.starts_with("GET ") && h.contains(&layer.digest))
        .filter(|h| h.to_ascii_lowercase().contains("range: bytes=600000-"))
        .count();
    assert_eq!(
        ranged,
        1,
        "resumed where the drop happened: {:?}",
        proxy.heads()
    );
    assert_eq!(
        report.bytes_copied,
        image.blobs.iter().map(|b| b.data.len() as u64).sum::<u64>()
    );

    // Buffered, dropped once: read again from scratch, still exact.
    let proxy = BrokenProxy::start(
        src.port,
        Fault::DropAfter {
            path: layer.digest.clone(),
            bytes: 500_000,
            times: 1,
        },
    )
    .await;
    let buffered = TransferConfig {
        buffered_blob_max: 2 << 20,
        ..test_config()
    };
    let transfer = engine(buffered, &[&proxy.host, &dst.host]);
    transfer
        .copy_image(
            &image_ref(&proxy.host, "app:v1"),
            &CopyRequest::new(repo(&dst.host, "restarted")),
        )
        .await
        .expect("copy after one drop, unchunked");
    dst_http.assert_holds("restarted", "v1", &image).await;

    // Dropped every 100 kB: each resume makes progress, so it finishes.
    let proxy = BrokenProxy::start(
        src.port,
        Fault::DropAfter {
            path: layer.digest.clone(),
            bytes: 100_000,
            times: 1000,
        },
    )
    .await;
    let transfer = engine(streamed.clone(), &[&proxy.host, &dst.host]);
    transfer
        .copy_image(
            &image_ref(&proxy.host, "app:v1"),
            &CopyRequest::new(repo(&dst.host, "flaky")),
        )
        .await
        .expect("copy through a flaky but advancing source");
    assert_eq!(proxy.faults_injected(), 10);
    dst_http.assert_holds("flaky", "v1", &image).await;

    // Dropped before any byte, every time: a clean, typed failure after
    // the retry budget, nothing committed.
    let fresh_dst = TestRegistry::start_plain();
    let proxy = BrokenProxy::start(
        src.port,
        Fault::DropAfter {
            path: layer.digest.clone(),
            bytes: 0,
            times: 1000,
        },
    )
    .await;
    let transfer = engine(streamed, &[&proxy.host, &fresh_dst.host]);
    let error = transfer
        .copy_image(
            &image_ref(&proxy.host, "app:v1"),
            &CopyRequest::new(repo(&fresh_dst.host, "broken")),
        )
        .await
        .expect_err("always dropped");
    assert_eq!(error.reason(), "TransferInterrupted", "{error}");
    assert_eq!(
        proxy.faults_injected(),
        quick_retries().max_attempts as usize
    );
    assert_nothing_committed(&fresh_dst, "broken", &image, &layer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_is_honoured_with_retry_after() {
    let src = TestRegistry::start_plain();
    let dst = TestRegistry::start_plain();
    let (src_http, dst_http) = (RegistryHttp::new(&src), RegistryHttp::new(&dst));
    let image = docker_image(&[Blob::random_layer(10_000)]);
    src_http.push("app", "v1", &image).await;
    let proxy = BrokenProxy::start(
        src.port,
        Fault::TooManyRequests {
            times: 2,
            retry_after_secs: 1,
        },
    )
    .await;
    let transfer = engine(test_config(), &[&proxy.host, &dst.host]);
    let started = Instant::now();
    transfer
        .copy_image(
            &image_ref(&proxy.host, "app:v1"),
            &CopyRequest::new(repo(&dst.host, "app")),
        )
        .await
        .expect("copy through 429s");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After not honoured"
    );
    assert_eq!(proxy.faults_injected(), 2);
    dst_http.assert_holds("app", "v1", &image).await;

    // A registry that never stops saying 429 yields RateLimited.
    let proxy = BrokenProxy::start(
        src.port,
        Fault::TooManyRequests {
            times: 1000,
            retry_after_secs: 0,
        },
    )
    .await;
    let transfer = engine(test_config(), &[&proxy.host, &dst.host]);
    let error = transfer
        .copy_image(
            &image_ref(&proxy.host, "app:v1"),
            &CopyRequest::new(repo(&dst.host, "app2")),
        )
        .await
        .expect_err("always 429");
    assert_eq!(error.reason(), "RateLimited");
    assert_eq!(
        proxy.requests().len(),
        quick_retries().max_attempts as usize
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_and_tls_with_test_ca() {
    let src = TestRegistry::start_plain();
    let dst = TestRegistry::start(RegistryOptions {
        basic_auth: Some(("backup".into(), "s3cret-Pa55".into())),
        tls: true,
        ..RegistryOptions::default()
    });
    let (src_http, dst_http) = (RegistryHttp::new(&src), RegistryHttp::new(&dst));
    let image = docker_image(&[Blob::random_layer(100_000)]);
    src_http.push("app", "v1", &image).await;
    let ca = dst.ca_pem.clone().expect("test CA");
    registry_transfer::install_crypto_provider();

    let docker_config = |password: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("backup:{password}"));
        DockerConfig::parse(
            format!(
                r#"{{"auths":{{"https://{}/":{{"auth":"{auth}"}}}}}}"#,
                dst.host
            )
            .as_bytes(),
        )
        .expect("docker config")
    };
    let settings = RegistrySettings::new()
        .allow_plain_http(&src.host)
        .with_ca_bundle(&dst.host, ca.clone())
        .with_docker_config(docker_config("s3cret-Pa55"));
    let transfer = Transfer::new(test_config(), settings);
    assert!(!format!("{transfer:?}").contains("s3cret-Pa55"));
    let request = CopyRequest::new(repo(&dst.host, "secure/app"));
    transfer
        .copy_image(&image_ref(&src.host, "app:v1"), &request)
        .await
        .expect("copy with basic auth over TLS");
    dst_http.assert_holds("secure/app", "v1", &image).await;

    // Many first requests at once, before anyone knows the registry wants
    // basic auth: every one of them learns it and succeeds.
    let fresh = Transfer::new(
        test_config(),
        RegistrySettings::new()
            .with_ca_bundle(&dst.host, ca.clone())
            .with_docker_config(docker_config("s3cret-Pa55")),
    );
    let target_image = image_ref(&dst.host, "secure/app:v1");
    let heads =
        futures::future::join_all((0..16).map(|_| fresh.manifest_digest(&target_image))).await;
    for head in heads {
        assert_eq!(
            head.expect("concurrent first requests")
                .map(|d| d.to_string()),
            Some(image.digest.clone())
        );
    }

    // Reached at an address (a tunnel's local port) and checked for the
    // name given instead: the certificate names localhost, so that name
    // passes and any other fails the handshake.
    let checked_as = |name: &str| {
        Transfer::new(
            test_config(),
            RegistrySettings::new()
                .with_ca_bundle(&dst.host, ca.clone())
                .with_docker_config(docker_config("s3cret-Pa55"))
                .verify_tls_as(&dst.host, name),
        )
    };
    let head = checked_as("localhost")
        .manifest_digest(&target_image)
        .await
        .expect("the certificate names localhost");
    assert_eq!(head.map(|d| d.to_string()), Some(image.digest.clone()));
    let error = checked_as("registry.elsewhere.example")
        .manifest_digest(&target_image)
        .await
        .expect_err("the certificate does not name it");
    assert_eq!(error.reason(), "TlsError", "{error}");

    let wrong = Transfer::new(
        test_config(),
        RegistrySettings::new()
            .allow_plain_http(&src.host)
            .with_ca_bundle(&dst.host, ca)
            .with_docker_config(docker_config("wrong-password")),
    );
    let error = wrong
        .copy_image(
            &image_ref(&src.host, "app:v1"),
            &CopyRequest::new(repo(&dst.host, "secure/other")),
        )
        .await
        .expect_err("wrong password");
    assert_eq!(error.reason(), "Unauthorized");
    assert!(!format!("{error} {error:?}").contains("wrong-password"));

    let untrusted = Transfer::new(
        test_config(),
        RegistrySettings::new()
            .allow_plain_http(&src.host)
            .with_docker_config(docker_config("s3cret-Pa55")),
    );
    let error = untrusted
        .copy_image(
            &image_ref(&src.host, "app:v1"),
            &CopyRequest::new(repo(&dst.host, "secure/other")),
        )
        .await
        .expect_err("no CA");
    assert_eq!(error.reason(), "TlsError", "{error}");

    // Plain HTTP is never used unless allowed.
    let no_plain = Transfer::new(test_config(), RegistrySettings::new());
    let error = no_plain
        .copy_image(
            &image_ref(&src.host, "app:v1"),
            &CopyRequest::new(repo(&src.host, "x")),
        )
        .await
        .expect_err("plain HTTP not allowed");
    assert!(
        matches!(error.reason(), "TlsError" | "RegistryUnavailable"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_copies_share_one_base_layer_transfer() {
    let src = TestRegistry::start_plain();
    let dst = TestRegistry::start_plain();
    let (src_http, dst_http) = (RegistryHttp::new(&src), RegistryHttp::new(&dst));
    let base = Blob::random_layer(4 << 20);
    let mut images = Vec::new();
    for i in 0..50 {
        let image = image_manifest(
            &[base.clone(), Blob::random_layer(20_000)],
            OCI_MANIFEST,
            ("linux", "amd64"),
        );
        src_http.push(&format!("img{i}"), "v1", &image).await;
        images.push(image);
    }
    let transfer = engine(test_config(), &[&src.host, &dst.host]);
    let copies = (0..50).map(|i| {
        let transfer = transfer.clone();
        let source = image_ref(&src.host, &format!("img{i}:v1"));
        let request = CopyRequest::new(repo(&dst.host, &format!("backup/img{i}")));
        async move { transfer.copy_image(&source, &request).await }
    });
    let reports = futures::future::join_all(copies).await;
    let reports: Vec<_> = reports
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("all copies");
    let total_bytes: u64 = reports.iter().map(|r| r.bytes_copied).sum();
    let mounted: u32 = reports.iter().map(|r| r.blobs_mounted).sum();
    settle_logs().await;
    assert_eq!(
        dst.count_requests(&["\"PUT ", hex_of(&base)]),
        1,
        "base layer uploaded once"
    );
    assert_eq!(dst.count_requests(&["\"GET ", hex_of(&base)]), 0);
    assert_eq!(
        src.count_requests(&["\"GET ", hex_of(&base)]),
        1,
        "base layer read once"
    );
    assert_eq!(mounted, 49);
    assert!(
        total_bytes < base.data.len() as u64 + 50 * 30_000,
        "{total_bytes}"
    );
    for (i, image) in images.iter().enumerate() {
        dst_http
            .assert_holds(&format!("backup/img{i}"), "v1", image)
            .await;
    }
}
