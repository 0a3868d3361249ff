//! Durable and in-memory storage: the raft log ([`LogStore`]) and snapshots.

pub(crate) mod faults;
pub(crate) mod log;
pub(crate) mod snapshot;

pub use self::faults::StorageFaults;
pub use self::log::LogStore;

#[cfg(test)]
mod suite;
