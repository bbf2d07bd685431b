//! Bad input: a file that is not a pool, a truncated pool, an unknown format version, a held
//! pool. Each gets a clear error, and the file is left untouched.

use pool::{Error, ErrorKind, Pool, PoolConfig};
use std::path::Path;

fn config() -> PoolConfig {
    PoolConfig {
        sync_interval: None,
        dirty_max: 16 << 20,
        ..PoolConfig::default()
    }
}

fn digest(path: &Path) -> (u64, Vec<u8>) {
    let b = std::fs::read(path).expect("read file");
    (b.len() as u64, b)
}

fn make_pool(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("pool.tarn");
    let pool = Pool::create_file(&path, "tank", 32 << 20, config()).expect("create");
    pool.create_volume("tank/v", 1 << 20, 4096, &Default::default())
        .expect("vol");
    pool.volume("tank/v")
        .expect("volume")
        .write_at(0, b"data")
        .expect("write");
    pool.close().expect("close");
    path
}

/// [`make_pool`], opened.
fn opened(dir: &Path) -> Pool {
    Pool::open_path(&make_pool(dir), config()).expect("open")
}

#[test]
fn files_that_are_not_pools_are_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("zeros", vec![0; 32 << 20]),
        ("text", b"hello, this is not a pool\n".repeat(1000)),
        ("empty", vec![]),
        (
            "random",
            (0..1 << 20)
                .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
                .collect(),
        ),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).expect("write");
        let before = digest(&path);
        let err = Pool::open_path(&path, config())
            .err()
            .expect("must be refused");
        assert!(matches!(err, Error::NotAPool { .. }), "{name}: {err}");
        assert!(err.to_string().contains("is not a tarn pool"), "{err}");
        assert_eq!(digest(&path), before, "{name}: file changed");
    }
}

#[test]
fn a_truncated_pool_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make_pool(dir.path());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(20 << 20).expect("truncate");
    drop(f);
    let before = digest(&path);
    let err = Pool::open_path(&path, config())
        .err()
        .expect("must be refused");
    assert!(
        matches!(err, Error::Truncated { expected, actual, .. } if expected == 32 << 20 && actual == 20 << 20),
        "{err}"
    );
    assert_eq!(digest(&path), before);
}

#[test]
fn an_unknown_format_version_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make_pool(dir.path());
    let mut bytes = std::fs::read(&path).expect("read");
    for label in [0usize, 4096] {
        bytes[label + 8..label + 12].copy_from_slice(&99u32.to_le_bytes());
    }
    std::fs::write(&path, &bytes).expect("write");
    let before = digest(&path);
    let err = Pool::open_path(&path, config())
        .err()
        .expect("must be refused");
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("version 99"), "{err}");
    assert_eq!(digest(&path), before);
}

#[test]
fn one_damaged_label_is_survivable_two_are_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make_pool(dir.path());
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[100] ^= 0xff;
    std::fs::write(&path, &bytes).expect("write");
    let pool = Pool::open_path(&path, config()).expect("backup label");
    let mut buf = [0u8; 4];
    pool.volume("tank/v")
        .expect("volume")
        .read_at(0, &mut buf)
        .expect("read");
    assert_eq!(&buf, b"data");
    drop(pool);
    bytes[4096 + 100] ^= 0xff;
    std::fs::write(&path, &bytes).expect("write");
    let err = Pool::open_path(&path, config()).err().expect("refused");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
}

#[test]
fn a_held_pool_is_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make_pool(dir.path());
    let held = Pool::open_path(&path, config()).expect("first open");
    let err = Pool::open_path(&path, config())
        .err()
        .expect("second open must fail");
    assert!(err.to_string().starts_with("pool tank is in use"), "{err}");
    drop(held);
    Pool::open_path(&path, config()).expect("free again after the holder closes");
}

#[test]
fn bad_names_sizes_and_block_sizes_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make_pool(dir.path());
    let pool = Pool::open_path(&path, config()).expect("open");
    let none = Default::default();
    for (name, size, bs) in [
        ("tank/a b", 1 << 20, 4096),
        ("other/v", 1 << 20, 4096),
        ("tank/v", 1 << 20, 4096),
        ("tank/w", 0, 4096),
        ("tank/w", 1 << 20, 3000),
        ("tank/w", 1 << 20, 1 << 20),
    ] {
        assert!(
            pool.create_volume(name, size, bs, &none).is_err(),
            "{name} {size} {bs}"
        );
    }
    assert!(pool.datasets().len() == 1);
    // A volume whose resident block map would not fit in memory (2^40 blocks of 4 KiB take
    // 48 TiB of map) is refused, with the reason, instead of aborting on first use.
    let err = pool
        .create_volume("tank/huge", (1 << 40) * 4096, 4096, &none)
        .expect_err("4 PiB in 4 KiB blocks");
    assert!(err.to_string().contains("block map"), "{err}");
    assert!(pool.datasets().len() == 1);
    let err = pool
        .resize_volume("tank/v", (1 << 40) * 4096)
        .expect_err("grown to 4 PiB");
    assert!(err.to_string().contains("block map"), "{err}");
    assert_eq!(pool.dataset("tank/v").expect("v").size, 1 << 20);
    let err = pool
        .volume("tank/v")
        .expect("v")
        .write_at(1 << 20, b"x")
        .expect_err("past the end");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[test]
fn a_full_pool_refuses_writes_and_keeps_what_it_has() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pool.tarn");
    let pool = Pool::create_file(&path, "tank", 16 << 20, config()).expect("create");
    pool.create_volume("tank/keep", 1 << 20, 4096, &Default::default())
        .expect("vol");
    pool.volume("tank/keep")
        .expect("v")
        .write_at(0, &[7u8; 1 << 20])
        .expect("write");
    pool.create_volume("tank/big", 64 << 20, 65536, &Default::default())
        .expect("thin volume");
    let big = pool.volume("tank/big").expect("v");
    let chunk = vec![0xabu8; 1 << 20];
    let mut err = None;
    for i in 0..64u64 {
        if let Err(e) = big.write_at(i << 20, &chunk) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("a 16 MiB pool cannot hold 64 MiB");
    assert_eq!(err.kind(), ErrorKind::NoSpace, "{err}");
    pool.sync().expect("the pool still commits");
    drop(big);
    pool.close().expect("close");
    let pool = Pool::open_path(&path, config()).expect("reopen");
    let mut buf = vec![0u8; 1 << 20];
    pool.volume("tank/keep")
        .expect("v")
        .read_at(0, &mut buf)
        .expect("read");
    assert!(buf.iter().all(|&b| b == 7));
    assert!(pool.scrub().expect("scrub").is_clean());
}

/// Names, tags and property values the directory cannot store (or listings cannot show) are
/// refused, and nothing committed after such a
/// request is lost: a snapshot name of 64 KiB used to be cut at its u16 length in the
/// directory, whose leaf then did not decode, so the pool reopened at an older txg without
/// it, and without everything committed after it.
#[test]
fn names_and_hold_tags_too_long_to_store_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make_pool(dir.path());
    let pool = Pool::open_path(&path, config()).expect("open");
    pool.snapshot(&["tank/v@keep"]).expect("keep");
    let long = format!("tank/v@{}", "x".repeat(65_546));
    let err = pool.snapshot(&[&long]).expect_err("a 64 KiB snapshot name");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = pool
        .snapshot(&[&format!("tank/v@{}", "x".repeat(250))])
        .expect_err("a full name past 255 bytes");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    for tag in ["x".repeat(256), String::new(), "a\nb".into()] {
        let err = pool.hold("tank/v@keep", &tag).expect_err("a bad tag");
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    }
    pool.hold("tank/v@keep", &"t".repeat(255))
        .expect("a 255-byte tag");
    // A property value with a tab or newline would break scripted listings' rows.
    for v in ["a\nb", "a\tb"] {
        let err = pool
            .set_props("tank/v", &[("com.example:x".into(), v.into())])
            .expect_err("a control character");
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    }
    // Nor a built-in's name (a received stream could carry one): `get all` would show it
    // twice and `set` could never remove it.
    for k in ["guid", "Volsize", "refer"] {
        let err = pool
            .set_props("tank/v", &[(k.into(), "1".into())])
            .expect_err("a built-in name");
        assert!(err.to_string().contains("built in"), "{err}");
    }
    pool.snapshot(&["tank/v@after"]).expect("after");
    pool.close().expect("close");
    let pool = Pool::open_path(&path, config()).expect("reopen");
    assert!(
        pool.dataset("tank/v@after").is_ok(),
        "a later commit was lost"
    );
    assert_eq!(pool.dataset("tank/v@keep").expect("keep").holds.len(), 1);
}

/// A rename (or promote) whose snapshots' new full names would pass 255 bytes is refused, and
/// nothing changes: allowed, it left names that a listing could not show and that made the
/// pool refuse to open. Names a pool already holds are never a reason not to open it.
#[test]
fn renames_that_would_make_snapshot_names_too_long_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make_pool(dir.path());
    let pool = Pool::open_path(&path, config()).expect("open");
    pool.snapshot(&["tank/v@daily-2026-11-27"])
        .expect("snapshot");
    let long = format!("tank/{}", "a".repeat(240));
    let err = pool
        .rename("tank/v", &long)
        .expect_err("a 262-byte snapshot name");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    // A clone with a long name, promoted: the origin's snapshot would move under it.
    let clone = format!("tank/{}", "c".repeat(240));
    pool.clone_snapshot("tank/v@daily-2026-11-27", &clone, &Default::default())
        .expect("clone");
    let err = pool.promote(&clone).expect_err("promote");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    pool.close().expect("close");
    let pool = Pool::open_path(&path, config()).expect("reopen");
    assert!(pool.dataset("tank/v@daily-2026-11-27").is_ok());
}

/// Found by a review against zfs(8): two snapshots of one volume in one call (their order
/// was ambiguous, and `rollback -r` then destroyed the one the pool held older) are refused,
/// and nothing is made.
#[test]
fn two_snapshots_of_one_volume_in_one_call_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = opened(dir.path());
    let err = pool
        .snapshot(&["tank/v@z", "tank/v@a"])
        .expect_err("two of one volume");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(pool.dataset("tank/v@z").is_err() && pool.dataset("tank/v@a").is_err());
    pool.create_volume("tank/w", 1 << 20, 4096, &Default::default())
        .expect("vol");
    pool.snapshot(&["tank/v@a", "tank/w@a"])
        .expect("one each of two volumes");
}

/// Names are flat and a volume has no children: none is made, cloned or renamed below a
/// volume (one was, and `destroy -r` of the volume left it behind), nor where others lie
/// below (it would be both a file and a directory over NFS).
#[test]
fn datasets_do_not_nest_with_volumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = opened(dir.path());
    let props = Default::default();
    fn kind<T: std::fmt::Debug>(r: Result<T, Error>) -> ErrorKind {
        r.expect_err("nested").kind()
    }
    assert_eq!(
        kind(pool.create_volume("tank/v/child", 1 << 20, 4096, &props)),
        ErrorKind::InvalidInput
    );
    pool.create_volume("tank/a/b", 1 << 20, 4096, &props)
        .expect("under an implied directory");
    assert_eq!(
        kind(pool.create_volume("tank/a", 1 << 20, 4096, &props)),
        ErrorKind::InvalidInput
    );
    pool.snapshot(&["tank/v@s"]).expect("snapshot");
    assert_eq!(
        kind(pool.clone_snapshot("tank/v@s", "tank/v/c", &props)),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(pool.clone_snapshot("tank/v@s", "tank/a", &props)),
        ErrorKind::InvalidInput
    );
    pool.create_volume("tank/x", 1 << 20, 4096, &props)
        .expect("vol");
    assert_eq!(
        kind(pool.rename("tank/x", "tank/v/x")),
        ErrorKind::InvalidInput
    );
    // Moving a volume up over the directory it alone lies in is fine.
    pool.rename("tank/a/b", "tank/a")
        .expect("nothing else below a");
    assert!(pool.dataset("tank/v/child").is_err());
}

/// Holds on several snapshots go on in one commit, all or none (a repeated name failed the
/// command after its hold was placed); a name given twice counts once.
#[test]
fn holds_on_several_snapshots_are_all_or_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = opened(dir.path());
    pool.snapshot(&["tank/v@a"]).expect("snapshot");
    pool.snapshot(&["tank/v@b"]).expect("snapshot");
    let held = |snap: &str| {
        let holds = pool.dataset(snap).expect("snapshot").holds;
        holds.iter().any(|h| h == "keep")
    };
    pool.hold_all(&["tank/v@a", "tank/v@a"], "keep")
        .expect("a name twice counts once");
    assert!(held("tank/v@a"));
    let err = pool
        .hold_all(&["tank/v@b", "tank/v@a"], "keep")
        .expect_err("already held on @a");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert!(!held("tank/v@b"), "@b got no hold");
    let err = pool
        .release_all(&["tank/v@a", "tank/v@b"], "keep")
        .expect_err("none on @b");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(held("tank/v@a"));
}

/// A diff of committed data writes nothing (each one committed a txg, pushing older
/// fallback uberblocks out of the ring).
#[test]
fn a_diff_of_committed_data_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make_pool(dir.path());
    let pool = Pool::open_path(&path, config()).expect("open");
    pool.snapshot(&["tank/v@a"]).expect("snapshot");
    pool.volume("tank/v")
        .expect("v")
        .write_at(8192, b"more")
        .expect("write");
    pool.snapshot(&["tank/v@b"]).expect("snapshot");
    let txg = pool.info().txg;
    let before = digest(&path);
    assert_eq!(
        pool.diff("tank/v@a", Some("tank/v@b")).expect("diff"),
        vec![(8192, 4096)]
    );
    pool.diff("tank/v@a", None)
        .expect("diff against the volume");
    assert_eq!(pool.info().txg, txg);
    assert!(digest(&path) == before, "the file changed");
}
