//! The pinned versions of the local control plane, in one place.
//!
//! Changing a version here is the whole upgrade: the build step derives the
//! wrapper modules (and the Kubernetes staging-module replacements) from
//! these constants, and binaries are cached per version, so old and new
//! builds never mix. Keep `k8s-openapi`'s feature in the root `Cargo.toml`
//! on the same minor.

/// Kubernetes release whose kube-apiserver, kube-controller-manager and
/// kubectl are built from the `k8s.io/kubernetes` Go module.
pub const KUBERNETES: &str = "v1.36.3";

/// The version the Kubernetes staging modules (`k8s.io/api`, ...) are
/// published under for [`KUBERNETES`]: `v0.<minor>.<patch>`.
pub const KUBERNETES_STAGING: &str = "v0.36.3";

/// etcd release built from `go.etcd.io/etcd/server/v3`; the one the pinned
/// Kubernetes release's own `go.mod` requires for its etcd client.
pub const ETCD: &str = "v3.6.8";

/// containerd release (`github.com/containerd/containerd/v2`) a node runs:
/// Kubernetes 1.36 no longer supports containerd 1.x.
pub const CONTAINERD: &str = "v2.4.2";

/// runc release (`github.com/opencontainers/runc`) containerd's shim runs.
/// Debian 12's runc 1.1.5 fails under containerd 2 (`can't get final
/// child's PID from pipe`).
pub const RUNC: &str = "v1.5.3";

/// CoreDNS release (`github.com/coredns/coredns`), the cluster DNS.
pub const COREDNS: &str = "v1.15.0";
