//! What every controller is started with.

use std::sync::Arc;

use ferrokube_runtime::events::{self, Recorder, Reporter};
use ferrokube_runtime::informer::InformerFactory;
use ferrokube_runtime::metrics::Metrics;
use kube::Client;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::options::Options;

/// Shared by the controllers of one leadership term.
#[derive(Clone)]
pub struct Context {
    /// The rate-limited client.
    pub client: Client,
    /// The process's shared informers; ask for them before they are started.
    pub informers: Arc<InformerFactory>,
    /// The process's metrics registry.
    pub metrics: Metrics,
    /// The flags.
    pub options: Arc<Options>,
    /// Cancelled when leadership or the process ends.
    pub shutdown: CancellationToken,
    /// The PEM CA bundle to publish as `kube-root-ca.crt`.
    pub root_ca: Option<Arc<String>>,
    /// This process's identity, for event reporting instances.
    pub identity: String,
}

impl Context {
    /// An event recorder reporting as `controller` (`deployment-controller`); its sink task
    /// joins `tasks` and flushes on shutdown.
    pub fn recorder(&self, controller: &str, tasks: &mut JoinSet<()>) -> Recorder {
        let host = self
            .identity
            .split('_')
            .next()
            .unwrap_or(&self.identity)
            .to_string();
        let (recorder, sink) = events::start(
            self.client.clone(),
            Reporter {
                controller: controller.to_string(),
                instance: format!("{controller}-{host}"),
            },
            self.shutdown.clone(),
        );
        tasks.spawn(async move {
            let _ = sink.await;
        });
        // Upstream's controllers report through client-go's `record` package, whose spam
        // filter caps each object's events (a burst of 25, then one per 5 minutes).
        recorder.with_spam_filter(events::SpamFilter::legacy())
    }
}
