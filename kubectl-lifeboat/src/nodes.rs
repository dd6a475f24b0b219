//! Archives in and out of nodes' containerd through the API server alone:
//! a short-lived node-exporter pod on the node (the containerd socket
//! mounted, as the operator's node Jobs run it), reached by pod
//! port-forward. `export --from-node` runs `serve --loopback` and reads
//! the image from it as from a registry; `import --to-nodes` runs
//! `import --from-tunnel` on each node and answers its requests from the
//! archive (see `reverse`). Both pods listen on their own loopback only
//! and have no host network: nothing but a port-forward, with the user's
//! RBAC, reaches them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::wait::await_condition;
use lifeboat_node_protocol::{
    CONTENT_STORE_MOUNT, ENV_CONTENT_STORE, ExportReport, ImageSource, ImportArguments,
    ImportImage, ServeArguments,
};
use registry_transfer::{Descriptor, ImageReference};

use crate::archive::read::Archive;
use crate::progress::Progress;
use crate::tunnel::{self, NodeExporterSettings, Tunnel};

/// The port node pods listen on (their own loopback).
pub const NODE_PORT: u16 = 7071;
/// Where the socket is mounted inside the pod.
const SOCKET_MOUNT: &str = "/run/containerd/containerd.sock";
/// A node pod exits by itself after this long even if never deleted.
const NODE_POD_SECONDS: u64 = 3 * 3600;
/// How long `serve` may take to answer once its container runs.
const SERVE_PATIENCE: Duration = Duration::from_secs(30);

/// What a node pod does on its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodePodRole {
    /// `serve`: reads an image out of the node's containerd.
    Serve,
    /// `import`: writes an image into it.
    Import,
}

impl NodePodRole {
    fn component(self) -> &'static str {
        match self {
            NodePodRole::Serve => "serve",
            NodePodRole::Import => "import",
        }
    }

    /// Only a pod that reads blobs gets containerd's content store (read
    /// from its files instead of through `Content.Read`: faster, half the
    /// memory); an import writes through containerd and needs no more
    /// than the socket.
    fn reads_content_store(self) -> bool {
        self == NodePodRole::Serve
    }
}

/// A node-exporter pod pinned to `node` with its containerd socket: root
/// (the socket is root's), no privileges, no capabilities, read-only root
/// filesystem, no service account token, no host network. A `serve` pod
/// also mounts containerd's content store read-only, as the operator's
/// export Jobs do.
pub fn node_pod(
    name: &str,
    role: NodePodRole,
    settings: &NodeExporterSettings,
    node: &str,
    args: Vec<String>,
) -> anyhow::Result<Pod> {
    let mut mounts = vec![serde_json::json!({"name": "containerd", "mountPath": SOCKET_MOUNT})];
    let mut volumes = vec![serde_json::json!({"name": "containerd", "hostPath": {
        "path": settings.socket_path(node), "type": "Socket"
    }})];
    let mut env = Vec::new();
    if let Some(store) = settings
        .content_store_path(node)
        .filter(|_| role.reads_content_store())
    {
        mounts.push(serde_json::json!({
            "name": "containerd-content", "mountPath": CONTENT_STORE_MOUNT, "readOnly": true
        }));
        volumes.push(
            serde_json::json!({"name": "containerd-content", "hostPath": {
                "path": store, "type": "Directory"
            }}),
        );
        env.push(serde_json::json!({"name": ENV_CONTENT_STORE, "value": CONTENT_STORE_MOUNT}));
    }
    let component = role.component();
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/name": "lifeboat-node-access",
                "app.kubernetes.io/component": component,
                "app.kubernetes.io/managed-by": "kubectl-lifeboat",
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "activeDeadlineSeconds": NODE_POD_SECONDS,
            "terminationGracePeriodSeconds": 2,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": [node]}
                ]}]
            }}},
            "tolerations": settings.tolerations,
            "containers": [{
                "name": "node-exporter",
                "image": settings.image,
                "imagePullPolicy": settings.pull_policy,
                "args": args,
                "resources": {
                    "requests": {"cpu": "100m", "memory": "64Mi"},
                    "limits": {"memory": "256Mi"},
                },
                "securityContext": {
                    "runAsUser": 0,
                    "runAsNonRoot": false,
                    "privileged": false,
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                },
                "env": env,
                "volumeMounts": mounts,
            }],
            "volumes": volumes,
        },
    });
    Ok(serde_json::from_value(pod)?)
}

fn pod_name(kind: &str) -> String {
    let suffix: u32 = rand::random();
    format!("lifeboat-{kind}-{suffix:08x}")
}

/// Creates the pod and waits until its container runs; deletes it on
/// failure, saying `what` could not be done.
async fn start(pods: &Api<Pod>, pod: &Pod, what: &str) -> anyhow::Result<String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    pods.create(&PostParams::default(), pod)
        .await
        .with_context(|| format!("creating pod {name}"))?;
    if let Err(error) = tunnel::wait_for(pods, &name, tunnel::is_running).await {
        tunnel::delete(pods, &name).await;
        return Err(error.context(what.to_owned()));
    }
    Ok(name)
}

/// The node of a running pod in `namespace` that runs `image` (as its
/// spec names it): the quickest answer, with no cluster-wide rights.
async fn node_running(client: &kube::Client, namespace: &str, image: &str) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let listed = pods.list(&ListParams::default()).await.ok()?;
    listed.items.into_iter().find_map(|pod| {
        let runs = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|statuses| {
                statuses.iter().any(|c| {
                    c.image == image && c.state.as_ref().is_some_and(|s| s.running.is_some())
                })
            });
        runs.then(|| pod.spec.and_then(|spec| spec.node_name))
            .flatten()
    })
}

/// A node that holds `image`, for `export --from-node` without a name:
/// one where a pod of the namespace runs it, else one whose status lists
/// it (the kubelet reports the images' names there, with some delay).
pub async fn node_holding(
    client: &kube::Client,
    namespace: &str,
    image: &ImageReference,
) -> anyhow::Result<String> {
    if let Some(node) = node_running(client, namespace, &image.to_string()).await {
        return Ok(node);
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let listed = nodes
        .list(&ListParams::default())
        .await
        .context("listing nodes to find one that holds the image (or give --from-node NODE)")?;
    let wanted = image.to_string();
    listed
        .items
        .iter()
        .find(|node| {
            node.status
                .as_ref()
                .and_then(|s| s.images.as_ref())
                .is_some_and(|images| {
                    images.iter().any(|i| {
                        i.names
                            .as_ref()
                            .is_some_and(|names| names.contains(&wanted))
                    })
                })
        })
        .and_then(|node| node.metadata.name.clone())
        .with_context(|| format!("no node reports holding {wanted}; give --from-node NODE"))
}

/// A tunnel to a `serve --loopback` of `image` on `node`, answering.
pub async fn serve_from_node(
    pods: Api<Pod>,
    settings: &NodeExporterSettings,
    node: &str,
    image: &ImageReference,
) -> anyhow::Result<Tunnel> {
    let args = ServeArguments {
        images: vec![ImageSource::Reference(image.clone())],
        listen_port: NODE_PORT,
        token_file: None,
        loopback: true,
        serve_seconds: Some(NODE_POD_SECONDS),
        socket: Some(SOCKET_MOUNT.to_owned()),
    }
    .to_args();
    let name = pod_name("serve");
    let what = format!("node {node} cannot serve {image}");
    let name = start(
        &pods,
        &node_pod(&name, NodePodRole::Serve, settings, node, args)?,
        &what,
    )
    .await?;
    let tunnel = Tunnel::attach(pods.clone(), name.clone(), NODE_PORT).await?;
    // serve reads the image from containerd before it listens; a missing
    // image ends the pod with the reason in its termination message.
    let started = tokio::time::Instant::now();
    loop {
        if answers(&tunnel.address()).await {
            return Ok(tunnel);
        }
        let pod = pods.get(&name).await.ok();
        if let Some((code, message)) = pod.as_ref().and_then(tunnel::terminated) {
            tunnel.close().await;
            bail!(
                "node {node} cannot serve {image} (exit code {code}): {}",
                report_message(&message)
            );
        }
        if started.elapsed() > SERVE_PATIENCE {
            tunnel.close().await;
            bail!("node {node}'s serve pod did not answer within {SERVE_PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether an HTTP server answers `GET /v2/` at `address` with 200.
async fn answers(address: &str) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream
            .write_all(b"GET /v2/ HTTP/1.1\r\nHost: lifeboat\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// A termination message's report, said in one line.
pub fn report_message(message: &str) -> String {
    let Ok(report) = ExportReport::read(message) else {
        return message.trim().to_owned();
    };
    if let Some(error) = &report.error {
        return format!("{}: {}", error.reason, error.message);
    }
    report
        .results
        .iter()
        .map(|r| {
            format!(
                "{} {:?}{}{}",
                r.image,
                r.status,
                r.reason
                    .as_deref()
                    .map(|x| format!(" {x}"))
                    .unwrap_or_default(),
                r.message
                    .as_deref()
                    .map(|x| format!(": {x}"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The nodes a `--to-nodes` selector picks: a label selector, or
/// `name=NODE[,NODE...]` for nodes by name.
pub async fn selected_nodes(client: &kube::Client, selector: &str) -> anyhow::Result<Vec<String>> {
    if let Some(names) = selector.strip_prefix("name=") {
        return Ok(names.split(',').map(str::to_owned).collect());
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let listed = nodes
        .list(&ListParams::default().labels(selector))
        .await
        .with_context(|| format!("listing nodes {selector:?}"))?;
    let names: Vec<String> = listed
        .items
        .into_iter()
        .filter_map(|node| node.metadata.name)
        .collect();
    if names.is_empty() {
        bail!("no node matches {selector:?}");
    }
    Ok(names)
}

/// What one node's import ended with.
#[derive(Debug)]
pub struct NodeImport {
    pub node: String,
    pub outcome: anyhow::Result<(String, u64)>,
}

/// Imports the archive's image `root` into `node`'s containerd under
/// `name` (a reference with a tag or digest): an import pod pulls it
/// through the tunnel; its report says what it wrote.
pub async fn import_into(
    pods: Api<Pod>,
    settings: &NodeExporterSettings,
    node: String,
    name: &ImageReference,
    root: &Descriptor,
    archive: Arc<Archive>,
    progress: Progress,
) -> NodeImport {
    let outcome = import_one(&pods, settings, &node, name, root, archive, progress).await;
    NodeImport { node, outcome }
}

async fn import_one(
    pods: &Api<Pod>,
    settings: &NodeExporterSettings,
    node: &str,
    name: &ImageReference,
    root: &Descriptor,
    archive: Arc<Archive>,
    progress: Progress,
) -> anyhow::Result<(String, u64)> {
    let image = ImportImage::parse(&name.with_digest(root.digest.clone()).to_string())
        .context("the name to record")?;
    let args = ImportArguments {
        images: vec![image],
        from_tunnel: Some(NODE_PORT),
        socket: Some(SOCKET_MOUNT.to_owned()),
        ..ImportArguments::default()
    }
    .to_args();
    let pod_name = pod_name("import");
    let what = format!("cannot import into node {node}");
    let pod_name = start(
        pods,
        &node_pod(&pod_name, NodePodRole::Import, settings, node, args)?,
        &what,
    )
    .await?;
    let serving =
        crate::reverse::serve_archive(pods.clone(), pod_name.clone(), NODE_PORT, archive, progress);
    let ended = await_condition(pods.clone(), &pod_name, |pod: Option<&Pod>| {
        pod.is_none_or(|pod| tunnel::terminated(pod).is_some())
    });
    let finished = tokio::select! {
        () = serving => bail!("the archive server stopped"),
        ended = ended => ended,
    };
    tunnel::delete(pods, &pod_name).await;
    let pod = finished
        .context("watching the import pod")?
        .with_context(|| format!("import pod {pod_name} was deleted"))?;
    let (code, message) = tunnel::terminated(&pod).context("no termination state")?;
    let report = ExportReport::read(&message).ok();
    let result = report.as_ref().and_then(|r| r.results.first());
    match result {
        Some(result) if code == 0 && result.status.is_done() => Ok((
            result
                .digest
                .as_ref()
                .map_or_else(String::new, ToString::to_string),
            result.bytes,
        )),
        _ => bail!("exit code {code}: {}", report_message(&message)),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::EnvVar;

    use super::*;
    use crate::tunnel::settings_from_env;

    fn settings(env: &[(&str, &str)]) -> anyhow::Result<NodeExporterSettings> {
        let env: Vec<EnvVar> = env
            .iter()
            .map(|(name, value)| EnvVar {
                name: (*name).to_owned(),
                value: Some((*value).to_owned()),
                ..EnvVar::default()
            })
            .collect();
        settings_from_env(&env, Some("example.test/node-exporter:1"))
    }

    fn spec(pod: &Pod) -> serde_json::Value {
        serde_json::to_value(pod.spec.as_ref().expect("spec")).expect("json")
    }

    #[test]
    fn a_serve_pod_reads_the_content_store_read_only_and_an_import_pod_gets_only_the_socket() {
        let settings = settings(&[(
            "LIFEBOAT_CONTAINERD_CONTENT_STORE",
            "/var/lib/nodes/{node}/content",
        )])
        .expect("settings");
        let serve = spec(
            &node_pod("p", NodePodRole::Serve, &settings, "node-7", vec![]).expect("serve pod"),
        );
        let container = &serve["containers"][0];
        assert_eq!(
            container["volumeMounts"],
            serde_json::json!([
                {"name": "containerd", "mountPath": SOCKET_MOUNT},
                {"name": "containerd-content", "mountPath": CONTENT_STORE_MOUNT, "readOnly": true},
            ])
        );
        assert_eq!(
            serve["volumes"][1],
            serde_json::json!({"name": "containerd-content", "hostPath": {
                "path": "/var/lib/nodes/node-7/content", "type": "Directory"
            }})
        );
        assert_eq!(
            container["env"],
            serde_json::json!([{"name": ENV_CONTENT_STORE, "value": CONTENT_STORE_MOUNT}])
        );

        let import = spec(
            &node_pod("p", NodePodRole::Import, &settings, "node-7", vec![]).expect("import pod"),
        );
        assert_eq!(import["volumes"].as_array().map(Vec::len), Some(1));
        assert_eq!(import["volumes"][0]["hostPath"]["type"], "Socket");
        assert!(
            import["containers"][0]["env"]
                .as_array()
                .is_none_or(Vec::is_empty)
        );
    }

    #[test]
    fn the_content_store_follows_the_operator_default_off_and_invalid() {
        let unset = settings(&[]).expect("defaults");
        assert_eq!(
            unset.content_store_path("n").as_deref(),
            Some(lifeboat_node_protocol::DEFAULT_CONTENT_STORE)
        );
        let off = settings(&[("LIFEBOAT_CONTAINERD_CONTENT_STORE", "")]).expect("off");
        assert_eq!(off.content_store_path("n"), None);
        let serve = spec(&node_pod("p", NodePodRole::Serve, &off, "n", vec![]).expect("pod"));
        assert_eq!(serve["volumes"].as_array().map(Vec::len), Some(1));
        assert!(settings(&[("LIFEBOAT_CONTAINERD_CONTENT_STORE", "relative/dir")]).is_err());
    }
}
