//! One pod port-forward stream over the API server's WebSocket protocol
//! (`v4.channel.k8s.io`: binary messages whose first byte names the
//! channel, 0 for the port's data and 1 for its errors; each channel's
//! first message is the port number).
//!
//! kube's own `Portforwarder` speaks the same protocol but reads what it
//! sends in 4 KiB pieces and flushes each as its own WebSocket message:
//! 262,144 messages per GiB, each one a TLS record here and a message the
//! kubelet decodes and writes on its own. Uploads through it ran at half
//! the speed of downloads (issue 18's import benchmark). Here a message
//! carries whatever the local side has written, up to [`MESSAGE_BYTES`].

use bytes::{BufMut as _, Bytes, BytesMut};
use futures::{SinkExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Largest payload of one message sent to the pod: large enough that
/// per-message costs vanish, small enough to stay far below the
/// kubelet's message limit (32 MiB) and to keep memory per stream flat.
const MESSAGE_BYTES: usize = 256 * 1024;
/// Bytes buffered between the local side and the WebSocket, each way.
const LOCAL_BUFFER: usize = 1024 * 1024;

const DATA: u8 = 0;
const ERROR: u8 = 1;

/// What one message from the pod means.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// Bytes from the pod's port, for the local side.
    Data(&'a [u8]),
    /// Nothing to do (a channel's opening message, an empty one).
    Nothing,
    /// The kubelet could not reach the port: the stream is over.
    Failed(String),
}

/// Reads the messages from the pod: each channel opens with the port
/// number (two bytes, little-endian), then carries data or an error.
#[derive(Debug)]
pub struct InboundChannels {
    port: u16,
    data_opened: bool,
    error_opened: bool,
}

impl InboundChannels {
    pub fn new(port: u16) -> InboundChannels {
        InboundChannels {
            port,
            data_opened: false,
            error_opened: false,
        }
    }

    /// The meaning of one binary message (channel byte included).
    pub fn on_message<'a>(&mut self, message: &'a [u8]) -> Inbound<'a> {
        let Some((&channel, payload)) = message.split_first() else {
            return Inbound::Nothing;
        };
        let opened = match channel {
            DATA => &mut self.data_opened,
            ERROR => &mut self.error_opened,
            other => return Inbound::Failed(format!("message on unknown channel {other}")),
        };
        if !*opened {
            *opened = true;
            return match <[u8; 2]>::try_from(payload).map(u16::from_le_bytes) {
                Ok(port) if port == self.port => Inbound::Nothing,
                _ => Inbound::Failed(format!(
                    "channel {channel} opened with {payload:?}, not port {}",
                    self.port
                )),
            };
        }
        match channel {
            DATA if !payload.is_empty() => Inbound::Data(payload),
            ERROR if !payload.is_empty() => {
                Inbound::Failed(String::from_utf8_lossy(payload).into_owned())
            }
            _ => Inbound::Nothing,
        }
    }
}

/// Opens a port-forward to `port` of `pod` and returns the local end of it
/// (bytes written to it reach the port, bytes from the port can be read
/// from it) and the task that moves them, which ends with the stream.
pub async fn open(
    pods: &Api<Pod>,
    pod: &str,
    port: u16,
) -> kube::Result<(DuplexStream, JoinHandle<anyhow::Result<()>>)> {
    let request = kube::core::Request::new(pods.resource_url())
        .portforward(pod, &[port])
        .map_err(kube::Error::BuildRequest)?;
    let websocket = pods
        .clone()
        .into_client()
        .connect(request)
        .await?
        .into_stream();
    let (local, ours) = tokio::io::duplex(LOCAL_BUFFER);
    let task = tokio::spawn(pump(websocket, ours, port));
    Ok((local, task))
}

/// Moves bytes between the local end and the WebSocket until the pod side
/// ends (or fails); when the local side stops writing, the WebSocket is
/// closed and what the pod still sends is delivered.
pub async fn pump<S, L>(websocket: WebSocketStream<S>, local: L, port: u16) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    L: AsyncRead + AsyncWrite,
{
    let (mut sink, mut messages) = websocket.split();
    let (mut local_read, mut local_write) = tokio::io::split(local);
    let to_pod = async {
        let mut buffer = BytesMut::new();
        loop {
            // Reuses the allocation once the last message has been sent.
            buffer.reserve(MESSAGE_BYTES + 1);
            buffer.put_u8(DATA);
            let read = (&mut local_read)
                .take(MESSAGE_BYTES as u64)
                .read_buf(&mut buffer)
                .await?;
            if read == 0 {
                // The protocol has no half-close: closing is how the pod
                // learns the local side is done.
                let _ = sink.send(Message::Close(None)).await;
                return anyhow::Ok(());
            }
            let message: Bytes = buffer.split().freeze();
            sink.send(Message::Binary(message)).await?;
        }
    };
    let from_pod = async {
        let mut channels = InboundChannels::new(port);
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(message) => message,
                // The far side hung up without the closing handshake (the
                // API server does when the pod's connection ends): the
                // end of the stream, as a TCP FIN would be. A reply cut
                // short is the local HTTP client's to notice.
                Err(
                    WsError::ConnectionClosed
                    | WsError::AlreadyClosed
                    | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
                ) => break,
                Err(error) => return Err(error.into()),
            };
            match message {
                Message::Binary(bytes) => match channels.on_message(&bytes) {
                    Inbound::Data(payload) => local_write.write_all(payload).await?,
                    Inbound::Nothing => {}
                    Inbound::Failed(error) => {
                        let _ = local_write.shutdown().await;
                        anyhow::bail!("port-forward to port {port}: {error}");
                    }
                },
                Message::Close(_) => break,
                _ => {}
            }
        }
        local_write.shutdown().await?;
        anyhow::Ok(())
    };
    tokio::pin!(to_pod, from_pod);
    tokio::select! {
        done = &mut from_pod => done,
        sent = &mut to_pod => {
            sent?;
            from_pod.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::Role;

    #[test]
    fn channels_open_with_the_port_then_carry_data_or_an_error() {
        let mut channels = InboundChannels::new(7070);
        let port = 7070u16.to_le_bytes();
        assert_eq!(
            channels.on_message(&[DATA, port[0], port[1]]),
            Inbound::Nothing
        );
        assert_eq!(
            channels.on_message(&[DATA, 1, 2, 3]),
            Inbound::Data(&[1, 2, 3])
        );
        // Two bytes after the opening are data, not a port.
        assert_eq!(channels.on_message(&[DATA, 9, 9]), Inbound::Data(&[9, 9]));
        assert_eq!(
            channels.on_message(&[ERROR, port[0], port[1]]),
            Inbound::Nothing
        );
        assert_eq!(channels.on_message(&[ERROR]), Inbound::Nothing);
        assert_eq!(
            channels.on_message(b"\x01connection refused"),
            Inbound::Failed("connection refused".into())
        );
        assert_eq!(channels.on_message(&[]), Inbound::Nothing);
        assert!(matches!(channels.on_message(&[3, 0]), Inbound::Failed(_)));
    }

    #[test]
    fn a_channel_opened_for_another_port_is_refused() {
        let mut channels = InboundChannels::new(7070);
        let other = 5000u16.to_le_bytes();
        assert!(matches!(
            channels.on_message(&[DATA, other[0], other[1]]),
            Inbound::Failed(_)
        ));
        let mut channels = InboundChannels::new(7070);
        assert!(matches!(
            channels.on_message(&[DATA, 1, 2, 3]),
            Inbound::Failed(_)
        ));
    }

    /// A kubelet stand-in: opens both channels, echoes data back
    /// upper-cased, records the sizes of the messages it got, and closes
    /// when the client does.
    async fn kubelet(socket: tokio::io::DuplexStream, port: u16) -> (Vec<usize>, Vec<u8>) {
        let mut websocket = WebSocketStream::from_raw_socket(socket, Role::Server, None).await;
        let opening = port.to_le_bytes();
        for channel in [DATA, ERROR] {
            websocket
                .send(Message::binary(vec![channel, opening[0], opening[1]]))
                .await
                .unwrap();
        }
        let (mut sizes, mut received) = (Vec::new(), Vec::new());
        while let Some(message) = websocket.next().await {
            match message.unwrap() {
                Message::Binary(bytes) => {
                    assert_eq!(bytes[0], DATA);
                    sizes.push(bytes.len() - 1);
                    received.extend_from_slice(&bytes[1..]);
                    let mut echo = bytes.to_vec();
                    echo[1..].make_ascii_uppercase();
                    websocket.send(Message::binary(echo)).await.unwrap();
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = websocket.close(None).await;
        (sizes, received)
    }

    #[tokio::test]
    async fn bytes_go_both_ways_in_large_messages() {
        let (client_socket, server_socket) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(kubelet(server_socket, 7070));
        let websocket = WebSocketStream::from_raw_socket(client_socket, Role::Client, None).await;
        let (mut local, ours) = tokio::io::duplex(LOCAL_BUFFER);
        let pump = tokio::spawn(pump(websocket, ours, 7070));
        let sent: Vec<u8> = (0..3 * MESSAGE_BYTES + 17)
            .map(|i| b"abcdefghij"[i % 10])
            .collect();
        let (mut reader, mut writer) = tokio::io::split(&mut local);
        let write = async {
            writer.write_all(&sent).await.unwrap();
            writer.shutdown().await.unwrap();
        };
        let mut echoed = Vec::new();
        let read = reader.read_to_end(&mut echoed);
        let ((), read) = tokio::join!(write, read);
        read.unwrap();
        pump.await.unwrap().unwrap();
        let (sizes, received) = server.await.unwrap();
        assert_eq!(received, sent);
        assert_eq!(echoed, sent.to_ascii_uppercase());
        assert!(sizes.iter().all(|&size| size <= MESSAGE_BYTES));
        // Far fewer messages than 4 KiB pieces would make.
        assert!(
            sizes.len() < sent.len() / (16 * 1024),
            "{} messages for {} bytes",
            sizes.len(),
            sent.len()
        );
    }

    #[tokio::test]
    async fn an_error_from_the_kubelet_ends_the_stream_with_it() {
        let (client_socket, server_socket) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut websocket =
                WebSocketStream::from_raw_socket(server_socket, Role::Server, None).await;
            let opening = 7070u16.to_le_bytes();
            for channel in [DATA, ERROR] {
                websocket
                    .send(Message::binary(vec![channel, opening[0], opening[1]]))
                    .await
                    .unwrap();
            }
            let mut error = vec![ERROR];
            error.extend_from_slice(b"dial tcp 127.0.0.1:7070: connection refused");
            websocket.send(Message::binary(error)).await.unwrap();
            websocket
        });
        let websocket = WebSocketStream::from_raw_socket(client_socket, Role::Client, None).await;
        let (mut local, ours) = tokio::io::duplex(LOCAL_BUFFER);
        let error = pump(websocket, ours, 7070).await.unwrap_err();
        assert!(
            error.to_string().contains("connection refused"),
            "{error:#}"
        );
        // The local side sees the end of the stream.
        let mut rest = Vec::new();
        local.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        drop(server.await.unwrap());
    }
}
