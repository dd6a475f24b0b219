//! rustls client configuration with the `ring` provider only.

use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use rustls::{ClientConfig, RootCertStore};

use crate::error::TransferError;

/// Installs `ring` as the process-wide rustls crypto provider. Binaries call
/// this first thing in `main` (and tests before any TLS): several crates in
/// the workspace build rustls configs from the process default, and with
/// both or neither provider compiled in rustls cannot pick one itself.
/// Calling it again is harmless.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        if !loaded.errors.is_empty() {
            tracing::warn!(
                errors = loaded.errors.len(),
                "some system CA certificates could not be loaded"
            );
        }
        loaded.certs
    })
}

/// A client config trusting the system roots plus the PEM `ca_bundle`.
pub fn client_config(ca_bundle: Option<&[u8]>) -> Result<ClientConfig, TransferError> {
    let mut roots = RootCertStore::empty();
    let (_added, _ignored) = roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(pem) = ca_bundle {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| {
                TransferError::InvalidConfiguration(format!("CA bundle is not valid PEM: {e}"))
            })?;
            roots.add(cert).map_err(|e| {
                TransferError::InvalidConfiguration(format!("CA bundle certificate rejected: {e}"))
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(TransferError::InvalidConfiguration(
                "CA bundle contains no certificate".into(),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TransferError::InvalidConfiguration(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // reqwest is built without HTTP/2 here; say so in ALPN.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bundles_without_certificates() {
        install_crypto_provider();
        let err = client_config(Some(b"not a pem")).unwrap_err();
        assert_eq!(err.reason(), "InvalidConfiguration");
        assert!(client_config(None).is_ok());
    }
}
