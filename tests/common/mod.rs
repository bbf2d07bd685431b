//! Helpers for end-to-end tests of the `tarn` binary: each test gets its own `$TARN_HOME`
//! and temporary directory.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// One test's world: a temporary directory holding `home/` (the registry) and its files.
pub struct Env {
    pub dir: tempfile::TempDir,
}

/// A finished command.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "command failed\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Asserts a failure reported as exactly one `tarn: ` line on stderr containing `needle`.
    #[track_caller]
    pub fn fails_with(&self, needle: &str) {
        assert_ne!(
            self.code, 0,
            "command should have failed\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one line on stderr, got: {:?}",
            self.stderr
        );
        assert!(
            lines[0].starts_with("tarn: "),
            "stderr should start with 'tarn: ': {:?}",
            lines[0]
        );
        assert!(
            lines[0].to_lowercase().contains(&needle.to_lowercase()),
            "stderr {:?} should mention {needle:?}",
            lines[0]
        );
    }

    /// Parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        Env { dir }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A `tarn` command with this test's `$TARN_HOME`.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tarn"));
        c.args(args)
            .env("TARN_HOME", self.home())
            .env_remove("TARN_LOG")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    /// Runs `tarn ARGS` to completion.
    pub fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Run::from(self.cmd(args).output().expect("running tarn"))
    }

    /// Runs `tarn ARGS` with `input` on stdin through a pipe.
    pub fn run_stdin<I, S>(&self, args: I, input: &[u8]) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning tarn");
        let mut stdin = child.stdin.take().expect("stdin");
        let data = input.to_vec();
        let feeder = std::thread::spawn(move || {
            // The command may stop reading early (that is what some tests check).
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output().expect("waiting for tarn");
        let _ = feeder.join();
        Run::from(out)
    }

    /// `tarn pool create NAME FILE --size SIZE`, returning the pool file's path.
    pub fn pool(&self, name: &str, size: &str) -> PathBuf {
        let p = self.path(&format!("{name}.tarn"));
        self.run([
            "pool",
            "create",
            name,
            p.to_str().expect("utf-8 path"),
            "--size",
            size,
        ])
        .ok();
        p
    }

    /// Writes `data` to a new file in the test directory.
    pub fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, data).expect("writing test file");
        p
    }

    /// Imports `data` into volume `full` from a file.
    pub fn import(&self, full: &str, data: &[u8]) {
        let f = self.file(&format!("{}.img", full.replace('/', "_")), data);
        self.run(["vol", "import", f.to_str().expect("utf-8"), full])
            .ok();
    }

    /// A new FIFO `name` in the test directory.
    pub fn fifo(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        let c = std::ffi::CString::new(p.to_str().expect("utf-8")).expect("path");
        // SAFETY: mkfifo(3) of a NUL-terminated path in our own directory.
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "mkfifo {name}");
        p
    }

    /// Exports volume `full` and returns its bytes.
    pub fn export(&self, full: &str) -> Vec<u8> {
        let out = self.path(&format!("{}.out", full.replace('/', "_")));
        self.run(["vol", "export", full, out.to_str().expect("utf-8")])
            .ok();
        let b = std::fs::read(&out).expect("reading export");
        std::fs::remove_file(&out).expect("removing export");
        b
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The whole content of a file (pool files here are small and sparse).
pub fn snapshot(p: &Path) -> Vec<u8> {
    std::fs::read(p).expect("reading file")
}

/// Asserts two byte strings are equal without printing megabytes.
#[track_caller]
pub fn same_bytes(a: &[u8], b: &[u8], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!("{what}: first difference at byte {i}");
    }
}

/// Bytes a file has allocated on disk.
pub fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).expect("metadata").blocks() * 512
}

/// Finds `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The PID holding the pool lock on `p` (the holder's POSIX read lock on byte 0), if any.
/// Only asks: takes no lock itself.
pub fn lock_holder(p: &Path) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(p).ok()?;
    // SAFETY: flock is plain old data; all-zero is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 1;
    // SAFETY: F_GETLK fills the struct we pass.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
    (rc == 0 && fl.l_type != libc::F_UNLCK as libc::c_short).then_some(fl.l_pid)
}

/// `tarn nfs serve POOL --listen ADDR ARGS…` for the registry at `home`, on the port it
/// reports; stopped by SIGTERM (then SIGKILL after 10 s) on drop, so the pool is closed.
pub struct NfsServer {
    child: std::process::Child,
    /// The TCP port it serves NFSv3, MOUNT and the portmapper on.
    pub port: u16,
}

impl NfsServer {
    /// Starts the server on a free loopback port and waits for its "serving" line.
    pub fn start(home: &Path, pool: &str, args: &[&str]) -> NfsServer {
        Self::start_on(home, pool, "127.0.0.1:0", args)
    }

    /// Starts the server listening on `listen` and waits for its "serving" line.
    pub fn start_on(home: &Path, pool: &str, listen: &str, args: &[&str]) -> NfsServer {
        Self::spawn(home, pool, listen, args, None)
    }

    /// Starts the server on a free loopback port with its address space limited to
    /// `limit` bytes (RLIMIT_AS, as `ulimit -v`): an allocation past it fails, which aborts.
    pub fn start_limited(home: &Path, pool: &str, args: &[&str], limit: u64) -> NfsServer {
        Self::spawn(home, pool, "127.0.0.1:0", args, Some(limit))
    }

    fn spawn(
        home: &Path,
        pool: &str,
        listen: &str,
        args: &[&str],
        as_limit: Option<u64>,
    ) -> NfsServer {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tarn"));
        if let Some(limit) = as_limit {
            // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
            unsafe {
                cmd.pre_exec(move || {
                    let r = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_AS, &r) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd
            .args(["nfs", "serve", pool, "--listen", listen])
            .args(args)
            .env("TARN_HOME", home)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning tarn nfs serve");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("reading the server's first line");
        // "serving pool P on ADDR:PORT (…": the one word with a colon (IPv6 addresses come
        // bracketed).
        let port = line
            .split_whitespace()
            .find_map(|w| w.rsplit_once(':'))
            .and_then(|(_, p)| {
                p.trim_end_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        NfsServer { child, port }
    }

    /// A libnfs URL for `path` (starting with `/`, or empty) in the export of `pool`.
    pub fn url(&self, pool: &str, path: &str) -> String {
        format!(
            "nfs://127.0.0.1/{pool}{path}?version=3&nfsport={p}&mountport={p}",
            p = self.port
        )
    }

    /// Kills the server with SIGKILL (a crash: nothing is committed on the way out).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server (SIGTERM; SIGKILL after 10 s) and returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        // SAFETY: kill(2) on our own child's PID.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_secs(10) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.kill9();
        false
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}
