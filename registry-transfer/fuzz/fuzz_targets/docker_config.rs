//! Any bytes as a `.dockerconfigjson` (a tenant's Secret): parsing never
//! panics, and its error never quotes the input (it could hold a password).
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_transfer::DockerConfig;

fuzz_target!(|bytes: &[u8]| {
    if let Err(error) = DockerConfig::parse(bytes) {
        let message = error.to_string();
        // Input long enough not to be part of the message by chance.
        if let Ok(text) = std::str::from_utf8(bytes)
            && text.len() >= 24
            && !text.contains('\n')
        {
            assert!(!message.contains(text), "{message}");
        }
    }
});
