//! The crate's one error type.
//!
//! Every variant maps to a CamelCase `reason()` so the operator can put it
//! straight into a condition (typically `Stalled`) together with the
//! `Display` text as the message.

use thiserror::Error;

/// Everything that can be wrong with an image reference, a schedule, a time
/// zone or a spec.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    // --- image references -------------------------------------------------
    /// A reference, repository name, tag or digest that does not parse.
    #[error(transparent)]
    Reference(#[from] lifeboat_reference::ReferenceError),

    // --- schedules and time zones -----------------------------------------
    #[error(
        "schedule {schedule:?} sets a time zone with {prefix}; remove it and set spec.timeZone instead"
    )]
    ScheduleTimeZonePrefix {
        schedule: String,
        prefix: &'static str,
    },

    #[error("schedule {schedule:?} is invalid: {problem}")]
    InvalidSchedule { schedule: String, problem: String },

    #[error(
        "time zone {zone:?} is not a known IANA time zone name (examples: UTC, Europe/Berlin, America/New_York)"
    )]
    InvalidTimeZone { zone: String },

    // --- other spec checks --------------------------------------------------
    #[error("image pattern {pattern:?} is invalid: {problem}")]
    InvalidImagePattern { pattern: String, problem: String },

    #[error("repository template {template:?} is invalid: {problem}")]
    InvalidRepositoryTemplate { template: String, problem: String },

    #[error("{message}")]
    InvalidSpec { message: String },

    /// An error found at a place in a spec: `field` is the path as a user
    /// writes it (`spec.targets[0].registry`).
    #[error("{field}: {source}")]
    AtField { field: String, source: Box<Error> },

    // --- manifests -----------------------------------------------------------
    #[error("could not render the CustomResourceDefinition {name}: {problem}")]
    CrdGeneration { name: String, problem: String },
}

impl Error {
    /// One CamelCase word for a condition's `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Reference(error) => error.reason(),
            Error::ScheduleTimeZonePrefix { .. } | Error::InvalidSchedule { .. } => {
                crate::conditions::reasons::INVALID_SCHEDULE
            }
            Error::InvalidTimeZone { .. } => crate::conditions::reasons::INVALID_TIME_ZONE,
            Error::InvalidImagePattern { .. } => crate::conditions::reasons::INVALID_IMAGE_PATTERN,
            Error::InvalidRepositoryTemplate { .. } => {
                crate::conditions::reasons::INVALID_REPOSITORY_TEMPLATE
            }
            Error::InvalidSpec { .. } => crate::conditions::reasons::INVALID_SPEC,
            Error::AtField { source, .. } => source.reason(),
            Error::CrdGeneration { .. } => "CrdGenerationFailed",
        }
    }

    /// Wraps the error with the spec field it was found at.
    /// Nested calls join the paths (`spec.selector` + `images.include[0]`).
    pub fn at(self, field: impl Into<String>) -> Error {
        let outer = field.into();
        match self {
            Error::AtField { field, source } => {
                let joined = if field.starts_with('[') {
                    format!("{outer}{field}")
                } else {
                    format!("{outer}.{field}")
                };
                Error::AtField {
                    field: joined,
                    source,
                }
            }
            other => Error::AtField {
                field: outer,
                source: Box::new(other),
            },
        }
    }

    /// The innermost error, without field wrappers.
    pub fn root(&self) -> &Error {
        match self {
            Error::AtField { source, .. } => source.root(),
            other => other,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
