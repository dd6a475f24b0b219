//! Finding the node's containerd socket.

use std::path::{Path, PathBuf};

use crate::error::Error;

/// Where Kubernetes distributions put containerd's gRPC socket, most common
/// first. RKE2 shares k3s's path.
pub const WELL_KNOWN_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/k3s/containerd/containerd.sock",
    "/run/k0s/containerd.sock",
    "/var/snap/microk8s/common/run/containerd.sock",
];

/// The well-known socket paths under `host_root`: the Job may mount the
/// host's filesystem somewhere other than `/`.
pub fn candidates(host_root: &Path) -> Vec<PathBuf> {
    WELL_KNOWN_SOCKETS
        .iter()
        .map(|path| host_root.join(path.trim_start_matches('/')))
        .collect()
}

/// Picks the socket: an explicit path wins (and must exist, so a typo is not
/// silently replaced by another containerd); otherwise the first well-known
/// path that `is_socket` accepts.
pub fn detect(
    explicit: Option<&Path>,
    host_root: &Path,
    is_socket: impl Fn(&Path) -> bool,
) -> Result<PathBuf, Error> {
    if let Some(path) = explicit {
        // containerd's own clients accept the gRPC address form too.
        let text = path.to_string_lossy();
        let path = Path::new(text.strip_prefix("unix://").unwrap_or(&text));
        return if is_socket(path) {
            Ok(path.to_path_buf())
        } else {
            Err(Error::SocketNotFound {
                tried: vec![path.to_path_buf()],
            })
        };
    }
    let tried = candidates(host_root);
    match tried.iter().find(|path| is_socket(path)) {
        Some(path) => Ok(path.clone()),
        None => Err(Error::SocketNotFound { tried }),
    }
}

/// Whether a Unix socket exists at `path`.
pub fn is_unix_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_wins_and_must_exist() {
        let picked = detect(Some(Path::new("/x/c.sock")), Path::new("/"), |_| true);
        assert_eq!(picked.ok(), Some(PathBuf::from("/x/c.sock")));
        let missing = detect(Some(Path::new("/x/c.sock")), Path::new("/"), |_| false);
        assert!(matches!(missing, Err(Error::SocketNotFound { tried }) if tried.len() == 1));
    }

    #[test]
    fn unix_scheme_prefix_is_accepted() {
        let picked = detect(Some(Path::new("unix:///x/c.sock")), Path::new("/"), |p| {
            p == Path::new("/x/c.sock")
        });
        assert_eq!(picked.ok(), Some(PathBuf::from("/x/c.sock")));
    }

    #[test]
    fn falls_back_through_distributions_under_host_root() {
        let picked = detect(None, Path::new("/host"), |p| {
            p == Path::new("/host/run/k0s/containerd.sock")
        });
        assert_eq!(
            picked.ok(),
            Some(PathBuf::from("/host/run/k0s/containerd.sock"))
        );
        let none = detect(None, Path::new("/"), |_| false);
        assert!(matches!(none, Err(Error::SocketNotFound { tried }) if tried.len() == 4));
    }
}
