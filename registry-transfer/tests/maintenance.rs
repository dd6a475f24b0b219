//! Listing tags, reading creation times and deleting manifests, against
//! real `docker-registry` processes on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine as _;
use registry_transfer::{
    DockerConfig, RegistrySettings, RepositoryRef, Transfer, TransferConfig, TransferError,
    deterministic_tag,
};
use support::images::{Blob, OCI_INDEX, RegistryHttp, dated_image_manifest, index_manifest};
use support::registry::{RegistryOptions, TestRegistry};

fn plain_engine(host: &str) -> Transfer {
    registry_transfer::install_crypto_provider();
    Transfer::new(
        TransferConfig::default(),
        RegistrySettings::new().allow_plain_http(host),
    )
}

fn digest(manifest: &support::images::Manifest) -> registry_transfer::Digest {
    registry_transfer::Digest::parse(&manifest.digest).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_creation_times_and_deletes_by_digest() {
    let registry = TestRegistry::start_plain();
    let http = RegistryHttp::new(&registry);
    let shared = Blob::random_layer(10_000);
    let old = dated_image_manifest(std::slice::from_ref(&shared), "2020-01-02T03:04:05Z");
    let new = dated_image_manifest(std::slice::from_ref(&shared), "2026-06-07T08:09:10.5Z");
    let old_tag = deterministic_tag(&digest(&old));
    let new_tag = deterministic_tag(&digest(&new));
    http.push("team/app", &old_tag, &old).await;
    http.push("team/app", "1.0", &old).await;
    http.push("team/app", &new_tag, &new).await;
    let engine = plain_engine(&registry.host);
    let repository = RepositoryRef::new(registry.host.clone(), "team/app");

    let mut want = vec![old_tag.clone(), new_tag.clone(), "1.0".to_owned()];
    want.sort();
    assert_eq!(engine.list_tags(&repository).await.unwrap(), want);
    // A repository the registry does not know has no tags (not an error).
    assert!(
        engine
            .list_tags(&RepositoryRef::new(registry.host.clone(), "team/none"))
            .await
            .unwrap()
            .is_empty()
    );

    let by_tag =
        registry_transfer::reference::parse_image(&format!("{}/team/app:{old_tag}", registry.host))
            .unwrap();
    let summary = engine.manifest_summary(&by_tag).await.unwrap().unwrap();
    assert_eq!(summary.digest, digest(&old));
    assert_eq!(summary.created.as_deref(), Some("2020-01-02T03:04:05Z"));
    let by_digest = registry_transfer::reference::parse_image(&format!(
        "{}/team/app@{}",
        registry.host, new.digest
    ))
    .unwrap();
    let summary = engine.manifest_summary(&by_digest).await.unwrap().unwrap();
    assert_eq!(summary.created.as_deref(), Some("2026-06-07T08:09:10.5Z"));
    let absent =
        registry_transfer::reference::parse_image(&format!("{}/team/app:nope", registry.host))
            .unwrap();
    assert_eq!(engine.manifest_summary(&absent).await.unwrap(), None);

    // Deleting the old digest takes its tags with it and leaves the new one.
    assert!(
        engine
            .delete_manifest(&repository, &digest(&old))
            .await
            .unwrap()
    );
    assert_eq!(
        engine.list_tags(&repository).await.unwrap(),
        vec![new_tag.clone()]
    );
    assert!(http.manifest("team/app", &old.digest).await.is_none());
    http.assert_holds("team/app", &new_tag, &new).await;
    // Deleting what is not there says so.
    assert!(
        !engine
            .delete_manifest(&repository, &digest(&old))
            .await
            .unwrap()
    );
    // The shared layer is still served for the image that uses it.
    assert!(http.blob_exists("team/app", &shared.digest).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_is_dated_by_its_platform_image() {
    let registry = TestRegistry::start_plain();
    let http = RegistryHttp::new(&registry);
    let amd64 = dated_image_manifest(&[Blob::random_layer(1_000)], "2025-03-04T05:06:07Z");
    let arm64 = dated_image_manifest(&[Blob::random_layer(1_000)], "2024-01-01T00:00:00Z");
    let index = index_manifest(
        &[(amd64, "linux", "amd64"), (arm64, "linux", "arm64")],
        OCI_INDEX,
    );
    http.push("multi", "1", &index).await;
    let engine = plain_engine(&registry.host);
    let summary = engine
        .manifest_summary(
            &registry_transfer::reference::parse_image(&format!("{}/multi:1", registry.host))
                .unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.digest, digest(&index));
    assert_eq!(summary.media_type, OCI_INDEX);
    assert_eq!(summary.created.as_deref(), Some("2025-03-04T05:06:07Z"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_need_credentials_over_tls_with_basic_auth() {
    let registry = TestRegistry::start(RegistryOptions {
        basic_auth: Some(("keeper".into(), "Pa55-word".into())),
        tls: true,
        ..RegistryOptions::default()
    });
    let http = RegistryHttp::new(&registry);
    let image = dated_image_manifest(&[Blob::random_layer(1_000)], "2026-01-01T00:00:00Z");
    http.push("private/app", "v1", &image).await;
    registry_transfer::install_crypto_provider();
    let ca = registry.ca_pem.clone().unwrap();
    let config = |password: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("keeper:{password}"));
        DockerConfig::parse(
            format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.host).as_bytes(),
        )
        .unwrap()
    };
    let repository = RepositoryRef::new(registry.host.clone(), "private/app");

    let wrong = Transfer::new(
        TransferConfig::default(),
        RegistrySettings::new()
            .with_ca_bundle(&registry.host, ca.clone())
            .with_docker_config(config("wrong")),
    );
    let error = wrong
        .delete_manifest(&repository, &digest(&image))
        .await
        .unwrap_err();
    assert!(
        matches!(error, TransferError::Unauthorized { .. }),
        "{error:?}"
    );
    assert!(http.manifest("private/app", "v1").await.is_some());

    let right = Transfer::new(
        TransferConfig::default(),
        RegistrySettings::new()
            .with_ca_bundle(&registry.host, ca)
            .with_docker_config(config("Pa55-word")),
    );
    assert_eq!(right.list_tags(&repository).await.unwrap(), vec!["v1"]);
    assert!(
        right
            .delete_manifest(&repository, &digest(&image))
            .await
            .unwrap()
    );
    assert!(http.manifest("private/app", "v1").await.is_none());
}
