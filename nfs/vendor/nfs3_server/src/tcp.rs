use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, error, info, warn};

use crate::context::RPCContext;
use crate::nfs_handlers::PEER_READ_UNITS;
use crate::rpcwire::{SocketMessageHandler, write_fragment};
use crate::transaction_tracker::{Cleaner, TransactionTracker};
use crate::vfs::adapters::ReadOnlyAdapter;
use crate::vfs::{NfsFileSystem, NfsReadFileSystem};

/// A NFS Tcp Connection Handler
pub struct NFSTcpListener<T: NfsFileSystem + 'static> {
    listener: TcpListener,
    port: u16,
    arcfs: Arc<T>,
    mount_signal: Option<mpsc::Sender<bool>>,
    export_name: Arc<String>,
    transaction_tracker: Arc<TransactionTracker>,
    file_handle_converter: crate::vfs::handle::FileHandleConverter,
    stop_notify: Arc<tokio::sync::Notify>,
    limits: ConnectionLimits,
}

/// Bounds on the connections one listener serves (tarn patch).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections served at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Connections one peer address may hold at once; one more from it is closed as soon as
    /// it is accepted, so that one client cannot take every slot.
    pub max_per_peer: usize,
    /// A connection that sends no complete request for this long is closed.
    pub idle_timeout: Duration,
    /// A connection whose reply cannot be written for this long (a peer that reads no
    /// replies) is closed, giving back the READ budget its replies held.
    pub reply_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// 1024 connections, 64 a peer; 6 minutes idle (knfsd's idle timeout); 30 s for a reply.
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_per_peer: 64,
            idle_timeout: Duration::from_secs(360),
            reply_timeout: Duration::from_secs(30),
        }
    }
}

/// The peers with open connections: how many each holds, and its share of the READ budget,
/// which all its connections draw on (tarn patch).
type Peers =
    Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, (usize, Arc<Semaphore>)>>>;

/// One connection's count against its peer's limit, given back when dropped (tarn patch).
struct PeerSlot {
    peers: Peers,
    ip: IpAddr,
}

impl PeerSlot {
    /// Counts a connection from `ip`, unless it holds `max` already; with the peer's share of
    /// the READ budget.
    fn take(peers: &Peers, ip: IpAddr, max: usize) -> Option<(Self, Arc<Semaphore>)> {
        let mut c = peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (n, reads) = c
            .entry(ip)
            .or_insert_with(|| (0, Arc::new(Semaphore::new(PEER_READ_UNITS as usize))));
        if *n >= max {
            return None;
        }
        *n += 1;
        let slot = Self {
            peers: Arc::clone(peers),
            ip,
        };
        Some((slot, Arc::clone(reads)))
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut c = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((n, _)) = c.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.ip);
            }
        }
    }
}

impl<T: NfsFileSystem + 'static> Drop for NFSTcpListener<T> {
    fn drop(&mut self) {
        self.stop_notify.notify_waiters();
    }
}

#[must_use]
pub fn generate_host_ip(hostnum: u16) -> String {
    format!(
        "127.88.{}.{}",
        ((hostnum >> 8) & 0xFF) as u8,
        (hostnum & 0xFF) as u8
    )
}

/// processes an established socket
pub(crate) async fn process_socket<IO, T>(
    socket: IO,
    context: RPCContext<T>,
    idle_timeout: Duration,
    reply_timeout: Duration,
) -> Result<(), anyhow::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: NfsFileSystem + 'static,
{
    // tarn patch: records are read straight from the socket's read half by their own task,
    // and replies written to the write half here, so a long reply never holds up reading
    // (upstream did both in one select loop, through an in-memory pipe).
    let (read_half, mut write_half) = tokio::io::split(socket);
    let (mut message_handler, mut msgrecvchan) = SocketMessageHandler::new(context, read_half);
    // tarn patch: a connection that completes no record for `idle_timeout` is closed (after
    // the replies it is owed), as knfsd closes idle ones; clients reconnect. The deadline
    // moves only when a record completes, so fragments that never end a record do not keep
    // a connection open.
    let reader = tokio::spawn(async move {
        let mut deadline = tokio::time::Instant::now() + idle_timeout;
        loop {
            match tokio::time::timeout_at(deadline, message_handler.read()).await {
                Ok(Ok(record)) => {
                    if record {
                        deadline = tokio::time::Instant::now() + idle_timeout;
                    }
                }
                Ok(Err(e)) => {
                    debug!("Message loop broken due to {e}");
                    break;
                }
                Err(_) => {
                    info!("Closing a connection idle for {idle_timeout:?}");
                    break;
                }
            }
        }
    });
    // Stop reading when replies can no longer be written, however this returns.
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _reader = AbortOnDrop(reader);
    loop {
        match msgrecvchan.recv().await {
            Some((Err(e), _slot)) => {
                debug!("Message handling closed : {e}");
                return Err(e);
            }
            // The slot is given back once the reply is written (or the write failed).
            // A reply that cannot be written for the reply timeout (a client that does not
            // read its replies) ends the connection, and gives back its slot and the READ
            // budget its replies held.
            Some((Ok(msg), _slot)) => {
                match tokio::time::timeout(reply_timeout, write_fragment(&mut write_half, msg))
                    .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        error!("Write error {e}");
                        return Err(e);
                    }
                    Err(_) => {
                        info!(
                            "Closing a connection whose replies went unread for {reply_timeout:?}"
                        );
                        return Err(anyhow::anyhow!("replies unread for {reply_timeout:?}"));
                    }
                }
            }
            // The reader stopped (end of stream or a bad record) and every request it
            // started has been answered.
            None => return Ok(()),
        }
    }
}

pub trait NFSTcp: Send + Sync {
    /// Gets the true listening port. Useful if the bound port number is 0
    fn get_listen_port(&self) -> u16;

    /// Gets the true listening IP. Useful on windows when the IP may be random
    fn get_listen_ip(&self) -> IpAddr;

    /// Sets a mount listener. A "true" signal will be sent on a mount
    /// and a "false" will be sent on an unmount
    fn set_mount_listener(&mut self, signal: mpsc::Sender<bool>);

    /// Loops forever and never returns handling all incoming connections.
    fn handle_forever(&self) -> impl Future<Output = io::Result<()>> + Send;
}

impl<RO> NFSTcpListener<ReadOnlyAdapter<RO>>
where
    RO: NfsReadFileSystem + 'static,
{
    /// Create a new `NFSTcpListener` with a read-only file system.
    ///
    /// It binds to a ipstr of the form [ip address]:port. For instance,
    /// "127.0.0.1:12000". `fs` is an instance of an implementation
    /// of [`NfsReadFileSystem`].
    pub async fn bind_ro(ipstr: &str, fs: RO) -> io::Result<Self> {
        Self::bind(ipstr, ReadOnlyAdapter::new(fs)).await
    }
}

impl<T: NfsFileSystem + 'static> NFSTcpListener<T> {
    /// Create a new `NFSTcpListener`.
    ///
    /// It binds to a ipstr of the form [ip address]:port. For instance,
    /// "127.0.0.1:12000". `fs` is an instance of an implementation
    /// of [`NfsFileSystem`].
    pub async fn bind(ipstr: &str, fs: T) -> io::Result<Self> {
        Self::bind_inner(ipstr, fs, None).await
    }

    /// The write verifier this listener answers WRITE and COMMIT with: new for every bind
    /// (TARN-PATCH.md, item 4), so a client learns that a restart may have lost its
    /// unstable writes.
    pub const fn write_verifier(&self) -> [u8; 8] {
        self.file_handle_converter.verf().0
    }

    /// Create a new `NFSTcpListener` with a specific generation number.
    ///
    /// The generation number is embedded in file handles and used to detect
    /// stale handles from previous server instances. When multiple NFS server
    /// instances share the same generation number, file handles remain valid
    /// across all instances (e.g. behind a load balancer).
    pub async fn bind_with_generation(
        ipstr: &str,
        fs: T,
        generation_number: u64,
    ) -> io::Result<Self> {
        Self::bind_inner(ipstr, fs, Some(generation_number)).await
    }

    async fn bind_inner(ipstr: &str, fs: T, generation_number: Option<u64>) -> io::Result<Self> {
        // TARN-PATCH: the port follows the last colon, and an IPv6 address may be bracketed
        // (`[::1]:2049`); upstream split at the first colon, so no IPv6 address could be served.
        let (ip, port) = ipstr.rsplit_once(':').ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "IP Address must be of form ip:port",
            )
        })?;
        let port = port.parse::<u16>().map_err(|_| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "Port not in range 0..=65535",
            )
        })?;
        let ip = ip
            .strip_prefix('[')
            .and_then(|i| i.strip_suffix(']'))
            .unwrap_or(ip);

        let arcfs: Arc<T> = Arc::new(fs);

        if ip == "auto" {
            let mut num_tries_left = 32;

            for try_ip in 1u16.. {
                let ip = generate_host_ip(try_ip);

                let result = Self::bind_internal(&ip, port, arcfs.clone(), generation_number).await;

                match result {
                    Err(_) => {
                        if num_tries_left == 0 {
                            return result;
                        }
                        num_tries_left -= 1;
                    }
                    Ok(_) => {
                        return result;
                    }
                }
            }
            unreachable!(); // Does not detect automatically that loop above never terminates.
        } else {
            // Otherwise, try this.
            Self::bind_internal(ip, port, arcfs, generation_number).await
        }
    }

    async fn bind_internal(
        ip: &str,
        port: u16,
        arcfs: Arc<T>,
        generation_number: Option<u64>,
    ) -> io::Result<Self> {
        let ipstr = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        let listener = TcpListener::bind(&ipstr).await?;
        info!("Listening on {:?}", &ipstr);

        let port = match listener.local_addr().expect("failed to get local address") {
            SocketAddr::V4(s) => s.port(),
            SocketAddr::V6(s) => s.port(),
        };

        let file_handle_converter = generation_number.map_or_else(
            crate::vfs::handle::FileHandleConverter::new,
            crate::vfs::handle::FileHandleConverter::with_generation_number,
        );

        Ok(Self {
            listener,
            port,
            arcfs,
            mount_signal: None,
            export_name: Arc::from("/".to_string()),
            transaction_tracker: Self::new_transaction_tracker(),
            stop_notify: Arc::new(tokio::sync::Notify::new()),
            file_handle_converter,
            limits: ConnectionLimits::default(),
        })
    }

    fn new_transaction_tracker() -> Arc<TransactionTracker> {
        const TRANSACTION_LIFETIME: Duration = Duration::from_secs(60);
        const MAX_ACTIVE_TRANSACTIONS: u16 = 256;
        const TRANSACTION_TRIM_THRESHOLD: usize = 2048;

        Arc::new(TransactionTracker::new(
            TRANSACTION_LIFETIME,
            MAX_ACTIVE_TRANSACTIONS,
            TRANSACTION_TRIM_THRESHOLD,
        ))
    }

    /// Sets the bounds on connections (default: [`ConnectionLimits::default`]).
    pub const fn set_connection_limits(&mut self, limits: ConnectionLimits) {
        self.limits = limits;
    }

    /// Sets an optional NFS export name.
    ///
    /// - `export_name`: The desired export name without slashes.
    ///
    /// Example: Name `foo` results in the export path `/foo`.
    /// Default path is `/` if not set.
    pub fn with_export_name<S: AsRef<str>>(&mut self, export_name: S) {
        self.export_name = Arc::new(format!(
            "/{}",
            export_name
                .as_ref()
                .trim_end_matches('/')
                .trim_start_matches('/')
        ));
    }
}

impl<T: NfsFileSystem + 'static> NFSTcp for NFSTcpListener<T> {
    /// Gets the true listening port. Useful if the bound port number is 0
    fn get_listen_port(&self) -> u16 {
        let addr = self
            .listener
            .local_addr()
            .expect("failed to get local address");
        addr.port()
    }

    fn get_listen_ip(&self) -> IpAddr {
        let addr = self
            .listener
            .local_addr()
            .expect("failed to get local address");
        addr.ip()
    }

    /// Sets a mount listener. A "true" signal will be sent on a mount
    /// and a "false" will be sent on an unmount
    fn set_mount_listener(&mut self, signal: mpsc::Sender<bool>) {
        self.mount_signal = Some(signal);
    }

    /// Loops forever and never returns handling all incoming connections.
    async fn handle_forever(&self) -> io::Result<()> {
        self.handle_forever_filtered(|_| true).await
    }
}

impl<T: NfsFileSystem + 'static> NFSTcpListener<T> {
    /// Like [`NFSTcp::handle_forever`], but checks each accepted connection's peer with `allow`
    /// before handing the stream to the RPC handler; a refused connection is closed at once,
    /// before any byte is read from it or written to it (tarn patch).
    pub async fn handle_forever_filtered<F>(&self, allow: F) -> io::Result<()>
    where
        F: Fn(SocketAddr) -> bool + Send + Sync,
    {
        let cleaner_future = Cleaner::new(
            self.transaction_tracker.clone(),
            Duration::from_secs(10),
            Arc::clone(&self.stop_notify),
        )
        .run();
        tokio::spawn(cleaner_future);
        let slots = Arc::new(tokio::sync::Semaphore::new(self.limits.max_connections));
        let per_peer: Peers = Arc::default();
        let (idle_timeout, reply_timeout) = (self.limits.idle_timeout, self.limits.reply_timeout);

        loop {
            let (socket, peer) = match self.listener.accept().await {
                Ok(x) => x,
                // Out of descriptors and the like: keep serving the connections we have.
                Err(e) => {
                    error!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if !allow(peer) {
                info!("Refusing connection from {peer}");
                // Closed unread: the peer gets a reset or a plain close, never a reply.
                drop(socket);
                continue;
            }
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                warn!(
                    "Refusing connection from {peer}: {} connections are open already",
                    self.limits.max_connections
                );
                drop(socket);
                continue;
            };
            let Some((peer_slot, peer_reads)) =
                PeerSlot::take(&per_peer, peer.ip(), self.limits.max_per_peer)
            else {
                warn!(
                    "Refusing connection from {peer}: it holds {} connections already",
                    self.limits.max_per_peer
                );
                drop(socket);
                continue;
            };
            let context = RPCContext {
                local_port: self.port,
                // The address accept gave: asking the socket again fails once the peer has
                // gone, and that took the whole server down (tarn patch).
                client_addr: peer.to_string(),
                auth: nfs3_types::rpc::auth_unix::default(),
                vfs: self.arcfs.clone(),
                mount_signal: self.mount_signal.clone(),
                export_name: self.export_name.clone(),
                transaction_tracker: self.transaction_tracker.clone(),
                file_handle_converter: self.file_handle_converter,
                peer_reads,
            };
            info!("Accepting connection from {}", context.client_addr);
            debug!("Accepting socket {:?} {:?}", socket, context);
            tokio::spawn(async move {
                let _ = socket.set_nodelay(true);
                let _ = process_socket(socket, context, idle_timeout, reply_timeout).await;
                drop((slot, peer_slot));
            });
        }
    }
}
