//! Any bytes as a manifest or index from a registry: parsing, media-type
//! sniffing and platform filtering never panic, and a filtered index
//! parses back to exactly the children that were kept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_transfer::Platform;
use registry_transfer::manifest::{
    ManifestContent, effective_media_type, filter_index, parse, sha256_digest,
};

fuzz_target!(|bytes: &[u8]| {
    let digest = sha256_digest(bytes);
    let media_type = effective_media_type(bytes, "application/vnd.oci.image.index.v1+json");
    let Ok(content) = parse(bytes, &media_type, &digest) else {
        return;
    };
    if let ManifestContent::Index { children } = content {
        let wanted = [Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }];
        if let Ok(Some((filtered, kept))) = filter_index(bytes, &digest, &children, &wanted) {
            let again = parse(&filtered, &media_type, &sha256_digest(&filtered))
                .expect("a filtered index parses");
            match again {
                ManifestContent::Index { children } => assert_eq!(children, kept),
                ManifestContent::Image { .. } => panic!("a filtered index became an image"),
            }
        }
    }
});
