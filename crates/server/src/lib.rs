//! hiber's session server: the HTTP API (`hiber serve`), the session
//! registry, the in-sandbox SDK relay and the lifecycle of agent sessions.
//!
//! A session is a context log (crate `hiber-context`) plus a sandbox that
//! runs only while there is work: when the agent waits, the sandbox is
//! snapshotted and stopped; the next message restores it.

pub mod api;
pub mod auth;
pub mod error;
pub mod lifecycle;
pub mod metrics;
pub mod relay;
pub mod sessions;
pub mod shared;
pub mod store;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hiber_sandbox::Backend;
use tokio::net::TcpListener;

pub use sessions::{CreateSession, SessionView, Sessions};
pub use store::{SessionRecord, State};

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The token could not be read or made.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// The session registry could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The context log could not be opened.
    #[error(transparent)]
    Log(#[from] hiber_context::SqliteError),
    /// The sandbox backend could not be opened.
    #[error(transparent)]
    Sandbox(#[from] hiber_sandbox::SandboxError),
    /// Listening or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A server bound to its address, ready to serve.
pub struct Server {
    listener: TcpListener,
    router: axum::Router,
}

impl Server {
    /// Opens everything under `home`, resumes saved sessions on `backend` and binds `listen`
    /// (port 0 picks a free one). Must run inside a tokio runtime.
    pub async fn bind(home: &Path, listen: SocketAddr, backend: Arc<dyn Backend>) -> Result<Server, ServerError> {
        std::fs::create_dir_all(home)?;
        let token = auth::load_or_create(home)?;
        let sessions = Sessions::open(home, backend).await?;
        let listener = TcpListener::bind(listen).await?;
        Ok(Server { listener, router: api::router(sessions, token) })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        // Streams are many small writes: without TCP_NODELAY each waits for
        // the client's delayed ACK (~40 ms) on a kept-alive connection.
        let listener = axum::serve::ListenerExt::tap_io(self.listener, |tcp: &mut tokio::net::TcpStream| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, self.router).with_graceful_shutdown(shutdown).await?;
        Ok(())
    }
}
