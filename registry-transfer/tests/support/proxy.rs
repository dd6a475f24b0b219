//! A deliberately broken HTTP proxy in front of a registry, for the source
//! side (GET and HEAD only, one request per connection). It can flip a byte
//! of a blob, cut a blob download short, or answer 429 with Retry-After.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug)]
pub enum Fault {
    /// Forward everything unchanged.
    None,
    /// XOR the byte at `offset` of every GET body whose path contains `path`.
    FlipByte { path: String, offset: u64 },
    /// Close the connection after `bytes` body bytes of the first `times`
    /// GETs whose path contains `path`.
    DropAfter {
        path: String,
        bytes: u64,
        times: usize,
    },
    /// Answer the first `times` requests with 429 and `Retry-After`.
    TooManyRequests { times: usize, retry_after_secs: u64 },
}

struct State {
    fault: Fault,
    /// Request heads seen ("GET /v2/... HTTP/1.1\r\nHost: ..."), in order.
    requests: Vec<String>,
    /// Requests that got a fault.
    faults_injected: usize,
}

pub struct BrokenProxy {
    pub host: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl BrokenProxy {
    pub async fn start(upstream_port: u16, fault: Fault) -> BrokenProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let host = format!("127.0.0.1:{}", listener.local_addr().expect("addr").port());
        let state = Arc::new(Mutex::new(State {
            fault,
            requests: Vec::new(),
            faults_injected: 0,
        }));
        let task_state = state.clone();
        let task = tokio::spawn(async move {
            // Bounded: the test drops the proxy, which aborts this loop.
            while let Ok((client, _)) = listener.accept().await {
                let state = task_state.clone();
                tokio::spawn(async move {
                    let _ = serve(client, upstream_port, state).await;
                });
            }
        });
        BrokenProxy { host, state, task }
    }

    /// Request lines seen, in order.
    pub fn requests(&self) -> Vec<String> {
        self.heads()
            .iter()
            .map(|h| h.lines().next().unwrap_or_default().to_owned())
            .collect()
    }

    /// Full request heads seen, in order.
    pub fn heads(&self) -> Vec<String> {
        self.state.lock().expect("state").requests.clone()
    }

    pub fn faults_injected(&self) -> usize {
        self.state.lock().expect("state").faults_injected
    }
}

impl Drop for BrokenProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
        if head.len() > 64 * 1024 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
    Ok(head)
}

/// Replaces any Connection header by `Connection: close`.
fn close_connection(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut lines: Vec<&str> = text
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    let mut out = lines.join("\r\n");
    out.push_str("\r\n\r\n");
    out.into_bytes()
}

async fn serve(
    mut client: TcpStream,
    upstream_port: u16,
    state: Arc<Mutex<State>>,
) -> std::io::Result<()> {
    let head = read_head(&mut client).await?;
    let request_line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let is_get = request_line.starts_with("GET ");
    enum Action {
        Forward,
        Flip(u64),
        Drop(u64),
        TooMany(u64),
    }
    let action = {
        let mut state = state.lock().expect("state");
        state
            .requests
            .push(String::from_utf8_lossy(&head).into_owned());
        let action = match &mut state.fault {
            Fault::None => Action::Forward,
            Fault::FlipByte { path, offset } if is_get && request_line.contains(path.as_str()) => {
                Action::Flip(*offset)
            }
            Fault::DropAfter { path, bytes, times }
                if is_get && *times > 0 && request_line.contains(path.as_str()) =>
            {
                *times -= 1;
                Action::Drop(*bytes)
            }
            Fault::TooManyRequests {
                times,
                retry_after_secs,
            } if *times > 0 => {
                *times -= 1;
                Action::TooMany(*retry_after_secs)
            }
            _ => Action::Forward,
        };
        if !matches!(action, Action::Forward) {
            state.faults_injected += 1;
        }
        action
    };
    if let Action::TooMany(seconds) = action {
        let answer = format!(
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {seconds}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        client.write_all(answer.as_bytes()).await?;
        return client.shutdown().await;
    }
    let mut upstream = TcpStream::connect(("127.0.0.1", upstream_port)).await?;
    upstream.write_all(&close_connection(&head)).await?;
    let response_head = read_head(&mut upstream).await?;
    client.write_all(&close_connection(&response_head)).await?;
    let mut offset = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = upstream.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        let chunk = &mut buffer[..n];
        match action {
            Action::Flip(at) if at >= offset && at < offset + n as u64 => {
                chunk[(at - offset) as usize] ^= 0xff;
            }
            Action::Drop(limit) if offset + n as u64 >= limit => {
                let keep = (limit - offset) as usize;
                client.write_all(&chunk[..keep]).await?;
                // Cut the connection mid-body.
                drop(client);
                return Ok(());
            }
            _ => {}
        }
        client.write_all(chunk).await?;
        offset += n as u64;
    }
    client.shutdown().await
}
