//! One task per session: it owns the session's record, answers the agent's
//! SDK calls, delivers messages, and suspends, wakes and recovers the
//! sandbox. Every state change is saved before it is acted on.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hiber_context::{Entry, Kind, NewEntry};
use hiber_sandbox::{SandboxError, SnapshotOptions, Status};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::relay::{Relay, RelayEvent};
use crate::shared::{Command, SessionError, Shared, Turn};
use hiber_common::unix_ms as now_ms;

use crate::store::{SessionRecord, State, StoreError};

/// How often, and how many times, a closed relay's sandbox is checked for death.
const DEATH_CHECKS: usize = 20;
const DEATH_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Most entries one `history` call returns (the agent pages with `after`).
const HISTORY_LIMIT: usize = 1_000;
/// Most bytes of entries one `history` answer carries (a relay frame holds 1 MiB).
const HISTORY_BYTES: usize = 768 << 10;
/// Recoveries in a row without the agent finishing a turn before the session fails.
const MAX_RECOVERIES: u32 = 3;

/// Starts the task of `record`; returns its command channel.
pub fn spawn(shared: Arc<Shared>, record: SessionRecord) -> mpsc::UnboundedSender<Command> {
    let (tx, commands) = mpsc::unbounded_channel();
    let (events_tx, events) = mpsc::unbounded_channel();
    let task = Task {
        shared,
        record,
        relay: None,
        generation: 0,
        events_tx,
        pending_next: None,
        pending_sleep: None,
        waiters: Vec::new(),
        idle_deadline: None,
        recoveries: 0,
    };
    tokio::spawn(task.run(commands, events));
    tx
}

struct Task {
    shared: Arc<Shared>,
    record: SessionRecord,
    relay: Option<Relay>,
    /// Counts relays; events of an older relay are ignored.
    generation: u64,
    events_tx: mpsc::UnboundedSender<(u64, RelayEvent)>,
    /// The agent's `next_message` call waiting for a message.
    pending_next: Option<u64>,
    /// The agent's `sleep` call waiting for its time.
    pending_sleep: Option<u64>,
    /// Turns waiting for the agent to wait again.
    waiters: Vec<oneshot::Sender<u64>>,
    /// When an idle agent is suspended.
    idle_deadline: Option<Instant>,
    /// Recoveries since the agent last waited; bounds a crash loop.
    recoveries: u32,
}

fn ok(result: Value) -> Value {
    json!({"ok": true, "result": result})
}

fn err(message: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": message.to_string()})
}

impl Task {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut events: mpsc::UnboundedReceiver<(u64, RelayEvent)>,
    ) {
        self.resume_after_start().await;
        loop {
            let deadline = self.deadline();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Message { entry, reply }) => self.message(entry, reply).await,
                    Some(Command::Delete { reply }) => {
                        let result = self.delete().await;
                        let done = result.is_ok();
                        let _ = reply.send(result);
                        if done {
                            return;
                        }
                    }
                    None => return,
                },
                Some((generation, event)) = events.recv() => {
                    if generation == self.generation {
                        self.relay_event(event).await;
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => self.timer().await,
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self.record.state {
            State::Idle => self.idle_deadline,
            State::Sleeping => {
                self.record.wake_at.map(|at| Instant::now() + Duration::from_millis(at.saturating_sub(now_ms())))
            }
            _ => None,
        }
    }

    /// Saves the record with `state`; a failure is logged and the task
    /// carries on with the record it holds.
    async fn save(&mut self, state: State) {
        self.record.state = state;
        if let Err(e) = self.persist().await {
            eprintln!("hiber serve: session {}: {e}", self.record.id);
        }
    }

    /// Writes the record to the registry and keeps the copy stamped there.
    async fn persist(&mut self) -> Result<(), StoreError> {
        self.record = self.shared.store.put(self.record.clone()).await?;
        Ok(())
    }

    async fn fail(&mut self, why: String) {
        eprintln!("hiber serve: session {} failed: {why}", self.record.id);
        self.record.error = Some(why);
        self.relay = None;
        self.save(State::Failed).await;
        self.release_waiters();
    }

    /// Picks the session up after the server (re)started.
    async fn resume_after_start(&mut self) {
        let state = self.record.state;
        if state == State::Failed {
            return;
        }
        let Some(sandbox) = self.record.sandbox.clone() else {
            if matches!(state, State::Running | State::Idle) {
                self.recover().await;
            }
            return;
        };
        match self.shared.blocking(move |b| b.find(&sandbox)).await.map(|i| i.status) {
            // Pending calls are sent again to the new relay.
            Ok(Status::Running) => self.attach().await,
            Ok(Status::Suspended { snapshot }) => {
                // A suspend finished but its record was not written.
                self.adopt_snapshot(snapshot).await;
                let state = if state == State::Sleeping { State::Sleeping } else { State::Suspended };
                self.save(state).await;
            }
            _ if matches!(state, State::Running | State::Idle) => self.recover().await,
            _ => {
                self.record.sandbox = None;
                self.save(state).await;
            }
        }
    }

    /// Opens the relay to the current sandbox.
    async fn attach(&mut self) {
        let Some(sandbox) = self.record.sandbox.clone() else { return };
        self.generation += 1;
        self.relay = None;
        self.pending_next = None;
        self.pending_sleep = None;
        let (generation, events) = (self.generation, self.events_tx.clone());
        let opened =
            self.shared.blocking(move |b| b.connect(&sandbox)).await.and_then(|conn| {
                Relay::open(conn, generation, events).map_err(|e| SessionError::Invalid(e.to_string()))
            });
        match opened {
            Ok(relay) => self.relay = Some(relay),
            Err(e) => eprintln!("hiber serve: session {}: {e}", self.record.id),
        }
    }

    async fn relay_event(&mut self, event: RelayEvent) {
        match event {
            RelayEvent::Call { call, request } => self.call(call, request).await,
            RelayEvent::Closed { reason } => {
                self.relay = None;
                // A dying init closes its sockets a moment before it is gone.
                for _ in 0..DEATH_CHECKS {
                    if !self.sandbox_running().await {
                        return self.recover().await;
                    }
                    tokio::time::sleep(DEATH_CHECK_INTERVAL).await;
                }
                // The sandbox lives but does not relay (e.g. an older hiber-init).
                eprintln!("hiber serve: session {}: no SDK relay: {reason}", self.record.id);
            }
        }
    }

    fn answer(&self, call: u64, response: Value) {
        if let Some(relay) = &self.relay {
            relay.answer(call, response);
        }
    }

    /// Answers one SDK call (or keeps it pending).
    async fn call(&mut self, call: u64, request: Value) {
        let id = self.record.id.clone();
        match request.get("op").and_then(Value::as_str).unwrap_or_default() {
            "session_id" => self.answer(call, ok(json!(id))),
            "append" => {
                let kind = request.get("kind").and_then(Value::as_str).unwrap_or_default().parse::<Kind>();
                let response = match kind {
                    Err(e) => err(e),
                    Ok(kind) => {
                        let payload = request.get("payload").cloned().unwrap_or(Value::Null);
                        let mut entry = NewEntry::new(kind, payload);
                        entry.key = request.get("key").and_then(Value::as_str).map(str::to_owned);
                        match self.shared.log.append(&id, entry).await {
                            Ok(appended) => {
                                if !appended.duplicate {
                                    self.shared.metrics.appends.fetch_add(1, Ordering::Relaxed);
                                }
                                let mut entry = json!(appended.entry);
                                entry["duplicate"] = json!(appended.duplicate);
                                ok(entry)
                            }
                            Err(e) => err(e),
                        }
                    }
                };
                self.answer(call, response);
            }
            "history" => {
                let after = request.get("after").and_then(Value::as_u64).unwrap_or(0);
                let response = match self.shared.log.read(&id, after, HISTORY_LIMIT).await {
                    Ok(entries) => ok(json!(fit_in_a_frame(entries))),
                    Err(e) => err(e),
                };
                self.answer(call, response);
            }
            "next_message" => {
                self.pending_next = Some(call);
                self.deliver().await;
            }
            "sleep" => self.sleep(call, request.get("seconds").and_then(Value::as_f64).unwrap_or(0.0)).await,
            other => self.answer(call, err(format!("unknown SDK call {other:?}"))),
        }
    }

    /// Hands a pending `next_message` the first undelivered user entry, or
    /// lets the agent wait (idle).
    async fn deliver(&mut self) {
        let Some(call) = self.pending_next else { return };
        let id = self.record.id.clone();
        let mut after = self.record.cursor;
        let next = loop {
            match self.shared.log.read(&id, after, 256).await {
                Ok(entries) if entries.is_empty() => break None,
                Ok(entries) => {
                    after = entries.last().map(|e| e.seq).unwrap_or(after);
                    if let Some(user) = entries.into_iter().find(|e| e.kind == Kind::User) {
                        break Some(user);
                    }
                }
                Err(e) => {
                    eprintln!("hiber serve: session {id}: {e}");
                    return;
                }
            }
        };
        match next {
            Some(entry) => {
                let previous = std::mem::replace(&mut self.record.cursor, entry.seq);
                self.record.state = State::Running;
                self.idle_deadline = None;
                // The cursor is durable before the agent sees the message.
                if let Err(e) = self.persist().await {
                    self.record.cursor = previous;
                    return eprintln!("hiber serve: session {id}: message not delivered: {e}");
                }
                self.pending_next = None;
                self.answer(call, ok(json!({"seq": entry.seq, "content": entry.payload})));
            }
            None => {
                self.recoveries = 0;
                self.idle_deadline = Some(Instant::now() + Duration::from_secs(self.record.idle_timeout_s));
                if self.record.state != State::Idle {
                    self.save(State::Idle).await;
                }
                self.release_waiters();
            }
        }
    }

    /// Tells every waiting turn that the agent waits again.
    fn release_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        let id = self.record.id.clone();
        let waiters = std::mem::take(&mut self.waiters);
        tokio::spawn(async move {
            let last = shared.log.last_seq(&id).await.unwrap_or(0);
            for w in waiters {
                let _ = w.send(last);
            }
        });
    }

    async fn sleep(&mut self, call: u64, seconds: f64) {
        if !(0.0..=365.0 * 86400.0).contains(&seconds) {
            return self.answer(call, err("sleep: seconds must be between 0 and one year"));
        }
        match self.record.wake_at {
            Some(at) if at <= now_ms() => {
                self.record.wake_at = None;
                self.save(State::Running).await;
                self.answer(call, ok(Value::Null));
            }
            Some(_) => self.pending_sleep = Some(call),
            None => {
                self.record.wake_at = Some(now_ms() + (seconds * 1000.0) as u64);
                self.pending_sleep = Some(call);
                self.save(State::Sleeping).await;
                self.release_waiters();
                self.suspend(State::Sleeping).await;
            }
        }
    }

    async fn timer(&mut self) {
        match self.record.state {
            State::Idle => {
                self.idle_deadline = None;
                if self.pending_next.is_some() {
                    self.suspend(State::Suspended).await;
                }
            }
            State::Sleeping => match self.pending_sleep.take() {
                Some(call) => self.sleep(call, 0.0).await,
                None if self.sandbox_running().await => {
                    // Awake but the relay has not re-sent the call yet: check again soon.
                    self.record.wake_at = self.record.wake_at.map(|_| now_ms() + 200);
                }
                None => self.restore().await,
            },
            _ => {}
        }
    }

    async fn sandbox_running(&self) -> bool {
        let Some(sandbox) = self.record.sandbox.clone() else { return false };
        matches!(self.shared.blocking(move |b| b.find(&sandbox)).await.map(|i| i.status), Ok(Status::Running))
    }

    /// Snapshots and stops the sandbox; the session becomes `state`.
    async fn suspend(&mut self, state: State) {
        let Some(sandbox) = self.record.sandbox.clone() else { return };
        self.generation += 1;
        self.relay = None;
        self.pending_next = None;
        self.pending_sleep = None;
        let started = Instant::now();
        let options = SnapshotOptions { name: None, leave_running: false };
        match self.shared.blocking(move |b| b.snapshot(&sandbox, &options)).await {
            Ok(manifest) => {
                self.shared.metrics.snapshot.observe(started.elapsed());
                self.record.suspend_blocked = None;
                self.adopt_snapshot(manifest.id).await;
                self.save(state).await;
            }
            Err(SessionError::Sandbox(e @ SandboxError::Uncarriable { .. })) => {
                // Nothing was changed: the agent runs on, and says why it cannot sleep.
                if self.record.suspend_blocked.as_deref() != Some(&e.to_string()) {
                    eprintln!("hiber serve: session {}: {e}", self.record.id);
                    self.record.suspend_blocked = Some(e.to_string());
                    self.save(self.record.state).await;
                }
                self.attach().await;
            }
            Err(e) => {
                eprintln!("hiber serve: session {}: snapshot failed: {e}", self.record.id);
                if self.sandbox_running().await {
                    self.attach().await;
                } else {
                    self.recover().await;
                }
            }
        }
    }

    /// Makes `snapshot` the session's latest; removes the stopped sandbox
    /// and the previous snapshot.
    async fn adopt_snapshot(&mut self, snapshot: String) {
        let previous = self.record.snapshot.replace(snapshot);
        self.record.snapshot_cursor = self.record.cursor;
        let sandbox = self.record.sandbox.take();
        self.save(self.record.state).await;
        let cleanup = self
            .shared
            .blocking(move |b| {
                if let Some(s) = sandbox {
                    b.remove(&s, true)?;
                }
                if let Some(p) = previous {
                    b.remove_snapshot(&p)?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = cleanup {
            eprintln!("hiber serve: session {}: cleanup: {e}", self.record.id);
        }
    }

    /// Restores the latest snapshot (a fresh sandbox if it cannot be used).
    async fn restore(&mut self) {
        let Some(snapshot) = self.record.snapshot.clone() else { return self.fresh("no snapshot".into()).await };
        let started = Instant::now();
        match self.shared.blocking(move |b| b.restore(&snapshot, None)).await {
            Ok(info) => {
                self.shared.metrics.restore.observe(started.elapsed());
                self.record.sandbox = Some(info.id);
                let state = if self.record.state == State::Sleeping { State::Sleeping } else { State::Running };
                self.save(state).await;
                self.attach().await;
            }
            Err(e) => self.fresh(format!("restore failed: {e}")).await,
        }
    }

    /// The sandbox died: restore its last snapshot and deliver again what
    /// it had not seen then.
    async fn recover(&mut self) {
        self.recoveries += 1;
        if self.recoveries > MAX_RECOVERIES {
            let why = format!("the agent's sandbox died {MAX_RECOVERIES} times in a row before the agent waited again");
            return self.fail(why).await;
        }
        if let Some(dead) = self.record.sandbox.take() {
            let _ = self.shared.blocking(move |b| b.remove(&dead, true)).await;
        }
        self.record.cursor = self.record.snapshot_cursor;
        self.save(self.record.state).await;
        self.restore().await;
    }

    /// Starts a fresh sandbox from the image; the agent reads `history()`.
    async fn fresh(&mut self, why: String) {
        eprintln!("hiber serve: session {}: starting a fresh sandbox ({why})", self.record.id);
        self.record.wake_at = None;
        let record = self.record.clone();
        match self.shared.fresh_sandbox(&record).await {
            Ok(info) => {
                self.record.sandbox = Some(info.id);
                self.save(State::Running).await;
                self.attach().await;
            }
            Err(e) => self.fail(format!("{why}; a fresh sandbox failed too: {e}")).await,
        }
    }

    async fn message(&mut self, entry: NewEntry, reply: oneshot::Sender<Result<Turn, SessionError>>) {
        if self.record.state == State::Failed {
            let why = self.record.error.clone().unwrap_or_default();
            let _ = reply.send(Err(SessionError::Conflict(format!("the session failed: {why}"))));
            return;
        }
        let appended = match self.shared.log.append(&self.record.id, entry).await {
            Ok(a) => a,
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
        };
        self.shared.metrics.appends.fetch_add(1, Ordering::Relaxed);
        let (done_tx, done) = oneshot::channel();
        self.waiters.push(done_tx);
        let _ = reply.send(Ok(Turn { user_seq: appended.entry.seq, done }));
        match self.record.state {
            State::Suspended => self.restore().await,
            State::Running | State::Idle => self.deliver().await,
            State::Sleeping | State::Failed => {}
        }
    }

    async fn delete(&mut self) -> Result<(), SessionError> {
        self.generation += 1;
        self.relay = None;
        let (sandbox, snapshot) = (self.record.sandbox.clone(), self.record.snapshot.clone());
        self.shared
            .blocking(move |b| {
                if let Some(s) = sandbox {
                    if b.find(&s).is_ok() {
                        b.remove(&s, true)?;
                    }
                }
                if let Some(s) = snapshot {
                    let _ = b.remove_snapshot(&s);
                }
                Ok(())
            })
            .await?;
        self.shared.log.delete_session(&self.record.id).await?;
        self.shared.store.delete(&self.record.id).await?;
        self.shared.forget(&self.record.id);
        self.release_waiters();
        Ok(())
    }
}

/// The first entries whose JSON fits in [`HISTORY_BYTES`] (at least one).
fn fit_in_a_frame(entries: Vec<Entry>) -> Vec<Entry> {
    let mut total = 0;
    let mut out = Vec::new();
    for entry in entries {
        total += serde_json::to_string(&entry).map(|t| t.len()).unwrap_or(0);
        if total > HISTORY_BYTES && !out.is_empty() {
            break;
        }
        out.push(entry);
    }
    out
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod transitions;

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, bytes: usize) -> Entry {
        Entry { seq, time_ms: 0, kind: Kind::Assistant, payload: json!("x".repeat(bytes)), key: None }
    }

    #[test]
    fn history_answers_fit_in_a_relay_frame() {
        let small: Vec<Entry> = (1..=10).map(|s| entry(s, 10)).collect();
        assert_eq!(fit_in_a_frame(small).len(), 10);
        let big: Vec<Entry> = (1..=10).map(|s| entry(s, 300 << 10)).collect();
        assert_eq!(fit_in_a_frame(big).len(), 2);
        assert_eq!(fit_in_a_frame(vec![entry(1, 900 << 10)]).len(), 1);
    }
}
