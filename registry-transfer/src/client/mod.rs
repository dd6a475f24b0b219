//! The registry HTTP API (distribution spec v2), one client per registry.
//!
//! Requests whose bodies can be replayed go through [`RegistryClient::send`],
//! which authenticates (basic or bearer token flow, learned from the first
//! 401), retries transient failures and honours `Retry-After`. Streaming
//! uploads cannot be replayed, so they get their authorization up front and
//! the upload loop in `upload.rs` decides about retries and resumption.
//!
//! The pieces: `settings` (how to reach which registry), `authorization`
//! (basic credentials and the token flow), `api` (the distribution API's
//! requests); this file holds the client and how it sends.

mod api;
mod authorization;
mod settings;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};

use crate::auth::{Challenge, TokenResponse, parse_challenge};
use crate::bounded::{BodyKind, ThroughputFloor, ThroughputWatch, error_excerpt, read_bounded};
use crate::credentials::{Credentials, Secret};
use crate::error::TransferError;
use crate::manifest::{ACCEPT_MANIFESTS, sha256_digest};
use crate::retry::{RetryPolicy, parse_retry_after};
use crate::{Digest, tls};

tokio::task_local! {
    /// Requests made on behalf of the copy running in this task.
    pub(crate) static COPY_REQUESTS: Arc<AtomicU64>;
}

pub(crate) use api::UploadStart;
pub(crate) use authorization::{delete_scope, pull_scope, push_scope};
pub(crate) use settings::ClientOptions;
pub use settings::RegistrySettings;

/// Timeouts and retries shared by all clients.
#[derive(Clone, Debug)]
pub(crate) struct HttpTuning {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Longest time to receive one answer that is read whole (manifest,
    /// token, tag page, error body, config).
    pub body_timeout: Duration,
    /// Slowest a blob download may be.
    pub blob_floor: Option<ThroughputFloor>,
    pub retry: RetryPolicy,
    pub max_idle_per_host: usize,
}

pub(crate) struct RegistryClient {
    /// Registry name as in references, for messages and limits.
    name: String,
    base: Url,
    http: reqwest::Client,
    credentials: Credentials,
    plain_http_hosts: HashSet<String>,
    trusted_realms: Vec<url::Origin>,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, (Secret, Instant)>>,
    retry: RetryPolicy,
    body_timeout: Duration,
    blob_floor: Option<ThroughputFloor>,
    requests: AtomicU64,
    /// Set once a cross-repository mount has succeeded here.
    mounts_work: AtomicBool,
    /// Whether this registry serves the OCI 1.1 referrers API:
    /// [`REFERRERS_API_UNKNOWN`] until an answer told us.
    referrers_api: AtomicU8,
}

const REFERRERS_API_UNKNOWN: u8 = 0;
const REFERRERS_API_YES: u8 = 1;
const REFERRERS_API_NO: u8 = 2;

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("name", &self.name)
            .field("base", &self.base.as_str())
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// Redirects followed per request.
const MAX_REDIRECTS: usize = 10;

impl RegistryClient {
    pub(crate) fn new(
        registry: &str,
        api_host: &str,
        options: ClientOptions,
        tuning: &HttpTuning,
    ) -> Result<RegistryClient, TransferError> {
        let scheme = if options.plain_http { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{api_host}/")).map_err(|e| {
            TransferError::InvalidReference(format!("registry host {api_host}: {e}"))
        })?;
        let mut builder = reqwest::Client::builder()
            // reqwest drops `Authorization` when a redirect changes scheme,
            // host or port, so a redirect never carries credentials away;
            // the hop limit is explicit here rather than a default.
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .connect_timeout(tuning.connect_timeout)
            .read_timeout(tuning.read_timeout)
            .pool_max_idle_per_host(tuning.max_idle_per_host)
            .tcp_nodelay(true)
            .user_agent(concat!(
                "lifeboat-registry-transfer/",
                env!("CARGO_PKG_VERSION")
            ));
        if !options.plain_http {
            let config = match &options.tls_name {
                Some(name) => tls::client_config_verifying_as(options.ca_bundle.as_deref(), name)?,
                None => tls::client_config(options.ca_bundle.as_deref())?,
            };
            builder = builder.tls_backend_preconfigured(config);
        }
        let http = builder.build().map_err(|e| {
            TransferError::InvalidConfiguration(format!(
                "HTTP client for {registry}: {}",
                e.without_url()
            ))
        })?;
        Ok(RegistryClient {
            name: registry.to_owned(),
            base,
            http,
            credentials: options.credentials,
            plain_http_hosts: options.plain_http_hosts,
            trusted_realms: options.trusted_realms,
            challenge: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
            retry: tuning.retry.clone(),
            body_timeout: tuning.body_timeout,
            blob_floor: tuning.blob_floor,
            requests: AtomicU64::new(0),
            mounts_work: AtomicBool::new(false),
            referrers_api: AtomicU8::new(REFERRERS_API_UNKNOWN),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether this registry has mounted a blob for us: then a mount
    /// request can stand in for a HEAD.
    pub(crate) fn mounts_work(&self) -> bool {
        self.mounts_work.load(Ordering::Relaxed)
    }

    /// What we know of this registry's referrers API: `None` until it
    /// answered a referrers request or a push with `subject`.
    pub(crate) fn referrers_api(&self) -> Option<bool> {
        match self.referrers_api.load(Ordering::Relaxed) {
            REFERRERS_API_YES => Some(true),
            REFERRERS_API_NO => Some(false),
            _ => None,
        }
    }

    fn learn_referrers_api(&self, supported: bool) {
        let value = if supported {
            REFERRERS_API_YES
        } else {
            REFERRERS_API_NO
        };
        self.referrers_api.store(value, Ordering::Relaxed);
    }

    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn url(&self, path: &str) -> Result<Url, TransferError> {
        self.base.join(path).map_err(|e| TransferError::Protocol {
            registry: self.name.clone(),
            detail: format!("bad URL path: {e}"),
        })
    }

    /// Whether `url` is this registry itself (scheme, host and port): the
    /// only place its credentials and tokens are ever sent.
    pub(crate) fn is_own_origin(&self, url: &Url) -> bool {
        url.origin() == self.base.origin()
    }

    fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let _ = COPY_REQUESTS.try_with(|counter| counter.fetch_add(1, Ordering::Relaxed));
    }

    /// The total time allowed for a request whose answer is read whole: a
    /// backstop against headers that trickle in; the body itself has
    /// `body_timeout` from when the headers arrived.
    fn request_timeout(&self) -> Duration {
        self.body_timeout.saturating_mul(2)
    }

    /// Maps a reqwest failure, without its URL (upload URLs carry state).
    pub(crate) fn transport_error(&self, error: reqwest::Error) -> TransferError {
        let error = error.without_url();
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = source {
            // hyper-rustls wraps the rustls error in an io::Error, whose
            // `source()` skips it: look inside explicitly.
            let inner = e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            if let Some(tls_error) = e.downcast_ref::<rustls::Error>().or(inner) {
                return TransferError::Tls {
                    registry: self.name.clone(),
                    detail: tls_error.to_string(),
                };
            }
            source = e.source();
        }
        let detail = error_chain(&error);
        // Some wrappers on the way hide the rustls error from downcasting;
        // its message is unmistakable.
        let lower = detail.to_ascii_lowercase();
        if [
            "invalid peer certificate",
            "peer sent no certificates",
            "received fatal alert",
            "received corrupt message",
            "peer is incompatible",
        ]
        .iter()
        .any(|marker| lower.contains(marker))
        {
            return TransferError::Tls {
                registry: self.name.clone(),
                detail,
            };
        }
        if error.is_body() || error.is_decode() {
            TransferError::Interrupted {
                registry: self.name.clone(),
                detail,
            }
        } else {
            TransferError::RegistryUnavailable {
                registry: self.name.clone(),
                detail,
            }
        }
    }

    /// The error for an unexpected status; 429 and 5xx are transient.
    pub(crate) async fn status_error(&self, operation: &str, response: Response) -> TransferError {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        match status {
            StatusCode::TOO_MANY_REQUESTS => {
                return TransferError::RateLimited {
                    registry: self.name.clone(),
                    retry_after,
                };
            }
            StatusCode::UNAUTHORIZED => {
                return TransferError::Unauthorized {
                    registry: self.name.clone(),
                };
            }
            StatusCode::FORBIDDEN => {
                return TransferError::Forbidden {
                    registry: self.name.clone(),
                };
            }
            _ => {}
        }
        // Registry error bodies are JSON `{"errors":[{code, message}]}`;
        // keep a short excerpt for the message, reading no more than that.
        let excerpt = error_excerpt(response, self.body_timeout).await;
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            TransferError::RegistryUnavailable {
                registry: self.name.clone(),
                detail: format!("{operation}: {status} {excerpt}"),
            }
        } else {
            TransferError::Rejected {
                registry: self.name.clone(),
                operation: operation.to_owned(),
                status: status.as_u16(),
                detail: excerpt,
            }
        }
    }

    /// Sends a replayable request with authentication (one extra round on
    /// 401 to learn or refresh credentials). Returns whatever status came
    /// back; only transport failures are errors.
    async fn send_once(
        &self,
        scopes: &[String],
        build: &(dyn Fn() -> Result<RequestBuilder, TransferError> + Send + Sync),
        timeout: Option<Duration>,
    ) -> Result<Response, TransferError> {
        let mut refreshed = false;
        loop {
            let (http, request) = build()?.build_split();
            let mut request = request.map_err(|e| TransferError::Protocol {
                registry: self.name.clone(),
                detail: format!("cannot build request: {}", e.without_url()),
            })?;
            let own_origin = self.is_own_origin(request.url());
            if let Some(auth) = self.authorization_for(request.url(), scopes).await? {
                request.headers_mut().insert(header::AUTHORIZATION, auth);
            }
            if timeout.is_some() {
                *request.timeout_mut() = timeout;
            }
            self.count_request();
            let response = http
                .execute(request)
                .await
                .map_err(|e| self.transport_error(e))?;
            // A challenge from another origin is never learned: it would
            // make us send this registry's credentials where it points.
            if response.status() != StatusCode::UNAUTHORIZED || refreshed || !own_origin {
                return Ok(response);
            }
            refreshed = true;
            if !self.learn_challenge(response.headers(), scopes) {
                return Ok(response);
            }
        }
    }

    /// `send_once` with retries of transient failures (including 429 and
    /// 5xx answers). `ok` says which statuses are answers rather than errors.
    pub(crate) async fn send(
        &self,
        operation: &str,
        scopes: &[String],
        ok: &(dyn Fn(StatusCode) -> bool + Send + Sync),
        build: &(dyn Fn() -> Result<RequestBuilder, TransferError> + Send + Sync),
    ) -> Result<Response, TransferError> {
        self.send_with_timeout(operation, scopes, ok, build, Some(self.request_timeout()))
            .await
    }

    /// `send` for a request whose body is streamed (blob GET): no total
    /// time limit, the read timeout and the throughput floor apply.
    async fn send_streaming(
        &self,
        operation: &str,
        scopes: &[String],
        ok: &(dyn Fn(StatusCode) -> bool + Send + Sync),
        build: &(dyn Fn() -> Result<RequestBuilder, TransferError> + Send + Sync),
    ) -> Result<Response, TransferError> {
        self.send_with_timeout(operation, scopes, ok, build, None)
            .await
    }

    async fn send_with_timeout(
        &self,
        operation: &str,
        scopes: &[String],
        ok: &(dyn Fn(StatusCode) -> bool + Send + Sync),
        build: &(dyn Fn() -> Result<RequestBuilder, TransferError> + Send + Sync),
        timeout: Option<Duration>,
    ) -> Result<Response, TransferError> {
        self.retry
            .run(operation, |_attempt| async {
                let response = self.send_once(scopes, build, timeout).await?;
                if ok(response.status()) {
                    Ok(response)
                } else {
                    Err(self.status_error(operation, response).await)
                }
            })
            .await
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.http.request(method, url)
    }
}

/// An error and its causes on one line: reqwest's own message is often just
/// "error sending request".
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}
