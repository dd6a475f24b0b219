//! Lifeboat's Kubernetes API, group `lifeboat.dev`, version `v1alpha1`.
