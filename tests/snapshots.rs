//! Snapshot verbs end to end: snapshot, clone, rollback, promote, destroy rules, holds, list
//! and get accounting, diff, and send/recv between pools.

mod common;

use common::{random_bytes, same_bytes, Env};
use serde_json::Value;

const M: u64 = 1 << 20;
const K: u64 = 1 << 10;

fn names(env: &Env, pool: &str) -> Vec<String> {
    env.run(["list", pool, "-t", "all", "-H", "-o", "name"])
        .ok()
        .lines()
        .map(String::from)
        .collect()
}

/// `tarn list -t all --json` as name → object.
fn listing(env: &Env, target: &str) -> std::collections::BTreeMap<String, Value> {
    env.run(["list", target, "-t", "all", "--json"])
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|d| (d["name"].as_str().expect("name").to_string(), d.clone()))
        .collect()
}

#[test]
fn snapshot_clone_rollback_promote_and_destroy_rules() {
    let env = Env::new();
    env.pool("tank", "128M");
    let a = random_bytes(M as usize, 1);
    env.import("tank/v", &a);
    env.run(["vol", "create", "tank/w", "-s", "1M"]).ok();

    // Atomic multi-snapshot; duplicates and non-snapshot names refused.
    env.run(["snapshot", "tank/v@s1", "tank/w@s1"]).ok();
    env.run(["snapshot", "tank/v@s1"])
        .fails_with("already exists");
    let r = env.run(["snapshot", "tank/v"]);
    r.fails_with("not a snapshot");
    assert_eq!(r.code, 2);
    env.run(["snapshot", "tank/nope@x"])
        .fails_with("does not exist");
    let l = listing(&env, "tank");
    assert_eq!(
        l["tank/v@s1"]["creation_txg"], l["tank/w@s1"]["creation_txg"],
        "one txg"
    );
    // Default list shows volumes only; -t snapshot only snapshots.
    assert_eq!(
        env.run(["list", "tank", "-H", "-o", "name"]).ok(),
        "tank/v\ntank/w\n"
    );
    assert_eq!(
        env.run(["list", "tank", "-t", "snapshot", "-H", "-o", "name"])
            .ok(),
        "tank/v@s1\ntank/w@s1\n"
    );
    // One snapshot by its name (with or without -t); a volume with no snapshots has none to
    // list (it exists).
    for t in [&["-t", "snapshot"][..], &[]] {
        let mut args = vec!["list", "tank/v@s1", "-H", "-o", "name"];
        args.extend_from_slice(t);
        assert_eq!(env.run(args).ok(), "tank/v@s1\n");
    }
    env.run(["vol", "create", "tank/bare", "--size", "1M"]).ok();
    assert_eq!(
        env.run(["list", "tank/bare", "-t", "snapshot", "-H", "-o", "name"])
            .ok(),
        ""
    );
    env.run(["destroy", "tank/bare"]).ok();

    // Clone: shares data, origin/clones shown.
    env.run(["clone", "tank/v@s1", "tank/c", "-o", "com.example:x=1"])
        .ok();
    same_bytes(&env.export("tank/c"), &a, "clone");
    let l = listing(&env, "tank");
    assert_eq!(l["tank/c"]["origin"], "tank/v@s1");
    assert_eq!(l["tank/c"]["props"]["com.example:x"], "1");
    assert_eq!(l["tank/v@s1"]["clones"], serde_json::json!(["tank/c"]));
    let g = env.run(["get", "-H", "origin,clones", "tank/c", "tank/v@s1"]);
    assert_eq!(
        g.ok(),
        "tank/c\torigin\ttank/v@s1\t-\ntank/c\tclones\t-\t-\n\
         tank/v@s1\torigin\t-\t-\ntank/v@s1\tclones\ttank/c\t-\n"
    );
    env.run(["clone", "tank/v", "tank/c2"])
        .fails_with("not a snapshot");

    // Destroy refused naming clones, holds, snapshots.
    env.run(["destroy", "tank/v@s1"]).fails_with("tank/c");
    env.run(["destroy", "tank/v"]).fails_with("tank/v@s1");
    env.run(["destroy", "-r", "tank/v"]).fails_with("tank/c");
    env.run(["hold", "keep", "tank/w@s1"]).ok();
    env.run(["hold", "keep", "tank/w@s1"])
        .fails_with("already exists");
    assert_eq!(
        env.run(["get", "-H", "holds", "tank/w@s1"]).ok(),
        "tank/w@s1\tholds\tkeep\t-\n"
    );
    env.run(["destroy", "tank/w@s1"]).fails_with("keep");
    env.run(["destroy", "-r", "tank/w"]).fails_with("keep");
    env.run(["release", "nope", "tank/w@s1"])
        .fails_with("does not exist");
    env.run(["release", "keep", "tank/w@s1"]).ok();
    env.run(["destroy", "-r", "tank/w"]).ok();
    assert!(!names(&env, "tank").iter().any(|n| n.starts_with("tank/w")));

    // Rollback: newest only; -r destroys newer snapshots; -R their clones too.
    let b = random_bytes(64 * 1024, 2);
    env.import("tank/v", &b);
    env.run(["snapshot", "tank/v@s2"]).ok();
    env.run(["clone", "tank/v@s2", "tank/c2"]).ok();
    env.import("tank/v", &random_bytes(4096, 3));
    env.run(["snapshot", "tank/v@s3"]).ok();
    env.import("tank/v", &random_bytes(8192, 4));
    env.run(["rollback", "tank/v@s1"]).fails_with("tank/v@s2");
    env.run(["rollback", "-r", "tank/v@s1"])
        .fails_with("tank/c2");
    assert!(names(&env, "tank").contains(&"tank/v@s3".to_string()));
    let at_s3 = env.export("tank/v@s3");
    env.run(["rollback", "tank/v@s3"]).ok();
    same_bytes(&env.export("tank/v"), &at_s3, "rolled back to s3");
    env.run(["rollback", "-R", "tank/v@s1"]).ok();
    let n = names(&env, "tank");
    assert_eq!(n, ["tank/c", "tank/v", "tank/v@s1"], "{n:?}");
    same_bytes(&env.export("tank/v"), &a, "rolled back to s1");

    // Promote: the clone takes s1; the old origin becomes a clone and can go.
    env.run(["promote", "tank/v"]).fails_with("not a clone");
    env.run(["promote", "tank/c"]).ok();
    let l = listing(&env, "tank");
    assert!(l.contains_key("tank/c@s1"), "{l:?}");
    assert_eq!(l["tank/v"]["origin"], "tank/c@s1");
    assert_eq!(l["tank/c"]["origin"], Value::Null);
    env.run(["destroy", "tank/v"]).ok();
    env.run(["destroy", "tank/c@s1"]).ok();
    same_bytes(&env.export("tank/c"), &a, "promoted clone");
    env.run(["destroy", "-R", "tank/c@nope"])
        .fails_with("does not exist");
}

#[test]
fn destroy_capital_r_takes_clones() {
    let env = Env::new();
    env.pool("tank", "64M");
    env.import("tank/v", &random_bytes(256 * 1024, 5));
    env.run(["snapshot", "tank/v@s"]).ok();
    env.run(["clone", "tank/v@s", "tank/c"]).ok();
    env.run(["snapshot", "tank/c@t"]).ok();
    env.run(["clone", "tank/c@t", "tank/d"]).ok();
    env.run(["destroy", "-r", "tank/v@s"]).fails_with("tank/c");
    env.run(["destroy", "-R", "tank/v@s"]).ok();
    assert_eq!(names(&env, "tank"), ["tank/v"]);
    let r = env.run(["destroy", "-r", "-R", "tank/v"]);
    assert_eq!(r.code, 2);
}

/// Write 1 MiB, snapshot, overwrite 256 KiB: the accounting, exactly (data blocks only).
#[test]
fn list_and_get_accounting_is_exact() {
    let env = Env::new();
    env.pool("tank", "64M");
    env.run(["vol", "create", "tank/v", "-s", "4M"]).ok();
    env.import("tank/v", &random_bytes(M as usize, 6));
    env.run(["snapshot", "tank/v@a"]).ok();
    env.import("tank/v", &random_bytes(256 * K as usize, 7));
    let l = listing(&env, "tank");
    let (v, s) = (&l["tank/v"], &l["tank/v@a"]);
    assert_eq!(v["referenced"], M);
    assert_eq!(v["written"], 256 * K);
    assert_eq!(v["usedbysnapshots"], 256 * K);
    assert_eq!(s["referenced"], M);
    assert_eq!(s["written"], M);
    assert_eq!(s["used"], 256 * K);
    assert_eq!(s["type"], "snapshot");
    let g = env
        .run([
            "get",
            "referenced,written,usedbysnapshots,refer,usedsnap",
            "tank/v",
            "--json",
        ])
        .json();
    let vals: Vec<u64> = g
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["value"].as_u64().expect("number"))
        .collect();
    assert_eq!(vals, [M, 256 * K, 256 * K, M, 256 * K]);
    let h = env.run([
        "list",
        "-t",
        "all",
        "-H",
        "-p",
        "-o",
        "name,refer,written,usedsnap,clones,origin",
    ]);
    assert_eq!(
        h.ok(),
        format!(
            "tank/v	{M}	{}	{}	-	-
tank/v@a	{M}	{M}	0	-	-
",
            256 * K,
            256 * K
        )
    );
    let human = env.run(["list", "-t", "all"]);
    let header = human.ok().lines().next().expect("header").to_string();
    for c in ["USED", "REFERENCED", "WRITTEN"] {
        assert!(header.contains(c), "{header}");
    }
}

/// ZFS semantics: a volume's `used` is what destroying it and its snapshots frees (its
/// referenced data plus what only snapshots hold): 1 MiB + 256 KiB here.
#[test]

fn volume_used_counts_shared_data() {
    let env = Env::new();
    env.pool("tank", "64M");
    env.run(["vol", "create", "tank/v", "-s", "4M"]).ok();
    env.import("tank/v", &random_bytes(M as usize, 6));
    env.run(["snapshot", "tank/v@a"]).ok();
    env.import("tank/v", &random_bytes(256 * K as usize, 7));
    assert_eq!(listing(&env, "tank")["tank/v"]["used"], M + 256 * K);
}

#[test]
fn diff_reports_changed_ranges() {
    let env = Env::new();
    env.pool("tank", "64M");
    env.run(["vol", "create", "tank/v", "-s", "1M"]).ok();
    env.import("tank/v", &random_bytes(M as usize, 8));
    env.run(["snapshot", "tank/v@a"]).ok();
    // Overwrite bytes 0..8K (vol import rewrites from offset 0).
    env.import("tank/v", &random_bytes(8192, 9));
    env.run(["snapshot", "tank/v@b"]).ok();
    let j = env.run(["diff", "tank/v@a", "tank/v@b", "--json"]).json();
    assert_eq!(j["changed_bytes"], 8192);
    assert_eq!(
        j["ranges"],
        serde_json::json!([{"offset": 0, "length": 8192}])
    );
    assert_eq!(j["to"], "tank/v@b");
    let short = env.run(["diff", "tank/v@a", "@b", "-H", "-p"]);
    assert_eq!(
        short.ok(),
        "0	8192
"
    );
    let human = env.run(["diff", "tank/v@a"]);
    let text = human.ok();
    assert!(
        text.contains("OFFSET") && text.contains("1 range"),
        "{text}"
    );
    // Nothing changed since b.
    let j = env.run(["diff", "tank/v@b", "--json"]).json();
    assert_eq!(j["changed_bytes"], 0);
    env.run(["diff", "tank/v@b", "tank/v@a"])
        .fails_with("not a later state");
    env.run(["diff", "tank/v", "tank/v@a"])
        .fails_with("not a snapshot");
}

fn send_to_file(env: &Env, args: &[&str], file: &str) -> Vec<u8> {
    let p = env.path(file);
    let mut a: Vec<&str> = vec!["send"];
    a.extend_from_slice(args);
    a.extend(["-f", p.to_str().expect("utf-8")]);
    env.run(&a).ok();
    std::fs::read(&p).expect("stream")
}

#[test]
fn send_recv_full_and_incremental_into_a_second_pool() {
    let env = Env::new();
    env.pool("tank", "128M");
    env.pool("backup", "128M");
    env.run([
        "vol",
        "create",
        "tank/v",
        "-s",
        "8M",
        "-o",
        "com.example:role=db",
    ])
    .ok();
    let a = random_bytes(3 * M as usize, 10);
    env.import("tank/v", &a);
    env.run(["snapshot", "tank/v@s1"]).ok();
    // Full stream through stdout and stdin.
    let out = env.cmd(["send", "tank/v@s1"]).output().expect("send");
    assert!(out.status.success());
    let full = out.stdout;
    assert!(full.len() < 3 * M as usize + 64 * 1024, "holes skipped");
    env.run_stdin(["recv", "backup/v"], &full).ok();
    same_bytes(&env.export("backup/v@s1"), &env.export("tank/v@s1"), "full");
    same_bytes(&env.export("backup/v"), &env.export("tank/v"), "full head");
    let b = listing(&env, "backup");
    let t = listing(&env, "tank");
    assert_eq!(b["backup/v@s1"]["guid"], t["tank/v@s1"]["guid"]);
    assert!(
        t["tank/v@s1"]["guid"].is_string(),
        "GUIDs are strings in JSON"
    );
    assert_eq!(b["backup/v"]["props"]["com.example:role"], "db");

    // Change: overwrite the start, zero a range (via a shrink-free path: import zeroes).
    env.import("tank/v", &random_bytes(100_000, 11));
    env.run(["snapshot", "tank/v@s2"]).ok();
    env.run(["set", "volsize=12M", "tank/v"]).ok();
    env.run(["snapshot", "tank/v@s3"]).ok();
    let inc = send_to_file(&env, &["-i", "@s1", "tank/v@s2"], "inc12");
    assert!(inc.len() < 200_000, "{}", inc.len());
    let inc23 = send_to_file(&env, &["-i", "tank/v@s2", "tank/v@s3"], "inc23");
    let r = env.run([
        "recv",
        "backup/v",
        "-v",
        "-f",
        env.path("inc12").to_str().expect("utf-8"),
    ]);
    assert!(r.ok().contains("incremental"), "{}", r.stdout);
    env.run_stdin(["receive", "backup/v"], &inc23).ok();
    for s in ["s2", "s3"] {
        same_bytes(
            &env.export(&format!("backup/v@{s}")),
            &env.export(&format!("tank/v@{s}")),
            s,
        );
    }
    same_bytes(&env.export("backup/v"), &env.export("tank/v"), "head");
    assert_eq!(listing(&env, "backup")["backup/v"]["size"], 12 * M);

    // Wrong base, existing full target, repeated stream: refused, nothing changes.
    let before = names(&env, "backup");
    env.run_stdin(["recv", "backup/v"], &inc23)
        .fails_with("already has");
    env.run_stdin(["recv", "backup/v"], &full)
        .fails_with("exists");
    env.run_stdin(["recv", "backup/other"], &inc)
        .fails_with("does not exist");
    assert_eq!(names(&env, "backup"), before);
    env.run(["send", "-i", "@s3", "tank/v@s1"])
        .fails_with("not a later state");
}

/// `send -R` through a pipe recreates a volume with every snapshot; `send -I` brings a copy
/// up to date in one stream; `-i` with `-R` or `-I` is a usage error.
#[test]
fn send_packages_replicate_a_volume_with_its_snapshots() {
    let env = Env::new();
    env.pool("tank", "128M");
    env.pool("backup", "128M");
    env.run(["vol", "create", "tank/v", "-s", "4M"]).ok();
    for (i, s) in ["s1", "s2", "s3"].iter().enumerate() {
        env.import("tank/v", &random_bytes((i + 1) * 300_000, 20 + i as u64));
        env.run(["snapshot", &format!("tank/v@{s}")]).ok();
    }
    let out = env.cmd(["send", "-R", "tank/v@s2"]).output().expect("send");
    assert!(out.status.success());
    let estimate = env.run(["send", "-n", "-R", "tank/v@s2"]);
    assert!(
        estimate
            .ok()
            .contains(&format!("({} bytes)", out.stdout.len())),
        "{}",
        estimate.stdout
    );
    let r = env.run_stdin(["recv", "backup/v", "-v"], &out.stdout);
    let lines: Vec<&str> = r.ok().lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("full") && lines[1].contains("incremental"));
    assert_eq!(
        names(&env, "backup"),
        ["backup/v", "backup/v@s1", "backup/v@s2"]
    );
    let inc = send_to_file(&env, &["-I", "@s1", "tank/v@s3"], "inc13");
    env.run_stdin(["recv", "backup/v"], &inc)
        .fails_with("already has");
    let inc = send_to_file(&env, &["-I", "@s2", "tank/v@s3"], "inc23");
    env.run_stdin(["recv", "backup/v"], &inc).ok();
    for s in ["s1", "s2", "s3"] {
        same_bytes(
            &env.export(&format!("backup/v@{s}")),
            &env.export(&format!("tank/v@{s}")),
            s,
        );
    }
    let t = listing(&env, "tank");
    let b = listing(&env, "backup");
    assert_eq!(b["backup/v@s3"]["guid"], t["tank/v@s3"]["guid"]);
    let r = env.run(["send", "-R", "-i", "@s1", "tank/v@s3"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

/// Snapshots take user properties (as in ZFS): set, listed, removed, kept through a rename
/// and a re-import; their volsize is frozen.
#[test]
fn snapshots_take_user_properties() {
    let env = Env::new();
    let file = env.pool("tank", "64M");
    env.run(["vol", "create", "tank/v", "-s", "4M"]).ok();
    env.run(["snapshot", "tank/v@s"]).ok();
    env.run(["set", "com.example:release=2026.11", "tank/v@s"])
        .ok();
    env.run(["set", "volsize=8M", "tank/v@s"])
        .fails_with("frozen");
    env.run(["rename", "tank/v@s", "@golden"]).ok();
    env.run(["pool", "export", "tank"]).ok();
    env.run(["pool", "import", file.to_str().expect("utf-8")])
        .ok();
    let l = listing(&env, "tank");
    assert_eq!(
        l["tank/v@golden"]["props"]["com.example:release"],
        "2026.11"
    );
    assert!(l["tank/v"]["props"].get("com.example:release").is_none());
    let got = env
        .run(["get", "-H", "com.example:release", "tank/v@golden"])
        .ok()
        .to_string();
    assert!(got.contains("2026.11"), "{got}");
    env.run(["set", "com.example:release=", "tank/v@golden"])
        .ok();
    assert!(listing(&env, "tank")["tank/v@golden"]["props"]
        .get("com.example:release")
        .is_none());
}

#[test]
fn incremental_onto_changed_target_needs_force() {
    let env = Env::new();
    env.pool("tank", "64M");
    env.pool("backup", "64M");
    env.import("tank/v", &random_bytes(M as usize, 12));
    env.run(["snapshot", "tank/v@s1"]).ok();
    env.import("tank/v", &random_bytes(4096, 13));
    env.run(["snapshot", "tank/v@s2"]).ok();
    let full = send_to_file(&env, &["tank/v@s1"], "full");
    let inc = send_to_file(&env, &["-i", "@s1", "tank/v@s2"], "inc");
    env.run_stdin(["recv", "backup/v"], &full).ok();
    env.import("backup/v", &random_bytes(8192, 14));
    let before = names(&env, "backup");
    let changed = env.export("backup/v");
    env.run_stdin(["recv", "backup/v"], &inc)
        .fails_with("changed since");
    assert_eq!(names(&env, "backup"), before);
    same_bytes(&env.export("backup/v"), &changed, "untouched");
    env.run_stdin(["recv", "-F", "backup/v"], &inc).ok();
    same_bytes(&env.export("backup/v"), &env.export("tank/v@s2"), "forced");
}

#[test]
fn truncated_and_corrupt_streams_leave_nothing_behind() {
    let env = Env::new();
    env.pool("tank", "64M");
    env.pool("backup", "64M");
    env.import("tank/v", &random_bytes(2 * M as usize, 15));
    env.run(["snapshot", "tank/v@s1"]).ok();
    env.import("tank/v", &random_bytes(300_000, 16));
    env.run(["snapshot", "tank/v@s2"]).ok();
    let full = send_to_file(&env, &["tank/v@s1"], "full");
    let inc = send_to_file(&env, &["-i", "@s1", "tank/v@s2"], "inc");
    let list_before = env.run(["list", "-t", "all", "-p", "backup"]).stdout;
    let status = |env: &Env| env.run(["pool", "status", "backup", "--json"]).json();
    for cut in [0, 20, full.len() / 2, full.len() - 8, full.len() - 1] {
        env.run_stdin(["recv", "backup/v"], &full[..cut])
            .fails_with(if cut == 0 { "truncated" } else { "" });
        assert_eq!(
            env.run(["list", "-t", "all", "-p", "backup"]).stdout,
            list_before
        );
    }
    for at in [3, 60, full.len() / 2, full.len() - 2] {
        let mut c = full.clone();
        c[at] ^= 0x04;
        env.run_stdin(["recv", "backup/v"], &c).fails_with("stream");
        assert_eq!(
            env.run(["list", "-t", "all", "-p", "backup"]).stdout,
            list_before
        );
    }
    let st = status(&env);
    assert!(
        st["allocated"].as_u64().expect("alloc") - st["deferred"].as_u64().expect("def") < M,
        "{st}"
    );
    // Now incremental: a bad one leaves the received volume as it was.
    env.run_stdin(["recv", "backup/v"], &full).ok();
    let after_full = env.run(["list", "-t", "all", "-p", "backup"]).stdout;
    for cut in [inc.len() / 2, inc.len() - 1] {
        env.run_stdin(["recv", "backup/v"], &inc[..cut])
            .fails_with("truncated");
    }
    let mut c = inc.clone();
    let mid = c.len() / 2;
    c[mid] ^= 1;
    env.run_stdin(["recv", "backup/v"], &c)
        .fails_with("checksum");
    assert_eq!(
        env.run(["list", "-t", "all", "-p", "backup"]).stdout,
        after_full
    );
    same_bytes(&env.export("backup/v"), &env.export("tank/v@s1"), "intact");
    env.run_stdin(["recv", "backup/v"], &inc).ok();
    same_bytes(&env.export("backup/v"), &env.export("tank/v@s2"), "then ok");
    env.run_stdin(["recv", "backup/x"], b"not a stream at all")
        .fails_with("not a tarn send stream");
}

/// A receive stopped by SIGTERM while it waits for the rest of its stream (a sender gone
/// quiet, `timeout`, systemd) exits 143 and keeps nothing: no temporary volume is left, so the
/// base snapshot can still be destroyed (a clone of it used to stay behind and refuse that).
#[test]
fn a_receive_stopped_by_a_signal_keeps_nothing() {
    use std::io::Write;
    let env = Env::new();
    env.pool("tank", "64M");
    env.pool("backup", "64M");
    env.import("tank/v", &random_bytes(2 * M as usize, 17));
    env.run(["snapshot", "tank/v@s1"]).ok();
    env.import("tank/v", &random_bytes(2 * M as usize, 18));
    env.run(["snapshot", "tank/v@s2"]).ok();
    let full = send_to_file(&env, &["tank/v@s1"], "full");
    let inc = send_to_file(&env, &["-i", "@s1", "tank/v@s2"], "inc");
    env.run_stdin(["recv", "backup/v"], &full).ok();
    let before = names(&env, "backup");
    let mut child = env
        .cmd(["recv", "backup/v"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("recv");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(&inc[..inc.len() / 2])
        .expect("half the stream");
    stdin.flush().expect("flush");
    // The receive has its temporary volume once it read the stream's BEGIN; give it time.
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().expect("wait");
    drop(stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert!(stderr.contains("was discarded"), "{stderr}");
    assert_eq!(names(&env, "backup"), before);
    same_bytes(&env.export("backup/v"), &env.export("tank/v@s1"), "intact");
    env.run(["destroy", "backup/v@s1"]).ok();
    env.run(["pool", "scrub", "backup"]).ok();
}

#[test]
fn vm_run_clone_from_provisions_and_a_failed_boot_leaves_no_clone() {
    let env = Env::new();
    env.pool("tank", "64M");
    env.import("tank/img", &random_bytes(M as usize, 7));
    env.run(["snapshot", "tank/img@golden"]).ok();
    // A kernel that does not exist is refused before anything is cloned; a file that is no
    // kernel fails the boot after the clone was made, and the clone goes.
    let missing = env.path("no-such-kernel");
    let junk = env.file("junk-kernel", &random_bytes(8192, 8));
    for (kernel, cloned) in [(missing, false), (junk, true)] {
        let r = env.run([
            "vm",
            "run",
            "--kernel",
            kernel.to_str().expect("utf-8"),
            "--clone-from",
            "tank/img@golden",
            "--name",
            "vm1",
        ]);
        assert_ne!(r.code, 0, "{}: the boot must fail", kernel.display());
        assert_eq!(
            r.stderr.contains("cloned tank/img@golden to tank/vm1"),
            cloned,
            "{}",
            r.stderr
        );
    }
    assert_eq!(
        names(&env, "tank"),
        ["tank/img", "tank/img@golden"],
        "no clone left behind"
    );
    env.run(["vm", "run", "--kernel", "k", "--rm"])
        .fails_with("--clone-from");
}

/// `send -f` and `vol export` to something other than a plain file: a symbolic link gets its
/// target replaced (the link stays), a character device and a FIFO are written in place (a
/// file renamed over them replaced `/dev/null` itself, as root).
#[test]
fn outputs_through_links_devices_and_fifos_are_written_not_replaced() {
    use std::os::unix::fs::FileTypeExt;
    let env = Env::new();
    env.pool("tank", "64M");
    let data = random_bytes(M as usize, 21);
    env.import("tank/v", &data);
    env.run(["snapshot", "tank/v@s"]).ok();
    let full = send_to_file(&env, &["tank/v@s"], "reference");
    // A link to a file.
    let (target, link) = (env.path("target"), env.path("link"));
    std::fs::write(&target, b"old").expect("target");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let link_s = link.to_str().expect("utf-8");
    env.run(["send", "tank/v@s", "-f", link_s]).ok();
    assert!(std::fs::symlink_metadata(&link).expect("link").is_symlink());
    same_bytes(
        &std::fs::read(&target).expect("target"),
        &full,
        "sent through a link",
    );
    env.run(["vol", "export", "tank/v", link_s]).ok();
    assert!(std::fs::symlink_metadata(&link).expect("link").is_symlink());
    same_bytes(
        &std::fs::read(&target).expect("target"),
        &data,
        "exported through a link",
    );
    // A character device (a /dev/null of our own), where root may make one.
    let null = env.path("null");
    let c = std::ffi::CString::new(null.to_str().expect("utf-8")).expect("path");
    // SAFETY: mknod(2) of a path we own; makedev(1, 3) is /dev/null.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) } == 0 {
        let null_s = null.to_str().expect("utf-8");
        env.run(["send", "tank/v@s", "-f", null_s]).ok();
        env.run(["vol", "export", "tank/v", null_s]).ok();
        let ft = std::fs::symlink_metadata(&null).expect("null").file_type();
        assert!(ft.is_char_device(), "the device node was replaced");
    } else {
        eprintln!("(not root: no character device case)");
    }
    // A FIFO, read by another thread.
    let fifo = env.fifo("fifo");
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).expect("fifo"))
    };
    env.run(["send", "tank/v@s", "-f", fifo.to_str().expect("utf-8")])
        .ok();
    same_bytes(&reader.join().expect("reader"), &full, "sent into a FIFO");
    assert!(std::fs::symlink_metadata(&fifo)
        .expect("fifo")
        .file_type()
        .is_fifo());
}

/// `tarn rename`: a volume takes its snapshots along, and a clone of one of them now names
/// the new origin; its data and the clone's are unchanged. Names taken, other pools, names
/// below a volume and volume-to-snapshot renames are refused, changing nothing.
#[test]
fn rename_moves_a_volume_with_its_snapshots() {
    let env = Env::new();
    env.pool("tank", "64M");
    env.pool("other", "64M");
    let data = random_bytes(256 * 1024, 7);
    env.import("tank/v", &data);
    env.run(["snapshot", "tank/v@s"]).ok();
    env.run(["clone", "tank/v@s", "tank/c"]).ok();
    env.run(["vol", "create", "tank/w", "-s", "1M"]).ok();
    env.run(["rename", "tank/v", "tank/images/debian"]).ok();
    assert_eq!(
        names(&env, "tank"),
        [
            "tank/c",
            "tank/images/debian",
            "tank/images/debian@s",
            "tank/w"
        ]
    );
    assert_eq!(
        listing(&env, "tank")["tank/c"]["origin"],
        "tank/images/debian@s"
    );
    same_bytes(
        &env.export("tank/images/debian"),
        &data,
        "the renamed volume",
    );
    same_bytes(&env.export("tank/c"), &data, "its clone");
    let before = names(&env, "tank");
    env.run(["rename", "tank/w", "tank/c"])
        .fails_with("already exists");
    env.run(["rename", "tank/w", "other/w"])
        .fails_with("within its pool");
    env.run(["rename", "tank/w", "tank/c/w"])
        .fails_with("no children");
    env.run(["rename", "tank/w", "tank/w@s"])
        .fails_with("volume name");
    env.run(["rename", "tank/nope", "tank/x"])
        .fails_with("does not exist");
    assert_eq!(names(&env, "tank"), before);
}

/// `tarn rename` of a snapshot, as `zfs rename`: within its volume (`@NEW` or the full name);
/// its clone names the new origin, its hold stays, and an incremental stream still finds it
/// as its base (by GUID). Names taken, other volumes and missing snapshots change nothing.
#[test]
fn rename_a_snapshot_within_its_volume() {
    let env = Env::new();
    env.pool("tank", "64M");
    env.pool("other", "64M");
    let data = random_bytes(256 * 1024, 9);
    env.import("tank/v", &data);
    env.run(["snapshot", "tank/v@s"]).ok();
    env.run(["snapshot", "tank/v@keep"]).ok();
    env.run(["clone", "tank/v@s", "tank/c"]).ok();
    env.run(["hold", "backup", "tank/v@s"]).ok();
    let stream = env.path("full.stream");
    env.run(["send", "tank/v@s", "-f", stream.to_str().expect("utf-8")])
        .ok();
    env.run(["recv", "other/v", "-f", stream.to_str().expect("utf-8")])
        .ok();

    env.run(["rename", "tank/v@s", "@golden"]).ok();
    env.run(["rename", "tank/v@golden", "tank/v@gold"]).ok();
    assert_eq!(
        names(&env, "tank"),
        ["tank/c", "tank/v", "tank/v@gold", "tank/v@keep"]
    );
    let l = listing(&env, "tank");
    assert_eq!(l["tank/c"]["origin"], "tank/v@gold");
    env.run(["destroy", "tank/v@gold"]).fails_with("hold");
    same_bytes(&env.export("tank/v@gold"), &data, "the renamed snapshot");

    let before = names(&env, "tank");
    env.run(["rename", "tank/v@gold", "@keep"])
        .fails_with("already exists");
    env.run(["rename", "tank/v@gold", "tank/c@gold"])
        .fails_with("another snapshot name of tank/v");
    env.run(["rename", "tank/v@gold", "tank/v"])
        .fails_with("not a snapshot");
    env.run(["rename", "tank/v@nope", "@x"])
        .fails_with("does not exist");
    assert_eq!(names(&env, "tank"), before);

    // The renamed snapshot is still the base of an incremental stream sent from it.
    env.run(["snapshot", "tank/v@later"]).ok();
    let inc = env.path("inc.stream");
    env.run([
        "send",
        "-i",
        "@gold",
        "tank/v@later",
        "-f",
        inc.to_str().expect("utf-8"),
    ])
    .ok();
    env.run(["recv", "other/v", "-f", inc.to_str().expect("utf-8")])
        .ok();
    assert_eq!(
        names(&env, "other"),
        ["other/v", "other/v@later", "other/v@s"]
    );
}
