//! Any bytes as a `.dockerconfigjson` (a tenant's Secret): parsing never
//! panics, and its error never quotes a string value of the input (it could
//! hold a password).
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_transfer::DockerConfig;

fuzz_target!(|bytes: &[u8]| {
    if let Err(error) = DockerConfig::parse(bytes) {
        let message = error.to_string();
        let Ok(text) = std::str::from_utf8(bytes) else {
            return;
        };
        // The JSON string values of the input, as a leak would show them.
        // Only values that cannot be words of the message itself are
        // checked (long, no whitespace, letters and digits mixed): the
        // fuzzer also feeds the message's own text back as input.
        // Object keys are registry names, which the message names on
        // purpose: only strings not followed by ':' are values.
        let pieces: Vec<&str> = text.split('"').collect();
        for (i, value) in pieces.iter().enumerate().skip(1).step_by(2) {
            let is_key = pieces
                .get(i + 1)
                .is_some_and(|after| after.trim_start().starts_with(':'));
            let secret_like = !is_key
                && value.len() >= 12
                && !value.chars().any(char::is_whitespace)
                && value.chars().any(|c| c.is_ascii_digit())
                && value.chars().any(|c| c.is_ascii_alphabetic());
            if secret_like {
                assert!(!message.contains(value), "{message}");
            }
        }
    }
});
