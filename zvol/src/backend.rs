//! The block-backend trait.

use crate::error::Result;
use std::io::{IoSlice, IoSliceMut};

/// What a consumer needs to know about a backend.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BackendInfo {
    /// Size in bytes.
    pub size: u64,
    /// Smallest I/O the backend handles without read-modify-write (its block size).
    pub block_size: u32,
    /// Logical sector size reported to guests (512 or 4096).
    pub logical_block_size: u32,
    /// Whether writes are refused.
    pub read_only: bool,
    /// Whether [`BlockBackend::discard`] is cheap: it frees the range (a hole punched, blocks
    /// released). Where it is not, it writes zeroes, and a VMM does not offer discard to its
    /// guests (a guest's `mkfs` or `fstrim` would write every free byte).
    pub discards: bool,
    /// A stable identifier of at most [`ID_MAX`] bytes (virtio-blk GET_ID, the guest's
    /// `/dev/disk/by-id` serial): survives restarts; see [`backend_id`].
    pub id: String,
}

/// Most bytes of [`BackendInfo::id`]: virtio-blk's serial (`VIRTIO_BLK_ID_BYTES`). Longer IDs
/// would be cut, and two disks could then share one serial.
pub const ID_MAX: usize = 20;

/// A backend ID of [`ID_MAX`] bytes: `kind` (3 bytes: `vol`, `raw`, `blk`, `nfs`) and two
/// numbers that name the backend where it lives (a pool's GUID and a dataset's ID, a file's
/// device and inode), folded into 16 hex digits so that IDs differing in `b` alone never
/// collide.
pub fn backend_id(kind: &str, a: u64, b: u64) -> String {
    debug_assert_eq!(kind.len(), 3, "backend ID kinds are 3 bytes");
    format!("{kind}-{:016x}", a.rotate_left(32) ^ b)
}

/// A block device seen as bytes at offsets. `Send + Sync` with `&self` methods: many queues
/// and threads may call at once. Buffers are the caller's (guest memory): no extra copies.
pub trait BlockBackend: Send + Sync {
    /// Size, block sizes, read-only, ID.
    fn info(&self) -> BackendInfo;
    /// Fills `bufs` back to back from `offset`. Reads past the end are an error.
    fn read_vectored(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> Result<()>;
    /// Writes `bufs` back to back at `offset`. Durable after the next `flush`.
    fn write_vectored(&self, offset: u64, bufs: &[IoSlice<'_>]) -> Result<()>;
    /// Returns once every write acknowledged before the call is durable.
    fn flush(&self) -> Result<()>;
    /// The range is no longer needed; it reads back as zeroes (written as zeroes where the
    /// backend cannot free it: see [`BackendInfo::discards`]).
    fn discard(&self, offset: u64, len: u64) -> Result<()>;
    /// The range reads back as zeroes.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()>;

    /// Reads into one buffer.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_vectored(offset, &mut [IoSliceMut::new(buf)])
    }
    /// Writes one buffer.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.write_vectored(offset, &[IoSlice::new(buf)])
    }
}
