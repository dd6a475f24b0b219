//! Binary edge of the operator: configuration, crypto provider, logging,
//! metrics endpoint, leader election, then the controllers.

#![warn(clippy::too_many_lines)] // threshold and why: clippy.toml

use std::sync::Arc;

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use lifeboat_operator::config::OperatorConfig;
use lifeboat_operator::context::Context;
use lifeboat_operator::http::{self, HealthState};
use lifeboat_operator::leader::LeaderElector;
use lifeboat_operator::telemetry::{self, Metrics};
use tokio::sync::watch;
use tracing::{error, info};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // First thing: one rustls crypto provider (ring) for kube and the
    // registry clients alike; two linked providers make rustls panic.
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;

    if std::env::args().any(|a| a == "--version" || a == "-V") {
        println!("lifeboat-operator {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }

    let config =
        OperatorConfig::from_lookup(|k| std::env::var(k).ok()).context("reading configuration")?;
    let _traces = telemetry::init_logging(config.log_format);
    let metrics = Metrics::new().context("setting up metrics")?;
    let health = HealthState::new();
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    info!(namespace = %config.namespace, identity = %config.identity, "lifeboat-operator starting");

    let server = tokio::spawn(http::serve(
        config.http_addr,
        metrics.clone(),
        health.clone(),
    ));

    let (leading_tx, mut leading) = watch::channel(!config.leader_election);
    if config.leader_election {
        let leases: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
        let elector = LeaderElector::new(leases, "lifeboat-operator", &config.identity);
        tokio::spawn(elector.run(leading_tx));
        // A standby is healthy and ready: it is doing its job by waiting.
        health.set_ready(true);
        while !*leading.borrow_and_update() {
            leading.changed().await.context("leader election stopped")?;
        }
    }

    let context = Arc::new(Context::new(client, config, metrics));
    health.set_ready(true);
    info!("leading: starting controllers");
    tokio::select! {
        result = server => {
            error!("http server stopped");
            result.context("http server task")?.context("http server")?;
        }
        _ = lifeboat_operator::controllers::run(context) => {}
        _ = async { while leading.changed().await.is_ok() { if !*leading.borrow() { break; } } } => {
            // Exit rather than risk two leaders; Kubernetes restarts us as a standby.
            error!("lost leadership: exiting");
            std::process::exit(1);
        }
    }
    Ok(())
}
