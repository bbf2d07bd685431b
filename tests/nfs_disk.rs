//! NFS-backed disks end to end: `tarn vol import nfs://127.0.0.1:PORT/POOL/VOL POOL2/NAME`
//! against `tarn nfs serve`, compared byte for byte with `tarn vol export`. Loopback only;
//! every wait is bounded; the server is stopped by its PID.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// `tarn nfs serve` on a free loopback port; SIGTERM (then SIGKILL) by PID on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(env: &Env, pool: &str) -> Server {
        let mut child = Command::new(TARN)
            .args(["nfs", "serve", pool, "--listen", "127.0.0.1:0"])
            .env("TARN_HOME", env.path("home"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("127.0.0.1:"))
            .and_then(|p| {
                p.trim_end_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's PID.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
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

    let server = Server::start(&env, "tank");
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
