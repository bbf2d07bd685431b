//! Helpers for tests: guest memory, disks on raw files and pool volumes, request headers.

use super::request::Disk;
use pool::{MemDevice, Pool, PoolConfig};
use std::sync::Arc;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zvol::{BlockBackend, PoolVolume, RawFile, RawFileOptions, VolumeConfig};

/// Guest memory size in tests: rings at 0, data from [`DATA`].
pub const MEM_SIZE: usize = 4 << 20;
/// Where test data buffers start.
pub const DATA: u64 = 0x10_0000;
/// Size of every test disk.
pub const DISK_SIZE: u64 = 1 << 20;
/// `VRING_DESC_F_WRITE`.
pub const WRITE: u16 = 2;
/// Where tests put a request header.
pub const HDR: u64 = DATA;
/// Where tests put a request's data buffer.
pub const BUF: u64 = DATA + 0x1000;
/// Where tests put a request's status byte.
pub const ST: u64 = DATA + 0xff000;
/// Status `VIRTIO_BLK_S_OK`.
pub const OK: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK as u8;
/// Status `VIRTIO_BLK_S_IOERR`.
pub const IOERR: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR as u8;
/// Every optional feature negotiated.
pub const ALL: super::request::Negotiated = super::request::Negotiated {
    discard: true,
    write_zeroes: true,
};

/// Fresh zeroed guest memory.
pub fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// Keeps a backend's storage alive.
pub enum Keep {
    /// A temporary directory holding a raw file.
    Dir(#[allow(dead_code)] tempfile::TempDir),
    /// An in-memory pool.
    Pool(#[allow(dead_code)] Pool),
}

/// Which backend to test on.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// zvol::RawFile in a temporary directory.
    Raw,
    /// zvol::PoolVolume on a pool on pool::MemDevice.
    Pool,
}

/// Both kinds.
pub const KINDS: [Kind; 2] = [Kind::Raw, Kind::Pool];

/// A backend of [`DISK_SIZE`] bytes.
pub fn backend(kind: Kind, read_only: bool) -> (Keep, Arc<dyn BlockBackend>) {
    match kind {
        Kind::Raw => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("disk.img");
            let opts = RawFileOptions {
                read_only: false,
                direct: false,
            };
            drop(RawFile::create(&path, DISK_SIZE, opts).unwrap());
            let opts = RawFileOptions {
                read_only,
                direct: false,
            };
            let f = RawFile::open(&path, opts).unwrap();
            (Keep::Dir(dir), Arc::new(f))
        }
        Kind::Pool => {
            let dev = Arc::new(MemDevice::new(64 << 20));
            let config = PoolConfig {
                sync_interval: None,
                ..PoolConfig::default()
            };
            let pool = Pool::create_on(dev, "tank", config).unwrap();
            VolumeConfig::new(DISK_SIZE)
                .create(&pool, "tank/vol")
                .unwrap();
            let v = PoolVolume::open(&pool, "tank/vol", read_only).unwrap();
            (Keep::Pool(pool), Arc::new(v))
        }
    }
}

/// A disk of [`DISK_SIZE`] bytes.
pub fn disk(kind: Kind, read_only: bool) -> (Keep, Arc<Disk>) {
    let (keep, b) = backend(kind, false);
    (keep, Arc::new(Disk::new(b, read_only)))
}

/// Writes a request header at `addr`.
pub fn header(mem: &GuestMemoryMmap, addr: u64, kind: u32, sector: u64) {
    mem.write_obj(kind.to_le(), GuestAddress(addr)).unwrap();
    mem.write_obj(0u32, GuestAddress(addr + 4)).unwrap();
    mem.write_obj(sector.to_le(), GuestAddress(addr + 8))
        .unwrap();
}

/// A raw descriptor (the chain builder fixes up NEXT flags and links).
pub fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// A raw descriptor with explicit NEXT flag and link.
pub fn linked(addr: u64, len: u32, flags: u16, next: Option<u16>) -> RawDescriptor {
    let (f, n) = match next {
        Some(n) => (flags | 1, n),
        None => (flags, 0),
    };
    RawDescriptor::from(SplitDescriptor::new(addr, len, f, n))
}
