//! `export` and `import`: image archives in and out of a registry that only
//! the cluster can reach, through the API server alone (a relay pod reached
//! by port-forward, see `tunnel`). The registry side is registry-transfer's
//! client and copy engine, as the operator uses them; the archive side
//! streams from and to the file.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use registry_transfer::{
    CopyRequest, ImageReference, Platform, RegistrySettings, RepositoryRef, Transfer,
    TransferConfig,
};

use crate::archive::read::{Archive, ArchiveSource, ArchivedImage, verify_image};
use crate::archive::write;
use crate::cli::{ClusterAccess, ExportArgs, ImportArgs};
use crate::client::Connection;
use crate::tunnel::{self, Tunnel};

/// The `HOST:PORT` a relay dials for a registry as the cluster names it.
/// Only plain HTTP goes through the tunnel (the client here cannot check a
/// certificate issued to the in-cluster name), so the default port is 80.
pub fn dial_address(registry: &str) -> String {
    let has_port = match registry.rsplit_once(':') {
        Some((host, port)) => !host.ends_with(':') && port.chars().all(|c| c.is_ascii_digit()),
        None => false,
    };
    if has_port {
        registry.to_owned()
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

fn transfer_for(local: &str) -> Transfer {
    Transfer::new(
        TransferConfig::default(),
        RegistrySettings::new().allow_plain_http(local),
    )
}

async fn open_tunnel(
    connection: &Connection,
    access: &ClusterAccess,
    registry: &str,
) -> anyhow::Result<Tunnel> {
    let image = tunnel::node_exporter_image(
        connection,
        access.node_exporter_image.as_deref(),
        &access.operator_namespace,
    )
    .await?;
    Tunnel::open(
        connection,
        &image,
        &dial_address(registry),
        access.relay_node.as_deref(),
    )
    .await
}

/// Runs `work` with a tunnel and deletes the relay pod afterwards, whatever happened.
async fn with_tunnel<T, F>(
    connection: &Connection,
    access: &ClusterAccess,
    registry: &str,
    work: impl FnOnce(String) -> F,
) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let tunnel = open_tunnel(connection, access, registry).await?;
    let result = tokio::select! {
        result = work(tunnel.address()) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    tunnel.close().await;
    result
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
    let registry = image.registry.clone();
    let written = with_tunnel(connection, &args.access, &registry, |local| async move {
        let transfer = transfer_for(&local);
        let source = transfer.registry_source(&through(&image, &local)?)?;
        write::write_archive(
            &source,
            &args.output,
            args.format,
            &platform,
            ref_name.as_deref(),
            repo_tag.as_deref(),
        )
        .await
    })
    .await?;
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
    let chosen = choose_image(archive.images()?, args.name.as_deref())?;
    let tag = target_tag(&args.to, &target, chosen.ref_name.as_deref());
    let source = ArchiveSource::new(Arc::new(archive), chosen.descriptor.clone());
    verify_image(&source).await?;
    let repository = target.repository.clone();
    let report = with_tunnel(
        connection,
        &args.access,
        &target.registry,
        |local| async move {
            let transfer = transfer_for(&local);
            let request = CopyRequest::new(RepositoryRef::new(local, repository)).with_tag(tag);
            Ok(transfer.copy(&source, &request).await?)
        },
    )
    .await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_dials_the_port_given_or_80() {
        assert_eq!(
            dial_address("registry.air.svc:5000"),
            "registry.air.svc:5000"
        );
        assert_eq!(dial_address("registry.air.svc"), "registry.air.svc:80");
        assert_eq!(dial_address("[fd00::1]:5000"), "[fd00::1]:5000");
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
