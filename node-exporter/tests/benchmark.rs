//! On-demand benchmark, not part of CI (it moves several GiB):
//!
//! ```text
//! cargo test -p lifeboat-node-exporter --release --test benchmark -- --ignored --nocapture
//! ```
//!
//! One 1 GiB image in a node's containerd, pushed to an empty registry three
//! ways, in the same run:
//! 1. node-exporter (content store -> registry, streamed);
//! 2. what existing tools do: `ctr images export` to a tarball, then
//!    `skopeo copy oci-archive:`;
//! 3. `skopeo copy` from an OCI layout of hard links into containerd's blob
//!    directory (no export, but needs the host's filesystem).
//!
//! Also printed: the floor of the default run (issue 20): containerd's and
//! the registry's CPU for it plus one sha256 pass over the bytes, on two
//! cores, against its wall time; and a second floor that adds reading the
//! files and sending their bytes into a socket. The target registries
//! store in memory (`NE_BENCH_STORAGE=DIR` to choose).
//!
//! Targets (issue 5): node-exporter >= 6x faster than 2, >= 1.5x faster than
//! 3, peak RSS under 64 MiB. The test fails when memory goes over 64 MiB or
//! node-exporter falls behind either tool; the speed targets themselves are
//! printed as met or missed (they depend on the machine and its load).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const REPO: &str = "bench/app";
const LAYERS: usize = 4;
const LAYER_MIB: u64 = 256;

fn timed(what: &str, f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    let elapsed = start.elapsed();
    eprintln!("{what}: {elapsed:.2?}");
    elapsed
}

fn assert_complete(registry: &Registry, image: &TestImage, tag: &str) {
    let (_, _, digest) = registry.manifest(REPO, tag).expect("manifest pushed");
    assert_eq!(digest, image.digest);
    for blob in image.layers.iter().chain([&image.config]) {
        assert!(
            registry.has_blob(REPO, &blob.digest),
            "{} missing",
            blob.digest
        );
    }
}

#[test]
#[ignore = "on-demand benchmark (several GiB of I/O): run with --ignored --release"]
fn one_gib_image_node_exporter_vs_export_and_skopeo() {
    let _serial = serial();
    let scratch = Scratch::new("bench");
    let containerd = Containerd::start(&scratch, "node");
    let source = Registry::start(&scratch);
    let setup = Instant::now();
    let image = random_image(&scratch, LAYERS, LAYER_MIB);
    source.push_image(REPO, "v1", &image);
    let reference = format!("{}/{REPO}:v1", source.addr);
    containerd.pull(&reference);
    let total: u64 = image.layers.iter().map(|l| l.size).sum::<u64>() + image.config.size;
    eprintln!(
        "image: {} layers, {:.1} MiB compressed, setup {:.0?}",
        LAYERS,
        total as f64 / (1 << 20) as f64,
        setup.elapsed()
    );
    // Each method pushes into its own empty registry: nothing to skip.
    // The target registries store in memory (see `target_storage`).
    let storage = target_storage();
    eprintln!("target registries store under {}", storage.display());
    let scratches = [
        Scratch::new_in(&storage, "bench-ne"),
        Scratch::new_in(&storage, "bench-export"),
        Scratch::new_in(&storage, "bench-layout"),
    ];
    let target_ne = Registry::start(&scratches[0]);
    let target_export = Registry::start(&scratches[1]);
    let target_layout = Registry::start(&scratches[2]);

    // 1. node-exporter, at its default parallelism and, for the record, at
    // others (each into its own empty registry).
    let sha256_mib_s = sha256_rate();
    eprintln!("sha256: {sha256_mib_s:.0} MiB/s");
    let store_blobs = containerd
        .dir
        .join("root/io.containerd.content.v1.content/blobs/sha256");
    let layer_files: Vec<std::path::PathBuf> = image
        .layers
        .iter()
        .map(|l| store_blobs.join(l.digest.trim_start_matches("sha256:")))
        .collect();
    let io_pass_per_gib = file_to_socket_cpu_per_gib(&layer_files);
    eprintln!(
        "reading the layer files into a loopback TCP socket: {io_pass_per_gib:.2} CPU s per GiB"
    );
    let mut node_exporter_runs: Vec<(String, Duration, u64)> = Vec::new();
    let content_store = containerd
        .dir
        .join("root/io.containerd.content.v1.content")
        .display()
        .to_string();
    // The default (blobs read from the mounted content store) and the same
    // through containerd's Content.Read, three times each (medians are the
    // figures; each round has its own floor), other widths once.
    let mut floor_rounds: Vec<(bool, f64, String)> = Vec::new();
    let runs = [
        ("3", true),
        ("3", false),
        ("1", true),
        ("3", true),
        ("3", false),
        ("2", true),
        ("3", true),
        ("3", false),
        ("4", true),
    ];
    for (round, (parallel, from_files)) in runs.into_iter().enumerate() {
        let scratch_p = Scratch::new_in(&storage, &format!("bench-ne-{round}-{parallel}"));
        let target = if round == 0 {
            None
        } else {
            Some(Registry::start(&scratch_p))
        };
        let target = target.as_ref().unwrap_or(&target_ne);
        // Each run starts with no dirty pages of an earlier one (the pull,
        // the previous push) being written back under it.
        settle_disk();
        let destination = format!("{reference}={}/{REPO}:v1", target.addr);
        let cpu_before = (
            target.cpu_seconds(),
            containerd.cpu_seconds(),
            children_cpu_seconds(),
        );
        let socket = containerd.socket.display().to_string();
        let mut args = vec![
            "export",
            "--socket",
            &socket,
            "--plain-http",
            &target.addr,
            "--parallel",
            parallel,
            "--image",
            &destination,
        ];
        if from_files {
            args.extend(["--content-store", &content_store]);
        }
        let run = node_exporter(&scratch, &args);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let registry_cpu = target.cpu_seconds() - cpu_before.0;
        let containerd_cpu = containerd.cpu_seconds() - cpu_before.1;
        let exporter_cpu = children_cpu_seconds() - cpu_before.2;
        assert_complete(target, &image, "v1");
        if parallel == "3" {
            // The floor: the work of the two ends (containerd serving the
            // content, the registry hashing and writing it) plus one sha256
            // pass, the exporter's irreducible work (it verifies every
            // byte), spread over the machine's two cores.
            let gib = total as f64 / (1u64 << 30) as f64;
            let sha_pass = total as f64 / (1u64 << 20) as f64 / sha256_mib_s;
            let floor = (registry_cpu + containerd_cpu + sha_pass) / 2.0;
            let wall = run.elapsed.as_secs_f64();
            let path = if from_files {
                "content files"
            } else {
                "Content.Read"
            };
            // With the files read and their bytes sent into the registry's
            // socket counted too (the file path only: through
            // Content.Read the exporter receives from containerd instead).
            let with_io = if from_files {
                let floor_io = floor + io_pass_per_gib * gib / 2.0;
                format!("{floor_io:.2} | {:.2}", floor_io / wall)
            } else {
                "- | -".to_owned()
            };
            floor_rounds.push((
                from_files,
                floor / wall,
                // What all three processes really spent, on two cores:
                // the wall time no scheduling could beat with this code.
                format!(
                    "| {path} | {wall:.2} | {floor:.2} | **{:.2}** | {registry_cpu:.2} | {containerd_cpu:.2} | {sha_pass:.2} | {exporter_cpu:.2} | {:.2} | {:.2} | {with_io} |",
                    floor / wall,
                    exporter_cpu / gib,
                    (registry_cpu + containerd_cpu + exporter_cpu) / 2.0 / wall,
                ),
            ));
        }
        let peak_kib = run.peak_rss_kib.expect("peak RSS in the log");
        let label = if from_files {
            format!("--parallel {parallel}")
        } else {
            format!("--parallel {parallel}, through Content.Read")
        };
        eprintln!(
            "node-exporter {label}: {:.2?}, peak RSS {peak_kib} KiB",
            run.elapsed
        );
        node_exporter_runs.push((label, run.elapsed, peak_kib));
    }
    let median_of = |label: &str| {
        let mut rounds: Vec<_> = node_exporter_runs
            .iter()
            .filter(|(l, _, _)| l == label)
            .map(|(_, elapsed, peak)| (*elapsed, *peak))
            .collect();
        rounds.sort();
        rounds[rounds.len() / 2]
    };
    let (node_exporter_time, peak_kib) = median_of("--parallel 3");
    let (grpc_time, _) = median_of("--parallel 3, through Content.Read");
    let median_ratio = |from_files: bool| {
        let mut ratios: Vec<f64> = floor_rounds
            .iter()
            .filter(|(f, _, _)| *f == from_files)
            .map(|(_, ratio, _)| *ratio)
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios[ratios.len() / 2]
    };
    let (files_ratio, grpc_ratio) = (median_ratio(true), median_ratio(false));
    let floor_lines: Vec<&str> = floor_rounds
        .iter()
        .map(|(_, _, line)| line.as_str())
        .collect();
    let floor_line = floor_lines.join("\n");

    // 2. ctr export + skopeo copy oci-archive:.
    let tarball = scratch.join("export.tar");
    settle_disk();
    let export_time = timed("ctr export + skopeo copy oci-archive", || {
        containerd.ctr(&["images", "export", tarball.to_str().unwrap(), &reference]);
        run_skopeo(
            &format!("oci-archive:{}", tarball.display()),
            &format!("docker://{}/{REPO}:v1", target_export.addr),
        );
    });
    assert_complete(&target_export, &image, "v1");
    std::fs::remove_file(&tarball).unwrap();

    // 3. skopeo copy from an OCI layout of hard links into the content store.
    let layout = scratch.join("layout");
    settle_disk();
    let layout_time = timed("skopeo copy from hard-linked OCI layout", || {
        let blobs_dir = layout.join("blobs/sha256");
        std::fs::create_dir_all(&blobs_dir).unwrap();
        let store = containerd
            .dir
            .join("root/io.containerd.content.v1.content/blobs/sha256");
        for digest in image
            .layers
            .iter()
            .chain([&image.config])
            .map(|b| &b.digest)
            .chain([&image.digest])
        {
            let hex = digest.trim_start_matches("sha256:");
            std::fs::hard_link(store.join(hex), blobs_dir.join(hex)).unwrap();
        }
        std::fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": image.manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": "v1"},
            }],
        });
        std::fs::write(
            layout.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        run_skopeo(
            &format!("oci:{}:v1", layout.display()),
            &format!("docker://{}/{REPO}:v1", target_layout.addr),
        );
    });
    assert_complete(&target_layout, &image, "v1");

    for (label, elapsed, peak) in &node_exporter_runs {
        eprintln!(
            "| node-exporter {label} | {:.1} s | peak RSS {:.1} MiB |",
            elapsed.as_secs_f64(),
            *peak as f64 / 1024.0
        );
    }
    let vs_export = export_time.as_secs_f64() / node_exporter_time.as_secs_f64();
    let vs_layout = layout_time.as_secs_f64() / node_exporter_time.as_secs_f64();
    let vs_grpc = grpc_time.as_secs_f64() / node_exporter_time.as_secs_f64();
    eprintln!(
        "\n| method | time (median of 3 for node-exporter) | vs node-exporter |\n|---|---|---|\n\
         | node-exporter (default --parallel 3, content store mounted) | {:.1} s (peak RSS {:.1} MiB) | 1.0x |\n\
         | node-exporter --parallel 3 through Content.Read | {:.1} s | {vs_grpc:.1}x slower |\n\
         | ctr export + skopeo copy oci-archive | {:.1} s | {vs_export:.1}x slower |\n\
         | skopeo copy from hard-linked OCI layout | {:.1} s | {vs_layout:.1}x slower |\n",
        node_exporter_time.as_secs_f64(),
        peak_kib as f64 / 1024.0,
        grpc_time.as_secs_f64(),
        export_time.as_secs_f64(),
        layout_time.as_secs_f64(),
    );
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    eprintln!(
        "Against the floor (node-exporter --parallel 3, each round of this run; median {files_ratio:.2} reading content files ({}), {grpc_ratio:.2} through Content.Read; goal >= 0.9):\n\n\
         | read from | wall s | floor s | floor / wall | registry CPU s | containerd CPU s | one sha256 pass s | node-exporter CPU s | node-exporter CPU s per GiB | CPU spent / 2 cores / wall | floor with the file and socket pass s | its floor / wall |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n{floor_line}\n",
        verdict(files_ratio >= 0.9),
    );
    // Memory is a hard limit. Speed depends on the machine (on two shared
    // cores the registry's own hashing dominates), so the issue's targets
    // are reported, and only a regression below plain parity fails.
    eprintln!(
        "targets: >= 6x vs export+push: {}; >= 1.5x vs in-place skopeo: {}; < 64 MiB: {}",
        verdict(vs_export >= 6.0),
        verdict(vs_layout >= 1.5),
        verdict(peak_kib < 64 * 1024)
    );
    assert!(
        peak_kib < 64 * 1024,
        "peak RSS {peak_kib} KiB, target < 64 MiB"
    );
    assert!(
        vs_export >= 2.0,
        "only {vs_export:.2}x faster than export + push"
    );
    assert!(
        vs_layout >= 1.0,
        "slower than in-place skopeo ({vs_layout:.2}x)"
    );
}

/// Where the target registries store: `NE_BENCH_STORAGE`, else memory
/// (`/dev/shm`) when the machine has it. On a disk part of a registry's
/// work (writeback, the journal) runs in kernel threads no process is
/// charged for, and the floor, which counts the registry's CPU, would miss
/// it. containerd stays on disk, as on a node (its blobs are in the page
/// cache after the pull, as they are for a running image).
fn target_storage() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("NE_BENCH_STORAGE") {
        return dir.into();
    }
    let shm = std::path::PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// CPU seconds per GiB one thread spends reading `files` (in 128 KiB
/// pieces, as node-exporter does) and sending the bytes into a loopback
/// TCP connection: node-exporter's unavoidable work besides the hash,
/// measured in the run (best of three; a second thread drains the socket,
/// the registry's side, not counted).
fn file_to_socket_cpu_per_gib(files: &[std::path::PathBuf]) -> f64 {
    use std::io::{Read as _, Write as _};
    let mut best = f64::MAX;
    for _ in 0..3 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let drain = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buffer = vec![0u8; 256 << 10];
            while stream.read(&mut buffer).unwrap_or(0) > 0 {}
        });
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        let mut piece = vec![0u8; 128 << 10];
        let mut moved = 0u64;
        let before = thread_cpu_seconds();
        for path in files {
            let mut file = std::fs::File::open(path).unwrap();
            loop {
                let n = file.read(&mut piece).unwrap();
                if n == 0 {
                    break;
                }
                stream.write_all(&piece[..n]).unwrap();
                moved += n as u64;
            }
        }
        let spent = thread_cpu_seconds() - before;
        drop(stream);
        drain.join().unwrap();
        best = best.min(spent / (moved as f64 / (1u64 << 30) as f64));
    }
    best
}

/// The calling thread's CPU time, from the scheduler's nanosecond count.
fn thread_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// This machine's sha256 rate (MiB/s, best of three over 256 MiB), for
/// the floor.
fn sha256_rate() -> f64 {
    use sha2::{Digest as _, Sha256};
    let data = vec![0x5a_u8; 256 << 20];
    (0..3)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(Sha256::digest(&data));
            256.0 / started.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

/// Writes back every dirty page and waits for it, so a run does not pay
/// for the disk writes of the one before.
fn settle_disk() {
    run(&mut Command::new("sync"));
}

fn run_skopeo(from: &str, to: &str) {
    run(Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--preserve-digests",
        ])
        .arg(from)
        .arg(to));
}
