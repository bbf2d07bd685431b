//! NFS-backed disks: a [`BlockBackend`] over `nfs3_client`.
//!
//! [`NfsDisk::connect`] takes `nfs://HOST[:PORT]/EXPORT/PATH[?nfsport=N&mountport=M]`: the first
//! path component is the export (`tarn nfs serve` exports `/POOL`), the rest is looked up in
//! it (nested dataset names are directories). One `PORT` serves both NFS and MOUNT, as `tarn nfs
//! serve` does; `nfsport`/`mountport` override it; with neither, the portmapper on 111 is asked.
//!
//! `nfs3_client` is async: each disk owns a small tokio runtime and blocks on it, so the backend
//! is a plain `Send + Sync` [`BlockBackend`] (never call it from inside a tokio runtime). Callers
//! on different threads use different TCP connections (an idle pool of up to
//! [`MAX_IDLE_CONNECTIONS`]). A transport failure drops that connection and retries on a new one
//! (handles survive a server restart), at most [`ATTEMPTS`] times per request.
//!
//! Writes go out `UNSTABLE`; a server that answers `FILE_SYNC` (`tarn nfs serve --sync`) needs
//! nothing more, otherwise (`tarn nfs serve` by default) `flush` sends COMMIT. The disk keeps a
//! copy of every unstable write since the last good COMMIT (at most [`REPLAY_MAX`] bytes: past
//! that a write commits first), so when the server's write verifier changed (it restarted and
//! may have lost them) `flush` resends them all `FILE_SYNC`, in order, with new writes held
//! back meanwhile, and the guest never sees the restart.

use nfs3_client::nfs3_types::mount::dirpath;
use nfs3_client::nfs3_types::nfs3::{
    diropargs3, ftype3, nfs_fh3, nfsstat3, stable_how, writeverf3, COMMIT3args, FSINFO3args,
    GETATTR3args, LOOKUP3args, Nfs3Result, READ3args, WRITE3args,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::{MountClient, Nfs3Client, RpcError};
use pool::{gather, scatter};
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpStream;
use zvol::{BackendInfo, BlockBackend, Error, Result};

/// Largest READ/WRITE asked for, whatever the server allows (its FSINFO may say less).
pub const MAX_TRANSFER: u32 = 1 << 20;
/// Idle connections kept for reuse.
pub const MAX_IDLE_CONNECTIONS: usize = 8;
/// Tries per request (the first, then retries on fresh connections after transport errors).
pub const ATTEMPTS: u32 = 3;
/// Limit on connecting, and on one RPC round trip.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest zero buffer written by `write_zeroes`/`discard` at once.
const ZERO_CHUNK: usize = 1 << 20;

type Client = Nfs3Client<Conn>;

/// A TCP connection for `nfs3_client`. Unlike its `TokioIo`, end of stream is an error: the
/// crate's read loop would otherwise spin on a closed connection (a restarted server) until
/// the RPC timeout.
struct Conn(TcpStream);

impl nfs3_client::io::AsyncRead for Conn {
    async fn async_read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = tokio::io::AsyncReadExt::read(&mut self.0, buf).await?;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        Ok(n)
    }
}

impl nfs3_client::io::AsyncWrite for Conn {
    async fn async_write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = tokio::io::AsyncWriteExt::write(&mut self.0, buf).await?;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        Ok(n)
    }
}

/// Connects to `addr` within [`CONNECT_TIMEOUT`].
async fn connect_tcp(addr: SocketAddr) -> std::io::Result<Conn> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    s.set_nodelay(true)?;
    Ok(Conn(s))
}

/// A parsed `nfs://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NfsUrl {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// NFS port (`None`: ask the portmapper).
    pub nfs_port: Option<u16>,
    /// MOUNT port (`None`: ask the portmapper).
    pub mount_port: Option<u16>,
    /// The export to mount, e.g. `/tank`.
    pub export: String,
    /// Components looked up from the export's root to the file, e.g. `["a", "vol"]`.
    pub path: Vec<String>,
}

fn bad_url(url: &str, why: &str) -> Error {
    Error::InvalidArgument(format!(
        "{url:?}: {why} (expected nfs://HOST[:PORT]/POOL/VOL[?nfsport=N&mountport=M])"
    ))
}

impl NfsUrl {
    /// Parses `nfs://HOST[:PORT]/EXPORT/PATH[?nfsport=N&mountport=M&version=3]`.
    pub fn parse(url: &str) -> Result<NfsUrl> {
        let rest = url
            .strip_prefix("nfs://")
            .ok_or_else(|| bad_url(url, "not an nfs:// URL"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| bad_url(url, "no path"))?;
        let port_of = |s: &str| {
            s.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad_url(url, &format!("bad port {s:?}")))
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad_url(url, "unclosed ["))?;
            match after.strip_prefix(':') {
                Some(p) => (h, Some(port_of(p)?)),
                None if after.is_empty() => (h, None),
                None => return Err(bad_url(url, "junk after ]")),
            }
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(port_of(p)?)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad_url(url, "no host"));
        }
        let (mut nfs_port, mut mount_port) = (port, port);
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=').unwrap_or((kv, "")) {
                ("nfsport", v) => nfs_port = Some(port_of(v)?),
                ("mountport", v) => mount_port = Some(port_of(v)?),
                ("version", "3") => {}
                (k, _) => return Err(bad_url(url, &format!("unknown option {k:?}"))),
            }
        }
        let mut parts = path.split('/').filter(|s| !s.is_empty());
        let export = parts
            .next()
            .ok_or_else(|| bad_url(url, "no export (pool) in the path"))?;
        let path: Vec<String> = parts.map(str::to_string).collect();
        if path.is_empty() {
            return Err(bad_url(url, "no volume after the export"));
        }
        if path.iter().any(|c| c == "." || c == "..") {
            return Err(bad_url(url, "`.` or `..` in the path"));
        }
        Ok(NfsUrl {
            host: host.to_string(),
            nfs_port,
            mount_port,
            export: format!("/{export}"),
            path,
        })
    }
}

/// Most bytes of unstable writes kept for a resend; a write past it commits first.
pub const REPLAY_MAX: usize = 64 << 20;

/// Unstable writes not yet committed.
#[derive(Default)]
struct Unstable {
    /// The verifier of the first unstable write since the last commit.
    verf: Option<writeverf3>,
    /// A later unstable write came back with another verifier (the server restarted).
    changed: bool,
    /// Copies of those writes, in the order they were acknowledged, to resend if the server
    /// lost them.
    pending: Vec<(u64, Vec<u8>)>,
    /// Bytes in `pending`.
    bytes: usize,
}

/// A file on an NFSv3 server as a [`BlockBackend`]. The size is read once, at connect.
pub struct NfsDisk {
    url: String,
    addr: SocketAddr,
    auth: opaque_auth<'static>,
    fh: nfs_fh3,
    size: u64,
    rtmax: u32,
    wtmax: u32,
    read_only: bool,
    id: String,
    idle: Mutex<Vec<Client>>,
    unstable: Mutex<Unstable>,
    /// Writes hold it shared; a resend holds it exclusively, so no newer write to the same
    /// bytes can land before an older copy is resent over it.
    replay_gate: std::sync::RwLock<()>,
    /// Serializes flushes: a flush that found nothing to commit must not return while another
    /// one is still committing writes acknowledged before it.
    flushing: Mutex<()>,
    /// Last, so connections are dropped before it.
    rt: tokio::runtime::Runtime,
}

/// Why one try of a request failed.
enum Fail {
    /// The server answered with an error status: final.
    Status(nfsstat3),
    /// The connection failed or timed out: retry on a new one.
    Transport(String),
}

/// " at OFFSET" for data requests, for messages.
fn at(op: &str, offset: u64) -> String {
    match op {
        "READ" | "WRITE" => format!(" at {offset}"),
        _ => String::new(),
    }
}

/// One reply as a value or a [`Fail`].
fn outcome<A, B>(
    r: std::result::Result<Nfs3Result<A, B>, RpcError>,
) -> std::result::Result<A, Fail> {
    match r {
        Ok(Nfs3Result::Ok(a)) => Ok(a),
        Ok(Nfs3Result::Err((st, _))) => Err(Fail::Status(st)),
        Err(e) => Err(Fail::Transport(e.to_string())),
    }
}

impl NfsDisk {
    /// Connects: MOUNT, LOOKUP each component, GETATTR (size, ID) and FSINFO (transfer sizes).
    /// The file is read-only when `read_only` is asked for or its mode allows no writes.
    pub fn connect(url: &str, read_only: bool) -> Result<NfsDisk> {
        let u = NfsUrl::parse(url)?;
        let io_err = |what: &str, e: std::io::Error| Error::Io {
            what: format!("{what} {url}"),
            source: e,
        };
        let resolve = |port: u16| -> Result<SocketAddr> {
            (u.host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| io_err("resolving", e))?
                .next()
                .ok_or_else(|| io_err("resolving", std::io::ErrorKind::NotFound.into()))
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tarn-nfs-disk")
            .enable_all()
            .build()
            .map_err(|e| io_err("starting a runtime for", e))?;
        let cred = opaque_auth::auth_unix(&auth_unix {
            // SAFETY: no arguments; always succeeds.
            uid: unsafe { libc::geteuid() },
            // SAFETY: no arguments; always succeeds.
            gid: unsafe { libc::getegid() },
            machinename: Opaque::owned(b"tarn".to_vec()),
            ..auth_unix::default()
        });
        let (nfs_port, mount_port) = match (u.nfs_port, u.mount_port) {
            (Some(n), Some(m)) => (n, m),
            _ => {
                let pm = resolve(nfs3_client::nfs3_types::portmap::PMAP_PORT)?;
                rt.block_on(portmap_ports(pm, u.nfs_port, u.mount_port))
                    .map_err(|e| io_err("asking the portmapper for", e))?
            }
        };
        let addr = resolve(nfs_port)?;
        let maddr = resolve(mount_port)?;
        let root = rt
            .block_on(mount(maddr, cred.clone(), &u.export))
            .map_err(|e| io_err(&format!("mounting {} for", u.export), e))?;
        let mut disk = NfsDisk {
            url: url.to_string(),
            addr,
            auth: cred,
            fh: root,
            size: 0,
            rtmax: MAX_TRANSFER,
            wtmax: MAX_TRANSFER,
            read_only,
            id: String::new(),
            idle: Mutex::new(Vec::new()),
            unstable: Mutex::new(Unstable::default()),
            replay_gate: std::sync::RwLock::new(()),
            flushing: Mutex::new(()),
            rt,
        };
        for name in &u.path {
            let dir = &disk.fh;
            let found = disk.call("LOOKUP", 0, |mut c| async move {
                let what = diropargs3 {
                    dir: dir.clone(),
                    name: name.as_bytes().to_vec().into(),
                };
                let r = c.lookup(&LOOKUP3args { what }).await;
                (c, outcome(r))
            })?;
            disk.fh = found.object;
        }
        let fh = &disk.fh;
        let attr = disk
            .call("GETATTR", 0, |mut c| async move {
                let r = c.getattr(&GETATTR3args { object: fh.clone() }).await;
                (c, outcome(r))
            })?
            .obj_attributes;
        if attr.type_ != ftype3::NF3REG {
            return Err(Error::InvalidArgument(format!(
                "{url} is not a regular file ({:?})",
                attr.type_
            )));
        }
        let info = disk.call("FSINFO", 0, |mut c| async move {
            let r = c.fsinfo(&FSINFO3args { fsroot: fh.clone() }).await;
            (c, outcome(r))
        })?;
        let clamp = |m: u32| {
            if m == 0 {
                MAX_TRANSFER
            } else {
                m.min(MAX_TRANSFER)
            }
        };
        disk.rtmax = clamp(info.rtmax);
        disk.wtmax = clamp(info.wtmax);
        disk.size = attr.size;
        disk.read_only |= attr.mode & 0o222 == 0;
        disk.id = format!("nfs-{:016x}-{}", attr.fsid, attr.fileid);
        Ok(disk)
    }

    /// The URL the disk was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens a new connection to the NFS port.
    async fn open(addr: SocketAddr, auth: opaque_auth<'static>) -> std::io::Result<Client> {
        let conn = connect_tcp(addr).await?;
        Ok(Nfs3Client::new_with_auth(
            conn,
            auth,
            opaque_auth::default(),
        ))
    }

    /// Runs `f` on a connection (an idle one, or a new one) until it succeeds, fails with a
    /// status, or [`ATTEMPTS`] transport failures have happened. `f` owns the connection while
    /// it runs and hands it back with its result.
    fn call<T, F, Fut>(&self, op: &str, offset: u64, f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = (Client, std::result::Result<T, Fail>)>,
    {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(100 << attempt));
            }
            let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let client = match pooled {
                Some(c) => c,
                None => match self.rt.block_on(Self::open(self.addr, self.auth.clone())) {
                    Ok(c) => c,
                    Err(e) => {
                        last = format!("connecting to {}: {e}", self.addr);
                        continue;
                    }
                },
            };
            match self
                .rt
                .block_on(async { tokio::time::timeout(RPC_TIMEOUT, f(client)).await })
            {
                Ok((client, Ok(v))) => {
                    self.put_back(client);
                    return Ok(v);
                }
                Ok((client, Err(Fail::Status(st)))) => {
                    self.put_back(client);
                    return Err(self.status_error(op, offset, st));
                }
                // The connection is dropped: it may hold half a reply.
                Ok((_, Err(Fail::Transport(e)))) => last = e,
                Err(_) => last = format!("no reply in {} s", RPC_TIMEOUT.as_secs()),
            }
            tracing::debug!(url = %self.url, op, attempt, error = %last, "NFS request failed");
        }
        Err(Error::Io {
            what: format!("NFS {op} of {}{}", self.url, at(op, offset)),
            source: std::io::Error::other(last),
        })
    }

    fn put_back(&self, c: Client) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(c);
        }
    }

    fn status_error(&self, op: &str, offset: u64, st: nfsstat3) -> Error {
        let os = match st {
            nfsstat3::NFS3ERR_ROFS | nfsstat3::NFS3ERR_PERM | nfsstat3::NFS3ERR_ACCES
                if op == "WRITE" =>
            {
                return Error::ReadOnly(self.url.clone())
            }
            nfsstat3::NFS3ERR_NOSPC => Some(libc::ENOSPC),
            nfsstat3::NFS3ERR_DQUOT => Some(libc::EDQUOT),
            nfsstat3::NFS3ERR_NOENT => Some(libc::ENOENT),
            nfsstat3::NFS3ERR_STALE => Some(libc::ESTALE),
            nfsstat3::NFS3ERR_ACCES | nfsstat3::NFS3ERR_PERM => Some(libc::EACCES),
            _ => None,
        };
        let source = match os {
            Some(n) => std::io::Error::from_raw_os_error(n),
            None => std::io::Error::other(format!("{st:?}")),
        };
        Error::Io {
            what: format!("NFS {op} of {}{}: {st:?}", self.url, at(op, offset)),
            source,
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::InvalidArgument(format!(
                "{}: {len} bytes at {offset} is past the end ({} bytes)",
                self.url, self.size
            ))),
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(self.url.clone()));
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes at `offset` (several READs if the server returns less).
    fn read_exact(&self, mut offset: u64, mut buf: &mut [u8]) -> Result<()> {
        while !buf.is_empty() {
            let count = buf.len().min(self.rtmax as usize) as u32;
            let fh = &self.fh;
            let r = self.call("READ", offset, |mut c| async move {
                let args = READ3args {
                    file: fh.clone(),
                    offset,
                    count,
                };
                let r = c.read(&args).await;
                (c, outcome(r))
            })?;
            let (data, eof) = (r.data, r.eof);
            let n = data.len().min(buf.len());
            if n == 0 {
                let why = if eof { "the file shrank" } else { "empty READ" };
                return Err(Error::Io {
                    what: format!("NFS READ of {} at {offset}", self.url),
                    source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, why),
                });
            }
            buf[..n].copy_from_slice(&data[..n]);
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    /// Writes all of `data` at `offset`, keeping unstable ones for the next flush (which it
    /// runs first when too much is kept).
    fn write_all(&self, offset: u64, data: &[u8]) -> Result<()> {
        let full = {
            let _gate = self.replay_gate.read().unwrap_or_else(|p| p.into_inner());
            self.send_writes(offset, data, stable_how::UNSTABLE)?
        };
        if full {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends WRITEs for `data` at `offset` with `stable`; records unstable replies. Returns
    /// whether the kept copies passed [`REPLAY_MAX`].
    fn send_writes(&self, mut offset: u64, mut data: &[u8], stable: stable_how) -> Result<bool> {
        let mut full = false;
        while !data.is_empty() {
            let piece = &data[..data.len().min(self.wtmax as usize)];
            let fh = &self.fh;
            let r = self.call("WRITE", offset, |mut c| async move {
                let args = WRITE3args {
                    file: fh.clone(),
                    offset,
                    count: piece.len() as u32,
                    stable,
                    data: Opaque::borrowed(piece),
                };
                let r = c.write(&args).await;
                (c, outcome(r))
            })?;
            let (count, committed, verf) = (r.count, r.committed, r.verf);
            if count == 0 || count as usize > piece.len() {
                return Err(Error::Io {
                    what: format!("NFS WRITE of {} at {offset}", self.url),
                    source: std::io::Error::other(format!("server wrote {count} bytes")),
                });
            }
            if committed == stable_how::UNSTABLE {
                let mut u = self.unstable.lock().unwrap_or_else(|p| p.into_inner());
                match u.verf {
                    None => u.verf = Some(verf),
                    Some(v) if v != verf => u.changed = true,
                    Some(_) => {}
                }
                u.pending.push((offset, piece[..count as usize].to_vec()));
                u.bytes += count as usize;
                full |= u.bytes > REPLAY_MAX;
            }
            data = &data[count as usize..];
            offset += u64::from(count);
        }
        Ok(full)
    }

    /// The server lost unstable writes (its verifier changed): with new writes held back,
    /// resends `taken`'s copies and then those acknowledged since, `FILE_SYNC`, in order. On
    /// failure the later copies are kept for the next flush (the caller keeps `taken`'s).
    fn resend(&self, taken: &Unstable) -> Result<()> {
        let _gate = self.replay_gate.write().unwrap_or_else(|p| p.into_inner());
        let since = std::mem::take(&mut *self.unstable.lock().unwrap_or_else(|p| p.into_inner()));
        tracing::warn!(
            url = %self.url,
            bytes = taken.bytes + since.bytes,
            "the NFS server restarted and may have lost unstable writes; resending them"
        );
        let sent = taken
            .pending
            .iter()
            .chain(&since.pending)
            .try_for_each(|(offset, data)| {
                self.send_writes(*offset, data, stable_how::FILE_SYNC)
                    .map(|_| ())
            });
        if sent.is_err() {
            *self.unstable.lock().unwrap_or_else(|p| p.into_inner()) = Unstable {
                changed: true,
                ..since
            };
        }
        sent
    }

    /// Writes `len` zero bytes at `offset`, in bounded pieces.
    fn zero(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        let zeroes = vec![0u8; (len.min(ZERO_CHUNK as u64)) as usize];
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = (end - pos).min(zeroes.len() as u64) as usize;
            self.write_all(pos, &zeroes[..n])?;
            pos += n as u64;
        }
        Ok(())
    }
}

/// MOUNTs `export` and returns its root handle.
async fn mount(
    addr: SocketAddr,
    auth: opaque_auth<'static>,
    export: &str,
) -> std::io::Result<nfs_fh3> {
    let conn = connect_tcp(addr).await?;
    let mut m = MountClient::new_with_auth(conn, auth, opaque_auth::default());
    let path = dirpath(Opaque::borrowed(export.as_bytes()));
    let ok = tokio::time::timeout(RPC_TIMEOUT, m.mnt(path))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(nfs_fh3 { data: ok.fhandle.0 })
}

/// Asks the portmapper at `pm` for the ports not given.
async fn portmap_ports(
    pm: SocketAddr,
    nfs: Option<u16>,
    mount: Option<u16>,
) -> std::io::Result<(u16, u16)> {
    use nfs3_client::nfs3_types::{mount as mnt, nfs3, portmap};
    let mut p = nfs3_client::PortmapperClient::new(connect_tcp(pm).await?);
    let err = |e: nfs3_client::PortmapError| std::io::Error::other(e.to_string());
    let nfs = match nfs {
        Some(n) => n,
        None => p
            .getport(nfs3::PROGRAM, nfs3::VERSION, portmap::IPPROTO_TCP)
            .await
            .map_err(err)?,
    };
    let mount = match mount {
        Some(m) => m,
        None => p
            .getport(mnt::PROGRAM, mnt::VERSION, portmap::IPPROTO_TCP)
            .await
            .map_err(err)?,
    };
    Ok((nfs, mount))
}

impl BlockBackend for NfsDisk {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            size: self.size,
            block_size: 4096,
            logical_block_size: 512,
            read_only: self.read_only,
            id: self.id.clone(),
        }
    }

    fn read_vectored(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        self.check_range(offset, total as u64)?;
        if let [one] = bufs {
            return self.read_exact(offset, one);
        }
        // Many small guest segments: READ whole transfers and scatter them.
        let mut scratch = vec![0u8; total.min(self.rtmax as usize)];
        let mut at = 0usize;
        while at < total {
            let n = (total - at).min(scratch.len());
            self.read_exact(offset + at as u64, &mut scratch[..n])?;
            scatter(bufs, at, &scratch[..n]);
            at += n;
        }
        Ok(())
    }

    fn write_vectored(&self, offset: u64, bufs: &[IoSlice<'_>]) -> Result<()> {
        self.check_writable()?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        self.check_range(offset, total as u64)?;
        if let [one] = bufs {
            return self.write_all(offset, one);
        }
        let mut scratch = vec![0u8; total.min(self.wtmax as usize)];
        let mut at = 0usize;
        while at < total {
            let n = (total - at).min(scratch.len());
            gather(bufs, at, &mut scratch[..n]);
            self.write_all(offset + at as u64, &scratch[..n])?;
            at += n;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let _one = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        let taken = std::mem::take(&mut *self.unstable.lock().unwrap_or_else(|p| p.into_inner()));
        let Some(verf) = taken.verf else {
            // Every write so far came back FILE_SYNC (or there were none).
            return Ok(());
        };
        let fh = &self.fh;
        let committed = if taken.changed {
            Ok(false)
        } else {
            self.call("COMMIT", 0, |mut c| async move {
                let args = COMMIT3args {
                    file: fh.clone(),
                    offset: 0,
                    count: 0,
                };
                let r = c.commit(&args).await;
                (c, outcome(r))
            })
            .map(|ok| ok.verf == verf)
        };
        let lost = matches!(committed, Ok(false));
        let r = match committed {
            Ok(true) => return Ok(()),
            Ok(false) => self.resend(&taken),
            Err(e) => Err(e),
        };
        if r.is_err() {
            // Not durable: the next flush tries again, these copies first.
            let mut u = self.unstable.lock().unwrap_or_else(|p| p.into_inner());
            let mut pending = taken.pending;
            pending.append(&mut u.pending);
            u.changed |= taken.changed || lost || u.verf.is_some_and(|v| v != verf);
            u.verf = Some(verf);
            u.bytes += taken.bytes;
            u.pending = pending;
        }
        r
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        // NFSv3 cannot punch holes; a discarded range must read back as zeroes.
        self.zero(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.zero(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_urls() {
        let u = NfsUrl::parse("nfs://127.0.0.1:2049/tank/vol").unwrap();
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!((u.nfs_port, u.mount_port), (Some(2049), Some(2049)));
        assert_eq!(u.export, "/tank");
        assert_eq!(u.path, vec!["vol"]);
        let u = NfsUrl::parse("nfs://h/tank/a/b?version=3&nfsport=5&mountport=6").unwrap();
        assert_eq!((u.nfs_port, u.mount_port), (Some(5), Some(6)));
        assert_eq!(u.path, vec!["a", "b"]);
        let u = NfsUrl::parse("nfs://[::1]:7/p/v").unwrap();
        assert_eq!((u.host.as_str(), u.nfs_port), ("::1", Some(7)));
        let u = NfsUrl::parse("nfs://h:7/p/v?mountport=8").unwrap();
        assert_eq!((u.nfs_port, u.mount_port), (Some(7), Some(8)));
        assert_eq!(NfsUrl::parse("nfs://h/p/v").unwrap().nfs_port, None);
        for bad in [
            "http://h/p/v",
            "nfs://h",
            "nfs://h/p",
            "nfs://:1/p/v",
            "nfs://h:0/p/v",
            "nfs://h:x/p/v",
            "nfs://h/p/v?version=4",
            "nfs://h/p/v?bogus=1",
            "nfs://h/p/../v",
        ] {
            assert!(NfsUrl::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn scatter_gather() {
        let data: Vec<u8> = (1..=10).collect();
        let (mut a, mut b, mut c) = ([0u8; 3], [0u8; 0], [0u8; 7]);
        let mut bufs = [
            IoSliceMut::new(&mut a),
            IoSliceMut::new(&mut b),
            IoSliceMut::new(&mut c),
        ];
        scatter(&mut bufs, 2, &data[..6]);
        assert_eq!((a, c), ([0, 0, 1], [2, 3, 4, 5, 6, 0, 0]));
        let bufs = [IoSlice::new(&a), IoSlice::new(&c)];
        let mut out = [9u8; 4];
        gather(&bufs, 4, &mut out);
        assert_eq!(out, [3, 4, 5, 6]);
    }
}
