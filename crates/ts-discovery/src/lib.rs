//! Who is in the cluster: the tailnet nodes that carry the cluster tag.
//!
//! A node's LocalAPI tells what it knows of its tailnet: itself and its
//! peers, each with a stable id, addresses, tags and whether it is online.
//! This crate reads that ([`LocalApi`]: status, whois, and the IPN bus watch
//! that pushes every netmap change), reduces it to the cluster
//! ([`TailnetView::cluster`]: the peers carrying the tag), and reports how it
//! changes ([`diff`] into [`ClusterEvent`]s).
//!
//! Everything above consumes it through the [`Discovery`] trait:
//! [`TailnetDiscovery`] follows a real node, [`StaticDiscovery`] is a fixed
//! or test-driven list for in-memory and TCP clusters. [`Authorizer`] is the
//! one answer to "may this address talk to us?", shared by every port; it
//! fails closed.
//!
//! Everything read from the LocalAPI is untrusted: bodies are size-capped,
//! and malformed answers become [`DiscoveryError`]s while the last good view
//! is kept.

mod discovery;
mod error;
mod localapi;
mod model;
mod parse;

pub use crate::discovery::{
    Authorizer, Discovery, DiscoveryState, Freshness, StaticDiscovery, TailnetDiscovery,
    TailnetDiscoveryConfig,
};
pub use crate::error::DiscoveryError;
pub use crate::localapi::{IpnBusWatch, LocalApi, LocalApiLimits};
pub use crate::model::{ClusterEvent, ClusterView, StableNodeId, TailnetNode, TailnetView, diff};
pub use crate::parse::{Notify, parse_notify, parse_status, parse_whois};
