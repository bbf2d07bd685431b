//! The NFSv3 + MOUNT + portmapper server over a [`FileView`], on one TCP port.
//!
//! - Handles are the view's stable file IDs behind a generation derived from the pool GUID
//!   (`bind_with_generation`), so they survive a restart of the server.
//! - The write verifier is a separate per-start value (patched into the crate, see
//!   `vendor/nfs3_server/TARN-PATCH.md`): an `UNSTABLE` WRITE is answered `UNSTABLE` as soon
//!   as its data is in the pool's open txg, and COMMIT makes it durable (one pool commit,
//!   shared by concurrent callers, [`FileView::sync`]). A restart (or crash) changes the
//!   verifier, so a client resends what it wrote since its last COMMIT, as NFSv3 has it.
//!   `FILE_SYNC`/`DATA_SYNC` WRITEs, and every WRITE with [`ServeConfig::sync_writes`], are
//!   durable before the reply.
//! - `--allow`: the listener checks each connection's peer before any byte is read; a refused
//!   peer's connection is closed unread.

use crate::readahead::ReadAhead;
use crate::view::{Attr, FileView, NodeKind, ViewError};
use nfs3_server::nfs3_types::nfs3::{
    createverf3, fattr3, filename3, ftype3, nfspath3, nfsstat3, nfstime3, post_op_attr, sattr3,
    set_size3, specdata3, stable_how, FSINFO3resok as fsinfo3, FSF3_CANSETTIME, FSF3_HOMOGENEOUS,
};
pub use nfs3_server::tcp::ConnectionLimits;
use nfs3_server::tcp::{NFSTcp, NFSTcpListener};
use nfs3_server::vfs::{
    DirEntryPlus, FileHandleU64, FsStat, NextResult, NfsFileSystem, NfsReadFileSystem,
    ReadDirPlusIterator, VFSCapabilities,
};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Largest READ and WRITE: 1 MiB.
pub const MAX_TRANSFER: u32 = 1 << 20;
/// The user property that remembers an exclusive CREATE's verifier (so a retransmitted
/// CREATE succeeds).
pub const CREATEVERF_PROP: &str = "tarn.nfs:createverf";

/// Maps a view error to an NFS status, once.
pub fn nfs_status(e: &ViewError) -> nfsstat3 {
    use pool::ErrorKind as K;
    match e {
        ViewError::Stale(_) | ViewError::Pool(pool::Error::Destroyed(_)) => nfsstat3::NFS3ERR_STALE,
        ViewError::NotFound(_) => nfsstat3::NFS3ERR_NOENT,
        ViewError::NotDir(_) => nfsstat3::NFS3ERR_NOTDIR,
        ViewError::IsDir(_) => nfsstat3::NFS3ERR_ISDIR,
        ViewError::Exists(_) => nfsstat3::NFS3ERR_EXIST,
        ViewError::NotEmpty(_) => nfsstat3::NFS3ERR_NOTEMPTY,
        ViewError::ReadOnly(_) => nfsstat3::NFS3ERR_ROFS,
        ViewError::NameTooLong(_) => nfsstat3::NFS3ERR_NAMETOOLONG,
        ViewError::BadName(_) | ViewError::Invalid(_) => nfsstat3::NFS3ERR_INVAL,
        ViewError::NoSpace(_) => nfsstat3::NFS3ERR_NOSPC,
        ViewError::Pool(p) => match p.kind() {
            K::Io | K::Corrupt => nfsstat3::NFS3ERR_IO,
            K::NoSpace => nfsstat3::NFS3ERR_NOSPC,
            K::NotFound => nfsstat3::NFS3ERR_NOENT,
            K::AlreadyExists => nfsstat3::NFS3ERR_EXIST,
            K::ReadOnly => nfsstat3::NFS3ERR_ROFS,
            // A dataset with dependents (snapshots, clones) or held elsewhere: permission
            // denied (NFSv3 has no "busy"; JUKEBOX would make clients retry forever).
            K::Busy => nfsstat3::NFS3ERR_ACCES,
            K::Unsupported => nfsstat3::NFS3ERR_NOTSUPP,
            K::InvalidInput => nfsstat3::NFS3ERR_INVAL,
            K::TooLarge => nfsstat3::NFS3ERR_FBIG,
        },
    }
}

/// The size a CREATE or SETATTR asks for, if any.
fn requested_size(attr: &sattr3) -> Option<u64> {
    match attr.size {
        set_size3::Some(s) => Some(s),
        set_size3::None => None,
    }
}

fn nfstime(ns: u64) -> nfstime3 {
    nfstime3 {
        seconds: u32::try_from(ns / 1_000_000_000).unwrap_or(u32::MAX),
        nseconds: (ns % 1_000_000_000) as u32,
    }
}

/// The view as an NFSv3 file system.
pub struct NfsExport {
    view: Arc<FileView>,
    fsid: u64,
    sync_writes: bool,
    readahead: ReadAhead,
}

impl NfsExport {
    /// Wraps a view. Unstable WRITEs are answered `UNSTABLE` (durable at COMMIT).
    pub fn new(view: Arc<FileView>) -> NfsExport {
        let fsid = view.pool().guid();
        NfsExport {
            view,
            fsid,
            sync_writes: false,
            readahead: ReadAhead::default(),
        }
    }

    /// Whether every WRITE is made durable before its reply (`FILE_SYNC`), whatever the
    /// client asked: for clients that ignore the write verifier (see [`ServeConfig`]).
    pub fn with_sync_writes(mut self, sync_writes: bool) -> NfsExport {
        self.sync_writes = sync_writes;
        self
    }

    /// The view.
    pub fn view(&self) -> &Arc<FileView> {
        &self.view
    }

    fn fattr(&self, a: &Attr) -> fattr3 {
        let dir = a.is_dir();
        let mode = match (dir, a.read_only) {
            (true, false) => 0o755,
            (true, true) => 0o555,
            (false, false) => 0o644,
            (false, true) => 0o444,
        };
        fattr3 {
            type_: if dir { ftype3::NF3DIR } else { ftype3::NF3REG },
            mode,
            nlink: if dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            size: a.size,
            used: a.used,
            rdev: specdata3::default(),
            fsid: self.fsid,
            fileid: a.id,
            atime: nfstime(a.mtime_ns),
            mtime: nfstime(a.mtime_ns),
            ctime: nfstime(a.ctime_ns),
        }
    }

    /// Runs a blocking view call off the async workers.
    fn call<T>(&self, f: impl FnOnce(&FileView) -> crate::view::Result<T>) -> Result<T, nfsstat3> {
        tokio::task::block_in_place(|| f(&self.view)).map_err(|e| status(&e))
    }

    /// [`NfsExport::call`] for a call that may change files: chunks read ahead before it are
    /// not used after it.
    fn call_mut<T>(
        &self,
        f: impl FnOnce(&FileView) -> crate::view::Result<T>,
    ) -> Result<T, nfsstat3> {
        let r = self.call(f);
        self.readahead.changed();
        r
    }
}

/// The status for a failed view call, logged unless it is an everyday one.
fn status(e: &ViewError) -> nfsstat3 {
    let st = nfs_status(e);
    if !matches!(
        st,
        nfsstat3::NFS3ERR_NOENT | nfsstat3::NFS3ERR_EXIST | nfsstat3::NFS3ERR_STALE
    ) {
        tracing::warn!(error = %e, status = ?st, "NFS request failed");
    }
    st
}

fn name_str<'a>(n: &'a filename3<'_>) -> Result<&'a str, nfsstat3> {
    std::str::from_utf8(&n.0).map_err(|_| nfsstat3::NFS3ERR_INVAL)
}

/// READDIR cookies for `entries`, which come back in cookie order: a hash of the name with
/// its low byte cleared, plus the name's rank among names sharing that hash (never 0, the
/// start). A listing resumes after the cookie it was given, so entries created or removed
/// between its pages shift nothing outside their own hash: the ones that stay are each listed
/// once (a position as cookie skipped one entry for each removed before it, and `rm -r` of
/// a large directory then failed with "not empty"), names whose hashes collide included.
fn with_cookies(entries: Vec<crate::view::Entry>) -> Vec<(u64, crate::view::Entry)> {
    let mut keyed: Vec<(u64, crate::view::Entry)> = entries
        .into_iter()
        .map(|e| ((crate::view::fnv1a(&e.name) & !0xff).max(0x100), e))
        .collect();
    keyed.sort_by(|(a, x), (b, y)| (a, &x.name).cmp(&(b, &y.name)));
    let mut rank = 0u64;
    let mut prev = None;
    for (hash, _) in keyed.iter_mut() {
        rank = if prev == Some(*hash) { rank + 1 } else { 0 };
        prev = Some(*hash);
        *hash |= rank.min(0xff);
    }
    keyed
}

/// Directory entries, handed out in cookie order after a cookie.
pub struct EntryIter {
    entries: std::vec::IntoIter<DirEntryPlus<FileHandleU64>>,
}

impl ReadDirPlusIterator<FileHandleU64> for EntryIter {
    async fn next(&mut self) -> NextResult<DirEntryPlus<FileHandleU64>> {
        match self.entries.next() {
            Some(e) => NextResult::Ok(e),
            None => NextResult::Eof,
        }
    }
}

impl NfsReadFileSystem for NfsExport {
    type Handle = FileHandleU64;

    fn root_dir(&self) -> FileHandleU64 {
        FileHandleU64::new(self.view.root())
    }

    async fn lookup(
        &self,
        dirid: &FileHandleU64,
        filename: &filename3<'_>,
    ) -> Result<FileHandleU64, nfsstat3> {
        let name = name_str(filename)?;
        self.call(|v| v.lookup(dirid.as_u64(), name))
            .map(FileHandleU64::new)
    }

    async fn getattr(&self, id: &FileHandleU64) -> Result<fattr3, nfsstat3> {
        let a = self.call(|v| v.getattr(id.as_u64()))?;
        Ok(self.fattr(&a))
    }

    async fn read(
        &self,
        id: &FileHandleU64,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool), nfsstat3> {
        self.read_with_attr(id, offset, count).await.1
    }

    async fn read_with_attr(
        &self,
        id: &FileHandleU64,
        offset: u64,
        count: u32,
    ) -> (Result<fattr3, nfsstat3>, Result<(Vec<u8>, bool), nfsstat3>) {
        let c = self
            .readahead
            .read(&self.view, id.as_u64(), offset, count.min(MAX_TRANSFER))
            .await;
        (
            c.attr.map(|a| self.fattr(&a)).map_err(|e| status(&e)),
            c.data.map_err(|e| status(&e)),
        )
    }

    async fn readdirplus(
        &self,
        dirid: &FileHandleU64,
        cookie: u64,
    ) -> Result<impl ReadDirPlusIterator<FileHandleU64>, nfsstat3> {
        let entries = self.call(|v| v.readdir(dirid.as_u64()))?;
        let list: Vec<_> = with_cookies(entries)
            .into_iter()
            .filter(|(c, _)| *c > cookie)
            .map(|(c, e)| DirEntryPlus {
                fileid: e.attr.id,
                cookie: c,
                name_attributes: Some(self.fattr(&e.attr)),
                name_handle: Some(FileHandleU64::new(e.attr.id)),
                name: e.name.into_bytes().into(),
            })
            .collect();
        Ok(EntryIter {
            entries: list.into_iter(),
        })
    }

    async fn readlink(&self, _id: &FileHandleU64) -> Result<nfspath3<'_>, nfsstat3> {
        Err(nfsstat3::NFS3ERR_INVAL)
    }

    async fn fsinfo(&self, root: &FileHandleU64) -> Result<fsinfo3, nfsstat3> {
        let attr = self
            .getattr(root)
            .await
            .map_or(post_op_attr::None, post_op_attr::Some);
        Ok(fsinfo3 {
            obj_attributes: attr,
            rtmax: MAX_TRANSFER,
            rtpref: MAX_TRANSFER,
            rtmult: 4096,
            wtmax: MAX_TRANSFER,
            wtpref: MAX_TRANSFER,
            wtmult: 4096,
            dtpref: 64 * 1024,
            maxfilesize: self.view.max_file_size(),
            time_delta: nfstime3 {
                seconds: 0,
                nseconds: 1,
            },
            properties: FSF3_HOMOGENEOUS | FSF3_CANSETTIME,
        })
    }
}

impl NfsFileSystem for NfsExport {
    fn capabilities(&self) -> VFSCapabilities {
        if self.view.read_only() {
            VFSCapabilities::ReadOnly
        } else {
            VFSCapabilities::ReadWrite
        }
    }

    async fn fsstat(&self, _root: &FileHandleU64) -> Result<FsStat, nfsstat3> {
        let s = tokio::task::block_in_place(|| self.view.space());
        // Datasets are cheap: report room for a million more.
        let files = 1u64 << 20;
        Ok(FsStat {
            tbytes: s.total,
            fbytes: s.free,
            abytes: if self.view.read_only() {
                0
            } else {
                s.available
            },
            tfiles: files + s.datasets,
            ffiles: files,
            afiles: files,
        })
    }

    async fn setattr(&self, id: &FileHandleU64, setattr: sattr3) -> Result<fattr3, nfsstat3> {
        let a = self.call_mut(|v| {
            let a = v.getattr(id.as_u64())?;
            match setattr.size {
                set_size3::Some(size) if !a.is_dir() => v.set_size(id.as_u64(), size),
                set_size3::Some(_) => Err(ViewError::IsDir(format!("{:#x}", a.id))),
                // Nothing of a snapshot (or a read-only export) changes, as a read-only file
                // system answers (a `touch` there said it worked).
                set_size3::None if a.read_only => {
                    Err(ViewError::ReadOnly(format!("file {:#x}", a.id)))
                }
                // Mode, owner and times are not stored: accepted and ignored.
                set_size3::None => Ok(a),
            }
        })?;
        Ok(self.fattr(&a))
    }

    async fn write(
        &self,
        id: &FileHandleU64,
        offset: u64,
        data: &[u8],
        stable: stable_how,
    ) -> Result<(fattr3, stable_how), nfsstat3> {
        self.write_with_wcc(id, offset, data, stable).await.1
    }

    async fn write_with_wcc(
        &self,
        id: &FileHandleU64,
        offset: u64,
        data: &[u8],
        stable: stable_how,
    ) -> (
        Result<fattr3, nfsstat3>,
        Result<(fattr3, stable_how), nfsstat3>,
    ) {
        if data.len() > MAX_TRANSFER as usize {
            return (Err(nfsstat3::NFS3ERR_INVAL), Err(nfsstat3::NFS3ERR_INVAL));
        }
        let durable = self.sync_writes || stable != stable_how::UNSTABLE;
        // One trip to a blocking thread: the attributes before, the write, the sync if asked.
        let (before, after) = tokio::task::block_in_place(|| {
            let v = &self.view;
            let before = v.getattr(id.as_u64());
            let after = v
                .write(id.as_u64(), offset, data)
                .map_err(|e| match e {
                    ViewError::IsDir(_) => ViewError::Invalid("WRITE to a directory".into()),
                    e => e,
                })
                .and_then(|a| {
                    if durable {
                        // FILE_SYNC asked for (or `--sync`): durable before the reply,
                        // sharing one pool commit with concurrent writers.
                        v.sync()?;
                    }
                    Ok(a)
                });
            (before, after)
        });
        self.readahead.changed();
        // UNSTABLE: the data sits in the pool's open txg until COMMIT (or the pool's own
        // periodic commit); a restart loses it, and the changed write verifier tells the
        // client to send it again.
        let committed = if durable {
            stable_how::FILE_SYNC
        } else {
            stable_how::UNSTABLE
        };
        (
            before.map(|a| self.fattr(&a)).map_err(|e| status(&e)),
            after
                .map(|a| (self.fattr(&a), committed))
                .map_err(|e| status(&e)),
        )
    }

    async fn create(
        &self,
        dirid: &FileHandleU64,
        filename: &filename3<'_>,
        attr: sattr3,
    ) -> Result<(FileHandleU64, fattr3), nfsstat3> {
        let name = name_str(filename)?;
        let size = requested_size(&attr);
        let a = self.call_mut(
            |v| match v.create(dirid.as_u64(), name, size.unwrap_or(0)) {
                // UNCHECKED: an existing file is opened (and truncated/extended if asked).
                Err(ViewError::Exists(_)) => {
                    let id = v.lookup(dirid.as_u64(), name)?;
                    let a = v.getattr(id)?;
                    if a.is_dir() {
                        return Err(ViewError::Exists(name.into()));
                    }
                    match size {
                        Some(s) => v.set_size(id, s),
                        None => Ok(a),
                    }
                }
                other => other,
            },
        )?;
        Ok((FileHandleU64::new(a.id), self.fattr(&a)))
    }

    async fn create_guarded(
        &self,
        dirid: &FileHandleU64,
        filename: &filename3<'_>,
        attr: sattr3,
    ) -> Result<(FileHandleU64, fattr3), nfsstat3> {
        let name = name_str(filename)?;
        let size = requested_size(&attr).unwrap_or(0);
        // No fallback to the existing file: a name taken since the handler's lookup is EXIST.
        let a = self.call_mut(|v| v.create(dirid.as_u64(), name, size))?;
        Ok((FileHandleU64::new(a.id), self.fattr(&a)))
    }

    async fn create_exclusive(
        &self,
        dirid: &FileHandleU64,
        filename: &filename3<'_>,
        createverf: createverf3,
    ) -> Result<FileHandleU64, nfsstat3> {
        let name = name_str(filename)?;
        let verf: String = createverf.0.iter().map(|b| format!("{b:02x}")).collect();
        let id = self.call_mut(|v| {
            let mut props = BTreeMap::new();
            props.insert(CREATEVERF_PROP.to_string(), verf.clone());
            match v.create_with(dirid.as_u64(), name, 0, &props) {
                Ok(a) => Ok(a.id),
                Err(ViewError::Exists(n)) => {
                    // A retransmission of our own CREATE succeeds; anything else exists.
                    let id = v.lookup(dirid.as_u64(), name)?;
                    if v.prop(id, CREATEVERF_PROP).ok().flatten().as_deref() == Some(&verf) {
                        Ok(id)
                    } else {
                        Err(ViewError::Exists(n))
                    }
                }
                Err(e) => Err(e),
            }
        })?;
        Ok(FileHandleU64::new(id))
    }

    async fn mkdir(
        &self,
        dirid: &FileHandleU64,
        dirname: &filename3<'_>,
    ) -> Result<(FileHandleU64, fattr3), nfsstat3> {
        let name = name_str(dirname)?;
        let a = self.call(|v| v.mkdir(dirid.as_u64(), name))?;
        Ok((FileHandleU64::new(a.id), self.fattr(&a)))
    }

    async fn remove(
        &self,
        dirid: &FileHandleU64,
        filename: &filename3<'_>,
    ) -> Result<(), nfsstat3> {
        let name = name_str(filename)?;
        self.call_mut(|v| v.remove(dirid.as_u64(), name))
    }

    async fn rename<'a>(
        &self,
        from_dirid: &FileHandleU64,
        from_filename: &filename3<'a>,
        to_dirid: &FileHandleU64,
        to_filename: &filename3<'a>,
    ) -> Result<(), nfsstat3> {
        let from = name_str(from_filename)?;
        let to = name_str(to_filename)?;
        self.call_mut(|v| v.rename(from_dirid.as_u64(), from, to_dirid.as_u64(), to))
    }

    async fn symlink<'a>(
        &self,
        _dirid: &FileHandleU64,
        _linkname: &filename3<'a>,
        _symlink: &nfspath3<'a>,
        _attr: &sattr3,
    ) -> Result<(FileHandleU64, fattr3), nfsstat3> {
        if self.view.read_only() {
            return Err(nfsstat3::NFS3ERR_ROFS);
        }
        Err(nfsstat3::NFS3ERR_NOTSUPP)
    }

    async fn commit(&self, id: &FileHandleU64, _offset: u64, _count: u32) -> Result<(), nfsstat3> {
        self.call(|v| {
            let a = v.getattr(id.as_u64())?;
            if a.kind == NodeKind::File && !v.read_only() {
                v.sync()?;
            }
            Ok(())
        })
    }
}

/// An address range for `--allow`: `10.0.0.0/8`, `127.0.0.1`, `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("'{s}' is not an address or CIDR range (e.g. 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{s}': prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Cidr {
    /// Whether `ip` lies in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, ip) = (canonical(self.addr), canonical(ip));
        let bits = |ip: IpAddr| -> (u128, u32) {
            match ip {
                IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
                IpAddr::V6(a) => (u128::from(a), 128),
            }
        };
        let ((n, nw), (a, aw)) = (bits(net), bits(ip));
        if nw != aw {
            return false;
        }
        let prefix = u32::from(self.prefix).min(nw);
        if prefix == 0 {
            return true;
        }
        let shift = nw - prefix;
        (n >> shift) == (a >> shift)
    }
}

/// What `tarn nfs serve` asks for.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// `ADDR:PORT` to listen on (port 0 picks one).
    pub listen: String,
    /// Peers allowed to connect; empty allows everyone.
    pub allow: Vec<Cidr>,
    /// Answer every WRITE only once it is durable (`FILE_SYNC`), even an `UNSTABLE` one.
    /// Slower (a pool commit per WRITE, shared by concurrent ones), but safe with clients
    /// that never check the write verifier and so would not resend unstable writes a server
    /// crash lost (libnfs 4.0, `nfs-cp`, is one).
    pub sync_writes: bool,
    /// Connections served at once, and how long one may sit idle before it is closed.
    pub limits: ConnectionLimits,
}

/// The handle generation for a pool: derived from its GUID, so handles survive restarts and
/// handles of another pool are refused.
pub fn generation(pool_guid: u64) -> u64 {
    // Keep it below 2^63 and nonzero; the crate compares generations as numbers.
    (pool_guid & (u64::MAX >> 1)).max(1)
}

/// A bound server: NFSv3, MOUNT (export `/POOL`) and portmapper GETPORT on one port.
pub struct Server {
    listener: NFSTcpListener<NfsExport>,
    allow: Arc<Vec<Cidr>>,
}

impl Server {
    /// Binds the export of `view`.
    pub async fn bind(view: Arc<FileView>, config: &ServeConfig) -> std::io::Result<Server> {
        let name = view.pool().name().to_string();
        let generation = generation(view.pool().guid());
        let export = NfsExport::new(view).with_sync_writes(config.sync_writes);
        let mut listener =
            NFSTcpListener::bind_with_generation(&config.listen, export, generation).await?;
        listener.with_export_name(&name);
        listener.set_connection_limits(config.limits);
        tracing::info!(
            write_verifier = format_args!("{:016x}", u64::from_le_bytes(listener.write_verifier())),
            sync_writes = config.sync_writes,
            "NFS server bound"
        );
        Ok(Server {
            listener,
            allow: Arc::new(config.allow.clone()),
        })
    }

    /// The WRITE/COMMIT verifier of this server start (new on every bind; handles, by
    /// contrast, stay valid across restarts).
    pub fn write_verifier(&self) -> [u8; 8] {
        self.listener.write_verifier()
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::new(
            self.listener.get_listen_ip(),
            self.listener.get_listen_port(),
        )
    }

    /// Serves until the future is dropped (or the listener fails).
    pub async fn run(&self) -> std::io::Result<()> {
        let allow = self.allow.clone();
        self.listener
            .handle_forever_filtered(move |peer| {
                let ok = allow.is_empty() || allow.iter().any(|c| c.contains(peer.ip()));
                if !ok {
                    tracing::warn!(%peer, "refused a connection (not in --allow)");
                }
                ok
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cidr() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.9.9".parse().unwrap()));
        let h: Cidr = "127.0.0.1".parse().unwrap();
        assert!(h.contains("127.0.0.1".parse().unwrap()));
        assert!(!h.contains("127.0.0.2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(!all.contains("::1".parse().unwrap()));
        let v6: Cidr = "fe80::/10".parse().unwrap();
        assert!(v6.contains("fe80::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
    }
}
