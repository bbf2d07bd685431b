//! `tarn vm run` stopped by a signal: the guest is stopped as if its power were cut, a `--rm`
//! clone is destroyed, the pool is closed clean, and tarn exits 128 + the signal. The guest is
//! a tiny ELF kernel that idles for ever (`vmm::tiny_kernel`), booted through the same Linux
//! path as a real kernel, so this runs on any usable /dev/kvm (this host's PVM included).

#![allow(clippy::unwrap_used)] // test code

mod common;

use common::{random_bytes, same_bytes, Env};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn kvm_usable() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIP vm_signals: /dev/kvm cannot be opened ({e}); a guest needs it");
            false
        }
    }
}

/// A pool `p` holding the snapshot `p/img@s` of `image`, and an idle kernel and an initramfs.
fn world(env: &Env, image: &[u8]) {
    env.pool("p", "128M");
    env.import("p/img", image);
    env.run(["snapshot", "p/img@s"]).ok();
    env.file(
        "idle.elf",
        &vmm::tiny_kernel::elf_image(vmm::tiny_kernel::IDLE, 16 << 20, 4096),
    );
    env.file("initrd", b"not looked at");
}

/// Starts `tarn vm run` of the idle kernel with `extra` arguments, and waits until its vCPU
/// thread runs the guest.
fn start(env: &Env, extra: &[&str]) -> Child {
    let mut args = vec![
        "vm",
        "run",
        "--kernel",
        "idle.elf",
        "--initrd",
        "initrd",
        "--mem",
        "64M",
        "--console",
        "console.txt",
    ];
    args.extend_from_slice(extra);
    let mut child = env
        .cmd(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let task = format!("/proc/{}/task", child.id());
    loop {
        let running = std::fs::read_dir(&task).is_ok_and(|d| {
            d.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "vcpu0")
            })
        });
        if running {
            return child;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "tarn vm run ended ({status}) before its guest ran: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no vCPU thread");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `sig` and returns the exit code and stderr.
fn signal(child: Child, sig: i32) -> (i32, String) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

fn volumes(env: &Env) -> Vec<String> {
    let list = env.run(["list", "p", "-t", "volume", "--json"]).json();
    list.as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn sigterm_stops_the_guest_and_destroys_its_clone() {
    if !kvm_usable() {
        return;
    }
    let env = Env::new();
    world(&env, &random_bytes(1 << 20, 1));
    let child = start(&env, &["--clone-from", "p/img@s", "--name", "web", "--rm"]);
    let (code, stderr) = signal(child, libc::SIGTERM);
    assert_eq!(code, 128 + libc::SIGTERM, "{stderr}");
    assert!(stderr.contains("SIGTERM: stopping the guest"), "{stderr}");
    assert!(stderr.contains("destroyed p/web"), "{stderr}");
    assert!(stderr.contains("guest stopped"), "{stderr}");
    assert_eq!(volumes(&env), ["p/img"]);
    env.run(["pool", "scrub", "p"]).ok();
}

#[test]
fn sigint_without_rm_keeps_the_clone_whole() {
    if !kvm_usable() {
        return;
    }
    let env = Env::new();
    let image = random_bytes(1 << 20, 2);
    world(&env, &image);
    let child = start(&env, &["--clone-from", "p/img@s", "--name", "db"]);
    let (code, stderr) = signal(child, libc::SIGINT);
    assert_eq!(code, 128 + libc::SIGINT, "{stderr}");
    assert!(!stderr.contains("destroyed"), "{stderr}");
    assert_eq!(volumes(&env), ["p/db", "p/img"]);
    same_bytes(&env.export("p/db"), &image, "the kept clone");
    env.run(["pool", "scrub", "p"]).ok();
}
