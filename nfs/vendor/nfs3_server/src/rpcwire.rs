use std::io::Cursor;
use std::time::Instant;

use anyhow::anyhow;
use messages::{CompleteRpcMessage, HandleResult, IncomingRpcMessage, PackedRpcMessage};
use nfs3_types::rpc::{
    RPC_VERSION_2, accept_stat_data, auth_flavor, auth_stat, auth_unix, call_body, fragment_header,
};
use nfs3_types::xdr_codec::{Pack, Unpack};
use nfs3_types::{nfs3 as nfs, portmap};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{error, info, trace, warn};

use crate::context::RPCContext;
use crate::transaction_tracker::{self, Retransmission, TransactionError, TransactionLock};
use std::sync::Arc;
use crate::vfs::NfsFileSystem;
use crate::{mount_handlers, nfs_handlers, portmap_handlers};

pub mod messages;

// Information from RFC 5531
// https://datatracker.ietf.org/doc/html/rfc5531

const NFS_ACL_PROGRAM: u32 = 100_227;
const NFS_ID_MAP_PROGRAM: u32 = 100_270;
const NFS_METADATA_PROGRAM: u32 = 200_024;
/// Largest credential or verifier body (RFC 5531, `opaque_auth`).
const MAX_AUTH_BYTES: usize = 400;

async fn handle_rpc_message<T>(
    mut context: RPCContext<T>,
    message: CompleteRpcMessage,
) -> anyhow::Result<HandleResult>
where
    T: NfsFileSystem,
{
    let message = IncomingRpcMessage::try_from(message)?;
    let xid = message.xid();
    let call = message.body();
    let prog = call.prog;

    if call.rpcvers != RPC_VERSION_2 {
        warn!("Invalid RPC version {} != {RPC_VERSION_2}", call.rpcvers);
        return message.into_rpc_mismatch();
    }

    // RFC 5531 bounds both at 400 bytes (tarn patch): a body of megabytes would otherwise be
    // held, copied, with every call waiting for READ budget.
    if call.cred.body.0.len() > MAX_AUTH_BYTES {
        warn!("a credential over {MAX_AUTH_BYTES} bytes from {}", context.client_addr);
        return message.into_auth_error(auth_stat::AUTH_BADCRED);
    }
    if call.verf.body.0.len() > MAX_AUTH_BYTES {
        warn!("a verifier over {MAX_AUTH_BYTES} bytes from {}", context.client_addr);
        return message.into_auth_error(auth_stat::AUTH_BADVERF);
    }
    let unix = call.cred.flavor == auth_flavor::AUTH_UNIX;
    if unix {
        let auth = auth_unix::unpack(&mut Cursor::new(&call.cred.body.0))?.0;
        context.auth = auth;
    }
    if prog != portmap::PROGRAM && !context.vfs.authorize(unix.then_some(&context.auth)) {
        warn!(
            "refusing a call from uid {} on {}",
            context.auth.uid, context.client_addr
        );
        return message.into_auth_error(auth_stat::AUTH_TOOWEAK);
    }

    let transaction = lock_transaction(
        &context.transaction_tracker,
        &context.client_addr,
        xid,
        call,
    );
    // A retransmission (tarn patch): of a call still running, dropped (its reply will come);
    // of one served, answered with the reply kept for it, or served again where none was kept
    // (calls that may run twice). Upstream dropped them all.
    let transaction = match transaction {
        Ok(lock) => Some(lock),
        Err(Some(err)) => return message.into_error_reply(err),
        Err(None) => match context
            .transaction_tracker
            .retransmission(&context.client_addr, xid)
        {
            Retransmission::InProgress => return Ok(HandleResult::NoReply),
            Retransmission::Completed(Some(reply)) => {
                return Ok(HandleResult::Reply(CompleteRpcMessage::from_packed(
                    reply.as_ref().clone(),
                )));
            }
            Retransmission::Completed(None) => None,
        },
    };
    let keep = prog == nfs::PROGRAM && !runs_twice_safely(call.proc);
    let result = serve_program(context, message, prog).await;
    if let (true, Some(lock), Ok(HandleResult::Reply(reply))) = (keep, &transaction, &result) {
        if let Some(packed) = reply.packed_only() {
            lock.keep_reply(Arc::new(packed.to_vec()));
        }
    }
    result
}

/// Whether NFSv3 procedure `proc_` gives the same result when run again (tarn patch): the
/// others (CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME, LINK, SETATTR) have their
/// replies kept for retransmissions, as a server's duplicate request cache does.
const fn runs_twice_safely(proc_: u32) -> bool {
    !matches!(proc_, 2 | 8..=15)
}

async fn serve_program<T>(
    context: RPCContext<T>,
    message: IncomingRpcMessage,
    prog: u32,
) -> anyhow::Result<HandleResult>
where
    T: NfsFileSystem,
{
    match prog {
        portmap::PROGRAM => portmap_handlers::handle_portmap(context, message).await,
        nfs3_types::mount::PROGRAM => mount_handlers::handle_mount(context, message).await,
        nfs::PROGRAM => nfs_handlers::handle_nfs(context, message).await,
        NFS_ACL_PROGRAM | NFS_ID_MAP_PROGRAM | NFS_METADATA_PROGRAM => {
            trace!("ignoring NFS_ACL packet");
            message.into_error_reply(accept_stat_data::PROG_UNAVAIL)
        }
        _ => {
            warn!("Unknown RPC Program number {prog} != {}", nfs::PROGRAM);
            message.into_error_reply(accept_stat_data::PROG_UNAVAIL)
        }
    }
}

/// Handles the RPC message and returns a result. The handler is an async function
pub async fn handle<I, O, T>(
    context: RPCContext<T>,
    mut message: IncomingRpcMessage,
    handler: impl AsyncFnOnce(RPCContext<T>, u32, I) -> O,
) -> anyhow::Result<HandleResult>
where
    I: Unpack,
    O: Pack + Send + 'static,
    T: NfsFileSystem,
{
    let mut cursor = message.take_data();
    let (args, _) = match I::unpack(&mut cursor) {
        Ok(ok) => ok,
        Err(err) => {
            error!("Failed to unpack message: {err}");
            return message.into_error_reply(accept_stat_data::GARBAGE_ARGS);
        }
    };
    if cursor.position() != cursor.get_ref().len() as u64 {
        error!("Unpacked message size does not match expected size");
        return message.into_error_reply(accept_stat_data::GARBAGE_ARGS);
    }

    let result = handler(context, message.xid(), args).await;
    message.into_success_reply(&result)
}

fn lock_transaction(
    transaction_tracker: &transaction_tracker::TransactionTracker,
    client_addr: &str,
    xid: u32,
    call: &call_body<'_>,
) -> Result<TransactionLock, Option<accept_stat_data>> {
    let transaction = transaction_tracker.start_transaction(client_addr, xid, Instant::now());

    match transaction {
        Ok(lock) => Ok(lock),
        Err(TransactionError::AlreadyExists) => {
            info!(
                "Retransmission detected, xid: {xid}, client_addr: {client_addr}, call: {call:?}",
            );
            Err(None)
        }
        Err(TransactionError::TooManyRequests) => {
            warn!("Too many requests, xid: {xid}, client_addr: {client_addr}, call: {call:?}",);

            Err(Some(accept_stat_data::SYSTEM_ERR))
        }
    }
}

/// Writes a reply as one record in one fragment: header, packed bytes, payload and its XDR
/// padding go out together (tarn patch: one vectored write, where upstream wrote the 4-byte
/// header on its own, a packet by itself under `TCP_NODELAY`).
#[allow(clippy::cast_possible_truncation)]
pub async fn write_fragment<IO: tokio::io::AsyncWrite + Unpin>(
    socket: &mut IO,
    buf: CompleteRpcMessage,
) -> Result<(), anyhow::Error> {
    // The budget share, if any, goes back once the reply is written.
    let (head, payload, _share) = buf.into_parts();
    let pad = (4 - payload.len() % 4) % 4;
    let len = head.len() + payload.len() + pad;
    if len >= 1 << 31 {
        anyhow::bail!("reply of {len} bytes is too long for one fragment");
    }
    let header_buf = fragment_header::new(len as u32, true).into_xdr_buf();
    trace!("Writing fragment length: {len}");
    let zeroes = [0u8; 4];
    let parts: [&[u8]; 4] = [&header_buf, &head, &payload, &zeroes[..pad]];
    let (mut part, mut at) = (0, 0);
    while part < parts.len() {
        let mut slices = [std::io::IoSlice::new(&[]); 4];
        let mut n = 0;
        for (i, p) in parts[part..].iter().enumerate() {
            slices[i] = std::io::IoSlice::new(if i == 0 { &p[at..] } else { p });
            n += 1;
        }
        let mut written = socket.write_vectored(&slices[..n]).await?;
        if written == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
        }
        while part < parts.len() && written >= parts[part].len() - at {
            written -= parts[part].len() - at;
            part += 1;
            at = 0;
        }
        at += written;
    }
    crate::buffers::give(payload);
    Ok(())
}

pub type SocketMessageType = Result<CompleteRpcMessage, anyhow::Error>;

/// Requests of one connection that may be outstanding at once, from the moment they are read
/// until their reply is written (tarn patch: upstream queued replies without bound, so a
/// client that sent requests and never read the replies grew the server's memory by every
/// reply, 1 MiB per READ). At the limit the connection is not read until a reply goes out.
pub const MAX_OUTSTANDING: usize = 64;

/// A reply on its way to the socket, with the slot it holds until written.
pub type QueuedReply = (SocketMessageType, tokio::sync::OwnedSemaphorePermit);

/// The Socket Message Handler reads records from the socket (its read half: tarn patch, where
/// upstream copied every byte through an in-memory pipe first) and spawns off subtasks to
/// handle each message. replies are queued into the `reply_send_channel`.
#[derive(Debug)]
pub struct SocketMessageHandler<T: NfsFileSystem + 'static, R> {
    cur_fragment: PackedRpcMessage,
    socket_receive_channel: R,
    reply_send_channel: mpsc::UnboundedSender<QueuedReply>,
    outstanding: std::sync::Arc<tokio::sync::Semaphore>,
    context: RPCContext<T>,
}

impl<T, R> SocketMessageHandler<T, R>
where
    T: NfsFileSystem + 'static,
    R: tokio::io::AsyncRead + Unpin,
{
    /// Creates a new `SocketMessageHandler` reading from `input`, with the receiver for queued
    /// message replies
    pub fn new(context: RPCContext<T>, input: R) -> (Self, mpsc::UnboundedReceiver<QueuedReply>) {
        let (msgsend, msgrecv) = mpsc::unbounded_channel();
        (
            Self {
                cur_fragment: PackedRpcMessage::new(),
                socket_receive_channel: input,
                reply_send_channel: msgsend,
                outstanding: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_OUTSTANDING)),
                context,
            },
            msgrecv,
        )
    }

    /// Reads a fragment from the socket. This should be looped. Returns whether the fragment
    /// completed a record (tarn patch: the idle timeout counts whole records).
    pub async fn read(&mut self) -> Result<bool, anyhow::Error> {
        let is_last = self
            .cur_fragment
            .recv(&mut self.socket_receive_channel)
            .await?;
        if is_last {
            let message = std::mem::replace(&mut self.cur_fragment, PackedRpcMessage::new());
            let message = match message {
                PackedRpcMessage::Complete(data) => data,
                PackedRpcMessage::Incomplete(_) => {
                    unreachable!()
                }
            };

            // Wait for a slot before taking on another request: the socket is not read
            // meanwhile, so a client that does not read its replies is held back by TCP.
            let slot = self.outstanding.clone().acquire_owned().await?;
            let context = self.context.clone();
            let send = self.reply_send_channel.clone();
            tokio::spawn(async move {
                let result = handle_rpc_message(context, message).await;

                match result {
                    Ok(HandleResult::Reply(reply)) => {
                        let _ = send.send((Ok(reply), slot));
                    }
                    Ok(HandleResult::NoReply) => {
                        // No reply needed: the slot is free again.
                    }
                    Err(err) => {
                        error!("Error handling RPC message: {err}");
                        let _ = send.send((Err(anyhow!("Error handling RPC message")), slot));
                    }
                }
            });
        }

        Ok(is_last)
    }
}
