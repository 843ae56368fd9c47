//! The session manager: creates, lists, shows and deletes sessions, and
//! hands each live session's work to its [`lifecycle`](crate::lifecycle)
//! task.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use hiber_context::{Entry, Kind, LogStore, NewEntry};
use hiber_proto::ProcessSpec;
use hiber_sandbox::{Backend, SandboxError, SandboxInfo, SandboxSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::lifecycle::{self, Command, Turn};
use crate::metrics::Metrics;
use crate::store::{SessionRecord, SessionStore, SqliteSessions, State, StoreError};

/// Seconds an agent may wait for a message before it is suspended, by default.
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 3;

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

/// `POST /v1/sessions`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Image to start a fresh sandbox from.
    #[serde(default)]
    pub image: Option<String>,
    /// Snapshot to start from instead.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// The agent's command (required with `image`).
    #[serde(default)]
    pub command: Vec<String>,
    /// The agent's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds of waiting before the session is suspended.
    #[serde(default)]
    pub idle_timeout_s: Option<u64>,
}

/// A session as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    /// The saved record.
    #[serde(flatten)]
    pub record: SessionRecord,
    /// The last seq of its context log.
    pub last_seq: u64,
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
        };
        self.blocking(move |b| b.create(spec)).await.map_err(|e| match e {
            SessionError::Sandbox(e @ SandboxError::Image(_)) => SessionError::Invalid(e.to_string()),
            e => e,
        })
    }

    /// Forgets a session's task (it ended).
    pub fn forget(&self, id: &str) {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// The session manager.
#[derive(Clone)]
pub struct Sessions {
    shared: Arc<Shared>,
}

impl Sessions {
    /// Opens the registry (`sessions.db`) and the context log (`context.db`)
    /// under `home` and resumes every saved session on `backend` (must run
    /// inside a tokio runtime).
    pub async fn open(home: &Path, backend: Arc<dyn Backend>) -> Result<Sessions, crate::ServerError> {
        let store = Arc::new(SqliteSessions::open(&home.join("sessions.db"))?);
        let log = Arc::new(hiber_context::SqliteLog::open(home.join("context.db"))?);
        Ok(Sessions::with_stores(backend, store, log).await?)
    }

    /// Uses `store` as the registry and `log` as the context log, and
    /// resumes every session saved in `store` on `backend` (must run inside a
    /// tokio runtime).
    pub async fn with_stores(
        backend: Arc<dyn Backend>,
        store: Arc<dyn SessionStore>,
        log: Arc<dyn LogStore>,
    ) -> Result<Sessions, StoreError> {
        let saved = store.list().await?;
        let shared =
            Arc::new(Shared { store, log, backend, metrics: Metrics::default(), tasks: Mutex::new(HashMap::new()) });
        let sessions = Sessions { shared };
        for record in saved {
            sessions.spawn(record);
        }
        Ok(sessions)
    }

    /// The shared state (metrics, log).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn spawn(&self, record: SessionRecord) {
        let id = record.id.clone();
        let tx = lifecycle::spawn(self.shared.clone(), record);
        self.shared.tasks.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
    }

    fn task(&self, id: &str) -> Result<mpsc::UnboundedSender<Command>, SessionError> {
        self.shared
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| SessionError::NotFound(id.into()))
    }

    /// Creates a session and starts its sandbox.
    pub async fn create(&self, req: CreateSession) -> Result<SessionView, SessionError> {
        let idle_timeout_s = req.idle_timeout_s.unwrap_or(DEFAULT_IDLE_TIMEOUT_S);
        if idle_timeout_s == 0 || idle_timeout_s > 7 * 24 * 3600 {
            return Err(SessionError::Invalid("idle_timeout_s must be between 1 and 604800".into()));
        }
        for key in req.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(SessionError::Invalid(format!("invalid environment variable name {key:?}")));
            }
        }
        let mut record = SessionRecord::new(
            format!("s{}", hiber_common::random_id(15)),
            req.image.clone(),
            req.snapshot.clone(),
            req.command.clone(),
            req.env.clone(),
            idle_timeout_s,
        );
        let info = match (&req.image, &req.snapshot) {
            (Some(_), None) => {
                if req.command.is_empty() {
                    return Err(SessionError::Invalid("a session from an image needs a command".into()));
                }
                record = self.shared.store.put(record).await?;
                self.shared.fresh_sandbox(&record).await
            }
            (None, Some(snapshot)) => {
                let key = snapshot.clone();
                let manifest = self.shared.blocking(move |b| b.find_snapshot(&key)).await.map_err(|e| match e {
                    SessionError::Sandbox(SandboxError::Snapshot(e)) => SessionError::Invalid(e.to_string()),
                    e => e,
                })?;
                record.image = Some(manifest.image.clone());
                if record.command.is_empty() {
                    record.command = manifest.main.as_ref().map(|m| m.argv.clone()).unwrap_or_default();
                }
                record = self.shared.store.put(record).await?;
                let id = manifest.id.clone();
                self.shared.blocking(move |b| b.restore(&id, None)).await
            }
            _ => return Err(SessionError::Invalid("give exactly one of image and snapshot".into())),
        };
        let info = match info {
            Ok(info) => info,
            Err(e) => {
                self.shared.store.delete(&record.id).await?;
                return Err(e);
            }
        };
        record.sandbox = Some(info.id);
        let record = self.shared.store.put(record).await?;
        self.spawn(record.clone());
        Ok(SessionView { record, last_seq: 0 })
    }

    /// One session.
    pub async fn get(&self, id: &str) -> Result<SessionView, SessionError> {
        let record = self.shared.store.get(id).await?.ok_or_else(|| SessionError::NotFound(id.into()))?;
        let last_seq = self.shared.log.last_seq(id).await?;
        Ok(SessionView { record, last_seq })
    }

    /// Every session, oldest first.
    pub async fn list(&self) -> Result<Vec<SessionView>, SessionError> {
        let mut out = Vec::new();
        for record in self.shared.store.list().await? {
            let last_seq = self.shared.log.last_seq(&record.id).await?;
            out.push(SessionView { record, last_seq });
        }
        Ok(out)
    }

    /// How many sessions are in each state.
    pub async fn count_by_state(&self) -> Result<Vec<(State, usize)>, SessionError> {
        let records = self.shared.store.list().await?;
        Ok(State::ALL.iter().map(|s| (*s, records.iter().filter(|r| r.state == *s).count())).collect())
    }

    /// Entries of a session's log after `after`.
    pub async fn context(&self, id: &str, after: u64, limit: usize) -> Result<Vec<Entry>, SessionError> {
        self.get(id).await?;
        Ok(self.shared.log.read(id, after, limit).await?)
    }

    /// Appends a user message and has it delivered; the turn tells when the
    /// agent waits again.
    pub async fn send(&self, id: &str, content: Value) -> Result<Turn, SessionError> {
        let task = self.task(id)?;
        let (reply, answer) = oneshot::channel();
        task.send(Command::Message { entry: NewEntry::new(Kind::User, content), reply })
            .map_err(|_| SessionError::NotFound(id.into()))?;
        answer.await.map_err(|_| SessionError::NotFound(id.into()))?
    }

    /// Deletes a session: its sandbox, its snapshots, its log, its record.
    pub async fn delete(&self, id: &str) -> Result<(), SessionError> {
        let task = self.task(id)?;
        let (reply, answer) = oneshot::channel();
        task.send(Command::Delete { reply }).map_err(|_| SessionError::NotFound(id.into()))?;
        answer.await.map_err(|_| SessionError::NotFound(id.into()))?
    }
}
