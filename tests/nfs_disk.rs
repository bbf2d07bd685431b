//! NFS-backed disks end to end: `tarn vol import nfs://127.0.0.1:PORT/POOL/VOL POOL2/NAME`
//! against `tarn nfs serve`, compared byte for byte with `tarn vol export`. Loopback only;
//! every wait is bounded; the server is stopped by its PID.

#![allow(clippy::unwrap_used)]

mod common;

use common::NfsServer;
use std::path::PathBuf;
use std::process::{Command, Output};

const TARN: &str = env!("CARGO_BIN_EXE_tarn");

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn tarn(&self, args: &[&str]) -> Output {
        Command::new(TARN)
            .args(args)
            .env("TARN_HOME", self.path("home"))
            .output()
            .unwrap()
    }
    fn ok(&self, args: &[&str]) -> Output {
        let o = self.tarn(args);
        assert!(
            o.status.success(),
            "tarn {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }
    fn pool(&self, name: &str) {
        let file = self.path(&format!("{name}.pool"));
        self.ok(&["pool", "create", name, file.to_str().unwrap(), "-s", "256M"]);
    }
}

#[test]
fn vol_import_from_nfs_matches_export() {
    use rand::{Rng, SeedableRng};
    let env = Env {
        dir: tempfile::tempdir().unwrap(),
    };
    env.pool("tank");
    env.pool("dst");
    // 5 MiB: random data around a 1 MiB run of zeroes.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(6);
    let mut image = vec![0u8; 5 << 20];
    rng.fill(&mut image[..2 << 20]);
    rng.fill(&mut image[3 << 20..]);
    let src = env.path("src.img");
    std::fs::write(&src, &image).unwrap();
    env.ok(&["vol", "import", src.to_str().unwrap(), "tank/img"]);

    let server = NfsServer::start(&env.path("home"), "tank", &[]);
    let url = format!("nfs://127.0.0.1:{}/tank/img", server.port);
    env.ok(&["vol", "import", &url, "dst/copy"]);
    // A missing source fails and leaves nothing behind.
    let missing = format!("nfs://127.0.0.1:{}/tank/nope", server.port);
    let o = env.tarn(&["vol", "import", &missing, "dst/nope"]);
    assert!(!o.status.success());
    drop(server);
    assert!(!env
        .tarn(&["vol", "export", "dst/nope", "-"])
        .status
        .success());

    let out = env.path("copy.img");
    env.ok(&["vol", "export", "dst/copy", out.to_str().unwrap()]);
    let copy = std::fs::read(&out).unwrap();
    let orig = env.path("orig.img");
    env.ok(&["vol", "export", "tank/img", orig.to_str().unwrap()]);
    let orig = std::fs::read(&orig).unwrap();
    assert_eq!(copy.len(), orig.len());
    assert!(copy == orig, "imported image differs from the served one");
    assert!(
        copy == image,
        "imported image differs from the original file"
    );
}
