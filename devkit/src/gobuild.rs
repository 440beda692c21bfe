//! A hash-cached `go build` of a small Go program kept in the repository
//! (a directory with its `go.mod`, `go.sum` and sources), built against the
//! modules its committed `go.sum` pins (fetched through the Go module proxy).
//!
//! ```text
//!  <source>/{go.mod,go.sum,main.go}
//!     ──go build -mod=readonly──>  <cache>/<group>/<name>-<hash>/<binary>
//! ```
//!
//! The hash of the listed files names the build, so an edited source builds
//! anew and an unchanged one is reused. Concurrent builders (test binaries,
//! `cargo xtask`, benchmark programs) serialise on a lock file per group, and
//! a build lands under a partial name first and is renamed, so nobody ever
//! runs a half-written binary. What this is not: a Go dependency manager. It
//! never rewrites `go.mod` or `go.sum`, and it runs nothing it builds.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::cluster::build::cache_dir;
use crate::interop::source_hash;

/// One Go program to build.
#[derive(Debug, Clone, Copy)]
pub struct GoProgram<'a> {
    /// What it is, for messages (for example `the grpc-go interop client`).
    pub what: &'a str,
    /// The directory holding `go.mod`.
    pub source: &'a Path,
    /// The files whose contents name the build (relative to `source`).
    pub files: &'a [&'a str],
    /// Cache sub-directory shared by related programs (for example `interop`);
    /// also names the lock file.
    pub group: &'a str,
    /// Stem of the build directory (`<name>-<hash>`).
    pub name: &'a str,
    /// File name of the built binary.
    pub binary: &'a str,
}

impl GoProgram<'_> {
    /// Where the binary for the current source is (or will be) cached:
    /// `<cache>/<group>/<name>-<hash>/<binary>`.
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        let hash = source_hash(self.source, self.files)?;
        Ok(cache_dir()?
            .join(self.group)
            .join(format!("{}-{hash:016x}", self.name))
            .join(self.binary))
    }

    /// Returns the cached binary, building it first if this version of the
    /// source has not been built. `progress` prints what happens to stderr.
    pub fn ensure(&self, progress: bool) -> anyhow::Result<PathBuf> {
        let binary = self.path()?;
        if binary.is_file() {
            return Ok(binary);
        }
        let dir = binary.parent().context("the binary path has a parent")?;
        let root = dir.parent().context("the build dir has a parent")?;
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        // Test binaries, `cargo xtask` and benchmark programs may race to build.
        let lock_path = root.join(format!("{}-build.lock", self.name));
        let lock = File::create(&lock_path)
            .with_context(|| format!("creating {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("locking {}", lock_path.display()))?;
        if binary.is_file() {
            return Ok(binary);
        }
        let go = go_version(&format!("{} ({})", self.what, self.source.display()))?;
        if progress {
            eprintln!("==> go build {} ({go}) -> {}", self.what, binary.display());
        }
        let started = Instant::now();
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let partial = dir.join(format!("{}.partial", self.binary));
        let out = Command::new("go")
            .arg("build")
            .arg("-o")
            .arg(&partial)
            .arg(".")
            .current_dir(self.source)
            // The committed go.sum pins every module: never rewrite go.mod or go.sum.
            .env("GOFLAGS", "-mod=readonly -buildvcs=false")
            .output()
            .with_context(|| format!("running `go build` for {}", self.what))?;
        if !out.status.success() {
            bail!(
                "`go build` of {} in {} failed ({}); if go.mod changed, run `go mod tidy` there and commit go.sum:\n{}{}",
                self.what,
                self.source.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        fs::rename(&partial, &binary)
            .with_context(|| format!("moving the built binary to {}", binary.display()))?;
        if progress {
            eprintln!(
                "    built in {:.0?} (Go's module and build caches make rebuilds cheap)",
                started.elapsed()
            );
        }
        Ok(binary)
    }
}

/// `go version`'s answer, or an error saying Go is needed to build `what`.
/// Every Go build the project caches checks this first, so a machine
/// without Go hears what needs it rather than a bare spawn error.
pub fn go_version(what: &str) -> anyhow::Result<String> {
    let go = Command::new("go")
        .arg("version")
        .output()
        .with_context(|| {
            format!("the Go toolchain is needed to build {what}, and `go` was not found on PATH")
        })?;
    if !go.status.success() {
        bail!(
            "`go version` failed: {}",
            String::from_utf8_lossy(&go.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&go.stdout).trim().to_owned())
}
