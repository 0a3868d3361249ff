//! Reaching a tagged peer's command API: the ports to try on it and the
//! check of its probe answer, shared by bootstrap (which probes every
//! tagged peer at start) and membership (whose leader probes the tagged
//! nodes it reconciles), so that neither depends on the other.

use std::collections::BTreeMap;

use cmd_rpc::{MAX_STABLE_ID, ProbeResponse, ProbeState, check_node};
use raft_core::node_id;

use crate::config::Config;

/// Checks that a probe answer is about `stable_id` and well formed.
pub(crate) fn check_answer(answer: &ProbeResponse, stable_id: &str) -> Result<(), String> {
    check_node(&answer.node)?;
    if answer.node.stable_id != stable_id {
        return Err(format!("answered as {:?}", answer.node.stable_id));
    }
    if answer.incarnation == 0 || answer.id != node_id(stable_id, answer.incarnation) {
        return Err(format!("raft id {} does not match its incarnation", answer.id));
    }
    match &answer.state {
        ProbeState::Member { leader: Some(hint), .. } => check_node(&hint.node),
        ProbeState::Fresh { promised_to: Some(to) } if to.len() > MAX_STABLE_ID => {
            Err("promised to an oversized stable id".to_owned())
        }
        _ => Ok(()),
    }
}

/// Ports to try on a peer's command API (probes and joins).
pub(crate) fn join_ports(config: &Config) -> Vec<u16> {
    let mut ports = vec![config.command_port, cmd_rpc::DEFAULT_PORT];
    ports.extend(&config.seed_command_ports);
    let mut seen = BTreeMap::new();
    ports.retain(|p| seen.insert(*p, ()).is_none());
    ports
}
