//! Signatures, SBOMs and attestations travel with the images they describe:
//! the engine against real registries, with and without the OCI 1.1
//! referrers API (oci-registry; distribution 2.8), each as source and as
//! target, and the artifacts made by the real tools (`oras attach`,
//! `cosign sign`, `cosign attest`), checked at the target by the same
//! tools (`oras discover`, `cosign verify`, `cosign verify-attestation`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use registry_transfer::{
    CopyReport, CopyRequest, ImageReference, Platform, ReferrerScheme, ReferrersPolicy,
    RegistrySettings, RepositoryRef, Transfer, TransferConfig,
};
use support::images::{
    Blob, Manifest, OCI_INDEX, OCI_MANIFEST, RegistryHttp, image_manifest, sha256,
};
use support::registry::{TempDir, TestRegistry};
use support::tools::run;

const SBOM: &str = "application/spdx+json";
const SIGNATURE: &str = "application/vnd.example.signature";

fn engine(hosts: &[&TestRegistry]) -> Transfer {
    registry_transfer::install_crypto_provider();
    let settings = hosts
        .iter()
        .fold(RegistrySettings::new(), |s, r| s.allow_plain_http(&r.host));
    Transfer::new(TransferConfig::default(), settings)
}

fn image_ref(registry: &TestRegistry, path: &str) -> ImageReference {
    registry_transfer::reference::parse_image(&format!("{}/{path}", registry.host)).unwrap()
}

fn start(api: bool) -> TestRegistry {
    if api {
        TestRegistry::start_with_referrers_api()
    } else {
        TestRegistry::start_plain()
    }
}

/// Pushes a small single-platform image as `repository:tag`.
async fn push_image(registry: &TestRegistry, repository: &str, tag: &str) -> Manifest {
    let image = image_manifest(
        &[Blob::random_layer(20_000)],
        OCI_MANIFEST,
        ("linux", "amd64"),
    );
    RegistryHttp::new(registry)
        .push(repository, tag, &image)
        .await;
    image
}

/// `oras attach`: an artifact of `artifact_type` whose subject is
/// `subject`; returns its digest.
fn oras_attach(
    registry: &TestRegistry,
    repository: &str,
    subject: &str,
    artifact_type: &str,
    dir: &TempDir,
) -> String {
    let file = format!("payload-{}.json", &sha256(artifact_type.as_bytes())[7..19]);
    std::fs::write(
        dir.path().join(&file),
        format!(r#"{{"about":"{subject}","type":"{artifact_type}"}}"#),
    )
    .unwrap();
    let reference = format!("{}/{repository}@{subject}", registry.host);
    let out = run(
        "oras",
        &[
            "attach",
            "--plain-http",
            "--artifact-type",
            artifact_type,
            "--format",
            "json",
            &reference,
            &format!("{file}:application/json"),
        ],
        dir.path(),
        &[],
    );
    let answer: serde_json::Value = serde_json::from_str(&out).expect("oras attach json");
    answer["digest"].as_str().expect("digest").to_owned()
}

/// `oras discover`: the digests of the referrers of `subject` at a
/// registry, as the real tool finds them (API or fallback tag).
fn oras_discover(registry: &TestRegistry, repository: &str, subject: &str) -> Vec<String> {
    let dir = TempDir::new("oras-discover");
    let reference = format!("{}/{repository}@{subject}", registry.host);
    let out = run(
        "oras",
        &["discover", "--plain-http", "--format", "json", &reference],
        dir.path(),
        &[],
    );
    let answer: serde_json::Value = serde_json::from_str(&out).expect("oras discover json");
    let mut digests: Vec<String> = answer["referrers"]
        .as_array()
        .or_else(|| answer["manifests"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|m| m["digest"].as_str().map(str::to_owned))
        .collect();
    digests.sort();
    digests
}

/// The referrers a registry lists for `subject` through its API (`None`:
/// no API) and through the fallback tag index (`None`: no such tag).
async fn listed(
    registry: &TestRegistry,
    repository: &str,
    subject: &str,
) -> (Option<Vec<String>>, Option<Vec<String>>) {
    let digests = |bytes: &[u8]| {
        let index: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let mut d: Vec<String> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["digest"].as_str().unwrap().to_owned())
            .collect();
        d.sort();
        d
    };
    let url = format!(
        "{}/v2/{repository}/referrers/{subject}",
        registry.base_url()
    );
    let response = reqwest::get(&url).await.unwrap();
    let api = if response.status().is_success() {
        Some(digests(&response.bytes().await.unwrap()))
    } else {
        None
    };
    let tag = subject.replacen(':', "-", 1);
    let fallback = RegistryHttp::new(registry)
        .manifest(repository, &tag)
        .await
        .map(|(bytes, _)| digests(&bytes));
    (api, fallback)
}

async fn copy_with(
    transfer: &Transfer,
    source: &TestRegistry,
    target: &TestRegistry,
    policy: ReferrersPolicy,
) -> CopyReport {
    transfer
        .copy_image(
            &image_ref(source, "app:v1"),
            &CopyRequest::new(RepositoryRef::new(&target.host, "backup/app"))
                .with_referrers(policy),
        )
        .await
        .expect("copy")
}

/// An image with an SBOM, and a signature on that SBOM, attached by
/// `oras attach` at the source, copied with its referrers: both arrive
/// byte-exact, are listed at the target the way the target lists them
/// (its API, or the fallback tag index it lacks), `oras discover` finds
/// them there, and a second copy writes nothing.
async fn referrers_travel(source_api: bool, target_api: bool) {
    let source = start(source_api);
    let target = start(target_api);
    let dir = TempDir::new("oras");
    let image = push_image(&source, "app", "v1").await;
    let sbom = oras_attach(&source, "app", &image.digest, SBOM, &dir);
    let signature = oras_attach(&source, "app", &sbom, SIGNATURE, &dir);
    let transfer = engine(&[&source, &target]);

    let report = copy_with(&transfer, &source, &target, ReferrersPolicy::All).await;
    assert_eq!(report.digest.as_str(), image.digest);
    let brought: Vec<(String, String, usize, bool)> = report
        .referrers
        .iter()
        .map(|r| {
            (
                r.digest.to_string(),
                r.subject.to_string(),
                r.depth,
                r.already_there,
            )
        })
        .collect();
    assert_eq!(
        brought,
        vec![
            (sbom.clone(), image.digest.clone(), 1, false),
            (signature.clone(), sbom.clone(), 2, false)
        ]
    );
    assert_eq!(report.referrers[0].artifact_type.as_deref(), Some(SBOM));
    assert_eq!(report.referrers[0].scheme, ReferrerScheme::Subject);

    let source_http = RegistryHttp::new(&source);
    let target_http = RegistryHttp::new(&target);
    for digest in [&sbom, &signature] {
        let at_source = source_http.manifest("app", digest).await.unwrap();
        let at_target = target_http.manifest("backup/app", digest).await;
        assert_eq!(at_target.map(|m| m.0), Some(at_source.0), "{digest}");
    }

    let (api, fallback) = listed(&target, "backup/app", &image.digest).await;
    if target_api {
        assert_eq!(api, Some(vec![sbom.clone()]));
        assert_eq!(fallback, None, "a target with the API gets no fallback tag");
    } else {
        assert_eq!(api, None);
        assert_eq!(fallback, Some(vec![sbom.clone()]));
    }
    assert_eq!(
        oras_discover(&target, "backup/app", &image.digest),
        vec![sbom.clone()]
    );
    assert_eq!(
        oras_discover(&target, "backup/app", &sbom),
        vec![signature.clone()]
    );

    let warm = copy_with(&transfer, &source, &target, ReferrersPolicy::All).await;
    assert!(warm.up_to_date);
    assert_eq!(warm.referrers.len(), 2);
    assert!(warm.referrers.iter().all(|r| r.already_there), "{warm:?}");
    assert_eq!(warm.manifests_copied, 0);
    assert_eq!(warm.blobs_copied, 0);
    println!(
        "api {source_api} -> {target_api}: warm copy with 2 referrers: {} requests",
        warm.requests
    );
}

#[tokio::test]
async fn referrers_travel_from_a_registry_with_the_api_to_one_with_it() {
    referrers_travel(true, true).await;
}

#[tokio::test]
async fn referrers_travel_from_a_registry_with_the_api_to_one_without() {
    referrers_travel(true, false).await;
}

#[tokio::test]
async fn referrers_travel_from_a_registry_without_the_api_to_one_with_it() {
    referrers_travel(false, true).await;
}

#[tokio::test]
async fn referrers_travel_from_a_registry_without_the_api_to_one_without() {
    referrers_travel(false, false).await;
}

#[tokio::test]
async fn the_fallback_tag_index_at_the_target_is_merged_with_what_it_lists() {
    let source = TestRegistry::start_plain();
    let target = TestRegistry::start_plain();
    let dir = TempDir::new("oras");
    let image = push_image(&source, "app", "v1").await;
    let sbom = oras_attach(&source, "app", &image.digest, SBOM, &dir);
    let transfer = engine(&[&source, &target]);
    // The image is at the target already, with a referrer of its own.
    transfer
        .copy_image(
            &image_ref(&source, "app:v1"),
            &CopyRequest::new(RepositoryRef::new(&target.host, "backup/app")),
        )
        .await
        .unwrap();
    let theirs = oras_attach(&target, "backup/app", &image.digest, SIGNATURE, &dir);

    copy_with(&transfer, &source, &target, ReferrersPolicy::All).await;
    let (_, fallback) = listed(&target, "backup/app", &image.digest).await;
    let mut both = vec![sbom, theirs];
    both.sort();
    assert_eq!(fallback, Some(both));
}

#[tokio::test]
async fn a_policy_brings_only_the_artifact_types_it_lists_or_none() {
    let source = TestRegistry::start_plain();
    let target = TestRegistry::start_plain();
    let dir = TempDir::new("oras");
    let image = push_image(&source, "app", "v1").await;
    let sbom = oras_attach(&source, "app", &image.digest, SBOM, &dir);
    let signature = oras_attach(&source, "app", &image.digest, SIGNATURE, &dir);
    oras_attach(&source, "app", &sbom, SIGNATURE, &dir);
    let transfer = engine(&[&source, &target]);

    let none = copy_with(&transfer, &source, &target, ReferrersPolicy::None).await;
    assert!(none.referrers.is_empty());
    let target_http = RegistryHttp::new(&target);
    assert!(target_http.manifest("backup/app", &sbom).await.is_none());

    let only_sboms = ReferrersPolicy::ArtifactTypes(vec![SBOM.into()]);
    let report = copy_with(&transfer, &source, &target, only_sboms).await;
    let brought: Vec<&str> = report.referrers.iter().map(|r| r.digest.as_str()).collect();
    assert_eq!(brought, vec![sbom.as_str()]);
    assert!(target_http.manifest("backup/app", &sbom).await.is_some());
    assert!(
        target_http
            .manifest("backup/app", &signature)
            .await
            .is_none()
    );
}

#[tokio::test]
async fn referrers_nested_deeper_than_the_limit_stop_the_copy_with_a_reason() {
    let source = TestRegistry::start_plain();
    let target = TestRegistry::start_plain();
    let dir = TempDir::new("oras");
    let image = push_image(&source, "app", "v1").await;
    let mut subject = image.digest.clone();
    for level in 0..=registry_transfer::referrers::MAX_REFERRER_DEPTH {
        subject = oras_attach(
            &source,
            "app",
            &subject,
            &format!("{SIGNATURE}.{level}"),
            &dir,
        );
    }
    let transfer = engine(&[&source, &target]);
    let error = transfer
        .copy_image(
            &image_ref(&source, "app:v1"),
            &CopyRequest::new(RepositoryRef::new(&target.host, "backup/app"))
                .with_referrers(ReferrersPolicy::All),
        )
        .await
        .unwrap_err();
    assert_eq!(error.reason(), "TooManyReferrers", "{error}");
    assert!(
        error.to_string().contains("nested more than 4 deep"),
        "{error}"
    );
    // The deepest one was never fetched.
    assert!(
        RegistryHttp::new(&target)
            .manifest("backup/app", &subject)
            .await
            .is_none()
    );
}

/// buildx puts an attestation manifest per platform into the index. A
/// copy filtered to one platform keeps that platform's attestation, and
/// only that one.
#[tokio::test]
async fn a_platform_filtered_buildx_index_keeps_the_attestations_of_the_kept_platforms() {
    let source = TestRegistry::start_plain();
    let target = TestRegistry::start_plain();
    let http = RegistryHttp::new(&source);
    let amd = image_manifest(
        &[Blob::random_layer(1000)],
        OCI_MANIFEST,
        ("linux", "amd64"),
    );
    let arm = image_manifest(
        &[Blob::random_layer(1000)],
        OCI_MANIFEST,
        ("linux", "arm64"),
    );
    let attestation = |of: &Manifest| {
        let statement = Blob::new(
            format!(
                r#"{{"_type":"https://in-toto.io/Statement/v0.1","subject":"{}"}}"#,
                of.digest
            )
            .into_bytes(),
            "application/vnd.in-toto+json",
        );
        let config = Blob::new(b"{}".to_vec(), "application/vnd.oci.image.config.v1+json");
        let bytes = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{}","digest":"{}","size":{}}},"layers":[{{"mediaType":"{}","digest":"{}","size":{}}}]}}"#,
            config.media_type,
            config.digest,
            config.data.len(),
            statement.media_type,
            statement.digest,
            statement.data.len()
        )
        .into_bytes();
        Manifest {
            digest: sha256(&bytes),
            bytes,
            media_type: OCI_MANIFEST.into(),
            blobs: vec![config, statement],
            children: Vec::new(),
        }
    };
    let amd_att = attestation(&amd);
    let arm_att = attestation(&arm);
    let entry = |m: &Manifest, platform: &str, attests: Option<&Manifest>| {
        let (os, arch) = platform.split_once('/').unwrap();
        let annotations = attests
            .map(|a| {
                format!(
                    r#","annotations":{{"vnd.docker.reference.digest":"{}","vnd.docker.reference.type":"attestation-manifest"}}"#,
                    a.digest
                )
            })
            .unwrap_or_default();
        format!(
            r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"architecture":"{arch}","os":"{os}"}}{annotations}}}"#,
            m.digest,
            m.bytes.len()
        )
    };
    let bytes = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{},{},{},{}]}}"#,
        entry(&amd, "linux/amd64", None),
        entry(&arm, "linux/arm64", None),
        entry(&amd_att, "unknown/unknown", Some(&amd)),
        entry(&arm_att, "unknown/unknown", Some(&arm)),
    )
    .into_bytes();
    let index = Manifest {
        digest: sha256(&bytes),
        bytes,
        media_type: OCI_INDEX.into(),
        blobs: Vec::new(),
        children: vec![amd.clone(), arm.clone(), amd_att.clone(), arm_att.clone()],
    };
    http.push("app", "v1", &index).await;

    let transfer = engine(&[&source, &target]);
    let report = transfer
        .copy_image(
            &image_ref(&source, "app:v1"),
            &CopyRequest::new(RepositoryRef::new(&target.host, "backup/app"))
                .with_platforms(vec![Platform::parse("linux/arm64").unwrap()]),
        )
        .await
        .unwrap();
    assert!(report.index_digest_changed);
    let target_http = RegistryHttp::new(&target);
    let (copied, _) = target_http.manifest("backup/app", "v1").await.unwrap();
    let copied: serde_json::Value = serde_json::from_slice(&copied).unwrap();
    let kept: Vec<&str> = copied["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(kept, vec![arm.digest.as_str(), arm_att.digest.as_str()]);
    target_http
        .assert_holds("backup/app", &arm_att.digest, &arm_att)
        .await;
    assert!(
        target_http
            .manifest("backup/app", &amd_att.digest)
            .await
            .is_none()
    );
    assert!(
        target_http
            .manifest("backup/app", &amd.digest)
            .await
            .is_none()
    );
}

/// cosign's own scheme: `cosign sign` and `cosign attest` write
/// `sha256-<hex>.sig` and `.att` tags in the image's repository. After a
/// copy with referrers, `cosign verify --key` and `cosign
/// verify-attestation` succeed against the target; after a copy without,
/// `cosign verify` fails there (so the check can fail).
#[tokio::test]
async fn cosign_signatures_and_attestations_verify_at_the_target() {
    let source = TestRegistry::start_plain();
    let target = TestRegistry::start_plain();
    let bare = TestRegistry::start_plain();
    let dir = TempDir::new("cosign");
    let image = push_image(&source, "app", "v1").await;
    let env = [("COSIGN_PASSWORD", "lifeboat-test"), ("COSIGN_YES", "true")];
    run("cosign", &["generate-key-pair"], dir.path(), &env);
    std::fs::write(
        dir.path().join("sbom.json"),
        r#"{"spdxVersion":"SPDX-2.3","SPDXID":"SPDXRef-DOCUMENT","name":"app","dataLicense":"CC0-1.0","documentNamespace":"https://lifeboat.test/app","creationInfo":{"created":"2026-01-01T00:00:00Z","creators":["Tool: test"]},"packages":[]}"#,
    )
    .unwrap();
    let at_source = format!("{}/app@{}", source.host, image.digest);
    run(
        "cosign",
        &[
            "sign",
            "--key",
            "cosign.key",
            "--tlog-upload=false",
            "--allow-http-registry",
            &at_source,
        ],
        dir.path(),
        &env,
    );
    run(
        "cosign",
        &[
            "attest",
            "--key",
            "cosign.key",
            "--tlog-upload=false",
            "--allow-http-registry",
            "--type",
            "spdxjson",
            "--predicate",
            "sbom.json",
            &at_source,
        ],
        dir.path(),
        &env,
    );
    let transfer = engine(&[&source, &target, &bare]);
    let report = copy_with(&transfer, &source, &target, ReferrersPolicy::All).await;
    let tags: Vec<String> = report
        .referrers
        .iter()
        .filter_map(|r| match &r.scheme {
            ReferrerScheme::Tag(tag) => Some(tag.clone()),
            ReferrerScheme::Subject => None,
        })
        .collect();
    let hex = &image.digest[7..];
    assert_eq!(
        tags,
        vec![format!("sha256-{hex}.sig"), format!("sha256-{hex}.att")]
    );

    let verify = |registry: &TestRegistry| {
        let at = format!("{}/backup/app@{}", registry.host, image.digest);
        std::process::Command::new(support::tools::tool("cosign"))
            .args([
                "verify",
                "--key",
                "cosign.pub",
                "--insecure-ignore-tlog=true",
                "--allow-http-registry",
                &at,
            ])
            .current_dir(dir.path())
            .env("HOME", dir.path())
            .env("DOCKER_CONFIG", dir.path())
            .output()
            .unwrap()
    };
    let verified = verify(&target);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let at_target = format!("{}/backup/app@{}", target.host, image.digest);
    run(
        "cosign",
        &[
            "verify-attestation",
            "--key",
            "cosign.pub",
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            "--type",
            "spdxjson",
            &at_target,
        ],
        dir.path(),
        &env,
    );

    copy_with(&transfer, &source, &bare, ReferrersPolicy::None).await;
    assert!(
        !verify(&bare).status.success(),
        "a copy without referrers must not verify"
    );
}

/// What referrers cost in requests: a cold copy of an image with three
/// referrers (an SBOM, a signature, an attestation) against the image
/// alone plus each referrer copied on its own (its manifest and blobs).
/// The issue's bound: at most 1.2 x (the image alone + the referrers' own);
/// what is above their sum is discovery (referrers API, tag list, fallback
/// tag index) and the target's fallback index.
async fn referrers_request_cost(api: bool) -> (u64, u64, u64) {
    let source = start(api);
    let dir = TempDir::new("oras");
    let image = push_image(&source, "app", "v1").await;
    let mut referrers = Vec::new();
    for kind in [SBOM, SIGNATURE, "application/vnd.in-toto+json"] {
        referrers.push(oras_attach(&source, "app", &image.digest, kind, &dir));
    }
    let alone_target = start(api);
    let with_target = start(api);
    let own_target = start(api);
    let transfer = engine(&[&source, &alone_target, &with_target, &own_target]);
    let alone = copy_with(&transfer, &source, &alone_target, ReferrersPolicy::None)
        .await
        .requests;
    let with = copy_with(&transfer, &source, &with_target, ReferrersPolicy::All).await;
    assert_eq!(with.referrers.len(), 3);
    let mut own = 0;
    for digest in &referrers {
        let reference = image_ref(&source, &format!("app@{digest}"));
        own += transfer
            .copy_image(
                &reference,
                &CopyRequest::new(RepositoryRef::new(&own_target.host, "own")),
            )
            .await
            .unwrap()
            .requests;
    }
    (alone, with.requests, own)
}

/// The same copy by `oras cp -r` (oras copies referrers too), against
/// distribution 2.8 whose access logs count the requests of both tools:
/// (lifeboat, oras) requests, source and target logs together.
async fn compared_with_oras_copy() -> (usize, usize) {
    let source = TestRegistry::start_plain();
    let dir = TempDir::new("oras");
    let image = push_image(&source, "app", "v1").await;
    for kind in [SBOM, SIGNATURE, "application/vnd.in-toto+json"] {
        oras_attach(&source, "app", &image.digest, kind, &dir);
    }
    let ours = TestRegistry::start_plain();
    let theirs = TestRegistry::start_plain();
    let transfer = engine(&[&source, &ours]);
    let before = source.total_requests();
    copy_with(&transfer, &source, &ours, ReferrersPolicy::All).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let lifeboat = source.total_requests() - before + ours.total_requests();
    let before = source.total_requests();
    run(
        "oras",
        &[
            "cp",
            "-r",
            "--from-plain-http",
            "--to-plain-http",
            &format!("{}/app:v1", source.host),
            &format!("{}/backup/app:v1", theirs.host),
        ],
        dir.path(),
        &[],
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let oras = source.total_requests() - before + theirs.total_requests();
    let (copied, _) = RegistryHttp::new(&theirs)
        .manifest("backup/app", "v1")
        .await
        .expect("oras copied the image");
    assert_eq!(sha256(&copied), image.digest);
    (lifeboat, oras)
}

#[tokio::test]
async fn three_referrers_cost_at_most_1_2_times_the_image_plus_their_own_requests() {
    let (lifeboat, oras) = compared_with_oras_copy().await;
    println!(
        "image + 3 referrers, distribution 2.8 to distribution 2.8, requests in the access logs: \
         lifeboat {lifeboat}, oras cp -r {oras}"
    );
    for api in [false, true] {
        let (alone, with, own) = referrers_request_cost(api).await;
        let bound = ((alone + own) as f64) * 1.2;
        println!(
            "referrers API {api}: image alone {alone} requests, with 3 referrers {with}, \
             referrers on their own {own}: {with} <= 1.2 x ({alone} + {own}) = {bound:.1}: \
             ratio {:.2}, {} requests of discovery and fallback index",
            with as f64 / (alone + own) as f64,
            with.saturating_sub(alone + own)
        );
        assert!((with as f64) <= bound, "api {api}: {with} > {bound}");
    }
}

/// What a dry run lists: the referrers a copy would bring, judged by the
/// same policy, read from the source alone.
#[tokio::test]
async fn listing_referrers_reads_the_source_and_writes_nothing() {
    for api in [false, true] {
        let source = start(api);
        let dir = TempDir::new("oras");
        let image = push_image(&source, "app", "v1").await;
        let sbom = oras_attach(&source, "app", &image.digest, SBOM, &dir);
        let signature = oras_attach(&source, "app", &sbom, SIGNATURE, &dir);
        let transfer = engine(&[&source]);
        let reference = image_ref(&source, "app:v1");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let writes = |r: &TestRegistry| {
            ["\"PUT ", "\"POST ", "\"PATCH ", "\"DELETE "]
                .iter()
                .map(|m| r.count_requests(&[m]))
                .sum::<usize>()
        };
        let (requests_before, writes_before) = (source.total_requests(), writes(&source));
        // oras's pushes are there: the count can see a write.
        assert!(api || writes_before > 0);
        let all = transfer
            .list_referrers(&reference, &ReferrersPolicy::All)
            .await
            .unwrap();
        let listed: Vec<(&str, usize)> = all.iter().map(|r| (r.digest.as_str(), r.depth)).collect();
        assert_eq!(
            listed,
            vec![(sbom.as_str(), 1), (signature.as_str(), 2)],
            "api {api}"
        );
        let sboms = transfer
            .list_referrers(
                &reference,
                &ReferrersPolicy::ArtifactTypes(vec![SBOM.into()]),
            )
            .await
            .unwrap();
        assert_eq!(sboms.len(), 1, "api {api}");
        assert!(
            transfer
                .list_referrers(&reference, &ReferrersPolicy::None)
                .await
                .unwrap()
                .is_empty()
        );
        if !api {
            // distribution's access log: the listings read, never wrote.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            assert!(source.total_requests() > requests_before);
            assert_eq!(
                writes(&source),
                writes_before,
                "a listing wrote to the source"
            );
        }
    }
}

/// An image that reached its destination without its referrers (a node's
/// containerd pushed it: it holds no signatures) gets them from the
/// registry that has them (the backup), the image itself untouched:
/// listed the destination's way, found by `oras discover`, a second time
/// nothing written; an image the backup lacks is `SourceNotFound`.
#[tokio::test]
async fn referrers_alone_follow_an_image_that_arrived_without_them() {
    for (backup_api, destination_api) in [(false, false), (true, false), (false, true)] {
        let backup = start(backup_api);
        let destination = start(destination_api);
        let dir = TempDir::new("oras");
        let image = push_image(&backup, "app", "v1").await;
        let sbom = oras_attach(&backup, "app", &image.digest, SBOM, &dir);
        let signature = oras_attach(&backup, "app", &sbom, SIGNATURE, &dir);
        let transfer = engine(&[&backup, &destination]);
        let at_destination = RepositoryRef::new(&destination.host, "restored/app");
        // What a node export does: the image alone.
        transfer
            .copy_image(
                &image_ref(&backup, "app:v1"),
                &CopyRequest::new(at_destination.clone()),
            )
            .await
            .unwrap();
        let case = format!("api {backup_api} -> {destination_api}");
        assert!(
            oras_discover(&destination, "restored/app", &image.digest).is_empty(),
            "{case}"
        );

        let pinned = image_ref(&backup, &format!("app@{}", image.digest));
        let brought = transfer
            .copy_referrers_of(&pinned, &at_destination, &ReferrersPolicy::All)
            .await
            .unwrap();
        let brought: Vec<(&str, usize, bool)> = brought
            .iter()
            .map(|r| (r.digest.as_str(), r.depth, r.already_there))
            .collect();
        assert_eq!(
            brought,
            vec![(sbom.as_str(), 1, false), (signature.as_str(), 2, false)],
            "{case}"
        );
        assert_eq!(
            oras_discover(&destination, "restored/app", &image.digest),
            vec![sbom.clone()],
            "{case}"
        );
        assert_eq!(
            oras_discover(&destination, "restored/app", &sbom),
            vec![signature.clone()],
            "{case}"
        );
        let (api, fallback) = listed(&destination, "restored/app", &image.digest).await;
        if destination_api {
            assert_eq!(api, Some(vec![sbom.clone()]), "{case}");
        } else {
            assert_eq!(fallback, Some(vec![sbom.clone()]), "{case}");
        }

        let again = transfer
            .copy_referrers_of(&pinned, &at_destination, &ReferrersPolicy::All)
            .await
            .unwrap();
        assert!(again.iter().all(|r| r.already_there), "{case}: {again:?}");
        assert!(
            transfer
                .copy_referrers_of(&pinned, &at_destination, &ReferrersPolicy::None)
                .await
                .unwrap()
                .is_empty()
        );

        let absent = image_ref(&backup, &format!("app@sha256:{}", "0".repeat(64)));
        let error = transfer
            .copy_referrers_of(&absent, &at_destination, &ReferrersPolicy::All)
            .await
            .unwrap_err();
        assert_eq!(error.reason(), "SourceNotFound", "{case}: {error}");
    }
}

fn digest_of(text: &str) -> registry_transfer::Digest {
    registry_transfer::Digest::parse(text).unwrap()
}

/// Retention's delete: an index goes with its referrers at every level
/// (an SBOM, a signature on it, an attestation of one of its platform
/// manifests, cosign's `.sig` tag) and the fallback tag indexes listing
/// them, and nothing of what stays: the index that stays keeps its
/// signature, and the platform manifest both indexes share keeps its own.
/// Against both registry kinds; the second delete finds nothing.
#[tokio::test]
async fn deleting_an_image_deletes_its_referrers_and_never_those_of_what_stays() {
    for api in [false, true] {
        let registry = start(api);
        let http = RegistryHttp::new(&registry);
        let dir = TempDir::new("oras");
        let transfer = engine(&[&registry]);
        let repo = "backup/app";
        let platform =
            |arch| image_manifest(&[Blob::random_layer(5000)], OCI_MANIFEST, ("linux", arch));
        let shared = platform("amd64");
        let old = support::images::index_manifest(
            &[
                (shared.clone(), "linux", "amd64"),
                (platform("arm64"), "linux", "arm64"),
            ],
            OCI_INDEX,
        );
        let new = support::images::index_manifest(
            &[
                (shared.clone(), "linux", "amd64"),
                (platform("s390x"), "linux", "s390x"),
            ],
            OCI_INDEX,
        );
        http.push(repo, "old", &old).await;
        http.push(repo, "new", &new).await;
        let old_arm = old.children[1].digest.clone();
        let sbom = oras_attach(&registry, repo, &old.digest, SBOM, &dir);
        let sbom_signature = oras_attach(&registry, repo, &sbom, SIGNATURE, &dir);
        let arm_attestation = oras_attach(&registry, repo, &old_arm, SBOM, &dir);
        let cosign_tag = format!("{}.sig", old.digest.replacen(':', "-", 1));
        let cosign_signature = support::images::artifact_manifest(&Blob::new(
            b"signed".to_vec(),
            "application/vnd.dev.cosign.simplesigning.v1+json",
        ));
        http.push(repo, &cosign_tag, &cosign_signature).await;
        let new_signature = oras_attach(&registry, repo, &new.digest, SIGNATURE, &dir);
        let shared_signature = oras_attach(&registry, repo, &shared.digest, SIGNATURE, &dir);
        // Someone who can push lists an image pushed by hand as a referrer
        // of the old index in its fallback tag index: it must not go.
        let by_hand = platform("ppc64le");
        http.push(repo, "by-hand", &by_hand).await;
        if !api {
            let tag = old.digest.replacen(':', "-", 1);
            let (bytes, _) = http.manifest(repo, &tag).await.unwrap();
            let mut index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            index["manifests"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                    "mediaType": OCI_MANIFEST,
                    "digest": by_hand.digest,
                    "size": by_hand.bytes.len(),
                    "artifactType": SIGNATURE,
                }));
            let bytes = serde_json::to_vec(&index).unwrap();
            let forged = Manifest {
                digest: sha256(&bytes),
                bytes,
                media_type: OCI_INDEX.into(),
                blobs: Vec::new(),
                children: Vec::new(),
            };
            http.put_manifest(repo, &tag, &forged).await;
        }

        let kept: std::collections::HashSet<_> =
            [&new.digest, &shared.digest, &new.children[1].digest]
                .into_iter()
                .map(|d| digest_of(d))
                .collect();
        let repository = RepositoryRef::new(&registry.host, repo);
        let deleted = transfer
            .delete_with_referrers(&repository, &digest_of(&old.digest), &kept)
            .await
            .unwrap()
            .expect("the old index was there");

        let case = format!("api {api}");
        let mut gone: Vec<String> = deleted.referrers.iter().map(ToString::to_string).collect();
        gone.sort();
        let mut wanted = vec![
            sbom.clone(),
            sbom_signature.clone(),
            arm_attestation.clone(),
            cosign_signature.digest.clone(),
        ];
        wanted.sort();
        assert_eq!(gone, wanted, "{case}");
        for digest in wanted.iter().chain([&old.digest]) {
            assert!(
                http.manifest(repo, digest).await.is_none(),
                "{case}: {digest} stayed"
            );
        }
        // What clients see: nothing resolves under the tags that went
        // (oci-registry keeps a deleted manifest's tags listed, dangling).
        let fallback = |d: &str| d.replacen(':', "-", 1);
        for tag in [&old.digest, &sbom, &old_arm]
            .map(|d| fallback(d))
            .iter()
            .chain([&cosign_tag])
        {
            assert!(http.manifest(repo, tag).await.is_none(), "{case}: {tag}");
        }
        // distribution has no referrers API and oci-registry does not say
        // it has one on a push (no OCI-Subject), so oras wrote fallback
        // tags at both: those of what goes go, the others stay.
        assert_eq!(deleted.fallback_tags.len(), 3, "{case}: {deleted:?}");
        for subject in [&new.digest, &shared.digest] {
            let listing = http.manifest(repo, &fallback(subject)).await;
            assert!(
                listing.is_some(),
                "{case}: the fallback tag of {subject} went"
            );
        }

        assert!(http.manifest(repo, &new.digest).await.is_some(), "{case}");
        assert!(
            http.manifest(repo, &by_hand.digest).await.is_some(),
            "{case}: an image listed by a forged fallback entry was deleted"
        );
        assert_eq!(
            oras_discover(&registry, repo, &new.digest),
            vec![new_signature.clone()],
            "{case}"
        );
        assert_eq!(
            oras_discover(&registry, repo, &shared.digest),
            vec![shared_signature.clone()],
            "{case}"
        );
        assert_eq!(
            transfer
                .delete_with_referrers(&repository, &digest_of(&old.digest), &kept)
                .await
                .unwrap(),
            None,
            "{case}"
        );
    }
}
