//! A stock grpc-go xDS client (grpc v1.85.0, `devkit/interop/grpc-go`)
//! against eds-server: `xds:///echo.<ns>:8080` with nothing but a bootstrap
//! file, real echo backends on pod IPs of the local cluster, and every
//! interop scenario of `eds_devkit::interop::scenario` (reach, zone affinity
//! and spill, readiness shifts, scale-up, least-request and ring-hash
//! Services ACKed, names that do not exist).
//!
//! ```text
//!  grpc-go client (host) ──ADS, 127.0.0.1──> eds-server (in-process) ──watch──> kube-apiserver
//!         │                                   LDS → RDS → CDS → EDS
//!         └──Echo, pod IPs via the pod network route──> echo backends (3 in zone-a, 3 in zone-b)
//! ```
//!
//! The numbers (shift times, cross-zone shares, calls and errors) go to
//! stderr and `target/interop/report-grpc-go.json`; nothing asserts on them.

use eds_devkit::interop::GRPC_GO;
use eds_devkit::interop::scenario::run_suite;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_go_interop() -> anyhow::Result<()> {
    run_suite(&GRPC_GO).await.map(drop)
}
