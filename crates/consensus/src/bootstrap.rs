//! Finding or forming the cluster at start, without split brain.
//!
//! A node with stored state just resumes: the leader replicates to it again.
//! A fresh node asks every online tagged peer for its view of the cluster
//! (`GET /v1/cluster`, which answers at once) and joins through any peer
//! that knows a leader. If none does, and this node is not follow-only, it
//! forms the cluster only when it sees at least `expected_size` tagged nodes
//! online and has the lowest id among them; every other node keeps trying to
//! join. Nodes started together therefore form exactly one cluster.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cmd_rpc::{ClusterInfo, CommandClient, CommandConfig};
use raft_core::{NodeId, NodeInfo, node_id_from_stable_id};
use ts_transport::Transport;

use crate::config::BootstrapOptions;
use crate::error::Error;
use crate::machine::StateMachine;
use crate::node::{Inner, join_ports, join_request};

/// Time one peer has to answer a probe or a join.
const ATTEMPT: Duration = Duration::from_secs(3);
/// Time a join through a peer that knows the leader may take (catching up
/// included).
const JOIN: Duration = Duration::from_secs(30);

pub(crate) async fn run<S: StateMachine>(
    inner: &Arc<Inner<S>>,
    transport: Arc<dyn Transport>,
    self_node: &NodeInfo,
    options: &BootstrapOptions,
    timeout: Duration,
) -> Result<(), Error> {
    let raft = inner.raft();
    let started = Instant::now();
    let deadline = started + timeout;
    if raft.is_initialized().await {
        tracing::info!(id = inner.id, "resuming from stored state");
        return Ok(());
    }
    let client = CommandClient::new(transport, CommandConfig::default());
    let ports = join_ports(&inner.config);
    let mut backoff = Duration::from_millis(100);
    let mut reason = "no tagged peer is online".to_owned();
    loop {
        if raft.is_initialized().await && raft.metrics().leader.is_some() {
            return Ok(());
        }
        let view = inner.view().ok_or_else(|| Error::Network("tailnet view lost".to_owned()))?;
        let mut peers: Vec<(NodeId, Vec<std::net::IpAddr>, String)> = view
            .online_members()
            .map(|n| (node_id_from_stable_id(&n.id.0), n.addrs().collect(), n.hostname.clone()))
            .collect();
        peers.sort_by_key(|(id, _, _)| *id);

        // Join through any peer that knows a leader.
        for (_, addrs, hostname) in &peers {
            for &port in &ports {
                let peer = NodeInfo {
                    stable_id: hostname.clone(),
                    addrs: addrs.clone(),
                    raft_port: 0,
                    command_port: port,
                };
                let probe: Result<ClusterInfo, _> =
                    client.get(&peer, "/v1/cluster", Instant::now() + ATTEMPT).await;
                match probe {
                    Ok(cluster) if cluster.leader.is_some() => {
                        let until = (Instant::now() + JOIN).min(deadline);
                        let joined: Result<serde_json::Value, _> = client
                            .post(
                                &peer,
                                "/v1/join",
                                &join_request(inner.id, self_node, true),
                                until,
                                false,
                            )
                            .await;
                        match joined {
                            Ok(_) => {
                                tracing::info!(id = inner.id, via = %hostname, "joined the cluster");
                                return wait_for_leader(inner, deadline, started).await;
                            }
                            Err(err) => reason = format!("join through {hostname}:{port}: {err}"),
                        }
                    }
                    Ok(_) => reason = format!("{hostname} knows no leader yet"),
                    Err(err) => reason = format!("{hostname}:{port}: {err}"),
                }
            }
        }

        if !options.follow_only {
            let online = 1 + peers.len();
            let lowest = peers.iter().all(|(id, _, _)| *id > inner.id);
            if online >= options.expected_size && lowest {
                tracing::info!(
                    id = inner.id,
                    online,
                    "no cluster found; this node has the lowest id and forms it"
                );
                let members = [(inner.id, self_node.clone())].into_iter().collect();
                raft.initialize(members).await.map_err(|e| Error::Network(e.to_string()))?;
                return wait_for_leader(inner, deadline, started).await;
            }
            if online < options.expected_size {
                reason =
                    format!("{online} of {} expected tagged nodes online", options.expected_size);
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::JoinFailed { waited: started.elapsed(), reason });
        }
        tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now()))).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn wait_for_leader<S: StateMachine>(
    inner: &Inner<S>,
    deadline: Instant,
    started: Instant,
) -> Result<(), Error> {
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    inner
        .raft()
        .wait_for(remaining, |m| m.leader.is_some())
        .await
        .map(|_| ())
        .map_err(|_| Error::NoLeader { waited: started.elapsed() })
}
