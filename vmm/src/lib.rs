//! Tarn's KVM virtual machine monitor: vCPUs, memory, ACPI, an 8250 serial console,
//! virtio-mmio, and virtio-blk on any [`zvol::BlockBackend`].
//!
//! The VMM never opens pools: callers build backends and hand them over.

pub mod config;
pub mod devices;
pub mod error;
pub mod layout;
pub mod tiny_kernel;

pub use config::{DiskConfig, VmConfig};
pub use error::{Error, Result};
pub mod acpi;
pub mod builder;
pub mod cpuid;
pub mod vstate;

pub use builder::{build_linux, build_raw, Console, DiskBackend, RunReport, StopHandle, Vmm};
pub use devices::serial::ConsoleInput;
pub use vstate::ExitStatus;
