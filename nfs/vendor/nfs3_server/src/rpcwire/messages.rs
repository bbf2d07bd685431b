use std::io::Cursor;

use anyhow::bail;
use nfs3_types::rpc::{
    accept_stat_data, accepted_reply, auth_stat, call_body, fragment_header, msg_body, opaque_auth,
    rejected_reply, reply_body, rpc_msg,
};
use nfs3_types::xdr_codec::{Pack, Unpack, Void};
use tokio::io::{AsyncRead, AsyncReadExt};

#[derive(Debug)]
pub enum PackedRpcMessage {
    Incomplete(IncompleteRpcMessage),
    Complete(CompleteRpcMessage),
}

impl PackedRpcMessage {
    pub fn new() -> Self {
        Self::Incomplete(IncompleteRpcMessage::default())
    }
    pub async fn recv(&mut self, input: &mut (impl AsyncRead + Unpin)) -> anyhow::Result<bool> {
        match self {
            Self::Incomplete(incomplete) => {
                let eof = incomplete.recv(input).await?;
                if eof {
                    let data = std::mem::take(incomplete);
                    *self = Self::Complete(CompleteRpcMessage(data.0, Vec::new(), Vec::new()));
                }
                Ok(eof)
            }
            Self::Complete(_) => Ok(true),
        }
    }
}

/// Largest RPC record accepted (tarn patch).
pub const MAX_RECORD_SIZE: usize = 4 << 20;

/// Contains collected RPC message fragments without their headers.
#[derive(Default, Debug)]
pub struct IncompleteRpcMessage(Vec<u8>);

impl IncompleteRpcMessage {
    async fn recv(&mut self, input: &mut (impl AsyncRead + Unpin)) -> anyhow::Result<bool> {
        let mut header_buf = [0_u8; 4];
        input.read_exact(&mut header_buf).await?;
        let header: fragment_header = header_buf.into();
        let prev_length = self.0.len();
        let fragment_length = header.fragment_length() as usize;
        // tarn patch: bound a record (a 1 MiB WRITE plus headers fits easily), so a peer cannot
        // make the server allocate gigabytes; the connection is dropped instead.
        if prev_length + fragment_length > MAX_RECORD_SIZE {
            anyhow::bail!(
                "RPC record of more than {MAX_RECORD_SIZE} bytes ({} announced)",
                prev_length + fragment_length
            );
        }
        // tarn patch: read straight into the spare capacity (no zero-fill of up to 1 MiB).
        let end = prev_length + fragment_length;
        self.0.reserve_exact(fragment_length);
        while self.0.len() < end {
            let want = (end - self.0.len()) as u64;
            if (&mut *input).take(want).read_buf(&mut self.0).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }

        Ok(header.eof())
    }
}

/// A whole record. A reply may carry a payload (READ data) after its packed bytes, sent
/// from its own buffer with the XDR padding it needs (tarn patch: no copy into the record).
/// It may hold shares of budgets (READ data queued for its peer and server-wide) until it is
/// written.
#[derive(Debug)]
pub struct CompleteRpcMessage(Vec<u8>, Vec<u8>, Vec<tokio::sync::OwnedSemaphorePermit>);

impl CompleteRpcMessage {
    /// A reply of packed bytes only (tarn patch: a kept reply sent again).
    pub const fn from_packed(packed: Vec<u8>) -> Self {
        Self(packed, Vec::new(), Vec::new())
    }

    /// This reply, holding `permit` too until it is written (or dropped) (tarn patch).
    pub fn holding(mut self, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        self.2.push(permit);
        self
    }

    /// The packed bytes of a reply with no payload after them (tarn patch).
    pub fn packed_only(&self) -> Option<&[u8]> {
        self.1.is_empty().then_some(&self.0[..])
    }

    /// The packed bytes, the payload that follows them, and the budget shares held until
    /// they are written.
    pub fn into_parts(self) -> (Vec<u8>, Vec<u8>, Vec<tokio::sync::OwnedSemaphorePermit>) {
        (self.0, self.1, self.2)
    }

    /// A reply whose last packed item is an opaque of length 0 standing for `payload`: the
    /// length is patched in, and the payload (then its padding) is sent after the bytes.
    pub fn with_opaque_payload(mut self, payload: Vec<u8>) -> anyhow::Result<Self> {
        let len = u32::try_from(payload.len())?;
        let n = self.0.len();
        if n < 4 || self.0[n - 4..] != [0; 4] || !self.1.is_empty() {
            bail!("internal: a reply without an empty opaque at its end");
        }
        self.0[n - 4..].copy_from_slice(&len.to_be_bytes());
        self.1 = payload;
        Ok(self)
    }
}

pub struct IncomingRpcMessage {
    xid: u32,
    body: call_body<'static>,
    data: Option<Vec<u8>>,
    message_start: usize, // offset of the start of the message in the data buffer
}

impl TryFrom<CompleteRpcMessage> for IncomingRpcMessage {
    type Error = anyhow::Error;

    fn try_from(packed: CompleteRpcMessage) -> Result<Self, Self::Error> {
        let packed = packed.0;
        let (rpc, pos) = match rpc_msg::unpack(&mut Cursor::new(&packed)) {
            Ok(ok) => ok,
            Err(err) => {
                bail!("Failed to unpack RPC message: {err}");
            }
        };

        let xid = rpc.xid;
        let body = match rpc.body {
            msg_body::CALL(call) => call,
            msg_body::REPLY(_) => {
                bail!("Expected a CALL message, got REPLY. XID: {xid}");
            }
        };

        Ok(Self {
            xid,
            body,
            data: Some(packed),
            message_start: pos,
        })
    }
}

impl IncomingRpcMessage {
    pub const fn xid(&self) -> u32 {
        self.xid
    }
    pub const fn body(&self) -> &call_body<'static> {
        &self.body
    }

    pub const fn take_data(&mut self) -> Cursor<Vec<u8>> {
        let data = self.data.take().expect("Data already taken");
        let mut cursor = Cursor::new(data);
        cursor.set_position(self.message_start as u64);
        cursor
    }

    pub fn into_success_reply<T>(self, message: &T) -> anyhow::Result<HandleResult>
    where
        T: Pack + 'static,
    {
        let rpc = rpc_msg {
            xid: self.xid,
            body: msg_body::REPLY(reply_body::MSG_ACCEPTED(accepted_reply {
                verf: opaque_auth::default(),
                reply_data: accept_stat_data::SUCCESS,
            })),
        };

        pack(&rpc, message).map(HandleResult::Reply)
    }

    pub fn into_rpc_mismatch(self) -> anyhow::Result<HandleResult> {
        use nfs3_types::rpc::RPC_VERSION_2;

        let reply =
            reply_body::MSG_DENIED(rejected_reply::rpc_mismatch(RPC_VERSION_2, RPC_VERSION_2));

        let rpc = rpc_msg {
            xid: self.xid,
            body: msg_body::REPLY(reply),
        };
        pack(&rpc, &Void).map(HandleResult::Reply)
    }

    pub fn into_auth_error(self, stat: auth_stat) -> anyhow::Result<HandleResult> {
        let rpc = rpc_msg {
            xid: self.xid,
            body: msg_body::REPLY(reply_body::MSG_DENIED(rejected_reply::auth_error(stat))),
        };
        pack(&rpc, &Void).map(HandleResult::Reply)
    }

    pub fn into_error_reply(self, err: accept_stat_data) -> anyhow::Result<HandleResult> {
        let rpc = rpc_msg {
            xid: self.xid,
            body: msg_body::REPLY(reply_body::MSG_ACCEPTED(accepted_reply {
                verf: opaque_auth::default(),
                reply_data: err,
            })),
        };
        pack(&rpc, &Void).map(HandleResult::Reply)
    }
}

pub enum HandleResult {
    Reply(CompleteRpcMessage),
    NoReply,
}

fn pack<T>(rpc: &rpc_msg, message: &T) -> anyhow::Result<CompleteRpcMessage>
where
    T: Pack + 'static,
{
    let size = rpc
        .packed_size()
        .checked_add(message.packed_size())
        .expect("Failed to calculate size");

    let mut cursor = Cursor::new(Vec::with_capacity(size));
    rpc.pack(&mut cursor)?;
    message.pack(&mut cursor)?;
    Ok(CompleteRpcMessage(cursor.into_inner(), Vec::new(), Vec::new()))
}
