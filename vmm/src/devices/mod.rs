//! Devices: serial console (and its output thread), boot timer, virtio-mmio transport and
//! virtio devices.

pub mod boot_timer;
pub mod console_out;
pub mod serial;
pub mod virtio;
