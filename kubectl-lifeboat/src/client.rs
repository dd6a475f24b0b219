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
        // $KUBECONFIG may list several files: merged as kubectl does, the
        // first file to set a value wins.
        Some(paths) => {
            let kubeconfig = merged_kubeconfig(paths)?;
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

/// The files of a `KUBECONFIG`-style list (`:`-separated), read and merged
/// in order; empty entries and missing files are skipped as kubectl skips them.
fn merged_kubeconfig(paths: &str) -> anyhow::Result<Kubeconfig> {
    let mut merged: Option<Kubeconfig> = None;
    for path in paths.split(':').filter(|p| !p.is_empty()) {
        if !std::path::Path::new(path).exists() {
            continue;
        }
        let next =
            Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {path}"))?;
        merged = Some(match merged {
            Some(earlier) => earlier
                .merge(next)
                .with_context(|| format!("merging kubeconfig {path}"))?,
            None => next,
        });
    }
    merged.with_context(|| format!("no kubeconfig file found in {paths:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(context: &str, server: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: {context}\n\
             clusters: [{{name: {context}, cluster: {{server: \"{server}\"}}}}]\n\
             users: [{{name: {context}, user: {{token: t}}}}]\n\
             contexts: [{{name: {context}, context: {{cluster: {context}, user: {context}}}}}]\n"
        )
    }

    #[test]
    fn several_kubeconfig_files_merge_first_wins() {
        let dir = std::env::temp_dir().join(format!("klb-kubeconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, kubeconfig("one", "https://one.example:6443")).unwrap();
        std::fs::write(&b, kubeconfig("two", "https://two.example:6443")).unwrap();
        let list = format!(
            "{}::{}:{}",
            a.display(),
            dir.join("missing").display(),
            b.display()
        );
        let merged = merged_kubeconfig(&list).unwrap();
        assert_eq!(merged.current_context.as_deref(), Some("one"));
        let mut contexts: Vec<&str> = merged.contexts.iter().map(|c| c.name.as_str()).collect();
        contexts.sort_unstable();
        assert_eq!(contexts, ["one", "two"]);
        assert!(merged_kubeconfig(&dir.join("missing").display().to_string()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
