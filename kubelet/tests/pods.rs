//! Pods on our kubelet against the real apiserver, runc, CNI and a local registry: a web
//! server that answers on its pod IP, a crash loop, a missing image, a hostile layer, a
//! completed pod with CRI logs, volumes and env, and deletion finished through the API.

mod common;

use std::time::Duration;

use ferrokube_tests::ControlPlane;
use ferrokube_tests::images::ImageBuilder;
use ferrokube_tests::registry::Registry;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

const NODE: &str = "node-pods";
const NS: &str = "default";

fn pod_manifest(name: &str, spec: serde_json::Value) -> String {
    let mut spec = spec;
    spec["nodeName"] = serde_json::json!(NODE);
    spec["terminationGracePeriodSeconds"] = serde_json::json!(5);
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    })
    .to_string()
}

fn running_ready_ip(p: &Pod) -> Result<String, String> {
    let st = p.status.as_ref().ok_or("no status")?;
    let ready = st
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    match (st.phase.as_deref(), ready, &st.pod_ip) {
        (Some("Running"), true, Some(ip)) => Ok(ip.clone()),
        other => Err(format!("phase/ready/ip {other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_crash_fail_to_pull_and_delete() -> anyhow::Result<()> {
    // A layer that tries to write outside the root file system.
    let mut evil = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.as_old_mut().name[..13].copy_from_slice(b"../../escaped");
    h.set_cksum();
    evil.append(&h, &b"x"[..])?;

    // A registry that wants credentials, for imagePullSecrets.
    let private = Registry::start_with_basic_auth("puller", "s3cret").await?;
    ImageBuilder::busybox()?
        .push_with_auth(
            &private.addr,
            "private",
            "1",
            &oci_client::secrets::RegistryAuth::Basic("puller".into(), "s3cret".into()),
        )
        .await?;

    let stack = common::stack(NS, NODE, "198.18.42.0/24")
        .image(
            "web",
            "1",
            ImageBuilder::busybox()?.file(
                "www/index.html",
                b"hello from ferrokube\n".to_vec(),
                0o644,
            ),
        )
        .image(
            "evil",
            "1",
            ImageBuilder::busybox()?.raw_layer(evil.into_inner()?),
        )
        .start()
        .await?;
    let (cp, reg) = (&stack.cp, &stack.registry.addr);
    let kubectl = cp.kubectl()?;
    let mut result = run_scenarios(cp, &kubectl, reg, &stack.kubelet).await;
    if result.is_ok() {
        result = pull_secrets(cp, &kubectl, &private.addr).await;
    }
    stack.finish(result).await
}

async fn run_scenarios(
    cp: &ControlPlane,
    kubectl: &ferrokube_tests::Kubectl,
    reg: &str,
    kubelet: &common::Kubelet,
) -> anyhow::Result<()> {
    let t = Duration::from_secs(60);
    kubectl
        .ok([
            "create",
            "configmap",
            "web-config",
            "-n",
            NS,
            "--from-literal=greeting=hi",
        ])
        .await?;
    kubectl
        .ok([
            "create",
            "secret",
            "generic",
            "web-secret",
            "-n",
            NS,
            "--from-literal=token=t0k",
        ])
        .await?;
    kubectl
        .apply(&pod_manifest(
            "web",
            serde_json::json!({
                "containers": [{
                    "name": "httpd",
                    "image": format!("{reg}/web:1"),
                    "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "web-config", "key": "greeting"}}},
                        {"name": "MSG", "value": "$(GREETING) from $(POD_NAME)"},
                        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "web-secret", "key": "token"}}},
                    ],
                    "envFrom": [{"configMapRef": {"name": "web-config"}, "prefix": "CFG_"}],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                    "volumeMounts": [
                        {"name": "cfg", "mountPath": "/config"},
                        {"name": "scratch", "mountPath": "/scratch"},
                    ],
                    "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
                }],
                "volumes": [
                    {"name": "cfg", "configMap": {"name": "web-config"}},
                    {"name": "scratch", "emptyDir": {}},
                ],
            }),
        ))
        .await?;
    let began = std::time::Instant::now();
    let ip = common::pod_until(cp, NS, "web", "web Running and Ready", t, running_ready_ip).await?;
    eprintln!("web Ready with IP {ip} after {:?}", began.elapsed());
    assert!(ip.starts_with("198.18.42."), "{ip}");
    let (status, body) = common::http_get_until(&format!("{ip}:8080"), "/index.html").await?;
    assert_eq!((status, body.as_str()), (200, "hello from ferrokube\n"));

    // env with fieldRef, configMapKeyRef and $(VAR) expansion; the configMap volume; the
    // service account token volume.
    let pod_dir = kubelet.root.join("pods");
    let uid: String = Api::<Pod>::namespaced(cp.client().await?, NS)
        .get("web")
        .await?
        .metadata
        .uid
        .unwrap_or_default();
    let bundle = pod_dir.join(&uid).join("containers/httpd/0");
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json"))?)?;
    let env: Vec<String> = serde_json::from_value(spec["process"]["env"].clone())?;
    for want in ["MSG=hi from web", "TOKEN=t0k", "CFG_greeting=hi"] {
        assert!(env.contains(&want.to_string()), "{want} not in {env:?}");
    }
    assert_eq!(
        spec["linux"]["resources"]["memory"]["limit"],
        64 * 1024 * 1024
    );
    let cfg_vol = pod_dir
        .join(&uid)
        .join("volumes/kubernetes.io~configmap/cfg");
    assert_eq!(std::fs::read_to_string(cfg_vol.join("greeting"))?, "hi");
    let mounts = spec["mounts"].as_array().cloned().unwrap_or_default();
    assert!(
        mounts
            .iter()
            .any(|m| m["destination"] == "/config" && m["source"] == serde_json::json!(cfg_vol))
    );
    let token_vol = std::fs::read_dir(pod_dir.join(&uid).join("volumes/kubernetes.io~projected"))?
        .filter_map(Result::ok)
        .next()
        .map(|e| e.path());
    if let Some(v) = token_vol {
        assert!(
            std::fs::read_to_string(v.join("token"))?.split('.').count() == 3,
            "a JWT"
        );
        assert!(std::fs::read_to_string(v.join("ca.crt"))?.contains("BEGIN CERTIFICATE"));
    }

    // A ConfigMap change reaches the volume in place (the kubelet runs with
    // --sync-frequency=2s), through the atomic ..data swap.
    kubectl
        .ok([
            "patch",
            "configmap",
            "web-config",
            "-n",
            NS,
            "--type=merge",
            "-p",
            r#"{"data":{"greeting":"changed"}}"#,
        ])
        .await?;
    ferrokube_tests::wait::until(
        "configMap volume updated",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let path = cfg_vol.join("greeting");
            async move {
                match std::fs::read_to_string(&path) {
                    Ok(t) if t == "changed" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await?;

    // A crashing container goes into CrashLoopBackOff with its exit code as lastState.
    kubectl
        .apply(&pod_manifest(
            "crash",
            serde_json::json!({"containers": [{"name": "c", "image": format!("{reg}/web:1"), "command": ["sh", "-c", "echo dying; exit 3"]}]}),
        ))
        .await?;
    common::pod_until(cp, NS, "crash", "crash in CrashLoopBackOff", t, |p| {
        let cs = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .ok_or("no status")?;
        let last = cs
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .map(|t| (t.exit_code, t.reason.clone()));
        match (common::waiting_reason(p).as_deref(), cs.restart_count, last) {
            (Some("CrashLoopBackOff"), n, Some((3, Some(r)))) if n >= 1 && r == "Error" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;

    // An image name that does not parse: InvalidImageName, and no pull is tried.
    kubectl
        .apply(&pod_manifest(
            "badname",
            serde_json::json!({"containers": [{"name": "c", "image": format!("{reg}/Web:1")}]}),
        ))
        .await?;
    let message = common::pod_until(cp, NS, "badname", "InvalidImageName", t, |p| {
        let w = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.waiting.clone())
            .ok_or("not waiting")?;
        match w.reason.as_deref() {
            Some("InvalidImageName") => Ok(w.message.unwrap_or_default()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    anyhow::ensure!(
        message.starts_with(&format!(
            "Failed to apply default image tag \"{reg}/Web:1\": couldn't parse image name"
        )) && message.contains("invalid reference format"),
        "{message}"
    );

    // A missing image: ErrImagePull, then ImagePullBackOff.
    kubectl
        .apply(&pod_manifest(
            "missing",
            serde_json::json!({"containers": [{"name": "c", "image": format!("{reg}/nope:1")}]}),
        ))
        .await?;
    common::pod_until(
        cp,
        NS,
        "missing",
        "ErrImagePull",
        t,
        |p| match common::waiting_reason(p).as_deref() {
            Some("ErrImagePull" | "ImagePullBackOff") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await?;
    common::pod_until(
        cp,
        NS,
        "missing",
        "ImagePullBackOff",
        t,
        |p| match common::waiting_reason(p).as_deref() {
            Some("ImagePullBackOff") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await?;

    // A hostile layer is refused and nothing lands outside the layer store.
    kubectl
        .apply(&pod_manifest(
            "evil",
            serde_json::json!({"containers": [{"name": "c", "image": format!("{reg}/evil:1")}]}),
        ))
        .await?;
    let msg = common::pod_until(cp, NS, "evil", "evil image refused", t, |p| {
        let st = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .ok_or("no status")?;
        let w = st
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .ok_or("not waiting")?;
        match w.reason.as_deref() {
            Some("ErrImagePull" | "ImagePullBackOff") => Ok(w.message.clone().unwrap_or_default()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    assert!(msg.contains("escapes"), "{msg}");
    assert!(
        !kubelet.root.join("images/escaped").exists() && !kubelet.root.join("escaped").exists()
    );

    // A pod that completes: Succeeded, reason Completed, output in a CRI log file.
    kubectl
        .apply(&pod_manifest(
            "once",
            serde_json::json!({"restartPolicy": "Never", "containers": [{"name": "c", "image": format!("{reg}/web:1"), "command": ["sh", "-c", "echo hello-log"]}]}),
        ))
        .await?;
    common::pod_until(cp, NS, "once", "once Succeeded", t, |p| {
        let phase = p.status.as_ref().and_then(|s| s.phase.clone());
        let reason = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.reason.clone());
        match (phase.as_deref(), reason.as_deref()) {
            (Some("Succeeded"), Some("Completed")) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let once_uid = Api::<Pod>::namespaced(cp.client().await?, NS)
        .get("once")
        .await?
        .metadata
        .uid
        .unwrap_or_default();
    let log = std::fs::read_to_string(kubelet.logs.join(format!("{NS}_once_{once_uid}/c/0.log")))?;
    assert!(
        log.lines().any(|l| l.ends_with(" stdout F hello-log")),
        "{log}"
    );

    // A container over its memory limit is OOM-killed and says so.
    kubectl
        .apply(&pod_manifest(
            "oom",
            serde_json::json!({"restartPolicy": "Never", "containers": [{
                "name": "c", "image": format!("{reg}/web:1"),
                "command": ["sh", "-c", "head -c 200000000 /dev/zero | tail"],
                "resources": {"limits": {"memory": "20Mi"}},
            }]}),
        ))
        .await?;
    common::pod_until(cp, NS, "oom", "oom OOMKilled", t, |p| {
        let t = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.clone())
            .ok_or("not terminated")?;
        match (t.reason.as_deref(), t.exit_code) {
            (Some("OOMKilled"), 137) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;

    // A missing ConfigMap behind an env var: CreateContainerConfigError.
    kubectl
        .apply(&pod_manifest(
            "badref",
            serde_json::json!({"containers": [{
                "name": "c", "image": format!("{reg}/web:1"), "command": ["sleep", "3600"],
                "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}],
            }]}),
        ))
        .await?;
    // And a Secret without the key asked for. Each says which object (and key) is missing,
    // in upstream's words.
    kubectl
        .apply(&pod_manifest(
            "badkey",
            serde_json::json!({"containers": [{
                "name": "c", "image": format!("{reg}/web:1"), "command": ["sleep", "3600"],
                "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "web-secret", "key": "nope"}}}],
            }]}),
        ))
        .await?;
    for (pod, message) in [
        ("badref", "configmap \"absent\" not found".to_string()),
        (
            "badkey",
            format!("couldn't find key nope in Secret {NS}/web-secret"),
        ),
    ] {
        common::pod_until(cp, NS, pod, "CreateContainerConfigError", t, |p| {
            let waiting = p.status.as_ref().and_then(|s| {
                s.container_statuses
                    .as_ref()?
                    .first()?
                    .state
                    .clone()?
                    .waiting
            });
            match waiting.map(|w| (w.reason, w.message)) {
                Some((Some(r), Some(m))) if r == "CreateContainerConfigError" && m == message => {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await?;
    }

    // The kubelet's events on the pod, with upstream reasons.
    let events = kubectl
        .ok([
            "get",
            "events",
            "-n",
            NS,
            "--field-selector",
            "involvedObject.name=web",
            "-o",
            "jsonpath={.items[*].reason}",
        ])
        .await?;
    for reason in ["Pulling", "Pulled", "Created", "Started"] {
        assert!(
            events.split_whitespace().any(|r| r == reason),
            "{reason} missing from {events}"
        );
    }

    // Admission: a pod that cannot fit into allocatable is failed with OutOfcpu.
    kubectl
        .apply(&pod_manifest(
            "huge",
            serde_json::json!({"containers": [{"name": "c", "image": format!("{reg}/web:1"), "resources": {"requests": {"cpu": "1000"}}}]}),
        ))
        .await?;
    common::pod_until(cp, NS, "huge", "huge rejected", t, |p| {
        let st = p.status.as_ref().ok_or("no status")?;
        match (st.phase.as_deref(), st.reason.as_deref()) {
            (Some("Failed"), Some("OutOfcpu")) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;

    // Deletion: SIGTERM, teardown, then the kubelet finishes the deletion in the API.
    let web_netns = ferrokube_kubelet::network::netns_name(&uid);
    assert!(
        std::path::Path::new("/var/run/netns")
            .join(&web_netns)
            .exists()
    );
    let began = std::time::Instant::now();
    kubectl
        .ok([
            "delete",
            "pod",
            "web",
            "-n",
            NS,
            "--wait=true",
            "--timeout=60s",
        ])
        .await?;
    eprintln!("web deleted after {:?}", began.elapsed());
    assert!(
        !std::path::Path::new("/var/run/netns")
            .join(&web_netns)
            .exists(),
        "netns left behind"
    );
    assert!(!pod_dir.join(&uid).exists(), "pod dir left behind");
    Ok(())
}

/// Pulling from a registry with basic auth: refused without a secret, pulled with one.
async fn pull_secrets(
    cp: &ControlPlane,
    kubectl: &ferrokube_tests::Kubectl,
    private: &str,
) -> anyhow::Result<()> {
    let t = Duration::from_secs(60);
    let image = format!("{private}/private:1");
    let spec = |secret: bool| {
        let mut s = serde_json::json!({"containers": [{"name": "c", "image": image, "command": ["sleep", "3600"]}]});
        if secret {
            s["imagePullSecrets"] = serde_json::json!([{"name": "regcred"}]);
        }
        s
    };
    kubectl
        .apply(&pod_manifest("nosecret", spec(false)))
        .await?;
    common::pod_until(
        cp,
        NS,
        "nosecret",
        "pull refused without credentials",
        t,
        |p| match common::waiting_reason(p).as_deref() {
            Some("ErrImagePull" | "ImagePullBackOff") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await?;
    let server = format!("--docker-server={private}");
    kubectl
        .ok([
            "create",
            "secret",
            "docker-registry",
            "regcred",
            "-n",
            NS,
            server.as_str(),
            "--docker-username=puller",
            "--docker-password=s3cret",
        ])
        .await?;
    kubectl
        .apply(&pod_manifest("withsecret", spec(true)))
        .await?;
    common::pod_until(
        cp,
        NS,
        "withsecret",
        "pulled with the secret",
        t,
        |p| match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Running") => Ok(()),
            other => Err(format!("{other:?} {:?}", common::waiting_reason(p))),
        },
    )
    .await?;
    Ok(())
}
