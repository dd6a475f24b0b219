//! node-exporter's side of the report it writes to the termination
//! message. The format, its version, the exit codes and the reasons are
//! the shared `lifeboat-node-protocol`'s; this module only turns
//! node-exporter's errors into results.

use lifeboat_node_protocol::ImageSource;
pub use lifeboat_node_protocol::exit;
pub use lifeboat_node_protocol::report::{
    ExportReport as Report, ImageResult, Status, TERMINATION_MESSAGE_LIMIT, VERSION,
};

use crate::error::Error;

/// The result for an image whose export failed with `error`.
pub fn failed(image: &ImageSource, target: Option<String>, error: &Error) -> ImageResult {
    ImageResult {
        status: Status::Failed,
        target,
        reason: Some(error.reason().to_owned()),
        engine_reason: match error {
            Error::Push { engine_reason, .. } => engine_reason.clone(),
            _ => None,
        },
        message: Some(error.to_string()),
        ..ImageResult::new(image.clone())
    }
}

/// The report of a run that failed before any image could be looked at.
pub fn run_failed(error: &Error) -> Report {
    Report::run_failed(error.reason(), error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_failures_exit_with_the_code_the_job_policy_expects() {
        let no_socket = Error::SocketNotFound { tried: vec![] };
        assert_eq!(run_failed(&no_socket).exit_code(), exit::NO_CONTAINERD);
        let usage = Error::Usage("x".into());
        assert_eq!(run_failed(&usage).exit_code(), exit::USAGE);
        let image = ImageSource::parse("r.io/a:1").unwrap_or_else(|e| panic!("{e}"));
        let push = Error::Push {
            target: "r.io/a:1".into(),
            engine_reason: Some("Unauthorized".into()),
            message: "m".into(),
        };
        let result = failed(&image, None, &push);
        assert_eq!(result.engine_reason.as_deref(), Some("Unauthorized"));
        assert_eq!(Report::new(vec![result]).exit_code(), exit::PUSH_FAILED);
        let gone = failed(&image, None, &Error::ImageNotFound("x".into()));
        assert_eq!(Report::new(vec![gone]).exit_code(), exit::NOT_ON_NODE);
    }
}
