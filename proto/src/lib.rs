//! Wire types: the Envoy xDS API (re-exported from `envoy-types`) and the
//! project's own small protos (the echo service used by test backends and the
//! demo).
//!
//! This crate is the boundary between bytes and domain types. It is not where
//! balancing or Kubernetes logic lives: conversions produce `lb-core` types and
//! validation errors say which resource was bad and why.

pub use envoy_types as xds;

pub mod resources;
pub mod validate;

#[cfg(test)]
mod test_support;

/// The echo service served by test backends and the demo (`eds.echo.v1`).
pub mod echo {
    #![allow(
        missing_docs,
        unreachable_pub,
        clippy::all,
        missing_debug_implementations
    )]
    tonic::include_proto!("eds.echo.v1");
}
