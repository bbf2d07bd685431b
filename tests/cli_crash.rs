//! Damage and interruption: scrub finds flipped bytes; a `tarn vol import` killed with SIGKILL
//! at any moment leaves a pool that imports, scrubs clean and keeps every earlier volume.

mod common;

use common::{random_bytes, same_bytes, Env};
use std::time::{Duration, Instant};

const BS: usize = 16384;

/// A block whose bytes say which block it is, so it can be found in the pool file.
fn pattern(block: usize) -> Vec<u8> {
    format!("TARN-SCRUB-{block:06}-")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(BS)
        .collect()
}

#[test]
fn scrub_reports_flipped_bytes_and_exits_non_zero() {
    let env = Env::new();
    let path = env.pool("tank", "64M");
    let img: Vec<u8> = (0..64).flat_map(pattern).collect();
    env.run([
        "vol",
        "create",
        "tank/v",
        "--size",
        "1M",
        "--block-size",
        "16K",
    ])
    .ok();
    env.import("tank/v", &img);
    let other = random_bytes(1 << 20, 31);
    env.import("tank/other", &other);
    env.run(["pool", "scrub", "tank"]).ok();

    // Flip a byte in the data block holding volume block 5.
    let mut bytes = std::fs::read(&path).expect("read pool");
    let want = pattern(5);
    let at = (0..bytes.len() - BS)
        .step_by(4096)
        .find(|&i| bytes[i..i + BS] == want[..])
        .expect("block 5 is stored verbatim, sector-aligned, in the pool file");
    bytes[at + 100] ^= 0x5a;
    std::fs::write(&path, &bytes).expect("write pool");

    let r = env.run(["pool", "scrub", "tank"]);
    assert_ne!(r.code, 0, "scrub must fail: {}", r.stdout);
    r.fails_with("found 1 damaged");
    let offset = (5 * BS).to_string();
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("tank/v "))
        .unwrap_or_else(|| panic!("no error line for tank/v: {}", r.stdout));
    assert!(line.contains(&offset), "{line}");
    assert!(line.contains("checksum"), "{line}");
    // The scrub's own report does not advise running a scrub.
    assert!(!line.contains("run `tarn pool scrub"), "{line}");

    let j = env.run(["pool", "scrub", "tank", "--json"]);
    assert_ne!(j.code, 0);
    let j = j.json();
    assert_eq!(j["clean"], false);
    let errors = j["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{j}");
    assert_eq!(errors[0]["dataset"], "tank/v");
    assert_eq!(errors[0]["offset"], 5 * BS as u64);

    // Status remembers the finding; reading the damaged block is an error, never wrong data.
    let st = env.run(["pool", "status", "tank", "--json"]).json();
    assert_eq!(st["last_scrub"]["errors"], 1);
    assert_eq!(st["errors"].as_array().expect("errors").len(), 1);
    env.run(["vol", "export", "tank/v", "out.img"])
        .fails_with("checksum mismatch");
    assert!(!env.path("out.img").exists(), "no partial export is left");
    // The undamaged volume still reads back.
    same_bytes(&env.export("tank/other"), &other, "undamaged volume");
}

/// Runs `tarn vol import FILE NAME` and SIGKILLs it after `after` (None: let it finish).
fn import_killed(env: &Env, file: &str, name: &str, after: Option<Duration>) -> Duration {
    let start = Instant::now();
    let mut child = env
        .cmd(["vol", "import", file, name])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn import");
    if let Some(d) = after {
        std::thread::sleep(d);
        let _ = child.kill();
    }
    let status = child.wait().expect("wait");
    if after.is_none() {
        assert!(status.success(), "import without a kill must succeed");
    }
    start.elapsed()
}

/// After an interruption: the pool re-imports by path, scrubs clean, keeps `kept`.
fn check_survivors(env: &Env, path: &std::path::Path, kept: &[(&str, &[u8])]) {
    let out = env.run(["pool", "export", "tank"]);
    out.ok();
    assert!(out.stderr.is_empty(), "pool opened cleanly: {}", out.stderr);
    env.run(["pool", "import", path.to_str().expect("utf-8")])
        .ok();
    env.run(["pool", "scrub", "tank"]).ok();
    for (name, data) in kept {
        same_bytes(&env.export(name), data, name);
    }
}

#[test]
fn vol_import_killed_at_any_moment_leaves_a_good_pool() {
    let env = Env::new();
    let path = env.pool("tank", "256M");
    let a = random_bytes(8 << 20, 32);
    env.import("tank/a", &a);
    let mut b = random_bytes(2 << 20, 33);
    b[(1 << 20)..].fill(0);
    env.run([
        "vol",
        "create",
        "tank/b",
        "--size",
        "2M",
        "--block-size",
        "4K",
    ])
    .ok();
    env.import("tank/b", &b);

    let big = env.file("big.img", &random_bytes(96 << 20, 34));
    let big = big.to_str().expect("utf-8").to_string();
    // How long an uninterrupted import takes here, to spread the kills over it.
    let full = import_killed(&env, &big, "tank/new", None);
    env.run(["destroy", "tank/new"]).ok();

    let kept: [(&str, &[u8]); 2] = [("tank/a", &a), ("tank/b", &b)];
    for frac in [0.0, 0.05, 0.15, 0.3, 0.5, 0.7, 0.85, 0.97] {
        import_killed(&env, &big, "tank/new", Some(full.mul_f64(frac)));
        check_survivors(&env, &path, &kept);
        // The interrupted volume, where it was created, is consistent and can go.
        let r = env.run(["destroy", "tank/new"]);
        if r.code != 0 {
            r.fails_with("does not exist");
        }
    }

    // Killed while overwriting an existing volume: the pool is still consistent and every
    // other volume intact (the target holds some mix of old and new data).
    env.run(["vol", "create", "tank/target", "--size", "96M"])
        .ok();
    for frac in [0.2, 0.6] {
        import_killed(&env, &big, "tank/target", Some(full.mul_f64(frac)));
        check_survivors(&env, &path, &kept);
    }
}
