//! READ payload buffers, handed back once sent so the next READ can reuse one (tarn patch:
//! a fresh 1 MiB buffer per READ cost a zero-fill, or page faults, every time).

use std::sync::Mutex;

/// Buffers kept at most.
const KEEP: usize = 16;
/// Smallest and largest capacity worth keeping.
const MIN_CAPACITY: usize = 64 << 10;
const MAX_CAPACITY: usize = 4 << 20;

static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer for READ data: one a previous READ sent, or a new empty one. Its length and
/// contents are whatever they were: the caller overwrites every byte it returns.
#[must_use]
pub fn take() -> Vec<u8> {
    FREE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pop()
        .unwrap_or_default()
}

/// Hands back a buffer whose bytes were sent.
pub(crate) fn give(buf: Vec<u8>) {
    if (MIN_CAPACITY..=MAX_CAPACITY).contains(&buf.capacity()) {
        let mut free = FREE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if free.len() < KEEP {
            free.push(buf);
        }
    }
}
