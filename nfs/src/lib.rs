//! NFSv3 export of Tarn pools, and NFS-backed block backends.
//!
//! - [`view`]: a pool as files and directories (no NFS in it; a FUSE mount can reuse it).
//! - [`server`]: `nfs3_server` over the view — NFSv3, MOUNT and portmapper on one TCP port,
//!   stable handles, UNSTABLE writes durable at COMMIT (a per-start write verifier),
//!   `--allow` at accept time; [`readahead`] for sequential READs.
//! - [`client`]: [`NfsDisk`], a `zvol::BlockBackend` over `nfs3_client`
//!   (`nfs://HOST:PORT/POOL/VOL`).
pub mod client;
pub mod readahead;
pub mod server;
pub mod view;

pub use client::{NfsDisk, NfsOptions, NfsUrl, REPLAY_MAX, RETRY_WINDOW, RPC_TIMEOUT};
pub use server::{Cidr, ConnectionLimits, NfsExport, ServeConfig, Server};
pub use view::{FileView, ViewError, ViewOptions};
