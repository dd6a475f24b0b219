//! The registry authentication handshake: parsing `WWW-Authenticate`
//! challenges and token responses. Pure, so it is unit-tested without a
//! registry.

use std::time::Duration;

use serde::Deserialize;

/// What a registry asked for in `WWW-Authenticate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses one challenge (`Bearer realm="...",service="...",scope="..."`
/// or `Basic realm="..."`). Unknown schemes yield `None`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(params);
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm")?,
        service: get("service"),
        scope: get("scope"),
    })
}

/// Splits `k="v, with comma",k2=v2` respecting quotes and backslash escapes.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    out
}

/// A token is reused at most this long, whatever the token service says:
/// `expires_in` is remote input, and a token that lives for years is both
/// a risk and, added to a clock, an overflow.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// What distribution's token spec means when `expires_in` is absent.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    /// Any JSON number (or nothing): a negative, fractional or enormous
    /// value is judged below instead of failing the whole response.
    #[serde(default)]
    expires_in: Option<serde_json::Number>,
}

impl TokenResponse {
    /// The token and how long it may be used: `expires_in` seconds, at
    /// least 1, at most [`MAX_TOKEN_LIFETIME`]; 60 when absent or not a
    /// usable number.
    pub fn into_token(self) -> Option<(String, Duration)> {
        let token = self.token.or(self.access_token)?;
        let lifetime = self
            .expires_in
            .and_then(|n| {
                n.as_u64().or_else(|| {
                    n.as_f64()
                        .filter(|f| f.is_finite())
                        .map(|f| f.max(0.0) as u64)
                })
            })
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs)
            .clamp(Duration::from_secs(1), MAX_TOKEN_LIFETIME);
        Some((token, lifetime))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges_with_commas_in_scope() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
    }

    #[test]
    fn token_responses_accept_both_field_names() {
        let t: TokenResponse =
            serde_json::from_str(r#"{"access_token":"abc","expires_in":300}"#).unwrap();
        assert_eq!(
            t.into_token(),
            Some(("abc".into(), Duration::from_secs(300)))
        );
        let t: TokenResponse = serde_json::from_str(r#"{"token":"xyz"}"#).unwrap();
        assert_eq!(
            t.into_token(),
            Some(("xyz".into(), Duration::from_secs(60)))
        );
        let t: TokenResponse = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(t.into_token(), None);
    }

    #[test]
    fn token_lifetimes_from_the_service_are_clamped() {
        let lifetime = |json: &str| {
            serde_json::from_str::<TokenResponse>(json)
                .unwrap()
                .into_token()
                .unwrap()
                .1
        };
        // The value that crashed the operator (issue 15).
        assert_eq!(
            lifetime(r#"{"token":"t","expires_in":18446744073709551615}"#),
            MAX_TOKEN_LIFETIME
        );
        assert_eq!(
            lifetime(r#"{"token":"t","expires_in":1e300}"#),
            MAX_TOKEN_LIFETIME
        );
        assert_eq!(
            lifetime(r#"{"token":"t","expires_in":-5}"#),
            Duration::from_secs(1)
        );
        assert_eq!(
            lifetime(r#"{"token":"t","expires_in":0}"#),
            Duration::from_secs(1)
        );
        assert_eq!(
            lifetime(r#"{"token":"t","expires_in":90.5}"#),
            Duration::from_secs(90)
        );
    }
}
