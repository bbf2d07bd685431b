//! Volumes as block devices: the block-backend trait that the VMM's virtio-blk, the NFS
//! server, a vhost-user-blk daemon and a FUSE file view consume, implemented for pool volumes
//! and for raw files and block devices.

mod backend;
mod error;
mod pool_volume;
mod raw;
mod size;

pub use backend::{backend_id, BackendInfo, BlockBackend, ID_MAX};
pub use error::{Error, Result};
pub use pool_volume::{PoolVolume, VolumeConfig, DEFAULT_BLOCK_SIZE};
pub use raw::{RawFile, RawFileOptions};
pub use size::{format_size, parse_size};
