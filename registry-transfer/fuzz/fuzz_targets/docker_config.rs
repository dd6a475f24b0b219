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
        for value in text.split('"').skip(1).step_by(2) {
            let secret_like = value.len() >= 12
                && !value.chars().any(char::is_whitespace)
                && value.chars().any(|c| c.is_ascii_digit())
                && value.chars().any(|c| c.is_ascii_alphabetic());
            if secret_like {
                assert!(!message.contains(value), "{message}");
            }
        }
    }
});
