//! Concurrency: many threads reading and writing different and overlapping ranges of several
//! volumes while the background txg thread commits and other threads flush.

use pool::{Pool, PoolConfig, VolumeHandle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Duration;

const VOLS: usize = 3;
const THREADS: usize = 8;
const VOL_SIZE: u64 = 8 << 20;
/// Each thread owns one private slice of every volume; the last slice is shared by all.
const SLICE: u64 = VOL_SIZE / (THREADS as u64 + 1);

/// A 512-byte sector that proves it was written whole: writer, sequence, and a checksum.
fn sector(writer: u64, seq: u64) -> [u8; 512] {
    let mut s = [0u8; 512];
    for (i, b) in s.iter_mut().enumerate() {
        *b = (writer as u8)
            .wrapping_mul(31)
            .wrapping_add(seq as u8)
            .wrapping_add(i as u8);
    }
    s[0..8].copy_from_slice(&writer.to_le_bytes());
    s[8..16].copy_from_slice(&seq.to_le_bytes());
    s
}

fn sector_is_whole(s: &[u8]) -> bool {
    if s.iter().all(|&b| b == 0) {
        return true;
    }
    let writer = u64::from_le_bytes(s[0..8].try_into().expect("8"));
    let seq = u64::from_le_bytes(s[8..16].try_into().expect("8"));
    s == sector(writer, seq)
}

fn worker(t: usize, vols: Vec<VolumeHandle>) -> Vec<Vec<u8>> {
    let mut rng = SmallRng::seed_from_u64(t as u64);
    let mut mine: Vec<Vec<u8>> = vec![vec![0u8; SLICE as usize]; VOLS];
    let private = t as u64 * SLICE;
    let shared = THREADS as u64 * SLICE;
    for seq in 0..400u64 {
        let v = rng.gen_range(0..VOLS);
        let vol = &vols[v];
        let sectors = rng.gen_range(1..=24u64);
        let data: Vec<u8> = (0..sectors)
            .flat_map(|k| sector(t as u64, seq * 100 + k))
            .collect();
        match rng.gen_range(0..10) {
            0..=3 => {
                let off = rng.gen_range(0..SLICE / 512 - sectors) * 512;
                vol.write_at(private + off, &data).expect("private write");
                mine[v][off as usize..off as usize + data.len()].copy_from_slice(&data);
            }
            4..=6 => {
                let off = rng.gen_range(0..SLICE / 512 - sectors) * 512;
                vol.write_at(shared + off, &data).expect("shared write");
            }
            7 => {
                let off = rng.gen_range(0..SLICE / 512 - sectors) * 512;
                let mut buf = vec![0u8; data.len()];
                vol.read_at(shared + off, &mut buf).expect("shared read");
                assert!(
                    buf.chunks(512).all(sector_is_whole),
                    "thread {t}: torn sector in shared range"
                );
            }
            8 => {
                let off = rng.gen_range(0..SLICE - 1);
                let len = rng.gen_range(1..=(SLICE - off).min(64 << 10));
                let mut buf = vec![0u8; len as usize];
                vol.read_at(private + off, &mut buf).expect("private read");
                assert!(
                    buf[..] == mine[v][off as usize..(off + len) as usize],
                    "thread {t}: private range of volume {v} changed"
                );
            }
            _ => vol.flush().expect("flush"),
        }
    }
    mine
}

#[test]
fn threads_on_shared_and_private_ranges_of_several_volumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pool.tarn");
    let config = PoolConfig {
        sync_interval: Some(Duration::from_millis(5)),
        dirty_max: 4 << 20,
        // Punching released space while writers place data is the riskier path.
        autotrim: true,
        ..PoolConfig::default()
    };
    let pool =
        Arc::new(Pool::create_file(&path, "tank", 128 << 20, config.clone()).expect("create"));
    for v in 0..VOLS {
        pool.create_volume(
            &format!("tank/v{v}"),
            VOL_SIZE,
            4096 << v,
            &Default::default(),
        )
        .expect("vol");
    }
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let vols: Vec<VolumeHandle> = (0..VOLS)
                .map(|v| pool.volume(&format!("tank/v{v}")).expect("volume"))
                .collect();
            std::thread::spawn(move || worker(t, vols))
        })
        .collect();
    let results: Vec<Vec<Vec<u8>>> = handles
        .into_iter()
        .map(|h| h.join().expect("worker panicked"))
        .collect();
    let pool = Arc::into_inner(pool).expect("sole owner");
    pool.close().expect("close");

    let pool = Pool::open_path(&path, config).expect("reopen");
    for (t, mine) in results.iter().enumerate() {
        for (v, want) in mine.iter().enumerate() {
            let mut got = vec![0u8; SLICE as usize];
            pool.volume(&format!("tank/v{v}"))
                .expect("volume")
                .read_at(t as u64 * SLICE, &mut got)
                .expect("read");
            assert!(
                got == *want,
                "thread {t}'s range of volume {v} differs after reopen"
            );
        }
    }
    for v in 0..VOLS {
        let mut got = vec![0u8; SLICE as usize];
        pool.volume(&format!("tank/v{v}"))
            .expect("volume")
            .read_at(THREADS as u64 * SLICE, &mut got)
            .expect("read");
        assert!(
            got.chunks(512).all(sector_is_whole),
            "shared range of volume {v} holds a torn sector"
        );
    }
    let report = pool.scrub().expect("scrub");
    assert!(report.is_clean(), "{:?}", report.errors);
}
