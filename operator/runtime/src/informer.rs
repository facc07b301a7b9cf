//! Shared informers: one watch and one cache per resource type (and selector) per process,
//! fanned out to any number of subscribers.
//!
//! This is client-go's `SharedInformerFactory` on top of kube-runtime's [`watcher`]:
//!
//! ```text
//!   apiserver ──watch──▶ watcher (re-lists on 410 Gone, backs off on errors)
//!                           │ Init / InitApply / InitDone / Apply / Delete
//!                           ▼
//!                      Informer state: cache (ns/name -> Arc<K>) + subscribers
//!                           │ Added / Updated{old,new} / Deleted
//!                           ▼
//!        controller A's channel   controller B's channel   ...
//! ```
//!
//! After a re-list (watch expired, apiserver restarted) the cache is replaced atomically and
//! subscribers see only the differences: new objects as `Added`, changed ones as `Updated`,
//! vanished ones as `Deleted`. Subscribers that join late first receive the whole cache as
//! `Added`, as a client-go handler added to a running informer does.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, PartialObjectMeta};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The key of an object in an informer's cache: namespace (empty for cluster-scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The namespace; empty for cluster-scoped objects.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// The key of `obj`.
    pub fn of<K: Resource>(obj: &K) -> Self {
        Self {
            namespace: obj.meta().namespace.clone().unwrap_or_default(),
            name: obj.meta().name.clone().unwrap_or_default(),
        }
    }

    /// A key from its parts.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    /// `namespace/name`, or `name` for cluster-scoped objects, as client-go's
    /// `MetaNamespaceKeyFunc`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// A change seen by an informer.
#[derive(Debug)]
pub enum Notification<K> {
    /// A new object (or, for late subscribers, one already in the cache).
    Added(Arc<K>),
    /// An object changed. On a periodic resync `old` and `new` are the same object.
    Updated {
        /// The cached object before the change.
        old: Arc<K>,
        /// The object now.
        new: Arc<K>,
    },
    /// An object is gone. After a re-list this is the last state the cache knew.
    Deleted(Arc<K>),
}

impl<K> Notification<K> {
    /// The object as it is now (or was last seen, for `Deleted`).
    pub fn object(&self) -> &Arc<K> {
        match self {
            Self::Added(o) | Self::Deleted(o) | Self::Updated { new: o, .. } => o,
        }
    }
}

impl<K> Clone for Notification<K> {
    fn clone(&self) -> Self {
        match self {
            Self::Added(o) => Self::Added(o.clone()),
            Self::Updated { old, new } => Self::Updated {
                old: old.clone(),
                new: new.clone(),
            },
            Self::Deleted(o) => Self::Deleted(o.clone()),
        }
    }
}

/// What an informer watches: a resource type plus optional selectors.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct InformerId {
    type_name: &'static str,
    group: String,
    version: String,
    plural: String,
    namespace: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
}

/// Restricts what an informer lists and watches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selectors {
    /// Only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// A label selector (`app=web,tier!=db`).
    pub label_selector: Option<String>,
    /// A field selector (`spec.nodeName=node-1`).
    pub field_selector: Option<String>,
}

// === State ===

/// The name of the index every informer keeps: an object's namespace (empty for
/// cluster-scoped objects), as client-go's `cache.NamespaceIndex`.
pub const NAMESPACE_INDEX: &str = "namespace";

/// A function from an object to the values it is indexed under (none, one or several).
pub type IndexFn<K> = Box<dyn Fn(&K) -> Vec<String> + Send + Sync>;

/// Asking a [`Store`] for an index it does not have.
#[derive(Debug, thiserror::Error)]
#[error("no index named {name:?} in this informer's store")]
pub struct UnknownIndex {
    /// The index asked for.
    pub name: String,
}

/// One secondary index: value -> keys of the cached objects indexed under it.
struct Index<K> {
    func: IndexFn<K>,
    entries: HashMap<String, HashSet<ObjectKey>>,
}

impl<K> Index<K> {
    fn insert(&mut self, key: &ObjectKey, obj: &K) {
        for value in (self.func)(obj) {
            self.entries.entry(value).or_default().insert(key.clone());
        }
    }

    /// Undoes `insert` for the object as it was cached. The cached `Arc` never changes, so
    /// the function yields the same values it yielded on insertion.
    fn remove(&mut self, key: &ObjectKey, obj: &K) {
        for value in (self.func)(obj) {
            if let Some(keys) = self.entries.get_mut(&value) {
                keys.remove(key);
                // Empty sets are dropped so that values of vanished owners do not pile up.
                if keys.is_empty() {
                    self.entries.remove(&value);
                }
            }
        }
    }

    fn rebuild(&mut self, cache: &HashMap<ObjectKey, Arc<K>>) {
        self.entries.clear();
        for (key, obj) in cache {
            self.insert(key, obj);
        }
    }
}

struct State<K> {
    cache: HashMap<ObjectKey, Arc<K>>,
    /// Objects listed since the last `Init`, swapped in on `InitDone`.
    relist: Option<HashMap<ObjectKey, Arc<K>>>,
    subscribers: Vec<mpsc::UnboundedSender<Notification<K>>>,
    /// Secondary indexes by name, always consistent with `cache` (updated under the same
    /// write lock).
    indexes: HashMap<String, Index<K>>,
}

impl<K> State<K> {
    fn new() -> Self {
        Self {
            cache: HashMap::new(),
            relist: None,
            subscribers: Vec::new(),
            indexes: HashMap::new(),
        }
    }

    fn notify(&mut self, n: Notification<K>) {
        // A dropped receiver means that subscriber is gone; forget it.
        self.subscribers.retain(|tx| tx.send(n.clone()).is_ok());
    }

    /// Caches `obj` under `key`, keeping the indexes in step; returns what it replaced.
    fn insert(&mut self, key: ObjectKey, obj: Arc<K>) -> Option<Arc<K>> {
        let old = self.cache.insert(key.clone(), obj.clone());
        for index in self.indexes.values_mut() {
            if let Some(old) = &old {
                index.remove(&key, old);
            }
            index.insert(&key, &obj);
        }
        old
    }

    /// Drops `key` from the cache and the indexes; returns what was cached.
    fn remove(&mut self, key: &ObjectKey) -> Option<Arc<K>> {
        let old = self.cache.remove(key)?;
        for index in self.indexes.values_mut() {
            index.remove(key, &old);
        }
        Some(old)
    }

    /// Swaps in a whole new cache (after a re-list) and rebuilds the indexes from it.
    fn replace(&mut self, fresh: HashMap<ObjectKey, Arc<K>>) -> HashMap<ObjectKey, Arc<K>> {
        let old = std::mem::replace(&mut self.cache, fresh);
        for index in self.indexes.values_mut() {
            index.rebuild(&self.cache);
        }
        old
    }

    fn by_index(&self, name: &str, value: &str) -> Result<Vec<Arc<K>>, UnknownIndex> {
        let index = self.indexes.get(name).ok_or_else(|| UnknownIndex {
            name: name.to_string(),
        })?;
        Ok(index
            .entries
            .get(value)
            .into_iter()
            .flatten()
            .filter_map(|key| self.cache.get(key).cloned())
            .collect())
    }
}

/// A function applied to every object an informer receives before it is cached and handed
/// to subscribers (client-go's `TransformFunc`): it drops what no reader of the cache
/// needs, so that neither the cache nor the notifications keep it alive.
pub type TransformFn<K> = Arc<dyn Fn(K) -> K + Send + Sync>;

struct Shared<K> {
    state: RwLock<State<K>>,
    synced: watch::Sender<bool>,
    transform: Option<TransformFn<K>>,
}

/// A read-only view of an informer's cache. Cheap to clone.
pub struct Store<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for Store<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K> Store<K> {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State<K>> {
        // A panic while holding the lock leaves the map itself consistent (every write is a
        // single insert/remove/swap), so a poisoned lock is still safe to read.
        self.shared
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached object `namespace/name` (namespace empty for cluster-scoped).
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.get_key(&ObjectKey::new(namespace, name))
    }

    /// The cached object with `key`.
    pub fn get_key(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.read().cache.get(key).cloned()
    }

    /// Every cached object.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.read().cache.values().cloned().collect()
    }

    /// Every cached object in `namespace` (through the namespace index, so the cost is
    /// that of the namespace's objects, not of the whole cache).
    pub fn list_in(&self, namespace: &str) -> Vec<Arc<K>> {
        let state = self.read();
        match state.by_index(NAMESPACE_INDEX, namespace) {
            Ok(objs) => objs,
            // Stores built by the factory always have the index; scan otherwise.
            Err(_) => state
                .cache
                .iter()
                .filter(|(k, _)| k.namespace == namespace)
                .map(|(_, v)| v.clone())
                .collect(),
        }
    }

    /// Adds the index `name`, computed by `func`, built at once from the current cache and
    /// kept up to date on every change and re-list from then on (client-go's
    /// `AddIndexers`). The name identifies the function: when an index of that name exists
    /// already (another controller sharing this informer added it), it is kept and `false`
    /// is returned, as upstream's `AddPodControllerIndexer` does.
    pub fn add_index(
        &self,
        name: &str,
        func: impl Fn(&K) -> Vec<String> + Send + Sync + 'static,
    ) -> bool {
        let mut state = self
            .shared
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if state.indexes.contains_key(name) {
            return false;
        }
        let mut index = Index {
            func: Box::new(func),
            entries: HashMap::new(),
        };
        index.rebuild(&state.cache);
        state.indexes.insert(name.to_string(), index);
        true
    }

    /// Whether the index `name` exists.
    pub fn has_index(&self, name: &str) -> bool {
        self.read().indexes.contains_key(name)
    }

    /// The cached objects indexed under `value` in the index `name` (client-go's
    /// `ByIndex`), in no particular order.
    pub fn by_index(&self, name: &str, value: &str) -> Result<Vec<Arc<K>>, UnknownIndex> {
        self.read().by_index(name, value)
    }

    /// The values the index `name` currently holds objects under (client-go's
    /// `ListIndexFuncValues`).
    pub fn index_values(&self, name: &str) -> Result<Vec<String>, UnknownIndex> {
        let state = self.read();
        let index = state.indexes.get(name).ok_or_else(|| UnknownIndex {
            name: name.to_string(),
        })?;
        Ok(index.entries.keys().cloned().collect())
    }

    /// Cached objects for which `pred` holds.
    pub fn filter(&self, pred: impl Fn(&K) -> bool) -> Vec<Arc<K>> {
        self.read()
            .cache
            .values()
            .filter(|o| pred(o))
            .cloned()
            .collect()
    }

    /// How many objects are cached.
    pub fn len(&self) -> usize {
        self.read().cache.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the first full list has been loaded.
    pub fn has_synced(&self) -> bool {
        *self.shared.synced.borrow()
    }

    /// Waits until the first full list has been loaded.
    pub async fn wait_synced(&self) {
        let mut rx = self.shared.synced.subscribe();
        // The sender lives as long as `self`, so this only returns once synced.
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// One shared informer: its cache and its subscribers.
pub struct Informer<K> {
    store: Store<K>,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
        }
    }
}

impl<K> Informer<K> {
    /// The informer's cache.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// A channel of every change from now on; the current cache arrives first as `Added`.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Notification<K>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self
            .store
            .shared
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for obj in state.cache.values() {
            // The receiver is alive: we hold it.
            let _ = tx.send(Notification::Added(obj.clone()));
        }
        state.subscribers.push(tx);
        rx
    }
}

// === Dispatch ===

impl<K> Shared<K> {
    fn new(transform: Option<TransformFn<K>>) -> Self {
        let (synced, _) = watch::channel(false);
        Self {
            state: RwLock::new(State::new()),
            synced,
            transform,
        }
    }
}

/// Drops what no controller reads from a cached object: managedFields are often the
/// largest part of an object's metadata, and upstream's controller-manager and scheduler
/// strip them from their informer caches the same way.
fn trim<K: Resource>(mut obj: K) -> K {
    obj.meta_mut().managed_fields = None;
    obj
}

impl<K: Resource> Shared<K> {
    /// What is kept of a received object: [`trim`], then the factory's transform for `K`.
    fn keep(&self, obj: K) -> K {
        let obj = trim(obj);
        match &self.transform {
            Some(f) => f(obj),
            None => obj,
        }
    }

    fn apply(&self, event: watcher::Event<K>) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        match event {
            watcher::Event::Init => state.relist = Some(HashMap::new()),
            watcher::Event::InitApply(obj) => {
                let obj = self.keep(obj);
                let key = ObjectKey::of(&obj);
                state
                    .relist
                    .get_or_insert_with(HashMap::new)
                    .insert(key, Arc::new(obj));
            }
            watcher::Event::InitDone => {
                let fresh = state.relist.take().unwrap_or_default();
                let old = state.replace(fresh);
                let mut changes = Vec::new();
                for (key, new) in &state.cache {
                    match old.get(key) {
                        None => changes.push(Notification::Added(new.clone())),
                        Some(prev) if !same_version(&**prev, &**new) => {
                            changes.push(Notification::Updated {
                                old: prev.clone(),
                                new: new.clone(),
                            })
                        }
                        Some(_) => {}
                    }
                }
                for (key, prev) in &old {
                    if !state.cache.contains_key(key) {
                        changes.push(Notification::Deleted(prev.clone()));
                    }
                }
                for n in changes {
                    state.notify(n);
                }
                drop(state);
                self.synced.send_replace(true);
            }
            watcher::Event::Apply(obj) => {
                let new = Arc::new(self.keep(obj));
                let n = match state.insert(ObjectKey::of(&*new), new.clone()) {
                    Some(old) => Notification::Updated { old, new },
                    None => Notification::Added(new),
                };
                state.notify(n);
            }
            watcher::Event::Delete(obj) => {
                let key = ObjectKey::of(&obj);
                let last = state
                    .remove(&key)
                    .unwrap_or_else(|| Arc::new(self.keep(obj)));
                state.notify(Notification::Deleted(last));
            }
        }
    }

    /// client-go's resync: every cached object is re-delivered as an update to itself.
    fn resync(&self) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let all: Vec<Arc<K>> = state.cache.values().cloned().collect();
        for o in all {
            state.notify(Notification::Updated {
                old: o.clone(),
                new: o,
            });
        }
    }
}

fn same_version<K: Resource>(a: &K, b: &K) -> bool {
    a.meta().resource_version.is_some() && a.meta().resource_version == b.meta().resource_version
}

// === Factory ===

type Starter = Box<dyn FnOnce(&mut JoinSet<()>, CancellationToken) + Send>;

struct Registered {
    informer: Box<dyn Any + Send + Sync>,
    synced: Box<dyn Fn() -> bool + Send + Sync>,
}

/// Creates and owns the shared informers of one process.
///
/// Ask for informers (each type and selector gets exactly one), then [`start`](Self::start)
/// them. Informers asked for after `start` are started by the next `start` call.
pub struct InformerFactory {
    client: Client,
    resync: Option<Duration>,
    /// Transforms by object type: `TypeId` of `K` -> `TransformFn<K>`.
    transforms: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
    inner: Mutex<FactoryInner>,
}

/// The list-and-watch stream of an informer, as `watcher` yields it.
type EventStream<K> = BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;

#[derive(Default)]
struct FactoryInner {
    informers: HashMap<InformerId, Registered>,
    pending: Vec<Starter>,
}

impl InformerFactory {
    /// A factory whose informers watch through `client`, without periodic resync.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            resync: None,
            transforms: HashMap::new(),
            inner: Mutex::new(FactoryInner::default()),
        }
    }

    /// Every informer of `K` this factory makes passes what it receives through
    /// `transform` before caching it (client-go's `informers.WithTransform`, per type). The
    /// transform must keep whatever any reader of the cache looks at, and the name,
    /// namespace and resourceVersion, by which the cache keys and compares objects.
    #[must_use]
    pub fn with_transform<K: 'static>(
        mut self,
        transform: impl Fn(K) -> K + Send + Sync + 'static,
    ) -> Self {
        let f: TransformFn<K> = Arc::new(transform);
        self.transforms.insert(TypeId::of::<K>(), Box::new(f));
        self
    }

    /// Re-delivers every cached object to subscribers every `period` (client-go's
    /// `defaultResync`), so controllers also converge on state no event announced.
    #[must_use]
    pub fn with_resync(mut self, period: Duration) -> Self {
        self.resync = Some(period);
        self
    }

    /// The shared informer for every `K` in the cluster.
    pub fn informer<K>(&self) -> Informer<K>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Default + Clone + Send + Sync + Eq + Hash,
    {
        self.informer_for(Selectors::default(), K::DynamicType::default())
    }

    /// The shared informer for the `K` objects that `selectors` select.
    pub fn informer_with<K>(&self, selectors: Selectors) -> Informer<K>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Default + Clone + Send + Sync + Eq + Hash,
    {
        self.informer_for(selectors, K::DynamicType::default())
    }

    /// The shared informer for a resource known only at runtime (found via discovery).
    pub fn dynamic(&self, resource: &ApiResource, selectors: Selectors) -> Informer<DynamicObject> {
        self.informer_for(selectors, resource.clone())
    }

    /// The shared metadata-only informer for a resource known only at runtime: its lists
    /// and watches ask the apiserver for `PartialObjectMetadata`, so neither the wire nor
    /// the cache carries spec or status (upstream's metadata informers, which its garbage
    /// collector runs on).
    pub fn dynamic_metadata(
        &self,
        resource: &ApiResource,
        selectors: Selectors,
    ) -> Informer<PartialObjectMeta<DynamicObject>> {
        self.informer_for(selectors, resource.clone())
    }

    fn informer_for<K>(&self, selectors: Selectors, dt: K::DynamicType) -> Informer<K>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Clone + Send + Sync,
    {
        let id = InformerId {
            type_name: std::any::type_name::<K>(),
            group: K::group(&dt).into_owned(),
            version: K::version(&dt).into_owned(),
            plural: K::plural(&dt).into_owned(),
            namespace: selectors.namespace.clone(),
            label_selector: selectors.label_selector.clone(),
            field_selector: selectors.field_selector.clone(),
        };
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = inner
            .informers
            .get(&id)
            .and_then(|r| r.informer.downcast_ref::<Informer<K>>())
        {
            return existing.clone();
        }
        let transform = self
            .transforms
            .get(&TypeId::of::<K>())
            .and_then(|f| f.downcast_ref::<TransformFn<K>>())
            .cloned();
        let shared = Arc::new(Shared::new(transform));
        let informer = Informer {
            store: Store {
                shared: shared.clone(),
            },
        };
        informer.store.add_index(NAMESPACE_INDEX, |o: &K| {
            vec![o.meta().namespace.clone().unwrap_or_default()]
        });
        // One namespace is watched through a field selector, which works alike for typed and
        // dynamic resources.
        let api: Api<K> = Api::all_with(self.client.clone(), &dt);
        let ns_selector = selectors
            .namespace
            .as_ref()
            .map(|ns| format!("metadata.namespace={ns}"));
        let config = watcher::Config {
            label_selector: selectors.label_selector.clone(),
            field_selector: match (ns_selector, selectors.field_selector.clone()) {
                (Some(a), Some(b)) => Some(format!("{a},{b}")),
                (a, b) => a.or(b),
            },
            ..watcher::Config::default()
        };
        let name = format!("{}.{}", K::plural(&dt), K::group(&dt));
        let resync = self.resync;
        let watched = shared.clone();
        inner.pending.push(Box::new(move |tasks, shutdown| {
            let stream = watcher(api, config).boxed();
            tasks.spawn(run(name, stream, watched, resync, shutdown));
        }));
        let store = informer.store.clone();
        inner.informers.insert(
            id,
            Registered {
                informer: Box::new(informer.clone()),
                synced: Box::new(move || store.has_synced()),
            },
        );
        informer
    }

    /// Starts every informer not started yet; their tasks join `tasks` and stop on `shutdown`.
    pub fn start(&self, tasks: &mut JoinSet<()>, shutdown: &CancellationToken) {
        let pending = std::mem::take(
            &mut self
                .inner
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pending,
        );
        for start in pending {
            start(tasks, shutdown.clone());
        }
    }

    /// Whether every informer made so far has loaded its first full list.
    pub fn has_synced(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .informers
            .values()
            .all(|r| (r.synced)())
    }

    /// Waits until every informer made so far has synced (client-go's `WaitForCacheSync`).
    pub async fn wait_for_sync(&self) {
        while !self.has_synced() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn run<K>(
    name: String,
    stream: EventStream<K>,
    shared: Arc<Shared<K>>,
    resync: Option<Duration>,
    shutdown: CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    // The default backoff re-establishes the watch after errors (apiserver down, 410 Gone
    // handled inside the watcher by re-listing), capped so recovery is prompt.
    let mut stream = stream.default_backoff().boxed();
    let mut ticker = resync.map(tokio::time::interval);
    if let Some(t) = ticker.as_mut() {
        t.tick().await;
    }
    tracing::debug!(informer = %name, "informer started");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = async {
                match ticker.as_mut() {
                    Some(t) => { t.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => shared.resync(),
            next = stream.try_next() => match next {
                Ok(Some(event)) => shared.apply(event),
                Ok(None) => break,
                Err(e) => tracing::warn!(informer = %name, error = %e, "watch failed; retrying"),
            },
        }
    }
    tracing::debug!(informer = %name, "informer stopped");
}

/// Convenience for controllers keyed by [`ObjectKey`]: the key of a notification's object.
pub fn key_of<K: Resource>(n: &Notification<K>) -> ObjectKey {
    ObjectKey::of(&**n.object())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn cm(ns: &str, name: &str, owner: &str, rv: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: (!owner.is_empty())
                    .then(|| [("owner".to_string(), owner.to_string())].into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn store() -> (Arc<Shared<ConfigMap>>, Store<ConfigMap>) {
        let shared = Arc::new(Shared::new(None));
        let store = Store {
            shared: shared.clone(),
        };
        store.add_index(NAMESPACE_INDEX, |o: &ConfigMap| {
            vec![o.metadata.namespace.clone().unwrap_or_default()]
        });
        (shared, store)
    }

    fn by_owner(o: &ConfigMap) -> Vec<String> {
        o.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("owner"))
            .map(|v| v.split('+').map(ToString::to_string).collect())
            .unwrap_or_default()
    }

    fn names(mut objs: Vec<Arc<ConfigMap>>) -> Vec<String> {
        objs.sort_by(|a, b| ObjectKey::of(&**a).cmp(&ObjectKey::of(&**b)));
        objs.iter()
            .map(|o| ObjectKey::of(&**o).to_string())
            .collect()
    }

    fn lookup(store: &Store<ConfigMap>, value: &str) -> Vec<String> {
        names(store.by_index("owner", value).unwrap_or_default())
    }

    #[test]
    fn index_follows_apply_and_delete() {
        let (shared, store) = store();
        shared.apply(watcher::Event::Apply(cm("a", "one", "x", "1")));
        // An index added late is built from what is cached already.
        assert!(store.add_index("owner", by_owner));
        assert!(
            !store.add_index("owner", |_: &ConfigMap| vec![]),
            "the first function under a name stays"
        );
        assert_eq!(lookup(&store, "x"), vec!["a/one"]);

        // Several values per object.
        shared.apply(watcher::Event::Apply(cm("b", "two", "x+y", "2")));
        assert_eq!(lookup(&store, "x"), vec!["a/one", "b/two"]);
        assert_eq!(lookup(&store, "y"), vec!["b/two"]);

        // An update moves the object from its old values to its new ones.
        shared.apply(watcher::Event::Apply(cm("a", "one", "y", "3")));
        assert_eq!(lookup(&store, "x"), vec!["b/two"]);
        assert_eq!(lookup(&store, "y"), vec!["a/one", "b/two"]);
        // And no longer indexed anywhere.
        shared.apply(watcher::Event::Apply(cm("a", "one", "", "4")));
        assert_eq!(lookup(&store, "y"), vec!["b/two"]);

        shared.apply(watcher::Event::Delete(cm("b", "two", "x+y", "2")));
        assert!(lookup(&store, "x").is_empty());
        assert!(lookup(&store, "y").is_empty());
        // Values without objects are forgotten.
        assert_eq!(store.index_values("owner").map(|v| v.len()).ok(), Some(0));
        // Deleting something never cached leaves the indexes alone.
        shared.apply(watcher::Event::Delete(cm("c", "ghost", "x", "9")));
        assert!(lookup(&store, "x").is_empty());
    }

    #[test]
    fn index_is_rebuilt_on_relist() {
        let (shared, store) = store();
        store.add_index("owner", by_owner);
        shared.apply(watcher::Event::Apply(cm("a", "gone", "x", "1")));
        shared.apply(watcher::Event::Apply(cm("a", "kept", "x", "1")));
        shared.apply(watcher::Event::Init);
        shared.apply(watcher::Event::InitApply(cm("a", "kept", "y", "2")));
        shared.apply(watcher::Event::InitApply(cm("b", "new", "x", "1")));
        // Until the re-list is complete the old contents are served.
        assert_eq!(lookup(&store, "x"), vec!["a/gone", "a/kept"]);
        shared.apply(watcher::Event::InitDone);
        assert_eq!(lookup(&store, "x"), vec!["b/new"]);
        assert_eq!(lookup(&store, "y"), vec!["a/kept"]);
        assert_eq!(names(store.list_in("a")), vec!["a/kept"]);
        assert_eq!(names(store.list_in("b")), vec!["b/new"]);
        assert!(store.list_in("zzz").is_empty());
    }

    #[test]
    fn namespace_index_serves_list_in() {
        let (shared, store) = store();
        for (ns, name) in [("a", "1"), ("a", "2"), ("b", "1"), ("", "cluster")] {
            shared.apply(watcher::Event::Apply(cm(ns, name, "", "1")));
        }
        assert_eq!(names(store.list_in("a")), vec!["a/1", "a/2"]);
        assert_eq!(names(store.list_in("")), vec!["cluster"]);
        shared.apply(watcher::Event::Delete(cm("a", "1", "", "1")));
        assert_eq!(names(store.list_in("a")), vec!["a/2"]);
        assert_eq!(store.len(), 3);
    }

    /// Drops the labels, as a transform drops what no reader needs.
    fn without_labels(mut o: ConfigMap) -> ConfigMap {
        o.metadata.labels = None;
        o
    }

    #[test]
    fn transform_applies_to_everything_cached_and_notified() {
        let shared = Arc::new(Shared::new(Some(
            Arc::new(without_labels) as TransformFn<ConfigMap>
        )));
        let informer = Informer {
            store: Store {
                shared: shared.clone(),
            },
        };
        let mut rx = informer.subscribe();
        shared.apply(watcher::Event::Init);
        shared.apply(watcher::Event::InitApply(cm("a", "listed", "x", "1")));
        shared.apply(watcher::Event::InitDone);
        shared.apply(watcher::Event::Apply(cm("a", "watched", "x", "2")));
        // Deleted before it was ever cached: the notification carries the transformed object.
        shared.apply(watcher::Event::Delete(cm("a", "unseen", "x", "3")));
        let store = informer.store();
        assert_eq!(store.len(), 2);
        assert!(store.list().iter().all(|o| o.metadata.labels.is_none()));
        let mut seen = 0;
        while let Ok(n) = rx.try_recv() {
            assert!(n.object().metadata.labels.is_none(), "{n:?}");
            seen += 1;
        }
        assert_eq!(seen, 3);
        // The managedFields trim still runs first.
        let mut with_fields = cm("a", "fields", "x", "4");
        with_fields.metadata.managed_fields = Some(vec![Default::default()]);
        shared.apply(watcher::Event::Apply(with_fields));
        let cached = store.get("a", "fields");
        assert!(cached.is_some_and(|o| o.metadata.managed_fields.is_none()));
    }

    #[tokio::test]
    async fn factory_transform_is_per_type() -> anyhow::Result<()> {
        let config = kube::Config::new("http://127.0.0.1:1".parse()?);
        let factory = InformerFactory::new(Client::try_from(config)?)
            .with_transform::<ConfigMap>(without_labels);
        let cms = factory.informer::<ConfigMap>();
        let selected = factory.informer_with::<ConfigMap>(Selectors {
            namespace: Some("a".into()),
            ..Selectors::default()
        });
        let secrets = factory.informer::<k8s_openapi::api::core::v1::Secret>();
        assert!(cms.store.shared.transform.is_some());
        assert!(selected.store.shared.transform.is_some());
        assert!(secrets.store.shared.transform.is_none());
        Ok(())
    }

    #[test]
    fn unknown_index_is_an_error() {
        let (_, store) = store();
        assert!(!store.has_index("owner"));
        let err = store.by_index("owner", "x").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("no index named \"owner\" in this informer's store")
        );
    }
}
