//! The Lifeboat operator: reconciles ImageBackupPolicies and ImageRestores.
//!
//! - `config`, `context`: what the process is given and what reconciles share;
//! - `registry_access`: credentials, CA bundles and engine settings for registries;
//! - `leader`: Lease-based leader election (pure decision + thin IO loop);
//! - `telemetry`, `http`: logs, metrics, `/metrics` `/healthz` `/readyz`;
//! - `otlp` (feature `otlp`): optional OTLP trace export;
//! - `tenancy`: what a tenant namespace may restore and choose (pure rules);
//! - `error`: the one error type, with condition/event/metric reasons.

pub mod config;
pub mod context;
pub mod controllers;
pub mod error;
pub mod http;
pub mod leader;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod registry_access;
pub mod telemetry;
pub mod tenancy;
