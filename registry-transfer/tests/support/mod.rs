//! Shared by the integration tests (and, by path, the benchmark binary).

pub mod hostile;
pub mod images;
pub mod proxy;
pub mod registry;
pub mod tools;
