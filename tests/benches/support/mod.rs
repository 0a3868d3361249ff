//! The cluster benchmark's parts, each a module of its own: Go's side
//! ([`gobench`]), node processes ([`processes`]), raw transport
//! measurements ([`rawnet`]), the counting transport ([`tap`]) and the
//! side-by-side report ([`versus`]).

pub(crate) mod gobench;
pub(crate) mod processes;
pub(crate) mod rawnet;
pub(crate) mod tap;
pub(crate) mod versus;
