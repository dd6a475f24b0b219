//! node-exporter against a real containerd and a real docker-registry: images
//! are pulled into containerd, lost by the registry, and exported back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

const REPO: &str = "lifeboat/app";

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// A two-layer image with a directory, a nested file and a binary blob.
fn small_image(scratch: &Scratch, docker: bool, seed: &str) -> TestImage {
    let media_type = if docker {
        DOCKER_LAYER_GZIP
    } else {
        OCI_LAYER_GZIP
    };
    let random: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let base = layer(
        &scratch.path,
        &format!("{seed}-base"),
        &[
            (
                "etc/os-release",
                format!("NAME=lifeboat-{seed}\n").into_bytes(),
            ),
            ("usr/lib/data.bin", random),
        ],
        media_type,
    );
    let app = layer(
        &scratch.path,
        &format!("{seed}-app"),
        &[(
            "app/run.sh",
            format!("#!/bin/sh\necho {seed}\n").into_bytes(),
        )],
        media_type,
    );
    image(vec![base, app], node_architecture(), docker)
}

fn socket_args(containerd: &Containerd) -> Vec<String> {
    vec!["--socket".into(), containerd.socket.display().to_string()]
}

fn export(
    scratch: &Scratch,
    containerd: &Containerd,
    registry_addr: &str,
    images: &[&str],
    extra: &[&str],
) -> Run {
    let mut args: Vec<String> = vec!["export".into()];
    args.extend(socket_args(containerd));
    args.extend(["--plain-http".into(), registry_addr.to_owned()]);
    for image in images {
        args.extend(["--image".into(), (*image).to_owned()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    node_exporter(scratch, &args)
}

/// The registry serves `digest` under `repository`, with every blob it
/// references, byte for byte.
fn assert_registry_serves(
    registry: &Registry,
    repository: &str,
    digest: &str,
) -> serde_json::Value {
    let (bytes, _, served) = registry
        .manifest(repository, digest)
        .unwrap_or_else(|| panic!("registry does not serve {repository}@{digest}"));
    assert_eq!(
        digest_of(&bytes),
        digest,
        "manifest bytes hash to the digest"
    );
    assert_eq!(served, digest);
    let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let mut blobs = vec![manifest["config"].clone()];
    blobs.extend(manifest["layers"].as_array().unwrap().iter().cloned());
    for blob in blobs {
        let blob_digest = blob["digest"].as_str().unwrap();
        let bytes = registry
            .blob(repository, blob_digest)
            .unwrap_or_else(|| panic!("registry does not serve blob {blob_digest}"));
        assert_eq!(digest_of(&bytes), blob_digest);
        assert_eq!(bytes.len() as u64, blob["size"].as_u64().unwrap());
    }
    manifest
}

/// containerd can pull the image back from the registry: a fresh containerd,
/// so nothing comes from the first one's content store, and `ctr` unpacks it
/// (which checks the layers against the config's diff IDs).
fn assert_containerd_can_pull(scratch: &Scratch, reference: &str) {
    let fresh = Containerd::start(scratch, &format!("verify-{:08x}", rand::random::<u32>()));
    fresh.pull(reference);
    let listed = fresh.ctr(&["images", "ls", "-q"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(reference));
}

#[test]
fn exports_a_lost_image_digest_exact_and_containerd_can_pull_it_again() {
    let _serial = serial();
    let scratch = Scratch::new("exact");
    let containerd = Containerd::start(&scratch, "node");
    let mut registry = Registry::start(&scratch);
    let image = small_image(&scratch, false, "exact");
    registry.push_image(REPO, "v1", &image);
    let reference = format!("{}/{REPO}:v1", registry.addr);
    containerd.pull(&reference);

    registry.delete_and_collect(REPO, &[&image.digest]);
    assert!(
        registry.manifest(REPO, &image.digest).is_none(),
        "manifest gone"
    );
    for layer in &image.layers {
        assert!(
            !registry.has_blob(REPO, &layer.digest),
            "layer {} gone",
            layer.digest
        );
    }

    let run = export(&scratch, &containerd, &registry.addr, &[&reference], &[]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let report = run.report();
    let result = &report["results"][0];
    assert_eq!(result["status"], "Preserved", "{report}");
    assert_eq!(result["digest"], image.digest.as_str());
    assert_eq!(result["target"], reference.as_str());
    assert!(result.get("originalDigest").is_none());
    assert!(run.termination.len() <= 4096);

    assert_registry_serves(&registry, REPO, &image.digest);
    let (_, _, tagged) = registry.manifest(REPO, "v1").expect("tag restored");
    assert_eq!(tagged, image.digest);
    assert_containerd_can_pull(&scratch, &reference);
}

#[test]
fn exports_by_config_digest_to_another_repository() {
    let _serial = serial();
    let scratch = Scratch::new("byid");
    let containerd = Containerd::start(&scratch, "node");
    let registry = Registry::start(&scratch);
    let image = small_image(&scratch, false, "byid");
    registry.push_image(REPO, "v1", &image);
    containerd.pull(&format!("{}/{REPO}:v1", registry.addr));

    // CRI's image ID is the config digest; the target repository is new.
    let source = format!("{}={}/restored/app:r1", image.config.digest, registry.addr);
    let run = export(&scratch, &containerd, &registry.addr, &[&source], &[]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let result = &run.report()["results"][0];
    assert_eq!(result["status"], "Preserved");
    assert_eq!(result["digest"], image.digest.as_str());
    assert_registry_serves(&registry, "restored/app", &image.digest);
    let (_, _, tagged) = registry.manifest("restored/app", "r1").expect("tag r1");
    assert_eq!(tagged, image.digest);
}

#[test]
fn index_with_one_platform_on_the_node_pushes_that_platform_unchanged() {
    let _serial = serial();
    let scratch = Scratch::new("index");
    let containerd = Containerd::start(&scratch, "node");
    let mut registry = Registry::start(&scratch);
    let native = small_image(&scratch, false, "native");
    let foreign_layer = layer(
        &scratch.path,
        "foreign",
        &[("foreign.txt", b"other platform".to_vec())],
        OCI_LAYER_GZIP,
    );
    let foreign = image(vec![foreign_layer.clone()], other_architecture(), false);
    registry.push_image(REPO, "native-only", &native);
    registry.push_image(REPO, "foreign-only", &foreign);
    let (index_bytes, index_digest) = index(&[
        (&native, node_architecture()),
        (&foreign, other_architecture()),
    ]);
    registry.push_manifest(REPO, "multi", OCI_INDEX, &index_bytes);
    // The kubelet reports the index digest as the pod's imageID.
    let pinned = format!("{}/{REPO}@{index_digest}", registry.addr);
    containerd.pull(&pinned);

    registry.delete_and_collect(REPO, &[&index_digest, &native.digest, &foreign.digest]);
    assert!(registry.manifest(REPO, &native.digest).is_none());

    let run = export(&scratch, &containerd, &registry.addr, &[&pinned], &[]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let result = &run.report()["results"][0];
    assert_eq!(result["status"], "Preserved", "{result}");
    assert_eq!(
        result["digest"],
        native.digest.as_str(),
        "the platform manifest, unchanged"
    );
    assert_eq!(result["incompleteIndex"], index_digest.as_str());
    assert_eq!(
        result["platform"],
        format!("linux/{}", node_architecture()).as_str()
    );
    assert_registry_serves(&registry, REPO, &native.digest);
    assert!(
        registry.manifest(REPO, &index_digest).is_none(),
        "no index was invented"
    );
    assert!(!registry.has_blob(REPO, &foreign_layer.digest));
    assert_containerd_can_pull(
        &scratch,
        &format!("{}/{REPO}@{}", registry.addr, native.digest),
    );
}

#[test]
fn discarded_layers_are_rebuilt_and_reported_as_rebuilt() {
    let _serial = serial();
    let scratch = Scratch::new("rebuild");
    let containerd = Containerd::start(&scratch, "node");
    let mut registry = Registry::start(&scratch);
    let image = small_image(&scratch, true, "rebuild");
    registry.push_image(REPO, "v1", &image);
    let reference = format!("{}/{REPO}:v1", registry.addr);
    containerd.pull(&reference);
    // What discard_unpacked_layers leaves: snapshots, no compressed layers.
    block_on(async {
        let client = containerd.client().await;
        for layer in &image.layers {
            client.delete_content(&layer.digest).await.unwrap();
            assert!(!client.has(&layer.digest).await.unwrap());
        }
    });
    registry.delete_and_collect(REPO, &[&image.digest]);

    let inventory = node_exporter(
        &scratch,
        &[
            "inventory",
            "--socket",
            &containerd.socket.display().to_string(),
            "--image",
            &reference,
        ],
    );
    assert_eq!(inventory.code, 0, "{}", inventory.stderr);
    let listed: serde_json::Value = serde_json::from_str(inventory.stdout.trim()).unwrap();
    assert_eq!(listed["images"][0]["exportable"], "rebuild");
    assert_eq!(listed["images"][0]["manifests"][0]["layersPresent"], 0);

    let denied = export(
        &scratch,
        &containerd,
        &registry.addr,
        &[&reference],
        &["--no-rebuild"],
    );
    assert_eq!(denied.code, 3, "stderr:\n{}", denied.stderr);
    assert_eq!(denied.report()["results"][0]["reason"], "RebuildDenied");

    let run = export(&scratch, &containerd, &registry.addr, &[&reference], &[]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let result = &run.report()["results"][0];
    assert_eq!(result["status"], "Rebuilt", "{result}");
    assert_eq!(result["originalDigest"], image.digest.as_str());
    assert_eq!(result["rebuiltLayers"], 2);
    let new_digest = result["digest"].as_str().unwrap().to_owned();
    assert_ne!(
        new_digest, image.digest,
        "a rebuilt image never claims the original digest"
    );

    let manifest = assert_registry_serves(&registry, REPO, &new_digest);
    assert_eq!(manifest["mediaType"], DOCKER_MANIFEST);
    for (rebuilt, original) in manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&image.layers)
    {
        assert_eq!(rebuilt["mediaType"], DOCKER_LAYER_GZIP);
        assert_ne!(rebuilt["digest"], original.digest.as_str());
    }
    // The rebuilt layers hold the original files.
    let listing = |bytes: &[u8]| {
        let file = scratch.join(&format!("listing-{:08x}.tgz", rand::random::<u32>()));
        std::fs::write(&file, bytes).unwrap();
        let out = common::run(std::process::Command::new("tar").arg("-tzvf").arg(&file));
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('d'))
            .map(|l| {
                // permissions, size and name; owners and times may differ.
                let parts: Vec<&str> = l.split_whitespace().collect();
                format!(
                    "{} {} {}",
                    parts[0],
                    parts[2],
                    parts[5].trim_start_matches("./")
                )
            })
            .collect();
        lines.sort();
        lines
    };
    for (rebuilt, original) in manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&image.layers)
    {
        let bytes = registry
            .blob(REPO, rebuilt["digest"].as_str().unwrap())
            .unwrap();
        assert_eq!(listing(&bytes), listing(&original.bytes));
    }
    let (_, _, tagged) = registry.manifest(REPO, "v1").expect("tag restored");
    assert_eq!(tagged, new_digest);
    assert_containerd_can_pull(&scratch, &reference);

    // The node is left as it was: the rebuilt blobs were only leased.
    block_on(async {
        let client = containerd.client().await;
        let image_record = client.get_image(&reference).await.unwrap().unwrap();
        assert_eq!(image_record.target.unwrap().digest, image.digest);
    });
}

#[test]
fn discarded_layers_without_snapshots_are_unrecoverable() {
    let _serial = serial();
    let scratch = Scratch::new("unrecoverable");
    let containerd = Containerd::start(&scratch, "node");
    let registry = Registry::start(&scratch);
    let image = small_image(&scratch, false, "gone");
    registry.push_image(REPO, "v1", &image);
    let reference = format!("{}/{REPO}:v1", registry.addr);
    containerd.pull(&reference);
    // Compressed layers gone, and the unpacked snapshots too (top first).
    let diff_ids: Vec<String> = image
        .layers
        .iter()
        .map(|l| l.diff_id.clone().unwrap())
        .collect();
    let top_chain = digest_of(format!("{} {}", diff_ids[0], diff_ids[1]).as_bytes());
    containerd.ctr(&["snapshots", "rm", &top_chain]);
    // containerd's garbage collector may take the parent first, once the
    // top snapshot is gone.
    let parent = std::process::Command::new("ctr")
        .arg("-a")
        .arg(&containerd.socket)
        .args(["-n", "k8s.io", "snapshots", "rm", &diff_ids[0]])
        .output()
        .unwrap();
    assert!(
        parent.status.success() || String::from_utf8_lossy(&parent.stderr).contains("not found"),
        "{parent:?}"
    );
    let left = containerd.ctr(&["snapshots", "ls"]);
    assert_eq!(
        String::from_utf8_lossy(&left.stdout).lines().count(),
        1,
        "only the header is left"
    );
    block_on(async {
        let client = containerd.client().await;
        for layer in &image.layers {
            client.delete_content(&layer.digest).await.unwrap();
        }
    });

    let socket = containerd.socket.display().to_string();
    let inventory = node_exporter(
        &scratch,
        &["inventory", "--socket", &socket, "--image", &reference],
    );
    assert_eq!(inventory.code, 0, "{}", inventory.stderr);
    let listed: serde_json::Value = serde_json::from_str(inventory.stdout.trim()).unwrap();
    assert_eq!(listed["images"][0]["exportable"], "none", "{listed}");

    let run = export(&scratch, &containerd, &registry.addr, &[&reference], &[]);
    assert_eq!(run.code, 3, "stderr:\n{}", run.stderr);
    let result = &run.report()["results"][0];
    assert_eq!(result["reason"], "LayerUnrecoverable", "{result}");
}

#[test]
fn image_not_on_the_node_exits_3() {
    let _serial = serial();
    let scratch = Scratch::new("absent");
    let containerd = Containerd::start(&scratch, "node");
    let registry = Registry::start(&scratch);
    let absent_digest = digest_of(b"nothing like this anywhere");
    let absent_ref = format!("{}/{REPO}:absent", registry.addr);
    let run = export(
        &scratch,
        &containerd,
        &registry.addr,
        &[&absent_ref, &absent_digest],
        &[],
    );
    assert_eq!(run.code, 3, "stderr:\n{}", run.stderr);
    let report = run.report();
    for result in report["results"].as_array().unwrap() {
        assert_eq!(result["status"], "Failed");
        assert_eq!(result["reason"], "ImageNotOnNode");
    }
    assert_eq!(report["results"].as_array().unwrap().len(), 2);

    let inventory = node_exporter(
        &scratch,
        &[
            "inventory",
            "--socket",
            &containerd.socket.display().to_string(),
            "--image",
            &absent_ref,
        ],
    );
    assert_eq!(inventory.code, 3, "{}", inventory.stderr);
    let listed: serde_json::Value = serde_json::from_str(&inventory.termination).unwrap();
    assert_eq!(listed["missing"][0], absent_ref.as_str());
}

#[test]
fn registry_failing_mid_push_exits_4_and_a_retry_completes() {
    let _serial = serial();
    let scratch = Scratch::new("failing");
    let containerd = Containerd::start(&scratch, "node");
    let mut registry = Registry::start(&scratch);
    let big = layer(
        &scratch.path,
        "big",
        &[(
            "big.bin",
            // Random, so gzip cannot shrink it below the proxy's budget.
            (0..6_000_000u32).map(|_| rand::random::<u8>()).collect(),
        )],
        OCI_LAYER_GZIP,
    );
    let image = image(vec![big], node_architecture(), false);
    registry.push_image(REPO, "v1", &image);
    containerd.pull(&format!("{}/{REPO}:v1", registry.addr));
    registry.delete_and_collect(REPO, &[&image.digest]);

    let proxy = FailingProxy::start(&registry.addr, 1 << 20);
    let target = format!("{}/{REPO}:v1={}/{REPO}:v1", registry.addr, proxy.addr);
    let run = export(&scratch, &containerd, &proxy.addr, &[&target], &[]);
    assert_eq!(run.code, 4, "stderr:\n{}", run.stderr);
    let result = &run.report()["results"][0];
    eprintln!(
        "termination message after the failed push: {}",
        run.termination
    );
    assert_eq!(result["status"], "Failed");
    assert_eq!(result["reason"], "PushFailed");
    assert_eq!(result["engineReason"], "RegistryUnavailable");
    assert!(
        proxy.forwarded.load(std::sync::atomic::Ordering::SeqCst) >= 1 << 20,
        "the push got going"
    );
    drop(proxy);
    assert!(
        registry.manifest(REPO, &image.digest).is_none(),
        "no manifest after a failed push"
    );

    let retry = export(
        &scratch,
        &containerd,
        &registry.addr,
        &[&format!("{}/{REPO}:v1", registry.addr)],
        &[],
    );
    assert_eq!(retry.code, 0, "stderr:\n{}", retry.stderr);
    assert_registry_serves(&registry, REPO, &image.digest);
}

/// Memory must not grow with image size: a 256 MiB image (two 128 MiB
/// layers, above the engine's chunk size) goes through in a few tens of MiB.
/// The 1 GiB figure is in the benchmark (tests/benchmark.rs).
#[test]
fn memory_stays_flat_for_a_large_image() {
    let _serial = serial();
    let scratch = Scratch::new("large");
    let containerd = Containerd::start(&scratch, "node");
    let mut registry = Registry::start(&scratch);
    let image = random_image(&scratch, 2, 128);
    registry.push_image(REPO, "large", &image);
    let reference = format!("{}/{REPO}:large", registry.addr);
    containerd.pull(&reference);
    registry.delete_and_collect(REPO, &[&image.digest]);

    let run = export(&scratch, &containerd, &registry.addr, &[&reference], &[]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let result = &run.report()["results"][0];
    assert_eq!(result["status"], "Preserved");
    let total: u64 = image.layers.iter().map(|l| l.size).sum::<u64>() + image.config.size;
    assert_eq!(
        result["bytes"].as_u64(),
        Some(total),
        "every blob uploaded once"
    );
    let peak = run.peak_rss_kib.expect("node-exporter logs its peak RSS");
    eprintln!("256 MiB image: {:?}, peak RSS {} KiB", run.elapsed, peak);
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB for a 256 MiB image");
    let (_, _, served) = registry.manifest(REPO, "large").expect("tag restored");
    assert_eq!(served, image.digest);
    for layer in &image.layers {
        assert!(registry.has_blob(REPO, &layer.digest));
    }
}

#[test]
fn inventory_lists_images_digests_and_blobs() {
    let _serial = serial();
    let scratch = Scratch::new("inventory");
    let containerd = Containerd::start(&scratch, "node");
    let registry = Registry::start(&scratch);
    let image = small_image(&scratch, false, "inv");
    registry.push_image(REPO, "v1", &image);
    let reference = format!("{}/{REPO}:v1", registry.addr);
    containerd.pull(&reference);
    containerd.ctr(&[
        "images",
        "tag",
        &reference,
        &format!("{}/{REPO}:alias", registry.addr),
    ]);

    let run = node_exporter(
        &scratch,
        &[
            "inventory",
            "--socket",
            &containerd.socket.display().to_string(),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let listed: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(listed["namespace"], "k8s.io");
    let images = listed["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "two names, one image: {listed}");
    let entry = &images[0];
    assert_eq!(entry["digest"], image.digest.as_str());
    assert_eq!(entry["exportable"], "exact");
    assert_eq!(entry["names"].as_array().unwrap().len(), 2);
    assert_eq!(
        entry["manifests"][0]["config"],
        image.config.digest.as_str()
    );
    assert_eq!(entry["manifests"][0]["layers"], 2);
    assert_eq!(entry["manifests"][0]["layersPresent"], 2);
    let compact: serde_json::Value = serde_json::from_str(&run.termination).unwrap();
    assert_eq!(compact["images"][0]["digest"], image.digest.as_str());
}

#[test]
fn no_containerd_exits_5_and_bad_arguments_exit_2() {
    let _serial = serial();
    let scratch = Scratch::new("errors");
    let missing = scratch.join("nothing.sock");
    let run = node_exporter(
        &scratch,
        &[
            "export",
            "--socket",
            &missing.display().to_string(),
            "--image",
            "nginx",
        ],
    );
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert_eq!(run.report()["error"]["reason"], "ContainerdSocketNotFound");

    let run = node_exporter(&scratch, &["export", "--bogus"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let run = node_exporter(
        &scratch,
        &[
            "export",
            "--socket",
            &missing.display().to_string(),
            "--image",
            "Bad Ref",
        ],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
}
