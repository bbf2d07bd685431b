//! Where things live in guest-physical memory and I/O space (x86_64).

/// GDT used for the 64-bit boot.
pub const BOOT_GDT: u64 = 0x500;
/// Empty IDT used for the 64-bit boot.
pub const BOOT_IDT: u64 = 0x520;
/// Linux boot parameters ("zero page").
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Boot page tables: PML4, PDPT, four PDs at 0xb000..0xf000 (identity map of the first
/// 4 GiB with 2 MiB pages).
pub const PML4: u64 = 0x9000;
/// See [`PML4`].
pub const PDPT: u64 = 0xa000;
/// See [`PML4`].
pub const PD: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE: u64 = 0x20000;
/// Longest kernel command line accepted (bytes, with the terminating NUL).
pub const CMDLINE_MAX: usize = 4096;
/// End of conventional low memory (start of the EBDA hole).
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables (RSDP first, where a scanning kernel looks: 0xe0000..0x100000).
pub const ACPI_START: u64 = 0xe0000;
/// End of the ACPI area.
pub const ACPI_END: u64 = 0x100000;
/// Kernels load at 1 MiB and above.
pub const HIMEM_START: u64 = 0x100000;
/// Start of the 32-bit MMIO hole: RAM beyond it continues at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device; each takes [`VIRTIO_MMIO_SIZE`] bytes.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Boot timer: the guest writes [`BOOT_TIMER_MAGIC`] here (e.g. `devmem 0xd1000000 8 123`).
pub const BOOT_TIMER_ADDR: u64 = 0xd100_0000;
/// Value that marks "init started" on the boot timer.
pub const BOOT_TIMER_MAGIC: u8 = 123;
/// IOAPIC registers.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// COM1.
pub const SERIAL_PORT: u16 = 0x3f8;
/// COM1's interrupt.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 command port: writing 0xfe resets the machine (`reboot=k`).
pub const I8042_CMD_PORT: u16 = 0x64;
/// ACPI hardware-reduced sleep control / status / reset register.
pub const ACPI_PM_PORT: u16 = 0x600;
/// Value of the ACPI reset register that resets the machine.
pub const ACPI_RESET_VALUE: u8 = 1;
/// S5 (soft off) sleep type, as declared by `_S5_` in the DSDT.
pub const ACPI_S5_TYPE: u8 = 5;
/// First GSI handed to virtio devices.
pub const FIRST_VIRTIO_IRQ: u32 = 5;
/// Most virtio devices (GSIs 5..=22 of the IOAPIC's 24).
pub const MAX_VIRTIO_DEVICES: usize = 18;

/// The MMIO base of virtio device `i`.
pub fn virtio_mmio_addr(i: usize) -> u64 {
    VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE
}

/// The GSI of virtio device `i`.
pub fn virtio_irq(i: usize) -> u32 {
    FIRST_VIRTIO_IRQ + i as u32
}
