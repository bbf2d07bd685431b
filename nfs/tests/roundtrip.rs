//! Round trips through `nfs3_client` against the in-process server: create, write (UNSTABLE
//! and FILE_SYNC, each answered as asked), COMMIT, read back, FSSTAT, and handles that survive
//! a server restart while the write verifier does not.

#![allow(clippy::unwrap_used, missing_docs)]

use nfs::{FileView, ServeConfig, Server, ViewOptions};
use nfs3_client::nfs3_types::nfs3::{
    createhow3, diropargs3, nfs_fh3, post_op_fh3, sattr3, stable_how, COMMIT3args, CREATE3args,
    FSSTAT3args, GETATTR3args, Nfs3Result, READ3args, WRITE3args,
};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_client::{Nfs3Connection, Nfs3ConnectionBuilder};
use pool::{Pool, PoolConfig};
use std::sync::Arc;

async fn start(pool: Arc<Pool>, port: u16) -> (u16, tokio::task::JoinHandle<()>) {
    let view = Arc::new(FileView::new(pool, ViewOptions::default()));
    let server = Server::bind(
        view,
        &ServeConfig {
            listen: format!("127.0.0.1:{port}"),
            allow: Vec::new(),
            sync_writes: false,
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

/// A 256 MiB pool `tank` in `dir`.
fn new_pool(dir: &std::path::Path) -> Arc<Pool> {
    Arc::new(
        Pool::create_file(
            &dir.join("p.tarn"),
            "tank",
            256 << 20,
            PoolConfig::default(),
        )
        .unwrap(),
    )
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
