//! Building a VM, as recipes: [`build_linux`] boots a kernel, [`build_raw`] runs a few bytes
//! of 64-bit code (tiny test guests). Each step is a private function.

use crate::acpi::{self, MmioDeviceInfo};
use crate::config::VmConfig;
use crate::devices::boot_timer::BootTimer;
use crate::devices::console_out::ConsoleOut;
use crate::devices::serial::{feed_input, ConsoleInput, EventFdTrigger, InputRoom, SerialConsole};
use crate::devices::virtio::block::{Block, BlockOptions, Disk};
use crate::devices::virtio::mmio::MmioTransport;
use crate::error::{Error, Result};
use crate::layout;
use crate::vstate::{run_vcpu, Bus, ExitCounts, ExitStatus, Vm};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::{load_cmdline, Cmdline, KernelLoader, KernelLoaderResult};
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use zvol::BlockBackend;

/// A disk handed to the VMM: a backend the caller opened, and whether to expose it read-only.
#[derive(Clone)]
pub struct DiskBackend {
    /// The storage.
    pub backend: Arc<dyn BlockBackend>,
    /// Expose with `VIRTIO_BLK_F_RO`.
    pub read_only: bool,
}

/// Where the console goes.
pub enum Console {
    /// The VMM's stdout.
    Stdout,
    /// A file (created or truncated).
    File(std::path::PathBuf),
    /// Any writer (tests).
    Writer(Box<dyn Write + Send>),
}

/// A built VM, ready to run.
pub struct Vmm {
    vm: Vm,
    mem: GuestMemoryMmap,
    bus: Arc<Bus>,
    vcpus: Vec<VcpuFd>,
    /// Set when the vCPUs are to leave `KVM_RUN` for good.
    stop: Arc<AtomicBool>,
    /// What the guest reads from its console, if anything.
    input: Option<ConsoleInput>,
}

/// Stops a running [`Vmm`] from another thread (a signal handler's thread, say): its
/// [`Vmm::run`] then returns [`ExitStatus::Stopped`], unless the guest had already powered off
/// or rebooted.
#[derive(Clone, Debug)]
pub struct StopHandle {
    bus: Arc<Bus>,
    stop: Arc<AtomicBool>,
}

impl StopHandle {
    /// Asks the VM to stop; returns at once (the vCPUs stop within milliseconds).
    pub fn stop(&self) {
        self.bus.request_exit(ExitStatus::Stopped);
        self.stop.store(true, Ordering::SeqCst);
        // A vCPU waiting for room on the console's output goes on.
        self.bus.console.stop();
    }
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("vcpus", &self.vcpus.len())
            .field("bus", &self.bus)
            .finish_non_exhaustive()
    }
}

/// What a finished run reports.
#[derive(Debug)]
pub struct RunReport {
    /// Power-off or reboot.
    pub status: ExitStatus,
    /// Time from the VM's launch (its build began) to the guest's "init started" write, if
    /// it made one.
    pub init_time: Option<std::time::Duration>,
    /// Exits to user space: (total, port I/O, MMIO).
    pub exits: (u64, u64, u64),
}

/// Boots the Linux kernel of `config` with `disks` (in `config.disks` order).
pub fn build_linux(config: &VmConfig, disks: Vec<DiskBackend>, console: Console) -> Result<Vmm> {
    let launch = Instant::now();
    config.validate()?;
    let mem = create_memory(config.mem_size)?;
    let vm = Vm::new(&mem)?;
    let bus = create_bus(&vm, &mem, disks, console, launch)?;
    let devices = mmio_device_infos(bus.virtio.len());
    let rsdp = acpi::create_tables(&mem, config.cpus, &devices)?;
    let kernel = load_kernel(&mem, config)?;
    check_kernel_room(&kernel, config.mem_size)?;
    let initrd = match &config.initrd {
        Some(p) => Some(load_initrd(&mem, &kernel, p, config.mem_size)?),
        None => None,
    };
    let cmdline = build_cmdline(&config.cmdline, &kernel)?;
    load_cmdline(&mem, GuestAddress(layout::CMDLINE), &cmdline)
        .map_err(|e| Error::KernelLoad(format!("command line: {e}")))?;
    write_boot_params(&mem, &kernel, initrd, &cmdline, rsdp, config.mem_size)?;
    setup_page_tables(&mem)?;
    let entry = kernel_entry(&kernel);
    let vcpus = create_vcpus(&vm, &mem, config.cpus, entry, layout::ZERO_PAGE)?;
    Ok(Vmm {
        vm,
        mem,
        bus,
        vcpus,
        stop: Arc::new(AtomicBool::new(false)),
        input: None,
    })
}

/// Runs `code` in 64-bit mode at 0x10000 on one vCPU with `mem_size` bytes of RAM and
/// `disks` as virtio-mmio devices (no ACPI, no kernel): a tiny purpose-built guest.
pub fn build_raw(
    code: &[u8],
    mem_size: u64,
    disks: Vec<DiskBackend>,
    console: Console,
) -> Result<Vmm> {
    const CODE: u64 = 0x10000;
    let launch = Instant::now();
    let mem = create_memory(mem_size)?;
    let vm = Vm::new(&mem)?;
    let bus = create_bus(&vm, &mem, disks, console, launch)?;
    mem.write_slice(code, GuestAddress(CODE))
        .map_err(|e| Error::Memory(format!("writing guest code: {e}")))?;
    setup_page_tables(&mem)?;
    let vcpus = create_vcpus(&vm, &mem, 1, CODE, 0)?;
    Ok(Vmm {
        vm,
        mem,
        bus,
        vcpus,
        stop: Arc::new(AtomicBool::new(false)),
        input: None,
    })
}

impl Vmm {
    /// Guest memory (tests prepare rings and data in it before running).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Gives the guest's console (COM1) an input, read while the VM runs; its escape byte,
    /// if any, stops the VM as [`StopHandle::stop`] does.
    pub fn attach_console_input(&mut self, input: ConsoleInput) {
        self.input = Some(input);
    }

    /// A handle that stops this VM while [`Vmm::run`] runs it.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            bus: self.bus.clone(),
            stop: self.stop.clone(),
        }
    }

    /// Runs every vCPU on its own thread until the guest powers off or reboots, or a
    /// [`StopHandle`] stops it.
    pub fn run(self) -> Result<RunReport> {
        let Vmm {
            vm,
            mem,
            bus,
            vcpus,
            stop,
            input,
        } = self;
        let handle = StopHandle {
            bus: bus.clone(),
            stop: stop.clone(),
        };
        register_kick_signal()?;
        let feeder = match input {
            Some(input) => Some(spawn_feeder(input, handle)?),
            None => None,
        };
        let mut threads = Vec::new();
        let mut result = Ok(());
        for (i, vcpu) in vcpus.into_iter().enumerate() {
            let (vcpu_bus, vcpu_stop) = (bus.clone(), stop.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{i}"))
                .spawn(move || {
                    let r = run_vcpu(vcpu, &vcpu_bus, &vcpu_stop);
                    vcpu_stop.store(true, Ordering::SeqCst);
                    r
                })
                .map_err(Error::io("starting a vCPU thread"));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // The vCPUs already running are stopped and joined below.
                    stop.store(true, Ordering::SeqCst);
                    result = Err(e);
                    break;
                }
            }
        }
        // Wait for any vCPU to stop; then kick the others out of KVM_RUN (and out of a wait
        // for room on the console).
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        bus.console.release();
        for t in threads {
            while !t.is_finished() {
                use std::os::unix::thread::JoinHandleExt;
                // SAFETY: the thread has not been joined, so its pthread_t is valid; the
                // signal's handler does nothing (it only interrupts KVM_RUN).
                unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(Error::GuestFailed("a vCPU thread panicked".into())),
            }
        }
        if let Some(f) = feeder {
            // It looks at `stop` at least every 100 ms.
            let _ = f.join();
        }
        drop(vm);
        drop(mem);
        let status = *bus.exit.lock().unwrap_or_else(|e| e.into_inner());
        let exits = &bus.exits;
        let exits = (
            exits.total.load(Ordering::Relaxed),
            exits.pio.load(Ordering::Relaxed),
            exits.mmio.load(Ordering::Relaxed),
        );
        for t in &bus.virtio {
            t.lock().unwrap_or_else(|e| e.into_inner()).shutdown();
        }
        let dropped = bus.console.drain();
        if dropped > 0 {
            tracing::warn!(
                "{dropped} bytes of console output were dropped (the VM was stopped while \
                 nothing read the console, or writing it failed)"
            );
        }
        match (result, status) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(status)) => Ok(RunReport {
                status,
                init_time: bus.boot_timer.init_time(),
                exits,
            }),
            (Ok(()), None) => Err(Error::GuestFailed("vCPUs stopped without an exit".into())),
        }
    }
}

/// Starts the thread that feeds `input` to the console until the VM stops.
fn spawn_feeder(input: ConsoleInput, vm: StopHandle) -> Result<std::thread::JoinHandle<()>> {
    let room = vm
        .bus
        .serial
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .events()
        .0
        .try_clone()
        .map_err(Error::io("cloning the console's eventfd"))?;
    std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || feed_input(input, &vm.bus.serial, &room, &vm.stop, || vm.stop()))
        .map_err(Error::io("starting the console input thread"))
}

fn kick_signal() -> i32 {
    libc::SIGRTMIN() + 1
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn register_kick_signal() -> Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler)
        .map_err(|e| Error::io("registering the vCPU kick signal")(std::io::Error::from(e)))
}

/// RAM below the 32-bit MMIO hole, and the rest above 4 GiB.
fn create_memory(size: u64) -> Result<GuestMemoryMmap> {
    let low = size.min(layout::MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if size > low {
        ranges.push((GuestAddress(layout::MMIO_GAP_END), (size - low) as usize));
    }
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| {
        Error::InvalidConfig(format!(
            "cannot map {size} bytes of guest memory ({e}): give the guest less memory"
        ))
    })
}

fn create_bus(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    disks: Vec<DiskBackend>,
    console: Console,
    launch: Instant,
) -> Result<Arc<Bus>> {
    let out: Box<dyn Write + Send> = match console {
        Console::Stdout => Box::new(std::io::stdout()),
        Console::File(p) => {
            Box::new(File::create(&p).map_err(Error::io(format!("creating {}", p.display())))?)
        }
        Console::Writer(w) => w,
    };
    let (out, console) =
        ConsoleOut::spawn(out).map_err(Error::io("starting the console output thread"))?;
    let serial_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("creating an eventfd"))?;
    vm.fd()
        .register_irqfd(&serial_evt, layout::SERIAL_IRQ)
        .map_err(Error::kvm("KVM_IRQFD (serial)"))?;
    let room = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("creating an eventfd"))?;
    let serial =
        SerialConsole::with_events(EventFdTrigger(serial_evt), InputRoom(room), Box::new(out));
    if disks.len() > layout::MAX_VIRTIO_DEVICES {
        return Err(Error::InvalidConfig(format!(
            "{} disks: at most {}",
            disks.len(),
            layout::MAX_VIRTIO_DEVICES
        )));
    }
    let mut virtio = Vec::new();
    for (i, d) in disks.into_iter().enumerate() {
        let disk = Arc::new(Disk::new(d.backend, d.read_only));
        let name = format!("vd{}", (b'a' + i as u8) as char);
        let dev = Block::new(&name, disk, BlockOptions::default());
        let t = MmioTransport::new(mem.clone(), Box::new(dev))?;
        vm.wire_virtio(&t, layout::virtio_mmio_addr(i), layout::virtio_irq(i))?;
        virtio.push(Mutex::new(t));
    }
    Ok(Arc::new(Bus {
        serial: Mutex::new(serial),
        console,
        virtio,
        boot_timer: BootTimer::new(launch),
        exit: Mutex::new(None),
        exits: ExitCounts::default(),
    }))
}

fn mmio_device_infos(n: usize) -> Vec<MmioDeviceInfo> {
    (0..n)
        .map(|i| MmioDeviceInfo {
            addr: layout::virtio_mmio_addr(i),
            len: layout::VIRTIO_MMIO_SIZE,
            irq: layout::virtio_irq(i),
        })
        .collect()
}

/// Opens a kernel or initramfs file: a regular file or a block device. Anything else (a FIFO,
/// whose open would wait for a writer; a character device, which never ends) is refused.
pub(crate) fn open_image(path: &std::path::Path, what: &str) -> Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let err = || format!("opening the {what} {}", path.display());
    // Non-blocking, so that a FIFO does not hold the open; no effect on files and disks.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(Error::io(err()))?;
    let kind = f.metadata().map_err(Error::io(err()))?.file_type();
    if !kind.is_file() && !kind.is_block_device() {
        return Err(Error::InvalidConfig(format!(
            "{what} {}: not a regular file or block device",
            path.display()
        )));
    }
    Ok(f)
}

/// The size of a regular file or a block device (whose metadata says 0), leaving the
/// position at the start.
fn file_size(f: &mut File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let len = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(len)
}

/// Refuses an ELF whose loadable segments reach below 1 MiB, where this VMM keeps the boot
/// tables (ACPI, zero page, page tables, command line): the loader checks only that a
/// segment lies in guest RAM, so one there would be overwritten, or overwrite them. Leaves
/// the file at its start.
fn check_elf_segments(f: &mut File) -> std::result::Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    const PT_LOAD: u32 = 1;
    let io = |e: std::io::Error| format!("reading its program headers: {e}");
    let mut eh = [0u8; 64];
    f.read_exact(&mut eh).map_err(io)?;
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(w)
    };
    let (phoff, phentsize, phnum) = (u64_at(&eh, 32), u16_at(&eh, 54), u16_at(&eh, 56));
    if eh[4] != 2 || usize::from(phentsize) < 56 || phnum > 256 {
        return Err("not a 64-bit ELF with program headers of the usual size".into());
    }
    let mut ph = vec![0u8; usize::from(phentsize) * usize::from(phnum)];
    f.seek(SeekFrom::Start(phoff)).map_err(io)?;
    f.read_exact(&mut ph).map_err(io)?;
    for h in ph.chunks(usize::from(phentsize)) {
        let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let (paddr, memsz) = (u64_at(h, 24), u64_at(h, 40));
        if kind == PT_LOAD && memsz > 0 && paddr < layout::HIMEM_START {
            return Err(format!(
                "a segment loads at {paddr:#x}, below 1 MiB, where the boot tables go; link the \
                 kernel at 1 MiB or above"
            ));
        }
    }
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    Ok(())
}

/// Loads an ELF vmlinux or a 64-bit bzImage, told apart by their magic numbers, so that an
/// error names what is wrong with the one the file is.
fn load_kernel(mem: &GuestMemoryMmap, config: &VmConfig) -> Result<KernelLoaderResult> {
    use linux_loader::loader::{bzimage::BzImage, elf::Elf};
    use std::io::{Read, Seek, SeekFrom};
    let path = &config.kernel;
    let bad = |what: String| Error::KernelLoad(format!("{}: {what}", path.display()));
    let mut f = open_image(path, "kernel")?;
    let len = file_size(&mut f).map_err(Error::io(format!("reading {}", path.display())))?;
    let mut head = vec![0u8; 0x268.min(len as usize)];
    f.read_exact(&mut head)
        .and_then(|()| f.seek(SeekFrom::Start(0)))
        .map_err(Error::io(format!("reading {}", path.display())))?;
    let himem = Some(GuestAddress(layout::HIMEM_START));
    if head.starts_with(b"\x7fELF") {
        check_elf_segments(&mut f).map_err(|what| bad(format!("ELF vmlinux: {what}")))?;
        return Elf::load(mem, None, &mut f, himem).map_err(|e| bad(format!("ELF vmlinux: {e}")));
    }
    if head.get(0x202..0x206) != Some(b"HdrS") {
        return Err(bad(
            "neither an ELF vmlinux nor a bzImage (no ELF magic, no \"HdrS\" at 0x202)".into(),
        ));
    }
    if head.len() < 0x268 {
        return Err(bad(format!(
            "a truncated bzImage: {len} bytes, shorter than its setup header"
        )));
    }
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let (version, xloadflags) = (u16_at(0x206), head.get(0x236).map_or(0, |v| *v));
    if version < 0x020c || xloadflags & 1 == 0 {
        return Err(bad(format!(
            "not a 64-bit bzImage (boot protocol {}.{:02}, XLF_KERNEL_64 {}): this VMM enters \
             the kernel in 64-bit mode; boot a 64-bit x86 kernel of Linux 3.8 or later",
            version >> 8,
            version & 0xff,
            if xloadflags & 1 == 0 { "off" } else { "on" }
        )));
    }
    let setup_sects = u64::from(match head[0x1f1] {
        0 => 4,
        n => n,
    });
    let syssize = u64::from(u32::from_le_bytes([
        head[0x1f4],
        head[0x1f5],
        head[0x1f6],
        head[0x1f7],
    ]));
    let want = (setup_sects + 1) * 512 + syssize * 16;
    if len < want {
        return Err(bad(format!(
            "a truncated bzImage: {len} bytes, its header says {want}"
        )));
    }
    BzImage::load(mem, None, &mut f, himem).map_err(|e| bad(format!("bzImage: {e}")))
}

/// 64-bit entry: `startup_64` is 0x200 past a bzImage's protected-mode code; an ELF
/// vmlinux starts at its entry point.
fn kernel_entry(k: &KernelLoaderResult) -> u64 {
    match k.setup_header {
        Some(_) => k.kernel_load.0 + 0x200,
        None => k.kernel_load.0,
    }
}

/// The end of the memory the kernel needs before it runs: what was loaded and, for a bzImage,
/// the room it decompresses into (`init_size` from its preferred address). `None` if that
/// overflows (a header no kernel has).
fn kernel_top(kernel: &KernelLoaderResult) -> Option<u64> {
    match &kernel.setup_header {
        Some(h) => h
            .pref_address
            .max(kernel.kernel_load.0)
            .checked_add(u64::from(h.init_size))
            .map(|end| end.max(kernel.kernel_end)),
        None => Some(kernel.kernel_end),
    }
}

/// Refuses a kernel that would decompress past the end of guest RAM (a bzImage loads into
/// less memory than it unpacks into; the guest would die before printing a word).
fn check_kernel_room(kernel: &KernelLoaderResult, mem_size: u64) -> Result<()> {
    match kernel_top(kernel) {
        Some(top) if top <= mem_size.min(layout::MMIO_GAP_START) => Ok(()),
        Some(top) if top <= layout::MMIO_GAP_START => Err(Error::InvalidConfig(format!(
            "the kernel needs guest RAM up to {top:#x} to decompress into (its setup header's \
             init_size), more than the guest's {} MiB; give it at least {} MiB",
            mem_size >> 20,
            top.div_ceil(1 << 20) + 1
        ))),
        _ => Err(Error::KernelLoad(format!(
            "the kernel's setup header places it (with room to decompress) past guest RAM's \
             first {:#x} bytes: not a kernel this VMM can boot",
            layout::MMIO_GAP_START
        ))),
    }
}

/// Loads the initramfs page-aligned as high as possible below the MMIO hole and above the
/// kernel: above the end of what was loaded, and for a bzImage above the room it decompresses
/// into (`init_size` from its preferred address), so that neither overwrites the other.
fn load_initrd(
    mem: &GuestMemoryMmap,
    kernel: &KernelLoaderResult,
    path: &std::path::Path,
    mem_size: u64,
) -> Result<(u64, u64)> {
    let what = || format!("reading the initramfs {}", path.display());
    let mut f = open_image(path, "initramfs")?;
    let size = file_size(&mut f).map_err(Error::io(what()))?;
    let floor = kernel_top(kernel)
        .and_then(|t| t.checked_next_multiple_of(4096))
        .filter(|&f| f < layout::MMIO_GAP_START)
        .ok_or_else(|| {
            Error::KernelLoad(format!(
                "the kernel's setup header places it (with room to decompress) past guest RAM's \
                 first {:#x} bytes: not a kernel this VMM can boot",
                layout::MMIO_GAP_START
            ))
        })?;
    let mut top = mem_size.min(layout::MMIO_GAP_START);
    if let Some(h) = kernel
        .setup_header
        .as_ref()
        .filter(|h| h.initrd_addr_max != 0)
    {
        top = top.min(u64::from(h.initrd_addr_max) + 1);
    }
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= floor)
        .ok_or_else(|| {
            // Where RAM is the ceiling, more of it helps; the MMIO hole or the kernel's own
            // limit for an initramfs (initrd_addr_max) is a ceiling no memory size moves.
            let advice = if top == mem_size {
                format!(
                    "give the guest at least {} MiB of memory",
                    floor.saturating_add(size).div_ceil(1 << 20) + 1
                )
            } else {
                "use a smaller initramfs".to_string()
            };
            Error::InvalidConfig(format!(
                "the initramfs {} ({size} bytes) does not fit in guest RAM between the kernel \
                 (up to {floor:#x}) and {top:#x}; {advice}",
                path.display(),
            ))
        })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|e| Error::Memory(format!("{}: {e}", what())))?;
    Ok((addr, size))
}

/// The kernel command line, refused where it is longer than the kernel takes: its setup
/// header says (a bzImage), or x86 Linux's 2047 bytes (an ELF vmlinux). The kernel would cut
/// it short without a word, perhaps before `root=` or `init=`.
fn build_cmdline(s: &str, kernel: &KernelLoaderResult) -> Result<Cmdline> {
    let max = kernel
        .setup_header
        .map_or(2047, |h| h.cmdline_size as usize)
        .min(layout::CMDLINE_MAX - 1);
    if s.len() > max {
        return Err(Error::InvalidConfig(format!(
            "the kernel command line is {} bytes; this kernel takes at most {max}",
            s.len()
        )));
    }
    let mut c = Cmdline::new(layout::CMDLINE_MAX)
        .map_err(|e| Error::InvalidConfig(format!("command line: {e}")))?;
    c.insert_str(s)
        .map_err(|e| Error::InvalidConfig(format!("command line {s:?}: {e}")))?;
    Ok(c)
}

/// `boot_params`, as plain bytes for guest memory.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct BootParams(boot_params);

// SAFETY: boot_params is a C struct of integers and arrays of integers, with no padding
// requirements beyond what its packed layout defines; every bit pattern is valid.
unsafe impl ByteValued for BootParams {}

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &KernelLoaderResult,
    initrd: Option<(u64, u64)>,
    cmdline: &Cmdline,
    rsdp: u64,
    mem_size: u64,
) -> Result<()> {
    let mut p = BootParams::default();
    let mut hdr: setup_header = kernel.setup_header.unwrap_or_default();
    hdr.type_of_loader = 0xff;
    hdr.boot_flag = 0xaa55;
    hdr.header = 0x5372_6448; // "HdrS"
    hdr.kernel_alignment = 0x0100_0000;
    hdr.loadflags |= 1; // LOADED_HIGH
    hdr.cmd_line_ptr = layout::CMDLINE as u32;
    let len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0);
    hdr.cmdline_size = len as u32;
    if let Some((addr, size)) = initrd {
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = size as u32;
    }
    p.0.hdr = hdr;
    p.0.acpi_rsdp_addr = rsdp;
    let low = mem_size.min(layout::MMIO_GAP_START);
    let mut e820 = vec![
        (0, layout::EBDA_START, E820_RAM),
        (
            layout::EBDA_START,
            layout::HIMEM_START - layout::EBDA_START,
            E820_RESERVED,
        ),
        (layout::HIMEM_START, low - layout::HIMEM_START, E820_RAM),
    ];
    if mem_size > low {
        e820.push((layout::MMIO_GAP_END, mem_size - low, E820_RAM));
    }
    for (i, (addr, size, ty)) in e820.into_iter().enumerate() {
        p.0.e820_table[i].addr = addr;
        p.0.e820_table[i].size = size;
        p.0.e820_table[i].r#type = ty;
        p.0.e820_entries = i as u8 + 1;
    }
    mem.write_obj(p, GuestAddress(layout::ZERO_PAGE))
        .map_err(|e| Error::Memory(format!("writing boot_params: {e}")))
}

/// Identity map of the first 4 GiB (RAM and the MMIO hole) with 2 MiB pages: four page
/// directories from [`layout::PD`].
fn setup_page_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let w = |v: u64, a: u64| {
        mem.write_obj(v, GuestAddress(a))
            .map_err(|e| Error::Memory(format!("writing page tables: {e}")))
    };
    w(layout::PDPT | 3, layout::PML4)?;
    for d in 0..4u64 {
        w((layout::PD + d * 0x1000) | 3, layout::PDPT + d * 8)?;
    }
    for i in 0..2048u64 {
        w((i << 21) | 0x83, layout::PD + i * 8)?;
    }
    Ok(())
}

fn create_vcpus(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    n: u8,
    entry: u64,
    zero_page: u64,
) -> Result<Vec<VcpuFd>> {
    let mut out = Vec::new();
    for id in 0..n {
        let vcpu = vm.create_vcpu(id, n)?;
        if id == 0 {
            setup_boot_cpu(&vcpu, mem, entry, zero_page)?;
        }
        out.push(vcpu);
    }
    Ok(out)
}

/// Long mode, paging on, flat segments, `rip = entry`, `rsi = zero_page`.
fn setup_boot_cpu(vcpu: &VcpuFd, mem: &GuestMemoryMmap, entry: u64, zero_page: u64) -> Result<()> {
    let gdt: [u64; 4] = [
        0,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x008f_8b00_0000_ffff,
    ];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(layout::BOOT_GDT + i as u64 * 8))
            .map_err(|e| Error::Memory(format!("writing the GDT: {e}")))?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT))
        .map_err(|e| Error::Memory(format!("writing the IDT: {e}")))?;
    let mut s = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    let seg = |sel: u16, ty: u8, l: u8| kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: sel,
        type_: ty,
        present: 1,
        dpl: 0,
        db: u8::from(l == 0),
        s: 1,
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    s.cs = seg(8, 0xb, 1);
    s.ds = seg(16, 3, 0);
    s.es = s.ds;
    s.fs = s.ds;
    s.gs = s.ds;
    s.ss = s.ds;
    s.tr = kvm_segment {
        s: 0,
        ..seg(24, 0xb, 0)
    };
    s.gdt.base = layout::BOOT_GDT;
    s.gdt.limit = (gdt.len() * 8 - 1) as u16;
    s.idt.base = layout::BOOT_IDT;
    s.idt.limit = 7;
    s.cr3 = layout::PML4;
    s.cr4 = 0x20; // PAE
    s.cr0 = 0x8000_0033; // PG | ET | MP | PE (+NE)
    s.efer = 0x500; // LME | LMA
    vcpu.set_sregs(&s).map_err(Error::kvm("KVM_SET_SREGS"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(Error::kvm("KVM_SET_FPU"))?;
    let regs = kvm_regs {
        rip: entry,
        rsp: layout::BOOT_STACK,
        rbp: layout::BOOT_STACK,
        rsi: zero_page,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))
}
