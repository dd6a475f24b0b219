//! The connection: kubeconfig, context and namespace as kubectl picks them.

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::cli::Global;

/// A client and the namespace commands work in.
pub struct Connection {
    pub client: kube::Client,
    pub namespace: String,
}

pub async fn connect(global: &Global) -> anyhow::Result<Connection> {
    let options = KubeConfigOptions {
        context: global.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &global.kubeconfig {
        // $KUBECONFIG may list several files; kubectl merges them, kube reads the first.
        Some(paths) => {
            let first = paths.split(':').next().unwrap_or(paths);
            let kubeconfig = Kubeconfig::read_from(first)
                .with_context(|| format!("reading kubeconfig {first}"))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None if global.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer().await?,
    };
    let namespace = global
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
    Ok(Connection { client, namespace })
}
