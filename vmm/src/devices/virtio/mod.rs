//! virtio devices and their MMIO transport.

pub mod block;
pub mod mmio;

use crate::error::Result;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Instant;
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

/// Warnings about guest faults logged per second; the rest go to `debug`.
const GUEST_FAULTS_PER_SEC: u64 = 10;

/// Logs a fault a guest caused (a malformed ring, chain or register write): at most
/// [`GUEST_FAULTS_PER_SEC`] warnings a second, then one line saying how many more there were,
/// so that a hostile guest cannot flood the host's log (one broken chain per request is
/// hundreds of thousands of lines a second).
pub(crate) fn guest_fault(msg: std::fmt::Arguments<'_>) {
    static START: OnceLock<Instant> = OnceLock::new();
    static SECOND: AtomicU64 = AtomicU64::new(0);
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let now = START.get_or_init(Instant::now).elapsed().as_secs();
    let second = SECOND.load(Ordering::Relaxed);
    if now != second
        && SECOND
            .compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let more = COUNT
            .swap(0, Ordering::Relaxed)
            .saturating_sub(GUEST_FAULTS_PER_SEC);
        if more > 0 {
            tracing::warn!("virtio: {more} more guest faults in the last second (debug logs them)");
        }
    }
    if COUNT.fetch_add(1, Ordering::Relaxed) < GUEST_FAULTS_PER_SEC {
        tracing::warn!("{msg}");
    } else {
        tracing::debug!("{msg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_faults_are_logged_at_most_ten_a_second() {
        use std::sync::{Arc, Mutex};
        use tracing::subscriber::with_default;
        /// Counts WARN events.
        struct Count(Arc<Mutex<u64>>);
        impl tracing::Subscriber for Count {
            fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
                tracing::span::Id::from_u64(1)
            }
            fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
            fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
            fn event(&self, e: &tracing::Event<'_>) {
                if *e.metadata().level() == tracing::Level::WARN {
                    *self.0.lock().unwrap() += 1;
                }
            }
            fn enter(&self, _: &tracing::span::Id) {}
            fn exit(&self, _: &tracing::span::Id) {}
        }
        let warned = Arc::new(Mutex::new(0));
        let t = Instant::now();
        with_default(Count(warned.clone()), || {
            for i in 0..100_000 {
                guest_fault(format_args!("broken chain {i}"));
            }
        });
        let secs = t.elapsed().as_secs() + 2;
        let n = *warned.lock().unwrap();
        assert!(
            n <= (GUEST_FAULTS_PER_SEC + 1) * secs,
            "{n} warnings for 100,000 faults in under {secs} s"
        );
        assert!(n >= 1, "faults are still reported");
    }
}
