//! The dependency graph and its bookkeeping (upstream's `graph.go` and the pure part of
//! `graph_builder.go`).
//!
//! Nodes are keyed by uid; an owner reference names its owner by uid, so an owner that is
//! referenced but not (yet) observed gets a *virtual* node built from the reference. The
//! attempt-to-delete worker verifies virtual nodes against the apiserver and answers with a
//! virtual delete event when the owner does not exist.
//!
//! [`Graph::process`] applies one change and returns the [`Effect`]s it asks for (items to
//! queue, events to report) so that all of this is testable without a cluster.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// The `foregroundDeletion` finalizer (`metav1.FinalizerDeleteDependents`).
pub const FINALIZER_DELETE_DEPENDENTS: &str = "foregroundDeletion";
/// The `orphan` finalizer (`metav1.FinalizerOrphanDependents`).
pub const FINALIZER_ORPHAN_DEPENDENTS: &str = "orphan";

/// An object's coordinates (upstream's `objectReference`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// `group/version` or `v1`.
    pub api_version: String,
    /// The kind.
    pub kind: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// The uid.
    pub uid: String,
}

impl Identity {
    /// The coordinates an owner reference gives, in `namespace`.
    pub fn of_owner_ref(r: &OwnerReference, namespace: &str) -> Self {
        Self {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace: namespace.to_string(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        }
    }

    /// Whether `r` names exactly this object's apiVersion, kind, name and uid
    /// (upstream's `ownerReferenceMatchesCoordinates`).
    pub fn matches_ref(&self, r: &OwnerReference) -> bool {
        r.uid == self.uid
            && r.name == self.name
            && r.kind == self.kind
            && r.api_version == self.api_version
    }

    /// The absent-owner cache key of this identity without its namespace.
    fn without_namespace(&self) -> Self {
        Self {
            namespace: String::new(),
            ..self.clone()
        }
    }

    /// upstream's `referenceLessThan`: kind, apiVersion, namespace, name, uid.
    fn less_than(&self, other: &Self) -> bool {
        (
            &self.kind,
            &self.api_version,
            &self.namespace,
            &self.name,
            &self.uid,
        ) < (
            &other.kind,
            &other.api_version,
            &other.namespace,
            &other.name,
            &other.uid,
        )
    }
}

impl fmt::Display for Identity {
    /// upstream's `objectReference.String()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}/{}, namespace: {}, name: {}, uid: {}]",
            self.api_version, self.kind, self.namespace, self.name, self.uid
        )
    }
}

/// One object (or a virtual stand-in for an owner not observed yet).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Node {
    /// Its coordinates.
    pub identity: Identity,
    /// uids of the nodes whose owner references name this one.
    pub dependents: BTreeSet<String>,
    /// Being deleted with the `foregroundDeletion` finalizer.
    pub deleting_dependents: bool,
    /// Has a deletionTimestamp.
    pub being_deleted: bool,
    /// Known only from owner references; not observed by an informer.
    pub virtual_: bool,
    /// Its owner references as last observed.
    pub owners: Vec<OwnerReference>,
}

/// What kind of change an event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// An informer saw the object appear.
    Add,
    /// An informer saw the object change.
    Update,
    /// An informer saw it go, or (virtual) the attempt-to-delete worker found it absent.
    Delete,
}

/// One change fed to the graph builder.
#[derive(Clone, Debug)]
pub struct GraphEvent {
    /// Add, update or delete.
    pub event_type: EventType,
    /// Made up by the GC after a live lookup rather than seen by an informer.
    pub virtual_: bool,
    /// The object's apiVersion (from the informer's resource).
    pub api_version: String,
    /// The object's kind.
    pub kind: String,
    /// The object's metadata now.
    pub meta: ObjectMeta,
    /// Its metadata before an update.
    pub old: Option<ObjectMeta>,
}

impl GraphEvent {
    /// The identity the event's object has.
    pub fn identity(&self) -> Identity {
        Identity {
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            namespace: self.meta.namespace.clone().unwrap_or_default(),
            name: self.meta.name.clone().unwrap_or_default(),
            uid: self.meta.uid.clone().unwrap_or_default(),
        }
    }

    /// The virtual delete event for `identity` (upstream's `enqueueVirtualDeleteEvent`).
    pub fn virtual_delete(identity: &Identity) -> Self {
        Self {
            event_type: EventType::Delete,
            virtual_: true,
            api_version: identity.api_version.clone(),
            kind: identity.kind.clone(),
            meta: ObjectMeta {
                namespace: (!identity.namespace.is_empty()).then(|| identity.namespace.clone()),
                name: Some(identity.name.clone()),
                uid: Some(identity.uid.clone()),
                ..ObjectMeta::default()
            },
            old: None,
        }
    }
}

/// What processing an event asks the collector to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Queue the node with this uid for attempt-to-delete.
    AttemptToDelete(String),
    /// The same, after the queue's backoff.
    AttemptToDeleteRateLimited(String),
    /// Queue the node with this uid for attempt-to-orphan.
    AttemptToOrphan(String),
    /// Report `OwnerRefInvalidNamespace` on `dependent` for its owner reference `owner`.
    InvalidNamespaceOwnerRef {
        /// The object carrying the bad reference.
        dependent: Box<Identity>,
        /// The reference, with the dependent's namespace.
        owner: Box<Identity>,
    },
}

/// upstream's `ReferenceCache`: owners verified absent, least recently used evicted.
#[derive(Debug)]
pub struct ReferenceCache {
    capacity: usize,
    entries: HashSet<Identity>,
    order: VecDeque<Identity>,
}

impl ReferenceCache {
    /// A cache of `capacity` entries (upstream: 500).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Remembers `r` as absent.
    pub fn add(&mut self, r: Identity) {
        if self.entries.contains(&r) {
            self.touch(&r);
            return;
        }
        if self.entries.len() >= self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.entries.remove(&old);
        }
        self.entries.insert(r.clone());
        self.order.push_back(r);
    }

    /// Whether `r` is known absent (and marks it recently used).
    pub fn has(&mut self, r: &Identity) -> bool {
        if self.entries.contains(r) {
            self.touch(r);
            true
        } else {
            false
        }
    }

    fn touch(&mut self, r: &Identity) {
        if let Some(i) = self.order.iter().position(|x| x == r) {
            self.order.remove(i);
        }
        self.order.push_back(r.clone());
    }
}

/// The uid -> node map (upstream's `uidToNode`) plus the absent-owner cache.
#[derive(Debug)]
pub struct Graph {
    nodes: HashMap<String, Node>,
    /// Owners verified absent.
    pub absent_owners: ReferenceCache,
}

impl Default for Graph {
    fn default() -> Self {
        Self {
            nodes: HashMap::new(),
            absent_owners: ReferenceCache::new(500),
        }
    }
}

fn being_deleted(m: &ObjectMeta) -> bool {
    m.deletion_timestamp.is_some()
}

/// Whether `m` carries finalizer `f`.
pub fn has_finalizer(m: &ObjectMeta, f: &str) -> bool {
    m.finalizers.iter().flatten().any(|x| x == f)
}

fn blocks(r: &OwnerReference) -> bool {
    r.block_owner_deletion == Some(true)
}

/// upstream's `deletionStartsWithFinalizer`.
fn deletion_starts_with_finalizer(old: Option<&ObjectMeta>, new: &ObjectMeta, f: &str) -> bool {
    if !being_deleted(new) || !has_finalizer(new, f) {
        return false;
    }
    match old {
        None => true,
        Some(old) => !being_deleted(old) || !has_finalizer(old, f),
    }
}

/// upstream's `referencesDiffs`: owner references added, removed and changed (by uid).
fn references_diffs(
    old: &[OwnerReference],
    new: &[OwnerReference],
) -> (
    Vec<OwnerReference>,
    Vec<OwnerReference>,
    Vec<(OwnerReference, OwnerReference)>,
) {
    let mut old_by_uid: HashMap<&str, &OwnerReference> =
        old.iter().map(|r| (r.uid.as_str(), r)).collect();
    let (mut added, mut changed) = (Vec::new(), Vec::new());
    for r in new {
        match old_by_uid.remove(r.uid.as_str()) {
            Some(o) if o != r => changed.push((o.clone(), r.clone())),
            Some(_) => {}
            None => added.push(r.clone()),
        }
    }
    let removed = old
        .iter()
        .filter(|r| old_by_uid.contains_key(r.uid.as_str()))
        .cloned()
        .collect();
    (added, removed, changed)
}

impl Graph {
    /// The node with `uid`.
    pub fn get(&self, uid: &str) -> Option<&Node> {
        self.nodes.get(uid)
    }

    /// How many nodes (virtual ones included) the graph holds.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the graph is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The dependents of `uid` that block its deletion (upstream's `blockingDependents`).
    pub fn blocking_dependents(&self, uid: &str) -> Vec<&Node> {
        let Some(n) = self.nodes.get(uid) else {
            return Vec::new();
        };
        n.dependents
            .iter()
            .filter_map(|d| self.nodes.get(d))
            .filter(|d| d.owners.iter().any(|o| o.uid == uid && blocks(o)))
            .collect()
    }

    /// The dependents of `uid`.
    pub fn dependents(&self, uid: &str) -> Vec<&Node> {
        self.nodes
            .get(uid)
            .map(|n| {
                n.dependents
                    .iter()
                    .filter_map(|d| self.nodes.get(d))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Applies one change (upstream's `processGraphChanges`).
    pub fn process(&mut self, event: &GraphEvent) -> Vec<Effect> {
        let mut fx = Vec::new();
        let uid = event.meta.uid.clone().unwrap_or_default();
        if uid.is_empty() {
            return fx;
        }
        let found = self.nodes.contains_key(&uid);

        // An observed object replaces a virtual node made from owner references: if those
        // references named other coordinates, the dependents holding them need a look.
        if found
            && !event.virtual_
            && let Some(existing) = self.nodes.get(&uid)
            && existing.virtual_
        {
            let observed = event.identity();
            if observed != existing.identity {
                let deps: Vec<Node> = existing
                    .dependents
                    .iter()
                    .filter_map(|d| self.nodes.get(d).cloned())
                    .collect();
                let (_, potentially_invalid) = partition_dependents(&deps, &observed);
                for dep in potentially_invalid {
                    if !observed.namespace.is_empty()
                        && dep.identity.namespace != observed.namespace
                    {
                        fx.extend(invalid_namespace_ref(dep, &observed.uid));
                    }
                    fx.push(Effect::AttemptToDelete(dep.identity.uid.clone()));
                }
            }
            if let Some(existing) = self.nodes.get_mut(&uid) {
                existing.identity = observed;
                existing.virtual_ = false;
            }
        }

        match event.event_type {
            EventType::Add | EventType::Update if !found => {
                let owners = event.meta.owner_references.clone().unwrap_or_default();
                let node = Node {
                    identity: event.identity(),
                    dependents: BTreeSet::new(),
                    deleting_dependents: being_deleted(&event.meta)
                        && has_finalizer(&event.meta, FINALIZER_DELETE_DEPENDENTS),
                    being_deleted: being_deleted(&event.meta),
                    virtual_: false,
                    owners: owners.clone(),
                };
                self.nodes.insert(uid.clone(), node);
                self.add_dependent_to_owners(&uid, &owners, &mut fx);
                self.process_transitions(event, &uid, &mut fx);
            }
            EventType::Add | EventType::Update => {
                let new_owners = event.meta.owner_references.clone().unwrap_or_default();
                let old_owners = self
                    .nodes
                    .get(&uid)
                    .map(|n| n.owners.clone())
                    .unwrap_or_default();
                let (added, removed, changed) = references_diffs(&old_owners, &new_owners);
                if !added.is_empty() || !removed.is_empty() || !changed.is_empty() {
                    // Owners the dependent stopped blocking may be waiting on it.
                    for r in &removed {
                        if blocks(r) && self.nodes.contains_key(&r.uid) {
                            fx.push(Effect::AttemptToDelete(r.uid.clone()));
                        }
                    }
                    for (o, n) in &changed {
                        if blocks(o) && !blocks(n) && self.nodes.contains_key(&n.uid) {
                            fx.push(Effect::AttemptToDelete(n.uid.clone()));
                        }
                    }
                    if let Some(node) = self.nodes.get_mut(&uid) {
                        node.owners = new_owners;
                    }
                    self.add_dependent_to_owners(&uid, &added, &mut fx);
                    self.remove_dependent_from_owners(&uid, &removed);
                }
                if being_deleted(&event.meta)
                    && let Some(node) = self.nodes.get_mut(&uid)
                {
                    node.being_deleted = true;
                }
                self.process_transitions(event, &uid, &mut fx);
            }
            EventType::Delete => {
                if found {
                    self.process_delete(event, &uid, &mut fx);
                }
            }
        }
        fx
    }

    fn process_delete(&mut self, event: &GraphEvent, uid: &str, fx: &mut Vec<Effect>) {
        let Some(existing) = self.nodes.get(uid).cloned() else {
            return;
        };
        let mut remove = true;
        if event.virtual_ {
            let deleted = event.identity();
            let deps: Vec<Node> = existing
                .dependents
                .iter()
                .filter_map(|d| self.nodes.get(d).cloned())
                .collect();
            if existing.virtual_ {
                // The owner was verified absent at `deleted`'s coordinates; dependents that
                // name it by other coordinates (another namespace, kind...) keep the node.
                let (matching, nonmatching) = partition_dependents(&deps, &deleted);
                if !nonmatching.is_empty() {
                    remove = false;
                    if !matching.is_empty() {
                        self.absent_owners.add(deleted.clone());
                        for d in &matching {
                            fx.push(Effect::AttemptToDelete(d.identity.uid.clone()));
                        }
                    }
                    if existing.identity == deleted
                        && let Some(alt) = alternate_owner_identity(&nonmatching, &deleted)
                    {
                        if let Some(n) = self.nodes.get_mut(uid) {
                            n.identity = alt;
                        }
                        fx.push(Effect::AttemptToDeleteRateLimited(uid.to_string()));
                    }
                }
            } else if existing.identity != deleted {
                // The real object exists with other coordinates: only the dependents that
                // named the absent coordinates lose their owner.
                remove = false;
                let (matching, _) = partition_dependents(&deps, &deleted);
                if !matching.is_empty() {
                    self.absent_owners.add(deleted.clone());
                    for d in &matching {
                        fx.push(Effect::AttemptToDelete(d.identity.uid.clone()));
                    }
                }
            }
        }
        if remove {
            self.nodes.remove(uid);
            self.remove_dependent_from_owners(uid, &existing.owners);
            if !existing.dependents.is_empty() {
                self.absent_owners.add(event.identity());
            }
            for d in &existing.dependents {
                fx.push(Effect::AttemptToDelete(d.clone()));
            }
            // An owner deleting its dependents in the foreground may now be unblocked.
            for o in &existing.owners {
                if self
                    .nodes
                    .get(&o.uid)
                    .is_some_and(|owner| owner.deleting_dependents)
                {
                    fx.push(Effect::AttemptToDelete(o.uid.clone()));
                }
            }
        }
    }

    /// upstream's `processTransitions`.
    fn process_transitions(&mut self, event: &GraphEvent, uid: &str, fx: &mut Vec<Effect>) {
        let old = event.old.as_ref();
        if deletion_starts_with_finalizer(old, &event.meta, FINALIZER_ORPHAN_DEPENDENTS) {
            fx.push(Effect::AttemptToOrphan(uid.to_string()));
            return;
        }
        if deletion_starts_with_finalizer(old, &event.meta, FINALIZER_DELETE_DEPENDENTS)
            && let Some(n) = self.nodes.get_mut(uid)
        {
            n.deleting_dependents = true;
            for d in &n.dependents {
                fx.push(Effect::AttemptToDelete(d.clone()));
            }
            fx.push(Effect::AttemptToDelete(uid.to_string()));
        }
    }

    /// upstream's `addDependentToOwners`: links `uid` under each owner, making virtual
    /// owners for unknown uids, and flags references that may be invalid.
    fn add_dependent_to_owners(
        &mut self,
        uid: &str,
        owners: &[OwnerReference],
        fx: &mut Vec<Effect>,
    ) {
        let Some(dep) = self.nodes.get(uid).cloned() else {
            return;
        };
        let mut potentially_invalid = false;
        for owner in owners {
            match self.nodes.get_mut(&owner.uid) {
                None => {
                    let mut n = Node {
                        identity: Identity::of_owner_ref(owner, &dep.identity.namespace),
                        virtual_: true,
                        ..Node::default()
                    };
                    n.dependents.insert(uid.to_string());
                    self.nodes.insert(owner.uid.clone(), n);
                    // Verify the owner exists.
                    fx.push(Effect::AttemptToDelete(owner.uid.clone()));
                }
                Some(owner_node) => {
                    owner_node.dependents.insert(uid.to_string());
                    if potentially_invalid {
                        continue;
                    }
                    let owner_ns = &owner_node.identity.namespace;
                    let observed = !owner_node.virtual_;
                    if !owner_ns.is_empty() && *owner_ns != dep.identity.namespace {
                        // A namespaced owner in another namespace cannot own this object.
                        if observed {
                            fx.extend(invalid_namespace_ref(&dep, &owner.uid));
                        }
                        potentially_invalid = true;
                    } else if !owner_node.identity.matches_ref(owner) {
                        potentially_invalid = true;
                    } else if owner_ns.is_empty()
                        && *owner_ns != dep.identity.namespace
                        && !observed
                    {
                        // A virtual cluster-scoped owner seen from a namespaced dependent:
                        // it may really be namespaced elsewhere.
                        potentially_invalid = true;
                    }
                }
            }
        }
        if potentially_invalid {
            fx.push(Effect::AttemptToDelete(uid.to_string()));
        }
    }

    fn remove_dependent_from_owners(&mut self, uid: &str, owners: &[OwnerReference]) {
        for o in owners {
            if let Some(n) = self.nodes.get_mut(&o.uid) {
                n.dependents.remove(uid);
            }
        }
    }
}

/// The event upstream's `reportInvalidNamespaceOwnerRef` emits, if `dep` still has the
/// reference.
fn invalid_namespace_ref(dep: &Node, owner_uid: &str) -> Option<Effect> {
    let r = dep.owners.iter().find(|o| o.uid == owner_uid)?;
    Some(Effect::InvalidNamespaceOwnerRef {
        dependent: Box::new(dep.identity.clone()),
        owner: Box::new(Identity::of_owner_ref(r, &dep.identity.namespace)),
    })
}

/// upstream's `partitionDependents`: the dependents whose reference to the owner's uid
/// matches `owner`'s coordinates, and those that don't (a dependent may be in both).
fn partition_dependents<'a>(deps: &'a [Node], owner: &Identity) -> (Vec<&'a Node>, Vec<&'a Node>) {
    let namespaced = !owner.namespace.is_empty();
    let (mut matching, mut nonmatching) = (Vec::new(), Vec::new());
    for dep in deps {
        let (mut found_match, mut found_mismatch) = (false, false);
        if namespaced && owner.namespace != dep.identity.namespace {
            found_mismatch = true;
        } else {
            for r in dep.owners.iter().filter(|r| r.uid == owner.uid) {
                if owner.matches_ref(r) {
                    found_match = true;
                } else {
                    found_mismatch = true;
                }
            }
        }
        if found_match {
            matching.push(dep);
        }
        if found_mismatch {
            nonmatching.push(dep);
        }
    }
    (matching, nonmatching)
}

/// upstream's `getAlternateOwnerIdentity`: the next coordinates (in a stable order) that
/// dependents use for the same uid, to verify after `absent` was found absent.
fn alternate_owner_identity(deps: &[&Node], absent: &Identity) -> Option<Identity> {
    let cluster_scoped = absent.namespace.is_empty();
    let mut seen: HashSet<Identity> = HashSet::from([absent.clone()]);
    let (mut first, mut first_following): (Option<Identity>, Option<Identity>) = (None, None);
    for dep in deps {
        for r in dep.owners.iter().filter(|r| r.uid == absent.uid) {
            if absent.matches_ref(r)
                && (cluster_scoped || absent.namespace == dep.identity.namespace)
            {
                continue;
            }
            let mut candidate = Identity::of_owner_ref(r, &dep.identity.namespace);
            if cluster_scoped
                && candidate.api_version == absent.api_version
                && candidate.kind == absent.kind
            {
                candidate.namespace.clear();
            }
            if !seen.insert(candidate.clone()) {
                continue;
            }
            if first.as_ref().is_none_or(|f| candidate.less_than(f)) {
                first = Some(candidate.clone());
            }
            if absent.less_than(&candidate)
                && first_following
                    .as_ref()
                    .is_none_or(|f| candidate.less_than(f))
            {
                first_following = Some(candidate);
            }
        }
    }
    first_following.or(first)
}

/// The absent-owner cache keys `isDangling` consults for a reference from a dependent in
/// `namespace`: cluster-wide first, then in the dependent's namespace.
pub fn absent_keys(r: &OwnerReference, namespace: &str) -> [Identity; 2] {
    let namespaced = Identity::of_owner_ref(r, namespace);
    [namespaced.without_namespace(), namespaced]
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn oref(kind: &str, name: &str, uid: &str, block: bool) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            block_owner_deletion: block.then_some(true),
            controller: None,
        }
    }

    fn meta(ns: &str, name: &str, uid: &str, owners: Vec<OwnerReference>) -> ObjectMeta {
        ObjectMeta {
            namespace: (!ns.is_empty()).then(|| ns.to_string()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            owner_references: (!owners.is_empty()).then_some(owners),
            ..ObjectMeta::default()
        }
    }

    /// ConfigMap `ns/child` (uid c1) owned by `ns/parent` (uid p1).
    fn child(block_owner_deletion: bool) -> ObjectMeta {
        meta(
            "ns",
            "child",
            "c1",
            vec![oref("ConfigMap", "parent", "p1", block_owner_deletion)],
        )
    }

    fn ev(t: EventType, m: ObjectMeta) -> GraphEvent {
        GraphEvent {
            event_type: t,
            virtual_: false,
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            meta: m,
            old: None,
        }
    }

    #[test]
    fn dependent_before_owner_makes_a_virtual_owner() {
        let mut g = Graph::default();
        let fx = g.process(&ev(EventType::Add, child(false)));
        assert_eq!(fx, vec![Effect::AttemptToDelete("p1".into())]);
        let owner = g.get("p1").expect("virtual owner");
        assert!(owner.virtual_);
        assert_eq!(owner.identity.namespace, "ns");
        assert!(owner.dependents.contains("c1"));

        // The owner is observed: the node becomes real, no effects.
        let fx = g.process(&ev(EventType::Add, meta("ns", "parent", "p1", vec![])));
        assert!(fx.is_empty(), "{fx:?}");
        assert!(!g.get("p1").expect("owner").virtual_);
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn deleting_the_owner_queues_dependents_and_remembers_absence() {
        let mut g = Graph::default();
        g.process(&ev(EventType::Add, meta("ns", "parent", "p1", vec![])));
        g.process(&ev(EventType::Add, child(false)));
        let fx = g.process(&ev(EventType::Delete, meta("ns", "parent", "p1", vec![])));
        assert_eq!(fx, vec![Effect::AttemptToDelete("c1".into())]);
        assert!(g.get("p1").is_none());
        let r = oref("ConfigMap", "parent", "p1", false);
        let [_, namespaced] = absent_keys(&r, "ns");
        assert!(g.absent_owners.has(&namespaced));
        // The child is removed too; the owner link goes with it.
        g.process(&ev(EventType::Delete, child(false)));
        assert!(g.is_empty());
    }

    #[test]
    fn foreground_deletion_marks_and_queues() {
        let mut g = Graph::default();
        g.process(&ev(EventType::Add, meta("ns", "parent", "p1", vec![])));
        g.process(&ev(EventType::Add, child(true)));
        let mut m = meta("ns", "parent", "p1", vec![]);
        m.deletion_timestamp = Some(Time(Timestamp::now()));
        m.finalizers = Some(vec![FINALIZER_DELETE_DEPENDENTS.into()]);
        let mut e = ev(EventType::Update, m);
        e.old = Some(meta("ns", "parent", "p1", vec![]));
        let fx = g.process(&e);
        assert_eq!(
            fx,
            vec![
                Effect::AttemptToDelete("c1".into()),
                Effect::AttemptToDelete("p1".into())
            ]
        );
        assert!(g.get("p1").expect("owner").deleting_dependents);
        assert_eq!(g.blocking_dependents("p1").len(), 1);
        // The dependent goes: the owner is looked at again.
        let fx = g.process(&ev(EventType::Delete, child(true)));
        assert_eq!(fx, vec![Effect::AttemptToDelete("p1".into())]);
        assert!(g.blocking_dependents("p1").is_empty());
    }

    #[test]
    fn orphan_finalizer_queues_orphaning_once() {
        let mut g = Graph::default();
        let mut m = meta("ns", "parent", "p1", vec![]);
        m.deletion_timestamp = Some(Time(Timestamp::now()));
        m.finalizers = Some(vec![FINALIZER_ORPHAN_DEPENDENTS.into()]);
        let fx = g.process(&ev(EventType::Add, m.clone()));
        assert_eq!(fx, vec![Effect::AttemptToOrphan("p1".into())]);
        // Already deleting with the finalizer before: not a transition.
        let mut e = ev(EventType::Update, m.clone());
        e.old = Some(m);
        assert!(g.process(&e).is_empty());
    }

    #[test]
    fn unblocking_a_reference_requeues_the_owner() {
        let mut g = Graph::default();
        g.process(&ev(EventType::Add, meta("ns", "parent", "p1", vec![])));
        g.process(&ev(EventType::Add, child(true)));
        let fx = g.process(&ev(EventType::Update, child(false)));
        assert_eq!(fx, vec![Effect::AttemptToDelete("p1".into())]);
        // Dropping the reference unlinks the dependent.
        let fx = g.process(&ev(EventType::Update, meta("ns", "child", "c1", vec![])));
        assert!(fx.is_empty());
        assert!(g.dependents("p1").is_empty());
    }

    #[test]
    fn cross_namespace_owner_reference_is_reported() {
        let mut g = Graph::default();
        g.process(&ev(EventType::Add, meta("a", "parent", "p1", vec![])));
        let fx = g.process(&ev(
            EventType::Add,
            meta(
                "b",
                "child",
                "c1",
                vec![oref("ConfigMap", "parent", "p1", false)],
            ),
        ));
        assert_eq!(
            fx,
            vec![
                Effect::InvalidNamespaceOwnerRef {
                    dependent: Box::new(Identity {
                        api_version: "v1".into(),
                        kind: "ConfigMap".into(),
                        namespace: "b".into(),
                        name: "child".into(),
                        uid: "c1".into(),
                    }),
                    owner: Box::new(Identity {
                        api_version: "v1".into(),
                        kind: "ConfigMap".into(),
                        namespace: "b".into(),
                        name: "parent".into(),
                        uid: "p1".into(),
                    }),
                },
                Effect::AttemptToDelete("c1".into()),
            ]
        );
    }

    #[test]
    fn observing_the_owner_elsewhere_reports_dependents_of_the_virtual_node() {
        let mut g = Graph::default();
        // Dependent first: virtual owner assumed in namespace b.
        g.process(&ev(
            EventType::Add,
            meta(
                "b",
                "child",
                "c1",
                vec![oref("ConfigMap", "parent", "p1", false)],
            ),
        ));
        // The real owner lives in namespace a.
        let fx = g.process(&ev(EventType::Add, meta("a", "parent", "p1", vec![])));
        assert!(matches!(
            fx.first(),
            Some(Effect::InvalidNamespaceOwnerRef { .. })
        ));
        assert!(fx.contains(&Effect::AttemptToDelete("c1".into())));
        assert_eq!(g.get("p1").expect("owner").identity.namespace, "a");
    }

    #[test]
    fn virtual_delete_of_an_observed_node_with_other_coordinates_keeps_it() {
        let mut g = Graph::default();
        g.process(&ev(EventType::Add, meta("ns", "parent", "p1", vec![])));
        // A dependent names the right uid but the wrong name.
        g.process(&ev(
            EventType::Add,
            meta(
                "ns",
                "child",
                "c1",
                vec![oref("ConfigMap", "wrong", "p1", false)],
            ),
        ));
        let absent = Identity {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: "ns".into(),
            name: "wrong".into(),
            uid: "p1".into(),
        };
        let fx = g.process(&GraphEvent::virtual_delete(&absent));
        assert_eq!(fx, vec![Effect::AttemptToDelete("c1".into())]);
        assert!(g.get("p1").is_some(), "the real owner stays");
        assert!(g.absent_owners.has(&absent));
    }

    #[test]
    fn virtual_delete_of_a_virtual_node_tries_alternates() {
        let mut g = Graph::default();
        g.process(&ev(
            EventType::Add,
            meta(
                "a",
                "c1",
                "c1",
                vec![oref("ConfigMap", "parent", "p1", false)],
            ),
        ));
        g.process(&ev(
            EventType::Add,
            meta(
                "b",
                "c2",
                "c2",
                vec![oref("ConfigMap", "parent", "p1", false)],
            ),
        ));
        let node = g.get("p1").expect("virtual").identity.clone();
        assert_eq!(node.namespace, "a");
        let fx = g.process(&GraphEvent::virtual_delete(&node));
        assert_eq!(
            fx,
            vec![
                Effect::AttemptToDelete("c1".into()),
                Effect::AttemptToDeleteRateLimited("p1".into())
            ]
        );
        assert_eq!(g.get("p1").expect("kept").identity.namespace, "b");
        // c1 is collected; then the owner is verified absent in b too: the node goes.
        g.process(&ev(
            EventType::Delete,
            meta(
                "a",
                "c1",
                "c1",
                vec![oref("ConfigMap", "parent", "p1", false)],
            ),
        ));
        let node = g.get("p1").expect("virtual").identity.clone();
        let fx = g.process(&GraphEvent::virtual_delete(&node));
        assert!(fx.contains(&Effect::AttemptToDelete("c2".into())));
        assert!(g.get("p1").is_none());
    }

    #[test]
    fn reference_cache_evicts_least_recently_used() {
        let mut c = ReferenceCache::new(2);
        let id = |u: &str| Identity {
            uid: u.into(),
            ..Identity::default()
        };
        c.add(id("a"));
        c.add(id("b"));
        assert!(c.has(&id("a")));
        c.add(id("c"));
        assert!(c.has(&id("a")));
        assert!(!c.has(&id("b")));
        assert!(c.has(&id("c")));
    }

    #[test]
    fn identity_display_is_upstreams() {
        let id = Identity {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: "ns".into(),
            name: "x".into(),
            uid: "u".into(),
        };
        assert_eq!(
            id.to_string(),
            "[v1/ConfigMap, namespace: ns, name: x, uid: u]"
        );
    }
}
