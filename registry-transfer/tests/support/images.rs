//! Building test images in a registry and reading them back, with plain
//! reqwest calls independent of the engine under test.

#![allow(dead_code)]

use std::sync::Arc;

use rand::RngCore as _;
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};

use super::registry::TestRegistry;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.artifact.manifest.v1+json";

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn random_bytes(size: usize) -> Vec<u8> {
    let mut data = vec![0u8; size];
    rand::rng().fill_bytes(&mut data);
    data
}

/// A blob with its digest.
#[derive(Clone)]
pub struct Blob {
    pub data: Arc<Vec<u8>>,
    pub digest: String,
    pub media_type: String,
}

impl Blob {
    pub fn new(data: Vec<u8>, media_type: &str) -> Blob {
        Blob {
            digest: sha256(&data),
            data: Arc::new(data),
            media_type: media_type.to_owned(),
        }
    }

    pub fn random_layer(size: usize) -> Blob {
        Blob::new(
            random_bytes(size),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
    }

    fn descriptor_json(&self) -> String {
        format!(
            r#"{{"mediaType":"{}","digest":"{}","size":{}}}"#,
            self.media_type,
            self.digest,
            self.data.len()
        )
    }
}

/// A manifest as pushed: bytes, digest, media type, and its blobs.
#[derive(Clone)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub media_type: String,
    pub blobs: Vec<Blob>,
    pub children: Vec<Manifest>,
}

/// An OCI or Docker image manifest for `layers` with a small random config.
pub fn image_manifest(layers: &[Blob], media_type: &str, platform: (&str, &str)) -> Manifest {
    let config_type = if media_type == DOCKER_MANIFEST {
        "application/vnd.docker.container.image.v1+json"
    } else {
        "application/vnd.oci.image.config.v1+json"
    };
    let config = Blob::new(
        format!(
            r#"{{"architecture":"{}","os":"{}","rootfs":{{"type":"layers","diff_ids":[]}},"nonce":"{}"}}"#,
            platform.1,
            platform.0,
            hex::encode(random_bytes(8))
        )
        .into_bytes(),
        config_type,
    );
    let layers_json: Vec<String> = layers.iter().map(Blob::descriptor_json).collect();
    // Unusual spacing on purpose: byte-exact copies must keep it.
    let bytes = format!(
        "{{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"{media_type}\",\n   \"config\": {},\n   \"layers\": [{}]\n}}",
        config.descriptor_json(),
        layers_json.join(",\n      ")
    )
    .into_bytes();
    single_manifest(bytes, media_type, config, layers)
}

/// An OCI image manifest whose config says when the image was created
/// (RFC 3339), as image builders write it.
pub fn dated_image_manifest(layers: &[Blob], created: &str) -> Manifest {
    let config = Blob::new(
        format!(
            r#"{{"created":"{created}","architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"nonce":"{}"}}"#,
            hex::encode(random_bytes(8))
        )
        .into_bytes(),
        "application/vnd.oci.image.config.v1+json",
    );
    let layers_json: Vec<String> = layers.iter().map(Blob::descriptor_json).collect();
    let bytes = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
        config.descriptor_json(),
        layers_json.join(",")
    )
    .into_bytes();
    single_manifest(bytes, OCI_MANIFEST, config, layers)
}

/// An artifact manifest: arbitrary config and layer media types.
pub fn artifact_manifest(payload: &Blob) -> Manifest {
    let config = Blob::new(
        b"{}".to_vec(),
        "application/vnd.example.thing.config.v1+json",
    );
    let bytes = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/vnd.example.thing","config":{},"layers":[{}]}}"#,
        config.descriptor_json(),
        payload.descriptor_json()
    )
    .into_bytes();
    Manifest {
        digest: sha256(&bytes),
        bytes,
        media_type: OCI_MANIFEST.to_owned(),
        blobs: vec![config, payload.clone()],
        children: Vec::new(),
    }
}

/// An index over `children`, each with its platform.
pub fn index_manifest(children: &[(Manifest, &str, &str)], media_type: &str) -> Manifest {
    let entries: Vec<String> = children
        .iter()
        .map(|(m, os, arch)| {
            format!(
                r#"{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"architecture":"{arch}","os":"{os}"}}}}"#,
                m.media_type,
                m.digest,
                m.bytes.len()
            )
        })
        .collect();
    let bytes = format!(
        r#"{{"schemaVersion":2,"mediaType":"{media_type}","manifests":[{}]}}"#,
        entries.join(",")
    )
    .into_bytes();
    Manifest {
        digest: sha256(&bytes),
        bytes,
        media_type: media_type.to_owned(),
        blobs: Vec::new(),
        children: children.iter().map(|(m, _, _)| m.clone()).collect(),
    }
}

/// A plain HTTP client for one test registry.
pub struct RegistryHttp {
    pub base: String,
    client: reqwest::Client,
    auth: Option<(String, String)>,
}

impl RegistryHttp {
    pub fn new(registry: &TestRegistry) -> RegistryHttp {
        registry_transfer::install_crypto_provider();
        let mut builder = reqwest::Client::builder();
        if let Some(ca) = &registry.ca_pem {
            let mut roots = rustls::RootCertStore::empty();
            use rustls::pki_types::pem::PemObject as _;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca) {
                roots.add(cert.expect("CA PEM")).expect("add CA");
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            builder = builder.tls_backend_preconfigured(config);
        }
        RegistryHttp {
            base: registry.base_url(),
            client: builder.build().expect("client"),
            auth: registry.basic_auth.clone(),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let request = self.client.request(method, url);
        match &self.auth {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }

    pub async fn push_blob(&self, repository: &str, blob: &Blob) {
        let response = self
            .request(
                reqwest::Method::POST,
                &format!("/v2/{repository}/blobs/uploads/"),
            )
            .send()
            .await
            .expect("POST upload");
        assert_eq!(response.status(), StatusCode::ACCEPTED, "start upload");
        let location = response.headers()["location"]
            .to_str()
            .expect("location")
            .to_owned();
        let separator = if location.contains('?') { '&' } else { '?' };
        let url = if location.starts_with("http") {
            location.clone()
        } else {
            format!("{}{location}", self.base)
        };
        let response = self
            .request(
                reqwest::Method::PUT,
                &format!("{url}{separator}digest={}", blob.digest),
            )
            .header("content-type", "application/octet-stream")
            .body(blob.data.as_ref().clone())
            .send()
            .await
            .expect("PUT blob");
        assert_eq!(response.status(), StatusCode::CREATED, "commit blob");
    }

    pub async fn put_manifest(&self, repository: &str, reference: &str, manifest: &Manifest) {
        let response = self
            .request(
                reqwest::Method::PUT,
                &format!("/v2/{repository}/manifests/{reference}"),
            )
            .header("content-type", &manifest.media_type)
            .body(manifest.bytes.clone())
            .send()
            .await
            .expect("PUT manifest");
        let status = response.status();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{}",
            response.text().await.unwrap_or_default()
        );
    }

    /// Pushes a manifest tree (blobs, children, then the manifest) and tags it.
    pub async fn push(&self, repository: &str, tag: &str, manifest: &Manifest) {
        for child in &manifest.children {
            Box::pin(self.push(repository, &child.digest, child)).await;
        }
        for blob in &manifest.blobs {
            self.push_blob(repository, blob).await;
        }
        self.put_manifest(repository, tag, manifest).await;
    }

    pub async fn manifest(&self, repository: &str, reference: &str) -> Option<(Vec<u8>, String)> {
        let response = self
            .request(
                reqwest::Method::GET,
                &format!("/v2/{repository}/manifests/{reference}"),
            )
            .header("accept", ACCEPT)
            .send()
            .await
            .expect("GET manifest");
        if response.status() == StatusCode::NOT_FOUND {
            return None;
        }
        assert!(
            response.status().is_success(),
            "GET manifest {}",
            response.status()
        );
        let media_type = response.headers()["content-type"]
            .to_str()
            .expect("ct")
            .to_owned();
        Some((response.bytes().await.expect("body").to_vec(), media_type))
    }

    pub async fn blob(&self, repository: &str, digest: &str) -> Option<Vec<u8>> {
        let response = self
            .request(
                reqwest::Method::GET,
                &format!("/v2/{repository}/blobs/{digest}"),
            )
            .send()
            .await
            .expect("GET blob");
        if response.status() == StatusCode::NOT_FOUND {
            return None;
        }
        assert!(
            response.status().is_success(),
            "GET blob {}",
            response.status()
        );
        Some(response.bytes().await.expect("body").to_vec())
    }

    pub async fn blob_exists(&self, repository: &str, digest: &str) -> bool {
        let response = self
            .request(
                reqwest::Method::HEAD,
                &format!("/v2/{repository}/blobs/{digest}"),
            )
            .send()
            .await
            .expect("HEAD blob");
        response.status().is_success()
    }

    /// Asserts that `repository` holds `manifest` byte for byte under
    /// `reference`, with every child and blob intact.
    pub async fn assert_holds(&self, repository: &str, reference: &str, manifest: &Manifest) {
        let (bytes, media_type) = self
            .manifest(repository, reference)
            .await
            .unwrap_or_else(|| panic!("{repository}:{reference} missing"));
        assert_eq!(
            bytes, manifest.bytes,
            "manifest bytes of {repository}:{reference}"
        );
        assert_eq!(media_type, manifest.media_type);
        for child in &manifest.children {
            Box::pin(self.assert_holds(repository, &child.digest, child)).await;
        }
        for blob in &manifest.blobs {
            let data = self
                .blob(repository, &blob.digest)
                .await
                .unwrap_or_else(|| panic!("blob {} missing in {repository}", blob.digest));
            assert_eq!(sha256(&data), blob.digest);
        }
    }
}

/// A single-platform manifest of these bytes, holding its config and layers.
fn single_manifest(bytes: Vec<u8>, media_type: &str, config: Blob, layers: &[Blob]) -> Manifest {
    let mut blobs = vec![config];
    blobs.extend(layers.iter().cloned());
    Manifest {
        digest: sha256(&bytes),
        bytes,
        media_type: media_type.to_owned(),
        blobs,
        children: Vec::new(),
    }
}
