//! `transfer-copy`: copies images between registries with the Lifeboat
//! engine, all pairs concurrently. A thin CLI for the benchmark and for
//! trying the engine by hand; prints one JSON report per copy and a summary.
//!
//! ```text
//! transfer-copy [--plain-http HOST]... [--ca-bundle HOST=PEMFILE]...
//!               [--docker-config FILE] [--platform OS/ARCH[/VARIANT]]...
//!               [--allow-tag-move] [--max-concurrent N] [--per-registry N]
//!               [--chunk-size BYTES]
//!               SOURCE TARGET [SOURCE TARGET]...
//! ```
//! SOURCE is `host/repo:tag`, `host/repo@sha256:...` or both; TARGET is
//! `host/repo[:tag]` (without a tag: the source's tag, or the deterministic
//! tag for digest-only sources).

use std::process::ExitCode;
use std::time::Instant;

use registry_transfer::{
    CopyRequest, DockerConfig, ImageReference, Platform, RegistrySettings, RepositoryRef, Transfer,
    TransferConfig, TransferError,
};

struct Args {
    settings: RegistrySettings,
    config: TransferConfig,
    platforms: Vec<Platform>,
    allow_tag_move: bool,
    pairs: Vec<(ImageReference, RepositoryRef, Option<String>)>,
}

fn usage() -> String {
    "usage: transfer-copy [--plain-http HOST]... [--ca-bundle HOST=PEMFILE]... \
     [--docker-config FILE] [--platform OS/ARCH]... [--allow-tag-move] [--max-concurrent N] \
     [--per-registry N] [--chunk-size BYTES] SOURCE TARGET [SOURCE TARGET]..."
        .to_owned()
}

fn parse_target(s: &str) -> Result<(RepositoryRef, Option<String>), TransferError> {
    let last_slash = s.rfind('/').map_or(0, |i| i + 1);
    match s[last_slash..].rfind(':') {
        Some(i) => Ok((
            RepositoryRef::parse(&s[..last_slash + i])?,
            Some(s[last_slash + i + 1..].to_owned()),
        )),
        None => Ok((RepositoryRef::parse(s)?, None)),
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut settings = RegistrySettings::new();
    let mut config = TransferConfig::default();
    let mut platforms = Vec::new();
    let mut allow_tag_move = false;
    let mut positional = Vec::new();
    let number = |value: Option<String>, flag: &str| -> Result<u64, String> {
        value
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{flag} needs a number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--plain-http" => {
                let host = args.next().ok_or("--plain-http needs a host")?;
                settings = settings.allow_plain_http(&host);
            }
            "--ca-bundle" => {
                let value = args.next().ok_or("--ca-bundle needs HOST=FILE")?;
                let (host, file) = value.split_once('=').ok_or("--ca-bundle needs HOST=FILE")?;
                let pem = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
                settings = settings.with_ca_bundle(host, pem);
            }
            "--docker-config" => {
                let file = args.next().ok_or("--docker-config needs a file")?;
                let json = std::fs::read(&file).map_err(|e| format!("{file}: {e}"))?;
                let parsed = DockerConfig::parse(&json).map_err(|e| e.to_string())?;
                settings = settings.with_docker_config(parsed);
            }
            "--platform" => {
                let value = args.next().ok_or("--platform needs a value")?;
                platforms.push(Platform::parse(&value).map_err(|e| e.to_string())?);
            }
            "--allow-tag-move" => allow_tag_move = true,
            "--max-concurrent" => {
                config.max_concurrent_requests = number(args.next(), &arg)? as usize;
            }
            "--per-registry" => {
                config.max_concurrent_per_registry = number(args.next(), &arg)? as usize;
            }
            "--chunk-size" => config.chunk_size = number(args.next(), &arg)?,
            "-h" | "--help" => return Err(usage()),
            flag if flag.starts_with("--") => {
                return Err(format!("unknown flag {flag}\n{}", usage()));
            }
            _ => positional.push(arg),
        }
    }
    if positional.is_empty() || positional.len() % 2 != 0 {
        return Err(usage());
    }
    let pairs = positional
        .chunks(2)
        .map(|pair| {
            let source = registry_transfer::reference::parse_image(&pair[0])?;
            let (target, tag) = parse_target(&pair[1])?;
            Ok((source, target, tag))
        })
        .collect::<Result<_, TransferError>>()
        .map_err(|e| e.to_string())?;
    Ok(Args {
        settings,
        config,
        platforms,
        allow_tag_move,
        pairs,
    })
}

/// This process's peak resident memory, from the kernel's own record.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    registry_transfer::install_crypto_provider();
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let engine = Transfer::new(args.config, args.settings);
    let copies = args.pairs.iter().map(|(source, target, tag)| {
        let mut request = CopyRequest::new(target.clone())
            .with_platforms(args.platforms.clone())
            .allowing_tag_move(args.allow_tag_move);
        request.tag = tag.clone();
        let engine = engine.clone();
        async move { (source, engine.copy_image(source, &request).await) }
    });
    let results = futures::future::join_all(copies).await;
    let mut failed = 0;
    let mut bytes = 0;
    for (source, result) in &results {
        match result {
            Ok(report) => {
                bytes += report.bytes_copied;
                let line = serde_json::json!({
                    "source": source.to_string(),
                    "target": report.target.to_string(),
                    "tag": report.tag,
                    "digest": report.digest.to_string(),
                    "sourceDigest": report.source_digest.to_string(),
                    "indexDigestChanged": report.index_digest_changed,
                    "upToDate": report.up_to_date,
                    "manifestsCopied": report.manifests_copied,
                    "manifestsSkipped": report.manifests_skipped,
                    "blobsCopied": report.blobs_copied,
                    "blobsSkipped": report.blobs_skipped,
                    "blobsMounted": report.blobs_mounted,
                    "bytesCopied": report.bytes_copied,
                    "requests": report.requests,
                });
                println!("{line}");
            }
            Err(error) => {
                failed += 1;
                let line = serde_json::json!({
                    "source": source.to_string(),
                    "error": error.to_string(),
                    "reason": error.reason(),
                });
                println!("{line}");
            }
        }
    }
    let summary = serde_json::json!({
        "summary": true,
        "copies": results.len(),
        "failed": failed,
        "bytesCopied": bytes,
        "requests": engine.requests_made(),
        "elapsedMs": started.elapsed().as_millis() as u64,
        "peakRssKib": peak_rss_kib(),
    });
    println!("{summary}");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
