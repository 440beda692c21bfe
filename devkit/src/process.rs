//! Child processes that cannot outlive the run that started them.
//!
//! Two lifetimes:
//!
//! - [`Lifetime::Tied`]: the child gets `PR_SET_PDEATHSIG(SIGKILL)` and its
//!   own process group. When the test binary exits, panics or is killed with
//!   SIGKILL, the kernel kills the child too. The death signal fires when the
//!   *thread* that forked the child exits, not the process, so every tied child
//!   is spawned from one spawner thread that lives as long as the process;
//!   a test thread that ends cannot take a shared cluster down with it.
//! - [`Lifetime::Detached`]: the child starts a new session (`setsid`) and
//!   survives its parent: what `cargo xtask cluster up` wants. Whoever
//!   starts it records the pid; `cluster down` stops the group.
//!
//! This is not a general process supervisor: no restarts, no log rotation.
//! Output goes to a log file whose path error messages quote.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a started process may outlive the one that started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Killed by the kernel when this process exits, however it exits.
    Tied,
    /// Survives this process; stopped by pid (process group) later.
    Detached,
}

/// A running child with its log file. Dropping a tied child stops it.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    lifetime: Lifetime,
}

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// The one long-lived thread tied children are forked from (see module doc).
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("eds-child-spawner".into())
            .spawn(move || {
                // The sender lives in a static, so this loop ends only with the process.
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning a thread at start-up");
        Mutex::new(tx)
    })
}

impl ChildProcess {
    /// Starts `cmd`, sending stdout and stderr to `log` (truncated).
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        log: &Path,
        lifetime: Lifetime,
    ) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("creating log {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let program = format!("{:?}", cmd.get_program());
        let child = match lifetime {
            Lifetime::Tied => {
                let parent = std::process::id();
                set_tied(&mut cmd, parent);
                let (tx, rx) = mpsc::channel();
                spawner()
                    .lock()
                    .map_err(|_| anyhow::anyhow!("the child spawner lock is poisoned"))?
                    .send((cmd, tx))
                    .context("the child spawner thread is gone")?;
                rx.recv().context("the child spawner thread is gone")?
            }
            Lifetime::Detached => {
                set_detached(&mut cmd);
                cmd.spawn()
            }
        }
        .with_context(|| format!("starting {name} ({program})"))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
            lifetime,
        })
    }

    /// The child's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The log file the child writes to.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Fails with the tail of the log if the child has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was stopped", self.name);
        };
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log, 25)
            );
        }
        Ok(())
    }

    /// Leaves a detached child running and returns its pid.
    pub fn release(mut self) -> u32 {
        let pid = self.pid();
        self.child = None;
        pid
    }

    /// SIGTERM to the process group, SIGKILL after `grace`; returns as
    /// soon as every process of the group is gone.
    ///
    /// The leader is reaped while waiting: an exited but unreaped leader is
    /// a zombie that still counts as a member of its group, so waiting on
    /// the group alone would always last the whole grace.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let Ok(pgid) = i32::try_from(child.id()) else {
            return;
        };
        signal(-pgid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        let mut reaped = false;
        while Instant::now() < deadline {
            reaped = reaped || matches!(child.try_wait(), Ok(Some(_)));
            if reaped && !signal(-pgid, 0) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(-pgid, libc::SIGKILL);
        let _ = child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.lifetime == Lifetime::Tied {
            self.stop(Duration::from_secs(3));
        }
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether a process with this pid exists.
pub fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence and permission without sending anything.
    signal(pid, 0) || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// SIGTERM to the group led by `pid`, then SIGKILL if it is still there
/// after `grace`. Safe to call on a group that is already gone.
pub fn stop_group(pid: u32, grace: Duration) {
    let Ok(pgid) = i32::try_from(pid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    signal(-pgid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !signal(-pgid, 0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(-pgid, libc::SIGKILL);
}

#[allow(unsafe_code)]
fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

#[allow(unsafe_code)]
fn set_tied(cmd: &mut Command, parent: u32) {
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid, setpgid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[allow(unsafe_code)]
fn set_detached(cmd: &mut Command) {
    // SAFETY: setsid is async-signal-safe and touches no shared memory.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
