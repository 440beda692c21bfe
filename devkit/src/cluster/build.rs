//! Builds kube-apiserver, kube-controller-manager, kubectl and etcd from
//! their Go modules through the Go module proxy, and caches the binaries.
//!
//! Neither `k8s.io/kubernetes` nor etcd's server can be `go install`ed: their
//! `go.mod` files replace sibling modules with local paths. So each gets a
//! small wrapper module in the cache directory that requires the pinned
//! release and replaces every staging module the release requires with its
//! published version. The replace list is read from the release's own
//! `go.mod`, never written by hand.
//!
//! ```text
//!  <cache>/cluster/kubernetes-v1.36.3/src/go.mod   wrapper module
//!  <cache>/cluster/kubernetes-v1.36.3/bin/          kube-apiserver, kube-controller-manager, kubectl
//!  <cache>/cluster/etcd-v3.6.8/{src,bin}/           the same for etcd
//! ```
//!
//! Go's own module and build caches make a second build of the same version
//! cheap even if `bin/` is removed. This module is not a general Go build
//! tool: it knows exactly these two wrappers.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::versions;

/// Paths of the built binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `kube-controller-manager`.
    pub kube_controller_manager: PathBuf,
    /// `kubectl`.
    pub kubectl: PathBuf,
    /// `etcd`.
    pub etcd: PathBuf,
}

/// The cache root: `$EDS_CACHE_DIR`, else `$XDG_CACHE_HOME/eds`, else `~/.cache/eds`.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("EDS_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("eds"));
    }
    let home = std::env::var_os("HOME")
        .context("neither EDS_CACHE_DIR, XDG_CACHE_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/eds"))
}

pub(crate) fn kubernetes_dir() -> anyhow::Result<PathBuf> {
    Ok(cache_dir()?.join(format!("cluster/kubernetes-{}", versions::KUBERNETES)))
}

fn etcd_dir() -> anyhow::Result<PathBuf> {
    Ok(cache_dir()?.join(format!("cluster/etcd-{}", versions::ETCD)))
}

/// Where the binaries are (or will be) for the pinned versions.
pub fn binaries() -> anyhow::Result<Binaries> {
    let k = kubernetes_dir()?.join("bin");
    Ok(Binaries {
        kube_apiserver: k.join("kube-apiserver"),
        kube_controller_manager: k.join("kube-controller-manager"),
        kubectl: k.join("kubectl"),
        etcd: etcd_dir()?.join("bin/etcd"),
    })
}

impl Binaries {
    fn all(&self) -> [&Path; 4] {
        [
            &self.kube_apiserver,
            &self.kube_controller_manager,
            &self.kubectl,
            &self.etcd,
        ]
    }

    /// Whether every binary is present.
    pub fn present(&self) -> bool {
        self.all().iter().all(|p| p.is_file())
    }
}

/// Returns the cached binaries, building whatever is missing first.
/// `progress` prints what is happening to stderr (a cold build takes minutes).
pub fn ensure_built(progress: bool) -> anyhow::Result<Binaries> {
    let bins = binaries()?;
    if bins.present() {
        return Ok(bins);
    }
    let root = cache_dir()?;
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    // Two test binaries (or a test and `cargo xtask`) may race to build.
    let lock = File::create(root.join("cluster-build.lock"))?;
    lock.lock().context("locking the build cache")?;
    if bins.present() {
        return Ok(bins);
    }
    crate::gobuild::go_version("the local control plane")?;
    let started = Instant::now();
    if !(bins.kube_apiserver.is_file()
        && bins.kube_controller_manager.is_file()
        && bins.kubectl.is_file())
    {
        build_kubernetes(progress)?;
    }
    if !bins.etcd.is_file() {
        build_etcd(progress)?;
    }
    if progress {
        eprintln!("local control plane built in {:.0?}", started.elapsed());
    }
    Ok(bins)
}

fn build_kubernetes(progress: bool) -> anyhow::Result<()> {
    let dir = kubernetes_dir()?;
    let src = write_kubernetes_wrapper(progress)?;
    go_build(
        progress,
        &src,
        &dir.join("bin"),
        &kubernetes_ldflags(),
        &[
            "k8s.io/kubernetes/cmd/kube-apiserver",
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            "k8s.io/kubernetes/cmd/kubectl",
        ],
    )
}

/// Writes the Kubernetes wrapper module (`<kubernetes dir>/src/go.mod`) and
/// returns its directory. The node components ([`super::node_build`]) are
/// built in the same module, so they share its go.sum and Go's build cache.
pub(crate) fn write_kubernetes_wrapper(progress: bool) -> anyhow::Result<PathBuf> {
    let src = kubernetes_dir()?.join("src");
    fs::create_dir_all(&src)?;
    say(
        progress,
        &format!(
            "resolving k8s.io/kubernetes@{} through the Go module proxy",
            versions::KUBERNETES
        ),
    );
    let release_mod = module_go_mod("k8s.io/kubernetes", versions::KUBERNETES, &src)?;
    let go_mod = kubernetes_wrapper(&release_mod)?;
    fs::write(src.join("go.mod"), go_mod)?;
    Ok(src)
}

/// The `-ldflags` that stamp the pinned release into `component-base`, so
/// `/version` and a Node's `kubeletVersion` say it instead of `v0.0.0-master`.
pub(crate) fn kubernetes_ldflags() -> String {
    let (major, minor) = major_minor(versions::KUBERNETES);
    [
        format!(
            "-X k8s.io/component-base/version.gitVersion={}",
            versions::KUBERNETES
        ),
        format!("-X k8s.io/component-base/version.gitMajor={major}"),
        format!("-X k8s.io/component-base/version.gitMinor={minor}"),
        "-X k8s.io/component-base/version.gitTreeState=clean".to_owned(),
    ]
    .join(" ")
}

fn build_etcd(progress: bool) -> anyhow::Result<()> {
    let dir = etcd_dir()?;
    let src = dir.join("src");
    fs::create_dir_all(&src)?;
    // A module of its own, so etcd's gRPC and OpenTelemetry versions never
    // meet Kubernetes' in one build graph.
    fs::write(
        src.join("go.mod"),
        format!(
            "module eds.rs/local-cluster/etcd\n\ngo 1.24.0\n\nrequire go.etcd.io/etcd/server/v3 {}\n",
            versions::ETCD
        ),
    )?;
    go_build(
        progress,
        &src,
        &dir.join("bin"),
        "",
        &["go.etcd.io/etcd/server/v3"],
    )?;
    // Go names the binary after the path element before the `/v3` suffix.
    for name in ["server", "v3"] {
        let built = dir.join("bin").join(name);
        if built.is_file() {
            fs::rename(&built, dir.join("bin/etcd"))?;
        }
    }
    Ok(())
}

/// The text of a module version's `go.mod`, downloaded through the proxy.
fn module_go_mod(module: &str, version: &str, workdir: &Path) -> anyhow::Result<String> {
    let out = Command::new("go")
        .args(["mod", "download", "-json", &format!("{module}@{version}")])
        .current_dir(workdir)
        .env("GOFLAGS", "-mod=mod")
        .output()
        .context("running `go mod download`")?;
    if !out.status.success() {
        bail!(
            "`go mod download {module}@{version}` failed (is the Go module proxy reachable?):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let info: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing `go mod download -json`")?;
    let path = info["GoMod"]
        .as_str()
        .context("`go mod download -json` gave no GoMod path")?;
    fs::read_to_string(path).with_context(|| format!("reading {path}"))
}

/// The wrapper `go.mod`: require the release, and replace each staging
/// module that the release both requires and replaces with a local path.
pub fn kubernetes_wrapper(release_go_mod: &str) -> anyhow::Result<String> {
    let required: Vec<&str> = release_go_mod
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (m, v) = (parts.next()?, parts.next()?);
            (v == "v0.0.0").then_some(m)
        })
        .collect();
    let go_line = release_go_mod
        .lines()
        .find(|l| l.starts_with("go "))
        .context("the release's go.mod has no `go` line")?;
    let mut out = format!(
        "// Generated by eds-tests from k8s.io/kubernetes@{}'s go.mod; do not edit.\nmodule eds.rs/local-cluster/kubernetes\n\n{go_line}\n\nrequire k8s.io/kubernetes {}\n\nreplace (\n",
        versions::KUBERNETES,
        versions::KUBERNETES
    );
    let mut n = 0;
    for line in release_go_mod.lines() {
        let Some((module, target)) = line.trim().split_once("=>") else {
            continue;
        };
        let module = module.trim();
        if target.trim().starts_with("./staging/") && required.contains(&module) {
            out.push_str(&format!(
                "\t{module} => {module} {}\n",
                versions::KUBERNETES_STAGING
            ));
            n += 1;
        }
    }
    out.push_str(")\n");
    if n < 10 {
        bail!(
            "found only {n} staging replacements in k8s.io/kubernetes's go.mod; its layout changed"
        );
    }
    Ok(out)
}

fn major_minor(version: &str) -> (String, String) {
    let mut parts = version.trim_start_matches('v').split('.');
    (
        parts.next().unwrap_or("0").to_owned(),
        parts.next().unwrap_or("0").to_owned(),
    )
}

pub(crate) fn go_build(
    progress: bool,
    src: &Path,
    bin: &Path,
    ldflags: &str,
    packages: &[&str],
) -> anyhow::Result<()> {
    let tmp = bin.with_extension("partial");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    say(
        progress,
        &format!(
            "go build {} (a cold build takes several minutes on 2 cores)",
            packages.join(" ")
        ),
    );
    let mut cmd = Command::new("go");
    cmd.arg("build").arg("-v");
    if !ldflags.is_empty() {
        cmd.arg("-ldflags").arg(ldflags);
    }
    let mut child = cmd
        .arg("-o")
        .arg(format!("{}/", tmp.display()))
        .args(packages)
        .current_dir(src)
        // -mod=mod lets the first build fill in go.sum from the proxy's checksum database.
        .env("GOFLAGS", "-mod=mod -buildvcs=false")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting `go build`")?;
    let started = Instant::now();
    let mut last_report = Instant::now();
    let (mut compiled, mut downloaded) = (0usize, 0usize);
    let mut tail: Vec<String> = Vec::new();
    let stderr = child.stderr.take().context("no stderr")?;
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        if line.starts_with("go: downloading") {
            downloaded += 1;
        } else if !line.starts_with('#') && !line.contains(' ') {
            compiled += 1;
        } else {
            tail.push(line.clone());
        }
        if progress && last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  [{:>4}s] {downloaded} modules downloaded, {compiled} packages built; now {line}",
                started.elapsed().as_secs()
            );
            last_report = Instant::now();
        }
    }
    let status = child.wait()?;
    if !status.success() {
        let shown = tail[tail.len().saturating_sub(30)..].join("\n");
        bail!(
            "`go build` in {} failed ({status}):\n{shown}",
            src.display()
        );
    }
    let _ = fs::remove_dir_all(bin);
    fs::rename(&tmp, bin)?;
    say(
        progress,
        &format!(
            "compiled {} packages (the rest came from Go's build cache) in {:.0?} -> {}",
            compiled,
            started.elapsed(),
            bin.display()
        ),
    );
    Ok(())
}

pub(crate) fn say(progress: bool, what: &str) {
    if progress {
        eprintln!("==> {what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapper_replaces_only_required_staging_modules() {
        let release = "module k8s.io/kubernetes\n\ngo 1.26.0\n\nrequire (\n\tk8s.io/api v0.0.0\n\tk8s.io/a1 v0.0.0\n\tk8s.io/a2 v0.0.0\n\tk8s.io/a3 v0.0.0\n\tk8s.io/a4 v0.0.0\n\tk8s.io/a5 v0.0.0\n\tk8s.io/a6 v0.0.0\n\tk8s.io/a7 v0.0.0\n\tk8s.io/a8 v0.0.0\n\tk8s.io/a9 v0.0.0\n\tgithub.com/x/y v1.0.0\n)\n\nreplace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n\tk8s.io/a1 => ./staging/src/k8s.io/a1\n\tk8s.io/a2 => ./staging/src/k8s.io/a2\n\tk8s.io/a3 => ./staging/src/k8s.io/a3\n\tk8s.io/a4 => ./staging/src/k8s.io/a4\n\tk8s.io/a5 => ./staging/src/k8s.io/a5\n\tk8s.io/a6 => ./staging/src/k8s.io/a6\n\tk8s.io/a7 => ./staging/src/k8s.io/a7\n\tk8s.io/a8 => ./staging/src/k8s.io/a8\n\tk8s.io/a9 => ./staging/src/k8s.io/a9\n\tk8s.io/sample-cli-plugin => ./staging/src/k8s.io/sample-cli-plugin\n)\n";
        let out = kubernetes_wrapper(release).unwrap();
        assert!(out.contains("go 1.26.0"));
        assert!(out.contains(&format!(
            "k8s.io/api => k8s.io/api {}",
            versions::KUBERNETES_STAGING
        )));
        assert!(
            !out.contains("sample-cli-plugin"),
            "not required, so not replaced: {out}"
        );
        assert!(!out.contains("github.com/x/y =>"));
    }

    #[test]
    fn a_changed_layout_is_an_error() {
        assert!(kubernetes_wrapper("module k8s.io/kubernetes\n\ngo 1.26.0\n").is_err());
    }
}
