//! What node-exporter tells the operator: one result per image, written as
//! compact JSON to the container's termination message, and the exit code.

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Kubernetes truncates termination messages beyond this.
pub const TERMINATION_MESSAGE_LIMIT: usize = 4096;

/// Exit codes, meant for a Job's `podFailurePolicy`.
pub mod exit {
    /// Every image was exported (preserved or rebuilt) / inventory listed.
    pub const OK: i32 = 0;
    /// Anything not covered below (an internal error, containerd failing).
    pub const OTHER: i32 = 1;
    /// Bad arguments; retrying cannot help.
    pub const USAGE: i32 = 2;
    /// At least one image is not on this node (or only incompletely, with no
    /// way to rebuild it), and nothing failed otherwise: try another node.
    pub const NOT_ON_NODE: i32 = 3;
    /// At least one push to the registry failed: retrying may help.
    pub const PUSH_FAILED: i32 = 4;
    /// No containerd socket could be found or connected to on this node.
    pub const NO_CONTAINERD: i32 = 5;
}

/// Result format version, bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Pushed digest-exact: the registry now serves the original digest.
    Preserved,
    /// Pushed with rebuilt layers: a new digest, not the original.
    Rebuilt,
    Failed,
}

/// The outcome for one requested image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageResult {
    /// The image as requested (reference or digest).
    pub image: String,
    pub status: Status,
    /// Where it was pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The digest the registry now serves for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Rebuilt only: the manifest digest the node had before rebuilding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_digest: Option<String>,
    /// Set when an index was asked for but only one platform's manifest
    /// could be pushed: the index digest that was not restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete_index: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rebuilt_layers: usize,
    /// Bytes uploaded to the registry (blobs it already had not counted).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `PushFailed`: the copy engine's own reason (`Unauthorized`,
    /// `RegistryUnavailable`, `TagConflict`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl ImageResult {
    pub fn failed(image: &str, target: Option<String>, error: &Error) -> ImageResult {
        ImageResult {
            image: image.to_owned(),
            status: Status::Failed,
            target,
            digest: None,
            original_digest: None,
            incomplete_index: None,
            platform: None,
            rebuilt_layers: 0,
            bytes: 0,
            reason: Some(error.reason().to_owned()),
            engine_reason: match error {
                Error::Push { engine_reason, .. } => engine_reason.clone(),
                _ => None,
            },
            message: Some(error.to_string()),
        }
    }
}

/// All results of one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub v: u32,
    pub results: Vec<ImageResult>,
    /// How many results did not fit into the termination message.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: usize,
    /// A failure of the whole run (bad arguments, no containerd), when there
    /// are no per-image results to carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    pub reason: String,
    pub message: String,
}

impl Report {
    pub fn new(results: Vec<ImageResult>) -> Report {
        Report {
            v: FORMAT_VERSION,
            results,
            omitted: 0,
            error: None,
        }
    }

    /// A run that failed before any image could be looked at.
    pub fn run_failed(error: &Error) -> Report {
        Report {
            error: Some(RunError {
                reason: error.reason().to_owned(),
                message: error.to_string(),
            }),
            ..Report::new(Vec::new())
        }
    }

    /// The exit code: push failures first (worth a retry here), then
    /// "not on this node" (worth trying elsewhere), then anything else.
    pub fn exit_code(&self) -> i32 {
        if let Some(error) = &self.error {
            return match error.reason.as_str() {
                "InvalidArguments" | "InvalidReference" => exit::USAGE,
                "ContainerdSocketNotFound" | "ContainerdUnavailable" => exit::NO_CONTAINERD,
                _ => exit::OTHER,
            };
        }
        let failed = self.results.iter().filter(|r| r.status == Status::Failed);
        // A failure without a reason is a bug somewhere; count it as "other".
        let reasons: Vec<&str> = failed.map(|r| r.reason.as_deref().unwrap_or("")).collect();
        if reasons.contains(&"PushFailed") {
            exit::PUSH_FAILED
        } else if reasons.contains(&"InvalidReference") {
            exit::USAGE
        } else if reasons.iter().any(|r| !NOT_ON_NODE_REASONS.contains(r)) {
            exit::OTHER
        } else if !reasons.is_empty() {
            exit::NOT_ON_NODE
        } else {
            exit::OK
        }
    }

    /// Compact JSON that fits `limit` bytes: messages are shortened first,
    /// then trailing results are dropped and counted in `omitted`.
    pub fn termination_message(&self, limit: usize) -> String {
        let render = |report: &Report| serde_json::to_string(report).unwrap_or_default();
        let full = render(self);
        if full.len() <= limit {
            return full;
        }
        let mut shortened = self.clone();
        if let Some(error) = &mut shortened.error {
            truncate_chars(&mut error.message, 1000);
        }
        for result in &mut shortened.results {
            if let Some(message) = &mut result.message {
                truncate_chars(message, 120);
            }
        }
        while render(&shortened).len() > limit && !shortened.results.is_empty() {
            shortened.results.pop();
            shortened.omitted += 1;
        }
        render(&shortened)
    }
}

const NOT_ON_NODE_REASONS: &[&str] = &[
    "ImageNotOnNode",
    "ContentMissing",
    "LayerUnrecoverable",
    "RebuildDenied",
];

fn truncate_chars(text: &mut String, max: usize) {
    if let Some((cut, _)) = text.char_indices().nth(max) {
        text.truncate(cut);
        text.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(image: &str) -> ImageResult {
        ImageResult {
            image: image.into(),
            status: Status::Preserved,
            target: Some(format!("reg:5000/{image}")),
            digest: Some(format!("sha256:{}", "a".repeat(64))),
            original_digest: None,
            incomplete_index: None,
            platform: None,
            rebuilt_layers: 0,
            bytes: 10,
            reason: None,
            engine_reason: None,
            message: None,
        }
    }

    fn failed(reason: &str) -> ImageResult {
        ImageResult {
            status: Status::Failed,
            reason: Some(reason.into()),
            message: Some("x".repeat(1000)),
            digest: None,
            ..ok("broken")
        }
    }

    #[test]
    fn exit_codes_rank_push_failures_over_absence() {
        assert_eq!(Report::new(vec![ok("a")]).exit_code(), exit::OK);
        assert_eq!(
            Report::new(vec![ok("a"), failed("ImageNotOnNode")]).exit_code(),
            exit::NOT_ON_NODE
        );
        assert_eq!(
            Report::new(vec![failed("LayerUnrecoverable")]).exit_code(),
            exit::NOT_ON_NODE
        );
        assert_eq!(
            Report::new(vec![failed("ImageNotOnNode"), failed("PushFailed")]).exit_code(),
            exit::PUSH_FAILED
        );
        assert_eq!(
            Report::new(vec![failed("ContainerdError")]).exit_code(),
            exit::OTHER
        );
        let no_socket = Error::SocketNotFound { tried: vec![] };
        assert_eq!(
            Report::run_failed(&no_socket).exit_code(),
            exit::NO_CONTAINERD
        );
        let usage = Error::Usage("x".into());
        assert_eq!(Report::run_failed(&usage).exit_code(), exit::USAGE);
    }

    #[test]
    fn small_reports_are_rendered_whole() {
        let report = Report::new(vec![ok("a")]);
        let message = report.termination_message(TERMINATION_MESSAGE_LIMIT);
        let back: Report = serde_json::from_str(&message).unwrap();
        assert_eq!(back, report);
        assert!(
            !message.contains("originalDigest"),
            "empty fields are left out: {message}"
        );
    }

    #[test]
    fn large_reports_are_cut_to_the_limit() {
        let mut results: Vec<ImageResult> = (0..100).map(|i| ok(&format!("image-{i}"))).collect();
        results.insert(0, failed("PushFailed"));
        let report = Report::new(results);
        let message = report.termination_message(TERMINATION_MESSAGE_LIMIT);
        assert!(
            message.len() <= TERMINATION_MESSAGE_LIMIT,
            "{}",
            message.len()
        );
        let back: Report = serde_json::from_str(&message).unwrap();
        assert_eq!(back.results.len() + back.omitted, 101);
        assert!(back.omitted > 0);
        assert!(back.results[0].message.as_ref().unwrap().chars().count() <= 121);
        assert_eq!(
            back.exit_code(),
            exit::PUSH_FAILED,
            "the failure kept its place"
        );
    }
}
