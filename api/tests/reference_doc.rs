//! `docs/reference.md` is what the types generate.

#[test]
fn checked_in_reference_matches_the_types() {
    let file = lifeboat_api::docs::reference_file();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(file.path);
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == file.contents,
        "{} differs from what the Rust types generate; run `cargo run -p lifeboat-api --bin crdgen` and commit the result",
        file.path
    );
}
