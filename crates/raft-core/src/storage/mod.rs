//! Durable and in-memory storage: the raft log (`LogStore`) and snapshots.

pub(crate) mod faults;
pub(crate) mod floor;
#[cfg_attr(
    not(feature = "testing"),
    allow(unreachable_pub, reason = "`LogStore` is public only through `crate::testing`")
)]
pub(crate) mod log;
pub(crate) mod snapshot;

pub use self::faults::StorageFaults;
pub(crate) use self::log::LogStore;

#[cfg(test)]
mod suite;
