//! Minimal ELF `vmlinux` images around a few bytes of 64-bit code: tiny guests that boot
//! through the same Linux path ([`crate::build_linux`], `tarn vm run`) as a real kernel, for
//! tests of everything around the guest (loading, stopping, cleaning up).

/// Whether this host's `/dev/kvm` opens read-write, as a VM needs; if not, prints
/// `SKIP {what}: …` saying why (for tests that need a VM).
pub fn kvm_usable(what: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIP {what}: /dev/kvm cannot be opened ({e}); it needs a usable KVM");
            false
        }
    }
}

/// Code that idles for ever: `sti; hlt; jmp` back to the `sti`. It sleeps in `KVM_RUN` (no
/// exits, no CPU) until the VM is stopped.
pub const IDLE: &[u8] = &[0xfb, 0xf4, 0xeb, 0xfc];

/// Code that powers the VM off: `out dx, al` of SLP_TYP S5 | SLP_EN to the ACPI PM1 control
/// port (0x600).
pub const POWER_OFF: &[u8] = &[0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee];

/// Code that reboots the VM: `out 0x64, al` of 0xfe (the i8042's CPU reset).
pub const REBOOT: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64];

/// Code that echoes every byte it reads from COM1 back to COM1 (polling the line status
/// register: no interrupts) until it reads `q`, which it does not echo; it then falls through
/// to whatever follows it (put [`POWER_OFF`] there).
pub const ECHO: &[u8] = &[
    0x66, 0xba, 0xfd, 0x03, // 0: mov dx, 0x3fd (line status)
    0xec, // 4: in al, dx
    0xa8, 0x01, // 5: test al, 1 (data ready)
    0x74, 0xfb, // 7: jz 4
    0x66, 0xba, 0xf8, 0x03, // 9: mov dx, 0x3f8 (data)
    0xec, // 13: in al, dx
    0x3c, b'q', // 14: cmp al, 'q'
    0x74, 0x03, // 16: je 21 (the end)
    0xee, // 18: out dx, al
    0xeb, 0xeb, // 19: jmp 0
];

/// Code that writes `x` to COM1 for ever, as fast as the UART takes it (no waiting for the
/// transmitter: the VMM's UART is always ready).
pub const SPEW: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // 0: mov dx, 0x3f8 (data)
    0xb0, b'x', // 4: mov al, 'x'
    0xee, // 6: out dx, al
    0xeb, 0xfd, // 7: jmp 6
];

/// An ELF64 x86-64 executable with one loadable segment: `code` at physical (and virtual)
/// address `paddr`, taking `memsz` bytes of memory (at least `code`'s length), entered at
/// `paddr`.
pub fn elf_image(code: &[u8], paddr: u64, memsz: u64) -> Vec<u8> {
    const CODE_AT: u64 = 0x1000;
    let filesz = code.len() as u64;
    let mut b = vec![0u8; CODE_AT as usize];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // 64-bit
    b[5] = 1; // little-endian
    b[6] = 1; // version
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[24..32].copy_from_slice(&paddr.to_le_bytes()); // entry
    b[32..40].copy_from_slice(&64u64.to_le_bytes()); // program headers at 64
    b[52..54].copy_from_slice(&64u16.to_le_bytes()); // header size
    b[54..56].copy_from_slice(&56u16.to_le_bytes()); // program header size
    b[56..58].copy_from_slice(&1u16.to_le_bytes()); // one of them
    let ph = &mut b[64..120];
    ph[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    ph[8..16].copy_from_slice(&CODE_AT.to_le_bytes()); // file offset
    ph[16..24].copy_from_slice(&paddr.to_le_bytes()); // vaddr
    ph[24..32].copy_from_slice(&paddr.to_le_bytes()); // paddr
    ph[32..40].copy_from_slice(&filesz.to_le_bytes());
    ph[40..48].copy_from_slice(&memsz.max(filesz).to_le_bytes());
    ph[48..56].copy_from_slice(&CODE_AT.to_le_bytes()); // alignment
    b.extend_from_slice(code);
    b
}
