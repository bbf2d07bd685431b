//! The boot timer: the guest writes [`crate::layout::BOOT_TIMER_MAGIC`] to
//! [`crate::layout::BOOT_TIMER_ADDR`] when its init starts (`devmem 0xd1000000 8 123`), and
//! the VMM records how long that took since the VM's launch: the moment its build began
//! (memory, KVM, devices and the kernel's loading count, as they do for any VMM's boot).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Records the first "init started" write.
#[derive(Debug)]
pub struct BootTimer {
    start: Instant,
    init: Mutex<Option<Duration>>,
}

impl BootTimer {
    /// A timer counting from `launch`.
    pub fn new(launch: Instant) -> BootTimer {
        BootTimer {
            start: launch,
            init: Mutex::new(None),
        }
    }

    /// A guest write.
    pub fn write(&self, data: &[u8]) {
        if data.first() == Some(&crate::layout::BOOT_TIMER_MAGIC) {
            let mut init = self.init.lock().unwrap_or_else(|e| e.into_inner());
            if init.is_none() {
                let t = self.start.elapsed();
                tracing::info!("guest init started {:.3} s after launch", t.as_secs_f64());
                *init = Some(t);
            }
        }
    }

    /// Time from launch to the guest's init, once reported.
    pub fn init_time(&self) -> Option<Duration> {
        *self.init.lock().unwrap_or_else(|e| e.into_inner())
    }
}
