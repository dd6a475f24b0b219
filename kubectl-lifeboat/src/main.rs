//! `kubectl lifeboat`: a kubectl plugin (kubectl runs any `kubectl-NAME` on
//! PATH as `kubectl NAME`) that shows Lifeboat's policies and restores,
//! triggers backups and restores, and explains an image's state.
//!
//! Each command is a module: pure decision and formatting functions (unit
//! tested without a cluster) and one `run` function that does the IO.

mod backup;
mod cli;
mod client;
mod output;
mod restore;
mod status;
mod why;

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
    let connection = client::connect(&args.global).await?;
    match args.command {
        cli::Command::Status(command) => status::run(&connection, &command).await,
        cli::Command::Backup(command) => backup::run(&connection, &command).await,
        cli::Command::Restore(command) => restore::run(&connection, &command).await,
        cli::Command::Why(command) => why::run(&connection, &command).await,
    }
}
