//! The tailnet as this crate sees it, and pure functions over it: filtering
//! by the cluster tag and diffing two views into events. No IO here.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A node's stable identity on the tailnet (Tailscale's `StableNodeID`).
/// It survives restarts and address changes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StableNodeId(pub String);

impl std::fmt::Display for StableNodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One node of the tailnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailnetNode {
    /// The stable identity.
    pub id: StableNodeId,
    /// The hostname the node registered with (not unique).
    pub hostname: String,
    /// The MagicDNS name, with its trailing dot, if the tailnet has one.
    pub dns_name: String,
    /// The tailnet IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// The tailnet IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// ACL tags, such as `tag:cluster`.
    pub tags: BTreeSet<String>,
    /// Whether control reports the node connected.
    pub online: bool,
    /// Whether this node's netmap entry says how to reach it: a DERP home
    /// or at least one endpoint (the LocalAPI status's `Relay`, `Addrs`,
    /// `CurAddr`). Right after a node comes up, its peers may see it
    /// online for a second or so before control sends them its DERP home
    /// (headscale batches netmap updates); a dial in that window makes
    /// WireGuard drop the handshake and retry only 5 s later. Sources that
    /// do not know (static views, whois) say `true`.
    pub has_path: bool,
}

impl TailnetNode {
    /// Whether the node carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.contains(tag)
    }

    /// The node's addresses, IPv4 first.
    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ipv4.map(IpAddr::V4).into_iter().chain(self.ipv6.map(IpAddr::V6))
    }
}

/// Everything a node knows about its tailnet at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailnetView {
    /// The node itself.
    pub self_node: TailnetNode,
    /// Every peer, by stable id.
    pub peers: BTreeMap<StableNodeId, TailnetNode>,
}

impl TailnetView {
    /// The part of the tailnet that forms the cluster tagged `tag`.
    pub fn cluster(&self, tag: &str) -> ClusterView {
        let members: BTreeMap<StableNodeId, TailnetNode> = self
            .peers
            .iter()
            .filter(|(_, node)| node.has_tag(tag))
            .map(|(id, node)| (id.clone(), node.clone()))
            .collect();
        let mut allowed: HashSet<IpAddr> = members.values().flat_map(TailnetNode::addrs).collect();
        allowed.extend(self.self_node.addrs());
        ClusterView { tag: tag.to_owned(), self_node: self.self_node.clone(), members, allowed }
    }
}

/// The cluster as seen from one node: the node itself and the peers that
/// carry the cluster tag, online or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    /// The cluster tag.
    pub tag: String,
    /// The node itself, tagged or not (see [`ClusterView::self_tagged`]).
    pub self_node: TailnetNode,
    /// Tagged peers, by stable id. The node itself is not among them.
    pub members: BTreeMap<StableNodeId, TailnetNode>,
    /// Every address of every tagged peer, and the node's own.
    allowed: HashSet<IpAddr>,
}

impl ClusterView {
    /// A view built directly from its parts (for static clusters).
    pub fn new(
        tag: &str,
        self_node: TailnetNode,
        members: impl IntoIterator<Item = TailnetNode>,
    ) -> ClusterView {
        let view = TailnetView {
            self_node,
            peers: members.into_iter().map(|node| (node.id.clone(), node)).collect(),
        };
        view.cluster(tag)
    }

    /// Whether the node itself carries the cluster tag.
    pub fn self_tagged(&self) -> bool {
        self.self_node.has_tag(&self.tag)
    }

    /// Whether `ip` belongs to a tagged peer or to the node itself.
    /// IPv4-mapped IPv6 addresses count as their IPv4 address.
    pub fn contains_addr(&self, ip: IpAddr) -> bool {
        self.allowed.contains(&ip.to_canonical())
    }

    /// The tagged peer that has `ip`, if any.
    pub fn member_by_addr(&self, ip: IpAddr) -> Option<&TailnetNode> {
        let ip = ip.to_canonical();
        self.members.values().find(|node| node.addrs().any(|a| a == ip))
    }

    /// Tagged peers that are online.
    pub fn online_members(&self) -> impl Iterator<Item = &TailnetNode> {
        self.members.values().filter(|node| node.online)
    }
}

/// One change between two cluster views.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterEvent {
    /// A peer gained the tag (or appeared already tagged).
    Joined(TailnetNode),
    /// A peer lost the tag or left the tailnet.
    Left(TailnetNode),
    /// A member came online.
    CameOnline(TailnetNode),
    /// A member went offline; it stays a member.
    WentOffline(TailnetNode),
    /// A member's addresses changed.
    AddressesChanged {
        /// The member before.
        old: TailnetNode,
        /// The member now.
        new: TailnetNode,
    },
}

/// The events that turn `old` into `new`, in a stable order: departures,
/// then arrivals, then changes of members present in both, each by id.
pub fn diff(old: &ClusterView, new: &ClusterView) -> Vec<ClusterEvent> {
    let mut events = Vec::new();
    for (id, node) in &old.members {
        if !new.members.contains_key(id) {
            events.push(ClusterEvent::Left(node.clone()));
        }
    }
    for (id, node) in &new.members {
        if !old.members.contains_key(id) {
            events.push(ClusterEvent::Joined(node.clone()));
        }
    }
    for (id, now) in &new.members {
        let Some(before) = old.members.get(id) else { continue };
        if (before.ipv4, before.ipv6) != (now.ipv4, now.ipv6) {
            events.push(ClusterEvent::AddressesChanged { old: before.clone(), new: now.clone() });
        }
        match (before.online, now.online) {
            (false, true) => events.push(ClusterEvent::CameOnline(now.clone())),
            (true, false) => events.push(ClusterEvent::WentOffline(now.clone())),
            _ => {}
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn node(id: &str, last: u8, tags: &[&str], online: bool) -> TailnetNode {
        TailnetNode {
            id: StableNodeId(id.to_owned()),
            hostname: id.to_owned(),
            dns_name: format!("{id}.example.ts.net."),
            ipv4: Some(Ipv4Addr::new(100, 64, 0, last)),
            ipv6: Some(format!("fd7a:115c:a1e0::{last}").parse().unwrap()),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            online,
            has_path: true,
        }
    }

    fn view(self_node: TailnetNode, peers: &[TailnetNode]) -> TailnetView {
        TailnetView { self_node, peers: peers.iter().map(|n| (n.id.clone(), n.clone())).collect() }
    }

    #[test]
    fn cluster_keeps_only_tagged_peers_and_allows_both_families() {
        let tailnet = view(
            node("me", 1, &["tag:c"], true),
            &[
                node("other-tag", 2, &["tag:woo"], true),
                node("untagged", 3, &[], true),
                node("both", 4, &["tag:woo", "tag:c"], false),
                node("only", 5, &["tag:c"], true),
            ],
        );
        let cluster = tailnet.cluster("tag:c");
        assert!(cluster.self_tagged());
        let ids: Vec<&str> = cluster.members.keys().map(|id| id.0.as_str()).collect();
        assert_eq!(ids, ["both", "only"]);
        for last in [1u8, 4, 5] {
            assert!(cluster.contains_addr(IpAddr::V4(Ipv4Addr::new(100, 64, 0, last))));
            assert!(cluster.contains_addr(format!("fd7a:115c:a1e0::{last}").parse().unwrap()));
        }
        for last in [2u8, 3, 9] {
            assert!(!cluster.contains_addr(IpAddr::V4(Ipv4Addr::new(100, 64, 0, last))));
            assert!(!cluster.contains_addr(format!("fd7a:115c:a1e0::{last}").parse().unwrap()));
        }
        // An IPv4-mapped IPv6 address is its IPv4 address.
        assert!(cluster.contains_addr("::ffff:100.64.0.5".parse().unwrap()));
        assert_eq!(cluster.member_by_addr("100.64.0.4".parse().unwrap()).unwrap().id.0, "both");
        assert_eq!(cluster.online_members().count(), 1);
        assert!(!tailnet.cluster("tag:other").self_tagged());
    }

    #[test]
    fn diff_reports_each_kind_of_change() {
        let me = node("me", 1, &["tag:c"], true);
        let old = view(
            me.clone(),
            &[
                node("a", 2, &["tag:c"], true),
                node("b", 3, &["tag:c"], false),
                node("c", 4, &["tag:c"], true),
            ],
        )
        .cluster("tag:c");
        let mut moved = node("c", 4, &["tag:c"], true);
        moved.ipv4 = Some(Ipv4Addr::new(100, 64, 0, 44));
        let new = view(
            me,
            &[
                node("a", 2, &["tag:c"], false),
                node("b", 3, &[], false),
                moved.clone(),
                node("d", 5, &["tag:c"], true),
            ],
        )
        .cluster("tag:c");
        let events = diff(&old, &new);
        assert_eq!(
            events,
            vec![
                ClusterEvent::Left(node("b", 3, &["tag:c"], false)),
                ClusterEvent::Joined(node("d", 5, &["tag:c"], true)),
                ClusterEvent::WentOffline(node("a", 2, &["tag:c"], false)),
                ClusterEvent::AddressesChanged { old: node("c", 4, &["tag:c"], true), new: moved },
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }
}
