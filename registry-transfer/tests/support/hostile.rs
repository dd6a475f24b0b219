//! A hostile registry: a small HTTP/1.1 server on 127.0.0.1 whose every
//! answer a test decides (a closure from request to [`Reply`]), including
//! answers no honest registry gives: endless bodies, bytes trickling in,
//! redirects and upload locations on other hosts, lying digests. It
//! records every request it gets (with its `Authorization`, if any) and
//! the body bytes it managed to send, so tests can prove where credentials
//! went and how much a client swallowed.
//!
//! [`ImageStore`] answers like a registry holding some images and taking
//! any upload, so attacks only override the routes they are about.
//!
//! One request per connection (`Connection: close`): simple, and reqwest
//! copes.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::images::{Manifest, sha256};

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// How a body is sent.
#[derive(Clone, Debug)]
pub enum Body {
    Bytes(Vec<u8>),
    /// `pattern` repeated until the client hangs up (chunked encoding).
    Endless(Vec<u8>),
    /// One byte per `interval` (chunked encoding), until done or hung up.
    Trickle(Vec<u8>, Duration),
}

#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Body::Bytes(Vec::new()),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn body(mut self, bytes: impl Into<Vec<u8>>) -> Reply {
        self.body = Body::Bytes(bytes.into());
        self
    }

    pub fn endless(mut self, pattern: impl Into<Vec<u8>>) -> Reply {
        self.body = Body::Endless(pattern.into());
        self
    }

    pub fn trickle(mut self, bytes: impl Into<Vec<u8>>, interval: Duration) -> Reply {
        self.body = Body::Trickle(bytes.into(), interval);
        self
    }
}

/// What the server logs per request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub authorization: Option<String>,
}

type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

pub struct HostileServer {
    pub port: u16,
    /// `127.0.0.1:<port>`: the registry name in references.
    pub host: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    body_bytes_sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl HostileServer {
    pub async fn start(
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> HostileServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind hostile registry");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let body_bytes_sent = Arc::new(AtomicU64::new(0));
        let handler: Handler = Arc::new(handler);
        let (task_seen, task_sent) = (seen.clone(), body_bytes_sent.clone());
        let task = tokio::spawn(async move {
            // Ends when the test drops the server (abort on drop).
            while let Ok((stream, _)) = listener.accept().await {
                let (handler, seen, sent) = (handler.clone(), task_seen.clone(), task_sent.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, handler, seen, sent).await;
                });
            }
        });
        HostileServer {
            port,
            host: format!("127.0.0.1:{port}"),
            seen,
            body_bytes_sent,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.host)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests that carried an `Authorization` header.
    pub fn authorized_requests(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.authorization.is_some())
            .collect()
    }

    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.target.contains(path_contains))
            .count()
    }

    /// Body bytes written to sockets so far (what the kernel accepted, an
    /// upper bound of what clients read).
    pub fn body_bytes_sent(&self) -> u64 {
        self.body_bytes_sent.load(Ordering::Relaxed)
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Longest request head or body the server accepts (tests send little).
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

async fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).await?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut request = Request {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    if let Some(length) = request
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut body = vec![0; length.min(MAX_REQUEST_BYTES)];
        reader.read_exact(&mut body).await?;
        request.body = body;
    } else if request
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line).await?;
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await?;
            if size == 0 {
                break;
            }
            chunk.truncate(size);
            if request.body.len() + size > MAX_REQUEST_BYTES {
                break;
            }
            request.body.extend_from_slice(&chunk);
        }
    }
    Ok(Some(request))
}

async fn serve(
    stream: TcpStream,
    handler: Handler,
    seen: Arc<Mutex<Vec<Seen>>>,
    sent: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let Some(request) = read_request(&mut reader).await? else {
        return Ok(());
    };
    seen.lock().unwrap().push(Seen {
        method: request.method.clone(),
        target: request.target.clone(),
        authorization: request.header("authorization").map(str::to_owned),
    });
    let reply = handler(&request);
    let mut stream = reader.into_inner();
    let mut head = format!("HTTP/1.1 {} Hostile\r\nConnection: close\r\n", reply.status);
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let is_head = request.method == "HEAD";
    match &reply.body {
        Body::Bytes(bytes) => {
            if !reply
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            {
                head.push_str(&format!("Content-Length: {}\r\n", bytes.len()));
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes()).await?;
            if !is_head {
                stream.write_all(bytes).await?;
                sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
        }
        Body::Endless(pattern) => {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            stream.write_all(head.as_bytes()).await?;
            let mut chunk = Vec::new();
            while chunk.len() < 64 * 1024 {
                chunk.extend_from_slice(pattern);
            }
            let framed = [
                format!("{:x}\r\n", chunk.len()).into_bytes(),
                chunk.clone(),
                b"\r\n".to_vec(),
            ]
            .concat();
            // Until the client hangs up (a write fails).
            loop {
                stream.write_all(&framed).await?;
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
        Body::Trickle(bytes, interval) => {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            stream.write_all(head.as_bytes()).await?;
            for byte in bytes {
                tokio::time::sleep(*interval).await;
                stream.write_all(b"1\r\n").await?;
                stream.write_all(&[*byte]).await?;
                stream.write_all(b"\r\n").await?;
                stream.flush().await?;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            stream.write_all(b"0\r\n\r\n").await?;
        }
    }
    stream.flush().await?;
    Ok(())
}

/// A registry in memory: serves the manifests and blobs it was given
/// (under `repository`), and takes any upload and manifest push to any
/// repository without keeping it. Enough for the engine to copy from and
/// to it; attacks override single routes before falling back to this.
#[derive(Clone, Default)]
pub struct ImageStore {
    /// (repository, tag or digest) -> (bytes, media type)
    manifests: HashMap<(String, String), (Vec<u8>, String)>,
    /// (repository, digest) -> bytes
    blobs: HashMap<(String, String), Vec<u8>>,
}

impl ImageStore {
    pub fn new() -> ImageStore {
        ImageStore::default()
    }

    /// Adds a manifest (and its blobs and children, recursively) under
    /// `repository`, reachable by digest and, if given, by `tag`.
    pub fn add(&mut self, repository: &str, manifest: &Manifest, tag: Option<&str>) {
        let entry = (manifest.bytes.clone(), manifest.media_type.clone());
        self.manifests.insert(
            (repository.to_owned(), manifest.digest.clone()),
            entry.clone(),
        );
        if let Some(tag) = tag {
            self.manifests
                .insert((repository.to_owned(), tag.to_owned()), entry);
        }
        for blob in &manifest.blobs {
            self.blobs.insert(
                (repository.to_owned(), blob.digest.clone()),
                blob.data.as_ref().clone(),
            );
        }
        for child in &manifest.children {
            self.add(repository, child, None);
        }
    }

    /// Adds raw manifest bytes under a reference (for hand-made documents).
    pub fn add_raw(&mut self, repository: &str, reference: &str, bytes: Vec<u8>, media_type: &str) {
        self.manifests.insert(
            (repository.to_owned(), reference.to_owned()),
            (bytes, media_type.to_owned()),
        );
    }

    pub fn add_blob(&mut self, repository: &str, digest: &str, bytes: Vec<u8>) {
        self.blobs
            .insert((repository.to_owned(), digest.to_owned()), bytes);
    }

    /// The honest answer to `request`.
    pub fn answer(&self, request: &Request) -> Reply {
        let path = request.path();
        let method = request.method.as_str();
        if path == "/v2/" {
            return Reply::new(200).body("{}");
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return Reply::new(404);
        };
        if let Some((repository, reference)) = rest.split_once("/manifests/") {
            return match method {
                "GET" | "HEAD" => match self
                    .manifests
                    .get(&(repository.to_owned(), reference.to_owned()))
                {
                    Some((bytes, media_type)) => Reply::new(200)
                        .header("Content-Type", media_type.clone())
                        .header("Docker-Content-Digest", sha256(bytes))
                        .body(bytes.clone()),
                    None => Reply::new(404).body(r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#),
                },
                "PUT" => Reply::new(201).header("Docker-Content-Digest", sha256(&request.body)),
                "DELETE" => Reply::new(202),
                _ => Reply::new(405),
            };
        }
        if let Some((repository, tail)) = rest.split_once("/blobs/") {
            if let Some(session) = tail.strip_prefix("uploads/") {
                return match method {
                    "POST" => Reply::new(202)
                        .header("Location", format!("/v2/{repository}/blobs/uploads/s1"))
                        .header("Range", "0-0"),
                    "PATCH" => Reply::new(202).header(
                        "Location",
                        format!("/v2/{repository}/blobs/uploads/{session}"),
                    ),
                    "PUT" => Reply::new(201),
                    "DELETE" => Reply::new(204),
                    "GET" => Reply::new(204).header("Range", "0-0"),
                    _ => Reply::new(405),
                };
            }
            return match (
                method,
                self.blobs.get(&(repository.to_owned(), tail.to_owned())),
            ) {
                ("GET" | "HEAD", Some(bytes)) => Reply::new(200)
                    .header("Docker-Content-Digest", tail.to_owned())
                    .body(bytes.clone()),
                ("GET" | "HEAD", None) => Reply::new(404),
                _ => Reply::new(405),
            };
        }
        Reply::new(404)
    }
}
