//! The node-to-node command API: HTTP/1.1 (hyper) over transport streams.
//!
//! Any node accepts a command or a read; what only the leader can do is
//! done there. [`CommandService`] holds that logic: it runs a call locally
//! on the leader, or forwards it, following "not the leader, the leader is
//! X" hints, waiting (within the caller's deadline) while an election is
//! under way, and retrying with backoff. Commands carry a session id and
//! sequence number, so a retry never applies a command twice.
//!
//! Joins and removals are answered by the leader only and never forwarded
//! (a follower answers `not_leader` with the leader): the leader checks them
//! against the caller's identity, which the layer above supplies through
//! [`Peers`] from the request's real address. `POST /v1/probe` and
//! `POST /v1/confirm` (bootstrap, decision 0003) are answered by that layer
//! too, after this crate has checked the confirm request against the
//! caller's identity.
//!
//! [`CommandServer`] serves the API on the command port (default 6271):
//! requests are authorized by the caller's real address before anything is
//! read (403), bodies are bounded (413) and must arrive in time (408), JSON
//! is strict (400), and unknown paths and methods get 404 and 405. Errors are
//! `{code, message, leader}` ([`ErrorBody`]); a state machine's own answer,
//! errors included, is carried verbatim through any number of hops.
//! [`CommandClient`] is the calling side, with idle connections reused.
//! Commands a follower forwards while others are on their way to the
//! leader go together in one request (`POST /v1/execute-batch`), each
//! still with its own budget, answer and unknown outcome.
//!
//! [`PageServer`] serves read-only pages rendered elsewhere (the facade's
//! monitor) with the same authorization, and [`AdminServer`] the
//! operator's endpoint on 127.0.0.1 (token, `Host` check, bounded
//! bodies), so hyper stays in this crate.
//!
//! `POST /v1/campaign` is one half of a leadership transfer: the leader,
//! holding its log still, asks a caught-up voter to start an election.
//!
//! Commands, queries and answers are JSON documents at this layer.

mod admin;
mod api;
mod batch;
mod client;
mod code;
mod config;
mod error;
mod pages;
mod peers;
mod route;
mod server;
mod service;
mod stats;

pub use crate::admin::{
    AdminError, AdminHandler, AdminLimits, AdminRequest, AdminResponse, AdminRoute, AdminServer,
    NONCE_HEADER, PROOF_PATH, admin_proof,
};
pub use crate::api::{
    BatchedAnswer, BatchedCommand, CampaignRequest, ClusterInfo, ConfirmRequest, ConfirmResponse,
    Consistency, ErrorBody, ExecuteBatchRequest, ExecuteBatchResponse, ExecuteRequest,
    ExecuteResponse, JoinRequest, LeaderHint, MAX_BATCH, Member, ProbeRequest, ProbeResponse,
    ProbeState, ReadIndexResponse, ReadRequest, ReadResponse, RemoveRequest, SessionResponse,
};
pub use crate::client::{
    Addressee, CLUSTER_HEADER, CommandClient, DEADLINE_HEADER, FORWARDED_HEADER, TARGET_NODE_HEADER,
};
pub use crate::code::{ErrorCode, MAX_CODE_LEN, UnknownCode};
pub use crate::config::{ANSWER_ENVELOPE, CommandConfig};
pub use crate::error::{Cause, RpcError};
pub use crate::pages::{Page, PageServer, Render};
pub use crate::peers::{
    Caller, ConfirmFuture, MAX_ADDRS, MAX_STABLE_ID, Peers, ProbeFuture, check_confirm, check_node,
};
pub use crate::route::Origin;
pub use crate::server::{Authorize, CommandServer};
pub use crate::service::{Change, CommandService};
pub use crate::stats::CommandStats;

/// The Go package's default command port.
pub const DEFAULT_PORT: u16 = 6271;
