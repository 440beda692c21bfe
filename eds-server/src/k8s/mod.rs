//! The Kubernetes side of eds-server, as pure synchronous code.
//!
//! ```text
//!  kube watchers (async, elsewhere)
//!     | apply / delete (listing: Init, InitApply.., InitDone, by key)
//!     v
//!  index::Index  --topology()-->  publish::Publisher  --Arc<Topology>-->  TopologySender
//!  Services, EndpointSlices,      coalescing window,
//!  optional Pods                  mass-drop guard
//! ```
//!
//! What this module is: the rules that turn Kubernetes objects into a
//! [`crate::topology::Topology`] ([`index`]), decide when the watches have
//! seen enough to publish at all ([`gate`]) and when and what to publish
//! ([`publish`]), with time passed in so both are tested without a
//! cluster and without a clock. What it is not: the watchers, the tokio task
//! that sleeps until [`publish::Publisher::next_deadline`], or anything that
//! talks to the API server; that driver is a thin loop around these two.

pub mod gate;
pub mod index;
pub mod listing;
pub mod publish;

#[cfg(test)]
pub(crate) mod fixtures;
/// Test data at scale for benchmarks and memory probes (feature `test-support`).
#[cfg(feature = "test-support")]
pub mod synthetic;

pub use index::{BuildStats, Index, IndexConfig, IndexStats};
pub use publish::{PublishConfigError, PublishStats, Publisher, PublisherConfig};
