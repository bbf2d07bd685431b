//! Bad input and faults: each is a clear one-line error on stderr, a non-zero exit, and
//! nothing on disk changed by the failed command.

mod common;

use common::{random_bytes, same_bytes, snapshot, Env};
use std::io::Write;
use std::time::{Duration, Instant};

fn registry_files(env: &Env) -> Vec<String> {
    match std::fs::read_dir(env.home().join("pools")) {
        Ok(rd) => {
            let mut v: Vec<String> = rd
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_file_that_is_not_a_pool() {
    let env = Env::new();
    for (name, data) in [
        ("random.img", random_bytes(1 << 20, 11)),
        ("zeros.img", vec![0u8; 1 << 20]),
        ("tiny.img", b"hello".to_vec()),
        ("empty.img", Vec::new()),
    ] {
        let f = env.file(name, &data);
        env.run(["pool", "import", f.to_str().expect("utf-8")])
            .fails_with("not a tarn pool");
        assert_eq!(snapshot(&f), data, "{name} unchanged");
        // Nor does `pool create` overwrite it.
        env.run([
            "pool",
            "create",
            "tank",
            f.to_str().expect("utf-8"),
            "--size",
            "64M",
        ])
        .fails_with("already exists");
        assert_eq!(snapshot(&f), data, "{name} unchanged");
    }
    env.run([
        "pool",
        "import",
        env.path("missing").to_str().expect("utf-8"),
    ])
    .fails_with("missing");
    assert!(registry_files(&env).is_empty());
}

#[test]
fn a_truncated_pool() {
    let env = Env::new();
    let path = env.pool("tank", "64M");
    env.import("tank/v", &random_bytes(1 << 20, 12));

    // Registered, then truncated under us.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(32 << 20).expect("truncate");
    drop(f);
    let before = snapshot(&path);
    env.run(["pool", "status", "tank"]).fails_with("truncated");
    env.run(["list", "tank"]).fails_with("truncated");
    env.run(["vol", "export", "tank/v", "out.img"])
        .fails_with("truncated");
    assert!(!env.path("out.img").exists());
    let list = env.run(["pool", "list", "--json"]).json();
    assert_eq!(list[0]["health"], "FAULTED");
    assert!(list[0]["error"]
        .as_str()
        .expect("error")
        .contains("truncated"));
    same_bytes(&snapshot(&path), &before, "truncated pool file");

    // Export forgets it (with a warning); import refuses it.
    let out = env.run(["pool", "export", "tank"]);
    out.ok();
    assert!(out.stderr.contains("warning"), "{}", out.stderr);
    env.run(["pool", "import", path.to_str().expect("utf-8")])
        .fails_with("truncated");
    same_bytes(&snapshot(&path), &before, "truncated pool file");
    assert!(registry_files(&env).is_empty());
}

#[test]
fn an_unknown_dataset_or_pool() {
    let env = Env::new();
    let path = env.pool("tank", "64M");
    env.run(["vol", "create", "tank/v", "--size", "1M"]).ok();
    let before = snapshot(&path);
    env.run(["get", "volsize", "tank/nope"])
        .fails_with("tank/nope does not exist");
    env.run(["set", "a=b", "tank/nope"])
        .fails_with("tank/nope does not exist");
    env.run(["destroy", "tank/nope"])
        .fails_with("tank/nope does not exist");
    env.run(["vol", "resize", "tank/nope", "--size", "2M"])
        .fails_with("tank/nope does not exist");
    env.run(["vol", "export", "tank/nope", "out.img"])
        .fails_with("tank/nope does not exist");
    env.run(["list", "tank/nope"])
        .fails_with("tank/nope does not exist");
    assert!(!env.path("out.img").exists(), "no output file was created");
    env.run(["get", "volsize", "pond/v"])
        .fails_with("pool pond is not imported");
    env.run(["pool", "status", "pond"])
        .fails_with("pool pond is not imported");
    env.run(["pool", "destroy", "pond"])
        .fails_with("pool pond is not imported");
    env.run(["get", "nosuch.prop", "tank/v"]).ok();
    same_bytes(&snapshot(&path), &before, "pool file");
}

#[test]
fn names_with_bad_characters() {
    let env = Env::new();
    let path = env.pool("tank", "64M");
    let img = env.file("img", &random_bytes(64 << 10, 13));
    let before = snapshot(&path);
    for name in [
        "tank/a b",
        "tank/a@b",
        "tank/é",
        "tank//a",
        "tank/",
        "tank",
        "tank/a/../b",
    ] {
        // A snapshot's name where a volume's belongs is said to be one.
        let why = if name.contains('@') {
            "is a snapshot"
        } else {
            "invalid name"
        };
        let r = env.run(["vol", "create", name, "--size", "1M"]);
        r.fails_with(why);
        assert_eq!(r.code, 2, "malformed input exits 2");
        env.run(["vol", "import", img.to_str().expect("utf-8"), name])
            .fails_with(why);
        // `tank/a@b` is a well-formed snapshot name: set (snapshots take user properties)
        // and get look it up.
        let needle = if name == "tank/a@b" {
            "does not exist"
        } else {
            "invalid name"
        };
        env.run(["set", "k=v", name]).fails_with(needle);
        env.run(["get", "all", name]).fails_with(needle);
    }
    for pool in ["1tank", "ta nk", "a/b", "x!"] {
        let f = env.path("new.tarn");
        env.run([
            "pool",
            "create",
            pool,
            f.to_str().expect("utf-8"),
            "--size",
            "64M",
        ])
        .fails_with("invalid name");
        assert!(!f.exists(), "no pool file for {pool:?}");
    }
    env.run(["set", "bad key=v", "tank/a"])
        .fails_with("property name");
    env.run(["set", "novalue", "tank/a"])
        .fails_with("KEY=VALUE");
    same_bytes(&snapshot(&path), &before, "pool file");
    assert_eq!(env.run(["list", "--json"]).json(), serde_json::json!([]));
}

#[test]
fn sizes_that_do_not_parse() {
    let env = Env::new();
    let path = env.pool("tank", "64M");
    env.run(["vol", "create", "tank/v", "--size", "1M"]).ok();
    let before = snapshot(&path);
    for size in ["10X", "ten", "", "-1", "1.2.3K", "99999999999P"] {
        let f = env.path("p.tarn");
        let r = env.run([
            "pool",
            "create",
            "pond",
            f.to_str().expect("utf-8"),
            "--size",
            size,
        ]);
        r.fails_with("size");
        assert_eq!(r.code, 2);
        assert!(!f.exists());
        env.run(["vol", "create", "tank/w", "--size", size])
            .fails_with("size");
        env.run(["vol", "resize", "tank/v", "--size", size])
            .fails_with("size");
        env.run(["set", &format!("volsize={size}"), "tank/v"])
            .fails_with("size");
    }
    // Sizes that parse but are refused.
    env.run([
        "vol",
        "create",
        "tank/w",
        "--size",
        "1M",
        "--block-size",
        "3K",
    ])
    .fails_with("block size");
    env.run(["vol", "create", "tank/w", "--size", "0"])
        .fails_with("greater than zero");
    let f = env.path("small.tarn");
    env.run([
        "pool",
        "create",
        "pond",
        f.to_str().expect("utf-8"),
        "--size",
        "1M",
    ])
    .fails_with("minimum");
    assert!(!f.exists());
    env.run(["pool", "create", "pond", f.to_str().expect("utf-8")])
        .fails_with("--size");
    same_bytes(&snapshot(&path), &before, "pool file");
    assert_eq!(registry_files(&env), ["tank.json"]);
}

#[test]
fn a_full_pool() {
    let env = Env::new();
    let path = env.pool("tank", "64M");
    let keep = random_bytes(8 << 20, 14);
    env.import("tank/keep", &keep);

    // A new volume from a file bigger than the free space: refused before anything is written.
    let big = env.file("big.img", &random_bytes(80 << 20, 15));
    let before = snapshot(&path);
    let r = env.run(["vol", "import", big.to_str().expect("utf-8"), "tank/big"]);
    r.fails_with("out of space");
    assert!(r.stderr.contains("needs up to"), "{}", r.stderr);
    same_bytes(&snapshot(&path), &before, "pool file after refused import");
    env.run(["get", "name", "tank/big"])
        .fails_with("does not exist");

    // Into an existing thin volume, from a pipe (size unknown up front): the pool runs out of
    // space part-way; the command fails cleanly and the pool stays consistent.
    env.run(["vol", "create", "tank/thin", "--size", "200M"])
        .ok();
    let r = env.run_stdin(
        ["vol", "import", "-", "tank/thin"],
        &random_bytes(90 << 20, 16),
    );
    r.fails_with("out of space");
    env.run(["pool", "scrub", "tank"]).ok();
    same_bytes(&env.export("tank/keep"), &keep, "earlier volume");
    // Space can be reclaimed and reused.
    env.run(["destroy", "tank/thin"]).ok();
    env.import("tank/after", &random_bytes(4 << 20, 17));
    env.run(["pool", "scrub", "tank"]).ok();
}

#[test]
fn an_import_file_larger_than_the_volume() {
    let env = Env::new();
    let path = env.pool("tank", "64M");
    let small = random_bytes(1 << 20, 18);
    env.import("tank/v", &small);
    let big = env.file("big.img", &random_bytes((1 << 20) + 1, 19));
    let before = snapshot(&path);
    env.run(["vol", "import", big.to_str().expect("utf-8"), "tank/v"])
        .fails_with("larger than tank/v");
    same_bytes(&snapshot(&path), &before, "pool file");
    same_bytes(&env.export("tank/v"), &small, "volume unchanged");
    // And a block size that does not match the existing volume.
    env.run([
        "vol",
        "import",
        big.to_str().expect("utf-8"),
        "tank/v",
        "-b",
        "64K",
    ])
    .fails_with("block size");
}

#[test]
fn a_second_process_on_a_held_pool() {
    let env = Env::new();
    let pool = env.pool("tank", "64M");
    env.run(["vol", "create", "tank/v", "--size", "8M"]).ok();
    let fifo = env.fifo("fifo");

    // The holder: an import reading from the FIFO, which we feed slowly.
    let mut holder = env
        .cmd(["vol", "import", fifo.to_str().expect("utf-8"), "tank/v"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn holder");
    let deadline = Instant::now() + Duration::from_secs(30);
    // Open the writing end without blocking forever if the holder died.
    let mut writer = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags_nonblock()
            .open(&fifo)
        {
            Ok(f) => break f,
            Err(_) if Instant::now() < deadline => {
                assert!(
                    holder.try_wait().expect("try_wait").is_none(),
                    "holder exited"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("opening the FIFO: {e}"),
        }
    };
    set_blocking(&writer);
    let data = random_bytes(1 << 20, 20);
    writer.write_all(&data).expect("feeding the holder");

    // Wait until the holder has the pool (watching its lock, which takes no lock itself),
    // then try a second process.
    let pid = holder.id();
    while common::lock_holder(&pool) != Some(pid as i32) {
        assert!(Instant::now() < deadline, "holder never took the pool");
        assert!(
            holder.try_wait().expect("try_wait").is_none(),
            "holder exited"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = env.run(["pool", "status", "tank"]);
    r.fails_with("in use");
    assert!(
        r.stderr.contains(&pid.to_string()),
        "names the holder: {}",
        r.stderr
    );
    env.run(["vol", "create", "tank/other", "--size", "1M"])
        .fails_with("in use");
    env.run(["pool", "export", "tank"]).fails_with("in use");
    env.run(["pool", "destroy", "tank"]).fails_with("in use");
    let list = env.run(["pool", "list", "--json"]).json();
    assert_eq!(list[0]["health"], "BUSY");

    drop(writer);
    let out = holder.wait_with_output().expect("holder");
    assert!(
        out.status.success(),
        "holder: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = env.export("tank/v");
    same_bytes(&back[..data.len()], &data, "data fed through the FIFO");
    env.run(["get", "name", "tank/other"])
        .fails_with("does not exist");
    env.run(["pool", "scrub", "tank"]).ok();
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

fn set_blocking(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        assert!(fl >= 0);
        assert_eq!(libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK), 0);
    }
}

#[test]
fn usage_errors_are_one_line() {
    let env = Env::new();
    let r = env.run(["frobnicate"]);
    r.fails_with("unrecognized subcommand");
    assert_eq!(r.code, 2);
    env.run(["vol", "create", "tank/v"]).fails_with("--size");
    env.run(["list", "-t", "bogus"])
        .fails_with("unknown dataset type");
    assert!(env.run(["--help"]).ok().contains("Usage"));
    // An address that does not parse is a usage error, not a failure to bind.
    for bad in ["bogus", "127.0.0.1:99999"] {
        let r = env.run(["nfs", "serve", "tank", "--listen", bad]);
        r.fails_with("--listen");
        assert_eq!(r.code, 2, "--listen {bad}");
    }
    // Memory the host cannot map, or not in whole MiB: usage errors, before any clone is made.
    let kernel = env.file("kernel", b"not a kernel");
    let k = kernel.to_str().expect("utf-8");
    for (mem, says) in [("1P", "less memory"), ("100000001", "whole number of MiB")] {
        let r = env.run(["vm", "run", "--kernel", k, "--mem", mem]);
        r.fails_with(says);
        assert_eq!(r.code, 2, "--mem {mem}");
    }
    env.pool("tank", "64M");
    env.import("tank/v", &random_bytes(1 << 20, 5));
    env.run(["snapshot", "tank/v@s"]).ok();
    // Checked before the clone is made...
    env.run([
        "vm",
        "run",
        "--kernel",
        k,
        "--mem",
        "100000001",
        "--clone-from",
        "tank/v@s",
        "--name",
        "c",
    ])
    .fails_with("whole number of MiB");
    // ...or found while the VM is built: the clone made for it goes again, saying so.
    let r = env.run([
        "vm",
        "run",
        "--kernel",
        k,
        "--clone-from",
        "tank/v@s",
        "--name",
        "c",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("neither an ELF vmlinux nor a bzImage")
            && r.stderr.contains("destroyed tank/c"),
        "{}",
        r.stderr
    );
    assert!(!env
        .run(["list", "-H", "-o", "name"])
        .ok()
        .contains("tank/c"));
    // As many disks as a VM takes, plus the clone: refused before the clone is made.
    let mut args = vec![
        "vm",
        "run",
        "--kernel",
        k,
        "--clone-from",
        "tank/v@s",
        "--name",
        "c",
    ];
    for _ in 0..18 {
        args.extend(["--disk", "tank/v,ro"]);
    }
    env.run(args).fails_with("disks");
    assert!(!env
        .run(["list", "-H", "-o", "name"])
        .ok()
        .contains("tank/c"));
}

/// Commands that write a file never write over a pool (its own, or another one), a failed
/// `send -f` leaves the file that was there, a guest is never given a pool's file as a raw
/// disk or one disk twice writable, and an export whose reader goes away fails.
#[test]
fn nothing_writes_over_a_pool_file_or_a_file_it_did_not_make() {
    let env = Env::new();
    let tank = env.pool("tank", "64M");
    let other = env.pool("other", "64M");
    env.import("tank/v", &random_bytes(1 << 20, 3));
    env.run(["snapshot", "tank/v@s"]).ok();
    let (tank_before, other_before) = (snapshot(&tank), snapshot(&other));
    for target in [&tank, &other] {
        let t = target.to_str().expect("utf-8");
        env.run(["vol", "export", "tank/v", t])
            .fails_with("holds a tarn pool");
        env.run(["send", "tank/v@s", "-f", t])
            .fails_with("holds a tarn pool");
    }
    assert!(snapshot(&tank) == tank_before, "tank's file changed");
    assert!(snapshot(&other) == other_before, "other's file changed");
    env.run(["pool", "status", "tank"]).ok();

    // A send that fails (a missing base) leaves the file that was there.
    let keep = env.file("keep.txt", b"precious");
    env.run([
        "send",
        "-i",
        "@nope",
        "tank/v@s",
        "-f",
        keep.to_str().expect("utf-8"),
    ])
    .fails_with("nope");
    assert_eq!(snapshot(&keep), b"precious");

    let t = tank.to_str().expect("utf-8");
    env.run(["vm", "run", "--kernel", t, "--disk", t])
        .fails_with("holds a tarn pool");
    env.run([
        "vm", "run", "--kernel", t, "--disk", "tank/v", "--disk", "tank/v",
    ])
    .fails_with("given twice");

    // `vol export -` into a reader that goes away is a failure, not a success.
    let mut child = env
        .cmd(["vol", "export", "tank/v", "-"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    assert!(
        !child.wait().expect("wait").success(),
        "export to a closed pipe succeeded"
    );
}

/// `set` and `hold` check every part before they change anything: a bad property value
/// does not leave a new volsize behind, and a missing snapshot does not leave the others held.
#[test]
fn set_and_hold_change_all_or_nothing() {
    let env = Env::new();
    env.pool("tank", "64M");
    env.run(["vol", "create", "tank/k", "--size", "10M"]).ok();
    let long = format!("x={}", "v".repeat(9000));
    env.run(["set", "volsize=20M", &long, "tank/k"])
        .fails_with("longer than");
    assert_eq!(
        env.run(["get", "-H", "-p", "volsize", "tank/k"]).ok(),
        format!("tank/k\tvolsize\t{}\t-\n", 10 << 20)
    );
    // A pool size the file system refuses leaves no empty file behind.
    let big = env.path("big.pool");
    env.run([
        "pool",
        "create",
        "big",
        big.to_str().expect("utf-8"),
        "--size",
        "16383P",
    ])
    .fails_with("big");
    assert!(!big.exists(), "an empty pool file was left behind");
    env.run(["snapshot", "tank/k@s1"]).ok();
    env.run(["hold", "t1", "tank/k@s1", "tank/k@nope"])
        .fails_with("nope");
    assert_eq!(
        env.run(["get", "-H", "holds", "tank/k@s1"]).ok(),
        "tank/k@s1\tholds\t-\t-\n"
    );
}

/// A damaged registry entry hides no other pool, and `pool export` forgets it.
#[test]
fn a_damaged_registry_entry_breaks_nothing_else() {
    let env = Env::new();
    env.pool("tank", "64M");
    std::fs::write(env.home().join("pools").join("broken.json"), b"{ not json").expect("write");
    let listed = env.run(["pool", "list", "-H"]).ok().to_string();
    assert!(listed.contains("tank"), "{listed}");
    env.run(["pool", "export", "broken"]).ok();
    assert_eq!(registry_files(&env), ["tank.json"]);
    // A pool whose file moved: the error names the pool and says how to import it again.
    let moved = env.pool("moved", "64M");
    std::fs::rename(&moved, env.path("elsewhere.pool")).expect("move");
    env.run(["vol", "create", "moved/v", "--size", "1M"])
        .fails_with("pool export moved");
}

/// `pool destroy` of a pool that no longer opens wipes it only if a label still names it: a
/// damaged copy of another pool sitting at the remembered path was wiped and removed in its
/// place. The remembered pool itself, truncated, is still destroyed.
#[test]
fn destroy_wipes_only_the_pool_it_remembers() {
    let env = Env::new();
    let path = env.pool("tank", "64M");
    let p = path.to_str().expect("utf-8").to_string();
    std::fs::rename(&path, env.path("tank.moved")).expect("move away");
    // Another pool, made under another registry at the same path, then damaged.
    let other = Env::new();
    other
        .run(["pool", "create", "other", &p, "--size", "64M"])
        .ok();
    other
        .run(["vol", "create", "other/precious", "--size", "1M"])
        .ok();
    env.run(["pool", "destroy", "tank"])
        .fails_with("now holds pool other");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(60 << 20).expect("truncate");
    env.run(["pool", "destroy", "tank"])
        .fails_with("now holds pool other");
    assert_eq!(
        std::fs::metadata(&path).expect("still there").len(),
        60 << 20
    );
    // The remembered pool back, truncated: destroyed.
    std::fs::rename(env.path("tank.moved"), &path).expect("move back");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(60 << 20).expect("truncate");
    env.run(["pool", "destroy", "tank"]).ok();
    assert!(!path.exists(), "the remembered pool's file is removed");
}

/// A `vol import` from a FIFO waits for its writer without holding the pool; a pool exported
/// meanwhile is not written (the import read the registry before waiting, and then wrote into
/// the exported pool).
#[test]
fn an_import_waiting_on_a_fifo_does_not_write_a_pool_exported_meanwhile() {
    use std::io::Write;
    let env = Env::new();
    let path = env.pool("tank", "64M");
    env.run(["vol", "create", "tank/v", "--size", "1M"]).ok();
    let fifo = env.fifo("fifo");
    let child = env
        .cmd(["vol", "import", fifo.to_str().expect("utf-8"), "tank/v"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("import");
    std::thread::sleep(std::time::Duration::from_millis(300));
    env.run(["pool", "export", "tank"]).ok();
    let before = snapshot(&path);
    // The import may refuse, and close the FIFO, before all of it is written.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .and_then(|mut f| f.write_all(&random_bytes(1 << 20, 9)));
    let out = child.wait_with_output().expect("import ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("exported or replaced"), "{stderr}");
    same_bytes(&snapshot(&path), &before, "the exported pool");
}

/// A loop device over a file in `env`'s directory, detached when dropped; `None` (saying why)
/// where loop devices cannot be set up.
struct LoopDevice(String);

impl LoopDevice {
    fn new(backing: &std::path::Path) -> Option<LoopDevice> {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(backing)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIP: no loop device ({}); block-device cases need root and loop devices",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(LoopDevice(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

/// `pool create` on a block device that holds a file system needs `--force`, and a registry
/// that cannot take the pool's entry refuses before the device is formatted: both left the
/// device overwritten (the second by an unregistered pool).
#[test]
fn pool_create_on_a_device_overwrites_nothing_it_should_not() {
    let env = Env::new();
    let img = env.path("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(64 << 20))
        .expect("image");
    let Some(dev) = LoopDevice::new(&img) else {
        return;
    };
    let mkfs = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", &dev.0])
        .status();
    if !mkfs.is_ok_and(|s| s.success()) {
        eprintln!("SKIP: mkfs.ext4 is not installed");
        return;
    }
    let before = snapshot(&img);
    env.run(["pool", "create", "tank", &dev.0])
        .fails_with("ext2/3/4 file system");
    same_bytes(&snapshot(&img), &before, "the device");
    // A registry that cannot be written (its pools directory is a file).
    let home = env.path("badhome");
    std::fs::create_dir_all(&home).expect("home");
    std::fs::write(home.join("pools"), b"not a directory").expect("pools");
    let r = env
        .cmd(["pool", "create", "tank", &dev.0, "--force"])
        .env("TARN_HOME", &home)
        .output()
        .expect("tarn");
    assert!(!r.status.success());
    same_bytes(
        &snapshot(&img),
        &before,
        "the device, with an unwritable registry",
    );
    env.run(["pool", "create", "tank", &dev.0, "--force"]).ok();
    env.run(["vol", "create", "tank/v", "--size", "1M"]).ok();
}

/// A signal stops `vol import`, also one whose source (a FIFO here) has gone quiet, and exits
/// 128 + the signal; an existing volume fed from a pipe is rolled back to what it held (an
/// import that created its volume destroys it, as after any failure). A pipe larger than the
/// volume fails the same way, changing nothing.
#[test]
fn a_signal_stops_an_import_between_chunks() {
    use std::io::Write;
    let env = Env::new();
    env.pool("tank", "64M");
    env.run(["vol", "create", "tank/v", "--size", "8M"]).ok();
    let fifo = env.fifo("fifo");
    let child = env
        .cmd(["vol", "import", fifo.to_str().expect("utf-8"), "tank/v"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("import");
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("FIFO");
    w.write_all(&random_bytes(1 << 20, 3)).expect("first MiB");
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    // The writer stays open and quiet: the import must stop all the same.
    let mut child = child;
    let t = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if t.elapsed() > std::time::Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the import did not stop while its source was quiet");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(w);
    let out = child.wait_with_output().expect("import ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert!(stderr.contains("tank/v is as it was"), "{stderr}");
    same_bytes(
        &env.export("tank/v"),
        &vec![0u8; 8 << 20],
        "the rolled-back volume",
    );
    env.run(["pool", "scrub", "tank"]).ok();

    let data = random_bytes(8 << 20, 4);
    env.import("tank/v", &data);
    let mut child = env
        .cmd(["vol", "import", "-", "tank/v"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("import");
    let mut input = child.stdin.take().expect("stdin");
    // The reader may stop before all of it is written: a broken pipe is expected.
    let _ = input.write_all(&random_bytes(9 << 20, 5));
    drop(input);
    let out = child.wait_with_output().expect("import ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("larger than tank/v"), "{stderr}");
    assert!(stderr.contains("tank/v is as it was"), "{stderr}");
    same_bytes(
        &env.export("tank/v"),
        &data,
        "the volume after a pipe too large",
    );
    assert_eq!(
        env.run(["list", "tank", "-t", "snapshot", "-H", "-o", "name"])
            .ok(),
        "",
        "no snapshot is left"
    );
    env.run(["pool", "scrub", "tank"]).ok();
}

/// `vm run --console` naming the kernel, the initrd or a disk file is refused before anything
/// is opened: the console is created (truncated) when the VM is built, and wiped them (the
/// kernel was left at 0 bytes, a disk too while the run "powered off").
#[test]
fn a_console_over_the_kernel_or_a_disk_is_refused() {
    let env = Env::new();
    let kernel = env.path("vmlinuz");
    let disk = env.path("disk.img");
    std::fs::write(&kernel, b"not really a kernel").expect("kernel");
    std::fs::write(&disk, vec![7u8; 4096]).expect("disk");
    let (k, d) = (
        kernel.to_str().expect("utf-8"),
        disk.to_str().expect("utf-8"),
    );
    env.run(["vm", "run", "--kernel", k, "--console", k])
        .fails_with("is the kernel");
    env.run(["vm", "run", "--kernel", k, "--disk", d, "--console", d])
        .fails_with("is a disk");
    assert_eq!(
        std::fs::read(&kernel).expect("kernel"),
        b"not really a kernel"
    );
    assert_eq!(std::fs::read(&disk).expect("disk"), vec![7u8; 4096]);
}
