//! edsctl: the SRE's view of eds-server and of what every client sees.
//!
//! ```text
//!  cli ──> commands ──> http (AdminClient over TCP / TLS / port-forward) ──> eds-server admin API
//!            │   └────> discovery (kubeconfig -> Service -> ready pod -> port-forward)
//!            │   └────> k8s (Service + EndpointSlices, for diff)
//!            v
//!  model (eds-admin-api) ──> diff · simulate (lb_core::Balancer) · watch (events) · suggest
//!            v
//!          render (table / wide / json / yaml) ──> stdout
//! ```
//!
//! Pure modules (`model`, `diff`, `simulate`, `watch`, `suggest`,
//! `render`, the mapping in `k8s` and the pod choice in `discovery`) hold
//! the logic and are unit-tested; `http`, `discovery`, `k8s::read` and
//! `commands` do the IO. The binary (`src/main.rs`) parses flags, decides
//! on colour, runs [`run`] and turns errors into messages and exit codes
//! (see [`error`]).
//!
//! What edsctl is not: a control tool. It only reads, from eds-server's
//! admin API and from the Kubernetes API; it never changes either.

pub mod cli;
pub mod commands;
pub mod diff;
pub mod discovery;
pub mod error;
pub mod http;
pub mod k8s;
/// The admin API's JSON (crate `eds-admin-api`, the contract eds-server serves).
pub use eds_admin_api as model;
pub mod render;
pub mod simulate;
pub mod suggest;
pub mod watch;

pub use commands::run;
pub use error::Error;
