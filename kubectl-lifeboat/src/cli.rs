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
    after_help = "Examples:\n  kubectl lifeboat status -A\n  kubectl lifeboat backup production-images -n shop --wait\n  kubectl lifeboat restore --policy production-images --missing -n shop --wait\n  kubectl lifeboat restore deployment/checkout -n shop --from nodes --wait\n  kubectl lifeboat why registry.example.com/shop/checkout:v2 -A\n\nExit codes: 0 done, 1 the run or restore failed, 2 error (cluster, arguments), 3 --wait timed out."
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
    /// Write an image from a registry only the cluster reaches, or from a node, into an archive file.
    #[command(
        after_help = "Examples:\n  kubectl lifeboat export registry.air.svc:5000/shop/web:1.4 -o web.tar -n air\n  kubectl lifeboat export registry.air.svc:5000/shop/web:1.4 -o web.tar --format docker-archive\n  kubectl lifeboat export registry.example.com/shop/web:1.4 -o web.tar --from-node node-1\n\nOnly the Kubernetes API is used: a short-lived relay pod in the namespace (or, with\n--from-node, a node-exporter pod on the node in the operator's namespace), reached by\nport-forward, and deleted afterwards. For a TLS registry give --tls\n(or --ca-file); credentials with --username/--password-stdin or --registry-secret."
    )]
    Export(ExportArgs),
    /// Push an OCI archive into a registry only the cluster reaches, or into nodes' containerd.
    #[command(
        after_help = "Examples:\n  skopeo copy docker://docker.io/library/nginx:1.27 oci-archive:nginx.tar\n  kubectl lifeboat import nginx.tar --to registry.air.svc:5000/library/nginx:1.27 -n air\n  kubectl lifeboat import nginx.tar --to docker.io/library/nginx:1.27 --to-nodes node-role=edge\n\nOnly the Kubernetes API is used: a short-lived relay pod in the namespace (or, with\n--to-nodes, a node-exporter pod per node in the operator's namespace), reached by\nport-forward, and deleted afterwards. For a TLS registry give --tls\n(or --ca-file); credentials with --username/--password-stdin or --registry-secret."
    )]
    Import(ImportArgs),
    /// Print a shell completion script (for the kubectl-lifeboat command).
    #[command(
        after_help = "Examples:\n  source <(kubectl-lifeboat completion bash)\n  kubectl-lifeboat completion zsh > \"${fpath[1]}/_kubectl-lifeboat\"\n  kubectl-lifeboat completion fish > ~/.config/fish/completions/kubectl-lifeboat.fish"
    )]
    Completion(CompletionArgs),
}

#[derive(Args, Debug)]
pub struct CompletionArgs {
    pub shell: clap_complete::Shell,
}

/// How export and import get into the cluster.
#[derive(Args, Debug, Clone)]
pub struct ClusterAccess {
    /// The image relay and node pods run (default: the operator's LIFEBOAT_NODE_EXPORTER_IMAGE).
    #[arg(long, env = "LIFEBOAT_NODE_EXPORTER_IMAGE")]
    pub node_exporter_image: Option<String>,
    /// Where the Lifeboat operator runs (its node-exporter settings are read
    /// there, and node pods run there).
    #[arg(long, default_value = "lifeboat-system")]
    pub operator_namespace: String,
    /// Run the relay pod on this node (where pods cannot reach other nodes' pods).
    #[arg(long)]
    pub relay_node: Option<String>,
    /// Always go through a relay pod, even when the registry is a pod of the
    /// namespace, which is otherwise port-forwarded to directly.
    #[arg(long)]
    pub relay: bool,
}

/// How export and import talk to the registry at the far end of the tunnel.
#[derive(Args, Debug, Clone, Default)]
pub struct RegistryAccess {
    /// Speak TLS to the registry (default: plain HTTP).
    #[arg(long)]
    pub tls: bool,
    /// PEM CA certificates the registry's certificate may chain to (besides
    /// the system roots); implies --tls.
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
    /// The name the registry's certificate must carry (default: the
    /// registry's host as given).
    #[arg(long)]
    pub tls_server_name: Option<String>,
    /// Basic-auth user for the registry; the password is read from stdin.
    #[arg(long, requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the registry password from stdin (with --username).
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// A kubernetes.io/dockerconfigjson Secret in the namespace with the
    /// registry's credentials.
    #[arg(long, conflicts_with = "username")]
    pub registry_secret: Option<String>,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The image as the cluster names it: REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:...
    pub image: String,
    /// The archive file to write.
    #[arg(short = 'o', long)]
    pub output: std::path::PathBuf,
    #[arg(long, value_enum, default_value = "oci")]
    pub format: crate::archive::write::Format,
    /// docker-archive: the platform of a multi-platform image (default: this machine's, linux).
    #[arg(long)]
    pub platform: Option<String>,
    /// Read the image from this node's containerd instead of a registry
    /// (alone: a node whose status lists the image).
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    pub from_node: Option<String>,
    /// Byte progress on stderr.
    #[arg(long, value_enum, default_value_t)]
    pub progress: crate::progress::ProgressMode,
    #[command(flatten)]
    pub registry: RegistryAccess,
    #[command(flatten)]
    pub access: ClusterAccess,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// An OCI archive (skopeo copy ... oci-archive:FILE, or docker save from Docker 25 on).
    pub file: std::path::PathBuf,
    /// Where to push, as the cluster names it: REGISTRY/REPO[:TAG] (without TAG:
    /// the archive's ref name, else latest). With --to-nodes: the reference
    /// pods use, recorded in the nodes' containerd.
    #[arg(long)]
    pub to: String,
    /// Write into these nodes' containerd instead of a registry: a label
    /// selector (kubernetes.io/hostname=node-1) or name=NODE[,NODE...].
    #[arg(long)]
    pub to_nodes: Option<String>,
    /// Which image of the archive (its ref name or digest), when it holds several.
    #[arg(long)]
    pub name: Option<String>,
    /// Byte progress on stderr.
    #[arg(long, value_enum, default_value_t)]
    pub progress: crate::progress::ProgressMode,
    #[command(flatten)]
    pub registry: RegistryAccess,
    #[command(flatten)]
    pub access: ClusterAccess,
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
    /// Images to restore (pin digests: repo@sha256:...), or deployment/NAME and
    /// pod/NAME for the images they run, pinned to the digests their pods report.
    #[arg(required_unless_present = "policy", conflicts_with_all = ["policy", "missing"])]
    pub images: Vec<String>,
    /// Restore what this ImageBackupPolicy reports missing (with --missing).
    #[arg(long, requires = "missing")]
    pub policy: Option<String>,
    /// With --policy: every image the policy reports missing.
    #[arg(long, requires = "policy")]
    pub missing: bool,
    /// Where the content comes from (default: the operator's Auto: backups, then nodes).
    #[arg(long, value_enum)]
    pub from: Option<RestoreFrom>,
    /// Follow the restore until it finishes; exit non-zero if it fails.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (e.g. 90s, 5m, 1h).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreFrom {
    /// Only backup registries (source.type BackupRegistry).
    Backup,
    /// Only nodes' containerd content stores (source.type NodeCache).
    Nodes,
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
    fn completion_scripts_name_the_commands() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kubectl-lifeboat", &mut script);
            let script = String::from_utf8(script).unwrap();
            for command in ["status", "backup", "restore", "why", "export", "import"] {
                assert!(script.contains(command), "{shell}: no {command}");
            }
        }
        assert!(Cli::try_parse_from(["k", "completion", "tcsh"]).is_err());
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
