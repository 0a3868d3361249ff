//! A one-node cluster in memory, as a program that depends on `consensus`
//! would run it: start, execute, read, stop.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::sync::Arc;

use consensus::discovery::{ClusterView, StableNodeId, StaticDiscovery, TailnetNode};
use consensus::transport::MemNetwork;
use consensus::{BootstrapOptions, Config, Consensus, Consistency, StateMachine, StopMode};

/// A counter: commands add to it, the query reads it.
#[derive(Default)]
struct Counter(u64);

impl StateMachine for Counter {
    type Command = u64;
    type Response = u64;
    type Query = ();
    type QueryResponse = u64;

    fn apply(&mut self, n: u64) -> u64 {
        self.0 += n;
        self.0
    }

    fn query(&self, _: &()) -> u64 {
        self.0
    }

    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(&self.0.to_le_bytes())
    }

    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        let mut bytes = [0u8; 8];
        input.read_exact(&mut bytes)?;
        self.0 = u64::from_le_bytes(bytes);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tag = "tag:downstream";
    let address = Ipv4Addr::new(10, 0, 0, 1);
    let me = TailnetNode {
        id: StableNodeId("node-1".to_owned()),
        hostname: "node-1".to_owned(),
        dns_name: String::new(),
        ipv4: Some(address),
        ipv6: None,
        tags: BTreeSet::from([tag.to_owned()]),
        online: true,
        has_path: true,
    };
    let network = MemNetwork::new();
    let node = Consensus::start_with(
        Arc::new(network.node(address.into())),
        Arc::new(StaticDiscovery::new(ClusterView::new(tag, me, []))),
        Counter::default(),
        BootstrapOptions::new(tag),
        Config { monitor_port: None, ..Config::default() },
    )
    .await?;
    node.execute(2).await?;
    let total = node.execute(3).await?;
    let read = node.read((), Consistency::Linearizable).await?;
    node.stop(StopMode::Stay).await?;
    if (total, read) != (5, 5) {
        return Err(format!("expected 5 and 5, got {total} and {read}").into());
    }
    eprintln!("downstream: a one-node cluster executed two commands; the total is {read}");
    Ok(())
}
