//! Who is in the cluster: the tailnet peers that carry the cluster tag, their
//! addresses and liveness, read from a node's LocalAPI (status, whois and the
//! IPN bus watch), plus a static source for clusters on in-memory or TCP
//! transports, and the one authorization answer every port consults.
//!
//! Not yet filled: this crate is built by the discovery issue.
