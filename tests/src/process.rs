//! Child processes of the harness: started with their output in a log file, stopped by PID.
//!
//! Two lifetimes exist. [`Lifetime::Owned`] processes belong to a test: they are killed when
//! the handle drops (also while a panicking test unwinds) and, through `setpriv --pdeathsig`,
//! when the test process itself dies. [`Lifetime::Detached`] processes belong to the local
//! cluster: they get their own process group and outlive the command that started them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// Errors starting or stopping a process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process could not be started.
    #[error("starting {name} ({binary})")]
    Spawn {
        /// The component's name.
        name: String,
        /// The binary.
        binary: PathBuf,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// The log file could not be created.
    #[error("creating log file {path}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
}

/// Who owns a process's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Killed when the handle drops or the parent dies (tests).
    Owned,
    /// Survives the starting command; stopped later by PID (the local cluster).
    Detached,
}

/// A running child process with its output captured in a log file.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
    lifetime: Lifetime,
}

impl Process {
    /// Starts `binary args...` with stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        binary: &Path,
        args: &[String],
        log: &Path,
        lifetime: Lifetime,
    ) -> Result<Self, Error> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| Error::Log {
                path: log.to_path_buf(),
                source,
            })?;
        let err = out.try_clone().map_err(|source| Error::Log {
            path: log.to_path_buf(),
            source,
        })?;
        let mut cmd = match lifetime {
            // setpriv (util-linux) arms PR_SET_PDEATHSIG before exec, so a test process that
            // is killed outright still takes its etcd and apiserver with it.
            Lifetime::Owned => {
                let mut c = Command::new("setpriv");
                c.arg("--pdeathsig").arg("KILL").arg("--").arg(binary);
                c
            }
            Lifetime::Detached => {
                use std::os::unix::process::CommandExt;
                let mut c = Command::new(binary);
                c.process_group(0);
                c
            }
        };
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            name: name.to_string(),
            binary: binary.to_path_buf(),
            source,
        })?;
        Ok(Self {
            name: name.to_string(),
            pid: child.id(),
            child: Some(child),
            log: log.to_path_buf(),
            lifetime,
        })
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The component's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether the process has exited (and if so, reaps it).
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => !is_alive(self.pid),
        }
    }

    /// The last `lines` lines of the log, for failure reports.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Sends SIGTERM and waits up to `grace` for the exit, then SIGKILLs.
    pub fn stop(&mut self, grace: Duration) {
        terminate(self.pid, grace);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and returns the exit status if the process ends within `grace`
    /// (then it is SIGKILLed and `None` returned). For testing graceful shutdown.
    pub fn stop_with_status(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        signal(self.pid, Signal::TERM);
        let deadline = std::time::Instant::now() + grace;
        if let Some(c) = self.child.as_mut() {
            while std::time::Instant::now() < deadline {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Some(status);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
        None
    }

    /// Waits up to `timeout` for the process to exit on its own; its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        let c = self.child.as_mut()?;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        signal(self.pid, Signal::KILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Hands the process over: the handle no longer stops it on drop.
    pub fn detach(mut self) -> u32 {
        self.lifetime = Lifetime::Detached;
        self.child = None;
        self.pid
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.lifetime == Lifetime::Owned && self.child.is_some() {
            self.kill();
        }
    }
}

/// Whether a process with this PID exists (and is not a zombie we could still reap).
pub fn is_alive(pid: u32) -> bool {
    let Some(pid) = to_pid(pid) else { return false };
    if rustix::process::test_kill_process(pid).is_err() {
        return false;
    }
    // A zombie still accepts signal 0; /proc tells it apart.
    std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero()))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Sends SIGTERM to `pid`, waits up to `grace` for it to go, then sends SIGKILL.
pub fn terminate(pid: u32, grace: Duration) {
    signal(pid, Signal::TERM);
    let deadline = Instant::now() + grace;
    while is_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if is_alive(pid) {
        signal(pid, Signal::KILL);
    }
}

fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = to_pid(pid) {
        // The process may already be gone; that is the outcome we want anyway.
        let _ = rustix::process::kill_process(pid, sig);
    }
}

fn to_pid(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}

/// The last `lines` lines of a file (empty when it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
