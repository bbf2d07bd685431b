//! A small pool of threads that execute block requests, so that a deep guest queue is served
//! in parallel (the backends are `Send + Sync` with `&self` methods).
//!
//! Jobs are plain values handed to one handler shared by all threads: nothing is boxed or
//! reference-counted per job, and the channel is bounded (its slots are allocated once), so
//! submitting a job allocates nothing.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Threads that run `handler` on submitted jobs, in any order. Dropping the pool waits for
/// queued jobs.
#[derive(Debug)]
pub struct WorkerPool<J: Send + 'static> {
    tx: Option<SyncSender<J>>,
    threads: Vec<JoinHandle<()>>,
}

impl<J: Send + 'static> WorkerPool<J> {
    /// Starts `n` (at least one) threads named `name-I` that pass each job to `handler`.
    /// `capacity` bounds the jobs waiting at once; [`WorkerPool::submit`] blocks beyond it
    /// (size it to the most jobs that can be outstanding, e.g. the queue size).
    pub fn new(
        name: &str,
        n: usize,
        capacity: usize,
        handler: impl Fn(J) + Send + Sync + 'static,
    ) -> std::io::Result<WorkerPool<J>> {
        let (tx, rx) = sync_channel::<J>(capacity.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let handler = Arc::new(handler);
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let rx = rx.clone();
            let handler = handler.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || worker(&rx, &*handler))?,
            );
        }
        Ok(WorkerPool {
            tx: Some(tx),
            threads,
        })
    }

    /// Queues `job`; gives it back if the pool's threads are gone (the caller then runs it
    /// itself).
    pub fn submit(&self, job: J) -> Result<(), J> {
        let Some(tx) = &self.tx else {
            return Err(job);
        };
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job)) => tx.send(job).map_err(|e| e.0),
            Err(TrySendError::Disconnected(job)) => Err(job),
        }
    }
}

fn worker<J>(rx: &Mutex<Receiver<J>>, handler: &(impl Fn(J) + ?Sized)) {
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            rx.recv()
        };
        match job {
            Ok(job) => handler(job),
            Err(_) => return,
        }
    }
}

impl<J: Send + 'static> Drop for WorkerPool<J> {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn runs_every_job_and_drains_on_drop() {
        let sum = Arc::new(AtomicU64::new(0));
        let s = sum.clone();
        let pool = WorkerPool::new("t", 3, 4, move |v: u64| {
            s.fetch_add(v, Ordering::SeqCst);
        })
        .unwrap();
        for v in 1..=100u64 {
            pool.submit(v).unwrap();
        }
        drop(pool);
        assert_eq!(sum.load(Ordering::SeqCst), 5050);
    }
}
