//! Tarn's native copy-on-write pool.
//!
//! A pool lives in a file or block device. Nothing live is ever overwritten: each transaction
//! group (txg) writes new blocks to free space and then a new uberblock into a ring; opening
//! picks the newest uberblock whose meta block verifies. Every block pointer carries the
//! child's checksum and birth txg, so every read is verified. See `FORMAT.md` for the bytes.
//!
//! ```no_run
//! use pool::{Pool, PoolConfig};
//! let pool = Pool::create_file("/tmp/p.tarn".as_ref(), "tank", 1 << 30, PoolConfig::default())?;
//! pool.create_volume("tank/vm1", 8 << 20, 16384, &Default::default())?;
//! let vol = pool.volume("tank/vm1")?;
//! vol.write_at(0, b"hello")?;
//! vol.flush()?; // durable
//! # Ok::<(), pool::Error>(())
//! ```

mod blocktree;
mod datasets;
mod deadlist;
pub mod device;
mod error;
mod iov;
mod lock;
pub mod names;
pub mod phys;
mod pool;
pub mod positioned;
mod prefetch;
pub mod request;
mod reservation;
mod scrub;
mod snapshot;
pub mod spacemap;
mod trim;
mod txg;
mod volume;

pub use datasets::{builtin_prop, check_prop, max_volume_size, BUILTIN_PROPS};
pub use device::{CrashDevice, CutMode, Device, FileDevice, MemDevice};
pub use error::{Error, ErrorKind, Result};
pub use iov::{gather, scatter, AlignedBuf};
pub use phys::{DatasetKind, LABEL_MAGIC};
pub use pool::{
    guid_as_string, DatasetInfo, Pool, PoolConfig, PoolInfo, BLOCK_SIZE_RANGE, MIN_POOL_SIZE,
};
pub use reservation::REFRESERVATION_PROP;
pub use scrub::{ScrubError, ScrubReport};
pub use snapshot::{Landing, Recursion};
pub use trim::TrimReport;
pub use volume::VolumeHandle;
