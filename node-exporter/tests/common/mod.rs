//! Test harness: a private containerd and a real docker-registry on
//! 127.0.0.1, test images built from scratch, and Drop guards that stop
//! every process and unmount everything even when a test fails.
//!
//! Missing programs make tests panic, never skip.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// Serialises the tests in a binary: each starts its own daemons, and on two
/// cores running them side by side only makes timeouts likelier.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Runs a program, panicking with its output if it cannot start or fails.
pub fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e} (is it installed?)"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A directory under the system temp dir, removed (after unmounting anything
/// left below it) on drop.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        Scratch::new_in(&std::env::temp_dir(), name)
    }

    /// A scratch directory under `base` instead of the temporary directory.
    pub fn new_in(base: &Path, name: &str) -> Scratch {
        let path = base.join(format!(
            "lifeboat-ne-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path).unwrap();
        Scratch { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        unmount_under(&self.path);
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Unmounts everything mounted at or below `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().to_string();
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = Command::new("umount").arg("-l").arg(&point).status();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < timeout,
            "{what} not ready after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A private containerd with its own root, state and socket.
pub struct Containerd {
    child: Child,
    pub socket: PathBuf,
    pub dir: PathBuf,
    log: PathBuf,
}

impl Containerd {
    pub fn start(scratch: &Scratch, name: &str) -> Containerd {
        let dir = scratch.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                opt = dir.join("opt").display(),
                socket = socket.display(),
            ),
        )
        .unwrap();
        let log = dir.join("containerd.log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("containerd.err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start containerd: {e} (is it installed?)"));
        let mut containerd = Containerd {
            child,
            socket,
            dir,
            log,
        };
        wait_until("containerd", Duration::from_secs(30), || {
            if let Ok(Some(status)) = containerd.child.try_wait() {
                let err = std::fs::read_to_string(containerd.dir.join("containerd.err"));
                panic!("containerd exited with {status}: {err:?}");
            }
            Command::new("ctr")
                .arg("-a")
                .arg(&containerd.socket)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        containerd
    }

    /// `ctr` against this containerd, namespace k8s.io (test setup only:
    /// the product never shells out).
    pub fn ctr(&self, args: &[&str]) -> Output {
        run(Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .arg("-n")
            .arg("k8s.io")
            .args(args))
    }

    /// CPU seconds containerd has used so far (user + system).
    pub fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(&format!("/proc/{}/stat", self.child.id()), 11)
    }

    pub fn pull(&self, reference: &str) {
        self.ctr(&["images", "pull", "--plain-http", reference]);
    }

    pub async fn client(&self) -> lifeboat_node_exporter::containerd::Containerd {
        lifeboat_node_exporter::containerd::Containerd::connect(&self.socket, "k8s.io")
            .await
            .unwrap()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_under(&self.dir);
    }
}

/// A real docker-registry (CNCF distribution) with deletes enabled and no
/// blob descriptor cache (a cache would keep answering for collected blobs).
pub struct Registry {
    child: Option<Child>,
    pub addr: String,
    pub config: PathBuf,
    pub storage: PathBuf,
    dir: PathBuf,
}

impl Registry {
    pub fn start(scratch: &Scratch) -> Registry {
        let dir = scratch.join("registry");
        std::fs::create_dir_all(&dir).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let storage = dir.join("storage");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                storage.display()
            ),
        )
        .unwrap();
        let mut registry = Registry {
            child: None,
            addr,
            config,
            storage,
            dir,
        };
        registry.launch();
        registry
    }

    fn launch(&mut self) {
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("registry.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start docker-registry: {e} (is it installed?)"));
        self.child = Some(child);
        let addr = self.addr.clone();
        wait_until("docker-registry", Duration::from_secs(20), || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let log = std::fs::read_to_string(self.dir.join("registry.log"));
                panic!("docker-registry exited with {status}: {log:?}");
            }
            http(&addr, "GET", "/v2/", &[], None).is_ok_and(|r| r.status == 200)
        });
    }

    /// CPU seconds this registry process has used so far (user + system).
    pub fn cpu_seconds(&self) -> f64 {
        self.child.as_ref().map_or(0.0, |child| {
            process_cpu_seconds(&format!("/proc/{}/stat", child.id()), 11)
        })
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Deletes manifests by digest, then collects their blobs from storage
    /// with the registry stopped, as an operator would.
    pub fn delete_and_collect(&mut self, repository: &str, manifest_digests: &[&str]) {
        for digest in manifest_digests {
            let response = http(
                &self.addr,
                "DELETE",
                &format!("/v2/{repository}/manifests/{digest}"),
                &[],
                None,
            )
            .unwrap();
            assert_eq!(response.status, 202, "DELETE {digest}: {}", response.text());
        }
        self.stop();
        run(Command::new("docker-registry")
            .arg("garbage-collect")
            .arg("--delete-untagged")
            .arg(&self.config));
        self.launch();
    }

    pub fn manifest(&self, repository: &str, reference: &str) -> Option<(Vec<u8>, String, String)> {
        let response = http(
            &self.addr,
            "GET",
            &format!("/v2/{repository}/manifests/{reference}"),
            &[("Accept", ACCEPT_ALL_MANIFESTS)],
            None,
        )
        .unwrap();
        (response.status == 200).then(|| {
            let media_type = response.header("content-type").unwrap_or_default();
            let digest = response.header("docker-content-digest").unwrap_or_default();
            (response.body, media_type, digest)
        })
    }

    pub fn has_blob(&self, repository: &str, digest: &str) -> bool {
        let response = http(
            &self.addr,
            "HEAD",
            &format!("/v2/{repository}/blobs/{digest}"),
            &[],
            None,
        )
        .unwrap();
        response.status == 200
    }

    pub fn blob(&self, repository: &str, digest: &str) -> Option<Vec<u8>> {
        let response = http(
            &self.addr,
            "GET",
            &format!("/v2/{repository}/blobs/{digest}"),
            &[],
            None,
        )
        .unwrap();
        (response.status == 200).then_some(response.body)
    }

    pub fn push_blob(&self, repository: &str, blob: &Blob) {
        if self.has_blob(repository, &blob.digest) {
            return;
        }
        let start = http(
            &self.addr,
            "POST",
            &format!("/v2/{repository}/blobs/uploads/"),
            &[],
            Some(Body::Bytes(Vec::new())),
        )
        .unwrap();
        assert_eq!(start.status, 202, "start upload: {}", start.text());
        let location = start.header("location").unwrap();
        let path = location
            .split_once(&self.addr)
            .map_or(location.as_str(), |(_, path)| path)
            .to_owned();
        let separator = if path.contains('?') { '&' } else { '?' };
        let body = match &blob.path {
            Some(file) => Body::File(file.clone(), blob.size),
            None => Body::Bytes(blob.bytes.clone()),
        };
        let done = http(
            &self.addr,
            "PUT",
            &format!("{path}{separator}digest={}", blob.digest),
            &[("Content-Type", "application/octet-stream")],
            Some(body),
        )
        .unwrap();
        assert_eq!(done.status, 201, "finish upload: {}", done.text());
    }

    pub fn push_manifest(&self, repository: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let response = http(
            &self.addr,
            "PUT",
            &format!("/v2/{repository}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            Some(Body::Bytes(bytes.to_vec())),
        )
        .unwrap();
        assert_eq!(response.status, 201, "PUT manifest: {}", response.text());
    }

    pub fn push_image(&self, repository: &str, tag: &str, image: &TestImage) {
        for blob in image.layers.iter().chain([&image.config]) {
            self.push_blob(repository, blob);
        }
        self.push_manifest(repository, tag, &image.media_type, &image.manifest);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

pub enum Body {
    Bytes(Vec<u8>),
    File(PathBuf, u64),
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection: enough for a registry on
/// 127.0.0.1 without pulling an HTTP client into the tests.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Body>,
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let length = match &body {
        Some(Body::Bytes(bytes)) => Some(bytes.len() as u64),
        Some(Body::File(_, size)) => Some(*size),
        None => None,
    };
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(length) = length {
        head.push_str(&format!("Content-Length: {length}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    match body {
        Some(Body::Bytes(bytes)) => stream.write_all(&bytes)?,
        Some(Body::File(path, _)) => {
            std::io::copy(&mut std::fs::File::open(path)?, &mut stream)?;
        }
        None => {}
    }
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = if method == "HEAD" {
        Vec::new()
    } else {
        raw[split + 4..].to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// A blob in memory or (when large) in a file.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub bytes: Vec<u8>,
    pub path: Option<PathBuf>,
    /// For layers: the digest of the uncompressed tar.
    pub diff_id: Option<String>,
}

impl Blob {
    pub fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// An image manifest with its blobs.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub media_type: String,
    pub manifest: Vec<u8>,
    pub digest: String,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

fn file_sha256(path: &Path) -> String {
    let output = run(Command::new("sha256sum").arg(path));
    let text = String::from_utf8_lossy(&output.stdout);
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

/// A gzip-compressed layer of the given files (name, contents), built with
/// tar and gzip so it is a layer like any other.
pub fn layer(work: &Path, name: &str, files: &[(&str, Vec<u8>)], media_type: &str) -> Blob {
    let root = work.join(format!("{name}.d"));
    std::fs::create_dir_all(&root).unwrap();
    for (path, contents) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    layer_from_dir(work, name, &root, media_type, "-6")
}

/// A layer from a directory already on disk; `level` is gzip's (`-1` for
/// big random data, which does not compress anyway).
pub fn layer_from_dir(work: &Path, name: &str, root: &Path, media_type: &str, level: &str) -> Blob {
    let tar = work.join(format!("{name}.tar"));
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-C",
        ])
        .arg(root)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    let diff_id = file_sha256(&tar);
    run(Command::new("gzip").args(["-n", "-f", level]).arg(&tar));
    let gz = work.join(format!("{name}.tar.gz"));
    let digest = file_sha256(&gz);
    let size = std::fs::metadata(&gz).unwrap().len();
    let (bytes, path) = if size < 16 << 20 {
        (std::fs::read(&gz).unwrap(), None)
    } else {
        (Vec::new(), Some(gz))
    };
    Blob {
        media_type: media_type.to_owned(),
        digest,
        size,
        bytes,
        path,
        diff_id: Some(diff_id),
    }
}

/// An image for `architecture` over the given layers, OCI or Docker typed.
pub fn image(layers: Vec<Blob>, architecture: &str, docker: bool) -> TestImage {
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone().unwrap()).collect();
    let config_json = serde_json::json!({
        "architecture": architecture,
        "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layers.iter().map(|_| serde_json::json!({"created_by": "lifeboat test"})).collect::<Vec<_>>(),
    });
    let config_bytes = serde_json::to_vec(&config_json).unwrap();
    let (manifest_type, config_type) = if docker {
        (DOCKER_MANIFEST, DOCKER_CONFIG)
    } else {
        (OCI_MANIFEST, OCI_CONFIG)
    };
    let config = Blob {
        media_type: config_type.to_owned(),
        digest: digest_of(&config_bytes),
        size: config_bytes.len() as u64,
        bytes: config_bytes,
        path: None,
        diff_id: None,
    };
    let manifest_json = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec_pretty(&manifest_json).unwrap();
    TestImage {
        media_type: manifest_type.to_owned(),
        digest: digest_of(&manifest),
        manifest,
        config,
        layers,
    }
}

/// An OCI index over per-platform images.
pub fn index(images: &[(&TestImage, &str)]) -> (Vec<u8>, String) {
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|(image, architecture)| {
            serde_json::json!({
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": image.manifest.len(),
                "platform": {"architecture": architecture, "os": "linux"},
            })
        })
        .collect();
    let bytes = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }))
    .unwrap();
    let digest = digest_of(&bytes);
    (bytes, digest)
}

/// The architecture containerd pulls for on this machine.
pub fn node_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("tests do not know architecture {other}"),
    }
}

pub fn other_architecture() -> &'static str {
    if node_architecture() == "amd64" {
        "arm64"
    } else {
        "amd64"
    }
}

/// The node-exporter binary, run to completion.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub termination: String,
    pub peak_rss_kib: Option<u64>,
    pub elapsed: Duration,
}

impl Run {
    pub fn report(&self) -> serde_json::Value {
        serde_json::from_str(&self.termination).unwrap_or_else(|e| {
            panic!(
                "termination message is not JSON ({e}): {:?}\nstderr:\n{}",
                self.termination, self.stderr
            )
        })
    }
}

pub fn node_exporter(scratch: &Scratch, args: &[&str]) -> Run {
    let termination = scratch.join(&format!("termination-{:08x}", rand::random::<u32>()));
    let start = Instant::now();
    // NE_BENCH_PERF=<dir>: each run under `perf record` (call graphs, one
    // file per run) to see where node-exporter's CPU goes; its figures then
    // include perf's overhead.
    let mut command = match std::env::var("NE_BENCH_PERF") {
        Ok(dir) => {
            let output = format!("{dir}/node-exporter-{:08x}.data", rand::random::<u32>());
            let mut perf = Command::new("perf");
            perf.args(["record", "--quiet", "-F", "2000", "-g", "-o", &output, "--"]);
            perf.arg(env!("CARGO_BIN_EXE_node-exporter"));
            perf
        }
        Err(_) => Command::new(env!("CARGO_BIN_EXE_node-exporter")),
    };
    let output = command
        .args(args)
        .arg("--termination-log")
        .arg(&termination)
        .env_remove("CONTAINERD_ADDRESS")
        .env("RUST_LOG", "info")
        .output()
        .expect("run node-exporter");
    let elapsed = start.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // node-exporter logs the kernel's high-water mark of its own RSS.
    let peak_rss_kib = stderr
        .split("peak_rss_kib=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok());
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr,
        termination: std::fs::read_to_string(&termination).unwrap_or_default(),
        peak_rss_kib,
        elapsed,
    }
}

/// A TCP proxy in front of the registry that forwards faithfully until
/// `budget` bytes of request data have passed, then cuts every connection
/// (the one in flight and all later ones): a registry dying mid-push.
pub struct FailingProxy {
    pub addr: String,
    stop: Arc<AtomicBool>,
    pub forwarded: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl FailingProxy {
    pub fn start(upstream: &str, budget: u64) -> FailingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let upstream = upstream.to_owned();
        let thread = {
            let stop = stop.clone();
            let forwarded = forwarded.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let client = match listener.accept() {
                        Ok((client, _)) => client,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    if forwarded.load(Ordering::SeqCst) >= budget {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        continue;
                    };
                    let _ = client.set_nonblocking(false);
                    let (forwarded, stop) = (forwarded.clone(), stop.clone());
                    std::thread::spawn(move || relay(client, server, budget, forwarded, stop));
                }
            })
        };
        FailingProxy {
            addr,
            stop,
            forwarded,
            thread: Some(thread),
        }
    }
}

fn relay(
    client: TcpStream,
    server: TcpStream,
    budget: u64,
    forwarded: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let (mut client_read, mut server_write) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    // Wake up now and then to notice the proxy being stopped.
    let _ = client_read.set_read_timeout(Some(Duration::from_millis(200)));
    let (mut server_read, mut client_write) = (server, client);
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut server_read, &mut client_write);
        let _ = client_write.shutdown(Shutdown::Both);
    });
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let n = match client_read.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => break,
        };
        let total = forwarded.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
        if total >= budget {
            // Cut both ways, mid-request.
            let _ = client_read.shutdown(Shutdown::Both);
            let _ = server_write.shutdown(Shutdown::Both);
            break;
        }
        if server_write.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = server_write.shutdown(Shutdown::Write);
    let _ = back.join();
}

impl Drop for FailingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An image of `layers` layers of `layer_mib` MiB of random data each (so
/// compression cannot make it smaller), built on disk, never in memory.
pub fn random_image(scratch: &Scratch, layers: usize, layer_mib: u64) -> TestImage {
    let blobs = (0..layers)
        .map(|i| {
            let root = scratch.join(&format!("random-{i}.d"));
            std::fs::create_dir_all(&root).unwrap();
            run(Command::new("head")
                .arg("-c")
                .arg((layer_mib << 20).to_string())
                .arg("/dev/urandom")
                .stdout(std::fs::File::create(root.join("data.bin")).unwrap()));
            let blob = layer_from_dir(
                &scratch.path,
                &format!("random-{i}"),
                &root,
                OCI_LAYER_GZIP,
                "-1",
            );
            std::fs::remove_dir_all(&root).unwrap();
            blob
        })
        .collect();
    image(blobs, node_architecture(), false)
}

/// CPU seconds from a `/proc/<pid>/stat` file: the two tick counters at
/// `first` and `first + 1` after the command name (11: the process's own
/// utime and stime; 13: its waited-for children's), at USER_HZ = 100.
pub fn process_cpu_seconds(stat_path: &str, first: usize) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(first) + ticks(first + 1)) as f64 / 100.0
}

/// CPU seconds of this process's waited-for children so far (a child run
/// with `Command::output` counts once it has been waited for).
pub fn children_cpu_seconds() -> f64 {
    process_cpu_seconds("/proc/self/stat", 13)
}
