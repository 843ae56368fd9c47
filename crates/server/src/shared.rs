//! What the session manager ([`crate::sessions`]) and the sessions' tasks
//! ([`crate::lifecycle`]) share: the stores, the backend and the counters,
//! the commands the manager sends a task, and the errors of both.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use hiber_context::{LogStore, NewEntry};
use hiber_proto::ProcessSpec;
use hiber_sandbox::{Backend, SandboxError, SandboxInfo, SandboxSpec};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::store::{SessionRecord, SessionStore, StoreError};

/// Errors of session operations.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No such session.
    #[error("no session '{0}'")]
    NotFound(String),
    /// A bad request.
    #[error("{0}")]
    Invalid(String),
    /// The session cannot do this in its state.
    #[error("{0}")]
    Conflict(String),
    /// The registry failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The context log failed.
    #[error(transparent)]
    Log(#[from] hiber_context::StoreError),
    /// The sandbox backend failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// A blocking task panicked or the session's task is gone.
    #[error("the session's task stopped: {0}")]
    Stopped(String),
}

/// What the manager asks a session's task.
pub enum Command {
    /// Append a user message and deliver it.
    Message {
        /// The entry.
        entry: NewEntry,
        /// The turn, once the entry is durable.
        reply: oneshot::Sender<Result<Turn, SessionError>>,
    },
    /// Delete the session and everything it has.
    Delete {
        /// Done.
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
}

/// A message that was appended: the agent's entries follow `user_seq`, and
/// `done` gives the last seq of the turn when the agent waits again.
pub struct Turn {
    /// The user entry's seq.
    pub user_seq: u64,
    /// Fires when the agent waits again, with the log's last seq then.
    pub done: oneshot::Receiver<u64>,
}

/// What the manager and the session tasks share.
pub struct Shared {
    /// The session registry.
    pub store: Arc<dyn SessionStore>,
    /// The context logs.
    pub log: Arc<dyn LogStore>,
    /// The sandboxes.
    pub backend: Arc<dyn Backend>,
    /// Counters.
    pub metrics: Metrics,
    tasks: Mutex<HashMap<String, mpsc::UnboundedSender<Command>>>,
}

impl Shared {
    /// Runs blocking backend work off the runtime.
    pub async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn Backend) -> Result<T, SandboxError> + Send + 'static,
    ) -> Result<T, SessionError> {
        let backend = self.backend.clone();
        tokio::task::spawn_blocking(move || work(&*backend))
            .await
            .map_err(|e| SessionError::Stopped(e.to_string()))?
            .map_err(SessionError::from)
    }

    /// Creates a fresh sandbox running the session's agent.
    pub async fn fresh_sandbox(&self, record: &SessionRecord) -> Result<SandboxInfo, SessionError> {
        let image_name =
            record.image.clone().ok_or_else(|| SessionError::Invalid("the session has no image".into()))?;
        let mut env: Vec<String> = record.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("HIBER_SESSION={}", record.id));
        let spec = SandboxSpec {
            name: None,
            image: image_name,
            limits: Default::default(),
            main: Some(ProcessSpec { env, ..ProcessSpec::command(record.command.clone()) }),
            confinement: record.confinement,
        };
        self.blocking(move |b| b.create(spec)).await.map_err(|e| match e {
            SessionError::Sandbox(e @ SandboxError::Image(_)) => SessionError::Invalid(e.to_string()),
            e => e,
        })
    }

    /// Counters at zero, no session tasks yet.
    pub(crate) fn new(store: Arc<dyn SessionStore>, log: Arc<dyn LogStore>, backend: Arc<dyn Backend>) -> Shared {
        Shared { store, log, backend, metrics: Metrics::default(), tasks: Mutex::new(HashMap::new()) }
    }

    fn tasks(&self) -> MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Command>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the command channel of session `id`'s task.
    pub(crate) fn add_task(&self, id: String, commands: mpsc::UnboundedSender<Command>) {
        self.tasks().insert(id, commands);
    }

    /// The command channel of session `id`'s task.
    pub(crate) fn task(&self, id: &str) -> Result<mpsc::UnboundedSender<Command>, SessionError> {
        self.tasks().get(id).cloned().ok_or_else(|| SessionError::NotFound(id.into()))
    }

    /// Forgets a session's task (it ended).
    pub fn forget(&self, id: &str) {
        self.tasks().remove(id);
    }
}
