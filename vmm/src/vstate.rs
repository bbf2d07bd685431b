//! A thin layer over KVM: the VM (memory slots, in-kernel irqchip and PIT, ioeventfds,
//! irqfds), the vCPUs (x86_64 register, CPUID, LAPIC setup) and the exit loop that hands
//! port and MMIO accesses to the [`Bus`].

use crate::devices::boot_timer::BootTimer;
use crate::devices::console_out::ConsoleHandle;
use crate::devices::serial::SerialConsole;
use crate::devices::virtio::mmio::MmioTransport;
use crate::error::{Error, Result};
use crate::layout;
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuExit, VcpuFd, VmFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// How the guest ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ExitStatus {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest rebooted (ACPI reset, i8042 reset, or a triple fault).
    Reboot,
    /// The VMM was told to stop ([`crate::StopHandle::stop`]) before the guest powered off or
    /// rebooted: as if its power were cut. Requests the devices completed stay completed.
    Stopped,
}

/// Exit counters, for benchmarks.
#[derive(Debug, Default)]
pub struct ExitCounts {
    /// Port I/O exits.
    pub pio: AtomicU64,
    /// MMIO exits.
    pub mmio: AtomicU64,
    /// All exits to user space.
    pub total: AtomicU64,
}

/// Where guest port and MMIO accesses go.
pub struct Bus {
    /// COM1.
    pub serial: Mutex<SerialConsole>,
    /// The console's output thread (the UART writes into it).
    pub console: ConsoleHandle,
    /// virtio-mmio devices, in window order from [`layout::VIRTIO_MMIO_BASE`].
    pub virtio: Vec<Mutex<MmioTransport>>,
    /// The boot timer.
    pub boot_timer: BootTimer,
    /// Set once the guest asked to power off or reboot.
    pub exit: Mutex<Option<ExitStatus>>,
    /// Exit counters.
    pub exits: ExitCounts,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("virtio", &self.virtio.len())
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

impl Bus {
    pub(crate) fn request_exit(&self, s: ExitStatus) {
        let mut e = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        e.get_or_insert(s);
    }

    fn pio_out(&self, port: u16, data: &[u8]) {
        let v = data.first().copied().unwrap_or(0);
        match port {
            p if (layout::SERIAL_PORT..layout::SERIAL_PORT + 8).contains(&p) => {
                let mut s = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = s.write((p - layout::SERIAL_PORT) as u8, v) {
                    tracing::debug!("serial: {e:?}");
                }
            }
            layout::I8042_CMD_PORT if v == 0xfe => self.request_exit(ExitStatus::Reboot),
            layout::ACPI_PM_PORT => {
                if v == layout::ACPI_RESET_VALUE {
                    self.request_exit(ExitStatus::Reboot);
                } else if v & (1 << 5) != 0 && (v >> 2) & 7 == layout::ACPI_S5_TYPE {
                    self.request_exit(ExitStatus::PowerOff);
                }
            }
            _ => {}
        }
    }

    fn pio_in(&self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        if (layout::SERIAL_PORT..layout::SERIAL_PORT + 8).contains(&port) {
            let mut s = self.serial.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(b) = data.first_mut() {
                *b = s.read((port - layout::SERIAL_PORT) as u8);
            }
        } else if port == layout::ACPI_PM_PORT || port == layout::I8042_CMD_PORT {
            data.fill(0);
        }
    }

    fn virtio_at(&self, addr: u64) -> Option<(&Mutex<MmioTransport>, u64)> {
        let off = addr.checked_sub(layout::VIRTIO_MMIO_BASE)?;
        let i = (off / layout::VIRTIO_MMIO_SIZE) as usize;
        self.virtio
            .get(i)
            .map(|t| (t, off % layout::VIRTIO_MMIO_SIZE))
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match self.virtio_at(addr) {
            Some((t, off)) => t.lock().unwrap_or_else(|e| e.into_inner()).read(off, data),
            None => data.fill(0xff),
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if addr == layout::BOOT_TIMER_ADDR {
            self.boot_timer.write(data);
        } else if let Some((t, off)) = self.virtio_at(addr) {
            t.lock().unwrap_or_else(|e| e.into_inner()).write(off, data);
        }
    }
}

/// An x86_64 KVM VM with its memory registered and an in-kernel irqchip and PIT.
#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

/// MSRs a firmware would have set before the kernel: fast string operations on (KVM's reset
/// value leaves them off, and Linux on an Intel CPU then turns off its fast `rep movs`/`stos`
/// memcpy and memset), and the MTRRs enabled with write-back as the default type (with them
/// off, Linux also leaves PAT uninitialised). Best effort: a KVM that refuses one (PVM) boots
/// the guest as before.
fn set_boot_msrs(vcpu: &VcpuFd, id: u8) {
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    const MTRR_ENABLE_WRITE_BACK: u64 = (1 << 11) | 6;
    let entries = [
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITE_BACK),
    ];
    for (index, data) in entries {
        let msr = kvm_bindings::kvm_msr_entry {
            index,
            data,
            ..Default::default()
        };
        let set = kvm_bindings::Msrs::from_entries(&[msr])
            .map_err(|e| format!("{e:?}"))
            .and_then(|m| vcpu.set_msrs(&m).map_err(|e| e.to_string()));
        if set != Ok(1) {
            tracing::debug!(vcpu = id, msr = index, ?set, "KVM did not take a boot MSR");
        }
    }
}

impl Vm {
    /// Opens `/dev/kvm`, creates the VM, registers `mem`, creates the irqchip and PIT.
    pub fn new(mem: &GuestMemoryMmap) -> Result<Vm> {
        let kvm = Kvm::new().map_err(Error::kvm("opening /dev/kvm"))?;
        let fd = kvm.create_vm().map_err(Error::kvm("creating the VM"))?;
        fd.set_tss_address(0xfffb_d000)
            .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
        for (slot, r) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(r.start_addr())
                .map_err(|e| Error::Memory(e.to_string()))?;
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: r.start_addr().raw_value(),
                memory_size: r.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region is mapped by `mem`, which the caller keeps alive (in
            // `Vmm`) for as long as the VM exists.
            unsafe { fd.set_user_memory_region(region) }
                .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
        }
        fd.create_irq_chip()
            .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(Error::kvm("KVM_CREATE_PIT2"))?;
        Ok(Vm { kvm, fd })
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Wires a virtio-mmio transport: queue kicks as ioeventfds on its notify register, its
    /// interrupt as an irqfd on `gsi`.
    pub fn wire_virtio(&self, t: &MmioTransport, base: u64, gsi: u32) -> Result<()> {
        let notify = base + u64::from(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY);
        for (i, k) in t.kicks().iter().enumerate() {
            self.fd
                .register_ioevent(k, &IoEventAddress::Mmio(notify), i as u32)
                .map_err(Error::kvm("KVM_IOEVENTFD"))?;
        }
        self.fd
            .register_irqfd(t.interrupt().eventfd(), gsi)
            .map_err(Error::kvm("KVM_IRQFD"))
    }

    /// Creates vCPU `id` of `cpus` with the host-supported CPUID (its APIC ID and the VM's
    /// topology patched in, [`crate::cpuid`]) and its LAPIC's LINT0 as ExtINT and LINT1 as NMI.
    pub fn create_vcpu(&self, id: u8, cpus: u8) -> Result<VcpuFd> {
        let vcpu = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        let mut cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        crate::cpuid::patch(&mut cpuid, id, cpus);
        vcpu.set_cpuid2(&cpuid)
            .map_err(Error::kvm("KVM_SET_CPUID2"))?;
        set_boot_msrs(&vcpu, id);
        let mut lapic = vcpu.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
        let set = |regs: &mut [std::os::raw::c_char], off: usize, mode: u32| {
            let mut b = [0u8; 4];
            for (i, x) in b.iter_mut().enumerate() {
                *x = regs[off + i] as u8;
            }
            let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
            for (i, x) in v.to_le_bytes().iter().enumerate() {
                regs[off + i] = *x as std::os::raw::c_char;
            }
        };
        set(&mut lapic.regs, 0x350, 7); // LVT0: ExtINT
        set(&mut lapic.regs, 0x360, 4); // LVT1: NMI
        vcpu.set_lapic(&lapic)
            .map_err(Error::kvm("KVM_SET_LAPIC"))?;
        Ok(vcpu)
    }
}

/// Runs `vcpu` until the guest asks to power off or reboot, or `stop` is set.
pub fn run_vcpu(mut vcpu: VcpuFd, bus: &Bus, stop: &AtomicBool) -> Result<()> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let exit = match vcpu.run() {
            Ok(e) => e,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                continue;
            }
            Err(e) => {
                return Err(Error::Kvm {
                    what: "KVM_RUN",
                    source: e,
                })
            }
        };
        bus.exits.total.fetch_add(1, Ordering::Relaxed);
        match exit {
            VcpuExit::IoOut(port, data) => {
                bus.exits.pio.fetch_add(1, Ordering::Relaxed);
                bus.pio_out(port, data);
            }
            VcpuExit::IoIn(port, data) => {
                bus.exits.pio.fetch_add(1, Ordering::Relaxed);
                bus.pio_in(port, data);
            }
            VcpuExit::MmioRead(addr, data) => {
                bus.exits.mmio.fetch_add(1, Ordering::Relaxed);
                bus.mmio_read(addr, data);
            }
            VcpuExit::MmioWrite(addr, data) => {
                bus.exits.mmio.fetch_add(1, Ordering::Relaxed);
                bus.mmio_write(addr, data);
            }
            VcpuExit::Shutdown => bus.request_exit(ExitStatus::Reboot),
            VcpuExit::Hlt => {
                return Err(Error::GuestFailed(
                    "vCPU halted with interrupts off; nothing can wake it".into(),
                ))
            }
            VcpuExit::FailEntry(reason, cpu) => {
                return Err(Error::GuestFailed(format!(
                    "KVM entry failed: reason {reason:#x} on CPU {cpu}"
                )))
            }
            VcpuExit::InternalError => {
                return Err(Error::GuestFailed(
                    "KVM internal error (an instruction KVM cannot emulate?)".into(),
                ))
            }
            VcpuExit::SystemEvent(kind, _) => bus.request_exit(system_event(kind)?),
            // Entering again would only repeat them.
            e @ (VcpuExit::Unknown | VcpuExit::Exception) => {
                return Err(Error::GuestFailed(format!(
                    "KVM stopped the vCPU with an exit it cannot explain ({e:?})"
                )))
            }
            other => tracing::debug!("unhandled vCPU exit {other:?}"),
        }
        if bus.exit.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            stop.store(true, Ordering::SeqCst);
            return Ok(());
        }
    }
}

/// What a `KVM_EXIT_SYSTEM_EVENT` of type `kind` means for the run: the guest powered off or
/// reset (the exit status says which), or it crashed (an error: the guest failed).
fn system_event(kind: u32) -> Result<ExitStatus> {
    match kind {
        KVM_SYSTEM_EVENT_SHUTDOWN => Ok(ExitStatus::PowerOff),
        KVM_SYSTEM_EVENT_RESET => Ok(ExitStatus::Reboot),
        KVM_SYSTEM_EVENT_CRASH => Err(Error::GuestFailed(
            "the guest crashed (KVM system event CRASH)".into(),
        )),
        other => Err(Error::GuestFailed(format!(
            "KVM reported system event {other}, which this VMM does not know"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_events_end_the_run_as_the_guest_asked() {
        assert_eq!(
            system_event(KVM_SYSTEM_EVENT_SHUTDOWN).ok(),
            Some(ExitStatus::PowerOff)
        );
        assert_eq!(
            system_event(KVM_SYSTEM_EVENT_RESET).ok(),
            Some(ExitStatus::Reboot)
        );
        for kind in [KVM_SYSTEM_EVENT_CRASH, 77] {
            let e = system_event(kind).expect_err("not a clean end");
            assert!(matches!(e, Error::GuestFailed(_)), "{e}");
        }
    }
}
