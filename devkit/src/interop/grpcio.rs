//! The Python grpcio interop client: `devkit/interop/grpcio/client.py`, run
//! by a virtual environment this module creates once per pinned
//! `requirements.txt` (grpcio and its one dependency, from PyPI).
//!
//! ```text
//!  python3 -m venv <cache>/interop/grpcio-<hash of requirements.txt + python version>
//!  <venv>/bin/python -m pip install --no-deps -r requirements.txt
//!  <venv>/.eds-ready                     written last: a venv without it is rebuilt
//! ```
//!
//! `client.py` itself is run from the source tree, so editing it needs no
//! reinstall. No protoc and no protobuf package: the client encodes its two
//! tiny messages by hand. Not a general Python environment manager.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::cluster::build::cache_dir;

/// The grpcio client's source: `devkit/interop/grpcio`.
pub fn grpcio_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/grpcio")
}

/// The client script.
pub fn grpcio_client_script() -> PathBuf {
    grpcio_source().join("client.py")
}

fn python_version() -> anyhow::Result<String> {
    let out = Command::new("python3").arg("--version").output().context(
        "Python 3 is needed for the grpcio interop client (devkit/interop/grpcio), and `python3` was not found on PATH",
    )?;
    if !out.status.success() {
        bail!(
            "`python3 --version` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Older Pythons print the version on stderr.
    let text = [out.stdout, out.stderr].concat();
    Ok(String::from_utf8_lossy(&text).trim().to_owned())
}

/// Returns the venv's Python, creating the venv first if this
/// `requirements.txt` (with this `python3`) has not been installed yet.
/// `progress` prints what happens to stderr.
pub fn ensure_grpcio_venv(progress: bool) -> anyhow::Result<PathBuf> {
    let version = python_version()?;
    // The venv is tied to the interpreter that made it: a new python3 gets a new one.
    let mut hash = super::source_hash(&grpcio_source(), &["requirements.txt"])?;
    hash ^= lb_core::rng::hash_bytes(version.as_bytes());
    let root = cache_dir()?.join("interop");
    let venv = root.join(format!("grpcio-{hash:016x}"));
    let python = venv.join("bin/python");
    let ready = venv.join(".eds-ready");
    if ready.is_file() {
        return Ok(python);
    }
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    // Test binaries and `cargo xtask` may race to install.
    let lock = File::create(root.join("grpcio-venv.lock"))?;
    lock.lock().context("locking the interop venv cache")?;
    if ready.is_file() {
        return Ok(python);
    }
    if venv.exists() {
        // A half-made venv from an interrupted install.
        fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    if progress {
        eprintln!(
            "==> create the grpcio interop venv ({version}) -> {}",
            venv.display()
        );
    }
    let started = Instant::now();
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        "python3 -m venv",
    )?;
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                // requirements.txt is the whole closure, pinned.
                "--no-deps",
                "-r",
            ])
            .arg(grpcio_source().join("requirements.txt")),
        "pip install -r devkit/interop/grpcio/requirements.txt",
    )?;
    run(
        Command::new(&python).args(["-c", "import grpc; print(grpc.__version__)"]),
        "importing grpc in the new venv",
    )?;
    fs::write(&ready, format!("{version}\n"))?;
    if progress {
        eprintln!("    installed in {:.0?}", started.elapsed());
    }
    Ok(python)
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
