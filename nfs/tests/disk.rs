//! `NfsDisk` through the `BlockBackend` trait against the in-process server on a loopback port:
//! odd-offset round trips, vectored I/O, write-zeroes, flush, size and ID, read-only refusal
//! (asked for, and a snapshot), past-the-end errors, and a server restart between requests.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::new_pool;
use nfs::{FileView, NfsDisk, ServeConfig, Server, ViewOptions};
use pool::Pool;
use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::sync::Arc;
use zvol::BlockBackend;

/// A server on its own runtime (the disk blocks on its own; never inside another runtime).
struct Running {
    rt: tokio::runtime::Runtime,
    task: tokio::task::JoinHandle<()>,
    port: u16,
}

fn start(pool: Arc<Pool>, port: u16) -> Running {
    start_with(pool, port, false, Default::default())
}

/// [`start`] with `--sync` (`sync_writes`) and connection limits.
fn start_with(
    pool: Arc<Pool>,
    port: u16,
    sync_writes: bool,
    limits: nfs::ConnectionLimits,
) -> Running {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let view = Arc::new(FileView::new(pool, ViewOptions::default()));
    let server = rt
        .block_on(Server::bind(
            view,
            &ServeConfig {
                listen: format!("127.0.0.1:{port}"),
                allow: Vec::new(),
                sync_writes,
                limits,
            },
        ))
        .unwrap();
    let port = server.local_addr().port();
    let task = rt.spawn(async move {
        let _ = server.run().await;
    });
    Running { rt, task, port }
}

impl Running {
    /// Stops the server and closes its connections (they are tasks of their own), as a
    /// process exit would.
    fn stop(self) {
        self.task.abort();
        let _ = self.rt.block_on(self.task);
        self.rt.shutdown_timeout(std::time::Duration::from_secs(10));
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

#[test]
fn nfs_disk_through_the_backend_trait() {
    let dir = tempfile::tempdir().unwrap();
    let pool = new_pool(dir.path());
    const SIZE: u64 = 8 << 20;
    // A nested name: `a` is a directory on the server.
    pool.create_volume("tank/a/vol", SIZE, 16384, &BTreeMap::new())
        .unwrap();
    let srv = start(pool.clone(), 0);
    let url = format!("nfs://127.0.0.1:{}/tank/a/vol", srv.port);
    let disk = NfsDisk::connect(&url, false).unwrap();
    let info = disk.info();
    assert_eq!(info.size, SIZE);
    assert!(!info.read_only);
    assert!(info.id.starts_with("nfs-"), "{}", info.id);
    assert_eq!(
        NfsDisk::connect(&url, false).unwrap().info().id,
        info.id,
        "ID not stable"
    );

    // Odd offsets and lengths, one spanning more than one 1 MiB transfer.
    let mut model = vec![0u8; SIZE as usize];
    for (i, (off, len)) in [(1u64, 3usize), (4095, 4099), (1_048_571, (1 << 20) + 13)]
        .into_iter()
        .enumerate()
    {
        let data = pattern(len, i as u8);
        disk.write_at(off, &data).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&data);
        let mut back = vec![0u8; len + 2];
        disk.read_at(off - 1, &mut back).unwrap();
        assert_eq!(back, model[off as usize - 1..off as usize + len + 1]);
    }
    // Vectored: small segments both ways.
    let (a, b, c) = (pattern(7, 40), pattern(512, 41), pattern(3000, 42));
    disk.write_vectored(
        777_777,
        &[
            IoSlice::new(&a),
            IoSlice::new(&[]),
            IoSlice::new(&b),
            IoSlice::new(&c),
        ],
    )
    .unwrap();
    let flat: Vec<u8> = [a, b, c].concat();
    model[777_777..777_777 + flat.len()].copy_from_slice(&flat);
    let (mut x, mut y) = (vec![0u8; 1000], vec![0u8; flat.len() - 1000]);
    disk.read_vectored(
        777_777,
        &mut [IoSliceMut::new(&mut x), IoSliceMut::new(&mut y)],
    )
    .unwrap();
    assert_eq!([x, y].concat(), flat);
    // Zeroes (bounded chunks) and discard read back as zeroes.
    disk.write_zeroes(4000, (1 << 20) + 5000).unwrap();
    model[4000..4000 + (1 << 20) + 5000].fill(0);
    disk.discard(777_780, 100).unwrap();
    model[777_780..777_880].fill(0);
    disk.flush().unwrap();
    // The last byte, and past the end.
    disk.write_at(SIZE - 1, &[0xAB]).unwrap();
    model[SIZE as usize - 1] = 0xAB;
    assert!(disk.write_at(SIZE, &[1]).is_err());
    assert!(disk.read_at(SIZE - 1, &mut [0u8; 2]).is_err());
    disk.flush().unwrap();

    // What the pool holds is what the disk wrote.
    let mut whole = vec![0u8; SIZE as usize];
    let vol = pool.volume("tank/a/vol").unwrap();
    vol.read_at(0, &mut whole).unwrap();
    assert!(whole == model, "pool content differs from the model");

    // Read-only, as asked: writes refused with ReadOnly, reads fine.
    let ro = NfsDisk::connect(&url, true).unwrap();
    assert!(ro.info().read_only);
    let e = ro.write_at(0, &[1]).unwrap_err();
    assert_eq!(e.kind(), pool::ErrorKind::ReadOnly, "{e}");
    assert_eq!(
        ro.write_zeroes(0, 1).unwrap_err().kind(),
        pool::ErrorKind::ReadOnly
    );
    let mut head = [0u8; 16];
    ro.read_at(0, &mut head).unwrap();
    assert_eq!(head[..], model[..16]);

    // A snapshot is read-only by its mode.
    pool.snapshot(&["tank/a/vol@s1"]).unwrap();
    let snap_url = format!("nfs://127.0.0.1:{}/tank/a/.snapshot/vol@s1", srv.port);
    let snap = NfsDisk::connect(&snap_url, false).unwrap();
    assert!(snap.info().read_only);
    assert_eq!(
        snap.write_at(0, &[1]).unwrap_err().kind(),
        pool::ErrorKind::ReadOnly
    );
    snap.read_at(SIZE - 1, &mut head[..1]).unwrap();
    assert_eq!(head[0], 0xAB);

    // Missing volume, bad URL.
    assert!(NfsDisk::connect(&format!("nfs://127.0.0.1:{}/tank/nope", srv.port), false).is_err());
    assert!(NfsDisk::connect("nfs://127.0.0.1/tank", false).is_err());

    // Restart the server on the same port: the open disk reconnects with its old handle.
    let port = srv.port;
    srv.stop();
    let srv = start(pool.clone(), port);
    let t = std::time::Instant::now();
    disk.write_at(12_345, b"after restart").unwrap();
    disk.flush().unwrap();
    let mut back = [0u8; 13];
    disk.read_at(12_345, &mut back).unwrap();
    assert_eq!(&back, b"after restart");
    // A closed connection is noticed at once, not after the RPC timeout.
    assert!(
        t.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        t.elapsed()
    );
    drop((disk, ro, snap));
    srv.stop();
}

/// A pool with a 16 MiB volume `tank/vol`, in `dir`.
fn pool_with_volume(dir: &std::path::Path) -> Arc<Pool> {
    let pool = new_pool(dir);
    pool.create_volume("tank/vol", 16 << 20, 16384, &BTreeMap::new())
        .unwrap();
    pool
}

/// Reads with `n` threads at once, three times, so the disk keeps `n` idle connections.
fn parallel_reads(disk: &Arc<NfsDisk>, n: u64) {
    let barrier = Arc::new(std::sync::Barrier::new(n as usize));
    let readers: Vec<_> = (0..n)
        .map(|i| {
            let (d, b) = (disk.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 2 << 20];
                for _ in 0..3 {
                    b.wait();
                    d.read_at(i * (2 << 20), &mut buf).unwrap();
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
}

/// The server closes idle connections (`tarn nfs serve` after 6 minutes, as knfsd does; 2 s
/// here): after an idle spell, a disk that kept several connections still reads (the next
/// request tried three dead ones and failed).
#[test]
fn a_request_after_the_server_closed_idle_connections_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_with_volume(dir.path());
    let limits = nfs::ConnectionLimits {
        idle_timeout: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    let _srv = start_with(pool.clone(), 0, false, limits);
    let url = format!("nfs://127.0.0.1:{}/tank/vol", _srv.port);
    let disk = Arc::new(NfsDisk::connect(&url, false).unwrap());
    parallel_reads(&disk, 4);
    std::thread::sleep(std::time::Duration::from_secs(4));
    let mut b = [0u8; 512];
    disk.read_at(0, &mut b).unwrap();
}

/// `tarn nfs serve` restarted while a disk had several idle connections: the next request
/// succeeds (it failed).
#[test]
fn a_request_after_a_restart_with_idle_connections_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_with_volume(dir.path());
    let srv = start(pool.clone(), 0);
    let port = srv.port;
    let disk =
        Arc::new(NfsDisk::connect(&format!("nfs://127.0.0.1:{port}/tank/vol"), false).unwrap());
    parallel_reads(&disk, 6);
    srv.stop();
    let _srv = start(pool.clone(), port);
    let mut b = [0u8; 512];
    disk.read_at(0, &mut b).unwrap();
}

/// A write the server made stable is never overwritten by the resend of an older copy of the
/// same bytes. Here the server restarts with `--sync` between an unstable write and a newer
/// stable one; the flush then finds the verifier changed and resends what it kept (the old
/// copy landed over the new bytes).
#[test]
fn a_resend_never_overwrites_a_newer_stable_write() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_with_volume(dir.path());
    let srv = start(pool.clone(), 0);
    let port = srv.port;
    let disk = NfsDisk::connect(&format!("nfs://127.0.0.1:{port}/tank/vol"), false).unwrap();
    disk.write_at(4096, b"OLD OLD OLD!").unwrap();
    disk.write_at(4100, b"tail").unwrap();
    srv.stop();
    let _srv = start_with(pool.clone(), port, true, Default::default());
    disk.write_at(4096, b"NEW NEW").unwrap();
    disk.flush().unwrap();
    let mut back = [0u8; 12];
    disk.read_at(4096, &mut back).unwrap();
    // "OLD tailOLD!" (both kept), then the stable "NEW NEW" over its start, which wins.
    assert_eq!(&back, b"NEW NEWlOLD!");
}
