//! Container probes: startup, liveness and readiness with exec, httpGet, tcpSocket and grpc.
//!
//! As upstream: nothing but the startup probe runs until it has succeeded; each probe runs
//! every `periodSeconds` after `initialDelaySeconds`, with `timeoutSeconds`; readiness
//! flips after `successThreshold`/`failureThreshold` results in a row, and a liveness (or
//! startup) probe reaching its failure threshold restarts the container.

mod grpc;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// One probe's history.
#[derive(Clone, Debug, Default)]
pub struct Counter {
    successes: i32,
    failures: i32,
    last_run: Option<Instant>,
    first_seen: Option<Instant>,
}

/// The probes of one running container instance.
#[derive(Clone, Debug, Default)]
pub struct ProbeState {
    startup: Counter,
    liveness: Counter,
    readiness: Counter,
    started: bool,
    ready: bool,
}

impl ProbeState {
    /// For a container adopted after a kubelet restart that the API still shows ready: keep
    /// it ready (and started) until a probe says otherwise, so a restart flips nothing.
    pub fn adopt_ready(&mut self) {
        self.started = true;
        self.ready = true;
    }

    /// Whether the startup probe (if any) has passed.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Whether no probe has run yet for this instance.
    pub fn is_fresh(&self) -> bool {
        self.startup.last_run.is_none()
            && self.liveness.last_run.is_none()
            && self.readiness.last_run.is_none()
            && !self.started
    }
}

/// Where probes go.
pub struct Target<'a> {
    /// The pod IP (httpGet, tcpSocket).
    pub ip: Option<&'a str>,
    /// The runc container id (exec).
    pub container_id: &'a str,
    /// runc.
    pub runc: &'a Path,
    /// runc's state root.
    pub runc_root: &'a Path,
}

/// What the probes say now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The container counts as ready.
    pub ready: bool,
    /// The container must be restarted.
    pub restart: bool,
}

/// Runs the probes that are due and folds in their results.
pub async fn run_due(c: &Container, target: &Target<'_>, state: &mut ProbeState) -> Outcome {
    let mut restart = false;
    if !state.started {
        match &c.startup_probe {
            None => state.started = true,
            Some(p) => match step(p, c, target, &mut state.startup).await {
                Some(true) => state.started = true,
                Some(false) => restart = true,
                None => {}
            },
        }
    }
    if state.started {
        if let Some(p) = &c.liveness_probe
            && step(p, c, target, &mut state.liveness).await == Some(false)
        {
            restart = true;
        }
        match &c.readiness_probe {
            None => state.ready = true,
            Some(p) => {
                if let Some(r) = step(p, c, target, &mut state.readiness).await {
                    state.ready = r;
                }
            }
        }
    }
    Outcome {
        ready: state.started && state.ready && !restart,
        restart,
    }
}

/// Runs `p` if due; returns Some(true) at the success threshold, Some(false) at the failure
/// threshold, None when undecided or not due.
async fn step(
    p: &Probe,
    c: &Container,
    target: &Target<'_>,
    counter: &mut Counter,
) -> Option<bool> {
    let now = Instant::now();
    let first = *counter.first_seen.get_or_insert(now);
    let delay = Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64);
    if now.duration_since(first) < delay {
        return None;
    }
    let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
    if counter
        .last_run
        .is_some_and(|t| now.duration_since(t) < period)
    {
        return decided(p, counter);
    }
    counter.last_run = Some(now);
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    let ok = tokio::time::timeout(timeout, run_once(p, c, target))
        .await
        .unwrap_or(false);
    if ok {
        counter.successes += 1;
        counter.failures = 0;
    } else {
        counter.failures += 1;
        counter.successes = 0;
    }
    decided(p, counter)
}

fn decided(p: &Probe, counter: &Counter) -> Option<bool> {
    if counter.successes >= p.success_threshold.unwrap_or(1).max(1) {
        Some(true)
    } else if counter.failures >= p.failure_threshold.unwrap_or(3).max(1) {
        Some(false)
    } else {
        None
    }
}

/// Resolves a probe port: a number, or the name of one of the container's ports.
pub fn resolve_port(port: &IntOrString, c: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

async fn run_once(p: &Probe, c: &Container, target: &Target<'_>) -> bool {
    if let Some(g) = &p.grpc {
        // As upstream, a gRPC probe always goes to the pod IP; the port is a number.
        let (Some(ip), Ok(port)) = (target.ip, u16::try_from(g.port)) else {
            return false;
        };
        let service = g.service.as_deref().unwrap_or_default();
        return match grpc::check(ip, port, service).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(container = %c.name, %ip, port, error = %e, "gRPC probe failed");
                false
            }
        };
    }
    run_handler(
        &Handler {
            exec: p.exec.as_ref(),
            http_get: p.http_get.as_ref(),
            tcp_socket: p.tcp_socket.as_ref(),
        },
        c,
        target,
    )
    .await
}

/// The actions a probe or a lifecycle hook can take.
#[derive(Clone, Copy, Debug, Default)]
pub struct Handler<'a> {
    /// Run a command in the container.
    pub exec: Option<&'a ExecAction>,
    /// GET a URL.
    pub http_get: Option<&'a HTTPGetAction>,
    /// Open a TCP connection.
    pub tcp_socket: Option<&'a TCPSocketAction>,
}

impl<'a> Handler<'a> {
    /// The handler of a postStart/preStop hook (`sleep` is handled by the caller).
    pub fn of_hook(h: &'a LifecycleHandler) -> Self {
        Self {
            exec: h.exec.as_ref(),
            http_get: h.http_get.as_ref(),
            tcp_socket: h.tcp_socket.as_ref(),
        }
    }
}

/// Runs one handler; true on success.
pub async fn run_handler(h: &Handler<'_>, c: &Container, target: &Target<'_>) -> bool {
    if let Some(h) = h.http_get {
        let host = h.host.clone().or(target.ip.map(str::to_string));
        let (Some(host), Some(port)) = (host, resolve_port(&h.port, c)) else {
            return false;
        };
        return http_get(&host, port, h.path.as_deref().unwrap_or("/")).await;
    }
    if let Some(t) = h.tcp_socket {
        let host = t.host.clone().or(target.ip.map(str::to_string));
        let (Some(host), Some(port)) = (host, resolve_port(&t.port, c)) else {
            return false;
        };
        return tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .is_ok();
    }
    if let Some(e) = h.exec {
        let cmd = e.command.clone().unwrap_or_default();
        if cmd.is_empty() {
            return false;
        }
        // argv goes to runc as separate arguments: nothing is interpreted by a shell here.
        return tokio::process::Command::new(target.runc)
            .arg("--root")
            .arg(target.runc_root)
            .arg("exec")
            .arg(target.container_id)
            .args(&cmd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status()
            .await
            .is_ok_and(|s| s.success());
    }
    false
}

/// An HTTP/1.1 GET; success is a status in [200, 400), as upstream.
pub async fn http_get(host: &str, port: u16, path: &str) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect((host, port)).await else {
        return false;
    };
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    // Header values come from the pod spec; CR/LF would split the request, so refuse them.
    if path.contains(['\r', '\n']) {
        return false;
    }
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.36\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .is_some_and(|c| (200..400).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, TCPSocketAction};

    #[tokio::test]
    async fn tcp_probe_thresholds() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let c = Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort {
                name: Some("web".into()),
                container_port: i32::from(port),
                ..Default::default()
            }]),
            readiness_probe: Some(Probe {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::String("web".into()),
                    host: None,
                }),
                period_seconds: Some(1),
                failure_threshold: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        let target = Target {
            ip: Some("127.0.0.1"),
            container_id: "x",
            runc: Path::new("runc"),
            runc_root: Path::new("/tmp"),
        };
        let mut state = ProbeState::default();
        assert!(run_due(&c, &target, &mut state).await.ready);
        drop(listener);
        state.readiness.last_run = None;
        let o = run_due(&c, &target, &mut state).await;
        assert!(!o.ready && !o.restart);
    }
}
