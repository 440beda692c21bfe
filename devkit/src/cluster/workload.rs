//! Driving workloads on a node cluster from tests: kubectl that fails with
//! its output, manifests applied from strings, polling with a diagnosis on
//! timeout, the project's binaries built as `cargo build` would for an
//! image, and the container processes behind a pod, read from `/proc`.
//!
//! What this is not: a Kubernetes client library (tests shell out to the
//! pinned kubectl, as an operator would) nor a place for assertions; the
//! tests decide what must hold.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use super::ControlPlane;
use super::node::{Node, NodeState};

/// Runs kubectl with `args`; its stdout, or an error with everything it said.
pub fn kubectl(plane: &ControlPlane, args: &[&str]) -> anyhow::Result<String> {
    run_kubectl(plane.kubectl(), args)
}

/// Runs `cmd` (a kubectl with its kubeconfig set) with `args`; its stdout,
/// or an error with everything it said.
pub fn run_kubectl(mut cmd: Command, args: &[&str]) -> anyhow::Result<String> {
    let out = cmd.args(args).output().context("running kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes `yaml` to `dir/name` and `kubectl apply`s it.
pub fn apply(plane: &ControlPlane, dir: &Path, name: &str, yaml: &str) -> anyhow::Result<()> {
    let file = dir.join(name);
    std::fs::write(&file, yaml).with_context(|| format!("writing {}", file.display()))?;
    kubectl(
        plane,
        &["apply", "-f", file.to_str().context("UTF-8 path")?],
    )
    .map(drop)
}

/// Polls `check` every 250 ms until it returns `Ok(Ok(_))`, or fails after
/// `timeout` with the last state it reported and `diagnose`'s output.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Result<T, String>>,
    diagnose: impl Fn() -> String,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match check()? {
            Ok(v) => return Ok(v),
            Err(state) if Instant::now() > deadline => {
                bail!(
                    "{what}: not after {timeout:?}; last: {state}\n{}",
                    diagnose()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Every pod and event, through `kubectl`: what to print when a workload
/// does not come up.
pub fn pods_and_events(kubectl: impl Fn(&[&str]) -> anyhow::Result<String>) -> String {
    let pods = kubectl(&["get", "pods", "-A", "-o", "wide"]).unwrap_or_else(|e| e.to_string());
    let events = kubectl(&["get", "events", "-A", "--sort-by=.lastTimestamp"])
        .unwrap_or_else(|e| e.to_string());
    format!("pods:\n{pods}\nevents:\n{events}")
}

/// [`pods_and_events`] and the tail of every node's kubelet log.
pub fn diagnosis(plane: &ControlPlane, nodes: &[&Node]) -> String {
    let mut out = pods_and_events(|args| kubectl(plane, args));
    for node in nodes {
        let log = crate::process::log_tail(&node.state().dir.join("kubelet.log"), 20);
        out.push_str(&format!("\n{} kubelet:\n{log}", node.state().name));
    }
    out
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where cargo puts `debug/` (`$CARGO_TARGET_DIR` or the workspace's).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from)
}

/// `cargo build --locked <args>` in the workspace, from inside a test.
/// Returns `target/debug`.
///
/// `cargo test` gives the test process its package's `CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR` and such; build scripts (ring's) rerun when those
/// change, so inheriting them would rebuild half the tree each time.
pub fn cargo_build(args: &[&str]) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(&cargo);
    for (key, _) in std::env::vars_os() {
        let key_s = key.to_string_lossy();
        if (key_s.starts_with("CARGO_") && key_s != "CARGO_HOME" && key_s != "CARGO_TARGET_DIR")
            || key_s == "OUT_DIR"
        {
            cmd.env_remove(&key);
        }
    }
    let status = cmd
        .current_dir(workspace())
        .args(["build", "--locked"])
        .args(args)
        .status()
        .with_context(|| format!("running {cargo} build"))?;
    ensure!(status.success(), "cargo build {} failed", args.join(" "));
    Ok(target_dir().join("debug"))
}

/// `to` relative to the directory `from` (both absolute): kustomize refuses
/// absolute paths to a base.
pub fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    out
}

/// utime + stime of a process in seconds, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ, the unit of these fields, is 100 on Linux x86_64 and arm64.
    Some((utime + stime) / 100.0)
}

/// The host pid of a pod's container, from its `containerID`
/// (`containerd://<id>`) and the node's `ctr tasks ls`.
pub fn container_pid(node: &NodeState, container_id: &str) -> anyhow::Result<u32> {
    let id = container_id
        .strip_prefix("containerd://")
        .with_context(|| format!("{container_id:?} is not a containerd container id"))?;
    let tasks = node.ctr(&["tasks", "ls"])?;
    tasks
        .lines()
        .skip(1)
        .find_map(|l| {
            let mut fields = l.split_whitespace();
            (fields.next()? == id).then(|| fields.next()?.parse().ok())?
        })
        .with_context(|| format!("no task {id} on {}: {tasks}", node.name))
}

/// What the kernel enforces on a process: the part of a securityContext a
/// runtime can get wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    /// Effective capabilities (a bit mask).
    pub cap_eff: u64,
    /// `no_new_privs` (allowPrivilegeEscalation: false).
    pub no_new_privs: bool,
    /// Seccomp mode: 0 off, 2 filtering.
    pub seccomp: u8,
    /// Whether the process's `/` is mounted read-only.
    pub root_read_only: bool,
}

/// Reads [`Confinement`] from `/proc/<pid>/status` and `mountinfo`.
pub fn confinement(pid: u32) -> anyhow::Result<Confinement> {
    let read = |file: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .with_context(|| format!("reading /proc/{pid}/{file}"))
    };
    Confinement::parse(&read("status")?, &read("mountinfo")?)
}

impl Confinement {
    /// From the text of a process's `/proc/<pid>/status` and `mountinfo`.
    pub fn parse(status: &str, mountinfo: &str) -> anyhow::Result<Self> {
        let field = |name: &str| -> anyhow::Result<&str> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .with_context(|| format!("no {name} in the process status"))
        };
        let uid_fields: Vec<u32> = field("Uid")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let uids: [u32; 4] = uid_fields
            .try_into()
            .map_err(|v| anyhow::anyhow!("Uid has not four fields: {v:?}"))?;
        // Fields: id parent major:minor root mount-point options ...; the
        // last mount at `/` is the one the process sees.
        let root_options = mountinfo
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(4) == Some(&"/")).then(|| f.get(5).map(|o| (*o).to_owned()))?
            })
            .next_back()
            .context("no / in the process's mountinfo")?;
        Ok(Confinement {
            uids,
            cap_eff: u64::from_str_radix(field("CapEff")?, 16)?,
            no_new_privs: field("NoNewPrivs")? == "1",
            seccomp: field("Seccomp")?.parse()?,
            root_read_only: root_options.split(',').any(|o| o == "ro"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_then_descend() {
        assert_eq!(
            relative(Path::new("/a/b/c"), Path::new("/a/d")),
            PathBuf::from("../../d")
        );
        assert_eq!(
            relative(Path::new("/a"), Path::new("/a/x")),
            PathBuf::from("x")
        );
    }

    #[test]
    fn parses_a_confined_container() {
        let status = "Name:\techo\nUid:\t65532\t65532\t65532\t65532\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n";
        let mountinfo = "600 500 0:50 / / rw,relatime - overlay overlay rw\n601 600 0:51 / / ro,relatime - overlay overlay rw\n602 601 0:5 / /proc rw - proc proc rw\n";
        let c = Confinement::parse(status, mountinfo).unwrap();
        assert_eq!(
            c,
            Confinement {
                uids: [65532; 4],
                cap_eff: 0,
                no_new_privs: true,
                seccomp: 2,
                root_read_only: true
            }
        );
        let root = status
            .replace("65532", "0")
            .replace("0000000000000000", "000001ffffffffff");
        let c = Confinement::parse(&root, "1 0 0:1 / / rw - ext4 /dev/vda rw\n").unwrap();
        assert_eq!(
            (c.uids, c.cap_eff, c.root_read_only),
            ([0; 4], 0x1ff_ffff_ffff, false)
        );
        assert!(Confinement::parse("Name: x\n", mountinfo).is_err());
    }

    #[test]
    fn reads_this_process_as_the_kernel_sees_it() {
        let c = confinement(std::process::id()).unwrap();
        // `/proc/self` belongs to the process's effective uid.
        let euid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
        assert_eq!(c.uids[1], euid, "{c:?}");
        // A test process's root is the writable checkout's file system.
        assert!(!c.root_read_only, "{c:?}");
    }
}
