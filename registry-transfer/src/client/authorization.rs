//! Authorization: basic credentials, and the token flow learned from a
//! registry's 401 challenge, with the rules on where credentials may go.

use super::*;

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

impl RegistryClient {
    /// The `Authorization` for a request to `url`: none when `url` is on
    /// another origin (an upload `Location` or a tag-list `Link` pointing
    /// elsewhere, e.g. a pre-signed storage URL, goes without).
    pub(super) async fn authorization_for(
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

    pub(super) fn lock_challenge(&self) -> std::sync::MutexGuard<'_, Option<Challenge>> {
        self.challenge.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn lock_tokens(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (Secret, Instant)>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn basic_header(&self) -> Option<HeaderValue> {
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

    pub(super) async fn fetch_token(
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
    pub(super) fn check_realm_may_receive_credentials(
        &self,
        realm: &Url,
    ) -> Result<(), TransferError> {
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

    /// Records the challenge of a 401. Returns whether retrying with
    /// (new) credentials can help.
    pub(super) fn learn_challenge(&self, headers: &HeaderMap, scopes: &[String]) -> bool {
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
}
