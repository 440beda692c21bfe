//! eds-devkit: the local Kubernetes the project develops and tests
//! against, as a library (the suites in `tests/`, the demo and the
//! benchmarks use it) and as the `eds-dev` program (`cargo xtask cluster`,
//! `image`, `e2e`, `interop` and `test`'s install step run it).
//!
//! ```text
//!  cluster   build etcd + kube-apiserver + kube-controller-manager + kubectl
//!            from Go modules (cached); start them as local processes;
//!            build a node's kubelet, containerd, runc, CoreDNS (node_build)
//!  netns     the pod network: a network namespace holding every pod IP
//!  process   child processes that never outlive the run (parent-death signal)
//!  harness   one shared cluster per test binary; namespaces, zoned Nodes,
//!            Services, Pods; the harness plays the kubelet
//!  server    eds-server in-process, its admin API, the echo Service
//!  tools     Helm, built from its Go module (cached), for the deploy tests
//!  blackhole a loopback TCP proxy whose connections can go silent (drills)
//!  image     OCI layout tarballs of the project's images, no Docker or registry
//!  e2e       the product installed and run on a zoned cluster (local nodes or
//!            kind): helm, the echo backend, lb-client, grpc-go, edsctl, DNS
//! ```
//!
//! `cargo xtask cluster` drives the same code for people. This crate is
//! not a fake: everything here starts or talks to the real thing. It uses
//! `anyhow` throughout, as test code does.

pub mod blackhole;
pub mod cluster;
pub mod e2e;
pub mod gobuild;
pub mod harness;
pub mod image;
pub mod interop;
pub mod netns;
pub mod process;
pub mod server;
pub mod tools;
pub mod xds;
