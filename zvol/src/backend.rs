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
    /// A stable identifier (virtio-blk GET_ID, NFS file IDs): survives restarts.
    pub id: String,
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
    /// The range is no longer needed; it reads back as zeroes.
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
