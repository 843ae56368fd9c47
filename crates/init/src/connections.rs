//! The open connections, so that a `Detach` request can close all the
//! others (before a snapshot: CRIU cannot dump a connection to the host).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use tokio::sync::watch;

/// Every open connection, with the detach epoch it belongs to.
#[derive(Debug)]
pub struct Connections {
    /// Bumped by each `Detach`: connections of older epochs close.
    epoch: watch::Sender<u64>,
    /// Open connections: id -> epoch.
    open: RefCell<HashMap<u64, u64>>,
    next_id: Cell<u64>,
    /// Announces that a connection closed.
    closed: watch::Sender<()>,
}

impl Connections {
    /// No connections yet.
    pub fn new() -> Rc<Connections> {
        Rc::new(Connections {
            epoch: watch::channel(0).0,
            open: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            closed: watch::channel(()).0,
        })
    }

    /// Registers a new connection; it stays registered until the returned
    /// handle is dropped.
    pub fn register(self: &Rc<Self>) -> Connection {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.open.borrow_mut().insert(id, *self.epoch.borrow());
        Connection { id, connections: self.clone() }
    }
}

/// One registered connection.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    connections: Rc<Connections>,
}

impl Connection {
    fn epoch(&self) -> u64 {
        self.connections.open.borrow().get(&self.id).copied().unwrap_or(0)
    }

    /// Resolves once a `Detach` on another connection asks this one to
    /// close.
    pub async fn detached(&self) {
        let mut epochs = self.connections.epoch.subscribe();
        while *epochs.borrow_and_update() <= self.epoch() {
            // The sender lives in `Connections`, which we hold.
            let _ = epochs.changed().await;
        }
    }

    /// Closes every other connection open now, and returns once all of them
    /// are closed.
    pub async fn detach_others(&self) {
        let set = &self.connections;
        let epoch = *set.epoch.borrow() + 1;
        set.open.borrow_mut().insert(self.id, epoch);
        let mut closed = set.closed.subscribe();
        set.epoch.send_replace(epoch);
        while set.open.borrow().values().any(|&e| e < epoch) {
            let _ = closed.changed().await;
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Ok(mut open) = self.connections.open.try_borrow_mut() {
            open.remove(&self.id);
        }
        self.connections.closed.send_replace(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::timeout;

    #[tokio::test(flavor = "current_thread")]
    async fn detach_waits_for_older_connections_only() {
        let set = Connections::new();
        let old = set.register();
        let me = set.register();
        let detach = me.detach_others();
        tokio::pin!(detach);
        // The Detach does not finish while the old connection is open...
        assert!(timeout(Duration::from_millis(50), &mut detach).await.is_err());
        // ...which has been told to close.
        timeout(Duration::from_secs(5), old.detached()).await.expect("old one told to close");
        drop(old);
        timeout(Duration::from_secs(5), &mut detach).await.expect("done once it closed");
        // Connections opened after the Detach stay, and so does the one
        // that asked.
        let newer = set.register();
        let quiet = timeout(Duration::from_millis(50), async {
            tokio::join!(newer.detached(), me.detached());
        });
        assert!(quiet.await.is_err());
    }
}
