//! Work spread over a few threads.

use std::sync::Mutex;

/// Runs `f` on every item of `items` with up to `workers` threads (at least one), each taking
/// the next item when done with its last. After the first error no further item is started;
/// that error is returned once the running ones finish.
pub fn try_for_each<T: Send, E: Send>(
    items: Vec<T>,
    workers: usize,
    f: impl Fn(T) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let workers = workers.max(1).min(items.len());
    let queue = Mutex::new(items.into_iter().rev().collect::<Vec<_>>());
    let failure = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let Some(item) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else { return };
                if let Err(e) = f(item) {
                    failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                    queue.lock().unwrap_or_else(|e| e.into_inner()).clear();
                }
            });
        }
    });
    failure.into_inner().unwrap_or_else(|e| e.into_inner()).map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_item_runs_until_one_fails() {
        let done = AtomicUsize::new(0);
        try_for_each((0..50).collect(), 4, |_: i32| {
            done.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 50);
        let started = AtomicUsize::new(0);
        let err = try_for_each((0..50).collect(), 1, |n: i32| {
            started.fetch_add(1, Ordering::SeqCst);
            if n == 3 {
                Err(n)
            } else {
                Ok(())
            }
        });
        assert_eq!(err, Err(3));
        assert_eq!(started.load(Ordering::SeqCst), 4, "in order, and nothing after the failure");
        assert_eq!(try_for_each(Vec::<i32>::new(), 4, |_| Err::<(), _>(())), Ok(()));
    }
}
