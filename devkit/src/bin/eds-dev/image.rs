//! `cargo xtask image`: the project's container images without Docker or a
//! registry, as OCI layout tarballs, optionally loaded into a containerd.
//!
//! ```text
//!  cargo build --release  eds-server, echo-backend (--profile dev for a quick loop)
//!  gcc -static -Os        deploy/pause/pause.c
//!        |
//!        v  eds_devkit::image (OCI layout, deterministic)
//!  target/images/eds-server.tar     docker.io/eds-rs/eds-server:<tag>
//!  target/images/echo-backend.tar   docker.io/eds-rs/echo-backend:<tag>
//!  target/images/pause.tar          registry.local/eds-rs/pause:3.10
//!        |  --load <socket>
//!        v
//!  ctr --address <socket> -n k8s.io images import <tar>
//! ```
//!
//! `deploy/Dockerfile` stays what operators build with Docker; the
//! eds-server image here has its runtime stage's layout (a unit test in
//! `eds_devkit::image` holds them together). This module only orchestrates:
//! the image format lives in `eds_devkit::image`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use eds_devkit::cluster::node_build;
use eds_devkit::image;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Import each image into the containerd listening on this socket
    /// (namespace `k8s.io`, where the kubelet looks), with `ctr`.
    #[arg(long, value_name = "CONTAINERD_SOCKET")]
    load: Option<PathBuf>,
    /// Where to write the tarballs (default: `<target dir>/images`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The tag of the eds-server and echo-backend images.
    #[arg(long, default_value = "dev")]
    tag: String,
    /// The cargo profile to build the binaries with; `dev` skips the
    /// minutes-long release build for a quick loop.
    #[arg(long, default_value = "release")]
    profile: String,
    /// The `ctr` to load with (default: the one built with the node
    /// components, `cargo xtask cluster build --nodes`).
    #[arg(long)]
    ctr: Option<PathBuf>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from)
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let target = target_dir();
    let out = args.out.clone().unwrap_or_else(|| target.join("images"));
    // Found before the minutes-long release build, so a missing ctr fails fast.
    let ctr = match (&args.load, &args.ctr) {
        (None, _) => None,
        (Some(_), Some(ctr)) => Some(ctr.clone()),
        (Some(_), None) => {
            let ctr = node_build::node_binaries()?.ctr;
            if !ctr.is_file() {
                bail!(
                    "--load needs ctr, which comes with containerd: run `cargo xtask cluster build --nodes` or pass --ctr"
                );
            }
            Some(ctr)
        }
    };

    eprintln!(
        "==> cargo build --profile {} eds-server, echo-backend (a cold release build takes many minutes on 2 cores)",
        args.profile
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(&cargo)
        .current_dir(workspace())
        .args(["build", "--profile", &args.profile, "--locked"])
        .args(eds_devkit::image::IMAGE_BINARIES)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --profile {} failed ({status})", args.profile);
    }
    // Cargo's one exception: the dev profile's directory is `debug`.
    let bin_dir = target.join(if args.profile == "dev" {
        "debug"
    } else {
        &args.profile
    });
    eprintln!("==> gcc -static -Os deploy/pause/pause.c");
    let pause = eds_devkit::cluster::node::build_pause(&out)?;

    let images = [
        (
            "eds-server",
            image::eds_server_image(
                &bin_dir.join("eds-server"),
                &format!("docker.io/eds-rs/eds-server:{}", args.tag),
            )?,
        ),
        (
            "echo-backend",
            image::echo_backend_image(
                &bin_dir.join("echo-backend"),
                &format!("docker.io/eds-rs/echo-backend:{}", args.tag),
            )?,
        ),
        ("pause", image::pause_image(&pause)?),
    ];
    let mut tars = Vec::new();
    for (file, img) in &images {
        let path = out.join(format!("{file}.tar"));
        let written = image::write_oci_archive(img, &path)?;
        println!(
            "{:<40} {}  {:>6.1} MiB  {}",
            img.name,
            &written.manifest_digest[..19],
            written.size as f64 / (1024.0 * 1024.0),
            path.display()
        );
        tars.push((img.name.clone(), path));
    }
    if let (Some(socket), Some(ctr)) = (&args.load, &ctr) {
        // ctr reads a relative path as a URL with an authority (`.eds`).
        let socket = socket
            .canonicalize()
            .with_context(|| format!("{} is not there", socket.display()))?;
        for (name, tar) in &tars {
            load(ctr, &socket, name, tar)?;
        }
    }
    eprintln!("images ready in {:.1?}", started.elapsed());
    Ok(())
}

/// `ctr images import` of one tarball into the `k8s.io` namespace.
fn load(ctr: &Path, socket: &Path, name: &str, tar: &Path) -> anyhow::Result<()> {
    let output = Command::new(ctr)
        .arg("--address")
        .arg(socket)
        .args(["--namespace", "k8s.io", "images", "import"])
        .arg(tar)
        .output()
        .with_context(|| format!("running {}", ctr.display()))?;
    if !output.status.success() {
        bail!(
            "importing {} into the containerd at {} failed ({}):\n{}{}",
            tar.display(),
            socket.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    println!("loaded {name} into {} (namespace k8s.io)", socket.display());
    Ok(())
}
