//! Read-ahead for sequential NFS READs.
//!
//! NFSv3 clients such as `nfs-cp` read a file one request at a time: the server reads (and
//! verifies) a chunk while the client waits, then the client stores it while the server
//! waits. Once a file is read sequentially (a READ starts where the previous one of that file
//! ended), the chunks after it (two of them) are read on blocking threads right away, so the
//! next READ finds its chunk ready, the two sides overlap and the device has work queued.
//!
//! A chunk read ahead is used only if nothing changed the export since it was started: every
//! change bumps a counter ([`ReadAhead::changed`]) after it is done, and a chunk started before
//! the last bump is dropped and read again.

use crate::view::{Attr, FileView, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// Files read ahead at once (the oldest stream is forgotten past this).
const STREAMS: usize = 8;
/// Chunks read ahead of the last READ of a file: two keep the device busy while one is sent.
const DEPTH: usize = 2;

/// What a READ needs: the file's attributes and the bytes (with whether they reach the end).
pub struct Chunk {
    /// The attributes, for the reply.
    pub attr: Result<Attr>,
    /// The bytes and the end-of-file flag.
    pub data: Result<(Vec<u8>, bool)>,
}

/// Reads a chunk (blocking), into a buffer a sent READ gave back if there is one.
fn fetch(view: &FileView, id: u64, offset: u64, len: u32) -> Chunk {
    Chunk {
        attr: view.getattr(id),
        data: view.read_into(id, offset, len, nfs3_server::buffers::take()),
    }
}

/// A chunk being read ahead.
struct Pending {
    offset: u64,
    len: u32,
    /// The change count when it was started.
    changes: u64,
    task: JoinHandle<Chunk>,
}

/// One file being read.
struct Stream {
    id: u64,
    /// Where the last READ of this file ended.
    next: u64,
    /// Chunks being read ahead, in file order.
    pending: std::collections::VecDeque<Pending>,
}

/// Sequential read detection and one chunk of read-ahead per file.
#[derive(Default)]
pub struct ReadAhead {
    streams: Mutex<Vec<Stream>>,
    changes: AtomicU64,
}

impl ReadAhead {
    /// Records that the export changed (call after a change is done, before replying).
    pub fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// Takes the chunk read ahead for exactly `offset..offset + len` of file `id`, if any.
    /// Chunks pending before it are dropped (the reader skipped them), and all of them if it is
    /// not there.
    fn take(&self, id: u64, offset: u64, len: u32) -> Option<Pending> {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let s = streams.iter_mut().find(|s| s.id == id)?;
        let Some(i) = s
            .pending
            .iter()
            .position(|p| p.offset == offset && p.len == len)
        else {
            s.pending.clear();
            return None;
        };
        s.pending.drain(..i);
        s.pending.pop_front()
    }

    /// Reads `len` bytes of file `id` at `offset`, and its attributes: from the chunk read
    /// ahead when there is a valid one, from the view otherwise. Then, if this READ continues the previous one of
    /// the file and did not reach its end, starts reading the next chunk.
    pub async fn read(&self, view: &Arc<FileView>, id: u64, offset: u64, len: u32) -> Chunk {
        let ahead = match self.take(id, offset, len) {
            Some(p) => match p.task.await {
                Ok(chunk)
                    if chunk.data.is_ok() && self.changes.load(Ordering::Acquire) == p.changes =>
                {
                    Some(chunk)
                }
                _ => None,
            },
            None => None,
        };
        let from_ahead = ahead.is_some();
        let chunk = match ahead {
            Some(chunk) => chunk,
            None => tokio::task::block_in_place(|| fetch(view, id, offset, len)),
        };
        if let Ok((data, eof)) = &chunk.data {
            if !eof && data.len() == len as usize {
                self.schedule(view, id, offset, len, from_ahead);
            }
        }
        chunk
    }

    fn schedule(&self, view: &Arc<FileView>, id: u64, offset: u64, len: u32, sequential: bool) {
        let end = offset + u64::from(len);
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let i = match streams.iter().position(|s| s.id == id) {
            Some(i) => i,
            None => {
                if streams.len() >= STREAMS {
                    streams.remove(0);
                }
                streams.push(Stream {
                    id,
                    next: u64::MAX,
                    pending: std::collections::VecDeque::new(),
                });
                streams.len() - 1
            }
        };
        let s = &mut streams[i];
        let sequential = sequential || s.next == offset;
        s.next = end;
        if sequential {
            let changes = self.changes.load(Ordering::Acquire);
            let step = u64::from(len);
            let mut at = s
                .pending
                .back()
                .map_or(end, |p| p.offset + u64::from(p.len));
            while s.pending.len() < DEPTH {
                let view = view.clone();
                s.pending.push_back(Pending {
                    offset: at,
                    len,
                    changes,
                    task: tokio::task::spawn_blocking(move || fetch(&view, id, at, len)),
                });
                at += step;
            }
        }
        // Most recently used last.
        let s = streams.remove(i);
        streams.push(s);
    }
}
