//! Status conditions as Kubernetes API conventions and kstatus expect them.
//!
//! * `Ready` is always present once an object has been reconciled.
//! * `Reconciling` and `Stalled` exist only while true (abnormal-true
//!   polarity): set them when they apply, [`remove_condition`] otherwise.
//! * `lastTransitionTime` changes only when `status` changes.
//! * `reason` is one CamelCase word, `message` is for people and bounded.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types.
pub mod types {
    /// The object is fully reconciled and does what it says.
    pub const READY: &str = "Ready";
    /// Work is in progress (present only while true).
    pub const RECONCILING: &str = "Reconciling";
    /// Progress is impossible until the spec or the world changes (present
    /// only while true).
    pub const STALLED: &str = "Stalled";
    /// ImageBackupPolicy: the most recent backup run succeeded.
    pub const LAST_BACKUP_SUCCEEDED: &str = "LastBackupSucceeded";
    /// ImageBackupPolicy: every protected image is still in its source
    /// registry (False with reason `ImagesMissing` otherwise).
    pub const IMAGES_AVAILABLE: &str = "ImagesAvailable";
    /// ImageBackupPolicy: the policy's selection was narrowed to its own
    /// namespace because it lives outside the operator's namespace.
    pub const SCOPE_RESTRICTED: &str = "ScopeRestricted";
}

/// Condition reasons: one CamelCase word each.
pub mod reasons {
    // Generic outcomes.
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
    pub const PROGRESSING: &str = "Progressing";
    pub const SUSPENDED: &str = "Suspended";

    // ImageBackupPolicy.
    pub const PROTECTED: &str = "Protected";
    pub const BACKUP_RUNNING: &str = "BackupRunning";
    pub const BACKUP_SUCCEEDED: &str = "BackupSucceeded";
    pub const BACKUP_FAILED: &str = "BackupFailed";
    pub const BACKUP_PARTIALLY_FAILED: &str = "BackupPartiallyFailed";
    pub const NO_BACKUP_YET: &str = "NoBackupYet";
    pub const DRY_RUN: &str = "DryRun";
    pub const IMAGES_MISSING: &str = "ImagesMissing";
    pub const ALL_IMAGES_AVAILABLE: &str = "AllImagesAvailable";
    /// Images whose source registry cannot be reached or fails (an
    /// outage: the registry did not say they are gone).
    pub const SOURCE_UNREACHABLE: &str = "SourceUnreachable";
    pub const OWN_NAMESPACE_ONLY: &str = "OwnNamespaceOnly";
    pub const CREDENTIALS_NOT_FOUND: &str = "CredentialsNotFound";
    pub const CREDENTIALS_INVALID: &str = "CredentialsInvalid";
    pub const TARGET_UNREACHABLE: &str = "TargetUnreachable";
    pub const CA_BUNDLE_NOT_FOUND: &str = "CABundleNotFound";
    pub const CREDENTIALS_FORBIDDEN: &str = "CredentialsForbidden";
    pub const PLAIN_HTTP_NOT_ALLOWED: &str = "PlainHttpNotAllowed";

    // ImageRestore.
    pub const RESTORING: &str = "Restoring";
    pub const IMAGE_NOT_FOUND: &str = "ImageNotFound";
    pub const NODE_EXPORT_FAILED: &str = "NodeExportFailed";
    /// node-exporter wrote a report of a version this operator does not
    /// read (the two images come from different releases).
    pub const UNSUPPORTED_NODE_REPORT_VERSION: &str = "UnsupportedNodeReportVersion";
    pub const PUSH_FAILED: &str = "PushFailed";
    pub const VERIFICATION_FAILED: &str = "VerificationFailed";
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    pub const POLICY_NOT_FOUND: &str = "PolicyNotFound";
    pub const NOTHING_TO_RESTORE: &str = "NothingToRestore";
    pub const IMAGE_OUT_OF_SCOPE: &str = "ImageOutOfScope";
    pub const NODE_ACCESS_NOT_ALLOWED: &str = "NodeAccessNotAllowed";
    /// `destination.nodes`: an import into a node's containerd failed.
    pub const NODE_IMPORT_FAILED: &str = "NodeImportFailed";
    /// `destination.nodes`: no node to write the image into (a named node
    /// that does not exist, no pod failing to pull it).
    pub const NO_DESTINATION_NODES: &str = "NoDestinationNodes";

    // Spec problems (see `crate::Error::reason`).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const INVALID_SCHEDULE: &str = "InvalidSchedule";
    pub const INVALID_TIME_ZONE: &str = "InvalidTimeZone";
    pub const INVALID_IMAGE_REFERENCE: &str = lifeboat_reference::INVALID_IMAGE_REFERENCE;
    pub const INVALID_IMAGE_PATTERN: &str = "InvalidImagePattern";
    pub const INVALID_REPOSITORY_TEMPLATE: &str = "InvalidRepositoryTemplate";

    /// Every reason above, for checks and documentation.
    pub const ALL: &[&str] = &[
        SUCCEEDED,
        FAILED,
        PROGRESSING,
        SUSPENDED,
        PROTECTED,
        BACKUP_RUNNING,
        BACKUP_SUCCEEDED,
        BACKUP_FAILED,
        BACKUP_PARTIALLY_FAILED,
        NO_BACKUP_YET,
        DRY_RUN,
        IMAGES_MISSING,
        ALL_IMAGES_AVAILABLE,
        SOURCE_UNREACHABLE,
        OWN_NAMESPACE_ONLY,
        CREDENTIALS_NOT_FOUND,
        CREDENTIALS_INVALID,
        TARGET_UNREACHABLE,
        CA_BUNDLE_NOT_FOUND,
        CREDENTIALS_FORBIDDEN,
        PLAIN_HTTP_NOT_ALLOWED,
        RESTORING,
        IMAGE_NOT_FOUND,
        NODE_EXPORT_FAILED,
        UNSUPPORTED_NODE_REPORT_VERSION,
        PUSH_FAILED,
        VERIFICATION_FAILED,
        DEADLINE_EXCEEDED,
        POLICY_NOT_FOUND,
        NOTHING_TO_RESTORE,
        IMAGE_OUT_OF_SCOPE,
        NODE_ACCESS_NOT_ALLOWED,
        NODE_IMPORT_FAILED,
        NO_DESTINATION_NODES,
        INVALID_SPEC,
        INVALID_SCHEDULE,
        INVALID_TIME_ZONE,
        INVALID_IMAGE_REFERENCE,
        INVALID_IMAGE_PATTERN,
        INVALID_REPOSITORY_TEMPLATE,
    ];
}

/// Longest `message` the CRDs accept in a condition.
pub const MAX_MESSAGE_LENGTH: usize = 32768;
/// Longest `message` the operator should write anywhere else in status
/// (image entries, history); the CRDs bound those fields to this.
pub const MAX_SHORT_MESSAGE_LENGTH: usize = 1024;
/// Longest condition list the CRDs accept.
pub const MAX_CONDITIONS: usize = 16;

/// A condition's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }

    /// Parses a `status` string; anything unexpected counts as Unknown.
    pub fn parse(status: &str) -> ConditionStatus {
        match status {
            "True" => ConditionStatus::True,
            "False" => ConditionStatus::False,
            _ => ConditionStatus::Unknown,
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(value: bool) -> Self {
        if value {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// Builds a condition; `set_condition` fills in `lastTransitionTime`.
pub fn new_condition(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.as_str().to_owned(),
        reason: reason.to_owned(),
        message: bounded_message(message.into(), MAX_MESSAGE_LENGTH),
        observed_generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

/// Adds or updates the condition of `new.type_`.
///
/// `lastTransitionTime` becomes `now` when the condition is new or its
/// status changes, and is kept otherwise (whatever `new` carries). Returns
/// whether anything changed, so callers can skip a status write.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition, now: Time) -> bool {
    new.message = bounded_message(std::mem::take(&mut new.message), MAX_MESSAGE_LENGTH);
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            new.last_transition_time = if existing.status == new.status {
                existing.last_transition_time.clone()
            } else {
                now
            };
            if *existing == new {
                false
            } else {
                *existing = new;
                true
            }
        }
        None => {
            new.last_transition_time = now;
            conditions.push(new);
            true
        }
    }
}

/// Removes the condition of this type; returns whether there was one.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    conditions.len() != before
}

/// The condition of this type, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The status of this condition type; Unknown when absent.
pub fn condition_status(conditions: &[Condition], type_: &str) -> ConditionStatus {
    find_condition(conditions, type_).map_or(ConditionStatus::Unknown, |c| {
        ConditionStatus::parse(&c.status)
    })
}

/// Whether the condition is present with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    condition_status(conditions, type_) == ConditionStatus::True
}

/// Whether the condition is present, True, and about `generation` (what
/// `kubectl wait` users and kstatus mean by "ready now").
pub fn is_true_for_generation(conditions: &[Condition], type_: &str, generation: i64) -> bool {
    find_condition(conditions, type_).is_some_and(|c| {
        ConditionStatus::parse(&c.status) == ConditionStatus::True
            && c.observed_generation == Some(generation)
    })
}

/// Cuts a message to at most `max` bytes on a character boundary, marking
/// the cut with an ellipsis.
pub fn bounded_message(message: String, max: usize) -> String {
    if message.len() <= max {
        return message;
    }
    const ELLIPSIS: &str = "…";
    let mut end = max.saturating_sub(ELLIPSIS.len());
    while end > 0 && !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = message[..end].to_owned();
    if max >= ELLIPSIS.len() {
        cut.push_str(ELLIPSIS);
    }
    cut
}

/// Whether `reason` is one CamelCase word as the CRDs require
/// (`^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`, and by our convention
/// starting upper-case without separators).
pub fn is_camel_case_reason(reason: &str) -> bool {
    let mut chars = reason.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH))
    }

    fn ready(status: ConditionStatus, reason: &str, generation: i64) -> Condition {
        new_condition(types::READY, status, reason, "msg", Some(generation))
    }

    #[test]
    fn new_condition_is_added_with_now() {
        let mut conditions = Vec::new();
        assert!(set_condition(
            &mut conditions,
            ready(ConditionStatus::Unknown, reasons::PROGRESSING, 1),
            at(100)
        ));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, at(100));
        assert_eq!(conditions[0].status, "Unknown");
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            ready(ConditionStatus::True, reasons::SUCCEEDED, 1),
            at(100),
        );
        // Same status, new reason and generation: updated, time kept.
        assert!(set_condition(
            &mut conditions,
            ready(ConditionStatus::True, reasons::PROTECTED, 2),
            at(200)
        ));
        assert_eq!(conditions[0].reason, "Protected");
        assert_eq!(conditions[0].observed_generation, Some(2));
        assert_eq!(conditions[0].last_transition_time, at(100));
        // Identical: no change reported, so no status write is needed.
        assert!(!set_condition(
            &mut conditions,
            ready(ConditionStatus::True, reasons::PROTECTED, 2),
            at(300)
        ));
        assert_eq!(conditions[0].last_transition_time, at(100));
        // Status flips: time moves.
        assert!(set_condition(
            &mut conditions,
            ready(ConditionStatus::False, reasons::BACKUP_FAILED, 2),
            at(400)
        ));
        assert_eq!(conditions[0].last_transition_time, at(400));
        assert_eq!(conditions.len(), 1);
    }

    #[test]
    fn incoming_transition_time_is_ignored() {
        let mut conditions = Vec::new();
        let mut c = ready(ConditionStatus::True, reasons::SUCCEEDED, 1);
        c.last_transition_time = at(5);
        set_condition(&mut conditions, c, at(100));
        assert_eq!(conditions[0].last_transition_time, at(100));
    }

    #[test]
    fn remove_and_lookup() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            ready(ConditionStatus::False, reasons::PROGRESSING, 3),
            at(1),
        );
        set_condition(
            &mut conditions,
            new_condition(
                types::RECONCILING,
                ConditionStatus::True,
                reasons::PROGRESSING,
                "working",
                Some(3),
            ),
            at(1),
        );
        set_condition(
            &mut conditions,
            new_condition(
                types::STALLED,
                ConditionStatus::True,
                reasons::INVALID_SCHEDULE,
                "bad",
                Some(3),
            ),
            at(1),
        );
        assert!(is_true(&conditions, types::RECONCILING));
        assert!(is_true_for_generation(&conditions, types::STALLED, 3));
        assert!(!is_true_for_generation(&conditions, types::STALLED, 4));
        assert_eq!(
            condition_status(&conditions, types::READY),
            ConditionStatus::False
        );
        assert_eq!(
            condition_status(&conditions, types::IMAGES_AVAILABLE),
            ConditionStatus::Unknown
        );
        assert!(remove_condition(&mut conditions, types::RECONCILING));
        assert!(!remove_condition(&mut conditions, types::RECONCILING));
        assert!(find_condition(&conditions, types::RECONCILING).is_none());
        assert_eq!(
            find_condition(&conditions, types::STALLED).map(|c| c.reason.as_str()),
            Some("InvalidSchedule")
        );
        assert_eq!(conditions.len(), 2);
    }

    #[test]
    fn messages_are_bounded_on_char_boundaries() {
        assert_eq!(bounded_message("short".into(), 10), "short");
        let long = "é".repeat(20); // 40 bytes
        let cut = bounded_message(long, 10);
        assert!(cut.len() <= 10, "{cut}");
        assert!(cut.ends_with('…'));
        assert_eq!(bounded_message("abcdef".into(), 0), "");
        let c = new_condition(
            types::READY,
            ConditionStatus::True,
            reasons::SUCCEEDED,
            "x".repeat(40000),
            None,
        );
        assert!(c.message.len() <= MAX_MESSAGE_LENGTH);
    }

    #[test]
    fn reasons_are_camel_case_words() {
        for reason in reasons::ALL {
            assert!(is_camel_case_reason(reason), "{reason}");
        }
        for t in [
            types::READY,
            types::RECONCILING,
            types::STALLED,
            types::LAST_BACKUP_SUCCEEDED,
            types::IMAGES_AVAILABLE,
            types::SCOPE_RESTRICTED,
        ] {
            assert!(is_camel_case_reason(t), "{t}");
        }
        assert!(!is_camel_case_reason("not camel"));
        assert!(!is_camel_case_reason("lowerStart"));
        assert!(!is_camel_case_reason(""));
        let mut unique = reasons::ALL.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), reasons::ALL.len());
    }

    #[test]
    fn status_strings() {
        assert_eq!(ConditionStatus::from(true).as_str(), "True");
        assert_eq!(ConditionStatus::from(false).as_str(), "False");
        assert_eq!(ConditionStatus::parse("garbage"), ConditionStatus::Unknown);
    }
}
