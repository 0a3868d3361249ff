//! Framing of raft RPCs on a byte stream.
//!
//! A frame is `[length: u32 BE][version: u8][request id: u64 BE][body]`,
//! where `length` counts everything after itself and `body` is one encoded
//! [`Message`]. A length above the configured maximum is refused before any
//! buffer of that size exists.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec;
use crate::sessions::SessionLimits;
use crate::types::{ClusterId, NodeId, TypeConfig};

/// Wire protocol version; the first byte after the length. Version 2: the
/// hello carries the caller's cluster id (decision 0003), and log entries
/// carry session registrations and commands ([`Proposal`](crate::Proposal)).
/// Version 3: the hello also carries the caller's stable id and
/// incarnation (bound to the connection's authenticated peer) and the
/// settings that decide how entries apply (the session limits).
pub(crate) const VERSION: u8 = 3;
/// Bytes after the length prefix that every frame has.
const HEADER: usize = 1 + 8;

/// Everything that travels on a raft connection.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Message {
    /// First message of a connection: who is calling whom, in which cluster.
    Hello {
        /// The cluster's name; both sides must agree.
        cluster: String,
        /// The caller's cluster id; both sides must agree, and a node
        /// without one refuses every connection.
        cluster_id: ClusterId,
        /// The caller's node id: `node_id(stable_id, incarnation)`.
        from: NodeId,
        /// The caller's stable id; must be the owner of the connection's
        /// peer address as the answering node's authorizer sees it.
        stable_id: String,
        /// The caller's incarnation.
        incarnation: u64,
        /// The node id the caller means to reach.
        to: NodeId,
        /// The caller's session limits: they decide which sessions an entry
        /// finds, so both sides must agree.
        sessions: SessionLimits,
    },
    /// The hello was accepted.
    Welcome,
    /// The connection is refused, and why.
    Refused(String),
    /// AppendEntries request.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// AppendEntries answer.
    AppendEntriesResult(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// RequestVote request.
    Vote(VoteRequest<NodeId>),
    /// RequestVote answer.
    VoteResult(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// One snapshot chunk.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Answer to a snapshot chunk.
    InstallSnapshotResult(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
}

impl Message {
    /// The hello of incarnation `incarnation` of node `stable_id` (raft id
    /// `node_id(stable_id, incarnation)`) to node `to` of cluster
    /// `cluster` / `cluster_id`, applying entries with `sessions`: for
    /// tests that play a node on the wire.
    #[cfg(feature = "testing")]
    pub fn hello(
        cluster: &str,
        cluster_id: ClusterId,
        stable_id: &str,
        incarnation: u64,
        to: NodeId,
        sessions: SessionLimits,
    ) -> Message {
        Message::Hello {
            cluster: cluster.to_owned(),
            cluster_id,
            from: crate::types::node_id(stable_id, incarnation),
            stable_id: stable_id.to_owned(),
            incarnation,
            to,
            sessions,
        }
    }

    /// An empty AppendEntries (a heartbeat) from `leader` as the elected
    /// leader of `term`, with nothing before it in the log: for
    /// tests that play a leader on the wire.
    #[cfg(feature = "testing")]
    pub fn heartbeat(term: u64, leader: NodeId) -> Message {
        Message::AppendEntries(AppendEntriesRequest {
            vote: openraft::Vote::new_committed(term, leader),
            prev_log_id: None,
            leader_commit: None,
            entries: Vec::new(),
        })
    }
}

/// One decoded frame.
#[derive(Debug)]
pub struct Frame {
    /// Matches an answer to its request on a connection.
    pub request_id: u64,
    /// The message.
    pub message: Message,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is above the limit; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame is too short to hold a header.
    #[error("frame of {0} bytes is shorter than its header")]
    TooShort(usize),
    /// The peer speaks another protocol version.
    #[error("unsupported raft protocol version {0} (this node speaks {VERSION})")]
    Version(u8),
    /// The body is not a valid message.
    #[error(transparent)]
    Body(#[from] codec::DecodeError),
    /// The stream failed or ended mid-frame.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes a frame, ready to write.
pub fn encode(request_id: u64, message: &Message) -> Vec<u8> {
    let body = codec::encode(message);
    let len = HEADER + body.len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(VERSION);
    out.extend_from_slice(&request_id.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes the frame at the start of `buf`, if it is complete. Returns the
/// frame and how many bytes it used; `Ok(None)` means more bytes are needed.
/// Never panics and never allocates more than `max` for the frame's content.
/// (The node reads frames with [`read`]; this is for tests of the decoder.)
#[cfg(any(test, feature = "testing"))]
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(prefix) = buf.get(..4) else { return Ok(None) };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    check_len(len, max)?;
    let Some(frame) = buf.get(4..4 + len) else { return Ok(None) };
    Ok(Some((parse(frame, max)?, 4 + len)))
}

fn check_len(len: usize, max: usize) -> Result<(), FrameError> {
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if len < HEADER {
        return Err(FrameError::TooShort(len));
    }
    Ok(())
}

fn parse(frame: &[u8], max: usize) -> Result<Frame, FrameError> {
    if frame[0] != VERSION {
        return Err(FrameError::Version(frame[0]));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&frame[1..9]);
    let message = codec::decode(&frame[HEADER..], max, "raft message")?;
    Ok(Frame { request_id: u64::from_be_bytes(id), message })
}

/// Reads one frame from `reader`. `Ok(None)` is a clean end of stream
/// between frames.
pub async fn read<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Frame>, FrameError> {
    let mut prefix = [0u8; 4];
    match reader.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err.into()),
    }
    let len = u32::from_be_bytes(prefix) as usize;
    check_len(len, max)?;
    let mut frame = vec![0u8; len];
    reader.read_exact(&mut frame).await?;
    parse(&frame, max).map(Some)
}

/// Writes one encoded frame and flushes.
pub async fn write<W: AsyncWrite + Unpin>(writer: &mut W, frame: &[u8]) -> std::io::Result<()> {
    writer.write_all(frame).await?;
    writer.flush().await
}
