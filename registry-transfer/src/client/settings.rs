//! How to reach registries: credentials, CA bundles, plain HTTP, and the
//! options one client is built with.

use std::collections::{HashMap, HashSet};
use std::fmt;

use reqwest::Url;

use crate::credentials::{Credentials, DockerConfig, normalize_registry};

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
    pub(super) plain_http: bool,
    /// Every host allowed plain HTTP, to judge token realms by.
    pub(super) plain_http_hosts: HashSet<String>,
    pub(super) ca_bundle: Option<Vec<u8>>,
    pub(super) credentials: Credentials,
    pub(super) trusted_realms: Vec<url::Origin>,
    pub(super) tls_name: Option<String>,
}
