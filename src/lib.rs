//! Ramp: a progressive delivery controller for Kubernetes.
//!
//! Dependencies point one way: `api` (types and pure rules) ← `planner`
//! (decisions) and `analysis` (metric evaluation) ← `controller` (I/O) and
//! `plugin` (the kubectl plugin).

pub mod analysis;
pub mod api;
pub mod controller;
pub mod notify;
pub mod planner;
pub mod plugin;
