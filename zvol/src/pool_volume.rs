//! Pool volumes as block backends.

use crate::backend::{BackendInfo, BlockBackend};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};

/// Block size of new volumes when none is given.
///
/// Provisional: 16 KiB trades read-modify-write on small guest writes against block-map size
/// and compression ratio; the number is to be settled by measurement (guest workloads on a
/// real disk), not by this comment.
pub const DEFAULT_BLOCK_SIZE: u32 = 16384;

fn default_block_size() -> u32 {
    DEFAULT_BLOCK_SIZE
}

/// What a user asks for when creating a volume.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeConfig {
    /// Size in bytes (the pool rounds it up to a whole number of blocks).
    pub size: u64,
    /// Block size in bytes: a power of two in `pool::BLOCK_SIZE_RANGE`.
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// User properties.
    #[serde(default)]
    pub props: BTreeMap<String, String>,
}

impl VolumeConfig {
    /// A volume of `size` bytes with the default block size and no properties.
    pub fn new(size: u64) -> Self {
        VolumeConfig {
            size,
            block_size: DEFAULT_BLOCK_SIZE,
            props: BTreeMap::new(),
        }
    }

    /// Creates the volume `name` (`POOL/NAME`) in `pool`; durable on return.
    pub fn create(&self, pool: &pool::Pool, name: &str) -> Result<pool::DatasetInfo> {
        Ok(pool.create_volume(name, self.size, self.block_size, &self.props)?)
    }
}

/// A pool volume as a [`BlockBackend`]. Holds the pool's shared state alive, not the pool's
/// lock on its device: keep the [`pool::Pool`] open while this is in use.
#[derive(Clone)]
pub struct PoolVolume {
    handle: pool::VolumeHandle,
    read_only: bool,
}

impl std::fmt::Debug for PoolVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolVolume")
            .field("name", &self.handle.name())
            .field("id", &self.handle.id())
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl PoolVolume {
    /// Opens the volume `name` (`POOL/NAME`) of `pool`.
    pub fn open(pool: &pool::Pool, name: &str, read_only: bool) -> Result<Self> {
        Ok(Self::from_handle(pool.volume(name)?, read_only))
    }

    /// Wraps an open volume handle.
    pub fn from_handle(handle: pool::VolumeHandle, read_only: bool) -> Self {
        PoolVolume { handle, read_only }
    }

    /// The underlying volume handle.
    pub fn handle(&self) -> &pool::VolumeHandle {
        &self.handle
    }

    /// Checks a vectored request's whole range up front: the pool checks one buffer at a
    /// time, so a request running past the end would otherwise be partly done before it fails.
    fn check_range(&self, op: &str, offset: u64, len: u64) -> Result<()> {
        let size = self.handle.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::InvalidArgument(format!(
                "{op} of {len} bytes at byte {offset} is past the end of {} ({size} bytes)",
                self.handle.name()
            ))),
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(self.handle.name()));
        }
        Ok(())
    }
}

impl BlockBackend for PoolVolume {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            size: self.handle.size(),
            block_size: self.handle.block_size(),
            logical_block_size: 512,
            read_only: self.read_only,
            id: format!("tarn-{:016x}-{}", self.handle.pool_guid(), self.handle.id()),
        }
    }

    fn read_vectored(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> Result<()> {
        if bufs.len() > 1 {
            self.check_range("read", offset, bufs.iter().map(|b| b.len() as u64).sum())?;
        }
        Ok(self.handle.read_vectored_at(offset, bufs)?)
    }

    fn write_vectored(&self, offset: u64, bufs: &[IoSlice<'_>]) -> Result<()> {
        self.check_writable()?;
        if bufs.len() > 1 {
            self.check_range("write", offset, bufs.iter().map(|b| b.len() as u64).sum())?;
        }
        Ok(self.handle.write_vectored_at(offset, bufs)?)
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        Ok(self.handle.flush()?)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        Ok(self.handle.discard(offset, len)?)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        Ok(self.handle.write_zeroes(offset, len)?)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        Ok(self.handle.read_at(offset, buf)?)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.check_writable()?;
        Ok(self.handle.write_at(offset, buf)?)
    }
}
