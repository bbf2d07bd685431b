//! The console's input reaches the guest: a tiny guest that echoes COM1 gets more bytes than
//! the 8250's 64-byte FIFO holds, in order and each once, and powers off at `q`, also input
//! typed while its UART was in loopback mode; the escape byte stops the VM, also one that
//! reads nothing, and nothing after it reaches the guest.

#![allow(clippy::unwrap_used)] // test code

mod common;

use common::Shared;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::time::Duration;
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

/// Runs `code` (then [`IDLE`]) with `typed` written to its console after `after`, the pipe
/// then held open; returns how the VM ended, or `None` if it had not within `limit` (it is
/// stopped then).
fn run_typing(
    code: &[u8],
    typed: &'static [u8],
    after: Duration,
    escape: Option<u8>,
    limit: Duration,
) -> Option<ExitStatus> {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("guest.elf");
    std::fs::write(&kernel, elf_image(&[code, IDLE].concat(), 16 << 20, 4096)).unwrap();
    let mut c = VmConfig::new(kernel);
    c.mem_size = 64 << 20;
    let mut vmm = build_linux(&c, Vec::new(), Console::Writer(Box::new(std::io::sink()))).unwrap();
    let stop = vmm.stop_handle();
    let (reader, mut writer) = std::io::pipe().unwrap();
    vmm.attach_console_input(ConsoleInput {
        source: std::fs::File::from(OwnedFd::from(reader)),
        escape,
    });
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let typist = std::thread::spawn(move || {
        std::thread::sleep(after);
        let _ = writer.write_all(typed);
        let _ = done_rx.recv(); // the pipe stays open until the test ends
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(vmm.run().unwrap().status).unwrap());
    let got = rx.recv_timeout(limit).ok();
    if got.is_none() {
        stop.stop();
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    drop(done_tx);
    typist.join().unwrap();
    got
}

/// Ctrl-] stops a guest that never reads its console, even after more input than the FIFO
/// holds (the feeder waited for room for it, and never read the escape).
#[test]
fn the_escape_stops_a_guest_that_reads_nothing() {
    if !common::kvm_usable("console") {
        return;
    }
    static TYPED: [u8; 101] = {
        let mut t = [b'a'; 101];
        t[100] = 0x1d;
        t
    };
    let got = run_typing(&[], &TYPED, Duration::from_millis(200), Some(0x1d), LIMIT);
    assert_eq!(got, Some(ExitStatus::Stopped));
}

/// Input typed while the guest has its UART in loopback mode (Linux's 8250 probe sets it for
/// a moment) reaches the guest once loopback is off: the FIFO took nothing then, and the
/// feeder waited for room that never came.
#[test]
fn input_typed_during_loopback_arrives_after_it() {
    if !common::kvm_usable("console") {
        return;
    }
    // mov dx, 0x3fc (MCR); LOOP on; spin 2^22 times (seconds under this host's PVM, so the
    // input typed after 1 s comes in loopback; a faster host ends the spin first, and the
    // test then checks less); LOOP off; then echo until `q`.
    let spin = (4u32 << 20).to_le_bytes();
    let loopback: &[u8] = &[
        0x66, 0xba, 0xfc, 0x03, 0xb0, 0x10, 0xee, 0xb9, spin[0], spin[1], spin[2], spin[3], 0xff,
        0xc9, 0x75, 0xfc, 0xb0, 0x00, 0xee,
    ];
    let code = [loopback, ECHO, POWER_OFF].concat();
    let got = run_typing(&code, b"hi q", Duration::from_secs(1), None, LIMIT);
    assert_eq!(
        got,
        Some(ExitStatus::PowerOff),
        "the input typed during loopback"
    );
}

/// How long the tests above give the guest.
const LIMIT: Duration = Duration::from_secs(20);
