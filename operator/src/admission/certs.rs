//! The webhook's serving certificate and its configuration object.
//!
//! Without cert-manager the operator is its own CA: it issues a CA and a
//! serving certificate together (ECDSA P-256, `rcgen`), keeps them in a
//! Secret so a restarted operator serves the same one, and renews both when
//! a third of their validity remains. The `caBundle` it writes holds the new
//! CA and the previous one while that is still valid, and is written before
//! the new certificate is served, so the API server trusts whichever it
//! meets during the switch. With cert-manager (`admission.certManager`) the
//! operator only reads the Secret cert-manager writes and cert-manager's CA
//! injector keeps the `caBundle`.
//!
//! Either way the operator keeps the webhook's `namespaceSelector` to the
//! namespaces some policy selects (never its own, never the system ones),
//! so the API server does not call it for the others.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt as _};
use lifeboat_api::patterns::ImageMatcher;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

use crate::config::AdmissionConfig;
use crate::context::{Context, FIELD_MANAGER};
use crate::controllers::backup_policy::discovery::{Scope, Selection};
use crate::error::OperatorError;

/// Namespaces the webhook is never called for, besides the operator's own.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];
/// The name of the one webhook in the configuration the chart renders.
pub const WEBHOOK_NAME: &str = "images.lifeboat.dev";
/// Stands in the selector when no namespace is covered: not a valid
/// namespace name, so it matches none (`In` needs one value).
const NO_NAMESPACE: &str = "lifeboat.dev.none";
const NOT_BEFORE: &str = "lifeboat.dev/not-before";
const NOT_AFTER: &str = "lifeboat.dev/not-after";
const NAMES: &str = "lifeboat.dev/names";
/// How often the selector is compared with the policies.
const SELECTOR_INTERVAL: Duration = Duration::from_secs(2);
/// How often the Secret cert-manager writes is read (one GET; the key is
/// loaded only when the Secret changed). A renewal is served within this;
/// meanwhile the old certificate is still valid and its CA, which the
/// `caBundle` holds, is the same.
const CERT_MANAGER_INTERVAL: Duration = Duration::from_secs(5);

/// The certificate served now; swapped in place on renewal.
#[derive(Debug, Default)]
pub struct CurrentCertificate {
    key: RwLock<Option<Arc<CertifiedKey>>>,
}

impl CurrentCertificate {
    fn set(&self, key: Arc<CertifiedKey>) {
        *self.key.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A certificate, its key and the CA bundle that verifies it, as PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// The CA that signed `cert_pem` (`issuer.crt`).
    pub ca_pem: String,
    /// What the webhook's `caBundle` holds (`ca.crt`): `ca_pem` and the
    /// previous CA while it is valid.
    pub bundle_pem: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// The names (and IP) the certificate is for, comma-separated.
    pub names: String,
}

fn admission_error(what: &str) -> impl Fn(rcgen::Error) -> OperatorError + '_ {
    move |e| OperatorError::Admission(format!("{what}: {e}"))
}

fn offset(at: DateTime<Utc>) -> Result<time::OffsetDateTime, OperatorError> {
    time::OffsetDateTime::from_unix_timestamp(at.timestamp())
        .map_err(|e| OperatorError::Admission(format!("certificate time: {e}")))
}

/// The DNS names the API server may call the Service by, and the
/// address it calls when it is given a URL.
pub fn service_names(service: &str, namespace: &str, url_host: Option<&str>) -> Vec<String> {
    let mut names = vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ];
    names.extend(url_host.map(str::to_owned));
    names
}

/// A new CA and serving certificate valid for `validity` from `now` (and a
/// little before, for clock skew); `previous` (the CA being replaced) stays in the
/// bundle while it is valid.
pub fn issue(
    names: Vec<String>,
    now: DateTime<Utc>,
    validity: Duration,
    previous: Option<&Issued>,
) -> Result<Issued, OperatorError> {
    let joined_names = names.join(",");
    let validity = TimeDelta::from_std(validity).unwrap_or(TimeDelta::days(365));
    // Valid a little before now, for clocks behind ours (a minute, or a
    // quarter of a short test validity).
    let not_before = now - (validity / 4).min(TimeDelta::minutes(1));
    let not_after = now + validity;
    let ca_key = KeyPair::generate().map_err(admission_error("CA key"))?;
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(admission_error("CA"))?;
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!("lifeboat admission CA {}", now.timestamp()),
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = offset(not_before)?;
    ca_params.not_after = offset(not_after)?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(admission_error("CA"))?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().map_err(admission_error("serving key"))?;
    let mut params = CertificateParams::new(names).map_err(admission_error("serving names"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "lifeboat admission webhook");
    params.not_before = offset(not_before)?;
    params.not_after = offset(not_after)?;
    params.use_authority_key_identifier_extension = true;
    params
        .extended_key_usages
        .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(admission_error("serving certificate"))?;

    let ca_pem = ca_cert.pem();
    let mut bundle_pem = ca_pem.clone();
    if let Some(previous) = previous.filter(|p| p.not_after > now) {
        bundle_pem.push_str(&previous.ca_pem);
    }
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem,
        bundle_pem,
        not_before,
        not_after,
        names: joined_names,
    })
}

/// Whether to issue anew: a third of the validity or less remains, or the
/// certificate is for other names (the pod's IP changed).
pub fn renewal_due(issued: &Issued, now: DateTime<Utc>, names: &[String]) -> bool {
    let lifetime = issued.not_after - issued.not_before;
    now >= issued.not_after - lifetime / 3 || issued.names != names.join(",")
}

/// When to look again at a certificate that is not due yet.
pub fn next_check(issued: &Issued, now: DateTime<Utc>) -> Duration {
    let lifetime = issued.not_after - issued.not_before;
    (issued.not_after - lifetime / 3 - now)
        .to_std()
        .unwrap_or(Duration::ZERO)
}

/// The certificate for rustls.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, OperatorError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        OperatorError::Admission(format!("serving certificate {what}: {e}"))
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad("PEM", &e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad("key", &e))?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| bad("key", &e))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// What the Secret holds, if it is one the operator wrote and can read.
pub fn from_secret(secret: &Secret) -> Option<Issued> {
    let time = |key: &str| {
        let text = secret.annotations().get(key)?;
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    Some(Issued {
        cert_pem: secret_text(secret, "tls.crt")?,
        key_pem: secret_text(secret, "tls.key")?,
        ca_pem: secret_text(secret, "issuer.crt")?,
        bundle_pem: secret_text(secret, "ca.crt")?,
        not_before: time(NOT_BEFORE)?,
        not_after: time(NOT_AFTER)?,
        names: secret.annotations().get(NAMES).cloned().unwrap_or_default(),
    })
}

fn to_secret(issued: &Issued, name: &str, namespace: &str) -> Secret {
    let data = [
        ("tls.crt", &issued.cert_pem),
        ("tls.key", &issued.key_pem),
        ("issuer.crt", &issued.ca_pem),
        ("ca.crt", &issued.bundle_pem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
    .collect();
    let mut secret = Secret {
        data: Some(data),
        type_: Some("kubernetes.io/tls".to_owned()),
        ..Secret::default()
    };
    secret.metadata.name = Some(name.to_owned());
    secret.metadata.namespace = Some(namespace.to_owned());
    secret.metadata.annotations = Some(BTreeMap::from([
        (NOT_BEFORE.to_owned(), issued.not_before.to_rfc3339()),
        (NOT_AFTER.to_owned(), issued.not_after.to_rfc3339()),
        (NAMES.to_owned(), issued.names.clone()),
    ]));
    secret
}

/// The webhook's `namespaceSelector`: exactly the covered namespaces.
pub fn namespace_selector(covered: &BTreeSet<String>) -> serde_json::Value {
    let values: Vec<&str> = if covered.is_empty() {
        vec![NO_NAMESPACE]
    } else {
        covered.iter().map(String::as_str).collect()
    };
    serde_json::json!({"matchExpressions": [{
        "key": "kubernetes.io/metadata.name", "operator": "In", "values": values,
    }]})
}

/// The namespaces some policy selects workloads in, less the operator's
/// own and the system ones (pure: from the policies and namespace labels).
pub fn covered_namespaces(
    policies: &[Arc<lifeboat_api::ImageBackupPolicy>],
    namespaces: &HashMap<String, BTreeMap<String, String>>,
    operator_namespace: &str,
) -> BTreeSet<String> {
    let mut covered = BTreeSet::new();
    for policy in policies {
        let selector = policy.spec.effective_selector();
        let Ok(matcher) = ImageMatcher::compile(selector.images.as_ref()) else {
            continue;
        };
        let scope = Scope::for_policy(
            &policy.namespace().unwrap_or_default(),
            operator_namespace,
            selector,
        );
        let Ok(selection) = Selection::new(&scope, &matcher, namespaces.clone()) else {
            continue;
        };
        covered.extend(
            namespaces
                .keys()
                .filter(|ns| selection.namespace(ns))
                .cloned(),
        );
    }
    covered.retain(|ns| ns != operator_namespace && !SYSTEM_NAMESPACES.contains(&ns.as_str()));
    covered
}

/// What was last written to the webhook configuration.
#[derive(Default, PartialEq)]
struct Written {
    bundle: Option<String>,
    selector: Option<serde_json::Value>,
    url: Option<String>,
}

/// Keeps the certificate served, the Secret, the `caBundle` and the
/// `namespaceSelector` current, until the process ends.
pub async fn keep_current(
    context: Arc<Context>,
    config: AdmissionConfig,
    current: Arc<CurrentCertificate>,
) {
    let mut issued: Option<Issued> = None;
    let mut cert_manager_loaded: Option<String> = None;
    let mut written = Written::default();
    let mut cert_check = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= cert_check {
            let refreshed = if config.cert_manager {
                load_cert_manager_secret(&context, &config, &current, &mut cert_manager_loaded)
                    .await
            } else {
                refresh_certificate(&context, &config, &current, &mut issued).await
            };
            let next = match refreshed {
                Ok(next) => next,
                Err(e) => {
                    warn!(error = %e, "admission certificate");
                    Duration::from_secs(10)
                }
            };
            cert_check = tokio::time::Instant::now() + next.max(Duration::from_secs(1));
        }
        if let Err(e) = write_configuration(&context, &config, issued.as_ref(), &mut written).await
        {
            warn!(error = %e, "admission webhook configuration");
        }
        tokio::time::sleep(SELECTOR_INTERVAL.min(cert_check - tokio::time::Instant::now())).await;
    }
}

/// Serves the certificate cert-manager keeps in the Secret, loading it again
/// when the Secret changed (`loaded`: the resourceVersion served). Returns
/// when to look again.
async fn load_cert_manager_secret(
    context: &Context,
    config: &AdmissionConfig,
    current: &CurrentCertificate,
    loaded: &mut Option<String>,
) -> Result<Duration, OperatorError> {
    let namespace = &context.config.namespace;
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), namespace);
    let stored = secrets.get_opt(&config.secret).await?;
    let (Some(secret), Some(cert), Some(key)) = (
        stored.as_ref(),
        stored.as_ref().and_then(|s| secret_text(s, "tls.crt")),
        stored.as_ref().and_then(|s| secret_text(s, "tls.key")),
    ) else {
        return Err(OperatorError::Admission(format!(
            "cert-manager has not written Secret {namespace}/{} yet",
            config.secret
        )));
    };
    let version = secret.resource_version();
    if version.is_some() && *loaded == version {
        return Ok(CERT_MANAGER_INTERVAL);
    }
    current.set(certified_key(&cert, &key)?);
    info!(
        secret = %config.secret,
        resource_version = version.as_deref().unwrap_or(""),
        "admission certificate loaded from cert-manager's Secret"
    );
    *loaded = version;
    Ok(CERT_MANAGER_INTERVAL)
}

/// Serves the Secret's certificate, issuing a new one first when there is
/// none or it is due. Returns when to look again.
async fn refresh_certificate(
    context: &Context,
    config: &AdmissionConfig,
    current: &CurrentCertificate,
    issued: &mut Option<Issued>,
) -> Result<Duration, OperatorError> {
    let namespace = &context.config.namespace;
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), namespace);
    let stored = secrets.get_opt(&config.secret).await?;
    let now = Utc::now();
    let names = service_names(&config.service, namespace, config.url_host.as_deref());
    let kept = stored.as_ref().and_then(from_secret);
    if let Some(kept) = kept.filter(|k| !renewal_due(k, now, &names)) {
        current.set(certified_key(&kept.cert_pem, &kept.key_pem)?);
        let next = next_check(&kept, now);
        *issued = Some(kept);
        return Ok(next.min(Duration::from_secs(300)));
    }
    let previous = stored.as_ref().and_then(from_secret);
    let new = issue(names, now, config.cert_validity, previous.as_ref())?;
    // The bundle first: the API server must trust the new CA before it
    // meets the new certificate.
    patch_configuration(context, config, Some(&new.bundle_pem), None, None).await?;
    let secret = to_secret(&new, &config.secret, namespace);
    match stored {
        Some(old) => {
            let mut secret = secret;
            secret.metadata.resource_version = old.resource_version();
            secrets
                .replace(&config.secret, &PostParams::default(), &secret)
                .await?;
        }
        None => {
            secrets.create(&PostParams::default(), &secret).await?;
        }
    }
    current.set(certified_key(&new.cert_pem, &new.key_pem)?);
    info!(not_after = %new.not_after, "admission certificate issued");
    let next = next_check(&new, now);
    *issued = Some(new);
    Ok(next)
}

/// Writes the bundle (own CA only) and the selector when they changed.
async fn write_configuration(
    context: &Context,
    config: &AdmissionConfig,
    issued: Option<&Issued>,
    written: &mut Written,
) -> Result<(), OperatorError> {
    let namespaces: HashMap<String, BTreeMap<String, String>> = context
        .admission
        .caches()
        .map(|c| {
            c.namespaces
                .state()
                .iter()
                .map(|ns| (ns.name_any(), ns.labels().clone()))
                .collect()
        })
        .unwrap_or_default();
    if context.admission.caches().is_none() {
        // Not ready yet: leave the chart's selector until the caches are.
        return Ok(());
    }
    let covered = covered_namespaces(
        &context.admission.policies(),
        &namespaces,
        &context.config.namespace,
    );
    let wanted = Written {
        bundle: issued
            .filter(|_| !config.cert_manager)
            .map(|i| i.bundle_pem.clone()),
        selector: Some(namespace_selector(&covered)),
        url: config
            .url_host
            .as_ref()
            .map(|host| webhook_url(host, config.addr.port())),
    };
    if wanted == *written {
        return Ok(());
    }
    patch_configuration(
        context,
        config,
        wanted.bundle.as_deref(),
        wanted.selector.as_ref(),
        wanted.url.as_deref(),
    )
    .await?;
    info!(
        namespaces = covered.len(),
        "admission webhook configuration written"
    );
    *written = wanted;
    Ok(())
}

/// Where the API server calls a webhook served at `host` (an IP or name).
pub fn webhook_url(host: &str, port: u16) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    format!("https://{host}:{port}/validate")
}

async fn patch_configuration(
    context: &Context,
    config: &AdmissionConfig,
    bundle: Option<&str>,
    selector: Option<&serde_json::Value>,
    url: Option<&str>,
) -> Result<(), OperatorError> {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    let api: Api<ValidatingWebhookConfiguration> = Api::all(context.client.clone());
    let mut webhook = serde_json::json!({"name": WEBHOOK_NAME});
    if let Some(bundle) = bundle {
        webhook["clientConfig"] = serde_json::json!({
            "caBundle": base64::engine::general_purpose::STANDARD.encode(bundle),
        });
    }
    if let Some(url) = url {
        webhook["clientConfig"]["url"] = serde_json::Value::from(url);
    }
    if let Some(selector) = selector {
        webhook["namespaceSelector"] = selector.clone();
    }
    // A JSON merge patch would replace the whole webhooks list; a strategic
    // merge patch merges the entry by name and keeps the chart's fields.
    let patch = serde_json::json!({"webhooks": [webhook]});
    api.patch(
        &config.webhook_configuration,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        },
        &Patch::Strategic(patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn names() -> Vec<String> {
        service_names("lifeboat-admission", "lifeboat-system", Some("10.213.0.12"))
    }

    #[test]
    fn renewal_is_due_when_a_third_of_the_validity_remains() {
        let issued = issue(names(), at(0), Duration::from_secs(300), None).unwrap();
        // Valid from a minute before issue: 360 s in all, due with 120 s left.
        assert!(!renewal_due(&issued, at(0), &names()));
        assert!(!renewal_due(&issued, at(179), &names()));
        assert!(renewal_due(&issued, at(180), &names()));
        // The pod moved: its new IP needs a new certificate.
        let moved = service_names("lifeboat-admission", "lifeboat-system", Some("10.213.0.11"));
        assert!(renewal_due(&issued, at(0), &moved));
        assert_eq!(next_check(&issued, at(100)), Duration::from_secs(80));
        assert_eq!(next_check(&issued, at(200)), Duration::ZERO);
    }

    #[test]
    fn a_short_validity_is_renewed_after_two_thirds_not_at_once() {
        let issued = issue(names(), at(0), Duration::from_secs(45), None).unwrap();
        assert!(!renewal_due(&issued, at(0), &names()));
        assert!(renewal_due(&issued, at(30), &names()));
    }

    #[test]
    fn a_renewed_bundle_keeps_the_previous_ca_while_it_is_valid() {
        let first = issue(names(), at(0), Duration::from_secs(300), None).unwrap();
        assert_eq!(first.bundle_pem, first.ca_pem);
        let second = issue(names(), at(200), Duration::from_secs(300), Some(&first)).unwrap();
        assert_ne!(second.ca_pem, first.ca_pem);
        assert!(second.bundle_pem.contains(&second.ca_pem));
        assert!(second.bundle_pem.contains(&first.ca_pem));
        let third = issue(names(), at(400), Duration::from_secs(300), Some(&first)).unwrap();
        assert!(
            !third.bundle_pem.contains(&first.ca_pem),
            "expired CAs leave"
        );
    }

    /// A TLS handshake, as the API server makes it, against a server that
    /// serves `served`, from a client that trusts `bundle_pem`.
    async fn handshake(served: &Issued, bundle_pem: &str) -> Result<(), String> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, ServerName};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = Arc::new(CurrentCertificate::default());
        resolver.set(certified_key(&served.cert_pem, &served.key_pem).map_err(|e| e.to_string())?);
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
            roots
                .add(cert.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = ServerName::try_from("lifeboat-admission.lifeboat-system.svc")
            .map_err(|e| e.to_string())?;
        let (served, connected) = tokio::join!(
            acceptor.accept(server_io),
            connector.connect(name, client_io)
        );
        connected.map_err(|e| e.to_string())?;
        served.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The order renewal relies on: once the bundle holds the new CA and
    /// the old, the API server accepts the old certificate (still served
    /// until the switch) and the new one; a client that only knows the old
    /// CA would refuse the new certificate, which is why the bundle is
    /// written first.
    #[tokio::test]
    async fn after_renewal_the_bundle_verifies_the_old_and_the_new_certificate() {
        let first = issue(names(), Utc::now(), Duration::from_secs(300), None).unwrap();
        let second = issue(names(), Utc::now(), Duration::from_secs(300), Some(&first)).unwrap();
        handshake(&first, &first.bundle_pem).await.unwrap();
        handshake(&first, &second.bundle_pem).await.unwrap();
        handshake(&second, &second.bundle_pem).await.unwrap();
        let refused = handshake(&second, &first.bundle_pem).await;
        assert!(
            refused.is_err(),
            "a client with only the old CA trusted the new certificate"
        );
    }

    #[test]
    fn the_secret_round_trips_and_the_key_loads_into_rustls() {
        let issued = issue(names(), at(0), Duration::from_secs(300), None).unwrap();
        let secret = to_secret(&issued, "lifeboat-admission-tls", "lifeboat-system");
        assert_eq!(from_secret(&secret), Some(issued.clone()));
        let key = certified_key(&issued.cert_pem, &issued.key_pem).unwrap();
        assert_eq!(key.cert.len(), 1);
        assert!(certified_key(&issued.cert_pem, "not a key").is_err());
    }

    #[test]
    fn urls_bracket_ipv6_hosts() {
        assert_eq!(
            webhook_url("10.0.0.1", 9443),
            "https://10.0.0.1:9443/validate"
        );
        assert_eq!(
            webhook_url("fd00::1", 9443),
            "https://[fd00::1]:9443/validate"
        );
    }

    #[test]
    fn the_selector_names_covered_namespaces_or_none() {
        let none = namespace_selector(&BTreeSet::new());
        assert_eq!(
            none["matchExpressions"][0]["values"],
            serde_json::json!([NO_NAMESPACE])
        );
        let some = namespace_selector(&["shop".to_owned()].into());
        assert_eq!(
            some["matchExpressions"][0]["values"],
            serde_json::json!(["shop"])
        );
    }

    #[test]
    fn covered_namespaces_follow_the_policies_scopes() {
        let policy = |namespace: &str, spec: serde_json::Value| {
            Arc::new(
                serde_json::from_value::<lifeboat_api::ImageBackupPolicy>(serde_json::json!({
                    "apiVersion": "lifeboat.dev/v1alpha1", "kind": "ImageBackupPolicy",
                    "metadata": {"name": "p", "namespace": namespace},
                    "spec": spec,
                }))
                .unwrap(),
            )
        };
        let target = serde_json::json!([{"name": "b", "registry": "backup.local"}]);
        let namespaces: HashMap<String, BTreeMap<String, String>> = [
            "shop",
            "other",
            "kube-system",
            "lifeboat-system",
            "labelled",
        ]
        .into_iter()
        .map(|n| {
            let labels = if n == "labelled" {
                BTreeMap::from([("backup".to_owned(), "yes".to_owned())])
            } else {
                BTreeMap::new()
            };
            (n.to_owned(), labels)
        })
        .collect();
        // A tenant policy covers its own namespace, whatever it asks for.
        let tenant = policy(
            "shop",
            serde_json::json!({"targets": target, "selector": {"includedNamespaces": ["*"]}}),
        );
        assert_eq!(
            covered_namespaces(&[tenant], &namespaces, "lifeboat-system"),
            BTreeSet::from(["shop".to_owned()])
        );
        // A cluster policy: all, less the operator's and the system ones.
        let cluster = policy(
            "lifeboat-system",
            serde_json::json!({"targets": target, "selector": {"includedNamespaces": ["*"]}}),
        );
        assert_eq!(
            covered_namespaces(&[cluster], &namespaces, "lifeboat-system"),
            BTreeSet::from(["labelled".to_owned(), "other".to_owned(), "shop".to_owned()])
        );
        let by_label = policy(
            "lifeboat-system",
            serde_json::json!({"targets": target, "selector": {
                "namespaceSelector": {"matchLabels": {"backup": "yes"}}}}),
        );
        assert_eq!(
            covered_namespaces(&[by_label], &namespaces, "lifeboat-system"),
            BTreeSet::from(["labelled".to_owned()])
        );
    }
}
