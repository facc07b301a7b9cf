//! The Helm chart at `charts/ferrokube`, driven by the real helm v3 binary: `helm lint`,
//! `helm template` with the defaults and with each component turned off, values refused by
//! the chart's schema, and a real `helm install` / `helm uninstall` against a real
//! kube-apiserver with RBAC on, checked with stock kubectl.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use ferrokube_tests::{ControlPlane, Kubectl, upstream};
use serde::Deserialize;
use serde_json::{Value, json};

const RELEASE: &str = "ferrokube";
const NAMESPACE: &str = "ferrokube";

/// The three components: values key, object name suffix, binary and image name.
const COMPONENTS: [(&str, &str, &str); 3] = [
    (
        "controllerManager",
        "controller-manager",
        "ferrokube-controller-manager",
    ),
    ("scheduler", "scheduler", "ferrokube-scheduler"),
    (
        "ingressController",
        "ingress-controller",
        "ferrokube-ingress-controller",
    ),
];

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ferrokube")
}

/// A helm binary with its own config, cache and data directories, so nothing of the user's
/// helm setup (repositories, plugins) leaks in or is touched.
struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
}

struct HelmOutput {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Helm {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            bin: upstream::binary("helm")?,
            home: tempfile::tempdir()?,
        })
    }

    async fn run(&self, args: &[&str]) -> anyhow::Result<HelmOutput> {
        let home = self.home.path();
        let child = tokio::process::Command::new(&self.bin)
            .args(args)
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env_remove("KUBECONFIG")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(180), child)
            .await
            .with_context(|| format!("helm {} timed out", args.join(" ")))??;
        Ok(HelmOutput {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs helm and fails with both streams when it exits non-zero.
    async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args).await?;
        ensure!(
            out.ok,
            "helm {} failed:\n{}\n{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }

    /// `helm template` of the chart with `extra` arguments, as parsed objects.
    async fn template(&self, extra: &[&str]) -> anyhow::Result<Vec<Value>> {
        let chart = chart_dir();
        let chart = chart.to_str().context("chart path")?;
        let mut args = vec!["template", RELEASE, chart, "--namespace", NAMESPACE];
        args.extend_from_slice(extra);
        parse_manifests(&self.ok(&args).await?)
    }
}

fn parse_manifests(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).context("helm printed invalid YAML")?;
        if !v.is_null() {
            objects.push(v);
        }
    }
    Ok(objects)
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn get<'a>(objects: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    find(objects, kind, name).with_context(|| {
        let have: Vec<String> = objects
            .iter()
            .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
            .collect();
        format!("no {kind} {name} among {have:?}")
    })
}

fn app_version() -> anyhow::Result<String> {
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml"))?)?;
    ensure!(
        chart["apiVersion"] == "v2",
        "Chart.yaml apiVersion: {chart}"
    );
    chart["appVersion"]
        .as_str()
        .map(str::to_string)
        .context("Chart.yaml has no appVersion")
}

fn args_of(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The hardening every container of the chart must carry.
fn check_pod_spec(name: &str, spec: &Value, health_port: u64) -> anyhow::Result<()> {
    let pod_sc = &spec["securityContext"];
    ensure!(pod_sc["runAsNonRoot"] == true, "{name}: pod {pod_sc}");
    ensure!(
        pod_sc["seccompProfile"]["type"] == "RuntimeDefault",
        "{name}: pod {pod_sc}"
    );
    let containers = spec["containers"].as_array().context("containers")?;
    ensure!(containers.len() == 1, "{name}: {containers:?}");
    let c = &containers[0];
    let sc = &c["securityContext"];
    ensure!(sc["runAsNonRoot"] == true, "{name}: {sc}");
    ensure!(sc["readOnlyRootFilesystem"] == true, "{name}: {sc}");
    ensure!(sc["allowPrivilegeEscalation"] == false, "{name}: {sc}");
    ensure!(sc["capabilities"]["drop"] == json!(["ALL"]), "{name}: {sc}");
    ensure!(
        sc["seccompProfile"]["type"] == "RuntimeDefault",
        "{name}: {sc}"
    );
    ensure!(
        c["resources"]["requests"]["cpu"].is_string()
            && c["resources"]["limits"]["memory"].is_string(),
        "{name}: resources {}",
        c["resources"]
    );
    let ports = c["ports"].as_array().context("ports")?;
    let health = ports
        .iter()
        .find(|p| p["name"] == "health")
        .with_context(|| format!("{name}: no health port in {ports:?}"))?;
    ensure!(
        health["containerPort"] == health_port,
        "{name}: health port {health}"
    );
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        ensure!(
            get["scheme"] == "HTTP" && get["port"] == "health" && get["path"] == path,
            "{name}: {probe} {get}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_lints_and_renders() -> anyhow::Result<()> {
    let helm = Helm::new()?;
    let chart = chart_dir();
    let chart = chart.to_str().context("chart path")?;
    let lint = helm.ok(&["lint", "--strict", chart]).await?;
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

    let version = app_version()?;
    let objects = helm.template(&[]).await?;

    // controller-manager: 2 replicas electing a leader, per-controller credentials, bound to
    // upstream's roles only.
    let kcm = get(&objects, "Deployment", "ferrokube-controller-manager")?;
    assert_eq!(kcm["spec"]["replicas"], 2);
    let spec = &kcm["spec"]["template"]["spec"];
    check_pod_spec("controller-manager", spec, 10257)?;
    let c = &spec["containers"][0];
    assert_eq!(
        c["image"],
        format!("ferrokube/controller-manager:{version}")
    );
    let args = args_of(c);
    for want in [
        "--leader-elect=true",
        "--use-service-account-credentials=true",
        "--secure-port=10257",
        "--controllers=*",
    ] {
        assert!(args.contains(&want), "{want} missing from {args:?}");
    }
    assert_eq!(spec["serviceAccountName"], "ferrokube-controller-manager");
    get(&objects, "ServiceAccount", "ferrokube-controller-manager")?;
    let crb = get(
        &objects,
        "ClusterRoleBinding",
        "ferrokube-controller-manager:system:kube-controller-manager",
    )?;
    assert_eq!(crb["roleRef"]["name"], "system:kube-controller-manager");
    let locking = get(
        &objects,
        "RoleBinding",
        "ferrokube-controller-manager:leader-locking",
    )?;
    assert_eq!(locking["metadata"]["namespace"], "kube-system");
    assert_eq!(
        locking["roleRef"]["name"],
        "system::leader-locking-kube-controller-manager"
    );

    // Nothing is bound to cluster-admin, and the only ClusterRole the chart writes is the
    // ingress controller's narrow one.
    for o in &objects {
        assert_ne!(o["roleRef"]["name"], "cluster-admin", "{o}");
        if o["kind"] == "ClusterRole" {
            assert_eq!(o["metadata"]["name"], "ferrokube-ingress-controller");
        }
    }

    // scheduler: a second scheduler with its own name and its own Lease.
    let sched = get(&objects, "Deployment", "ferrokube-scheduler")?;
    let spec = &sched["spec"]["template"]["spec"];
    check_pod_spec("scheduler", spec, 10259)?;
    assert_eq!(
        spec["containers"][0]["image"],
        format!("ferrokube/scheduler:{version}")
    );
    let cm = get(&objects, "ConfigMap", "ferrokube-scheduler-config")?;
    let config: Value = serde_yaml::from_str(
        cm["data"]["config.yaml"]
            .as_str()
            .context("config.yaml missing")?,
    )?;
    assert_eq!(config["apiVersion"], "kubescheduler.config.k8s.io/v1");
    assert_eq!(config["kind"], "KubeSchedulerConfiguration");
    assert_eq!(
        config["profiles"],
        json!([{"schedulerName": "ferrokube-scheduler"}])
    );
    assert_eq!(config["leaderElection"]["leaderElect"], true);
    assert_eq!(
        config["leaderElection"]["resourceName"],
        "ferrokube-scheduler"
    );
    for role in ["system:kube-scheduler", "system:volume-scheduler"] {
        let crb = get(
            &objects,
            "ClusterRoleBinding",
            &format!("ferrokube-scheduler:{role}"),
        )?;
        assert_eq!(crb["roleRef"]["name"], role);
        assert_eq!(crb["subjects"][0]["name"], "ferrokube-scheduler");
    }
    let lease_role = get(&objects, "Role", "ferrokube-scheduler-leader-election")?;
    assert_eq!(
        lease_role["rules"][1]["resourceNames"],
        json!(["ferrokube-scheduler"])
    );

    // ingress controller: Deployment, Service, IngressClass and a ClusterRole with no
    // write access beyond Ingress status and events.
    let ic = get(&objects, "Deployment", "ferrokube-ingress-controller")?;
    let spec = &ic["spec"]["template"]["spec"];
    check_pod_spec("ingress-controller", spec, 10254)?;
    let args = args_of(&spec["containers"][0]);
    for want in [
        "--controller-class=ferrokube.io/ingress",
        "--healthz-port=10254",
        "--publish-service=ferrokube/ferrokube-ingress-controller",
    ] {
        assert!(args.contains(&want), "{want} missing from {args:?}");
    }
    let class = get(&objects, "IngressClass", "ferrokube")?;
    assert_eq!(class["spec"]["controller"], "ferrokube.io/ingress");
    let svc = get(&objects, "Service", "ferrokube-ingress-controller")?;
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
    let role = get(&objects, "ClusterRole", "ferrokube-ingress-controller")?;
    for rule in role["rules"].as_array().context("rules")? {
        let verbs: Vec<&str> = rule["verbs"]
            .as_array()
            .context("verbs")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let resources = &rule["resources"];
        let writes = verbs
            .iter()
            .any(|v| !matches!(*v, "get" | "list" | "watch"));
        if writes {
            assert!(
                *resources == json!(["ingresses/status"]) || *resources == json!(["events"]),
                "ingress controller writes {resources}"
            );
        }
        assert!(!verbs.contains(&"*"), "{rule}");
    }

    // Each component off in turn: its objects go, the others stay.
    for (key, suffix, _) in COMPONENTS {
        let flag = format!("{key}.enabled=false");
        let objects = helm.template(&["--set", &flag]).await?;
        for (_, other, _) in COMPONENTS {
            let name = format!("ferrokube-{other}");
            let present = find(&objects, "Deployment", &name).is_some()
                && find(&objects, "ServiceAccount", &name).is_some();
            assert_eq!(present, other != suffix, "{flag}: Deployment {name}");
        }
        let leftovers: Vec<String> = objects
            .iter()
            .filter(|o| o["metadata"]["labels"]["app.kubernetes.io/component"] == suffix)
            .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
            .collect();
        assert!(leftovers.is_empty(), "{flag} leaves {leftovers:?}");
        assert_eq!(
            find(&objects, "IngressClass", "ferrokube").is_some(),
            key != "ingressController"
        );
    }
    let none = helm
        .template(&[
            "--set",
            "controllerManager.enabled=false,scheduler.enabled=false,ingressController.enabled=false",
        ])
        .await?;
    assert!(none.is_empty(), "{none:?}");

    // Image overrides, and user strings land as YAML strings, never as YAML syntax.
    let tricky = "a: b\n- c # {d}";
    let objects = helm
        .template(&[
            "--set",
            "scheduler.image.repository=registry.example.com:5000/team/sched,scheduler.image.tag=v9",
            "--set-string",
            &format!("controllerManager.podAnnotations.note={tricky}"),
            "--set-string",
            &format!("controllerManager.extraArgs[0]=--x={tricky}"),
            "--set-string",
            "commonLabels.team=platform",
        ])
        .await?;
    let sched = get(&objects, "Deployment", "ferrokube-scheduler")?;
    assert_eq!(
        sched["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com:5000/team/sched:v9"
    );
    let kcm = get(&objects, "Deployment", "ferrokube-controller-manager")?;
    assert_eq!(
        kcm["spec"]["template"]["metadata"]["annotations"]["note"],
        tricky
    );
    let args = args_of(&kcm["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(args.last(), Some(&format!("--x={tricky}").as_str()));
    assert!(
        objects
            .iter()
            .all(|o| o["metadata"]["labels"]["team"] == "platform"),
        "commonLabels on every object"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_are_refused_with_a_clear_message() -> anyhow::Result<()> {
    let helm = Helm::new()?;
    let chart = chart_dir();
    let chart = chart.to_str().context("chart path")?;
    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["--set", "controllerManager.replicas=-1"],
            &["/controllerManager/replicas", "minimum"],
        ),
        (
            &["--set", "controllerManager.replicas=two"],
            &["/controllerManager/replicas", "integer"],
        ),
        (
            &["--set", "scheduler.replica=3"],
            &["/scheduler", "'replica' not allowed"],
        ),
        (
            &["--set", "scheduler.schedulerName=Not A Name"],
            &["/scheduler/schedulerName", "does not match pattern"],
        ),
        (
            &["--set", "ingressController.service.type=Magic"],
            &["/ingressController/service/type", "must be one of"],
        ),
        (
            &["--set", "controllerManager.serviceAccount.create=false"],
            &["controllerManager.serviceAccount.name is required"],
        ),
    ];
    for (args, wants) in cases {
        // The schema binds `helm lint` too; `required` only fails real rendering (lint
        // renders leniently).
        let schema = wants[0].starts_with('/');
        for cmd in ["template", "lint"] {
            if cmd == "lint" && !schema {
                continue;
            }
            let mut full = vec![cmd];
            if cmd == "template" {
                full.push(RELEASE);
            }
            full.push(chart);
            full.extend_from_slice(args);
            let out = helm.run(&full).await?;
            assert!(
                !out.ok,
                "helm {full:?} accepted bad values:\n{}",
                out.stdout
            );
            let text = format!("{}{}", out.stdout, out.stderr);
            for want in wants {
                assert!(
                    text.contains(want),
                    "helm {full:?}: {want:?} not in:\n{text}"
                );
            }
        }
    }
    Ok(())
}

/// `kubectl auth can-i` as a ServiceAccount (impersonation by the admin).
async fn can_i(kubectl: &Kubectl, account: &str, args: &[&str]) -> anyhow::Result<bool> {
    let mut full = vec!["auth", "can-i"];
    full.extend_from_slice(args);
    let user = format!("--as=system:serviceaccount:{account}");
    full.push(&user);
    let out = kubectl.run(&full, None).await?;
    match out.stdout.trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => bail!("can-i {full:?}: {other} {}", out.stderr),
    }
}

/// What each identity the chart creates may and may not do once installed.
async fn check_rbac(kubectl: &Kubectl) -> anyhow::Result<()> {
    let kcm = "ferrokube:ferrokube-controller-manager";
    let sched = "ferrokube:ferrokube-scheduler";
    let ic = "ferrokube:ferrokube-ingress-controller";
    let cases: &[(&str, &[&str], bool)] = &[
        // kcm's own identity: informers, the controllers' ServiceAccounts and tokens, its
        // Lease (ferrokube renews with a patch), and nothing that the controllers do.
        (kcm, &["list", "pods", "-A"], true),
        (kcm, &["watch", "replicasets.apps", "-A"], true),
        (
            kcm,
            &["create", "serviceaccounts", "-n", "kube-system"],
            true,
        ),
        (
            kcm,
            &[
                "create",
                "serviceaccounts",
                "--subresource=token",
                "-n",
                "kube-system",
            ],
            true,
        ),
        (
            kcm,
            &[
                "patch",
                "leases/kube-controller-manager",
                "-n",
                "kube-system",
            ],
            true,
        ),
        (
            kcm,
            &[
                "update",
                "leases/kube-controller-manager",
                "-n",
                "kube-system",
            ],
            true,
        ),
        (kcm, &["delete", "pods", "-n", "default"], false),
        (kcm, &["create", "replicasets.apps", "-n", "default"], false),
        (
            kcm,
            &["patch", "leases/kube-scheduler", "-n", "kube-system"],
            false,
        ),
        // ... while each controller's own ServiceAccount has its bootstrap role.
        (
            "kube-system:deployment-controller",
            &["create", "replicasets.apps", "-n", "default"],
            true,
        ),
        (
            "kube-system:replicaset-controller",
            &["delete", "pods", "-n", "default"],
            true,
        ),
        // The second scheduler: binds pods, renews its own Lease only.
        (
            sched,
            &["create", "pods", "--subresource=binding", "-n", "default"],
            true,
        ),
        (sched, &["list", "persistentvolumeclaims", "-A"], true),
        (sched, &["list", "csinodes.storage.k8s.io"], true),
        (
            sched,
            &["patch", "leases/ferrokube-scheduler", "-n", "kube-system"],
            true,
        ),
        (
            sched,
            &[
                "patch",
                "leases/kube-controller-manager",
                "-n",
                "kube-system",
            ],
            false,
        ),
        (sched, &["delete", "nodes"], false),
        // The ingress controller: reads what it routes, writes Ingress status and events.
        (ic, &["list", "ingresses.networking.k8s.io", "-A"], true),
        (
            ic,
            &["watch", "endpointslices.discovery.k8s.io", "-A"],
            true,
        ),
        (ic, &["list", "secrets", "-n", "default"], true),
        (
            ic,
            &[
                "patch",
                "ingresses.networking.k8s.io",
                "--subresource=status",
                "-n",
                "default",
            ],
            true,
        ),
        (
            ic,
            &["create", "events.events.k8s.io", "-n", "default"],
            true,
        ),
        (
            ic,
            &[
                "patch",
                "leases/ferrokube-ingress-controller-leader",
                "-n",
                NAMESPACE,
            ],
            true,
        ),
        (
            ic,
            &["patch", "ingresses.networking.k8s.io", "-n", "default"],
            false,
        ),
        (ic, &["list", "pods", "-A"], false),
        (ic, &["list", "configmaps", "-n", "default"], false),
        (ic, &["update", "services", "-n", "default"], false),
        (
            ic,
            &[
                "patch",
                "leases/kube-controller-manager",
                "-n",
                "kube-system",
            ],
            false,
        ),
    ];
    let mut wrong = Vec::new();
    for (account, args, want) in cases {
        if can_i(kubectl, account, args).await? != *want {
            wrong.push(format!("{account} {args:?}: want {want}"));
        }
    }
    ensure!(wrong.is_empty(), "RBAC:\n{}", wrong.join("\n"));
    Ok(())
}

/// Every Deployment's pod template, submitted as a Pod (server-side dry run) into the
/// release namespace, which enforces the `restricted` Pod Security Standard.
async fn check_pods_admitted(kubectl: &Kubectl) -> anyhow::Result<()> {
    let list: Value = serde_json::from_str(
        &kubectl
            .ok(["get", "deployments", "-n", NAMESPACE, "-o", "json"])
            .await?,
    )?;
    let items = list["items"].as_array().context("items")?;
    ensure!(items.len() == 3, "{list}");
    for d in items {
        let name = d["metadata"]["name"].as_str().context("name")?;
        let template = &d["spec"]["template"];
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": format!("{name}-dry-run"),
                "namespace": NAMESPACE,
                "labels": template["metadata"]["labels"],
            },
            "spec": template["spec"],
        });
        let out = kubectl
            .run(
                ["create", "--dry-run=server", "-o", "name", "-f", "-"],
                Some(&pod.to_string()),
            )
            .await?;
        ensure!(
            out.success() && !out.stderr.contains("PodSecurity"),
            "{name}'s pod is not admitted under restricted: {}{}",
            out.stdout,
            out.stderr
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_installs_and_uninstalls_on_a_real_apiserver() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let kubectl = cp.kubectl()?;
    let helm = Helm::new()?;
    let chart = chart_dir();
    let chart = chart.to_str().context("chart path")?;
    let kubeconfig = cp.kubeconfig_path().to_str().context("kubeconfig path")?;

    // The release namespace enforces the restricted Pod Security Standard, so the pod
    // templates are held to it (warnings on the Deployments, rejection of their Pods).
    kubectl.ok(["create", "namespace", NAMESPACE]).await?;
    kubectl
        .ok([
            "label",
            "namespace",
            NAMESPACE,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/warn=restricted",
        ])
        .await?;

    let install = [
        "install",
        RELEASE,
        chart,
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--kubeconfig",
        kubeconfig,
    ];
    let mut dry = install.to_vec();
    dry.push("--dry-run=server");
    let out = helm.ok(&dry).await?;
    assert!(out.contains("kind: Deployment"), "{out}");
    let nothing = kubectl
        .ok(["get", "deployments", "-n", NAMESPACE, "-o", "name"])
        .await?;
    assert!(nothing.trim().is_empty(), "dry run created {nothing}");

    // Bad values never reach the cluster.
    let mut bad = install.to_vec();
    bad.extend_from_slice(&["--set", "controllerManager.replicas=-1"]);
    let out = helm.run(&bad).await?;
    assert!(
        !out.ok && out.stderr.contains("/controllerManager/replicas"),
        "{}",
        out.stderr
    );

    let out = helm.run(&install).await?;
    assert!(
        out.ok,
        "helm install failed:\n{}\n{}\n{}",
        out.stdout,
        out.stderr,
        cp.logs(40)
    );
    assert!(!out.stderr.contains("PodSecurity"), "{}", out.stderr);
    let status = helm
        .ok(&[
            "status",
            RELEASE,
            "-n",
            NAMESPACE,
            "--kubeconfig",
            kubeconfig,
            "-o",
            "json",
        ])
        .await?;
    let status: Value = serde_json::from_str(&status)?;
    assert_eq!(status["info"]["status"], "deployed", "{status}");

    let names = |kind: &'static str, ns: Option<&'static str>| {
        let kubectl = kubectl.clone();
        async move {
            let mut args = vec!["get", kind, "-o", "name"];
            match ns {
                Some(ns) => args.extend_from_slice(&["-n", ns]),
                None => args.extend_from_slice(&["-l", "app.kubernetes.io/instance=ferrokube"]),
            }
            let out = kubectl.ok(&args).await?;
            anyhow::Ok(out.lines().map(str::to_string).collect::<Vec<_>>())
        }
    };
    let deployments = names("deployments", Some(NAMESPACE)).await?;
    let sas = names("serviceaccounts", Some(NAMESPACE)).await?;
    for (_, suffix, _) in COMPONENTS {
        let name = format!("ferrokube-{suffix}");
        assert!(
            deployments.contains(&format!("deployment.apps/{name}")),
            "{deployments:?}"
        );
        assert!(sas.contains(&format!("serviceaccount/{name}")), "{sas:?}");
    }
    let replicas = kubectl
        .ok([
            "get",
            "deployment",
            "ferrokube-controller-manager",
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .await?;
    assert_eq!(replicas.trim(), "2");
    let crbs = names("clusterrolebindings", None).await?;
    let want_crbs = [
        "clusterrolebinding.rbac.authorization.k8s.io/ferrokube-controller-manager:system:kube-controller-manager",
        "clusterrolebinding.rbac.authorization.k8s.io/ferrokube-scheduler:system:kube-scheduler",
        "clusterrolebinding.rbac.authorization.k8s.io/ferrokube-scheduler:system:volume-scheduler",
        "clusterrolebinding.rbac.authorization.k8s.io/ferrokube-ingress-controller",
    ];
    for want in want_crbs {
        assert!(crbs.iter().any(|c| c == want), "{want} not in {crbs:?}");
    }
    assert_eq!(crbs.len(), want_crbs.len(), "{crbs:?}");
    let class = kubectl
        .ok([
            "get",
            "ingressclass",
            "ferrokube",
            "-o",
            "jsonpath={.spec.controller}",
        ])
        .await?;
    assert_eq!(class, "ferrokube.io/ingress");
    let kube_system_roles = names("roles", Some("kube-system")).await?;
    for suffix in ["controller-manager", "scheduler"] {
        let want = format!("role.rbac.authorization.k8s.io/ferrokube-{suffix}-leader-election");
        assert!(kube_system_roles.contains(&want), "{kube_system_roles:?}");
    }
    kubectl
        .ok([
            "get",
            "service/ferrokube-ingress-controller",
            "configmap/ferrokube-scheduler-config",
            "-n",
            NAMESPACE,
        ])
        .await?;

    check_rbac(&kubectl).await?;
    check_pods_admitted(&kubectl).await?;

    helm.ok(&[
        "uninstall",
        RELEASE,
        "--namespace",
        NAMESPACE,
        "--kubeconfig",
        kubeconfig,
        "--wait",
        "--timeout",
        "60s",
    ])
    .await?;
    assert!(names("deployments", Some(NAMESPACE)).await?.is_empty());
    assert!(names("clusterrolebindings", None).await?.is_empty());
    assert!(names("clusterroles", None).await?.is_empty());
    assert!(
        names("roles", Some("kube-system"))
            .await?
            .iter()
            .all(|r| !r.contains("ferrokube")),
        "Roles left in kube-system"
    );
    assert!(
        names("rolebindings", Some("kube-system"))
            .await?
            .iter()
            .all(|r| !r.contains("ferrokube")),
        "RoleBindings left in kube-system"
    );
    let sas = names("serviceaccounts", Some(NAMESPACE)).await?;
    assert!(sas.iter().all(|s| !s.contains("ferrokube")), "{sas:?}");
    let class = kubectl
        .run(["get", "ingressclass", "ferrokube"], None)
        .await?;
    assert!(
        !class.success() && class.stderr.contains("NotFound"),
        "IngressClass survives uninstall: {class:?}"
    );
    // ... and upstream's bootstrap roles the chart bound to are untouched.
    for role in [
        "clusterrole/system:kube-controller-manager",
        "clusterrole/system:kube-scheduler",
        "clusterrole/system:volume-scheduler",
    ] {
        kubectl.ok(["get", role]).await?;
    }
    kubectl
        .ok([
            "get",
            "role",
            "system::leader-locking-kube-controller-manager",
            "-n",
            "kube-system",
        ])
        .await?;
    Ok(())
}
