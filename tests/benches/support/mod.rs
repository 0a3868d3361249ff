//! The cluster benchmark's parts, each a module of its own: Go's side
//! ([`gobench`]), node processes ([`processes`]), the counting transport
//! ([`tap`]) and the side-by-side report ([`versus`]). The raw transport
//! measurement it shares with the transport benchmark is the library's
//! `tests::rawnet`.

pub(crate) mod gobench;
pub(crate) mod processes;
pub(crate) mod tap;
pub(crate) mod versus;
