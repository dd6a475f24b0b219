//! The registry HTTP API (distribution spec v2), one client per registry.
//!
//! Requests whose bodies can be replayed go through [`RegistryClient::send`],
//! which authenticates (basic or bearer token flow, learned from the first
//! 401), retries transient failures and honours `Retry-After`. Streaming
//! uploads cannot be replayed, so they get their authorization up front and
//! the upload loop in `upload.rs` decides about retries and resumption.

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
use crate::credentials::{Credentials, DockerConfig, Secret, normalize_registry};
use crate::error::TransferError;
use crate::manifest::{ACCEPT_MANIFESTS, sha256_digest};
use crate::retry::{RetryPolicy, parse_retry_after};
use crate::{Digest, tls};

tokio::task_local! {
    /// Requests made on behalf of the copy running in this task.
    pub(crate) static COPY_REQUESTS: Arc<AtomicU64>;
}

/// How to reach registries: credentials, CA bundles, and which registries
/// may be spoken to over plain HTTP. Keys are registry names as written in
/// references (`docker.io` aliases are folded together).
#[derive(Clone, Default)]
pub struct RegistrySettings {
    docker_config: DockerConfig,
    plain_http: HashSet<String>,
    ca_bundles: HashMap<String, Vec<u8>>,
    /// Token services on another host that may receive a registry's
    /// credentials, by registry.
    trusted_realms: HashMap<String, Vec<url::Origin>>,
    /// The name a registry's certificate is checked against when it is
    /// reached at another address (a tunnel's local port), by registry.
    tls_names: HashMap<String, String>,
}

impl fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrySettings")
            .field("docker_config", &self.docker_config)
            .field("plain_http", &self.plain_http)
            .field("ca_bundles", &self.ca_bundles.keys().collect::<Vec<_>>())
            .field("trusted_realms", &self.trusted_realms)
            .field("tls_names", &self.tls_names)
            .finish()
    }
}

impl RegistrySettings {
    pub fn new() -> RegistrySettings {
        RegistrySettings::default()
    }

    /// Adds credentials (later calls win for the same registry).
    pub fn with_docker_config(mut self, config: DockerConfig) -> RegistrySettings {
        self.docker_config.merge(config);
        self
    }

    pub fn with_credentials(
        mut self,
        registry: &str,
        credentials: Credentials,
    ) -> RegistrySettings {
        self.docker_config.insert(registry, credentials);
        self
    }

    /// Allows plain HTTP to this registry. Nothing else is ever spoken to
    /// without TLS, and Basic credentials go over plain HTTP only to a
    /// host listed here.
    pub fn allow_plain_http(mut self, registry: &str) -> RegistrySettings {
        self.plain_http.insert(normalize_registry(registry));
        self
    }

    /// Lets `registry`'s credentials go to a token service on another
    /// host, `realm_origin` (`https://host[:port]`). Without this, a
    /// registry whose token realm is on another host gets its token
    /// requests refused when it has credentials (anonymous ones still go).
    /// Docker Hub's `https://auth.docker.io` is trusted for Docker Hub.
    pub fn trust_token_realm(mut self, registry: &str, realm_origin: &str) -> RegistrySettings {
        if let Ok(url) = Url::parse(realm_origin) {
            self.trusted_realms
                .entry(normalize_registry(registry))
                .or_default()
                .push(url.origin());
        }
        self
    }

    /// Trusts the PEM certificates in `pem` (in addition to the system
    /// roots) for this registry.
    pub fn with_ca_bundle(mut self, registry: &str, pem: Vec<u8>) -> RegistrySettings {
        self.ca_bundles.insert(normalize_registry(registry), pem);
        self
    }

    /// Checks `registry`'s certificate as if it were `server_name` (a DNS
    /// name or an IP address): for a registry reached through a tunnel at
    /// a local address, whose certificate names where it really is.
    pub fn verify_tls_as(mut self, registry: &str, server_name: &str) -> RegistrySettings {
        self.tls_names
            .insert(normalize_registry(registry), server_name.to_owned());
        self
    }

    pub(crate) fn client_options(&self, registry: &str) -> ClientOptions {
        let key = normalize_registry(registry);
        let mut trusted_realms = self.trusted_realms.get(&key).cloned().unwrap_or_default();
        if key == normalize_registry(DOCKER_HUB_REGISTRY)
            && let Ok(url) = Url::parse(DOCKER_HUB_TOKEN_REALM)
        {
            trusted_realms.push(url.origin());
        }
        ClientOptions {
            plain_http: self.plain_http.contains(&key),
            plain_http_hosts: self.plain_http.clone(),
            ca_bundle: self.ca_bundles.get(&key).cloned(),
            credentials: self.docker_config.credentials_for(registry),
            trusted_realms,
            tls_name: self.tls_names.get(&key).cloned(),
        }
    }
}

/// Docker Hub's token service lives on another host than its registry.
const DOCKER_HUB_REGISTRY: &str = "docker.io";
const DOCKER_HUB_TOKEN_REALM: &str = "https://auth.docker.io";

pub(crate) struct ClientOptions {
    plain_http: bool,
    /// Every host allowed plain HTTP, to judge token realms by.
    plain_http_hosts: HashSet<String>,
    ca_bundle: Option<Vec<u8>>,
    credentials: Credentials,
    trusted_realms: Vec<url::Origin>,
    tls_name: Option<String>,
}

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

/// What `upload_start` achieved.
pub(crate) enum UploadStart {
    /// The blob was mounted from another repository: nothing to upload.
    Mounted,
    /// An upload session was opened at this URL.
    Session(Url),
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

/// A manifest PUT's answer.
pub(crate) struct ManifestPut {
    /// The digest the registry computed, if it said.
    pub digest: Option<Digest>,
}

/// One page of a referrers list: the index's bytes and the next page.
pub(crate) struct ReferrersPage {
    pub index: Bytes,
    pub next: Option<String>,
}

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

/// A cached token is not used in its last seconds: it could expire on the
/// way.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// A scope of the token flow, e.g. `repository:team/app:pull,push`.
pub(crate) fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

pub(crate) fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

pub(crate) fn delete_scope(repository: &str) -> String {
    format!("repository:{repository}:delete")
}

/// The target of a `Link: <...>; rel="next"` header (RFC 8288), as
/// registries paginate tag lists.
pub(crate) fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().to_ascii_lowercase();
            p == "rel=\"next\"" || p == "rel=next"
        });
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| target.to_owned())
    })
}

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

    /// The `Authorization` for a request to `url`: none when `url` is on
    /// another origin (an upload `Location` or a tag-list `Link` pointing
    /// elsewhere, e.g. a pre-signed storage URL, goes without).
    async fn authorization_for(
        &self,
        url: &Url,
        scopes: &[String],
    ) -> Result<Option<HeaderValue>, TransferError> {
        if !self.is_own_origin(url) {
            tracing::debug!(registry = %self.name, "request to another origin: no credentials");
            return Ok(None);
        }
        self.authorization(scopes).await
    }

    fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let _ = COPY_REQUESTS.try_with(|counter| counter.fetch_add(1, Ordering::Relaxed));
    }

    fn lock_challenge(&self) -> std::sync::MutexGuard<'_, Option<Challenge>> {
        self.challenge.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Secret, Instant)>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        match &self.credentials {
            Credentials::Anonymous => None,
            Credentials::Basic { username, password } => {
                let encoded = BASE64.encode(format!("{username}:{}", password.expose()));
                let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
                value.set_sensitive(true);
                Some(value)
            }
        }
    }

    /// The `Authorization` header for `scopes`, fetching a token if the
    /// registry uses the token flow and we have none that is still fresh.
    pub(crate) async fn authorization(
        &self,
        scopes: &[String],
    ) -> Result<Option<HeaderValue>, TransferError> {
        let challenge = self.lock_challenge().clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.basic_header()),
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scopes: Vec<String> = if scopes.is_empty() {
                    scope.into_iter().collect()
                } else {
                    scopes.to_vec()
                };
                let key = scopes.join(" ");
                let now = Instant::now();
                let cached = self.lock_tokens().get(&key).and_then(|(token, expires)| {
                    (expires.saturating_duration_since(now) > TOKEN_EXPIRY_MARGIN)
                        .then(|| token.clone())
                });
                let token = match cached {
                    Some(token) => token,
                    None => {
                        let (token, lifetime) = self
                            .fetch_token(&realm, service.as_deref(), &scopes)
                            .await?;
                        // `lifetime` is capped (auth::MAX_TOKEN_LIFETIME);
                        // checked anyway: an overflow here killed the
                        // operator once (issue 15).
                        if let Some(expires) = Instant::now().checked_add(lifetime) {
                            self.lock_tokens().insert(key, (token.clone(), expires));
                        }
                        token
                    }
                };
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| TransferError::Protocol {
                        registry: self.name.clone(),
                        detail: "token service returned an unusable token".into(),
                    })?;
                value.set_sensitive(true);
                Ok(Some(value))
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<(Secret, Duration), TransferError> {
        let mut url = Url::parse(realm).map_err(|e| TransferError::Protocol {
            registry: self.name.clone(),
            detail: format!("token realm is not a URL: {e}"),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TransferError::Protocol {
                registry: self.name.clone(),
                detail: format!("token realm has scheme {:?}", url.scheme()),
            });
        }
        let basic = match self.basic_header() {
            Some(basic) => {
                self.check_realm_may_receive_credentials(&url)?;
                Some(basic)
            }
            None => None,
        };
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            for scope in scopes {
                query.append_pair("scope", scope);
            }
        }
        let mut request = self.http.get(url).timeout(self.request_timeout());
        if let Some(basic) = basic {
            request = request.header(header::AUTHORIZATION, basic);
        }
        self.count_request();
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED => {
                return Err(TransferError::Unauthorized {
                    registry: self.name.clone(),
                });
            }
            StatusCode::FORBIDDEN => {
                return Err(TransferError::Forbidden {
                    registry: self.name.clone(),
                });
            }
            _ => return Err(self.status_error("token request", response).await),
        }
        let body = read_bounded(
            &self.name,
            BodyKind::TokenResponse,
            response,
            self.body_timeout,
        )
        .await?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|_| TransferError::Protocol {
                registry: self.name.clone(),
                detail: "token service answered with something that is not a token".into(),
            })?;
        parsed
            .into_token()
            .map(|(token, lifetime)| (Secret::new(token), lifetime))
            .ok_or_else(|| TransferError::Protocol {
                registry: self.name.clone(),
                detail: "token service answered without a token".into(),
            })
    }

    /// Basic credentials go to a token realm only on this registry's own
    /// origin or one trusted for it, and over plain HTTP only to a host
    /// the admin listed as plain HTTP. Anything else is refused with an
    /// error naming where they would have gone (never the credentials).
    fn check_realm_may_receive_credentials(&self, realm: &Url) -> Result<(), TransferError> {
        let origin = realm.origin();
        let trusted = origin == self.base.origin() || self.trusted_realms.contains(&origin);
        let host_port = match realm.port() {
            Some(port) => format!("{}:{port}", realm.host_str().unwrap_or_default()),
            None => realm.host_str().unwrap_or_default().to_owned(),
        };
        let plain_ok = realm.scheme() == "https"
            || self
                .plain_http_hosts
                .contains(&crate::credentials::normalize_registry(&host_port));
        if trusted && plain_ok {
            return Ok(());
        }
        Err(TransferError::CredentialsRefused {
            registry: self.name.clone(),
            destination: format!(
                "token realm {}://{host_port}{}",
                realm.scheme(),
                if plain_ok {
                    " (another host)"
                } else {
                    " (plain HTTP)"
                }
            ),
        })
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

    /// Records the challenge of a 401. Returns whether retrying with
    /// (new) credentials can help.
    fn learn_challenge(&self, headers: &HeaderMap, scopes: &[String]) -> bool {
        let Some(challenge) = headers
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(parse_challenge)
        else {
            return false;
        };
        if challenge == Challenge::Basic && self.credentials == Credentials::Anonymous {
            return false;
        }
        *self.lock_challenge() = Some(challenge);
        // A 401 with a token we already had means it expired or lacks a
        // scope: drop it so the retry fetches a new one.
        self.lock_tokens().remove(&scopes.join(" "));
        // Always worth one retry, even when the challenge was already known:
        // a concurrent request may have learned it after this one was sent
        // without credentials. (The caller retries only once.)
        true
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

    /// HEAD or GET a manifest by tag or digest, accepting every manifest
    /// type Lifeboat copies: the answer, or `None` if absent.
    async fn manifest_request(
        &self,
        method: Method,
        operation: &str,
        repository: &str,
        reference: &str,
        scopes: &[String],
    ) -> Result<Option<Response>, TransferError> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"))?;
        let response = self
            .send(operation, scopes, &found_or_absent, &|| {
                Ok(self
                    .request(method.clone(), url.clone())
                    .header(header::ACCEPT, ACCEPT_MANIFESTS))
            })
            .await?;
        Ok((response.status() != StatusCode::NOT_FOUND).then_some(response))
    }

    /// HEAD a manifest by tag or digest: its digest, or `None` if absent.
    pub(crate) async fn manifest_digest(
        &self,
        repository: &str,
        reference: &str,
        scopes: &[String],
    ) -> Result<Option<ManifestHead>, TransferError> {
        let Some(response) = self
            .manifest_request(Method::HEAD, "manifest HEAD", repository, reference, scopes)
            .await?
        else {
            return Ok(None);
        };
        let media_type = header_str(response.headers(), header::CONTENT_TYPE).unwrap_or_default();
        let size = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        match header_str(response.headers(), "docker-content-digest")
            .and_then(|d| Digest::parse(&d).ok())
        {
            Some(digest) => Ok(Some(ManifestHead {
                digest,
                media_type,
                size,
            })),
            // Some registries omit the header on HEAD: fetch and hash.
            None => Ok(self.manifest_get(repository, reference, scopes).await?.map(
                |(bytes, media_type)| ManifestHead {
                    digest: sha256_digest(&bytes),
                    media_type,
                    size: bytes.len() as u64,
                },
            )),
        }
    }

    /// GET a manifest's bytes exactly as stored, or `None` if absent.
    pub(crate) async fn manifest_get(
        &self,
        repository: &str,
        reference: &str,
        scopes: &[String],
    ) -> Result<Option<(Bytes, String)>, TransferError> {
        let Some(response) = self
            .manifest_request(Method::GET, "manifest GET", repository, reference, scopes)
            .await?
        else {
            return Ok(None);
        };
        let media_type = header_str(response.headers(), header::CONTENT_TYPE).unwrap_or_default();
        let body =
            read_bounded(&self.name, BodyKind::Manifest, response, self.body_timeout).await?;
        Ok(Some((body, media_type)))
    }

    /// PUT a manifest under a tag or its digest; returns the digest the
    /// registry computed.
    pub(crate) async fn manifest_put(
        &self,
        repository: &str,
        reference: &str,
        bytes: &Bytes,
        media_type: &str,
    ) -> Result<ManifestPut, TransferError> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"))?;
        let scopes = [push_scope(repository)];
        let response = self
            .send("manifest PUT", &scopes, &|s| s.is_success(), &|| {
                Ok(self
                    .request(Method::PUT, url.clone())
                    .header(header::CONTENT_TYPE, media_type)
                    .body(bytes.clone()))
            })
            .await?;
        // `OCI-Subject`: the registry indexed the manifest's `subject` for
        // its referrers API (OCI distribution 1.1).
        if response.headers().contains_key("oci-subject") {
            self.learn_referrers_api(true);
        }
        Ok(ManifestPut {
            digest: header_str(response.headers(), "docker-content-digest")
                .and_then(|d| Digest::parse(&d).ok()),
        })
    }

    /// One page of the OCI 1.1 referrers list of `subject`
    /// (`GET /v2/<name>/referrers/<digest>`, or the `Link` of the previous
    /// page). `None` when the registry has no referrers API: it answers 404
    /// (the spec forbids a 404 from a registry that has one) or 405. What
    /// the answer said is remembered for this registry.
    pub(crate) async fn referrers_page(
        &self,
        repository: &str,
        subject: &Digest,
        page: Option<&str>,
    ) -> Result<Option<ReferrersPage>, TransferError> {
        let path = match page {
            Some(link) => link.trim_start_matches('/').to_owned(),
            None => format!("v2/{repository}/referrers/{subject}"),
        };
        let url = self.url(&path)?;
        let scopes = [pull_scope(repository)];
        let absent =
            |s: StatusCode| s == StatusCode::NOT_FOUND || s == StatusCode::METHOD_NOT_ALLOWED;
        let response = self
            .send(
                "referrers GET",
                &scopes,
                &|s| s.is_success() || absent(s),
                &|| {
                    Ok(self
                        .request(Method::GET, url.clone())
                        .header(header::ACCEPT, crate::manifest::OCI_INDEX))
                },
            )
            .await?;
        if absent(response.status()) {
            self.learn_referrers_api(false);
            return Ok(None);
        }
        self.learn_referrers_api(true);
        let next = response
            .headers()
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link);
        let index =
            read_bounded(&self.name, BodyKind::Manifest, response, self.body_timeout).await?;
        Ok(Some(ReferrersPage { index, next }))
    }

    /// One page of a repository's tags (`GET /v2/<name>/tags/list`), from
    /// `path_and_query` (the first page, or the `Link` of the previous
    /// one). Returns the tags and the next page's path, if any. A
    /// repository the registry does not know has no tags.
    pub(crate) async fn tags_page(
        &self,
        repository: &str,
        path_and_query: &str,
    ) -> Result<(Vec<String>, Option<String>), TransferError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let url = self.url(path_and_query.trim_start_matches('/'))?;
        let scopes = [pull_scope(repository)];
        let response = self
            .send("tags list", &scopes, &found_or_absent, &|| {
                Ok(self.request(Method::GET, url.clone()))
            })
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok((Vec::new(), None));
        }
        let next = response
            .headers()
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link);
        let body = read_bounded(&self.name, BodyKind::TagPage, response, self.body_timeout).await?;
        let list: TagList = serde_json::from_slice(&body).map_err(|e| TransferError::Protocol {
            registry: self.name.clone(),
            detail: format!("tag list of {repository} is not JSON: {e}"),
        })?;
        Ok((list.tags.unwrap_or_default(), next))
    }

    /// DELETE a manifest by digest (`202`). `false` when the registry does
    /// not have it. A registry with deletes disabled answers 405, which is
    /// an error naming the operation.
    pub(crate) async fn manifest_delete(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<bool, TransferError> {
        self.manifest_delete_reference(repository, digest.as_str())
            .await
    }

    /// DELETE a manifest by digest or tag (distribution refuses tags; some
    /// registries keep a tag after its manifest was deleted by digest, and
    /// only deleting the tag removes it).
    pub(crate) async fn manifest_delete_reference(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<bool, TransferError> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"))?;
        let scopes = [delete_scope(repository)];
        let response = self
            .send("manifest DELETE", &scopes, &found_or_absent, &|| {
                Ok(self.request(Method::DELETE, url.clone()))
            })
            .await?;
        Ok(response.status().is_success())
    }

    /// HEAD a blob: whether the repository has it.
    pub(crate) async fn blob_exists(
        &self,
        repository: &str,
        digest: &Digest,
        scopes: &[String],
    ) -> Result<bool, TransferError> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"))?;
        let response = self
            .send("blob HEAD", scopes, &found_or_absent, &|| {
                Ok(self.request(Method::HEAD, url.clone()))
            })
            .await?;
        Ok(response.status().is_success())
    }

    /// GET a blob from `offset` on, as a stream. `Ok(None)` if absent.
    /// The stream starts at `offset` even if the registry ignores `Range`.
    pub(crate) async fn blob_get(
        &self,
        repository: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<
        Option<impl Stream<Item = Result<Bytes, TransferError>> + Send + 'static>,
        TransferError,
    > {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"))?;
        let scopes = [pull_scope(repository)];
        let response = self
            .send_streaming("blob GET", &scopes, &found_or_absent, &|| {
                let request = self.request(Method::GET, url.clone());
                Ok(if offset > 0 {
                    request.header(header::RANGE, format!("bytes={offset}-"))
                } else {
                    request
                })
            })
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let already_skipped = response.status() == StatusCode::PARTIAL_CONTENT;
        let registry = self.name.clone();
        let mut watch = self.blob_floor.map(ThroughputWatch::new);
        let stream = response.bytes_stream().map(move |chunk| {
            let chunk = chunk.map_err(|e| TransferError::Interrupted {
                registry: registry.clone(),
                detail: error_chain(&e.without_url()),
            })?;
            if let Some(watch) = watch.as_mut() {
                watch
                    .record(chunk.len())
                    .map_err(|detail| TransferError::TooSlow {
                        registry: registry.clone(),
                        detail: format!("blob download: {detail}"),
                    })?;
            }
            Ok(chunk)
        });
        let stream: crate::BlobStream<TransferError> = Box::pin(stream);
        Ok(Some(if already_skipped || offset == 0 {
            stream
        } else {
            crate::source::skip_prefix(stream, offset)
        }))
    }

    /// Opens an upload session, or mounts the blob from `mount_from` in the
    /// same registry when that works (201).
    pub(crate) async fn upload_start(
        &self,
        repository: &str,
        mount_from: Option<(&Digest, &str)>,
    ) -> Result<UploadStart, TransferError> {
        let mut url = self.url(&format!("v2/{repository}/blobs/uploads/"))?;
        let mut scopes = vec![push_scope(repository)];
        if let Some((digest, from)) = mount_from {
            url.query_pairs_mut()
                .append_pair("mount", digest.as_str())
                .append_pair("from", from);
            scopes.push(pull_scope(from));
        }
        let response = self
            .send(
                "upload start",
                &scopes,
                &|s| s == StatusCode::CREATED || s == StatusCode::ACCEPTED,
                &|| {
                    Ok(self
                        .request(Method::POST, url.clone())
                        .header(header::CONTENT_LENGTH, 0))
                },
            )
            .await?;
        if response.status() == StatusCode::CREATED {
            if mount_from.is_some() {
                self.mounts_work.store(true, Ordering::Relaxed);
            }
            return Ok(UploadStart::Mounted);
        }
        Ok(UploadStart::Session(self.location(&response)?))
    }

    fn location(&self, response: &Response) -> Result<Url, TransferError> {
        let location = header_str(response.headers(), header::LOCATION).ok_or_else(|| {
            TransferError::Protocol {
                registry: self.name.clone(),
                detail: "upload response without Location".into(),
            }
        })?;
        let url = self
            .base
            .join(&location)
            .map_err(|_| TransferError::Protocol {
                registry: self.name.clone(),
                detail: "upload Location is not a URL".into(),
            })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TransferError::Protocol {
                registry: self.name.clone(),
                detail: format!("upload Location has scheme {:?}", url.scheme()),
            });
        }
        Ok(url)
    }

    /// Appends a streamed body to an upload session (PATCH, chunked
    /// transfer encoding, so the body may end early and cleanly). Returns
    /// the session URL for the next request and the bytes the registry now
    /// holds, if it said.
    pub(crate) async fn upload_patch(
        &self,
        session: &Url,
        repository: &str,
        body: reqwest::Body,
    ) -> Result<(Url, Option<u64>), TransferError> {
        let scopes = [push_scope(repository)];
        let mut request = self
            .request(Method::PATCH, session.clone())
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        if let Some(auth) = self.authorization_for(session, &scopes).await? {
            request = request.header(header::AUTHORIZATION, auth);
        }
        self.count_request();
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(self.status_error("upload chunk", response).await);
        }
        let received = range_end(response.headers());
        Ok((self.location(&response)?, received))
    }

    /// Commits an upload session under `digest`, sending the last `body`
    /// bytes with it (empty when everything went by PATCH).
    pub(crate) async fn upload_commit(
        &self,
        session: &Url,
        repository: &str,
        digest: &Digest,
        body: Bytes,
    ) -> Result<(), TransferError> {
        let scopes = [push_scope(repository)];
        let mut url = session.clone();
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        let mut request = self
            .request(Method::PUT, url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, body.len())
            .body(body);
        if let Some(auth) = self.authorization_for(session, &scopes).await? {
            request = request.header(header::AUTHORIZATION, auth);
        }
        self.count_request();
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        if response.status() != StatusCode::CREATED {
            return Err(self.status_error("upload commit", response).await);
        }
        Ok(())
    }

    /// How many bytes an upload session holds, and its current URL.
    pub(crate) async fn upload_status(
        &self,
        session: &Url,
        repository: &str,
    ) -> Result<(u64, Url), TransferError> {
        let scopes = [push_scope(repository)];
        let response = self
            .send(
                "upload status",
                &scopes,
                &|s| s == StatusCode::NO_CONTENT,
                &|| Ok(self.request(Method::GET, session.clone())),
            )
            .await?;
        let received = range_end(response.headers()).unwrap_or(0);
        Ok((
            received,
            self.location(&response).unwrap_or_else(|_| session.clone()),
        ))
    }

    /// Abandons an upload session; best effort (the registry purges stale
    /// sessions itself eventually).
    pub(crate) async fn upload_cancel(&self, session: &Url, repository: &str) {
        let scopes = [push_scope(repository)];
        let auth = self
            .authorization_for(session, &scopes)
            .await
            .ok()
            .flatten();
        let mut request = self.request(Method::DELETE, session.clone());
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        self.count_request();
        if let Err(e) = request.send().await {
            tracing::debug!(registry = %self.name, error = %error_chain(&e.without_url()), "upload cancel failed");
        }
    }
}

/// What a manifest HEAD tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ManifestHead {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// Bytes held by an upload session, from `Range: 0-<last byte>`.
/// Distribution says `0-0` for both an empty session and one byte; reading
/// it as empty is safe: the caller then restarts rather than resumes.
/// An answer that says whether the object is there: 2xx, or 404 (absent),
/// as opposed to an error to retry or report.
fn found_or_absent(status: StatusCode) -> bool {
    status.is_success() || status == StatusCode::NOT_FOUND
}

fn range_end(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, header::RANGE)
        .and_then(|r| {
            r.split_once('-')
                .and_then(|(_, end)| end.parse::<u64>().ok())
        })
        // `end` is remote input: u64::MAX must not overflow.
        .and_then(|end| {
            if end == 0 {
                Some(0)
            } else {
                end.checked_add(1)
            }
        })
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
        .filter(|v| !v.is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn client(registry: &str, settings: RegistrySettings) -> RegistryClient {
        crate::install_crypto_provider();
        let settings = settings.with_credentials(
            registry,
            Credentials::Basic {
                username: "u".into(),
                password: Secret::new("p"),
            },
        );
        let tuning = HttpTuning {
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            blob_floor: None,
            retry: RetryPolicy::default(),
            max_idle_per_host: 1,
        };
        RegistryClient::new(
            registry,
            registry,
            settings.client_options(registry),
            &tuning,
        )
        .unwrap()
    }

    fn realm_ok(client: &RegistryClient, realm: &str) -> Result<(), String> {
        client
            .check_realm_may_receive_credentials(&Url::parse(realm).unwrap())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn credentials_go_to_a_token_realm_only_on_the_registrys_own_or_a_trusted_origin() {
        let tls = client("registry.example", RegistrySettings::new());
        assert!(realm_ok(&tls, "https://registry.example/token").is_ok());
        // Same host, other port or scheme: another origin.
        let other_port = realm_ok(&tls, "https://registry.example:8443/token").unwrap_err();
        assert!(other_port.contains("another host"), "{other_port}");
        let downgraded = realm_ok(&tls, "http://registry.example/token").unwrap_err();
        assert!(downgraded.contains("plain HTTP"), "{downgraded}");
        let elsewhere = realm_ok(&tls, "https://collector.example/token").unwrap_err();
        assert!(elsewhere.contains("collector.example"), "{elsewhere}");
        assert!(!elsewhere.contains("p@") && !elsewhere.contains("Basic"));

        // Docker Hub's token service is built in; another registry's is not.
        let hub = client("docker.io", RegistrySettings::new());
        assert!(realm_ok(&hub, "https://auth.docker.io/token").is_ok());
        assert!(realm_ok(&tls, "https://auth.docker.io/token").is_err());

        // An admin-trusted realm, over TLS; over plain HTTP only when listed.
        let trusting = client(
            "registry.example",
            RegistrySettings::new()
                .trust_token_realm("registry.example", "https://auth.example")
                .trust_token_realm("registry.example", "http://auth.local:5000"),
        );
        assert!(realm_ok(&trusting, "https://auth.example/jwt").is_ok());
        assert!(realm_ok(&trusting, "http://auth.local:5000/t").is_err());
        let listed = client(
            "registry.example",
            RegistrySettings::new()
                .trust_token_realm("registry.example", "http://auth.local:5000")
                .allow_plain_http("auth.local:5000"),
        );
        assert!(realm_ok(&listed, "http://auth.local:5000/t").is_ok());

        // A plain-HTTP registry's own origin.
        let plain = client(
            "127.0.0.1:5000",
            RegistrySettings::new().allow_plain_http("127.0.0.1:5000"),
        );
        assert!(realm_ok(&plain, "http://127.0.0.1:5000/token").is_ok());
        assert!(realm_ok(&plain, "http://127.0.0.1:5001/token").is_err());
    }

    #[test]
    fn range_ends_from_the_registry_cannot_overflow() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::RANGE,
            HeaderValue::from_static("0-18446744073709551615"),
        );
        assert_eq!(range_end(&headers), None);
        headers.insert(header::RANGE, HeaderValue::from_static("0-99"));
        assert_eq!(range_end(&headers), Some(100));
    }
}
