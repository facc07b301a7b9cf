//! `node-ipam-controller` (alias `nodeipam`): with `--allocate-node-cidrs`, each node gets a
//! Pod range (`spec.podCIDR` / `spec.podCIDRs`) cut from `--cluster-cidr` in blocks of
//! `--node-cidr-mask-size` (upstream's RangeAllocator, IPv4).
//!
//! Allocation is serialized through one worker; ranges already on nodes are marked taken
//! before the first allocation, ranges overlapping `--service-cluster-ip-range` are never
//! handed out, and a deleted node's range is released.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};

use ferrokube_runtime::apierrors;
use ferrokube_runtime::controller::{Action, Workers, enqueue_from};
use ferrokube_runtime::events::{EventType, Recorder, reference};
use ferrokube_runtime::informer::{Notification, Store};
use ferrokube_runtime::workqueue::WorkQueue;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use tokio::task::JoinSet;

use super::StartError;
use crate::context::Context;

const NAME: &str = "node-ipam-controller";

/// An IPv4 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// The network address (host bits zero).
    pub addr: u32,
    /// The prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`; host bits must be zero, as the apiserver validates.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ip, prefix) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (a.b.c.d/n)"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{s:?}: only IPv4 CIDRs are supported"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s:?}: invalid prefix length"))?;
        let addr = u32::from(ip);
        let cidr = Self {
            addr: addr & mask(prefix),
            prefix,
        };
        if cidr.addr != addr {
            return Err(format!("{s:?}: host bits are set"));
        }
        Ok(cidr)
    }

    fn last(&self) -> u32 {
        self.addr | !mask(self.prefix)
    }

    /// Whether the two networks share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.addr <= other.last() && other.addr <= self.last()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.addr), self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// The blocks of one cluster CIDR and which are taken (upstream's `CidrSet`).
#[derive(Debug)]
pub struct CidrSet {
    cluster: Cidr,
    block: u8,
    used: Vec<bool>,
    /// Round-robin start, so a released block is not reused at once.
    next: usize,
}

impl CidrSet {
    /// Splits `cluster` into `/block` ranges. Refuses more than 2^16 blocks (upstream's limit).
    pub fn new(cluster: Cidr, block: u8) -> Result<Self, String> {
        if block < cluster.prefix || block > 32 {
            return Err(format!(
                "--node-cidr-mask-size={block} must be between the cluster CIDR's prefix ({}) and 32",
                cluster.prefix
            ));
        }
        let bits = block - cluster.prefix;
        if bits > 16 {
            return Err(format!(
                "--cluster-cidr {cluster} split into /{block} gives 2^{bits} ranges; at most 2^16 are supported"
            ));
        }
        Ok(Self {
            cluster,
            block,
            used: vec![false; 1usize << bits],
            next: 0,
        })
    }

    fn index(&self, cidr: &Cidr) -> Option<usize> {
        if cidr.prefix != self.block || !self.cluster.overlaps(cidr) {
            return None;
        }
        usize::try_from((cidr.addr - self.cluster.addr) >> (32 - u32::from(self.block))).ok()
    }

    fn block_at(&self, i: usize) -> Cidr {
        let step = if self.block == 0 {
            0
        } else {
            1u64 << (32 - u32::from(self.block))
        };
        let offset = u32::try_from((i as u64) * step).unwrap_or(0);
        Cidr {
            addr: self.cluster.addr + offset,
            prefix: self.block,
        }
    }

    /// Marks `cidr` taken (a node already has it). Ranges outside the set are ignored.
    pub fn occupy(&mut self, cidr: &Cidr) {
        if let Some(i) = self.index(cidr) {
            self.used[i] = true;
        }
    }

    /// Marks every block overlapping `other` taken (the Service range).
    pub fn reserve_overlapping(&mut self, other: &Cidr) {
        for i in 0..self.used.len() {
            if self.block_at(i).overlaps(other) {
                self.used[i] = true;
            }
        }
    }

    /// Frees `cidr`.
    pub fn release(&mut self, cidr: &Cidr) {
        if let Some(i) = self.index(cidr) {
            self.used[i] = false;
        }
    }

    /// Takes the next free block, if any.
    pub fn allocate(&mut self) -> Option<Cidr> {
        let n = self.used.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if !self.used[i] {
                self.used[i] = true;
                self.next = (i + 1) % n;
                return Some(self.block_at(i));
            }
        }
        None
    }
}

/// Starts the controller (it only acts with `--allocate-node-cidrs`).
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) -> Result<(), StartError> {
    let o = &ctx.options;
    if !o.allocate_node_cidrs {
        tracing::info!("--allocate-node-cidrs is false; node-ipam-controller does nothing");
        return Ok(());
    }
    let err = |reason: String| StartError {
        controller: NAME,
        reason,
    };
    let cluster = o
        .cluster_cidr
        .as_deref()
        .ok_or_else(|| err("--allocate-node-cidrs needs --cluster-cidr".into()))?;
    // Dual-stack lists name the IPv4 range first; only it is allocated from.
    let cluster = Cidr::parse(cluster.split(',').next().unwrap_or_default()).map_err(err)?;
    let mut set = CidrSet::new(cluster, o.node_cidr_mask_size).map_err(err)?;
    if let Some(svc) = o.service_cluster_ip_range.as_deref() {
        for part in svc.split(',') {
            if let Ok(c) = Cidr::parse(part) {
                set.reserve_overlapping(&c);
            }
        }
    }

    let nodes = ctx.informers.informer::<Node>();
    let queue: WorkQueue<String> = WorkQueue::new("node_ipam_controller", &ctx.metrics);
    let allocator = Arc::new(Allocator {
        client: ctx.client.clone(),
        nodes: nodes.store(),
        recorder: ctx.recorder(NAME, tasks),
        set: Mutex::new(set),
        assigned: Mutex::new(HashMap::new()),
    });
    let releaser = allocator.clone();
    enqueue_from(
        tasks,
        nodes.subscribe(),
        queue.clone(),
        ctx.shutdown.clone(),
        move |n: &Notification<Node>| match n {
            Notification::Deleted(node) => {
                releaser.release(node);
                vec![]
            }
            n => n.object().metadata.name.clone().into_iter().collect(),
        },
    );
    let store = nodes.store();
    let occupier = allocator.clone();
    let ready = async move {
        store.wait_synced().await;
        // Everything already handed out is taken before anything new is allocated.
        for node in store.list() {
            occupier.occupy(&node);
        }
    };
    Workers::new(NAME, 1).spawn_when(
        tasks,
        ready,
        queue,
        ctx.shutdown.clone(),
        move |name: String| {
            let a = allocator.clone();
            async move { a.sync(&name).await }
        },
    );
    Ok(())
}

struct Allocator {
    client: kube::Client,
    nodes: Store<Node>,
    recorder: Recorder,
    set: Mutex<CidrSet>,
    /// node name -> the range we know it holds.
    assigned: Mutex<HashMap<String, Cidr>>,
}

fn pod_cidr(node: &Node) -> Option<Cidr> {
    node.spec
        .as_ref()?
        .pod_cidr
        .as_deref()
        .and_then(|c| Cidr::parse(c).ok())
}

impl Allocator {
    fn occupy(&self, node: &Node) {
        if let (Some(name), Some(cidr)) = (node.metadata.name.clone(), pod_cidr(node)) {
            self.set
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .occupy(&cidr);
            self.assigned
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(name, cidr);
        }
    }

    fn release(&self, node: &Node) {
        let Some(name) = node.metadata.name.as_deref() else {
            return;
        };
        let held = self
            .assigned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
            .or_else(|| pod_cidr(node));
        if let Some(cidr) = held {
            self.set
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .release(&cidr);
        }
    }

    async fn sync(&self, name: &str) -> Result<Action, AllocError> {
        let Some(node) = self.nodes.get("", name) else {
            return Ok(Action::Done);
        };
        if pod_cidr(&node).is_some() {
            self.occupy(&node);
            return Ok(Action::Done);
        }
        // Our patch may not have reached the cache yet.
        let pending = self
            .assigned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied();
        if let Some(cidr) = pending {
            return self.patch(&node, cidr).await;
        }
        let allocated = self
            .set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .allocate();
        let Some(cidr) = allocated else {
            self.recorder.publish(
                reference(node.as_ref()),
                EventType::Normal,
                "CIDRNotAvailable",
                "Allocating",
                format!("Node {name} status is now: CIDRNotAvailable"),
            );
            return Err(AllocError::Exhausted);
        };
        self.assigned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), cidr);
        self.patch(&node, cidr).await
    }

    async fn patch(&self, node: &Node, cidr: Cidr) -> Result<Action, AllocError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let api: Api<Node> = Api::all(self.client.clone());
        let text = cidr.to_string();
        let patch = serde_json::json!({ "spec": { "podCIDR": text, "podCIDRs": [text] } });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(node = %name, cidr = %text, "allocated pod CIDR");
                Ok(Action::Done)
            }
            Err(e) if apierrors::is_not_found(&e) => {
                self.release(node);
                Ok(Action::Done)
            }
            Err(e) => {
                // Keep the range reserved for this node: the retry patches the same one.
                Err(AllocError::Api(e))
            }
        }
    }
}

/// Why a node did not get a range this time.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// Every range is taken; retried with backoff (a node may be deleted meanwhile).
    #[error("no pod CIDR left in the cluster CIDR")]
    Exhausted,
    /// The patch failed.
    #[error(transparent)]
    Api(#[from] kube::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_overlap() {
        let c = Cidr::parse("198.18.0.0/16").expect("cidr");
        assert_eq!(c.to_string(), "198.18.0.0/16");
        assert!(Cidr::parse("198.18.0.1/16").is_err(), "host bits");
        assert!(Cidr::parse("fd00::/64").is_err(), "IPv6");
        assert!(Cidr::parse("10.0.0.0").is_err());
        assert!(c.overlaps(&Cidr::parse("198.18.5.0/24").expect("cidr")));
        assert!(!c.overlaps(&Cidr::parse("198.19.0.0/16").expect("cidr")));
    }

    #[test]
    fn allocation_is_round_robin_and_respects_reservations() {
        let mut set = CidrSet::new(Cidr::parse("10.0.0.0/22").expect("cidr"), 24).expect("set");
        set.occupy(&Cidr::parse("10.0.1.0/24").expect("cidr"));
        set.reserve_overlapping(&Cidr::parse("10.0.3.128/25").expect("cidr"));
        assert_eq!(
            set.allocate().map(|c| c.to_string()).as_deref(),
            Some("10.0.0.0/24")
        );
        assert_eq!(
            set.allocate().map(|c| c.to_string()).as_deref(),
            Some("10.0.2.0/24")
        );
        assert_eq!(
            set.allocate(),
            None,
            "10.0.1.0 taken, 10.0.3.0 overlaps the service range"
        );
        set.release(&Cidr::parse("10.0.0.0/24").expect("cidr"));
        assert_eq!(
            set.allocate().map(|c| c.to_string()).as_deref(),
            Some("10.0.0.0/24")
        );
    }

    #[test]
    fn refuses_bad_sizes() {
        let c = Cidr::parse("10.0.0.0/8").expect("cidr");
        assert!(CidrSet::new(c, 4).is_err());
        assert!(CidrSet::new(c, 30).is_err(), "2^22 ranges");
        assert!(CidrSet::new(c, 24).is_ok());
    }
}
