//! `hiber serve`: the session server.

use std::path::Path;

use anyhow::{Context, Result};
use hiber_server::Server;

use crate::cli::ServeArgs;

/// How long open requests may take to finish after SIGINT or SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

pub fn serve(home: &Path, args: ServeArgs) -> Result<i32> {
    let backend = super::backend(home)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let server = Server::bind(home, args.listen, backend)
            .await
            .with_context(|| format!("cannot serve on {}", args.listen))?;
        eprintln!(
            "hiber serve: listening on http://{} (token in {})",
            server.local_addr()?,
            home.join(hiber_server::auth::TOKEN_FILE).display()
        );
        let (stop, stopping) = tokio::sync::oneshot::channel::<()>();
        let serving = server.serve(async {
            let _ = stopping.await;
        });
        tokio::select! {
            served = serving => served?,
            _ = async {
                stopped().await;
                let _ = stop.send(());
                // Open streams (followers, turns) get a moment to finish.
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {}
        }
        Ok(0)
    })
}

/// Completes on SIGINT or SIGTERM.
async fn stopped() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
