//! HTTPS for the API server's calls: `POST /validate` with an
//! AdmissionReview, on its own port (the metrics port stays plain HTTP).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::certs::CurrentCertificate;
use crate::context::Context;
use crate::error::OperatorError;

/// The largest review read: a pod spec is far smaller; the API server's
/// own request limit is 3 MiB.
const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

async fn route(context: Arc<Context>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::POST || request.uri().path() != "/validate" {
        return respond(StatusCode::NOT_FOUND, "{}");
    }
    let body = match Limited::new(request.into_body(), MAX_REVIEW_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            debug!(error = %e, "admission review body");
            return respond(StatusCode::BAD_REQUEST, "{}");
        }
    };
    respond(
        StatusCode::OK,
        super::handler::answer(&context, &body).await,
    )
}

/// Serves until the process exits.
pub(super) async fn serve(
    context: Arc<Context>,
    addr: SocketAddr,
    certificate: Arc<CurrentCertificate>,
) -> Result<(), OperatorError> {
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| OperatorError::Http(format!("binding {addr}: {e}")))?;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "accepting an admission connection");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let context = context.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(error) => {
                    debug!(%error, %peer, "admission TLS handshake");
                    return;
                }
            };
            let service = service_fn(move |request: Request<Incoming>| {
                let context = context.clone();
                async move { Ok::<_, Infallible>(route(context, request).await) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%error, %peer, "admission connection ended");
            }
        });
    }
}
