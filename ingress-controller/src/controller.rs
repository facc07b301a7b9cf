//! The control plane side: shared informers for Ingresses, IngressClasses, Services and
//! EndpointSlices, one narrow watch per Secret an Ingress references (TLS certificates
//! and basic-auth users), and on every change a full compile into a new routing table and
//! certificate set, swapped in atomically.
//!
//! Compiling everything from the caches on each batch of changes keeps the table a pure
//! function of the cluster state (level-triggered): there is no incremental bookkeeping to
//! drift. Notifications that arrive while a compile runs are folded into the next one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use ferrokube_runtime::events::{self, EventType, Recorder};
use ferrokube_runtime::informer::{Informer, InformerFactory, ObjectKey, Store};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use rustls::sign::CertifiedKey;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::balancer::Upstream;
use crate::class::Selection;
use crate::routing::{AddError, Canary, PathType, Route, Table, TableBuilder, Target};
use crate::tls::{self, CertStore};
use crate::{annotations, auth};

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What is known of a Secret an Ingress references (TLS or basic-auth users).
#[derive(Clone, Debug)]
pub enum SecretState {
    /// Its watch has not listed yet.
    Pending,
    /// It does not exist.
    Missing,
    /// Its contents.
    Loaded(Arc<LoadedSecret>),
}

/// A Secret as read: its certificate parsed once, its data kept for basic-auth users
/// (parsed per Ingress, since `auth-secret-type` says how).
#[derive(Clone)]
pub struct LoadedSecret {
    /// Its certificate, or why it cannot be served.
    pub cert: Result<Arc<CertifiedKey>, tls::Error>,
    /// Its data.
    pub data: BTreeMap<String, Vec<u8>>,
}

// Secret data is never logged: only the key names are shown.
impl std::fmt::Debug for LoadedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedSecret")
            .field("cert", &self.cert.as_ref().map(|_| "..."))
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl LoadedSecret {
    /// Reads `secret`.
    pub fn new(secret: &Secret) -> Self {
        Self {
            cert: parse_secret(secret),
            data: secret
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
        }
    }
}

/// Something wrong with an Ingress, reported as an Event on it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    /// Warning, or Normal for good news.
    pub warning: bool,
    /// An upstream-style reason.
    pub reason: &'static str,
    /// The message.
    pub note: String,
}

fn warn(reason: &'static str, note: String) -> Diagnostic {
    Diagnostic {
        warning: true,
        reason,
        note,
    }
}

/// The caches compile reads.
pub struct Inputs<'a> {
    /// Our Ingresses.
    pub ingresses: &'a [Arc<Ingress>],
    /// Services by key.
    pub services: &'a dyn Fn(&str, &str) -> Option<Arc<Service>>,
    /// EndpointSlices of a Service (namespace, name).
    pub slices: &'a dyn Fn(&str, &str) -> Vec<Arc<EndpointSlice>>,
    /// TLS Secrets by key.
    pub secrets: &'a HashMap<ObjectKey, SecretState>,
    /// The default certificate.
    pub default_cert: Arc<CertifiedKey>,
    /// Upstreams of the previous table, reused when unchanged (keeps balancer state).
    pub previous: &'a HashMap<String, Arc<Upstream>>,
}

/// What compile produces.
pub struct Compiled {
    /// The routing table.
    pub table: Table,
    /// The certificates.
    pub certs: CertStore,
    /// Secrets the Ingresses reference (to watch).
    pub secrets: BTreeSet<ObjectKey>,
    /// Problems per Ingress.
    pub diagnostics: BTreeMap<ObjectKey, BTreeSet<Diagnostic>>,
    /// Upstreams by name, for the next compile.
    pub upstreams: HashMap<String, Arc<Upstream>>,
}

/// Oldest first, as upstream resolves conflicts; ties by namespace/name. Computed once per
/// Ingress (a comparator building keys would allocate on every comparison: thousands of
/// Ingresses created within one second all tie on the timestamp).
fn age_key(i: &Ingress) -> (Option<k8s_openapi::jiff::Timestamp>, ObjectKey) {
    (
        i.metadata.creation_timestamp.as_ref().map(|t| t.0),
        ObjectKey::of(i),
    )
}

/// Compiles our Ingresses into a routing table and certificate set.
///
/// This runs on every change, over every Ingress, so per-Ingress work is kept to what
/// differs between Ingresses: annotations are parsed once, and a backend Service shared by
/// many Ingresses is resolved once (see [`Backends`]).
pub fn compile(inputs: &Inputs<'_>) -> Compiled {
    // Ingresses with the same annotations (most often none) share one parsed config.
    let mut parsed: HashMap<&BTreeMap<String, String>, (Arc<annotations::Config>, Vec<_>)> =
        HashMap::new();
    let mut ingresses: Vec<_> = inputs
        .ingresses
        .iter()
        .map(|i| {
            let config = parsed
                .entry(annotations_of(i))
                .or_insert_with_key(|a| {
                    let (config, warnings) = annotations::parse(a);
                    (Arc::new(config), warnings)
                })
                .clone();
            (age_key(i), i, config)
        })
        .collect();
    drop(parsed);
    ingresses.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut builder = TableBuilder::new();
    let mut certs = CertStore::new(inputs.default_cert.clone());
    let mut secrets = BTreeSet::new();
    let mut diagnostics: BTreeMap<ObjectKey, BTreeSet<Diagnostic>> = BTreeMap::new();
    let mut backends = Backends::default();
    let mut canaries = Vec::new();

    // A host switches to regex matching for every Ingress on it as soon as one of them
    // asks for it, so the hosts are known before any route is added.
    for (_, ing, (config, _)) in &ingresses {
        for rule in ing.spec.iter().flat_map(|s| s.rules.iter().flatten()) {
            // ingress-nginx's `enforceRegexModifier`: `use-regex`, or a `rewrite-target`
            // that differs from the path (one equal to it rewrites nothing).
            let rewrites = rule.http.iter().flat_map(|h| h.paths.iter()).any(|p| {
                config
                    .rewrite_target
                    .as_deref()
                    .is_some_and(|t| Some(t) != p.path.as_deref())
            });
            if config.use_regex || rewrites {
                builder.use_regex(rule.host.as_deref());
            }
        }
    }

    for ((_, key), ing, (config, warnings)) in ingresses {
        let diags = diagnostics.entry(key.clone()).or_default();
        for w in warnings {
            let reason = match w.problem {
                annotations::Problem::Invalid(_) | annotations::Problem::FailClosed(_) => {
                    "InvalidAnnotation"
                }
                _ => "UnsupportedAnnotation",
            };
            diags.insert(warn(reason, w.to_string()));
        }
        let Some(spec) = ing.spec.as_ref() else {
            continue;
        };

        let mut tls_hosts = BTreeSet::new();
        for t in spec.tls.iter().flatten() {
            let hosts = t.hosts.clone().unwrap_or_default();
            tls_hosts.extend(hosts.iter().map(|h| h.to_ascii_lowercase()));
            let Some(secret_name) = t.secret_name.as_deref().filter(|s| !s.is_empty()) else {
                continue;
            };
            let secret = ObjectKey::new(&key.namespace, secret_name);
            secrets.insert(secret.clone());
            match inputs.secrets.get(&secret) {
                None | Some(SecretState::Pending) => {}
                Some(SecretState::Missing) => {
                    diags.insert(warn(
                        "TLSSecretNotFound",
                        format!("TLS secret {secret} not found; serving the default certificate"),
                    ));
                }
                Some(SecretState::Loaded(loaded)) => match &loaded.cert {
                    Err(e) => {
                        diags.insert(warn(
                            "InvalidTLSSecret",
                            format!("TLS secret {secret}: {e}; serving the default certificate"),
                        ));
                    }
                    Ok(ck) => {
                        for h in &hosts {
                            certs.insert(h, ck.clone());
                        }
                    }
                },
            }
        }

        let auth = config
            .auth
            .as_ref()
            .map(|a| Arc::new(auth_gate(a, &key, inputs.secrets, &mut secrets, diags)));
        let mut target = |backend: &IngressBackend, diags: &mut BTreeSet<Diagnostic>| {
            resolve_backend(inputs, &key, backend, diags, &mut backends).map(|upstream| Target {
                upstream,
                ingress: key.clone(),
                config: config.clone(),
                auth: auth.clone(),
            })
        };

        let canary = config.canary.is_some();
        if let Some(def) = &spec.default_backend {
            if canary {
                diags.insert(warn(
                    "InvalidCanary",
                    "a canary Ingress's defaultBackend is ignored".into(),
                ));
            } else if let Some(t) = target(def, diags) {
                let route = Route {
                    host: None,
                    path: "/".into(),
                    path_type: PathType::Prefix,
                    target: t,
                    tls: false,
                    canary: None,
                    pattern: None,
                };
                if let Err(c) = builder.default_backend(route) {
                    diags.insert(warn(
                        "RouteConflict",
                        format!(
                            "defaultBackend ignored: Ingress {} already sets one",
                            c.winner
                        ),
                    ));
                }
            }
        }
        for rule in spec.rules.iter().flatten() {
            let host = rule.host.clone().filter(|h| !h.is_empty());
            let tls = host
                .as_ref()
                .is_some_and(|h| tls_hosts.contains(&h.to_ascii_lowercase()));
            for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let path = p
                    .path
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or("/".into());
                let Some(path_type) = PathType::parse(&p.path_type) else {
                    diags.insert(warn(
                        "InvalidPath",
                        format!("path {path:?}: unknown pathType {:?}", p.path_type),
                    ));
                    continue;
                };
                if !path.starts_with('/') {
                    diags.insert(warn(
                        "InvalidPath",
                        format!("path {path:?} must start with /"),
                    ));
                    continue;
                }
                let Some(t) = target(&p.backend, diags) else {
                    continue;
                };
                let route = Route {
                    host: host.clone(),
                    path: path.clone(),
                    path_type,
                    target: t,
                    tls,
                    canary: None,
                    pattern: None,
                };
                if canary {
                    canaries.push((key.clone(), route));
                    continue;
                }
                match builder.add(route) {
                    Ok(()) => {}
                    Err(AddError::Conflict(c)) => {
                        diags.insert(warn(
                            "RouteConflict",
                            format!(
                                "{} {path} ({:?}) is already served by Ingress {}",
                                host.as_deref().unwrap_or("*"),
                                path_type,
                                c.winner
                            ),
                        ));
                    }
                    Err(AddError::Regex(e)) => {
                        diags.insert(warn(
                            "InvalidPath",
                            format!(
                                "{} {path}: not a valid regular expression, path skipped: {e}",
                                host.as_deref().unwrap_or("*"),
                            ),
                        ));
                    }
                }
            }
        }
    }

    for (key, route) in canaries {
        match builder.get_mut(route.host.as_deref(), &route.path, route.path_type) {
            Some(primary) => {
                if primary.canary.is_none() {
                    primary.canary = Some(Canary {
                        target: route.target,
                    });
                }
            }
            None => {
                diagnostics.entry(key).or_default().insert(warn(
                    "InvalidCanary",
                    format!(
                        "canary for {} {} has no primary Ingress with the same host and path",
                        route.host.as_deref().unwrap_or("*"),
                        route.path
                    ),
                ));
            }
        }
    }

    Compiled {
        table: builder.build(),
        certs,
        secrets,
        diagnostics,
        upstreams: backends.upstreams,
    }
}

static NO_ANNOTATIONS: BTreeMap<String, String> = BTreeMap::new();

fn annotations_of(ing: &Ingress) -> &BTreeMap<String, String> {
    ing.metadata.annotations.as_ref().unwrap_or(&NO_ANNOTATIONS)
}

/// What one compile learned about each backend (`namespace/service:port`): its upstream
/// (`None` when it cannot be served) and the problems to report on every Ingress that
/// uses it. The answer depends only on the caches, so it is worked out once per compile
/// however many Ingresses share the Service.
#[derive(Default)]
struct Backends {
    resolved: HashMap<String, (Option<Arc<Upstream>>, Vec<Diagnostic>)>,
    upstreams: HashMap<String, Arc<Upstream>>,
}

/// The gate of an Ingress with `auth-type`: its users, or 503 when they cannot be read.
/// The Secret joins the watched set either way, so fixing it takes effect.
fn auth_gate(
    config: &annotations::AuthConfig,
    ingress: &ObjectKey,
    states: &HashMap<ObjectKey, SecretState>,
    watched: &mut BTreeSet<ObjectKey>,
    diags: &mut BTreeSet<Diagnostic>,
) -> auth::Gate {
    let annotations::AuthConfig::Basic {
        secret: (ns, name),
        secret_type,
        realm,
    } = config
    else {
        return auth::Gate::Unavailable;
    };
    let secret = ObjectKey::new(ns.as_deref().unwrap_or(&ingress.namespace), name);
    watched.insert(secret.clone());
    match states.get(&secret) {
        // Not read yet: closed until it is (a moment after startup).
        None | Some(SecretState::Pending) => auth::Gate::Unavailable,
        Some(SecretState::Missing) => {
            diags.insert(warn(
                "AuthSecretNotFound",
                format!("auth secret {secret} not found; the Ingress's routes answer 503"),
            ));
            auth::Gate::Unavailable
        }
        Some(SecretState::Loaded(loaded)) => {
            match auth::Users::from_secret(&loaded.data, *secret_type) {
                Ok(users) => auth::Gate::Basic {
                    realm: realm.clone(),
                    users,
                },
                Err(e) => {
                    diags.insert(warn(
                        "InvalidAuthSecret",
                        format!("auth secret {secret}: {e}; the Ingress's routes answer 503"),
                    ));
                    auth::Gate::Unavailable
                }
            }
        }
    }
}

/// The upstream of a Service backend: the ready endpoints of its EndpointSlices for the
/// referenced port. A missing Service gives an upstream without endpoints (503), so the
/// path is still claimed and starts working when the Service appears.
fn resolve_backend(
    inputs: &Inputs<'_>,
    ingress: &ObjectKey,
    backend: &IngressBackend,
    diags: &mut BTreeSet<Diagnostic>,
    backends: &mut Backends,
) -> Option<Arc<Upstream>> {
    let Some(svc) = &backend.service else {
        diags.insert(warn(
            "InvalidBackend",
            "resource backends are not supported; only Service backends".into(),
        ));
        return None;
    };
    let ns = &ingress.namespace;
    let port_ref = svc.port.as_ref();
    let port_desc = match port_ref {
        Some(p) => p
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| p.number.unwrap_or_default().to_string()),
        None => String::new(),
    };
    let name = format!("{ns}/{}:{port_desc}", svc.name);
    if let Some((upstream, problems)) = backends.resolved.get(&name) {
        diags.extend(problems.iter().cloned());
        return upstream.clone();
    }
    let mut problems = Vec::new();
    let upstream = resolve_service(inputs, ns, svc, &port_desc, &mut problems).map(|endpoints| {
        let upstream = match inputs.previous.get(&name) {
            Some(prev) if prev.same_endpoints(&endpoints) => prev.clone(),
            _ => Arc::new(Upstream::new(name.clone(), endpoints)),
        };
        backends.upstreams.insert(name.clone(), upstream.clone());
        upstream
    });
    diags.extend(problems.iter().cloned());
    backends.resolved.insert(name, (upstream.clone(), problems));
    upstream
}

/// The ready endpoints of a Service backend; `None` when it can never be served (an
/// ExternalName Service).
fn resolve_service(
    inputs: &Inputs<'_>,
    ns: &str,
    svc: &k8s_openapi::api::networking::v1::IngressServiceBackend,
    port_desc: &str,
    problems: &mut Vec<Diagnostic>,
) -> Option<Vec<SocketAddr>> {
    let port_ref = svc.port.as_ref();
    let mut endpoints = Vec::new();
    let Some(service) = (inputs.services)(ns, &svc.name) else {
        problems.push(warn(
            "ServiceNotFound",
            format!("service {ns}/{} not found", svc.name),
        ));
        return Some(endpoints);
    };
    let Some(spec) = service.spec.as_ref() else {
        problems.push(warn(
            "ServicePortNotFound",
            format!("service {ns}/{} has no port {port_desc}", svc.name),
        ));
        return Some(endpoints);
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        problems.push(warn(
            "InvalidBackend",
            format!(
                "service {ns}/{}: ExternalName services are not supported",
                svc.name
            ),
        ));
        return None;
    }
    let sp: Option<&ServicePort> = spec.ports.iter().flatten().find(|sp| match port_ref {
        Some(p) => match (&p.name, p.number) {
            (Some(n), _) if !n.is_empty() => sp.name.as_deref() == Some(n),
            (_, Some(num)) => sp.port == num,
            _ => false,
        },
        None => false,
    });
    let Some(sp) = sp else {
        problems.push(warn(
            "ServicePortNotFound",
            format!("service {ns}/{} has no port {port_desc}", svc.name),
        ));
        return Some(endpoints);
    };
    let port_name = sp.name.as_deref().unwrap_or_default();
    for slice in (inputs.slices)(ns, &svc.name) {
        let Some(port) = slice.ports.iter().flatten().find_map(|p| {
            (p.name.as_deref().unwrap_or_default() == port_name)
                .then_some(p.port)
                .flatten()
        }) else {
            continue;
        };
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            // A nil `ready` means ready (discovery/v1 semantics).
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            // Addresses of one endpoint are fungible: the first is enough.
            if let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) {
                endpoints.push(SocketAddr::new(ip, port));
            }
        }
    }
    Some(endpoints)
}

/// Reads a TLS Secret's pair; never logs the contents.
pub fn parse_secret(secret: &Secret) -> Result<Arc<CertifiedKey>, tls::Error> {
    let data = secret.data.as_ref();
    let get = |k: &'static str| {
        data.and_then(|d| d.get(k))
            .map(|b| b.0.as_slice())
            .ok_or(tls::Error::Missing(k))
    };
    tls::certified_key(get("tls.crt")?, get("tls.key")?)
}

/// The live state the data plane reads.
#[derive(Clone)]
pub struct Shared {
    /// The routing table.
    pub table: Arc<ArcSwap<Table>>,
    /// The certificates.
    pub certs: Arc<ArcSwap<CertStore>>,
    /// Set once the first table built from synced caches is in place.
    pub ready: Arc<AtomicBool>,
}

/// The controller.
pub struct Controller {
    /// Which Ingresses are ours.
    pub selection: Selection,
    /// The client, for Secret watches.
    pub client: kube::Client,
    /// Events on Ingresses.
    pub recorder: Recorder,
    /// Where results go.
    pub shared: Shared,
    /// Our Ingresses after each compile, for the status writer.
    pub ours: watch::Sender<Vec<Arc<Ingress>>>,
    /// `--default-ssl-certificate`.
    pub default_secret: Option<ObjectKey>,
    /// The self-signed fallback.
    pub fallback_cert: Arc<CertifiedKey>,
}

struct SecretWatches {
    client: kube::Client,
    tx: mpsc::UnboundedSender<(ObjectKey, SecretState)>,
    running: HashMap<ObjectKey, CancellationToken>,
}

impl SecretWatches {
    /// Watches exactly `wanted`: new ones start, unreferenced ones stop.
    fn set(&mut self, wanted: &BTreeSet<ObjectKey>, states: &mut HashMap<ObjectKey, SecretState>) {
        self.running.retain(|k, token| {
            let keep = wanted.contains(k);
            if !keep {
                token.cancel();
                states.remove(k);
            }
            keep
        });
        for key in wanted {
            if self.running.contains_key(key) {
                continue;
            }
            let token = CancellationToken::new();
            states.insert(key.clone(), SecretState::Pending);
            tokio::spawn(watch_secret(
                self.client.clone(),
                key.clone(),
                self.tx.clone(),
                token.clone(),
            ));
            self.running.insert(key.clone(), token);
        }
    }
}

impl Drop for SecretWatches {
    fn drop(&mut self) {
        for token in self.running.values() {
            token.cancel();
        }
    }
}

/// One Secret by name: a field selector, so nothing else in the namespace is read.
async fn watch_secret(
    client: kube::Client,
    key: ObjectKey,
    tx: mpsc::UnboundedSender<(ObjectKey, SecretState)>,
    token: CancellationToken,
) {
    let api: Api<Secret> = Api::namespaced(client, &key.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", key.name));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut seen = false;
    loop {
        let event = tokio::select! {
            () = token.cancelled() => return,
            e = stream.next() => e,
        };
        let state = match event {
            None => return,
            Some(Err(e)) => {
                tracing::warn!(secret = %key, error = %e, "secret watch failed; retrying");
                continue;
            }
            Some(Ok(watcher::Event::Init)) => {
                seen = false;
                continue;
            }
            Some(Ok(watcher::Event::InitApply(s) | watcher::Event::Apply(s))) => {
                seen = true;
                SecretState::Loaded(Arc::new(LoadedSecret::new(&s)))
            }
            Some(Ok(watcher::Event::InitDone)) => {
                if seen {
                    continue;
                }
                SecretState::Missing
            }
            Some(Ok(watcher::Event::Delete(_))) => SecretState::Missing,
        };
        if tx.send((key.clone(), state)).is_err() {
            return;
        }
    }
}

/// The shared informers the controller reads, registered before the factory starts.
pub struct Informers {
    ingresses: Informer<Ingress>,
    classes: Informer<IngressClass>,
    services: Informer<Service>,
    slices: Informer<EndpointSlice>,
}

impl Informers {
    /// Registers the controller's informers with `factory`.
    pub fn new(factory: &InformerFactory) -> Self {
        Self {
            ingresses: factory.informer(),
            classes: factory.informer(),
            services: factory.informer(),
            slices: factory.informer(),
        }
    }

    /// The Service cache (for `--publish-service`).
    pub fn services(&self) -> Store<Service> {
        self.services.store()
    }
}

impl Controller {
    /// Runs until `shutdown`.
    pub async fn run(self, informers: Informers, shutdown: CancellationToken) {
        let Informers {
            ingresses,
            classes,
            services,
            slices,
        } = informers;
        let mut rx_i = ingresses.subscribe();
        let mut rx_c = classes.subscribe();
        let mut rx_s = services.subscribe();
        let mut rx_e = slices.subscribe();
        let (secret_tx, mut rx_secret) = mpsc::unbounded_channel();
        let mut watches = SecretWatches {
            client: self.client.clone(),
            tx: secret_tx,
            running: HashMap::new(),
        };
        let mut secret_states: HashMap<ObjectKey, SecretState> = HashMap::new();
        let mut previous = HashMap::new();
        let mut reported: HashMap<ObjectKey, BTreeSet<Diagnostic>> = HashMap::new();
        let (ingresses, classes, services, slices) = (
            ingresses.store(),
            classes.store(),
            services.store(),
            slices.store(),
        );
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = async {
                ingresses.wait_synced().await;
                classes.wait_synced().await;
                services.wait_synced().await;
                slices.wait_synced().await;
            } => {}
        }
        loop {
            // Fold every pending notification into this compile.
            while rx_i.try_recv().is_ok()
                || rx_c.try_recv().is_ok()
                || rx_s.try_recv().is_ok()
                || rx_e.try_recv().is_ok()
            {}
            while let Ok((k, state)) = rx_secret.try_recv() {
                if secret_states.contains_key(&k) {
                    secret_states.insert(k, state);
                }
            }
            let started = std::time::Instant::now();
            let compiled = self.compile_once(
                &ingresses,
                &classes,
                &services,
                &slices,
                &secret_states,
                &previous,
            );
            let mut wanted = compiled.secrets.clone();
            if let Some(d) = &self.default_secret {
                wanted.insert(d.clone());
            }
            watches.set(&wanted, &mut secret_states);
            let routes = compiled.table.len();
            self.shared.table.store(Arc::new(compiled.table));
            self.shared.certs.store(Arc::new(compiled.certs));
            previous = compiled.upstreams;
            self.shared.ready.store(true, Ordering::SeqCst);
            tracing::debug!(routes, elapsed = ?started.elapsed(), "routing table swapped");
            self.report(&ingresses, compiled.diagnostics, &mut reported);

            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(_) = rx_i.recv() => {}
                Some(_) = rx_c.recv() => {}
                Some(_) = rx_s.recv() => {}
                Some(_) = rx_e.recv() => {}
                Some((k, state)) = rx_secret.recv() => {
                    if secret_states.contains_key(&k) {
                        secret_states.insert(k, state);
                    }
                }
            }
        }
    }

    fn compile_once(
        &self,
        ingresses: &Store<Ingress>,
        classes: &Store<IngressClass>,
        services: &Store<Service>,
        slices: &Store<EndpointSlice>,
        secret_states: &HashMap<ObjectKey, SecretState>,
        previous: &HashMap<String, Arc<Upstream>>,
    ) -> Compiled {
        let class_list = classes.list();
        let ours: Vec<Arc<Ingress>> =
            ingresses.filter(|i| self.selection.is_ours(i, class_list.iter().map(|c| &**c)));
        let default_cert = self
            .default_secret
            .as_ref()
            .and_then(|k| match secret_states.get(k) {
                Some(SecretState::Loaded(loaded)) => loaded.cert.as_ref().ok().cloned(),
                _ => None,
            })
            .unwrap_or_else(|| self.fallback_cert.clone());
        let services_fn = |ns: &str, name: &str| services.get(ns, name);
        let slices_fn = |ns: &str, name: &str| {
            slices.filter(|s| {
                s.metadata.namespace.as_deref() == Some(ns)
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                        .is_some_and(|v| v == name)
            })
        };
        let compiled = compile(&Inputs {
            ingresses: &ours,
            services: &services_fn,
            slices: &slices_fn,
            secrets: secret_states,
            default_cert,
            previous,
        });
        self.ours.send_replace(ours);
        compiled
    }

    /// Publishes each Ingress's new problems once (the recorder aggregates repeats).
    fn report(
        &self,
        ingresses: &Store<Ingress>,
        diagnostics: BTreeMap<ObjectKey, BTreeSet<Diagnostic>>,
        reported: &mut HashMap<ObjectKey, BTreeSet<Diagnostic>>,
    ) {
        reported.retain(|k, _| diagnostics.contains_key(k));
        for (key, diags) in diagnostics {
            let before = reported.get(&key);
            // The common case, nothing new about an Ingress already seen, costs no cache
            // read: this runs over every Ingress on every change.
            if before.is_some_and(|b| diags.is_subset(b)) {
                reported.insert(key, diags);
                continue;
            }
            let Some(ing) = ingresses.get_key(&key) else {
                continue;
            };
            if before.is_none() {
                self.recorder.publish(
                    events::reference(&*ing),
                    EventType::Normal,
                    "Sync",
                    "Sync",
                    "Scheduled for sync",
                );
            }
            for d in &diags {
                if before.is_some_and(|b| b.contains(d)) {
                    continue;
                }
                tracing::info!(ingress = %key, reason = d.reason, note = %d.note, "ingress problem");
                self.recorder.publish(
                    events::reference(&*ing),
                    if d.warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    d.reason,
                    "Sync",
                    d.note.clone(),
                );
            }
            reported.insert(key, diags);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(
        name: &str,
        age: u32,
        spec: serde_json::Value,
        ann: serde_json::Value,
    ) -> Arc<Ingress> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns",
                    "creationTimestamp": format!("2024-01-01T00:00:{age:02}Z"),
                    "annotations": ann},
                "spec": spec,
            }))
            .expect("ingress"),
        )
    }

    fn service(name: &str) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"ports": [{"name": "http", "port": 80}, {"port": 8080}]},
            }))
            .expect("service"),
        )
    }

    fn slice(
        svc: &str,
        port_name: Option<&str>,
        port: i32,
        eps: &[(&str, Option<bool>)],
    ) -> Arc<EndpointSlice> {
        let mut p = json!({"port": port});
        if let Some(n) = port_name {
            p["name"] = json!(n);
        }
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": format!("{svc}-x"), "namespace": "ns",
                    "labels": {SERVICE_NAME_LABEL: svc}},
                "addressType": "IPv4",
                "ports": [p],
                "endpoints": eps.iter().map(|(a, r)| {
                    let mut e = json!({"addresses": [a]});
                    if let Some(r) = r { e["conditions"] = json!({"ready": r}); }
                    e
                }).collect::<Vec<_>>(),
            }))
            .expect("slice"),
        )
    }

    fn backend(svc: &str, port: serde_json::Value) -> serde_json::Value {
        json!({"service": {"name": svc, "port": port}})
    }

    #[test]
    fn compiles_routes_endpoints_and_diagnostics() {
        let ings = vec![
            ingress(
                "new",
                2,
                json!({"rules": [{"host": "a.com", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": backend("web", json!({"number": 80}))},
                    {"path": "/x", "pathType": "Prefix", "backend": backend("missing", json!({"number": 80}))},
                ]}}]}),
                json!({"nginx.ingress.kubernetes.io/server-snippet": "x"}),
            ),
            ingress(
                "old",
                1,
                json!({
                "defaultBackend": backend("web", json!({"number": 8080})),
                "tls": [{"hosts": ["a.com"], "secretName": "a-tls"}],
                "rules": [{"host": "a.com", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": backend("web", json!({"name": "http"}))},
                ]}}]}),
                json!({}),
            ),
            ingress(
                "canary",
                3,
                json!({"rules": [{"host": "a.com", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": backend("web", json!({"number": 8080}))},
                    {"path": "/nope", "pathType": "Exact", "backend": backend("web", json!({"number": 8080}))},
                ]}}]}),
                json!({"nginx.ingress.kubernetes.io/canary": "true", "nginx.ingress.kubernetes.io/canary-weight": "50"}),
            ),
        ];
        let services = |_: &str, n: &str| (n == "web").then(|| service("web"));
        let slices = |_: &str, n: &str| {
            if n == "web" {
                vec![
                    slice(
                        "web",
                        Some("http"),
                        9000,
                        &[("10.0.0.1", None), ("10.0.0.2", Some(false))],
                    ),
                    slice("web", None, 9001, &[("10.0.0.3", Some(true))]),
                ]
            } else {
                vec![]
            }
        };
        let mut secrets = HashMap::new();
        secrets.insert(ObjectKey::new("ns", "a-tls"), SecretState::Missing);
        let default_cert = tls::self_signed().expect("cert");
        let c = compile(&Inputs {
            ingresses: &ings,
            services: &services,
            slices: &slices,
            secrets: &secrets,
            default_cert,
            previous: &HashMap::new(),
        });
        let r = c.table.lookup("a.com", "/y").expect("route");
        assert_eq!(r.target.ingress.name, "old");
        assert!(r.tls);
        assert_eq!(
            r.target.upstream.endpoints(),
            &["10.0.0.1:9000".parse().expect("addr")]
        );
        let canary = r.canary.as_ref().expect("canary");
        assert_eq!(
            canary.target.upstream.endpoints(),
            &["10.0.0.3:9001".parse().expect("addr")]
        );
        let r = c.table.lookup("a.com", "/x/1").expect("route");
        assert!(r.target.upstream.endpoints().is_empty());
        let r = c.table.lookup("b.com", "/").expect("default backend");
        assert_eq!(r.target.ingress.name, "old");
        assert_eq!(
            c.secrets.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
            vec!["ns/a-tls"]
        );

        let reasons = |n: &str| {
            c.diagnostics[&ObjectKey::new("ns", n)]
                .iter()
                .map(|d| d.reason)
                .collect::<Vec<_>>()
        };
        assert_eq!(reasons("old"), vec!["TLSSecretNotFound"]);
        assert_eq!(
            reasons("new"),
            vec!["RouteConflict", "ServiceNotFound", "UnsupportedAnnotation"]
        );
        assert_eq!(reasons("canary"), vec!["InvalidCanary"]);

        // Unchanged endpoints keep their upstream (and its balancer state).
        let again = compile(&Inputs {
            ingresses: &ings,
            services: &services,
            slices: &slices,
            secrets: &secrets,
            default_cert: tls::self_signed().expect("cert"),
            previous: &c.upstreams,
        });
        let a = &c.table.lookup("a.com", "/").expect("route").target.upstream;
        let b = &again
            .table
            .lookup("a.com", "/")
            .expect("route")
            .target
            .upstream;
        assert!(Arc::ptr_eq(a, b));
    }

    #[test]
    fn a_shared_backend_is_resolved_once_but_reported_on_every_ingress() {
        let p = |path: &str, svc: &str| {
            json!({"rules": [{"host": "a.com", "http": {"paths": [
                {"path": path, "pathType": "Prefix", "backend": backend(svc, json!({"number": 80}))},
            ]}}]})
        };
        let ings = vec![
            ingress("one", 1, p("/m1", "missing"), json!({})),
            ingress("two", 2, p("/m2", "missing"), json!({})),
            ingress("three", 3, p("/w1", "web"), json!({})),
            ingress("four", 4, p("/w2", "web"), json!({})),
        ];
        let services = |_: &str, n: &str| (n == "web").then(|| service("web"));
        let slices = |_: &str, n: &str| {
            if n == "web" {
                vec![slice("web", Some("http"), 9000, &[("10.0.0.1", None)])]
            } else {
                vec![]
            }
        };
        let c = compile(&Inputs {
            ingresses: &ings,
            services: &services,
            slices: &slices,
            secrets: &HashMap::new(),
            default_cert: tls::self_signed().expect("cert"),
            previous: &HashMap::new(),
        });
        for n in ["one", "two"] {
            let reasons: Vec<_> = c.diagnostics[&ObjectKey::new("ns", n)]
                .iter()
                .map(|d| d.reason)
                .collect();
            assert_eq!(reasons, vec!["ServiceNotFound"], "{n}");
        }
        // The two Ingresses on `web` share one upstream.
        let up = |path: &str| {
            c.table
                .lookup("a.com", path)
                .expect("route")
                .target
                .upstream
                .clone()
        };
        assert!(Arc::ptr_eq(&up("/w1"), &up("/w2")));
        assert_eq!(
            up("/w1").endpoints(),
            &["10.0.0.1:9000".parse().expect("addr")]
        );
        assert!(up("/m1").endpoints().is_empty());
        assert_eq!(c.upstreams.len(), 2);
    }

    #[test]
    fn regex_hosts_invalid_regex_and_auth_fail_closed() {
        let p = |path: &str, t: &str| json!({"path": path, "pathType": t, "backend": backend("web", json!({"number": 80}))});
        let ings = vec![
            // use-regex on one Ingress makes the other Ingress's path on the host a regex.
            ingress(
                "regex",
                1,
                json!({"rules": [{"host": "r.com", "http": {"paths": [p("/a[0-9]+", "ImplementationSpecific"), p("/(bad", "ImplementationSpecific")]}}]}),
                json!({"nginx.ingress.kubernetes.io/use-regex": "true"}),
            ),
            ingress(
                "plain",
                2,
                json!({"rules": [{"host": "r.com", "http": {"paths": [p("/b", "Prefix")]}}]}),
                json!({}),
            ),
            // A rewrite-target equal to the path rewrites nothing: no regex for the host.
            ingress(
                "same",
                3,
                json!({"rules": [{"host": "s.com", "http": {"paths": [p("/b", "Prefix")]}}]}),
                json!({"nginx.ingress.kubernetes.io/rewrite-target": "/b"}),
            ),
            ingress(
                "auth",
                4,
                json!({"rules": [{"host": "auth.com", "http": {"paths": [p("/", "Prefix")]}}]}),
                json!({"nginx.ingress.kubernetes.io/auth-type": "basic",
                       "nginx.ingress.kubernetes.io/auth-secret": "users"}),
            ),
        ];
        let services = |_: &str, n: &str| (n == "web").then(|| service("web"));
        let slices = |_: &str, _: &str| Vec::new();
        let mut secrets = HashMap::new();
        secrets.insert(ObjectKey::new("ns", "users"), SecretState::Missing);
        let c = compile(&Inputs {
            ingresses: &ings,
            services: &services,
            slices: &slices,
            secrets: &secrets,
            default_cert: tls::self_signed().expect("cert"),
            previous: &HashMap::new(),
        });
        let name = |host: &str, path: &str| {
            c.table
                .lookup(host, path)
                .map(|r| r.target.ingress.name.clone())
        };
        assert_eq!(name("r.com", "/A12/x").as_deref(), Some("regex"));
        assert_eq!(name("r.com", "/bx").as_deref(), Some("plain"));
        assert_eq!(name("s.com", "/bx"), None);
        let reasons = |n: &str| {
            c.diagnostics[&ObjectKey::new("ns", n)]
                .iter()
                .map(|d| d.reason)
                .collect::<Vec<_>>()
        };
        assert_eq!(reasons("regex"), vec!["InvalidPath"]);
        assert_eq!(reasons("auth"), vec!["AuthSecretNotFound"]);
        let gate = c
            .table
            .lookup("auth.com", "/")
            .and_then(|r| r.target.auth.clone());
        assert!(matches!(gate.as_deref(), Some(auth::Gate::Unavailable)));
        assert!(c.secrets.contains(&ObjectKey::new("ns", "users")));
    }
}
