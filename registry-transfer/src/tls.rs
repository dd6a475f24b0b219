//! rustls client configuration with the `ring` provider only.

use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

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
    let roots = root_store(ca_bundle)?;
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

/// As [`client_config`], but the server's certificate must be valid for
/// `name`, whatever address the connection went to: a registry reached
/// through a tunnel's local port is still checked for its own name, by
/// the same chain and name checks (webpki) as any other.
pub fn client_config_verifying_as(
    ca_bundle: Option<&[u8]>,
    name: &str,
) -> Result<ClientConfig, TransferError> {
    let roots = Arc::new(root_store(ca_bundle)?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let name = ServerName::try_from(name.to_owned()).map_err(|e| {
        TransferError::InvalidConfiguration(format!("TLS server name {name:?}: {e}"))
    })?;
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TransferError::InvalidConfiguration(format!("TLS setup: {e}")))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TransferError::InvalidConfiguration(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(VerifyAs { inner, name }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// webpki's verification with another server name than the one dialled.
#[derive(Debug)]
struct VerifyAs {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for VerifyAs {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn root_store(ca_bundle: Option<&[u8]>) -> Result<RootCertStore, TransferError> {
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
    Ok(roots)
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
        assert!(client_config_verifying_as(None, "registry.air.svc").is_ok());
        assert!(client_config_verifying_as(None, "10.244.1.7").is_ok());
        assert!(client_config_verifying_as(None, "not a name!").is_err());
    }
}
