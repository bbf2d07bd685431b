//! The virtio-mmio transport (version 2): the register window a driver programs, in front of
//! one [`VirtioDevice`].

use super::{ActiveQueue, Interrupt, VirtioDevice};
use crate::error::{Error, Result};
use std::sync::Arc;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// "virt" in little-endian.
const MMIO_MAGIC: u32 = 0x7472_6976;
/// Modern virtio-mmio.
const MMIO_VERSION: u32 = 2;
/// Vendor ID reported to the driver ("TARN" is not registered; any value works).
const VENDOR_ID: u32 = 0x4e52_4154;

/// The transport of one device.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    kicks: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    active: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// A transport for `device`, whose queues live in `mem`.
    pub fn new(mem: GuestMemoryMmap, device: Box<dyn VirtioDevice>) -> Result<MmioTransport> {
        let mut queues = Vec::new();
        let mut kicks = Vec::new();
        for &max in device.queue_max_sizes() {
            queues.push(Queue::new(max).map_err(|e| Error::Queue(e.to_string()))?);
            kicks.push(EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("creating an eventfd"))?);
        }
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new()?),
            queues,
            kicks,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            active: false,
        })
    }

    /// The device's interrupt line (register its eventfd as an irqfd).
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The eventfds written when the driver notifies queue `i` (register them as ioeventfds
    /// on [`VIRTIO_MMIO_QUEUE_NOTIFY`] with the queue index as datamatch).
    pub fn kicks(&self) -> &[EventFd] {
        &self.kicks
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A driver's 32-bit read of register `reg` (a `VIRTIO_MMIO_*` offset).
    pub fn read_reg(&self, reg: u32) -> u32 {
        let mut b = [0; 4];
        self.read(u64::from(reg), &mut b);
        u32::from_le_bytes(b)
    }

    /// A driver's 32-bit write of `v` to register `reg` (a `VIRTIO_MMIO_*` offset).
    pub fn write_reg(&mut self, reg: u32, v: u32) {
        self.write(u64::from(reg), &v.to_le_bytes());
    }

    /// What a well-behaved driver does to start the device (tests and benchmarks): negotiate
    /// every offered feature, set up queue 0 of `size` entries with its rings at `desc`,
    /// `avail` and `used`, and say DRIVER_OK. Returns the device status read back after it.
    #[cfg(any(test, feature = "bench-utils"))]
    pub fn start_as_driver(&mut self, size: u16, desc: u64, avail: u64, used: u64) -> u32 {
        let negotiating =
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        self.write_reg(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.write_reg(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        for sel in 0..2 {
            self.write_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
            let f = self.read_reg(VIRTIO_MMIO_DEVICE_FEATURES);
            self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
            self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, f);
        }
        self.write_reg(VIRTIO_MMIO_STATUS, negotiating);
        self.write_reg(VIRTIO_MMIO_QUEUE_SEL, 0);
        self.write_reg(VIRTIO_MMIO_QUEUE_NUM, u32::from(size));
        for (low, high, addr) in [
            (
                VIRTIO_MMIO_QUEUE_DESC_LOW,
                VIRTIO_MMIO_QUEUE_DESC_HIGH,
                desc,
            ),
            (
                VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                avail,
            ),
            (
                VIRTIO_MMIO_QUEUE_USED_LOW,
                VIRTIO_MMIO_QUEUE_USED_HIGH,
                used,
            ),
        ] {
            self.write_reg(low, addr as u32);
            self.write_reg(high, (addr >> 32) as u32);
        }
        self.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
        self.write_reg(VIRTIO_MMIO_STATUS, negotiating | VIRTIO_CONFIG_S_DRIVER_OK);
        self.read_reg(VIRTIO_MMIO_STATUS)
    }

    /// A driver read of `data.len()` bytes at `offset` into the window.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        let q = self.queues.get(self.queue_sel as usize);
        let v: u32 = match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// A driver write of `data` at `offset` into the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            if self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
                self.device
                    .write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::debug!(
                "virtio-mmio: ignoring a {}-byte write at {offset:#x}",
                data.len()
            );
            return;
        };
        let v = u32::from_le_bytes(bytes);
        // Queue setup is only allowed before the driver says OK.
        let setup = self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0;
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES if setup => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM if setup => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v as u16);
                }
            }
            VIRTIO_MMIO_QUEUE_READY if setup => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW if setup => {
                self.with_queue(|q| q.set_desc_table_address(Some(v), None))
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH if setup => {
                self.with_queue(|q| q.set_desc_table_address(None, Some(v)))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW if setup => {
                self.with_queue(|q| q.set_avail_ring_address(Some(v), None))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH if setup => {
                self.with_queue(|q| q.set_avail_ring_address(None, Some(v)))
            }
            VIRTIO_MMIO_QUEUE_USED_LOW if setup => {
                self.with_queue(|q| q.set_used_ring_address(Some(v), None))
            }
            VIRTIO_MMIO_QUEUE_USED_HIGH if setup => {
                self.with_queue(|q| q.set_used_ring_address(None, Some(v)))
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                // Reached only without an ioeventfd (tests, or KVM without the capability).
                if let Some(k) = self.kicks.get(v as usize) {
                    let _ = k.write(1);
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(v),
            VIRTIO_MMIO_STATUS => self.set_status(v),
            _ => tracing::debug!("virtio-mmio: ignoring a write of {v:#x} at {offset:#x}"),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let newly = v & !self.status;
        self.status = v;
        if newly & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            if self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
                // Legacy drivers are not served: refuse FEATURES_OK (and take none of them).
                self.status &= !VIRTIO_CONFIG_S_FEATURES_OK;
            } else {
                self.device.ack_features(self.driver_features);
            }
        }
        if newly & VIRTIO_CONFIG_S_DRIVER_OK != 0 && !self.active {
            // A device runs only with the features this driver negotiated (FEATURES_OK
            // accepted), never with whatever an earlier driver left.
            let negotiated = self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0;
            let activated = if negotiated {
                self.activate()
            } else {
                Err(crate::Error::Queue(
                    "DRIVER_OK before the features were negotiated (FEATURES_OK)".into(),
                ))
            };
            if let Err(e) = activated {
                super::guest_fault(format_args!("virtio-mmio: activation failed: {e}"));
                self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                self.config_generation = self.config_generation.wrapping_add(1);
                self.interrupt.trigger(VIRTIO_MMIO_INT_CONFIG);
            }
        }
    }

    fn activate(&mut self) -> Result<()> {
        let mut active = Vec::new();
        for (q, k) in self.queues.iter().zip(&self.kicks) {
            if !q.is_valid(&self.mem) {
                return Err(Error::Queue(
                    "queue not ready, or its rings are outside guest memory".into(),
                ));
            }
            active.push(ActiveQueue {
                queue: Queue::try_from(q.state()).map_err(|e| Error::Queue(e.to_string()))?,
                kick: k.try_clone().map_err(Error::io("cloning an eventfd"))?,
            });
        }
        self.device
            .activate(self.mem.clone(), self.interrupt.clone(), active)?;
        self.active = true;
        Ok(())
    }

    /// Stops the device (waits for requests in flight).
    pub fn shutdown(&mut self) {
        self.device.reset();
        self.active = false;
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.active = false;
        self.interrupt.ack(u32::MAX);
    }
}
