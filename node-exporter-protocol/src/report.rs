//! What node-exporter tells the operator: a compact, versioned JSON report
//! in the container's termination message.
//!
//! Every report carries `"v"`. The reader checks it before anything else,
//! so an operator meeting a node-exporter that speaks another version says
//! so ([`ReportError::UnsupportedVersion`]) instead of misreading fields.

use lifeboat_reference::Digest;
use serde::{Deserialize, Serialize};

use crate::image::ImageSource;
use crate::{exit, reasons};

/// The report format this build writes and reads; bumped on incompatible
/// changes.
pub const VERSION: u32 = 1;

/// Kubernetes truncates termination messages beyond this many bytes.
pub const TERMINATION_MESSAGE_LIMIT: usize = 4096;

/// How one image's export ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Pushed digest-exact: the registry now serves the original digest.
    Preserved,
    /// Pushed (or imported) with rebuilt layers: a new digest, not the
    /// original.
    Rebuilt,
    /// Written into the node's containerd digest-exact (import).
    Imported,
    Failed,
}

impl Status {
    /// Preserved or rebuilt: something was pushed.
    pub fn is_pushed(self) -> bool {
        matches!(self, Status::Preserved | Status::Rebuilt)
    }

    /// Whether the image is now where it was asked to be (pushed or
    /// imported).
    pub fn is_done(self) -> bool {
        !matches!(self, Status::Failed)
    }
}

/// The outcome for one requested image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageResult {
    /// The image as requested (the `SRC` of its `--image`).
    pub image: ImageSource,
    pub status: Status,
    /// Where it was pushed (for people: a reference with the tag used);
    /// for an import, the names recorded in containerd, comma separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Import only: where the bytes came from (`registry/repo@digest`, or
    /// `peer:HOST:PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The digest the registry now serves for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Rebuilt only: the manifest digest the node had before rebuilding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_digest: Option<Digest>,
    /// Set when an index was asked for but only one platform's manifest
    /// could be pushed: the index digest that was not restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete_index: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rebuilt_layers: usize,
    /// Bytes uploaded to the registry (blobs it already had not counted);
    /// for an import, bytes written into containerd.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub bytes: u64,
    /// One of [`reasons`] when failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `PushFailed`: the copy engine's own reason (`Unauthorized`,
    /// `RegistryUnavailable`, `TagConflict`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ImageResult {
    /// A result for `image` with nothing decided yet (preserved, empty).
    pub fn new(image: ImageSource) -> ImageResult {
        ImageResult {
            image,
            status: Status::Preserved,
            target: None,
            source: None,
            digest: None,
            original_digest: None,
            incomplete_index: None,
            platform: None,
            rebuilt_layers: 0,
            bytes: 0,
            reason: None,
            engine_reason: None,
            message: None,
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// A failure of the whole run (bad arguments, no containerd), when there
/// are no per-image results to carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    pub reason: String,
    pub message: String,
}

/// The report of `node-exporter export` (and of any run that failed before
/// it could look at an image).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportReport {
    pub v: u32,
    #[serde(default)]
    pub results: Vec<ImageResult>,
    /// How many results did not fit into the termination message.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
}

impl ExportReport {
    pub fn new(results: Vec<ImageResult>) -> ExportReport {
        ExportReport {
            v: VERSION,
            results,
            omitted: 0,
            error: None,
        }
    }

    /// A run that failed before any image could be looked at.
    pub fn run_failed(reason: &str, message: String) -> ExportReport {
        ExportReport {
            error: Some(RunError {
                reason: reason.to_owned(),
                message,
            }),
            ..ExportReport::new(Vec::new())
        }
    }

    /// Reads a termination message, checking the version first.
    pub fn read(message: &str) -> Result<ExportReport, ReportError> {
        read(message)
    }

    /// The result for `image`, as it was asked for.
    pub fn result_for(&self, image: &ImageSource) -> Option<&ImageResult> {
        self.results.iter().find(|result| &result.image == image)
    }

    /// The exit code: push failures first (worth a retry here), then
    /// "not on this node" (worth trying elsewhere), then anything else.
    pub fn exit_code(&self) -> i32 {
        if let Some(error) = &self.error {
            let reason = error.reason.as_str();
            return if reasons::USAGE.contains(&reason) {
                exit::USAGE
            } else if reasons::NO_CONTAINERD.contains(&reason) {
                exit::NO_CONTAINERD
            } else if reason == reasons::TERMINATED {
                exit::TERMINATED
            } else {
                exit::OTHER
            };
        }
        // A failure without a reason is a bug somewhere; count it as "other".
        let failed: Vec<&str> = self
            .results
            .iter()
            .filter(|r| r.status == Status::Failed)
            .map(|r| r.reason.as_deref().unwrap_or(""))
            .collect();
        if failed.contains(&reasons::TERMINATED) {
            exit::TERMINATED
        } else if failed.contains(&reasons::PUSH_FAILED) || failed.contains(&reasons::PULL_FAILED) {
            exit::PUSH_FAILED
        } else if failed.contains(&reasons::INVALID_REFERENCE) {
            exit::USAGE
        } else if failed.iter().any(|r| !reasons::is_not_on_node(r)) {
            exit::OTHER
        } else if !failed.is_empty() {
            exit::NOT_ON_NODE
        } else {
            exit::OK
        }
    }

    /// Compact JSON that fits `limit` bytes: messages are shortened first,
    /// then trailing results are dropped and counted in `omitted`.
    pub fn termination_message(&self, limit: usize) -> String {
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

/// How an image can be exported from a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Exportable {
    /// Every blob: digest-exact.
    Exact,
    /// One platform of an index, digest-exact for that manifest.
    Platform,
    /// Layers discarded after unpacking, rebuildable from snapshots.
    Rebuild,
    /// Not at all.
    None,
}

/// One image in an inventory report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryEntry {
    /// The image's root digest (index or manifest).
    pub digest: Digest,
    pub exportable: Exportable,
    /// The name it was asked as (or a name containerd knows it by).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The report of `node-exporter inventory`: which images the node holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReport {
    pub v: u32,
    #[serde(default)]
    pub images: Vec<InventoryEntry>,
    /// Requested images the node does not hold, as asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
}

impl InventoryReport {
    pub fn new(images: Vec<InventoryEntry>, missing: Vec<String>) -> InventoryReport {
        InventoryReport {
            v: VERSION,
            images,
            missing,
            omitted: 0,
            error: None,
        }
    }

    /// Reads a termination message, checking the version first.
    pub fn read(message: &str) -> Result<InventoryReport, ReportError> {
        read(message)
    }

    /// JSON that fits `limit` bytes: names go first, then missing images,
    /// then trailing entries, each dropped one counted in `omitted`.
    pub fn termination_message(&self, limit: usize) -> String {
        if render(self).len() <= limit {
            return render(self);
        }
        let mut compact = self.clone();
        for entry in &mut compact.images {
            entry.name = None;
        }
        while render(&compact).len() > limit && !compact.missing.is_empty() {
            compact.missing.pop();
            compact.omitted += 1;
        }
        while render(&compact).len() > limit && !compact.images.is_empty() {
            compact.images.pop();
            compact.omitted += 1;
        }
        render(&compact)
    }
}

/// Why a termination message could not be taken as a report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// Not a report at all (a crash, an OOM kill, a truncated message).
    #[error("the termination message is not a node-exporter report: {0}")]
    Unreadable(String),
    /// A report of a version this build does not speak: node-exporter and
    /// the operator come from different releases.
    #[error(
        "node-exporter wrote a report of version {found}, this operator reads version {supported}; run the node-exporter image of the operator's release"
    )]
    UnsupportedVersion { found: String, supported: u32 },
}

impl ReportError {
    /// One CamelCase word for a condition's `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            ReportError::Unreadable(_) => "UnreadableNodeReport",
            ReportError::UnsupportedVersion { .. } => "UnsupportedNodeReportVersion",
        }
    }
}

/// Checks `v`, then reads the whole report.
fn read<T: serde::de::DeserializeOwned>(message: &str) -> Result<T, ReportError> {
    #[derive(Deserialize)]
    struct Versioned {
        v: Option<serde_json::Value>,
    }
    let message = message.trim();
    let versioned: Versioned =
        serde_json::from_str(message).map_err(|e| ReportError::Unreadable(e.to_string()))?;
    match versioned.v {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(VERSION)) => {}
        found => {
            return Err(ReportError::UnsupportedVersion {
                found: found.map_or_else(|| "(none)".to_owned(), |v| v.to_string()),
                supported: VERSION,
            });
        }
    }
    serde_json::from_str(message).map_err(|e| ReportError::Unreadable(e.to_string()))
}

fn render<T: Serialize>(report: &T) -> String {
    // Serialising these plain structs cannot fail; an empty message would
    // read as "no report", which is the honest fallback anyway.
    serde_json::to_string(report).unwrap_or_default()
}

fn truncate_chars(text: &mut String, max: usize) {
    if let Some((cut, _)) = text.char_indices().nth(max) {
        text.truncate(cut);
        text.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn ok(image: &str) -> ImageResult {
        ImageResult {
            target: Some(format!("reg:5000/{image}")),
            digest: Some(digest('a')),
            bytes: 10,
            ..ImageResult::new(ImageSource::parse(image).unwrap())
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
        assert_eq!(ExportReport::new(vec![ok("a")]).exit_code(), exit::OK);
        assert_eq!(
            ExportReport::new(vec![ok("a"), failed("ImageNotOnNode")]).exit_code(),
            exit::NOT_ON_NODE
        );
        assert_eq!(
            ExportReport::new(vec![failed("LayerUnrecoverable")]).exit_code(),
            exit::NOT_ON_NODE
        );
        assert_eq!(
            ExportReport::new(vec![failed("ImageNotOnNode"), failed("PushFailed")]).exit_code(),
            exit::PUSH_FAILED
        );
        assert_eq!(
            ExportReport::new(vec![failed("ContainerdError")]).exit_code(),
            exit::OTHER
        );
        let no_socket = ExportReport::run_failed(reasons::CONTAINERD_SOCKET_NOT_FOUND, "m".into());
        assert_eq!(no_socket.exit_code(), exit::NO_CONTAINERD);
        let usage = ExportReport::run_failed(reasons::INVALID_ARGUMENTS, "m".into());
        assert_eq!(usage.exit_code(), exit::USAGE);
        assert_eq!(
            ExportReport::new(vec![failed("PullFailed"), failed("ImageNotOnNode")]).exit_code(),
            exit::PUSH_FAILED,
            "a failed pull is worth a retry, like a failed push"
        );
        assert_eq!(
            ExportReport::new(vec![ok("a"), failed("Terminated")]).exit_code(),
            exit::TERMINATED
        );
        let stopped = ExportReport::run_failed(reasons::TERMINATED, "m".into());
        assert_eq!(stopped.exit_code(), exit::TERMINATED);
    }

    #[test]
    fn small_reports_are_rendered_whole_and_read_back() {
        let report = ExportReport::new(vec![ok("a"), failed("ImageNotOnNode")]);
        let message = report.termination_message(TERMINATION_MESSAGE_LIMIT);
        assert_eq!(ExportReport::read(&message), Ok(report));
        assert!(
            !message.contains("originalDigest"),
            "empty fields are left out: {message}"
        );
        assert!(message.contains(r#""status":"Preserved""#), "{message}");
    }

    #[test]
    fn large_reports_are_cut_to_the_limit() {
        let mut results: Vec<ImageResult> = (0..100).map(|i| ok(&format!("image-{i}"))).collect();
        results.insert(0, failed("PushFailed"));
        let report = ExportReport::new(results);
        let message = report.termination_message(TERMINATION_MESSAGE_LIMIT);
        assert!(
            message.len() <= TERMINATION_MESSAGE_LIMIT,
            "{}",
            message.len()
        );
        let back = ExportReport::read(&message).unwrap();
        assert_eq!(back.results.len() + back.omitted, 101);
        assert!(back.omitted > 0);
        assert!(back.results[0].message.as_ref().unwrap().chars().count() <= 121);
        assert_eq!(
            back.exit_code(),
            exit::PUSH_FAILED,
            "the failure kept its place"
        );
    }

    #[test]
    fn unknown_versions_are_rejected_before_the_fields_are_read() {
        for (message, found) in [
            (r#"{"v":2,"results":[]}"#.to_owned(), "2"),
            // A future version may change every other field.
            (r#"{"v":2,"outcomes":{"x":1}}"#.to_owned(), "2"),
            (r#"{"v":"1","results":[]}"#.to_owned(), "\"1\""),
            (r#"{"results":[]}"#.to_owned(), "(none)"),
        ] {
            let error = ExportReport::read(&message).unwrap_err();
            assert_eq!(
                error,
                ReportError::UnsupportedVersion {
                    found: found.to_owned(),
                    supported: VERSION
                },
                "{message}"
            );
            assert_eq!(error.reason(), "UnsupportedNodeReportVersion");
            assert!(InventoryReport::read(&message).is_err());
        }
        let killed = ExportReport::read("killed").unwrap_err();
        assert!(matches!(killed, ReportError::Unreadable(_)), "{killed:?}");
        let bad_digest = ExportReport::read(
            r#"{"v":1,"results":[{"image":"a","status":"Preserved","digest":"sha256:1"}]}"#,
        );
        assert!(matches!(bad_digest, Err(ReportError::Unreadable(_))));
        let bad_status =
            ExportReport::read(r#"{"v":1,"results":[{"image":"a","status":"Maybe"}]}"#);
        assert!(matches!(bad_status, Err(ReportError::Unreadable(_))));
    }

    #[test]
    fn inventories_fit_the_limit_and_read_back() {
        let entry = |i: usize| InventoryEntry {
            digest: Digest::parse(&format!("sha256:{i:064x}")).unwrap(),
            exportable: Exportable::Exact,
            name: Some(format!("registry.example/team/app-{i}:v1")),
        };
        let small = InventoryReport::new(vec![entry(1)], vec!["r.io/gone:1".into()]);
        let message = small.termination_message(TERMINATION_MESSAGE_LIMIT);
        assert!(message.contains(r#""exportable":"exact""#), "{message}");
        assert_eq!(InventoryReport::read(&message), Ok(small));

        let big = InventoryReport::new((0..200).map(entry).collect(), vec![]);
        let message = big.termination_message(TERMINATION_MESSAGE_LIMIT);
        assert!(message.len() <= TERMINATION_MESSAGE_LIMIT);
        let back = InventoryReport::read(&message).unwrap();
        assert_eq!(back.images.len() + back.omitted, 200);
        assert!(back.images.iter().all(|e| e.name.is_none()));
    }

    #[test]
    fn a_failed_run_reads_as_either_report() {
        let message = ExportReport::run_failed(reasons::CONTAINERD_UNAVAILABLE, "m".into())
            .termination_message(TERMINATION_MESSAGE_LIMIT);
        let inventory = InventoryReport::read(&message).unwrap();
        assert_eq!(
            inventory.error.map(|e| e.reason),
            Some(reasons::CONTAINERD_UNAVAILABLE.to_owned())
        );
    }
}
