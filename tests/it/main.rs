//! One test binary for everything: real plugin components in the real sandbox,
//! and a real PostgreSQL cluster shared by the binary (a fresh database per test).

mod agent;
mod aws;
mod azure;
mod azure_trust;
mod boundaries;
mod coder_bodies;
mod coder_front;
mod db_kind;
mod drain;
mod edge;
mod faults;
mod gcp;
mod http;
mod issuers;
mod mounts;
mod oidc;
mod plugin_trust;
mod reload;
mod replicas;
mod resolve;
mod sandbox;
mod tls;
mod topology;
