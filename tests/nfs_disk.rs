//! NFS-backed disks end to end: `tarn vol import nfs://127.0.0.1:PORT/POOL/VOL POOL2/NAME`
//! against `tarn nfs serve`, compared byte for byte with `tarn vol export`. Loopback only;
//! every wait is bounded; the server is stopped by its PID.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Env, NfsServer};

#[test]
fn vol_import_from_nfs_matches_export() {
    use rand::{Rng, SeedableRng};
    let env = Env::new();
    env.pool("tank", "256M");
    env.pool("dst", "256M");
    // 5 MiB: random data around a 1 MiB run of zeroes.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(6);
    let mut image = vec![0u8; 5 << 20];
    rng.fill(&mut image[..2 << 20]);
    rng.fill(&mut image[3 << 20..]);
    let src = env.path("src.img");
    std::fs::write(&src, &image).unwrap();
    env.run(["vol", "import", src.to_str().unwrap(), "tank/img"])
        .ok();

    let server = NfsServer::start(&env.home(), "tank", &[]);
    let url = format!("nfs://127.0.0.1:{}/tank/img", server.port);
    env.run(["vol", "import", &url, "dst/copy"]).ok();
    // A missing source fails and leaves nothing behind.
    let missing = format!("nfs://127.0.0.1:{}/tank/nope", server.port);
    assert_ne!(env.run(["vol", "import", &missing, "dst/nope"]).code, 0);
    drop(server);
    assert_ne!(env.run(["vol", "export", "dst/nope", "-"]).code, 0);

    let out = env.path("copy.img");
    env.run(["vol", "export", "dst/copy", out.to_str().unwrap()])
        .ok();
    let copy = std::fs::read(&out).unwrap();
    let orig = env.path("orig.img");
    env.run(["vol", "export", "tank/img", orig.to_str().unwrap()])
        .ok();
    let orig = std::fs::read(&orig).unwrap();
    assert_eq!(copy.len(), orig.len());
    assert!(copy == orig, "imported image differs from the served one");
    assert!(
        copy == image,
        "imported image differs from the original file"
    );
}

/// `tarn nfs serve` answers UNSTABLE and may lose those writes when it dies; an NfsDisk keeps
/// copies until a good COMMIT, so a flush after the server restarted (new write verifier)
/// resends them and the guest never sees the crash. The bytes then survive another crash.
#[test]
fn nfs_disk_resends_unstable_writes_after_a_server_crash() {
    use zvol::BlockBackend;
    let env = Env::new();
    env.pool("tank", "256M");
    env.run(["vol", "create", "tank/vol", "--size", "16M"]).ok();
    let home = env.home();
    let mut srv = NfsServer::start(&home, "tank", &[]);
    let port = srv.port;
    let url = format!("nfs://127.0.0.1:{port}/tank/vol");
    let disk = nfs::NfsDisk::connect(&url, false).unwrap();
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8 | 1).collect();
    disk.write_at(1 << 20, &big).unwrap();
    disk.write_at(12_345, b"small unstable write").unwrap();
    // A crash before any COMMIT: the server's open txg (if it had not synced yet) is gone.
    srv.kill9();
    let mut srv = NfsServer::start_on(&home, "tank", &format!("127.0.0.1:{port}"), &[]);
    disk.flush().unwrap();
    let check = |disk: &nfs::NfsDisk| {
        let mut back = vec![0u8; big.len()];
        disk.read_at(1 << 20, &mut back).unwrap();
        assert!(back == big, "the large write did not survive");
        let mut small = [0u8; 20];
        disk.read_at(12_345, &mut small).unwrap();
        assert_eq!(&small, b"small unstable write");
    };
    check(&disk);
    // Flushed means durable: another crash keeps every byte.
    srv.kill9();
    let _srv = NfsServer::start_on(&home, "tank", &format!("127.0.0.1:{port}"), &[]);
    let fresh = nfs::NfsDisk::connect(&url, false).unwrap();
    check(&fresh);
    drop(disk);
}
