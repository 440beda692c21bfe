//! The pod network: a network namespace the harness owns, holding every pod
//! IP, where the echo backends listen.
//!
//! Kubernetes refuses loopback addresses in EndpointSlices, so pods need
//! real-looking IPs, and test traffic must never leave the machine. The
//! namespace is held open by a `sleep` process started with `unshare --net`;
//! when that process dies (for a tied network: when the test binary exits,
//! however it exits) the kernel destroys the namespace, its veth end, the
//! peer on the host and the host route with it. Nothing to clean up by hand.
//!
//! ```text
//!  host netns                              pod netns (held by `sleep`)
//!  edsh<pid> 10.X.0.1/16  <== veth ==>  eth0 10.X.0.2/16
//!  route 10.X.0.0/16 dev edsh<pid>           + 10.X.a.b/32 per pod
//!                                            echo backends bind pod IPs
//! ```
//!
//! Before traffic goes to a pod IP, [`PodNetwork::verify_route`] checks that
//! the kernel routes it into this namespace and refuses otherwise.
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); without it, creation fails
//! with a message saying so. Not a CNI: no bridge, no NAT, no policy.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::process::{ChildProcess, Lifetime};

/// What identifies a pod network, enough to attach to it from another process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodNetworkInfo {
    /// Pid of the process holding the namespace open.
    pub holder_pid: u32,
    /// Host-side veth name.
    pub host_if: String,
    /// Second octet: the network is `10.<octet>.0.0/16`.
    pub octet: u8,
}

impl PodNetworkInfo {
    /// The host side's address (also the API server's advertise address).
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.octet, 0, 1)
    }

    /// The pod network in CIDR notation.
    pub fn cidr(&self) -> String {
        format!("10.{}.0.0/16", self.octet)
    }
}

/// A live pod network. Owned (tied or detached) or attached to.
#[derive(Debug)]
pub struct PodNetwork {
    info: PodNetworkInfo,
    holder: Option<ChildProcess>,
    next: Mutex<u32>,
}

/// Runs `cmd`; its stdout, or an error naming it with its stderr.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks the privileges and tools a pod network needs, saying what is missing.
pub fn preflight() -> anyhow::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "the pod network needs root (CAP_NET_ADMIN) to create a network namespace and a veth pair; \
             running as uid {euid}. Run the tests as root (as in CI); user namespaces are not supported yet"
        );
    }
    for tool in ["ip", "unshare", "nsenter", "sleep"] {
        if run(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_err() {
            bail!("the pod network needs `{tool}` (Debian packages iproute2 and util-linux)");
        }
    }
    Ok(())
}

impl PodNetwork {
    /// Creates a namespace, a veth pair and a /16 that no interface or route
    /// on the host uses yet.
    pub fn create(log_dir: &Path, lifetime: Lifetime) -> anyhow::Result<Self> {
        preflight()?;
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", "--", "sleep", "infinity"]);
        let holder = ChildProcess::spawn(
            "pod network holder",
            cmd,
            &log_dir.join("netns.log"),
            lifetime,
        )?;
        let pid = holder.pid();
        let host_if = format!("edsh{pid}");
        // Wait until unshare has moved the holder into its own namespace.
        let host_ns = std::fs::read_link("/proc/self/ns/net")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{pid}/ns/net"))? == host_ns {
            if Instant::now() > deadline {
                bail!("the namespace holder (pid {pid}) never left the host network namespace");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let octet = free_octet()?;
        let info = PodNetworkInfo {
            holder_pid: pid,
            host_if: host_if.clone(),
            octet,
        };
        let host_cidr = format!("{}/16", info.host_ip());
        run(Command::new("ip").args([
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pid.to_string(),
        ]))?;
        run(Command::new("ip").args(["addr", "add", &host_cidr, "dev", &host_if]))?;
        run(Command::new("ip").args(["link", "set", &host_if, "up"]))?;
        let inner = format!(
            "ip link set lo up && ip link set eth0 up && ip addr add 10.{octet}.0.2/16 dev eth0 && ip route add default via {}",
            info.host_ip()
        );
        run(nsenter(pid).args(["sh", "-c", &inner]))?;
        let network = Self {
            info,
            holder: Some(holder),
            next: Mutex::new(0),
        };
        network.verify_route(Ipv4Addr::new(10, octet, 1, 1))?;
        Ok(network)
    }

    /// Attaches to a network another process created (`cargo xtask cluster up`).
    pub fn attach(info: PodNetworkInfo) -> anyhow::Result<Self> {
        if !crate::process::alive(info.holder_pid) {
            bail!(
                "the pod network's holder process {} is gone; restart the cluster",
                info.holder_pid
            );
        }
        Ok(Self {
            info,
            holder: None,
            // Start elsewhere than the owner would, to make collisions unlikely;
            // the kernel refuses duplicates anyway (see allocate_ip).
            next: Mutex::new(std::process::id() % 30_000 + 5_000),
        })
    }

    /// What identifies this network.
    pub fn info(&self) -> &PodNetworkInfo {
        &self.info
    }

    /// Releases ownership of a detached holder so the network outlives us.
    pub fn release(mut self) -> PodNetworkInfo {
        if let Some(holder) = self.holder.take() {
            holder.release();
        }
        self.info.clone()
    }

    /// A fresh pod IP, already assigned inside the namespace (so a backend
    /// can bind it at once). Addresses held by another user of the same
    /// network are skipped: the kernel refuses to add them twice.
    pub fn allocate_ip(&self) -> anyhow::Result<Ipv4Addr> {
        let mut next = self
            .next
            .lock()
            .map_err(|_| anyhow::anyhow!("pod IP allocator poisoned"))?;
        for _ in 0..64_000 {
            let n = *next;
            *next = (*next + 1) % 64_000;
            // 10.X.1.1 .. 10.X.250.254: skip .0 and .255 hosts and the 10.X.0.0/24 infrastructure block.
            let ip = Ipv4Addr::new(
                10,
                self.info.octet,
                (1 + n / 254 % 250) as u8,
                (1 + n % 254) as u8,
            );
            let out = nsenter(self.info.holder_pid)
                .args(["ip", "addr", "add", &format!("{ip}/32"), "dev", "eth0"])
                .output()?;
            if out.status.success() {
                return Ok(ip);
            }
            let err = String::from_utf8_lossy(&out.stderr);
            // iproute2 says "File exists" or, with newer kernels' extended
            // acks, "ipv4: Address already assigned".
            if !err.contains("exists") && !err.contains("already assigned") {
                bail!("assigning pod IP {ip}: {}", err.trim());
            }
        }
        bail!("the pod network {} is full", self.info.cidr())
    }

    /// Takes a pod IP back out of the namespace; releasing twice is fine.
    pub fn release_ip(&self, ip: Ipv4Addr) -> anyhow::Result<()> {
        let out = nsenter(self.info.holder_pid)
            .args(["ip", "addr", "del", &format!("{ip}/32"), "dev", "eth0"])
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && !err.contains("not found") && !err.contains("Cannot assign") {
            bail!("releasing pod IP {ip}: {}", err.trim());
        }
        Ok(())
    }

    /// Fails unless the kernel routes `ip` into this namespace's veth.
    pub fn verify_route(&self, ip: Ipv4Addr) -> anyhow::Result<()> {
        let route = run(Command::new("ip").args(["-4", "route", "get", &ip.to_string()]))?;
        let expected = format!("dev {} ", self.info.host_if);
        if !route.contains(&expected) {
            bail!(
                "refusing to send traffic to {ip}: the route goes elsewhere ({}) instead of into the pod network via {}",
                route.trim(),
                self.info.host_if
            );
        }
        Ok(())
    }

    /// A command that runs `program` inside the pod network namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = nsenter(self.info.holder_pid);
        cmd.arg(program);
        cmd
    }
}

fn nsenter(pid: u32) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg("-t").arg(pid.to_string()).arg("-n").arg("--");
    cmd
}

/// A second octet for `10.X.0.0/16` that no address or route on the host mentions.
fn free_octet() -> anyhow::Result<u8> {
    let addrs = run(Command::new("ip").args(["-4", "-o", "addr"]))?;
    let routes = run(Command::new("ip").args(["-4", "route"]))?;
    (200..=250u8)
        .find(|o| {
            let needle = format!("10.{o}.");
            !addrs.contains(&needle) && !routes.contains(&needle)
        })
        .context("no free 10.X.0.0/16 between 10.200 and 10.250 for the pod network")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_derives_addresses_from_the_octet() {
        let info = PodNetworkInfo {
            holder_pid: 1,
            host_if: "edsh1".into(),
            octet: 201,
        };
        assert_eq!(info.host_ip(), Ipv4Addr::new(10, 201, 0, 1));
        assert_eq!(info.cidr(), "10.201.0.0/16");
    }
}
