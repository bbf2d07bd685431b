//! virtio-blk: the device ([`device`]), request parsing and execution with no KVM in it
//! ([`request`], reusable by a vhost-user-blk server), fast split-ring access ([`ring`]), the
//! worker pool ([`worker`]) and the choice of who runs a request ([`pace`]).

pub mod device;
pub mod pace;
pub mod request;
pub mod ring;
pub mod worker;

pub use device::{Block, BlockOptions};
pub use request::{Disk, Request, RequestType};

#[cfg(feature = "bench-utils")]
pub mod bench_utils;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
pub(crate) mod test_utils;
