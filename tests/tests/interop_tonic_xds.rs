//! A stock tonic-xds client (crates.io tonic-xds 0.1.0-alpha.4, `src/bin/tonic-xds-client.rs`)
//! against eds-server: `xds:///echo.<ns>:8080` with nothing but a bootstrap
//! file, real echo backends on pod IPs of the local cluster, and every
//! interop scenario of `eds_devkit::interop::scenario` (reach, zone affinity
//! and spill, readiness shifts, scale-up, least-request and ring-hash
//! Services ACKed, names that do not exist).
//!
//! ```text
//!  tonic-xds client (host) ──ADS, 127.0.0.1──> eds-server (in-process) ──watch──> kube-apiserver
//!         │                                   LDS → RDS → CDS → EDS
//!         └──Echo, pod IPs via the pod network route──> echo backends (3 in zone-a, 3 in zone-b)
//! ```
//!
//! The numbers (shift times, cross-zone shares, calls and errors) go to
//! stderr and `target/interop/report-tonic-xds.json`; nothing asserts on them.

use eds_devkit::interop::TONIC_XDS;
use eds_devkit::interop::scenario::run_suite;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_xds_interop() -> anyhow::Result<()> {
    run_suite(&TONIC_XDS).await.map(drop)
}
