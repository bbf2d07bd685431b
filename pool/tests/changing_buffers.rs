//! A caller's buffer that changes while the pool writes or reads it, as a guest's page does
//! when the guest rewrites it under writeback (virtio-blk asks for no stable pages). Large
//! writes go to disk straight from the caller's buffers, checksummed first; the block must
//! still read back, with one of the versions the buffer held, and the pool must scrub clean.
//! Large reads land straight in the caller's buffer and are verified there; a change there
//! must not be reported as a damaged block.
//!
//! For the write, the buffer is memory mapped twice, as guest memory is shared with a VMM:
//! the pool is handed one mapping, and the device changes the bytes through the other just
//! before the write goes through.

mod common;

use common::Watched;
use pool::{MemDevice, Pool, PoolConfig};
use std::sync::Arc;

const LEN: usize = 1 << 20;

/// Two mappings of one shared memory file: writes through either show in both.
struct Twin {
    a: *mut u8,
    b: *mut u8,
}

impl Twin {
    fn new(len: usize) -> Twin {
        // SAFETY: plain syscalls on a descriptor we create; every result is checked, and the
        // mappings cover the file's whole length.
        unsafe {
            let fd = libc::memfd_create(c"tarn-changing-buffer".as_ptr(), 0);
            assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
            assert_eq!(libc::ftruncate(fd, len as libc::off_t), 0);
            let map = || {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
                    0,
                );
                assert_ne!(p, libc::MAP_FAILED, "mmap");
                p.cast::<u8>()
            };
            let twin = Twin { a: map(), b: map() };
            libc::close(fd);
            twin
        }
    }
}

#[test]
fn a_buffer_that_changes_while_it_is_written_still_reads_back() {
    let dev = Arc::new(Watched::new(32 << 20));
    let config = PoolConfig {
        sync_interval: None,
        ..PoolConfig::default()
    };
    let pool = Pool::create_on(dev.clone(), "p", config.clone()).expect("pool");
    pool.create_volume("p/v", LEN as u64, 4096, &Default::default())
        .expect("volume");
    let vol = pool.volume("p/v").expect("v");

    let twin = Twin::new(LEN);
    // SAFETY: `a` maps LEN bytes that live until the process ends (never unmapped).
    let buf: &[u8] = unsafe { std::slice::from_raw_parts(twin.a, LEN) };
    for i in 0..LEN {
        // SAFETY: in bounds of the mapping; volatile, as the memory is shared.
        unsafe { twin.b.add(i).write_volatile((i % 251) as u8 + 1) };
    }
    let other = twin.b as usize;
    dev.on_placed_write(Box::new(move || {
        // Rewrite byte 5 of block 3 through the other mapping: after the pool checksummed the
        // block, before the device takes its bytes.
        // SAFETY: in bounds of the second mapping, which is never unmapped.
        unsafe { (other as *mut u8).add(3 * 4096 + 5).write_volatile(0xee) };
    }));
    vol.write_at(0, buf).expect("write");
    pool.sync().expect("sync");

    let check = |vol: &pool::VolumeHandle| {
        let mut got = vec![0u8; LEN];
        vol.read_at(0, &mut got)
            .expect("the changed block reads back");
        for (i, &x) in got.iter().enumerate() {
            let want = if i == 3 * 4096 + 5 {
                0xee
            } else {
                (i % 251) as u8 + 1
            };
            assert_eq!(x, want, "byte {i}");
        }
    };
    check(&vol);
    let report = pool.scrub().expect("scrub");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    drop(vol);
    pool.close().expect("close");
    let reopened =
        Pool::open(Arc::new(MemDevice::from_bytes(dev.snapshot())), config).expect("reopen");
    check(&reopened.volume("p/v").expect("v"));
}

#[test]
fn a_buffer_that_changes_while_it_is_read_is_not_called_damaged() {
    let dev = Arc::new(Watched::new(32 << 20));
    let config = PoolConfig {
        sync_interval: None,
        ..PoolConfig::default()
    };
    let pool = Pool::create_on(dev.clone(), "p", config).expect("pool");
    pool.create_volume("p/v", LEN as u64, 4096, &Default::default())
        .expect("volume");
    let vol = pool.volume("p/v").expect("v");
    let data: Vec<u8> = (0..LEN).map(|i| (i % 253) as u8 + 1).collect();
    vol.write_at(0, &data).expect("write");
    pool.sync().expect("sync");
    // A read of at least 64 KiB goes straight into the caller's buffer.
    dev.scribble_on_next_read(64 << 10);
    let mut got = vec![0u8; LEN];
    vol.read_at(0, &mut got)
        .expect("a changed buffer is not a damaged block");
    assert!(got == data, "the read delivered the volume's bytes");
    assert!(pool.scrub().expect("scrub").errors.is_empty());
}
