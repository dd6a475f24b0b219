//! Memory stays bounded under endless bodies (issue 15). Its own test
//! binary with a single test, so the process's peak resident memory
//! (VmHWM) measures these attacks and nothing else. Run with
//! `--nocapture` to see the figures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use registry_transfer::{
    CopyRequest, ImageRef, RegistrySettings, RepositoryRef, RetryPolicy, Transfer, TransferConfig,
    TransferError,
};
use support::hostile::{HostileServer, Reply, Request};

type Handler = Box<dyn Fn(&Request) -> Reply + Send + Sync>;

/// This process's peak resident memory so far, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What the peak may grow by across all attacks: the largest limit is
/// 8 MiB (a tag page), plus socket buffers and allocator slack.
const ALLOWED_GROWTH_KIB: u64 = 48 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_bodies_cost_bounded_memory() {
    registry_transfer::install_crypto_provider();
    let always = |reply: Reply| -> Handler { Box::new(move |_: &Request| reply.clone()) };
    let endless_token: Handler = Box::new(|request: &Request| {
        if request.path() == "/token" {
            return Reply::new(200).endless(r#"{"token":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"#);
        }
        Reply::new(401).header(
            "WWW-Authenticate",
            format!(
                r#"Bearer realm="http://{}/token""#,
                request.header("host").unwrap_or_default()
            ),
        )
    });
    let attacks: Vec<(&str, Handler, bool)> = vec![
        ("error body", always(Reply::new(400).endless("error ")), false),
        ("token response", endless_token, false),
        (
            "manifest",
            always(
                Reply::new(200)
                    .header("Content-Type", "application/vnd.oci.image.index.v1+json")
                    .endless(r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1},"#),
            ),
            false,
        ),
        ("tag list page", always(Reply::new(200).endless(r#""tag","#)), true),
    ];
    // Warm up (TLS roots, runtime, allocator) before taking the baseline.
    let warm = HostileServer::start(|_: &Request| Reply::new(404)).await;
    let engine = Transfer::new(
        TransferConfig::default(),
        RegistrySettings::new().allow_plain_http(&warm.host),
    );
    let _ = engine
        .manifest_digest(&ImageRef::parse(&format!("{}/a/b:c", warm.host)).unwrap())
        .await;
    let baseline = peak_rss_kib();
    let mut sent_total = 0;
    for (what, handler, tags) in attacks {
        let server = HostileServer::start(handler).await;
        let engine = Transfer::new(
            TransferConfig {
                retry: RetryPolicy {
                    max_attempts: 1,
                    ..RetryPolicy::default()
                },
                // Long enough that an unbounded reader would swallow
                // gigabytes on loopback.
                body_timeout: Duration::from_secs(10),
                ..TransferConfig::default()
            },
            RegistrySettings::new().allow_plain_http(&server.host),
        );
        let started = Instant::now();
        let error: TransferError = if tags {
            engine
                .list_tags(&RepositoryRef::new(&server.host, "a/b"))
                .await
                .unwrap_err()
        } else {
            engine
                .copy_image(
                    &ImageRef::parse(&format!("{}/a/b:c", server.host)).unwrap(),
                    &CopyRequest::new(RepositoryRef::new(&server.host, "x/y")),
                )
                .await
                .unwrap_err()
        };
        // Settle: the server notices the hang-up on its next write.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = server.body_bytes_sent();
        sent_total += sent;
        eprintln!(
            "endless {what}: {} after {:?}; server wrote {} KiB; peak RSS growth so far {} KiB",
            error.reason(),
            started.elapsed(),
            sent / 1024,
            peak_rss_kib().saturating_sub(baseline)
        );
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{what}: {:?}",
            started.elapsed()
        );
        assert!(
            matches!(
                error,
                TransferError::ResponseTooLarge { .. } | TransferError::Rejected { .. }
            ),
            "{what}: {error}"
        );
    }
    let growth = peak_rss_kib().saturating_sub(baseline);
    eprintln!(
        "peak RSS growth over all endless bodies: {growth} KiB (baseline {baseline} KiB, {} KiB sent in all)",
        sent_total / 1024
    );
    assert!(growth < ALLOWED_GROWTH_KIB, "peak RSS grew by {growth} KiB");
}
