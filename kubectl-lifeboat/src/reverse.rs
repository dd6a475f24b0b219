//! The archive served to an import pod through the API server. A pod
//! cannot dial this machine, so the plugin dials in: it keeps a few
//! port-forward connections waiting at the pod's rendezvous
//! (node-exporter `import --from-tunnel`) and answers, on each, the
//! registry requests the importer sends: manifests and blobs by digest,
//! read from the archive file as streams. The importer verifies every
//! digest as it writes into containerd; the archive was verified here
//! before the pod was made.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use registry_transfer::{ContentSource as _, Descriptor, Digest};
use tokio::sync::mpsc;

use crate::archive::read::{Archive, ArchiveSource, blob_path};
use crate::progress::Progress;
use crate::tunnel;

/// Connections kept waiting at the rendezvous: one per blob the importer
/// fetches at once (3 by default) and one spare.
const SPARES: usize = 4;
/// After a connection ended without a request (the pod not listening yet,
/// or the importer's "is it there" probe), the next one waits this long.
const RETRY: Duration = Duration::from_millis(200);

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// What a request asks for: the ping, or a manifest or blob by digest.
#[derive(Debug, PartialEq, Eq)]
pub enum Asked<'a> {
    Ping,
    Content(&'a str),
    Other,
}

pub fn asked<'a>(method: &Method, path: &'a str) -> Asked<'a> {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return Asked::Other;
    }
    if path == "/v2/" || path == "/v2" {
        return Asked::Ping;
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Asked::Other;
    };
    rest.rsplit_once("/manifests/")
        .or_else(|| rest.rsplit_once("/blobs/"))
        .map_or(Asked::Other, |(_, digest)| Asked::Content(digest))
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

async fn answer(
    archive: &Arc<Archive>,
    progress: &Progress,
    request: &Request<Incoming>,
) -> Response<Body> {
    let digest = match asked(request.method(), request.uri().path()) {
        Asked::Ping => return full(StatusCode::OK, "{}"),
        Asked::Content(digest) => digest,
        Asked::Other => {
            return full(
                StatusCode::NOT_FOUND,
                "{\"errors\":[{\"code\":\"UNSUPPORTED\"}]}",
            );
        }
    };
    let Ok(digest) = Digest::parse(digest) else {
        return full(
            StatusCode::BAD_REQUEST,
            "{\"errors\":[{\"code\":\"DIGEST_INVALID\"}]}",
        );
    };
    let Some(entry) = archive.entry(&blob_path(&digest)) else {
        return full(
            StatusCode::NOT_FOUND,
            "{\"errors\":[{\"code\":\"BLOB_UNKNOWN\"}]}",
        );
    };
    let descriptor = Descriptor {
        media_type: String::new(),
        digest: digest.clone(),
        size: entry.size,
    };
    let mut response = if request.method() == Method::HEAD {
        full(StatusCode::OK, "")
    } else {
        let source = ArchiveSource::new(archive.clone(), descriptor.clone());
        match source.open_blob(&descriptor).await {
            Ok(stream) => {
                let progress = progress.clone();
                let counted = stream.map(move |chunk| {
                    chunk.map(|data| {
                        progress.add(data.len() as u64);
                        Frame::data(data)
                    })
                });
                Response::new(StreamBody::new(counted).boxed_unsync())
            }
            Err(error) => {
                tracing::warn!(%digest, %error, "cannot read the archive");
                return full(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "{\"errors\":[{\"code\":\"UNKNOWN\"}]}",
                );
            }
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(entry.size));
    if let Ok(value) = HeaderValue::from_str(digest.as_str()) {
        headers.insert("docker-content-digest", value);
    }
    // The importer sniffs manifests' media types from their bytes.
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// Keeps [`SPARES`] connections waiting at `pod`'s rendezvous on `port`,
/// serving `archive` on each, until dropped.
pub async fn serve_archive(
    pods: Api<Pod>,
    pod: String,
    port: u16,
    archive: Arc<Archive>,
    progress: Progress,
) {
    // One message per connection that is no longer waiting (it got its
    // first request, or ended): time to open another.
    let (taken, mut next) = mpsc::unbounded_channel::<bool>();
    for _ in 0..SPARES {
        let _ = taken.send(true);
    }
    while let Some(used) = next.recv().await {
        if !used {
            tokio::time::sleep(RETRY).await;
        }
        let (pods, pod, archive, progress, taken) = (
            pods.clone(),
            pod.clone(),
            archive.clone(),
            progress.clone(),
            taken.clone(),
        );
        tokio::spawn(async move {
            let (stream, forwarder) = match tunnel::open_stream(&pods, &pod, port).await {
                Ok(opened) => opened,
                Err(error) => {
                    tracing::debug!(error = format!("{error:#}"), "port-forward failed");
                    let _ = taken.send(false);
                    return;
                }
            };
            let first = Arc::new(AtomicBool::new(true));
            let signal = (taken.clone(), first.clone());
            let service = service_fn(move |request: Request<Incoming>| {
                if signal.1.swap(false, Ordering::Relaxed) {
                    let _ = signal.0.send(true);
                }
                let (archive, progress) = (archive.clone(), progress.clone());
                async move { Ok::<_, Infallible>(answer(&archive, &progress, &request).await) }
            });
            let io = TokioIo::new(stream);
            if let Err(error) = http1::Builder::new().serve_connection(io, service).await {
                tracing::debug!(%error, "tunnel connection ended");
            }
            if first.swap(false, Ordering::Relaxed) {
                let _ = taken.send(false);
            }
            drop(forwarder);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_by_digest_are_served_nothing_else() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            asked(&Method::GET, &format!("/v2/demo/web/manifests/{d}")),
            Asked::Content(&d)
        );
        assert_eq!(
            asked(&Method::HEAD, &format!("/v2/a/b/blobs/{d}")),
            Asked::Content(&d)
        );
        assert_eq!(asked(&Method::GET, "/v2/"), Asked::Ping);
        assert_eq!(
            asked(&Method::PUT, &format!("/v2/demo/web/manifests/{d}")),
            Asked::Other
        );
        assert_eq!(asked(&Method::GET, "/v2/_catalog"), Asked::Other);
        assert_eq!(asked(&Method::GET, "/metrics"), Asked::Other);
    }
}
