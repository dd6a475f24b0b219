//! `import --from-tunnel PORT`: the importer pulls an archive that lives on
//! the `kubectl lifeboat` user's machine, which no pod can dial. The
//! plugin dials in instead, by pod port-forward to 127.0.0.1:PORT, and
//! keeps a few such connections waiting; it answers registry requests on
//! them. The importer dials a second loopback listener as it would dial a
//! peer's `serve`; each of its connections is joined to the oldest waiting
//! tunnel connection, so its HTTP requests reach the plugin. Both
//! listeners are on the pod's loopback: nothing else in the cluster
//! reaches them (the import pod has no host network).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::error::Error;

/// A joined connection on which nothing moved for this long is cut: the
/// engine's own read timeout is 60 s, so the engine sees it first.
const IDLE: Duration = Duration::from_secs(90);

/// The loopback address the importer pulls from, and the task that joins
/// connections (aborted when the import is done).
pub struct Rendezvous {
    pub peer: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn bind_error(address: SocketAddr) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io {
        context: "cannot listen on",
        path: address.to_string().into(),
        source,
    }
}

/// Listens for the plugin on 127.0.0.1:`tunnel_port` and for the importer
/// on a free loopback port.
pub async fn open(tunnel_port: u16) -> Result<Rendezvous, Error> {
    let tunnel_address = SocketAddr::from(([127, 0, 0, 1], tunnel_port));
    let tunnel = TcpListener::bind(tunnel_address)
        .await
        .map_err(bind_error(tunnel_address))?;
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let importer = TcpListener::bind(any).await.map_err(bind_error(any))?;
    let peer = importer.local_addr().map_err(bind_error(any))?;
    tracing::info!(tunnel = %tunnel_address, %peer, "waiting for the plugin's connections");
    let task = tokio::spawn(join_connections(tunnel, importer));
    Ok(Rendezvous { peer, task })
}

/// Pairs connections first come, first joined.
async fn join_connections(tunnel: TcpListener, importer: TcpListener) {
    let mut waiting_tunnels: VecDeque<TcpStream> = VecDeque::new();
    let mut waiting_importers: VecDeque<TcpStream> = VecDeque::new();
    loop {
        tokio::select! {
            accepted = tunnel.accept() => {
                if let Ok((stream, _)) = accepted {
                    waiting_tunnels.push_back(stream);
                }
            }
            accepted = importer.accept() => {
                if let Ok((stream, _)) = accepted {
                    waiting_importers.push_back(stream);
                }
            }
        }
        while !waiting_tunnels.is_empty() && !waiting_importers.is_empty() {
            if let (Some(tunnel), Some(importer)) =
                (waiting_tunnels.pop_front(), waiting_importers.pop_front())
            {
                tokio::spawn(async move {
                    let _ = tunnel.set_nodelay(true);
                    match registry_transfer::splice::splice(importer, tunnel, IDLE).await {
                        Ok((sent, received)) => {
                            tracing::debug!(sent, received, "tunnel connection done");
                        }
                        Err(error) => tracing::debug!(%error, "tunnel connection ended"),
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn the_importers_connection_reaches_the_waiting_tunnel_connection() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let rendezvous = open(port).await.unwrap();
        // The plugin dials in first and waits; then the importer asks.
        let mut plugin = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut importer = TcpStream::connect(rendezvous.peer).await.unwrap();
        importer
            .write_all(b"GET /v2/ HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut request = [0u8; 20];
        plugin.read_exact(&mut request).await.unwrap();
        assert_eq!(&request, b"GET /v2/ HTTP/1.1\r\n\r");
        plugin.write_all(b"HTTP/1.1 200 OK").await.unwrap();
        let mut answer = [0u8; 15];
        importer.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200 OK");
        // Only loopback: the tunnel port is not on any other address.
        assert!(rendezvous.peer.ip().is_loopback());
        if let Some(ip) = non_loopback_address() {
            assert!(
                TcpStream::connect((ip, port)).await.is_err(),
                "the tunnel port answers on {ip}"
            );
            assert!(
                TcpStream::connect((ip, rendezvous.peer.port()))
                    .await
                    .is_err()
            );
        }
    }

    /// This machine's address on its default route (no packet is sent).
    fn non_loopback_address() -> Option<std::net::IpAddr> {
        let socket = std::net::UdpSocket::bind(("0.0.0.0", 0)).ok()?;
        socket.connect(("10.255.255.255", 9)).ok()?;
        let ip = socket.local_addr().ok()?.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
    }
}
