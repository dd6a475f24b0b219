//! A scripted Kubernetes API server for the controllers' IO tests (kube's
//! `tower-test` pattern): a [`kube::Client`] whose requests go to a task
//! that expects them in a given order, answers each with a canned response,
//! and records what it received. A request that does not match the script,
//! or comes after it, fails the test; so does a script the code under test
//! did not play to its end.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use kube::client::Body;
use tokio::sync::oneshot;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// How long the server waits for the next scripted request.
const PATIENCE: Duration = Duration::from_secs(10);

/// One request the server expects, and its answer.
pub(crate) struct Expected {
    method: Method,
    path: String,
    status: StatusCode,
    body: serde_json::Value,
}

/// Expects `method path` (the path without its query) and answers `status`
/// with `body` as JSON.
pub(crate) fn expect(method: Method, path: &str, status: u16, body: serde_json::Value) -> Expected {
    Expected {
        method,
        path: path.to_owned(),
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    }
}

/// Expects an Event to be published in `namespace` (events.k8s.io), and
/// accepts it.
pub(crate) fn expect_event(namespace: &str) -> Expected {
    expect(
        Method::POST,
        &format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events"),
        201,
        serde_json::json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": namespace},
            "eventTime": "2027-01-01T00:00:00.000000Z",
        }),
    )
}

/// A Kubernetes `Status` error body, as the API server sends with 4xx/5xx.
pub(crate) fn status_error(code: u16, reason: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure",
        "code": code, "reason": reason, "message": message,
    })
}

/// One request the server received.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) content_type: String,
    /// The request body as JSON (`Null` when empty).
    pub(crate) body: serde_json::Value,
}

/// The running server; [`ApiServer::finish`] after the code under test.
pub(crate) struct ApiServer {
    done: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<Vec<Received>, String>>,
}

impl ApiServer {
    /// Ends the script: the requests received, in order. Panics (fails the
    /// test) when a request did not match, came after the script, or a
    /// scripted one never came.
    pub(crate) async fn finish(mut self) -> Vec<Received> {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
        match self.task.await {
            Ok(Ok(received)) => received,
            Ok(Err(problem)) => panic!("API server script: {problem}"),
            Err(e) => panic!("API server task: {e}"),
        }
    }
}

/// A client talking to a server that plays `script`.
pub(crate) fn scripted(script: Vec<Expected>) -> (kube::Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let (done, finished) = oneshot::channel();
    let task = tokio::spawn(serve(handle, script, finished));
    (
        client,
        ApiServer {
            done: Some(done),
            task,
        },
    )
}

async fn serve(
    mut handle: Handle,
    script: Vec<Expected>,
    mut finished: oneshot::Receiver<()>,
) -> Result<Vec<Received>, String> {
    let mut received = Vec::new();
    for expected in script {
        let next = tokio::select! {
            next = tokio::time::timeout(PATIENCE, handle.next_request()) => next,
            _ = &mut finished => {
                return Err(format!(
                    "the code finished before requesting {} {} (received: {received:?})",
                    expected.method, expected.path
                ));
            }
        };
        let Ok(Some((request, respond))) = next else {
            return Err(format!(
                "no request came for {} {} (received: {received:?})",
                expected.method, expected.path
            ));
        };
        let request = read(request).await;
        if request.method != expected.method || request.path != expected.path {
            return Err(format!(
                "expected {} {}, got {} {}?{} (received before: {received:?})",
                expected.method, expected.path, request.method, request.path, request.query
            ));
        }
        received.push(request);
        respond.send_response(json_response(expected.status, &expected.body));
    }
    // After the script: anything more is a failure, answered with 500 so
    // the code under test does not hang.
    tokio::select! {
        extra = handle.next_request() => match extra {
            Some((request, respond)) => {
                let request = read(request).await;
                respond.send_response(json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &status_error(500, "InternalError", "not in the script"),
                ));
                Err(format!("unexpected request after the script: {request:?}"))
            }
            None => Ok(received),
        },
        _ = finished => Ok(received),
    }
}

async fn read(request: Request<Body>) -> Received {
    let (parts, body) = request.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    Received {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string().into_bytes()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
