//! lb-core: the topology types and balancing algorithms shared by eds-server,
//! lb-client, edsctl and the simulator.
//!
//! ```text
//!   key         ServiceKey: "<svc>.<ns>:<port>" and the other accepted forms
//!   endpoint    Endpoint, Health (HEALTHY / DRAINING / UNHEALTHY), Locality
//!   snapshot    EndpointSet, Snapshot, content-derived Version, diffs
//!   pick        P2C (in-flight, peak EWMA), round robin, random, smooth WRR
//!   ring        ring hash, consistent hashing with bounded load
//!   zone        zone affinity with proportional spillover
//!   slow_start  weight ramp from ready_since
//!   outlier     error-aware scoring, ejection, panic-safe caps
//!   balancer    all of the above composed for one service
//!   sim         deterministic discrete-event load simulator
//!   duration    `250ms`, `2m`, `1h30m` as flags and annotations write them
//! ```
//!
//! What this crate is not: it does no IO, reads no clock and no global
//! randomness, and knows nothing of Kubernetes, tonic or protobuf. Time,
//! randomness (seedable, [`rng::Rng`]) and load ([`load::Load`]) are passed in,
//! so every algorithm is a pure function or a small state machine that tests
//! and the simulator drive deterministically.

pub mod balancer;
pub mod duration;
pub mod endpoint;
pub mod error;
pub mod key;
pub mod load;
pub mod outlier;
pub mod pick;
pub mod ring;
pub mod rng;
pub mod sim;
pub mod slow_start;
pub mod snapshot;
pub mod zone;

pub use balancer::{Balancer, BalancerConfig, Pick, PickReason, Policy, Tier};
pub use endpoint::{Endpoint, Health, Locality};
pub use error::{ConfigError, PickError};
pub use key::{KeyError, PortRef, ServiceKey};
pub use load::Load;
pub use rng::{Rng, SmallRng};
pub use snapshot::{EndpointDiff, EndpointSet, Snapshot, SnapshotDiff, Version};
