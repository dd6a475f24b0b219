//! node-exporter's command line, as the operator builds it.
//!
//! node-exporter's own parser (`node-exporter/src/cli.rs`) accepts more
//! (environment variables, flags for people running it by hand); the
//! flags named here are the ones the operator uses, spelled once.

use crate::image::{ExportImage, ImageSource};

pub const EXPORT: &str = "export";
pub const INVENTORY: &str = "inventory";
pub const FLAG_IMAGE: &str = "--image";
pub const FLAG_PLAIN_HTTP: &str = "--plain-http";
pub const FLAG_SOCKET: &str = "--socket";
pub const FLAG_DOCKER_CONFIG: &str = "--docker-config";

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
