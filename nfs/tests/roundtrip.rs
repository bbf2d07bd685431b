//! Round trips through `nfs3_client` against the in-process server: create, write (UNSTABLE
//! and FILE_SYNC, each answered as asked), COMMIT, read back, FSSTAT, and handles that survive
//! a server restart while the write verifier does not.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::new_pool;
use nfs::{FileView, ServeConfig, Server, ViewOptions};
use nfs3_client::nfs3_types::nfs3::{
    createhow3, diropargs3, nfs_fh3, post_op_fh3, sattr3, stable_how, COMMIT3args, CREATE3args,
    FSSTAT3args, GETATTR3args, Nfs3Result, READ3args, WRITE3args,
};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_client::{Nfs3Connection, Nfs3ConnectionBuilder};
use pool::Pool;
use std::sync::Arc;

async fn start(pool: Arc<Pool>, port: u16) -> (u16, tokio::task::JoinHandle<()>) {
    start_limited(pool, port, Default::default()).await
}

async fn start_limited(
    pool: Arc<Pool>,
    port: u16,
    limits: nfs::ConnectionLimits,
) -> (u16, tokio::task::JoinHandle<()>) {
    let view = Arc::new(FileView::new(pool, ViewOptions::default()));
    let server = Server::bind(
        view,
        &ServeConfig {
            listen: format!("127.0.0.1:{port}"),
            allow: Vec::new(),
            sync_writes: false,
            limits,
        },
    )
    .await
    .unwrap();
    let port = server.local_addr().port();
    let task = tokio::spawn(async move {
        let _ = server.run().await;
    });
    (port, task)
}

/// MOUNTs `/tank` from the server on `port` (NFS and MOUNT on the same port).
async fn mount(port: u16) -> Nfs3Connection<TokioIo<tokio::net::TcpStream>> {
    Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", "/tank")
        .connect_from_privileged_port(false)
        .mount_port(port)
        .nfs3_port(port)
        .mount()
        .await
        .unwrap()
}

/// Creates the file `name` in `dir` (GUARDED) and returns its handle.
async fn create_file(
    conn: &mut Nfs3Connection<TokioIo<tokio::net::TcpStream>>,
    dir: &nfs_fh3,
    name: &[u8],
) -> nfs_fh3 {
    let created = conn
        .create(&CREATE3args {
            where_: diropargs3 {
                dir: dir.clone(),
                name: name.to_vec().into(),
            },
            how: createhow3::GUARDED(sattr3::default()),
        })
        .await
        .unwrap()
        .unwrap();
    let post_op_fh3::Some(fh) = created.obj else {
        panic!("no handle")
    };
    fh
}

/// The handle of `name` in `dir` (LOOKUP; it must exist).
async fn lookup(
    conn: &mut Nfs3Connection<TokioIo<tokio::net::TcpStream>>,
    dir: nfs_fh3,
    name: &[u8],
) -> nfs_fh3 {
    conn.lookup(&nfs3_client::nfs3_types::nfs3::LOOKUP3args {
        what: diropargs3 {
            dir,
            name: name.to_vec().into(),
        },
    })
    .await
    .unwrap()
    .unwrap()
    .object
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_write_read_fsstat_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pool = new_pool(dir.path());
    let (port, task) = start(pool.clone(), 0).await;
    let mut conn = mount(port).await;
    let root = conn.root_nfs_fh3();

    let fh = create_file(&mut conn, &root, b"disk").await;
    let data: Vec<u8> = (0..(1u32 << 20) + 4096).map(|i| (i % 251) as u8).collect();
    let mut off = 0u64;
    let mut verf = None;
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        // The first UNSTABLE, the rest FILE_SYNC: each is answered at the level asked for.
        let stable = if i == 0 {
            stable_how::UNSTABLE
        } else {
            stable_how::FILE_SYNC
        };
        let w = conn
            .write(&WRITE3args {
                file: fh.clone(),
                offset: off,
                count: chunk.len() as u32,
                stable,
                data: Opaque::borrowed(chunk),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(w.committed, stable);
        assert_eq!(
            *verf.get_or_insert(w.verf),
            w.verf,
            "one verifier per start"
        );
        off += chunk.len() as u64;
    }
    let c = conn
        .commit(&COMMIT3args {
            file: fh.clone(),
            offset: 0,
            count: 0,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Some(c.verf), verf);
    let r = conn
        .read(&READ3args {
            file: fh.clone(),
            offset: 0,
            count: 1 << 20,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&r.data[..], &data[..1 << 20]);
    assert!(!r.eof);

    let st = conn
        .fsstat(&FSSTAT3args {
            fsroot: root.clone(),
        })
        .await
        .unwrap()
        .unwrap();
    let info = pool.info();
    assert_eq!(st.tbytes, info.usable);
    assert!(st.abytes <= st.fbytes && st.fbytes <= st.tbytes);

    // Restart the server on the same port: the old handles still work.
    task.abort();
    let _ = task.await;
    let fh_saved: nfs_fh3 = fh.clone();
    drop(conn);
    let (_, task2) = start(pool.clone(), port).await;
    let mut conn = mount(port).await;
    let attr = conn
        .getattr(&GETATTR3args { object: fh_saved })
        .await
        .unwrap();
    let Nfs3Result::Ok(attr) = attr else {
        panic!("old handle refused after restart: {attr:?}")
    };
    assert_eq!(attr.obj_attributes.size, data.len() as u64);
    assert_eq!(conn.root_nfs_fh3(), root);
    // ... but the write verifier is new: a client resends what it had not committed.
    let c = conn
        .commit(&COMMIT3args {
            file: fh.clone(),
            offset: 0,
            count: 0,
        })
        .await
        .unwrap()
        .unwrap();
    assert_ne!(Some(c.verf), verf, "the write verifier survived a restart");
    task2.abort();
}

/// Sequential READs are read ahead; a WRITE to the chunk read ahead must not let the old bytes
/// through, and a reused READ buffer must not leak another file's bytes into holes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_sees_writes_and_reused_buffers_keep_holes_zero() {
    const MIB: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let pool = new_pool(dir.path());
    let (port, task) = start(pool.clone(), 0).await;
    let mut conn = mount(port).await;
    let root = conn.root_nfs_fh3();
    let a = create_file(&mut conn, &root, b"a").await;
    let b = create_file(&mut conn, &root, b"b").await;
    let write =
        async |conn: &mut nfs3_client::Nfs3Connection<_>, fh: &nfs_fh3, off: usize, d: &[u8]| {
            conn.write(&WRITE3args {
                file: fh.clone(),
                offset: off as u64,
                count: d.len() as u32,
                stable: stable_how::UNSTABLE,
                data: Opaque::borrowed(d),
            })
            .await
            .unwrap()
            .unwrap();
        };
    let read = async |conn: &mut nfs3_client::Nfs3Connection<_>, fh: &nfs_fh3, off: usize| {
        conn.read(&READ3args {
            file: fh.clone(),
            offset: off as u64,
            count: MIB as u32,
        })
        .await
        .unwrap()
        .unwrap()
        .data
        .to_vec()
    };
    // a: four chunks of 0x11.
    for i in 0..4 {
        write(&mut conn, &a, i * MIB, &vec![0x11; MIB]).await;
    }
    // Read chunks 0 and 1 (sequential: chunk 2 is now read ahead), then change chunk 2.
    assert!(read(&mut conn, &a, 0).await.iter().all(|&x| x == 0x11));
    assert!(read(&mut conn, &a, MIB).await.iter().all(|&x| x == 0x11));
    write(&mut conn, &a, 2 * MIB, &vec![0x22; MIB]).await;
    let c2 = read(&mut conn, &a, 2 * MIB).await;
    assert!(
        c2.iter().all(|&x| x == 0x22),
        "read-ahead served bytes older than a WRITE"
    );
    assert!(read(&mut conn, &a, 3 * MIB)
        .await
        .iter()
        .all(|&x| x == 0x11));

    // b: data, a hole of a whole chunk and a half, data. Its READs reuse buffers that held a's
    // bytes.
    write(&mut conn, &b, 0, &vec![0x33; MIB]).await;
    write(&mut conn, &b, 2 * MIB + MIB / 2, &vec![0x44; MIB / 2]).await;
    let b0 = read(&mut conn, &b, 0).await;
    let b1 = read(&mut conn, &b, MIB).await;
    let b2 = read(&mut conn, &b, 2 * MIB).await;
    assert!(b0.iter().all(|&x| x == 0x33));
    assert!(b1.iter().all(|&x| x == 0), "a hole read back non-zero");
    assert!(
        b2[..MIB / 2].iter().all(|&x| x == 0),
        "a hole read back non-zero"
    );
    assert!(b2[MIB / 2..].iter().all(|&x| x == 0x44));
    task.abort();
}

/// REMOVE and RMDIR each refuse the other's kind of entry (a client that sent RMDIR for a
/// file destroyed its volume); a WRITE far past the end that would need a volume larger than
/// the host can serve is FBIG and leaves the file as it was; FSINFO says the real limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmdir_remove_and_too_large_writes_are_refused_as_nfs_says() {
    use nfs3_client::nfs3_types::nfs3::{
        nfsstat3, FSINFO3args, MKDIR3args, REMOVE3args, RMDIR3args,
    };
    let dir = tempfile::tempdir().unwrap();
    let pool = new_pool(dir.path());
    let (port, _task) = start(pool.clone(), 0).await;
    let mut conn = mount(port).await;
    let root = conn.root_nfs_fh3();
    let fh = create_file(&mut conn, &root, b"vm").await;
    conn.mkdir(&MKDIR3args {
        where_: diropargs3 {
            dir: root.clone(),
            name: b"d".to_vec().into(),
        },
        attributes: sattr3::default(),
    })
    .await
    .unwrap()
    .unwrap();
    let entry = |name: &[u8]| REMOVE3args {
        object: diropargs3 {
            dir: root.clone(),
            name: name.to_vec().into(),
        },
    };
    let r = conn
        .rmdir(&RMDIR3args {
            object: entry(b"vm").object,
        })
        .await
        .unwrap();
    assert!(
        matches!(r, Nfs3Result::Err((nfsstat3::NFS3ERR_NOTDIR, _))),
        "RMDIR of a file: {r:?}"
    );
    assert!(pool.dataset("tank/vm").is_ok(), "RMDIR destroyed a file");
    let r = conn.remove(&entry(b"d")).await.unwrap();
    assert!(
        matches!(r, Nfs3Result::Err((nfsstat3::NFS3ERR_ISDIR, _))),
        "REMOVE of a directory: {r:?}"
    );

    let limit = conn
        .fsinfo(&FSINFO3args {
            fsroot: root.clone(),
        })
        .await
        .unwrap()
        .unwrap()
        .maxfilesize;
    // What the host can map, held to the pool's own size.
    assert_eq!(
        limit,
        pool::max_volume_size(4096).min(pool.info().size),
        "maxfilesize"
    );
    let size_before = pool.dataset("tank/vm").unwrap().size;
    let w = conn
        .write(&WRITE3args {
            file: fh.clone(),
            offset: limit + (1 << 30),
            count: 1,
            stable: stable_how::FILE_SYNC,
            data: Opaque::borrowed(b"x"),
        })
        .await
        .unwrap();
    assert!(
        matches!(w, Nfs3Result::Err((nfsstat3::NFS3ERR_FBIG, _))),
        "a write past the limit: {w:?}"
    );
    assert_eq!(pool.dataset("tank/vm").unwrap().size, size_before);
}

/// A directory holding a volume with a snapshot is renamed whole: the volume moves and its
/// snapshot follows (the rename tried to move the snapshot by itself, failed halfway, and
/// left the directory split in two).
#[test]
fn a_directory_with_snapshots_is_renamed_whole() {
    let dir = tempfile::tempdir().unwrap();
    let pool = new_pool(dir.path());
    for v in ["tank/d/a", "tank/d/b"] {
        pool.create_volume(v, 1 << 20, 4096, &Default::default())
            .unwrap();
    }
    pool.snapshot(&["tank/d/a@s1"]).unwrap();
    let view = FileView::new(pool.clone(), ViewOptions::default());
    view.rename(view.root(), "d", view.root(), "e").unwrap();
    let mut names: Vec<String> = pool.list().unwrap().into_iter().map(|d| d.name).collect();
    names.sort();
    assert_eq!(names, ["tank/e/a", "tank/e/a@s1", "tank/e/b"]);
}

/// A GUARDED CREATE of a name another client took since the handler's own lookup is EXIST,
/// not a truncation of that client's file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_create_never_opens_an_existing_file() {
    use nfs3_server::vfs::NfsFileSystem;
    let dir = tempfile::tempdir().unwrap();
    let pool = new_pool(dir.path());
    pool.create_volume("tank/f", 1 << 20, 4096, &Default::default())
        .unwrap();
    pool.volume("tank/f")
        .unwrap()
        .write_at(0, &[7u8; 4096])
        .unwrap();
    let view = Arc::new(FileView::new(pool.clone(), ViewOptions::default()));
    let export = nfs::NfsExport::new(view.clone());
    let root = nfs3_server::vfs::FileHandleU64::new(view.root());
    let attr = sattr3 {
        size: nfs3_client::nfs3_types::nfs3::set_size3::Some(0),
        ..sattr3::default()
    };
    let r = export
        .create_guarded(&root, &b"f".as_slice().into(), attr)
        .await;
    assert!(
        matches!(
            r,
            Err(nfs3_client::nfs3_types::nfs3::nfsstat3::NFS3ERR_EXIST)
        ),
        "{r:?}"
    );
    let mut got = [0u8; 4096];
    pool.volume("tank/f").unwrap().read_at(0, &mut got).unwrap();
    assert_eq!(got, [7u8; 4096], "the existing file was truncated");
}

/// SETATTR of a snapshot's mode, owner or times is ROFS, as on a read-only file system (it
/// said OK and changed nothing); the volume's is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setattr_of_a_snapshot_is_read_only() {
    use nfs3_client::nfs3_types::nfs3::{nfsstat3, set_mode3};
    use nfs3_server::vfs::{FileHandleU64, NfsFileSystem};
    let dir = tempfile::tempdir().unwrap();
    let pool = new_pool(dir.path());
    pool.create_volume("tank/vm", 1 << 20, 4096, &Default::default())
        .unwrap();
    pool.snapshot(&["tank/vm@s"]).unwrap();
    let view = Arc::new(FileView::new(pool.clone(), ViewOptions::default()));
    let export = nfs::NfsExport::new(view.clone());
    let snaps = view.lookup(view.root(), ".snapshot").unwrap();
    let snap = view.lookup(snaps, "vm@s").unwrap();
    let vm = view.lookup(view.root(), "vm").unwrap();
    let chmod = || sattr3 {
        mode: set_mode3::Some(0o600),
        ..sattr3::default()
    };
    let r = export.setattr(&FileHandleU64::new(snap), chmod()).await;
    assert!(matches!(r, Err(nfsstat3::NFS3ERR_ROFS)), "{r:?}");
    assert!(export
        .setattr(&FileHandleU64::new(vm), chmod())
        .await
        .is_ok());
}

/// This process's resident memory, bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        << 10
}

/// A client that sends 1,500 READs of 1 MiB and never reads a reply holds back only what
/// one connection may have outstanding (64 replies): the server stops reading its socket.
/// Before, every reply queued in memory, 1.5 GiB for 114 KB of requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_no_replies_cannot_fill_the_servers_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (port, _task, _conn, fh) = served_big_volume(dir.path(), 1 << 30).await;
    let fh = fh.data.to_vec();
    let before = rss();
    let peak = tokio::task::spawn_blocking(move || unread_reads(port, &fh, 1, 1500))
        .await
        .unwrap();
    let grew = peak.saturating_sub(before);
    assert!(
        grew < 512 << 20,
        "the server's memory grew by {} MiB",
        grew >> 20
    );
}

/// A pool in `dir` with a volume `big` of `size` bytes, served: the port, the server's task,
/// a mounted client and the volume's handle.
async fn served_big_volume(
    dir: &std::path::Path,
    size: u64,
) -> (
    u16,
    tokio::task::JoinHandle<()>,
    Nfs3Connection<TokioIo<tokio::net::TcpStream>>,
    nfs_fh3,
) {
    let pool = new_pool(dir);
    pool.create_volume("tank/big", size, 4096, &Default::default())
        .unwrap();
    let (port, task) = start(pool, 0).await;
    let mut conn = mount(port).await;
    let root = conn.root_nfs_fh3();
    let fh = lookup(&mut conn, root, b"big").await;
    (port, task, conn, fh)
}

/// One RPC record: a READ of 1 MiB at offset 0 of `fh` (xid, CALL, RPC v2, NFS program
/// 100003 v3, READ (6), no auth; then the handle, the offset and the count).
fn read_call(xid: u32, fh: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    for w in [xid, 0, 2, 100_003, 3, 6, 0, 0, 0, 0] {
        m.extend_from_slice(&w.to_be_bytes());
    }
    m.extend_from_slice(&(fh.len() as u32).to_be_bytes());
    m.extend_from_slice(fh);
    while m.len() % 4 != 0 {
        m.push(0);
    }
    m.extend_from_slice(&0u64.to_be_bytes());
    m.extend_from_slice(&(1u32 << 20).to_be_bytes());
    let mut record = (0x8000_0000u32 | m.len() as u32).to_be_bytes().to_vec();
    record.extend_from_slice(&m);
    record
}

/// Opens `conns` connections to `port`, sends `per_conn` READs of 1 MiB of `fh` on each and
/// never reads a reply; returns this process's peak RSS over 3 s, then closes them.
fn unread_reads(port: u16, fh: &[u8], conns: usize, per_conn: u32) -> u64 {
    unread_reads_for(port, fh, conns, per_conn, std::time::Duration::from_secs(3))
}

/// [`unread_reads`], holding the connections for `hold`.
fn unread_reads_for(
    port: u16,
    fh: &[u8],
    conns: usize,
    per_conn: u32,
    hold: std::time::Duration,
) -> u64 {
    let socks = (0..conns)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    unread_reads_on(socks, fh, per_conn, hold)
}

/// [`unread_reads_for`] on connections already open.
fn unread_reads_on(
    socks: Vec<std::net::TcpStream>,
    fh: &[u8],
    per_conn: u32,
    hold: std::time::Duration,
) -> u64 {
    use std::io::Write;
    let requests: Vec<u8> = (0..per_conn)
        .flat_map(|xid| read_call(xid + 1000, fh))
        .collect();
    let mut socks: Vec<(std::net::TcpStream, usize)> = socks
        .into_iter()
        .map(|s| {
            s.set_nonblocking(true).unwrap();
            (s, 0)
        })
        .collect();
    // Send what the sockets take; never read.
    let mut peak = 0;
    let start = std::time::Instant::now();
    while start.elapsed() < hold {
        for (s, sent) in socks.iter_mut() {
            if *sent < requests.len() {
                if let Ok(n) = s.write(&requests[*sent..]) {
                    *sent += n;
                }
            }
        }
        peak = peak.max(rss());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    peak
}

/// Many connections that each send 64 READs of 1 MiB (the most one may have outstanding)
/// and read no reply hold back at most the server's budget of queued READ data (256 MiB), not
/// 64 MiB a connection (24 connections took 1.5 GiB); once they are gone, READs are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_reading_no_replies_stay_within_the_read_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (port, _task, mut conn, fh) = served_big_volume(dir.path(), 64 << 20).await;
    let raw = fh.data.to_vec();
    let before = rss();
    let peak = tokio::task::spawn_blocking(move || unread_reads(port, &raw, 24, 64))
        .await
        .unwrap();
    let grew = peak.saturating_sub(before);
    assert!(
        grew < 640 << 20,
        "the server's memory grew by {} MiB",
        grew >> 20
    );
    // The budget came back with the connections.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let read = conn
        .read(&READ3args {
            file: fh,
            offset: 0,
            count: 1 << 20,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.count, 1 << 20);
}

/// A peer that sends READs on many connections and reads no reply holds at most its share of
/// the server's READ budget (64 MiB): another peer's READ is still served at once. Before,
/// the first peer's 24 connections took the whole budget, and the other peer's READs waited
/// until they closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_reading_no_replies_does_not_stall_another_peers_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (port, _task, _conn, fh) = served_big_volume(dir.path(), 64 << 20).await;
    let fh = fh.data.to_vec();
    let hog_fh = fh.clone();
    let hog = tokio::task::spawn_blocking(move || {
        unread_reads_for(port, &hog_fh, 24, 64, std::time::Duration::from_secs(8))
    });
    // Long enough for the first peer's READs to take what they can.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;

    // The other peer: 127.0.0.2, another address of the loopback interface.
    let reply = read_within(port, "127.0.0.2", &fh, std::time::Duration::from_secs(5))
        .await
        .expect("the other peer's READ waited for the first peer's connections");
    assert_eq!(&reply[..4], &7u32.to_be_bytes(), "the reply to its xid");
    assert!(reply.len() > 1 << 20, "a whole 1 MiB of data");
    hog.await.unwrap();
}

/// A connection to `port` from `source` (a loopback address).
async fn connect_from(port: u16, source: &str) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    sock.connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap()
}

/// Sends one READ of 1 MiB of `fh` from `source` and returns its reply record, or `None`
/// when it takes longer than `limit`.
async fn read_within(
    port: u16,
    source: &str,
    fh: &[u8],
    limit: std::time::Duration,
) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = connect_from(port, source).await;
    conn.write_all(&read_call(7, fh)).await.unwrap();
    tokio::time::timeout(limit, async {
        let mut header = [0u8; 4];
        conn.read_exact(&mut header).await?;
        let len = u32::from_be_bytes(header) & 0x7fff_ffff;
        let mut body = vec![0u8; len as usize];
        conn.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    })
    .await
    .ok()
    .map(Result::unwrap)
}

/// Peers on several addresses that read no replies can fill the whole READ budget between
/// them, but each of their connections is closed once a reply waits `reply_timeout` to be
/// written, which gives the budget back: another peer's READ is then served. (With only the
/// idle timeout, six minutes by default, it waited for as long.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_read_no_replies_lose_their_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pool = new_pool(dir.path());
    pool.create_volume("tank/big", 64 << 20, 4096, &Default::default())
        .unwrap();
    let limits = nfs::ConnectionLimits {
        reply_timeout: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    let (port, _task) = start_limited(pool, 0, limits).await;
    let mut conn = mount(port).await;
    let root = conn.root_nfs_fh3();
    let fh = lookup(&mut conn, root, b"big").await.data.to_vec();
    // Five peers, 8 connections each, 64 READs of 1 MiB on each: 2.5 GiB asked for.
    let mut socks = Vec::new();
    for peer in 3..8 {
        for _ in 0..8 {
            let s = connect_from(port, &format!("127.0.0.{peer}")).await;
            socks.push(s.into_std().unwrap());
        }
    }
    let hog_fh = fh.clone();
    let hogs = tokio::task::spawn_blocking(move || {
        unread_reads_on(socks, &hog_fh, 64, std::time::Duration::from_secs(12))
    });
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let reply = read_within(port, "127.0.0.2", &fh, std::time::Duration::from_secs(10))
        .await
        .expect("another peer's READ waited for the others' connections");
    assert!(reply.len() > 1 << 20, "a whole 1 MiB of data");
    hogs.await.unwrap();
}

/// A pool in `dir` with a 1 MiB volume for each of `names`, served, and a mounted client.
async fn served_volumes(
    dir: &std::path::Path,
    names: &[String],
) -> (
    Arc<Pool>,
    tokio::task::JoinHandle<()>,
    Nfs3Connection<TokioIo<tokio::net::TcpStream>>,
) {
    let pool = new_pool(dir);
    for n in names {
        pool.create_volume(&format!("tank/{n}"), 1 << 20, 4096, &Default::default())
            .unwrap();
    }
    let (port, task) = start(pool.clone(), 0).await;
    (pool, task, mount(port).await)
}

/// A listing read in pages while entries before the page boundary are removed and new ones
/// are created still lists every entry that stayed, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_resumes_where_it_was_whatever_changes_meanwhile() {
    use nfs3_client::nfs3_types::nfs3::{cookieverf3, READDIRPLUS3args};
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..40).map(|i| format!("vol{i:02}")).collect();
    let (pool, _task, mut conn) = served_volumes(dir.path(), &names).await;
    let root = conn.root_nfs_fh3();
    let (mut cookie, mut listed, mut removed) = (0, Vec::<String>::new(), Vec::new());
    loop {
        let page = conn
            .readdirplus(&READDIRPLUS3args {
                dir: root.clone(),
                cookie,
                cookieverf: cookieverf3::default(),
                dircount: 256,
                maxcount: 1024,
            })
            .await
            .unwrap()
            .unwrap();
        let entries = page.reply.entries.into_inner();
        assert!(
            !entries.is_empty() || page.reply.eof,
            "an empty page before the end"
        );
        for e in &entries {
            listed.push(String::from_utf8(e.name.0.to_vec()).unwrap());
            cookie = e.cookie;
        }
        if page.reply.eof {
            break;
        }
        // As `rm -r` does: remove what was listed, and meanwhile someone adds a volume.
        for e in &entries {
            let n = String::from_utf8(e.name.0.to_vec()).unwrap();
            pool.destroy(&format!("tank/{n}")).unwrap();
            removed.push(n);
        }
        pool.create_volume(
            &format!("tank/new{}", removed.len()),
            1 << 20,
            4096,
            &Default::default(),
        )
        .unwrap();
    }
    assert!(!removed.is_empty(), "more than one page");
    for n in &names {
        let times = listed.iter().filter(|l| *l == n).count();
        assert_eq!(times, 1, "{n} listed {times} times: {listed:?}");
    }
}

/// Plain READDIR pages interleaved with NFS REMOVEs (each moves the directory's mtime, the
/// old cookie verifier) go on to the end: no NFS3ERR_BAD_COOKIE, which a Linux client takes
/// as the end of the directory. Two names whose hashes collide are both listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_readdir_pages_survive_removes_and_colliding_names() {
    let dir = tempfile::tempdir().unwrap();
    // FNV-1a 64 of these two names is the same (0x18868014373455f4).
    let mut names: Vec<String> = vec!["vXFkLL5ew9JD".into(), "vLVQWTt1Mk5E".into()];
    names.extend((0..30).map(|i| format!("vol{i:02}")));
    let (_pool, _task, mut conn) = served_volumes(dir.path(), &names).await;
    let root = conn.root_nfs_fh3();
    // Every page size, so that some page ends between the colliding names.
    for count in (300..700).step_by(40) {
        let listed = readdir_all(&mut conn, &root, count, false).await;
        for n in &names {
            assert_eq!(
                listed.iter().filter(|l| *l == n).count(),
                1,
                "{n}, count {count}: {listed:?}"
            );
        }
    }
    // Removing each page's entries over NFS as the listing goes.
    let removed = readdir_all(&mut conn, &root, 400, true).await;
    assert_eq!(removed.len(), names.len(), "{removed:?}");
}

/// Every name plain READDIR lists in `dir`, in pages of `count` bytes; with `remove`, each
/// page's entries are removed over NFS before the next page is asked for.
async fn readdir_all(
    conn: &mut Nfs3Connection<TokioIo<tokio::net::TcpStream>>,
    dir: &nfs_fh3,
    count: u32,
    remove: bool,
) -> Vec<String> {
    use nfs3_client::nfs3_types::nfs3::{cookieverf3, READDIR3args, REMOVE3args};
    let (mut cookie, mut verf, mut listed) = (0, cookieverf3::default(), Vec::new());
    loop {
        let page = conn
            .readdir(&READDIR3args {
                dir: dir.clone(),
                cookie,
                cookieverf: verf,
                count,
            })
            .await
            .unwrap()
            .unwrap();
        verf = page.cookieverf;
        for e in page.reply.entries.into_inner() {
            cookie = e.cookie;
            listed.push(String::from_utf8(e.name.0.to_vec()).unwrap());
            if remove {
                let name = e.name.0.to_vec().into();
                let object = diropargs3 {
                    dir: dir.clone(),
                    name,
                };
                conn.remove(&REMOVE3args { object }).await.unwrap().unwrap();
            }
        }
        if page.reply.eof {
            return listed;
        }
    }
}

/// A connection to the server on `port`, reads timing out after 5 s.
fn connect_to(port: u16) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s
}

/// Whether an NFS NULL call on `s` is answered (xid, CALL, RPC v2, program 100003 v3,
/// procedure 0, no auth).
fn null_answered(s: &mut std::net::TcpStream) -> bool {
    use std::io::{Read, Write};
    let mut m = Vec::new();
    for w in [0x8000_0028u32, 7, 0, 2, 100_003, 3, 0, 0, 0, 0, 0] {
        m.extend_from_slice(&w.to_be_bytes());
    }
    let mut mark = [0u8; 4];
    if s.write_all(&m).is_err() || s.read_exact(&mut mark).is_err() {
        return false;
    }
    let mut reply = vec![0u8; (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize];
    s.read_exact(&mut reply).is_ok() && reply[..4] == 7u32.to_be_bytes()
}

/// Whether the server closed `s`: end of stream (or a reset) well before the read timeout.
fn closed_by_server(s: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    let t = std::time::Instant::now();
    let r = s.read(&mut [0u8; 1]);
    matches!(r, Ok(0) | Err(_)) && t.elapsed() < std::time::Duration::from_secs(4)
}

/// One client address holds at most its share of the slots: a third connection from it is
/// closed while slots remain for others, and one it closes frees its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_connection_slot() {
    let dir = tempfile::tempdir().unwrap();
    let limits = nfs::ConnectionLimits {
        max_connections: 8,
        max_per_peer: 2,
        ..Default::default()
    };
    let (port, _task) = start_limited(new_pool(dir.path()), 0, limits).await;
    tokio::task::spawn_blocking(move || {
        let (mut a, mut b) = (connect_to(port), connect_to(port));
        assert!(null_answered(&mut a) && null_answered(&mut b));
        let mut c = connect_to(port);
        assert!(
            closed_by_server(&mut c),
            "a third connection from one client"
        );
        drop(a);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut d = connect_to(port);
        assert!(
            null_answered(&mut d),
            "a share freed serves the client again"
        );
    })
    .await
    .unwrap();
}

/// A connection past the limit is closed at once, one that sends nothing for the idle
/// timeout is closed, and a slot freed that way serves the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_and_idle_ones_are_closed() {
    use std::io::Write;
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let limits = nfs::ConnectionLimits {
        max_connections: 2,
        idle_timeout: Duration::from_secs(1),
        reply_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let (port, _task) = start_limited(new_pool(dir.path()), 0, limits).await;
    tokio::task::spawn_blocking(move || {
        let connect = || connect_to(port);
        let null = null_answered;
        let closed = closed_by_server;
        let (mut a, mut b) = (connect(), connect());
        assert!(null(&mut a) && null(&mut b), "two connections are served");
        let mut c = connect();
        assert!(closed(&mut c), "a third connection is closed");
        // `a` and `b` now sit idle: closed after about a second.
        assert!(
            closed(&mut a) && closed(&mut b),
            "idle connections are closed"
        );
        let mut d = connect();
        assert!(null(&mut d), "a freed slot serves the next client");
        // Fragments that never end a record (empty, not last) do not keep it open.
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if d.write_all(&0u32.to_be_bytes()).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            closed(&mut d),
            "a connection that completes no record is closed"
        );
        // Clients that never read their replies, in every slot: once a reply cannot be
        // written for the reply timeout, the connection ends and its slot serves others.
        let mut flood = Vec::new();
        for xid in 0..200_000u32 {
            for w in [0x8000_0028u32, xid, 0, 2, 100_003, 3, 0, 0, 0, 0, 0] {
                flood.extend_from_slice(&w.to_be_bytes());
            }
        }
        let flooders: Vec<TcpStream> = (0..2)
            .map(|_| {
                let mut e = connect();
                e.set_nonblocking(true).unwrap();
                let (mut sent, t) = (0, Instant::now());
                while sent < flood.len() && t.elapsed() < Duration::from_secs(1) {
                    match e.write(&flood[sent..]) {
                        Ok(n) => sent += n,
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
                e
            })
            .collect();
        let t = Instant::now();
        let served = loop {
            if null(&mut connect()) {
                break true;
            }
            if t.elapsed() > Duration::from_secs(8) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(served, "clients that read no replies kept their slots");
        drop(flooders);
    })
    .await
    .unwrap();
}

/// "." and ".." are not entries to remove (REMOVE "." of a directory removed it), and a size
/// of u64::MAX is too large, not an overflow.
#[test]
fn dot_names_and_a_size_of_u64_max_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pool = new_pool(dir.path());
    pool.create_volume("tank/f", 1 << 20, 4096, &Default::default())
        .unwrap();
    let view = FileView::new(pool.clone(), ViewOptions::default());
    let d = view.mkdir(view.root(), "d").unwrap().id;
    for name in [".", ".."] {
        assert!(view.remove(d, name).is_err(), "REMOVE {name}");
    }
    assert!(view.lookup(view.root(), "d").is_ok(), "d was removed");
    let f = view.lookup(view.root(), "f").unwrap();
    let e = view.set_size(f, u64::MAX).expect_err("u64::MAX bytes");
    assert_eq!(
        nfs::server::nfs_status(&e),
        nfs3_client::nfs3_types::nfs3::nfsstat3::NFS3ERR_FBIG
    );
    assert_eq!(pool.dataset("tank/f").unwrap().size, 1 << 20);
}

/// A MOUNT names its export as a whole path component, and a directory: `/tankx` is not
/// `/tank`, and `/tank/vm` is a file (upstream mounted both). ACCESS grants no writing on a
/// snapshot's file, whose mode grants none (upstream granted it, so clients opened it for
/// writing and only their writes failed), and still grants it on the volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_are_of_directories_and_snapshots_grant_no_writing() {
    use nfs3_client::nfs3_types::nfs3::ACCESS3args;
    let dir = tempfile::tempdir().unwrap();
    let pool = new_pool(dir.path());
    pool.create_volume("tank/vm", 1 << 20, 4096, &Default::default())
        .unwrap();
    pool.snapshot(&["tank/vm@s"]).unwrap();
    let (port, _task) = start(pool.clone(), 0).await;
    for path in ["/tankx", "/tank/vm"] {
        let m = Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", path)
            .connect_from_privileged_port(false)
            .mount_port(port)
            .nfs3_port(port)
            .mount()
            .await;
        assert!(m.is_err(), "{path} was mounted");
    }
    let mut conn = mount(port).await;
    let root = conn.root_nfs_fh3();
    let vm = lookup(&mut conn, root.clone(), b"vm").await;
    let snaps = lookup(&mut conn, root, b".snapshot").await;
    let snap = lookup(&mut conn, snaps, b"vm@s").await;
    const WRITING: u32 = 0x04 | 0x08 | 0x10; // MODIFY, EXTEND, DELETE
    for (fh, writable) in [(vm, true), (snap, false)] {
        let granted = conn
            .access(&ACCESS3args {
                object: fh,
                access: 0x3f,
            })
            .await
            .unwrap()
            .unwrap()
            .access;
        assert_eq!(granted & WRITING != 0, writable, "access {granted:#x}");
    }
}
