//! Binary edge of the operator: configuration, crypto provider, logging,
//! metrics endpoint, leader election, then the controllers.

#![warn(clippy::too_many_lines)] // threshold and why: clippy.toml

use std::sync::Arc;

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::client::ClientBuilder;
use kube::{Api, Client};
use lifeboat_operator::config::OperatorConfig;
use lifeboat_operator::context::Context;
use lifeboat_operator::http::{self, HealthState};
use lifeboat_operator::leader::{ElectionTiming, LeaderElector, Leadership, WriteFenceLayer};
use lifeboat_operator::telemetry::{self, Metrics};
use tracing::{error, info, warn};

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
    let kube_config = kube::Config::infer()
        .await
        .context("reading the Kubernetes client configuration")?;
    info!(namespace = %config.namespace, identity = %config.identity, "lifeboat-operator starting");

    let server = tokio::spawn(http::serve(
        config.http_addr,
        metrics.clone(),
        health.clone(),
    ));

    let leadership = if config.leader_election {
        Leadership::candidate()
    } else {
        Leadership::unconditional()
    };
    // The controllers' client refuses writes whenever this replica does not
    // lead; the elector has its own, unfenced client.
    let client = ClientBuilder::try_from(kube_config.clone())
        .context("building the Kubernetes client")?
        .with_layer(&WriteFenceLayer {
            leadership: leadership.clone(),
        })
        .with_layer(&lifeboat_operator::api_requests::ApiRequestCountLayer {
            counter: metrics.api_requests.clone(),
        })
        .build();
    let elector = if config.leader_election {
        let elector_client = Client::try_from(kube_config).context("building the lease client")?;
        let leases: Api<Lease> = Api::namespaced(elector_client, &config.namespace);
        let elector = LeaderElector::new(
            leases.clone(),
            "lifeboat-operator",
            &config.identity,
            ElectionTiming::DEFAULT,
        );
        // A standby is healthy and ready: it is doing its job by waiting.
        health.set_ready(true);
        let task = tokio::spawn(elector.run(leadership.clone()));
        leadership.acquired().await;
        Some((task, leases, config.identity.clone()))
    } else {
        None
    };

    let admission = config.admission.is_some();
    let context = Arc::new(Context::new(client, config, metrics));
    health.set_ready(true);
    info!("leading: starting controllers");
    tokio::select! {
        result = server => {
            error!("http server stopped");
            result.context("http server task")?.context("http server")?;
        }
        _ = lifeboat_operator::controllers::run(context.clone()) => {}
        () = lifeboat_operator::admission::run(context), if admission => {
            error!("admission webhook stopped");
        }
        _ = leadership.lost(), if elector.is_some() => {
            // Exit rather than risk two leaders: the write fence already
            // refuses every write, and Kubernetes restarts the container
            // as a fresh candidate with no controller state left over.
            error!("lost leadership: exiting");
            std::process::exit(1);
        }
    }
    // A clean stop (SIGTERM: a rollout, a drain): give the lease up so the
    // next replica leads at its next round, not after the whole lease.
    if let Some((task, leases, identity)) = elector {
        task.abort();
        leadership.revoke();
        let release = lifeboat_operator::leader::release(&leases, "lifeboat-operator", &identity);
        match tokio::time::timeout(std::time::Duration::from_secs(2), release).await {
            Ok(Ok(true)) => info!("leader lease released"),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => warn!(%error, "could not release the leader lease"),
            Err(_) => warn!("releasing the leader lease timed out"),
        }
    }
    Ok(())
}
