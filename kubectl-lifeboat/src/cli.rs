//! The command line: kubectl's usual connection flags, one subcommand per
//! command module.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit code for a run, restore or wait that failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for an error talking to the cluster or bad arguments.
pub const EXIT_ERROR: u8 = 2;
/// Exit code when `--wait` ran out of time.
pub const EXIT_TIMEOUT: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-lifeboat",
    bin_name = "kubectl lifeboat",
    version,
    about = "See and drive Lifeboat's image backups and restores",
    after_help = "Examples:\n  kubectl lifeboat status -A\n  kubectl lifeboat backup production-images -n shop --wait\n  kubectl lifeboat restore --policy production-images --missing -n shop --wait\n  kubectl lifeboat why registry.example.com/shop/checkout:v2 -A\n\nExit codes: 0 done, 1 the run or restore failed, 2 error (cluster, arguments), 3 --wait timed out."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// The flags kubectl users expect.
#[derive(Args, Debug, Clone, Default)]
pub struct Global {
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true, env = "KUBECONFIG")]
    pub kubeconfig: Option<String>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace (default: the context's).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Every ImageBackupPolicy's counts, runs and conditions, and the restores in flight.
    Status(StatusArgs),
    /// Trigger an on-demand backup run (the lifeboat.dev/requestedAt annotation).
    Backup(BackupArgs),
    /// Create an ImageRestore for images, or for what a policy reports missing.
    Restore(RestoreArgs),
    /// Explain an image's state from the policies' status.
    Why(WhyArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
    Yaml,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// All namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The ImageBackupPolicy.
    pub policy: String,
    /// Follow the run until it finishes; exit non-zero if it fails.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (e.g. 90s, 5m, 1h).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Images to restore (pin digests: repo@sha256:...).
    #[arg(required_unless_present = "policy", conflicts_with_all = ["policy", "missing"])]
    pub images: Vec<String>,
    /// Restore what this ImageBackupPolicy reports missing (with --missing).
    #[arg(long, requires = "missing")]
    pub policy: Option<String>,
    /// With --policy: every image the policy reports missing.
    #[arg(long, requires = "policy")]
    pub missing: bool,
    /// Follow the restore until it finishes; exit non-zero if it fails.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (e.g. 90s, 5m, 1h).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Args, Debug)]
pub struct WhyArgs {
    /// The image (reference, repository or digest).
    pub image: String,
    /// All namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// `90s`, `5m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration like 90s, 5m or 1h"))?;
    let seconds = match unit {
        "" | "s" => Some(number),
        "m" => number.checked_mul(60),
        "h" => number.checked_mul(3600),
        _ => None,
    }
    .ok_or_else(|| format!("'{text}' is not a duration like 90s, 5m or 1h"))?;
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn restore_takes_images_or_policy_and_missing() {
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        assert!(parse(&["k", "restore", "a@sha256:1"]).is_ok());
        assert!(parse(&["k", "restore", "--policy", "p", "--missing"]).is_ok());
        assert!(parse(&["k", "restore", "--policy", "p"]).is_err());
        assert!(parse(&["k", "restore"]).is_err());
        assert!(parse(&["k", "restore", "a", "--policy", "p", "--missing"]).is_err());
    }
}
