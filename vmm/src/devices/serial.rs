//! The 8250 serial console (COM1), from vm-superio, interrupting through an irqfd.

use std::io::Write;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Raises the serial GSI by writing its irqfd.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// COM1: output goes to `W` (stdout or a file); there is no input.
pub type SerialConsole =
    Serial<EventFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>;
