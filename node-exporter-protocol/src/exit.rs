//! node-exporter's exit codes, meant for a Job's `podFailurePolicy`.

/// Every image was exported (preserved or rebuilt) / inventory listed.
pub const OK: i32 = 0;
/// Anything not covered below (an internal error, containerd failing).
pub const OTHER: i32 = 1;
/// Bad arguments; retrying cannot help.
pub const USAGE: i32 = 2;
/// At least one image is not on this node (or only incompletely, with no
/// way to rebuild it), and nothing failed otherwise: try another node.
pub const NOT_ON_NODE: i32 = 3;
/// At least one transfer failed (an export's push, an import's pull):
/// retrying may help.
pub const PUSH_FAILED: i32 = 4;
/// No containerd socket could be found or connected to on this node.
pub const NO_CONTAINERD: i32 = 5;
/// Stopped by SIGTERM (128 + 15, as a shell reports it).
pub const TERMINATED: i32 = 143;

/// The codes after which a retry on the same node cannot help: the Job
/// fails at once.
pub const FINAL_ON_THIS_NODE: [i32; 3] = [USAGE, NOT_ON_NODE, NO_CONTAINERD];
