//! Reservations (`refreservation`): a thick volume's writes never fail for space that other
//! volumes took, and the pool refuses what would break that promise.

use pool::{ErrorKind, Pool, PoolConfig, REFRESERVATION_PROP};
use std::collections::BTreeMap;
use std::path::Path;

const MIB: u64 = 1 << 20;

fn config() -> PoolConfig {
    PoolConfig {
        sync_interval: None,
        dirty_max: 16 << 20,
        ..PoolConfig::default()
    }
}

fn thick() -> BTreeMap<String, String> {
    BTreeMap::from([(REFRESERVATION_PROP.to_string(), "auto".to_string())])
}

/// A 128 MiB pool file with a thick 32 MiB volume `tank/thick` and a thin 256 MiB one
/// `tank/thin` written until the pool refuses it.
fn filled(path: &Path) -> Pool {
    let pool = Pool::create_file(path, "tank", 128 * MIB, config()).expect("create");
    pool.create_volume("tank/thick", 32 * MIB, 4096, &thick())
        .expect("thick");
    pool.create_volume("tank/thin", 256 * MIB, 4096, &BTreeMap::new())
        .expect("thin");
    let thin = pool.volume("tank/thin").expect("thin");
    let chunk = vec![0x5au8; MIB as usize];
    let refused = (0..256).find_map(|i| thin.write_at(i * MIB, &chunk).err());
    let e = refused.expect("a 128 MiB pool cannot hold 256 MiB");
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    pool.sync().expect("commit");
    pool
}

fn write_whole(pool: &Pool, name: &str, seed: u8) {
    let v = pool.volume(name).expect("open");
    let chunk = vec![seed; MIB as usize];
    for i in 0..v.size() / MIB {
        v.write_at(i * MIB, &chunk)
            .unwrap_or_else(|e| panic!("{name} at {i} MiB: {e}"));
    }
    v.flush().expect("flush");
}

/// After a thin volume took every byte it could, the thick one is still written whole, and
/// its figures show what the pool held for it; the same after the pool is reopened.
#[test]
fn a_thick_volume_is_written_whole_after_a_thin_one_filled_the_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pool.tarn");
    let pool = filled(&path);
    let d = pool.dataset("tank/thick").expect("thick");
    assert_eq!(
        (d.refreservation, d.usedbyrefreservation),
        (32 * MIB, 32 * MIB)
    );
    assert_eq!(d.used, 32 * MIB, "the reservation counts as used");
    assert!(
        !d.props.contains_key(REFRESERVATION_PROP),
        "not a user property"
    );
    write_whole(&pool, "tank/thick", 1);
    let d = pool.dataset("tank/thick").expect("thick");
    assert_eq!((d.usedbyrefreservation, d.used), (0, 32 * MIB));
    // Overwritten whole again: new blocks while the old ones wait out their deferral.
    write_whole(&pool, "tank/thick", 2);
    pool.close().expect("close");

    // Reopened, the reservation holds: the thin volume still cannot take it.
    let pool = Pool::open_path(&path, config()).expect("reopen");
    pool.set_props("tank/thick", &[(REFRESERVATION_PROP.into(), "auto".into())])
        .expect("unchanged");
    let thin = pool.volume("tank/thin").expect("thin");
    let chunk = vec![0x5au8; MIB as usize];
    assert!((0..256).any(|i| thin.write_at(i * MIB, &chunk).is_err()));
    drop(thin);
    write_whole(&pool, "tank/thick", 3);
    let mut b = vec![0u8; MIB as usize];
    pool.volume("tank/thick")
        .expect("thick")
        .read_at(31 * MIB, &mut b)
        .expect("read");
    assert!(b.iter().all(|&x| x == 3));
    assert!(pool.scrub().expect("scrub").is_clean());
}

/// What the pool cannot hold is refused, changing nothing: a thick volume too large, a
/// reservation raised past free space, a snapshot of a written thick volume (it holds the
/// reservation whole again), growing an `auto` volume; a reservation on a snapshot or given
/// to a clone is refused as such.
#[test]
fn reservations_the_pool_cannot_hold_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pool.tarn");
    let pool = filled(&path);
    // The unused reservation, its block map (one 16 KiB leaf per 512 blocks, and the root),
    // and the overwrite headroom.
    const HELD: u64 = 48 * MIB + 17 * 16384;
    assert_eq!(pool.info().reserved, HELD);
    // Small writes (buffered until the commit) are refused too.
    let thin = pool.volume("tank/thin").expect("thin");
    let small = vec![0x33u8; 4096];
    let taken = (0..2048u64)
        .take_while(|i| thin.write_at(200 * MIB + i * 4096, &small).is_ok())
        .count();
    assert!(
        taken < 256,
        "{taken} small writes went into the reservation"
    );
    drop(thin);
    assert!(pool.available() < MIB, "{}", pool.available());
    let e = pool
        .create_volume("tank/more", 16 * MIB, 4096, &thick())
        .expect_err("no room");
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    assert!(pool.dataset("tank/more").is_err());
    assert_eq!(pool.info().reserved, HELD);
    let e = pool
        .set_props(
            "tank/thick",
            &[(REFRESERVATION_PROP.into(), (64 * MIB).to_string())],
        )
        .expect_err("no room to raise it");
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    assert_eq!(
        pool.dataset("tank/thick").expect("d").refreservation,
        32 * MIB
    );
    // Refused grows leave the volume as it was, its tree too (2 GiB would add a level).
    for size in [64 * MIB, 2 << 30] {
        let e = pool.resize_volume("tank/thick", size).expect_err("grow");
        assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
        assert_eq!(pool.dataset("tank/thick").expect("d").size, 32 * MIB);
    }
    pool.close().expect("close");
    let pool = Pool::open_path(&path, config()).expect("reopen");
    assert!(pool.scrub().expect("scrub").is_clean());
    assert_eq!(pool.info().reserved, HELD, "recomputed at open");

    write_whole(&pool, "tank/thick", 1);
    let e = pool.snapshot(&["tank/thick@s"]).expect_err("no room");
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    assert!(pool.dataset("tank/thick@s").is_err());
    // With the thin volume gone there is room.
    pool.destroy_with("tank/thin", pool::Recursion::None)
        .expect("destroy");
    for _ in 0..6 {
        pool.sync().expect("release the frees");
    }
    pool.snapshot(&["tank/thick@s"]).expect("snapshot");
    let d = pool.dataset("tank/thick").expect("d");
    assert_eq!(d.usedbyrefreservation, 32 * MIB, "held whole again");
    let e = pool
        .set_props(
            "tank/thick@s",
            &[(REFRESERVATION_PROP.into(), "auto".into())],
        )
        .expect_err("a snapshot");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let e = pool
        .clone_snapshot("tank/thick@s", "tank/c", &thick())
        .expect_err("a clone");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    pool.clone_snapshot("tank/thick@s", "tank/c", &BTreeMap::new())
        .expect("a thin clone");
    // Removing the reservation gives its space back.
    pool.set_props("tank/thick", &[(REFRESERVATION_PROP.into(), String::new())])
        .expect("none");
    let d = pool.dataset("tank/thick").expect("d");
    assert_eq!((d.refreservation, d.usedbyrefreservation), (0, 0));
    let e = pool
        .set_props("tank/thick", &[(REFRESERVATION_PROP.into(), "lots".into())])
        .expect_err("not a size");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}

/// A grow refused for its reservation changes nothing, not even the block tree's height: a
/// 2 MiB thick volume (one leaf) refused 8 MiB (four) is written and read back after a
/// reopen, and scrub finds nothing.
#[test]
fn a_refused_grow_leaves_the_tree_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pool.tarn");
    let pool = filled(&path);
    pool.set_props("tank/thick", &[(REFRESERVATION_PROP.into(), String::new())])
        .expect("none");
    pool.create_volume("tank/small", 2 * MIB, 4096, &thick())
        .expect("room for 2 MiB");
    let e = pool
        .resize_volume("tank/small", 40 * MIB)
        .expect_err("no room for 40 MiB");
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    write_whole(&pool, "tank/small", 9);
    pool.close().expect("close");
    let pool = Pool::open_path(&path, config()).expect("reopen");
    let mut b = vec![0u8; 2 * MIB as usize];
    pool.volume("tank/small")
        .expect("small")
        .read_at(0, &mut b)
        .expect("read");
    assert!(b.iter().all(|&x| x == 9));
    assert!(pool.scrub().expect("scrub").is_clean());
}

/// What a reservation holds, in a pool with room: the reservation, its block map at every
/// level and the headroom; a create refused for another reason holds nothing.
#[test]
fn a_reservation_holds_its_block_map_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = Pool::create_file(&dir.path().join("pool.tarn"), "tank", 3 << 30, config())
        .expect("create");
    pool.create_volume("tank/big", 2 << 30, 4096, &thick())
        .expect("thick 2 GiB");
    // 524,288 blocks: 1,024 leaves, 2 blocks above them, and the root.
    let map = (1024 + 2 + 1) * 16384;
    assert_eq!(pool.info().reserved, (2 << 30) + map + 16 * MIB);
    let e = pool
        .create_volume("tank/big/x", MIB, 4096, &thick())
        .expect_err("below a volume");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert_eq!(pool.info().reserved, (2 << 30) + map + 16 * MIB);
}
