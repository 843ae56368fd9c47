//! The session manager: creates, lists, shows and deletes sessions, and
//! hands each live session's work to its [`lifecycle`] task.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use hiber_context::{Entry, Kind, LogStore, NewEntry};
use hiber_sandbox::{Backend, Confinement, SandboxError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::lifecycle;
use crate::shared::{Command, SessionError, Shared, Turn};
use crate::store::{SessionRecord, SessionStore, SqliteSessions, State, StoreError};

/// Seconds an agent may wait for a message before it is suspended, by default.
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 3;

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
    /// The agent's command (with `image`, the image's Entrypoint and Cmd when empty).
    #[serde(default)]
    pub command: Vec<String>,
    /// The agent's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds of waiting before the session is suspended.
    #[serde(default)]
    pub idle_timeout_s: Option<u64>,
    /// Capabilities added to Docker's default set (as `hiber run --cap-add`).
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// Capabilities dropped from it (as `hiber run --cap-drop`).
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// Confinement options (as `hiber run --security-opt`, e.g. `seccomp=unconfined`).
    #[serde(default)]
    pub security_opt: Vec<String>,
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
        let sessions = Sessions { shared: Arc::new(Shared::new(store, log, backend)) };
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
        self.shared.add_task(id, lifecycle::spawn(self.shared.clone(), record));
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
        let confinement = Confinement::from_options(&req.security_opt, &req.cap_add, &req.cap_drop)
            .map_err(|e| SessionError::Invalid(e.to_string()))?;
        let mut record = SessionRecord::new(
            format!("s{}", hiber_common::random_id(15)),
            req.image.clone(),
            req.snapshot.clone(),
            req.command.clone(),
            req.env.clone(),
            idle_timeout_s,
        );
        record.confinement = confinement;
        let info = match (&req.image, &req.snapshot) {
            // Without a command, the image's (the backend refuses an image that has none).
            (Some(_), None) => {
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
        let task = self.shared.task(id)?;
        let (reply, answer) = oneshot::channel();
        task.send(Command::Message { entry: NewEntry::new(Kind::User, content), reply })
            .map_err(|_| SessionError::NotFound(id.into()))?;
        answer.await.map_err(|_| SessionError::NotFound(id.into()))?
    }

    /// Deletes a session: its sandbox, its snapshots, its log, its record.
    pub async fn delete(&self, id: &str) -> Result<(), SessionError> {
        let task = self.shared.task(id)?;
        let (reply, answer) = oneshot::channel();
        task.send(Command::Delete { reply }).map_err(|_| SessionError::NotFound(id.into()))?;
        answer.await.map_err(|_| SessionError::NotFound(id.into()))?
    }
}
