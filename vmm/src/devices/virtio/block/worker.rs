//! A small pool of threads that execute block requests, so that a deep guest queue is served
//! in parallel (the backends are `Send + Sync` with `&self` methods).

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Threads that run submitted jobs in any order. Dropping the pool waits for queued jobs.
#[derive(Debug)]
pub struct WorkerPool {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts `n` (at least one) threads named `name-I`.
    pub fn new(name: &str, n: usize) -> std::io::Result<WorkerPool> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let rx = rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || worker(&rx))?,
            );
        }
        Ok(WorkerPool {
            tx: Some(tx),
            threads,
        })
    }

    /// Queues `job`. Runs it at once on the caller's thread if the pool is gone.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        match &self.tx {
            Some(tx) => {
                if let Err(e) = tx.send(Box::new(job)) {
                    (e.0)();
                }
            }
            None => job(),
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            rx.recv()
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
