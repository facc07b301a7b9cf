//! The Ingress controller benchmark: ferrokube's controller against Debian's nginx set up by
//! hand with the same routes and the same backend, in the same run.
//!
//! * throughput and latency: `wrk` (keep-alive, HTTP/1.1) through each proxy to one backend
//!   (a tiny HTTP server in this process), plain HTTP and TLS;
//! * route propagation: from the call that creates a new Ingress to the first correct
//!   response, with 1k and 5k Ingresses already served. nginx's counterpart is what a
//!   config-file proxy must do for a new route: rewrite the file and reload (SIGHUP);
//! * resident memory with 5k routes (nginx: master and workers added up).
//!
//! nginx's configuration is generated here from this program's own fixed values (ports,
//! host names of the form `h<N>.bench`, file paths in a temporary directory); nothing in it
//! comes from outside.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::{Figure, median};
use crate::process::{Lifetime, Process};
use crate::{ControlPlane, procstat, wait};

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Our controller binary.
    pub ferrokube_bin: PathBuf,
    /// The nginx binary.
    pub nginx_bin: PathBuf,
    /// How long each wrk run measures.
    pub duration: Duration,
    /// wrk's open connections.
    pub connections: u32,
    /// wrk's threads.
    pub threads: u32,
    /// wrk runs per proxy and protocol; the medians are reported.
    pub rounds: usize,
    /// Ingress counts to measure route propagation at (the last one is also the RSS one).
    pub routes: Vec<usize>,
    /// Propagation samples per count.
    pub samples: usize,
}

const NS: &str = "bench";
const HOST: &str = "bench.example";
const T: Duration = Duration::from_secs(300);

/// The host name of the `i`-th bulk route.
fn bulk_host(i: usize) -> String {
    format!("h{i}.bench")
}

/// A figure measured on ferrokube only, against the goal.
struct Goal {
    what: String,
    unit: &'static str,
    value: f64,
    goal: &'static str,
}

/// Runs everything and prints one line per figure.
pub async fn run(cfg: &Config) -> Result<Vec<Figure>> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec![HOST.to_string()])?.self_signed(&key)?;
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    let mut figures = Vec::new();
    let mut goals = Vec::new();

    // Both proxies (and the control plane ours needs) run throughout, so each is measured
    // on the same machine load; each is idle while the other is measured.
    let nginx = Nginx::start(cfg, dir.path(), backend.addr, &cert_pem, &key_pem)?;
    nginx.wait_serving(HOST).await?;
    let ours = Ferrokube::start(cfg, backend.addr, &cert_pem, &key_pem).await?;
    // Each protocol is measured in rounds, nginx first in odd rounds and ours first in even
    // ones, and the medians are reported: a load that drifts during the run (this machine
    // is shared) weighs on both alike, and one disturbed run does not decide the figure.
    let (up_pids, f_pids) = (nginx.pids(), vec![ours.pid()]);
    for (proto, scheme, up_port, f_port) in [
        ("HTTP", "http", nginx.http, ours.http),
        ("TLS", "https", nginx.https, ours.https),
    ] {
        let (mut ups, mut fs) = (Vec::new(), Vec::new());
        let up_url = format!("{scheme}://127.0.0.1:{up_port}/");
        let f_url = format!("{scheme}://127.0.0.1:{f_port}/");
        for round in 0..cfg.rounds {
            if round % 2 == 0 {
                ups.push(wrk(cfg, &up_url, &up_pids).await?);
                fs.push(wrk(cfg, &f_url, &f_pids).await?);
            } else {
                fs.push(wrk(cfg, &f_url, &f_pids).await?);
                ups.push(wrk(cfg, &up_url, &up_pids).await?);
            }
        }
        let setting = format!(
            "{proto} keep-alive, {} connections, {} threads, {}s, median of {} rounds",
            cfg.connections,
            cfg.threads,
            cfg.duration.as_secs(),
            cfg.rounds,
        );
        let per_round: Vec<String> = ups
            .iter()
            .zip(&fs)
            .map(|(u, f)| format!("{:.2}", f.rps / u.rps))
            .collect();
        println!(
            "ingress requests/s per round ({proto}): ratios ferrokube/upstream {}",
            per_round.join(", ")
        );
        let figure = |pick: fn(&WrkResult) -> f64| {
            (
                median(&mut ups.iter().map(pick).collect::<Vec<_>>()),
                median(&mut fs.iter().map(pick).collect::<Vec<_>>()),
            )
        };
        for (what, unit, (uv, fv)) in [
            ("requests/s", "req/s", figure(|r| r.rps)),
            ("p50 latency", "ms", figure(|r| r.p50_ms)),
            ("p99 latency", "ms", figure(|r| r.p99_ms)),
            ("CPU per request", "us", figure(|r| r.cpu_us)),
        ] {
            let fig = Figure {
                what: format!("ingress {what} ({setting}; upstream = nginx)"),
                unit,
                upstream: uv,
                ferrokube: fv,
            };
            println!("{fig}");
            figures.push(fig);
        }
        for (who, rs) in [("nginx", &ups), ("ferrokube", &fs)] {
            let errors: u64 = rs.iter().map(|r| r.errors).sum();
            if errors > 0 {
                println!("warning: {who} {proto}: {errors} failed requests");
            }
        }
    }

    // Route propagation at growing route counts; RSS at the largest.
    let mut created = 0;
    for &n in &cfg.routes {
        let started = Instant::now();
        ours.bulk_create(created, n).await?;
        created = n;
        ours.wait_serving(&bulk_host(n - 1)).await?;
        eprintln!(
            "{n} Ingresses created and served in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        let (mut fk, mut fk_create) = (Vec::new(), Vec::new());
        for s in 0..cfg.samples {
            let (total, create) = ours.propagation(&format!("p{n}-{s}.bench")).await?;
            fk.push(total);
            fk_create.push((create, total - create));
        }
        let mut ng = Vec::new();
        for s in 0..cfg.samples {
            ng.push(nginx.propagation(n, &format!("p{n}-{s}.bench")).await?);
        }
        let max = fk.iter().copied().fold(0.0, f64::max);
        let (fmed, nmed) = (median(&mut fk), median(&mut ng));
        let create_med = median(&mut fk_create.iter().map(|c| c.0).collect::<Vec<_>>());
        let after_med = median(&mut fk_create.iter().map(|c| c.1).collect::<Vec<_>>());
        let fig = Figure {
            what: format!(
                "ingress route propagation, {n} Ingresses (median of {}; upstream = nginx rewrite + reload)",
                cfg.samples
            ),
            unit: "ms",
            upstream: nmed,
            ferrokube: fmed,
        };
        println!("{fig}");
        // The figure counts from the create call, as the goal defines it; this splits off
        // the apiserver's part (the create call itself) from the rest (watch delivery, the
        // controller's rebuild, the first correct response).
        println!(
            "ingress route propagation, {n} Ingresses, split (medians of {}): create call {create_med:.2} ms, create returned -> served {after_med:.2} ms",
            cfg.samples,
        );
        figures.push(fig);
        goals.push(Goal {
            what: format!(
                "ingress route propagation, {n} Ingresses (max of {})",
                cfg.samples
            ),
            unit: "ms",
            value: max,
            goal: "< 50 ms at 5k routes",
        });
    }
    let n = created;
    let f_rss = rss_kib(ours.pid()).unwrap_or(0) as f64 / 1024.0;
    let f_peak = procstat::usage(ours.pid())
        .map(|u| u.peak_rss_bytes)
        .unwrap_or(0) as f64
        / (1024.0 * 1024.0);
    let n_rss = nginx.rss_kib() as f64 / 1024.0;
    let fig = Figure {
        what: format!("ingress RSS with {n} routes (upstream = nginx master + workers)"),
        unit: "MiB",
        upstream: n_rss,
        ferrokube: f_rss,
    };
    println!("{fig}");
    figures.push(fig);
    goals.push(Goal {
        what: format!("ingress peak RSS with {n} routes"),
        unit: "MiB",
        value: f_peak,
        goal: "< 50 MiB",
    });
    for g in &goals {
        println!(
            "{}: ferrokube {:.2} {}, goal {}",
            g.what, g.value, g.unit, g.goal
        );
    }
    Ok(figures)
}

/// Current resident set (`VmRSS`), KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    procstat::usage(pid).map(|u| u.rss_bytes / 1024)
}

/// This machine's address on its default route (the apiserver refuses loopback addresses
/// in EndpointSlices). Connecting a UDP socket sends nothing.
fn local_ip() -> Result<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    s.connect("198.18.0.1:9")?;
    let ip = s.local_addr()?.ip();
    anyhow::ensure!(!ip.is_loopback(), "no non-loopback address on this machine");
    Ok(ip)
}

/// The backend both proxies send to: HTTP/1.1 keep-alive, answers every request with 200
/// and the request's Host header as the body (so a probe knows which route answered).
struct Backend {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind((local_ip()?, 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_backend(stream));
            }
        });
        Ok(Self { addr, task })
    }
}

/// Requests are GETs without bodies (the bench sends nothing else), so a request ends at
/// its blank line.
async fn serve_backend(mut stream: TcpStream) {
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let header = |name: &str| {
                head.lines().skip(1).find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| v.trim().to_string())
                })
            };
            let host = header("host").unwrap_or_default();
            let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{host}",
                host.len()
            );
            if stream.write_all(resp.as_bytes()).await.is_err() || close {
                return;
            }
        }
        if buf.len() > 64 * 1024 {
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One `GET /` with `Host: host` on a fresh connection: status and body.
async fn probe(port: u16, host: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {head:?}"))?;
    Ok((status, body.to_string()))
}

/// Polls (1 ms apart) until `host` is answered by the backend; ms since `since`.
async fn until_served(port: u16, host: &str, since: Instant) -> Result<f64> {
    let deadline = since + T;
    loop {
        if let Ok((200, body)) = probe(port, host).await
            && body == host
        {
            return Ok(since.elapsed().as_secs_f64() * 1000.0);
        }
        if Instant::now() > deadline {
            bail!("{host} not served within {T:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// wrk's figures, and the proxy's CPU time per request.
#[derive(Clone, Copy, Debug, Default)]
struct WrkResult {
    rps: f64,
    requests: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// CPU time (user + system) of the proxy's processes per request, in microseconds.
    cpu_us: f64,
}

/// CPU seconds used so far by `pids` together.
fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|&p| procstat::usage(p))
        .map(|u| u.cpu_seconds)
        .sum()
}

/// Runs wrk against `url` (Host header `bench.example`) after a short warm-up; `pids` are
/// the proxy's processes, whose CPU time over the measured run is divided by its requests.
async fn wrk(cfg: &Config, url: &str, pids: &[u32]) -> Result<WrkResult> {
    let run = |d: Duration| {
        let mut c = tokio::process::Command::new("wrk");
        c.arg(format!("-t{}", cfg.threads))
            .arg(format!("-c{}", cfg.connections))
            .arg(format!("-d{}s", d.as_secs().max(1)))
            .arg("--latency")
            .arg("-H")
            .arg(format!("Host: {HOST}"))
            .arg(url)
            .kill_on_drop(true);
        c
    };
    let warm = run(Duration::from_secs(2)).output().await.context("wrk")?;
    if !warm.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&warm.stderr));
    }
    let cpu_before = cpu_seconds(pids);
    let out = run(cfg.duration).output().await.context("wrk")?;
    let cpu = cpu_seconds(pids) - cpu_before;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut r = parse_wrk(&text).with_context(|| format!("wrk output:\n{text}"))?;
    r.cpu_us = cpu * 1e6 / r.requests;
    Ok(r)
}

fn parse_wrk(text: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    let ms = |v: &str| -> Option<f64> {
        let (num, factor) = if let Some(n) = v.strip_suffix("us") {
            (n, 0.001)
        } else if let Some(n) = v.strip_suffix("ms") {
            (n, 1.0)
        } else if let Some(n) = v.strip_suffix('s') {
            (n, 1000.0)
        } else {
            (v, 1.0)
        };
        num.parse::<f64>().ok().map(|x| x * factor)
    };
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => r.rps = v.parse()?,
            [n, "requests", "in", ..] => r.requests = n.parse()?,
            ["50%", v] => r.p50_ms = ms(v).context("p50")?,
            ["99%", v] => r.p99_ms = ms(v).context("p99")?,
            ["Non-2xx", "or", "3xx", "responses:", n] => r.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                // `connect 0, read 0, write 0, timeout 0`
                for n in rest.iter().skip(1).step_by(2) {
                    r.errors += n.trim_end_matches(',').parse::<u64>().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    if r.rps == 0.0 || r.requests == 0.0 {
        bail!("no Requests/sec or request count line");
    }
    Ok(r)
}

/// Where nginx's generated configuration points.
struct NginxLayout {
    dir: PathBuf,
    http: u16,
    https: u16,
    backend: SocketAddr,
}

impl NginxLayout {
    /// The configuration with the benchmark route and hosts `h0.bench`..`h<bulk-1>.bench`
    /// plus `extra`, all to the one backend, with the headers ferrokube sets.
    fn config(&self, bulk: usize, extra: &[&str]) -> String {
        let d = self.dir.display();
        let mut c = String::new();
        // Two workers: the parallelism of ferrokube's runtime on this two-core machine.
        // Access logs on, as ferrokube's are. keepalive_requests high, as ferrokube has no
        // per-connection request limit.
        let _ = write!(
            c,
            "worker_processes 2;\n\
             daemon off;\n\
             master_process on;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
             access_log {d}/access.log;\n\
             client_body_temp_path {d}/tmp/body;\n\
             proxy_temp_path {d}/tmp/proxy;\n\
             fastcgi_temp_path {d}/tmp/fastcgi;\n\
             uwsgi_temp_path {d}/tmp/uwsgi;\n\
             scgi_temp_path {d}/tmp/scgi;\n\
             keepalive_requests 1000000;\n\
             server_names_hash_max_size 65536;\n\
             server_names_hash_bucket_size 128;\n\
             upstream echo {{ server {b}; keepalive 128; }}\n\
             proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n\
             proxy_set_header Host $host;\n\
             proxy_set_header X-Forwarded-For $remote_addr;\n\
             proxy_set_header X-Real-IP $remote_addr;\n\
             proxy_set_header X-Forwarded-Proto $scheme;\n\
             proxy_set_header X-Forwarded-Host $host;\n\
             proxy_set_header X-Request-ID $request_id;\n\
             ssl_certificate {d}/tls.crt;\n\
             ssl_certificate_key {d}/tls.key;\n\
             server {{ listen 127.0.0.1:{h} default_server; listen 127.0.0.1:{s} ssl default_server; return 404; }}\n",
            b = self.backend,
            h = self.http,
            s = self.https,
        );
        let hosts = std::iter::once(HOST.to_string())
            .chain((0..bulk).map(bulk_host))
            .chain(extra.iter().map(|h| (*h).to_string()));
        for host in hosts {
            let _ = writeln!(
                c,
                "server {{ listen 127.0.0.1:{}; listen 127.0.0.1:{} ssl; server_name {host}; location / {{ proxy_pass http://echo; }} }}",
                self.http, self.https
            );
        }
        c.push_str("}\n");
        c
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.join("nginx.conf")
    }
}

/// nginx with a generated configuration, master and workers in the foreground.
struct Nginx {
    layout: NginxLayout,
    process: Process,
    http: u16,
    https: u16,
}

impl Drop for Nginx {
    /// SIGTERM, nginx's fast shutdown, before the handle's own SIGKILL: a killed master
    /// leaves its workers (and every generation a reload started) running, orphaned.
    fn drop(&mut self) {
        self.process.stop(Duration::from_secs(5));
    }
}

impl Nginx {
    fn start(
        cfg: &Config,
        parent: &Path,
        backend: SocketAddr,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self> {
        let dir = parent.join("nginx");
        std::fs::create_dir_all(dir.join("tmp"))?;
        std::fs::write(dir.join("tls.crt"), cert_pem)?;
        std::fs::write(dir.join("tls.key"), key_pem)?;
        let free = crate::controlplane::free_port;
        let layout = NginxLayout {
            dir: dir.clone(),
            http: free()?,
            https: free()?,
            backend,
        };
        std::fs::write(layout.conf_path(), layout.config(0, &[]))?;
        let args = vec![
            "-p".to_string(),
            format!("{}/", dir.display()),
            "-c".into(),
            layout.conf_path().display().to_string(),
            "-e".into(),
            dir.join("error.log").display().to_string(),
        ];
        let process = Process::spawn(
            "nginx",
            &cfg.nginx_bin,
            &args,
            &dir.join("stdout.log"),
            Lifetime::Owned,
        )?;
        Ok(Self {
            http: layout.http,
            https: layout.https,
            layout,
            process,
        })
    }

    async fn wait_serving(&self, host: &str) -> Result<()> {
        let port = self.http;
        wait::until(
            "nginx serving",
            T,
            Duration::from_millis(20),
            || async move {
                match probe(port, host).await {
                    Ok((200, b)) if b == host => Ok(()),
                    Ok((s, b)) => Err(format!("{s} {b}")),
                    Err(e) => Err(e),
                }
            },
        )
        .await
        .with_context(|| crate::process::tail(&self.layout.dir.join("error.log"), 20))?;
        Ok(())
    }

    /// Rewrites the configuration with `bulk` routes plus `host` and reloads; ms until
    /// `host` is served.
    async fn propagation(&self, bulk: usize, host: &str) -> Result<f64> {
        // Load the bulk routes first (untimed), so only the new route's reload is measured.
        std::fs::write(self.layout.conf_path(), self.layout.config(bulk, &[]))?;
        self.reload()?;
        if bulk > 0 {
            self.wait_serving(&bulk_host(bulk - 1)).await?;
        }
        let started = Instant::now();
        std::fs::write(self.layout.conf_path(), self.layout.config(bulk, &[host]))?;
        self.reload()?;
        until_served(self.http, host, started).await
    }

    fn reload(&self) -> Result<()> {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.process.pid())?)
            .context("nginx pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::HUP)?;
        Ok(())
    }

    /// The master and its workers.
    fn pids(&self) -> Vec<u32> {
        let master = self.process.pid();
        std::iter::once(master)
            .chain(procstat::children(master))
            .collect()
    }

    /// Resident memory of the master and its workers, KiB.
    fn rss_kib(&self) -> u64 {
        self.pids().into_iter().filter_map(rss_kib).sum()
    }
}

/// ferrokube's controller against its own control plane, with the benchmark route.
struct Ferrokube {
    cp: ControlPlane,
    process: Process,
    client: kube::Client,
    http: u16,
    https: u16,
}

impl Ferrokube {
    async fn start(
        cfg: &Config,
        backend: SocketAddr,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self> {
        let cp = ControlPlane::start().await?;
        let kubectl = cp.kubectl()?;
        kubectl.ok(["create", "namespace", NS]).await?;
        let dir = tempfile::tempdir()?;
        let (cf, kf) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cf, cert_pem)?;
        std::fs::write(&kf, key_pem)?;
        kubectl
            .ok([
                "create",
                "secret",
                "tls",
                "default-tls",
                "-n",
                NS,
                &format!("--cert={}", cf.display()),
                &format!("--key={}", kf.display()),
            ])
            .await?;
        let manifests = [
            json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                "metadata": {"name": "ferrokube"},
                "spec": {"controller": "ferrokube.io/ingress"},
            }),
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "echo", "namespace": NS},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": backend.port()}]},
            }),
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "echo-1", "namespace": NS,
                    "labels": {"kubernetes.io/service-name": "echo"}},
                "addressType": if backend.is_ipv4() { "IPv4" } else { "IPv6" },
                "ports": [{"name": "http", "port": backend.port(), "protocol": "TCP"}],
                "endpoints": [{"addresses": [backend.ip().to_string()], "conditions": {"ready": true}}],
            }),
            ingress("bench", HOST),
        ];
        for m in manifests {
            kubectl.apply(&m.to_string()).await?;
        }
        let free = crate::controlplane::free_port;
        let (http, https, health) = (free()?, free()?, free()?);
        let args = [
            "--bind-address=127.0.0.1".to_string(),
            format!("--http-port={http}"),
            format!("--https-port={https}"),
            "--healthz-host=127.0.0.1".to_string(),
            format!("--healthz-port={health}"),
            format!("--default-ssl-certificate={NS}/default-tls"),
            // Status writes are Ingress updates too; the propagation figure is about routes.
            "--update-status=false".to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process =
            cp.spawn_component("ferrokube-ingress-controller", &cfg.ferrokube_bin, &args)?;
        let client = cp.client().await?;
        let me = Self {
            cp,
            process,
            client,
            http,
            https,
        };
        me.wait_serving(HOST).await?;
        Ok(me)
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    async fn wait_serving(&self, host: &str) -> Result<()> {
        let port = self.http;
        wait::until(
            "ferrokube serving",
            T,
            Duration::from_millis(20),
            || async move {
                match probe(port, host).await {
                    Ok((200, b)) if b == host => Ok(()),
                    Ok((s, b)) => Err(format!("{s} {b}")),
                    Err(e) => Err(e),
                }
            },
        )
        .await
        .with_context(|| self.cp.logs(20))?;
        Ok(())
    }

    /// Creates the bulk Ingresses `from..to`, 32 requests in flight.
    async fn bulk_create(&self, from: usize, to: usize) -> Result<()> {
        let api: Api<Ingress> = Api::namespaced(self.client.clone(), NS);
        futures::stream::iter(from..to)
            .map(|i| {
                let api = api.clone();
                async move {
                    let ing: Ingress =
                        serde_json::from_value(ingress(&format!("h{i}"), &bulk_host(i)))?;
                    api.create(&PostParams::default(), &ing).await?;
                    Ok::<_, anyhow::Error>(())
                }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Creates one Ingress for `host`: ms until it is served, and ms the create call took.
    async fn propagation(&self, host: &str) -> Result<(f64, f64)> {
        let api: Api<Ingress> = Api::namespaced(self.client.clone(), NS);
        let name = host.replace('.', "-");
        let ing: Ingress = serde_json::from_value(ingress(&name, host))?;
        let started = Instant::now();
        api.create(&PostParams::default(), &ing).await?;
        let create = started.elapsed().as_secs_f64() * 1000.0;
        Ok((until_served(self.http, host, started).await?, create))
    }
}

/// An Ingress of our class: `host` `/` to the echo Service.
fn ingress(name: &str, host: &str) -> serde_json::Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "ingressClassName": "ferrokube",
            "rules": [{"host": host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "echo", "port": {"name": "http"}}},
            }]}}],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 10s test @ http://127.0.0.1:1/\n  2 threads and 50 connections\n\
            \x20 Latency Distribution\n     50%  635.00us\n     75%    1.20ms\n     90%    2.00ms\n     99%    3.10ms\n\
            \x20 Socket errors: connect 0, read 2, write 0, timeout 1\n\
            \x20 757654 requests in 10.09s, 91.20MB read\n\
            \x20 Non-2xx or 3xx responses: 4\nRequests/sec:  75123.45\nTransfer/sec:      9.10MB\n";
        let r = parse_wrk(out).expect("parse");
        assert!((r.rps - 75123.45).abs() < 1e-6);
        assert!((r.requests - 757_654.0).abs() < 1e-6);
        assert!((r.p50_ms - 0.635).abs() < 1e-9);
        assert!((r.p99_ms - 3.1).abs() < 1e-9);
        assert_eq!(r.errors, 7);
        assert!(parse_wrk("nothing").is_err());
    }
}
