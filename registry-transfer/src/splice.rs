//! Two byte streams joined, as tunnels carry registry traffic (the
//! plugin's port-forward connections, node-exporter's relay and
//! rendezvous), with an idle limit: a connection on which nothing moves
//! either way for `idle` is cut, so a peer that vanished mid-transfer
//! (a deleted pod, a dropped port-forward) ends the copy instead of
//! holding it forever. One direction may rest while the other streams.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;

const BUFFER: usize = 64 * 1024;

/// Copies `a` to `b` and `b` to `a` until both directions end (each end
/// shut down for writing when its reader ends), or until no byte moved
/// for `idle` (`ErrorKind::TimedOut`). Returns the bytes sent each way.
pub async fn splice<A, B>(a: A, b: B, idle: Duration) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let (a_read, a_write) = tokio::io::split(a);
    let (b_read, b_write) = tokio::io::split(b);
    let both = async {
        tokio::try_join!(
            pipe(a_read, b_write, &last, started),
            pipe(b_read, a_write, &last, started)
        )
    };
    let watchdog = async {
        let tick = (idle / 4).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(tick).await;
            let quiet_since = started + Duration::from_millis(last.load(Ordering::Relaxed));
            if quiet_since.elapsed() >= idle {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no bytes either way for {} s", idle.as_secs()),
                ));
            }
        }
    };
    tokio::select! {
        done = both => done,
        timed_out = watchdog => timed_out,
    }
}

async fn pipe<R, W>(
    mut from: R,
    mut to: W,
    last: &AtomicU64,
    started: Instant,
) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; BUFFER];
    let mut total: u64 = 0;
    loop {
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            to.shutdown().await?;
            return Ok(total);
        }
        to.write_all(&buffer[..read]).await?;
        total = total.saturating_add(read as u64);
        let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        last.store(now, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_pass_both_ways_and_ends_propagate() {
        let (mut client, near) = tokio::io::duplex(1024);
        let (far, mut server) = tokio::io::duplex(1024);
        let joined = tokio::spawn(splice(near, far, Duration::from_secs(5)));
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        server.write_all(b"answer!!").await.unwrap();
        server.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer!!");
        assert_eq!(joined.await.unwrap().unwrap(), (7, 8));
    }

    #[tokio::test]
    async fn a_silent_connection_is_cut_a_busy_one_is_not() {
        // Busy one way only, for longer than the idle limit: kept.
        let (mut client, near) = tokio::io::duplex(64);
        let (far, mut server) = tokio::io::duplex(64);
        let joined = tokio::spawn(splice(near, far, Duration::from_millis(200)));
        for _ in 0..8 {
            client.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            server.read_exact(&mut one).await.unwrap();
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
        assert!(!joined.is_finished(), "a connection in use was cut");
        // Then silence: cut within about the limit.
        let started = std::time::Instant::now();
        let error = joined.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
