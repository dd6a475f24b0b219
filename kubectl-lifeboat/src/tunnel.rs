//! A way into the cluster's network through the API server only: a
//! short-lived relay pod (node-exporter's `relay` mode, the image the
//! cluster already runs for Lifeboat) reached by pod port-forward. A local
//! listener on 127.0.0.1 opens one port-forward stream per connection, so
//! the registry client here talks to `127.0.0.1:PORT` as if it were the
//! in-cluster registry. No Service, Ingress, LoadBalancer or NodePort is
//! created; every request runs with the user's own credentials and RBAC.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{EnvVar, Pod, Toleration};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::wait::await_condition;
use lifeboat_node_protocol::{DEFAULT_CONTENT_STORE, RelayArguments};
use tokio::io::DuplexStream;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::client::Connection;
use crate::portforward;

/// The port the relay listens on inside its pod.
const RELAY_PORT: u16 = 7070;
/// The relay exits by itself after this long even if it is never deleted.
const RELAY_SECONDS: u64 = 6 * 3600;
/// How long the pod may take to start (image present on nodes: seconds).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the node-exporter image name comes from when not given.
pub const OPERATOR_DEPLOYMENT: &str = "lifeboat-operator";
pub const NODE_EXPORTER_IMAGE_ENV: &str = "LIFEBOAT_NODE_EXPORTER_IMAGE";

/// A pod (a relay, a node pod, or the registry's own) and the local port
/// that reaches through it.
pub struct Tunnel {
    pods: Api<Pod>,
    pod: String,
    /// Started for this tunnel, so deleted with it (not the registry's pod).
    owned: bool,
    pub local: SocketAddr,
    accept: JoinHandle<()>,
}

/// How the operator runs node-exporter, for the pods the plugin starts.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeExporterSettings {
    pub image: String,
    pub pull_policy: String,
    /// The containerd socket on the nodes; `{node}` stands for the node's name.
    pub socket_template: String,
    /// containerd's content store on the nodes (`{node}` as above), read
    /// by `serve` straight from its files; `None` when the operator turned
    /// that off (blobs then come through containerd's `Content.Read`).
    pub content_store_template: Option<String>,
    pub tolerations: Vec<Toleration>,
}

impl NodeExporterSettings {
    pub fn socket_path(&self, node: &str) -> String {
        self.socket_template.replace("{node}", node)
    }

    pub fn content_store_path(&self, node: &str) -> Option<String> {
        self.content_store_template
            .as_ref()
            .map(|template| template.replace("{node}", node))
    }
}

/// node-exporter as the operator runs it (its Deployment's environment),
/// the image overridden by `given`. Without the Deployment (a user who may
/// not read it) the image must be given; the rest takes the chart's defaults.
pub async fn node_exporter_settings(
    connection: &Connection,
    given: Option<&str>,
    operator_namespace: &str,
) -> anyhow::Result<NodeExporterSettings> {
    let deployments: Api<Deployment> =
        Api::namespaced(connection.client.clone(), operator_namespace);
    let env: Vec<EnvVar> = match deployments.get(OPERATOR_DEPLOYMENT).await {
        Ok(deployment) => deployment
            .spec
            .and_then(|spec| spec.template.spec)
            .into_iter()
            .flat_map(|spec| spec.containers)
            .flat_map(|container| container.env.unwrap_or_default())
            .collect(),
        Err(error) if given.is_some() => {
            tracing::debug!(%error, "operator deployment not readable; defaults");
            Vec::new()
        }
        Err(error) => {
            return Err(error).with_context(|| {
                format!(
                    "reading deployment {operator_namespace}/{OPERATOR_DEPLOYMENT} for the node-exporter image \
                     (or give --node-exporter-image)"
                )
            });
        }
    };
    settings_from_env(&env, given)
}

/// The settings from the operator's environment, as the operator reads it.
pub fn settings_from_env(
    env: &[EnvVar],
    given: Option<&str>,
) -> anyhow::Result<NodeExporterSettings> {
    let value = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
            .filter(|v| !v.trim().is_empty())
    };
    let image = match given {
        Some(image) => image.to_owned(),
        None => value(NODE_EXPORTER_IMAGE_ENV).with_context(|| {
            format!("the operator sets no {NODE_EXPORTER_IMAGE_ENV}; give --node-exporter-image")
        })?,
    };
    let tolerations = match value("LIFEBOAT_NODE_EXPORTER_TOLERATIONS") {
        Some(json) => serde_json::from_str(&json)
            .context("the operator's LIFEBOAT_NODE_EXPORTER_TOLERATIONS")?,
        None => Vec::new(),
    };
    Ok(NodeExporterSettings {
        image,
        pull_policy: value("LIFEBOAT_NODE_EXPORTER_PULL_POLICY")
            .unwrap_or_else(|| "IfNotPresent".to_owned()),
        socket_template: value("LIFEBOAT_CONTAINERD_SOCKET")
            .unwrap_or_else(|| "/run/containerd/containerd.sock".to_owned()),
        // As the operator reads it: unset is the default, empty is off.
        content_store_template: match env
            .iter()
            .find(|e| e.name == "LIFEBOAT_CONTAINERD_CONTENT_STORE")
            .map(|e| e.value.clone().unwrap_or_default())
        {
            None => Some(DEFAULT_CONTENT_STORE.to_owned()),
            Some(path) if path.trim().is_empty() => None,
            Some(path) if path.starts_with('/') => Some(path),
            Some(other) => bail!(
                "the operator's LIFEBOAT_CONTAINERD_CONTENT_STORE is not an absolute path: {other:?}"
            ),
        },
        tolerations,
    })
}

/// The relay pod: runs as nobody, no privileges, nothing mounted.
pub fn relay_pod(name: &str, image: &str, to: &str, node: Option<&str>) -> anyhow::Result<Pod> {
    let args = RelayArguments {
        listen_port: RELAY_PORT,
        to: to.to_owned(),
        serve_seconds: Some(RELAY_SECONDS),
    }
    .to_args();
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/name": "lifeboat-relay",
                "app.kubernetes.io/managed-by": "kubectl-lifeboat",
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "activeDeadlineSeconds": RELAY_SECONDS,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "relay",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "args": args,
                "ports": [{"containerPort": RELAY_PORT, "name": "relay"}],
                "readinessProbe": {
                    "tcpSocket": {"port": RELAY_PORT},
                    "periodSeconds": 1,
                },
                "resources": {
                    "requests": {"cpu": "10m", "memory": "16Mi"},
                    "limits": {"memory": "64Mi"},
                },
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
        },
    });
    let mut pod: Pod = serde_json::from_value(pod)?;
    if let (Some(node), Some(spec)) = (node, pod.spec.as_mut()) {
        spec.node_selector = Some([("kubernetes.io/hostname".to_owned(), node.to_owned())].into());
    }
    Ok(pod)
}

fn is_ready(pod: Option<&Pod>) -> bool {
    pod.and_then(|pod| pod.status.as_ref())
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

fn has_failed(pod: Option<&Pod>) -> bool {
    pod.and_then(|pod| pod.status.as_ref())
        .and_then(|status| status.phase.as_deref())
        .is_some_and(|phase| phase == "Failed" || phase == "Succeeded")
}

impl Tunnel {
    /// Starts a relay pod in the connection's namespace that passes
    /// connections on to `to` (HOST:PORT as the cluster resolves it), and
    /// a local listener that reaches it.
    pub async fn open(
        connection: &Connection,
        image: &str,
        to: &str,
        node: Option<&str>,
    ) -> anyhow::Result<Tunnel> {
        let pods: Api<Pod> = Api::namespaced(connection.client.clone(), &connection.namespace);
        let suffix: u32 = rand::random();
        let name = format!("lifeboat-relay-{suffix:08x}");
        pods.create(&PostParams::default(), &relay_pod(&name, image, to, node)?)
            .await
            .with_context(|| format!("creating relay pod {}/{name}", connection.namespace))?;
        tracing::info!(pod = %name, "relay pod created");
        if let Err(error) = wait_for(&pods, &name, is_ready).await {
            delete(&pods, &name).await;
            return Err(error);
        }
        tracing::info!(pod = %name, "relay pod ready");
        Tunnel::attach(pods, name, RELAY_PORT).await
    }

    /// A local listener whose connections reach `port` of the running pod
    /// `pod`; the pod is deleted when the tunnel closes.
    pub async fn attach(pods: Api<Pod>, pod: String, port: u16) -> anyhow::Result<Tunnel> {
        match Tunnel::listen(pods.clone(), pod.clone(), port, true).await {
            Ok(tunnel) => Ok(tunnel),
            Err(error) => {
                delete(&pods, &pod).await;
                Err(error)
            }
        }
    }

    /// Port-forwards straight to the registry's own pod when `address`
    /// (`IP:PORT`, as the relay would dial it) is the IP of a running pod
    /// in the namespace and something answers on that port through it:
    /// no relay pod to start and no extra hop for every byte. `None` (use
    /// a relay) otherwise, e.g. when the user may not list pods or the
    /// server listens on the pod's IP only (port-forward reaches the pod's
    /// loopback).
    pub async fn direct(pods: &Api<Pod>, address: &str) -> Option<Tunnel> {
        let address: SocketAddr = address.parse().ok()?;
        let ip = address.ip().to_string();
        let listed = pods
            .list(&ListParams::default().fields(&format!("status.podIP={ip}")))
            .await
            .map_err(|error| tracing::debug!(%error, "cannot list pods; a relay it is"))
            .ok()?;
        let pod = pod_with_ip(&listed.items, &ip)?;
        let tunnel = Tunnel::listen(pods.clone(), pod.clone(), address.port(), false)
            .await
            .ok()?;
        if something_answers(tunnel.local).await {
            tracing::info!(%pod, port = address.port(), "registry pod reached directly");
            Some(tunnel)
        } else {
            tracing::info!(%pod, port = address.port(), "registry pod does not answer on its loopback; a relay it is");
            tunnel.close().await;
            None
        }
    }

    async fn listen(pods: Api<Pod>, pod: String, port: u16, owned: bool) -> anyhow::Result<Tunnel> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let local = listener.local_addr()?;
        tracing::debug!(%pod, %local, port, "tunnel open");
        let accept = tokio::spawn(forward_connections(
            listener,
            pods.clone(),
            pod.clone(),
            port,
        ));
        Ok(Tunnel {
            pods,
            pod,
            owned,
            local,
            accept,
        })
    }

    /// The pod the tunnel reaches.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// The `HOST:PORT` that reaches the relayed address.
    pub fn address(&self) -> String {
        self.local.to_string()
    }

    /// Stops listening and deletes the pod if the tunnel started it.
    pub async fn close(self) {
        self.accept.abort();
        if self.owned {
            delete(&self.pods, &self.pod).await;
        }
    }
}

/// The running pod (not being deleted) whose IP is `ip`; host-network pods
/// share their node's IP but also its loopback, so any of them will do.
pub fn pod_with_ip(pods: &[Pod], ip: &str) -> Option<String> {
    pods.iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| {
            pod.status.as_ref().is_some_and(|status| {
                status.phase.as_deref() == Some("Running") && status.pod_ip.as_deref() == Some(ip)
            })
        })
        .filter_map(|pod| pod.metadata.name.clone())
        .min()
}

/// Whether anything answers through the tunnel: a plain `GET /v2/` and at
/// least one byte back (a TLS server answers it with an HTTP 400). The
/// port-forward itself ends at once when nothing listens on the port.
async fn something_answers(local: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(local).await.ok()?;
        stream
            .write_all(b"GET /v2/ HTTP/1.1\r\nHost: lifeboat\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut byte = [0u8; 1];
        Some(stream.read(&mut byte).await.ok()? > 0)
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// How long the probe of a registry pod may take before a relay is used.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until `condition` holds for the pod, or fails when it stopped
/// first or did not get there in [`START_TIMEOUT`].
pub async fn wait_for(
    pods: &Api<Pod>,
    name: &str,
    condition: fn(Option<&Pod>) -> bool,
) -> anyhow::Result<Pod> {
    let ready = await_condition(pods.clone(), name, move |pod: Option<&Pod>| {
        condition(pod) || has_failed(pod)
    });
    let pod = match tokio::time::timeout(START_TIMEOUT, ready).await {
        Ok(Ok(Some(pod))) => pod,
        Ok(Ok(None)) => bail!("pod {name} was deleted before it started"),
        Ok(Err(error)) => return Err(error).context("waiting for the pod"),
        Err(_) => bail!("pod {name} did not start within {START_TIMEOUT:?}"),
    };
    if !condition(Some(&pod)) {
        bail!(
            "pod {name} stopped before it was ready{}",
            termination_message(&pod)
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
    }
    Ok(pod)
}

/// Whether the pod's first container runs.
pub fn is_running(pod: Option<&Pod>) -> bool {
    pod.and_then(|pod| pod.status.as_ref())
        .and_then(|status| status.container_statuses.as_ref())
        .and_then(|statuses| statuses.first())
        .and_then(|status| status.state.as_ref())
        .is_some_and(|state| state.running.is_some())
}

/// The first container's exit code and termination message, once it ended.
pub fn terminated(pod: &Pod) -> Option<(i32, String)> {
    let state = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .as_ref()?;
    Some((state.exit_code, state.message.clone().unwrap_or_default()))
}

fn termination_message(pod: &Pod) -> Option<String> {
    terminated(pod)
        .map(|(code, message)| {
            format!(
                "exit code {code}, {}",
                crate::nodes::report_message(&message)
            )
        })
        .or_else(|| {
            pod.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|s| s.first())
                .and_then(|s| s.state.as_ref())
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.clone())
        })
}

pub async fn delete(pods: &Api<Pod>, name: &str) {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    if let Err(error) = pods.delete(name, &params).await {
        eprintln!("warning: could not delete pod {name}: {error}");
    }
}

/// How long opening one port-forward stream may take.
const STREAM_TIMEOUT: Duration = Duration::from_secs(20);
/// A forwarded connection on which nothing moved either way for this long
/// is cut: the registry client's own read timeout is shorter, so it sees
/// the silence first and fails (or retries) instead of waiting forever.
pub const IDLE: Duration = Duration::from_secs(90);

/// One port-forward stream to `port` of `pod`, and the task that moves its
/// bytes (it ends with the stream).
pub async fn open_stream(
    pods: &Api<Pod>,
    pod: &str,
    port: u16,
) -> anyhow::Result<(DuplexStream, JoinHandle<anyhow::Result<()>>)> {
    tokio::time::timeout(STREAM_TIMEOUT, portforward::open(pods, pod, port))
        .await
        .with_context(|| format!("port-forward to {pod} did not open in {STREAM_TIMEOUT:?}"))?
        .with_context(|| format!("port-forward to {pod}"))
}

/// One port-forward stream per local connection, for as long as the tunnel lives.
async fn forward_connections(listener: TcpListener, pods: Api<Pod>, pod: String, port: u16) {
    loop {
        let Ok((local, _)) = listener.accept().await else {
            continue;
        };
        let pods = pods.clone();
        let pod = pod.clone();
        tokio::spawn(async move {
            let (remote, forwarder) = match open_stream(&pods, &pod, port).await {
                Ok(opened) => opened,
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "port-forward failed");
                    return;
                }
            };
            tracing::debug!(%pod, "port-forward stream open");
            let _ = local.set_nodelay(true);
            if let Err(error) = registry_transfer::splice::splice(local, remote, IDLE).await {
                tracing::debug!(%error, "forwarded connection ended");
            }
            let _ = tokio::time::timeout(STREAM_TIMEOUT, forwarder).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, phase: &str, deleting: bool) -> Pod {
        let mut metadata = serde_json::json!({"name": name});
        if deleting {
            metadata["deletionTimestamp"] = "2026-12-05T06:00:00Z".into();
        }
        serde_json::from_value(serde_json::json!({
            "metadata": metadata,
            "status": {"phase": phase, "podIP": ip},
        }))
        .unwrap()
    }

    #[test]
    fn the_registry_pod_is_the_running_one_with_that_ip() {
        let pods = [
            pod("old", "10.244.1.7", "Running", true),
            pod("done", "10.244.1.7", "Succeeded", false),
            pod("other", "10.244.1.8", "Running", false),
            pod("registry", "10.244.1.7", "Running", false),
        ];
        assert_eq!(
            pod_with_ip(&pods, "10.244.1.7").as_deref(),
            Some("registry")
        );
        assert_eq!(pod_with_ip(&pods, "10.244.1.9"), None);
        assert_eq!(pod_with_ip(&pods[..3], "10.244.1.7"), None);
    }
}
