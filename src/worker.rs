//! The worker role's refresh handler (`pipes worker`): one refresh job → one pass
//! through the account's single flight ([`crate::refresh`]), its outcome turned into
//! what the queue runtime does with the message.
//!
//! Everything the refresher decides is committed before it returns, so acking after it
//! is safe; a job handled twice finds the token fresh and is dropped (DESIGN §2.7).
//! Transient failures retry through the delay queues; after the last step the runtime
//! dead-letters the job and the account, still `connected`, is released for the next
//! scheduler pass.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pipes_workers::{run_consumer, Handler, JobContext, Outcome, QueueSpec};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ids::{AccountId, IntegrationId};
use crate::queues::{self, RefreshJob, REFRESH};
use crate::refresh::{Reason, RefreshOutcome};
use crate::state::AppState;
use crate::store::integrations::{self, Integration, IntegrationState};
use crate::store::schedule;

/// How long a loaded integration is reused: a burst of jobs for one provider reads it once,
/// and an integration marked invalid is seen within this long.
const INTEGRATION_TTL: Duration = Duration::from_secs(5);

/// Integrations by id, with when each was loaded.
type LoadedIntegrations = HashMap<IntegrationId, (Instant, Arc<Integration>)>;

/// Handles refresh jobs.
#[derive(Clone)]
pub struct RefreshHandler {
    state: AppState,
    spec: QueueSpec,
    integrations: Arc<Mutex<LoadedIntegrations>>,
}

impl RefreshHandler {
    pub fn new(state: AppState) -> Self {
        let topology = queues::topology(&state.config);
        let spec = topology.spec(REFRESH).cloned().unwrap_or(QueueSpec {
            name: REFRESH.to_owned(),
            retry_delays: state.config.refresh_retry_delays.clone(),
            delivery_limit: 20,
        });
        RefreshHandler { state, spec, integrations: Arc::default() }
    }

    async fn integration(
        &self,
        id: &IntegrationId,
    ) -> Result<Option<Arc<Integration>>, integrations::IntegrationError> {
        {
            let cache = self.integrations.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((loaded, integration)) = cache.get(id) {
                if loaded.elapsed() < INTEGRATION_TTL {
                    return Ok(Some(integration.clone()));
                }
            }
        }
        let found = integrations::by_id(&self.state.db, self.state.keyring(), id).await?.map(Arc::new);
        let mut cache = self.integrations.lock().unwrap_or_else(|e| e.into_inner());
        match &found {
            Some(integration) => cache.insert(id.to_owned(), (Instant::now(), integration.clone())),
            None => cache.remove(id),
        };
        Ok(found)
    }

    /// Keeps the scheduler off an account while its retry waits in a delay queue
    /// (`delay: Some`), or hands it back to the next scheduler pass (`None`).
    async fn mark_pending(&self, account_id: &AccountId, delay: Option<Duration>) {
        let result = match delay {
            Some(delay) => schedule::defer(&self.state.db, account_id, delay).await,
            None => schedule::unclaim(&self.state.db, account_id).await,
        };
        if let Err(err) = result {
            // Harmless: the claim expires after PIPES_REQUEUE_AFTER either way.
            tracing::debug!(error = %err, %account_id, "the account's claim not updated");
        }
    }
}

impl Handler for RefreshHandler {
    type Job = RefreshJob;

    #[tracing::instrument(name = "refresh_job", skip_all, fields(account_id, attempt = ctx.attempt))]
    async fn handle(&self, job: RefreshJob, ctx: JobContext) -> Outcome {
        let (account_id, integration_id) = (job.account_id().clone(), job.integration_id().clone());
        tracing::Span::current().record("account_id", account_id.as_str());
        let integration = match self.integration(&integration_id).await {
            Ok(Some(integration)) => integration,
            Ok(None) => {
                tracing::debug!("integration deleted; dropping the job");
                return Outcome::Done;
            }
            Err(err) => {
                return self.transient(&account_id, &ctx, format!("loading the integration: {err}"), None).await
            }
        };
        if job.auth_method() != integration.auth_method {
            // A job of another kind than the integration's accounts (forged, or from before
            // the integration was replaced): no provider is asked.
            metrics::counter!(crate::metrics::REFRESH_JOBS_DROPPED, "reason" => "auth_method_mismatch").increment(1);
            tracing::warn!(%integration_id, "a refresh job of another kind than its integration's accounts; dropped");
            return Outcome::Done;
        }
        if !integration.enabled || integration.state == IntegrationState::Invalid {
            // Its credentials must be fixed first; the scheduler skips it until then.
            return Outcome::Done;
        }
        match self.state.refresher.refresh(&integration, &account_id, Reason::Scheduled).await {
            // Storing a token or marking reauthorization deleted the claim already.
            Ok(RefreshOutcome::Refreshed(_)) | Ok(RefreshOutcome::NeedsReauthorization) => Outcome::Done,
            Ok(RefreshOutcome::AlreadyFresh(_))
            | Ok(RefreshOutcome::IntegrationInvalid)
            | Ok(RefreshOutcome::NotConnected(_)) => {
                // A stale claim would hold back the account's next due time by
                // PIPES_REQUEUE_AFTER. A disconnected or deleted account lost its claim
                // with its schedule row, unless the claim raced with that write.
                self.mark_pending(&account_id, None).await;
                Outcome::Done
            }
            Ok(RefreshOutcome::OtherIntegration) => {
                metrics::counter!(crate::metrics::REFRESH_JOBS_DROPPED, "reason" => "integration_mismatch")
                    .increment(1);
                tracing::warn!(%integration_id, "a refresh job names another integration than its account's; dropped");
                Outcome::Done
            }
            Ok(RefreshOutcome::Transient { reason, retry_after }) => {
                self.transient(&account_id, &ctx, reason, retry_after).await
            }
            // PostgreSQL briefly unreachable: nothing was stored, try again later.
            Err(err) => self.transient(&account_id, &ctx, format!("storage: {err}"), None).await,
        }
    }
}

impl RefreshHandler {
    async fn transient(
        &self,
        account_id: &AccountId,
        ctx: &JobContext,
        reason: String,
        after: Option<Duration>,
    ) -> Outcome {
        let delay = self.spec.retry_delay(ctx.attempt, after);
        self.mark_pending(account_id, delay).await;
        Outcome::Retry { after, reason }
    }
}

/// Spawns a refresh worker: connects (waiting for the broker if needed), declares the
/// topology and consumes with `PIPES_WORKER_CONCURRENCY` jobs in flight until `cancel`
/// fires; then stops taking jobs, finishes the ones in flight and returns.
pub fn spawn(state: AppState, cancel: CancellationToken) -> JoinHandle<()> {
    let tasks = state.tasks.clone();
    tasks.spawn("refresh worker", async move {
        let config = state.config.clone();
        let Some(broker) = queues::connect_broker(&config.amqp_url, "pipes-worker", &cancel).await else { return };
        let handler = RefreshHandler::new(state);
        let topology = queues::topology(&config);
        tracing::info!(concurrency = config.worker_concurrency, "refresh worker running");
        if let Err(err) = run_consumer(broker, topology, REFRESH, handler, config.worker_concurrency, cancel).await {
            tracing::error!(error = %err, "refresh worker cannot run");
        }
        tracing::info!("refresh worker stopped");
    })
}
