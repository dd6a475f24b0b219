//! Content digests (`sha256:<hex>`), validated on construction.

use std::fmt;
use std::str::FromStr;

use crate::error::{ReferenceError as Error, Result};

/// Longest digest algorithm name we accept.
const DIGEST_ALGORITHM_MAX_LENGTH: usize = 32;
const SHA256_PREFIX: &str = "sha256:";

/// A content digest such as `sha256:<64 hex digits>`.
///
/// Only the algorithms registries actually use are accepted (`sha256`,
/// `sha512`), with their exact lowercase-hex lengths, so two `Digest`s are
/// equal exactly when they name the same content.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    /// The whole `algorithm:encoded` text.
    value: String,
    /// Index of the `:` in `value`.
    colon: usize,
}

impl Digest {
    /// Parses `algorithm:encoded`.
    pub fn parse(input: &str) -> Result<Digest> {
        let invalid = |problem: &str| Error::InvalidDigest {
            digest: input.to_owned(),
            problem: problem.to_owned(),
        };
        if !input.is_ascii() {
            return Err(invalid("contains a non-ASCII character"));
        }
        let Some(colon) = input.find(':') else {
            return Err(invalid(
                "must be <algorithm>:<hex>, for example sha256:<64 hexadecimal digits>",
            ));
        };
        let (algorithm, encoded) = (&input[..colon], &input[colon + 1..]);
        if algorithm.is_empty() {
            return Err(invalid("the algorithm before ':' is missing"));
        }
        if algorithm.len() > DIGEST_ALGORITHM_MAX_LENGTH {
            return Err(invalid("the algorithm name is too long"));
        }
        let expected_hex_len = match algorithm {
            "sha256" => 64,
            "sha512" => 128,
            _ => {
                return Err(Error::InvalidDigest {
                    digest: input.to_owned(),
                    problem: format!("unsupported algorithm {algorithm:?}; use sha256 or sha512"),
                });
            }
        };
        if encoded.is_empty() {
            return Err(invalid("the hexadecimal part after ':' is missing"));
        }
        if encoded
            .bytes()
            .any(|b| b.is_ascii_hexdigit() && b.is_ascii_uppercase())
        {
            return Err(invalid("hexadecimal digits must be lowercase"));
        }
        if !encoded
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid("the part after ':' must be hexadecimal digits"));
        }
        if encoded.len() != expected_hex_len {
            return Err(Error::InvalidDigest {
                digest: input.to_owned(),
                problem: format!(
                    "a {algorithm} digest has {expected_hex_len} hexadecimal digits, this one has {}",
                    encoded.len()
                ),
            });
        }
        Ok(Digest {
            value: input.to_owned(),
            colon,
        })
    }

    /// The sha256 digest whose 32-byte hash is `hash` (what a hasher
    /// returns): always valid, so no parse is needed.
    pub fn sha256(hash: &[u8; 32]) -> Digest {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut value = String::with_capacity(SHA256_PREFIX.len() + 64);
        value.push_str(SHA256_PREFIX);
        for byte in hash {
            value.push(char::from(HEX[usize::from(byte >> 4)]));
            value.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        Digest {
            value,
            colon: SHA256_PREFIX.len() - 1,
        }
    }

    /// `sha256` or `sha512`.
    pub fn algorithm(&self) -> &str {
        &self.value[..self.colon]
    }

    /// The lowercase hexadecimal part.
    pub fn encoded(&self) -> &str {
        &self.value[self.colon + 1..]
    }

    /// The whole `algorithm:encoded` text.
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Digest> {
        Digest::parse(s)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.value)
    }
}

/// A digest travels as its `algorithm:encoded` text and is checked again
/// when read: a report or a spec cannot smuggle in an invalid one.
impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.value)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(deserializer)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_sha256_and_sha512_only_in_lowercase_hex() {
        let ok = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&ok).map(|d| d.encoded().len()), Ok(64));
        assert!(Digest::parse(&format!("sha512:{}", "0".repeat(128))).is_ok());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(Digest::parse(&format!("md5:{}", "a".repeat(32))).is_err());
        assert!(Digest::parse("nocolon").is_err());
    }

    #[test]
    fn sha256_of_a_hash_is_the_hex_form() {
        let mut hash = [0u8; 32];
        hash[0] = 0xab;
        hash[31] = 0x0f;
        let digest = Digest::sha256(&hash);
        let expected = format!("sha256:ab{}0f", "0".repeat(60));
        assert_eq!(digest.as_str(), expected);
        assert_eq!(digest.algorithm(), "sha256");
        assert_eq!(Digest::parse(&expected), Ok(digest));
    }

    #[test]
    fn serde_checks_what_it_reads() {
        let text = format!("\"sha256:{}\"", "1".repeat(64));
        let digest: Digest = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(serde_json::to_string(&digest).ok(), Some(text));
        let bad = serde_json::from_str::<Digest>("\"sha256:xyz\"");
        assert!(bad.is_err_and(|e| e.to_string().contains("hexadecimal")));
    }
}
