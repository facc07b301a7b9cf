//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics.
//!
//! - A candidate acquires the Lease when it does not exist, has no holder, or its holder
//!   has not renewed it for `leaseDurationSeconds` as observed on *our* clock (the record's
//!   own `renewTime` is never compared with our clock, so clock skew cannot steal a lease).
//! - Taking over from another holder sets `acquireTime` and increments `leaseTransitions`;
//!   renewing only moves `renewTime`.
//! - The leader renews every `retry_period`; if it cannot renew for `renew_deadline` it has
//!   lost the lease and its work is cancelled.
//! - On a clean shutdown the leader releases the Lease (empty holder, 1 s duration) so a
//!   standby takes over at once instead of waiting out the lease.
//!
//! Writes are merge patches carrying the observed `resourceVersion`, so two candidates
//! racing for one Lease cannot both win (the loser gets 409 Conflict) and fields a newer
//! apiserver added to the Lease are left untouched.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Errors of the elector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is inconsistent (client-go refuses the same combinations).
    #[error("invalid leader election config: {0}")]
    Config(&'static str),
    /// The lease was lost while leading: the caller should exit, as upstream components do.
    #[error("leader election lost: lease {0} was not renewed within the renew deadline")]
    Lost(String),
    /// Reading or writing the Lease failed.
    #[error("lease {lease}")]
    Api {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Timing and identity of one election, client-go's `LeaderElectionConfig`.
#[derive(Clone, Debug)]
pub struct Config {
    /// The Lease's namespace (`kube-system` for the control-plane components).
    pub namespace: String,
    /// The Lease's name (`kube-controller-manager`, `kube-scheduler`, ...).
    pub name: String,
    /// This candidate's identity, unique per process (upstream: `<hostname>_<uuid>`).
    pub identity: String,
    /// How long a lease is valid without renewal (`--leader-elect-lease-duration`, 15 s).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before giving up (10 s).
    pub renew_deadline: Duration,
    /// How often candidates try to acquire or renew (2 s).
    pub retry_period: Duration,
    /// Release the lease when the leader stops cleanly.
    pub release_on_cancel: bool,
}

impl Config {
    /// Upstream's defaults for `namespace/name` and `identity`.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            release_on_cancel: true,
        }
    }

    /// client-go's checks: lease duration > renew deadline > jitter * retry period.
    pub fn validate(&self) -> Result<(), Error> {
        if self.lease_duration <= self.renew_deadline {
            return Err(Error::Config(
                "leaseDuration must be greater than renewDeadline",
            ));
        }
        if self.renew_deadline.as_secs_f64() <= JITTER_FACTOR * self.retry_period.as_secs_f64() {
            return Err(Error::Config(
                "renewDeadline must be greater than retryPeriod*JitterFactor",
            ));
        }
        if self.retry_period.is_zero() {
            return Err(Error::Config("retryPeriod must be greater than zero"));
        }
        if self.identity.is_empty() {
            return Err(Error::Config("identity must not be empty"));
        }
        Ok(())
    }
}

/// client-go's `JitterFactor`: acquisition retries wait `retry_period * (1 + rand * 1.2)`.
const JITTER_FACTOR: f64 = 1.2;

/// A default identity in upstream's shape: `<hostname>_<random>`.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("{host}_{:032x}", rand::random::<u128>())
}

/// What a candidate knows of the Lease: the record it last saw and when it saw it change.
struct Observed {
    lease: Option<Lease>,
    /// Our clock's time when the record last changed (client-go's `observedTime`).
    at: Instant,
}

/// One candidate in an election.
pub struct LeaderElector {
    api: Api<Lease>,
    config: Config,
    observed: Observed,
}

impl LeaderElector {
    /// A candidate for `config`'s Lease.
    pub fn new(client: Client, config: Config) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: Observed {
                lease: None,
                at: Instant::now(),
            },
        })
    }

    fn lease_ref(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }

    /// Campaigns until elected (or `shutdown`), then runs `lead` with a token that is
    /// cancelled when leadership ends, renewing the Lease meanwhile.
    ///
    /// Returns `Ok` after a clean shutdown (the lease released when configured) and
    /// [`Error::Lost`] when renewal failed: upstream components exit then, and so should
    /// the caller, so that a process never acts on stale leadership.
    pub async fn run<F, Fut>(mut self, shutdown: CancellationToken, lead: F) -> Result<(), Error>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if !self.acquire(&shutdown).await {
            return Ok(());
        }
        tracing::info!(lease = %self.lease_ref(), identity = %self.config.identity, "became leader");
        let leading = shutdown.child_token();
        // If this future is dropped (its task aborted), the leader's work must stop too.
        let _stop_work = leading.clone().drop_guard();
        let mut work = tokio::spawn(lead(leading.clone()));
        // Leadership ends when renewal stops (shutdown or loss), or when the work itself
        // ends (say, a controller failed to start): then there is nothing to lead.
        let (outcome, finished) = tokio::select! {
            outcome = self.renew_loop(&shutdown) => (outcome, None),
            joined = &mut work => (Ok(()), Some(joined)),
        };
        leading.cancel();
        // The leader's work must stop before the lease is released, or two leaders overlap.
        let joined = match finished {
            Some(joined) => joined,
            None => work.await,
        };
        if let Err(e) = joined {
            tracing::error!(error = %e, "leader work panicked");
        }
        match outcome {
            Ok(()) => {
                if self.config.release_on_cancel {
                    self.release().await;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Tries until the lease is ours; false when shut down first.
    async fn acquire(&mut self, shutdown: &CancellationToken) -> bool {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "error acquiring lease"),
            }
            let jitter = 1.0 + rand::random::<f64>() * JITTER_FACTOR;
            let wait = self.config.retry_period.mul_f64(jitter);
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Renews every retry period until shutdown (Ok) or the renew deadline passes (Lost).
    async fn renew_loop(&mut self, shutdown: &CancellationToken) -> Result<(), Error> {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.config.retry_period) => {}
            }
            let deadline = Instant::now() + self.config.renew_deadline;
            let renewed = loop {
                let attempt = tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await;
                match attempt {
                    Ok(Ok(true)) => break true,
                    Ok(Ok(false)) => break false,
                    Ok(Err(e)) => tracing::warn!(error = %e, "error renewing lease"),
                    Err(_) => break false,
                }
                if Instant::now() >= deadline {
                    break false;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(self.config.retry_period.min(deadline - Instant::now())) => {}
                }
            };
            if !renewed {
                tracing::error!(lease = %self.lease_ref(), "failed to renew lease; leadership lost");
                return Err(Error::Lost(self.lease_ref()));
            }
        }
    }

    /// One round of client-go's `tryAcquireOrRenew`: true when we hold the lease after it.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, Error> {
        let lease_ref = self.lease_ref();
        let api_err = |source| Error::Api {
            lease: lease_ref.clone(),
            source,
        };
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let current = self.api.get_opt(&self.config.name).await.map_err(api_err)?;
        let Some(current) = current else {
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(duration_secs(self.config.lease_duration)),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created);
                    Ok(true)
                }
                // Another candidate created it first: not ours this round.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(api_err(e)),
            };
        };

        if self.record_changed(&current) {
            self.observe(current.clone());
        }
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let is_leader = holder == self.config.identity;
        let valid_for = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        );
        if !holder.is_empty() && !is_leader && self.observed.at + valid_for > Instant::now() {
            return Ok(false);
        }

        let (acquire_time, transitions) = if is_leader {
            (
                spec.acquire_time.clone(),
                spec.lease_transitions.unwrap_or(0),
            )
        } else {
            (Some(now.clone()), spec.lease_transitions.unwrap_or(0) + 1)
        };
        // An update (PUT) guarded by the resourceVersion we read, as client-go does: the
        // bootstrap RBAC roles of the control-plane components allow `update` on their
        // Lease, not `patch`.
        let mut next = current.clone();
        next.spec = Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(duration_secs(self.config.lease_duration)),
            acquire_time,
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..spec
        });
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &next)
            .await
        {
            Ok(updated) => {
                self.observe(updated);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(api_err(e)),
        }
    }

    /// Gives the lease up so a standby can take it at once (client-go's `release`).
    async fn release(&mut self) {
        let Some(lease) = self.observed.lease.clone() else {
            return;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let mut next = lease.clone();
        next.spec = Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: spec.lease_transitions,
            ..spec
        });
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.lease_ref(), "released lease"),
            Err(e) => {
                tracing::warn!(lease = %self.lease_ref(), error = %e, "failed to release lease")
            }
        }
    }

    fn record_changed(&self, current: &Lease) -> bool {
        self.observed.lease.as_ref().map(|l| &l.spec) != Some(&current.spec)
    }

    fn observe(&mut self, lease: Lease) {
        self.observed = Observed {
            lease: Some(lease),
            at: Instant::now(),
        };
    }
}

fn duration_secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_defaults_validate() {
        let c = Config::new("kube-system", "x", "me");
        assert_eq!(c.lease_duration, Duration::from_secs(15));
        assert_eq!(c.renew_deadline, Duration::from_secs(10));
        assert_eq!(c.retry_period, Duration::from_secs(2));
        c.validate().unwrap();
    }

    #[test]
    fn inconsistent_timings_are_refused() {
        let mut c = Config::new("kube-system", "x", "me");
        c.renew_deadline = Duration::from_secs(20);
        assert!(matches!(c.validate(), Err(Error::Config(_))));
        let mut c = Config::new("kube-system", "x", "me");
        c.retry_period = Duration::from_secs(9);
        assert!(matches!(c.validate(), Err(Error::Config(_))));
        let c = Config::new("kube-system", "x", "");
        assert!(matches!(c.validate(), Err(Error::Config(_))));
    }

    #[test]
    fn identities_are_unique() {
        assert_ne!(default_identity(), default_identity());
    }
}
