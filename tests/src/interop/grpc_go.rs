//! The grpc-go interop client: `tests/interop/grpc-go`, a small Go program
//! built with `go build` against the modules its `go.sum` pins (fetched
//! through the Go module proxy), and cached by the hash of its source.
//!
//! ```text
//!  tests/interop/grpc-go/{go.mod,go.sum,main.go}
//!     ──go build -mod=readonly──>  <cache>/interop/grpc-go-<hash>/client
//! ```
//!
//! Only the build lives here; running it is the shared client contract's
//! business ([`super::ClientKind`]).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::cluster::build::cache_dir;

/// The files the grpc-go client is built from; their contents name the build.
const GRPC_GO_FILES: [&str; 3] = ["go.mod", "go.sum", "main.go"];

/// The grpc-go client's source: `tests/interop/grpc-go`.
pub fn grpc_go_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/grpc-go")
}

/// Where the client for the current source is (or will be) cached:
/// `<cache>/interop/grpc-go-<hash>/client`.
pub fn grpc_go_client_path() -> anyhow::Result<PathBuf> {
    let hash = super::source_hash(&grpc_go_source(), &GRPC_GO_FILES)?;
    Ok(cache_dir()?
        .join("interop")
        .join(format!("grpc-go-{hash:016x}"))
        .join("client"))
}

/// Returns the cached grpc-go client, building it first if this version of
/// the source has not been built. `progress` prints what happens to stderr.
pub fn ensure_grpc_go_client(progress: bool) -> anyhow::Result<PathBuf> {
    let client = grpc_go_client_path()?;
    if client.is_file() {
        return Ok(client);
    }
    let dir = client.parent().context("the client path has a parent")?;
    let root = dir.parent().context("the client dir has a parent")?;
    fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    // Test binaries and `cargo xtask test` may race to build.
    let lock = File::create(root.join("grpc-go-build.lock"))?;
    lock.lock().context("locking the interop build cache")?;
    if client.is_file() {
        return Ok(client);
    }
    let go = Command::new("go").arg("version").output().context(
        "the Go toolchain is needed to build the grpc-go interop client (tests/interop/grpc-go), and `go` was not found on PATH",
    )?;
    if !go.status.success() {
        bail!(
            "`go version` failed: {}",
            String::from_utf8_lossy(&go.stderr)
        );
    }
    if progress {
        eprintln!(
            "==> go build the grpc-go interop client ({}) -> {}",
            String::from_utf8_lossy(&go.stdout).trim(),
            client.display()
        );
    }
    let started = Instant::now();
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let partial = dir.join("client.partial");
    let out = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&partial)
        .arg(".")
        .current_dir(grpc_go_source())
        // The committed go.sum pins every module: never rewrite go.mod or go.sum.
        .env("GOFLAGS", "-mod=readonly -buildvcs=false")
        .output()
        .context("running `go build` for the grpc-go interop client")?;
    if !out.status.success() {
        bail!(
            "`go build` of the grpc-go interop client in {} failed ({}); if go.mod changed, run `go mod tidy` there and commit go.sum:\n{}{}",
            grpc_go_source().display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::rename(&partial, &client)
        .with_context(|| format!("moving the built client to {}", client.display()))?;
    if progress {
        eprintln!(
            "    built in {:.0?} (Go's module and build caches make rebuilds cheap)",
            started.elapsed()
        );
    }
    Ok(client)
}
