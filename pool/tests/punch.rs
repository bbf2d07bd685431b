//! Released space is punched back into holes while it is still allocated. Here a writer places
//! data at the very moment a commit punches the space it released: a 4 MiB write that only fits
//! where the punch is. It must not get that space before the punch is done (its data would be
//! zeroed under it): it waits for the commit and lands after, intact.

mod common;

use common::Watched;
use pool::{Pool, PoolConfig, VolumeHandle};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const MIB: usize = 1 << 20;

/// Writes `fill` over the whole volume in 1 MiB requests.
fn write_whole(v: &VolumeHandle, fill: u8) {
    let buf = vec![fill; MIB];
    for at in (0..v.size()).step_by(MIB) {
        v.write_at(at, &buf).expect("write");
    }
}

#[test]
fn a_writer_never_gets_space_that_is_being_punched() {
    let dev = Arc::new(Watched::new(16 * MIB));
    let config = PoolConfig {
        sync_interval: None,
        ..PoolConfig::default()
    };
    let pool = Pool::create_on(dev.clone(), "p", config).expect("pool");
    let props = Default::default();
    pool.create_volume("p/a", 4 * MIB as u64, 4096, &props)
        .expect("volume a");
    pool.create_volume("p/b", 4 * MIB as u64, 4096, &props)
        .expect("volume b");
    let a = pool.volume("p/a").expect("a");
    let b = pool.volume("p/b").expect("b");
    // Three copies of a: the first two are freed (deferred), the third is live; what is left
    // at the end of the pool is less than 4 MiB.
    for fill in [1u8, 2, 3] {
        write_whole(&a, fill);
        pool.sync().expect("sync");
    }
    // When the first copy's space is punched, write 4 MiB to b from another thread and give
    // it time to finish if it can (it must not, before the punch is done).
    let writer: Arc<Mutex<Option<JoinHandle<()>>>> = Arc::new(Mutex::new(None));
    let (slot, bw) = (writer.clone(), b.clone());
    dev.on_punch(
        4 * MIB as u64,
        Box::new(move || {
            let h = std::thread::spawn(move || {
                bw.write_at(0, &vec![0xb5u8; 4 * MIB]).expect("write b");
            });
            std::thread::sleep(Duration::from_millis(300));
            *slot.lock().expect("slot") = Some(h);
        }),
    );
    for _ in 0..pool::spacemap::DEFER_TXGS + 1 {
        pool.sync().expect("sync");
        if writer.lock().expect("writer").is_some() {
            break;
        }
    }
    let h = writer.lock().expect("writer").take();
    h.expect("the released space was punched")
        .join()
        .expect("the writer finished");
    pool.sync().expect("sync");
    let mut got = vec![0u8; 4 * MIB];
    b.read_at(0, &mut got).expect("read b back");
    assert!(got.iter().all(|&x| x == 0xb5), "b's data was zeroed");
    let mut got_a = vec![0u8; 4 * MIB];
    a.read_at(0, &mut got_a).expect("read a back");
    assert!(got_a.iter().all(|&x| x == 3));
    let report = pool.scrub().expect("scrub");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}
