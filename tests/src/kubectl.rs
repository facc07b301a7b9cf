//! Stock kubectl, driven the way a user would drive it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// Errors running kubectl.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// kubectl could not be started.
    #[error("starting kubectl")]
    Spawn(#[source] std::io::Error),
    /// kubectl exited non-zero.
    #[error("kubectl {args} exited with {code:?}\nstdout: {stdout}\nstderr: {stderr}")]
    Failed {
        /// The arguments, joined.
        args: String,
        /// The exit code.
        code: Option<i32>,
        /// What it printed.
        stdout: String,
        /// What it complained about.
        stderr: String,
    },
    /// kubectl did not finish in time.
    #[error("kubectl {args} did not finish within {timeout:?}")]
    Timeout {
        /// The arguments, joined.
        args: String,
        /// The limit.
        timeout: Duration,
    },
}

/// The output of a finished kubectl run.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Whether kubectl exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// A kubectl binary bound to one kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    timeout: Duration,
}

impl Kubectl {
    /// kubectl at `bin` using `kubeconfig`.
    pub fn new(bin: PathBuf, kubeconfig: &Path) -> Self {
        Self {
            bin,
            kubeconfig: kubeconfig.to_path_buf(),
            timeout: Duration::from_secs(120),
        }
    }

    /// The same kubectl with another per-command time limit.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs kubectl with `args` (and `stdin`, if any) and returns what it printed, whatever
    /// its exit code.
    pub async fn run<I, S>(&self, args: I, stdin: Option<&str>) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<std::ffi::OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let joined = args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = tokio::process::Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(&args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(Error::Spawn)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .await
                .map_err(Error::Spawn)?;
        }
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| Error::Timeout {
                args: joined.clone(),
                timeout: self.timeout,
            })?
            .map_err(Error::Spawn)?;
        Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs kubectl and returns its stdout, or an error carrying both streams when it fails.
    pub async fn ok<I, S>(&self, args: I) -> Result<String, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<std::ffi::OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let out = self.run(&args, None).await?;
        check(&args, out)
    }

    /// `kubectl apply -f -` with `manifest` on stdin.
    pub async fn apply(&self, manifest: &str) -> Result<String, Error> {
        let args = ["apply", "-f", "-"];
        let out = self.run(args, Some(manifest)).await?;
        check(&args, out)
    }
}

fn check<S: AsRef<OsStr>>(args: &[S], out: Output) -> Result<String, Error> {
    if out.success() {
        Ok(out.stdout)
    } else {
        Err(Error::Failed {
            args: args
                .iter()
                .map(|a| a.as_ref().to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            code: out.code,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}
