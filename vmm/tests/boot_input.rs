//! Bad kernels, initramfs files, command lines and memory sizes get an error that says what
//! is wrong with them, before any vCPU runs: a truncated or 32-bit bzImage, one that would
//! decompress past the guest's RAM, a file that is neither kind of kernel, a damaged ELF, an initramfs that would overlap the kernel or is not
//! a file, a command line longer than the kernel takes, a memory size in odd bytes.
//!
//! Builds VMs on the host's /dev/kvm (nothing runs in them); skips, saying why, without it.

#![allow(clippy::unwrap_used)] // test helpers

mod common;

use std::path::Path;
use vmm::{build_linux, Console, VmConfig};

/// The error `build_linux` gives for `config` (it must fail).
fn error_of(config: &VmConfig) -> String {
    match build_linux(
        config,
        Vec::new(),
        Console::Writer(Box::new(std::io::sink())),
    ) {
        Ok(_) => panic!("{config:?} was accepted"),
        Err(e) => e.to_string(),
    }
}

/// A bzImage setup header (one setup sector) with `version`, `xloadflags` and `syssize`.
fn bzimage(version: u16, xloadflags: u8, syssize: u32, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    b[0x1f1] = 1;
    b[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
    b[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    b[0x211] = 1; // LOADED_HIGH
    b[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start: 1 MiB
    b[0x236] = xloadflags;
    b
}

/// An ELF64 vmlinux with one PT_LOAD segment of `filesz` bytes of `hlt` at `paddr`, taking
/// `memsz` bytes of memory (its bss included), entered at `paddr`.
fn elf(paddr: u64, filesz: u64, memsz: u64) -> Vec<u8> {
    vmm::tiny_kernel::elf_image(&vec![0xf4; filesz as usize], paddr, memsz)
}

fn config(dir: &Path, kernel: &[u8]) -> VmConfig {
    let path = dir.join("kernel");
    std::fs::write(&path, kernel).unwrap();
    let mut c = VmConfig::new(path);
    c.mem_size = 64 << 20;
    c
}

#[test]
fn bad_kernels_are_named_for_what_they_are() {
    if !common::kvm_usable("boot_input") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let e = error_of(&config(dir.path(), &[0x55; 4096]));
    assert!(e.contains("neither an ELF vmlinux nor a bzImage"), "{e}");
    let e = error_of(&config(dir.path(), &bzimage(0x020f, 1, 0x10_0000, 8192)));
    assert!(e.contains("truncated bzImage"), "{e}");
    let e = error_of(&config(dir.path(), &bzimage(0x0202, 0, 1, 8192)));
    assert!(e.contains("not a 64-bit bzImage"), "{e}");
    let e = error_of(&config(dir.path(), &bzimage(0x020f, 0, 1, 8192)));
    assert!(e.contains("XLF_KERNEL_64 off"), "{e}");
    // A header cut short right after its magic: an error, not an index out of bounds.
    let mut short = bzimage(0x020f, 1, 1, 8192);
    short.truncate(0x207);
    let e = error_of(&config(dir.path(), &short));
    assert!(e.contains("truncated bzImage"), "{e}");
    // A preferred address at the top of the address space: no overflow placing an initramfs.
    let mut far = bzimage(0x020f, 1, 1, 8192);
    far[0x258..0x260].copy_from_slice(&u64::MAX.to_le_bytes());
    far[0x260..0x264].copy_from_slice(&(64u32 << 20).to_le_bytes());
    let mut c = config(dir.path(), &far);
    let initrd = dir.path().join("small-initrd");
    std::fs::write(&initrd, [0u8; 4096]).unwrap();
    c.initrd = Some(initrd);
    let e = error_of(&c);
    assert!(e.contains("not a kernel this VMM can boot"), "{e}");
    // A bzImage that fits the guest's 64 MiB but decompresses past them (from its preferred
    // 16 MiB, 100 MiB of room): refused, with the memory that would do.
    let mut big = bzimage(0x020f, 1, 1, 8192);
    big[0x258..0x260].copy_from_slice(&(16u64 << 20).to_le_bytes());
    big[0x260..0x264].copy_from_slice(&(100u32 << 20).to_le_bytes());
    let e = error_of(&config(dir.path(), &big));
    assert!(
        e.contains("to decompress into") && e.contains("at least 117 MiB"),
        "{e}"
    );
    // A FIFO (its open would wait for a writer) and a character device are not kernels.
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path of ours.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for k in [fifo.as_path(), Path::new("/dev/zero")] {
        let mut c = VmConfig::new(k);
        c.mem_size = 64 << 20;
        let e = error_of(&c);
        assert!(e.contains("not a regular file or block device"), "{e}");
    }
    // A segment below 1 MiB would land on the boot tables (ACPI, zero page, page tables).
    let e = error_of(&config(dir.path(), &elf(0xe_0000, 4096, 4096)));
    assert!(e.contains("below 1 MiB"), "{e}");
    // A segment beyond the guest's 64 MiB: the ELF loader's own error, not a bzImage one.
    let e = error_of(&config(dir.path(), &elf(1 << 30, 4096, 4096)));
    assert!(e.contains("ELF vmlinux") && !e.contains("bzImage"), "{e}");
}

#[test]
fn an_initramfs_never_overlaps_the_kernel() {
    if !common::kvm_usable("boot_input") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The kernel takes 16 MiB..56 MiB (bss included) of a 64 MiB guest: a 30 MiB initramfs
    // fits below the top of RAM only by overlapping it.
    let mut c = config(dir.path(), &elf(16 << 20, 4096, 40 << 20));
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, vec![7u8; 30 << 20]).unwrap();
    c.initrd = Some(initrd.clone());
    let e = error_of(&c);
    assert!(
        e.contains("does not fit") && e.contains("MiB of memory"),
        "{e}"
    );
    // With room above the kernel, it loads.
    c.mem_size = 128 << 20;
    build_linux(&c, Vec::new(), Console::Writer(Box::new(std::io::sink()))).unwrap();
    // Not a regular file: refused before anything is read.
    c.initrd = Some("/dev/zero".into());
    let e = error_of(&c);
    assert!(e.contains("not a regular file or block device"), "{e}");
}

#[test]
fn command_lines_and_memory_sizes_the_kernel_cannot_take() {
    if !common::kvm_usable("boot_input") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), &elf(16 << 20, 4096, 4096));
    c.cmdline = "x".repeat(2048);
    let e = error_of(&c);
    assert!(e.contains("at most 2047"), "{e}");
    c.cmdline = "x".repeat(2047);
    build_linux(&c, Vec::new(), Console::Writer(Box::new(std::io::sink()))).unwrap();
    c.mem_size = (64 << 20) + 1;
    let e = error_of(&c);
    assert!(e.contains("whole number of MiB"), "{e}");
}
