//! virtio devices and their MMIO transport.

pub mod block;
pub mod mmio;

use crate::error::Result;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// A device's interrupt line: the virtio-mmio interrupt status bits and the eventfd that
/// raises the GSI (a KVM irqfd in a VM; a plain eventfd in tests).
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    evt: EventFd,
}

impl Interrupt {
    /// A new line with no bits set.
    pub fn new() -> Result<Interrupt> {
        Ok(Interrupt {
            status: AtomicU32::new(0),
            evt: EventFd::new(libc::EFD_NONBLOCK)
                .map_err(crate::Error::io("creating an interrupt eventfd"))?,
        })
    }

    /// Sets `bits` (`VIRTIO_MMIO_INT_*`) and raises the line.
    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::warn!("raising a virtio interrupt: {e}");
        }
    }

    /// The pending status bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears `bits` (the driver's acknowledgement).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The eventfd that raises the line (registered as an irqfd).
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// A queue handed to a device on activation, with the eventfd the driver kicks.
#[derive(Debug)]
pub struct ActiveQueue {
    /// The queue, addresses and size set by the driver.
    pub queue: Queue,
    /// Written when the driver notifies the queue (a KVM ioeventfd in a VM).
    pub kick: EventFd,
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// `VIRTIO_ID_*`.
    fn device_type(&self) -> u32;
    /// Largest size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered.
    fn features(&self) -> u64;
    /// The driver's accepted feature bits (only offered ones are kept).
    fn ack_features(&mut self, features: u64);
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts serving `queues`.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<()>;
    /// Stops serving (waiting for requests in flight) and forgets negotiated state.
    fn reset(&mut self);
}
