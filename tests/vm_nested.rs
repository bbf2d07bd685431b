//! Tier 3/4 of the VM tests: `tarn vm run` boots Debian's stock cloud kernel, whose init makes
//! ext4 on the guest's virtio-blk disk (found through ACPI alone), writes files, prints their
//! checksums and powers off. The test checks the printed checksums against files it makes
//! itself, then reads the disk image from outside (debugfs, e2fsck) after the run.
//!
//! Where the host has hardware KVM (`kvm_intel`/`kvm_amd`) the guest runs directly (tier 4).
//! Otherwise (a PVM host, or no KVM) it runs in the nested harness of ../shared/VM-TESTING.md:
//! QEMU TCG `-cpu max` runs the same kernel with kvm-amd, and `tarn vm run` inside it boots the
//! guest; the test's disk image is the outer VM's /dev/vda, which tarn hands to the guest.
//!
//! Fixtures come from `fixtures/guest.sh` (Debian packages, cached under fixtures/cache/); it
//! runs here unless `TARN_VM_FIXTURES=DIR` names its outputs. The outer VM gets this test's
//! own tarn binary, stripped; debug and release builds both pass (about 35 s here either way).
//! Skips, saying why, without qemu-system-x86_64, e2fsprogs' debugfs, or the fixtures' tools.
//! `TARN_VM_REQUIRE=1` turns a skip into a failure (CI; a passing test's skip message is
//! only visible with `--nocapture`). `TARN_VM_TIMEOUT` (seconds, default 420) bounds each VM
//! run; the whole process group of a VM is killed on timeout or panic, so nothing is left
//! behind.

mod common;

use common::NfsServer;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DISK_SIZE: u64 = 64 << 20;

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Says why the test does not run; with `TARN_VM_REQUIRE=1` (CI) that is a failure.
fn skip(why: &str) {
    if std::env::var_os("TARN_VM_REQUIRE").is_some_and(|v| v == "1") {
        panic!("vm_nested cannot run and TARN_VM_REQUIRE=1: {why}");
    }
    eprintln!("SKIP vm_nested: {why}");
}

/// How the host can run the guest.
#[derive(Debug, PartialEq)]
enum Host {
    /// `kvm_intel` or `kvm_amd`: run `tarn vm run` directly.
    HardwareKvm(&'static str),
    /// Anything else: the nested harness (the string says why).
    Nested(&'static str),
}

fn detect_host() -> Host {
    let kvm_ok = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    for m in ["kvm_intel", "kvm_amd"] {
        if kvm_ok && Path::new("/sys/module").join(m).exists() {
            return Host::HardwareKvm(m);
        }
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        Host::Nested("PVM host: /dev/kvm cannot run a stock kernel")
    } else {
        Host::Nested("no hardware KVM: the outer VM runs under TCG")
    }
}

/// A child in its own process group, killed (group and all) when dropped.
struct Group(Child);

impl Group {
    fn spawn(cmd: &mut Command) -> Group {
        cmd.process_group(0);
        Group(cmd.spawn().expect("spawning a VM"))
    }

    /// Waits up to `limit`, or until `console` (if any) has not grown for [`STALL`]; kills
    /// the group then and returns `None`.
    fn wait(
        &mut self,
        limit: Duration,
        console: Option<&Path>,
    ) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        let (mut size, mut grew) = (0, Instant::now());
        loop {
            if let Some(s) = self.0.try_wait().expect("waiting for a VM") {
                return Some(s);
            }
            let now = console.map_or(0, |c| fs::metadata(c).map_or(0, |m| m.len()));
            if now != size || console.is_none() {
                (size, grew) = (now, Instant::now());
            }
            if start.elapsed() > limit || grew.elapsed() > STALL {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self) {
        // SAFETY: kill(2) with a negative pid signals the group we created for the child.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// A VM whose console stays silent this long has hung: every stage of a boot prints within
/// seconds (a whole nested boot takes 25-40 s here).
const STALL: Duration = Duration::from_secs(150);

fn timeout() -> Duration {
    let s = std::env::var("TARN_VM_TIMEOUT").map_or(420, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("TARN_VM_TIMEOUT={v}: a whole number of seconds"))
    });
    Duration::from_secs(s)
}

/// Runs fixtures/guest.sh (or takes `TARN_VM_FIXTURES`); `None` means skip.
fn fixtures(work: &Path) -> Option<PathBuf> {
    if let Ok(d) = std::env::var("TARN_VM_FIXTURES") {
        let d = PathBuf::from(d);
        for f in ["vmlinuz", "inner.cpio.gz", "outer.cpio"] {
            if !d.join(f).exists() {
                skip(&format!("TARN_VM_FIXTURES={} lacks {f}", d.display()));
                return None;
            }
        }
        return Some(d);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = work.join("fixtures");
    let t = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("fixtures/guest.sh"))
        .arg("--tarn")
        .arg(env!("CARGO_BIN_EXE_tarn"))
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let mut g = Group::spawn(&mut cmd);
    let status = g
        .wait(Duration::from_secs(900), None)
        .expect("fixtures/guest.sh timed out");
    match status.code() {
        Some(0) => {
            eprintln!("fixtures ready in {:.1} s", t.elapsed().as_secs_f64());
            Some(out)
        }
        Some(3) => {
            skip("fixtures/guest.sh cannot build the fixtures here (see its message above)");
            None
        }
        _ => panic!("fixtures/guest.sh failed: {status}"),
    }
}

fn sha256_md5(path: &Path) -> (String, String) {
    let hash = |tool: &str| {
        let o = Command::new(tool).arg(path).output().expect(tool);
        assert!(o.status.success(), "{tool} {}", path.display());
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    (hash("sha256sum"), hash("md5sum"))
}

/// The files the guest writes whose content the test knows.
fn expected_files(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let seq: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    let yes: Vec<u8> = b"tarn-block-payload\n"
        .iter()
        .copied()
        .cycle()
        .take(4 << 20)
        .collect();
    let s = dir.join("seq.txt");
    let y = dir.join("yes.bin");
    fs::write(&s, seq).expect("writing seq.txt");
    fs::write(&y, yes).expect("writing yes.bin");
    vec![("seq.txt", s), ("yes.bin", y)]
}

/// `TARN-SUM name sha256 md5` lines between the markers.
fn guest_sums(console: &str) -> Vec<(String, String, String)> {
    let begin = console
        .find("TARN-SUMS-BEGIN")
        .expect("no TARN-SUMS-BEGIN on the console");
    let end = console[begin..]
        .find("TARN-SUMS-END")
        .expect("no TARN-SUMS-END on the console")
        + begin;
    console[begin..end]
        .lines()
        .filter_map(|l| {
            let l = l.trim_end_matches('\r');
            let rest = &l[l.find("TARN-SUM ")? + 9..];
            let mut w = rest.split_whitespace();
            // A kernel message can start right after the digits, before the newline (the
            // console interleaves printk with tty writes): keep only the hex digits.
            let hex = |s: &str, n: usize| -> Option<String> {
                let h: String = s.chars().take_while(char::is_ascii_hexdigit).collect();
                (h.len() == n).then_some(h)
            };
            Some((
                w.next()?.to_string(),
                hex(w.next()?, 64)?,
                hex(w.next()?, 32)?,
            ))
        })
        .collect()
}

fn marker_f64(console: &str, marker: &str) -> Option<f64> {
    let l = console.lines().find(|l| l.starts_with(marker))?;
    l.split_whitespace().last()?.parse().ok()
}

#[test]
fn stock_kernel_makes_ext4_on_virtio_blk() {
    boot_and_check(Case::Raw);
}

/// The same guest test, its disk a clone of an image snapshot in a pool (`--clone-from`); the
/// host then imports the pool, scrubs it, and reads the clone.
#[test]
fn stock_kernel_boots_from_a_pool_clone() {
    boot_and_check(Case::PoolClone);
}

/// The same guest test, its disk a pool volume served by `tarn nfs serve` and opened by the VMM
/// as `nfs://…` (an NFS-backed disk, as another host would use it); the host then imports the
/// pool, scrubs it, and reads the volume.
#[test]
fn stock_kernel_boots_from_a_volume_served_over_nfs() {
    boot_and_check(Case::Nfs);
}

/// The same guest test on a raw disk, the kernel loaded as an ELF vmlinux (the bzImage's
/// payload, decompressed by fixtures/guest.sh) instead of a bzImage.
#[test]
fn stock_kernel_boots_as_an_elf_vmlinux() {
    boot_and_check(Case::ElfKernel);
}

/// What a boot test varies: the guest's disk and how its kernel is loaded.
#[derive(Clone, Copy, PartialEq)]
enum Case {
    Raw,
    ElfKernel,
    PoolClone,
    Nfs,
}

fn tarn(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tarn"));
    c.env("TARN_HOME", home);
    c
}

fn ok(c: &mut Command) -> String {
    let o = c.output().expect("running tarn");
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn boot_and_check(mode: Case) {
    boot_attempt(mode, 1);
}

/// One boot of `mode`'s test from scratch; the nested harness's second try after a hang.
fn boot_attempt(mode: Case, attempt: u32) {
    let t0 = Instant::now();
    let host = detect_host();
    let nested = matches!(host, Host::Nested(_));
    if nested && !have("qemu-system-x86_64") {
        skip("no qemu-system-x86_64 (the nested harness needs it: see fixtures/guest.sh and ../shared/VM-TESTING.md)");
        return;
    }
    for tool in ["debugfs", "e2fsck", "sha256sum", "md5sum"] {
        if !have(tool) {
            skip(&format!("no {tool} (apt-get install e2fsprogs coreutils)"));
            return;
        }
    }
    let work = tempfile::tempdir().expect("tempdir");
    let Some(fx) = fixtures(work.path()) else {
        return;
    };
    let disk = work.path().join("disk.img");
    fs::File::create(&disk)
        .and_then(|f| f.set_len(DISK_SIZE))
        .expect("creating the disk image");
    // The pool case boots two vCPUs (the guest counts them), the raw case one.
    let cpus = match mode {
        Case::Raw | Case::ElfKernel | Case::Nfs => "1",
        Case::PoolClone => "2",
    };
    // The ELF case's vmlinux, padded to whole sectors (it is also the outer VM's /dev/vdb).
    let kernel = match mode {
        Case::ElfKernel => {
            let Ok(elf) = fs::read(fx.join("vmlinux")) else {
                skip("fixtures/guest.sh made no vmlinux (see its message: python3 and the kernel's decompressor, e.g. lz4, are needed)");
                return;
            };
            let path = work.path().join("vmlinux");
            let mut padded = elf;
            padded.resize(padded.len().div_ceil(512) * 512, 0);
            fs::write(&path, padded).expect("writing the vmlinux copy");
            Some(path)
        }
        _ => None,
    };
    let console_path = work.path().join("console.log");
    let console_file = fs::File::create(&console_path).expect("console file");

    let mut nfs_server: Option<NfsServer> = None;
    let mut cmd = match &host {
        Host::HardwareKvm(m) => {
            eprintln!("vm_nested: hardware KVM ({m}): running tarn vm run directly (tier 4)");
            let home = work.path().join("home");
            let mut c = tarn(&home);
            if !matches!(mode, Case::Raw | Case::ElfKernel) {
                fs::remove_file(&disk).expect("the pool makes its own file");
                ok(tarn(&home)
                    .args(["pool", "create", "p"])
                    .arg(&disk)
                    .args(["--size", "64M"]));
                ok(tarn(&home).args(["vol", "create", "p/img", "--size", "32M"]));
                ok(tarn(&home).args(["snapshot", "p/img@golden"]));
                if mode == Case::Nfs {
                    ok(tarn(&home).args(["clone", "p/img@golden", "p/vm1"]));
                }
                ok(tarn(&home).args(["pool", "export", "p"]));
                ok(tarn(&home).args(["pool", "import"]).arg(&disk));
            }
            c.args(["vm", "run", "--kernel"])
                .arg(kernel.as_ref().unwrap_or(&fx.join("vmlinuz")))
                .arg("--initrd")
                .arg(fx.join("inner.cpio.gz"))
                .args([
                    "--cmdline",
                    "console=ttyS0 reboot=k panic=-1 tarn.test=ext4",
                    "--cpus",
                    cpus,
                    "--mem",
                    "256M",
                ]);
            match mode {
                Case::Raw | Case::ElfKernel => c.arg("--disk").arg(&disk),
                Case::PoolClone => c.args(["--clone-from", "p/img@golden", "--name", "vm1"]),
                Case::Nfs => {
                    let port = nfs_server
                        .insert(NfsServer::start(&home, "p", &["--allow", "127.0.0.1/32"]))
                        .port;
                    c.args(["--disk", &format!("nfs://127.0.0.1:{port}/p/vm1")])
                }
            };
            c
        }
        Host::Nested(why) => {
            eprintln!("vm_nested: nested harness ({why}): QEMU TCG -cpu max runs tarn under kvm-amd (tier 3)");
            let mut c = Command::new("qemu-system-x86_64");
            c.args([
                "-M",
                "q35",
                "-accel",
                "tcg",
                "-cpu",
                "max",
                "-smp",
                "1",
                "-m",
                "2048M",
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-serial",
                "stdio",
                "-no-reboot",
                "-kernel",
            ])
            .arg(fx.join("vmlinuz"))
            .arg("-initrd")
            .arg(fx.join("outer.cpio"))
            .args([
                "-append",
                match mode {
                    Case::Raw => "console=ttyS0 quiet tarn.vmm=tarn tarn.test=ext4",
                    Case::ElfKernel => {
                        "console=ttyS0 quiet tarn.vmm=tarn tarn.test=ext4 tarn.kernel=vdb"
                    }
                    Case::PoolClone => {
                        "console=ttyS0 quiet tarn.vmm=tarn tarn.test=ext4 tarn.disk=pool tarn.cpus=2 \
                         tarn.inner=loglevel=7"
                    }
                    Case::Nfs => "console=ttyS0 quiet tarn.vmm=tarn tarn.test=ext4 tarn.disk=nfs",
                },
                "-drive",
            ])
            .arg(format!(
                "file={},format=raw,if=none,id=d0,cache=writeback",
                disk.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=d0"]);
            if let Some(k) = &kernel {
                // The vmlinux reaches the outer VM as its second disk, /dev/vdb.
                c.arg("-drive")
                    .arg(format!(
                        "file={},format=raw,if=none,id=d1,readonly=on",
                        k.display()
                    ))
                    .args(["-device", "virtio-blk-pci,drive=d1"]);
            }
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(console_file.try_clone().expect("dup"))
        .stderr(console_file);
    let launch = Instant::now();
    let mut vm = Group::spawn(&mut cmd);
    let status = vm.wait(timeout(), Some(&console_path));
    let wall = launch.elapsed();
    // QEMU's TCG emulation of a CPU that runs KVM hangs now and then: the outer VM stops
    // (its own watchdog, `tarn.timeout`, never fires), silent from then on. Seen once in
    // about twenty CI runs, with two inner vCPUs; the same test passes when run again. One
    // more try from scratch, said on stderr; a second hang fails the test.
    if status.is_none() && nested && attempt == 1 {
        let console = fs::read_to_string(&console_path).unwrap_or_default();
        let last = console.lines().last().unwrap_or_default().to_string();
        eprintln!(
            "vm_nested: the nested VM hung after {wall:?} (console silent for {STALL:?}; its \
             last line: {last:?}); trying once more"
        );
        drop(vm);
        return boot_attempt(mode, 2);
    }
    if let Some(mut server) = nfs_server.take() {
        assert!(server.stop(), "tarn nfs serve did not exit cleanly");
    }
    let console = fs::read_to_string(&console_path)
        .map(|s| s.replace('\r', ""))
        .unwrap_or_default();
    let tail: String = {
        let lines: Vec<&str> = console.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    };
    let status =
        status.unwrap_or_else(|| panic!("the VM ran past {:?}; console tail:\n{tail}", timeout()));
    assert!(
        status.success(),
        "VM exited {status}; console tail:\n{tail}"
    );
    assert!(
        console.contains("TARN-TEST-OK"),
        "the guest did not finish its test; console tail:\n{tail}"
    );
    if nested {
        assert!(
            console.contains("TARN-VMM-RC 0"),
            "tarn vm run failed in the outer VM; console tail:\n{tail}"
        );
        if mode == Case::Nfs {
            assert!(
                console.contains("TARN-NFS-SERVER-RC 0"),
                "tarn nfs serve did not exit cleanly in the outer VM; console tail:\n{tail}"
            );
        }
    }

    assert!(
        console.contains(&format!("TARN-CPUS {cpus}\n")),
        "the guest should see {cpus} CPU(s); console tail:\n{tail}"
    );
    if mode == Case::PoolClone {
        // The inner kernel's own log (loglevel=7): one package of two cores with the APIC
        // IDs the CPUID says, and the MTRRs on (the boot MSRs), so PAT is set up.
        for bad in ["APIC ID mismatch", "Firmware Bug", "MTRRs disabled"] {
            assert!(
                !console.contains(bad),
                "the guest kernel logged {bad:?}:\n{tail}"
            );
        }
        assert!(
            console.contains("smpboot: Max logical packages: 1"),
            "the guest should see one package:\n{tail}"
        );
    }

    // The checksums the guest printed, against files made here.
    let sums = guest_sums(&console);
    assert_eq!(sums.len(), 3, "guest sums: {sums:?}");
    let find = |name: &str| {
        sums.iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no checksum for {name}"))
            .clone()
    };
    for (name, path) in expected_files(work.path()) {
        let (sha, md5) = sha256_md5(&path);
        let (_, gsha, gmd5) = find(name);
        assert_eq!((gsha, gmd5), (sha, md5), "{name}: guest checksum");
    }

    // The pool cases: import the pool the outer VM left on the disk, scrub it, and read the
    // guest's volume out; a clone's image is still all zeroes.
    let disk = match mode {
        Case::Raw | Case::ElfKernel => disk,
        Case::PoolClone | Case::Nfs => {
            let home = work.path().join("host-home");
            ok(tarn(&home).args(["pool", "import"]).arg(&disk));
            let scrub = ok(tarn(&home).args(["pool", "scrub", "p"]));
            assert!(scrub.contains("0 errors"), "scrub: {scrub}");
            if mode == Case::PoolClone {
                let listing =
                    ok(tarn(&home).args(["list", "-t", "all", "-H", "-o", "name,origin"]));
                assert!(
                    listing.contains("p/vm1\tp/img@golden"),
                    "the guest's disk is a clone: {listing}"
                );
                let image = work.path().join("img.raw");
                ok(tarn(&home).args(["vol", "export", "p/img"]).arg(&image));
                assert!(
                    fs::read(&image).expect("image").iter().all(|&b| b == 0),
                    "the image is untouched"
                );
            }
            let out = work.path().join("vm1.raw");
            ok(tarn(&home).args(["vol", "export", "p/vm1"]).arg(&out));
            out
        }
    };

    // The disk, read from outside: a clean ext4 holding the same bytes.
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&disk)
        .output()
        .expect("e2fsck");
    assert!(
        fsck.status.success(),
        "e2fsck of the guest's disk: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    for (name, gsha, gmd5) in &sums {
        let out = work.path().join(format!("disk-{name}"));
        let o = Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump /{name} {}", out.display()))
            .arg(&disk)
            .output()
            .expect("debugfs");
        assert!(o.status.success() && out.exists(), "debugfs dump /{name}");
        assert_eq!(
            sha256_md5(&out),
            (gsha.clone(), gmd5.clone()),
            "{name}: bytes on the disk differ from what the guest read"
        );
    }

    let init = match (
        marker_f64(&console, "TARN-LAUNCH"),
        marker_f64(&console, "TARN-INIT-SEEN"),
    ) {
        (Some(a), Some(b)) => format!(", launch to guest init {:.2} s", b - a),
        _ => String::new(),
    };
    let vmm_line = console
        .lines()
        .find(|l| l.starts_with("tarn: guest"))
        .unwrap_or("");
    eprintln!(
        "vm_nested: ok ({}) in {:.1} s (VM {:.1} s{init}); {vmm_line}",
        if nested { "nested" } else { "hardware KVM" },
        t0.elapsed().as_secs_f64(),
        wall.as_secs_f64()
    );
}
