//! A thin volume far larger than its pool, and than a dense block map would fit in memory
//! (4 TiB in 4 KiB blocks: 48 GiB of map), is created, written at both ends, snapshotted,
//! cloned and reopened, while the process holds only what was written.

use pool::{Pool, PoolConfig};

const BS: u64 = 4096;
const SIZE: u64 = (1 << 30) * BS;

/// This process's resident memory, from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib << 10
}

/// Pool `p` (64 MiB) in `dir`, committing only when asked, whose block maps may take 4 MiB
/// (half of an 8 MiB memory limit): about 169 written ranges of 512 blocks.
fn budgeted_pool(dir: &tempfile::TempDir) -> Pool {
    let config = PoolConfig {
        sync_interval: None,
        memory_limit: Some(8 << 20),
        ..PoolConfig::default()
    };
    Pool::create_file(&dir.path().join("p.tarn"), "p", 64 << 20, config).expect("pool")
}

fn read(pool: &Pool, name: &str, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    pool.volume(name)
        .expect("volume")
        .read_at(offset, &mut buf)
        .expect("read");
    buf
}

#[test]
fn a_thin_volume_larger_than_a_dense_map_could_be() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pool.tarn");
    let pool = Pool::create_file(&path, "tank", 64 << 20, PoolConfig::default()).expect("pool");
    pool.create_volume("tank/big", SIZE, BS as u32, &Default::default())
        .expect("a 4 TiB thin volume");
    let big = pool.volume("tank/big").expect("big");
    big.write_at(0, &[1u8; 1 << 20]).expect("head");
    big.write_at(SIZE - BS, &[2u8; BS as usize]).expect("tail");
    drop(big);
    pool.snapshot(&["tank/big@s"]).expect("snapshot");
    pool.clone_snapshot("tank/big@s", "tank/copy", &Default::default())
        .expect("clone");
    pool.volume("tank/copy")
        .expect("copy")
        .write_at(SIZE / 2, &[3u8; BS as usize])
        .expect("middle of the clone");
    pool.close().expect("close");

    let pool = Pool::open_path(&path, PoolConfig::default()).expect("reopen");
    for name in ["tank/big", "tank/copy"] {
        assert_eq!(read(&pool, name, 0, 1 << 20), vec![1u8; 1 << 20], "{name}");
        assert_eq!(
            read(&pool, name, SIZE - BS, 4096),
            vec![2u8; 4096],
            "{name}"
        );
    }
    assert_eq!(read(&pool, "tank/big", SIZE / 2, 4096), vec![0u8; 4096]);
    assert_eq!(read(&pool, "tank/copy", SIZE / 2, 4096), vec![3u8; 4096]);
    let report = pool.scrub().expect("scrub");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let rss = rss_bytes();
    assert!(
        rss < 1 << 30,
        "resident {rss} bytes for two mostly unwritten maps"
    );
}

/// Block maps are held to half of the memory limit as data is written (each 512-block range
/// written keeps 24 KiB), so what was written on a host opens on it again; a map past the
/// whole limit (written where more memory was allowed) is refused at load, with the reason.
#[test]
fn writes_keep_the_block_map_within_its_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pool.tarn");
    let limited = |mib: u64| PoolConfig {
        memory_limit: Some(mib << 20),
        ..PoolConfig::default()
    };
    let pool = Pool::create_file(&path, "tank", 64 << 20, limited(8)).expect("pool");
    pool.create_volume("tank/v", 1 << 30, BS as u32, &Default::default())
        .expect("volume");
    let v = pool.volume("tank/v").expect("v");
    // One block in each 2 MiB range: a new leaf each, until the 4 MiB budget is reached.
    let span = 512 * BS;
    let mut written = 0;
    let err = loop {
        match v.write_at(written * span, &[9u8; BS as usize]) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 512, "never refused");
    };
    assert_eq!(err.kind(), pool::ErrorKind::TooLarge, "{err}");
    assert!(err.to_string().contains("block map"), "{err}");
    assert!(written > 100, "refused after {written} ranges");
    // Ranges already kept still take writes, zeroes need no leaf, and a shrink goes through.
    v.write_at(BS, &[8u8; BS as usize]).expect("a kept range");
    v.write_zeroes(300 * span, BS).expect("zeroes");
    drop(v);
    pool.close().expect("close");

    let pool = Pool::open_path(&path, limited(8)).expect("reopen with the same limit");
    for i in 0..written {
        assert_eq!(read(&pool, "tank/v", i * span, 1), vec![9u8], "range {i}");
    }
    pool.resize_volume("tank/v", 64 * span).expect("shrink");
    pool.close().expect("close");

    let pool = Pool::open_path(&path, limited(1)).expect("the pool opens");
    let err = pool
        .volume("tank/v")
        .and_then(|v| v.read_at(0, &mut [0u8; 1]))
        .expect_err("a map past the limit");
    assert!(err.to_string().contains("more memory"), "{err}");
}

/// Rewriting ranges the map already keeps takes none of its budget: a write needing one new
/// leaf is then still within it (the kept leaves rewritten in the open txg were counted
/// twice, and such a write was refused at a quarter of the budget).
#[test]
fn rewriting_kept_ranges_does_not_use_up_the_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = budgeted_pool(&dir);
    pool.create_volume("p/v", 1 << 30, BS as u32, &Default::default())
        .expect("volume");
    let v = pool.volume("p/v").expect("v");
    let span = 512 * BS;
    for i in 0..100 {
        v.write_at(i * span, &[1u8; BS as usize])
            .expect("first write");
    }
    pool.sync().expect("sync");
    for i in 0..100 {
        v.write_at(i * span, &[2u8; BS as usize])
            .expect("a kept range");
    }
    v.write_at(150 * span, &[3u8; BS as usize])
        .expect("one new leaf, within the budget");
}

/// The budget is the pool's, across its volumes: what one volume's map holds leaves that
/// much less for the others.
#[test]
fn the_budget_is_shared_by_the_pools_volumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = budgeted_pool(&dir);
    let span = 512 * BS;
    for name in ["p/a", "p/b"] {
        pool.create_volume(name, 1 << 30, BS as u32, &Default::default())
            .expect("volume");
    }
    // Ranges written into a 1 GiB volume until the budget refuses one.
    let fill = |name: &str| -> u64 {
        let v = pool.volume(name).expect("v");
        let mut n = 0;
        while v.write_at(n * span, &[5u8; BS as usize]).is_ok() {
            n += 1;
            assert!(n < 512, "never refused");
        }
        pool.sync().expect("sync");
        n
    };
    let first = fill("p/a");
    let second = fill("p/b");
    assert!(
        first > 100,
        "the first volume had most of the budget: {first}"
    );
    assert!(
        second < 10,
        "the second found it spent: {second} ranges after {first}"
    );
}

/// Zeroing all of a 4 TiB volume, and listing its data ranges, visit only what it holds:
/// blocks written and committed far apart, a write still pending, and the partial blocks at
/// the range's ends are zeroed (the bytes outside the range kept), while the billion holes
/// between are skipped, not walked one by one (a 40-byte FREE record in a received stream took
/// minutes that way, and a full send of a thin volume seconds a TiB).
#[test]
fn zeroing_a_vast_range_touches_only_what_it_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = PoolConfig {
        sync_interval: None,
        ..PoolConfig::default()
    };
    let pool = Pool::create_file(&dir.path().join("p.tarn"), "p", 64 << 20, config).expect("pool");
    pool.create_volume("p/v", SIZE, BS as u32, &Default::default())
        .expect("create");
    let v = pool.volume("p/v").expect("volume");
    let spots = [0, 7 * BS, (1 << 29) * BS, SIZE - BS];
    for &at in &spots {
        v.write_at(at, &[0xab; BS as usize]).expect("write");
    }
    pool.sync().expect("commit");
    v.write_at(SIZE / 3 / BS * BS, &[0xcd; 100])
        .expect("a pending write");
    for _ in 0..3 {
        v.write_zeroes(10, SIZE - 20).expect("zeroes");
    }
    pool.sync().expect("commit");
    let kept = v.data_ranges(0, SIZE).expect("ranges");
    assert_eq!(
        kept,
        [(0, BS), (SIZE - BS, BS)],
        "only the partial end blocks hold data"
    );
    assert_eq!(
        read(&pool, "p/v", 0, 12),
        [[0xab; 10].as_slice(), &[0, 0]].concat()
    );
    assert_eq!(
        read(&pool, "p/v", SIZE - 12, 12),
        [[0, 0].as_slice(), &[0xab; 10]].concat()
    );
    for &at in &spots[1..3] {
        assert!(read(&pool, "p/v", at, BS as usize).iter().all(|&b| b == 0));
    }
}
