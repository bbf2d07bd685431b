//! `tarn nfs serve` against a real NFSv3 client: Debian's libnfs-utils (`nfs-ls`, `nfs-cat`,
//! `nfs-cp`). Each test skips, saying so, when those tools are missing
//! (`apt-get install -y libnfs-utils`). Loopback only; every wait is bounded.

#![allow(clippy::unwrap_used)]

mod common;

use common::NfsServer;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn have_libnfs() -> bool {
    let ok = Command::new("nfs-ls")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        eprintln!("SKIPPED: libnfs-utils (nfs-ls, nfs-cat, nfs-cp) is not installed; apt-get install -y libnfs-utils");
    }
    ok
}

/// A test's world (`common::Env`) with the pool `tank` (1 GiB) in it.
struct Env(common::Env);

impl Env {
    fn new() -> Env {
        let e = Env(common::Env::new());
        e.0.pool("tank", "1G");
        e
    }
    fn path(&self, p: &str) -> PathBuf {
        self.0.path(p)
    }
    fn tarn(&self, args: &[&str]) -> Output {
        self.0.cmd(args).output().unwrap()
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
    fn serve(&self, extra: &[&str]) -> Server {
        self.serve_on("127.0.0.1:0", extra)
    }
    fn serve_on(&self, listen: &str, extra: &[&str]) -> Server {
        Server(NfsServer::start_on(
            &self.path("home"),
            "tank",
            listen,
            extra,
        ))
    }
}

/// The server of this file's pool, `tank`.
struct Server(NfsServer);

impl std::ops::Deref for Server {
    type Target = NfsServer;
    fn deref(&self) -> &NfsServer {
        &self.0
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        self.0.url("tank", path)
    }
    fn kill9(&mut self) {
        self.0.kill9();
    }
}

fn run(cmd: &str, args: &[&str]) -> Output {
    // nfs tools have no timeout of their own: bound them.
    Command::new("timeout")
        .arg("60")
        .arg(cmd)
        .args(args)
        .output()
        .unwrap()
}

fn random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    // A hole in the middle.
    let mid = len / 2;
    v[mid..mid + len / 8].fill(0);
    std::fs::write(path, &v).unwrap();
    v
}

#[test]
fn list_read_matches_export_and_copy_in() {
    if !have_libnfs() {
        return;
    }
    let e = Env::new();
    let img = random_file(&e.path("img"), 3 << 20, 1);
    e.ok(&[
        "vol",
        "import",
        e.path("img").to_str().unwrap(),
        "tank/vms/web",
    ]);
    e.ok(&["vol", "create", "tank/empty", "-s", "8M"]);
    e.ok(&[
        "vol",
        "export",
        "tank/vms/web",
        e.path("exported").to_str().unwrap(),
    ]);
    let srv = e.serve(&[]);

    let ls = run("nfs-ls", &[&srv.url("")]);
    let out = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success(), "{ls:?}");
    assert!(out.contains(" vms") && out.contains(" empty"), "{out}");
    assert!(out.contains("8388608"), "{out}");
    let ls = run("nfs-ls", &[&srv.url("/vms")]);
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains(" web"),
        "{ls:?}"
    );

    // Reading a volume gives exactly what `tarn vol export` gives.
    let cat = run("nfs-cat", &[&srv.url("/vms/web")]);
    assert!(cat.status.success());
    assert_eq!(cat.stdout, std::fs::read(e.path("exported")).unwrap());
    assert_eq!(&cat.stdout[..img.len()], &img[..]);
    // A thin volume reads as zeroes.
    let cat = run("nfs-cat", &[&srv.url("/empty")]);
    assert_eq!(cat.stdout.len(), 8 << 20);
    assert!(cat.stdout.iter().all(|b| *b == 0));

    // Copying an image in makes a volume; it reads back identical, over NFS and locally.
    let new = random_file(&e.path("new"), 5 << 20, 2);
    let cp = run(
        "nfs-cp",
        &[e.path("new").to_str().unwrap(), &srv.url("/vms/new")],
    );
    assert!(cp.status.success(), "{cp:?}");
    let cat = run("nfs-cat", &[&srv.url("/vms/new")]);
    assert_eq!(cat.stdout, new);
    // The target exists now: nfs-cp creates exclusively.
    let again = run(
        "nfs-cp",
        &[e.path("new").to_str().unwrap(), &srv.url("/vms/new")],
    );
    assert!(!again.status.success());
    drop(srv);
    e.ok(&[
        "vol",
        "export",
        "tank/vms/new",
        e.path("new.out").to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(e.path("new.out")).unwrap(), new);
}

#[test]
fn read_only_and_allow() {
    if !have_libnfs() {
        return;
    }
    let e = Env::new();
    e.ok(&["vol", "create", "tank/v", "-s", "1M"]);
    random_file(&e.path("f"), 1 << 20, 3);
    {
        let srv = e.serve(&["--read-only"]);
        assert!(run("nfs-ls", &[&srv.url("")]).status.success());
        assert!(run("nfs-cat", &[&srv.url("/v")]).status.success());
        let cp = run("nfs-cp", &[e.path("f").to_str().unwrap(), &srv.url("/f")]);
        assert!(!cp.status.success(), "read-only export accepted a file");
    }
    let l = e.ok(&["list", "-H", "-o", "name"]);
    assert!(!String::from_utf8_lossy(&l.stdout).contains("tank/f"));
    {
        // Only 10.0.0.0/8 may connect: loopback gets nothing, not even one byte.
        let srv = e.serve(&["--allow", "10.0.0.0/8"]);
        let ls = run("nfs-ls", &[&srv.url("")]);
        assert!(!ls.status.success());
        let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&null_call(1));
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "a refused peer got a reply");
    }
    {
        let srv = e.serve(&["--allow", "10.0.0.0/8", "--allow", "127.0.0.0/8"]);
        assert!(run("nfs-ls", &[&srv.url("")]).status.success());
    }
}

/// An RPC record holding a NULL call to NFSv3.
fn null_call(xid: u32) -> Vec<u8> {
    let mut body = Vec::new();
    for w in [xid, 0, 2, 100_003, 3, 0, 0, 0, 0, 0] {
        body.extend_from_slice(&w.to_be_bytes());
    }
    let mut rec = (0x8000_0000u32 | body.len() as u32).to_be_bytes().to_vec();
    rec.extend_from_slice(&body);
    rec
}

fn expect_reply(s: &mut TcpStream, xid: u32) {
    let mut hdr = [0u8; 8];
    s.read_exact(&mut hdr).unwrap();
    assert_eq!(u32::from_be_bytes(hdr[4..8].try_into().unwrap()), xid);
    let len = (u32::from_be_bytes(hdr[..4].try_into().unwrap()) & 0x7fff_ffff) as usize;
    let mut rest = vec![0u8; len - 4];
    s.read_exact(&mut rest).unwrap();
}

fn expect_closed(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 256];
    let t = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) if t.elapsed() < Duration::from_secs(10) => continue,
            Ok(_) => panic!("connection still open"),
        }
    }
}

#[test]
fn garbage_and_truncated_records_drop_only_that_connection() {
    if !have_libnfs() {
        return;
    }
    let e = Env::new();
    e.ok(&["vol", "create", "tank/v", "-s", "1M"]);
    let srv = e.serve(&[]);
    let mut good = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    good.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    good.write_all(&null_call(7)).unwrap();
    expect_reply(&mut good, 7);

    // A record announcing 2 GiB.
    let mut huge = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    huge.write_all(&0xffff_ff00u32.to_be_bytes()).unwrap();
    huge.write_all(&[0xab; 4096]).unwrap();
    expect_closed(&mut huge);

    // Garbage inside a well-framed record.
    let mut junk = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    let mut rec = 0x8000_0010u32.to_be_bytes().to_vec();
    rec.extend_from_slice(&[0x5a; 16]);
    junk.write_all(&rec).unwrap();
    expect_closed(&mut junk);

    // A truncated record, then the peer goes away.
    {
        let mut t = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        t.write_all(&0x8000_0100u32.to_be_bytes()).unwrap();
        t.write_all(&[1, 2, 3]).unwrap();
    }

    // The other connection and new clients still work.
    good.write_all(&null_call(8)).unwrap();
    expect_reply(&mut good, 8);
    assert!(run("nfs-ls", &[&srv.url("")]).status.success());
}

/// An RPC record (one fragment) of these big-endian words followed by `tail`.
fn record(words: &[u32], tail: &[u8]) -> Vec<u8> {
    let mut body: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    body.extend_from_slice(tail);
    let mut rec = (0x8000_0000u32 | body.len() as u32).to_be_bytes().to_vec();
    rec.extend_from_slice(&body);
    rec
}

/// Requests whose XDR lengths claim far more than their record holds: an AUTH_UNIX credential
/// with 2^32 - 1 gids (16 GiB of them), a credential body of 4 GiB. A server limited to 3 GiB
/// of address space refuses them without allocating what they claim (it used to allocate it
/// and, where that failed, abort for every client) and serves on.
#[test]
fn lengths_a_request_claims_are_not_allocated() {
    let e = Env::new();
    let srv = NfsServer::start_limited(&e.path("home"), "tank", &[], 3 << 30);
    // NULL calls: xid, CALL, RPC version 2, NFS, version 3, procedure 0, then the credential.
    let call = [1u32, 0, 2, 100_003, 3, 0];
    let gids = [&call[..], &[1, 20, 0, 1, 0x6800_0000, 0, 0, 0xffff_ffff]].concat();
    let body = [&call[..], &[1, 0xffff_fff0]].concat();
    for words in [gids, body] {
        let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        s.write_all(&record(&words, &[])).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // A reply (GARBAGE_ARGS) or a closed connection: either way, nothing allocated.
        let _ = s.read(&mut [0u8; 64]);
    }
    let mut good = TcpStream::connect(("127.0.0.1", srv.port)).expect("the server is up");
    good.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    good.write_all(&null_call(9)).unwrap();
    expect_reply(&mut good, 9);
}

/// XDR opaque: length, bytes, padding.
fn opaque(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v.resize(v.len().next_multiple_of(4), 0);
    v
}

/// Sends call `xid` (AUTH_NULL) of `prog`/`vers`/`proc_` with `args`; returns the reply's
/// results (after the accepted-reply header), or `None` if none came within 3 s.
fn rpc(s: &mut TcpStream, xid: u32, prog: u32, proc_: u32, args: &[u8]) -> Option<Vec<u8>> {
    s.write_all(&record(&[xid, 0, 2, prog, 3, proc_, 0, 0, 0, 0], args))
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut hdr = [0u8; 4];
    s.read_exact(&mut hdr).ok()?;
    let len = (u32::from_be_bytes(hdr) & 0x7fff_ffff) as usize;
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).unwrap();
    assert_eq!(u32::from_be_bytes(rest[..4].try_into().unwrap()), xid);
    // xid, REPLY, MSG_ACCEPTED, verifier (flavor, empty body), SUCCESS.
    Some(rest[24..].to_vec())
}

/// A call seen again (a client that lost its connection sends it again on the next, as Linux
/// does) gets a reply: one that must not run twice (REMOVE) the reply it had, one that may
/// (NULL) runs again. Upstream dropped every such call for a minute, stalling the client.
#[test]
fn a_retransmitted_call_gets_its_reply() {
    let e = Env::new();
    e.ok(&["vol", "create", "tank/gone", "-s", "1M"]);
    let srv = e.serve(&[]);
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    let mnt = rpc(&mut s, 1, 100_005, 1, &opaque(b"/tank")).expect("MOUNT");
    assert_eq!(&mnt[..4], &[0; 4], "mount status");
    let fh_len = u32::from_be_bytes(mnt[4..8].try_into().unwrap()) as usize;
    let root = &mnt[8..8 + fh_len];
    let remove = [opaque(root), opaque(b"gone")].concat();
    for attempt in 0..2 {
        let r = rpc(&mut s, 77, 100_003, 12, &remove).expect("a reply to REMOVE");
        assert_eq!(&r[..4], &[0; 4], "REMOVE attempt {attempt}: NFS3_OK");
    }
    let r = rpc(&mut s, 78, 100_003, 12, &remove).expect("a reply");
    assert_eq!(
        u32::from_be_bytes(r[..4].try_into().unwrap()),
        2,
        "a new REMOVE: NOENT"
    );
    for _ in 0..2 {
        rpc(&mut s, 79, 100_003, 0, &[]).expect("a reply to NULL");
    }
}

/// An IPv6 address to listen on (the port after the last colon, the address bracketed):
/// upstream split at the first colon and refused every IPv6 address as a bad port.
#[test]
fn serves_on_ipv6_loopback() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: this host has no IPv6 loopback");
        return;
    }
    let e = Env::new();
    let srv = e.serve_on("[::1]:0", &[]);
    let mut s = TcpStream::connect(("::1", srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&null_call(5)).unwrap();
    expect_reply(&mut s, 5);
}

#[test]
fn sixteen_clients_at_once() {
    if !have_libnfs() {
        return;
    }
    let e = Env::new();
    let img = random_file(&e.path("img"), 2 << 20, 4);
    e.ok(&["vol", "import", e.path("img").to_str().unwrap(), "tank/src"]);
    let srv = e.serve(&[]);
    let url_src = srv.url("/src");
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let url_src = url_src.clone();
            let url_dst = srv.url(&format!("/c{i}"));
            let file = e.path("img");
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    run("nfs-cat", &[&url_src]).stdout
                } else {
                    let cp = run("nfs-cp", &[file.to_str().unwrap(), &url_dst]);
                    assert!(cp.status.success(), "{cp:?}");
                    run("nfs-cat", &[&url_dst]).stdout
                }
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), img);
    }
}

/// SIGKILL mid-`nfs-cp`, restart on the same port. libnfs 4.0 writes UNSTABLE and never looks
/// at the write verifier, so it would not resend what a crash lost from the pool's open txg:
/// the server runs with `--sync` (every WRITE durable before its reply), and then no
/// acknowledged byte may be lost. (The default mode's guarantee, a changed verifier and intact
/// data after the resend, is `restart_between_unstable_writes_and_commit_changes_the_verifier`.)
#[test]
fn restart_mid_copy_keeps_handles_and_acknowledged_bytes() {
    if !have_libnfs() {
        return;
    }
    let e = Env::new();
    let data = random_file(&e.path("big"), 48 << 20, 5);
    let mut srv = e.serve(&["--sync"]);
    let port = srv.port;
    let listen = format!("127.0.0.1:{port}");
    let mut cp = Command::new("timeout")
        .args([
            "120",
            "nfs-cp",
            e.path("big").to_str().unwrap(),
            &srv.url("/big"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the volume exists and has grown a little, then kill the server hard.
    let t = Instant::now();
    loop {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "copy made no progress"
        );
        let ls = run("nfs-ls", &[&srv.url("")]);
        let out = String::from_utf8_lossy(&ls.stdout).to_string();
        let size = out
            .lines()
            .find(|l| l.ends_with(" big"))
            .and_then(|l| l.split_whitespace().nth(4))
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        if size >= 4 << 20 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    srv.kill9();
    let srv2 = e.serve_on(&listen, &["--sync"]);
    let status = cp.wait().unwrap();
    let mut err = String::new();
    cp.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let back = run("nfs-cat", &[&srv2.url("/big")]).stdout;
    if status.success() {
        // The client reconnected with its old handles and finished: every byte is there.
        assert_eq!(back.len(), data.len());
        assert!(back == data, "content differs after restart");
    } else {
        // The client gave up: what the volume holds is a prefix of the data (everything the
        // server acknowledged before the kill), zeroes after it.
        eprintln!("nfs-cp did not survive the restart: {err}");
        let good = back.iter().zip(&data).take_while(|(a, b)| a == b).count();
        assert!(
            good >= 2 << 20,
            "acknowledged bytes lost: only {good} survive"
        );
    }
    // Handles from before the restart still work: a raw LOOKUP is not needed for that, the
    // client above used its old root handle; check also that a new client sees the file.
    assert!(run("nfs-ls", &[&srv2.url("")]).status.success());
}

/// A client that checks the write verifier (`nfs3_client`, driven by hand as the Linux client
/// does it): UNSTABLE writes, then the server is killed (SIGKILL: the pool's open txg is lost)
/// and restarted before the COMMIT. The COMMIT's verifier differs from the WRITEs', so the
/// client sends the writes again and commits; the data is then intact, and survives another
/// SIGKILL.
#[test]
fn restart_between_unstable_writes_and_commit_changes_the_verifier() {
    use nfs3_client::nfs3_types::nfs3::{
        createhow3, diropargs3, nfs_fh3, post_op_fh3, sattr3, stable_how, writeverf3, COMMIT3args,
        CREATE3args, READ3args, WRITE3args,
    };
    use nfs3_client::nfs3_types::xdr_codec::Opaque;
    use nfs3_client::tokio::TokioConnector;
    use nfs3_client::Nfs3ConnectionBuilder;

    let e = Env::new();
    let mut srv = e.serve(&[]);
    let port = srv.port;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let connect = || {
        rt.block_on(
            Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", "/tank")
                .connect_from_privileged_port(false)
                .mount_port(port)
                .nfs3_port(port)
                .mount(),
        )
        .unwrap()
    };
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    // WRITEs every chunk UNSTABLE; returns the verifier they all came back with.
    let write_all = |conn: &mut nfs3_client::Nfs3Connection<_>, fh: &nfs_fh3| -> writeverf3 {
        let mut verf = None;
        for (i, chunk) in data.chunks(1 << 20).enumerate() {
            let w = rt
                .block_on(conn.write(&WRITE3args {
                    file: fh.clone(),
                    offset: (i << 20) as u64,
                    count: chunk.len() as u32,
                    stable: stable_how::UNSTABLE,
                    data: Opaque::borrowed(chunk),
                }))
                .unwrap()
                .unwrap();
            assert_eq!(
                w.committed,
                stable_how::UNSTABLE,
                "an UNSTABLE write was synced"
            );
            assert_eq!(
                *verf.get_or_insert(w.verf),
                w.verf,
                "verifier changed mid-run"
            );
        }
        verf.unwrap()
    };
    let commit = |conn: &mut nfs3_client::Nfs3Connection<_>, fh: &nfs_fh3| -> writeverf3 {
        rt.block_on(conn.commit(&COMMIT3args {
            file: fh.clone(),
            offset: 0,
            count: 0,
        }))
        .unwrap()
        .unwrap()
        .verf
    };

    let mut conn = connect();
    let root = conn.root_nfs_fh3();
    let created = rt
        .block_on(conn.create(&CREATE3args {
            where_: diropargs3 {
                dir: root,
                name: b"u".to_vec().into(),
            },
            how: createhow3::GUARDED(sattr3::default()),
        }))
        .unwrap()
        .unwrap();
    let post_op_fh3::Some(fh) = created.obj else {
        panic!("no handle")
    };
    let before = write_all(&mut conn, &fh);
    drop(conn);
    srv.kill9();
    let mut srv = e.serve_on(&format!("127.0.0.1:{port}"), &[]);
    let mut conn = connect();
    // The old handle still works, but the verifier is new: what was written may be gone.
    let after = commit(&mut conn, &fh);
    assert_ne!(before, after, "a restart kept the write verifier");
    // Send it all again; this time the COMMIT matches.
    let again = write_all(&mut conn, &fh);
    assert_eq!(again, after);
    assert_eq!(commit(&mut conn, &fh), after);
    drop(conn);
    srv.kill9();
    let srv = e.serve_on(&format!("127.0.0.1:{port}"), &[]);
    let mut conn = connect();
    let mut back = Vec::new();
    while back.len() < data.len() {
        let r = rt
            .block_on(conn.read(&READ3args {
                file: fh.clone(),
                offset: back.len() as u64,
                count: 1 << 20,
            }))
            .unwrap()
            .unwrap();
        assert!(!r.data.is_empty(), "short file after the commit");
        back.extend_from_slice(&r.data);
    }
    assert!(
        back == data,
        "committed data differs after SIGKILL and restart"
    );
    drop(srv);
}

/// `--sync`: every WRITE is durable before its reply, UNSTABLE ones included.
#[test]
fn sync_flag_answers_file_sync() {
    use nfs3_client::nfs3_types::nfs3::{
        createhow3, diropargs3, post_op_fh3, sattr3, stable_how, CREATE3args, WRITE3args,
    };
    use nfs3_client::nfs3_types::xdr_codec::Opaque;
    use nfs3_client::tokio::TokioConnector;
    use nfs3_client::Nfs3ConnectionBuilder;

    let e = Env::new();
    let srv = e.serve(&["--sync"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut conn = rt
        .block_on(
            Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", "/tank")
                .connect_from_privileged_port(false)
                .mount_port(srv.port)
                .nfs3_port(srv.port)
                .mount(),
        )
        .unwrap();
    let root = conn.root_nfs_fh3();
    let created = rt
        .block_on(conn.create(&CREATE3args {
            where_: diropargs3 {
                dir: root,
                name: b"s".to_vec().into(),
            },
            how: createhow3::GUARDED(sattr3::default()),
        }))
        .unwrap()
        .unwrap();
    let post_op_fh3::Some(fh) = created.obj else {
        panic!("no handle")
    };
    let w = rt
        .block_on(conn.write(&WRITE3args {
            file: fh,
            offset: 0,
            count: 4096,
            stable: stable_how::UNSTABLE,
            data: Opaque::borrowed(&[7u8; 4096]),
        }))
        .unwrap()
        .unwrap();
    assert_eq!(w.committed, stable_how::FILE_SYNC);
}

/// A server whose stdout is gone serves all the same: its "serving" line used to panic the
/// process (exit 101) when stdout was full or a closed pipe.
#[test]
fn a_server_without_stdout_keeps_serving() {
    let e = Env::new();
    let mut child =
        e.0.cmd(["nfs", "serve", "tank", "--listen", "127.0.0.1:0"])
            .stdout(
                std::fs::File::options()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
            )
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let running = child.try_wait().unwrap().is_none();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(running, "the server ended: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
