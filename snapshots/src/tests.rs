//! Send/receive and rollback against in-memory pools.

use super::*;
use pool::{MemDevice, PoolConfig};
use std::sync::Arc;

fn mkpool(name: &str) -> Pool {
    let cfg = PoolConfig {
        sync_interval: None,
        ..PoolConfig::default()
    };
    Pool::create_on(Arc::new(MemDevice::new(128 << 20)), name, cfg).expect("pool")
}

fn fill(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn read_all(pool: &Pool, name: &str) -> Vec<u8> {
    let v = pool.volume(name).expect("open");
    let mut b = vec![0u8; v.size() as usize];
    v.read_at(0, &mut b).expect("read");
    b
}

/// Pool `a` with volume `a/v` of `size` bytes, its first `written` bytes filled (`seed`) and
/// snapshot `a/v@s1`; and that snapshot's full stream.
fn source(size: u64, written: usize, seed: u8) -> (Pool, Vec<u8>) {
    let a = mkpool("a");
    a.create_volume("a/v", size, 4096, &BTreeMap::new())
        .expect("create");
    a.volume("a/v")
        .expect("vol")
        .write_at(0, &fill(written, seed))
        .expect("write");
    a.snapshot(&["a/v@s1"]).expect("snap");
    let full = send_vec(&a, "a/v@s1", None);
    (a, full)
}

fn send_vec(pool: &Pool, snap: &str, from: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    send(pool, snap, from, &mut out).expect("send");
    out
}

fn names(pool: &Pool) -> Vec<String> {
    pool.list()
        .expect("list")
        .into_iter()
        .map(|d| d.name)
        .collect()
}

#[test]
fn full_and_incremental_round_trip() {
    let a = mkpool("a");
    let mut props = BTreeMap::new();
    props.insert("com.example:role".to_string(), "image".to_string());
    a.create_volume("a/v", 4 << 20, 4096, &props)
        .expect("create");
    let v = a.volume("a/v").expect("vol");
    v.write_at(0, &fill(1 << 20, 1)).expect("write");
    v.write_at(3 << 20, &fill(8192, 2)).expect("write");
    a.snapshot(&["a/v@s1"]).expect("snap");
    let full = send_vec(&a, "a/v@s1", None);
    // Holes are skipped: the stream is near the data size, not the volume size.
    assert!(full.len() < (1 << 20) + 64 * 1024, "{}", full.len());

    v.write_at(4096, &fill(4096, 3)).expect("write");
    v.write_zeroes(512 << 10, 256 << 10).expect("zero");
    drop(v);
    a.resize_volume("a/v", 6 << 20).expect("grow");
    a.volume("a/v")
        .expect("vol")
        .write_at(5 << 20, &fill(4096, 4))
        .expect("write");
    a.snapshot(&["a/v@s2"]).expect("snap");
    let inc = send_vec(&a, "a/v@s2", Some("a/v@s1"));
    assert!(inc.len() < 64 * 1024, "{}", inc.len());

    let b = mkpool("b");
    let r = recv(&b, "b/copy", &full[..], false).expect("recv full");
    let r = &r[0];
    assert_eq!(r.snapshot, "b/copy@s1");
    assert_eq!(read_all(&b, "b/copy@s1"), read_all(&a, "a/v@s1"));
    let d = b.dataset("b/copy@s1").expect("snap");
    assert_eq!(d.guid, a.dataset("a/v@s1").expect("snap").guid);
    assert_eq!(
        b.dataset("b/copy")
            .expect("vol")
            .props
            .get("com.example:role"),
        Some(&"image".to_string())
    );
    recv(&b, "b/copy", &inc[..], false).expect("recv inc");
    assert_eq!(read_all(&b, "b/copy@s2"), read_all(&a, "a/v@s2"));
    assert_eq!(read_all(&b, "b/copy"), read_all(&a, "a/v@s2"));
    assert_eq!(b.dataset("b/copy").expect("vol").size, 6 << 20);
    assert!(!names(&b).iter().any(|n| n.contains(PARTIAL_SUFFIX)));
    // The same stream again is refused.
    let e = recv(&b, "b/copy", &inc[..], false).expect_err("twice");
    assert!(e.to_string().contains("already has"), "{e}");
}

/// Pool `a` with `a/v@s1` (64 KiB of data) and `a/v@s2` (`len` bytes of `seed` rewritten at
/// `at`), and the streams of `s1` (full) and `s1` to `s2` (incremental).
fn two_snapshots(at: u64, len: usize, seed: u8) -> (Pool, Vec<u8>, Vec<u8>) {
    let a = mkpool("a");
    a.create_volume("a/v", 1 << 20, 4096, &BTreeMap::new())
        .expect("create");
    a.volume("a/v")
        .expect("vol")
        .write_at(0, &fill(65536, 1))
        .expect("write");
    a.snapshot(&["a/v@s1"]).expect("snap");
    a.volume("a/v")
        .expect("vol")
        .write_at(at, &fill(len, seed))
        .expect("write");
    a.snapshot(&["a/v@s2"]).expect("snap");
    let full = send_vec(&a, "a/v@s1", None);
    let inc = send_vec(&a, "a/v@s2", Some("a/v@s1"));
    (a, full, inc)
}

/// A target with snapshots newer than the stream's base: refused without -F (naming them);
/// with -F refused while one has a clone or a hold (not a receive's leftover), else they are
/// destroyed and the stream lands, even one whose snapshot name a destroyed one had.
#[test]
fn forced_incremental_destroys_newer_snapshots() {
    let (a, full, inc) = two_snapshots(4096, 8192, 5);

    let b = mkpool("b");
    recv(&b, "b/v", &full[..], false).expect("full");
    for (snap, byte) in [("b/v@s2", 7u8), ("b/v@local", 8)] {
        b.volume("b/v")
            .expect("vol")
            .write_at(0, &[byte; 4096])
            .expect("write");
        b.snapshot(&[snap]).expect("snap");
    }
    let before = names(&b);
    let e = recv(&b, "b/v", &inc[..], false).expect_err("newer snapshots");
    assert!(e.to_string().contains("use -F"), "{e}");
    assert_eq!(names(&b), before);

    b.hold("b/v@s2", "keep").expect("hold");
    let e = recv(&b, "b/v", &inc[..], true).expect_err("held");
    assert!(e.to_string().contains("holds"), "{e}");
    assert_eq!(names(&b), before);
    b.release("b/v@s2", "keep").expect("release");
    b.clone_snapshot("b/v@local", "b/c", &BTreeMap::new())
        .expect("clone");
    let e = recv(&b, "b/v", &inc[..], true).expect_err("cloned");
    assert!(e.to_string().contains("clones"), "{e}");
    b.destroy("b/c").expect("destroy clone");
    // An interrupted receive's leftover, a clone of a snapshot -F destroys, is no obstacle.
    let leftover = format!("b/v{PARTIAL_SUFFIX}");
    b.clone_snapshot("b/v@local", &leftover, &tagged(&BTreeMap::new()))
        .expect("leftover");

    recv(&b, "b/v", &inc[..], true).expect("forced");
    assert!(b.dataset(&leftover).is_err(), "the leftover is gone");
    assert_eq!(read_all(&b, "b/v"), read_all(&a, "a/v@s2"));
    assert_eq!(read_all(&b, "b/v@s2"), read_all(&a, "a/v@s2"));
    assert!(
        b.dataset("b/v@local").is_err(),
        "the newer snapshot is gone"
    );
    assert_eq!(
        b.dataset("b/v@s2").expect("s2").guid,
        a.dataset("a/v@s2").expect("s2").guid,
        "s2 is the stream's, not the destroyed local one"
    );
}

#[test]
fn incremental_refused_when_target_changed_unless_forced() {
    let (a, full, inc) = two_snapshots(0, 4096, 9);

    let b = mkpool("b");
    recv(&b, "b/v", &full[..], false).expect("full");
    b.volume("b/v")
        .expect("vol")
        .write_at(8192, &[1u8; 4096])
        .expect("write");
    b.sync().expect("sync");
    let before = names(&b);
    let e = recv(&b, "b/v", &inc[..], false).expect_err("changed");
    assert!(e.to_string().contains("changed since"), "{e}");
    assert_eq!(names(&b), before);
    recv(&b, "b/v", &inc[..], true).expect("forced");
    assert_eq!(read_all(&b, "b/v"), read_all(&a, "a/v@s2"));
}

#[test]
fn bad_streams_leave_nothing_behind() {
    let (_a, full) = source(2 << 20, 2 << 20, 5);
    let b = mkpool("b");
    let before = names(&b);
    let base_alloc = b.info().allocated;
    for cut in [10, 100, full.len() / 2, full.len() - 1] {
        let e = recv(&b, "b/v", &full[..cut], false).expect_err("truncated");
        assert!(matches!(e, Error::BadStream(_)), "{e}");
        assert_eq!(names(&b), before);
    }
    for at in [5, 40, full.len() / 3, full.len() - 3] {
        let mut c = full.clone();
        c[at] ^= 0x10;
        recv(&b, "b/v", &c[..], false).expect_err("flipped");
        assert_eq!(names(&b), before);
    }
    b.sync().expect("sync");
    // Deferred frees aside, nothing stays allocated.
    let info = b.info();
    assert!(
        info.allocated - info.deferred <= base_alloc + (1 << 20),
        "{info:?}"
    );
}

/// A stream whose BEGIN claims a volume of 2^40 blocks: the stream itself is well formed
/// (its checksums only catch damage), so the pool's limit on a volume's resident block map
/// must refuse it, before anything is created, instead of an allocation aborting the process.
#[test]
fn a_stream_claiming_a_huge_volume_is_refused() {
    let begin = Begin {
        to_guid: 0xabc,
        size: (1u64 << 40) * 4096,
        block_size: 4096,
        name: "x/v@s".into(),
        ..Begin::default()
    };
    let mut w = StreamWriter::new(Vec::new(), &begin).expect("writer");
    w.write(0, &[1u8; 4096]).expect("record");
    let stream = w.finish().expect("finish").0;
    let b = mkpool("b");
    let before = names(&b);
    let e = recv(&b, "b/big", &stream[..], false).expect_err("a 4 PiB volume");
    assert!(e.to_string().contains("block map"), "{e}");
    assert_eq!(names(&b), before);
}

/// A full stream carrying FREE records (its sender never writes them: a full receive starts
/// from an empty volume) is refused, leaving nothing behind: a crafted one of a few hundred
/// bytes claiming 1 TiB used to zero the whole range, block by block, for seconds a record.
#[test]
fn a_full_stream_with_free_records_is_refused() {
    let size = 1u64 << 40;
    let begin = Begin {
        to_guid: 0xabc,
        size,
        block_size: 4096,
        name: "x/v@s".into(),
        ..Begin::default()
    };
    let mut w = StreamWriter::new(Vec::new(), &begin).expect("writer");
    w.write(0, &[1u8; 4096]).expect("record");
    for _ in 0..3 {
        w.free(0, size).expect("record");
    }
    let stream = w.finish().expect("finish").0;
    let b = mkpool("b");
    let before = names(&b);
    let e = recv(&b, "b/v", &stream[..], false).expect_err("FREE in a full stream");
    assert!(matches!(e, Error::BadStream(_)), "{e}");
    assert!(e.to_string().contains("FREE"), "{e}");
    assert_eq!(names(&b), before);
}

/// A user's own volume named like a receive's temporary one (with a snapshot and a clone of
/// it) is not destroyed by a receive into the base name: the receive is refused. A real
/// leftover (tagged) is cleared and the receive goes on.
#[test]
fn a_receive_clears_only_its_own_leftovers() {
    let (a, full) = source(1 << 20, 1 << 20, 3);

    let b = mkpool("b");
    let none = BTreeMap::new();
    b.create_volume("b/db.recv-partial", 1 << 20, 4096, &none)
        .expect("user volume");
    b.snapshot(&["b/db.recv-partial@keep"]).expect("snap");
    b.clone_snapshot("b/db.recv-partial@keep", "b/important", &none)
        .expect("clone");
    let before = names(&b);
    let e = recv(&b, "b/db", &full[..], false).expect_err("refused");
    assert!(matches!(e, Error::Refused(_)), "{e}");
    assert_eq!(names(&b), before, "the user's datasets were touched");

    // A stream that carries the tag does not put it on the volume it lands in.
    let hostile = Begin {
        to_guid: 0xabc,
        size: 1 << 20,
        block_size: 4096,
        name: "x/w@s".into(),
        props: vec![(PARTIAL_TAG.into(), "1".into())],
        ..Begin::default()
    };
    let stream = StreamWriter::new(Vec::new(), &hostile)
        .expect("writer")
        .finish()
        .expect("finish")
        .0;
    recv(&b, "b/w.recv-partial", &stream[..], false).expect("receive");
    assert!(!b
        .dataset("b/w.recv-partial")
        .expect("w")
        .props
        .contains_key(PARTIAL_TAG));

    // What an interrupted receive leaves: the tagged temporary volume.
    b.create_volume("b/v.recv-partial", 1 << 20, 4096, &tagged(&none))
        .expect("leftover");
    recv(&b, "b/v", &full[..], false).expect("receive over a leftover");
    assert_eq!(read_all(&b, "b/v"), read_all(&a, "a/v@s1"));
    assert!(!names(&b).contains(&"b/v.recv-partial".to_string()));
    assert!(
        !b.dataset("b/v").expect("v").props.contains_key(PARTIAL_TAG),
        "the tag stays on the received volume"
    );
}

/// A target resized since the base counts as changed (a resize writes no bytes, so
/// `written` does not show it): refused without -F; with -F the stream's size and data land,
/// whatever the target's size was.
#[test]
fn a_target_resized_since_the_base_counts_as_changed() {
    let (a, full) = source(4 << 20, 1 << 20, 1);
    a.resize_volume("a/v", 8 << 20).expect("grow");
    a.volume("a/v")
        .expect("vol")
        .write_at(6 << 20, &fill(4096, 9))
        .expect("write");
    a.snapshot(&["a/v@s2"]).expect("s2");
    let inc = send_vec(&a, "a/v@s2", Some("a/v@s1"));
    for new_size in [2u64 << 20, 8 << 20] {
        refused_then_forced(&a, &full, &inc, &format!("resized to {new_size}"), &|b| {
            b.resize_volume("b/v", new_size).expect("resize");
        });
    }
}

/// Receives `full` into a new pool's `b/v`, applies `change`, then checks that `inc` (from
/// `a/v@s1` to `a/v@s2`) is refused without -F and lands whole with it.
fn refused_then_forced(a: &Pool, full: &[u8], inc: &[u8], what: &str, change: &dyn Fn(&Pool)) {
    let b = mkpool("b");
    recv(&b, "b/v", full, false).expect("full");
    assert!(
        !b.changed_since_newest_snapshot("b/v").expect("check"),
        "{what}"
    );
    change(&b);
    let e = recv(&b, "b/v", inc, false).expect_err(what);
    assert!(matches!(e, Error::Refused(_)), "{what}: {e}");
    recv(&b, "b/v", inc, true).expect("forced");
    assert_eq!(read_all(&b, "b/v"), read_all(a, "a/v@s2"), "{what}");
}

/// Changes that write no data — a zeroing, a shrink and regrow to the same size — count as
/// changes too: a receive without -F refuses to undo them (it did, silently).
#[test]
fn a_target_zeroed_or_regrown_since_the_base_counts_as_changed() {
    let (a, full) = source(4 << 20, 4 << 20, 1);
    a.volume("a/v")
        .expect("vol")
        .write_at(0, &fill(4096, 9))
        .expect("write");
    a.snapshot(&["a/v@s2"]).expect("s2");
    let inc = send_vec(&a, "a/v@s2", Some("a/v@s1"));
    type Change = fn(&Pool);
    let changes: [(&str, Change); 3] = [
        ("zeroed", |b| {
            b.volume("b/v")
                .expect("v")
                .write_zeroes(1 << 20, 4096)
                .expect("zero");
            b.sync().expect("sync");
        }),
        ("zeroed, not yet committed", |b| {
            b.volume("b/v")
                .expect("v")
                .write_zeroes(1 << 20, 4096)
                .expect("zero");
        }),
        ("shrunk and regrown", |b| {
            b.resize_volume("b/v", 2 << 20).expect("shrink");
            b.resize_volume("b/v", 4 << 20).expect("regrow");
        }),
    ];
    for (what, change) in changes {
        refused_then_forced(&a, &full, &inc, what, &change);
    }
}

/// An incremental receive lands whole or not at all: a power cut at every device write or
/// sync of it leaves, after reopening, either the volume as it was (no new snapshot, and the
/// same stream received again works) or the stream's data with its snapshot and properties.
#[test]
fn an_incremental_receive_lands_whole_or_not_at_all() {
    use pool::{CrashDevice, CutMode};
    let config = PoolConfig {
        sync_interval: None,
        ..PoolConfig::default()
    };
    let (a, full) = source(4 << 20, 1 << 20, 1);
    a.volume("a/v")
        .expect("vol")
        .write_at(0, &fill(64 << 10, 7))
        .expect("write");
    a.set_props("a/v", &[("color".into(), "blue".into())])
        .expect("props");
    a.snapshot(&["a/v@s2"]).expect("s2");
    let inc = send_vec(&a, "a/v@s2", Some("a/v@s1"));
    let (old, new) = (read_all(&a, "a/v@s1"), read_all(&a, "a/v@s2"));

    let dev = Arc::new(CrashDevice::new(64 << 20));
    let b = Pool::create_on(dev.clone(), "b", config.clone()).expect("pool");
    recv(&b, "b/v", &full[..], false).expect("full");
    b.close().expect("close");
    let image = dev.crash_image(CutMode::DropAll);
    for cut in 0.. {
        let d = Arc::new(CrashDevice::from_bytes(image.clone()));
        let p = Pool::open(d.clone(), config.clone()).expect("open");
        d.cut_after(Some(cut));
        let done = recv(&p, "b/v", &inc[..], false).is_ok();
        drop(p);
        let after = d.crash_image(CutMode::Random(cut + 11));
        let p =
            Pool::open(Arc::new(CrashDevice::from_bytes(after)), config.clone()).expect("reopen");
        assert!(p.scrub().expect("scrub").is_clean(), "cut {cut}");
        let data = read_all(&p, "b/v");
        if p.dataset("b/v@s2").is_ok() {
            assert!(data == new, "cut {cut}: @s2 without the stream's data");
            let props = p.dataset("b/v").expect("v").props;
            assert_eq!(
                props.get("color").map(String::as_str),
                Some("blue"),
                "cut {cut}"
            );
        } else {
            assert!(data == old, "cut {cut}: the data landed without @s2");
            recv(&p, "b/v", &inc[..], false).expect("the stream again");
            assert!(read_all(&p, "b/v") == new, "cut {cut}");
        }
        if done {
            break;
        }
    }
}

#[test]
fn rollback_recursion() {
    let p = mkpool("p");
    p.create_volume("p/v", 1 << 20, 4096, &BTreeMap::new())
        .expect("create");
    let v = p.volume("p/v").expect("vol");
    v.write_at(0, &[1u8; 4096]).expect("w");
    p.snapshot(&["p/v@a"]).expect("snap");
    v.write_at(0, &[2u8; 4096]).expect("w");
    p.snapshot(&["p/v@b"]).expect("snap");
    v.write_at(0, &[3u8; 4096]).expect("w");
    p.snapshot(&["p/v@c"]).expect("snap");
    p.clone_snapshot("p/v@c", "p/cl", &BTreeMap::new())
        .expect("clone");
    let e = rollback(&p, "p/v@a", Recursion::None).expect_err("newer");
    assert!(e.to_string().contains("p/v@b"), "{e}");
    let e = rollback(&p, "p/v@a", Recursion::Snapshots).expect_err("clones");
    assert!(e.to_string().contains("p/cl"), "{e}");
    assert_eq!(names(&p).len(), 5);
    let gone = rollback(&p, "p/v@a", Recursion::All).expect("rollback -R");
    assert_eq!(gone, ["p/cl", "p/v@c", "p/v@b"]);
    let mut b = [0u8; 4096];
    v.read_at(0, &mut b).expect("read");
    assert_eq!(b, [1u8; 4096]);
}

#[test]
fn resolve_from_forms() {
    assert_eq!(resolve_from("t/v@b", "@a").expect("ok"), "t/v@a");
    assert_eq!(resolve_from("t/v@b", "t/v@a").expect("ok"), "t/v@a");
    assert!(resolve_from("t/v@b", "t/w@a").is_err());
    assert!(resolve_from("t/v@b", "@b").is_err());
}

#[test]

fn shrink_then_grow_between_snapshots_round_trips() {
    let a = mkpool("a");
    a.create_volume("a/v", 1 << 20, 4096, &BTreeMap::new())
        .expect("create");
    a.volume("a/v")
        .expect("vol")
        .write_at(0, &fill(1 << 20, 7))
        .expect("write");
    a.snapshot(&["a/v@s1"]).expect("snap");
    a.resize_volume("a/v", 256 << 10).expect("shrink");
    a.resize_volume("a/v", 1 << 20).expect("grow");
    a.snapshot(&["a/v@s2"]).expect("snap");
    let diff = a.diff("a/v@s1", Some("a/v@s2")).expect("diff");
    assert_eq!(
        diff,
        [(256 << 10, 768 << 10)],
        "the zeroed tail is a change"
    );
    let b = mkpool("b");
    recv(&b, "b/v", &send_vec(&a, "a/v@s1", None)[..], false).expect("full");
    recv(
        &b,
        "b/v",
        &send_vec(&a, "a/v@s2", Some("a/v@s1"))[..],
        false,
    )
    .expect("inc");
    assert_eq!(read_all(&b, "b/v@s2"), read_all(&a, "a/v@s2"));
}

/// A name whose snapshot fits 255 bytes but whose receive's temporary name (13 bytes longer)
/// does not is refused before anything is written, saying how much shorter it must be; it
/// used to fail after the whole stream was applied (full) or with an error naming the
/// temporary name (incremental).
#[test]
fn a_name_too_long_for_the_receive_is_refused_up_front() {
    let (_a, full) = source(1 << 20, 8192, 5);
    let b = mkpool("b");
    // "b/" + vol + "@s1" is 250 bytes: a valid snapshot name.
    let vol = format!("b/{}", "v".repeat(250 - 2 - 3));
    let before = names(&b);
    let e = recv(&b, &vol, &full[..], false)
        .expect_err("too long")
        .to_string();
    assert!(e.contains("8 bytes shorter"), "{e}");
    assert_eq!(names(&b), before, "nothing created");
    // 8 bytes shorter, it lands.
    let vol = format!("b/{}", "v".repeat(250 - 2 - 3 - 8));
    recv(&b, &vol, &full[..], false).expect("receive");
    assert_eq!(read_all(&b, &vol)[..8192], fill(8192, 5)[..]);
    // An incremental stream into a volume named 245 bytes (received under a short name and
    // renamed): its temporary name would be 258.
    let (_a, s1, s2) = two_snapshots(0, 4096, 9);
    recv(&b, "b/x", &s1[..], false).expect("receive the base");
    let vol = format!("b/{}", "w".repeat(243));
    b.rename("b/x", &vol).expect("rename");
    let e = recv(&b, &vol, &s2[..], false)
        .expect_err("too long")
        .to_string();
    assert!(e.contains("3 bytes shorter"), "{e}");
    assert!(!names(&b).contains(&format!("{vol}@s2")));
}

/// Pool `a` with `a/v` and snapshots `s1` … `s4`, each after a different change: data, an
/// overwrite, a zeroed range, a grown volume.
fn four_snapshots() -> Pool {
    let a = mkpool("a");
    a.create_volume("a/v", 2 << 20, 4096, &BTreeMap::new())
        .expect("create");
    let v = a.volume("a/v").expect("vol");
    v.write_at(0, &fill(256 << 10, 1)).expect("write");
    a.snapshot(&["a/v@s1"]).expect("snap");
    v.write_at(128 << 10, &fill(64 << 10, 2)).expect("write");
    a.snapshot(&["a/v@s2"]).expect("snap");
    v.write_zeroes(0, 64 << 10).expect("zero");
    v.write_at(1 << 20, &fill(4096, 3)).expect("write");
    a.snapshot(&["a/v@s3"]).expect("snap");
    drop(v);
    a.resize_volume("a/v", 3 << 20).expect("grow");
    a.volume("a/v")
        .expect("vol")
        .write_at(5 << 19, &fill(4096, 4))
        .expect("write");
    a.snapshot(&["a/v@s4"]).expect("snap");
    a
}

fn package_vec(pool: &Pool, snap: &str, from: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    let sum = send_package(pool, snap, from, &mut out).expect("send package");
    assert_eq!(sum.bytes, out.len() as u64);
    out
}

/// Where each stream of a package ends (each starts with the magic; the test data never
/// holds it).
fn package_ends(package: &[u8]) -> Vec<usize> {
    let mut ends: Vec<usize> = package
        .windows(stream::MAGIC.len())
        .enumerate()
        .filter(|(i, w)| *i > 0 && *w == stream::MAGIC)
        .map(|(i, _)| i)
        .collect();
    ends.push(package.len());
    ends
}

/// `send -R` recreates every snapshot (GUIDs, data, sizes) in a new pool; `send -I` brings a
/// copy holding older snapshots up to date; a package of one stream is that stream.
#[test]
fn packages_recreate_every_snapshot() {
    let a = four_snapshots();
    // Snapshots' own properties travel with them (a preamble feature bit where there are any).
    let release = |v: &str| vec![("com.example:release".to_string(), v.to_string())];
    a.set_props("a/v@s1", &release("1")).expect("set");
    a.set_props("a/v@s3", &release("3")).expect("set");
    assert_eq!(send_vec(&a, "a/v@s1", None)[12], 2);
    assert_eq!(send_vec(&a, "a/v@s2", Some("a/v@s1"))[12], 0);
    let all = package_vec(&a, "a/v@s4", None);
    // Four streams, each with the feature bit (s2's and s4's with no properties), the last
    // without MORE.
    let ends = package_ends(&all);
    assert_eq!(ends.len(), 4);
    for (k, start) in [0, ends[0], ends[1], ends[2]].into_iter().enumerate() {
        let more = u32::from(k < 3);
        assert_eq!(all[start + 12], 2 | more as u8, "stream {}", k + 1);
    }
    let b = mkpool("b");
    let got = recv(&b, "b/v", &all[..], false).expect("recv -R");
    let made: Vec<&str> = got.iter().map(|g| g.snapshot.as_str()).collect();
    assert_eq!(made, ["b/v@s1", "b/v@s2", "b/v@s3", "b/v@s4"]);
    assert!(!got[0].incremental && got[1..].iter().all(|g| g.incremental));
    for s in 1..=4 {
        let (src, dst) = (format!("a/v@s{s}"), format!("b/v@s{s}"));
        assert_eq!(read_all(&b, &dst), read_all(&a, &src), "{dst}");
        let (got, sent) = (
            b.dataset(&dst).expect("snap"),
            a.dataset(&src).expect("snap"),
        );
        assert_eq!(got.guid, sent.guid);
        assert_eq!(got.props, sent.props, "{dst}");
    }
    assert_eq!(
        b.dataset("b/v@s3").expect("s3").props["com.example:release"],
        "3"
    );
    assert_eq!(read_all(&b, "b/v"), read_all(&a, "a/v@s4"));
    assert!(!names(&b).iter().any(|n| n.contains(PARTIAL_SUFFIX)));

    let c = mkpool("c");
    recv(&c, "c/v", &send_vec(&a, "a/v@s1", None)[..], false).expect("s1");
    recv(
        &c,
        "c/v",
        &send_vec(&a, "a/v@s2", Some("a/v@s1"))[..],
        false,
    )
    .expect("s2");
    let inc = package_vec(&a, "a/v@s4", Some("a/v@s2"));
    let got = recv(&c, "c/v", &inc[..], false).expect("recv -I");
    let made: Vec<&str> = got.iter().map(|g| g.snapshot.as_str()).collect();
    assert_eq!(made, ["c/v@s3", "c/v@s4"]);
    assert_eq!(read_all(&c, "c/v@s3"), read_all(&a, "a/v@s3"));
    assert_eq!(read_all(&c, "c/v"), read_all(&a, "a/v@s4"));

    assert_eq!(
        package_vec(&a, "a/v@s2", Some("a/v@s1")),
        send_vec(&a, "a/v@s2", Some("a/v@s1"))
    );
    // Estimates are exact, and read nothing.
    for (snap, from, package) in [
        ("a/v@s1", None, false),
        ("a/v@s3", Some("a/v@s2"), false),
        ("a/v@s4", None, true),
        ("a/v@s4", Some("a/v@s1"), true),
    ] {
        let real = if package {
            package_vec(&a, snap, from)
        } else {
            send_vec(&a, snap, from)
        };
        let est = send_estimate(&a, snap, from, package).expect("estimate");
        assert_eq!(est.bytes, real.len() as u64, "{snap} from {from:?}");
    }
    let s3 = send_estimate(&a, "a/v@s3", Some("a/v@s2"), false).expect("estimate");
    assert_eq!(
        (s3.write_bytes, s3.free_bytes),
        (4096, 64 << 10),
        "s3's changes"
    );
    let e = send_package(&a, "a/v@s2", Some("a/v@s3"), &mut Vec::new()).expect_err("newer");
    assert!(e.to_string().contains("not older"), "{e}");
    // A package names its snapshots itself.
    let d = mkpool("d");
    let e = recv(&d, "d/v@x", &all[..], false).expect_err("named");
    assert!(e.to_string().contains("keep their"), "{e}");
    assert!(names(&d).is_empty());
    // A lone stream is still refused with anything after its END.
    let mut junk = send_vec(&a, "a/v@s1", None);
    junk.push(0);
    let e = recv(&d, "d/v", &junk[..], false).expect_err("junk");
    assert!(e.to_string().contains("after the END"), "{e}");
    // A feature bit this build does not know is refused before anything is received.
    let mut unknown = send_vec(&a, "a/v@s1", None);
    unknown[12] |= 4;
    let e = recv(&d, "d/v", &unknown[..], false).expect_err("unknown feature");
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
    assert!(names(&d).is_empty());
}

/// A package cut inside a stream, cut where a stream says another follows, or spliced from
/// streams of different chains: the streams before the bad one stay received, the bad one
/// leaves nothing.
#[test]
fn a_bad_stream_in_a_package_keeps_the_streams_before_it() {
    let a = four_snapshots();
    let all = package_vec(&a, "a/v@s4", None);
    let ends = package_ends(&all);
    let kept = |p: &Pool| {
        assert!(!names(p).iter().any(|n| n.contains(PARTIAL_SUFFIX)));
        assert_eq!(read_all(p, "b/v"), read_all(&a, "a/v@s2"));
        assert_eq!(
            names(p),
            ["b/v", "b/v@s1", "b/v@s2"],
            "s1 and s2 received, s3 not"
        );
    };

    let b = mkpool("b");
    let cut = ends[1] + (ends[2] - ends[1]) / 2;
    let e = recv(&b, "b/v", &all[..cut], false).expect_err("cut inside s3");
    let cut_at = |e: &Error| {
        assert_eq!(e.kind(), pool::ErrorKind::Corrupt, "{e}");
        let m = e.to_string();
        assert!(m.contains("stream 3 of the package"), "{m}");
        assert!(m.contains("kept: b/v@s1, b/v@s2"), "{m}");
    };
    cut_at(&e);
    kept(&b);

    let b = mkpool("b");
    let e = recv(&b, "b/v", &all[..ends[1]], false).expect_err("cut after s2");
    cut_at(&e);
    kept(&b);

    // s1 and s2 of the package, then a lone stream from s3 to s4: not based on s2.
    let b = mkpool("b");
    let mut spliced = all[..ends[1]].to_vec();
    spliced.extend(send_vec(&a, "a/v@s4", Some("a/v@s3")));
    let e = recv(&b, "b/v", &spliced[..], false).expect_err("spliced");
    assert!(e.to_string().contains("not based on a/v@s2"), "{e}");
    kept(&b);
}
