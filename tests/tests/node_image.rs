//! An image written by `eds_devkit::image` runs under a real containerd and
//! runc: the echo backend's image is imported into a containerd started for
//! the test, run with `ctr run` on the host's network namespace (so it
//! listens on loopback and nothing leaves the machine), and answers a gRPC
//! Echo as the image's non-root user (65532). The pause image runs too, and
//! exits on SIGTERM.
//!
//! Ignored by default: it needs the node components (`cargo xtask cluster
//! build --nodes`), root, and overlayfs; run it with
//! `cargo test -p eds-tests --test node_image -- --ignored`. It leaves
//! nothing behind: tasks, containers, mounts and its directory go at the end.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eds_devkit::cluster::containerd::{Containerd, ContainerdConfig};
use eds_devkit::cluster::node_build;
use eds_devkit::image;
use eds_devkit::process::Lifetime;
use proto::echo::EchoRequest;
use proto::echo::echo_client::EchoClient;

/// Short: containerd's socket path must stay under 108 bytes.
fn test_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join(format!("eds-node-image-{}", std::process::id()))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The pid of a running task, from `ctr tasks ls`.
fn task_pid(containerd: &Containerd, id: &str) -> anyhow::Result<u32> {
    let list = containerd.ctr(&["tasks", "ls"])?;
    for line in list.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.first() == Some(&id) {
            if cols.get(2) != Some(&"RUNNING") {
                bail!("task {id} is not running: {line}");
            }
            return cols.get(1).context("no pid column")?.parse().context("pid");
        }
    }
    bail!("no task {id} in:\n{list}")
}

/// The effective uid and gid of a process, from `/proc/<pid>/status`.
fn ids_of(pid: u32) -> anyhow::Result<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u32> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        // Real, effective, saved, filesystem.
        line.split_whitespace()
            .nth(2)
            .context("short line")?
            .parse()
            .context("id")
    };
    Ok((field("Uid:")?, field("Gid:")?))
}

fn run_images(containerd: &Containerd, dir: &Path) -> anyhow::Result<()> {
    let echo = image::echo_backend_image(
        Path::new(env!("CARGO_BIN_EXE_echo-backend")),
        "docker.io/eds-rs/echo-backend:node-image-test",
    )?;
    let echo_tar = dir.join("echo-backend.tar");
    image::write_oci_archive(&echo, &echo_tar)?;
    containerd.import(&echo_tar)?;
    let images = containerd.ctr(&["images", "ls", "--quiet"])?;
    assert!(images.lines().any(|l| l == echo.name), "{images}");

    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    // One cgroup level of its own, which runc removes with the task
    // (ctr's default, /k8s.io/<id>, would leave /k8s.io behind).
    let cgroup = format!("--cgroup=/eds-node-image-{}", std::process::id());
    containerd.ctr(&[
        "run",
        "--detach",
        "--net-host",
        &cgroup,
        &echo.name,
        "echo",
        image::ECHO_BACKEND_PATH,
        "--listen",
        &listen,
        "--pod",
        "in-a-container",
        "--zone",
        "zone-a",
    ])?;
    let pid = task_pid(containerd, "echo")?;
    assert_eq!(
        ids_of(pid)?,
        (65532, 65532),
        "runs as the image's user, as deploy/Dockerfile's runtime stage does"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let attempt = async {
                let mut client = EchoClient::connect(format!("http://{listen}")).await?;
                let reply = client
                    .echo(EchoRequest {
                        message: "hello".into(),
                        work_us: 0,
                    })
                    .await?;
                anyhow::Ok(reply.into_inner())
            };
            match attempt.await {
                Ok(reply) => return Ok(reply),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })?;
    assert_eq!(reply.message, "hello");
    assert_eq!(reply.pod, "in-a-container");
    assert_eq!(reply.zone, "zone-a");

    // The sandbox image: static pause, PID 1 of its container, ends on SIGTERM.
    let pause_bin = dir.join("pause");
    let gcc = std::process::Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&pause_bin)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/pause/pause.c"))
        .status()?;
    anyhow::ensure!(gcc.success(), "gcc failed on deploy/pause/pause.c");
    let pause = image::pause_image(&pause_bin)?;
    let pause_tar = dir.join("pause.tar");
    image::write_oci_archive(&pause, &pause_tar)?;
    containerd.import(&pause_tar)?;
    let pause_cgroup = format!("--cgroup=/eds-node-image-pause-{}", std::process::id());
    containerd.ctr(&["run", "--detach", &pause_cgroup, &pause.name, "pause"])?;
    task_pid(containerd, "pause")?;
    containerd.ctr(&["tasks", "kill", "--signal", "SIGTERM", "pause"])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = containerd.ctr(&["tasks", "ls"])?;
        if list
            .lines()
            .any(|l| l.starts_with("pause ") && l.contains("STOPPED"))
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("pause did not stop on SIGTERM:\n{list}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[test]
#[ignore = "needs `cargo xtask cluster build --nodes`, root and overlayfs; about a minute"]
fn images_run_under_containerd_and_runc() -> anyhow::Result<()> {
    let bins = node_build::node_binaries()?;
    if !bins.present() {
        bail!("the node components are not built: run `cargo xtask cluster build --nodes`");
    }
    let dir = test_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut containerd = Containerd::start(
        ContainerdConfig {
            dir: dir.join("ctd"),
            sandbox_image: image::PAUSE_IMAGE.into(),
            cni_bin_dir: bins.cni_bin_dir.clone(),
            netns_of: None,
        },
        &bins,
        Lifetime::Tied,
    )?;
    let result = run_images(&containerd, &dir);
    if result.is_err() {
        eprintln!(
            "containerd log:\n{}",
            eds_devkit::process::log_tail(&dir.join("ctd/containerd.log"), 40)
        );
    }
    containerd.stop();
    // runc removes each task's cgroup on delete; make sure.
    for ctl in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        for name in ["eds-node-image", "eds-node-image-pause"] {
            let leftover = ctl.path().join(format!("{name}-{}", std::process::id()));
            if leftover.exists() {
                let _ = std::fs::remove_dir(&leftover);
            }
        }
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    result
}
