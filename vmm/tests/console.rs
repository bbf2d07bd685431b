//! The console's input reaches the guest: a tiny guest that echoes COM1 gets more bytes than
//! the 8250's 64-byte FIFO holds, in order and each once, and powers off at `q`; the escape
//! byte stops the VM, and nothing after it reaches the guest.

#![allow(clippy::unwrap_used)] // test code

mod common;

use common::Shared;
use std::io::Write;
use std::os::fd::OwnedFd;
use vmm::tiny_kernel::{elf_image, ECHO, IDLE, POWER_OFF};
use vmm::{build_linux, Console, ConsoleInput, ExitStatus, VmConfig};

/// Runs the echo guest with `input` on its console (written from another thread, then the
/// pipe is closed) and returns how it ended and what it printed.
fn echo(input: &[u8], escape: Option<u8>) -> Option<(ExitStatus, Vec<u8>)> {
    if !common::kvm_usable("console") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("echo.elf");
    let code = [ECHO, POWER_OFF, IDLE].concat();
    std::fs::write(&kernel, elf_image(&code, 16 << 20, 4096)).unwrap();
    let mut c = VmConfig::new(kernel);
    c.mem_size = 64 << 20;
    let out = Shared::default();
    let mut vmm = build_linux(&c, Vec::new(), Console::Writer(Box::new(out.clone()))).unwrap();
    let (reader, mut writer) = std::io::pipe().unwrap();
    vmm.attach_console_input(ConsoleInput {
        source: std::fs::File::from(OwnedFd::from(reader)),
        escape,
    });
    let data = input.to_vec();
    let typist = std::thread::spawn(move || {
        // The guest may power off before it read everything (that is what `q` is for).
        let _ = writer.write_all(&data);
    });
    let report = vmm.run().unwrap();
    typist.join().unwrap();
    let printed = out.bytes();
    Some((report.status, printed))
}

#[test]
fn input_larger_than_the_fifo_is_echoed_in_order() {
    let text: Vec<u8> = (0..2000u32)
        .map(|i| b"abcdefghijklmnoprstuvwxyz0123456789"[i as usize % 35])
        .collect();
    let Some((status, printed)) = echo(&[&text[..], b"q never echoed"].concat(), None) else {
        return;
    };
    assert_eq!(status, ExitStatus::PowerOff);
    assert_eq!(printed, text);
}

#[test]
fn the_escape_byte_stops_the_guest_and_nothing_after_it_arrives() {
    let Some((status, printed)) = echo(b"hello\x1dworld q", Some(0x1d)) else {
        return;
    };
    // Not powered off: the `q` after the escape never arrived. The stop does not wait for
    // the guest to read what came before it, so the guest echoed some of that, or none.
    assert_eq!(status, ExitStatus::Stopped);
    assert!(b"hello".starts_with(&printed), "{printed:?}");
}
