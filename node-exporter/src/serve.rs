//! The `serve` command: one node hands an image to another with no
//! registry in between. It serves the blobs of the named images, and
//! nothing else of the content store, over the part of the registry API an
//! importer reads (`GET`/`HEAD` of `/v2/<name>/manifests/<digest>` and
//! `/v2/<name>/blobs/<digest>`, by digest only), to a client that presents
//! the one-time session token as Basic credentials. It stops when the
//! importer says it is done (`POST /lifeboat/done`), when its time is up,
//! or on SIGTERM; the token dies with it.
//!
//! The importer verifies every blob by digest (containerd refuses to commit
//! anything else), so the transport needs no integrity of its own; the
//! token keeps other pods from reading the node's content.
//!
//! Only what the node holds whole is served: an image whose layers were
//! discarded after unpacking is refused rather than rebuilt, because a
//! rebuilt image has another digest and an importer must never record it
//! under the original one.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lifeboat_node_protocol::{ImageSource, reasons};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::cli::Options;
use crate::containerd::Containerd;
use crate::error::Error;
use crate::image::{self, ImageState};
use crate::import::{PEER_USER, read_token};
use crate::oci;
use crate::report::{ImageResult, Report, Status};

/// One blob the session may hand out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub size: u64,
    /// Set for manifests and indexes: what `Content-Type` says.
    pub media_type: Option<String>,
}

/// What of an image a peer may fetch: the root, every child manifest the
/// node holds whole with its config and layers. Refuses an image with a
/// manifest whose blobs are not all here (layers discarded after
/// unpacking): serving it would need a rebuild, which changes the digest.
pub fn served_content(state: &ImageState) -> Result<HashMap<String, Served>, Error> {
    let mut served = HashMap::new();
    let (root, children): (
        Option<&registry_transfer::Descriptor>,
        Vec<&image::ManifestState>,
    ) = match state {
        ImageState::Manifest(manifest) => (None, vec![manifest.as_ref()]),
        ImageState::Index {
            descriptor,
            children,
        } => (Some(descriptor), children.iter().collect()),
    };
    let mut whole = 0usize;
    for child in children {
        let Some(content) = &child.content else {
            // Not on this node at all (another platform): a sparse index.
            continue;
        };
        if !child.is_complete() {
            let missing = content
                .manifest
                .layers
                .iter()
                .zip(&content.layers_present)
                .find(|(_, present)| !**present)
                .map_or_else(
                    || content.manifest.config.digest.clone(),
                    |(layer, _)| layer.digest.clone(),
                );
            return Err(Error::LayerUnrecoverable {
                digest: missing,
                reason: format!(
                    "manifest {} is not whole on this node (layers discarded after unpacking?); \
                     a peer import is digest-exact or nothing",
                    child.descriptor.digest
                ),
            });
        }
        whole += 1;
        served.insert(
            child.descriptor.digest.to_string(),
            Served {
                size: child.descriptor.size,
                media_type: Some(child.descriptor.media_type.clone()),
            },
        );
        for blob in std::iter::once(&content.manifest.config).chain(&content.manifest.layers) {
            served.insert(
                blob.digest.clone(),
                Served {
                    size: blob.size,
                    media_type: None,
                },
            );
        }
    }
    if whole == 0 {
        return Err(Error::ImageNotFound(
            root.map_or_else(String::new, |r| r.digest.to_string()),
        ));
    }
    if let Some(root) = root {
        served.insert(
            root.digest.to_string(),
            Served {
                size: root.size,
                media_type: Some(root.media_type.clone()),
            },
        );
    }
    Ok(served)
}

struct Session {
    containerd: Containerd,
    served: HashMap<String, Served>,
    /// `repository:tag` of the images asked for by tag, and their root
    /// digests: what a client that knows only the tag resolves.
    tags: HashMap<String, String>,
    /// `Basic base64(user:token)`, compared in constant time; `None` on
    /// loopback, where only a port-forward through the API server reaches.
    authorization: Option<Vec<u8>>,
    done: Notify,
    bytes: AtomicU64,
}

type Body = UnsyncBoxBody<Bytes, Error>;

/// Serves the requested images until the importer is done, the time is up
/// or `stop` fires. One result per image; all fail if no importer finished.
pub async fn run(
    containerd: &Containerd,
    options: &Options,
    stop: impl std::future::Future<Output = ()>,
) -> Report {
    match serve(containerd, options, stop).await {
        Ok(report) => report,
        Err(error) => {
            tracing::error!(reason = error.reason(), %error, "serve failed");
            crate::report::run_failed(&error)
        }
    }
}

async fn serve(
    containerd: &Containerd,
    options: &Options,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Report, Error> {
    let authorization = match (&options.token_file, options.loopback) {
        (None, true) => None,
        (token_file, _) => {
            let token = read_token(token_file.as_deref().unwrap_or(std::path::Path::new("")))?;
            let credentials =
                base64::engine::general_purpose::STANDARD.encode(format!("{PEER_USER}:{token}"));
            Some(format!("Basic {credentials}").into_bytes())
        }
    };
    let mut served = HashMap::new();
    let mut tags = HashMap::new();
    let mut roots = Vec::new();
    for arg in &options.images {
        let located = image::locate(containerd, &arg.source).await?;
        let state = image::inspect(containerd, &located.descriptor).await?;
        served.extend(served_content(&state)?);
        if let ImageSource::Reference(reference) = &arg.source
            && let Some(tag) = &reference.tag
        {
            tags.insert(
                format!("{}:{tag}", reference.repository),
                located.descriptor.digest.to_string(),
            );
        }
        roots.push((arg.source.clone(), located.descriptor.digest));
    }
    let session = Arc::new(Session {
        containerd: containerd.clone(),
        served,
        tags,
        authorization,
        done: Notify::new(),
        bytes: AtomicU64::new(0),
    });
    let port = options.listen_port.unwrap_or(0);
    let host = if options.loopback {
        [127, 0, 0, 1]
    } else {
        [0, 0, 0, 0]
    };
    let address = SocketAddr::from((host, port));
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| Error::Io {
            context: "cannot listen on",
            path: address.to_string().into(),
            source,
        })?;
    tracing::info!(%address, blobs = session.served.len(), "serving to one peer");
    let deadline = tokio::time::sleep(Duration::from_secs(options.serve_seconds));
    let finished = accept_until_done(&listener, &session, deadline, stop).await;
    let bytes = session.bytes.load(Ordering::Relaxed);
    let results = roots
        .into_iter()
        .map(|(image, digest)| result(image, digest, bytes, finished))
        .collect();
    Ok(Report::new(results))
}

fn result(
    image: ImageSource,
    digest: registry_transfer::Digest,
    bytes: u64,
    finished: Result<(), &'static str>,
) -> ImageResult {
    match finished {
        Ok(()) => ImageResult {
            digest: Some(digest),
            bytes,
            target: Some("peer".to_owned()),
            ..ImageResult::new(image)
        },
        Err(reason) => ImageResult {
            status: Status::Failed,
            digest: Some(digest),
            bytes,
            reason: Some(reason.to_owned()),
            message: Some("the importing peer did not finish".to_owned()),
            ..ImageResult::new(image)
        },
    }
}

async fn accept_until_done(
    listener: &TcpListener,
    session: &Arc<Session>,
    deadline: tokio::time::Sleep,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), &'static str> {
    let mut deadline = std::pin::pin!(deadline);
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            () = session.done.notified() => return Ok(()),
            () = &mut deadline => {
                tracing::warn!("no importer finished in time");
                return Err(reasons::PULL_FAILED);
            }
            () = &mut stop => return Err(reasons::TERMINATED),
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let session = session.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let session = session.clone();
                        async move { Ok::<_, Infallible>(handle(&session, &request).await) }
                    });
                    if let Err(error) = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!(%peer, %error, "connection ended");
                    }
                });
            }
        }
    }
}

fn full(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
}

/// Compares the whole header in constant time: no early exit a timing
/// attack could read the token from.
fn authorized(session: &Session, request: &Request<Incoming>) -> bool {
    let Some(expected) = &session.authorization else {
        return true;
    };
    let Some(given) = request.headers().get(header::AUTHORIZATION) else {
        return false;
    };
    let given = given.as_bytes();
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// What a request path asks for: a manifest or blob by digest.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    Ping,
    Done,
    Manifest(&'a str),
    Blob(&'a str),
    Other,
}

pub fn route<'a>(method: &Method, path: &'a str) -> Route<'a> {
    match (method, path) {
        (&Method::GET, "/v2/" | "/v2") => Route::Ping,
        (&Method::POST, "/lifeboat/done") => Route::Done,
        (&Method::GET | &Method::HEAD, _) if path.starts_with("/v2/") => {
            if let Some((_, digest)) = path.rsplit_once("/manifests/") {
                Route::Manifest(digest)
            } else if let Some((_, digest)) = path.rsplit_once("/blobs/") {
                Route::Blob(digest)
            } else {
                Route::Other
            }
        }
        _ => Route::Other,
    }
}

/// The root digest of a session image asked for by `/v2/<repo>/manifests/<tag>`.
pub fn tagged_root<'a>(tags: &'a HashMap<String, String>, path: &str) -> Option<&'a str> {
    let (name, reference) = path.strip_prefix("/v2/")?.rsplit_once("/manifests/")?;
    tags.get(&format!("{name}:{reference}")).map(String::as_str)
}

async fn handle(session: &Arc<Session>, request: &Request<Incoming>) -> Response<Body> {
    if !authorized(session, request) {
        let mut response = full(
            StatusCode::UNAUTHORIZED,
            "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"lifeboat-node-exporter\""),
        );
        return response;
    }
    let digest = match route(request.method(), request.uri().path()) {
        Route::Ping => return full(StatusCode::OK, "{}"),
        Route::Done => {
            session.done.notify_one();
            return full(StatusCode::NO_CONTENT, "");
        }
        Route::Manifest(reference) => {
            tagged_root(&session.tags, request.uri().path()).unwrap_or(reference)
        }
        Route::Blob(digest) => digest,
        Route::Other => {
            return full(
                StatusCode::NOT_FOUND,
                "{\"errors\":[{\"code\":\"UNSUPPORTED\"}]}",
            );
        }
    };
    // Only the session's images, and only by digest: a tag or any other
    // digest in the content store is unknown here.
    let Some(entry) = session.served.get(digest) else {
        return full(
            StatusCode::NOT_FOUND,
            "{\"errors\":[{\"code\":\"BLOB_UNKNOWN\"}]}",
        );
    };
    let mut response = if request.method() == Method::HEAD {
        full(StatusCode::OK, "")
    } else {
        match open(session, digest, entry).await {
            Ok(body) => Response::new(body),
            Err(error) => {
                tracing::warn!(%digest, %error, "cannot read from containerd");
                return full(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "{\"errors\":[{\"code\":\"UNKNOWN\"}]}",
                );
            }
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(entry.size));
    if let Ok(value) = HeaderValue::from_str(digest) {
        headers.insert("docker-content-digest", value);
    }
    let media_type = entry
        .media_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    if let Ok(value) = HeaderValue::from_str(media_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    response
}

async fn open(session: &Arc<Session>, digest: &str, entry: &Served) -> Result<Body, Error> {
    if entry.media_type.is_some() {
        let bytes = session
            .containerd
            .read_small(digest, oci::MAX_MANIFEST_BYTES)
            .await?;
        session
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        return Ok(Full::new(bytes)
            .map_err(|never: Infallible| match never {})
            .boxed_unsync());
    }
    let stream = session.containerd.read_stream(digest).await?;
    let counter = session.clone();
    let counted = stream.map(move |chunk| {
        chunk.map(|data| {
            counter
                .bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            Frame::data(data)
        })
    });
    Ok(StreamBody::new(counted).boxed_unsync())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{ManifestContent, ManifestState};
    use crate::oci::{ImageManifest, Platform, RawDescriptor};
    use registry_transfer::{Descriptor, Digest};

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn raw(c: char) -> RawDescriptor {
        RawDescriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: digest(c).to_string(),
            size: 10,
            platform: None,
        }
    }

    fn manifest(c: char, arch: &str, layers_present: Vec<bool>) -> ManifestState {
        ManifestState {
            descriptor: Descriptor {
                media_type: oci::OCI_MANIFEST.into(),
                digest: digest(c),
                size: 500,
            },
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: None,
            }),
            content: Some(ManifestContent {
                manifest: ImageManifest {
                    media_type: None,
                    config: raw('0'),
                    layers: vec![raw('1'), raw('2')],
                },
                config_present: true,
                layers_present,
            }),
        }
    }

    fn index(children: Vec<ManifestState>) -> ImageState {
        ImageState::Index {
            descriptor: Descriptor {
                media_type: oci::OCI_INDEX.into(),
                digest: digest('f'),
                size: 700,
            },
            children,
        }
    }

    #[test]
    fn a_sparse_index_serves_the_index_and_what_the_node_holds() {
        let absent = ManifestState {
            content: None,
            ..manifest('b', "arm64", vec![])
        };
        let served = served_content(&index(vec![
            manifest('a', "amd64", vec![true, true]),
            absent,
        ]))
        .unwrap();
        let mut digests: Vec<&String> = served.keys().collect();
        digests.sort();
        assert_eq!(digests.len(), 5, "{digests:?}");
        assert!(served.contains_key(digest('f').as_str()));
        assert!(!served.contains_key(digest('b').as_str()));
        assert_eq!(
            served[digest('f').as_str()].media_type.as_deref(),
            Some(oci::OCI_INDEX)
        );
        assert_eq!(served[digest('1').as_str()].media_type, None);
    }

    #[test]
    fn discarded_layers_are_refused_not_rebuilt() {
        let discarded = ImageState::Manifest(Box::new(manifest('a', "amd64", vec![true, false])));
        let refused = served_content(&discarded);
        assert!(
            matches!(&refused, Err(Error::LayerUnrecoverable { digest: d, .. }) if *d == digest('2').to_string()),
            "{refused:?}"
        );
        // The same inside an index: no partial answer either.
        assert!(served_content(&index(vec![manifest('a', "amd64", vec![false, true])])).is_err());
        let nothing = index(vec![ManifestState {
            content: None,
            ..manifest('a', "amd64", vec![])
        }]);
        assert!(matches!(
            served_content(&nothing),
            Err(Error::ImageNotFound(_))
        ));
    }

    #[test]
    fn a_tag_resolves_only_for_the_session_images_repository() {
        let tags = HashMap::from([("demo/web:1.0".to_owned(), digest('f').to_string())]);
        assert_eq!(
            tagged_root(&tags, "/v2/demo/web/manifests/1.0"),
            Some(digest('f').as_str())
        );
        assert_eq!(tagged_root(&tags, "/v2/demo/other/manifests/1.0"), None);
        assert_eq!(tagged_root(&tags, "/v2/demo/web/manifests/2.0"), None);
        assert_eq!(tagged_root(&tags, "/v2/demo/web/blobs/1.0"), None);
    }

    #[test]
    fn only_digest_reads_and_the_two_session_calls_are_routed() {
        let d = digest('a').to_string();
        assert_eq!(
            route(&Method::GET, &format!("/v2/demo/web/manifests/{d}")),
            Route::Manifest(&d)
        );
        assert_eq!(
            route(&Method::HEAD, &format!("/v2/a/b/c/blobs/{d}")),
            Route::Blob(&d)
        );
        assert_eq!(route(&Method::GET, "/v2/"), Route::Ping);
        assert_eq!(route(&Method::POST, "/lifeboat/done"), Route::Done);
        assert_eq!(route(&Method::GET, "/lifeboat/done"), Route::Other);
        assert_eq!(
            route(&Method::PUT, &format!("/v2/demo/web/manifests/{d}")),
            Route::Other
        );
        assert_eq!(route(&Method::GET, "/v2/_catalog"), Route::Other);
    }
}
