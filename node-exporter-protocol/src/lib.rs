//! The contract between the Lifeboat operator and node-exporter, written
//! once and linked by both binaries:
//!
//! - [`args`]: the command line the operator gives node-exporter, as typed
//!   values ([`ExportArguments`], [`InventoryArguments`]) that render to
//!   `argv`, and the parser of one `--image SRC[=DEST]` value;
//! - [`report`]: the versioned JSON report node-exporter writes to its
//!   termination message ([`ExportReport`], [`InventoryReport`]), and the
//!   reader that rejects a version it does not know;
//! - [`exit`] and [`reasons`]: the exit codes (for the Job's
//!   `podFailurePolicy`) and the failure reasons both sides name.
//!
//! Images travel as [`ImageReference`]s (`lifeboat-reference`), never
//! re-parsed by hand on either side.

// Tests may panic on what they did not expect; production code may not.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod args;
pub mod exit;
mod image;
pub mod reasons;
pub mod report;

pub use args::{
    CONTENT_STORE_MOUNT, CaBundleArgument, DEFAULT_CONTENT_STORE, ENV_CONTENT_STORE,
    ExportArguments, ImportArguments, InventoryArguments, RelayArguments, ServeArguments,
};
pub use image::{Destination, ExportImage, ImageArgumentError, ImageSource, ImportImage};
pub use lifeboat_reference::{Digest, ImageReference};
pub use report::{
    ExportReport, Exportable, ImageResult, InventoryEntry, InventoryReport, ReportError, RunError,
    Status, VERSION,
};
