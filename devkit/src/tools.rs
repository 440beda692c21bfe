//! Command-line tools the tests need besides the control plane, built from
//! their Go modules through the Go module proxy and cached: today only
//! Helm, which renders `deploy/helm/eds-server` for the deploy tests.
//!
//! ```text
//!  go install helm.sh/helm/v3/cmd/helm@<HELM>   (GOBIN = a scratch dir, version stamped)
//!     ──rename──>  <cache>/tools/helm-<HELM>/helm
//! ```
//!
//! Helm's `go.mod` has no local replacements, so unlike Kubernetes it needs
//! no wrapper module: `go install <pkg>@<version>` resolves it. The binary
//! is moved into place only once the build succeeded, under a lock, so a
//! second caller (another test binary, `cargo xtask test`) finds either
//! nothing or a whole binary. Go's module and build caches make a rebuild
//! after the cache directory is wiped cheap. kubectl (and so `kubectl
//! kustomize`) is not here: it comes with the control plane
//! ([`crate::cluster::build`]). Not a general tool installer.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::cluster::build::cache_dir;

/// The pinned Helm release (the `helm.sh/helm/v3` module version).
pub const HELM: &str = "v3.22.0";

/// The Go package of the `helm` command.
const HELM_PACKAGE: &str = "helm.sh/helm/v3/cmd/helm";

/// Where the pinned Helm is (or will be) cached: `<cache>/tools/helm-<HELM>/helm`.
pub fn helm_path() -> anyhow::Result<PathBuf> {
    Ok(cache_dir()?
        .join("tools")
        .join(format!("helm-{HELM}"))
        .join("helm"))
}

/// Returns the cached Helm, building it first if needed. `progress` prints
/// what happens to stderr (a cold build takes a minute or two).
pub fn ensure_helm(progress: bool) -> anyhow::Result<PathBuf> {
    let helm = helm_path()?;
    if helm.is_file() {
        return Ok(helm);
    }
    let dir = helm.parent().context("the helm path has a parent")?;
    let root = dir.parent().context("the helm dir has a parent")?;
    fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    // Test binaries and `cargo xtask test` may race to build.
    let lock = File::create(root.join("tools-build.lock"))?;
    lock.lock().context("locking the tools cache")?;
    if helm.is_file() {
        return Ok(helm);
    }
    let go = crate::gobuild::go_version("Helm (helm.sh/helm/v3) for the deploy tests")?;
    if progress {
        eprintln!(
            "==> go install {HELM_PACKAGE}@{HELM} ({go}) -> {}",
            helm.display()
        );
    }
    let started = Instant::now();
    let partial = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let out = Command::new("go")
        .arg("install")
        // Without the stamp `helm version` reports only the major.minor
        // compiled into the source.
        .arg(format!(
            "-ldflags=-X helm.sh/helm/v3/internal/version.version={HELM} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
        ))
        .arg(format!("{HELM_PACKAGE}@{HELM}"))
        .env("GOBIN", &partial)
        // `go install pkg@version` ignores any enclosing module; -mod is not
        // allowed there, and VCS stamping has no repository to read.
        .env("GOFLAGS", "-buildvcs=false")
        .current_dir(root)
        .output()
        .context("running `go install` for Helm")?;
    if !out.status.success() {
        bail!(
            "`go install {HELM_PACKAGE}@{HELM}` failed ({}); is the Go module proxy reachable (GOPROXY)?\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let built = partial.join("helm");
    anyhow::ensure!(
        built.is_file(),
        "`go install` succeeded but left no helm binary in {}",
        partial.display()
    );
    let _ = fs::remove_dir_all(dir);
    fs::rename(&partial, dir)
        .with_context(|| format!("moving the built Helm to {}", dir.display()))?;
    if progress {
        eprintln!(
            "    built in {:.0?} (Go's module and build caches make rebuilds cheap)",
            started.elapsed()
        );
    }
    Ok(helm)
}
