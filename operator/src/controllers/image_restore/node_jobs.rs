//! The objects a restore into nodes (`destination.nodes`) runs, built from
//! data (pure): `node-exporter import` on each destination node and, node
//! to node, `node-exporter serve` on the node that holds the image, plus
//! the one Secret both mount (the backup's credentials and CA bundles for
//! the importer, the peer session's one-time token for both). The command
//! lines are the protocol crate's `ImportArguments` and `ServeArguments`,
//! the ones node-exporter parses.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lifeboat_node_protocol::{
    CaBundleArgument, ImageSource, ImportArguments, ImportImage, ServeArguments,
};

pub(crate) use super::jobs::NodeJobMeta;
use super::jobs::{
    JobSettings, LABEL_RESTORE_NAMESPACE, LABEL_RESTORE_UID, SOCKET_MOUNT, SecretMount, labels,
    node_job, plain_http_registries,
};

/// Where the restore's import Secret is mounted.
pub(crate) const IMPORT_DIR: &str = "/var/run/lifeboat/import";
/// Its keys: the backup's `.dockerconfigjson`, the peer token, CA bundles
/// (`ca-N.crt`).
pub(crate) const DOCKER_CONFIG_KEY: &str = "config.json";
pub(crate) const TOKEN_KEY: &str = "token";
/// How long a serve waits for its importer before it gives up.
pub(crate) const SERVE_SECONDS: u64 = 300;
/// Ports a serve listens on (with host networking the port is the node's:
/// a range few services use, chosen per Job).
const SERVE_PORTS: std::ops::Range<u16> = 20000..40000;
/// Component labels of the two Jobs.
pub(crate) const IMPORT_COMPONENT: &str = "import";
pub(crate) const SERVE_COMPONENT: &str = "serve";

/// The CA bundle file for the `index`th registry with a private CA.
pub(crate) fn ca_key(index: usize) -> String {
    format!("ca-{index}.crt")
}

/// Where a serve listens: a port derived from its Job's name, so a retried
/// reconcile computes the same one.
pub(crate) fn serve_port(job_name: &str) -> u16 {
    let sum = job_name
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let span = u32::from(SERVE_PORTS.end - SERVE_PORTS.start);
    let offset = u16::try_from(sum % span).unwrap_or(0);
    SERVE_PORTS.start + offset
}

/// Where the importer pulls from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ImportFrom {
    /// A registry (each image's `FROM`), with the registries whose CA the
    /// Secret holds (in `ca_key` order) and whether it holds credentials.
    Registry {
        ca_registries: Vec<String>,
        docker_config: bool,
        plain_http: Vec<String>,
    },
    /// A peer's serve at `HOST:PORT`; the token is in the Secret.
    Peer(String),
}

/// node-exporter's command line for an import.
pub(crate) fn import_arguments(
    settings: &JobSettings,
    images: Vec<ImportImage>,
    from: &ImportFrom,
) -> ImportArguments {
    let file = |name: &str| format!("{IMPORT_DIR}/{name}");
    let mut arguments = ImportArguments {
        images,
        socket: Some(SOCKET_MOUNT.to_owned()),
        ..ImportArguments::default()
    };
    match from {
        ImportFrom::Registry {
            ca_registries,
            docker_config,
            plain_http,
        } => {
            arguments.plain_http = plain_http_registries(settings, plain_http);
            arguments.ca_bundles = ca_registries
                .iter()
                .enumerate()
                .map(|(index, registry)| CaBundleArgument {
                    registry: registry.clone(),
                    path: file(&ca_key(index)),
                })
                .collect();
            arguments.docker_config = docker_config.then(|| file(DOCKER_CONFIG_KEY));
        }
        ImportFrom::Peer(address) => {
            arguments.from_peer = Some(address.clone());
            arguments.token_file = Some(file(TOKEN_KEY));
        }
    }
    arguments
}

/// node-exporter's command line for a serve of `images` on `port`.
pub(crate) fn serve_arguments(images: Vec<ImageSource>, port: u16) -> ServeArguments {
    ServeArguments {
        images,
        listen_port: port,
        token_file: Some(format!("{IMPORT_DIR}/{TOKEN_KEY}")),
        loopback: false,
        serve_seconds: Some(SERVE_SECONDS),
        socket: Some(SOCKET_MOUNT.to_owned()),
    }
}

/// The import Job on a destination node. It mounts the whole import
/// Secret (credentials, CA bundles, token: whichever it holds). From a
/// registry a failed pod is retried once (the engine retried already);
/// from a peer not at all (the serve ends with its session).
pub(crate) fn import_job(
    settings: &JobSettings,
    meta: &NodeJobMeta,
    arguments: &ImportArguments,
    secret: Option<&str>,
) -> Job {
    let mount = secret.map(|secret| SecretMount {
        volume: "import",
        secret,
        dir: IMPORT_DIR,
        items: Vec::new(),
    });
    let backoff = if arguments.from_peer.is_some() { 0 } else { 1 };
    node_job(
        settings,
        meta,
        IMPORT_COMPONENT,
        arguments.to_args(),
        mount,
        backoff,
    )
}

/// The serve Job on the node that holds the images: only the token is
/// mounted (never the backup's credentials), and it ends when its importer
/// says it is done or after `SERVE_SECONDS`.
pub(crate) fn serve_job(
    settings: &JobSettings,
    meta: &NodeJobMeta,
    arguments: &ServeArguments,
    secret: &str,
) -> Job {
    let mount = SecretMount {
        volume: "token",
        secret,
        dir: IMPORT_DIR,
        items: vec![(TOKEN_KEY, TOKEN_KEY)],
    };
    node_job(
        settings,
        meta,
        SERVE_COMPONENT,
        arguments.to_args(),
        Some(mount),
        0,
    )
}

/// What the import Secret holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ImportSecretData {
    pub docker_config: Option<Vec<u8>>,
    /// PEM bundles, in `ca_key` order.
    pub ca_bundles: Vec<Vec<u8>>,
    pub token: Option<String>,
}

/// The restore's import Secret, in the operator's namespace (pods mount
/// only Secrets of their own namespace).
pub(crate) fn import_secret(
    meta: &NodeJobMeta,
    namespace: &str,
    name: &str,
    data: ImportSecretData,
) -> Secret {
    let mut keys: BTreeMap<String, ByteString> = BTreeMap::new();
    if let Some(config) = data.docker_config {
        keys.insert(DOCKER_CONFIG_KEY.to_owned(), ByteString(config));
    }
    for (index, pem) in data.ca_bundles.into_iter().enumerate() {
        keys.insert(ca_key(index), ByteString(pem));
    }
    if let Some(token) = data.token {
        keys.insert(TOKEN_KEY.to_owned(), ByteString(token.into_bytes()));
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels(
                "restore-credentials",
                &[
                    (LABEL_RESTORE_UID, &meta.restore_uid),
                    (LABEL_RESTORE_NAMESPACE, &meta.restore_namespace),
                ],
            )),
            owner_references: meta.owner.clone().map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(keys),
        ..Secret::default()
    }
}

/// A fresh one-time token for a peer session: 32 random bytes, hex.
pub(crate) fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::super::jobs::LABEL_NODE;
    use super::*;

    fn settings() -> JobSettings {
        JobSettings {
            namespace: "lifeboat-system".into(),
            image: "lifeboat.local/node-exporter:dev".into(),
            pull_policy: "Never".into(),
            socket_template: "/nodes/{node}/containerd.sock".into(),
            content_store_template: None,
            tolerations: vec![],
            host_network: true,
            image_pull_secrets: vec![],
            plain_http_registries: vec!["127.0.0.1:5001".into()],
        }
    }

    fn meta(node: &str) -> NodeJobMeta {
        NodeJobMeta {
            name: "lifeboat-import-x-0123".into(),
            node: node.into(),
            restore_namespace: "shop".into(),
            restore_name: "x".into(),
            restore_uid: "uid-1".into(),
            tolerations: vec![],
            active_deadline_seconds: 600,
            owner: None,
        }
    }

    fn digest() -> String {
        format!("sha256:{}", "a".repeat(64))
    }

    fn args_of(job: &Job) -> Vec<String> {
        job.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .args
            .clone()
            .unwrap()
    }

    #[test]
    fn an_import_from_the_backup_names_the_backup_by_digest_with_its_credentials_and_ca() {
        let image = ImportImage::parse(&format!(
            "src.io/shop/app:1=backup.io/m/shop/app@{}",
            digest()
        ))
        .unwrap();
        let from = ImportFrom::Registry {
            ca_registries: vec!["backup.io".into()],
            docker_config: true,
            plain_http: vec![],
        };
        let arguments = import_arguments(&settings(), vec![image], &from);
        let job = import_job(&settings(), &meta("node-2"), &arguments, Some("sec"));
        let args = args_of(&job);
        // The same strings node-exporter's parser reads back.
        assert_eq!(args, arguments.to_args());
        assert_eq!(args[0], "import");
        assert!(args.contains(&format!(
            "src.io/shop/app:1=backup.io/m/shop/app@{}",
            digest()
        )));
        assert!(args.contains(&format!("backup.io={IMPORT_DIR}/ca-0.crt")));
        assert!(args.contains(&format!("{IMPORT_DIR}/config.json")));
        assert!(
            args.contains(&"127.0.0.1:5001".to_owned()),
            "admin's plain-HTTP hosts"
        );
        assert!(
            !args
                .iter()
                .any(|a| a == "--from-peer" || a == "--token-file")
        );
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(1));
        let pod = spec.template.spec.unwrap();
        let volume = &pod.volumes.unwrap()[1];
        let secret = volume.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("sec"));
        assert!(secret.items.is_none(), "the whole import Secret");
        assert_eq!(pod.automount_service_account_token, Some(false));
        let labels = job.metadata.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/component"], "import");
        assert_eq!(labels[LABEL_NODE], "node-2");
    }

    #[test]
    fn node_to_node_the_serve_mounts_only_the_token_and_the_import_names_the_peer() {
        let held = ImageSource::parse(&format!("src.io/shop/app@{}", digest())).unwrap();
        let port = serve_port("lifeboat-serve-x-1");
        assert!(SERVE_PORTS.contains(&port));
        assert_eq!(port, serve_port("lifeboat-serve-x-1"), "deterministic");
        let serve = serve_job(
            &settings(),
            &meta("node-1"),
            &serve_arguments(vec![held], port),
            "sec",
        );
        let args = args_of(&serve);
        assert_eq!(args[0], "serve");
        assert!(args.contains(&port.to_string()));
        assert!(args.contains(&format!("{IMPORT_DIR}/token")));
        let spec = serve.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        let volumes = spec.template.spec.unwrap().volumes.unwrap();
        let items = volumes[1].secret.as_ref().unwrap().items.clone().unwrap();
        assert_eq!(
            items.len(),
            1,
            "only the token, not the backup's credentials"
        );
        assert_eq!(items[0].key, TOKEN_KEY);

        let image = ImportImage::parse(&format!("src.io/shop/app:1@{}", digest())).unwrap();
        let from = ImportFrom::Peer(format!("10.0.0.1:{port}"));
        let arguments = import_arguments(&settings(), vec![image], &from);
        let import = import_job(&settings(), &meta("node-2"), &arguments, Some("sec"));
        let args = args_of(&import);
        assert!(args.contains(&format!("10.0.0.1:{port}")));
        assert!(
            !args
                .iter()
                .any(|a| a == "--docker-config" || a == "--plain-http")
        );
        assert_eq!(import.spec.unwrap().backoff_limit, Some(0));
    }

    #[test]
    fn the_import_secret_holds_what_it_is_given_and_tokens_differ() {
        let secret = import_secret(
            &meta("node-2"),
            "lifeboat-system",
            "s",
            ImportSecretData {
                docker_config: Some(b"{}".to_vec()),
                ca_bundles: vec![b"PEM".to_vec()],
                token: Some("t".into()),
            },
        );
        let keys: Vec<String> = secret.data.unwrap().into_keys().collect();
        assert_eq!(keys, ["ca-0.crt", "config.json", "token"]);
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
