//! An events.k8s.io/v1 recorder with client-go's aggregation of repeats
//! (`k8s.io/client-go/tools/events`).
//!
//! Controllers call [`Recorder::publish`], which never waits on the apiserver: events go
//! through a bounded channel to one sink task per process. As upstream's broadcaster (a
//! queue of 1000, `DropIfChannelFull`), an event that finds the queue full is dropped: under
//! a burst (a scheduler binding thousands of pods a second) events are best-effort and must
//! neither hold memory without bound nor compete with the writes that matter. The sink
//! writes one event at a time and keeps each for six minutes, keyed by (regarding,
//! related, action, reason, note, reporter):
//!
//! - the first occurrence is created;
//! - the second turns it into a series (`series.count = 2`) and is patched at once;
//! - later repeats only bump the count in memory, and every 30 s the sink patches the
//!   series whose count moved, so a hot loop costs one write per 30 s, not one per repeat;
//! - a series not seen for six minutes is dropped from memory (a later repeat starts over).
//!
//! A recorder can also carry the spam filter of client-go's older `record` package
//! ([`Recorder::with_spam_filter`]), which upstream's controller-manager and kubelet report
//! through: each object gets a burst of 25 events, then one per five minutes. Without it a
//! ReplicaSet scaled to 5000 would write 5000 `SuccessfulCreate` events, each spending the
//! controller's request budget.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::Request;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ratelimit::TokenBucket;

/// How long an event stays eligible for aggregation (client-go: 6 minutes).
const SERIES_TTL: Duration = Duration::from_secs(6 * 60);
/// How often ongoing series are written back (client-go: 30 s).
const SERIES_REFRESH: Duration = Duration::from_secs(30);
/// upstream's limit on `note` (1 KiB).
const MAX_NOTE: usize = 1024;
/// Events waiting for the sink; more are dropped (client-go `maxQueuedEvents`).
const MAX_QUEUED: usize = 1000;

/// The severity of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something happened as intended.
    Normal,
    /// Something went wrong and a user may need to act.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// One event to publish.
#[derive(Clone, Debug)]
pub struct EventRecord {
    /// The object the event is about.
    pub regarding: ObjectReference,
    /// A second object involved, if any.
    pub related: Option<ObjectReference>,
    /// Normal or Warning.
    pub type_: EventType,
    /// Upstream's machine-readable reason (`ScalingReplicaSet`, `FailedCreate`, ...).
    pub reason: String,
    /// What was done (`Scaling`, `Binding`, ...).
    pub action: String,
    /// The human-readable message.
    pub note: String,
}

/// A handle controllers publish events through. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Recorder {
    tx: mpsc::Sender<EventRecord>,
    spam: Option<Arc<SpamFilter>>,
}

/// client-go `record`'s spam filter: a token bucket per (regarding object, type); an event
/// finding its bucket empty is dropped.
#[derive(Debug)]
pub struct SpamFilter {
    qps: f64,
    burst: u32,
    state: Mutex<SpamState>,
}

#[derive(Debug, Default)]
struct SpamState {
    buckets: HashMap<SpamKey, (TokenBucket, Instant)>,
    /// The map size at which idle buckets are next swept (doubling, so sweeps stay rare).
    sweep_at: usize,
}

type SpamKey = ((String, String, String, String, String), EventType);

impl SpamFilter {
    /// client-go's defaults: a burst of 25, refilled at one per 300 s.
    pub fn legacy() -> Self {
        Self::new(1.0 / 300.0, 25)
    }

    /// A filter allowing `burst` events per object, refilled at `qps`.
    pub fn new(qps: f64, burst: u32) -> Self {
        Self {
            qps,
            burst,
            state: Mutex::new(SpamState {
                buckets: HashMap::new(),
                sweep_at: 1024,
            }),
        }
    }

    /// Whether `rec` may be written.
    fn allow(&self, rec: &EventRecord) -> bool {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // A bucket idle long enough to have refilled completely is the same as a new one;
        // forgetting those keeps the map as small as the set of recently noisy objects.
        if state.buckets.len() >= state.sweep_at {
            let full_after = Duration::from_secs_f64(f64::from(self.burst) / self.qps);
            state
                .buckets
                .retain(|_, (_, used)| now.duration_since(*used) < full_after);
            state.sweep_at = (state.buckets.len() * 2).max(1024);
        }
        let (bucket, used) = state
            .buckets
            .entry((ref_key(&rec.regarding), rec.type_))
            .or_insert_with(|| (TokenBucket::new(self.qps, self.burst), now));
        *used = now;
        bucket.try_take()
    }
}

impl Recorder {
    /// Publishes `type_`/`reason`/`note` about `regarding`. Never blocks; the write happens
    /// in the sink task.
    pub fn publish(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: impl Into<String>,
    ) {
        self.record(EventRecord {
            regarding,
            related: None,
            type_,
            reason: reason.to_string(),
            action: action.to_string(),
            note: note.into(),
        });
    }

    /// Publishes a full record (with a related object).
    pub fn record(&self, record: EventRecord) {
        if let Some(spam) = &self.spam
            && !spam.allow(&record)
        {
            // client-go's spam filter drops silently. At the default -v=2 (our debug level)
            // a line per drop was a log write per pod of a scale to thousands, 3% of the
            // controller-manager's CPU: trace only.
            tracing::trace!(reason = %record.reason, note = %record.note, "event dropped by the spam filter");
            return;
        }
        // A full queue means the sink is behind (upstream drops then too); a closed one
        // means shutdown, when losing an event is acceptable.
        if let Err(e) = self.tx.try_send(record) {
            let record = e.into_inner();
            tracing::debug!(reason = %record.reason, note = %record.note, "event dropped: the event queue is full");
        }
    }

    /// This recorder with `filter` in front (shared by its clones).
    pub fn with_spam_filter(self, filter: SpamFilter) -> Self {
        Self {
            tx: self.tx,
            spam: Some(Arc::new(filter)),
        }
    }
}

/// The reference to `obj` that events use as `regarding`.
pub fn reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    obj.object_ref(&())
}

/// Who reports: `reportingController` and `reportingInstance`.
#[derive(Clone, Debug)]
pub struct Reporter {
    /// e.g. `deployment-controller`, `default-scheduler`.
    pub controller: String,
    /// e.g. `deployment-controller-<hostname>` (upstream's shape).
    pub instance: String,
}

/// The identity (`reason`, `note`, ...) under which repeats are aggregated, as one string:
/// each field length-prefixed, so that no two identities encode alike. The sink keeps one
/// per event written for six minutes; a scheduler binding 10000 pods keeps 10000, and as
/// separate `String`s (ten of them with the reference fields) the keys were most of the
/// sink's memory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key(Box<str>);

impl Key {
    fn of(rec: &EventRecord) -> Self {
        let mut k = String::new();
        push_reference(&mut k, Some(&rec.regarding));
        push_reference(&mut k, rec.related.as_ref());
        for f in [&rec.action, &rec.reason, &rec.note] {
            push_field(&mut k, f);
        }
        push_field(&mut k, rec.type_.as_str());
        Self(k.into_boxed_str())
    }
}

fn push_field(k: &mut String, f: &str) {
    k.push_str(&f.len().to_string());
    k.push(':');
    k.push_str(f);
}

fn push_reference(k: &mut String, r: Option<&ObjectReference>) {
    let Some(r) = r else {
        push_field(k, "-");
        return;
    };
    push_field(k, "+");
    for f in [&r.api_version, &r.kind, &r.namespace, &r.name, &r.uid] {
        push_field(k, f.as_deref().unwrap_or_default());
    }
}

fn ref_key(r: &ObjectReference) -> (String, String, String, String, String) {
    (
        r.api_version.clone().unwrap_or_default(),
        r.kind.clone().unwrap_or_default(),
        r.namespace.clone().unwrap_or_default(),
        r.name.clone().unwrap_or_default(),
        r.uid.clone().unwrap_or_default(),
    )
}

/// An event already written: only what a series patch needs (not the whole Event, since a
/// controller touching thousands of objects keeps thousands of these for six minutes).
#[derive(Clone)]
struct Written {
    namespace: Box<str>,
    name: Box<str>,
    series: Option<EventSeries>,
}

struct Cached {
    event: Written,
    last_seen: Instant,
    /// The series count moved since it was last written.
    dirty: bool,
}

/// Starts the sink task and returns the recorder handle. The task ends on `shutdown`
/// after writing what is pending.
pub fn start(
    client: Client,
    reporter: Reporter,
    shutdown: CancellationToken,
) -> (Recorder, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(MAX_QUEUED);
    let sink = Sink {
        client,
        reporter,
        cache: HashMap::new(),
    };
    let task = tokio::spawn(sink.run(rx, shutdown));
    (Recorder { tx, spam: None }, task)
}

struct Sink {
    client: Client,
    reporter: Reporter,
    cache: HashMap<Key, Cached>,
}

impl Sink {
    async fn run(mut self, mut rx: mpsc::Receiver<EventRecord>, shutdown: CancellationToken) {
        let mut refresh = tokio::time::interval(SERIES_REFRESH);
        refresh.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = refresh.tick() => self.refresh().await,
                rec = rx.recv() => match rec {
                    Some(rec) => self.handle(rec).await,
                    None => break,
                },
            }
        }
        // Write what already arrived, then the last series counts.
        while let Ok(rec) = rx.try_recv() {
            self.handle(rec).await;
        }
        self.refresh().await;
    }

    async fn handle(&mut self, rec: EventRecord) {
        let now = Instant::now();
        let key = Key::of(&rec);
        if let Some(cached) = self.cache.get_mut(&key)
            && now.duration_since(cached.last_seen) < SERIES_TTL
        {
            cached.last_seen = now;
            let first_repeat = cached.event.series.is_none();
            let count = cached.event.series.as_ref().map_or(1, |s| s.count) + 1;
            cached.event.series = Some(EventSeries {
                count,
                last_observed_time: MicroTime(Timestamp::now()),
            });
            if first_repeat {
                let ev = cached.event.clone();
                cached.dirty = false;
                self.patch_series(&ev).await;
            } else {
                cached.dirty = true;
            }
            return;
        }
        let event = self.build(&rec);
        if self.create(&event).await {
            self.cache.insert(
                key,
                Cached {
                    event: Written {
                        namespace: event.namespace().unwrap_or_default().into(),
                        name: event.name_any().into(),
                        series: None,
                    },
                    last_seen: now,
                    dirty: false,
                },
            );
        }
    }

    fn build(&self, rec: &EventRecord) -> Event {
        let now = Timestamp::now();
        let name = rec.regarding.name.clone().unwrap_or_else(|| "event".into());
        // Cluster-scoped objects' events live in `default`, as upstream puts them.
        let namespace = rec
            .regarding
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let mut note = rec.note.clone();
        if note.len() > MAX_NOTE {
            let mut cut = MAX_NOTE;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            regarding: Some(rec.regarding.clone()),
            related: rec.related.clone(),
            type_: Some(rec.type_.as_str().to_string()),
            reason: Some(rec.reason.clone()),
            action: Some(rec.action.clone()),
            note: Some(note),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(self.reporter.instance.clone()),
            ..Default::default()
        }
    }

    async fn create(&self, event: &Event) -> bool {
        let body = match serde_json::to_vec(event) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(reason = ?event.reason, error = %e, "event not encodable");
                return false;
            }
        };
        let url = Event::url_path(&(), event.namespace().as_deref());
        // A few quick retries: the apiserver may be briefly away; events are best-effort.
        for attempt in 0..3u32 {
            let written = match Request::new(&url).create(&PostParams::default(), body.clone()) {
                Ok(req) => discard_body(&self.client, req).await,
                Err(e) => Err(kube::Error::BuildRequest(e)),
            };
            match written {
                Ok(()) => return true,
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 || s.code == 403 => {
                    tracing::warn!(reason = ?event.reason, error = %s.message, "event rejected");
                    return false;
                }
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "event create failed");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
                }
            }
        }
        false
    }

    async fn patch_series(&self, event: &Written) {
        let patch = Patch::Merge(serde_json::json!({ "series": event.series }));
        let written = match Request::new(Event::url_path(&(), Some(&event.namespace))).patch(
            &event.name,
            &PatchParams::default(),
            &patch,
        ) {
            Ok(req) => discard_body(&self.client, req).await,
            Err(e) => Err(kube::Error::BuildRequest(e)),
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "event series patch failed");
        }
    }

    /// Writes the counts of series that moved and forgets those idle past the TTL.
    async fn refresh(&mut self) {
        let now = Instant::now();
        let mut to_write = Vec::new();
        self.cache.retain(|_, c| {
            if c.dirty {
                to_write.push(c.event.clone());
                c.dirty = false;
            }
            now.duration_since(c.last_seen) < SERIES_TTL
        });
        for ev in to_write {
            self.patch_series(&ev).await;
        }
    }
}

/// Sends `req` and reads the answer without decoding it: nothing reads the Event the
/// apiserver returns, and parsing one per scheduled pod was a visible share of the
/// scheduler's CPU. Failures still come back as `kube::Error::Api` with the Status.
async fn discard_body(client: &Client, req: http::Request<Vec<u8>>) -> kube::Result<()> {
    client.request_text(req).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, type_: EventType) -> EventRecord {
        EventRecord {
            regarding: ObjectReference {
                api_version: Some("apps/v1".into()),
                kind: Some("ReplicaSet".into()),
                namespace: Some("default".into()),
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            related: None,
            type_,
            reason: "SuccessfulCreate".into(),
            action: String::new(),
            note: format!("Created pod: {name}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn spam_filter_allows_a_burst_per_object_then_one_per_five_minutes() {
        let f = SpamFilter::legacy();
        let allowed = (0..100)
            .filter(|_| f.allow(&rec("a", EventType::Normal)))
            .count();
        assert_eq!(allowed, 25);
        // Other objects, and the other type on the same object, have their own buckets.
        assert!(f.allow(&rec("b", EventType::Normal)));
        assert!(f.allow(&rec("a", EventType::Warning)));
        tokio::time::advance(Duration::from_secs(299)).await;
        assert!(!f.allow(&rec("a", EventType::Normal)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(f.allow(&rec("a", EventType::Normal)));
        assert!(!f.allow(&rec("a", EventType::Normal)));
    }

    #[test]
    fn keys_tell_fields_apart() {
        let a = rec("a", EventType::Normal);
        assert_eq!(Key::of(&a), Key::of(&a.clone()));
        // The same characters split differently between two fields are another identity.
        let mut b = a.clone();
        b.reason = "SuccessfulCreat".into();
        b.note = format!("e{}", a.note);
        assert_ne!(Key::of(&a), Key::of(&b));
        let mut related = a.clone();
        related.related = Some(a.regarding.clone());
        assert_ne!(Key::of(&a), Key::of(&related));
        assert_ne!(Key::of(&a), Key::of(&rec("a", EventType::Warning)));
    }

    #[tokio::test]
    async fn a_full_queue_drops_events_instead_of_growing() {
        let (tx, mut rx) = mpsc::channel(MAX_QUEUED);
        let recorder = Recorder { tx, spam: None };
        for i in 0..MAX_QUEUED + 10 {
            recorder.record(rec(&format!("o{i}"), EventType::Normal));
        }
        assert_eq!(rx.len(), MAX_QUEUED);
        // The oldest are kept; the newest, finding the queue full, were dropped.
        let first = rx.recv().await.and_then(|r| r.regarding.name);
        assert_eq!(first.as_deref(), Some("o0"));
        recorder.record(rec("later", EventType::Normal));
        assert_eq!(rx.len(), MAX_QUEUED);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_full_buckets_are_forgotten() {
        let f = SpamFilter::legacy();
        for i in 0..1024 {
            assert!(f.allow(&rec(&format!("o{i}"), EventType::Normal)));
        }
        tokio::time::advance(Duration::from_secs(25 * 300)).await;
        assert!(f.allow(&rec("new", EventType::Normal)));
        let state = f.state.lock().unwrap();
        assert_eq!(state.buckets.len(), 1);
    }
}
