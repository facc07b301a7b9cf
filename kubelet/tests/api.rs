//! The kubelet API (port 10250) through the real stack: stock `kubectl logs` and
//! `kubectl exec` proxied by a real kube-apiserver to our kubelet, and direct requests
//! showing authentication (client certs, TokenReview) and authorization (SubjectAccessReview).

mod common;

use std::time::{Duration, Instant};

use ferrokube_tests::ControlPlane;
use ferrokube_tests::images::ImageBuilder;
use k8s_openapi::api::core::v1::Pod;

const NODE: &str = "node-api";
const NS: &str = "default";

fn pod_manifest(name: &str, spec: serde_json::Value) -> String {
    pod_on(NODE, name, spec)
}

fn pod_on(node: &str, name: &str, spec: serde_json::Value) -> String {
    let mut spec = spec;
    spec["nodeName"] = serde_json::json!(node);
    spec["terminationGracePeriodSeconds"] = serde_json::json!(2);
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    })
    .to_string()
}

fn running(p: &Pod) -> Result<(), String> {
    let st = p.status.as_ref().ok_or("no status")?;
    let started = st
        .container_statuses
        .iter()
        .flatten()
        .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
    match (st.phase.as_deref(), started) {
        (Some("Running"), true) => Ok(()),
        other => Err(format!("phase/running {other:?}")),
    }
}

/// Whether `lines` are talker's output: stdout in order and the stderr line once. The shim
/// reads the two pipes concurrently, so (as with containerd) lines of different streams
/// written at nearly the same time may land in the log file in either order.
fn talker_lines<'a>(lines: impl Iterator<Item = &'a str>) -> bool {
    let lines: Vec<&str> = lines.collect();
    let stdout: Vec<&str> = lines.iter().copied().filter(|l| *l != "err-line").collect();
    lines.len() == 4 && stdout == ["line-1", "line-2", "line-3"]
}

/// A direct HTTPS request to the kubelet API with curl: (status, body).
async fn curl(
    port: u16,
    path: &str,
    cert: Option<&ferrokube_tests::pki::CertPair>,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sk", "--max-time", "20", "-w", "\n%{http_code}"]);
    if let Some(c) = cert {
        cmd.arg("--cert").arg(&c.cert_path);
        cmd.arg("--key").arg(&c.key_path);
    }
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    cmd.arg(format!("https://127.0.0.1:{port}{path}"));
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await??;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse()?, body.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_and_exec_through_the_apiserver() -> anyhow::Result<()> {
    let stack = common::stack(NS, NODE, "198.18.43.0/24")
        .image("box", "1", ImageBuilder::busybox()?)
        .start()
        .await?;
    let kubectl = stack.cp.kubectl()?;
    let result = scenarios(&stack.cp, &kubectl, &stack.registry.addr, &stack.kubelet).await;
    stack.finish(result).await
}

async fn scenarios(
    cp: &ControlPlane,
    kubectl: &ferrokube_tests::Kubectl,
    reg: &str,
    kubelet: &common::Kubelet,
) -> anyhow::Result<()> {
    let t = Duration::from_secs(90);
    // The node advertises this kubelet's own API port, which the apiserver dials.
    let want = kubelet.api_port.to_string();
    ferrokube_tests::wait::until(
        "the node advertising the kubelet's port",
        t,
        Duration::from_millis(200),
        || {
            let (kubectl, want) = (kubectl.clone(), want.clone());
            async move {
                let port = kubectl
                    .ok([
                        "get",
                        "node",
                        NODE,
                        "-o",
                        "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port} {.status.declaredFeatures} {.status.conditions[*].type}",
                    ])
                    .await
                    .map_err(|e| e.to_string())?;
                if port.split(' ').next() == Some(want.as_str()) {
                    Ok(())
                } else {
                    Err(format!("node advertises port {port:?}"))
                }
            }
        },
    )
    .await?;
    // (nodes/proxy through the apiserver refuses loopback node addresses, "address not
    // allowed", so /healthz is checked directly below; logs and exec are not restricted.)
    kubectl
        .apply(&pod_manifest(
            "talker",
            serde_json::json!({
                "restartPolicy": "Never",
                "containers": [{
                    "name": "main",
                    "image": format!("{reg}/box:1"),
                    "command": ["sh", "-c", "echo line-1; echo err-line >&2; echo line-2; sleep 5; echo line-3"],
                }],
            }),
        ))
        .await?;
    kubectl
        .apply(&pod_manifest(
            "shell",
            serde_json::json!({
                "containers": [{
                    "name": "main",
                    "image": format!("{reg}/box:1"),
                    "command": ["sleep", "3600"],
                }],
            }),
        ))
        .await?;
    kubectl
        .apply(&pod_manifest(
            "crasher",
            serde_json::json!({
                "restartPolicy": "Always",
                "volumes": [{"name": "state", "emptyDir": {}}],
                "containers": [{
                    "name": "main",
                    "image": format!("{reg}/box:1"),
                    "command": ["sh", "-c", "n=$(cat /state/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /state/n; echo attempt-$n; sleep 1; exit 1"],
                    "volumeMounts": [{"name": "state", "mountPath": "/state"}],
                }],
            }),
        ))
        .await?;

    kubectl
        .apply(&pod_manifest(
            "ticker",
            serde_json::json!({
                "containers": [{
                    "name": "main",
                    "image": format!("{reg}/box:1"),
                    "command": ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.3; done"],
                }],
            }),
        ))
        .await?;

    // -f while the container runs: every line, stdout and stderr in order, and kubectl
    // returns by itself once the container exits.
    common::pod_until(cp, NS, "talker", "talker running", t, running).await?;
    let began = Instant::now();
    let followed = kubectl
        .clone()
        .with_timeout(Duration::from_secs(30))
        .ok(["logs", "-f", "talker"])
        .await?;
    anyhow::ensure!(talker_lines(followed.lines()), "logs -f: {followed:?}");
    eprintln!("logs -f returned {:?} after starting", began.elapsed());
    // -f on a container that keeps writing: lines arrive live, from the last one on with
    // --tail=1, until the client goes away.
    common::pod_until(cp, NS, "ticker", "ticker running", t, running).await?;
    let mut follower = tokio::process::Command::new(ferrokube_tests::upstream::binary("kubectl")?)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(["logs", "-f", "--tail=1", "ticker"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = follower
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut ticks = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while ticks.len() < 4 {
            match lines.next_line().await? {
                Some(l) => ticks.push(l),
                None => break,
            }
        }
        anyhow::Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("logs -f ticker: only {ticks:?} within 30s"))??;
    follower.kill().await?;
    let numbers: Vec<u32> = ticks
        .iter()
        .filter_map(|l| l.strip_prefix("tick-").and_then(|n| n.parse().ok()))
        .collect();
    anyhow::ensure!(
        numbers.len() == 4 && numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "logs -f ticker: {ticks:?}"
    );

    // attach: the main process's output from now on, live.
    let mut attached = tokio::process::Command::new(ferrokube_tests::upstream::binary("kubectl")?)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(["attach", "ticker"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = attached
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while seen
            .iter()
            .filter(|l: &&String| l.starts_with("tick-"))
            .count()
            < 2
        {
            match lines.next_line().await? {
                Some(l) => seen.push(l),
                None => break,
            }
        }
        anyhow::Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("attach ticker: only {seen:?} within 30s"))??;
    attached.kill().await?;
    anyhow::ensure!(
        seen.iter().filter(|l| l.starts_with("tick-")).count() == 2,
        "attach ticker: {seen:?}"
    );

    let tail = kubectl.ok(["logs", "talker", "--tail=1"]).await?;
    anyhow::ensure!(tail == "line-3\n", "--tail=1: {tail:?}");
    let stamped = kubectl.ok(["logs", "talker", "--timestamps"]).await?;
    let mut texts = Vec::new();
    for l in stamped.lines() {
        let (ts, text) = l.split_once(' ').unwrap_or_default();
        anyhow::ensure!(
            chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
            "--timestamps line {l:?}"
        );
        texts.push(text);
    }
    anyhow::ensure!(talker_lines(texts.into_iter()), "--timestamps: {stamped:?}");
    let limited = kubectl.ok(["logs", "talker", "--limit-bytes=3"]).await?;
    anyhow::ensure!(
        limited == "lin" || limited == "err",
        "--limit-bytes=3: {limited:?}"
    );
    let recent = kubectl.ok(["logs", "talker", "--since=1h"]).await?;
    anyhow::ensure!(recent.lines().count() == 4, "--since=1h: {recent:?}");

    // Bad inputs get clear errors.
    let out = kubectl.run(["logs", "talker", "--previous"], None).await?;
    anyhow::ensure!(
        !out.success()
            && out
                .stderr
                .contains(r#"previous terminated container "main" in pod "talker" not found"#),
        "--previous without a restart: {out:?}"
    );
    let out = kubectl.run(["logs", "talker", "-c", "nope"], None).await?;
    anyhow::ensure!(
        !out.success() && out.stderr.contains("nope"),
        "unknown container: {out:?}"
    );

    // --previous after a restart: the instance before the current one.
    common::pod_until(cp, NS, "crasher", "crasher restarted", t, |p| {
        let restarts = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .map_or(0, |c| c.restart_count);
        if restarts >= 1 {
            Ok(())
        } else {
            Err(format!("restarts {restarts}"))
        }
    })
    .await?;
    let previous = kubectl.ok(["logs", "crasher", "--previous"]).await?;
    let current = kubectl.ok(["logs", "crasher"]).await?;
    let n = |s: &str| {
        s.trim()
            .strip_prefix("attempt-")
            .and_then(|n| n.parse::<u32>().ok())
    };
    anyhow::ensure!(
        matches!((n(&previous), n(&current)), (Some(p), Some(c)) if c == p + 1),
        "--previous {previous:?} vs current {current:?}"
    );

    // exec: output, exit code, stdin, stderr.
    common::pod_until(cp, NS, "shell", "shell running", t, running).await?;
    exec_basics(cp, kubectl, "WebSocket").await?;
    let out = kubectl
        .run(["exec", "shell", "--", "sh", "-c", "echo to-err >&2"], None)
        .await?;
    anyhow::ensure!(
        out.success() && out.stderr.contains("to-err") && out.stdout.is_empty(),
        "exec stderr: {out:?}"
    );
    let out = kubectl
        .run(["exec", "shell", "-c", "nope", "--", "true"], None)
        .await?;
    anyhow::ensure!(
        !out.success() && out.stderr.contains("nope"),
        "exec unknown container: {out:?}"
    );

    // Direct access: no credentials → 401; a certificate from the cluster CA for a user
    // without nodes/proxy → 403 with upstream's message; a granted user → 200.
    let port = kubelet.api_port;
    // Plain HTTP on the TLS port fails the handshake: the connection is closed without an
    // answer, and the server goes on serving.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        plain
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        // A reset instead of a clean close is a close too.
        let _ = tokio::time::timeout(Duration::from_secs(20), plain.read_to_end(&mut buf))
            .await
            .map_err(|_| anyhow::anyhow!("a failed handshake left the connection open"))?;
        anyhow::ensure!(
            !String::from_utf8_lossy(&buf).contains("HTTP/1.1"),
            "plain HTTP was answered on the TLS port: {:?}",
            String::from_utf8_lossy(&buf)
        );
    }
    let (code, body) = curl(port, "/healthz", None, None).await?;
    anyhow::ensure!(
        code == 401 && body == "Unauthorized",
        "anonymous: {code} {body:?}"
    );
    let nobody = cp
        .pki
        .ca
        .issue_client(&cp.pki.dir, "nobody", "nobody", &[])?;
    let (code, body) = curl(port, "/healthz", Some(&nobody), None).await?;
    anyhow::ensure!(
        code == 403
            && body
                == "Forbidden (user=nobody, verb=get, resource=nodes, subresource(s)=[healthz proxy])\n",
        "nobody: {code} {body:?}"
    );
    let token = kubectl.ok(["create", "token", "default", "-n", NS]).await?;
    let (code, body) = curl(port, "/healthz", None, Some(token.trim())).await?;
    anyhow::ensure!(
        code == 403 && body.contains("user=system:serviceaccount:default:default"),
        "service account token: {code} {body:?}"
    );
    let (code, _) = curl(port, "/healthz", None, Some("not-a-token")).await?;
    anyhow::ensure!(code == 401, "bad token: {code}");
    kubectl
        .ok([
            "create",
            "clusterrole",
            "node-proxy",
            "--verb=get",
            "--resource=nodes/proxy",
        ])
        .await?;
    kubectl
        .ok([
            "create",
            "clusterrolebinding",
            "viewer-node-proxy",
            "--clusterrole=node-proxy",
            "--user=viewer",
        ])
        .await?;
    // A denial is cached (30 s by default, as upstream): granting nobody now does not
    // change the answer at once.
    kubectl
        .ok([
            "create",
            "clusterrolebinding",
            "nobody-node-proxy",
            "--clusterrole=node-proxy",
            "--user=nobody",
        ])
        .await?;
    let (code, _) = curl(port, "/healthz", Some(&nobody), None).await?;
    anyhow::ensure!(
        code == 403,
        "nobody right after the grant (cached denial): {code}"
    );
    let viewer = cp
        .pki
        .ca
        .issue_client(&cp.pki.dir, "viewer", "viewer", &[])?;
    let (code, body) = curl(
        port,
        &format!("/containerLogs/{NS}/talker/main?tailLines=1"),
        Some(&viewer),
        None,
    )
    .await?;
    anyhow::ensure!(code == 200 && body == "line-3\n", "viewer: {code} {body:?}");
    let (code, body) = curl(port, "/healthz", Some(&viewer), None).await?;
    anyhow::ensure!(
        code == 200 && body == "ok",
        "viewer /healthz: {code} {body:?}"
    );
    let log = std::fs::read_to_string(cp.log_dir().join(format!("kubelet-{NODE}.log")))?;
    anyhow::ensure!(
        log.contains("over WebSocket") && !log.contains("over SPDY"),
        "the kubelet did not serve these execs over WebSocket"
    );
    let (code, body) = curl(
        port,
        &format!("/containerLogs/{NS}/ghost/main"),
        Some(&viewer),
        None,
    )
    .await?;
    anyhow::ensure!(
        code == 404 && body.contains(r#"pod "ghost" does not exist"#),
        "unknown pod: {code} {body:?}"
    );
    Ok(())
}

/// With the apiserver's ExtendWebSocketsToKubelet gate off it translates kubectl's
/// WebSocket into SPDY/3.1 towards the kubelet (as every apiserver before 1.36 does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_over_spdy_when_the_apiserver_translates() -> anyhow::Result<()> {
    let node = "node-spdy";
    let stack = common::stack(NS, node, "198.18.44.0/24")
        .image("box", "1", ImageBuilder::busybox()?)
        .control_plane(ferrokube_tests::controlplane::Options {
            extra_apiserver_args: vec!["--feature-gates=ExtendWebSocketsToKubelet=false".into()],
            ..Default::default()
        })
        .start()
        .await?;
    let kubectl = stack.cp.kubectl()?;
    let result = spdy_scenarios(&stack.cp, &kubectl, &stack.registry.addr, node).await;
    stack.finish(result).await
}

async fn spdy_scenarios(
    cp: &ControlPlane,
    kubectl: &ferrokube_tests::Kubectl,
    reg: &str,
    node: &str,
) -> anyhow::Result<()> {
    kubectl
        .apply(&pod_on(
            node,
            "shell",
            serde_json::json!({
                "containers": [{
                    "name": "main",
                    "image": format!("{reg}/box:1"),
                    "command": ["sleep", "3600"],
                }],
            }),
        ))
        .await?;
    common::pod_until(
        cp,
        NS,
        "shell",
        "shell running",
        Duration::from_secs(90),
        running,
    )
    .await?;
    exec_basics(cp, kubectl, "SPDY").await?;
    let log = std::fs::read_to_string(cp.log_dir().join(format!("kubelet-{node}.log")))?;
    anyhow::ensure!(
        log.contains("exec over SPDY/3.1") && !log.contains("over WebSocket"),
        "the kubelet did not serve these execs over SPDY"
    );
    Ok(())
}

/// `kubectl exec` into pod `shell` (running `sh`) as a user types it, over whichever
/// protocol the apiserver speaks to the kubelet (`proto`, for messages): the exit code and
/// both streams, stdin with `-i`, and a terminal with `-it`.
async fn exec_basics(
    cp: &ControlPlane,
    kubectl: &ferrokube_tests::Kubectl,
    proto: &str,
) -> anyhow::Result<()> {
    let began = Instant::now();
    let out = kubectl
        .run(
            [
                "exec",
                "shell",
                "--",
                "sh",
                "-c",
                "echo hi; echo oops >&2; exit 3",
            ],
            None,
        )
        .await?;
    eprintln!("kubectl exec over {proto} took {:?}", began.elapsed());
    anyhow::ensure!(
        out.code == Some(3) && out.stdout == "hi\n" && out.stderr.contains("oops"),
        "{proto} exec exit 3: {out:?}"
    );
    let out = kubectl
        .run(
            ["exec", "-i", "shell", "--", "sh", "-c", "tr a-z A-Z"],
            Some("hello stdin\n"),
        )
        .await?;
    anyhow::ensure!(
        out.success() && out.stdout == "HELLO STDIN\n",
        "{proto} exec -i: {out:?}"
    );
    // -t needs a terminal on kubectl's side too: script(1) gives it one.
    let line = format!(
        "{} --kubeconfig {} exec -it shell -- sh -c 'test -t 0 && test -t 1 && echo tty-yes; exit 5'",
        ferrokube_tests::upstream::binary("kubectl")?.display(),
        cp.kubeconfig_path().display()
    );
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await??;
    let printed = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.code() == Some(5) && printed.contains("tty-yes"),
        "{proto} exec -it: {:?} {printed:?} {:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
