//! How `tarn vm run` ends: 0 when the guest powers off, 10 when it reboots, and 128 + the
//! signal when SIGINT/SIGTERM stops it (as if its power were cut, also while nothing reads
//! its console); a `--rm` clone is destroyed
//! in every case and the pool is closed clean. And what it reads: the guest's console input is
//! tarn's stdin. The guests are tiny ELF kernels
//! (`vmm::tiny_kernel`) booted through the same Linux path as a real kernel, so this runs on
//! any usable /dev/kvm (this host's PVM included).

#![allow(clippy::unwrap_used)] // test code

mod common;

use common::{random_bytes, same_bytes, Env};
use std::io::Write;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A pool `p` holding the snapshot `p/img@s` of `image`; kernels `idle.elf`, `off.elf` and
/// `reboot.elf`, `echo.elf` (echoes its console until `q`, then powers off), `spew.elf`
/// (writes its console for ever) (each idles after its act); an initramfs.
fn world(env: &Env, image: &[u8]) {
    use vmm::tiny_kernel::{elf_image, ECHO, IDLE, POWER_OFF, REBOOT, SPEW};
    env.pool("p", "128M");
    env.import("p/img", image);
    env.run(["snapshot", "p/img@s"]).ok();
    for (name, act) in [
        ("idle", &[][..]),
        ("off", POWER_OFF),
        ("reboot", REBOOT),
        ("echo", &[ECHO, POWER_OFF].concat()),
        ("spew", SPEW),
    ] {
        let code = [act, IDLE].concat();
        env.file(&format!("{name}.elf"), &elf_image(&code, 16 << 20, 4096));
    }
    env.file("initrd", b"not looked at");
}

fn run_args<'a>(kernel: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "vm",
        "run",
        "--kernel",
        kernel,
        "--initrd",
        "initrd",
        "--mem",
        "64M",
        "--console",
        "console.txt",
    ];
    args.extend_from_slice(extra);
    args
}

/// Starts `tarn vm run` of the idle kernel with `extra` arguments, and waits until its vCPU
/// thread runs the guest.
fn start(env: &Env, extra: &[&str]) -> Child {
    start_with(env, run_args("idle.elf", extra), Stdio::null())
}

/// Starts `tarn` with `args` and `stdin`, and waits until its vCPU thread runs the guest.
fn start_with(env: &Env, args: Vec<&str>, stdin: Stdio) -> Child {
    let mut child = env
        .cmd(args)
        .stdin(stdin)
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
    if !vmm::tiny_kernel::kvm_usable("vm_exits") {
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
    if !vmm::tiny_kernel::kvm_usable("vm_exits") {
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

#[test]
fn power_off_exits_0_and_reboot_10_each_destroying_its_clone() {
    if !vmm::tiny_kernel::kvm_usable("vm_exits") {
        return;
    }
    let env = Env::new();
    world(&env, &random_bytes(1 << 20, 3));
    for (kernel, code, what) in [
        ("off.elf", 0, "powered off"),
        ("reboot.elf", 10, "rebooted"),
    ] {
        let r = env.run(run_args(kernel, &["--clone-from", "p/img@s", "--rm"]));
        assert_eq!(r.code, code, "{kernel}: {}", r.stderr);
        assert!(r.stderr.contains(&format!("guest {what}")), "{}", r.stderr);
        assert!(r.stderr.contains("destroyed p/vm-"), "{}", r.stderr);
        assert_eq!(volumes(&env), ["p/img"], "{kernel}");
    }
    env.run(["pool", "scrub", "p"]).ok();
}

#[test]
fn the_guest_reads_stdin_on_its_console() {
    if !vmm::tiny_kernel::kvm_usable("vm_exits") {
        return;
    }
    let env = Env::new();
    world(&env, &random_bytes(4096, 4));
    let mut args = run_args("echo.elf", &[]);
    args.retain(|a| *a != "--console" && *a != "console.txt");
    let r = env.run_stdin(&args, b"hello from the host\nq and not this");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "hello from the host\n");
    // With --console FILE the guest reads nothing: the `q` never reaches it.
    let mut child = start_with(&env, run_args("echo.elf", &[]), Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"q").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "the guest read stdin");
    let (code, stderr) = signal(child, libc::SIGTERM);
    assert_eq!(code, 128 + libc::SIGTERM, "{stderr}");
    drop(stdin);
}

/// Nothing is cloned for a run that cannot start: a kernel that is not there, or a `--name`
/// that repeats the pool (`p/db` would have made `p/p/db`).
#[test]
fn a_run_that_cannot_start_clones_nothing() {
    let env = Env::new();
    world(&env, &random_bytes(1 << 20, 3));
    env.run(run_args(
        "missing.elf",
        &["--clone-from", "p/img@s", "--rm"],
    ))
    .fails_with("opening the kernel");
    let r = env.run(run_args(
        "idle.elf",
        &["--clone-from", "p/img@s", "--name", "p/db"],
    ));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("give the name below it (db)"),
        "{}",
        r.stderr
    );
    assert_eq!(volumes(&env), ["p/img"]);
}

/// A guest whose console nobody reads (stdout a pipe that is never emptied) still stops at
/// SIGTERM: its vCPU waits for room on the console only until the VM is stopped. It used to
/// block in `write(2)` for good, holding the console's lock, and the run never ended.
#[test]
fn sigterm_stops_a_guest_whose_console_nobody_reads() {
    if !vmm::tiny_kernel::kvm_usable("vm_exits") {
        return;
    }
    let env = Env::new();
    world(&env, &random_bytes(1 << 20, 1));
    let mut args = run_args("spew.elf", &[]);
    args.retain(|a| *a != "--console" && *a != "console.txt");
    let mut child = start_with(&env, args, Stdio::null());
    // Long enough to fill the pipe and the console's buffer many times over.
    std::thread::sleep(Duration::from_millis(1500));
    let mut stderr = child.stderr.take().unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("SIGTERM did not stop a guest whose console nobody reads in 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{err}");
    // What was read is the guest's output, nothing else.
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(
        out.len() >= 4096 && out.iter().all(|&b| b == b'x'),
        "{} bytes",
        out.len()
    );
}

/// A guest KVM cannot run on (it jumps to an address no memory backs: KVM cannot fetch an
/// instruction there) ends the run with exit 1 and says so; it was exit 2, the code of a bad
/// command line, as "invalid configuration".
#[test]
fn a_guest_kvm_cannot_run_exits_1() {
    if !vmm::tiny_kernel::kvm_usable("vm_exits") {
        return;
    }
    let env = Env::new();
    // mov rax, 0x1000_0000 (256 MiB, past the guest's 64 MiB); jmp rax
    let mut code = vec![0x48, 0xb8];
    code.extend_from_slice(&0x1000_0000u64.to_le_bytes());
    code.extend_from_slice(&[0xff, 0xe0]);
    env.file(
        "jump.elf",
        &vmm::tiny_kernel::elf_image(&code, 16 << 20, 4096),
    );
    env.file("initrd", b"not looked at");
    let r = env.run(run_args("jump.elf", &[]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("cannot run on"), "{}", r.stderr);
}
