//! Any header value as a `WWW-Authenticate` challenge, a token response
//! or a `Retry-After`: never a panic, token lifetimes always within
//! 1 s..1 h, `Retry-After` always capped (remote durations are what
//! crashed the operator in issue 15).
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use registry_transfer::fuzzing::{MAX_TOKEN_LIFETIME, parse_challenge, token_from_json};
use registry_transfer::retry::{RETRY_AFTER_CEILING, parse_retry_after};

fuzz_target!(|input: &str| {
    let _ = parse_challenge(input);
    if let Some((_, lifetime)) = token_from_json(input.as_bytes()) {
        assert!(lifetime >= Duration::from_secs(1) && lifetime <= MAX_TOKEN_LIFETIME);
    }
    if let Some(wait) = parse_retry_after(input, SystemTime::UNIX_EPOCH) {
        assert!(wait <= RETRY_AFTER_CEILING);
    }
});
