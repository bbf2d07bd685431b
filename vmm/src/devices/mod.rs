//! Devices: serial console, boot timer, virtio-mmio transport and virtio devices.

pub mod boot_timer;
pub mod serial;
pub mod virtio;
