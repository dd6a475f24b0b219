//! The checked-in manifests: samples are valid, invalid examples are
//! well-formed and stay in sync with the CRDs' messages, and the generated
//! CRDs match `config/crd/`.

use std::path::{Path, PathBuf};

use lifeboat_api::backup_policy::ImageBackupPolicy;
use lifeboat_api::restore::ImageRestore;
use lifeboat_api::schema::all_cel_rules;
use lifeboat_api::validation::{validate_policy_spec, validate_restore_spec};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn checked_in_crds_match_the_types() {
    let files = lifeboat_api::crd::generated_files().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(files.len(), 2);
    for file in files {
        let path = repo_root().join(file.path);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            current == file.contents,
            "{} differs from what the Rust types generate; run `cargo run -p lifeboat-api --bin crdgen` and commit the result",
            file.path
        );
    }
}

#[test]
fn samples_deserialise_and_validate() {
    let files = yaml_files(&repo_root().join("config/samples"));
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for expected in [
        "backup-policy-production.yaml",
        "backup-policy-tenant.yaml",
        "restore-named-images.yaml",
        "restore-all-missing.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "missing sample {expected}"
        );
    }
    for path in files {
        let text = read(&path);
        let value: serde_yaml::Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Samples are applied with `-n <namespace>`, which a namespace in the
        // file would contradict.
        assert!(
            value["metadata"]["namespace"].is_null(),
            "{}: samples must not set metadata.namespace",
            path.display()
        );
        match value["kind"].as_str() {
            Some("ImageBackupPolicy") => {
                let policy: ImageBackupPolicy = serde_yaml::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                validate_policy_spec(&policy.spec)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            Some("ImageRestore") => {
                let restore: ImageRestore = serde_yaml::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                validate_restore_spec(&restore.spec)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            other => panic!("{}: unexpected kind {other:?}", path.display()),
        }
    }
}

/// Phrases of the API server's own schema errors (not our CEL messages).
const SCHEMA_ERROR_PHRASES: &[&str] = &[
    "Too many:",
    "Too long:",
    "should have at least",
    "should be greater than or equal to",
    "should match",
    "Unsupported value:",
    "Required value",
    "Duplicate value",
];

struct InvalidExample {
    path: PathBuf,
    expect: String,
    text: String,
}

fn invalid_examples() -> Vec<InvalidExample> {
    yaml_files(&repo_root().join("api/tests/invalid"))
        .into_iter()
        .map(|path| {
            let text = read(&path);
            let expect = text
                .lines()
                .next()
                .and_then(|line| line.strip_prefix("# expect: "))
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    panic!("{}: the first line must be `# expect: …`", path.display())
                });
            InvalidExample { path, expect, text }
        })
        .collect()
}

#[test]
fn invalid_examples_are_well_formed() {
    let examples = invalid_examples();
    assert!(
        examples.len() >= 22,
        "only {} invalid examples",
        examples.len()
    );
    for example in &examples {
        let name = example.path.display();
        assert!(
            !example.expect.trim().is_empty(),
            "{name}: empty expectation"
        );
        let value: serde_yaml::Value =
            serde_yaml::from_str(&example.text).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
        assert_eq!(
            value["apiVersion"].as_str(),
            Some("lifeboat.dev/v1alpha1"),
            "{name}"
        );
        assert!(
            matches!(
                value["kind"].as_str(),
                Some("ImageBackupPolicy" | "ImageRestore")
            ),
            "{name}"
        );
        let file_stem = example
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned());
        assert_eq!(
            value["metadata"]["name"].as_str(),
            file_stem.as_deref(),
            "{name}: name the object after the file"
        );
        assert!(
            value["metadata"]["namespace"].is_null(),
            "{name}: no namespace"
        );
    }
}

#[test]
fn invalid_example_messages_exist_in_the_crds() {
    let crds: String = lifeboat_api::crd::generated_files()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|f| f.contents)
        .collect();
    let cel_messages: Vec<&str> = all_cel_rules().iter().map(|r| r.message).collect();
    let mut cel_examples = 0;
    for example in invalid_examples() {
        let name = example.path.display();
        if cel_messages
            .iter()
            .any(|m| m.contains(example.expect.as_str()))
        {
            cel_examples += 1;
            // The message must reach the CRD as written (YAML may quote it,
            // doubling single quotes, so compare a quote-free stretch).
            let probe: String = example.expect.chars().take_while(|c| *c != '\'').collect();
            assert!(
                crds.contains(probe.trim()),
                "{name}: {:?} is not in the generated CRDs",
                example.expect
            );
        } else {
            assert!(
                SCHEMA_ERROR_PHRASES
                    .iter()
                    .any(|p| example.expect.contains(p)),
                "{name}: {:?} is neither a CEL message of ours nor an API server schema error",
                example.expect
            );
        }
    }
    assert!(
        cel_examples >= 12,
        "only {cel_examples} examples exercise CEL rules"
    );
    // Every CEL rule is exercised by at least one example, except the
    // update-only immutability rule (the e2e test patches a sample for it).
    for rule in all_cel_rules() {
        if rule.rule.contains("oldSelf") {
            continue;
        }
        assert!(
            invalid_examples()
                .iter()
                .any(|e| rule.message.contains(e.expect.as_str())),
            "no invalid example for the rule {:?}",
            rule.message
        );
    }
}

/// Whatever the API server rejects, the operator's own validation rejects
/// too (or the object does not even deserialise), so objects admitted under
/// an older CRD are still reported instead of half-working.
#[test]
fn rust_validation_rejects_every_invalid_example() {
    for example in invalid_examples() {
        let name = example.path.display();
        let value: serde_yaml::Value =
            serde_yaml::from_str(&example.text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let rejected = match value["kind"].as_str() {
            Some("ImageBackupPolicy") => serde_yaml::from_str::<ImageBackupPolicy>(&example.text)
                .map_err(|e| e.to_string())
                .and_then(|p| {
                    validate_policy_spec(&p.spec)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }),
            Some("ImageRestore") => serde_yaml::from_str::<ImageRestore>(&example.text)
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    validate_restore_spec(&r.spec)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }),
            other => panic!("{name}: kind {other:?}"),
        };
        assert!(rejected.is_err(), "{name} passes the Rust validation");
    }
}
