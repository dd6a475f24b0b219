//! The operator's HTTP endpoints: `/metrics` (Prometheus), `/healthz`
//! (the process serves requests) and `/readyz` (this replica's controllers
//! have synced their caches, or it is a standby waiting for the lease).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::error::OperatorError;
use crate::telemetry::Metrics;

#[derive(Clone)]
pub struct HealthState {
    ready: Arc<AtomicBool>,
}

impl HealthState {
    pub fn new() -> Self {
        HealthState {
            ready: Arc::new(AtomicBool::new(false)),
        }
    }
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

impl Default for HealthState {
    fn default() -> Self {
        Self::new()
    }
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

fn route(
    method: &Method,
    path: &str,
    metrics: &Metrics,
    health: &HealthState,
) -> Response<Full<Bytes>> {
    match (method, path) {
        (&Method::GET, "/metrics") => match metrics.encode() {
            Ok(body) => respond(StatusCode::OK, "text/plain; version=0.0.4", body),
            Err(error) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                error.to_string(),
            ),
        },
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok"),
        (&Method::GET, "/readyz") if health.is_ready() => {
            respond(StatusCode::OK, "text/plain", "ok")
        }
        (&Method::GET, "/readyz") => {
            respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready")
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found"),
    }
}

/// Serves until the process exits.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    health: HealthState,
) -> Result<(), OperatorError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| OperatorError::Http(format!("binding {addr}: {e}")))?;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "accepting a connection");
                continue;
            }
        };
        let metrics = metrics.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = route(request.method(), request.uri().path(), &metrics, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%error, %peer, "http connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_follows_the_health_state() {
        let metrics = Metrics::new().unwrap();
        let health = HealthState::new();
        assert_eq!(
            route(&Method::GET, "/readyz", &metrics, &health).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.set_ready(true);
        assert_eq!(
            route(&Method::GET, "/readyz", &metrics, &health).status(),
            StatusCode::OK
        );
        assert_eq!(
            route(&Method::GET, "/healthz", &metrics, &health).status(),
            StatusCode::OK
        );
        assert_eq!(
            route(&Method::GET, "/nope", &metrics, &health).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            route(&Method::GET, "/metrics", &metrics, &health).status(),
            StatusCode::OK
        );
    }
}
