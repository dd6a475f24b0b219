//! Counts the requests the operator sends to the Kubernetes API server
//! (`lifeboat_kube_api_requests_total{verb,resource}`): what a restore on a
//! cluster of thousands of nodes costs the API server is measured, not
//! guessed (docs/benchmarks.md).

use std::task::{Context, Poll};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;

/// The layer that counts each request once, before it is sent.
#[derive(Clone)]
pub struct ApiRequestCountLayer {
    pub counter: Counter<u64>,
}

impl<S> tower::Layer<S> for ApiRequestCountLayer {
    type Service = ApiRequestCount<S>;
    fn layer(&self, inner: S) -> ApiRequestCount<S> {
        ApiRequestCount {
            inner,
            counter: self.counter.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ApiRequestCount<S> {
    inner: S,
    counter: Counter<u64>,
}

impl<S, B> tower::Service<http::Request<B>> for ApiRequestCount<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let watch = request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true"));
        let verb = if watch {
            "WATCH".to_owned()
        } else {
            request.method().as_str().to_owned()
        };
        self.counter.add(
            1,
            &[
                KeyValue::new("verb", verb),
                KeyValue::new("resource", resource_of(request.uri().path())),
            ],
        );
        self.inner.call(request)
    }
}

/// The resource a request path addresses (`nodes`, `jobs`,
/// `imagerestores/status`): the segment after the group version, or after
/// `namespaces/NAME`, plus a subresource.
pub fn resource_of(path: &str) -> String {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/GROUP/VERSION/...
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    };
    let Some(rest) = rest.filter(|r| !r.is_empty()) else {
        return "other".to_owned();
    };
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    match rest {
        [resource] | [resource, _] => (*resource).to_owned(),
        [resource, _, sub, ..] => format!("{resource}/{sub}"),
        [] => "other".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_resource_and_subresource() {
        assert_eq!(resource_of("/api/v1/nodes"), "nodes");
        assert_eq!(resource_of("/api/v1/nodes/n1"), "nodes");
        assert_eq!(resource_of("/api/v1/namespaces/ns/pods"), "pods");
        assert_eq!(resource_of("/api/v1/namespaces/ns"), "namespaces");
        assert_eq!(resource_of("/api/v1/namespaces"), "namespaces");
        assert_eq!(
            resource_of("/apis/batch/v1/namespaces/lifeboat-system/jobs/j"),
            "jobs"
        );
        assert_eq!(
            resource_of("/apis/lifeboat.dev/v1alpha1/namespaces/ns/imagerestores/r/status"),
            "imagerestores/status"
        );
        assert_eq!(resource_of("/version"), "other");
    }
}
