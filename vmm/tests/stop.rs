//! A guest that never powers off is stopped from outside (as `tarn vm run` does on SIGTERM):
//! `Vmm::run` returns `ExitStatus::Stopped` once a `StopHandle` is used, whether that happens
//! while the vCPUs sleep in the guest's `hlt` or before they started. The guest is a tiny ELF
//! kernel booted through the Linux path, so it runs on hosts whose KVM cannot run Linux.

#![allow(clippy::unwrap_used)] // test code

mod common;

use std::time::{Duration, Instant};
use vmm::tiny_kernel::{elf_image, IDLE};
use vmm::{build_linux, Console, ExitStatus, VmConfig, Vmm};

fn idle_guest(dir: &std::path::Path, cpus: u8) -> Option<Vmm> {
    if !common::kvm_usable("stop") {
        return None;
    }
    let kernel = dir.join("idle.elf");
    std::fs::write(&kernel, elf_image(IDLE, 16 << 20, 4096)).unwrap();
    let mut c = VmConfig::new(kernel);
    c.mem_size = 64 << 20;
    c.cpus = cpus;
    Some(build_linux(&c, Vec::new(), Console::Writer(Box::new(std::io::sink()))).unwrap())
}

#[test]
fn a_running_guest_is_stopped_from_another_thread() {
    let dir = tempfile::tempdir().unwrap();
    let Some(vmm) = idle_guest(dir.path(), 2) else {
        return;
    };
    let stop = vmm.stop_handle();
    let t = Instant::now();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        stop.stop();
    });
    let report = vmm.run().unwrap();
    stopper.join().unwrap();
    assert_eq!(report.status, ExitStatus::Stopped);
    // It ran until stopped: the idle loop neither exited nor faulted on its own.
    assert!(t.elapsed() >= Duration::from_millis(300), "{report:?}");
}

#[test]
fn a_stop_before_run_ends_the_run_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some(vmm) = idle_guest(dir.path(), 1) else {
        return;
    };
    vmm.stop_handle().stop();
    let report = vmm.run().unwrap();
    assert_eq!(report.status, ExitStatus::Stopped);
}
