//! node-exporter's command line, as the operator builds it.
//!
//! node-exporter's own parser (`node-exporter/src/cli.rs`) accepts more
//! (environment variables, flags for people running it by hand); the
//! flags named here are the ones the operator uses, spelled once.

use std::fmt;

use crate::image::{ExportImage, ImageSource, ImportImage};

pub const EXPORT: &str = "export";
pub const INVENTORY: &str = "inventory";
pub const IMPORT: &str = "import";
pub const SERVE: &str = "serve";
pub const RELAY: &str = "relay";
pub const FLAG_RELAY_TO: &str = "--to";
pub const FLAG_CA_BUNDLE: &str = "--ca-bundle";
pub const FLAG_FROM_PEER: &str = "--from-peer";
pub const FLAG_TOKEN_FILE: &str = "--token-file";
pub const FLAG_LISTEN: &str = "--listen";
pub const FLAG_SERVE_SECONDS: &str = "--serve-seconds";
pub const FLAG_IMAGE: &str = "--image";
pub const FLAG_PLAIN_HTTP: &str = "--plain-http";
pub const FLAG_SOCKET: &str = "--socket";
pub const FLAG_CONTENT_STORE: &str = "--content-store";
pub const FLAG_DOCKER_CONFIG: &str = "--docker-config";
pub const FLAG_LOOPBACK: &str = "--loopback";
pub const FLAG_FROM_TUNNEL: &str = "--from-tunnel";

/// The environment variable node-exporter takes containerd's content store
/// directory from (the same as [`FLAG_CONTENT_STORE`]).
pub const ENV_CONTENT_STORE: &str = "NODE_EXPORTER_CONTENT_STORE";
/// Where node pods mount containerd's content store, read-only.
pub const CONTENT_STORE_MOUNT: &str = "/var/lib/lifeboat/containerd-content";
/// containerd's content store on a node: the `io.containerd.content.v1.content`
/// plugin under containerd's default root.
pub const DEFAULT_CONTENT_STORE: &str = "/var/lib/containerd/io.containerd.content.v1.content";

/// `node-exporter export --image SRC[=DEST]... [--plain-http HOST]...
/// [--socket PATH] [--docker-config PATH]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportArguments {
    pub images: Vec<ExportImage>,
    /// Registries to talk plain HTTP to.
    pub plain_http: Vec<String>,
    /// The containerd socket inside the pod.
    pub socket: Option<String>,
    /// A mounted `.dockerconfigjson` with push credentials.
    pub docker_config: Option<String>,
}

impl ExportArguments {
    /// The arguments after the program name.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![EXPORT.to_owned()];
        for image in &self.images {
            args.extend([FLAG_IMAGE.to_owned(), image.to_string()]);
        }
        for registry in &self.plain_http {
            args.extend([FLAG_PLAIN_HTTP.to_owned(), registry.clone()]);
        }
        if let Some(socket) = &self.socket {
            args.extend([FLAG_SOCKET.to_owned(), socket.clone()]);
        }
        if let Some(path) = &self.docker_config {
            args.extend([FLAG_DOCKER_CONFIG.to_owned(), path.clone()]);
        }
        args
    }
}

/// `node-exporter inventory [--image SRC]... [--socket PATH]`: read-only,
/// no destinations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InventoryArguments {
    pub images: Vec<ImageSource>,
    pub socket: Option<String>,
}

impl InventoryArguments {
    /// The arguments after the program name.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![INVENTORY.to_owned()];
        for image in &self.images {
            args.extend([FLAG_IMAGE.to_owned(), image.to_string()]);
        }
        if let Some(socket) = &self.socket {
            args.extend([FLAG_SOCKET.to_owned(), socket.clone()]);
        }
        args
    }
}

/// `--ca-bundle REGISTRY=PATH`: a mounted PEM bundle trusted (besides the
/// system roots) for one registry, as the operator trusts it. Valid in
/// every mode that talks to a registry; the operator appends
/// [`ca_bundle_args`] to the arguments it builds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaBundleArgument {
    pub registry: String,
    pub path: String,
}

impl CaBundleArgument {
    /// Parses `REGISTRY=PATH` (a registry host never contains `=`).
    pub fn parse(input: &str) -> Option<CaBundleArgument> {
        let (registry, path) = input.split_once('=')?;
        (!registry.is_empty() && !path.is_empty()).then(|| CaBundleArgument {
            registry: registry.to_owned(),
            path: path.to_owned(),
        })
    }
}

impl fmt::Display for CaBundleArgument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.registry, self.path)
    }
}

/// The `--ca-bundle` arguments for `bundles`.
pub fn ca_bundle_args(bundles: &[CaBundleArgument]) -> Vec<String> {
    bundles
        .iter()
        .flat_map(|bundle| [FLAG_CA_BUNDLE.to_owned(), bundle.to_string()])
        .collect()
}

/// `node-exporter import --image NAME[=FROM]... [--from-peer HOST:PORT
/// --token-file PATH] [--plain-http HOST]... [--ca-bundle REG=PATH]...
/// [--socket PATH] [--docker-config PATH]`: writes images into the node's
/// containerd, pulled from a registry (`FROM`) or from a peer node's
/// `serve`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportArguments {
    pub images: Vec<ImportImage>,
    /// A peer node-exporter `serve` (its pod IP and port) to pull from
    /// instead of a registry.
    pub from_peer: Option<String>,
    /// The mounted one-time token the peer expects.
    pub token_file: Option<String>,
    /// `kubectl lifeboat import --to-nodes`: listen on the pod's loopback
    /// at this port for the plugin's port-forward connections and pull
    /// every image through them (the plugin serves the archive there).
    pub from_tunnel: Option<u16>,
    pub plain_http: Vec<String>,
    pub ca_bundles: Vec<CaBundleArgument>,
    pub socket: Option<String>,
    pub docker_config: Option<String>,
}

impl ImportArguments {
    /// The arguments after the program name.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![IMPORT.to_owned()];
        for image in &self.images {
            args.extend([FLAG_IMAGE.to_owned(), image.to_string()]);
        }
        if let Some(peer) = &self.from_peer {
            args.extend([FLAG_FROM_PEER.to_owned(), peer.clone()]);
        }
        if let Some(path) = &self.token_file {
            args.extend([FLAG_TOKEN_FILE.to_owned(), path.clone()]);
        }
        if let Some(port) = self.from_tunnel {
            args.extend([FLAG_FROM_TUNNEL.to_owned(), port.to_string()]);
        }
        for registry in &self.plain_http {
            args.extend([FLAG_PLAIN_HTTP.to_owned(), registry.clone()]);
        }
        args.extend(ca_bundle_args(&self.ca_bundles));
        if let Some(socket) = &self.socket {
            args.extend([FLAG_SOCKET.to_owned(), socket.clone()]);
        }
        if let Some(path) = &self.docker_config {
            args.extend([FLAG_DOCKER_CONFIG.to_owned(), path.clone()]);
        }
        args
    }
}

/// `node-exporter serve --image SRC... --listen PORT (--token-file PATH |
/// --loopback) [--serve-seconds N] [--socket PATH]`: serves the blobs of
/// the named images (and nothing else) from this node's content store to
/// one importing peer that presents the token, until it says it is done or
/// the time is up. With `--loopback` it listens on the pod's 127.0.0.1
/// only, which nothing but a port-forward through the API server reaches
/// (`kubectl lifeboat export --from-node`), and needs no token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServeArguments {
    pub images: Vec<ImageSource>,
    pub listen_port: u16,
    pub token_file: Option<String>,
    pub loopback: bool,
    pub serve_seconds: Option<u64>,
    pub socket: Option<String>,
}

impl ServeArguments {
    /// The arguments after the program name.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![SERVE.to_owned()];
        for image in &self.images {
            args.extend([FLAG_IMAGE.to_owned(), image.to_string()]);
        }
        args.extend([FLAG_LISTEN.to_owned(), self.listen_port.to_string()]);
        if let Some(path) = &self.token_file {
            args.extend([FLAG_TOKEN_FILE.to_owned(), path.clone()]);
        }
        if self.loopback {
            args.push(FLAG_LOOPBACK.to_owned());
        }
        if let Some(seconds) = self.serve_seconds {
            args.extend([FLAG_SERVE_SECONDS.to_owned(), seconds.to_string()]);
        }
        if let Some(socket) = &self.socket {
            args.extend([FLAG_SOCKET.to_owned(), socket.clone()]);
        }
        args
    }
}

/// `node-exporter relay --listen PORT --to HOST:PORT [--serve-seconds N]`:
/// `kubectl lifeboat export/import` reach a registry that only the cluster
/// can reach through a pod port-forward to this relay, which passes each
/// connection on to `to` unchanged (TLS stays end to end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayArguments {
    pub listen_port: u16,
    pub to: String,
    /// The relay exits after this long, whatever happens to its client.
    pub serve_seconds: Option<u64>,
}

impl RelayArguments {
    /// The arguments after the program name.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            RELAY.to_owned(),
            FLAG_LISTEN.to_owned(),
            self.listen_port.to_string(),
            FLAG_RELAY_TO.to_owned(),
            self.to.clone(),
        ];
        if let Some(seconds) = self.serve_seconds {
            args.extend([FLAG_SERVE_SECONDS.to_owned(), seconds.to_string()]);
        }
        args
    }
}
