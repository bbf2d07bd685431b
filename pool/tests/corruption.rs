//! Corruption: bytes flipped anywhere in allocated space make reads fail with an error naming
//! the dataset and offset (or the pool refuses to open, or opens an older intact txg) — never
//! wrong data with success. Scrub finds every damaged data block.

use pool::{Device, ErrorKind, MemDevice, Pool, PoolConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const BS: usize = 16384;
const BLOCKS: usize = 48;

fn config() -> PoolConfig {
    PoolConfig {
        sync_interval: None,
        dirty_max: 64 << 20,
        ..PoolConfig::default()
    }
}

/// Block `i` of the volume: a recognisable header, then pseudo-random bytes.
fn block(i: usize) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(i as u64);
    let mut b: Vec<u8> = (0..BS).map(|_| rng.gen()).collect();
    b[..8].copy_from_slice(b"TARNTEST");
    b[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    b
}

/// A pool with one volume fully written in a single txg; returns the image and that txg.
fn build() -> (Vec<u8>, u64) {
    let dev = Arc::new(MemDevice::new(32 << 20));
    let pool = Pool::create_on(dev.clone(), "tank", config()).expect("create");
    pool.create_volume(
        "tank/vol",
        (BS * BLOCKS) as u64,
        BS as u32,
        &Default::default(),
    )
    .expect("vol");
    let v = pool.volume("tank/vol").expect("volume");
    let data: Vec<u8> = (0..BLOCKS).flat_map(block).collect();
    v.write_at(0, &data).expect("write");
    let txg = pool.sync().expect("sync");
    drop(v);
    drop(pool);
    (dev.snapshot(), txg)
}

fn data_block_offsets(image: &[u8]) -> Vec<(usize, usize)> {
    (0..image.len() / 4096)
        .filter(|s| &image[s * 4096..s * 4096 + 8] == b"TARNTEST")
        .map(|s| {
            (
                s * 4096,
                u64::from_le_bytes(
                    image[s * 4096 + 8..s * 4096 + 16]
                        .try_into()
                        .expect("8 bytes"),
                ) as usize,
            )
        })
        .collect()
}

#[test]
fn flipped_data_bytes_fail_reads_with_dataset_and_offset() {
    let (image, _) = build();
    let blocks = data_block_offsets(&image);
    assert_eq!(blocks.len(), BLOCKS, "every data block is on disk once");
    let mut rng = SmallRng::seed_from_u64(7);
    for &(at, idx) in blocks.iter().step_by(5) {
        let mut img = image.clone();
        img[at + rng.gen_range(0..BS)] ^= 1 << rng.gen_range(0..8);
        let pool = Pool::open(Arc::new(MemDevice::from_bytes(img)), config()).expect("open");
        let v = pool.volume("tank/vol").expect("volume");
        let mut buf = vec![0u8; BS];
        let err = v
            .read_at((idx * BS) as u64, &mut buf)
            .expect_err("a damaged block must not read");
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        let msg = err.to_string();
        assert!(
            msg.contains("tank/vol") && msg.contains(&format!("byte offset {}", idx * BS)),
            "{msg}"
        );
        // Neighbours still read correctly, and a partial read of the damaged block fails too.
        let other = (idx + 1) % BLOCKS;
        v.read_at((other * BS) as u64, &mut buf)
            .expect("undamaged block");
        assert_eq!(buf, block(other));
        assert!(v.read_at((idx * BS + 100) as u64, &mut buf[..10]).is_err());
        let report = pool.scrub().expect("scrub");
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert_eq!(report.errors[0].offset, Some((idx * BS) as u64));
        assert_eq!(report.errors[0].dataset, "tank/vol");
    }
}

#[test]
fn flips_anywhere_never_return_wrong_data() {
    let (image, final_txg) = build();
    let expect: Vec<u8> = (0..BLOCKS).flat_map(block).collect();
    // Flip bytes in every sector that holds anything: labels, ring, space maps, metadata, data.
    let used: Vec<usize> = (0..image.len() / 4096)
        .filter(|s| image[s * 4096..(s + 1) * 4096].iter().any(|&b| b != 0))
        .collect();
    let mut rng = SmallRng::seed_from_u64(11);
    let (mut failed_open, mut failed_read, mut older, mut intact) = (0, 0, 0, 0);
    for &s in &used {
        let mut img = image.clone();
        img[s * 4096 + rng.gen_range(0..4096)] ^= 0x10;
        let pool = match Pool::open(Arc::new(MemDevice::from_bytes(img)), config()) {
            Ok(p) => p,
            Err(e) => {
                assert!(matches!(e.kind(), ErrorKind::Corrupt), "sector {s}: {e}");
                failed_open += 1;
                continue;
            }
        };
        if pool.txg() < final_txg {
            older += 1; // the newest txg's metadata was hit; an older intact txg opened instead
            continue;
        }
        let mut buf = vec![0u8; expect.len()];
        match pool
            .volume("tank/vol")
            .expect("volume")
            .read_at(0, &mut buf)
        {
            Ok(()) => {
                assert!(buf == expect, "sector {s}: read succeeded with wrong data");
                intact += 1;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Corrupt, "sector {s}: {e}");
                failed_read += 1;
            }
        }
    }
    assert!(
        failed_read >= BLOCKS,
        "every data block flip must fail a read ({failed_read})"
    );
    eprintln!("{} sectors: {failed_open} refused to open, {older} opened an older txg, {failed_read} failed reads, {intact} unaffected", used.len());
}

#[test]
fn a_damaged_newest_meta_block_falls_back_to_the_previous_txg() {
    let dev = Arc::new(MemDevice::new(32 << 20));
    let pool = Pool::create_on(dev.clone(), "tank", config()).expect("create");
    pool.create_volume("tank/vol", 1 << 20, 4096, &Default::default())
        .expect("vol");
    let v = pool.volume("tank/vol").expect("volume");
    v.write_at(0, b"first").expect("write");
    let t1 = pool.sync().expect("sync");
    v.write_at(0, b"second").expect("write");
    let t2 = pool.sync().expect("sync");
    drop(v);
    drop(pool);
    // Find txg t2's uberblock in the ring and damage its meta block.
    let img = dev.snapshot();
    let slot = (2 + (t2 % 64)) as usize * 4096;
    let meta_sector =
        u64::from_le_bytes(img[slot + 40..slot + 48].try_into().expect("8")) & ((1 << 48) - 1);
    dev.with_bytes_mut(|b| b[meta_sector as usize * 4096 + 20] ^= 0xff);
    let pool = Pool::open(dev.clone() as Arc<dyn Device>, config()).expect("falls back");
    assert_eq!(pool.txg(), t1);
    let mut buf = [0u8; 5];
    pool.volume("tank/vol")
        .expect("volume")
        .read_at(0, &mut buf)
        .expect("read");
    assert_eq!(&buf, b"first");
    assert!(pool.scrub().expect("scrub").is_clean());
}
