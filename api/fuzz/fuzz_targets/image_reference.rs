//! Any string: parsing never panics, and a parsed reference's canonical
//! form parses back to the same value (and prints the same again).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_api::reference::{Digest, ImageReference};

fuzz_target!(|input: &str| {
    let _ = Digest::parse(input);
    if let Ok(reference) = ImageReference::parse(input) {
        let canonical = reference.to_string();
        let again = match ImageReference::parse(&canonical) {
            Ok(again) => again,
            Err(e) => panic!("{input:?} -> {canonical:?} does not parse back: {e}"),
        };
        assert_eq!(again, reference, "{input:?} -> {canonical:?}");
        assert_eq!(again.to_string(), canonical);
        let familiar = reference.familiar();
        assert_eq!(
            ImageReference::parse(&familiar).ok().as_ref(),
            Some(&reference),
            "{input:?} -> familiar {familiar:?}"
        );
    }
});
