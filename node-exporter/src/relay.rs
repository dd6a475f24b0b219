//! The `relay` command: `kubectl lifeboat export/import` reach a registry
//! that only the cluster can reach (a Service name, a pod address) through
//! a pod port-forward to this relay; each accepted connection is passed on,
//! byte for byte, to `--to`. No HTTP is parsed here: TLS, credentials and
//! digest checks stay between the plugin and the registry.
//!
//! It exits when its time is up or on SIGTERM (the plugin deletes the pod
//! when it is done), whichever comes first.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::cli::Options;
use crate::error::Error;

/// Relays until the deadline or `stop`. `Ok` when stopped or timed out:
/// the relay has no result of its own, its client has.
pub async fn run(
    options: &Options,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let to = options.relay_to.clone().unwrap_or_default();
    let address = SocketAddr::from(([0, 0, 0, 0], options.listen_port.unwrap_or(0)));
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| Error::Io {
            context: "cannot listen on",
            path: address.to_string().into(),
            source,
        })?;
    tracing::info!(%address, %to, "relaying");
    let deadline = tokio::time::sleep(Duration::from_secs(options.serve_seconds));
    let mut deadline = std::pin::pin!(deadline);
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            () = &mut deadline => {
                tracing::info!("relay time is up");
                return Ok(());
            }
            () = &mut stop => return Ok(()),
            accepted = listener.accept() => {
                let Ok((client, peer)) = accepted else { continue };
                let to = to.clone();
                tokio::spawn(async move { relay_one(client, peer, &to).await });
            }
        }
    }
}

/// A relayed connection on which nothing moved for this long is cut (the
/// plugin's engine gives up after 60 s of silence itself).
const IDLE: Duration = Duration::from_secs(90);

async fn relay_one(client: TcpStream, peer: SocketAddr, to: &str) {
    let upstream = match TcpStream::connect(to).await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::warn!(%peer, to, %error, "cannot connect");
            return;
        }
    };
    // Small requests (HEADs, manifest PUTs) go out at once.
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    match registry_transfer::splice::splice(client, upstream, IDLE).await {
        Ok((sent, received)) => tracing::debug!(%peer, sent, received, "connection done"),
        Err(error) => tracing::debug!(%peer, %error, "connection ended"),
    }
}
