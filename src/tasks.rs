//! The tasks a process runs beside its requests: role loops, upkeep, connection
//! supervisors. Each watches the process's cancellation token; on shutdown the
//! process waits for all of them (`PIPES_SHUTDOWN_TIMEOUT`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::task::TaskTracker;

/// The tasks of one process, each known by name until it finishes.
#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    running: Arc<Mutex<Vec<String>>>,
}

/// Takes a task's name off the running list when the task ends (or panics).
struct Finished {
    running: Arc<Mutex<Vec<String>>>,
    name: String,
}

impl Drop for Finished {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = running.iter().position(|n| *n == self.name) {
            running.remove(at);
        }
    }
}

impl Tasks {
    /// Runs `task`, known as `name` until it ends. Every long-lived task of a process
    /// goes through here, so a shutdown waits for it and names it if it does not end.
    pub fn spawn<F>(&self, name: impl Into<String>, task: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let name = name.into();
        self.running.lock().unwrap_or_else(PoisonError::into_inner).push(name.clone());
        let finished = Finished { running: self.running.clone(), name };
        self.tracker.spawn(async move {
            let _finished = finished;
            task.await;
        })
    }

    /// Waits for every task, for at most `timeout`; returns the names of those still running.
    pub async fn wait(&self, timeout: Duration) -> Vec<String> {
        self.tracker.close();
        if tokio::time::timeout(timeout, self.tracker.wait()).await.is_ok() {
            return Vec::new();
        }
        self.running.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}
