//! The engine against a hostile registry (issue 15): every attack ends in
//! a clear, typed error or a correct copy, never a panic, a hang or a
//! leaked credential. The server is `support::hostile`, on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use registry_transfer::{
    CopyRequest, Credentials, ImageReference, ReferrersPolicy, RegistrySettings, RepositoryRef,
    RetryPolicy, Secret, ThroughputFloor, Transfer, TransferConfig, TransferError,
};
use support::hostile::{HostileServer, ImageStore, Reply, Request};
use support::images::{Blob, Manifest, OCI_INDEX, OCI_MANIFEST, image_manifest, sha256};

const USER: &str = "robot";
const PASSWORD: &str = "hunter2-hostile";

/// Short timeouts so every attack is decided in seconds.
fn hostile_config() -> TransferConfig {
    TransferConfig {
        retry: RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            max_retry_after: Duration::from_secs(3),
        },
        // Seconds, so a trickle is given up quickly; not less, so a busy
        // machine does not make an honest answer look slow.
        read_timeout: Duration::from_secs(3),
        body_timeout: Duration::from_secs(3),
        blob_throughput_floor: Some(ThroughputFloor {
            min_bytes: 1024,
            window: Duration::from_secs(1),
        }),
        ..TransferConfig::default()
    }
}

fn engine(plain: &[&str], credentials_for: Option<&str>) -> Transfer {
    registry_transfer::install_crypto_provider();
    let mut settings = plain
        .iter()
        .fold(RegistrySettings::new(), |s, host| s.allow_plain_http(host));
    if let Some(registry) = credentials_for {
        settings = settings.with_credentials(
            registry,
            Credentials::Basic {
                username: USER.into(),
                password: Secret::new(PASSWORD),
            },
        );
    }
    Transfer::new(hostile_config(), settings)
}

fn basic_value() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    )
}

fn small_image() -> Manifest {
    image_manifest(
        &[Blob::random_layer(2000)],
        OCI_MANIFEST,
        ("linux", "amd64"),
    )
}

fn store_with(image: &Manifest) -> ImageStore {
    let mut store = ImageStore::new();
    store.add("src/app", image, Some("v1"));
    store
}

fn source(host: &str) -> ImageReference {
    registry_transfer::reference::parse_image(&format!("{host}/src/app:v1")).unwrap()
}

fn target(host: &str) -> CopyRequest {
    CopyRequest::new(RepositoryRef::new(host, "dst/app")).with_tag("v1")
}

/// The host the client addressed (its `Host` header), to build absolute
/// URLs on the same server.
fn own_host(request: &Request) -> String {
    request.header("host").unwrap_or_default().to_owned()
}

/// A token service on the server itself handing out `body` at `/token`;
/// everything else needs `Bearer good`.
fn token_flow(store: ImageStore, token_body: Reply) -> impl Fn(&Request) -> Reply {
    move |request: &Request| {
        if request.path() == "/token" {
            return token_body.clone();
        }
        if request.header("authorization") != Some("Bearer good") {
            return Reply::new(401).header(
                "WWW-Authenticate",
                format!(
                    r#"Bearer realm="http://{}/token",service="hostile""#,
                    own_host(request)
                ),
            );
        }
        store.answer(request)
    }
}

fn expect_err<T: std::fmt::Debug>(result: Result<T, TransferError>) -> TransferError {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(error) => error,
    }
}

#[tokio::test]
async fn a_token_living_u64_max_seconds_is_capped_not_a_crash() {
    let image = small_image();
    let server = HostileServer::start(token_flow(
        store_with(&image),
        Reply::new(200).body(r#"{"token":"good","expires_in":18446744073709551615}"#),
    ))
    .await;
    let engine = engine(&[&server.host], None);
    let report = engine
        .copy_image(&source(&server.host), &target(&server.host))
        .await
        .unwrap();
    assert_eq!(report.digest.as_str(), image.digest);
    let tokens_after_first = server.count("GET", "/token");
    assert!(tokens_after_first >= 1);
    // The capped token is cached, not expired at once: a second copy asks
    // for no new token.
    engine
        .copy_image(&source(&server.host), &target(&server.host))
        .await
        .unwrap();
    assert_eq!(server.count("GET", "/token"), tokens_after_first);
}

/// The exact crash of issue 15, through the CLI: `transfer-copy` exited
/// with `overflow when adding duration to instant`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_copy_survives_a_u64_max_expires_in() {
    let image = small_image();
    let server = HostileServer::start(token_flow(
        store_with(&image),
        Reply::new(200).body(r#"{"token":"good","expires_in":18446744073709551615}"#),
    ))
    .await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_transfer-copy"))
        .args(["--plain-http", &server.host])
        .arg(format!("{}/src/app:v1", server.host))
        .arg(format!("{}/dst/app:v1", server.host))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(&image.digest), "{stdout}");
}

/// A target that wants Basic auth and opens uploads on another host: that
/// host gets the blob, never the credentials.
#[tokio::test]
async fn an_upload_location_on_another_host_gets_no_credentials() {
    let elsewhere = HostileServer::start(|request: &Request| match request.method.as_str() {
        "PUT" => Reply::new(201),
        "PATCH" => Reply::new(202).header("Location", request.target.clone()),
        _ => Reply::new(204),
    })
    .await;
    let elsewhere_url = elsewhere.url();
    let target_server = HostileServer::start(move |request: &Request| {
        if request.header("authorization") != Some(basic_value().as_str()) {
            return Reply::new(401).header("WWW-Authenticate", r#"Basic realm="hostile""#);
        }
        if request.method == "POST" && request.path().contains("/blobs/uploads/") {
            return Reply::new(202).header("Location", format!("{elsewhere_url}/upload/s1"));
        }
        ImageStore::new().answer(request)
    })
    .await;
    let image = small_image();
    let source_server = HostileServer::start({
        let store = store_with(&image);
        move |request: &Request| store.answer(request)
    })
    .await;
    let engine = engine(
        &[&source_server.host, &target_server.host, &elsewhere.host],
        Some(&target_server.host),
    );
    engine
        .copy_image(&source(&source_server.host), &target(&target_server.host))
        .await
        .unwrap();
    assert!(
        elsewhere.count("PUT", "/upload/s1") >= 2,
        "{:?}",
        elsewhere.seen()
    );
    assert_eq!(
        elsewhere.authorized_requests().len(),
        0,
        "{:?}",
        elsewhere.seen()
    );
    // The credentials were there to leak: the target itself got them.
    assert!(
        target_server
            .authorized_requests()
            .iter()
            .all(|s| s.authorization.as_deref() == Some(basic_value().as_str()))
    );
    assert!(!target_server.authorized_requests().is_empty());
}

/// A registry whose token realm is another host: with credentials, the
/// token request is refused before anything is sent there; without, the
/// other host is asked anonymously.
#[tokio::test]
async fn a_token_realm_on_another_host_gets_no_credentials() {
    let realm = HostileServer::start(|_: &Request| {
        Reply::new(200).body(r#"{"token":"good","expires_in":300}"#)
    })
    .await;
    let realm_url = realm.url();
    let image = small_image();
    let store = store_with(&image);
    let registry = HostileServer::start(move |request: &Request| {
        if request.header("authorization") != Some("Bearer good") {
            return Reply::new(401).header(
                "WWW-Authenticate",
                format!(r#"Bearer realm="{realm_url}/token",service="hostile""#),
            );
        }
        store.answer(request)
    })
    .await;

    let with_credentials = engine(&[&registry.host, &realm.host], Some(&registry.host));
    let error = expect_err(
        with_credentials
            .copy_image(&source(&registry.host), &target(&registry.host))
            .await,
    );
    assert!(
        matches!(error, TransferError::CredentialsRefused { .. }),
        "{error}"
    );
    assert_eq!(error.reason(), "CredentialsRefused");
    assert!(error.to_string().contains(&realm.host), "{error}");
    assert!(!error.to_string().contains(PASSWORD));
    assert_eq!(realm.seen().len(), 0, "{:?}", realm.seen());

    let anonymous = engine(&[&registry.host, &realm.host], None);
    anonymous
        .copy_image(&source(&registry.host), &target(&registry.host))
        .await
        .unwrap();
    assert!(!realm.seen().is_empty());
    assert_eq!(realm.authorized_requests().len(), 0);
}

/// reqwest's redirect policy drops `Authorization` when a redirect leaves
/// the host; this pins that down for blob downloads (where registries do
/// redirect, to storage).
#[tokio::test]
async fn a_redirect_to_another_host_carries_no_credentials() {
    let image = small_image();
    let layer = image.blobs[1].clone();
    let storage =
        HostileServer::start(move |_: &Request| Reply::new(200).body(layer.data.to_vec())).await;
    let storage_url = storage.url();
    let store = store_with(&image);
    let layer_digest = image.blobs[1].digest.clone();
    let registry = HostileServer::start(move |request: &Request| {
        if request.header("authorization") != Some(basic_value().as_str()) {
            return Reply::new(401).header("WWW-Authenticate", r#"Basic realm="hostile""#);
        }
        if request.method == "GET" && request.path().ends_with(&layer_digest) {
            return Reply::new(307).header("Location", format!("{storage_url}/blob"));
        }
        store.answer(request)
    })
    .await;
    let target_server =
        HostileServer::start(|request: &Request| ImageStore::new().answer(request)).await;
    let engine = engine(
        &[&registry.host, &storage.host, &target_server.host],
        Some(&registry.host),
    );
    engine
        .copy_image(&source(&registry.host), &target(&target_server.host))
        .await
        .unwrap();
    assert_eq!(storage.count("GET", "/blob"), 1, "{:?}", storage.seen());
    assert_eq!(storage.authorized_requests().len(), 0);
    assert!(!registry.authorized_requests().is_empty());
}

#[tokio::test]
async fn an_endless_error_body_is_cut_short() {
    let server = HostileServer::start(|_: &Request| Reply::new(400).endless("error ")).await;
    let started = Instant::now();
    let error = expect_err(
        engine(&[&server.host], None)
            .copy_image(&source(&server.host), &target(&server.host))
            .await,
    );
    assert!(
        matches!(error, TransferError::Rejected { status: 400, .. }),
        "{error}"
    );
    assert!(error.to_string().len() < 1000, "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn an_endless_token_body_is_refused() {
    let server = HostileServer::start(token_flow(
        ImageStore::new(),
        Reply::new(200).endless(r#"{"token":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"#),
    ))
    .await;
    let error = expect_err(
        engine(&[&server.host], None)
            .copy_image(&source(&server.host), &target(&server.host))
            .await,
    );
    assert!(
        matches!(
            error,
            TransferError::ResponseTooLarge {
                what: "token response",
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(error.reason(), "RegistryResponseTooLarge");
    assert!(error.to_string().contains(&server.host), "{error}");
}

#[tokio::test]
async fn an_endless_tag_page_is_refused() {
    let server = HostileServer::start(|request: &Request| {
        if request.path().ends_with("/tags/list") {
            return Reply::new(200).endless(r#""tag","#);
        }
        Reply::new(404)
    })
    .await;
    let error = expect_err(
        engine(&[&server.host], None)
            .list_tags(&RepositoryRef::new(&server.host, "src/app"))
            .await,
    );
    assert!(
        matches!(
            error,
            TransferError::ResponseTooLarge {
                what: "tag list page",
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn endless_tag_pagination_stops_at_the_page_limit() {
    let pages = Arc::new(AtomicUsize::new(0));
    let counter = pages.clone();
    let server = HostileServer::start(move |_: &Request| {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        Reply::new(200)
            .header(
                "Link",
                format!(r#"</v2/src/app/tags/list?last=t{n}>; rel="next""#),
            )
            .body(format!(r#"{{"tags":["t{n}"]}}"#))
    })
    .await;
    let error = expect_err(
        engine(&[&server.host], None)
            .list_tags(&RepositoryRef::new(&server.host, "src/app"))
            .await,
    );
    assert!(
        error.to_string().contains("more than 1000 pages"),
        "{error}"
    );
    assert_eq!(pages.load(Ordering::Relaxed), 1000);
}

/// An index chain 1,000 levels deep: given up at the depth limit after a
/// handful of fetches, not walked.
#[tokio::test]
async fn an_index_nested_1000_deep_is_refused_early() {
    let mut store = ImageStore::new();
    let leaf = small_image();
    store.add("src/app", &leaf, None);
    let mut child = (leaf.digest.clone(), leaf.bytes.len(), OCI_MANIFEST);
    for level in (0..1000).rev() {
        let bytes = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{}","digest":"{}","size":{}}}]}}"#,
            child.2, child.0, child.1
        )
        .into_bytes();
        let digest = sha256(&bytes);
        if level == 0 {
            store.add_raw("src/app", "v1", bytes.clone(), OCI_INDEX);
        }
        store.add_raw("src/app", &digest, bytes.clone(), OCI_INDEX);
        child = (digest, bytes.len(), OCI_INDEX);
    }
    let server = HostileServer::start(move |request: &Request| store.answer(request)).await;
    let error = expect_err(
        engine(&[&server.host], None)
            .copy_image(&source(&server.host), &target(&server.host))
            .await,
    );
    assert!(
        matches!(error, TransferError::ImageTooComplex { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("nested more than 8 deep"),
        "{error}"
    );
    let fetched = server.count("GET", "/v2/src/app/manifests/");
    assert!(fetched <= 10, "{fetched} manifest GETs");
}

fn wide_index(entries: usize) -> Vec<u8> {
    let entry = |i: usize| {
        format!(r#"{{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{i:064x}","size":1}}"#)
    };
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        (0..entries).map(entry).collect::<Vec<_>>().join(",")
    )
    .into_bytes()
}

#[tokio::test]
async fn an_index_with_100000_entries_is_refused_unread() {
    let index = wide_index(100_000);
    // Served as is: hashing 9 MiB per request in a debug build would make
    // the server, not the client, the slow part.
    let server = HostileServer::start(move |request: &Request| {
        if request.path().contains("/manifests/") && request.method == "GET" {
            return Reply::new(200)
                .header("Content-Type", OCI_INDEX)
                .body(index.clone());
        }
        ImageStore::new().answer(request)
    })
    .await;
    let error = expect_err(
        engine(&[&server.host], None)
            .copy_image(&source(&server.host), &target(&server.host))
            .await,
    );
    assert!(
        matches!(
            error,
            TransferError::ResponseTooLarge {
                what: "manifest",
                ..
            }
        ),
        "{error}"
    );
}

/// Under the byte limit but over the manifest count: refused before any
/// child is fetched.
#[tokio::test]
async fn an_index_with_5000_entries_is_refused_before_any_child_is_fetched() {
    let mut store = ImageStore::new();
    store.add_raw("src/app", "v1", wide_index(5000), OCI_INDEX);
    let server = HostileServer::start(move |request: &Request| store.answer(request)).await;
    let error = expect_err(
        engine(&[&server.host], None)
            .copy_image(&source(&server.host), &target(&server.host))
            .await,
    );
    assert!(
        error.to_string().contains("more than 1000 manifests"),
        "{error}"
    );
    assert_eq!(server.count("GET", "/manifests/sha256:"), 0);
    assert_eq!(server.count("HEAD", "/manifests/sha256:"), 0);
}

#[tokio::test]
async fn a_manifest_trickling_at_one_byte_per_second_is_given_up() {
    let image = small_image();
    let bytes = image.bytes.clone();
    let server = HostileServer::start(move |request: &Request| {
        if request.path().contains("/manifests/") && request.method == "GET" {
            return Reply::new(200)
                .header("Content-Type", OCI_MANIFEST)
                .trickle(bytes.clone(), Duration::from_secs(1));
        }
        ImageStore::new().answer(request)
    })
    .await;
    let started = Instant::now();
    let error = expect_err(
        engine(&[&server.host], None)
            .copy_image(&source(&server.host), &target(&server.host))
            .await,
    );
    assert!(matches!(error, TransferError::TooSlow { .. }), "{error}");
    assert_eq!(error.reason(), "RegistryTooSlow");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_blob_trickling_at_one_byte_per_second_is_given_up() {
    let image = small_image();
    let store = store_with(&image);
    let layer = image.blobs[1].clone();
    let server = HostileServer::start(move |request: &Request| {
        if request.method == "GET" && request.path().ends_with(&layer.digest) {
            return Reply::new(200).trickle(layer.data.to_vec(), Duration::from_secs(1));
        }
        store.answer(request)
    })
    .await;
    let started = Instant::now();
    let error = expect_err(
        engine(&[&server.host], None)
            .copy_image(&source(&server.host), &target(&server.host))
            .await,
    );
    assert!(matches!(error, TransferError::TooSlow { .. }), "{error}");
    assert!(error.to_string().contains("blob download"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn wrong_digests_are_never_accepted() {
    // A blob whose bytes are not its digest's.
    let image = small_image();
    let mut store = store_with(&image);
    let layer = &image.blobs[1];
    let mut forged = layer.data.to_vec();
    forged[0] ^= 0xff;
    store.add_blob("src/app", &layer.digest, forged);
    let server = HostileServer::start(move |request: &Request| store.answer(request)).await;
    let error = expect_err(
        engine(&[&server.host], None)
            .copy_image(&source(&server.host), &target(&server.host))
            .await,
    );
    assert!(
        matches!(error, TransferError::DigestMismatch { .. }),
        "{error}"
    );
    assert_eq!(server.count("PUT", "/manifests/"), 0);

    // A manifest asked for by digest that comes back as other bytes.
    let other = small_image();
    let mut store = ImageStore::new();
    store.add_raw("src/app", &image.digest, other.bytes.clone(), OCI_MANIFEST);
    let server = HostileServer::start(move |request: &Request| store.answer(request)).await;
    let by_digest = registry_transfer::reference::parse_image(&format!(
        "{}/src/app@{}",
        server.host, image.digest
    ))
    .unwrap();
    let error = expect_err(
        engine(&[&server.host], None)
            .copy_image(&by_digest, &target(&server.host))
            .await,
    );
    assert!(
        matches!(error, TransferError::DigestMismatch { .. }),
        "{error}"
    );

    // A target that claims to have stored another digest.
    let store = store_with(&image);
    let server = HostileServer::start(move |request: &Request| {
        if request.method == "PUT" && request.path().contains("/manifests/") {
            return Reply::new(201).header("Docker-Content-Digest", sha256(b"something else"));
        }
        store.answer(request)
    })
    .await;
    let error = expect_err(
        engine(&[&server.host], None)
            .copy_image(&source(&server.host), &target(&server.host))
            .await,
    );
    assert!(
        matches!(error, TransferError::DigestMismatch { .. }),
        "{error}"
    );
}

/// `Retry-After` as an HTTP-date is waited for; as u64::MAX seconds it is
/// capped (max_retry_after), not added to a clock.
#[tokio::test]
async fn retry_after_dates_are_honoured_and_huge_values_capped() {
    let image = small_image();
    let store = store_with(&image);
    let limited_once = Arc::new(AtomicUsize::new(0));
    let counter = limited_once.clone();
    let server = HostileServer::start(move |request: &Request| {
        if request.path().contains("/manifests/v1") && counter.fetch_add(1, Ordering::Relaxed) == 0
        {
            let at = SystemTime::now() + Duration::from_secs(2);
            return Reply::new(429).header("Retry-After", httpdate::fmt_http_date(at));
        }
        store.answer(request)
    })
    .await;
    let started = Instant::now();
    engine(&[&server.host], None)
        .copy_image(&source(&server.host), &target(&server.host))
        .await
        .unwrap();
    // The date has one-second resolution: at least one second was waited.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    let image = small_image();
    let store = store_with(&image);
    let limited_once = Arc::new(AtomicUsize::new(0));
    let counter = limited_once.clone();
    let server = HostileServer::start(move |request: &Request| {
        if request.path().contains("/manifests/v1") && counter.fetch_add(1, Ordering::Relaxed) == 0
        {
            return Reply::new(429).header("Retry-After", "18446744073709551615");
        }
        store.answer(request)
    })
    .await;
    let started = Instant::now();
    engine(&[&server.host], None)
        .copy_image(&source(&server.host), &target(&server.host))
        .await
        .unwrap();
    // max_retry_after is 3 s in hostile_config.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
}

/// A blob sent slowly but steadily (faster than any per-read timeout or
/// throughput floor would notice) still cannot hold a copy for longer than
/// its overall deadline: base plus size at the minimum throughput.
#[tokio::test]
async fn a_copy_past_its_deadline_is_cancelled_with_its_own_reason() {
    let image = small_image();
    let store = store_with(&image);
    let layer = image.blobs[1].clone();
    let server = HostileServer::start(move |request: &Request| {
        if request.method == "GET" && request.path().ends_with(&layer.digest) {
            return Reply::new(200).trickle(layer.data.to_vec(), Duration::from_millis(50));
        }
        store.answer(request)
    })
    .await;
    let deadline = registry_transfer::CopyDeadline {
        base: Duration::from_secs(2),
        min_bytes_per_second: 1024 * 1024,
    };
    let config = TransferConfig {
        blob_throughput_floor: None,
        copy_deadline: Some(deadline),
        ..hostile_config()
    };
    registry_transfer::install_crypto_provider();
    let settings = RegistrySettings::new().allow_plain_http(&server.host);
    let started = Instant::now();
    let error = expect_err(
        Transfer::new(config.clone(), settings.clone())
            .copy_image(&source(&server.host), &target(&server.host))
            .await,
    );
    let elapsed = started.elapsed();
    assert!(
        matches!(
            error,
            // 2 s + the 2,105 bytes of blobs at 1 MiB/s, rounded up to 1 s.
            TransferError::CopyDeadlineExceeded { bytes_known, deadline_seconds: 3, .. } if bytes_known >= 2000
        ),
        "{error}"
    );
    assert_eq!(error.reason(), "CopyDeadlineExceeded");
    assert!(error.to_string().contains("dst/app"), "{error}");
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(6),
        "{elapsed:?}"
    );

    // The same deadline lets an honest registry's copy through.
    let honest = store_with(&image);
    let server = HostileServer::start(move |request: &Request| honest.answer(request)).await;
    let settings = RegistrySettings::new().allow_plain_http(&server.host);
    let report = Transfer::new(config, settings)
        .copy_image(&source(&server.host), &target(&server.host))
        .await
        .unwrap();
    assert_eq!(report.digest.as_str(), image.digest);
}

/// A token realm the admin trusted for a registry (GitLab puts its realm on
/// another host) gets that registry's credentials; trusting some other
/// host, or trusting the realm for another registry, changes nothing for
/// an attacker's realm: refused before anything is sent.
#[tokio::test]
async fn only_a_realm_trusted_for_the_registry_gets_its_credentials() {
    let realm = HostileServer::start(|_: &Request| {
        Reply::new(200).body(r#"{"token":"good","expires_in":300}"#)
    })
    .await;
    let realm_url = realm.url();
    let image = small_image();
    let store = store_with(&image);
    let registry = HostileServer::start(move |request: &Request| {
        if request.header("authorization") != Some("Bearer good") {
            return Reply::new(401).header(
                "WWW-Authenticate",
                format!(r#"Bearer realm="{realm_url}/token",service="hostile""#),
            );
        }
        store.answer(request)
    })
    .await;
    let engine_trusting = |registry_host: &str, realm_origin: &str| {
        registry_transfer::install_crypto_provider();
        let settings = RegistrySettings::new()
            .allow_plain_http(&registry.host)
            .allow_plain_http(&realm.host)
            .with_credentials(
                &registry.host,
                Credentials::Basic {
                    username: USER.into(),
                    password: Secret::new(PASSWORD),
                },
            )
            .trust_token_realm(registry_host, realm_origin);
        Transfer::new(hostile_config(), settings)
    };

    for (registry_host, realm_origin) in [
        (registry.host.as_str(), "http://127.0.0.1:1"),
        ("other-registry.example", realm.url().as_str()),
    ] {
        let error = expect_err(
            engine_trusting(registry_host, realm_origin)
                .copy_image(&source(&registry.host), &target(&registry.host))
                .await,
        );
        assert!(
            matches!(error, TransferError::CredentialsRefused { .. }),
            "trusting {realm_origin} for {registry_host}: {error}"
        );
        assert_eq!(realm.seen().len(), 0, "{:?}", realm.seen());
    }

    engine_trusting(&registry.host, &realm.url())
        .copy_image(&source(&registry.host), &target(&registry.host))
        .await
        .unwrap();
    let authorized = realm.authorized_requests();
    assert!(!authorized.is_empty());
    assert!(
        authorized
            .iter()
            .all(|r| r.authorization.as_deref() == Some(basic_value().as_str())),
        "{authorized:?}"
    );
}

/// A registry whose referrers API lists 5,000 referrers for an image: the
/// copy stops with `TooManyReferrers` before fetching any of them.
#[tokio::test]
async fn five_thousand_listed_referrers_are_refused_before_any_is_fetched() {
    let image = small_image();
    let store = store_with(&image);
    let listing = wide_index(5000);
    let server = HostileServer::start(move |request: &Request| {
        if request.path().contains("/referrers/") {
            return Reply::new(200)
                .header("Content-Type", OCI_INDEX)
                .body(listing.clone());
        }
        store.answer(request)
    })
    .await;
    let error = expect_err(
        engine(&[&server.host], None)
            .copy_image(
                &source(&server.host),
                &target(&server.host).with_referrers(ReferrersPolicy::All),
            )
            .await,
    );
    assert_eq!(error.reason(), "TooManyReferrers", "{error}");
    assert_eq!(error.metric_label(), "registry_limit");
    // The image itself is only the one manifest; no listed referrer was asked for.
    assert_eq!(server.count("GET", "/manifests/sha256:0000"), 0);
    assert_eq!(server.count("HEAD", "/manifests/sha256:0000"), 0);
}

/// A referrers API whose `Link` always names another page: followed 16
/// pages at most, then `TooManyReferrers`.
#[tokio::test]
async fn endless_referrers_pagination_stops_at_the_page_limit() {
    let image = small_image();
    let store = store_with(&image);
    let server = HostileServer::start(move |request: &Request| {
        if request.path().contains("/referrers/") {
            let page = request.path().len();
            return Reply::new(200)
                .header("Content-Type", OCI_INDEX)
                .header(
                    "Link",
                    format!("<{}?page={page}>; rel=\"next\"", request.path()),
                )
                .body(r#"{"schemaVersion":2,"manifests":[]}"#);
        }
        store.answer(request)
    })
    .await;
    let error = expect_err(
        engine(&[&server.host], None)
            .copy_image(
                &source(&server.host),
                &target(&server.host).with_referrers(ReferrersPolicy::All),
            )
            .await,
    );
    assert_eq!(error.reason(), "TooManyReferrers", "{error}");
    assert!(error.to_string().contains("16 pages"), "{error}");
    assert_eq!(server.count("GET", "/referrers/"), 16);
}
