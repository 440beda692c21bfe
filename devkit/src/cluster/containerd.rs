//! One containerd 2.x run as a local process, the container runtime of a
//! node: its own root, state, socket, temp and CNI configuration directories
//! under a directory it owns, runc (the pinned build) first on its PATH, and
//! `ctr` to import images and run containers against its socket.
//!
//! ```text
//!  <dir>/config.toml        version 3 (see [`config_toml`])
//!  <dir>/containerd.sock    gRPC (ctr, the kubelet's CRI client)
//!  <dir>/root, state, tmp, opt, cni/   everything containerd writes
//!  <dir>/containerd.log
//! ```
//!
//! Two things this machine needs that a stock configuration lacks: no
//! CAP_SYS_RESOURCE here, so the CRI's `restrict_oom_score_adj` (a sandbox
//! may not lower its OOM score below containerd's); and Debian's runc 1.1.5
//! fails under containerd 2, so the shim must find the pinned runc first.
//!
//! Shims outlive containerd by design, so stopping the process is not
//! enough: [`Containerd::stop`] kills and deletes every task and container
//! first, then stops containerd, then detaches any mount left under its
//! directory. What this is not: a kubelet, or a CNI setup (the conf dir is
//! created empty; a node writes its network there).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::node_build::NodeBinaries;
use crate::process::{ChildProcess, Lifetime, log_tail};

/// The containerd namespace the kubelet (and so imported images) use.
pub const K8S_NAMESPACE: &str = "k8s.io";

/// What goes into a containerd's configuration.
#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    /// The directory containerd owns.
    pub dir: PathBuf,
    /// The pod sandbox image, pinned so the CRI never pulls it.
    pub sandbox_image: String,
    /// Where the CNI plugins are.
    pub cni_bin_dir: PathBuf,
    /// Run containerd in the network namespace of this process (the pod
    /// network's holder), so the CNI plugins it calls put the bridge and
    /// the pods' veths there, not on the host. `None`: the host's.
    pub netns_of: Option<u32>,
}

impl ContainerdConfig {
    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The CNI configuration directory the CRI plugin reads.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni")
    }
}

/// containerd's `config.toml` (version 3, containerd 2.x): every path
/// under `dir`, so several containerds (one per node) share nothing but the
/// kernel, and nothing lands in `/var/lib/containerd`, `/run/containerd` or
/// `/opt/containerd`.
pub fn config_toml(cfg: &ContainerdConfig) -> String {
    let d = cfg.dir.display();
    format!(
        r#"# Written by eds-tests (cluster::containerd); rewritten at every start.
version = 3
root = "{d}/root"
state = "{d}/state"
temp = "{d}/tmp"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins.'io.containerd.internal.v1.opt']
  path = "{d}/opt"

# NRI would listen on /var/run/nri/nri.sock, shared by every containerd here.
[plugins.'io.containerd.nri.v1.nri']
  disable = true

[plugins.'io.containerd.cri.v1.runtime']
  # No CAP_SYS_RESOURCE here: without this a sandbox fails to lower its
  # /proc/self/oom_score_adj.
  restrict_oom_score_adj = true
  # Pod network namespaces are pinned (bind-mounted) under the state
  # directory rather than in /var/run/netns, so teardown finds and unmounts
  # them under the directory.
  netns_mounts_under_state_dir = true

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["{cni_bin}"]
  conf_dir = "{cni_conf}"

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "{sandbox}"
"#,
        socket = cfg.socket().display(),
        cni_bin = cfg.cni_bin_dir.display(),
        cni_conf = cfg.cni_conf_dir().display(),
        sandbox = cfg.sandbox_image,
    )
}

/// A running containerd.
#[derive(Debug)]
pub struct Containerd {
    config: ContainerdConfig,
    ctr: PathBuf,
    process: Option<ChildProcess>,
}

impl Containerd {
    /// Starts containerd in `config.dir` (created if missing) and waits
    /// until it answers on its socket.
    pub fn start(
        config: ContainerdConfig,
        bins: &NodeBinaries,
        lifetime: Lifetime,
    ) -> anyhow::Result<Self> {
        let dir = &config.dir;
        for sub in ["root", "state", "tmp", "opt", "cni"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        // A unix socket path is limited to 108 bytes; the shim's is longer still.
        anyhow::ensure!(
            config.socket().as_os_str().len() < 90,
            "{} is too long a path for containerd's socket",
            config.socket().display()
        );
        let config_path = dir.join("config.toml");
        fs::write(&config_path, config_toml(&config))?;
        let mut path = std::env::join_paths([
            bins.runc.parent().context("runc has a parent")?,
            bins.containerd_shim
                .parent()
                .context("the shim has a parent")?,
        ])?;
        if let Some(old) = std::env::var_os("PATH") {
            path.push(":");
            path.push(old);
        }
        let mut cmd = match config.netns_of {
            Some(pid) => {
                let mut c = Command::new("nsenter");
                c.arg("-t")
                    .arg(pid.to_string())
                    .arg("-n")
                    .arg("--")
                    .arg(&bins.containerd);
                c
            }
            None => Command::new(&bins.containerd),
        };
        cmd.arg("--config").arg(&config_path).env("PATH", path);
        let process =
            ChildProcess::spawn("containerd", cmd, &dir.join("containerd.log"), lifetime)?;
        let mut me = Self {
            config,
            ctr: bins.ctr.clone(),
            process: Some(process),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(p) = me.process.as_mut() {
                p.check_running()?;
            }
            if me.ctr(&["version"]).is_ok() {
                return Ok(me);
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer on {} within 30 s; last lines of its log:\n{}",
                    me.config.socket().display(),
                    log_tail(&me.config.dir.join("containerd.log"), 25)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.config.socket()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ContainerdConfig {
        &self.config
    }

    /// Runs `ctr` in the [`K8S_NAMESPACE`] namespace; its stdout on success.
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        ctr_at(&self.ctr, &self.socket(), args)
    }

    /// Imports an OCI layout tarball (see [`crate::image`]).
    pub fn import(&self, tar: &Path) -> anyhow::Result<()> {
        let tar = tar.to_str().context("image paths are UTF-8")?;
        self.ctr(&["images", "import", tar]).map(drop)
    }

    /// Its pid (the process group it leads).
    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, ChildProcess::pid)
    }

    /// Leaves a detached containerd running; [`stop_detached`] ends it.
    pub fn release(mut self) -> u32 {
        self.process.take().map_or(0, ChildProcess::release)
    }

    /// Kills and deletes every task and container, stops containerd and
    /// detaches whatever is still mounted under its directory. Best effort:
    /// teardown goes on past failures.
    pub fn stop(&mut self) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        kill_containers(&self.ctr, &self.socket());
        process.stop(Duration::from_secs(5));
        unmount_under(&self.config.dir);
    }
}

/// [`Containerd::stop`] for a containerd another process started and
/// released (`cargo xtask cluster down`): by its socket, pid and directory.
pub fn stop_detached(ctr: &Path, dir: &Path, pid: u32) {
    kill_containers(ctr, &dir.join("containerd.sock"));
    crate::process::stop_group(pid, Duration::from_secs(5));
    unmount_under(dir);
}

/// Runs `ctr_bin` against the containerd at `socket`, in the
/// [`K8S_NAMESPACE`] namespace; its stdout on success.
pub fn ctr_at(ctr_bin: &Path, socket: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(ctr_bin)
        .arg("--address")
        .arg(socket)
        .args(["--namespace", K8S_NAMESPACE])
        .args(args)
        .output()
        .with_context(|| format!("running {}", ctr_bin.display()))?;
    if !out.status.success() {
        bail!(
            "`ctr {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Shims outlive containerd: kill and delete every task (pod sandboxes
/// and containers alike) while containerd can still reach them.
fn kill_containers(ctr_bin: &Path, socket: &Path) {
    let ctr = |args: &[&str]| ctr_at(ctr_bin, socket, args);
    if let Ok(tasks) = ctr(&["tasks", "ls", "--quiet"]) {
        for id in tasks.split_whitespace() {
            let _ = ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
        }
        // All killed at once, so wait for all at once (bounded), then
        // delete each: deleting a task that still runs fails.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match ctr(&["tasks", "ls"]) {
                Ok(list) if list.contains("RUNNING") => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => break,
            }
        }
        // One ctr for all: each ctr process costs about 0.1 s, and a busy
        // node has dozens of tasks.
        let mut delete = vec!["tasks", "delete", "--force"];
        delete.extend(tasks.split_whitespace());
        if delete.len() > 3 {
            let _ = ctr(&delete);
        }
    }
    if let Ok(containers) = ctr(&["containers", "ls", "--quiet"]) {
        let mut delete = vec!["containers", "delete"];
        delete.extend(containers.split_whitespace());
        if delete.len() > 2 {
            let _ = ctr(&delete);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Mount points at or under `dir` in `/proc/self/mountinfo` text, deepest
/// first (the order to unmount them in).
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        // Field 5 is the mount point, with spaces and such octal-escaped.
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Detaches every mount under `dir` (snapshot and rootfs mounts a killed
/// shim left behind, pinned pod network namespaces, a kubelet's volumes).
pub fn unmount_under(dir: &Path) {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for mount in mounts_under(&info, dir) {
        let _ = Command::new("umount").arg("--lazy").arg(&mount).status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ContainerdConfig {
        ContainerdConfig {
            dir: PathBuf::from("/n/node-1"),
            sandbox_image: "registry.local/eds-rs/pause:3.10".into(),
            cni_bin_dir: PathBuf::from("/usr/lib/cni"),
            netns_of: None,
        }
    }

    #[test]
    fn config_keeps_everything_under_the_directory() {
        let text = config_toml(&config());
        assert!(text.starts_with("# Written") && text.contains("\nversion = 3\n"));
        for line in text.lines() {
            let Some((_, value)) = line.split_once(" = \"") else {
                continue;
            };
            let value = value.trim_end_matches('"');
            if value.starts_with('/') && !value.starts_with("/usr/lib/cni") {
                assert!(value.starts_with("/n/node-1/"), "{line}");
            }
        }
        assert!(text.contains("address = \"/n/node-1/containerd.sock\""));
        assert!(text.contains("restrict_oom_score_adj = true"));
        assert!(text.contains("sandbox = \"registry.local/eds-rs/pause:3.10\""));
        assert!(text.contains("conf_dir = \"/n/node-1/cni\""));
        assert!(text.contains("netns_mounts_under_state_dir = true"));
    }

    #[test]
    fn mounts_deepest_first() {
        let info = "22 1 0:21 / /proc rw - proc proc rw\n\
            90 22 0:50 / /n/node-1/root/a rw - overlay overlay rw\n\
            91 90 0:51 / /n/node-1/root/a/b/c rw - tmpfs tmpfs rw\n\
            92 22 0:52 / /n/node-10/x rw - tmpfs tmpfs rw\n\
            93 22 0:53 / /n/node-1/with\\040space rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mounts_under(info, Path::new("/n/node-1")),
            [
                "/n/node-1/root/a/b/c",
                "/n/node-1/root/a",
                "/n/node-1/with space"
            ]
            .map(PathBuf::from)
        );
    }
}
