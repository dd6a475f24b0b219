//! Registry credentials, from `kubernetes.io/dockerconfigjson` content.
//!
//! Secrets live in [`Secret`], whose `Debug` prints a placeholder and which
//! has no `Display`, so a `{:?}` anywhere (logs, error chains, test output)
//! cannot leak them.

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

use crate::error::TransferError;
use crate::reference::DOCKER_HUB;

/// A secret string. Read it with [`Secret::expose`], only where it is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How to authenticate to one registry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    Anonymous,
    /// Username and password: sent as HTTP basic auth, or to the token
    /// service of a registry that uses the bearer token flow.
    Basic { username: String, password: Secret },
}

/// The `auths` of one or more docker config files, keyed by normalised
/// registry name.
#[derive(Clone, Debug, Default)]
pub struct DockerConfig {
    auths: HashMap<String, Credentials>,
}

#[derive(Deserialize)]
struct DockerConfigFile {
    #[serde(default)]
    auths: HashMap<String, DockerAuthEntry>,
}

#[derive(Deserialize)]
struct DockerAuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl DockerConfig {
    /// Parses the content of a `kubernetes.io/dockerconfigjson` secret
    /// (the `.dockerconfigjson` key, already base64-decoded by the API).
    /// Errors say which entry is wrong, never what it contains.
    pub fn parse(json: &[u8]) -> Result<DockerConfig, TransferError> {
        let file: DockerConfigFile = serde_json::from_slice(json).map_err(|e| {
            // serde's message can quote input; keep only the position.
            TransferError::InvalidConfiguration(format!(
                "docker config JSON is malformed at line {} column {}",
                e.line(),
                e.column()
            ))
        })?;
        let mut config = DockerConfig::default();
        for (key, entry) in file.auths {
            let credentials = entry.into_credentials().ok_or_else(|| {
                TransferError::InvalidConfiguration(format!(
                    "docker config entry for {} has no usable auth or username/password",
                    normalize_registry(&key)
                ))
            })?;
            config.auths.insert(normalize_registry(&key), credentials);
        }
        Ok(config)
    }

    /// Adds the entries of `other`, which win over ours for the same registry.
    pub fn merge(&mut self, other: DockerConfig) {
        self.auths.extend(other.auths);
    }

    pub fn insert(&mut self, registry: &str, credentials: Credentials) {
        self.auths.insert(normalize_registry(registry), credentials);
    }

    /// The credentials for a registry as written in references or as its
    /// API host; anonymous when none are configured.
    pub fn credentials_for(&self, registry: &str) -> Credentials {
        self.auths
            .get(&normalize_registry(registry))
            .cloned()
            .unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.auths.is_empty()
    }
}

impl DockerAuthEntry {
    fn into_credentials(self) -> Option<Credentials> {
        if let (Some(username), Some(password)) = (&self.username, &self.password)
            && !username.is_empty()
        {
            return Some(Credentials::Basic {
                username: username.clone(),
                password: Secret::new(password.clone()),
            });
        }
        let decoded = BASE64.decode(self.auth?.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (username, password) = decoded.split_once(':')?;
        Some(Credentials::Basic {
            username: username.to_owned(),
            password: Secret::new(password),
        })
    }
}

/// Reduces the many spellings of a registry in docker config files
/// (`https://index.docker.io/v1/`, `registry-1.docker.io`, `HOST:5000/`) to
/// one key.
pub fn normalize_registry(key: &str) -> String {
    let key = key.trim().to_ascii_lowercase();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(&key);
    let host = key.split('/').next().unwrap_or_default().to_owned();
    match host.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_owned()
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_auth_fields_and_username_password() {
        let auth = BASE64.encode("alice:s3cr:et");
        let json = format!(
            r#"{{"auths":{{
                "https://index.docker.io/v1/":{{"auth":"{auth}"}},
                "registry.example:5000":{{"username":"bob","password":"hunter2"}}
            }}}}"#
        );
        let config = DockerConfig::parse(json.as_bytes()).unwrap();
        for alias in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(
                config.credentials_for(alias),
                Credentials::Basic {
                    username: "alice".into(),
                    password: Secret::new("s3cr:et")
                },
                "{alias}"
            );
        }
        assert_eq!(
            config.credentials_for("registry.example:5000"),
            Credentials::Basic {
                username: "bob".into(),
                password: Secret::new("hunter2")
            }
        );
        assert_eq!(
            config.credentials_for("other.example"),
            Credentials::Anonymous
        );
    }

    #[test]
    fn secrets_never_show_in_debug_or_errors() {
        let json = br#"{"auths":{"r.example":{"username":"bob","password":"hunter2"}}}"#;
        let config = DockerConfig::parse(json).unwrap();
        let debug = format!("{config:?} {:?}", config.credentials_for("r.example"));
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("bob"));

        let broken = br#"{"auths":{"r.example":{"auth":"hunter2-not-base64!"}}}"#;
        let err = DockerConfig::parse(broken).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("hunter2"));
        let malformed = br#"{"auths":{"r.example":{"auth":hunter2}}}"#;
        let err = DockerConfig::parse(malformed).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("hunter2"));
        assert_eq!(err.reason(), "InvalidConfiguration");
        // Found by the docker_config fuzz target, whose leak check took the
        // message's own words, fed back as input, for a quoted secret.
        let echoed = b"invalid configuration: docker config JSON is malformed at line 1";
        let err = DockerConfig::parse(echoed).unwrap_err();
        assert_eq!(err.reason(), "InvalidConfiguration");
    }

    #[test]
    fn normalizes_registry_spellings() {
        assert_eq!(
            normalize_registry("https://index.docker.io/v1/"),
            "docker.io"
        );
        assert_eq!(
            normalize_registry("HTTP://Reg.Example:5000/"),
            "reg.example:5000"
        );
        assert_eq!(normalize_registry("quay.io"), "quay.io");
    }
}
