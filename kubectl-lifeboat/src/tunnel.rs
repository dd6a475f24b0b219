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
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::await_condition;
use lifeboat_node_protocol::RelayArguments;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::client::Connection;

/// The port the relay listens on inside its pod.
const RELAY_PORT: u16 = 7070;
/// The relay exits by itself after this long even if it is never deleted.
const RELAY_SECONDS: u64 = 6 * 3600;
/// How long the pod may take to start (image present on nodes: seconds).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the node-exporter image name comes from when not given.
pub const OPERATOR_DEPLOYMENT: &str = "lifeboat-operator";
pub const NODE_EXPORTER_IMAGE_ENV: &str = "LIFEBOAT_NODE_EXPORTER_IMAGE";

/// A relay pod and the local port that reaches through it.
pub struct Tunnel {
    pods: Api<Pod>,
    pod: String,
    pub local: SocketAddr,
    accept: JoinHandle<()>,
}

/// The node-exporter image: given, or the one the operator runs nodes' Jobs with.
pub async fn node_exporter_image(
    connection: &Connection,
    given: Option<&str>,
    operator_namespace: &str,
) -> anyhow::Result<String> {
    if let Some(image) = given {
        return Ok(image.to_owned());
    }
    let deployments: Api<Deployment> =
        Api::namespaced(connection.client.clone(), operator_namespace);
    let deployment = deployments.get(OPERATOR_DEPLOYMENT).await.with_context(|| {
        format!(
            "reading deployment {operator_namespace}/{OPERATOR_DEPLOYMENT} for the node-exporter image \
             (or give --node-exporter-image)"
        )
    })?;
    deployment
        .spec
        .and_then(|spec| spec.template.spec)
        .into_iter()
        .flat_map(|spec| spec.containers)
        .flat_map(|container| container.env.unwrap_or_default())
        .find(|env| env.name == NODE_EXPORTER_IMAGE_ENV)
        .and_then(|env| env.value)
        .with_context(|| {
            format!("the operator sets no {NODE_EXPORTER_IMAGE_ENV}; give --node-exporter-image")
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
        let tunnel_pods = pods.clone();
        let ready = await_condition(pods.clone(), &name, |pod: Option<&Pod>| {
            is_ready(pod) || has_failed(pod)
        });
        let started = tokio::time::timeout(START_TIMEOUT, ready).await;
        let pod = match started {
            Ok(Ok(pod)) => pod,
            Ok(Err(error)) => {
                delete(&pods, &name).await;
                return Err(error).context("waiting for the relay pod");
            }
            Err(_) => {
                delete(&pods, &name).await;
                bail!("relay pod {name} was not ready within {START_TIMEOUT:?}");
            }
        };
        if has_failed(pod.as_ref()) {
            delete(&pods, &name).await;
            bail!("relay pod {name} stopped before it was ready");
        }
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let local = listener.local_addr()?;
        tracing::debug!(pod = %name, %local, to, "tunnel open");
        let accept = tokio::spawn(forward_connections(listener, pods.clone(), name.clone()));
        Ok(Tunnel {
            pods: tunnel_pods,
            pod: name,
            local,
            accept,
        })
    }

    /// The `HOST:PORT` that reaches the relayed address.
    pub fn address(&self) -> String {
        self.local.to_string()
    }

    /// Stops listening and deletes the relay pod.
    pub async fn close(self) {
        self.accept.abort();
        delete(&self.pods, &self.pod).await;
    }
}

async fn delete(pods: &Api<Pod>, name: &str) {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    if let Err(error) = pods.delete(name, &params).await {
        eprintln!("warning: could not delete relay pod {name}: {error}");
    }
}

/// One port-forward stream per local connection, for as long as the tunnel lives.
async fn forward_connections(listener: TcpListener, pods: Api<Pod>, pod: String) {
    loop {
        let Ok((mut local, _)) = listener.accept().await else {
            continue;
        };
        let pods = pods.clone();
        let pod = pod.clone();
        tokio::spawn(async move {
            let mut forwarder = match pods.portforward(&pod, &[RELAY_PORT]).await {
                Ok(forwarder) => forwarder,
                Err(error) => {
                    tracing::warn!(%error, "port-forward failed");
                    return;
                }
            };
            let Some(mut remote) = forwarder.take_stream(RELAY_PORT) else {
                return;
            };
            let _ = local.set_nodelay(true);
            if let Err(error) = tokio::io::copy_bidirectional(&mut local, &mut remote).await {
                tracing::debug!(%error, "forwarded connection ended");
            }
            drop(remote);
            let _ = forwarder.join().await;
        });
    }
}
