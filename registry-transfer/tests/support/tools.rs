//! The real tools of the referrers tests (cosign, oras, oci-registry),
//! built by hack/build-registry-tools.sh into the version-keyed cache. A
//! missing tool is a failure, never a skip.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The path of a cached tool: `$LIFEBOAT_TOOL_<NAME>` if set, else the
/// newest `$LIFEBOAT_CACHE/bin/<name>-<version>/<name>`.
pub fn tool(name: &str) -> PathBuf {
    let variable = format!("LIFEBOAT_TOOL_{}", name.to_uppercase().replace('-', "_"));
    if let Ok(path) = std::env::var(&variable) {
        return PathBuf::from(path);
    }
    let cache = std::env::var("LIFEBOAT_CACHE").unwrap_or_else(|_| "/var/cache/lifeboat".into());
    let bin = Path::new(&cache).join("bin");
    let prefix = format!("{name}-");
    let newest = std::fs::read_dir(&bin)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            let file = entry.file_name();
            let file = file.to_string_lossy();
            file.starts_with(&prefix) && !file.ends_with(".partial")
        })
        .map(|entry| entry.path().join(name))
        .filter(|path| path.is_file())
        .max_by_key(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok());
    newest.unwrap_or_else(|| {
        panic!(
            "{name} is not in {}: run hack/build-registry-tools.sh",
            bin.display()
        )
    })
}

/// Runs a tool; panics with its output when it fails. Returns stdout.
pub fn run(name: &str, args: &[&str], dir: &Path, env: &[(&str, &str)]) -> String {
    let output = Command::new(tool(name))
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        // No Docker credential helpers or config from the machine.
        .env("DOCKER_CONFIG", dir)
        .env("HOME", dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    assert!(
        output.status.success(),
        "{name} {args:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
