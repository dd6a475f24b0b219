//! Real `docker-registry` (CNCF distribution) processes for tests and the
//! benchmark: each on 127.0.0.1, a free port, its own temporary storage,
//! optionally with htpasswd auth and TLS from a CA made with `openssl`.
//! A missing binary is an error, never a skip.

#![allow(dead_code)]

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where [`TempDir`]s are made: the system's temporary directory unless a
/// benchmark chose another place with [`set_temp_base`].
static TEMP_BASE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Puts every later [`TempDir`] (and so every test registry's storage) under
/// `base`. Only the first call counts.
pub fn set_temp_base(base: PathBuf) {
    let _ = TEMP_BASE.set(base);
}

/// A directory removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let unique = format!(
            "lifeboat-rt-{label}-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let path = TEMP_BASE
            .get()
            .cloned()
            .unwrap_or_else(std::env::temp_dir)
            .join(unique);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Options for [`TestRegistry::start`].
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// htpasswd user and password.
    pub basic_auth: Option<(String, String)>,
    /// Serve HTTPS with a certificate from a fresh test CA.
    pub tls: bool,
    /// Start the registry WITH the OCI 1.1 referrers API
    /// (`oci-registry`, built by hack/build-registry-tools.sh) instead of
    /// distribution 2.8, which has none. Plain HTTP, no auth.
    pub referrers_api: bool,
}

pub struct TestRegistry {
    pub port: u16,
    /// `127.0.0.1:<port>`: the registry name in references.
    pub host: String,
    pub tls: bool,
    pub ca_pem: Option<Vec<u8>>,
    pub basic_auth: Option<(String, String)>,
    child: Child,
    dir: TempDir,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 / localhost, in `dir`.
/// Returns (ca.pem, server.pem, server.key).
pub fn make_test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.pem");
    let ext = dir.join("server.ext");
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=lifeboat test CA",
        ])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("write ext");
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-out")
        .arg(&cert)
        .arg("-extfile")
        .arg(&ext));
    (ca, cert, key)
}

impl TestRegistry {
    pub fn start(options: RegistryOptions) -> TestRegistry {
        let mut last_error = String::new();
        // The free port may be taken between probing and binding: retry.
        for _ in 0..5 {
            match TestRegistry::try_start(&options) {
                Ok(registry) => return registry,
                Err(e) => last_error = e,
            }
        }
        panic!("docker-registry did not start: {last_error}");
    }

    pub fn start_plain() -> TestRegistry {
        TestRegistry::start(RegistryOptions::default())
    }

    /// A registry with the referrers API (see [`RegistryOptions`]).
    pub fn start_with_referrers_api() -> TestRegistry {
        TestRegistry::start(RegistryOptions {
            referrers_api: true,
            ..RegistryOptions::default()
        })
    }

    fn try_start(options: &RegistryOptions) -> Result<TestRegistry, String> {
        let dir = TempDir::new("registry");
        let port = free_port();
        if options.referrers_api {
            return TestRegistry::try_start_oci_registry(dir, port);
        }
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).map_err(|e| e.to_string())?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: lifeboat-test-secret\n",
            storage.display()
        );
        let mut ca_pem = None;
        if options.tls {
            let (ca, cert, key) = make_test_pki(dir.path());
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
            ca_pem = Some(std::fs::read(ca).map_err(|e| e.to_string())?);
        }
        if let Some((user, password)) = &options.basic_auth {
            let output = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .map_err(|e| format!("htpasswd: {e}"))?;
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, &output.stdout).map_err(|e| e.to_string())?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: lifeboat-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::File::create(&config_path)
            .and_then(|mut f| f.write_all(config.as_bytes()))
            .map_err(|e| e.to_string())?;
        let stdout =
            std::fs::File::create(dir.path().join("access.log")).map_err(|e| e.to_string())?;
        let stderr =
            std::fs::File::create(dir.path().join("registry.log")).map_err(|e| e.to_string())?;
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                format!("cannot start docker-registry (is the package installed?): {e}")
            })?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
                return Err(format!("docker-registry exited with {status}: {log}"));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("docker-registry did not listen within 15s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(TestRegistry {
            port,
            host: format!("127.0.0.1:{port}"),
            tls: options.tls,
            ca_pem,
            basic_auth: options.basic_auth.clone(),
            child,
            dir,
        })
    }

    fn try_start_oci_registry(dir: TempDir, port: u16) -> Result<TestRegistry, String> {
        let blobs = dir.path().join("storage");
        std::fs::create_dir_all(&blobs).map_err(|e| e.to_string())?;
        // It logs one line per request on stderr: that is its access log.
        let log =
            std::fs::File::create(dir.path().join("access.log")).map_err(|e| e.to_string())?;
        let mut child = Command::new(crate::support::tools::tool("oci-registry"))
            .arg("-address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-blobs")
            .arg(&blobs)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start oci-registry: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("oci-registry exited with {status}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("oci-registry did not listen within 15s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(TestRegistry {
            port,
            host: format!("127.0.0.1:{port}"),
            tls: false,
            ca_pem: None,
            basic_auth: None,
            child,
            dir,
        })
    }

    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host)
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage/docker/registry/v2")
    }

    /// Whether the blob's data exists in the registry's storage at all.
    pub fn blob_stored(&self, digest: &str) -> bool {
        let hex = digest.trim_start_matches("sha256:");
        self.storage()
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
            .exists()
    }

    /// Upload sessions still holding data in a repository. (Distribution
    /// 2.8 leaves an empty `hashstates` directory behind when a session is
    /// deleted; that is not a session.)
    pub fn open_uploads(&self, repository: &str) -> usize {
        std::fs::read_dir(
            self.storage()
                .join("repositories")
                .join(repository)
                .join("_uploads"),
        )
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.path().join("data").exists())
                .count()
        })
        .unwrap_or(0)
    }

    /// Access-log lines (one per request) containing all of `needles`.
    pub fn count_requests(&self, needles: &[&str]) -> usize {
        self.access_log()
            .lines()
            .filter(|line| needles.iter().all(|n| line.contains(n)))
            .count()
    }

    /// CPU seconds the registry process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    pub fn total_requests(&self) -> usize {
        self.count_requests(&["HTTP/1.1\""])
    }
}

/// utime + stime of a process, from /proc/<pid>/stat (USER_HZ = 100).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
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
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
