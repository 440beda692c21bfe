//! Builds what a real Kubernetes node runs, from Go modules through the Go
//! module proxy, and caches the binaries next to the control plane's; and
//! installs the few Debian packages a node needs, idempotently.
//!
//! ```text
//!  <cache>/cluster/kubernetes-v1.36.3/node-bin/   kubelet, kube-proxy, kube-scheduler
//!        (built in the control plane's wrapper module, its own bin dir)
//!  <cache>/cluster/containerd-v2.4.2/bin/         containerd, containerd-shim-runc-v2, ctr
//!  <cache>/cluster/runc-v1.5.3/bin/runc           cgo, `-tags seccomp` (libseccomp-dev)
//!  <cache>/cluster/coredns-v1.15.0/bin/coredns
//!  Debian: libseccomp-dev pkg-config (to build runc), iptables conntrack
//!          containernetworking-plugins (to run a node; CNI plugins in /usr/lib/cni)
//! ```
//!
//! The Kubernetes components come from the same pinned `k8s.io/kubernetes`
//! module and wrapper as kube-apiserver ([`super::build`]), stamped with the
//! same `-ldflags`, so a Node reports the control plane's version. They land
//! in `node-bin/`, not `bin/`, so the control plane's "is it built" check
//! does not change meaning. The kubelet needs go.sum entries the control
//! plane did not (`k8s.io/cri-streaming`, an otelrestful module); the
//! wrapper's `-mod=mod` build adds them.
//!
//! containerd, runc and CoreDNS have no local `replace` directives in their
//! `go.mod` at the pinned versions, so they need no wrapper module: `go
//! install <pkg>@<version>` builds each against its own go.mod and go.sum,
//! exactly the dependency versions its release was tested with (a wrapper
//! module requiring the release would resolve to the same versions, with
//! less checking). `go install` puts the binaries in a partial directory
//! that is renamed into place once all are built.
//!
//! Cold builds measured here (2 cores shared with two other developers'
//! cargo builds, load about 9; Go's module and build caches empty at the
//! first one), in the order they ran:
//!
//! | what | cold | warm Go build cache |
//! | --- | --- | --- |
//! | containerd, shim, ctr | 565 s | 31 s |
//! | kubelet, kube-proxy, kube-scheduler | 1,928 s | 102 s (link only) |
//! | runc (after containerd: shares golang.org/x/sys and such) | 72 s | |
//! | CoreDNS (after the others; many cloud SDK modules) | 1,016 s | |
//!
//! The cold containerd and Kubernetes figures are the same `go install` and
//! `go build` commands run by hand in a scratch directory first; this
//! module's own run then found Go's build cache warm (the right column).
//! On an idle machine with the control plane already built, the kubelet
//! took about 4 minutes and containerd about 80 s (an earlier run by hand).
//!
//! What this is not: a node. Nothing here starts a process other than the
//! Go toolchain and apt; configuring and running containerd and the kubelet
//! is another module's job.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use super::build::{self, cache_dir, say};
use super::versions;

/// Debian packages needed to build runc with seccomp support.
pub const BUILD_PACKAGES: &[&str] = &["libseccomp-dev", "pkg-config"];

/// Debian packages a running node cluster needs, checked on every
/// [`ensure_node_built`] (a no-op once installed): kube-proxy's iptables
/// mode and conntrack cleanup, the CNI plugins containerd calls (bridge,
/// host-local, loopback, portmap), a C compiler and static libc for the
/// pause program each cluster compiles ([`super::node::build_pause`]), and
/// python3, with which `node_cluster` asks DNS from inside a pod's network
/// namespace.
pub const RUN_PACKAGES: &[&str] = &[
    "iptables",
    "conntrack",
    "containernetworking-plugins",
    "gcc",
    "libc6-dev",
    "python3",
];

/// Where Debian's `containernetworking-plugins` puts the CNI plugins.
pub const DEBIAN_CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The CNI plugins a node's network configuration uses.
pub const CNI_PLUGINS: &[&str] = &["bridge", "host-local", "loopback", "portmap"];

/// Paths of a node's binaries.
#[derive(Debug, Clone)]
pub struct NodeBinaries {
    /// `kubelet`.
    pub kubelet: PathBuf,
    /// `kube-proxy`.
    pub kube_proxy: PathBuf,
    /// `kube-scheduler`.
    pub kube_scheduler: PathBuf,
    /// `containerd`.
    pub containerd: PathBuf,
    /// `containerd-shim-runc-v2`, which containerd finds on its PATH.
    pub containerd_shim: PathBuf,
    /// `ctr`, containerd's own client (image import).
    pub ctr: PathBuf,
    /// `runc`, which the shim finds on its PATH: put its directory first.
    pub runc: PathBuf,
    /// `coredns`.
    pub coredns: PathBuf,
    /// The directory holding the CNI plugins ([`CNI_PLUGINS`]).
    pub cni_bin_dir: PathBuf,
}

impl NodeBinaries {
    /// Every binary built here, with its name.
    pub fn built(&self) -> [(&'static str, &Path); 8] {
        [
            ("kubelet", &self.kubelet),
            ("kube-proxy", &self.kube_proxy),
            ("kube-scheduler", &self.kube_scheduler),
            ("containerd", &self.containerd),
            ("containerd-shim-runc-v2", &self.containerd_shim),
            ("ctr", &self.ctr),
            ("runc", &self.runc),
            ("coredns", &self.coredns),
        ]
    }

    /// Whether every built binary and every CNI plugin is present.
    pub fn present(&self) -> bool {
        self.built().iter().all(|(_, p)| p.is_file())
            && CNI_PLUGINS
                .iter()
                .all(|p| self.cni_bin_dir.join(p).is_file())
    }

    fn kubernetes_present(&self) -> bool {
        [&self.kubelet, &self.kube_proxy, &self.kube_scheduler]
            .iter()
            .all(|p| p.is_file())
    }

    fn containerd_present(&self) -> bool {
        [&self.containerd, &self.containerd_shim, &self.ctr]
            .iter()
            .all(|p| p.is_file())
    }
}

/// The directory a Go-installed component is cached in for a version:
/// `<cache>/cluster/<name>-<version>`.
fn component_dir(cache: &Path, name: &str, version: &str) -> PathBuf {
    cache.join("cluster").join(format!("{name}-{version}"))
}

/// Where the node binaries are (or will be) for the pinned versions, under
/// the cache root `cache`.
pub fn node_binaries_in(cache: &Path) -> NodeBinaries {
    let k = component_dir(cache, "kubernetes", versions::KUBERNETES).join("node-bin");
    let c = component_dir(cache, "containerd", versions::CONTAINERD).join("bin");
    NodeBinaries {
        kubelet: k.join("kubelet"),
        kube_proxy: k.join("kube-proxy"),
        kube_scheduler: k.join("kube-scheduler"),
        containerd: c.join("containerd"),
        containerd_shim: c.join("containerd-shim-runc-v2"),
        ctr: c.join("ctr"),
        runc: component_dir(cache, "runc", versions::RUNC).join("bin/runc"),
        coredns: component_dir(cache, "coredns", versions::COREDNS).join("bin/coredns"),
        cni_bin_dir: PathBuf::from(DEBIAN_CNI_BIN_DIR),
    }
}

/// Where the node binaries are (or will be) in the cache ([`cache_dir`]).
pub fn node_binaries() -> anyhow::Result<NodeBinaries> {
    Ok(node_binaries_in(&cache_dir()?))
}

/// Returns the cached node binaries, installing the Debian packages and
/// building whatever is missing first. `progress` prints what happens and
/// how long each build took to stderr (a cold build takes many minutes).
pub fn ensure_node_built(progress: bool) -> anyhow::Result<NodeBinaries> {
    let bins = node_binaries()?;
    if bins.present() {
        // The binaries are cached; what they run with comes from Debian and
        // may not be installed on this machine yet.
        ensure_debian_packages(RUN_PACKAGES, progress)?;
        return Ok(bins);
    }
    let root = cache_dir()?;
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    // The control plane's lock: the Kubernetes wrapper module is shared, and
    // two apt-get runs would fight over dpkg's lock.
    let lock = File::create(root.join("cluster-build.lock"))?;
    lock.lock().context("locking the build cache")?;
    if bins.present() {
        return Ok(bins);
    }
    let started = Instant::now();
    let mut packages = BUILD_PACKAGES.to_vec();
    packages.extend_from_slice(RUN_PACKAGES);
    ensure_debian_packages(&packages, progress)?;
    let go = crate::gobuild::go_version("the node components")?;
    say(progress, &format!("building node components with {go}"));
    if !bins.kubernetes_present() {
        let t = Instant::now();
        let src = build::write_kubernetes_wrapper(progress)?;
        let dir = bins.kubelet.parent().context("kubelet has a parent")?;
        build::go_build(
            progress,
            &src,
            dir,
            &build::kubernetes_ldflags(),
            &[
                "k8s.io/kubernetes/cmd/kubelet",
                "k8s.io/kubernetes/cmd/kube-proxy",
                "k8s.io/kubernetes/cmd/kube-scheduler",
            ],
        )?;
        say(
            progress,
            &format!("kubelet, kube-proxy, kube-scheduler: {:.0?}", t.elapsed()),
        );
    }
    if !bins.containerd_present() {
        let t = Instant::now();
        go_install(
            progress,
            &GoInstall {
                packages: containerd_packages(),
                tags: "no_btrfs no_devmapper no_zfs",
                ldflags: containerd_ldflags(),
                cgo: false,
            },
            bins.containerd
                .parent()
                .context("containerd has a parent")?,
        )?;
        say(
            progress,
            &format!("containerd, its runc shim, ctr: {:.0?}", t.elapsed()),
        );
    }
    if !bins.runc.is_file() {
        let t = Instant::now();
        go_install(
            progress,
            &GoInstall {
                packages: vec![format!("github.com/opencontainers/runc@{}", versions::RUNC)],
                // What runc's Makefile builds with, less libpathrs (a Rust
                // library Debian 12 does not ship; runc falls back to its
                // pure-Go path resolution).
                tags: "seccomp urfave_cli_no_docs",
                ldflags: format!("-X main.gitCommit={}", versions::RUNC),
                cgo: true,
            },
            bins.runc.parent().context("runc has a parent")?,
        )?;
        say(progress, &format!("runc: {:.0?}", t.elapsed()));
    }
    if !bins.coredns.is_file() {
        let t = Instant::now();
        go_install(
            progress,
            &GoInstall {
                packages: vec![format!("github.com/coredns/coredns@{}", versions::COREDNS)],
                tags: "",
                ldflags: String::new(),
                cgo: false,
            },
            bins.coredns.parent().context("coredns has a parent")?,
        )?;
        say(progress, &format!("coredns: {:.0?}", t.elapsed()));
    }
    if let Some(missing) = CNI_PLUGINS
        .iter()
        .find(|p| !bins.cni_bin_dir.join(p).is_file())
    {
        bail!(
            "the CNI plugin {missing} is not in {} although containernetworking-plugins is installed",
            bins.cni_bin_dir.display()
        );
    }
    say(
        progress,
        &format!("node components built in {:.0?}", started.elapsed()),
    );
    Ok(bins)
}

fn containerd_packages() -> Vec<String> {
    ["cmd/containerd", "cmd/containerd-shim-runc-v2", "cmd/ctr"]
        .iter()
        .map(|cmd| {
            format!(
                "github.com/containerd/containerd/v2/{cmd}@{}",
                versions::CONTAINERD
            )
        })
        .collect()
}

/// containerd's version stamp (its Makefile sets the same variable), so
/// `containerd --version` and the CRI's runtime version say the release.
fn containerd_ldflags() -> String {
    format!(
        "-X github.com/containerd/containerd/v2/version.Version={}",
        versions::CONTAINERD.trim_start_matches('v')
    )
}

/// One `go install` of packages at a version.
#[derive(Debug)]
struct GoInstall {
    /// `<package>@<version>`, all from one module.
    packages: Vec<String>,
    /// `-tags`, space-separated; empty for none.
    tags: &'static str,
    /// `-ldflags`; empty for none.
    ldflags: String,
    /// Whether cgo is needed (runc's seccomp); otherwise it is turned off,
    /// so the binaries do not depend on the host's glibc version.
    cgo: bool,
}

impl GoInstall {
    fn args(&self) -> Vec<String> {
        let mut args = vec!["install".to_owned(), "-v".to_owned()];
        if !self.tags.is_empty() {
            args.push(format!("-tags={}", self.tags));
        }
        if !self.ldflags.is_empty() {
            args.push(format!("-ldflags={}", self.ldflags));
        }
        args.extend(self.packages.iter().cloned());
        args
    }
}

/// Runs `go install` into `<dest>.partial`, then renames that to `dest`.
fn go_install(progress: bool, install: &GoInstall, dest: &Path) -> anyhow::Result<()> {
    let partial = dest.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    say(
        progress,
        &format!(
            "go install {} -> {}",
            install.packages.join(" "),
            dest.display()
        ),
    );
    let scratch = partial.parent().context("the partial dir has a parent")?;
    let out = Command::new("go")
        .args(install.args())
        .env("GOBIN", &partial)
        .env("CGO_ENABLED", if install.cgo { "1" } else { "0" })
        // `go install pkg@version` ignores any enclosing module and refuses
        // -mod; VCS stamping has no repository to read.
        .env("GOFLAGS", "-buildvcs=false")
        .current_dir(scratch)
        .output()
        .context("running `go install`")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        bail!(
            "`go install {}` failed ({}); is the Go module proxy reachable (GOPROXY)?\n{}",
            install.packages.join(" "),
            out.status,
            lines[lines.len().saturating_sub(30)..].join("\n")
        );
    }
    let _ = fs::remove_dir_all(dest);
    fs::rename(&partial, dest)
        .with_context(|| format!("moving the built binaries to {}", dest.display()))?;
    Ok(())
}

/// Whether `dpkg-query -W -f='${Status}'` output means installed.
fn dpkg_status_installed(status: &str) -> bool {
    // "install ok installed"; "deinstall ok config-files" is removed but
    // configured, "install ok unpacked" a half-finished install.
    status.split_whitespace().last() == Some("installed")
}

fn debian_package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| {
            o.status.success() && dpkg_status_installed(&String::from_utf8_lossy(&o.stdout))
        })
}

/// Installs the Debian packages that are not installed yet with apt-get
/// (as root); does nothing, and needs no network, when all are. `apt-get
/// update` runs only when something is missing. An error names the
/// packages that could not be installed.
pub fn ensure_debian_packages(packages: &[&str], progress: bool) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !debian_package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    say(progress, &format!("apt-get install {list}"));
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .with_context(|| {
                format!("the Debian packages {list} are needed, and apt-get could not be run")
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            bail!(
                "`apt-get {}` failed ({}) while installing the Debian packages {list} (install them by hand, as root):\n{}",
                args.join(" "),
                out.status,
                stderr.trim()
            );
        }
        Ok(())
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)?;
    if let Some(p) = missing.iter().find(|p| !debian_package_installed(p)) {
        bail!("apt-get reported success but the Debian package {p} is still not installed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_derive_from_the_pinned_versions() {
        let bins = node_binaries_in(Path::new("/c"));
        assert_eq!(
            bins.kubelet,
            PathBuf::from(format!(
                "/c/cluster/kubernetes-{}/node-bin/kubelet",
                versions::KUBERNETES
            ))
        );
        assert_eq!(
            bins.containerd_shim,
            PathBuf::from(format!(
                "/c/cluster/containerd-{}/bin/containerd-shim-runc-v2",
                versions::CONTAINERD
            ))
        );
        assert_eq!(
            bins.runc,
            PathBuf::from(format!("/c/cluster/runc-{}/bin/runc", versions::RUNC))
        );
        assert_eq!(
            bins.coredns,
            PathBuf::from(format!(
                "/c/cluster/coredns-{}/bin/coredns",
                versions::COREDNS
            ))
        );
        // Not the control plane's bin/, whose completeness check must not change.
        let control = Path::new("/c/cluster")
            .join(format!("kubernetes-{}", versions::KUBERNETES))
            .join("bin");
        assert!(bins.built().iter().all(|(_, p)| !p.starts_with(&control)));
    }

    #[test]
    fn every_binary_is_named_after_its_file() {
        let bins = node_binaries_in(Path::new("/c"));
        for (name, path) in bins.built() {
            assert_eq!(path.file_name().unwrap().to_str(), Some(name));
        }
    }

    #[test]
    fn containerd_commands_come_from_one_module_version() {
        let pkgs = containerd_packages();
        assert_eq!(pkgs.len(), 3);
        for p in &pkgs {
            assert!(p.starts_with("github.com/containerd/containerd/v2/cmd/"));
            assert!(p.ends_with(&format!("@{}", versions::CONTAINERD)));
        }
        assert!(
            containerd_ldflags()
                .ends_with(&format!("version.Version={}", &versions::CONTAINERD[1..]))
        );
    }

    #[test]
    fn go_install_arguments() {
        let install = GoInstall {
            packages: vec!["example.com/x@v1.0.0".into()],
            tags: "seccomp a",
            ldflags: "-X main.v=1".into(),
            cgo: true,
        };
        assert_eq!(
            install.args(),
            [
                "install",
                "-v",
                "-tags=seccomp a",
                "-ldflags=-X main.v=1",
                "example.com/x@v1.0.0"
            ]
        );
        let bare = GoInstall {
            packages: vec!["example.com/x@v1.0.0".into()],
            tags: "",
            ldflags: String::new(),
            cgo: false,
        };
        assert_eq!(bare.args(), ["install", "-v", "example.com/x@v1.0.0"]);
    }

    #[test]
    fn dpkg_status() {
        assert!(dpkg_status_installed("install ok installed"));
        assert!(!dpkg_status_installed("deinstall ok config-files"));
        assert!(!dpkg_status_installed("install ok unpacked"));
        assert!(!dpkg_status_installed(""));
    }
}
