//! `kubectl lifeboat`: a kubectl plugin (kubectl runs any `kubectl-NAME` on
//! PATH as `kubectl NAME`) that shows Lifeboat's policies and restores,
//! triggers backups and restores, and explains an image's state.
//!
//! Each command is a module: pure decision and formatting functions (unit
//! tested without a cluster) and one `run` function that does the IO.

mod archive;
mod archives;
mod backup;
mod cli;
mod client;
mod nodes;
mod output;
mod portforward;
mod progress;
mod restore;
mod reverse;
mod status;
mod tunnel;
mod why;
mod workloads;

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let args = cli::Cli::parse();
    init_log();
    match run(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
}

/// The environment variable that turns on the plugin's log (an
/// `EnvFilter`, e.g. `info` for the phases of an import with their times
/// since start); off by default, so stderr stays the command's own output.
const LOG_ENV: &str = "KUBECTL_LIFEBOAT_LOG";

fn init_log() {
    let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV) else {
        return;
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        // Plain text in files and CI logs, as the progress lines.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

async fn run(args: cli::Cli) -> anyhow::Result<ExitCode> {
    // kube's rustls has no provider of its own: ring, as the other binaries.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let cli::Command::Completion(command) = &args.command {
        // Needs no cluster.
        let mut cli = <cli::Cli as clap::CommandFactory>::command();
        clap_complete::generate(
            command.shell,
            &mut cli,
            "kubectl-lifeboat",
            &mut std::io::stdout(),
        );
        return Ok(ExitCode::SUCCESS);
    }
    let connection = client::connect(&args.global).await?;
    match args.command {
        cli::Command::Status(command) => status::run(&connection, &command).await,
        cli::Command::Backup(command) => backup::run(&connection, &command).await,
        cli::Command::Restore(command) => restore::run(&connection, &command).await,
        cli::Command::Why(command) => why::run(&connection, &command).await,
        cli::Command::Export(command) => archives::export(&connection, &command).await,
        cli::Command::Import(command) => archives::import(&connection, &command).await,
        cli::Command::Completion(_) => Ok(ExitCode::SUCCESS),
    }
}
