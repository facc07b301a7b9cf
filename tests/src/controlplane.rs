//! A real etcd + kube-apiserver on free loopback ports, started on demand.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cp = ferrokube_tests::ControlPlane::start().await?;
//! let client = cp.client().await?;
//! let out = cp.kubectl()?.ok(["get", "namespaces"]).await?;
//! # Ok(()) }
//! ```
//!
//! Everything lives in one directory (a temp dir for tests): `pki/`, `etcd/`, `logs/` and
//! `kubeconfig`. Dropping a test's [`ControlPlane`] kills both processes and prints the tail
//! of every log (the test harness shows it only for failing tests); when the test is
//! panicking it also keeps the directory for a post-mortem.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::kubectl::Kubectl;
use crate::pki::Pki;
use crate::process::{Lifetime, Process};
use crate::{kubeconfig, upstream, wait};

/// Errors starting or driving the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An upstream binary is missing.
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    /// Generating certificates failed.
    #[error(transparent)]
    Pki(#[from] crate::pki::Error),
    /// Starting a process failed.
    #[error(transparent)]
    Process(#[from] crate::process::Error),
    /// Writing or loading the kubeconfig failed.
    #[error(transparent)]
    Kubeconfig(#[from] kubeconfig::Error),
    /// A filesystem operation failed.
    #[error("{what}")]
    Io {
        /// What we were doing.
        what: String,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// A component exited or never became ready.
    #[error("{component} did not become ready: {reason}\n--- {component} log (tail) ---\n{log}")]
    NotReady {
        /// The component.
        component: String,
        /// Why we gave up.
        reason: String,
        /// The tail of its log.
        log: String,
    },
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// The default Service range of ferrokube clusters (RFC 2544 benchmarking block, never routed).
pub const SERVICE_CIDR: &str = "198.19.0.0/16";
/// The first Service IP, the `kubernetes` Service's ClusterIP.
pub const KUBERNETES_SERVICE_IP: &str = "198.19.0.1";

/// How to start a control plane.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where everything goes; a fresh temp dir when `None`.
    pub dir: Option<PathBuf>,
    /// Owned by the caller (tests) or detached (the local cluster).
    pub lifetime: Lifetime,
    /// Fixed apiserver port; a free one when `None`.
    pub apiserver_port: Option<u16>,
    /// Skip fsync in etcd: safe for throwaway test data, much faster on small VMs.
    pub etcd_unsafe_no_fsync: bool,
    /// Extra kube-apiserver flags (`--flag=value`).
    pub extra_apiserver_args: Vec<String>,
    /// How long to wait for readiness.
    pub ready_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dir: None,
            lifetime: Lifetime::Owned,
            apiserver_port: None,
            etcd_unsafe_no_fsync: true,
            extra_apiserver_args: Vec::new(),
            ready_timeout: Duration::from_secs(60),
        }
    }
}

/// A running etcd + kube-apiserver.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    /// The generated certificates and keys.
    pub pki: Pki,
    etcd: Process,
    apiserver: Option<Process>,
    apiserver_args: Vec<String>,
    apiserver_port: u16,
    etcd_port: u16,
    kubeconfig: PathBuf,
    lifetime: Lifetime,
    ready_timeout: Duration,
    /// How long the last start took, until /readyz and /openapi/v2 answered.
    pub startup: Duration,
}

impl ControlPlane {
    /// Starts a control plane in a temp dir with the test defaults.
    pub async fn start() -> Result<Self> {
        Self::start_with(Options::default()).await
    }

    /// Starts a control plane with `opts`.
    pub async fn start_with(opts: Options) -> Result<Self> {
        let began = Instant::now();
        let etcd_bin = upstream::binary("etcd")?;
        // Fail before anything starts when the apiserver was never provisioned.
        upstream::binary("kube-apiserver")?;

        let (temp, dir) = match &opts.dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("ferrokube-cp-")
                    .tempdir()
                    .map_err(|source| Error::Io {
                        what: "creating the control plane's temp dir".into(),
                        source,
                    })?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|source| Error::Io {
            what: format!("creating {}", logs.display()),
            source,
        })?;

        let pki = Pki::generate(&dir.join("pki"), &["127.0.0.1", KUBERNETES_SERVICE_IP])?;
        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let apiserver_port = match opts.apiserver_port {
            Some(p) => p,
            None => free_port()?,
        };

        let etcd_args = etcd_args(&dir, etcd_port, etcd_peer_port, opts.etcd_unsafe_no_fsync);
        let etcd = Process::spawn(
            "etcd",
            &etcd_bin,
            &etcd_args,
            &logs.join("etcd.log"),
            opts.lifetime,
        )?;

        let mut apiserver_args = apiserver_args(&pki, etcd_port, apiserver_port);
        apiserver_args.extend(opts.extra_apiserver_args.iter().cloned());

        let kubeconfig = dir.join("kubeconfig");
        kubeconfig::write(
            &kubeconfig,
            "ferrokube",
            &format!("https://127.0.0.1:{apiserver_port}"),
            &pki.ca.pair.cert_pem,
            &pki.admin,
        )?;

        let mut cp = Self {
            dir,
            _temp: temp,
            pki,
            etcd,
            apiserver: None,
            apiserver_args,
            apiserver_port,
            etcd_port,
            kubeconfig,
            lifetime: opts.lifetime,
            ready_timeout: opts.ready_timeout,
            startup: Duration::ZERO,
        };
        cp.start_apiserver().await?;
        cp.startup = began.elapsed();
        Ok(cp)
    }

    /// Starts (or restarts after [`Self::stop_apiserver`]) the apiserver with the same flags
    /// and port, and waits until it is ready.
    pub async fn start_apiserver(&mut self) -> Result<()> {
        let bin = upstream::binary("kube-apiserver")?;
        let log = self.dir.join("logs/kube-apiserver.log");
        self.apiserver = Some(Process::spawn(
            "kube-apiserver",
            &bin,
            &self.apiserver_args,
            &log,
            self.lifetime,
        )?);
        self.wait_ready().await
    }

    /// Stops the apiserver (SIGTERM, then SIGKILL after 10 s); etcd keeps running.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut p) = self.apiserver.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// Stops and starts the apiserver, as an upgrade or crash-restart would.
    pub async fn restart_apiserver(&mut self) -> Result<()> {
        self.stop_apiserver();
        self.start_apiserver().await
    }

    /// Starts a second apiserver on its own port over the same etcd (as in an HA control
    /// plane), with its own admin kubeconfig. Tests use it to change objects while the main
    /// apiserver is down.
    pub async fn second_apiserver(&self) -> Result<SecondApiserver> {
        let bin = upstream::binary("kube-apiserver")?;
        let port = free_port()?;
        let mut args: Vec<String> = self
            .apiserver_args
            .iter()
            .filter(|a| !a.starts_with("--secure-port="))
            .cloned()
            .collect();
        args.push(format!("--secure-port={port}"));
        let kubeconfig = self.dir.join(format!("kubeconfig-{port}"));
        kubeconfig::write(
            &kubeconfig,
            "ferrokube",
            &format!("https://127.0.0.1:{port}"),
            &self.pki.ca.pair.cert_pem,
            &self.pki.admin,
        )?;
        let log = self.dir.join(format!("logs/kube-apiserver-{port}.log"));
        let mut process = Process::spawn("kube-apiserver", &bin, &args, &log, self.lifetime)?;
        let client = kubeconfig::client(&kubeconfig).await?;
        wait_healthy(&client, &mut process, self.ready_timeout)
            .await
            .map_err(|reason| Error::NotReady {
                component: "second kube-apiserver".into(),
                reason,
                log: crate::process::tail(&log, 40),
            })?;
        Ok(SecondApiserver {
            process,
            kubeconfig,
            client,
        })
    }

    /// Waits for `/readyz` and then `/openapi/v2` (which lags readiness by about half a
    /// second, and without which `kubectl apply` fails).
    async fn wait_ready(&mut self) -> Result<()> {
        let client = kubeconfig::client(&self.kubeconfig).await?;
        let timeout = self.ready_timeout;
        let res = match self.apiserver.as_mut() {
            Some(p) => wait_healthy(&client, p, timeout).await,
            None => Err("not started".to_string()),
        };
        res.map_err(|reason| self.not_ready("kube-apiserver", &reason))
    }
}

/// An extra apiserver over the same etcd; stopped when dropped.
pub struct SecondApiserver {
    process: Process,
    /// Its admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// An admin client for it.
    pub client: kube::Client,
}

impl SecondApiserver {
    /// Stops it.
    pub fn stop(mut self) {
        self.process.stop(Duration::from_secs(10));
    }
}

/// Polls `/readyz`, then `/openapi/v2`, until both answer 200 or `process` exits.
async fn wait_healthy(
    client: &kube::Client,
    process: &mut Process,
    timeout: Duration,
) -> std::result::Result<(), String> {
    for path in ["/readyz", "/openapi/v2"] {
        let res = wait::until(
            &format!("kube-apiserver {path}"),
            timeout,
            Duration::from_millis(100),
            || {
                let client = client.clone();
                let exited = process.has_exited();
                async move {
                    if exited {
                        return Ok(false);
                    }
                    let req = http::Request::get(path)
                        .body(Vec::new())
                        .map_err(|e| e.to_string())?;
                    client
                        .request_text(req)
                        .await
                        .map(|_| true)
                        .map_err(|e| e.to_string())
                }
            },
        )
        .await;
        match res {
            Ok(true) => {}
            Ok(false) => return Err("the process exited".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

impl ControlPlane {
    fn not_ready(&self, component: &str, reason: &str) -> Error {
        let log = match component {
            "etcd" => self.etcd.log_tail(40),
            _ => self
                .apiserver
                .as_ref()
                .map(|p| p.log_tail(40))
                .unwrap_or_else(|| {
                    crate::process::tail(&self.dir.join("logs/kube-apiserver.log"), 40)
                }),
        };
        Error::NotReady {
            component: component.to_string(),
            reason: reason.to_string(),
            log: format!("{log}\n--- etcd log (tail) ---\n{}", self.etcd.log_tail(10)),
        }
    }

    /// The admin kubeconfig.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The directory holding PKI, data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory holding every component's log.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// The apiserver's URL.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    /// The etcd client URL.
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    /// The PIDs of etcd and the apiserver (for the local cluster's state file).
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut v = vec![("etcd".to_string(), self.etcd.pid())];
        if let Some(a) = &self.apiserver {
            v.push(("kube-apiserver".to_string(), a.pid()));
        }
        v
    }

    /// An admin client.
    pub async fn client(&self) -> Result<kube::Client> {
        Ok(kubeconfig::client(&self.kubeconfig).await?)
    }

    /// Stock kubectl pointed at this control plane as admin.
    pub fn kubectl(&self) -> Result<Kubectl> {
        Ok(Kubectl::new(upstream::binary("kubectl")?, &self.kubeconfig))
    }

    /// Writes a kubeconfig for another identity (a component or user), with a client
    /// certificate issued by the cluster CA for `user` in `groups`.
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let stem = user.replace([':', '/'], "-");
        let pair = self
            .pki
            .ca
            .issue_client(&self.pki.dir, &stem, user, groups)?;
        let path = self.dir.join(format!("{stem}.kubeconfig"));
        kubeconfig::write(
            &path,
            "ferrokube",
            &self.server_url(),
            &self.pki.ca.pair.cert_pem,
            &pair,
        )?;
        Ok(path)
    }

    /// Starts a component (one of ferrokube's binaries, or an upstream peer) beside the
    /// control plane, logging to `<log dir>/<name>.log` so failure reports include it.
    /// `args` come after `--kubeconfig=<admin kubeconfig>`.
    pub fn spawn_component(&self, name: &str, binary: &Path, args: &[&str]) -> Result<Process> {
        let mut all = vec![format!("--kubeconfig={}", self.kubeconfig.display())];
        all.extend(args.iter().map(ToString::to_string));
        Ok(Process::spawn(
            name,
            binary,
            &all,
            &self.log_dir().join(format!("{name}.log")),
            self.lifetime,
        )?)
    }

    /// The tail of every log in the log dir, for failure reports.
    pub fn logs(&self, lines: usize) -> String {
        dump_logs(&self.log_dir(), lines)
    }

    /// Hands the processes over to the caller (the local cluster): nothing is stopped or
    /// deleted when this handle drops.
    pub fn detach(mut self) -> Vec<(String, u32)> {
        let pids = self.pids();
        if let Some(t) = self._temp.take() {
            let _ = t.keep();
        }
        self.lifetime = Lifetime::Detached;
        pids
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if self.lifetime == Lifetime::Detached {
            return;
        }
        // Always print the logs: the test harness shows a test's output only when it fails,
        // and a test that returns `Err` (rather than panicking) fails after this drop.
        eprintln!("{}", self.logs(60));
        if std::thread::panicking()
            && let Some(t) = self._temp.take()
        {
            eprintln!("control plane dir kept at {}", t.keep().display());
        }
        self.stop_apiserver();
        self.etcd.kill();
    }
}

/// The tail of each `*.log` file in `dir`, headed by its name.
pub fn dump_logs(dir: &Path, lines: usize) -> String {
    let mut out = String::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    for f in files {
        out.push_str(&format!(
            "--- {} (last {lines} lines) ---\n{}\n",
            f.display(),
            crate::process::tail(&f, lines)
        ));
    }
    out
}

/// A free TCP port on 127.0.0.1, for a component a test starts.
///
/// Not the kernel's pick (`bind(0)`): that comes from the ephemeral range, the same range
/// outgoing connections take their source ports from, so between the pick and the
/// component's own bind a client connection elsewhere on the machine can take it (seen as
/// kube-apiserver's "bind: address already in use"). Ports below the ephemeral range are
/// only ever taken by a listener; starting at 20000 also stays clear of the components'
/// default ports (10250, 10257, 10259, ...). Each process starts at a random point and walks on, so
/// concurrent tests in one process never get the same port, and different processes rarely.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let low = 20_000u32;
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|h| *h > low + 1_000)
        .unwrap_or(32_768);
    let span = high - low;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        rand::random_range(0..span),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let Ok(port) = u16::try_from(low + offset) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    // Everything below the ephemeral range is taken: fall back to the kernel's pick.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            what: "finding a free port".into(),
            source,
        })
}

fn etcd_args(dir: &Path, port: u16, peer_port: u16, no_fsync: bool) -> Vec<String> {
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut args = vec![
        "--name=ferrokube".to_string(),
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=ferrokube={peer}"),
        "--log-level=warn".to_string(),
    ];
    if no_fsync {
        args.push("--unsafe-no-fsync".to_string());
    }
    args
}

fn apiserver_args(pki: &Pki, etcd_port: u16, port: u16) -> Vec<String> {
    let p = |path: &Path| path.display().to_string();
    vec![
        format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        format!("--tls-cert-file={}", p(&pki.apiserver.cert_path)),
        format!("--tls-private-key-file={}", p(&pki.apiserver.key_path)),
        format!("--client-ca-file={}", p(&pki.ca.pair.cert_path)),
        format!("--service-account-key-file={}", p(&pki.sa_pub_path)),
        format!("--service-account-signing-key-file={}", p(&pki.sa_key_path)),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--authorization-mode=Node,RBAC".into(),
        "--enable-admission-plugins=NodeRestriction".into(),
        "--allow-privileged=true".into(),
        format!(
            "--kubelet-client-certificate={}",
            p(&pki.apiserver_kubelet_client.cert_path)
        ),
        format!(
            "--kubelet-client-key={}",
            p(&pki.apiserver_kubelet_client.key_path)
        ),
        format!(
            "--requestheader-client-ca-file={}",
            p(&pki.front_proxy_ca.pair.cert_path)
        ),
        "--requestheader-allowed-names=front-proxy-client".into(),
        "--requestheader-username-headers=X-Remote-User".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        format!(
            "--proxy-client-cert-file={}",
            p(&pki.front_proxy_client.cert_path)
        ),
        format!(
            "--proxy-client-key-file={}",
            p(&pki.front_proxy_client.key_path)
        ),
        "--profiling=false".into(),
    ]
}
