//! `export` and `import`: image archives in and out of a registry that only
//! the cluster can reach, through the API server alone (a relay pod reached
//! by port-forward, see `tunnel`). The registry side is registry-transfer's
//! client and copy engine, as the operator uses them; the archive side
//! streams from and to the file.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use registry_transfer::{
    CopyDeadline, CopyRequest, Credentials, DockerConfig, ImageReference, Platform,
    RegistrySettings, RepositoryRef, Secret, Transfer, TransferConfig,
};

use crate::archive::read::{Archive, ArchiveSource, ArchivedImage, check_image};
use crate::archive::write;
use crate::cli::{ClusterAccess, ExportArgs, ImportArgs, RegistryAccess};
use crate::client::Connection;
use crate::nodes;
use crate::progress::{Progress, Reporter};
use crate::tunnel::{self, Tunnel};

/// The `HOST:PORT` a relay dials for a registry as the cluster names it:
/// without a port, 443 for TLS and 80 for plain HTTP.
pub fn dial_address(registry: &str, tls: bool) -> String {
    let has_port = match registry.rsplit_once(':') {
        Some((host, port)) => !host.ends_with(':') && port.chars().all(|c| c.is_ascii_digit()),
        None => false,
    };
    if has_port {
        registry.to_owned()
    } else if tls {
        format!("{registry}:443")
    } else {
        format!("{registry}:80")
    }
}

/// The same image reference with the registry replaced by the tunnel's
/// local address.
fn through(image: &ImageReference, local: &str) -> anyhow::Result<ImageReference> {
    Ok(ImageReference {
        registry: local.to_owned(),
        ..image.clone()
    })
}

/// How the engine talks to the registry behind the tunnel: TLS checked
/// for the registry's own name (the connection goes to a local port),
/// and the registry's credentials, keyed to the local address.
#[derive(Default)]
pub struct FarRegistry {
    pub tls: bool,
    pub ca: Option<Vec<u8>>,
    pub server_name: String,
    pub credentials: Credentials,
}

/// Host without port: what a certificate names.
pub fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.rsplit_once(':').map_or(registry, |(host, _)| host)
}

/// The registry settings from the command line: CA file, server name,
/// credentials from stdin or a Secret.
pub async fn far_registry(
    connection: &Connection,
    access: &RegistryAccess,
    registry: &str,
) -> anyhow::Result<FarRegistry> {
    let ca = match &access.ca_file {
        Some(path) => Some(
            tokio::fs::read(path)
                .await
                .with_context(|| format!("reading --ca-file {}", path.display()))?,
        ),
        None => None,
    };
    let credentials = if let Some(username) = &access.username {
        let mut password = String::new();
        std::io::stdin()
            .read_line(&mut password)
            .context("reading the password from stdin")?;
        Credentials::Basic {
            username: username.clone(),
            password: Secret::new(password.trim_end_matches(['\r', '\n']).to_owned()),
        }
    } else if let Some(name) = &access.registry_secret {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(connection.client.clone(), &connection.namespace);
        let secret = secrets
            .get(name)
            .await
            .with_context(|| format!("reading --registry-secret {name}"))?;
        let json = secret
            .data
            .as_ref()
            .and_then(|d| d.get(".dockerconfigjson"))
            .with_context(|| format!("secret {name} has no .dockerconfigjson"))?;
        let config = DockerConfig::parse(&json.0).with_context(|| format!("secret {name}"))?;
        let found = config.credentials_for(registry);
        if matches!(found, Credentials::Anonymous) {
            bail!("secret {name} has no credentials for {registry}");
        }
        found
    } else {
        Credentials::Anonymous
    };
    Ok(FarRegistry {
        tls: access.tls || ca.is_some(),
        ca,
        server_name: access
            .tls_server_name
            .clone()
            .unwrap_or_else(|| host_of(registry).to_owned()),
        credentials,
    })
}

/// The copy engine for the tunnel's local address. Every wait is bounded:
/// 30 s of silence on a connection is a failure, and a copy as a whole
/// gets 60 s plus a second per MiB of its image, so a broken tunnel or a
/// registry that stopped answering mid-upload ends the command instead
/// of retrying for minutes.
fn transfer_for(local: &str, far: &FarRegistry) -> Transfer {
    let config = TransferConfig {
        read_timeout: Duration::from_secs(30),
        body_timeout: Duration::from_secs(30),
        copy_deadline: Some(CopyDeadline {
            base: Duration::from_secs(60),
            min_bytes_per_second: 1024 * 1024,
        }),
        ..TransferConfig::default()
    };
    let mut settings = RegistrySettings::new().with_credentials(local, far.credentials.clone());
    if far.tls {
        settings = settings.verify_tls_as(local, &far.server_name);
        if let Some(ca) = &far.ca {
            settings = settings.with_ca_bundle(local, ca.clone());
        }
    } else {
        settings = settings.allow_plain_http(local);
    }
    Transfer::new(config, settings)
}

async fn open_tunnel(
    connection: &Connection,
    access: &ClusterAccess,
    registry: &str,
    tls: bool,
) -> anyhow::Result<Tunnel> {
    let address = dial_address(registry, tls);
    let namespace = &connection.namespace;
    if !access.relay {
        let pods: Api<Pod> = Api::namespaced(connection.client.clone(), namespace);
        if let Some(tunnel) = Tunnel::direct(&pods, &address).await {
            eprintln!(
                "reaching {address} by port-forward to its pod {namespace}/{}",
                tunnel.pod()
            );
            return Ok(tunnel);
        }
    }
    let settings = tunnel::node_exporter_settings(
        connection,
        access.node_exporter_image.as_deref(),
        &access.operator_namespace,
    )
    .await?;
    let tunnel = Tunnel::open(
        connection,
        &settings.image,
        &address,
        access.relay_node.as_deref(),
    )
    .await?;
    eprintln!(
        "reaching {address} through relay pod {namespace}/{}",
        tunnel.pod()
    );
    Ok(tunnel)
}

/// Runs `work` with a tunnel and deletes its pod afterwards, whatever happened.
async fn with_tunnel<T, F>(tunnel: Tunnel, work: impl FnOnce(String) -> F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let result = tokio::select! {
        result = work(tunnel.address()) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    tunnel.close().await;
    result
}

/// The tunnel an export reads through: a relay to the image's registry,
/// or a node's `serve`.
async fn export_tunnel(
    connection: &Connection,
    args: &ExportArgs,
    image: &ImageReference,
    tls: bool,
) -> anyhow::Result<Tunnel> {
    let Some(node) = &args.from_node else {
        return open_tunnel(connection, &args.access, &image.registry, tls).await;
    };
    let node = if node.is_empty() {
        nodes::node_holding(&connection.client, &connection.namespace, image).await?
    } else {
        node.clone()
    };
    let settings = tunnel::node_exporter_settings(
        connection,
        args.access.node_exporter_image.as_deref(),
        &args.access.operator_namespace,
    )
    .await?;
    let pods: Api<Pod> =
        Api::namespaced(connection.client.clone(), &args.access.operator_namespace);
    eprintln!("reading {image} from node {node}'s containerd");
    nodes::serve_from_node(pods, &settings, &node, image).await
}

pub async fn export(connection: &Connection, args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let image =
        ImageReference::parse(&args.image).with_context(|| format!("image {:?}", args.image))?;
    let platform = match &args.platform {
        Some(text) => Platform::parse(text)?,
        None => write::host_platform(),
    };
    let ref_name = image.tag.clone();
    let repo_tag = image
        .tag
        .as_ref()
        .map(|tag| format!("{}/{}:{tag}", image.registry, image.repository));
    let far = if args.from_node.is_some() {
        // A node's serve: plain HTTP on the pod's loopback, no credentials.
        FarRegistry::default()
    } else {
        far_registry(connection, &args.registry, &image.registry).await?
    };
    let tunnel = export_tunnel(connection, args, &image, far.tls).await?;
    let progress = Progress::default();
    let reporter = Reporter::start(args.progress, "exported", &progress);
    let (image_ref, platform, progress_ref, far) = (&image, &platform, &progress, &far);
    let written = with_tunnel(tunnel, |local| async move {
        let transfer = transfer_for(&local, far);
        let source = transfer.registry_source(&through(image_ref, &local)?)?;
        write::write_archive(
            &source,
            &args.output,
            args.format,
            platform,
            ref_name.as_deref(),
            repo_tag.as_deref(),
            progress_ref,
        )
        .await
    })
    .await?;
    reporter.finish();
    eprintln!(
        "exported {} to {}: {} manifests, {} blobs, {} bytes, every digest verified",
        args.image,
        args.output.display(),
        written.manifests,
        written.blobs,
        written.bytes
    );
    println!("{}", written.digest);
    Ok(ExitCode::SUCCESS)
}

/// The archive's image to import: the only one, or the one named.
pub fn choose_image(
    images: Vec<ArchivedImage>,
    name: Option<&str>,
) -> anyhow::Result<ArchivedImage> {
    let names = || {
        images
            .iter()
            .map(|i| {
                i.ref_name
                    .clone()
                    .unwrap_or_else(|| i.descriptor.digest.to_string())
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(name) => {
            let listed = names();
            images
                .into_iter()
                .find(|i| {
                    i.ref_name.as_deref() == Some(name) || i.descriptor.digest.as_str() == name
                })
                .with_context(|| format!("the archive has no image {name:?} (it has: {listed})"))
        }
        None if images.len() == 1 => images.into_iter().next().context("no image"),
        None if images.is_empty() => bail!("the archive's index.json names no image"),
        None => bail!(
            "the archive holds several images; pick one with --name ({})",
            names()
        ),
    }
}

/// The tag to set: the one `--to` names, else the archive's ref name when
/// it is a tag (or ends in one), else `latest`.
pub fn target_tag(to: &str, image: &ImageReference, ref_name: Option<&str>) -> String {
    let last = to.rsplit('/').next().unwrap_or(to);
    if (last.contains(':') || last.contains('@'))
        && let Some(tag) = &image.tag
    {
        return tag.clone();
    }
    ref_name
        .map(|name| name.rsplit(':').next().unwrap_or(name))
        .filter(|tag| registry_transfer::reference::is_valid_tag(tag))
        .map_or_else(|| "latest".to_owned(), str::to_owned)
}

pub async fn import(connection: &Connection, args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let target = ImageReference::parse(&args.to).with_context(|| format!("--to {:?}", args.to))?;
    let path = args.file.clone();
    let archive = tokio::task::spawn_blocking(move || Archive::open(&path))
        .await?
        .with_context(|| format!("reading {}", args.file.display()))?;
    tracing::info!(file = %args.file.display(), "archive indexed");
    let archive = Arc::new(archive);
    let chosen = choose_image(archive.images()?, args.name.as_deref())?;
    let tag = target_tag(&args.to, &target, chosen.ref_name.as_deref());
    let source = ArchiveSource::new(archive.clone(), chosen.descriptor.clone());
    let total = check_image(&source).await?;
    tracing::info!(bytes = total, "archive checked");
    let progress = Progress::default();
    progress.set_total(total);
    if let Some(selector) = &args.to_nodes {
        let name = ImageReference {
            tag: Some(tag),
            digest: None,
            ..target
        };
        return import_to_nodes(
            connection,
            args,
            selector,
            &name,
            &chosen.descriptor,
            archive,
            progress,
        )
        .await;
    }
    let source = source.with_progress(progress.clone());
    let repository = target.repository.clone();
    let far = far_registry(connection, &args.registry, &target.registry).await?;
    let tunnel = open_tunnel(connection, &args.access, &target.registry, far.tls).await?;
    let reporter = Reporter::start(args.progress, "imported", &progress);
    let far = &far;
    let report = with_tunnel(tunnel, |local| async move {
        let transfer = transfer_for(&local, far);
        let request = CopyRequest::new(RepositoryRef::new(local, repository)).with_tag(tag);
        let report = transfer.copy(&source, &request).await?;
        tracing::info!(digest = %report.digest, bytes = report.bytes_copied, "copy done");
        Ok(report)
    })
    .await?;
    tracing::info!("relay pod deleted");
    reporter.finish();
    eprintln!(
        "imported {} into {}/{}:{}: {} blobs copied ({} bytes), {} already there, every digest verified",
        args.file.display(),
        target.registry,
        target.repository,
        report.tag,
        report.blobs_copied,
        report.bytes_copied,
        report.blobs_skipped
    );
    println!("{}", report.digest);
    Ok(ExitCode::SUCCESS)
}

/// `import --to-nodes`: one import pod per selected node, all fed from
/// the archive at once; exit 1 unless every node holds the image after.
async fn import_to_nodes(
    connection: &Connection,
    args: &ImportArgs,
    selector: &str,
    name: &ImageReference,
    root: &registry_transfer::Descriptor,
    archive: Arc<Archive>,
    progress: Progress,
) -> anyhow::Result<ExitCode> {
    let nodes = nodes::selected_nodes(&connection.client, selector).await?;
    let settings = tunnel::node_exporter_settings(
        connection,
        args.access.node_exporter_image.as_deref(),
        &args.access.operator_namespace,
    )
    .await?;
    let pods: Api<Pod> =
        Api::namespaced(connection.client.clone(), &args.access.operator_namespace);
    // Every node reads the whole archive: the bar counts all of it.
    progress.set_total(progress.total().saturating_mul(nodes.len() as u64));
    let reporter = Reporter::start(args.progress, "sent", &progress);
    let imports = futures::future::join_all(nodes.into_iter().map(|node| {
        nodes::import_into(
            pods.clone(),
            &settings,
            node,
            name,
            root,
            archive.clone(),
            progress.clone(),
        )
    }));
    let results = tokio::select! {
        results = imports => results,
        _ = tokio::signal::ctrl_c() => {
            let listed = pods
                .list(&ListParams::default().labels("app.kubernetes.io/managed-by=kubectl-lifeboat,app.kubernetes.io/component=import"))
                .await;
            for pod in listed.map(|l| l.items).unwrap_or_default() {
                tunnel::delete(&pods, &pod.metadata.name.unwrap_or_default()).await;
            }
            bail!("interrupted");
        }
    };
    reporter.finish();
    let mut failed = 0;
    for result in &results {
        match &result.outcome {
            Ok((digest, bytes)) => eprintln!(
                "imported {name} into node {}'s containerd: {digest}, {bytes} bytes written, every digest verified",
                result.node
            ),
            Err(error) => {
                failed += 1;
                eprintln!("node {}: import failed: {error:#}", result.node);
            }
        }
    }
    if failed > 0 {
        return Ok(ExitCode::from(crate::cli::EXIT_FAILED));
    }
    println!("{}", root.digest);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_dials_the_port_given_or_80() {
        assert_eq!(
            dial_address("registry.air.svc:5000", false),
            "registry.air.svc:5000"
        );
        assert_eq!(
            dial_address("registry.air.svc", false),
            "registry.air.svc:80"
        );
        assert_eq!(
            dial_address("registry.air.svc", true),
            "registry.air.svc:443"
        );
        assert_eq!(dial_address("[fd00::1]:5000", true), "[fd00::1]:5000");
    }

    #[test]
    fn certificates_are_checked_for_the_registry_host() {
        assert_eq!(host_of("registry.air.svc:5000"), "registry.air.svc");
        assert_eq!(host_of("10.244.1.7:5000"), "10.244.1.7");
        assert_eq!(host_of("registry.air.svc"), "registry.air.svc");
        assert_eq!(host_of("[fd00::1]:5000"), "fd00::1");
    }

    #[test]
    fn the_tag_comes_from_to_then_the_archive_then_latest() {
        let parse = |s: &str| ImageReference::parse(s).unwrap();
        let to = "r.svc:5000/demo/web:2.0";
        assert_eq!(target_tag(to, &parse(to), Some("1.0")), "2.0");
        let to = "r.svc:5000/demo/web";
        assert_eq!(target_tag(to, &parse(to), Some("1.0")), "1.0");
        assert_eq!(
            target_tag(to, &parse(to), Some("docker.io/x/web:1.1")),
            "1.1"
        );
        assert_eq!(target_tag(to, &parse(to), None), "latest");
        assert_eq!(target_tag(to, &parse(to), Some("not a tag!")), "latest");
    }

    #[test]
    fn one_image_is_chosen_or_the_choice_is_asked_for() {
        let image = |name: Option<&str>, c: char| ArchivedImage {
            descriptor: registry_transfer::Descriptor {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: registry_transfer::Digest::parse(&format!(
                    "sha256:{}",
                    c.to_string().repeat(64)
                ))
                .unwrap(),
                size: 1,
            },
            ref_name: name.map(str::to_owned),
        };
        assert!(choose_image(vec![image(None, 'a')], None).is_ok());
        assert!(choose_image(vec![], None).is_err());
        let two = vec![image(Some("1.0"), 'a'), image(Some("2.0"), 'b')];
        assert!(choose_image(two.clone(), None).is_err());
        assert_eq!(choose_image(two.clone(), Some("2.0")).unwrap(), two[1]);
        assert!(choose_image(two, Some("3.0")).is_err());
    }
}
