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
//! (handles survive a server restart), for up to [`RETRY_WINDOW`] (30 s); a pooled connection the
//! server closed while it idled is replaced at once. Reply records are bounded and may come in
//! fragments (see `Conn`).
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
/// Default of [`NfsOptions::retry_window`].
pub const RETRY_WINDOW: Duration = Duration::from_secs(30);
/// Limit on connecting, and on asking the portmapper.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit on one RPC round trip ([`NfsOptions::rpc_timeout`]).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest zero buffer written by `write_zeroes`/`discard` at once.
const ZERO_CHUNK: usize = 1 << 20;
/// Longest reply record taken: the largest READ's data and room for its header. A longer one
/// is refused before anything is allocated for it.
const MAX_RECORD: usize = MAX_TRANSFER as usize + (64 << 10);

type Client = Nfs3Client<Conn>;

/// A TCP connection for `nfs3_client`, which also minds the record marking of replies (RFC
/// 5531 section 11): a record longer than [`MAX_RECORD`] is refused before `nfs3_client`
/// allocates it, and a record sent in several fragments is joined into one (the crate takes
/// only single-fragment records). Unlike the crate's `TokioIo`, end of stream is an error:
/// the crate's read loop would otherwise spin on a closed connection (a restarted server)
/// until the RPC timeout.
struct Conn {
    stream: TcpStream,
    /// Bytes of the current single-fragment record still to pass through.
    left: usize,
    /// Bytes to hand over before reading on: a record's header, or a whole record joined
    /// from fragments under a header of its own; and how many were handed over.
    held: Vec<u8>,
    held_at: usize,
}

/// A reply that breaks the record rules.
fn bad_record(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            left: 0,
            held: Vec::new(),
            held_at: 0,
        }
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        tokio::io::AsyncReadExt::read_exact(&mut self.stream, buf)
            .await
            .map(|_| ())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ),
                _ => e,
            })
    }

    /// Reads a fragment header: (length, last fragment), the length checked against what
    /// the record may still hold.
    async fn fragment_header(&mut self, so_far: usize) -> std::io::Result<(usize, bool)> {
        let mut h = [0u8; 4];
        self.read_exact(&mut h).await?;
        let word = u32::from_be_bytes(h);
        let len = (word & 0x7fff_ffff) as usize;
        if so_far + len > MAX_RECORD {
            return Err(bad_record(format!(
                "a reply record of at least {} bytes, more than any reply holds ({MAX_RECORD})",
                so_far + len
            )));
        }
        Ok((len, word >> 31 == 1))
    }

    /// At a record's start: holds its header (a single fragment then passes through), or the
    /// whole record joined from its fragments under a header of its own.
    async fn start_record(&mut self) -> std::io::Result<()> {
        let (len, last) = self.fragment_header(0).await?;
        let mut record = Vec::new();
        if last {
            self.left = len;
        } else {
            record.resize(len, 0);
            self.read_exact(&mut record).await?;
            loop {
                let (len, last) = self.fragment_header(record.len()).await?;
                let at = record.len();
                record.resize(at + len, 0);
                self.read_exact(&mut record[at..]).await?;
                if last {
                    break;
                }
            }
        }
        let total = if last { len } else { record.len() } as u32;
        self.held = (total | 0x8000_0000).to_be_bytes().to_vec();
        self.held.append(&mut record);
        self.held_at = 0;
        Ok(())
    }
}

impl nfs3_client::io::AsyncRead for Conn {
    async fn async_read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.held_at == self.held.len() && self.left == 0 {
            self.start_record().await?;
        }
        if self.held_at < self.held.len() {
            let n = buf.len().min(self.held.len() - self.held_at);
            buf[..n].copy_from_slice(&self.held[self.held_at..self.held_at + n]);
            self.held_at += n;
            return Ok(n);
        }
        let want = buf.len().min(self.left);
        let n = tokio::io::AsyncReadExt::read(&mut self.stream, &mut buf[..want]).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        self.left -= n;
        Ok(n)
    }
}

impl nfs3_client::io::AsyncWrite for Conn {
    async fn async_write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = tokio::io::AsyncWriteExt::write(&mut self.stream, buf).await?;
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
    Ok(Conn::new(s))
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

/// Most bytes of unstable writes kept for a resend: a write past it commits after it, and one
/// past twice it (the commits failing) commits before it or fails.
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

impl Unstable {
    /// Cuts `offset..offset + len` out of the kept copies: those bytes were since written
    /// stably, and resending an older copy would land over them.
    fn supersede(&mut self, offset: u64, len: u64) {
        let end = offset + len;
        if !self
            .pending
            .iter()
            .any(|(o, d)| *o < end && o + d.len() as u64 > offset)
        {
            return;
        }
        let mut kept = Vec::with_capacity(self.pending.len() + 1);
        for (o, d) in std::mem::take(&mut self.pending) {
            let d_end = o + d.len() as u64;
            if o >= end || d_end <= offset {
                kept.push((o, d));
                continue;
            }
            if o < offset {
                kept.push((o, d[..(offset - o) as usize].to_vec()));
            }
            if d_end > end {
                kept.push((end, d[(end - o) as usize..].to_vec()));
            }
        }
        self.bytes = kept.iter().map(|(_, d)| d.len()).sum();
        self.pending = kept;
    }
}

/// How an [`NfsDisk`] talks to its server.
#[derive(Clone, Copy, Debug)]
pub struct NfsOptions {
    /// Longest wait for one reply. A READ or COMMIT not answered in time is sent again; a
    /// WRITE is not (the server may still carry it out, over a newer write of the same
    /// bytes): the disk then takes no more writes.
    pub rpc_timeout: Duration,
    /// How long a request goes on retrying a server that refuses connections, drops them or
    /// asks to be tried later (NFS3ERR_JUKEBOX), with growing pauses, before it fails: long
    /// enough for a server to restart.
    pub retry_window: Duration,
}

impl Default for NfsOptions {
    /// [`RPC_TIMEOUT`] and [`RETRY_WINDOW`].
    fn default() -> Self {
        NfsOptions {
            rpc_timeout: RPC_TIMEOUT,
            retry_window: RETRY_WINDOW,
        }
    }
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
    options: NfsOptions,
    /// Connections that failed (or went unanswered) so far: a server that restarted may have
    /// lost the kept writes, which reads must then not miss.
    failures: std::sync::atomic::AtomicU64,
    /// `failures` when reads last made sure no kept write was lost.
    failures_checked: std::sync::atomic::AtomicU64,
    /// A WRITE went unanswered and was given up: the server may still carry it out, so no
    /// newer write may follow.
    abandoned: std::sync::atomic::AtomicBool,
    unstable: Mutex<Unstable>,
    /// The copies a flush took from `unstable` while its COMMIT is out: stable writes cut
    /// them too, and a failed flush puts them back. Locked after `unstable` where both are.
    in_flush: Mutex<Unstable>,
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
    /// The server answered with an error status: final, but for NFS3ERR_JUKEBOX (try later).
    Status(nfsstat3),
    /// The connection failed: retry on a new one.
    Transport(String),
    /// The server broke the protocol (an undecodable or oversized reply, an RPC-level
    /// refusal): final, and the connection is dropped.
    Protocol(String),
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
        Err(RpcError::Io(e)) if e.kind() != std::io::ErrorKind::InvalidData => {
            Err(Fail::Transport(e.to_string()))
        }
        Err(e) => Err(Fail::Protocol(e.to_string())),
    }
}

impl NfsDisk {
    /// Connects with the default [`NfsOptions`]: MOUNT, LOOKUP each component, GETATTR (size,
    /// ID) and FSINFO (transfer sizes). The file is read-only when `read_only` is asked for
    /// or its mode allows no writes.
    pub fn connect(url: &str, read_only: bool) -> Result<NfsDisk> {
        Self::connect_with(url, read_only, NfsOptions::default())
    }

    /// [`NfsDisk::connect`] with `options`.
    pub fn connect_with(url: &str, read_only: bool, options: NfsOptions) -> Result<NfsDisk> {
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
                rt.block_on(async {
                    tokio::time::timeout(
                        CONNECT_TIMEOUT,
                        portmap_ports(pm, u.nfs_port, u.mount_port),
                    )
                    .await
                    .map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no answer from {pm} in {} s", CONNECT_TIMEOUT.as_secs()),
                        )
                    })?
                })
                .map_err(|e| io_err("asking the portmapper for", e))?
            }
        };
        let addr = resolve(nfs_port)?;
        let maddr = resolve(mount_port)?;
        let root = rt
            .block_on(mount(maddr, cred.clone(), &u.export, options.rpc_timeout))
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
            options,
            failures: Default::default(),
            failures_checked: Default::default(),
            abandoned: Default::default(),
            unstable: Mutex::new(Unstable::default()),
            in_flush: Mutex::new(Unstable::default()),
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
        disk.id = zvol::backend_id("nfs", attr.fsid, attr.fileid);
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

    /// Runs `f` on a connection (an idle one, or a new one) until it succeeds or fails with a
    /// status. A pooled connection that fails (the server closed it while idle, or
    /// restarted) empties the pool and the request goes on at once on a new one; connection
    /// failures on new ones and NFS3ERR_JUKEBOX are retried with growing pauses for
    /// [`NfsOptions::retry_window`]. A WRITE with no reply in time is not sent again (see
    /// [`NfsOptions::rpc_timeout`]), and after one no WRITE or COMMIT is sent at all. `f` owns
    /// the connection while it runs and hands it back with its result.
    fn call<T, F, Fut>(&self, op: &str, offset: u64, f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = (Client, std::result::Result<T, Fail>)>,
    {
        use std::sync::atomic::Ordering;
        let failed = |why: String| Error::Io {
            what: format!("NFS {op} of {}{}", self.url, at(op, offset)),
            source: std::io::Error::other(why),
        };
        if op == "WRITE" && self.abandoned.load(Ordering::Acquire) {
            return Err(failed(
                "an earlier WRITE went unanswered and may still be carried out, so this disk \
                 takes no more writes: reopen it"
                    .into(),
            ));
        }
        let start = std::time::Instant::now();
        let mut pause = Duration::from_millis(100);
        let (mut tries, mut timeouts, mut stale) = (0u32, 0u32, 0usize);
        loop {
            tries += 1;
            let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let was_pooled = pooled.is_some();
            let client = match pooled {
                Some(c) => Ok(c),
                None => self
                    .rt
                    .block_on(Self::open(self.addr, self.auth.clone()))
                    .map_err(|e| format!("connecting to {}: {e}", self.addr)),
            };
            let timeout = self.options.rpc_timeout;
            let mut timed_out = false;
            let why = match client {
                Err(why) => why,
                Ok(client) => match self
                    .rt
                    .block_on(async { tokio::time::timeout(timeout, f(client)).await })
                {
                    Ok((client, Ok(v))) => {
                        self.put_back(client);
                        return Ok(v);
                    }
                    Ok((client, Err(Fail::Status(nfsstat3::NFS3ERR_JUKEBOX)))) => {
                        self.put_back(client);
                        "NFS3ERR_JUKEBOX: the server asks to be tried later".to_string()
                    }
                    Ok((client, Err(Fail::Status(st)))) => {
                        self.put_back(client);
                        return Err(self.status_error(op, offset, st));
                    }
                    Ok((_, Err(Fail::Protocol(e)))) => return Err(failed(e)),
                    // The connection is dropped: it may hold half a reply.
                    Ok((_, Err(Fail::Transport(e)))) => {
                        self.failures.fetch_add(1, Ordering::AcqRel);
                        if was_pooled && stale <= MAX_IDLE_CONNECTIONS {
                            stale += 1;
                            // The others idle as long are likely closed too.
                            self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
                            tracing::debug!(url = %self.url, op, error = %e, "an idle NFS connection failed; retrying on a new one");
                            continue;
                        }
                        e
                    }
                    Err(_) => {
                        self.failures.fetch_add(1, Ordering::AcqRel);
                        timeouts += 1;
                        timed_out = true;
                        let why = format!("no reply in {} s", timeout.as_secs_f64());
                        if op == "WRITE" {
                            self.abandoned.store(true, Ordering::Release);
                            return Err(failed(format!(
                                "{why}; the server may still carry it out, so this disk takes \
                                 no more writes: reopen it"
                            )));
                        }
                        why
                    }
                },
            };
            // One unanswered request is sent once more even past the window (the timeout may
            // be longer than the window itself).
            let resend_once = timed_out && timeouts == 1;
            if start.elapsed() + pause > self.options.retry_window && !resend_once {
                let tried = if tries > 1 {
                    format!(
                        " ({tries} tries over {:.0} s)",
                        start.elapsed().as_secs_f64()
                    )
                } else {
                    String::new()
                };
                return Err(failed(format!("{why}{tried}")));
            }
            tracing::debug!(url = %self.url, op, error = %why, "NFS request failed; retrying");
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(2));
        }
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

    /// Reads exactly `buf.len()` bytes at `offset`. Where a connection failed since this read
    /// began, or since the last read that looked (the server may have restarted and lost kept
    /// writes), it makes sure the server has every kept write (a flush, which also waits for
    /// one already running and resends what the server lost) and reads again: a write
    /// acknowledged to the guest never reads back as what it replaced.
    fn read_exact(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        use std::sync::atomic::Ordering;
        let checked = self.failures_checked.load(Ordering::Acquire);
        self.read_from_server(offset, buf)?;
        let failures = self.failures.load(Ordering::Acquire);
        if failures != checked {
            if self.abandoned.load(Ordering::Acquire) {
                self.check_nothing_lost(offset)?;
            } else {
                self.flush()?;
            }
            self.read_from_server(offset, buf)?;
            self.failures_checked.fetch_max(failures, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Sends COMMIT for the whole file; the server's write verifier.
    fn commit(&self) -> Result<writeverf3> {
        let fh = &self.fh;
        self.call("COMMIT", 0, |mut c| async move {
            let args = COMMIT3args {
                file: fh.clone(),
                offset: 0,
                count: 0,
            };
            let r = c.commit(&args).await;
            (c, outcome(r))
        })
        .map(|ok| ok.verf)
    }

    /// For a disk that takes no more writes: fails a read if the server lost kept writes (its
    /// verifier changed), which can no longer be resent.
    fn check_nothing_lost(&self, offset: u64) -> Result<()> {
        let verf = self.unstable.lock().unwrap_or_else(|p| p.into_inner()).verf;
        let Some(verf) = verf else {
            return Ok(());
        };
        if self.commit()? == verf {
            return Ok(());
        }
        Err(Error::Io {
            what: format!("NFS READ of {} at {offset}", self.url),
            source: std::io::Error::other(
                "the server restarted and lost writes this disk can no longer resend (an \
                 earlier WRITE went unanswered): reopen the disk",
            ),
        })
    }

    /// Reads exactly `buf.len()` bytes at `offset` (several READs if the server returns less).
    fn read_from_server(&self, mut offset: u64, mut buf: &mut [u8]) -> Result<()> {
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
        // Copies are put back when a flush fails, so with COMMITs failing they would grow
        // without end: past twice the bound, a write goes out only once a flush succeeds.
        let kept = self
            .unstable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bytes;
        if kept > 2 * REPLAY_MAX {
            self.flush()?;
        }
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
            if stable != stable_how::UNSTABLE && committed == stable_how::UNSTABLE {
                return Err(Error::Io {
                    what: format!("NFS WRITE of {} at {offset}", self.url),
                    source: std::io::Error::other(
                        "the server answered UNSTABLE to a FILE_SYNC write (RFC 1813 forbids \
                         it): the data may not be durable",
                    ),
                });
            }
            if committed != stable_how::UNSTABLE {
                let mut u = self.unstable.lock().unwrap_or_else(|p| p.into_inner());
                u.supersede(offset, u64::from(count));
                self.in_flush
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .supersede(offset, u64::from(count));
            } else {
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
    /// resends the flush's copies (`in_flush`) and then those acknowledged since, `FILE_SYNC`,
    /// in order. On failure both are put back where they were, for the flush to keep.
    fn resend(&self) -> Result<()> {
        let _gate = self.replay_gate.write().unwrap_or_else(|p| p.into_inner());
        let (taken, since) = {
            let mut u = self.unstable.lock().unwrap_or_else(|p| p.into_inner());
            let mut f = self.in_flush.lock().unwrap_or_else(|p| p.into_inner());
            (std::mem::take(&mut *f), std::mem::take(&mut *u))
        };
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
            *self.in_flush.lock().unwrap_or_else(|p| p.into_inner()) = taken;
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
    timeout: Duration,
) -> std::io::Result<nfs_fh3> {
    let conn = connect_tcp(addr).await?;
    let mut m = MountClient::new_with_auth(conn, auth, opaque_auth::default());
    let path = dirpath(Opaque::borrowed(export.as_bytes()));
    let ok = tokio::time::timeout(timeout, m.mnt(path))
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
            // NFSv3 cannot punch holes: a discard sends zeroes over the wire.
            discards: false,
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
        if self.abandoned.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Io {
                what: format!("NFS flush of {}", self.url),
                source: std::io::Error::other(
                    "an earlier WRITE went unanswered and may still be carried out: reopen the disk",
                ),
            });
        }
        let _one = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        let (verf, changed) = {
            let mut u = self.unstable.lock().unwrap_or_else(|p| p.into_inner());
            let taken = std::mem::take(&mut *u);
            let Some(verf) = taken.verf else {
                // Every write so far came back FILE_SYNC (or there were none).
                return Ok(());
            };
            let changed = taken.changed;
            *self.in_flush.lock().unwrap_or_else(|p| p.into_inner()) = taken;
            (verf, changed)
        };
        let committed = if changed {
            Ok(false)
        } else {
            self.commit().map(|now| now == verf)
        };
        let lost = matches!(committed, Ok(false));
        let r = match committed {
            Ok(true) => {
                *self.in_flush.lock().unwrap_or_else(|p| p.into_inner()) = Unstable::default();
                return Ok(());
            }
            Ok(false) => self.resend(),
            Err(e) => Err(e),
        };
        if r.is_err() {
            // Not durable: the next flush tries again, these copies first.
            let mut u = self.unstable.lock().unwrap_or_else(|p| p.into_inner());
            let taken =
                std::mem::take(&mut *self.in_flush.lock().unwrap_or_else(|p| p.into_inner()));
            let changed = taken.changed;
            let mut pending = taken.pending;
            pending.append(&mut u.pending);
            u.changed |= changed || lost || u.verf.is_some_and(|v| v != verf);
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
    fn stable_writes_cut_kept_copies() {
        let mut u = Unstable {
            pending: vec![
                (0, b"abcdefgh".to_vec()),
                (20, b"xy".to_vec()),
                (6, b"123".to_vec()),
            ],
            bytes: 13,
            ..Unstable::default()
        };
        u.supersede(2, 5);
        assert_eq!(
            u.pending,
            vec![
                (0, b"ab".to_vec()),
                (7, b"h".to_vec()),
                (20, b"xy".to_vec()),
                (7, b"23".to_vec()),
            ]
        );
        assert_eq!(u.bytes, 7);
        u.supersede(100, 4);
        assert_eq!(u.bytes, 7, "nothing there");
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
