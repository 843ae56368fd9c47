//! `/v1/sessions…`: create, list, show, delete, the context log and turns.

use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use hiber_context::Entry;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ApiError;
use crate::sessions::CreateSession;
use crate::Sessions;

/// Largest message content, as compact JSON: it must reach the agent in one
/// relay frame (1 MiB) with room to spare.
const MAX_MESSAGE_BYTES: usize = 768 << 10;

/// Most entries one context read returns.
const MAX_READ: usize = 10_000;

/// A JSON body whose rejections are the API's JSON errors.
pub struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(Body(value))
    }
}

/// `POST /v1/sessions`.
pub async fn create(State(s): State<Sessions>, Body(req): Body<CreateSession>) -> Result<impl IntoResponse, ApiError> {
    Ok((StatusCode::CREATED, Json(s.create(req).await?)))
}

/// `GET /v1/sessions`.
pub async fn list(State(s): State<Sessions>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(json!({"sessions": s.list().await?})))
}

/// `GET /v1/sessions/{id}`.
pub async fn show(State(s): State<Sessions>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(s.get(&id).await?))
}

/// `DELETE /v1/sessions/{id}`.
pub async fn delete(State(s): State<Sessions>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    s.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?after=N&limit=M&follow=true`.
#[derive(Debug, Deserialize)]
pub struct ContextQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    follow: bool,
}

/// `GET /v1/sessions/{id}/context`: entries after `after`, or with
/// `follow=true` the same as `/context/stream`.
pub async fn context(
    State(s): State<Sessions>,
    Path(id): Path<String>,
    query: Result<Query<ContextQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    let Query(q) = query?;
    if q.follow {
        return Ok(follow(s, id, q.after).await?.into_response());
    }
    let limit = q.limit.unwrap_or(MAX_READ).min(MAX_READ);
    let entries = s.context(&id, q.after, limit).await?;
    Ok(Json(json!({"entries": entries})).into_response())
}

/// `GET /v1/sessions/{id}/context/stream?after=N`: stored entries, then live
/// ones, as SSE `entry` events.
pub async fn context_stream(
    State(s): State<Sessions>,
    Path(id): Path<String>,
    query: Result<Query<ContextQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(q) = query?;
    follow(s, id, q.after).await
}

type EventStream = Sse<axum::response::sse::KeepAliveStream<ReceiverStream<Result<Event, Infallible>>>>;

fn entry_event(entry: &Entry) -> Event {
    Event::default().event("entry").id(entry.seq.to_string()).data(serde_json::to_string(entry).unwrap_or_default())
}

async fn follow(s: Sessions, id: String, after: u64) -> Result<EventStream, ApiError> {
    s.get(&id).await?;
    let mut entries = s.shared().log.follow(&id, after).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let entry = tokio::select! {
                entry = entries.next() => entry,
                _ = tx.closed() => return,
            };
            let Some(entry) = entry else { return };
            let event = match entry {
                Ok(entry) => entry_event(&entry),
                Err(e) => Event::default().event("error").data(e.to_string()),
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

/// `POST /v1/sessions/{id}/messages {content}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    content: Value,
}

/// Appends a user entry, delivers it, and streams (SSE) the user entry and
/// every entry after it until the agent waits again; then a `done` event
/// with `{"last_seq"}`.
pub async fn send(
    State(s): State<Sessions>,
    Path(id): Path<String>,
    Body(msg): Body<SendMessage>,
) -> Result<impl IntoResponse, ApiError> {
    if msg.content.to_string().len() > MAX_MESSAGE_BYTES {
        return Err(ApiError::TooLarge(MAX_MESSAGE_BYTES));
    }
    let turn = s.send(&id, msg.content).await?;
    let mut entries =
        s.shared().log.follow(&id, turn.user_seq - 1).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let mut done = turn.done;
        let mut end: Option<u64> = None;
        let mut seen = turn.user_seq - 1;
        loop {
            if end.is_some_and(|end| seen >= end) {
                break;
            }
            tokio::select! {
                entry = entries.next() => match entry {
                    Some(Ok(entry)) => {
                        seen = entry.seq;
                        if tx.send(Ok(entry_event(&entry))).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(Ok(Event::default().event("error").data(e.to_string()))).await;
                        return;
                    }
                    None => return,
                },
                _ = tx.closed() => return,
                last = &mut done, if end.is_none() => match last {
                    Ok(last) => end = Some(last),
                    Err(_) => {
                        let _ = tx.send(Ok(Event::default().event("error").data("the session ended"))).await;
                        return;
                    }
                },
            }
        }
        let _ = tx.send(Ok(Event::default().event("done").data(json!({"last_seq": seen}).to_string()))).await;
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}
