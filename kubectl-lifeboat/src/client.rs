//! The connection: kubeconfig, context and namespace as kubectl picks them.

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::cli::Global;

/// A client and the namespace commands work in.
pub struct Connection {
    pub client: kube::Client,
    pub namespace: String,
}

impl Connection {
    /// Every object of kind `K` in the command's namespace, or in all
    /// namespaces (`-A`).
    pub async fn list<K>(&self, all_namespaces: bool) -> anyhow::Result<Vec<K>>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: kube::Api<K> = if all_namespaces {
            kube::Api::all(self.client.clone())
        } else {
            kube::Api::namespaced(self.client.clone(), &self.namespace)
        };
        Ok(api.list(&kube::api::ListParams::default()).await?.items)
    }
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
