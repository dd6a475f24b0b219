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
    match run(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
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
