//! How node-exporter reaches registries, in every mode: the mounted
//! credentials, the hosts spoken to over plain HTTP, and the CA bundles the
//! operator trusts (`--ca-bundle REGISTRY=PATH`), so a registry with a
//! private CA works for node Jobs exactly as it does for the operator.

use registry_transfer::{DockerConfig, RegistrySettings};

use crate::cli::Options;
use crate::error::Error;

/// The registry settings `options` describe. Reads the files they name: a
/// missing or unreadable one is an error, not a silent downgrade to the
/// system roots or to anonymous access.
pub fn settings(options: &Options) -> Result<RegistrySettings, Error> {
    let mut settings = RegistrySettings::new();
    if let Some(path) = &options.docker_config {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            context: "cannot read docker config",
            path: path.clone(),
            source,
        })?;
        let parsed = DockerConfig::parse(&bytes)
            .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
        settings = settings.with_docker_config(parsed);
    }
    for host in &options.plain_http {
        settings = settings.allow_plain_http(host);
    }
    for bundle in &options.ca_bundles {
        let path = std::path::PathBuf::from(&bundle.path);
        let pem = std::fs::read(&path).map_err(|source| Error::Io {
            context: "cannot read CA bundle",
            path: path.clone(),
            source,
        })?;
        if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(Error::Usage(format!(
                "{}: no PEM certificate in the CA bundle for {}",
                path.display(),
                bundle.registry
            )));
        }
        settings = settings.with_ca_bundle(&bundle.registry, pem);
    }
    Ok(settings)
}
